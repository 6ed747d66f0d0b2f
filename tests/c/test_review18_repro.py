"""Review 18 (docs/review18.md): review 17's W1 fix (3e1c721) and its N1/G2 fixes
(5f05447).

S1 (strict xfail): the queue's quiet rule (fq_state.c fq_quiet) reads the ring's
words (fq_idle: release, head, tail) and then the producer intents
(fq_put_in_flight).  A whole put can land between the two: a waiter reads tail
before the producer's CAS and the producer's lane after its commit's IDLE store.
Then it sees nothing in flight, and it sleeps with no timer beside a committed
message.  The only wake-up left is the commit's fq_wake, and a producer SIGKILLed
between its IDLE store and that fq_wake leaves the get() asleep until some other
process calls into the queue.  Before 3e1c721 the claim's fq_wake_quiet came after
the CAS, and it rang this waiter, whose bits were up before its tail load.

The repro pins both processes with gdb: the producer between its wake and its CAS,
then the waiter between fq_idle and fq_put_in_flight, then the producer's commit
up to its fq_wake, where it is killed.

A test that shows a defect asserts the wanted behaviour and is a strict xfail
whose reason names the defect, where it is and a fix.  No timing assertion (BOUND
is a liveness bound: a lost wake-up is a sleep with no end).
"""

import os
import select
import signal
import time

from support import procs as _procs
from support.cring import Q, sleepers as _sleepers
from support.cseg import lib
from support.ctopic import T
from support.gdbstop import BOUND, gdb_at, line_of, need_gdb, no_asan

FOREVER = (1 << 64) - 1
SLICE = 50 * 1000 * 1000


def _getter(path, go_r, done_w):
    """A blocked get: wait with no limit (quiet when nothing is in flight), recover
    and try a get between sleeps; report the message it got."""
    q = Q.open(path)
    os.read(go_r, 1)
    while True:
        lib.fq_wait_for(q.q, lib.FQ_WAIT_DATA, 0, SLICE, FOREVER, lib.FQ_STRATEGY_SLEEP)
        lib.fq_recover(q.q)
        rc, c = q.begin()
        if rc == 0:
            msgs = q.read(c)
            q.end(c)
            os.write(done_w, msgs[0])
            return 0


def _subscriber(path, go_r, done_w):
    """The same for a topic's subscriber (subscribed before the go: latest is 0)."""
    t = T.open(path)
    s = t.subscribe("w1")
    os.write(done_w, b"S")
    os.read(go_r, 1)
    while True:
        lib.fq_sub_wait_for(s.s, SLICE, FOREVER, lib.FQ_STRATEGY_SLEEP)
        lib.fq_recover(t.q)
        rc, c = s.begin()
        if rc == 0:
            msgs = s.read(c)
            s.end(c)
            os.write(done_w, msgs[0][1])
            return 0


def _producer(path, go_r, kind):
    q = kind.open(path)
    os.read(go_r, 1)
    q.put(b"committed")
    return 1


def _wait_file(p):
    deadline = time.monotonic() + BOUND
    while not p.exists():
        assert time.monotonic() < deadline, "never reached %s" % p.name
        time.sleep(0.01)


def _put_inside_a_quiet_check(tmp_path, kill_before_wake, kind=Q):
    path = tmp_path / "q.seg"
    q = kind.create(path)
    p_at, p_go, w_at, w_go = (tmp_path / n for n in ("p_at", "p_go", "w_at", "w_go"))
    pg_r, pg_w = os.pipe()
    wg_r, wg_w = os.pipe()
    done_r, done_w = os.pipe()
    getter = _procs.fork(_getter if kind is Q else _subscriber, path, wg_r, done_w)
    if kind is T:
        assert select.select([done_r], [], [], BOUND)[0], "the subscriber never subscribed"
        assert os.read(done_r, 1) == b"S"
    producer = _procs.fork(_producer, path, pg_r, kind)
    gdbs = []
    try:
        cas = line_of("csrc/fq_put.c", "atomic_compare_exchange_weak_explicit(&ctl->tail"
                      if kind is Q else "if (fq_topic_claim(q, &t, &cnt, span, n))")
        wake = line_of("csrc/fq_put.c", "fq_wake(q, q->topic ? -1 : FQ_WAIT_DATA)")
        scan = line_of("csrc/fq_internal.h",
                       "if (FQ_SLOT_KIND(atomic_load_explicit(&q->slots[sl].word, SEQ)) == "
                       "FQ_SLOT_FREE)")
        tail_then = (["break fq_put.c:%d" % wake, "continue", "kill"] if kill_before_wake
                     else ["delete", "detach"])
        gdbs.append(gdb_at(producer, "fq_put.c:%d" % cas, [
            "shell touch %s" % p_at,
            "shell while [ ! -e %s ]; do sleep 0.01; done" % p_go] + tail_then))
        gdbs.append(gdb_at(getter, "fq_internal.h:%d" % scan, [
            "shell touch %s" % w_at,
            "shell while [ ! -e %s ]; do sleep 0.01; done" % w_go,
            "delete", "detach"]))
        # 1. the producer: intent, fence, fq_wake_quiet (nobody's bits are up), stop
        #    before its tail CAS
        os.write(pg_w, b"G")
        _wait_file(p_at)
        assert _sleepers(q) == (0, 0, 0)
        # 2. the getter: bits up, ready() no, fq_idle() yes (tail not moved), stop
        #    before its scan of the intents
        os.write(wg_w, b"G")
        _wait_file(w_at)
        data, _space, quiet = _sleepers(q)
        assert data and quiet, "the getter is not between its bits and its intent scan"
        assert q.stats()["tail"] == 0
        # 3. the producer: CAS, headers, copy, commit (IDLE), then killed just before
        #    its fq_wake (or, control, runs to its end)
        p_go.touch()
        code = _procs.reap(producer, BOUND)
        assert code == (-9 if kill_before_wake else 1)
        assert q.stats()["tail"] > 0, "the put did not claim"
        if kind is Q:
            assert q.qsize() == 1, "the message is not committed"
        # 4. the getter: scans the intents (all IDLE now) and sleeps
        w_go.touch()
        for g in gdbs:
            g.wait(BOUND)
        r, _, _ = select.select([done_r], [], [], 5.0)  # 100 of its 50 ms slices
        assert r, ("a blocked get() sleeps with no timer beside a committed message: "
                   "its quiet rule read tail before the put's CAS and the producer's "
                   "lane after its commit, and the producer died before its fq_wake")
        assert os.read(done_r, 64) == b"committed"
        assert _procs.reap(getter) == 0
    finally:
        for p in (p_go, w_go):
            p.touch()
        for pid in (getter, producer):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        for g in gdbs:
            try:
                g.wait(BOUND)
            except Exception:
                g.kill()
        q.close()


@need_gdb
@no_asan
def test_a_put_inside_a_getters_quiet_check_whose_producer_dies_before_its_wake_is_got(
        tmp_path):
    _put_inside_a_quiet_check(tmp_path, kill_before_wake=True)


@need_gdb
@no_asan
def test_a_publish_inside_a_subscribers_quiet_check_whose_publisher_dies_is_got(tmp_path):
    _put_inside_a_quiet_check(tmp_path, kill_before_wake=True, kind=T)


@need_gdb
@no_asan
def test_control_a_put_inside_a_getters_quiet_check_wakes_it_by_its_commit(tmp_path):
    """The same interleaving with the producer alive: its commit's fq_wake sees the
    getter's data bit (raised before the getter's tail load, which preceded the
    CAS) and wakes it."""
    _put_inside_a_quiet_check(tmp_path, kill_before_wake=False)


@need_gdb
@no_asan
def test_control_a_publish_inside_a_subscribers_quiet_check_wakes_it_by_its_commit(
        tmp_path):
    _put_inside_a_quiet_check(tmp_path, kill_before_wake=False, kind=T)

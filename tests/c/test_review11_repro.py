"""Reproductions of the findings of review 11 (docs/review11.md): the C changes of
issue 14 (the delivery meta in the record header's owner field, nack(delay=), the
group subject filter) and the re-fixes of review 10's R3/R4.  Each test asserts the
correct behaviour and is a strict xfail whose reason names the defect, where it is
and a fix at the root; each was seen failing on main (a368b52).

No timing assertion.  A window without a named crash or pause point of the core is
hit exactly with gdb: a breakpoint in a child process, which is killed there or
held there while the test acts (as test_review9_repro's waker test).  A delayed
record seen 74 hours later is a child process whose CLOCK_REALTIME is shifted by an
LD_PRELOAD shim (the only clock the not-before is measured with).
"""

import os
import subprocess
import sys
import textwrap
import time

import pytest

from support import procs as _procs
from support.cring import Q
from support.cseg import ffi, lib, mk, open_seg, seq_of
from support.ctopic import DURABLE, GROUP, T
from support.gdbstop import gdb_at as _gdb, line_of as _line_of, need_gdb, no_asan

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
BOUND = 60.0

def _wait_file(path, what):
    deadline = time.monotonic() + BOUND
    while not os.path.exists(path):
        assert time.monotonic() < deadline, what
        time.sleep(0.01)


# ---------------------------------------------------------------------------
# F1: a record given back with a delay is taken at once by a taker that read
# its meta before the give-back (the REQUEUED word is the same every time: ABA)


def _taker_child(path, go_r, res_w):
    rc, h, err = open_seg(path)
    assert rc == 0, err
    os.read(go_r, 1)
    c = ffi.new("fq_claim *")
    rc = lib.fq_get_begin(h, 1, 1 << 40, c)  # the test's gdb holds us inside
    os.write(res_w, b"%d %d" % (rc, c.attempt if rc == lib.FQ_OK else 0))
    return 0


@need_gdb
@no_asan
def test_a_record_nacked_with_a_delay_is_not_taken_at_once(tmp_path):
    path = str(tmp_path / "q.seg")
    q = Q.create(path)
    assert q.put(mk(0, 64)) == lib.FQ_OK
    rc, c = q.begin()
    assert rc == lib.FQ_OK
    q.abort(c)  # REQUEUED, no not-before: visible to every taker
    go_r, go_w = os.pipe()
    res_r, res_w = os.pipe()
    stopped, cont = str(tmp_path / "stopped"), str(tmp_path / "cont")
    pid = _procs.fork(_taker_child, path, go_r, res_w)
    g = None
    try:
        with open(str(tmp_path / "gdb.log"), "w") as log:
            # the first intent the taker writes is its take of the requeued record:
            # after the walk read the meta, before the CAS of the word
            g = _gdb(pid, "fq_intent_claim", ["shell touch " + stopped,
                                              "shell while [ ! -e %s ]; do sleep 0.01; done" % cont,
                                              "detach", "quit"], log)
            os.write(go_w, b"G")
            _wait_file(stopped, "the taker did not reach its take")
            # meanwhile: another consumer takes the record and nacks it for 60 s
            rc, c = q.begin()
            assert rc == lib.FQ_OK and c.taken == 1, (rc, c.taken)
            assert [seq_of(m) for m in q.read(c)] == [0]
            lib.fq_get_nack(q.q, c, 60000)
            open(cont, "w").close()
            g.wait(BOUND)
        got = os.read(res_r, 64).split()
        assert _procs.reap(pid) == 0
        # the record is due in 60 s: nobody may have it now
        assert int(got[0]) == lib.FQ_EMPTY, (
            "the taker received the record just nacked with a 60 s delay (attempt %s)" % got[1])
    finally:
        if g is not None and g.poll() is None:
            g.kill()
        _procs.kill_and_reap(pid)
        for fd in (go_r, go_w, res_r, res_w):
            os.close(fd)
        q.close()


# ---------------------------------------------------------------------------
# F2: the not-before is kept modulo 2^24 units of 16 ms (74.6 h): an expired one
# comes back as "up to an hour ahead" 73.6 to 74.6 hours later


_SHIFT_CLOCK = r"""
#define _GNU_SOURCE
#include <dlfcn.h>
#include <stdlib.h>
#include <time.h>
/* CLOCK_REALTIME FQT_SHIFT_S seconds later: a process living that much later */
int clock_gettime(clockid_t clk, struct timespec *ts)
{
    static int (*real)(clockid_t, struct timespec *);
    if (!real)
        real = (int (*)(clockid_t, struct timespec *))dlsym(RTLD_NEXT, "clock_gettime");
    int rc = real(clk, ts);
    const char *s = getenv("FQT_SHIFT_S");
    if (rc == 0 && clk == CLOCK_REALTIME && s)
        ts->tv_sec += atoll(s);
    return rc;
}
"""

_LATER_GET = textwrap.dedent("""
    import sys, time
    import fastq
    print(repr(time.time()))
    q = fastq.Queue(sys.argv[1])
    try:
        print(repr(q.get_nowait()))
    except fastq.Empty:
        print("EMPTY")
""")


@pytest.fixture
def later_env(tmp_path):
    """later_env(seconds): the environment of a process whose CLOCK_REALTIME reads
    that many seconds later than ours"""
    cc = os.environ.get("CC", "cc")
    src = tmp_path / "later.c"
    src.write_text(_SHIFT_CLOCK)
    so = tmp_path / "later.so"
    subprocess.run([cc, "-shared", "-fPIC", "-o", str(so), str(src), "-ldl"], check=True)
    pre = os.environ.get("LD_PRELOAD", "")

    def env(seconds):
        return _procs.child_env({"LD_PRELOAD": (pre + " " + str(so)).strip(),
                                 "FQT_SHIFT_S": seconds})
    return env


def _get_later(name, env, seconds):
    """(its time.time(), its get_nowait() result or "EMPTY") of a process living
    `seconds` later"""
    r = subprocess.run([sys.executable, "-c", _LATER_GET, name], env=env(seconds),
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    t, got = r.stdout.split("\n")[:2]
    return float(t), got


def test_a_delayed_record_is_visible_74_hours_later(tmp_path, later_env):
    import fastq
    ctl, late = str(tmp_path / "ctl"), str(tmp_path / "late")
    for name in (ctl, late):
        q = fastq.Queue(name, capacity=4096)
        q.put(name)
        d = q.receive()
        d.nack(delay=0.05)  # due 50 ms from now
        q.close()
    # the shim works: a process 2 hours later sees that clock and the record due
    t0 = time.time()
    t, got = _get_later(ctl, later_env, 7200)
    assert t >= t0 + 7200, "the clock shim did not take"
    assert got == repr(ctl)
    # 74 hours later the record is long due: a get receives it
    t, got = _get_later(late, later_env, 74 * 3600)
    assert t >= t0 + 74 * 3600
    assert got == repr(late), "a record due 74 hours ago was not visible (%s)" % got


# ---------------------------------------------------------------------------
# F3: a group's filter key outlives its members (a freed group's slot, a durable
# group): two members joining with the same new key refuse each other


_F3 = (
    "F3 (csrc/fq_sub.c fq_sub_filter / csrc/fq_members.c fq_subscribe): the group's filter key is never "
    "reset: a group made in a freed group's entry, or a durable group whose members all "
    "left, keeps the old key.  Two members that join before either states its filter "
    "both see a member (each other) and the stale key, unequal to theirs, and both get "
    "FQ_EINUSE although they bring the same filter (the failure a368b52 fixed for a new "
    "entry comes back).  Fix: under the segment lock, fq_subscribe stores filter 0 when "
    "it makes a group and when it adds a member to a group with no ACTIVE or ORPHAN "
    "member (a durable group's key is its members' key, not a memory of past ones)")


def test_two_members_of_a_group_made_in_a_freed_entry_agree(tmp_path):
    t = T.create(str(tmp_path / "t.seg"))
    try:
        old = t.subscribe("old", GROUP)
        assert lib.fq_sub_filter(old.s, 111) == lib.FQ_OK
        gi = t.member(old.index())["group"]
        old.unsubscribe()  # its group is freed
        a, b = t.subscribe("g", GROUP), t.subscribe("g", GROUP)  # both join, then state
        assert t.member(a.index())["group"] == t.member(b.index())["group"] == gi
        assert lib.fq_sub_filter(a.s, 222) == lib.FQ_OK
        assert lib.fq_sub_filter(b.s, 222) == lib.FQ_OK
    finally:
        t.close()


def test_two_members_rejoining_a_durable_group_with_a_new_filter_agree(tmp_path):
    t = T.create(str(tmp_path / "t.seg"))
    try:
        old = t.subscribe("d", DURABLE)
        assert lib.fq_sub_filter(old.s, 111) == lib.FQ_OK
        old.unsubscribe()  # the durable group stays, nobody in it
        a, b = t.subscribe("d", DURABLE), t.subscribe("d", DURABLE)
        assert lib.fq_sub_filter(a.s, 222) == lib.FQ_OK
        assert lib.fq_sub_filter(b.s, 222) == lib.FQ_OK
    finally:
        t.close()


# ---------------------------------------------------------------------------
# F4: a producer killed between zeroing a record's meta (the owner field) and its
# COMMITTED store leaves a WRITING record that recovery no longer knows as its own


_F4 = (
    "F4 (csrc/fq_put.c fq_put_commit + the producer repair): fq_put_commit stores meta 0 "
    "into the header's owner field, then the COMMITTED word; a producer (not slot 0 lane "
    "0) SIGKILLed between the two leaves a WRITING record whose owner reads 0, not its "
    "slot << 8 | lane.  Recovery finds its WRITING records by that owner "
    "(fq_count_states, the ABANDONED pass): it counts this one as committed and leaves "
    "it WRITING, and every consumer waits at it forever (the queue is wedged; a block "
    "topic the same).  Fix: the repair of a dead producer lane takes every WRITING "
    "record inside its intent [pos, end) as its own (the range was claimed by that lane "
    "alone; no owner match needed), or the commit keeps the owner until the word says "
    "COMMITTED (the meta is only read from REQUEUED records: zero it when taking, or "
    "write it with the word in one 16-byte store)")


def _producer_child(path, go_r):
    rc, h, err = open_seg(path)
    assert rc == 0, err
    os.read(go_r, 1)
    lib.fq_put(h, mk(1, 64), 64)  # the test's gdb kills us inside its commit
    return 3


def _assert_not_wedged(q):
    """recovery repairs the dead put; the next message then comes through"""
    for _ in range(10):
        if not q.recover():
            break
    assert q.put(mk(2, 64)) == lib.FQ_OK
    got = []
    for _ in range(10):
        rc, c = q.begin()
        if rc == lib.FQ_EMPTY:
            break
        assert rc == lib.FQ_OK, rc
        got += [seq_of(m) for m in q.read(c)]
        q.end(c)
    assert 2 in got, "the queue is wedged at the dead producer's record (got %r, %r)" % (
        got, q.stats())


@need_gdb
@no_asan
def test_producer_killed_inside_its_commit_does_not_wedge_the_queue(tmp_path):
    path = str(tmp_path / "q.seg")
    q = Q.create(path)
    try:
        assert q.begin()[0] == lib.FQ_EMPTY  # we hold slot 0: the child's owner is not 0
        line = _line_of("csrc/fq_put.c", "fq_tag_of(q, p) | FQ_REC_COMMITTED, REL")
        go_r, go_w = os.pipe()
        pid = _procs.fork(_producer_child, path, go_r)
        try:
            with open(str(tmp_path / "gdb.log"), "w") as log:
                g = _gdb(pid, "fq_put.c:%d" % line, ["kill", "quit"], log)
                os.write(go_w, b"G")
                g.wait(BOUND)
            assert _procs.reap(pid) == -9, "the producer was not killed inside its commit"
        finally:
            _procs.kill_and_reap(pid)
            os.close(go_r)
            os.close(go_w)
        assert lib.fqt_rec_state(q.q, 0) == lib.FQ_REC_WRITING  # killed before its commit
        _assert_not_wedged(q)
    finally:
        q.close()


def _producer_before_commit(path):
    rc, h, err = open_seg(path)
    assert rc == 0, err
    lib.fq_test_set_crash_point(b"put_before_commit", 1)
    lib.fq_put(h, mk(1, 64), 64)
    return 3


def test_producer_killed_inside_its_commit_does_not_wedge_the_queue_handmade(tmp_path):
    """F4 without gdb: killed at put_before_commit, then the one store fq_put_commit
    makes before the COMMITTED word (meta 0 into the owner field) made by hand"""
    path = str(tmp_path / "q.seg")
    q = Q.create(path)
    try:
        assert q.begin()[0] == lib.FQ_EMPTY  # we hold slot 0
        pid = _procs.fork(_producer_before_commit, path)
        assert _procs.reap(pid) == 9, "the producer did not die at put_before_commit"
        assert lib.fqt_rec_state(q.q, 0) == lib.FQ_REC_WRITING
        owner = ffi.cast("uint32_t *", ffi.cast("char *", lib.fqt_rec_data(q.q, 0)) - 4)
        assert owner[0] != 0  # slot << 8 | lane of the dead producer
        owner[0] = 0  # fq_meta_store(r, 0): the store before the COMMITTED word
        _assert_not_wedged(q)
    finally:
        q.close()


# ---------------------------------------------------------------------------
# F5: a member killed inside fq_sub_hold (its claim given back whole), between its
# `again` and `held` stores, leaves a claim whose taker counts one delivery too many


def _holder_child(path, go_r, res_w):
    rc, h, err = open_seg(path)
    assert rc == 0, err
    t = T(h, path)
    s = t.subscribe("g", GROUP)
    rc, c = s.begin()
    assert rc == lib.FQ_OK and c.n == 1 and c.attempt == 1, (rc, c.n, c.attempt)
    os.write(res_w, b"C")
    os.read(go_r, 1)
    s.hold(c, 0, 1)  # nack: the whole claim back; the test's gdb kills us inside
    return 3


@need_gdb
@no_asan
def test_member_killed_giving_its_claim_back_is_taken_over_as_the_second_delivery(tmp_path):
    path = str(tmp_path / "t.seg")
    t = T.create(path)
    try:
        b = t.subscribe("g", GROUP)  # the group, at the tail: the message below is its
        assert t.put(mk(0, 64)) == lib.FQ_OK
        # fq_sub_hold's last store (held, for lag), after its count of deliveries
        line = _line_of("csrc/fq_sub.c", "atomic_store_explicit(&mine->held, 1, RLX);")
        go_r, go_w = os.pipe()
        res_r, res_w = os.pipe()
        pid = _procs.fork(_holder_child, path, go_r, res_w)
        try:
            assert os.read(res_r, 1) == b"C"  # the child's member holds the message
            with open(str(tmp_path / "gdb.log"), "w") as log:
                g = _gdb(pid, "fq_sub.c:%d" % line, ["kill", "quit"], log)
                os.write(go_w, b"G")
                g.wait(BOUND)
            assert _procs.reap(pid) == -9, "the member was not killed inside fq_sub_hold"
        finally:
            _procs.kill_and_reap(pid)
            for fd in (go_r, go_w, res_r, res_w):
                os.close(fd)
        t.recover()  # the dead member's claim becomes the group's orphan
        rc, c = b.begin()
        assert rc == lib.FQ_OK and c.redelivered, (rc, c.redelivered)
        assert [seq_of(m) for _, m in b.read(c)] == [0]
        # delivered once to the dead member, given back: this is its second delivery
        assert c.attempt == 2, "the message taken over came as attempt %d" % c.attempt
        b.end(c)
    finally:
        t.close()


def _publisher_before_commit(path):
    rc, h, err = open_seg(path)
    assert rc == 0, err
    lib.fq_test_set_crash_point(b"put_before_commit", 1)
    lib.fq_put(h, mk(1, 64), 64)
    return 3


def test_publisher_killed_inside_its_commit_does_not_wedge_the_topic_handmade(tmp_path):
    """F4 on a block topic (the same fq_put_commit and producer repair): its
    subscriber waits at the dead publisher's record forever"""
    path = str(tmp_path / "t.seg")
    t = T.create(path)
    try:
        s = t.subscribe("a")
        assert t.put(mk(0, 64)) == lib.FQ_OK  # we hold slot 0
        assert [seq_of(m) for _, m, _ in s.drain()] == [0]
        pid = _procs.fork(_publisher_before_commit, path)
        assert _procs.reap(pid) == 9, "the publisher did not die at put_before_commit"
        pos = t.stats()["tail"] - lib.fqt_rec_size(64 + 16)
        assert lib.fqt_rec_state(t.q, pos) == lib.FQ_REC_WRITING
        owner = ffi.cast("uint32_t *", ffi.cast("char *", lib.fqt_rec_data(t.q, pos)) - 4)
        assert owner[0] != 0
        owner[0] = 0  # fq_meta_store(r, 0): the store before the COMMITTED word
        for _ in range(10):
            if not t.recover():
                break
        assert t.put(mk(2, 64)) == lib.FQ_OK
        got = [seq_of(m) for _, m, _ in s.drain()]
        assert got == [2], "the subscriber is stuck at the dead publisher's record (%r)" % got
    finally:
        t.close()


# ---------------------------------------------------------------------------
# F7: unlink() (review 10's R3 re-fix) opens the name to read the creation's bytes:
# a name that now names something that cannot be opened raises instead of being
# left alone


def test_unlink_leaves_a_socket_now_under_the_name_alone(tmp_path):
    import socket

    import fastq
    q = fastq.Queue(str(tmp_path / "q"), capacity=4096)
    path = q.path
    sock = socket.socket(socket.AF_UNIX)
    try:
        os.unlink(path)  # removed by someone else, and the name reused for a socket
        sock.bind(path)
        q.unlink()
        assert os.path.exists(path), "unlink() removed the socket"
    finally:
        sock.close()
        q.close()


# ---------------------------------------------------------------------------
# F8: a message waiting out its nack delay counts in qsize() (and makes empty()
# false), though get() cannot take it


def test_a_delayed_message_is_not_counted_as_what_get_can_take(tmp_path):
    import fastq
    q = fastq.Queue(str(tmp_path / "q"), capacity=4096)
    try:
        q.put(1)
        q.receive().nack(delay=600)
        with pytest.raises(fastq.Empty):
            q.get_nowait()
        assert (q.qsize(), q.empty()) == (0, True)
        assert q.unfinished() == 1  # still to be finished: it comes back
    finally:
        q.close()

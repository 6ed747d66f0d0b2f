"""Reproductions of the findings of review 15 (docs/review15.md): the C changes of
h/counters (a6ebdf1..7ca989f): the per-lane sample mark (fq_sample_due), the unlocked
statistics add, FQ_NO_COUNTERS, and a queue's unacknowledged deliveries (the held word
of a consumer lane, fq_get_mark_unacked / fq_held_read, layout 12).

A test that shows a defect asserts the wanted behaviour and is a strict xfail whose
reason names the defect, where it is and a fix.  The others check a suspicion the
review refuted, so that it stays refuted.  No timing assertion.

H1, R1 and T1 were strict xfails; h/fixcount fixed them and took the markers off
(the _H1, _R1 and _T1 strings below still say what was wrong and where).
"""

import os
import signal

import pytest

import fastq
from support import procs as _procs
from support.cli import fastq_json
from support.cring import Q, crash_recoverer_child
from support.cseg import ffi, lib, recover_fully
from support.gdbstop import BOUND, gdb_at, line_of, need_gdb, no_asan
from support.procs import start_py


def _held(q):
    c = ffi.new("fq_counts *")
    lib.fq_counts_read(q.q, c)
    return c.held, c.held_since_ns


# ---- H1: a held word is never cleared, and a later claim at the same position
# ---- (a requeued record taken again) matches it ---------------------------------

_H1 = (
    "H1 (csrc/fq_get.c fq_get_mark_unacked / fq_inspect.c fq_held_read): the held word "
    "of a consumer lane is never cleared when its claim ends (ack, nack, recovery), and "
    "a reader counts it whenever the lane is WON at the position it names.  A record "
    "given back (nack, or recovery of a killed holder) keeps its position; the next "
    "claim of it on that lane (a get(), in this process or in the slot's next owner) "
    "is then counted as an unacknowledged receive() delivery, with the old receive's "
    "time as 'oldest'; a get() killed there stays counted until recovery.  Fix: clear "
    "the held word when the marked claim ends (fq_get_end / fq_give_back, before the "
    "IDLE store; a flag in fq_claim says it was marked, so get() pays nothing) and in "
    "recovery (fq_fix_cons_count, before RECOVERED) - or clear it in fq_intent_claim "
    "for consumers (one store to the line the claim writes anyway)")


def test_a_get_of_a_record_nacked_on_its_lane_is_not_a_held_delivery(seg):
    q = seg()
    assert q.put(b"x") == 0
    rc, a = q.begin()  # receive(): claim, then the mark
    assert rc == 0
    lib.fq_get_mark_unacked(q.q, a)
    n, since = _held(q)
    assert n == 1 and since > 0
    lane = a.lane
    q.abort(a)  # nack(): the record is requeued at the same position
    assert _held(q) == (0, 0)
    rc, b = q.begin()  # a get(): takes the requeued record, on the same lane
    assert rc == 0 and b.lane == lane and b.redelivered
    try:
        assert _held(q) == (0, 0), "a get() in progress counted as an unacked delivery"
    finally:
        q.end(b)


_CHILD_GET_BLOCKED_IN_LOADS = """
import sys, time, fastq

class Ser:
    calls = 0
    def dumps(self, o):
        return o
    def loads(self, b):
        Ser.calls += 1
        if Ser.calls == %d:  # the get(): block inside loads, its claim open
            print("in get", flush=True)
            time.sleep(600)
        return b

q = fastq.Queue.open(%r, serializer=Ser())
%s
q.get(timeout=30)
"""


def test_held_through_fastq_stat_a_get_after_a_nack_is_not_a_delivery(fastq_dir, procs):
    q = fastq.Queue("h1", serializer="raw")
    q.put(b"one")
    # one process: receive() the message, nack() it, then get() it (the same lane,
    # the same position), blocked in loads while `fastq stat` looks
    p = start_py(procs, _CHILD_GET_BLOCKED_IN_LOADS % (2, "h1", "q.receive(timeout=30).nack()"))
    assert p.stdout.readline().strip() == "in get", p.stderr.read()
    s = fastq_json("stat", "h1")
    assert s["unacked"] == 1, s  # the get()'s claim: a message delivered, not finished
    try:
        assert s["unacked_deliveries"] == 0, s  # but no receive() delivery is open
    finally:
        os.kill(p.pid, signal.SIGKILL)
        p.wait(timeout=60)
        q.close()


def test_held_through_fastq_stat_a_dead_holders_word_is_not_the_next_owners(fastq_dir, procs):
    q = fastq.Queue("h1b", serializer="raw")
    q.put(b"one")  # this process takes its slot first
    holder = start_py(procs, """
import time, fastq
q = fastq.Queue.open("h1b", serializer="raw")
d = q.receive(timeout=30)
print("held", flush=True)
time.sleep(600)
""")
    assert holder.stdout.readline().strip() == "held", holder.stderr.read()
    assert fastq_json("stat", "h1b")["unacked_deliveries"] == 1
    os.kill(holder.pid, signal.SIGKILL)
    holder.wait(timeout=60)
    assert q.recover()  # the message is requeued, the holder's slot freed
    s = fastq_json("stat", "h1b")
    assert s["unacked_deliveries"] == 0 and s["depth"] == 1 and s["dead_processes"] == 0
    # the slot's next owner get()s the requeued message on the same lane, blocked
    # in loads: its claim is at the position the dead holder's word names
    p = start_py(procs, _CHILD_GET_BLOCKED_IN_LOADS % (1, "h1b", ""))
    assert p.stdout.readline().strip() == "in get", p.stderr.read()
    s = fastq_json("stat", "h1b")
    assert s["unacked"] == 1, s
    try:
        assert s["unacked_deliveries"] == 0, s
    finally:
        os.kill(p.pid, signal.SIGKILL)
        p.wait(timeout=60)
        q.close()


# ---- R1 (outside the diff, the counters' recovery): a recoverer killed between
# ---- counting a dead consumer's claim and settling it counts it twice -----------

_R1 = (
    "R1 (csrc/fq_recover.c fq_recover, not changed by h/counters): rec_gets is added "
    "for a dead consumer lane that is WON or CLAIMING, and only then does "
    "fq_fix_cons_count store RECOVERED; a recoverer killed between the two leaves the "
    "lane WON, and the next recoverer counts the same claim again (recovered_gets 2 "
    "for one claim).  Fix: count inside fq_fix_cons_count after its RECOVERED store "
    "(or count when a RECOVERED lane is made IDLE), so that the count follows the "
    "state change that makes it once; rec_slots (added after the slot's CAS) has the "
    "opposite window: undercounted by a kill between the CAS and the add")


def _dead_consumer(path):
    q = Q.open(path)
    rc, c = q.begin()
    assert rc == 0
    return 0  # exits holding the claim


def _recovered_once(q):
    """recover what is left; the dead claim's message comes back once: the counts"""
    recover_fully(q)
    c = ffi.new("fq_counts *")
    lib.fq_counts_read(q.q, c)
    assert c.rec_slots == 1 and c.held == 0
    rc, msgs, red = q.get()
    assert rc == 0 and msgs == [b"m"] and red
    assert q.get()[0] != 0  # once
    return c


def _recoverer(path, go_r):
    q = Q.open(path)
    os.read(go_r, 1)
    lib.fq_recover(q.q)
    return 0


@need_gdb
@no_asan
def test_a_recoverer_killed_after_counting_a_dead_claim_does_not_count_it_twice(tmp_path):
    path = tmp_path / "r1.seg"
    q = Q.create(path)
    try:
        assert q.put(b"m") == 0
        assert _procs.reap(_procs.fork(_dead_consumer, path)) == 0
        go_r, go_w = os.pipe()
        pid = _procs.fork(_recoverer, path, go_r)
        try:
            line = line_of("csrc/fq_recover.c", "fq_fix_cons_count(q, s, l);")
            gdb = gdb_at(pid, "fq_recover.c:%d" % line, ["kill"])
            os.write(go_w, b"G")
            gdb.wait(BOUND)
            assert _procs.reap(pid) == -9, "the recoverer was not stopped in fq_recover"
        finally:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        c = _recovered_once(q)
        assert c.rec_gets == 1, "one dead claim counted %d times" % c.rec_gets
    finally:
        q.close()


def test_a_recoverer_killed_after_settling_a_dead_claim_leaves_it_uncounted(tmp_path):
    """R1's other window, after the fix: the recoverer is killed after its
    RECOVERED store and before its add.  The next one finds the lane settled and
    does not count it: recovered_gets stays 0 (the undercount by one the README
    documents), never 2; the message itself comes back once."""
    path = tmp_path / "r1b.seg"
    q = Q.create(path)
    try:
        assert q.put(b"m") == 0
        assert _procs.reap(_procs.fork(_dead_consumer, path)) == 0
        # killed by its crash point between fq_fix_cons_count and the add
        pid = _procs.fork(crash_recoverer_child, path, "recover_before_gets_count")
        assert _procs.reap(pid) == 9, "the recoverer did not die at its crash point"
        c = _recovered_once(q)
        assert c.rec_gets == 0, "a settled claim counted %d times" % c.rec_gets
    finally:
        q.close()


# ---- refuted: the sample mark (fq_sample_due) misses no sample point ----------------


def test_sample_mark_misses_no_point_with_lanes_interleaved(seg):
    """Claims of several lanes of one handle interleaved on both sides (a claim held
    open on one lane while others go on), each claim at most one span: every sample
    point that both a commit and a fresh claim cover gives one wait, as the exact
    test of every claim (the code before the mark) would."""
    import random

    q = seg(capacity=1 << 16)
    span = max(q.cap // 16, 4096)  # fq_layout.h, "Time in queue"
    rng = random.Random(15)
    open_puts, open_gets = [], []
    put_claims, get_claims = [], []
    lanes = [set(), set()]
    moved = 0

    def commit(cl):
        c = cl[0]
        lib.fq_put_commit(q.q, c)
        put_claims.append((c.pos, c.end))
        lanes[0].add(c.lane)

    def end(c):
        q.end(c)

    while moved < (1 << 16) - 8192 or open_puts or open_gets:
        r = rng.random()
        room = moved < (1 << 16) - 8192
        if r < 0.25 and room and len(open_puts) < 2:
            n = rng.randrange(1, 4)
            lens = [rng.randrange(8, 300) for _ in range(n)]
            lb = ffi.new("uint64_t[]", lens)
            c = ffi.new("fq_claim *")
            if lib.fq_put_begin(q.q, lb, n, c) != 0:
                continue
            for x in lens:
                ffi.memmove(lib.fq_claim_buf(q.q, c), b"p" * x, x)
            open_puts.append((c, lb))  # lb: the claim points at the lengths
            moved += c.end - c.pos
        elif r < 0.45 and open_puts:
            commit(open_puts.pop(rng.randrange(len(open_puts))))
        elif r < 0.7 and len(open_gets) < 2:
            rc, c = q.begin(rng.randrange(1, 4))
            if rc == 0:
                if not c.redelivered:
                    get_claims.append((c.pos, c.end))
                lanes[1].add(c.lane)
                open_gets.append(c)
        elif open_gets:
            end(open_gets.pop(rng.randrange(len(open_gets))))
        elif not room and open_puts:
            commit(open_puts.pop())
    while True:  # what is left
        rc, c = q.begin(4)
        if rc:
            break
        get_claims.append((c.pos, c.end))
        q.end(c)
    assert lanes[0] >= {0, 1} and lanes[1] >= {0, 1}, lanes

    def keys(claims):
        out = []
        for a, b in claims:
            assert b - a <= span
            if ((a - 1) % (1 << 64)) // span != (b - 1) // span:  # fq_sample_at
                out.append((b - 1) // span + 1)
        assert len(out) == len(set(out))
        return set(out)

    both = keys(put_claims) & keys(get_claims)
    assert len(both) >= 8
    buf = ffi.new("fq_wait_sample[]", lib.fq_waits_max(q.q))
    assert lib.fq_waits_read(q.q, buf, lib.fq_waits_max(q.q)) == len(both)


# ---- T1: the held time is CLOCK_MONOTONIC of the holder, read by another process ---

_T1 = (
    "T1 (csrc/fq_get.c fq_get_mark_unacked, fq_inspect.c fq_held_read, _stats.py): the "
    "held word keeps the holder's CLOCK_MONOTONIC and the reader subtracts it from its "
    "own; processes in different time namespaces (a container's) or a disk segment "
    "read after a reboot do not share that clock, so 'oldest unacked' is clamped to 0 "
    "(holder ahead) or inflated (holder behind, or a pre-reboot holder until recovery). "
    "Fix: keep ms of CLOCK_REALTIME since the segment's created_ns (fits the 40 bits "
    "for 34 years, and is the clock every process and boot shares), or document it "
    "next to the time-in-queue samples (which drop negative waits, fq_waits_read)")


def _unshare_time_ok():
    import shutil
    import subprocess
    if shutil.which("unshare") is None:
        return False
    r = subprocess.run(["unshare", "--time", "--monotonic", "1000", "true"],
                       capture_output=True)
    return r.returncode == 0


@pytest.mark.skipif(not _unshare_time_ok(), reason="needs unshare --time (a time namespace)")
def test_held_age_from_a_holder_in_another_time_namespace(fastq_dir, procs):
    import subprocess
    import sys
    import time

    from support.procs import child_env

    q = fastq.Queue("t1", serializer="raw")
    q.put(b"one")
    code = ("import time, fastq\n"
            "q = fastq.Queue.open('t1', serializer='raw')\n"
            "d = q.receive(timeout=30)\n"
            "print('held', flush=True)\n"
            "time.sleep(600)\n")
    p = procs.add(subprocess.Popen(
        ["unshare", "--time", "--monotonic", "1000000", sys.executable, "-c", code],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=child_env()))
    assert p.stdout.readline().strip() == "held", p.stderr.read()
    time.sleep(0.2)
    s = fastq_json("stat", "t1")
    try:
        assert s["unacked_deliveries"] == 1
        # the receive() came before the sleep (a causal bound, as test_queue_unacked's)
        assert s["oldest_unacked_s"] >= 0.2, s["oldest_unacked_s"]
    finally:
        os.kill(p.pid, signal.SIGKILL)
        p.wait(timeout=60)
        q.close()


@pytest.mark.skipif(not _unshare_time_ok(), reason="needs unshare --time (a time namespace)")
def test_subscriber_unacked_age_from_a_holder_in_another_time_namespace(fastq_dir, procs):
    """T1's twin on topics: a group member's unacked age (fq_sub_mark_unacked) was
    CLOCK_MONOTONIC of the holder, read against the reader's: a holder in another time
    namespace showed an age of 0 (clamped) or an inflated one."""
    import subprocess
    import sys
    import time

    from support.procs import child_env

    t = fastq.Topic("t1t", serializer="raw")
    code = ("import time, fastq\n"
            "t = fastq.Topic.open('t1t', serializer='raw')\n"
            "s = t.subscribe(group='g')\n"
            "print('joined', flush=True)\n"
            "d = s.receive(timeout=30)\n"
            "print('held', flush=True)\n"
            "time.sleep(600)\n")
    p = procs.add(subprocess.Popen(
        ["unshare", "--time", "--monotonic", "1000000", sys.executable, "-c", code],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=child_env()))
    try:
        assert p.stdout.readline().strip() == "joined", p.stderr.read()
        t.publish(b"one")
        assert p.stdout.readline().strip() == "held", p.stderr.read()
        time.sleep(0.2)
        rows = [r for r in fastq_json("stat", "t1t")["subscribers"] if r["group"] == "g"]
        assert len(rows) == 1 and rows[0]["unacked"] == 1, rows
        # the receive() came before the sleep (a causal bound)
        assert rows[0]["oldest_unacked_s"] >= 0.2, rows[0]["oldest_unacked_s"]
    finally:
        os.kill(p.pid, signal.SIGKILL)
        p.wait(timeout=60)
        t.close()

"""Review 17 (docs/review17.md): the C changes that fixed reviews 15 and 16.

- e3bb275 (review 16, I3): fq_wake_quiet rings and FUTEX_WAKEs only the slots
  whose quiet bit AND side bit are up.  The guards below stop a quiet sleeper
  (cffi, a forked child in fq_wait_for with no limit, on an idle queue) with
  gdb inside each window of its raise-bits-then-check, let a producer claim and
  die at put_after_claim (it publishes nothing, so only the claim's
  fq_wake_quiet or the sleeper's own quiet(q) can get it out of its timerless
  sleep), and require that the sleeper recovers the dead claim with no other
  process calling into the queue.  They pass on main: the refutation, kept.
- 5f37167 (review 16, I1): fq_get_ready under FQ_STATE_IMMEDIATE (guard).
- 8a133ae (review 15, H1/T1/R1): G2, a hostile created_ns wraps the held
  age's arithmetic in fq_held_read (strict xfail: statistics only).
- Predating these commits: W1 (fixed: the guards below), a producer killed
  between its tail CAS and its fq_wake_quiet left a timerless sleeper beside
  its claim.  Strict xfail: N1, a forked child's handle keeps armed[], so its quiet arm skips the
  bell_rung clear of its new slot and is never rung.

A test that shows a defect asserts the wanted behaviour and is a strict xfail
whose reason names the defect, where it is and a fix.  No timing assertion
(BOUND is a liveness bound: a lost wake-up is a sleep with no end).
"""

import os
import signal
import time

import pytest

from support import procs as _procs
from support.cring import Q, sleepers as _sleepers
from support.cseg import ffi, lib
from support.ctopic import DURABLE, EARLIEST, T
from support.gdbstop import BOUND, gdb_at, line_of, need_gdb, no_asan

FOREVER = (1 << 64) - 1
SLICE = 50 * 1000 * 1000


def _quiet_sleeper(path, go_r, done_w):
    """Block on the data side with no limit (deep: nothing in flight), recover and
    look (a get) between sleeps, and report once a dead claim is recovered and
    passed (head == tail > 0).  Never puts: whatever wakes it is another
    process's doing."""
    q = Q.open(path)
    os.read(go_r, 1)
    st = ffi.new("uint64_t[8]")
    while True:
        lib.fq_wait_for(q.q, lib.FQ_WAIT_DATA, 0, SLICE, FOREVER, lib.FQ_STRATEGY_SLEEP)
        lib.fq_recover(q.q)
        rc, c = q.begin()  # a get passes the recovered (skipped) region
        assert rc != 0, "nothing was published"
        lib.fq_stats(q.q, st)
        if st[0] > 0 and st[0] == st[1]:
            os.write(done_w, b"R")
            return 0


def _dying_producer(path):
    q = Q.open(path)
    lib.fq_test_set_crash_point(b"put_after_claim", 1)
    q.put(b"never")  # claims tail, fq_wake_quiet, then _exit(9) before any header
    return 1


def _stop_sleeper_in(tmp_path, where, want_quiet):
    """A quiet sleeper stopped by gdb at fq_wait.c line `where`; a producer claims
    and dies there; the sleeper runs on: it must recover the dead claim."""
    path = tmp_path / "q.seg"
    q = Q.create(path)
    at, go = tmp_path / "at", tmp_path / "go"
    go_r, go_w = os.pipe()
    done_r, done_w = os.pipe()
    pid = _procs.fork(_quiet_sleeper, path, go_r, done_w)
    gdb = None
    try:
        line = line_of("csrc/fq_wait.c", where)
        gdb = gdb_at(pid, "fq_wait.c:%d" % line, [
            "shell touch %s" % at,
            "shell while [ ! -e %s ]; do sleep 0.01; done" % go,
            "delete", "detach"])
        os.write(go_w, b"G")
        deadline = time.monotonic() + BOUND
        while not at.exists():
            assert time.monotonic() < deadline, "the sleeper never reached the window"
            time.sleep(0.01)
        data, _space, quiet = _sleepers(q)
        assert data, "stopped before the sleeper's data bit went up"
        assert bool(quiet) == want_quiet, "stopped at the wrong side of the quiet bit"
        assert _procs.reap(_procs.fork(_dying_producer, path)) == 9
        st = ffi.new("uint64_t[8]")
        lib.fq_stats(q.q, st)
        assert st[0] > st[1], "the dead producer's claim is not in flight"
        go.touch()
        gdb.wait(BOUND)
        import select
        r, _, _ = select.select([done_r], [], [], BOUND)
        assert r, ("the quiet sleeper never recovered the dead claim: it missed the "
                   "wake-up the claim owed it and sleeps with no timer")
        assert os.read(done_r, 1) == b"R"
        assert _procs.reap(pid) == 0
    finally:
        go.touch()  # a gdb left at the breakpoint leaves its wait loop
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        if gdb is not None:
            try:
                gdb.wait(BOUND)
            except Exception:
                gdb.kill()
        q.close()


@need_gdb
@no_asan
def test_a_claim_between_a_sleepers_side_bit_and_its_quiet_bit_is_seen_by_its_quiet_check(
        tmp_path):
    """The claimer's fq_wake_quiet loads the quiet bit before it is up: it rings
    nobody; the sleeper's quiet(q), after its RMW, sees tail != head: slices."""
    _stop_sleeper_in(tmp_path, "q->quiet_sleepers++;", want_quiet=False)


@need_gdb
@no_asan
def test_a_claim_after_a_sleepers_quiet_check_wakes_its_timerless_sleep(tmp_path):
    """The sleeper found nothing in flight and is about to FUTEX_WAIT(v) with no
    limit: the claim's fq_wake_quiet sees its quiet and data bits, its nap
    SLEEPING, and bumps data_seq, so the wait returns at once (EAGAIN)."""
    _stop_sleeper_in(tmp_path, "fq_futex_wait(seq, v, ns == FQ_FOREVER", want_quiet=True)


def test_an_immediate_shutdown_is_ready_and_a_reset_is_not(seg):
    """5f37167: fq_get_ready says 1 under IMMEDIATE whatever is held, as
    fq_get_begin raises ShutDown; after fq_reset_shutdown it is the rule again."""
    q = seg()
    assert q.put(b"a") == 0 and q.put(b"b") == 0
    rc, a = q.begin()
    assert rc == 0
    rc, b = q.begin()
    assert rc == 0
    assert lib.fq_ready(q.q, lib.FQ_WAIT_DATA, 0) == 0  # nothing left to take
    lib.fq_shutdown(q.q, 1)
    assert lib.fq_ready(q.q, lib.FQ_WAIT_DATA, 0) == 1
    assert q.begin()[0] == lib.FQ_SHUTDOWN
    lib.fq_reset_shutdown(q.q)
    assert lib.fq_ready(q.q, lib.FQ_WAIT_DATA, 0) == 0
    q.end(a)
    q.end(b)


# ---- G2: a hostile created_ns wraps the held age's sum ------------------------------

_G2 = (
    "G2 (csrc/fq_inspect.c fq_held_read, 8a133ae): ns = created_ns + (FQ_HELD_MS(h) - 1) "
    "* 1000000 uses the segment's created_ns unchecked; the comment's '< 2^64' holds only "
    "for an honest creation time.  A created_ns above 2^64 - 2^60 (a crafted or damaged "
    "file) wraps the sum, and held_since_ns comes out decades before the segment was "
    "made (_stats.py shows an unacked delivery ~56 years old).  Statistics only.  Fix: "
    "skip the word (or saturate) when FQ_HELD_MS(h) - 1 > (UINT64_MAX - created_ns) / "
    "1000000")

CREATED_NS_OFFSET = 72  # fq_layout.h: fq_ctrl.created_ns


def test_a_hostile_created_ns_does_not_wrap_the_held_age(seg):
    q = seg()
    assert q.put(b"m") == 0
    time.sleep(0.01)  # the mark: at least 10 ms after creation
    rc, c = q.begin()
    assert rc == 0
    lib.fq_get_mark_unacked(q.q, c)
    hostile = (1 << 64) - 1000
    with open(q.path, "r+b") as f:  # the mapping is shared: the handle sees it
        f.seek(CREATED_NS_OFFSET)
        f.write(hostile.to_bytes(8, "little"))
    counts = ffi.new("fq_counts *")
    lib.fq_counts_read(q.q, counts)
    try:
        assert counts.held == 1
        assert counts.held_since_ns == 0 or counts.held_since_ns >= hostile, (
            "held_since_ns wrapped to %d, below the segment's created_ns %d"
            % (counts.held_since_ns, hostile))
    finally:
        q.end(c)


# ---- W1: a producer killed between its tail CAS and its fq_wake_quiet ----------------
#
# W1 (csrc/fq_put.c fq_put_begin, predated e3bb275; fixed): the claim's fq_wake_quiet
# ran after the tail CAS, so a producer SIGKILLed between the two left a consumer that
# checked quiet(q) before the CAS asleep with no timer beside a claim in flight.  Now
# the producer stores its CLAIMING intent, fences, rings the quiet sleepers, and only
# then CASes tail; the queue's quiet rule (fq_state.c fq_quiet) sees the intent
# (fq_put_in_flight).  The first test kills the producer at the first statement after
# its CAS (before the fix: the wake's line); the second between its wake and its CAS.


def _deep_sleeper(path, done_w):
    q = Q.open(path)
    st = ffi.new("uint64_t[8]")
    while True:
        lib.fq_wait_for(q.q, lib.FQ_WAIT_DATA, 0, SLICE, FOREVER, lib.FQ_STRATEGY_SLEEP)
        lib.fq_recover(q.q)
        rc, c = q.begin()
        assert rc != 0, "nothing was published"
        lib.fq_stats(q.q, st)
        if st[0] > 0 and st[0] == st[1]:
            os.write(done_w, b"R")
            return 0


def _paused_producer(path, go_r, kind=Q):
    q = kind.open(path)
    os.read(go_r, 1)
    q.put(b"never")
    return 1


def _recovering_sleeper(path, done_w):
    """Block with no limit; report once a recovery between sleeps repairs a slot."""
    q = Q.open(path)
    while True:
        lib.fq_wait_for(q.q, lib.FQ_WAIT_DATA, 0, SLICE, FOREVER, lib.FQ_STRATEGY_SLEEP)
        if lib.fq_recover(q.q) > 0:
            os.write(done_w, b"R")
            return 0


def _kill_producer_beside_quiet_sleeper(tmp_path, sleeper_fn, at, kind=Q):
    """Start sleeper_fn(path, done_w) and wait until it sleeps with no timer; stop a
    producer's put (kind: Q a queue, T a topic) at the fq_put.c line containing at and
    kill it there.  Returns (tail, head) after the kill and whether the sleeper
    reported within 100 of its recovery slices."""
    import select
    path = tmp_path / "q.seg"
    q = kind.create(path)
    done_r, done_w = os.pipe()
    go_r, go_w = os.pipe()
    sleeper = _procs.fork(sleeper_fn, path, done_w)
    producer = None
    try:
        deadline = time.monotonic() + BOUND
        while not _sleepers(q)[2]:  # the sleeper's quiet bit: asleep with no timer
            assert time.monotonic() < deadline, "the consumer never slept quietly"
            time.sleep(0.01)
        producer = _procs.fork(_paused_producer, path, go_r, kind)
        line = line_of("csrc/fq_put.c", at)
        gdb = gdb_at(producer, "fq_put.c:%d" % line, ["kill"])  # gdb exits with it
        os.write(go_w, b"G")
        gdb.wait(BOUND)
        assert _procs.reap(producer) == -9, "the producer was not stopped at %r" % at
        st = ffi.new("uint64_t[8]")
        lib.fq_stats(q.q, st)
        r, _, _ = select.select([done_r], [], [], 5.0)  # 100 recovery slices of 50 ms
        return (st[0], st[1]), bool(r)
    finally:
        for pid in (sleeper, producer):
            if pid is None:
                continue
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        q.close()


@need_gdb
@no_asan
def test_a_producer_killed_between_its_claim_and_its_wake_leaves_no_sleeper_without_a_timer(
        tmp_path):
    # the first statement after the tail CAS (before W1's fix, the fq_wake_quiet line)
    (tail, head), recovered = _kill_producer_beside_quiet_sleeper(
        tmp_path, _deep_sleeper, "count << 2 | FQ_PH_WON, RLX")
    assert tail > head, "the dead producer's claim is not in flight"
    assert recovered, ("a consumer sleeps with no timer beside a dead producer's claim: "
                       "nobody recovers it until some other process calls into the queue")


@need_gdb
@no_asan
def test_a_producer_killed_between_its_wake_and_its_claim_is_recovered_by_the_quiet_sleeper(
        tmp_path):
    """W1's fix rings the quiet sleepers after the producer's intent and before its
    tail CAS: killed there, it claimed nothing, and the sleeper it rang sees its dead
    CLAIMING intent (not quiet), sleeps in slices and recovers the dead slot.  (Before
    the fix nothing rang the sleeper: the dead slot waited for another process.)"""
    (tail, head), recovered = _kill_producer_beside_quiet_sleeper(
        tmp_path, _recovering_sleeper, "atomic_compare_exchange_weak_explicit(&ctl->tail")
    assert tail == head == 0, "the dead producer claimed tail"
    assert recovered, ("the quiet sleeper was not rung before the dead producer's CAS: "
                       "its slot waits for some other process to call into the queue")


def _recovering_subscriber(path, done_w):
    """A topic's subscriber: block with no limit; report once a recovery between
    sleeps repairs a slot."""
    t = T.open(path)
    s = t.subscribe("w1")
    while True:
        lib.fq_sub_wait_for(s.s, SLICE, FOREVER, lib.FQ_STRATEGY_SLEEP)
        if lib.fq_recover(t.q) > 0:
            os.write(done_w, b"R")
            return 0


@need_gdb
@no_asan
@pytest.mark.parametrize("at, claimed", [
    ("count << 2 | FQ_PH_WON, RLX", True),  # after the CAS (before the fix, the wake)
    ("if (fq_topic_claim(q, &t, &cnt, span, n))", False),  # after the wake, before the CAS
])
def test_a_publisher_killed_beside_a_quiet_subscriber_is_recovered_by_it(tmp_path, at,
                                                                           claimed):
    """W1 for a topic: the publisher's claim shares fq_put_begin, and the subscriber's
    quiet rule (fq_topic_in_flight) sees its CLAIMING intent.  Killed after the tail
    CAS or between the wake and the CAS, the dead publisher's slot is recovered by the
    subscriber it rang, with no other process calling into the topic."""
    (tail, _), recovered = _kill_producer_beside_quiet_sleeper(
        tmp_path, _recovering_subscriber, at, kind=T)
    assert (tail > 0) == claimed, "the dead publisher was not stopped where meant"
    assert recovered, ("a subscriber sleeps with no timer beside a dead publisher's "
                       "intent: nobody recovers it until another process calls in")


def _blocked_publisher(path, done_w):
    """A block topic's publisher: put until full, then wait for room with no limit;
    report once a recovery between sleeps repairs a slot."""
    t = T.open(path)
    while True:
        if t.put(b"y" * 100) == 0:
            continue
        lib.fq_wait_for(t.q, lib.FQ_WAIT_SPACE, 100, SLICE, FOREVER, lib.FQ_STRATEGY_SLEEP)
        if lib.fq_recover(t.q) > 0:
            os.write(done_w, b"R")
            return 0


def _paused_member(path, go_r):
    t = T.open(path)
    s = t.subscribe("billing", DURABLE)
    os.read(go_r, 1)
    s.begin()
    return 1


@need_gdb
@no_asan
@pytest.mark.parametrize("at", [
    'FQ_CRASH_POINT("sub_after_claim")',  # after the head CAS (before the fix, the wake)
    'FQ_CRASH_POINT("sub_after_intent")',  # after the wake, before the CAS
])
def test_a_member_killed_beside_a_quiet_publisher_is_recovered_by_it(tmp_path, at):
    """W1 for a member's claim (fq_sub.c): a publisher of a block topic full behind a
    durable subscription nobody is attached to sleeps with no timer; a member joins
    that subscription and is killed at its claim.  The publisher it rang recovers the
    dead member with no other process calling into the topic."""
    import select
    path = tmp_path / "t.seg"
    t = T.create(path, capacity=4096)
    t.subscribe("billing", DURABLE, EARLIEST).unsubscribe()
    while t.put(b"x" * 100) == 0:
        pass
    done_r, done_w = os.pipe()
    go_r, go_w = os.pipe()
    publisher = _procs.fork(_blocked_publisher, path, done_w)
    member = _procs.fork(_paused_member, path, go_r)
    try:
        deadline = time.monotonic() + BOUND
        while not _sleepers(t)[2]:  # the publisher's quiet bit: asleep with no timer
            assert time.monotonic() < deadline, "the publisher never slept quietly"
            time.sleep(0.01)
        gdb = gdb_at(member, "fq_sub.c:%d" % line_of("csrc/fq_sub.c", at), ["kill"])
        os.write(go_w, b"G")
        gdb.wait(BOUND)
        assert _procs.reap(member) == -9, "the member was not stopped at %r" % at
        r, _, _ = select.select([done_r], [], [], 5.0)  # 100 recovery slices of 50 ms
        assert r, ("a publisher sleeps with no timer beside a dead member's claim: "
                   "nobody recovers it until another process calls in")
    finally:
        for pid in (publisher, member):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        t.close()


# ---- N1: a forked child's handle keeps armed[] and skips the bell_rung clear ---------

_N1 = (
    "N1 (csrc/fq_segment.c fq_attach, fork path; fq_wait.c fq_arm_pred; predates): a "
    "forked child's handle resets sleepers[] but keeps the parent's armed[], armed_quiet "
    "and quiet_sleepers.  The child's fq_arm takes a new slot, but with armed[what] "
    "inherited as 1 it skips the clear of that slot's bell_rung; a bit left there by "
    "the slot's previous owner (rung, killed before it took it) says 'a datagram is "
    "queued' to every writer, so the child's quietly armed task (FQ_ARM_QUIET: no "
    "timer) is never rung.  Fix: reset armed[], armed_quiet and quiet_sleepers with "
    "sleepers[] in fq_attach's fork branch (and/or clear bell_rung when a slot is "
    "taken)")


def _armed_owner(path, w, stop_r):
    q = Q.open(path)
    lib.fq_bell_set(0x5EED0001)
    assert lib.fq_arm(q.q, lib.FQ_WAIT_DATA, 0, 1) >= 0
    os.write(w, b"A")
    os.read(stop_r, 1)  # killed here
    return 0


def _forked_awaiter(q, name, w):
    import socket
    s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    s.bind(b"\0fastq-bell-%016x" % name)
    lib.fq_bell_set(name)
    rc = lib.fq_arm(q.q, lib.FQ_WAIT_DATA, 0, 1)
    os.write(w, b"%d\n" % rc)
    s.settimeout(10.0)
    try:
        s.recv(16)
    except socket.timeout:
        return 3  # never rung
    return 0


def test_a_forked_childs_quiet_arm_is_rung_on_a_slot_a_dead_owner_left_rung(tmp_path):
    _forked_arm(tmp_path, parent_armed_at_fork=True)


def test_control_a_forked_child_of_an_unarmed_parent_is_rung(tmp_path):
    """The same steps with the parent disarmed before the fork: the child's arm
    clears the stale bell_rung bit and the put rings it (N1's mechanism)."""
    _forked_arm(tmp_path, parent_armed_at_fork=False)


def _forked_arm(tmp_path, parent_armed_at_fork):
    path = tmp_path / "n1.seg"
    q = Q.create(path)
    r, w = os.pipe()
    stop_r, stop_w = os.pipe()
    pids = []
    try:
        lib.fq_bell_set(0x5EED0000)
        assert lib.fq_arm(q.q, lib.FQ_WAIT_DATA, 0, 1) >= 0  # our slot 0, armed[DATA] = 1
        pids.append(_procs.fork(_armed_owner, path, w, stop_r))
        assert os.read(r, 1) == b"A"  # slot 1 armed: its bits up
        assert q.put(b"m") == 0  # rings slot 1: its bell_rung bit goes up
        rc, c = q.begin()
        assert rc == 0
        q.end(c)
        os.kill(pids[0], signal.SIGKILL)
        assert _procs.reap(pids[0]) == -9
        lib.fq_recover(q.q)  # slot 1 FREE again, bell_rung as the dead owner left it
        if not parent_armed_at_fork:
            lib.fq_arm(q.q, lib.FQ_WAIT_DATA, 0, 0)
        pids.append(_procs.fork(_forked_awaiter, q, 0x5EED0002, w))
        f = os.fdopen(r)
        rc = int(f.readline())
        assert rc == 2, "the child's arm was not quiet (%d)" % rc  # FQ_ARM_QUIET: no timer
        assert q.put(b"n") == 0  # must ring the child's bell
        code = _procs.reap(pids[1], timeout=BOUND)
        assert code == 0, ("the forked child's quietly armed task was never rung "
                           "(exit %d): it sleeps with no timer" % code)
    finally:
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        lib.fq_arm(q.q, lib.FQ_WAIT_DATA, 0, 0)
        lib.fq_bell_set(0)
        q.close()

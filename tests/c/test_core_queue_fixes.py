"""Regression tests for the queue discipline's recovery and shutdown (issue 9):

- recovery re-validates, after reading a record's word, that its position is still
  retained before it writes into the ring or decides a dead producer's count (a
  recoverer paused at a named point while another process consumes and refills a
  4 KiB ring, so that the ring index holds a live record of the next lap);
- ShutDown is reported only when nothing is left to give back.

White-box, through the cffi build of csrc/ (tests/support/cbuild.py).
"""

import os
import signal
import time

import pytest

from support import REPO
from support.cring import advance_to, Q
from support.cseg import ffi, HDR, lib, mk, rec_size, recover_fully, seq_of
from support.procs import children, fork, reap


def wait_stopped(pid, timeout=10.0):
    """wait until the child stops itself at its pause point"""
    deadline = time.monotonic() + timeout
    while True:
        p, status = os.waitpid(pid, os.WNOHANG | os.WUNTRACED)
        if p:
            assert os.WIFSTOPPED(status), (
                "child ended (exit %s) before its pause point" % os.waitstatus_to_exitcode(status))
            return
        if time.monotonic() > deadline:
            raise AssertionError("child %d did not reach its pause point" % pid)
        time.sleep(0.0005)


def _put_child(path, point, datas):
    """put each of datas, dying at the crash point on the last one"""
    q = Q.open(path)
    for i, d in enumerate(datas):
        if i == len(datas) - 1:
            lib.fq_test_set_crash_point(point.encode(), 1)
        assert q.put(d) == 0
    return 0  # the crash point was not reached


def _recover_child(path, point):
    q = Q.open(path)
    lib.fq_test_set_pause_point(point.encode(), 1, -1, -1)
    lib.fq_recover(q.q)
    return 0


def _kill_producer(p, point, datas):
    """a child puts datas and dies at point on the last one"""
    pid = fork(_put_child, p, point, datas)
    assert reap(pid) == 9, "producer did not die at " + point


def _lap_to(q, target):
    """consume everything, then move tail to position target (next lap) with fillers"""
    out = q.drain()
    assert q.qsize() == 0
    while q.stats()["tail"] < target - q.cap:
        advance_to(q, (q.tail_idx() + q.cap // 2) % q.cap)
    advance_to(q, target % q.cap)
    assert q.stats()["tail"] == target
    return out


def _paused_recovery(p, point, while_paused):
    """run recovery in a child paused at point; while_paused() runs meanwhile"""
    with children() as pids:
        pid = fork(_recover_child, p, point)
        pids.append(pid)
        wait_stopped(pid)
        while_paused()
        os.kill(pid, signal.SIGCONT)
        assert reap(pid) == 0
        pids.remove(pid)


def _assert_next_lap_record_kept(q, x):
    """after the paused recovery: nothing left to repair, and the live record x of the
    next lap is the one message in the queue; then close q"""
    recover_fully(q, expect_repair=False)
    assert q.qsize() == 1
    rc, msgs, _ = q.get()
    assert rc == 0 and msgs == [x], "the live record of the next lap was overwritten"
    q.assert_settled()
    q.close()


@pytest.mark.parametrize("point", ["put_before_count", "put_mid_commit"])
def test_recovery_does_not_skip_over_a_live_next_lap_record(tmp_path, point):
    """A dead producer's region: recovery read release <= p, then (paused) the record
    at p was consumed and the ring lapped; the word at p's index is a live record of
    the next lap, which recovery must not turn into a SKIP (the queue was wedged:
    get() Empty while qsize() was 1)."""
    p = tmp_path / "q.seg"
    q = Q.create(p, max_slots=4)
    m0 = mk(1, 200)
    _kill_producer(p, point, [m0])
    x = mk(2, 64)
    got = []

    def consume_and_refill():
        got.extend(_lap_to(q, q.cap))
        assert q.put(x) == 0

    _paused_recovery(p, "recover_region_checked", consume_and_refill)
    assert [seq_of(m) for m, _ in got] == [1]
    _assert_next_lap_record_kept(q, x)


def test_recovery_of_a_stale_intent_does_not_skip_over_a_live_next_lap_record(tmp_path):
    """A producer died right after writing its intent at p (it never claimed); the
    region at p is another put's.  Recovery read release <= p, then (paused) the
    records were consumed and the ring lapped: the intent's end still looks like a
    boundary (a header of the old lap), and the SKIP must not be written over the
    next lap's record."""
    p = tmp_path / "q.seg"
    q = Q.create(p, max_slots=4)
    m = [mk(10 + i, 200) for i in range(2)]
    _kill_producer(p, "put_after_intent", [mk(9, 200)])
    assert q.stats()["tail"] == 0
    for d in m:  # the same span as the dead intent: [0, 224) and [224, 448)
        assert q.put(d) == 0
    x = mk(20, 64)  # smaller: the old lap's header at 224 stays (a witnessed end)
    got = []

    def consume_and_refill():
        got.extend(_lap_to(q, q.cap))
        assert q.put(x) == 0
        # the old lap's header at 224 is still in place: the dead intent's end
        assert lib.fqt_rec_state(q.q, rec_size(len(m[0]))) >= 0

    _paused_recovery(p, "recover_region_checked", consume_and_refill)
    assert [seq_of(d) for d, _ in got] == [10, 11]
    _assert_next_lap_record_kept(q, x)


def test_recovery_counts_a_committed_put_consumed_and_lapped_meanwhile(tmp_path):
    """A producer died after committing, before counting.  Recovery read release <= p,
    then (paused) the message was consumed and the ring lapped: no header of p is left,
    which must not be taken for "nothing committed" (qsize() was one too low)."""
    p = tmp_path / "q.seg"
    q = Q.create(p, max_slots=4)
    _kill_producer(p, "put_before_count", [mk(1, 200)])
    x = mk(2, 64)

    def consume_and_refill():
        assert [seq_of(d) for d, _ in _lap_to(q, q.cap)] == [1]
        assert q.put(x) == 0

    _paused_recovery(p, "recover_count_checked", consume_and_refill)
    recover_fully(q, expect_repair=False)
    assert q.qsize() == 1, "the dead producer's committed message was not counted"
    rc, msgs, _ = q.get()
    assert rc == 0 and msgs == [x]
    q.assert_settled()
    q.close()


# ---------------------------------------------------------------------------
# shutdown: ShutDown only when nothing is left to give back


def _die_holding_child(path, point):
    """claim one message and die at point (holding it)"""
    q = Q.open(path)
    lib.fq_test_set_crash_point(point.encode(), 1)
    rc, c = q.begin(1)
    assert rc == 0
    q.end(c)
    return 0  # the crash point was not reached


@pytest.mark.parametrize("point", ["get_after_claim", "get_before_free"])
def test_shutdown_not_reported_while_a_dead_consumer_holds_a_message(tmp_path, point):
    """A consumer killed holding a message, then shutdown: a get must not report
    ShutDown before recovery gave the message back (it was lost to the drain)."""
    p = tmp_path / "q.seg"
    q = Q.create(p, max_slots=4)
    m = mk(7, 100)
    assert q.put(m) == 0
    pid = fork(_die_holding_child, p, point)
    assert reap(pid) == 9
    lib.fq_shutdown(q.q, 0)
    rc, msgs, _ = q.get()
    assert rc == lib.FQ_EMPTY, "ShutDown reported while a dead consumer's claim is held"
    recover_fully(q)
    rc, msgs, red = q.get()
    assert rc == 0 and msgs == [m] and red
    rc, _, _ = q.get()
    assert rc == lib.FQ_SHUTDOWN
    q.close()


def test_shutdown_waits_for_a_live_claim_of_another_handle_not_for_its_own(tmp_path):
    """A claim held by another handle may still be given back (abort): no ShutDown
    until it is settled.  A handle's own claims do not hold its gets back."""
    p = tmp_path / "q.seg"
    q = Q.create(p, max_slots=4)
    other = Q.open(p)
    m = [mk(i, 60) for i in range(2)]
    for d in m:
        assert q.put(d) == 0
    rc, c_own = q.begin(1)
    assert rc == 0
    rc, c_other = other.begin(1)
    assert rc == 0
    lib.fq_shutdown(q.q, 0)
    assert q.begin(1)[0] == lib.FQ_EMPTY  # other's claim may come back
    assert other.begin(1)[0] == lib.FQ_EMPTY  # and so may q's
    other.abort(c_other)
    rc, c2 = q.begin(1)
    assert rc == 0 and q.read(c2) == [m[1]] and c2.redelivered
    q.end(c2)
    assert q.begin(1)[0] == lib.FQ_SHUTDOWN  # only its own claim is left
    assert other.begin(1)[0] == lib.FQ_EMPTY
    q.end(c_own)
    assert other.begin(1)[0] == lib.FQ_SHUTDOWN
    other.close()
    q.close()


def _receive_and_die(name):
    import fastq
    q = fastq.Queue.open(name)
    d = q.receive(timeout=5)
    assert d.value == "last"
    os.kill(os.getpid(), signal.SIGKILL)


def test_drain_after_shutdown_gets_a_dead_consumers_message(tmp_path):
    """Public API: a consumer killed holding a receive()d message, then shutdown();
    the documented drain loop (get until ShutDown) must return the message."""
    import fastq
    name = str(tmp_path / "q")
    with fastq.Queue.create(name, capacity=1 << 16) as q:
        q.put("last")
        with children() as pids:
            pid = fork(_receive_and_die, name)
            pids.append(pid)
            assert reap(pid) == -signal.SIGKILL
            pids.remove(pid)
        q.shutdown()
        out = []
        while True:
            try:
                out.append(q.get(timeout=10))
            except fastq.ShutDown:
                break
        assert out == ["last"]
        assert q.qsize() == 0


def _member_receive_and_die(name, ready_w):
    import fastq
    t = fastq.Topic.open(name)
    s = t.subscribe(group="g")
    os.write(ready_w, b"s")
    d = s.receive(timeout=10)
    assert d.value == "last"
    os.kill(os.getpid(), signal.SIGKILL)


def test_group_drain_after_shutdown_gets_a_dead_members_message(tmp_path):
    """Public API: a group member killed holding a receive()d delivery, then
    shutdown(); another member's `for m in sub` must return the message (it ended
    at once, and the message came back only through recover())."""
    import threading

    import fastq
    name = str(tmp_path / "t")
    with fastq.Topic.create(name, capacity=1 << 16) as t:
        s = t.subscribe(group="g")
        r, w = os.pipe()
        try:
            with children() as pids:
                pid = fork(_member_receive_and_die, name, w)
                pids.append(pid)
                assert os.read(r, 1) == b"s"
                t.publish("last")
                assert reap(pid) == -signal.SIGKILL
                pids.remove(pid)
        finally:
            os.close(r)
            os.close(w)
        t.shutdown()
        out = []
        th = threading.Thread(target=lambda: out.extend(s), daemon=True)
        th.start()
        th.join(20)
        if th.is_alive():
            t.shutdown(immediate=True)
            th.join(5)
            raise AssertionError("`for m in sub` did not end after the message came back")
        assert out == ["last"]
        assert s.lag == 0


def test_group_shutdown_not_reported_for_own_delivery(tmp_path):
    """A member's own unacknowledged delivery does not hold back its gets."""
    import fastq
    name = str(tmp_path / "t2")
    with fastq.Topic.create(name, capacity=1 << 16) as t:
        s = t.subscribe(group="g", prefetch=2)
        t.publish("a")
        d = s.receive(timeout=5)
        t.shutdown()
        with pytest.raises(fastq.ShutDown):
            s.get(timeout=5)
        d.ack()


# ---------------------------------------------------------------------------
# values read from the segment: the producer's own lengths


def _addr(ptr):
    return int(ffi.cast("uintptr_t", ptr))


def test_claim_buf_follows_the_callers_lengths_not_the_segments(tmp_path):
    """fq_claim_buf found the next record of a batch from the len in the shared
    header: a hostile writer could move the second buffer to the ring's end, and the
    caller's copy past the mapping.  The buffers follow the caller's own lengths."""
    p = tmp_path / "q.seg"
    q = Q.create(p, max_slots=4)
    lens = ffi.new("uint64_t[]", [64, 64])
    c = ffi.new("fq_claim *")
    assert lib.fq_put_begin(q.q, lens, 2, c) == 0
    first = c.pos + c.first_off
    assert first == 0
    # rewrite the first header's len so that its "next record" is the ring's last 16
    # bytes (a length the header check would accept)
    hostile = q.cap - HDR - HDR
    ffi.cast("uint32_t *", _addr(lib.fqt_rec_data(q.q, first)) - 8)[0] = hostile
    b0 = lib.fq_claim_buf(q.q, c)
    b1 = lib.fq_claim_buf(q.q, c)
    assert _addr(b0) == _addr(lib.fqt_rec_data(q.q, first))
    assert _addr(b1) == _addr(lib.fqt_rec_data(q.q, first + rec_size(64))), (
        "the second buffer was placed by the len read from the segment")
    ffi.cast("uint32_t *", _addr(lib.fqt_rec_data(q.q, first)) - 8)[0] = 64
    ffi.memmove(b0, mk(1, 64), 64)
    ffi.memmove(b1, mk(2, 64), 64)
    lib.fq_put_commit(q.q, c)
    got = q.drain()
    assert [seq_of(m) for m, _ in got] == [1, 2]
    q.close()


@pytest.mark.parametrize("topic", [0, 1], ids=["queue", "topic"])
def test_open_rejects_cursors_near_the_wrap_of_64_bits(tmp_path, topic):
    """Positions only grow; one above 2^63 is never reached by a real segment (at
    10 GB/s it takes 29 years) and would wrap position arithmetic (p + span): a file
    whose cursors sit there is rejected at open."""
    import struct

    from support.cseg import create, open_seg
    p = tmp_path / "q.seg"
    rc, qp, err = create(p, topic=topic)
    assert rc == 0, err
    lib.fq_close(qp)
    pos = (1 << 64) - 4096  # consistent cursors, a page before the wrap
    with open(p, "r+b") as f:
        for off in (128, 256, 384):  # tail, head, release
            f.seek(off)
            f.write(struct.pack("<Q", pos))
    rc, qp, err = open_seg(p)
    if rc == 0:
        lib.fq_close(qp)
    assert rc == lib.FQ_EBADSEG, "a segment with cursors at 2^64 - 4096 was opened"


@pytest.mark.skipif(__import__("platform").machine() != "x86_64",
                    reason="x86-64 has a 16-byte CAS only with -mcx16")
def test_build_fails_without_a_native_16_byte_cas(tmp_path):
    """Topics move (tail, published) and (release, epoch) with a 16-byte CAS shared
    between processes; without a native one (x86-64 without -mcx16) the compiler may
    fall back to a lock local to one process.  The build must fail there instead."""
    import shutil
    import subprocess
    gcc = shutil.which("gcc")
    if not gcc:
        pytest.skip("no gcc")
    csrc = str(REPO / "csrc")
    src = os.path.join(csrc, "fq_topic.c")

    def compiles(*flags):
        r = subprocess.run([gcc, "-std=gnu11", "-fsyntax-only", "-I", csrc, *flags, src],
                           capture_output=True, text=True)
        return r.returncode == 0, r.stderr

    ok, err = compiles("-mcx16")
    assert ok, err
    ok, err = compiles("-mno-cx16")
    assert not ok, "built without a native 16-byte CAS"
    assert "16-byte compare-and-swap" in err


# ---------------------------------------------------------------------------
# wake-ups


def test_data_wait_sees_a_requeued_record_behind_many_claimed_ones(tmp_path):
    """The data waiter's check for requeued records gave up after 4096 records: a
    record given back behind a claim of more than 4096 messages was not seen, and a
    waiter slept its whole slice (each time) although there was a message to take."""
    p = tmp_path / "q.seg"
    q = Q.create(p, capacity=1 << 17, max_slots=4)
    other = Q.open(p)
    n = 4100
    for _ in range(n):
        assert q.put(b"") == 0
    rc, big = other.begin(n)
    assert rc == 0 and big.n == n
    m = mk(1, 32)
    assert q.put(m) == 0
    rc, c = other.begin(1)
    assert rc == 0
    other.abort(c)  # REQUEUED, after n claimed records
    assert q.stats()["requeued"] == 1
    assert lib.fq_spin(q.q, lib.FQ_WAIT_DATA, 0, 1000000) == 1, (
        "a waiter would sleep although a requeued message is there")
    rc, msgs, red = q.get()
    assert rc == 0 and msgs == [m] and red
    other.end(big)
    q.assert_settled()
    other.close()
    q.close()


def _take_paused_child(path):
    """take a requeued record, paused between its look at the record's not-before and
    its CAS; exit 3 if it got the message, 0 if the queue had nothing to give"""
    q = Q.open(path)
    lib.fq_test_set_pause_point(b"take_before_cas", 1, -1, -1)
    rc, c = q.begin()
    if rc == lib.FQ_EMPTY:
        return 0
    assert rc == 0, rc
    q.read(c)
    q.end(c)
    return 3


def test_a_record_given_back_with_a_delay_during_a_take_is_not_taken_early(tmp_path):
    """The REQUEUED word is the same after every put-back: a taker that read a requeued
    record's meta (no delay), then lost the CPU while another consumer took the record
    and nacked it with a delay, won its CAS on the new REQUEUED word and delivered the
    just-delayed record at once (ABA)."""
    p = str(tmp_path / "q")
    q = Q.create(p)
    assert q.put(b"m") == 0
    rc, c = q.begin()
    assert rc == 0 and q.read(c) == [b"m"]
    q.abort(c)                               # requeued, no delay: any taker may have it
    with children() as pids:
        pid = fork(_take_paused_child, p)
        pids.append(pid)
        wait_stopped(pid)                    # it saw the record without a delay
        rc, c = q.begin()                    # we take it first ...
        assert rc == 0 and q.read(c) == [b"m"]
        lib.fq_get_nack(q.q, c, 60000)       # ... and give it back for a minute
        os.kill(pid, signal.SIGCONT)
        assert reap(pid) == 0, "the delayed record was delivered at once"
        pids.remove(pid)
    rc, c = q.begin()
    assert rc == lib.FQ_EMPTY                # still delayed, and still there
    assert q.stats()["requeued"] >= 1
    recover_fully(q, expect_repair=False)
    q.close()

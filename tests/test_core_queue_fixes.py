"""Regression tests for the queue discipline's recovery and shutdown (issue 9):

- recovery re-validates, after reading a record's word, that its position is still
  retained before it writes into the ring or decides a dead producer's count (a
  recoverer paused at a named point while another process consumes and refills a
  4 KiB ring, so that the ring index holds a live record of the next lap);
- ShutDown is reported only when nothing is left to give back.

White-box, through the cffi build of csrc/ (tests/c_core.py).
"""

import os
import signal
import sys
import time

import pytest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _cseg import lib, mk, rec_size, seq_of  # noqa: E402
from _procs import children, fork, reap  # noqa: E402
from test_ring_c import Q, advance_to, recover_fully  # noqa: E402


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
    lib.fq_test_set_pause_point(point.encode(), 1)
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
    recover_fully(q, expect_repair=False)
    assert q.qsize() == 1
    rc, msgs, _ = q.get()
    assert rc == 0 and msgs == [x], "the live record of the next lap was overwritten"
    q.assert_settled()
    q.close()


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
    recover_fully(q, expect_repair=False)
    assert q.qsize() == 1
    rc, msgs, _ = q.get()
    assert rc == 0 and msgs == [x], "the live record of the next lap was overwritten"
    q.assert_settled()
    q.close()


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

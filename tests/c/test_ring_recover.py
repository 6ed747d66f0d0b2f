"""A recoverer killed in the middle of recovery, and consumers that only poll (or use
short timeouts) still get past a dead producer.
"""

import random
import time
import zlib

import pytest

from support.cring import (crash_consumer_child, crash_producer_child, crash_recoverer_child, Q,
                           workout)
from support.cseg import CAP, mk, recover_fully, seq_of
from support.procs import children, fork, reap


# ---- a recoverer killed in the middle of recovery ---------------------------------

RECOVER_POINTS = ["recover_after_lock", "recover_before_gets_count", "recover_mid_requeue",
                  "recover_after_count", "recover_before_free"]


@pytest.mark.parametrize("point", RECOVER_POINTS)
def test_recoverer_killed_mid_recovery(tmp_path, point):
    """A process killed while recovering (holding the recovery lock, with a
    record requeued, a count fixed, a slot not yet freed) is finished by the
    next recoverer: every message exactly once, counts exact."""
    p = tmp_path / "q.seg"
    q = Q.create(p, capacity=CAP, max_slots=6)
    for i in range(10):
        assert q.put(mk(i, 100)) == 0
    with children() as pids:
        for fn, args in ((crash_consumer_child, (p,)), (crash_producer_child, (p,)),
                         (crash_recoverer_child, (p, point))):
            pid = fork(fn, *args)
            pids.append(pid)
            assert reap(pid) == 9, f"{fn.__name__} did not die at its crash point"
        recover_fully(q)
    assert q.qsize() == 11
    got = [(seq_of(x), red) for x, red in q.drain(max_n=3)]
    want = [(i, 1) for i in (0, 1, 2)] + [(i, 0) for i in range(3, 10)] + [(100, 0)]
    assert sorted(got) == sorted(want), got
    assert [s for s, _ in got if s >= 3] == list(range(3, 10)) + [100]  # order kept
    q.assert_settled()
    assert q.qsize() == 0 and q.stats()["requeued"] == 0
    workout(q, random.Random(zlib.crc32(point.encode())))
    q.close()


# ---- a consumer that only polls (get_nowait) still gets past a dead producer -------

def _queue_after_a_dead_producer(path):
    """a fastq.Queue at path whose producer died mid-put (100 committed, 101-102
    claimed), and a white-box handle of it"""
    import fastq  # the package under test (see conftest.py)

    q = fastq.Queue.create(str(path), capacity=1 << 16, serializer="raw")
    with children() as pids:
        pid = fork(crash_producer_child, str(path))
        pids.append(pid)
        assert reap(pid) == 9
    return q, Q.open(str(path))


def test_polling_consumer_gets_past_dead_producer(tmp_path):
    """fastq.Queue.get_nowait never waits, so never runs recovery in a wait;
    it must still run it (every 0.2 s while the queue is not idle), or a
    producer killed mid-put would hide every later message forever."""
    import fastq  # the package under test (see conftest.py)

    q, cq = _queue_after_a_dead_producer(tmp_path / "poll.seg")
    assert cq.put(mk(7, 100)) == 0  # a live producer's message after the dead claim
    got, deadline = [], time.monotonic() + 5
    while len(got) < 2 and time.monotonic() < deadline:
        try:
            got.append(seq_of(q.get_nowait()))
        except fastq.Empty:
            time.sleep(0.001)
    assert got == [100, 7], f"polling consumer got {got} in 5 s"
    assert q.qsize() == 0
    cq.close()
    q.close()


def test_short_timeouts_still_get_past_dead_producer(tmp_path):
    """A consumer looping on get(timeout=0.1) never waits 0.2 s in one call;
    it must still run recovery (on timing out), or it would never get past a
    producer killed mid-put."""
    import fastq  # the package under test (see conftest.py)

    q, cq = _queue_after_a_dead_producer(tmp_path / "short.seg")
    assert cq.put(mk(7, 100)) == 0
    got, deadline = [], time.monotonic() + 5
    while len(got) < 2 and time.monotonic() < deadline:
        try:
            got.append(seq_of(q.get(timeout=0.1)))
        except fastq.Empty:
            pass
    assert got == [100, 7], f"consumer with short timeouts got {got} in 5 s"
    cq.close()
    q.close()

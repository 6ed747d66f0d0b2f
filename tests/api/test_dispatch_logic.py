"""The Dispatcher's decisions for one delivery (ack, nack with a backoff, dead letter),
driven in this process with stand-in deliveries that have the core's contract
(attempt, id, nack(requeue, delay)): the cases a worker kill leads to, step by step."""
from __future__ import annotations

import multiprocessing as mp

import pytest

import fastq
from fastq._dispatch import _Ledger, _Route, _Worker


class FakeDelivery:
    def __init__(self, value, attempt, mid=1234, subject=None):
        self.value, self.attempt, self.id, self.subject = value, attempt, mid, subject
        self.redelivered = attempt > 1
        self.acked, self.nacked = False, None

    def ack(self):
        assert not self.acked and self.nacked is None
        self.acked = True

    def nack(self, requeue=True, delay=0.0):
        assert not self.acked and self.nacked is None and requeue
        self.nacked = delay


def fails(x):
    raise ValueError(f"bad {x}")


def worker(handler, dead=None, publish_to=None, max_attempts=3, backoff=(0.5, 4.0), slots=2, slot=0):
    r = _Route(handler, fastq.Queue(), None, None, slots, 1, max_attempts, backoff, dead, publish_to)
    r.ledger = _Ledger(mp.get_context(), slots)
    return _Worker(r, slot, 1.0)


@pytest.fixture
def dead():
    return fastq.Queue()


def test_success_publishes_then_acks():
    out = fastq.Queue()
    w = worker(lambda x: x + 1, publish_to=out)
    d = FakeDelivery(1, 1)
    w.run_sync(d)
    assert d.acked and out.get_nowait() == 2


def test_failure_before_the_last_attempt_nacks_with_backoff(dead):
    w = worker(fails, dead)
    for attempt in (1, 2):
        d = FakeDelivery("m", attempt)
        w.run_sync(d)
        assert not d.acked and 0.5 <= d.nacked <= 4.0
    with pytest.raises(fastq.Empty):
        dead.get_nowait()


def test_last_attempt_dead_letters_once_with_metadata(dead):
    w = worker(fails, dead)
    d1 = FakeDelivery("m", 1)
    w.run_sync(d1)
    # attempt 2 in another worker process of the route (another ledger slot)
    w2 = worker(fails, dead)
    w2.r.ledger = w.r.ledger
    w2.slot = 1
    d3 = FakeDelivery("m", 3)
    w2.run_sync(d3)
    assert d3.acked
    dl = dead.get_nowait()
    assert (dl.message, dl.attempts, dl.exc_type, dl.exc_message) == ("m", 3, "ValueError", "bad m")
    assert "fails" in dl.traceback and dl.first_attempt < dl.last_attempt and dl.id == 1234
    # the worker died between the dead letter and the ack: the redelivery is acked, no second one
    d4 = FakeDelivery("m", 4)
    w.run_sync(d4)
    assert d4.acked
    with pytest.raises(fastq.Empty):
        dead.get_nowait()


def test_last_attempt_killed_its_worker(dead):
    w = worker(fails, dead, max_attempts=2)
    d = FakeDelivery("m", 3, mid="some-id")
    w.run_sync(d)
    assert d.acked
    dl = dead.get_nowait()
    assert dl.exc_type == "WorkerLost" and dl.attempts == 2 and dl.traceback == ""


def test_first_attempt_time_recorded_by_a_retry(dead):
    # attempt 1 died with its worker (no record): attempt 2 records its own start
    w = worker(fails, dead, max_attempts=3)
    w.run_sync(FakeDelivery("m", 2, mid=7))
    d = FakeDelivery("m", 3, mid=7)
    w.run_sync(d)
    dl = dead.get_nowait()
    assert dl.first_attempt < dl.last_attempt


def test_ledger_ring_wraps():
    from fastq._dispatch import LEDGER_ROWS, _FIRST
    led = _Ledger(mp.get_context(), 1)
    for k in range(1, LEDGER_ROWS + 10):
        led.add(0, k, _FIRST, float(k))
    assert led.find(1, _FIRST) is None and led.find(LEDGER_ROWS + 9, _FIRST) == LEDGER_ROWS + 9

"""A consumer blocked with nothing to do costs nothing (issue #12): it sleeps
without a timer while nothing is in flight, and still recovers what a dead
process leaves within the recovery bound.  Wake-ups are counted (the C core's
per-process counters of FUTEX_WAIT calls), never timed."""
from __future__ import annotations

import os
import threading
import time

import pytest

import fastq
from fastq import _core

from support.procs import children, fork, reap  # noqa: E402

pytestmark = pytest.mark.usefixtures("fastq_dir")


def sleeps():
    return _core._wait_counts()[0]


def wait_until(pred, timeout, what):
    deadline = time.monotonic() + timeout
    while not pred():
        if time.monotonic() > deadline:
            raise AssertionError(what)
        time.sleep(0.01)


@pytest.mark.parametrize("call", ["get", "get_many", "receive", "get_timeout"])
def test_blocked_get_sleeps_without_a_timer(call):
    """A 50 ms slice would make ~20 sleeps in a second; a timerless sleep one."""
    q = fastq.Queue("idle", capacity=4096, serializer="raw")
    out = []

    def consumer():
        if call == "get":
            out.append(q.get())
        elif call == "get_many":
            out.append(q.get_many(8)[0])
        elif call == "get_timeout":
            out.append(q.get(timeout=60))
        else:
            d = q.receive()
            d.ack()
            out.append(d.value)

    t = threading.Thread(target=consumer, daemon=True)
    t.start()
    wait_until(lambda: sleeps() > 0 and t.is_alive(), 10, "the consumer never slept")
    before = sleeps()
    time.sleep(1.0)
    during = sleeps() - before
    q.put(b"wake")
    t.join(10)
    assert out == [b"wake"]
    assert during <= 1, f"{during} sleeps in 1 s of idle get(): it wakes on a timer"
    q.close()


def test_blocked_get_in_thread_wakes_for_close():
    """Nothing bumps a quiet sleeper's word but a message: close() from
    another thread must wake it (it raises ValueError at once)."""
    q = fastq.Queue("closing", capacity=4096, serializer="raw")
    err = []

    def consumer():
        try:
            q.get()
        except ValueError as e:
            err.append(e)

    t = threading.Thread(target=consumer, daemon=True)
    t.start()
    wait_until(lambda: sleeps() > 0, 10, "the consumer never slept")
    time.sleep(0.1)
    q.close()
    t.join(10)
    assert not t.is_alive() and len(err) == 1


def _blocked_consumer(name, w):
    q = fastq.Queue(name, serializer="raw")
    m = q.get()  # sleeps quiet: nothing in flight when it starts
    os.write(w, m)
    return 0


def _dying_producer(name):
    q = fastq.Queue(name, serializer="raw")
    _core._test_set_crash_point("put_after_claim", 1)
    q.put(b"never")  # claims tail, then _exit(9)
    return 1


def test_quiet_sleeper_recovers_a_producer_killed_mid_put():
    """The consumer sleeps without a timer; a producer claims and dies before
    it commits.  Its claim wakes the sleeper, which then sleeps in slices and
    recovers: the dead claim is skipped (head reaches tail) although nobody
    else ever calls into the queue, and a later message arrives."""
    name = "deadput"
    q = fastq.Queue(name, capacity=4096, serializer="raw")
    r, w = os.pipe()
    with children() as pids:
        pids.append(fork(_blocked_consumer, name, w))
        # the consumer has attached and sleeps: its bit is up
        wait_until(lambda: _core._test_sleepers(q)[2], 10,
                   "the consumer never went to sleep without a timer")
        pids.append(fork(_dying_producer, name))
        assert reap(pids[-1]) == 9
        st = q.stats()
        assert st["tail"] > st["head"], "the dead producer's claim is not in flight"
        wait_until(lambda: q.stats()["head"] == q.stats()["tail"], 10,
                   "nobody recovered the dead producer's claim: the sleeper was not woken")
        q.put(b"later")
        assert os.read(r, 100) == b"later"
        assert reap(pids[0]) == 0
    q.close()



def test_own_claim_leaves_own_quiet_bit():
    """A claim by this process does not take this process's quiet bit: only
    its death could leave that claim stalled, and its sleepers die with it.
    (Taking it made each get of an awaiting consumer ring its own bell.)"""
    import asyncio

    q = fastq.Queue(None, capacity=4096, serializer="raw")

    async def main():
        task = asyncio.ensure_future(q.aget())
        for _ in range(2000):
            if _core._test_sleepers(q)[2]:
                break
            await asyncio.sleep(0.001)
        assert _core._test_sleepers(q)[2], "the task did not arm quiet"
        q.put(b"mine")  # claims tail: another process's quiet bit would go down
        up = _core._test_sleepers(q)[2]
        assert await task == b"mine"
        return up
    assert asyncio.run(main()), "our own put took our own quiet bit"
    q.close()

"""close() of a Queue, Topic or Subscription wakes the tasks awaiting on it
(issue #12), from another thread or from the loop itself: they raise
ValueError as blocking calls do, woken by the close and not by a timer (the
asyncio side's timer expiries are counted, never timed)."""
from __future__ import annotations

import asyncio
import threading

import pytest

import fastq
from fastq import _aio

pytestmark = pytest.mark.usefixtures("fastq_dir")

LOOPS = ["asyncio", "uvloop"]


def run(kind, coro):
    if kind == "uvloop":
        uvloop = pytest.importorskip("uvloop")
        with asyncio.Runner(loop_factory=uvloop.new_event_loop) as r:
            return r.run(coro)
    return asyncio.run(coro)


async def asleep(n=1):
    """Until n tasks of this process wait on their futures."""
    for _ in range(5000):
        bell = _aio._bell
        ws = [w for s in (bell.sides.values() if bell else ()) for w in s.waiters]
        if len(ws) >= n and all(w.fut is not None and not w.fut.done() for w in ws):
            return
        await asyncio.sleep(0.001)
    raise AssertionError("the tasks never went to sleep")


def full_queue():
    q = fastq.Queue(None, capacity=4096, serializer="raw")
    while True:
        try:
            q.put(b"." * 100, block=False)
        except fastq.Full:
            return q


def full_topic():
    t = fastq.Topic(None, capacity=4096, serializer="raw", overflow="block")
    sub = t.subscribe()
    while True:
        try:
            t.publish(b"." * 100, block=False)
        except fastq.Full:
            return t, sub


def cases():
    """name -> make(): (handle to close, [awaitables], things to close after)."""
    def queue_aget():
        q = fastq.Queue(None, capacity=4096, serializer="raw")
        return q, [q.aget(), q.aget_many(4), q.areceive()], []

    def queue_aput():
        q = full_queue()
        return q, [q.aput(b"x" * 100), q.aput_many([b"x" * 100])], []

    def topic_apublish():
        t, sub = full_topic()
        return t, [t.apublish(b"x" * 100), t.apublish_many([b"x" * 100])], [sub]

    def subscription():
        t = fastq.Topic(None, capacity=4096, serializer="raw")
        sub = t.subscribe()
        sub2 = t.subscribe(prefetch=2)
        return sub, [sub.aget()], [sub2, t]

    def subscription_pool():
        t = fastq.Topic(None, capacity=4096, serializer="raw")
        sub = t.subscribe(prefetch=3)
        return sub, [sub.areceive()], [t]

    def topic_closes_its_subscriptions():
        t = fastq.Topic(None, capacity=4096, serializer="raw")
        sub = t.subscribe()
        return t, [sub.aget_many(8)], []

    return {f.__name__: f for f in (queue_aget, queue_aput, topic_apublish, subscription,
                                   subscription_pool, topic_closes_its_subscriptions)}


@pytest.mark.parametrize("kind", LOOPS)
@pytest.mark.parametrize("where", ["thread", "loop"])
@pytest.mark.parametrize("case", sorted(cases()))
def test_close_wakes_awaiting_tasks(case, where, kind):
    async def main():
        handle, calls, rest = cases()[case]()
        tasks = [asyncio.ensure_future(c) for c in calls]
        await asleep(len(tasks))
        before = _aio.stats["slices"]
        if where == "thread":
            th = threading.Thread(target=handle.close)
            th.start()
            await asyncio.get_running_loop().run_in_executor(None, th.join)
        else:
            handle.close()
        done, pending = await asyncio.wait(tasks, timeout=30)
        assert not pending, "close() did not wake every awaiting task"
        for t in done:
            with pytest.raises(ValueError, match="closed"):
                t.result()
        # woken by close(), not by a recovery slice or a timeout
        assert _aio.stats["slices"] == before
        assert _aio._bell.sides == {}
        for x in rest:
            x.close()
    run(kind, main())

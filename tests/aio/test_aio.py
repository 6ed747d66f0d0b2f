"""asyncio (issue #12): every awaitable call under the default loop and uvloop,
timeouts, cancellation at every await point without loss or duplicate,
several loops in several threads, and idle waiters that cost nothing (their
wake-ups are counted, never timed)."""
from __future__ import annotations

import asyncio
import os
import threading

import pytest

import fastq
from fastq import _aio, _core

from support.procs import children, fork, reap  # noqa: E402

pytestmark = pytest.mark.usefixtures("fastq_dir")

LOOPS = ["asyncio", "uvloop"]


def run(kind, coro):
    """Run coro to completion on a new loop of that kind."""
    if kind == "uvloop":
        if not hasattr(asyncio, "Runner"):  # Python < 3.11
            coro.close()
            pytest.skip("asyncio.Runner (Python 3.11) runs uvloop here")
        uvloop = pytest.importorskip("uvloop")
        with asyncio.Runner(loop_factory=uvloop.new_event_loop) as r:
            return r.run(coro)
    return asyncio.run(coro)


async def until_waiting(n=1, side=0, tries=2000):
    """Let the loop run until n tasks of this process wait (are registered)."""
    for _ in range(tries):
        bell = _aio._bell
        if bell is not None and sum(len(s.waiters) for (k, w), s in bell.sides.items()
                                    if w == side) >= n:
            # and asleep on their futures
            if all(w.fut is not None and not w.fut.done()
                   for (k, wh), s in bell.sides.items() if wh == side for w in s.waiters):
                return
        await asyncio.sleep(0.001)
    raise AssertionError(f"{n} waiters never went to sleep")


def fill(put_nowait):
    """Put 100-byte messages numbered 000, 001... until Full; how many."""
    n = 0
    while True:
        try:
            put_nowait(b"%03d" % n + b"." * 97)
        except fastq.Full:
            return n
        n += 1


# ---- every call ----------------------------------------------------------------


@pytest.mark.parametrize("kind", LOOPS)
def test_queue_calls(kind):
    async def main():
        q = fastq.Queue(None, capacity=4096)
        got = asyncio.ensure_future(q.aget())
        await until_waiting()
        await q.aput({"a": 1})
        assert await asyncio.wait_for(got, 10) == {"a": 1}
        assert await q.aput_many([1, 2, 3]) == 3
        assert await q.aget_many(10) == [1, 2, 3]
        many = asyncio.ensure_future(q.aget_many(10))
        await until_waiting()
        q.put_many([4, 5])  # a blocking producer in the same process
        assert await asyncio.wait_for(many, 10) in ([4, 5], [4])
        if q.qsize():
            assert q.get() == 5
        rec = asyncio.ensure_future(q.areceive())
        await until_waiting()
        q.put("r")
        d = await asyncio.wait_for(rec, 10)
        assert d.value == "r" and not d.redelivered
        d.nack()
        d = await q.areceive()
        assert d.value == "r" and d.redelivered
        d.ack()
        with pytest.raises(fastq.Empty):
            await q.aget(timeout=0.05)
        with pytest.raises(fastq.Empty):
            await q.aget_many(timeout=0)
        with pytest.raises(fastq.Empty):
            await q.areceive(timeout=0.01)
        q.put_many(["x", "y"])
        q.shutdown()
        assert [m async for m in q] == ["x", "y"]
        with pytest.raises(fastq.ShutDown):
            await q.aget()
        q.close()
    run(kind, main())


@pytest.mark.parametrize("kind", LOOPS)
def test_queue_put_waits_for_room(kind):
    async def main():
        q = fastq.Queue(None, capacity=4096, serializer="raw")
        n = fill(q.put_nowait)
        with pytest.raises(fastq.Full):
            await q.aput(b"z" * 100, timeout=0.05)
        with pytest.raises(fastq.Full) as e:
            await q.aput_many([b"z" * 100] * 2, timeout=0.02)
        assert e.value.count == 0
        put = asyncio.ensure_future(q.aput(b"late" + b"." * 96))
        many = asyncio.ensure_future(q.aput_many([b"m1" + b"." * 98, b"m2" + b"." * 98]))
        await until_waiting(2, side=1)
        got = [q.get() for _ in range(n)]
        assert got == [b"%03d" % i + b"." * 97 for i in range(n)]
        await asyncio.wait_for(put, 10)
        assert await asyncio.wait_for(many, 10) == 2
        rest = sorted(q.get_many(10))
        assert rest == sorted([b"late" + b"." * 96, b"m1" + b"." * 98, b"m2" + b"." * 98])
        q.close()
    run(kind, main())


@pytest.mark.parametrize("kind", LOOPS)
def test_an_awaited_put_that_waits_counts_one_back_pressure_event(kind):
    # aput(timeout=None) makes its first try itself, then the waiting path
    # (which must not count a second event for its own first try)
    async def main():
        q = fastq.Queue(None, capacity=4096, serializer="raw")
        fill(q.put_nowait)
        before = q._counts()["full"]
        put = asyncio.ensure_future(q.aput(b"late" + b"." * 96))
        await until_waiting(1, side=1)
        assert q._counts()["full"] == before + 1
        q.get()
        await asyncio.wait_for(put, 10)
        assert q._counts()["full"] == before + 1
        q.close()
    run(kind, main())


@pytest.mark.parametrize("kind", LOOPS)
def test_topic_calls(kind):
    async def main():
        t = fastq.Topic(None, capacity=4096)
        a, b = t.subscribe(), t.subscribe(prefetch=2)
        ga, gb = asyncio.ensure_future(a.aget()), asyncio.ensure_future(b.aget())
        await until_waiting(2)
        await t.apublish("m0")  # both subscriptions want it: both wake
        assert await asyncio.wait_for(ga, 10) == "m0"
        assert await asyncio.wait_for(gb, 10) == "m0"
        assert await t.apublish_many(["m1", "m2"]) == 2
        assert await a.aget_many(10) == ["m1", "m2"]
        d = await b.areceive()
        assert d.value == "m1"
        d.ack()
        assert await b.aget() == "m2"
        with pytest.raises(fastq.Empty):
            await a.aget(timeout=0.02)
        with pytest.raises(fastq.Empty):
            await b.aget_many(timeout=0)
        with pytest.raises(fastq.Empty):
            await b.areceive(timeout=0.01)
        t.publish("last")
        t.shutdown()
        assert [m async for m in a] == ["last"]
        assert [m async for m in b] == ["last"]
        t.close()
    run(kind, main())


@pytest.mark.parametrize("kind", LOOPS)
def test_block_topic_publish_waits_for_the_slowest_subscription(kind):
    async def main():
        t = fastq.Topic(None, capacity=4096, serializer="raw")
        s = t.subscribe()
        n = fill(t.publish_nowait)
        with pytest.raises(fastq.Full):
            await t.apublish(b"z" * 100, timeout=0.02)
        pub = asyncio.ensure_future(t.apublish(b"late" * 25))
        await until_waiting(1, side=1)
        assert s.get_many(n) == [b"%03d" % i + b"." * 97 for i in range(n)]
        await asyncio.wait_for(pub, 10)
        assert s.get() == b"late" * 25
        t.close()
    run(kind, main())


# ---- cancellation ----------------------------------------------------------------


@pytest.mark.parametrize("kind", LOOPS)
def test_cancelled_aget_takes_nothing_at_every_step(kind):
    """Two tasks wait; a message is put; after k loop steps one of them is
    cancelled (before it was woken, woken but not yet run, or done), for
    every k.  Every message ends up exactly once: returned by a task that was
    not cancelled, or still in the queue."""
    async def main():
        q = fastq.Queue(None, capacity=1 << 16)
        for k in range(12):
            a = asyncio.ensure_future(q.aget())
            b = asyncio.ensure_future(q.aget())
            await until_waiting(2)
            q.put(k)
            for _ in range(k):
                await asyncio.sleep(0)
            a.cancel()
            got = []
            try:
                got.append(await a)
            except asyncio.CancelledError:
                pass
            if got:  # a took it before the cancel: b still waits
                b.cancel()
                with pytest.raises(asyncio.CancelledError):
                    await b
            else:  # the message is b's: a passed its wake-up on, if it had it
                got.append(await asyncio.wait_for(b, 10))
            assert got == [k], (k, got)
            assert q.qsize() == 0 and q.unacked() == 0
        q.close()
    run(kind, main())


@pytest.mark.parametrize("kind", LOOPS)
def test_each_message_wakes_one_more_waiter(kind):
    """Ten tasks wait; messages come one at a time, each once the previous
    one was taken.  The writer takes this process's sleeper bit with each
    wake-up: the waiters still asleep must have it put up again, or the next
    message rings nobody."""
    async def main():
        q = fastq.Queue(None, capacity=1 << 16)
        tasks = [asyncio.ensure_future(q.aget()) for _ in range(10)]
        await until_waiting(10)
        for i in range(10):
            q.put(i)
            done, _ = await asyncio.wait([t for t in tasks if not t.done()], timeout=10,
                                         return_when=asyncio.FIRST_COMPLETED)
            assert len(done) == 1, f"message {i} woke {len(done)} tasks"
        assert sorted(t.result() for t in tasks) == list(range(10))
        q.close()
    run(kind, main())


@pytest.mark.parametrize("kind", LOOPS)
def test_a_ring_nobody_took_does_not_silence_the_bell(kind):
    """A task waits; a put rings the bell; the task is cancelled before its
    loop reads the datagram, so nobody takes the slot's rung bit.  A writer
    sends no datagram while that bit is up: the next waiter must clear it
    when it arms, or the next message never wakes it."""
    async def main():
        q = fastq.Queue(None, capacity=1 << 16)
        for i in range(3):
            t = asyncio.ensure_future(q.aget())
            await until_waiting()
            q.put(("first", i))  # rings this process's bell...
            t.cancel()           # ...and its only waiter leaves before the loop reads it
            with pytest.raises(asyncio.CancelledError):
                await t
            await asyncio.sleep(0.01)  # the datagram is read: nobody waits there any more
            assert q.get_nowait() == ("first", i)
            t2 = asyncio.ensure_future(q.aget())
            await until_waiting()
            q.put(("second", i))
            assert await asyncio.wait_for(t2, 10) == ("second", i)
        q.close()
    run(kind, main())


@pytest.mark.parametrize("call", ["aget", "aget_many", "areceive"])
@pytest.mark.parametrize("how", ["cancel", "wait_for", "timeout"])
def test_cancelled_get_calls_leave_the_queue_as_it_was(call, how):
    async def main():
        q = fastq.Queue(None, capacity=1 << 16)
        for i in range(5):
            coro = getattr(q, call)()
            if how == "cancel":
                task = asyncio.ensure_future(coro)
                await until_waiting()
                task.cancel()
                with pytest.raises(asyncio.CancelledError):
                    await task
            elif how == "wait_for":
                with pytest.raises(asyncio.TimeoutError):
                    await asyncio.wait_for(coro, 0.01 * (i + 1))
            elif hasattr(asyncio, "timeout"):  # Python 3.11
                with pytest.raises(TimeoutError):
                    async with asyncio.timeout(0.01 * (i + 1)):
                        await coro
            else:
                coro.close()
                pytest.skip("asyncio.timeout is Python 3.11")
            assert _aio._bell.sides == {}  # nothing left registered
            q.put(i)
            assert q.qsize() == 1 and q.unacked() == 0
            assert q.get() == i
        q.close()
    asyncio.run(main())


@pytest.mark.parametrize("call", ["aput", "aput_many"])
def test_cancelled_put_puts_nothing(call):
    async def main():
        q = fastq.Queue(None, capacity=4096, serializer="raw")
        n = fill(q.put_nowait)
        for _ in range(3):
            arg = b"X" * 100 if call == "aput" else [b"X" * 100]
            task = asyncio.ensure_future(getattr(q, call)(arg))
            await until_waiting(1, side=1)
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
        got = q.get_many(1000)
        assert got == [b"%03d" % i + b"." * 97 for i in range(n)]
        with pytest.raises(fastq.Empty):
            q.get_nowait()
        q.close()
    asyncio.run(main())


@pytest.mark.parametrize("kind", LOOPS)
def test_cancelled_subscription_aget_takes_nothing(kind):
    async def main():
        t = fastq.Topic(None, capacity=1 << 16)
        s = t.subscribe()
        for i in range(5):
            task = asyncio.ensure_future(s.aget())
            await until_waiting()
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            t.publish(i)
            assert s.get_nowait() == i
        t.close()
    run(kind, main())


# ---- loops in threads ------------------------------------------------------------


@pytest.mark.parametrize("kind", LOOPS)
def test_several_loops_in_several_threads(kind):
    """Four threads, each with its own loop and two tasks awaiting one queue;
    the main thread puts: every message is taken exactly once."""
    q = fastq.Queue(None, capacity=1 << 16)
    n = 400
    got = []
    lock = threading.Lock()

    async def consumer():
        while True:
            try:
                m = await q.aget()
            except fastq.ShutDown:
                return
            with lock:
                got.append(m)

    async def two():
        await asyncio.gather(consumer(), consumer())

    ts = [threading.Thread(target=run, args=(kind, two())) for _ in range(4)]
    for t in ts:
        t.start()
    for i in range(n):
        q.put(i)
    q.shutdown()
    for t in ts:
        t.join(60)
    assert not any(t.is_alive() for t in ts)
    assert sorted(got) == list(range(n))
    q.close()


# ---- idle cost ---------------------------------------------------------------------


@pytest.mark.parametrize("kind", LOOPS)
def test_idle_tasks_cost_nothing_and_a_message_wakes_one(kind):
    """1000 tasks await 100 queues: in a second of idling no bell rings and
    no timer expires (a 50 ms timer would expire 20000 times).  A message to
    one queue wakes exactly one task."""
    async def main():
        qs = [fastq.Queue(None, capacity=4096) for _ in range(100)]
        tasks = [asyncio.ensure_future(qs[i % 100].aget()) for i in range(1000)]
        await until_waiting(1000)
        before = dict(_aio.stats)
        await asyncio.sleep(1.0)
        assert _aio.stats == before, (before, _aio.stats)
        qs[7].put("hello")
        done, _ = await asyncio.wait(tasks, timeout=10, return_when=asyncio.FIRST_COMPLETED)
        assert [t.result() for t in done] == ["hello"]
        await asyncio.sleep(0.05)
        assert _aio.stats["wakes"] - before["wakes"] == 1
        assert sum(t.done() for t in tasks) == 1
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        assert _aio._bell.sides == {}
        for q in qs:
            q.close()
    run(kind, main())


# ---- processes -----------------------------------------------------------------------


def _sync_producer(name, n):
    q = fastq.Queue(name)
    for i in range(n):
        q.put(i)
    return 0


def _async_producer(name, n, kind):
    q = fastq.Queue(name, capacity=4096)

    async def main():
        for i in range(n):
            await q.aput(i)
    run(kind, main())
    return 0


def _async_consumer(name, n, kind, w):
    q = fastq.Queue(name)

    async def main():
        return [await q.aget() for _ in range(n)]
    got = run(kind, main())
    os.write(w, repr(got).encode() + b"\n")
    return 0


@pytest.mark.parametrize("kind", LOOPS)
def test_sync_producer_wakes_awaiting_consumer_in_another_process(kind):
    q = fastq.Queue("mix1", capacity=4096)
    n = 2000  # many times the ring: both sides wait, again and again

    async def main():
        with children() as pids:
            pids.append(fork(_sync_producer, "mix1", n))
            got = [await q.aget() for _ in range(n)]
            assert reap(pids[0], 60) == 0
        return got
    assert run(kind, main()) == list(range(n))
    q.close()


@pytest.mark.parametrize("kind", LOOPS)
def test_async_producer_wakes_blocked_consumer_in_another_process(kind):
    q = fastq.Queue("mix2", capacity=4096)
    n = 2000
    with children() as pids:
        pids.append(fork(_async_producer, "mix2", n, kind))
        got = [q.get(timeout=30) for _ in range(n)]
        assert reap(pids[0], 60) == 0
    assert got == list(range(n))
    q.close()


@pytest.mark.parametrize("kind", LOOPS)
def test_async_to_async_across_processes(kind):
    q = fastq.Queue("mix3", capacity=4096)
    n = 2000
    r, w = os.pipe()
    with children() as pids:
        pids.append(fork(_async_consumer, "mix3", n, kind, w))
        pids.append(fork(_async_producer, "mix3", n, kind))
        with os.fdopen(r) as f:
            line = f.readline()
        assert reap(pids[0], 60) == 0 and reap(pids[1], 60) == 0
    assert eval(line) == list(range(n))
    q.close()


def _dying_producer(name):
    q = fastq.Queue(name)
    _core._test_set_crash_point("put_after_claim", 1)
    q.put("never")  # claims tail, then _exit(9)
    return 1


@pytest.mark.parametrize("kind", LOOPS)
def test_awaiting_consumer_recovers_a_producer_killed_mid_put(kind):
    """The awaiting consumer is the only process calling into the queue: it
    must recover the dead producer's claim by itself (its claim wakes the
    waiter, which then recovers on its slice), then get the next message."""
    q = fastq.Queue("deadput", capacity=4096)

    async def main():
        got = asyncio.ensure_future(q.aget(timeout=30))
        await until_waiting()
        assert _core._test_sleepers(q)[2], "the waiter is not quiet"
        with children() as pids:
            pids.append(fork(_dying_producer, "deadput"))
            assert reap(pids[0]) == 9
            st = q.stats()
            assert st["tail"] > st["head"]
            # the head stays blocked until the waiter recovers: a message put
            # now comes after the dead claim
            pids.append(fork(_sync_producer, "deadput", 1))
            assert reap(pids[1]) == 0
            assert await got == 0
    run(kind, main())
    q.close()


@pytest.mark.parametrize("kind", LOOPS)
def test_apublish_with_a_subject_waits_for_room_for_the_subject_too(kind, monkeypatch):
    # the space an awaiting publish arms for is the record's whole payload: the subject's
    # bytes are stored ahead of the message (it armed for the message alone, so it was
    # told "ready" while the record could not fit, and tried again at once)
    armed = []
    arm = _core._seg_arm

    def record(seg, what, need, on, *quiet):
        if on:
            armed.append(need)
        return arm(seg, what, need, on, *quiet)

    monkeypatch.setattr(_core, "_seg_arm", record)

    async def main():
        t = fastq.Topic(None, capacity=4096, serializer="raw")
        s = t.subscribe()
        n = fill(t.publish_nowait)
        subject = "orders.eu." + "x" * 200
        pub = asyncio.ensure_future(t.apublish(b"m" * 100, subject=subject))
        await until_waiting(1, side=1)
        assert armed and set(armed) == {100 + len(subject)}
        s.get_many(n)
        await asyncio.wait_for(pub, 10)
        assert s.get() == b"m" * 100
        t.close()
    run(kind, main())

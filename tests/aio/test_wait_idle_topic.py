"""A topic's blocked subscriber (and a publisher blocked on a block topic
whose lagging subscriptions are all durable) costs nothing (issue #12): it
sleeps without a timer while nothing is in flight that a dead process could
leave stalled, and still recovers a publisher killed mid-put and a
subscriber killed while a publisher waits for room.  Wake-ups are counted
(the C core's FUTEX_WAIT calls, the asyncio side's timer expiries), never
timed."""
from __future__ import annotations

import asyncio
import os
import select
import threading
import time

import pytest

import fastq
from fastq import _aio, _core

from support.procs import children, fork, reap  # noqa: E402
from support.waiting import wait_for

pytestmark = pytest.mark.usefixtures("fastq_dir")


def sleeps():
    return _core._wait_counts()[0]


def idle_sleeps(t, seconds=1.0):
    """FUTEX_WAIT calls of this process during `seconds` while thread t is
    blocked (it must have slept once already)."""
    wait_for(lambda: sleeps() > 0 and t.is_alive(), "the waiter never slept", 10)
    time.sleep(0.05)
    before = sleeps()
    time.sleep(seconds)
    return sleeps() - before


@pytest.mark.parametrize("call", ["get", "get_many", "receive", "get_timeout"])
def test_blocked_subscriber_sleeps_without_a_timer(call):
    """A 0.2 s recovery slice would make ~5 sleeps in a second; a timerless
    sleep one at most."""
    t_ = fastq.Topic("idle", capacity=4096, serializer="raw")
    sub = t_.subscribe()
    out = []

    def subscriber():
        if call == "get":
            out.append(sub.get())
        elif call == "get_many":
            out.append(sub.get_many(8)[0])
        elif call == "get_timeout":
            out.append(sub.get(timeout=60))
        else:
            d = sub.receive()
            d.ack()
            out.append(d.value)

    th = threading.Thread(target=subscriber, daemon=True)
    th.start()
    during = idle_sleeps(th)
    t_.publish(b"wake")
    th.join(10)
    assert out == [b"wake"]
    assert during <= 1, f"{during} sleeps in 1 s of an idle {call}(): it wakes on a timer"
    sub.close()
    t_.close()


def test_blocked_publisher_sleeps_without_a_timer_behind_a_durable_subscription():
    """A block topic full because of a durable subscription nobody is
    attached to: no death can free it, so the publisher sleeps without a
    timer; forget() frees the room and wakes it."""
    t_ = fastq.Topic("idlepub", capacity=4096, serializer="raw", overflow="block")
    t_.subscribe(name="billing").close()
    n = 0
    while True:
        try:
            t_.publish(b"x" * 100, block=False)
        except fastq.Full:
            break
        n += 1
    assert n > 0
    done = []
    th = threading.Thread(target=lambda: done.append(t_.publish(b"y" * 100)), daemon=True)
    th.start()
    during = idle_sleeps(th)
    assert t_.forget("billing")
    th.join(10)
    assert not th.is_alive() and done == [None]
    assert during <= 1, f"{during} sleeps in 1 s of an idle publish(): it wakes on a timer"
    t_.close()


@pytest.mark.parametrize("kind", ["asyncio", "uvloop"])
def test_awaiting_subscriber_needs_no_timer(kind):
    """An awaiting subscription arms quiet: in a second of idling no timer
    of the asyncio side expires (a 0.2 s slice would expire ~5 times)."""
    t_ = fastq.Topic("idleaio", capacity=4096, serializer="raw")
    sub = t_.subscribe()

    async def main():
        task = asyncio.ensure_future(sub.aget())
        for _ in range(2000):
            if _core._test_sleepers(t_)[2]:
                break
            await asyncio.sleep(0.001)
        assert _core._test_sleepers(t_)[2], "the subscription is not armed quiet"
        before = dict(_aio.stats)
        await asyncio.sleep(1.0)
        assert _aio.stats["slices"] == before["slices"], (before, _aio.stats)
        t_.publish(b"wake")
        assert await asyncio.wait_for(task, 10) == b"wake"

    if kind == "uvloop":
        uvloop = pytest.importorskip("uvloop")
        with asyncio.Runner(loop_factory=uvloop.new_event_loop) as r:
            r.run(main())
    else:
        asyncio.run(main())
    sub.close()
    t_.close()


def _blocked_subscriber(name, w, ready):
    t_ = fastq.Topic(name, serializer="raw")
    sub = t_.subscribe()
    os.write(ready, b"s")
    m = sub.get()  # sleeps quiet: nothing in flight when it starts
    os.write(w, m)
    return 0


def _dying_publisher(name):
    t_ = fastq.Topic(name, serializer="raw")
    _core._test_set_crash_point("put_after_claim", 1)
    t_.publish(b"never")  # claims tail, then _exit(9)
    return 1


def read_within(fd, seconds):
    r, _, _ = select.select([fd], [], [], seconds)
    assert r, "nothing came: the subscriber stalled"
    return os.read(fd, 100)


def test_quiet_subscriber_recovers_a_publisher_killed_mid_put():
    """The subscriber sleeps without a timer; a publisher claims and dies
    before it commits.  Its claim wakes the sleeper, which then sleeps in
    slices and recovers the dead region by itself (nobody else calls into
    the topic): the next message reaches it."""
    name = "deadpub"
    t_ = fastq.Topic(name, capacity=4096, serializer="raw")
    r, w = os.pipe()
    rr, rw = os.pipe()
    with children() as pids:
        pids.append(fork(_blocked_subscriber, name, w, rw))
        assert read_within(rr, 10) == b"s"
        wait_for(lambda: _core._test_sleepers(t_)[2], "the subscriber never slept quiet", 10)
        pids.append(fork(_dying_publisher, name))
        assert reap(pids[-1]) == 9
        t_.publish(b"later")
        assert read_within(r, 20) == b"later"
        assert reap(pids[0]) == 0
    t_.close()


def _lagging_subscriber(name, ready):
    t_ = fastq.Topic(name, serializer="raw")
    sub = t_.subscribe()  # never reads: its group holds release
    os.write(ready, b"s")
    time.sleep(600)
    sub.close()
    return 0


def test_blocked_publisher_recovers_a_dead_subscriber():
    """A block topic full because of a plain subscriber in another process:
    the publisher may not sleep without a timer (that subscriber may die),
    and when it is killed the publisher's own recovery frees its group."""
    name = "deadsub"
    t_ = fastq.Topic(name, capacity=4096, serializer="raw", overflow="block")
    rr, rw = os.pipe()
    with children() as pids:
        pids.append(fork(_lagging_subscriber, name, rw))
        assert read_within(rr, 10) == b"s"
        for _ in range(1000):
            try:
                t_.publish(b"x" * 100, block=False)
            except fastq.Full:
                break
        else:
            raise AssertionError("the subscriber in the child holds nothing back")
        done = []
        th = threading.Thread(target=lambda: done.append(t_.publish(b"y" * 100, timeout=30)),
                              daemon=True)
        th.start()
        wait_for(lambda: sleeps() > 0, "the publisher never slept", 10)
        time.sleep(0.1)
        # asleep without a timer, it would sleep out its 30 s and raise Full
        os.kill(pids[0], 9)
        assert reap(pids[0]) == -9
        th.join(30)
        assert not th.is_alive() and done == [None]
    t_.close()

"""Review 16 (docs/review16.md): repros of what the review of c974ec1 and of
fq_ready / fq_arm_slice found; each was a strict xfail until fixed (branch
h/fixaio: I1 in fq_get_ready, I2 in _Side.rearm, I3 in fq_wake_quiet).

I1: fq_ready (fq_get_ready) does not count an immediate shutdown as ready,
while fq_get_begin raises ShutDown at once then.  The awaitable get's
pre-check (_call's ready(), new with fq_ready) therefore skips the attempt
that would raise, arms, and sleeps a recovery slice before ShutDown, when
another process holds an unsettled delivery (or a put is in flight).
Counted (the loop's sleeps), never timed.

I2: _Side.rearm re-arms a task left asleep with arm(True), whose quiet
defaults to True: on a brisk side (armed in slices, no quiet bit) the quiet
bit goes up and stays up (armed_quiet) while the side is armed, so claims
ring the bell ahead of their publication again.  Bits read, never timed."""
from __future__ import annotations

import asyncio
import os
import signal
import time

import pytest
from support.procs import children, fork, reap

import fastq
from fastq import _aio, _core

pytestmark = pytest.mark.usefixtures("fastq_dir")


def _holder(name, w):
    """receive() one message and hold it (unsettled) until killed."""
    q = fastq.Queue(name)
    d = q.receive(timeout=30)
    os.write(w, b"%s\n" % d.value)
    while True:
        time.sleep(1)


def test_aget_after_an_immediate_shutdown_raises_without_sleeping(monkeypatch):
    monkeypatch.setattr(_aio, "_MULTICORE", False)  # no spin: the count is the point
    q = fastq.Queue("r16-imm", capacity=4096)
    q.put(b"held")
    r, w = os.pipe()
    with children() as pids:
        pids.append(fork(_holder, "r16-imm", w))
        with os.fdopen(r) as f:
            assert f.readline() == "held\n"  # the child holds the delivery
        q.shutdown(immediate=True)
        with pytest.raises(fastq.ShutDown):
            q.get(block=False)  # the blocking API: ShutDown at once

        async def main():
            sleeps = _aio.stats["sleeps"]
            with pytest.raises(fastq.ShutDown):
                await q.aget()
            return _aio.stats["sleeps"] - sleeps
        slept = asyncio.run(main())
        assert slept == 0, (
            f"aget() after shutdown(immediate=True) slept {slept} recovery slice(s) "
            "before ShutDown (get() raises at once)")
        os.kill(pids[0], 9)
        reap(pids[0])
    q.close()


async def _asleep(q, n):
    """Until n tasks of this process sleep on q's data side."""
    for _ in range(5000):
        bell = _aio._bell
        ws = [w for (k, what), s in (bell.sides.items() if bell else ()) if what == _aio.DATA
              for w in s.waiters if w.handles[0] is q]
        if len(ws) == n and all(w.fut is not None and not w.fut.done() for w in ws):
            return
        await asyncio.sleep(0.001)
    raise AssertionError("the tasks never went to sleep")


def test_a_brisk_side_stays_armed_in_slices_after_a_wake_up(monkeypatch):
    """A brisk side (woken within its slice) arms in slices: no quiet bit, so
    a claim rings no bell ahead of its publication (README, "Awaiting").
    With two tasks asleep, the one woken first re-arms the other
    (_Side.rearm) through arm(True), whose quiet defaults to True: the quiet
    bit goes up (armed_quiet) and stays up while the side is armed."""
    monkeypatch.setattr(_aio, "_MULTICORE", False)  # no spin: every wait arms
    q = fastq.Queue(None, capacity=4096, serializer="raw")

    async def main():
        t = asyncio.ensure_future(q.aget())  # first wait: quiet; woken at once: brisk
        await _asleep(q, 1)
        q.put(b"a")
        assert await t == b"a"
        t1, t2 = asyncio.ensure_future(q.aget()), asyncio.ensure_future(q.aget())
        await _asleep(q, 2)
        before = _core._test_sleepers(q)[2]
        q.put(b"b")
        await asyncio.wait([t1, t2], return_when=asyncio.FIRST_COMPLETED)
        await _asleep(q, 1)
        after = _core._test_sleepers(q)[2]
        q.put(b"c")
        assert sorted([await t1, await t2]) == [b"b", b"c"]
        return before, after
    before, after = asyncio.run(main())
    assert not before, "setup: the brisk tasks armed quietly"
    assert not after, "the brisk task left asleep was re-armed quietly (quiet bit up)"
    q.close()


def _blocked_getter(name):
    """A blocking get on an idle queue: it sleeps quietly (its quiet bit up)."""
    q = fastq.Queue(name)
    q.get(timeout=60)
    return 0


def _dying_producer(name):
    q = fastq.Queue(name)
    _core._test_set_crash_point("put_after_claim", 1)
    q.put("never")  # claims tail, then _exit(9)
    return 1


def test_a_claim_does_not_ring_a_task_armed_in_slices_beside_a_quiet_sleeper():
    """fastq.h, fq_arm_slice: "its quiet bit stays down, so a writer's or
    reader's claim does not ring the bell ahead of its publication (only the
    publication does)".  Another process asleep quietly (a blocking get on
    an idle queue) is enough for every claim to ring it: fq_wake_quiet sees
    that process's quiet bit and calls fq_wake(q, -1), which rings every
    slot whose data or space bit is up.  White-box: this process arms in
    slices (no event loop), the quiet sleeper is stopped (SIGSTOP: it
    neither wakes nor recovers), a producer claims and is killed before it
    publishes anything; the rung bits are read."""
    name = "r16-ring"
    q = fastq.Queue(name, capacity=4096)
    _aio._get_bell()  # this process's bell (named in the core)
    with children() as pids:
        try:
            assert _core._seg_arm(q, _aio.DATA, 0, True, False) == 0  # armed in slices
            data, _, quiet = _core._test_sleepers(q)
            assert data and not quiet, "setup: armed in slices, no quiet bit"
            pids.append(fork(_blocked_getter, name))
            for _ in range(10000):
                if _core._test_sleepers(q)[2]:
                    break
                time.sleep(0.001)
            else:
                raise RuntimeError("setup: the blocking get never slept quietly")
            os.kill(pids[0], signal.SIGSTOP)
            _core._seg_bell_take(q)  # whatever rang before: not the claim's
            pids.append(fork(_dying_producer, name))
            assert reap(pids[1]) == 9
            st = q.stats()
            assert st["tail"] > st["head"], "setup: the dead claim is in flight"
            rung = _core._seg_bell_take(q)
            assert not rung & (1 << _aio.DATA), (
                "a claim that published nothing rang the bell of a task armed in slices")
        finally:
            _core._seg_arm(q, _aio.DATA, 0, False)
            if pids:
                os.kill(pids[0], signal.SIGCONT)
    q.close()


def _group_holder(name, w):
    """Join group g, receive() one message and hold it (unsettled) until killed."""
    t = fastq.Topic(name)
    s = t.subscribe(group="g")
    os.write(w, b"ready\n")
    d = s.receive(timeout=30)
    os.write(w, b"%s\n" % d.value)
    while True:
        time.sleep(1)


def test_a_subscription_aget_after_an_immediate_shutdown_raises_without_sleeping(monkeypatch):
    """I1's case for a topic: a member of the group holds a claim (another
    process), the topic is shut down immediately; the subscription's aget
    raises ShutDown without a sleep (a subscription's readiness counts any
    shutdown as ready, and its aget tries the get first)."""
    monkeypatch.setattr(_aio, "_MULTICORE", False)
    t = fastq.Topic("r16-imm-topic", capacity=4096)
    s = t.subscribe(group="g")
    r, w = os.pipe()
    with children() as pids:
        pids.append(fork(_group_holder, "r16-imm-topic", w))
        with os.fdopen(r) as f:
            assert f.readline() == "ready\n"
            t.publish(b"held")
            assert f.readline() == "held\n"  # the child's member holds the delivery
        t.shutdown(immediate=True)
        with pytest.raises(fastq.ShutDown):
            s.get(block=False)

        async def main():
            sleeps = _aio.stats["sleeps"]
            with pytest.raises(fastq.ShutDown):
                await s.aget()
            return _aio.stats["sleeps"] - sleeps
        assert asyncio.run(main()) == 0, "a subscription's aget slept before ShutDown"
        os.kill(pids[0], 9)
        reap(pids[0])
    s.close()
    t.close()


def test_a_claim_still_rings_a_task_armed_quietly():
    """I3's fix rings only the slots whose quiet bit is up: a task armed
    quietly (its quiet bit up) is still rung by a claim that publishes
    nothing, so it wakes to sleep in slices beside the claim in flight.
    White-box, as the test above: the producer is killed after its claim."""
    name = "r16-quiet-ring"
    q = fastq.Queue(name, capacity=4096)
    _aio._get_bell()
    with children() as pids:
        try:
            assert _core._seg_arm(q, _aio.DATA, 0, True, True) == _aio.QUIET  # idle: quiet
            data, _, quiet = _core._test_sleepers(q)
            assert data and quiet, "setup: armed quietly, quiet bit up"
            _core._seg_bell_take(q)
            pids.append(fork(_dying_producer, name))
            assert reap(pids[0]) == 9
            st = q.stats()
            assert st["tail"] > st["head"], "setup: the dead claim is in flight"
            rung = _core._seg_bell_take(q)
            assert rung & (1 << _aio.DATA), "a claim did not ring a task armed quietly"
        finally:
            _core._seg_arm(q, _aio.DATA, 0, False)
    q.close()

"""The awaiting path's habits (issue #12, fastq._aio._Habit): the spin before
arming adapts (it stops after misses, probes now and then, comes back after a
hit), never runs while the loop has other work ready, on a single core or
with wait="sleep"; and a side whose waits end within a slice arms in slices
(no quiet bit: a writer's claim rings no bell ahead of its message), going
quiet after a slice without a wake-up.  White-box: spins and bits are
counted, never timed."""
from __future__ import annotations

import asyncio
import gc

import pytest

import fastq
from fastq import _aio, _core

from support.procs import children, fork, reap  # noqa: E402

pytestmark = pytest.mark.usefixtures("fastq_dir")

LOOPS = ["asyncio", "uvloop"]


def run(kind, coro):
    if kind == "uvloop":
        uvloop = pytest.importorskip("uvloop")
        with asyncio.Runner(loop_factory=uvloop.new_event_loop) as r:
            return r.run(coro)
    return asyncio.run(coro)


class _TasksSince:
    """The live tasks less those alive before the test (a task another test
    left, an rpc reader: uvloop's only-task rule counts this test's alone)."""

    def __init__(self, tasks):
        self.tasks, self.before = tasks, set(tasks)

    def __len__(self):
        return sum(1 for t in self.tasks if t not in self.before)


@pytest.fixture
def multicore(monkeypatch):
    """The spin rule as on a machine with several cores (the test machine's
    count must not decide what is tested)."""
    monkeypatch.setattr(_aio, "_MULTICORE", True)
    gc.collect()
    monkeypatch.setattr(_aio, "_all_tasks", _TasksSince(asyncio.tasks._all_tasks))


async def empty_wait(q):
    """One aget that waits (briefly) and finds nothing."""
    with pytest.raises(fastq.Empty):
        await q.aget(timeout=0.001)


@pytest.mark.parametrize("kind", LOOPS)
def test_spin_stops_after_misses_and_probes_now_and_then(kind, multicore):
    """Nothing ever arrives: the first wait spins SPIN_MAX_NS, the next two a
    quarter of the one before, then none spins until the probe, the
    SPIN_PROBE_EVERY-th wait after the budget went off."""
    q = fastq.Queue(None, capacity=4096)

    async def main():
        budgets, spins = [], []
        for _ in range(3 + _aio.SPIN_PROBE_EVERY):
            before = _aio.stats["spins"]
            await empty_wait(q)
            spins.append(_aio.stats["spins"] - before)
            budgets.append(_aio._habit(q, _aio.DATA).budget)
        return budgets, spins
    budgets, spins = run(kind, main())
    m = _aio.SPIN_MAX_NS
    assert budgets[:3] == [m // 4, m // 16, m // 64]
    assert m // 64 < _aio.SPIN_MIN_NS
    assert spins[:3] == [1, 1, 1], spins
    assert spins[3:-1] == [0] * (_aio.SPIN_PROBE_EVERY - 1), spins
    assert spins[-1] == 1, "no probe"
    q.close()


def test_a_hit_restores_the_budget_and_a_miss_quarters_it():
    h = _aio._Habit()
    for _ in range(3):
        h.record(False)
    assert h.allowance() == 0
    h.record(True)
    assert h.budget == _aio.SPIN_MAX_NS and h.allowance() == _aio.SPIN_MAX_NS
    h.record(False)
    assert h.allowance() == _aio.SPIN_MAX_NS // 4


def test_no_spin_while_the_loop_has_other_callbacks_ready(multicore):
    """asyncio: a callback in the loop's ready queue: the task arms at once
    (and the same wait spins without it)."""
    q = fastq.Queue(None, capacity=4096)

    async def main():
        loop = asyncio.get_running_loop()
        before = _aio.stats["spins"]
        loop.call_soon(lambda: None)
        await empty_wait(q)
        busy = _aio.stats["spins"] - before
        before = _aio.stats["spins"]
        await empty_wait(q)
        return busy, _aio.stats["spins"] - before
    assert asyncio.run(main()) == (0, 1)
    q.close()


def test_no_spin_under_uvloop_while_another_task_lives(multicore):
    """uvloop shows no ready queue: a task spins only while it is the only
    task alive."""
    uvloop = pytest.importorskip("uvloop")
    q = fastq.Queue(None, capacity=4096)

    async def main():
        before = _aio.stats["spins"]
        await empty_wait(q)
        alone = _aio.stats["spins"] - before
        other = asyncio.ensure_future(asyncio.sleep(10))
        before = _aio.stats["spins"]
        await empty_wait(q)
        busy = _aio.stats["spins"] - before
        other.cancel()
        return alone, busy
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as r:
        assert r.run(main()) == (1, 0)
    q.close()


@pytest.mark.parametrize("kind", LOOPS)
def test_no_spin_on_a_single_core(kind, monkeypatch):
    monkeypatch.setattr(_aio, "_MULTICORE", False)
    q = fastq.Queue(None, capacity=4096)

    async def main():
        before = _aio.stats["spins"]
        for _ in range(3):
            await empty_wait(q)
        return _aio.stats["spins"] - before
    assert run(kind, main()) == 0
    q.close()


@pytest.mark.parametrize("kind", LOOPS)
def test_wait_sleep_never_spins_and_wait_spin_always_does(kind, multicore):
    qs = fastq.Queue(None, capacity=4096, wait="sleep")
    qp = fastq.Queue(None, capacity=4096, wait="spin")

    async def main():
        counts = []
        for q in (qs, qp):
            before = _aio.stats["spins"]
            for _ in range(5):
                await empty_wait(q)
            counts.append(_aio.stats["spins"] - before)
        return counts
    assert run(kind, main()) == [0, 5]
    qs.close()
    qp.close()


# ---- arming in slices ------------------------------------------------------------


async def asleep(q):
    """Until a task of this process sleeps on q's data side."""
    for _ in range(5000):
        bell = _aio._bell
        ws = [w for (k, what), s in (bell.sides.items() if bell else ()) if what == _aio.DATA
              for w in s.waiters if w.handles[0] is q]
        if ws and all(w.fut is not None and not w.fut.done() for w in ws):
            return
        await asyncio.sleep(0.001)
    raise AssertionError("the task never went to sleep")


@pytest.mark.parametrize("kind", LOOPS)
def test_a_brisk_side_arms_in_slices_and_goes_quiet_after_an_idle_slice(kind, monkeypatch):
    """First wait: quiet (the quiet bit up).  Woken by a message within its
    slice, the side is brisk: the next wait arms without the quiet bit (a
    claim rings no bell before its message).  A slice without a wake-up makes
    it quiet again (an idle task then sleeps without a timer)."""
    monkeypatch.setattr(_aio, "RECOVER_AFTER", 0.05)
    monkeypatch.setattr(_aio, "_MULTICORE", False)  # no spin: every wait arms
    q = fastq.Queue(None, capacity=4096, serializer="raw")

    async def main():
        bits = []
        for i in range(2):
            t = asyncio.ensure_future(q.aget())
            await asleep(q)
            data, _, quiet = _core._test_sleepers(q)
            bits.append((bool(data), bool(quiet)))
            q.put(b"m%d" % i)
            assert await t == b"m%d" % i
        slices = _aio.stats["slices"]
        t = asyncio.ensure_future(q.aget())
        await asleep(q)
        bits.append((bool(_core._test_sleepers(q)[0]), bool(_core._test_sleepers(q)[2])))
        while _aio.stats["slices"] == slices:  # its slice passes without a wake-up
            await asyncio.sleep(0.01)
        await asleep(q)
        bits.append((bool(_core._test_sleepers(q)[0]), bool(_core._test_sleepers(q)[2])))
        q.put(b"late")
        assert await t == b"late"
        t = asyncio.ensure_future(q.aget())
        await asleep(q)
        bits.append((bool(_core._test_sleepers(q)[0]), bool(_core._test_sleepers(q)[2])))
        q.put(b"end")
        assert await t == b"end"
        return bits
    assert run(kind, main()) == [(True, True), (True, False), (True, False), (True, True),
                                 (True, True)]
    q.close()


def _sync_producer(name, n):
    q = fastq.Queue(name)
    for i in range(n):
        q.put(i)
    return 0


def _dying_producer(name):
    q = fastq.Queue(name)
    _core._test_set_crash_point("put_after_claim", 1)
    q.put("never")  # claims tail, then _exit(9)
    return 1


@pytest.mark.parametrize("kind", LOOPS)
def test_a_task_armed_in_slices_recovers_a_producer_killed_mid_put(kind, monkeypatch):
    """Armed in slices, the task is not woken by the dead producer's claim:
    its slice's timer runs recovery, and the message put after the dead
    claim arrives."""
    monkeypatch.setattr(_aio, "_MULTICORE", False)
    q = fastq.Queue("deadput-slices", capacity=4096)

    async def main():
        t = asyncio.ensure_future(q.aget(timeout=30))
        await asleep(q)
        q.put("brisk")
        assert await t == "brisk"
        got = asyncio.ensure_future(q.aget(timeout=30))
        await asleep(q)
        assert not _core._test_sleepers(q)[2], "the waiter is quiet"
        with children() as pids:
            pids.append(fork(_dying_producer, "deadput-slices"))
            assert reap(pids[0]) == 9
            st = q.stats()
            assert st["tail"] > st["head"]
            pids.append(fork(_sync_producer, "deadput-slices", 1))
            assert reap(pids[1]) == 0
            assert await got == 0
    run(kind, main())
    q.close()


def test_import_fastq_does_not_import_asyncio():
    """asyncio (~140M instructions to import) is imported where a loop runs,
    not by `import fastq`; an awaitable call still works once it is."""
    import os
    import subprocess
    import sys
    code = ("import sys, fastq\n"
            "assert 'asyncio' not in sys.modules, 'import fastq imported asyncio'\n"
            "import asyncio\n"
            "q = fastq.Queue(None, capacity=4096)\n"
            "async def main():\n"
            "    t = asyncio.ensure_future(q.aget())\n"
            "    await asyncio.sleep(0.01)\n"
            "    q.put(1)\n"
            "    return await t\n"
            "assert asyncio.run(main()) == 1\n"
            "q.close()\n")
    src = os.path.dirname(os.path.dirname(fastq.__file__))
    env = dict(os.environ, PYTHONPATH=src + os.pathsep + os.environ.get("PYTHONPATH", ""))
    r = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                       timeout=120)
    assert r.returncode == 0, r.stderr


def test_tasks_armed_in_slices_share_one_timer_per_loop(monkeypatch):
    """Ten brisk sides, a task asleep on each: one timer in the loop (the
    loop's _Ticker), not one per sleep; it stops once no task sleeps in a
    slice."""
    monkeypatch.setattr(_aio, "_MULTICORE", False)
    qs = [fastq.Queue(None, capacity=4096, serializer="raw") for _ in range(10)]

    async def main():
        loop = asyncio.get_running_loop()
        for q in qs:  # one wait each, woken within its slice: brisk
            t = asyncio.ensure_future(q.aget())
            await asleep(q)
            q.put(b"x")
            await t
        ts = [asyncio.ensure_future(q.aget()) for q in qs]
        for q in qs:
            await asleep(q)
        assert all(not _core._test_sleepers(q)[2] for q in qs), "armed quietly"
        timers = [h for h in loop._scheduled if not h.cancelled()]
        for q in qs:
            q.put(b"y")
        assert [await t for t in ts] == [b"y"] * 10
        await asyncio.sleep(_aio.RECOVER_AFTER)  # its next tick finds no one asleep
        return len(timers), [h for h in loop._scheduled if not h.cancelled()]
    n, left = asyncio.run(main())
    assert n == 1
    assert left == []
    for q in qs:
        q.close()

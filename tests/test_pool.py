"""fastq.Pool and fastq.Executor: the multiprocessing.Pool API, failures without
hangs (exceptions with tracebacks, killed workers replaced, WorkerLost), bounded
input read-ahead, every start method, Ctrl-C."""
from __future__ import annotations

import asyncio
import os
import sys
import time

import pytest

import fastq

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _poolfuncs as F  # noqa: E402
from _poolsupport import Endless, ctrl_c, gone, sigkilling  # noqa: E402

METHODS = ["fork", "spawn", "forkserver"]


@pytest.mark.parametrize("method", METHODS)
def test_map_imap_apply_every_start_method(fastq_dir, method):
    with fastq.Pool(2, context=method) as p:
        assert p.map(F.sq, range(50)) == [x * x for x in range(50)]
        assert list(p.imap(F.inc, range(300))) == list(range(1, 301))
        assert sorted(p.imap_unordered(F.inc, range(300))) == list(range(1, 301))
        assert p.starmap(divmod, [(7, 2), (9, 4)]) == [(3, 1), (2, 1)]
        assert p.apply(F.sq, (9,)) == 81
    assert list(fastq_dir.iterdir()) == []


def test_async_results_and_callbacks(fastq_dir):
    got, errs = [], []
    with fastq.Pool(2) as p:
        r = p.apply_async(F.sq, (4,), callback=got.append)
        assert r.get(timeout=30) == 16 and r.ready() and r.successful()
        m = p.map_async(F.inc, range(10), callback=got.append)
        m.wait(30)
        assert m.get() == list(range(1, 11))
        e = p.apply_async(F.boom, (5,), error_callback=errs.append)
        with pytest.raises(ValueError):
            e.get(30)
        assert not e.successful()
        s = p.starmap_async(pow, [(2, 3), (3, 2)])
        assert s.get(30) == [8, 9]
    assert got == [16, list(range(1, 11))]
    assert len(errs) == 1 and isinstance(errs[0], ValueError)


def test_exception_has_worker_traceback_and_pool_goes_on(fastq_dir):
    with fastq.Pool(2) as p:
        with pytest.raises(ValueError, match="boom at 5") as ei:
            p.map(F.boom, range(20))
        cause = ei.value.__cause__
        assert isinstance(cause, fastq.RemoteTraceback)
        assert "_poolfuncs.py" in str(cause) and "in boom" in str(cause)
        it = p.imap(F.boom, range(20))
        assert [next(it) for _ in range(5)] == [0, 1, 2, 3, 4]
        with pytest.raises(ValueError):
            next(it)
        assert p.map(F.sq, range(5)) == [0, 1, 4, 9, 16]  # still works


def test_chunksize_is_honoured_and_optional(fastq_dir):
    with fastq.Pool(2) as p:
        for cs in (None, 1, 7, 1000):
            assert p.map(F.inc, range(100), chunksize=cs) == list(range(1, 101))


def test_killed_worker_is_replaced_and_item_rerun_once(fastq_dir, tmp_path):
    marker = str(tmp_path / "died")
    with fastq.Pool(2, max_retries=1) as p:
        before = set(p.pids())
        out = p.map(F.die_once, [(x, marker) for x in range(20)])
        assert out == [x * 10 for x in range(20)]
        assert os.path.exists(marker)
        assert p.reruns >= 1
        # A new worker replaces the dead one.  The surviving worker may repair the
        # queue and re-run the item before the supervisor has seen the death, so
        # the replacement is awaited (bounded), not assumed to precede the result.
        deadline = time.monotonic() + 10
        while set(p.pids()) == before and time.monotonic() < deadline:
            time.sleep(0.01)
        assert set(p.pids()) != before and len(p.pids()) == 2
        assert p.map(F.sq, range(4)) == [0, 1, 4, 9]


@pytest.mark.parametrize("chunksize", [None, 1])
def test_item_that_always_kills_raises_worker_lost(fastq_dir, chunksize):
    with fastq.Pool(2, max_retries=2) as p:
        with pytest.raises(fastq.WorkerLost) as ei:
            p.map(F.always_die, range(20), chunksize=chunksize)
        assert ei.value.position == 7 and ei.value.runs == 3
        assert p.map(F.sq, range(4)) == [0, 1, 4, 9]  # the pool recovered


def test_random_sigkills_every_result_exactly_once(fastq_dir, procs):
    """Workers are SIGKILLed at random moments while they run 0.2 s of items;
    every item's result comes back exactly once, in order, message by message."""
    n = 1500
    with fastq.Pool(2, max_retries=50) as p:
        with sigkilling(p.pids, seed=1):
            got = list(p.imap(F.tick, range(n), chunksize=None))
        assert [x for x, _ in got] == list(range(n))
        assert p.reruns >= 1
    assert list(fastq_dir.iterdir()) == []


def test_endless_input_is_read_a_bounded_window_ahead(fastq_dir):
    src = Endless()
    from fastq._workers import MAX_CHUNK
    with fastq.Pool(2) as p:
        it = p.imap(F.inc, src)
        for i in range(5000):
            assert next(it) == i + 1
        time.sleep(0.5)  # the feeder runs as far ahead as it may
        bound = 5000 + (2 * 2 + 2) * MAX_CHUNK
        assert src.pulled <= bound
        for i in range(5000, 10000):
            assert next(it) == i + 1
        assert src.pulled <= 10000 + (2 * 2 + 2) * MAX_CHUNK


def test_maxtasksperchild_and_initializer(fastq_dir):
    with fastq.Pool(1, initializer=F.init, initargs=("ready",), maxtasksperchild=1) as p:
        pids = {p.apply(F.pid_of, (0,)) for _ in range(3)}
        assert len(pids) == 3  # a new worker for each task
        assert p.apply(F.initialized, (0,)) == ["ready"]


def test_close_join_and_terminate(fastq_dir):
    p = fastq.Pool(2)
    r = p.map_async(F.tick, range(100))
    p.close()
    with pytest.raises(ValueError):
        p.apply(F.sq, (1,))
    p.join()
    assert [x for x, _ in r.get(1)] == list(range(100))
    assert list(fastq_dir.iterdir()) == []

    p = fastq.Pool(2)
    pids = p.pids()
    r = p.map_async(time.sleep, [5] * 4)
    p.terminate()
    with pytest.raises(RuntimeError):
        r.get(10)
    for pid in pids:
        assert gone(pid)
    assert list(fastq_dir.iterdir()) == []


def test_executor_submit_map_and_asyncio(fastq_dir):
    with fastq.Executor(2) as ex:
        assert ex.submit(F.sq, 12).result(30) == 144
        assert list(ex.map(pow, [2, 3], [5, 2])) == [32, 9]
        assert list(ex.map(F.sq, range(10), timeout=30)) == [x * x for x in range(10)]
        fut = ex.submit(F.boom, 5)
        with pytest.raises(ValueError):
            fut.result(30)
        assert isinstance(fut.exception().__cause__, fastq.RemoteTraceback)

        async def main():
            loop = asyncio.get_running_loop()
            return await loop.run_in_executor(ex, F.sq, 5)
        assert asyncio.run(main()) == 25
    with pytest.raises(RuntimeError):
        ex.submit(F.sq, 1)
    assert list(fastq_dir.iterdir()) == []


CTRL_C = r"""
import os, sys, time
sys.path.insert(0, {tests!r})
import fastq, _poolfuncs as F
if __name__ == "__main__":
    p = fastq.Pool(2, context={method!r})
    print(" ".join(map(str, p.pids())), flush=True)
    p.map(time.sleep, [0.05] * 100000)
"""


@pytest.mark.parametrize("method", ["fork", "spawn"])
def test_ctrl_c_leaves_no_process_and_no_segment(fastq_dir, child_env, procs, method):
    code = CTRL_C.format(tests=os.path.dirname(os.path.abspath(__file__)), method=method)
    # the pool's queues are anonymous: memfds held by the processes, no file
    pids = ctrl_c(code, procs, child_env({"FASTQ_DIR": str(fastq_dir)}), 2, fastq_dir,
                  settle=0.3)
    assert len(pids) == 2

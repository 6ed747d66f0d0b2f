"""Results and exceptions that cannot travel back to the parent (issue 13:
"failures, all without hanging").  A worker's result that cannot be pickled
used to kill the worker in put(); its batch was given to another worker, which
died the same way, forever: Pool.map and a pipeline hung.  Now the pickling
error is raised in the parent, at the item's place, with the worker's
traceback, as concurrent.futures does, and the pool goes on.  Every wait is
bounded: a hang fails the test."""
from __future__ import annotations

import time

import pytest

import fastq

from support import badresults as B, poolfuncs as F
from support.waiting import collect as _collect, in_thread

WAIT = 60.0  # seconds: only a hang takes this long



def _list_pipeline(fn):
    with fastq.pipeline(range(10), F.inc, fn) as p:
        return _collect(p)


def test_an_unpicklable_result_raises_its_pickling_error_in_map(fastq_dir):
    with fastq.Pool(2) as p:
        r = p.map_async(B.lock_at_3, range(10))
        with pytest.raises(TypeError, match="pickle") as ei:
            r.get(WAIT)
        assert isinstance(ei.value.__cause__, fastq.RemoteTraceback)
        assert "lock_at_3" in str(ei.value.__cause__) or "dumps" in str(ei.value.__cause__)
        assert p.map(F.sq, range(5)) == [0, 1, 4, 9, 16]  # the pool goes on
        assert p.reruns == 0  # no worker died for it
    assert list(fastq_dir.iterdir()) == []


def test_imap_yields_the_results_before_an_unpicklable_one(fastq_dir):
    with fastq.Pool(2) as p:
        th, res = in_thread(lambda: _collect(p.imap(B.lock_at_3, range(10), chunksize=10)))
        th.join(WAIT)
        assert not th.is_alive(), "imap hung"
        got, err = res["value"]
        assert got == [0, 1, 2] and isinstance(err, TypeError)


def test_an_unpicklable_result_in_a_pipeline_stage_is_raised_in_order(fastq_dir):
    th, res = in_thread(_list_pipeline, B.lock_at_3)
    th.join(WAIT)
    assert not th.is_alive(), "the pipeline hung"
    got, err = res["value"]
    # stage 1 sees inc(x): the lock comes for the input 2
    assert got == [1, 2] and isinstance(err, TypeError), (got, err)
    assert list(fastq_dir.iterdir()) == []


def test_an_exception_that_cannot_be_pickled_is_reported(fastq_dir):
    with fastq.Pool(2) as p:
        with pytest.raises(RuntimeError, match="unpicklable exception") as ei:
            p.map_async(B.raise_unpicklable_at_3, range(10)).get(WAIT)
        assert "UnpicklableError" in str(ei.value)
        assert isinstance(ei.value.__cause__, fastq.RemoteTraceback)
        assert p.map(F.sq, range(3)) == [0, 1, 4]


def test_an_exception_that_cannot_be_rebuilt_in_the_parent_is_reported(fastq_dir):
    """It pickles but its unpickling fails (its __init__ wants other arguments):
    the worker says so, instead of the parent failing to read the results queue
    (which, in the collector thread, would leave every other result unread)."""
    with fastq.Pool(2) as p:
        with pytest.raises(RuntimeError, match="NoArgsBackError") as ei:
            p.map_async(B.raise_unrebuildable_at_3, range(10)).get(WAIT)
        assert isinstance(ei.value.__cause__, fastq.RemoteTraceback)
        assert "raise_unrebuildable_at_3" in str(ei.value.__cause__)
        assert p.map(F.sq, range(3)) == [0, 1, 4]
    th, res = in_thread(_list_pipeline, B.raise_unrebuildable_at_3)
    th.join(WAIT)
    assert not th.is_alive(), "the pipeline hung"
    got, err = res["value"]
    assert got == [1, 2] and isinstance(err, RuntimeError), (got, err)


def test_a_result_that_cannot_be_rebuilt_in_the_parent_fails_the_job(fastq_dir):
    """It pickles in the worker but not back in the parent: that item fails
    with an error that says so (its batch is read item by item, see
    test_pool_unloadable.py), instead of waiting forever for the lost result
    (the collector thread, which reads while nobody waits, died of it and left
    every later result unread)."""
    with fastq.Pool(2) as p:
        with pytest.raises(RuntimeError, match="could not be read") as ei:
            p.map_async(B.return_unrebuildable_at_3, range(10)).get(WAIT)
        assert isinstance(ei.value.__cause__, TypeError)
        errs = []
        r = p.map_async(B.return_unrebuildable_at_3, range(10), error_callback=errs.append)
        deadline = time.monotonic() + WAIT  # nobody waits in get(): the collector reads
        while not errs and time.monotonic() < deadline:
            time.sleep(0.01)
        assert len(errs) == 1 and isinstance(errs[0], RuntimeError)
        assert r.ready() and not r.successful()
        assert p.map_async(F.sq, range(3), callback=errs.append).get(WAIT) == [0, 1, 4]
        assert errs[1] == [0, 1, 4]  # the collector still delivers
    th, res = in_thread(_list_pipeline, B.return_unrebuildable_at_3)
    th.join(WAIT)
    assert not th.is_alive(), "the pipeline hung"
    assert isinstance(res["value"][1], RuntimeError)

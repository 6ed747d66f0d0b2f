"""A result that pickles in its worker but raises when it is unpickled in the
parent (or in the next stage's worker), and an input that a worker cannot
unpickle.  Results travel in batches; a batch that failed to load used to
take every job in flight down with it (whose it was was unknown), and an input
batch that failed to load killed its worker and was lost (a hang).  Now only
the item that does not load fails, at its place, and the pool goes on.  Every
wait is bounded: a hang fails the test."""
from __future__ import annotations

import pytest

import fastq

from support import badresults as B, poolfuncs as F
from support.waiting import bounded as _bounded, collect as _collect

WAIT = 60.0  # seconds: only a hang takes this long




def test_only_the_apply_whose_result_does_not_load_fails(fastq_dir):
    with fastq.Pool(2) as p:
        rs = [p.apply_async(B.slow_unloadable_at_3, (i,)) for i in range(12)]
        for i, r in enumerate(rs):
            if i == 3:
                with pytest.raises(RuntimeError, match="could not be read") as ei:
                    r.get(WAIT)
                assert isinstance(ei.value.__cause__, ValueError)
                assert "refuses to load (3)" in str(ei.value)
            else:
                assert r.get(WAIT) == i
        assert p.map(F.sq, range(5)) == [0, 1, 4, 9, 16]  # the pool goes on


def test_imap_fails_at_the_item_that_does_not_load(fastq_dir):
    """One batch of ten: the items before the bad one arrive; the next raises."""
    with fastq.Pool(2) as p:
        got, err = _bounded(lambda: _collect(p.imap(B.return_unloadable_at_3, range(10),
                                                    chunksize=10)))
        assert got == [0, 1, 2] and isinstance(err, RuntimeError), (got, err)
        got, err = _bounded(lambda: _collect(p.imap(B.return_nested_unloadable_at_3,
                                                    range(10), chunksize=10)))
        assert got == [{"x": x, "deep": [x]} for x in range(3)], got
        assert isinstance(err, RuntimeError) and "refuses to load (3)" in str(err)


def test_a_map_in_flight_beside_the_bad_one_succeeds(fastq_dir):
    with fastq.Pool(2) as p:
        good = p.map_async(F.tick, range(200), chunksize=5)
        bad = p.map_async(B.return_unloadable_at_3, range(10), chunksize=2)
        with pytest.raises(RuntimeError, match="could not be read"):
            bad.get(WAIT)
        assert [x for x, _ in good.get(WAIT)] == list(range(200))


def test_the_items_after_the_bad_one_in_its_batch_are_delivered(fastq_dir):
    """imap_unordered stops at the first error; map_async with error_callback
    reports the one error; a pipeline's unordered stage: every other item."""
    got, err = _bounded(lambda: _collect(fastq.pipeline(
        range(10), fastq.Stage(B.return_unloadable_at_3), fastq.Stage(F.inc))))
    # the second stage's worker cannot load the item 3 (nor could the parent)
    assert got == [1, 2, 3] and isinstance(err, RuntimeError), (got, err)
    assert "refuses to load (3)" in str(err)


def test_a_pipeline_result_that_does_not_load_is_raised_in_order(fastq_dir):
    def run():
        with fastq.pipeline(range(10), F.inc, B.return_unloadable_at_3) as p:
            return _collect(p)
    got, err = _bounded(run)
    assert got == [1, 2] and isinstance(err, RuntimeError), (got, err)


def test_an_input_a_worker_cannot_load_fails_its_item_only(fastq_dir):
    items = [0, 1, B.InputOnlyForParent(2), 3]
    with fastq.Pool(2) as p:
        got, err = _bounded(lambda: _collect(p.imap(F.pid_of, items, chunksize=4)))
        assert len(got) == 2 and isinstance(err, RuntimeError), (got, err)
        assert "refuses to load in a worker (2)" in str(err)
        assert p.map(F.sq, range(5)) == [0, 1, 4, 9, 16]
        assert p.reruns == 0  # no worker died of it


def test_an_input_a_worker_cannot_load_fails_its_item_only_in_a_tuple(fastq_dir):
    """A tuple input is cut in tuple batches: read item by item as a list's."""
    items = (0, 1, B.InputOnlyForParent(2), 3)
    with fastq.Pool(2) as p:
        got, err = _bounded(lambda: _collect(p.imap(F.pid_of, items, chunksize=4)))
        assert len(got) == 2 and isinstance(err, RuntimeError), (got, err)
        assert "refuses to load in a worker (2)" in str(err)

"""fastq._batch: a Pool's or pipeline's batch of items that does not unpickle
whole is read item by item; each item that does not load becomes a failure at
its place, the others load as they were (shared objects, out-of-band buffers,
long batches, frames).  No processes: the batches are pickled and loaded here."""
from __future__ import annotations

import pickle

import pytest

from fastq import _batch
from fastq._workers import _Failed

from support import badresults as B


def _roundtrip(items):
    bufs = []
    data = pickle.dumps(_batch.Batch(items), protocol=5, buffer_callback=bufs.append)
    return pickle.loads(data, buffers=[b.raw() for b in bufs])


def _shape(out):
    """Each item, or "F" for a failure."""
    return ["F" if type(x) is _Failed else x for x in out]


def test_a_batch_that_loads_comes_back_as_it_was():
    for items in ([], [1], list(range(3000)), range(10), ("a", "b")):
        out = _roundtrip(items)
        assert out == items and type(out) is type(items)


def test_the_item_that_does_not_load_fails_alone():
    out = _roundtrip([0, 1, 2, B.LoadsNowhere(3), 4, B.Fine(5)])
    assert type(out) is _batch.Salvaged
    assert _shape(out) == [0, 1, 2, "F", 4, B.Fine(5)]
    err = out[3].rebuild()
    assert isinstance(err, RuntimeError) and "refuses to load (3)" in str(err)
    assert isinstance(err.__cause__, ValueError)


@pytest.mark.parametrize("where", [0, 1, 999, 1000, 1001, 2999])
def test_long_batches_of_several_appends_and_frames(where):
    """Over 1000 items (pickle appends them 1000 at a time) and over 64 KiB (framed)."""
    items = [f"{i:0100d}" for i in range(3000)]
    items[where] = B.LoadsNowhere(where)
    want = ["F" if i == where else x for i, x in enumerate(items)]
    assert _shape(_roundtrip(items)) == want


def test_a_single_item_batch():
    assert _shape(_roundtrip([B.LoadsNowhere(0)])) == ["F"]
    assert _shape(_roundtrip([(1, B.LoadsNowhere(0))])) == ["F"]


def test_a_failed_object_referred_to_again_fails_there_too():
    """The pickle's memo refers across items: a later reference to the object
    that did not load fails too; one to an object of the same module that
    loaded (whose module name the failed item memoized) loads."""
    bad = B.LoadsNowhere(1)
    items = [B.Fine(0), [bad], B.Fine(2), {"again": bad}, B.LoadsNowhere(4), "x", B.Fine(6)]
    assert _shape(_roundtrip(items)) == [B.Fine(0), "F", B.Fine(2), "F", "F", "x", B.Fine(6)]


def test_a_half_built_container_is_not_handed_to_a_later_item():
    """The list that failed while it was filled is not given to item 2.  Nor,
    conservatively, is any object that was on the unpickler's stack when the
    item failed (the complete list inside it too): only a later item that
    shares objects with a failed one can fail for it, and a job stops at its
    first failure anyway."""
    inner = [1, 2]
    half = [inner, B.LoadsNowhere(1), 3]
    other = [7]
    items = [0, half, {"same": half}, inner, (inner, 5), [other], other]
    out = _roundtrip(items)
    assert _shape(out) == [0, "F", "F", "F", "F", [[7]], [7]]
    assert out[5][0] is out[6]


def test_an_object_whose_setstate_raises():
    obj = B.SetsNoState(1)
    out = _roundtrip([0, obj, 2, [obj], 4])
    assert _shape(out) == [0, "F", 2, "F", 4]
    assert "no state (1)" in str(out[1].rebuild())


def test_out_of_band_buffers_stay_with_their_items():
    np = pytest.importorskip("numpy")
    a = [np.full(1000, i, dtype=np.uint8) for i in range(5)]
    items = [a[0], (B.LoadsNowhere(1), a[1]), a[2], [a[3], B.LoadsNowhere(3)], a[4], a[3]]
    out = _roundtrip(items)
    assert [type(x) for x in out] == [np.ndarray, _Failed, np.ndarray, _Failed, np.ndarray,
                                      _Failed]  # the last: a[3], built by a failed item
    assert (out[0] == 0).all() and (out[2] == 2).all() and (out[4] == 4).all()


@pytest.mark.parametrize("n", [1, 2, 3, 4, 7])
def test_a_tuple_batch_fails_at_its_item_alone(n):
    """A Pool cuts a tuple input into tuple batches (pickled as a tuple:
    TUPLE1-3, or MARK ... TUPLE); its items that are tuples themselves, built
    by the same opcodes, are not taken for the batch, nor is it taken for a
    list when its first item is one."""
    for bad in range(n):
        items = tuple((i, (i,)) if i % 2 else [i, [i]] for i in range(n))
        items = items[:bad] + (B.LoadsNowhere(bad),) + items[bad + 1:]
        out = _roundtrip(items)
        assert type(out) is _batch.Salvaged
        assert _shape(out) == ["F" if i == bad else x for i, x in enumerate(items)]
        assert "refuses to load (%d)" % bad in str(out[bad].rebuild())


def test_a_batch_that_is_neither_a_list_nor_a_tuple_fails_every_item():
    """Not a list or tuple as Batch pickles them: nothing to tell items by."""
    out = _batch.load_batch(pickle.dumps({0: 0, 1: B.LoadsNowhere(1)}), 2)
    assert _shape(out) == ["F", "F"]

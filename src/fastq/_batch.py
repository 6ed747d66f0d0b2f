"""A batch of items pickled on its own inside a Pool or pipeline message, and
read back item by item when it does not load whole.

A chunk message (see fastq._workers) is ``(job, chunk, origin, call, batch,
nfailed, cost, parts)``.  The batch, the only part that holds user objects,
travels as :func:`pack` makes it: a plain tuple of its own pickle stream, its
length and its out-of-band buffers (which the queue's serializer carries as
before: a numpy array is still copied once, into the ring); the reader calls
:func:`unpack`.  So the message's header always loads, and a batch that does not
(an object whose ``__reduce__`` names a function that raises, a class the
reader cannot import) is loaded again item by item: the items that load are
returned, each one that does not is replaced by a failure (``_Failed``) naming
its error, and that item alone fails in the parent, at its place.

The item-by-item reading steps CPython's pure-Python unpickler through the
batch's pickle stream.  Where each item starts and ends is known from the
opcodes' stack effects (as ``pickletools.dis`` tracks them).  When an item
fails, the unpickler's stacks are put back as they were at the item's start,
the stream skips to the item's end, the out-of-band buffers it would have
taken are skipped, and the memo entries it would have made are filled with a
marker that fails any later item referring to them (as it refers to an object
that did not load); objects it had memoized that were still being built (on a
stack when it failed) are marked too.  Only the rare failing batch pays for
this; the common case is one ``pickle.loads``.
"""
from __future__ import annotations

import io
import multiprocessing
import pickle
import pickletools
import traceback
import types
from typing import Any, Callable, List, Optional

__all__ = ["Batch", "Salvaged", "load_batch", "pack", "unpack"]


class Salvaged(list):
    """A batch read item by item: some of its items are failures."""


def pack(items: Any) -> tuple:
    """A chunk's items (a list, tuple or range) as a message carries them:
    ``(pickle stream, len(items), *out-of-band buffers)``, read back by
    :func:`unpack`.  A plain tuple of bytes, an int and buffers, not an object
    with a ``__reduce__``: pickling that costs a Python call and a global
    looked up by name each way, ~5 us a message, a third of an ``apply()``."""
    bufs: list = []
    data = pickle.dumps(items, protocol=5, buffer_callback=bufs.append)
    return (data, len(items), *bufs)


def unpack(batch: tuple) -> Any:
    """The items of a :func:`pack`ed batch (a :class:`Salvaged` list when some
    did not load: see :func:`load_batch`)."""
    return load_batch(*batch)


class Batch:
    """Wraps a chunk's items for a pickle of its own: loads back as
    :func:`load_batch` reads them (what :func:`pack` and :func:`unpack` do
    inside a message)."""

    __slots__ = ("items",)

    def __init__(self, items: Any):
        self.items = items

    def __reduce__(self):
        return (load_batch, pack(self.items))


# set by fastq._stage: the class that stands for a failed item
make_failure: Callable[[BaseException, str], Any] = None  # type: ignore[assignment]


def load_batch(data: bytes, n: int, *buffers: Any) -> Any:
    """The batch's items; item by item (a :class:`Salvaged`) if it does not load whole."""
    try:
        return pickle.loads(data, buffers=buffers)
    except Exception as e:
        return _salvage(data, n, buffers, e)


def _failure(e: BaseException) -> Any:
    where = "parent" if multiprocessing.parent_process() is None else "worker"
    err = RuntimeError(f"an item could not be read (unpickled) in the {where}: "
                       f"{type(e).__name__}: {e}")
    if where == "parent":  # kept as is: the error is raised in this process
        err.__cause__ = e
        return make_failure(err, "")
    tb = "".join(traceback.format_exception(type(e), e, e.__traceback__))
    return make_failure(err, f'\n"""\n{tb}"""')


def _salvage(data: bytes, n: int, buffers: tuple, whole: BaseException) -> Salvaged:
    try:
        out = Salvaged(_itemwise(data, buffers))
        if len(out) != n:
            raise ValueError(f"{len(out)} items read, {n} expected")
    except Exception:  # not a list or tuple as Batch pickles them: every item fails
        out = Salvaged([_failure(whole)] * n)
    return out


# ---- the item-by-item reading -------------------------------------------------------

# objects complete once on a stack (the others may be half built when an item fails)
_BUILT = (str, bytes, int, float, complex, bool, type(None), tuple, frozenset, type,
          types.FunctionType, types.BuiltinFunctionType)


_TUPLES = ("TUPLE", "TUPLE1", "TUPLE2", "TUPLE3")


class _Lost:
    """Fills a memo entry of an item that failed to load."""


_LOST = _Lost()


class _Memo(dict):
    def __getitem__(self, k: int) -> Any:
        v = dict.__getitem__(self, k)
        if v is _LOST:
            raise pickle.UnpicklingError("refers to an object that failed to load")
        return v


class _Buffers:
    """The out-of-band buffers, counted (an item that fails is skipped with its buffers)."""

    def __init__(self, buffers: tuple):
        self.it, self.taken = iter(buffers), 0

    def __iter__(self) -> "_Buffers":
        return self

    def __next__(self) -> Any:
        b = next(self.it)
        self.taken += 1
        return b

    def skip_to(self, taken: int) -> None:
        while self.taken < taken:
            next(self)


def _deframed(data: bytes) -> bytes:
    """The stream without its FRAME opcodes (optional in a pickle): stream
    offsets are then file offsets for the pure-Python unpickler."""
    out, last = [], 0
    for op, _arg, pos in pickletools.genops(data):
        if op.name == "FRAME":
            out.append(data[last:pos])
            last = pos + 9  # the opcode and its 8-byte length
    out.append(data[last:])
    return b"".join(out)


def _spans(ops: list, top: int) -> List[tuple]:
    """(start, end, memo entries, buffers) of each item of the list or tuple
    pickled by ops.  The ops' stack effects are replayed on a stack of the
    offsets where each object's ops start; the items are what APPEND(S) takes
    into the list (the object at the bottom of the stack; top < 0), or what
    the tuple op at offset top takes (the stream's last: the lists and tuples
    inside items are built by the same ops); an item ends where the next
    starts, or at the APPEND(S) or the tuple op."""
    marker = pickletools.markobject
    stack: List[int] = []      # per object: the offset of its first op
    marks: List[tuple] = []    # per open MARK: (stack length, its offset)
    starts, ends = [], []
    for op, _arg, pos in ops:
        before, after = op.stack_before, op.stack_after
        if marker in before:
            n, mpos = marks.pop()
            n -= before.index(marker)      # the objects below the mark it takes too
            taken = stack[n:]
            del stack[n:]
            if top < 0 and op.name == "APPENDS" and n == 0:
                starts += taken[1:]
                ends += taken[2:] + [pos]
            elif pos == top:  # TUPLE
                starts += taken
                ends += taken[1:] + [pos]
            stack.extend([min(taken + [mpos, pos])] * len(after))
        elif marker in after:
            marks.append((len(stack), pos))
        else:
            k = len(before)
            taken = stack[len(stack) - k:] if k else []
            del stack[len(stack) - k:]
            if top < 0 and op.name == "APPEND" and len(stack) == 0:
                starts.append(taken[1])
                ends.append(pos)
            elif pos == top:  # TUPLE1, TUPLE2, TUPLE3
                starts += taken
                ends += taken[1:] + [pos]
            stack.extend([min(taken + [pos])] * len(after))
    names = [(pos, op.name) for op, _arg, pos in ops]
    spans = []
    for a, b in zip(starts, ends):
        inside = [nm for p, nm in names if a <= p < b]
        spans.append((a, b, inside.count("MEMOIZE"), inside.count("NEXT_BUFFER")))
    return spans


def _itemwise(data: bytes, buffers: tuple) -> list:
    data = _deframed(data)
    ops = list(pickletools.genops(data))
    # the op that builds the stream's object, before its MEMOIZE and STOP: a
    # tuple's (a tuple whose first item is a list starts as a list does)
    last = [(op.name, pos) for op, _arg, pos in ops if op.name not in ("STOP", "MEMOIZE")]
    top: Optional[int] = None
    if last and last[-1][0] in _TUPLES:
        top = last[-1][1]  # an offset: genops of bytes gives every op's
    elif len(ops) >= 2 and ops[1][0].name == "EMPTY_LIST":
        top = -1
    else:
        raise ValueError("not a list or a tuple")
    if top is None:
        raise ValueError("no offset for the tuple's op")
    spans = _spans(ops, top)
    f = io.BytesIO(data)
    bufs = _Buffers(buffers)
    up = pickle._Unpickler(f)  # type: ignore[attr-defined]
    up._buffers = bufs
    up.memo = _Memo()
    # what _Unpickler.load() sets up before its loop
    up._unframer = pickle._Unframer(f.read, f.readline)  # type: ignore[attr-defined]
    up.read, up.readinto, up.readline = (up._unframer.read, up._unframer.readinto,
                                         up._unframer.readline)
    up.metastack, up.stack, up.proto = [], [], 0
    up.append = up.stack.append
    read, dispatch = up.read, up.dispatch
    k = 0
    try:
        while True:
            if k < len(spans) and f.tell() == spans[k][0]:
                _item(up, f, spans[k], bufs)
                k += 1
                continue
            key = read(1)
            if not key:
                raise EOFError
            dispatch[key[0]](up)
    except pickle._Stop as stop:  # type: ignore[attr-defined]
        return stop.value


def _item(up: Any, f: io.BytesIO, span: tuple, bufs: _Buffers) -> None:
    """Load one item onto the list's stack, or a failure in its place."""
    start, end, nmemo, nbuf = span
    base, base_len, meta_len = up.stack, len(up.stack), len(up.metastack)
    memo0, taken0 = len(up.memo), bufs.taken
    read, dispatch = up.read, up.dispatch
    try:
        while f.tell() < end:
            dispatch[read(1)[0]](up)
    except Exception as e:
        pending = list(base[base_len:])
        for s in up.metastack[meta_len + 1:]:
            pending.extend(s)
        if up.stack is not base:
            pending.extend(up.stack)
        half = {id(o) for o in pending if not isinstance(o, _BUILT)}
        memo = up.memo
        for m in range(memo0, len(memo)):
            if id(dict.__getitem__(memo, m)) in half:
                dict.__setitem__(memo, m, _LOST)
        for m in range(len(memo), memo0 + nmemo):
            dict.__setitem__(memo, m, _LOST)
        del up.metastack[meta_len:]
        del base[base_len:]
        up.stack, up.append = base, base.append
        base.append(_failure(e))
        f.seek(end)
        bufs.skip_to(taken0 + nbuf)

"""Serializers: how a message becomes the bytes in the ring and back."""
from __future__ import annotations

import pickle
import struct
from typing import Any

__all__ = ["PickleSerializer", "RawSerializer", "make_serializer", "bind_serializer"]


_OOB = struct.Struct("<BIQ")  # marker 0, buffer count, pickle length


class PickleSerializer:
    """pickle protocol 5 with out-of-band buffers.

    A message is the pickle stream alone (it starts with the PROTO opcode,
    0x80), or, when the object exports out-of-band buffers (a numpy array), a
    frame: ``<B marker=0><I nbuf><Q pickle_len><Q len>*nbuf`` then the pickle
    stream then the buffers, gathered straight into the ring: the array's
    bytes are copied once, into the segment, never into an intermediate bytes.
    """

    name = "pickle"

    def dumps(self, obj: Any):
        """The message for obj: the pickle stream, or a list of frame parts."""
        bufs: list = []
        data = pickle.dumps(obj, protocol=5, buffer_callback=bufs.append)
        if not bufs:
            return data
        try:
            raws = [b.raw() for b in bufs]
        except BufferError:  # a non-contiguous buffer: pickle it in-band
            return pickle.dumps(obj, protocol=5)
        head = _OOB.pack(0, len(raws), len(data)) + struct.pack(
            f"<{len(raws)}Q", *(r.nbytes for r in raws))
        return [head, data, *raws]

    def loads(self, mv: memoryview) -> Any:
        """The object in a message (out-of-band buffers are copied out)."""
        if not mv or mv[0] != 0:
            return pickle.loads(mv)
        _, nbuf, plen = _OOB.unpack_from(mv, 0)
        off = _OOB.size
        lens = struct.unpack_from(f"<{nbuf}Q", mv, off)
        off += 8 * nbuf
        data = mv[off:off + plen]
        off += plen
        buffers = []
        for n in lens:
            buffers.append(bytearray(mv[off:off + n]))  # copied out of the ring
            off += n
        try:
            return pickle.loads(data, buffers=buffers)
        finally:
            data.release()


class RawSerializer:
    """No serialization: bytes-like objects in, ``bytes`` out."""

    name = "raw"

    def dumps(self, obj: Any):
        """obj itself: it must be bytes-like."""
        return obj

    loads = None  # the binding returns bytes


class _CustomSerializer:
    """Wraps any object with ``dumps(obj) -> bytes`` and ``loads(bytes)``."""

    def __init__(self, impl: Any):
        self.impl = impl
        self.name = None

    def dumps(self, obj: Any):
        return self.impl.dumps(obj)

    def loads(self, mv: memoryview) -> Any:
        return self.impl.loads(bytes(mv))


def make_serializer(spec: Any):
    """The serializer for a Queue's or Topic's `serializer` argument."""
    if spec == "pickle":
        return PickleSerializer()
    if spec == "raw":
        return RawSerializer()
    if isinstance(spec, str):
        raise ValueError(f"unknown serializer {spec!r}: use 'pickle', 'raw' or an object "
                         "with dumps() and loads()")
    if not (callable(getattr(spec, "dumps", None)) and callable(getattr(spec, "loads", None))):
        raise TypeError("serializer must be 'pickle', 'raw' or an object with dumps and loads")
    return _CustomSerializer(spec)


def bind_serializer(seg: Any, ser: Any) -> None:
    """Make seg (a compiled segment handle) apply ser in put*/get*."""
    seg._set_serializer(None if isinstance(ser, RawSerializer) else ser.dumps, ser.loads,
                        isinstance(ser, PickleSerializer))

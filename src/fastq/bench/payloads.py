"""Payloads of the queue cells: what a producer sends and how a consumer checks it."""

from __future__ import annotations

import itertools
import random
import struct
import zlib

KiB, MiB = 1 << 10, 1 << 20
# A tag is 64 bits: producer id in the high 16, flags and sequence number in the low 48.
SEQ_BITS = 48
STOP_SEQ = (1 << SEQ_BITS) - 1    # tag of a stop message (producer id 0: every producer sends the same one)
FILLER_SEQ = STOP_SEQ - 1         # sequence field of a (per-producer, identical) raw filler payload
LAST = 1 << (SEQ_BITS - 1)        # flag on a producer's last sample: what follows is K - 1 fillers and a stop
SAMPLE_MASK = 1023                # ping-pong: every 1024th round trip is compared byte for byte
_PACK = struct.Struct("<Q").pack

# A producer's stream is a sequence of chunks of K messages (see ``chunk_len``):
# K - 1 fillers sent from a C-level loop, then one unique *sample* whose tag holds
# the producer id and the sample's index in that producer's stream (plus LAST on
# the final sample), and whose CRC32 is checked.  After the final sample come
# K - 1 more fillers and the stop message(s).  The consumer looks only at the
# sample positions (``itertools.islice`` stepping K), so a dropped, duplicated or
# reordered message moves a filler onto a sample position and fails the cell.

def _tail(size: int, pid: int) -> bytes:
    return random.Random(size * 131 + pid).randbytes(max(0, size - 8))


def _raw_seq(m, _from=int.from_bytes):
    return _from(m[:8], "little")


class RawPayload:
    """Bytes of ``size``: an 8-byte little-endian tag, then fixed pseudo-random bytes.

    The filler is one immutable bytes object (tag: producer id | FILLER_SEQ), sent
    again and again: never a mutable buffer, since some libraries serialize later.
    """

    def __init__(self, size: int, pid: int):
        self.tail = _tail(size, pid)
        self.base = pid << SEQ_BITS
        self.filler = self.make(self.base | FILLER_SEQ)

    def make(self, tag: int) -> bytes:
        return _PACK(tag) + self.tail

    def fillers(self, seq: int, n: int):
        """The ``n`` fillers at stream positions ``seq`` .. ``seq + n - 1``."""
        return itertools.repeat(self.filler, n)

    def filler_tag(self, seq: int) -> int:
        return self.base | FILLER_SEQ

    seq_of = staticmethod(_raw_seq)
    digest = staticmethod(zlib.crc32)


class TuplePayload:
    """A tuple of five ints, the first being the tag.

    Every message is unique here (the tag is the payload): fillers carry their
    own sequence number, built by ``zip`` in C.
    """

    def __init__(self, size: int, pid: int):
        self.base = pid << SEQ_BITS

    @staticmethod
    def make(tag: int) -> tuple:
        return (tag, 1, 2, 3, 4)

    def fillers(self, seq: int, n: int):
        b = self.base | seq
        r = itertools.repeat
        return zip(range(b, b + n), r(1), r(2), r(3), r(4))

    def filler_tag(self, seq: int) -> int:
        return self.base | seq

    @staticmethod
    def seq_of(m) -> int:
        return m[0]

    @staticmethod
    def digest(m) -> int:
        return zlib.crc32(repr(m).encode())


class ArrayPayload:
    """A uint8 numpy array of ``size`` whose first 8 bytes are the tag.

    The filler is one read-only array, never modified; samples are fresh copies.
    """

    def __init__(self, size: int, pid: int):
        import numpy as np

        self.tmpl = np.frombuffer(_PACK(0) + _tail(size, pid), dtype=np.uint8).copy()
        self.base = pid << SEQ_BITS
        self.filler = self.make(self.base | FILLER_SEQ)
        self.filler.flags.writeable = False

    def make(self, tag: int):
        a = self.tmpl.copy()
        a[:8] = memoryview(_PACK(tag))
        return a

    def fillers(self, seq: int, n: int):
        return itertools.repeat(self.filler, n)

    def filler_tag(self, seq: int) -> int:
        return self.base | FILLER_SEQ

    @staticmethod
    def seq_of(a) -> int:
        return _raw_seq(a.data)

    @staticmethod
    def digest(a) -> int:
        return zlib.crc32(a.data)


PAYLOADS = {"raw": RawPayload, "tuple": TuplePayload, "numpy": ArrayPayload}

"""Messages that check themselves, for the multi-process tests: whoever receives one
can tell who sent it, its sequence number, and whether a byte of it is wrong.

* ``Framed``: a header (magic, crc32, sender, seq, size) and a payload cut from random
  bytes made once per test module (before forking: the children inherit them); big
  messages (MiBs) cost no generation time.  ``check`` returns None for a damaged one.
* ``Patterned``: a header (sender, seq) and a body that repeats a pattern derived from
  them; ``check`` regenerates the message and compares every byte.
"""
import random
import struct
import zlib


class Framed:
    HDR = struct.Struct("<IIQQQ")  # magic, crc, sender, seq, size
    KEY = struct.Struct("<QQQ")    # sender, seq, size (what the crc covers, with the payload)

    def __init__(self, magic, seed, nbytes):
        self.magic, self.seed, self.nbytes = magic, seed, nbytes
        self._base = None

    def base(self):
        """the random bytes payloads are cut from (make it before forking)"""
        if self._base is None:
            self._base = random.Random(self.seed).randbytes(self.nbytes)
        return self._base

    def make(self, who, seq, size):
        off = (who * 7919 + seq * 104729) % (1 << 20)
        payload = self.base()[off:off + size]
        assert len(payload) == size, "Framed(nbytes) too small for a message of %d" % size
        crc = zlib.crc32(payload, zlib.crc32(self.KEY.pack(who, seq, size)))
        return self.HDR.pack(self.magic, crc, who, seq, size) + payload

    def check(self, data):
        """(who, seq, size) if the message is intact, else None"""
        if len(data) < self.HDR.size:
            return None
        magic, crc, who, seq, size = self.HDR.unpack_from(data)
        mv = memoryview(data)
        if magic != self.magic or size != len(data) - self.HDR.size:
            return None
        if zlib.crc32(mv[self.HDR.size:], zlib.crc32(mv[8:self.HDR.size])) != crc:
            return None
        return who, seq, size

    def header(self, data, default=0):
        """(who, seq) as the header says (unchecked), or (default, default) if too short"""
        if len(data) < self.HDR.size:
            return default, default
        _, _, who, seq, _ = self.HDR.unpack_from(data)
        return who, seq


class Patterned:
    def __init__(self, hdr):
        """hdr: a struct of two unsigned fields (sender, seq); also the pattern's unit"""
        self.hdr = hdr
        self.mask = (1 << (8 * hdr.size // 2)) - 1

    def make(self, who, seq, size):
        """a message of max(size, header) bytes"""
        head = self.hdr.pack(who, seq)
        pat = self.hdr.pack(who ^ (0x5A5A5A5A5A5A5A5A & self.mask),
                            (seq * 2654435761 + 1) & self.mask)
        n = max(size, self.hdr.size) - self.hdr.size
        return head + (pat * (n // len(pat) + 1))[:n]

    def check(self, m):
        """(who, seq, intact); (-1, -1, False) for a message shorter than a header"""
        if len(m) < self.hdr.size:
            return -1, -1, False
        who, seq = self.hdr.unpack_from(m)
        return who, seq, m == self.make(who, seq, len(m))


class Passthrough:
    """A serializer that passes bytes through (a base: a test's serializer overrides
    loads(), which runs inside the call that claimed the message)."""

    def dumps(self, obj):
        return obj

    def loads(self, data):
        return data


class CheckOnLoad(Passthrough):
    """A serializer whose loads() returns check(message): consumers then validate while
    the message is still claimed, so a good share of random kills land inside get()."""

    def __init__(self, check):
        self.check = check

    def loads(self, data):
        return self.check(data)


def send_all(put, put_many, msgs, batch, timeout=60):
    """put msgs one by one (batch 0) or in put_many batches of ``batch``"""
    if batch:
        for i in range(0, len(msgs), batch):
            put_many(msgs[i:i + batch], timeout=timeout)
    else:
        for m in msgs:
            put(m, timeout=timeout)


def pick_size(rng, bands):
    """a message size: bands [(p, lo, hi), ...], cumulative probabilities (the last 1.0),
    one rng.random() to pick the band, then rng.randint(lo, hi)"""
    r = rng.random()
    for p, lo, hi in bands:
        if r < p:
            return rng.randint(lo, hi)
    raise AssertionError("the last band's probability must be 1.0")

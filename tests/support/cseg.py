"""What the white-box tests of the C core (tests/c/test_ring_*.py, test_topic_*.py) share:
the cffi module, payloads that check themselves, segment creation and the handle
methods a queue and a topic have in common."""

import random
import struct
import zlib

from support import cbuild

ffi, lib = cbuild.load()

CAP = 4096
BIG = 1 << 62
HDR = 16


def rec_size(n):
    """bytes a record of n payload bytes takes in the ring (the core's fq_rec_size)"""
    return lib.fqt_rec_size(n)


# ---- payloads: seq + crc32 of a body derived from seq ---------------------------


def mk(seq, n=64):
    assert n >= 8
    body = random.Random(seq * 7919 + n).randbytes(n - 8)
    return struct.pack("<II", seq, zlib.crc32(body)) + body


def seq_of(b):
    assert len(b) >= 8, "payload too short: %r" % (b,)
    seq, crc = struct.unpack_from("<II", b)
    assert zlib.crc32(b[8:]) == crc, "payload checksum mismatch for seq %d" % seq
    assert b == mk(seq, len(b)), "payload body differs for seq %d" % seq
    return seq


# ---- segments ------------------------------------------------------------------------


def create(path, capacity=CAP, max_message=0, max_slots=8, mode=0o600, topic=0, drop=False,
           max_subs=16):
    """fq_create: (rc, fq_queue *, error message)"""
    o = ffi.new("fq_create_opts *", {"capacity": capacity, "max_message": max_message,
                                     "max_slots": max_slots, "mode": mode, "topic": topic,
                                     "drop": int(drop), "max_subs": max_subs})
    qq = ffi.new("fq_queue **")
    err = ffi.new("char[512]")
    rc = lib.fq_create(str(path).encode(), o, qq, err, 512)
    return rc, qq[0], ffi.string(err).decode()


def open_seg(path):
    """fq_open: (rc, fq_queue *, error message)"""
    qq = ffi.new("fq_queue **")
    err = ffi.new("char[512]")
    rc = lib.fq_open(str(path).encode(), qq, err, 512)
    return rc, qq[0], ffi.string(err).decode()


class Handle:
    """A segment handle: open, close, and the producer (publisher) side."""

    def __init__(self, ptr, path):
        self.q = ptr
        self.path = path
        self._st = ffi.new("uint64_t[8]")

    @classmethod
    def open(cls, path):
        rc, q, err = open_seg(path)
        assert rc == 0, (rc, err)
        return cls(q, path)

    def close(self):
        if self.q is not None:
            lib.fq_close(self.q)
            self.q = None

    def recover(self):
        return lib.fq_recover(self.q)

    @property
    def cap(self):
        return lib.fq_capacity(self.q)

    def tail_idx(self):
        """the tail's index in the ring (stats() of a queue or a topic has "tail")"""
        return self.stats()["tail"] & (self.cap - 1)

    def put(self, data):
        return lib.fq_put(self.q, data, len(data))

    def put_batch(self, datas):
        lens = ffi.new("uint64_t[]", [len(d) for d in datas])
        c = ffi.new("fq_claim *")
        rc = lib.fq_put_begin(self.q, lens, len(datas), c)
        if rc:
            return rc, c
        for d in datas:
            buf = lib.fq_claim_buf(self.q, c)
            ffi.memmove(buf, d, len(d))
        lib.fq_put_commit(self.q, c)
        return rc, c


class Claims:
    """get() and drain() over a consumer's begin/read/end (a queue handle or a topic
    subscription): read(c) lists a claim's messages."""

    def get(self, max_n=1, max_bytes=BIG):
        """(rc, [messages], redelivered)"""
        rc, c = self.begin(max_n, max_bytes)
        if rc:
            return rc, [], 0
        msgs = self.read(c)
        assert len(msgs) == c.n, "claim says %d messages, iteration gave %d" % (c.n, len(msgs))
        red = c.redelivered
        self.end(c)
        return rc, msgs, red

    def drain(self, max_n=4, limit=100000):
        """every message until EMPTY, with its redelivered flag: [(payload, redelivered)]
        of a queue, [(idx, payload, redelivered)] of a subscription"""
        out = []
        for _ in range(limit):
            rc, msgs, red = self.get(max_n)
            if rc == lib.FQ_EMPTY:
                return out
            assert rc == lib.FQ_OK, rc
            out.extend((*m, red) if isinstance(m, tuple) else (m, red) for m in msgs)
        raise AssertionError("drain did not end")


def recover_fully(h, expect_repair=True):
    """recover until nothing is left to repair; the first call must repair"""
    r = h.recover()
    if expect_repair:
        assert r > 0, "fq_recover found nothing to repair"
    for _ in range(5):
        if h.recover() == 0:
            return
    raise AssertionError("fq_recover keeps repairing")

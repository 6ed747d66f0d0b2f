"""White-box tests of the fastq C core (csrc/) through cffi (see tests/c_core.py).

Covers: create/open validation, put/get round trips, wrap-around padding, batches,
FULL/EMPTY/ETOOBIG, out-of-order consumer completion, abort/redelivery, every crash
point with recovery (child killed by the core's own fault injection), liveness, a
threaded stress and a fuzz of corrupted segments.  Every child process is bounded
in time and killed in a finally clause.
"""

import errno
import os
import random
import signal
import struct
import sys
import threading
import time
import zlib

import pytest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _cseg import (BIG, CAP, HDR, Handle, create, ffi, lib, mk, open_seg,  # noqa: E402,F401
                   rec_size, seq_of)
from _procs import children, fork, reap, wait_dead, wait_zombie  # noqa: E402

ALIGN = rec_size(1) - HDR  # record alignment of the core: 8 (or 16)


# ---------------------------------------------------------------------------
# a thin wrapper of the C API


class Q(Handle):
    def __init__(self, ptr, path):
        super().__init__(ptr, path)
        self._d = ffi.new("const void **")
        self._l = ffi.new("uint64_t *")

    @classmethod
    def create(cls, path, capacity=CAP, max_message=0, max_slots=8, mode=0o600):
        rc, q, err = create(path, capacity, max_message, max_slots, mode)
        assert rc == 0, (rc, err)
        return cls(q, path)

    # consumer
    def begin(self, max_n=1, max_bytes=BIG):
        c = ffi.new("fq_claim *")
        rc = lib.fq_get_begin(self.q, max_n, max_bytes, c)
        return rc, c

    def read(self, c):
        out = []
        while lib.fq_claim_next(self.q, c, self._d, self._l):
            out.append(bytes(ffi.buffer(self._d[0], self._l[0])))
            assert len(out) <= c.n
        return out

    def end(self, c):
        lib.fq_get_end(self.q, c)

    def abort(self, c):
        lib.fq_get_abort(self.q, c)

    def get(self, max_n=1, max_bytes=BIG):
        """(rc, [payloads], redelivered)"""
        rc, c = self.begin(max_n, max_bytes)
        if rc:
            return rc, [], 0
        msgs = self.read(c)
        assert len(msgs) == c.n, "claim says %d messages, iteration gave %d" % (c.n, len(msgs))
        red = c.redelivered
        self.end(c)
        return rc, msgs, red

    def drain(self, max_n=4, limit=100000):
        """Every message until EMPTY: [(payload, redelivered)]"""
        out = []
        for _ in range(limit):
            rc, msgs, red = self.get(max_n)
            if rc == lib.FQ_EMPTY:
                return out
            assert rc == lib.FQ_OK, rc
            out.extend((m, red) for m in msgs)
        raise AssertionError("drain did not end")

    # status
    def stats(self):
        lib.fq_stats(self.q, self._st)
        return {"tail": self._st[0], "head": self._st[1], "release": self._st[2],
                "requeued": self._st[3], "state": self._st[4]}

    def qsize(self):
        return lib.fq_qsize(self.q)

    def full(self):
        return lib.fq_full(self.q)

    def recover(self):
        return lib.fq_recover(self.q)

    @property
    def cap(self):
        return lib.fq_capacity(self.q)

    @property
    def max_msg(self):
        return lib.fq_max_message(self.q)

    def tail_idx(self):
        return self.stats()["tail"] & (self.cap - 1)

    def assert_settled(self):
        s = self.stats()
        assert s["head"] == s["tail"] == s["release"], s
        assert self.qsize() == 0


_WAIT_ARGS = len(ffi.typeof(lib.fq_wait).args)


def wait(q, what, need, timeout_ns):
    """fq_wait (with spinning, when the core's fq_wait takes a spin flag)"""
    if _WAIT_ARGS == 5:
        lib.fq_wait(q.q, what, need, timeout_ns, 1)
    else:
        lib.fq_wait(q.q, what, need, timeout_ns)


def _chunks(d):
    """split a distance (multiple of ALIGN, 0 or >= 16) into record sizes in [16, 1024]"""
    assert d % ALIGN == 0 and (d == 0 or d >= 16), d
    out = []
    while d:
        c = min(d, 1024)
        if 0 < d - c < 16:
            c = d - 16
        out.append(c)
        d -= c
    return out


def advance_to(q, target):
    """With an empty queue, move the cursors so that tail % cap == target (no padding)."""
    cap = q.cap
    assert q.qsize() == 0
    i = q.tail_idx()
    if target == i:
        return
    steps = []
    if target - i >= 16:
        steps = _chunks(target - i)
    else:
        steps = _chunks(cap - i) + _chunks(target)
    for size in steps:
        t0 = q.stats()["tail"]
        assert q.put(b"\xaa" * (size - HDR)) == 0
        assert q.stats()["tail"] == t0 + size, "filler record padded unexpectedly"
        rc, msgs, _ = q.get()
        assert rc == 0 and len(msgs) == 1
    assert q.tail_idx() == target
    q.assert_settled()


def next_idx(idx, total, cap):
    """tail index after claiming `total` bytes at idx (with padding if needed)"""
    return total if idx + total > cap else (idx + total) % cap


def safe_len8(q, n, rng):
    """safe_len, at least 8 bytes (room for mk's seq and checksum)"""
    while True:
        n = max(8, safe_len(q, n, rng))
        if next_idx(q.tail_idx(), rec_size(n), q.cap) != q.cap - 8:
            return n
        n = rng.randrange(8, 600)


def safe_len(q, n, rng):
    """a length near n whose record does not leave the tail 8 bytes before the ring's
    end (that case is a known bug, see test_pad_of_8_bytes_at_ring_end)"""
    cap = q.cap
    while next_idx(q.tail_idx(), rec_size(n), cap) == cap - 8:
        n = rng.randrange(0, min(q.max_msg, 600) + 1)
    return n


# ---------------------------------------------------------------------------
# child processes


def recover_fully(q, expect_repair=True):
    """recover until nothing is left to repair; the first call must repair"""
    r = q.recover()
    if expect_repair:
        assert r > 0, "fq_recover found nothing to repair"
    for _ in range(5):
        if q.recover() == 0:
            return
    raise AssertionError("fq_recover keeps repairing")


def workout(q, rng, rounds=400, maxlen=700):
    """random puts/gets with many wrap-arounds, checking FIFO payloads, qsize and
    that the cursors settle; the queue must be empty on entry"""
    assert q.qsize() == 0
    expect = []
    base = 1_000_000 + rng.randrange(1 << 20)
    seq = base
    wraps = 0
    for _ in range(rounds):
        if rng.random() < 0.55:
            n = safe_len8(q, rng.randrange(8, maxlen), rng)
            before = q.tail_idx()
            data = mk(seq, n)
            rc = q.put(data)
            if rc == lib.FQ_FULL:
                continue
            assert rc == 0
            if q.tail_idx() < before:
                wraps += 1
            expect.append(data)
            seq += 1
        else:
            rc, msgs, red = q.get(rng.randrange(1, 5))
            if not expect:
                assert rc == lib.FQ_EMPTY
                continue
            assert rc == 0 and red == 0
            for m in msgs:
                assert m == expect.pop(0)
        assert q.qsize() == len(expect)
    for m, red in q.drain():
        assert red == 0 and m == expect.pop(0)
    assert not expect
    q.assert_settled()
    assert wraps >= 2, "workout did not wrap around"


@pytest.fixture
def seg(tmp_path):
    made = []

    def make(**kw):
        q = Q.create(tmp_path / ("q%d.seg" % len(made)), **kw)
        made.append(q)
        return q

    yield make
    for q in made:
        q.close()


# ---------------------------------------------------------------------------
# create / open


def data_offset(slots):
    return (1024 + slots * 1152 + 4095) & ~4095


@pytest.mark.parametrize("asked,cap", [(0, 4096), (1, 4096), (4096, 4096), (4097, 8192),
                                       (5000, 8192), (65536, 65536), (65537, 131072)])
def test_create_rounds_capacity_to_power_of_two(tmp_path, asked, cap):
    p = tmp_path / "q.seg"
    rc, q, err = create(p, capacity=asked, max_slots=0)
    assert rc == 0, err
    try:
        assert lib.fq_capacity(q) == cap
        assert lib.fq_max_message(q) == cap // 2 - 16
        assert lib.fq_max_slots(q) == 64
        assert os.path.getsize(p) == data_offset(64) + cap
        assert [n for n in os.listdir(tmp_path)] == ["q.seg"], "temporary file left behind"
    finally:
        lib.fq_close(q)


def test_create_validates_options(tmp_path):
    p = str(tmp_path / "q.seg")
    rc, q, err = create(p, capacity=8192, max_message=8192 // 2 - 16)
    assert rc == 0, err
    assert lib.fq_max_message(q) == 4080
    lib.fq_close(q)
    os.unlink(p)
    rc, q, err = create(p, capacity=8192, max_message=100)
    assert rc == 0 and lib.fq_max_message(q) == 100
    lib.fq_close(q)
    os.unlink(p)
    # a max_message that does not fit half the (rounded) ring
    rc, q, err = create(p, capacity=5000, max_message=8192 // 2 - 15)
    assert rc == -22 and "max_message" in err and not os.path.exists(p)
    rc, q, err = create(p, capacity=(1 << 40) + 1)
    assert rc == -22 and "capacity" in err
    rc, q, err = create(p, max_slots=1025)
    assert rc == -22 and "1025" in err
    rc, q, err = create(p, max_slots=1024)
    assert rc == 0, err
    assert lib.fq_max_slots(q) == 1024
    assert os.path.getsize(p) == data_offset(1024) + 4096
    lib.fq_close(q)
    assert os.listdir(tmp_path) == ["q.seg"]


def test_create_is_exclusive(tmp_path):
    p = tmp_path / "q.seg"
    q1 = Q.create(p)
    assert q1.put(b"hello") == 0
    rc, q2, err = create(p, capacity=65536)
    assert rc == -17, (rc, err)  # -EEXIST
    assert "exists" in err.lower()
    assert os.listdir(tmp_path) == ["q.seg"], "temporary file left behind"
    q3 = Q.open(p)  # the original is intact
    assert q3.cap == CAP and q3.qsize() == 1
    assert q3.get() == (0, [b"hello"], 0)
    q3.close()
    q1.close()
    rc, q, err = create(tmp_path / "nodir" / "q.seg")
    assert rc == -2 and err


def test_create_mode(tmp_path):
    p = tmp_path / "q.seg"
    rc, q, err = create(p, mode=0o640)
    assert rc == 0
    assert os.stat(p).st_mode & 0o777 == 0o640
    lib.fq_close(q)


def test_max_message_fits_the_record_len_field(tmp_path):
    """Regression (579e566: max capacity 2^40, so max_message could exceed the u32 len
    and fq_put_begin stored (uint32_t)len: the message came out truncated, the ring
    wedged behind it).
    A (sparse) segment of 16 GiB whose max_message exceeds what a record's u32 len
    holds: either fq_open rejects it, or a message longer than 4 GiB keeps its length.
    (fq_create would accept it too.  fq_open reserves the holes of a sparse file:
    16 GiB of disk, or ENOSPC where there is less, a refusal like EBADSEG.)"""
    p = tmp_path / "q.seg"
    Q.create(p, capacity=CAP, max_slots=2).close()
    cap = 1 << 34
    ds = data_offset(2)
    with open(p, "r+b") as f:
        f.seek(16)
        f.write(struct.pack("<QQQ", cap, cap // 2 - HDR, ds + cap))
        f.truncate(ds + cap)  # sparse: only touched pages take memory
    rc, qp, err = open_seg(p)
    if rc in (lib.FQ_EBADSEG, -errno.ENOSPC):
        return  # rejected: fine
    assert rc == 0, err
    q = Q(qp, p)
    try:
        assert q.max_msg == cap // 2 - HDR > 0xFFFFFFFF
        n = (1 << 32) + 64
        lens = ffi.new("uint64_t[1]", [n])
        c = ffi.new("fq_claim *")
        rc = lib.fq_put_begin(q.q, lens, 1, c)
        if rc == lib.FQ_ETOOBIG:
            return  # refused: fine
        assert rc == 0
        assert c.end - c.pos == rec_size(n)
        lib.fq_claim_buf(q.q, c)  # (the payload is left as zeros: sparse)
        lib.fq_put_commit(q.q, c)
        rc, g = q.begin()
        assert rc == 0
        d, ln = q._d, q._l
        assert lib.fq_claim_next(q.q, g, d, ln) == 1
        assert ln[0] == n, "a message of %d bytes comes out with %d" % (n, ln[0])
    finally:
        q.close()


def test_open_shares_the_segment(tmp_path):
    p = tmp_path / "q.seg"
    a = Q.create(p, capacity=16384, max_message=1000, max_slots=3)
    b = Q.open(p)
    assert (b.cap, b.max_msg, lib.fq_max_slots(b.q)) == (16384, 1000, 3)
    assert a.put(b"x" * 1000) == 0
    assert a.put(b"x" * 1001) == lib.FQ_ETOOBIG
    assert b.qsize() == 1
    assert b.get() == (0, [b"x" * 1000], 0)
    assert a.qsize() == 0
    # two handles of one process take two slots
    assert lib.fqt_my_slot(a.q) != lib.fqt_my_slot(b.q)
    b.close()
    a.close()
    rc, q, err = open_seg(tmp_path / "missing.seg")
    assert rc == -2 and "missing.seg" in err


def _ctrl_patch(fmt, off, val):
    return ("patch", fmt, off, val)


BAD_SEGMENTS = {
    "empty": (("truncate", 0), "smaller than a segment header"),
    "short": (("truncate", 1000), "smaller than a segment header"),
    "magic": (_ctrl_patch("<Q", 0, 0x1234), "not a fastq segment"),
    "version": (("version",), "version"),
    "kind": (_ctrl_patch("<I", 12, 3), "kind"),
    # a queue relabelled as a topic has no topic tables
    "kind_topic": (_ctrl_patch("<I", 12, 2), "topic fields"),
    "queue_with_subs": (_ctrl_patch("<I", 104, 4), "topic fields"),
    "flags": (_ctrl_patch("<I", 84, 1), "topic fields"),
    "capacity_not_pow2": (_ctrl_patch("<Q", 16, 4096 + 8), "capacity"),
    "capacity_small": (_ctrl_patch("<Q", 16, 2048), "capacity"),
    "max_message_zero": (_ctrl_patch("<Q", 24, 0), "max_message"),
    "max_message_big": (_ctrl_patch("<Q", 24, 2048 - 15), "max_message"),
    "file_size": (_ctrl_patch("<Q", 32, 12345), "file size"),
    "data_offset": (_ctrl_patch("<Q", 40, 4096 * 7), "offsets"),
    "slot_offset": (_ctrl_patch("<Q", 48, 512), "offsets"),
    "slots_zero": (_ctrl_patch("<I", 56, 0), "slot table"),
    "slots_many": (_ctrl_patch("<I", 56, 5000), "slot table"),
    "lanes": (_ctrl_patch("<I", 60, 4), "slot table"),
    "salt": (_ctrl_patch("<Q", 64, 0x1235), "salt"),
    "truncated": (("truncate", -4096), "truncated or extended"),
    "extended": (("truncate", +4096), "truncated or extended"),
    "release_after_head": (("cursors", 64, 32, 96), "cursors"),
    "head_after_tail": (("cursors", 0, 96, 64), "cursors"),
    "tail_past_ring": (("cursors", 0, 0, 4096 + 8), "cursors"),
    "misaligned": (("cursors", 4, 4, 4), "cursors"),
}


@pytest.mark.parametrize("name", sorted(BAD_SEGMENTS))
def test_open_rejects_bad_segments(tmp_path, name):
    p = tmp_path / "q.seg"
    q = Q.create(p, max_slots=4)
    q.close()
    (op, *args), words = BAD_SEGMENTS[name]
    size = os.path.getsize(p)
    with open(p, "r+b") as f:
        if op == "truncate":
            n = args[0]
            f.truncate(n if n >= 0 and abs(n) < 4096 else size + n)
        elif op == "version":  # one the core does not read
            f.seek(8)
            v = struct.unpack("<I", f.read(4))[0]
            f.seek(8)
            f.write(struct.pack("<I", v + 1))
        elif op == "patch":
            fmt, off, val = args
            f.seek(off)
            f.write(struct.pack(fmt, val))
        else:
            rel, hd, tl = args
            for off, v in ((128, tl), (256, hd), (384, rel)):
                f.seek(off)
                f.write(struct.pack("<Q", v))
    rc, qp, err = open_seg(p)
    assert rc == lib.FQ_EBADSEG, (rc, err)
    assert words in err, err
    assert str(p) in err


# ---------------------------------------------------------------------------
# put / get


def test_roundtrip_random_lengths(seg):
    rng = random.Random(1)
    q = seg(capacity=CAP)
    cap, mx = q.cap, q.max_msg
    assert mx == 2032
    expect = []
    tail = 0
    lens_seen = set()
    pads = 0
    for step in range(6000):
        if rng.random() < 0.5:
            n = rng.choice([0, 1, 7, 8, 9, 15, 16, 17, mx - 1, mx, rng.randrange(mx + 1)])
            n = safe_len(q, n, rng)
            data = rng.randbytes(n)
            rc = q.put(data)
            size = rec_size(n)
            idx = tail % cap
            pad = cap - idx if idx + size > cap else 0
            s = q.stats()
            if rc == lib.FQ_FULL:
                assert tail + pad + size - s["release"] > cap, "FULL with room"
                assert s["tail"] == tail
            else:
                assert rc == 0
                assert tail + pad + size - s["release"] <= cap
                if pad:
                    assert lib.fqt_rec_state(q.q, tail) == lib.FQ_REC_SKIP
                    assert lib.fqt_rec_len(q.q, tail) == pad
                    pads += 1
                tail += pad + size
                assert s["tail"] == tail
                expect.append(data)
                lens_seen.add(n)
        else:
            max_n = rng.choice([1, 1, 2, 5, 64])
            max_bytes = rng.choice([BIG, 0, 100, 3000])
            rc, msgs, red = q.get(max_n, max_bytes)
            if not expect:
                assert rc == lib.FQ_EMPTY and msgs == []
            else:
                assert rc == 0 and red == 0
                assert 1 <= len(msgs) <= max_n
                if len(msgs) > 1:
                    assert sum(map(len, msgs)) <= max_bytes
                for m in msgs:
                    assert m == expect.pop(0)
        assert q.qsize() == len(expect)
        assert bool(q.full()) == (q.stats()["tail"] + 16 - q.stats()["release"] > cap)
    for m, red in q.drain():
        assert m == expect.pop(0)
    assert not expect
    q.assert_settled()
    assert pads > 50 and 0 in lens_seen and mx in lens_seen


def test_get_empty_and_etoobig(seg):
    q = seg(capacity=CAP)
    assert q.get() == (lib.FQ_EMPTY, [], 0)
    assert q.put(b"x" * (q.max_msg + 1)) == lib.FQ_ETOOBIG
    assert q.put_batch([b"a" * 1008, b"b" * 1008, b""])[0] == lib.FQ_ETOOBIG  # > cap/2
    assert q.put_batch([b"a" * 1008, b"b" * 1008])[0] == 0  # == cap/2 exactly
    lens = ffi.new("uint64_t[1]", [1])
    assert lib.fq_put_begin(q.q, lens, 0, ffi.new("fq_claim *")) == -22
    assert q.stats()["tail"] == 2048 and q.qsize() == 2
    assert q.get(10)[1] == [b"a" * 1008, b"b" * 1008]
    assert q.get() == (lib.FQ_EMPTY, [], 0)
    q.assert_settled()


def test_full_exactly(seg):
    q = seg(capacity=CAP)
    for i in range(CAP // 16):  # empty messages: 16 bytes each fill the ring exactly
        assert not q.full()
        assert q.put(b"") == 0, i
    assert q.qsize() == 256 and q.full()
    assert q.put(b"") == lib.FQ_FULL
    assert q.stats()["tail"] - q.stats()["release"] == CAP
    assert q.get() == (0, [b""], 0)
    assert not q.full()
    assert q.put(b"x") == lib.FQ_FULL  # 24 bytes do not fit in 16
    assert q.put(b"") == 0
    assert q.qsize() == 256
    got = q.drain(max_n=64)
    assert len(got) == 256 and q.qsize() == 0
    q.assert_settled()
    # a large message that fits only once the oldest claim is freed
    advance_to(q, 0)
    assert q.put(b"1" * 2032) == 0
    assert q.put(b"2" * 2032) == 0
    assert q.put(b"3" * 2032) == lib.FQ_FULL and q.full()
    rc, c = q.begin()
    assert rc == 0
    assert q.put(b"3" * 2032) == lib.FQ_FULL  # claimed but not freed: no space yet
    q.end(c)
    assert q.put(b"3" * 2032) == 0


def test_wrap_padding_at_every_alignment(seg):
    """For every tail position near the end, a record that does not fit is preceded by
    one SKIP record to the end of the ring, and one that fits exactly is not."""
    q = seg(capacity=CAP)
    cap = q.cap
    seq = 0
    for pad in range(16, 2048 + 1, ALIGN):
        for exact in (False, True) if pad < 2048 else (True,):
            advance_to(q, cap - pad)
            t0 = q.stats()["tail"]
            n = pad - HDR if exact else min(pad, q.max_msg)  # record of pad or pad+16 bytes
            data = mk(seq, max(n, 8))[:n] if n >= 8 else bytes(n)
            seq += 1
            assert q.put(data) == 0
            s = q.stats()
            if exact:
                assert s["tail"] == t0 + pad and s["tail"] % cap == 0
                assert lib.fqt_rec_state(q.q, t0) == lib.FQ_REC_COMMITTED
            else:
                assert s["tail"] == t0 + pad + rec_size(n)
                assert lib.fqt_rec_state(q.q, t0) == lib.FQ_REC_SKIP
                assert lib.fqt_rec_len(q.q, t0) == pad
                assert lib.fqt_rec_state(q.q, t0 + pad) == lib.FQ_REC_COMMITTED
                assert (t0 + pad) % cap == 0
            assert q.qsize() == 1
            assert q.get() == (0, [data], 0)
            q.assert_settled()


def test_wrap_padding_batches(seg):
    """A batch that does not fit before the end moves whole after one SKIP."""
    q = seg(capacity=CAP)
    cap = q.cap
    rng = random.Random(5)
    for pad in (16, 32, 48, 64, 128, 256, 1008):
        advance_to(q, cap - pad)
        t0 = q.stats()["tail"]
        # the first record fits before the end, the batch does not
        datas = [mk(i, n) for i, n in enumerate([pad - HDR if pad >= 32 else 8, 100, 37])]
        rc, c = q.put_batch(datas)
        assert rc == 0
        assert c.pos == t0 and c.first_off == pad and c.n == 3
        total = sum(rec_size(len(d)) for d in datas)
        assert c.end == t0 + pad + total == q.stats()["tail"]
        assert lib.fqt_rec_state(q.q, t0) == lib.FQ_REC_SKIP
        rc, gc = q.begin(10)
        assert rc == 0 and gc.n == 3 and gc.first_off == pad and gc.pos == t0
        assert q.read(gc) == datas
        q.end(gc)
        q.assert_settled()
        # the next batch starts right after, at the start of the ring
        n = safe_len(q, rng.randrange(8, 300), rng)
        assert q.put_batch([bytes(n)] * 2)[0] == 0
        assert [len(m) for m, _ in q.drain()] == [n, n]


def test_batches_of_puts_and_gets(seg):
    rng = random.Random(2)
    q = seg(capacity=16384)
    expect = []
    seq = 0
    for rnd in range(300):
        k = rng.randrange(1, 9)
        datas = []
        for _ in range(k):
            datas.append(mk(seq, rng.randrange(8, 400)))
            seq += 1
        # avoid leaving the tail 8 bytes before the end (known bug)
        total = sum(rec_size(len(d)) for d in datas)
        if next_idx(q.tail_idx(), total, q.cap) == q.cap - 8:
            datas[-1] += b"\0" * 8
            datas[-1] = mk(seq - 1, len(datas[-1]))
        rc, c = q.put_batch(datas)
        if rc == lib.FQ_FULL:
            seq -= k
        else:
            assert rc == 0 and c.n == k
            expect.extend(datas)
        assert q.qsize() == len(expect)
        max_n = rng.randrange(1, 12)
        max_bytes = rng.choice([BIG, 1, 500, 2000])
        rc, gc = q.begin(max_n, max_bytes)
        if not expect:
            assert rc == lib.FQ_EMPTY
            continue
        assert rc == 0
        msgs = q.read(gc)
        assert 1 <= len(msgs) == gc.n <= max_n
        if len(msgs) > 1:
            assert sum(map(len, msgs)) <= max_bytes
        # the batch stops only where the next one would exceed a limit
        if len(msgs) < min(max_n, len(expect)):
            assert sum(map(len, msgs)) + len(expect[len(msgs)]) > max_bytes
        for m in msgs:
            assert m == expect.pop(0)
        q.end(gc)
        assert q.qsize() == len(expect)
    for m, _ in q.drain():
        assert m == expect.pop(0)
    assert not expect
    q.assert_settled()


def test_get_batch_first_message_always_taken(seg):
    q = seg(capacity=CAP)
    for n in (500, 10, 10):
        assert q.put(bytes(n)) == 0
    rc, c = q.begin(10, 100)  # first exceeds max_bytes: still taken, alone
    assert rc == 0 and c.n == 1
    q.end(c)
    rc, c = q.begin(10, 20)
    assert rc == 0 and c.n == 2
    q.end(c)


# ---------------------------------------------------------------------------
# out-of-order completion, abort


def test_out_of_order_completion(seg):
    rng = random.Random(3)
    q = seg(capacity=CAP)
    seq = 0
    for rnd in range(200):
        k = rng.randrange(2, 6)
        datas = []
        for _ in range(rng.randrange(k, 3 * k)):
            n = safe_len8(q, rng.randrange(8, 200), rng)
            d = mk(seq, n)
            if q.put(d) != 0:
                break
            datas.append(d)
            seq += 1
        claims = []
        for _ in range(k):  # several claims in flight in one thread
            rc, c = q.begin(rng.randrange(1, 4))
            if rc:
                break
            claims.append((c, q.read(c)))
        got = [m for _, ms in claims for m in ms]
        assert got == datas[:len(got)]
        s0 = q.stats()
        order = list(range(len(claims)))
        rng.shuffle(order)
        if len(order) > 1 and order == sorted(order):
            order.reverse()
        ended = set()
        for i in order:
            q.end(claims[i][0])
            ended.add(i)
            s = q.stats()
            oldest_open = min((j for j in range(len(claims)) if j not in ended), default=None)
            if oldest_open is None:
                assert s["release"] == s["head"], s
            else:
                # release stops at the oldest claim still open (a sweep may pass the
                # SKIP that leads it, not its first message)
                oc = claims[oldest_open][0]
                assert oc.pos <= s["release"] <= oc.pos + oc.first_off, (s, oldest_open)
            assert q.qsize() == len(datas) - sum(claims[j][0].n for j in ended)
        assert s0["head"] == q.stats()["head"]
        rest = [m for m, _ in q.drain()]
        assert got + rest == datas
        q.assert_settled()
    assert q.stats()["tail"] > 10 * q.cap


def test_out_of_order_reverse_fill_drain(seg):
    """Two claims ended newest first, repeatedly over a full ring: space is reused."""
    q = seg(capacity=CAP)
    seq = 0
    for rnd in range(100):
        sent = []
        while True:
            d = mk(seq, 200 + 8 * (rnd % 7))
            if next_idx(q.tail_idx(), rec_size(len(d)), q.cap) == q.cap - 8:
                d = mk(seq, len(d) + 8)
            rc = q.put(d)
            if rc == lib.FQ_FULL:
                break
            assert rc == 0
            sent.append(d)
            seq += 1
        assert len(sent) >= 12
        got = []
        while True:
            rc1, a = q.begin(2)
            if rc1:
                break
            ma = q.read(a)
            rc2, b = q.begin(3)
            mb = q.read(b) if rc2 == 0 else []
            if rc2 == 0:
                q.end(b)
                assert a.pos <= q.stats()["release"] <= a.pos + a.first_off
            q.end(a)
            assert q.stats()["release"] == q.stats()["head"]
            got += ma + mb
        assert got == sent
        q.assert_settled()


def test_abort_redelivers(seg):
    q = seg(capacity=CAP)
    datas = [mk(i, 50 + i) for i in range(6)]
    for d in datas:
        assert q.put(d) == 0
    rc, c = q.begin(3)
    assert q.read(c) == datas[:3]
    q.abort(c)
    assert q.qsize() == 6
    assert q.stats()["requeued"] == 3
    # the aborted ones come back first, one at a time, marked redelivered
    for i in range(3):
        rc, msgs, red = q.get(5)
        assert (rc, msgs, red) == (0, [datas[i]], 1)
        assert q.qsize() == 5 - i
    rc, msgs, red = q.get(5)
    assert (msgs, red) == (datas[3:], 0)
    q.assert_settled()
    assert q.stats()["requeued"] == 0
    # aborting a redelivered message gives it back again
    assert q.put(datas[0]) == 0 and q.put(datas[1]) == 0
    rc, c = q.begin(2)
    q.abort(c)
    rc, c = q.begin()
    assert c.taken == 1 and c.redelivered == 1 and q.read(c) == [datas[0]]
    q.abort(c)
    assert q.get() == (0, [datas[0]], 1)
    assert q.get() == (0, [datas[1]], 1)
    assert q.get() == (lib.FQ_EMPTY, [], 0)
    q.assert_settled()
    workout(q, random.Random(4))


def test_abort_in_out_of_order_claims(seg):
    q = seg(capacity=CAP)
    datas = [mk(i, 64) for i in range(9)]
    for d in datas:
        assert q.put(d) == 0
    rc, a = q.begin(3)
    rc, b = q.begin(3)
    rc, c = q.begin(3)
    assert [q.read(x) for x in (a, b, c)] == [datas[0:3], datas[3:6], datas[6:9]]
    q.end(c)
    q.abort(b)
    q.end(a)
    assert q.qsize() == 3
    got = q.drain()
    assert got == [(d, 1) for d in datas[3:6]]
    q.assert_settled()
    workout(q, random.Random(6))


def _leading_skip_released(q, finish):
    """Claim A (oldest) and claim B whose range starts with a SKIP are in flight.
    Ending A sweeps release over B's leading SKIP; producers then refill the ring
    over the SKIP's bytes; then B ends (or aborts)."""
    cap = q.cap
    advance_to(q, cap - 208 - 48)  # A's record, then 48 bytes before the end
    a_data = mk(1, 208 - HDR)
    b_data = mk(2, 100)
    assert q.put(a_data) == 0
    assert q.put(b_data) == 0  # SKIP of 48 bytes, then b at the start of the ring
    t_skip = q.stats()["tail"] - 48 - rec_size(100)
    assert lib.fqt_rec_state(q.q, t_skip) == lib.FQ_REC_SKIP
    rc, a = q.begin(1)
    assert rc == 0 and q.read(a) == [a_data]
    rc, b = q.begin(1)
    assert rc == 0 and b.pos == t_skip and b.first_off == 48 and q.read(b) == [b_data]
    q.end(a)  # oldest: release -> b.pos, then the sweep passes the SKIP
    assert q.stats()["release"] == t_skip + 48
    fill = []
    while True:
        d = b""
        if q.put(d) != 0:
            break
        fill.append(d)
    assert lib.fqt_rec_state(q.q, t_skip) != lib.FQ_REC_SKIP  # its bytes were reused
    finish(q, b)
    return b_data, fill


def test_end_of_claim_whose_leading_skip_was_released(seg):
    """Regression (579e566: fq_get_end's non-oldest branch walked from c->pos, broke at
    the overwritten SKIP, never marked the message DONE: release stuck forever, and a
    later fq_recover requeued the consumed message)."""
    q = seg(capacity=CAP)
    b_data, fill = _leading_skip_released(q, lambda q, b: q.end(b))
    got = q.drain(max_n=64)
    assert len(got) == len(fill)
    assert q.qsize() == 0
    s = q.stats()
    assert s["release"] == s["head"] == s["tail"], "release stuck: the queue stays full: %s" % s
    assert q.put(b"after") == 0


def test_abort_of_claim_whose_leading_skip_was_released(seg):
    """Regression (579e566: fq_get_abort walked from c->pos and broke at the overwritten
    SKIP: the aborted message was not given back)."""
    q = seg(capacity=CAP)
    b_data, fill = _leading_skip_released(q, lambda q, b: q.abort(b))
    got = q.drain(max_n=64)
    assert (b_data, 1) in got, "the aborted message was not redelivered"


def test_read_of_claim_whose_leading_skip_was_released(seg):
    """Regression (579e566: fq_get_begin set cursor = h, so fq_claim_next read the
    released, overwritten SKIP and yielded foreign records)."""
    q = seg(capacity=CAP)
    cap = q.cap
    advance_to(q, cap - 208 - 48)
    a_data, b_data = mk(1, 208 - HDR), mk(2, 100)
    assert q.put(a_data) == 0 and q.put(b_data) == 0
    rc, a = q.begin(1)
    rc, b = q.begin(1)  # [SKIP of 48 bytes, b_data], not read yet
    assert b.first_off == 48 and b.n == 1
    q.end(a)  # release passes b's SKIP
    # refill the ring so that a new record starts exactly on the SKIP's bytes
    t = q.stats()["tail"]
    if (b.pos + cap - t) % 16:
        assert q.put(b"12345678") == 0  # a 24-byte record
    while q.put(b"") == 0:
        pass
    assert lib.fqt_rec_state(q.q, b.pos + cap) == lib.FQ_REC_COMMITTED
    got = []
    while len(got) < 20 and lib.fq_claim_next(q.q, b, q._d, q._l):
        got.append(bytes(ffi.buffer(q._d[0], q._l[0])))
    assert got == [b_data], "a claim of 1 message yielded %d: %r" % (len(got), [g[:8] for g in got])


def _pad8_child(path):
    rc, qp, err = open_seg(path)
    assert rc == 0
    q = Q(qp, path)
    a, b = mk(1, 2032), mk(2, 2024)  # 2048 + 2040 bytes: tail index = cap - 8
    for m in (a, b):
        assert q.put(m) == 0
        assert q.get() == (0, [m], 0)
    c = mk(3, 16)  # with 8-byte records this one was padded with 8 bytes
    if q.put(c) != 0:
        return 3
    if q.get() != (0, [c], 0):
        return 4
    return 0


def test_pad_of_8_bytes_at_ring_end(tmp_path):
    """Regression (579e566, 8-byte records: a put at tail index cap-8 padded with an
    8-byte SKIP whose 16-byte header was written past the mapping: SIGSEGV)."""
    p = tmp_path / "q.seg"
    Q.create(p).close()
    with children() as pids:
        pid = fork(_pad8_child, p)
        pids.append(pid)
        code = reap(pid)
        pids.remove(pid)
    assert code == 0, "child died with %s" % (
        "signal %s" % signal.Signals(-code).name if code < 0 else "exit %d" % code)


# ---------------------------------------------------------------------------
# crash points


PUT_POINTS = ["put_after_intent", "put_after_claim", "put_after_headers", "put_before_commit",
              "put_mid_commit", "put_before_count"]
GET_POINTS = ["get_after_intent", "get_after_claim", "get_before_free", "get_before_count"]


def _producer_child(path, point, countdown, batches):
    rc, qp, err = open_seg(path)
    assert rc == 0, err
    q = Q(qp, path)
    lib.fq_test_set_crash_point(point.encode(), countdown)
    for datas in batches:
        if len(datas) == 1:
            rc = q.put(datas[0])
        else:
            rc, _ = q.put_batch(datas)
        assert rc == 0, rc
    return 0  # the crash point was not reached


def _committed_before(point, batch):
    """messages of the crashing put that are committed when the child dies there"""
    if point == "put_mid_commit":
        return batch[:1]
    if point == "put_before_count":
        return batch
    return []


@pytest.mark.parametrize("zombie", [False, True], ids=["reaped", "zombie"])
@pytest.mark.parametrize("wrap", [False, True], ids=["flat", "wrap"])
@pytest.mark.parametrize("n", [1, 3], ids=["single", "batch3"])
@pytest.mark.parametrize("point", PUT_POINTS)
def test_producer_killed_at_crash_point(tmp_path, point, n, wrap, zombie):
    p = tmp_path / "q.seg"
    q = Q.create(p, capacity=CAP, max_slots=4)
    cap = q.cap
    lens1 = [40, 72, 24][:n] if n > 1 else [200]
    lens2 = [120, 8, 64][:n] if n > 1 else [300]
    pre = [mk(100 + i, 48) for i in range(2)]
    b1 = [mk(200 + i, x) for i, x in enumerate(lens1)]
    b2 = [mk(300 + i, x) for i, x in enumerate(lens2)]
    s_pre = sum(rec_size(len(d)) for d in pre)
    s1 = sum(rec_size(len(d)) for d in b1)
    s2 = sum(rec_size(len(d)) for d in b2)
    pad = 0
    if wrap:
        pad = 48  # b2 does not fit in the 48 bytes left: SKIP + b2 at the start
        advance_to(q, cap - pad - s1 - s_pre)
    p0 = q.stats()["tail"]
    for d in pre:
        assert q.put(d) == 0
    t_b2 = p0 + s_pre + s1
    with children() as pids:
        pid = fork(_producer_child, p, point, 2, [b1, b2])
        pids.append(pid)
        code = wait_dead(pid, zombie)
        assert code == 9, "child did not die at %s (exit %s)" % (point, code)
        s = q.stats()
        if point == "put_after_intent":
            assert s["tail"] == t_b2
        else:
            assert s["tail"] == t_b2 + pad + s2
        slot = lib.fqt_slot_of_pid(q.q, pid)
        assert slot >= 0
        recover_fully(q)
        assert lib.fqt_slot_of_pid(q.q, pid) == -1, "dead child's slot not freed"
        for lane in range(lib.FQ_LANES):
            assert lib.fqt_intent(q.q, slot, lane, 0, 3) & 3 == lib.FQ_PH_IDLE
        if wrap and point == "put_after_claim":
            # one SKIP over the whole header-less region, across the ring's end
            assert lib.fqt_rec_state(q.q, t_b2) == lib.FQ_REC_SKIP
            assert lib.fqt_rec_len(q.q, t_b2) == pad + s2
        expect = pre + b1 + _committed_before(point, b2)
        assert q.qsize() == len(expect)
        got = q.drain(max_n=3)
        assert [seq_of(m) for m, _ in got] == [seq_of(m) for m in expect]
        assert all(red == 0 for _, red in got)
        q.assert_settled()
        assert s["tail"] == q.stats()["tail"] or point == "put_after_intent"
        workout(q, random.Random(zlib.crc32(repr((point, n, wrap)).encode())))
    q.close()


def _consumer_child(path, point, countdown, max_n, seen_w):
    rc, qp, err = open_seg(path)
    assert rc == 0, err
    q = Q(qp, path)
    lib.fq_test_set_crash_point(point.encode(), countdown)
    while True:
        rc, c = q.begin(max_n)
        if rc == lib.FQ_EMPTY:
            return 0
        assert rc == 0, rc
        for m in q.read(c):
            os.write(seen_w, struct.pack("<I", seq_of(m)))
        q.end(c)
        os.write(seen_w, b"ENDC")


@pytest.mark.parametrize("zombie", [False, True], ids=["reaped", "zombie"])
@pytest.mark.parametrize("wrap", [False, True], ids=["flat", "wrap"])
@pytest.mark.parametrize("n", [1, 3], ids=["single", "batch3"])
@pytest.mark.parametrize("point", GET_POINTS)
def test_consumer_killed_at_crash_point(tmp_path, point, n, wrap, zombie):
    p = tmp_path / "q.seg"
    q = Q.create(p, capacity=CAP, max_slots=4)
    cap = q.cap
    size = rec_size(100)
    m = 12
    if wrap:
        # the second claim holds a SKIP: before its only message (n=1), or between
        # its first and second messages (n=3)
        w = 1 if n == 1 else 4
        advance_to(q, cap - w * size - 48)
    datas = [mk(i, 100) for i in range(m)]
    for d in datas:
        assert q.put(d) == 0
    if wrap:
        assert lib.fqt_rec_state(q.q, q.stats()["head"] + w * size) == lib.FQ_REC_SKIP
    claim1, claim2, rest = list(range(n)), list(range(n, 2 * n)), list(range(2 * n, m))
    r, w_ = os.pipe()
    try:
        with children() as pids:
            pid = fork(_consumer_child, p, point, 2, n, w_)
            pids.append(pid)
            code = wait_dead(pid, zombie)
            assert code == 9, "child did not die at %s (exit %s)" % (point, code)
            os.close(w_)
            w_ = None
            log = b""
            while True:
                chunk = os.read(r, 65536)
                if not chunk:
                    break
                log += chunk
            ended = log.count(b"ENDC")
            seen = [struct.unpack("<I", log[i:i + 4])[0] for i in range(0, len(log), 4)
                    if log[i:i + 4] != b"ENDC"]
            assert ended == 1 and seen[:n] == claim1
            if point == "get_before_free":
                assert seen[n:] == claim2
            s = q.stats()
            if point in ("get_after_claim", "get_before_free"):
                assert s["head"] > s["release"], "the crashed claim should hold records"
            else:
                assert s["head"] == s["release"], s
            recover_fully(q)
            assert lib.fqt_slot_of_pid(q.q, pid) == -1
            if point in ("get_after_claim", "get_before_free"):
                want = [(i, 1) for i in claim2] + [(i, 0) for i in rest]
            elif point == "get_before_count":
                want = [(i, 0) for i in rest]
            else:
                want = [(i, 0) for i in claim2 + rest]
            assert q.qsize() == len(want)
            got = [(seq_of(x), red) for x, red in q.drain(max_n=3)]
            assert got == want
            q.assert_settled()
            assert q.stats()["requeued"] == 0
            workout(q, random.Random(zlib.crc32(repr((point, n, wrap)).encode())))
    finally:
        os.close(r)
        if w_ is not None:
            os.close(w_)
    q.close()


def _marking_child(path, marks, keep):
    """claim messages 1-4 behind the parent's older claim (so fq_get_end marks them
    DONE one by one) and die after `marks` DONE marks; keep < 4: end partially"""
    rc, qp, err = open_seg(path)
    assert rc == 0, err
    q = Q(qp, path)
    rc, c = q.begin(4)
    assert rc == 0 and c.n == 4, (rc, c.n)
    assert [seq_of(x) for x in q.read(c)] == [1, 2, 3, 4]
    if marks:
        lib.fq_test_set_crash_point(b"get_mid_done", marks)
    else:  # flagged, nothing marked yet
        lib.fq_test_set_crash_point(b"get_after_flag", 1)
    if keep == 4:
        q.end(c)
    else:
        lib.fq_get_end_partial(q.q, c, keep)
    return 1  # not reached


@pytest.mark.parametrize("keep", [4, 3], ids=["end", "partial"])
@pytest.mark.parametrize("marks", [0, 1, 2])
@pytest.mark.parametrize("recoverer", [False, True], ids=["", "recoverer_killed"])
def test_consumer_killed_marking_its_claim_done(tmp_path, marks, keep, recoverer):
    """A get_many() whose claim is not the oldest is freed by DONE marks, one record
    at a time.  Killed after `marks` of them (0: right after flagging), its batch is consumed whole (recovery
    finishes the marks), never split into a consumed prefix and a requeued rest.
    With keep=3 (fq_get_end_partial: the 4th given back) the 4th comes back alone.
    Optionally the first recoverer is itself killed in the middle of finishing."""
    p = tmp_path / "q.seg"
    q = Q.create(p, capacity=CAP, max_slots=6)
    for i in range(10):
        assert q.put(mk(i, 100)) == 0
    base = q.stats()["head"]
    rc, older = q.begin(1)  # message 0, held: release stays at its start
    assert rc == 0 and older.n == 1
    with children() as pids:
        pid = fork(_marking_child, p, marks, keep)
        pids.append(pid)
        assert reap(pid) == 9, "the consumer did not die at its crash point"
        states = [lib.fqt_rec_state(q.q, base + i * rec_size(100)) for i in range(1, 5)]
        DONE, COMMITTED, REQ = lib.FQ_REC_DONE, lib.FQ_REC_COMMITTED, lib.FQ_REC_REQUEUED
        gave_back = [REQ] if keep == 3 else []
        assert states == [DONE] * marks + [COMMITTED] * (keep - marks) + gave_back, states
        assert [seq_of(x) for x in q.read(older)] == [0]
        q.end(older)  # release moves over 0 and the DONE prefix, stops at the rest
        if recoverer:
            rpid = fork(_crash_recoverer_child, p, "recover_mid_done")
            pids.append(rpid)
            assert reap(rpid) == 9, "the recoverer did not die at recover_mid_done"
        recover_fully(q)
    want = ([(4, 1)] if keep == 3 else []) + [(i, 0) for i in range(5, 10)]
    assert q.qsize() == len(want), (q.qsize(), want)
    got = [(seq_of(x), red) for x, red in q.drain(max_n=3)]
    assert got == want, "a batch whose freeing was interrupted came back in part: %r" % got
    q.assert_settled()
    assert q.stats()["requeued"] == 0
    workout(q, random.Random(marks * 10 + keep))
    q.close()


def test_hostile_freeing_intent_cannot_wedge_the_queue(tmp_path):
    """A dead consumer's intent read from the segment says it was freeing (the
    FQ_N_FREEING flag) a claim that ends past head.  Recovery finishes the marks
    only up to head: the records after it, which nobody claimed, stay COMMITTED and
    are delivered (marking them DONE would leave them at head forever: consumers
    wait on a record that is not COMMITTED, and no sweep passes head)."""
    p = tmp_path / "q.seg"
    q = Q.create(p, capacity=CAP, max_slots=4)
    for i in range(6):
        assert q.put(mk(i, 100)) == 0
    with children() as pids:
        pid = fork(_crash_consumer_child, p)  # dies holding 0, 1, 2
        pids.append(pid)
        assert reap(pid) == 9
        s = lib.fqt_slot_of_pid(q.q, pid)
        lane = [ln for ln in range(lib.FQ_LANES)
                if lib.fqt_intent(q.q, s, ln, 1, 3) & 3 == lib.FQ_PH_WON]
        assert len(lane) == 1
        lane = lane[0]
        end = lib.fqt_intent(q.q, s, lane, 1, 1)
        assert end == q.stats()["head"]
        lib.fqt_set_intent(q.q, s, lane, 1, 2, 3 | (1 << 62))
        lib.fqt_set_intent(q.q, s, lane, 1, 1, end + 3 * rec_size(100))
        recover_fully(q)
    got = [(seq_of(x), red) for x, red in q.drain(max_n=3)]
    assert got == [(i, 0) for i in range(3, 6)], got  # 0-2: consumed, as the flag says
    q.assert_settled()
    workout(q, random.Random(5))
    q.close()


def test_consumer_crash_then_live_consumer_before_recovery(tmp_path):
    """A live consumer goes on past the dead consumer's claim; recovery then gives the
    dead claim's messages back, and nothing else."""
    p = tmp_path / "q.seg"
    q = Q.create(p, max_slots=4)
    datas = [mk(i, 80) for i in range(10)]
    for d in datas:
        assert q.put(d) == 0
    with children() as pids:
        pid = fork(_consumer_child, p, "get_after_claim", 1, 3, os.open(os.devnull, os.O_WRONLY))
        pids.append(pid)
        assert reap(pid) == 9
        pids.remove(pid)
    got = [seq_of(m) for m, _ in q.drain()]
    assert got == list(range(3, 10))
    assert q.qsize() == 3
    s = q.stats()
    assert s["release"] < s["head"] == s["tail"]
    assert q.put(mk(50, 80)) == 0
    recover_fully(q)
    got = [(seq_of(m), red) for m, red in q.drain()]
    assert got == [(0, 1), (1, 1), (2, 1), (50, 0)]
    q.assert_settled()
    workout(q, random.Random(7))


def test_dead_producer_without_header_then_live_producers(tmp_path):
    p = tmp_path / "q.seg"
    q = Q.create(p, max_slots=4)
    for i in range(2):
        assert q.put(mk(i, 64)) == 0
    with children() as pids:
        pid = fork(_producer_child, p, "put_after_claim", 1, [[mk(99, 500)]])
        pids.append(pid)
        assert reap(pid) == 9
        pids.remove(pid)
    hole = q.stats()["tail"] - rec_size(500)
    assert lib.fqt_rec_state(q.q, hole) == -1  # no header
    for i in range(2, 7):
        assert q.put(mk(i, 64)) == 0
    assert [seq_of(m) for m, _ in q.drain()] == [0, 1]
    assert q.get() == (lib.FQ_EMPTY, [], 0)  # blocked at the hole
    assert q.qsize() == 5
    recover_fully(q)
    assert lib.fqt_rec_state(q.q, hole) == lib.FQ_REC_SKIP
    assert lib.fqt_rec_len(q.q, hole) == rec_size(500)
    assert [seq_of(m) for m, _ in q.drain()] == [2, 3, 4, 5, 6]
    q.assert_settled()
    workout(q, random.Random(8))


def test_dead_producer_lost_cas_to_a_live_winner(tmp_path):
    """A producer dies after its intent but before its CAS (put_after_intent); a live
    producer then claims the same tail position.  Recovery must not abandon the
    winner's records nor move tail."""
    p = tmp_path / "q.seg"
    q = Q.create(p, max_slots=4)
    assert q.put(mk(0, 64)) == 0
    t = q.stats()["tail"]
    with children() as pids:
        pid = fork(_producer_child, p, "put_after_intent", 1, [[mk(99, 700)]])
        pids.append(pid)
        assert reap(pid) == 9
        pids.remove(pid)
    assert q.stats()["tail"] == t
    slot = lib.fqt_slot_of_pid(q.q, pid)
    st = lib.fqt_intent(q.q, slot, 0, 0, 3)
    assert st & 3 == lib.FQ_PH_CLAIMING and lib.fqt_intent(q.q, slot, 0, 0, 0) == t
    for i in range(1, 4):  # the winner at the loser's position
        assert q.put(mk(i, 40)) == 0
    s0 = q.stats()
    recover_fully(q)
    assert q.stats() == s0
    assert lib.fqt_intent(q.q, slot, 0, 0, 3) == st & ~3  # IDLE, count unchanged
    assert q.qsize() == 4
    assert [seq_of(m) for m, _ in q.drain()] == [0, 1, 2, 3]
    q.assert_settled()
    workout(q, random.Random(9))


def test_two_dead_producers_at_same_tail_before_cas(tmp_path):
    p = tmp_path / "q.seg"
    q = Q.create(p, max_slots=4)
    assert q.put(mk(0, 64)) == 0
    t = q.stats()["tail"]
    with children() as pids:
        for size in (100, 900):
            pid = fork(_producer_child, p, "put_after_intent", 1, [[mk(99, size)]])
            pids.append(pid)
            assert reap(pid) == 9
    assert q.stats()["tail"] == t
    recover_fully(q)
    assert q.stats()["tail"] == t
    assert q.qsize() == 1
    assert [seq_of(m) for m, _ in q.drain()] == [0]
    q.assert_settled()
    workout(q, random.Random(10))


@pytest.mark.parametrize("later", [False, True], ids=["nothing_after", "live_puts_after"])
@pytest.mark.parametrize("loser_end", ["shorter", "longer"])
def test_witness_picks_the_true_end(tmp_path, loser_end, later):
    """Two dead producers at one position, both only CLAIMING: loser A (intent, no
    CAS) and winner B (CAS done, no header; we turn its WON back into CLAIMING, as if
    it died between the CAS and the WON store).  Recovery must cover exactly B's
    region with one SKIP, whichever end is shorter."""
    p = tmp_path / "q.seg"
    q = Q.create(p, max_slots=4)
    assert q.put(mk(0, 64)) == 0
    t = q.stats()["tail"]
    a_len, b_len = (100, 600) if loser_end == "shorter" else (600, 100)
    with children() as pids:
        pa = fork(_producer_child, p, "put_after_intent", 1, [[mk(90, a_len)]])
        pids.append(pa)
        assert reap(pa) == 9
        pb = fork(_producer_child, p, "put_after_claim", 1, [[mk(91, b_len)]])
        pids.append(pb)
        assert reap(pb) == 9
    sb = lib.fqt_slot_of_pid(q.q, pb)
    sa = lib.fqt_slot_of_pid(q.q, pa)
    eb = t + rec_size(b_len)
    assert q.stats()["tail"] == eb
    assert lib.fqt_intent(q.q, sa, 0, 0, 0) == lib.fqt_intent(q.q, sb, 0, 0, 0) == t
    assert lib.fqt_intent(q.q, sa, 0, 0, 1) == t + rec_size(a_len)
    st = lib.fqt_intent(q.q, sb, 0, 0, 3)
    assert st & 3 == lib.FQ_PH_WON
    lib.fqt_set_intent_state(q.q, sb, 0, 0, (st & ~3) | lib.FQ_PH_CLAIMING)
    if later:
        for i in range(1, 6):
            assert q.put(mk(i, 56)) == 0
    recover_fully(q)
    assert lib.fqt_rec_state(q.q, t) == lib.FQ_REC_SKIP
    assert lib.fqt_rec_len(q.q, t) == eb - t
    want = [0] + (list(range(1, 6)) if later else [])
    assert q.qsize() == len(want)
    assert [seq_of(m) for m, _ in q.drain()] == want
    q.assert_settled()
    workout(q, random.Random(11))


def _hold_child(path, what, ready_w, go_r):
    """claims something (get or put), reports, then blocks until told to go"""
    rc, qp, err = open_seg(path)
    assert rc == 0
    q = Q(qp, path)
    if what == "get":
        rc, c = q.begin(3)
        assert rc == 0 and c.n == 3
    else:
        lens = ffi.new("uint64_t[]", [64, 64])
        c = ffi.new("fq_claim *")
        assert lib.fq_put_begin(q.q, lens, 2, c) == 0
        ffi.memmove(lib.fq_claim_buf(q.q, c), mk(500, 64), 64)
    os.write(ready_w, b"R")
    os.read(go_r, 1)
    return 0


@pytest.mark.parametrize("what", ["get", "put"])
def test_recovery_leaves_live_processes_alone(tmp_path, what):
    p = tmp_path / "q.seg"
    q = Q.create(p, max_slots=4)
    for i in range(5):
        assert q.put(mk(i, 64)) == 0
    ready_r, ready_w = os.pipe()
    go_r, go_w = os.pipe()
    try:
        with children() as pids:
            pid = fork(_hold_child, p, what, ready_w, go_r)
            pids.append(pid)
            assert os.read(ready_r, 1) == b"R"
            assert lib.fq_pid_alive(pid, 0) == 1
            s0 = q.stats()
            assert q.recover() == 0, "recovery touched a live process"
            assert q.stats() == s0
            if what == "get":
                assert [seq_of(m) for m, _ in q.drain()] == [3, 4]
                assert q.qsize() == 3
            else:
                assert [seq_of(m) for m, _ in q.drain()] == [0, 1, 2, 3, 4]
                assert q.put(mk(9, 64)) == 0
                assert q.get() == (lib.FQ_EMPTY, [], 0)  # behind the live WRITING ones
            os.kill(pid, signal.SIGKILL)
            assert reap(pid) == -signal.SIGKILL
            pids.remove(pid)
            recover_fully(q)
            got = [(seq_of(m), red) for m, red in q.drain()]
            if what == "get":
                assert got == [(0, 1), (1, 1), (2, 1)]
            else:
                assert got == [(9, 0)]
            q.assert_settled()
            workout(q, random.Random(12))
    finally:
        for fd in (ready_r, ready_w, go_r, go_w):
            os.close(fd)


def _exit_without_close(path):
    rc, qp, err = open_seg(path)
    assert rc == 0
    assert lib.fq_put(qp, b"child", 5) == 0
    return 0


def _attach_child(path):
    rc, qp, err = open_seg(path)
    assert rc == 0
    rc = lib.fq_put(qp, b"second", 6)
    return 0 if rc == 0 else 10 + rc


def test_slots_of_dead_processes_are_reclaimed(tmp_path):
    p = tmp_path / "q.seg"
    q = Q.create(p, max_slots=2)
    assert q.put(b"parent") == 0  # parent takes a slot
    ready_r, ready_w = os.pipe()
    go_r, go_w = os.pipe()
    try:
        with children() as pids:
            holder = fork(_hold_child, p, "put", ready_w, go_r)  # live: holds slot 2
            pids.append(holder)
            assert os.read(ready_r, 1) == b"R"
            c = fork(_attach_child, p)
            pids.append(c)
            assert reap(c) == 10 + lib.FQ_ENOSLOT
            pids.remove(c)
            os.kill(holder, signal.SIGKILL)
            assert reap(holder) == -9
            pids.remove(holder)
            # a dead owner's slot is taken over (fq_attach runs recovery)
            c = fork(_attach_child, p)
            pids.append(c)
            assert reap(c) == 0
            pids.remove(c)
            # a child exiting without fq_close leaves a slot that recovery frees
            c = fork(_exit_without_close, p)
            pids.append(c)
            assert reap(c) == 0
            pids.remove(c)
            assert lib.fqt_slot_of_pid(q.q, c) >= 0
            recover_fully(q)
            assert lib.fqt_slot_of_pid(q.q, c) == -1
    finally:
        for fd in (ready_r, ready_w, go_r, go_w):
            os.close(fd)
    assert [m for m, _ in q.drain()] == [b"parent", b"second", b"child"]
    q.assert_settled()


# ---------------------------------------------------------------------------
# liveness


def _start_time(pid):
    with open("/proc/%d/stat" % pid) as f:
        return int(f.read().rsplit(")", 1)[1].split()[19])


def _sleep_child(r):
    os.read(r, 1)
    return 0


def test_pid_alive():
    me = os.getpid()
    assert lib.fq_pid_alive(me, 0) == 1
    assert lib.fq_pid_alive(me, _start_time(me)) == 1
    assert lib.fq_pid_alive(me, _start_time(me) + 1) == 0  # pid reused by another process
    assert lib.fq_pid_alive(0, 0) == 0
    assert lib.fq_pid_alive(-1, 0) == 0
    assert lib.fq_pid_alive(-(2 ** 31), 0) == 0
    r, w = os.pipe()
    try:
        with children() as pids:
            pid = fork(_sleep_child, r)
            pids.append(pid)
            assert lib.fq_pid_alive(pid, 0) == 1
            assert lib.fq_pid_alive(pid, _start_time(pid)) == 1
            os.write(w, b"x")
            assert wait_zombie(pid) == 0  # a zombie is dead
            assert lib.fq_pid_alive(pid, 0) == 0
            assert reap(pid) == 0  # reaped: gone
            pids.remove(pid)
            assert lib.fq_pid_alive(pid, 0) == 0
    finally:
        os.close(r)
        os.close(w)


# ---------------------------------------------------------------------------
# threaded stress (cffi releases the GIL during C calls)


class Stalled(AssertionError):
    pass




def _stress(q_prod, q_cons, n_per, size_of, seconds=25.0, stall=3.0):
    NP = 2
    deadline = time.monotonic() + seconds
    done_producing = threading.Event()
    stop = threading.Event()
    results = [[] for _ in range(2)]
    errors = []

    def producer(pid, q):
        try:
            rng = random.Random(pid)
            for seq in range(n_per):
                n = size_of(rng)
                data = struct.pack("<II", pid, seq) + bytes([seq & 0xFF]) * (n - 8)
                assert data[-1] == data[4]
                since = time.monotonic()
                while True:
                    rc = q.put(data)
                    if rc == 0:
                        break
                    assert rc == lib.FQ_FULL, rc
                    now = time.monotonic()
                    if now > deadline or now - since > stall or stop.is_set():
                        raise Stalled("producer %d: no space for %.1fs at seq %d"
                                      % (pid, now - since, seq))
                    wait(q, lib.FQ_WAIT_SPACE, rec_size(n), 2_000_000)
        except BaseException as e:
            errors.append(e)
            stop.set()

    def consumer(ci, q):
        try:
            out = results[ci]
            d = ffi.new("const void **")
            ln = ffi.new("uint64_t *")
            c = ffi.new("fq_claim *")
            while not stop.is_set():
                rc = lib.fq_get_begin(q.q, 8, BIG, c)
                if rc == lib.FQ_EMPTY:
                    if done_producing.is_set() and q.qsize() == 0:
                        rc = lib.fq_get_begin(q.q, 8, BIG, c)
                        if rc == lib.FQ_EMPTY:
                            return
                    else:
                        if time.monotonic() > deadline:
                            raise AssertionError("consumer %d starved" % ci)
                        wait(q, lib.FQ_WAIT_DATA, 0, 2_000_000)
                        continue
                assert rc == 0, rc
                got = []
                for _ in range(c.n + 1):
                    if not lib.fq_claim_next(q.q, c, d, ln):
                        break
                    got.append(bytes(ffi.buffer(d[0], ln[0])))
                ok = len(got) == c.n and all(
                    len(b) >= 8 and b[-1] == b[4] for b in got)
                if not ok:
                    raise AssertionError("bad claim [%d, %d) n=%d first_off=%d (release %d) "
                                         "yielded %r" % (c.pos, c.end, c.n, c.first_off,
                                                         q.stats()["release"],
                                                         [b[:8] for b in got]))
                for b in got:
                    out.append(struct.unpack_from("<II", b))
                lib.fq_get_end(q.q, c)
        except BaseException as e:
            errors.append(e)
            stop.set()

    threads = [threading.Thread(target=producer, args=(i, q_prod[i])) for i in range(NP)]
    threads += [threading.Thread(target=consumer, args=(i, q_cons[i])) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads[:NP]:
        t.join(max(0.1, deadline - time.monotonic()) + 5)
    done_producing.set()
    for t in threads:
        t.join(max(0.1, deadline - time.monotonic()) + 5)
    assert not any(t.is_alive() for t in threads), "stress threads hung"
    allm = results[0] + results[1]
    assert len(allm) == len(set(allm)), "duplicates"
    for ci in range(2):  # per consumer, each producer's messages in order
        for pid in range(NP):
            seqs = [s for p, s in results[ci] if p == pid]
            assert seqs == sorted(seqs), "consumer %d saw producer %d out of order" % (ci, pid)
    q = q_cons[0]
    if errors:
        if isinstance(errors[0], Stalled):
            raise Stalled("%s; cursors %r, qsize %d, record at release: state %d"
                          % (errors[0], q.stats(), q.qsize(),
                             lib.fqt_rec_state(q.q, q.stats()["release"])))
        raise errors[0]
    assert sorted(allm) == [(p, s) for p in range(NP) for s in range(n_per)], "loss"
    assert q.qsize() == 0
    q.assert_settled()
    return results


def _safe_small(rng):  # record sizes multiple of 16: the tail never sits at cap-8
    return 16 * rng.randrange(1, 12)


def _safe_large(rng):  # 400..2032 bytes: a wrap every few messages
    return 16 * rng.randrange(25, 127)


@pytest.mark.parametrize("sizes", ["small", "large"])
@pytest.mark.parametrize("handles", ["shared", "per_thread"])
def test_threaded_stress_2x2(tmp_path, sizes, handles):
    p = tmp_path / "q.seg"
    main = Q.create(p, capacity=CAP if sizes == "large" else 16384, max_slots=8)
    extra = []
    try:
        if handles == "shared":
            qp = qc = [main, main]
        else:
            extra = [Q.open(p) for _ in range(3)]
            qp = [main, extra[0]]
            qc = [extra[1], extra[2]]
        n = 6000 if sizes == "small" else 2500
        res = _stress(qp, qc, n, _safe_small if sizes == "small" else _safe_large)
        assert main.qsize() == 0 and all(len(r) > 0 for r in res)
        workout(main, random.Random(13))
    finally:
        for x in extra:
            x.close()


def _c_loops(q_prod, q_cons, n_per, min16, max16, seconds=10.0):
    """producers and consumers as C loops in Python threads (GIL released for the
    whole loop); returns (per-consumer lists of (producer, seq), puts, gets, diags)"""
    deadline = time.monotonic_ns() + int(seconds * 1e9)
    putall = ffi.new("int64_t *", -1)
    gotall = ffi.new("int64_t *", 0)
    total = n_per * len(q_prod)
    outs = [ffi.new("uint64_t[]", total) for _ in q_cons]
    diags = [ffi.new("uint64_t[4]") for _ in q_cons]
    puts, gets = [None] * len(q_prod), [None] * len(q_cons)

    def prod(i):
        puts[i] = lib.fqt_put_loop(q_prod[i].q, i, n_per, 7 + i, min16, max16, deadline)

    def cons(i):
        gets[i] = lib.fqt_get_loop(q_cons[i].q, 4, outs[i], total, gotall, putall, deadline,
                                   diags[i])

    ps = [threading.Thread(target=prod, args=(i,)) for i in range(len(q_prod))]
    cs = [threading.Thread(target=cons, args=(i,)) for i in range(len(q_cons))]
    for t in ps + cs:
        t.start()
    for t in ps:
        t.join(seconds + 10)
    putall[0] = sum(max(0, x or 0) for x in puts)
    for t in cs:
        t.join(seconds + 10)
    assert not any(t.is_alive() for t in ps + cs), "C loops did not return"
    got = [[(int(v) >> 32, int(v) & 0xFFFFFFFF) for v in outs[i][0:max(0, gets[i])]]
           for i in range(len(q_cons))]
    return got, puts, gets, [list(d) for d in diags]


def test_c_loop_stress_2x2_separate_handles(tmp_path):
    """2 producers x 2 consumers at C speed, each thread with its own handle."""
    p = tmp_path / "q.seg"
    main = Q.create(p, capacity=65536, max_slots=8)
    hs = [Q.open(p) for _ in range(3)]
    try:
        n = 30000
        got, puts, gets, diags = _c_loops([main, hs[0]], [hs[1], hs[2]], n, 1, 127)
        assert puts == [n, n], (puts, main.stats())
        assert all(g >= 0 for g in gets), (gets, diags)  # order and payloads checked in C
        allm = got[0] + got[1]
        assert len(allm) == len(set(allm)), "duplicates"
        assert sorted(allm) == [(i, s) for i in range(2) for s in range(n)], "loss"
        assert lib.fqt_cons_total(main.q) == 2 * n
        assert main.qsize() == 0
        main.assert_settled()
    finally:
        for h in hs:
            h.close()
        main.close()


def test_c_loop_shared_handle_counts_stay_exact(tmp_path):
    """1 producer + 2 consumers at C speed on one handle (lanes shared by threads):
    the per-lane message counts must add up to what was got, and qsize end at 0.
    Regression (579e566: after a claim of only SKIP/ABANDONED records fq_get_begin
    took a new lane but kept the old lane's intent pointer: counts went to the wrong
    lane and fq_qsize drifted by thousands)."""
    p = tmp_path / "q.seg"
    q = Q.create(p, capacity=65536, max_slots=8)
    n = 20000
    for rnd in range(20):
        got, puts, gets, diags = _c_loops([q], [q, q], n, 60, 127, seconds=5)
        assert puts == [n], (puts, q.stats())
        assert all(g >= 0 for g in gets), (gets, diags)
        allm = got[0] + got[1]
        assert sorted(allm) == [(0, s) for s in range(n)], "loss or duplicates"
        s = q.stats()
        assert s["head"] == s["tail"] == s["release"], s
        assert lib.fqt_cons_total(q.q) == n * (rnd + 1), "consumer lane counts drifted"
        assert q.qsize() == 0


# ---------------------------------------------------------------------------
# fuzz: corrupted segments must not crash or hang a reader


def _fuzz_child(path, seed, do_put):
    """exit 10: rejected by fq_open; 11: opened and read; 12: and saw FQ_ECORRUPT
    (not 0/1: a sanitizer's report exits with 1)"""
    rng = random.Random(seed)
    rc, qp, err = open_seg(path)
    if rc != 0:
        assert rc == lib.FQ_EBADSEG or rc < 0, rc
        assert err
        return 10
    q = Q(qp, path)
    total = 0
    corrupt = False

    def gets(k):
        nonlocal total, corrupt
        for i in range(k):
            rc, c = q.begin(rng.randrange(1, 6), rng.choice([BIG, 100]))
            if rc in (lib.FQ_EMPTY, lib.FQ_SHUTDOWN):
                return
            if rc != 0:
                corrupt |= rc == lib.FQ_ECORRUPT
                continue
            d, ln = q._d, q._l
            for _ in range(1000):
                if not lib.fq_claim_next(q.q, c, d, ln):
                    break
                total += sum(bytes(ffi.buffer(d[0], ln[0]))[::97])  # touch the payload
            if rng.random() < 0.15:
                q.abort(c)
            else:
                q.end(c)

    gets(40)
    lib.fq_qsize(q.q)
    lib.fq_full(q.q)
    q.stats()
    lib.fq_recover(q.q)
    gets(40)
    if do_put:
        for n in (0, 24, 300):
            if q.tail_idx() == q.cap - 8:
                continue  # the known pad-of-8 bug (test_pad_of_8_bytes_at_ring_end)
            lib.fq_put(q.q, bytes(n), n)
        gets(10)
    q.close()
    return 12 if corrupt else 11


def _mark_and_die_child(path, n):
    """claim n messages behind an older claim and die after the first DONE mark"""
    rc, qp, err = open_seg(path)
    assert rc == 0, err
    q = Q(qp, path)
    rc, c = q.begin(n)
    assert rc == 0 and c.n == n and len(q.read(c)) == n
    lib.fq_test_set_crash_point(b"get_mid_done", 1)
    q.end(c)
    return 1


def _fuzz_bases(tmp_path):
    """Segments in interesting states: data, a wrap SKIP, requeued records, dead
    producers and consumers left unrecovered (one killed while freeing its claim by
    DONE marks); with the positions of their records."""
    bases = []
    for k in range(4):
        p = tmp_path / ("base%d.seg" % k)
        q = Q.create(p, capacity=CAP, max_slots=3)
        advance_to(q, CAP - 608 * k - 304)
        for i in range(8):
            assert q.put(mk(i, 40 + 60 * i)) == 0
        if k in (1, 2):
            rc, c = q.begin(2)
            q.read(c)
            q.abort(c)  # requeued records
        with children() as pids:
            if k == 1:
                pid = fork(_consumer_child, p, "get_after_claim", 2, 2,
                           os.open(os.devnull, os.O_WRONLY))
                pids.append(pid)
                assert reap(pid) == 9
            if k == 2:
                pid = fork(_producer_child, p, "put_after_claim", 1, [[mk(50, 80)]])
                pids.append(pid)
                assert reap(pid) == 9
                pid = fork(_producer_child, p, "put_mid_commit", 1, [[mk(51, 30)] * 3])
                pids.append(pid)
                assert reap(pid) == 9
            if k == 3:  # a dead consumer flagged FQ_N_FREEING, one DONE mark made
                for fn, args in ((_crash_consumer_child, (p,)), (_mark_and_die_child, (p, 3))):
                    pid = fork(fn, *args)
                    pids.append(pid)
                    assert reap(pid) == 9
        s = q.stats()
        recs, x = [], s["release"]
        while x < s["tail"] and lib.fqt_rec_state(q.q, x) > 0:
            recs.append(x % CAP)
            ln = lib.fqt_rec_len(q.q, x)
            x += ln if lib.fqt_rec_state(q.q, x) == lib.FQ_REC_SKIP else rec_size(ln)
        assert len(recs) >= 4
        q.close()
        with open(p, "rb") as f:
            img = f.read()
        bases.append((img, struct.unpack_from("<Q", img, 40)[0], recs))
    return bases


INTERESTING = [0, 1, 7, 8, 16, 24, 2040, 2048, 4088, 4096, 4104, 0xFFFFFFFF, 0x7FFFFFFF,
               1 << 32, (1 << 63), (1 << 64) - 1, (1 << 64) - 8]


def _mutate(img, ds, recs, rng):
    """1..4 mutations of the control block, the slots or the records"""
    b = bytearray(img)
    muts = []
    for _ in range(rng.randrange(1, 5)):
        r = rng.random()
        if r < 0.3:
            off = rng.randrange(0, 1024) if rng.random() < 0.4 else rng.choice(
                [16, 24, 32, 40, 56, 60, 64, 128, 256, 384, 520, 524, 528])
        elif r < 0.4:
            off = rng.randrange(1024, ds)  # slots
        elif r < 0.75:  # a record header: its state bits, len or owner
            off = ds + rng.choice(recs) + rng.choice([0, 0, 8, 8, 9, 12])
        else:
            off = ds + rng.randrange(0, CAP)
        off = min(off, len(b) - 1)
        kind = rng.random()
        if kind < 0.25:
            b[off] ^= 1 << rng.randrange(8)
            muts.append(("flip", off))
        elif kind < 0.45:
            b[off] = rng.randrange(256)
            muts.append(("byte", off, b[off]))
        elif kind < 0.8 and (off & ~7) + 8 <= len(b):
            off &= ~7
            v = rng.choice(INTERESTING)
            if rng.random() < 0.5:
                cur = struct.unpack_from("<Q", b, off)[0]
                v = (cur + rng.choice([-16, -8, 8, 16, 24, 4096])) % (1 << 64)
            struct.pack_into("<Q", b, off, v)
            muts.append(("u64", off, v))
        elif (off & ~3) + 4 <= len(b):
            off &= ~3
            v = rng.choice(INTERESTING) & 0xFFFFFFFF
            struct.pack_into("<I", b, off, v)
            muts.append(("u32", off, v))
    return bytes(b), muts


def _run_fuzz(tmp_path, cases, do_put, seed, budget, par=2):
    """run the cases, `par` children at a time; (outcome counts, failures, seconds)"""
    bases = _fuzz_bases(tmp_path)
    rng = random.Random(seed)
    t0 = time.monotonic()
    failures = []
    counts = {10: 0, 11: 0, 12: 0}
    running = {}  # pid -> (case, started, image, mutations)
    case = 0
    with children() as pids:
        while (case < cases or running) and len(failures) < 5:
            while case < cases and len(running) < par and time.monotonic() - t0 < budget:
                img, ds, recs = bases[case % len(bases)]
                mimg, muts = _mutate(img, ds, recs, rng)
                path = tmp_path / ("fuzz%d.seg" % case)
                with open(path, "wb") as f:
                    f.write(mimg)
                pid = fork(_fuzz_child, path, case, do_put)
                pids.append(pid)
                running[pid] = (case, time.monotonic(), mimg, muts, path)
                case += 1
            if not running:
                break
            for pid in list(running):
                kase, started, mimg, muts, path = running[pid]
                p, status = os.waitpid(pid, os.WNOHANG)
                if p:
                    code = os.waitstatus_to_exitcode(status)
                elif time.monotonic() - started > 5.0:
                    os.kill(pid, signal.SIGKILL)
                    os.waitpid(pid, 0)
                    code = "hang"
                else:
                    continue
                pids.remove(pid)
                del running[pid]
                if code in counts:
                    counts[code] += 1
                    os.unlink(path)
                else:
                    failures.append((kase, code, muts, str(path)))
            time.sleep(0.0003)
    return counts, failures, time.monotonic() - t0


#: fuzz cases of the open-and-get test (CI: 10,000; the sanitizer run sets fewer)
FUZZ_CASES = int(os.environ.get("FASTQ_FUZZ_CASES", "10000"))


def test_fuzz_corrupted_segments_open_and_get(tmp_path):
    # the budget only bounds a run on a machine far slower than expected
    counts, failures, took = _run_fuzz(tmp_path, FUZZ_CASES, False, 1234,
                                       budget=max(120, FUZZ_CASES / 25))
    assert not failures, "children crashed or hung (case, exit, mutations, image): %r" % failures
    ran = sum(counts.values())
    print("fuzz: %d cases in %.1fs, outcomes %r" % (ran, took, counts))
    assert ran >= FUZZ_CASES, "only %d of %d cases in %.1fs" % (ran, FUZZ_CASES, took)
    # the mutations must reach the ring, not only fq_open's checks
    assert counts[11] + counts[12] > ran // 3, counts
    assert counts[12] > 0, counts


def test_fuzz_corrupted_segments_then_put(tmp_path):
    counts, failures, took = _run_fuzz(tmp_path, 600, True, 4321, budget=60)
    assert not failures, "children crashed or hung (case, exit, mutations, image): %r" % failures
    assert sum(counts.values()) >= 500


# ---- a recoverer killed in the middle of recovery ---------------------------------

RECOVER_POINTS = ["recover_after_lock", "recover_mid_requeue", "recover_after_count",
                  "recover_before_free"]


def _crash_consumer_child(path):
    rc, qp, err = open_seg(path)
    assert rc == 0, err
    q = Q(qp, path)
    lib.fq_test_set_crash_point(b"get_after_claim", 1)
    q.begin(3)  # dies holding messages 0, 1, 2
    return 1


def _crash_producer_child(path):
    rc, qp, err = open_seg(path)
    assert rc == 0, err
    q = Q(qp, path)
    lib.fq_test_set_crash_point(b"put_mid_commit", 1)
    q.put_batch([mk(100 + i, 100) for i in range(3)])  # dies: 100 committed, 101-102 not
    return 1


def _crash_recoverer_child(path, point):
    rc, qp, err = open_seg(path)
    assert rc == 0, err
    q = Q(qp, path)
    lib.fq_test_set_crash_point(point.encode(), 1)
    q.recover()
    return 1  # the point was not reached


@pytest.mark.parametrize("point", RECOVER_POINTS)
def test_recoverer_killed_mid_recovery(tmp_path, point):
    """A process killed while recovering (holding the recovery lock, with a
    record requeued, a count fixed, a slot not yet freed) is finished by the
    next recoverer: every message exactly once, counts exact."""
    p = tmp_path / "q.seg"
    q = Q.create(p, capacity=CAP, max_slots=6)
    for i in range(10):
        assert q.put(mk(i, 100)) == 0
    with children() as pids:
        for fn, args in ((_crash_consumer_child, (p,)), (_crash_producer_child, (p,)),
                         (_crash_recoverer_child, (p, point))):
            pid = fork(fn, *args)
            pids.append(pid)
            assert reap(pid) == 9, f"{fn.__name__} did not die at its crash point"
        recover_fully(q)
    assert q.qsize() == 11
    got = [(seq_of(x), red) for x, red in q.drain(max_n=3)]
    want = [(i, 1) for i in (0, 1, 2)] + [(i, 0) for i in range(3, 10)] + [(100, 0)]
    assert sorted(got) == sorted(want), got
    assert [s for s, _ in got if s >= 3] == list(range(3, 10)) + [100]  # order kept
    q.assert_settled()
    assert q.qsize() == 0 and q.stats()["requeued"] == 0
    workout(q, random.Random(zlib.crc32(point.encode())))
    q.close()


# ---- a consumer that only polls (get_nowait) still gets past a dead producer -------

def test_polling_consumer_gets_past_dead_producer(tmp_path):
    """fastq.Queue.get_nowait never waits, so never runs recovery in a wait;
    it must still run it (every 0.2 s while the queue is not idle), or a
    producer killed mid-put would hide every later message forever."""
    import fastq  # the package under test (see conftest.py)

    p = str(tmp_path / "poll.seg")
    q = fastq.Queue.create(p, capacity=1 << 16, serializer="raw")
    with children() as pids:
        pid = fork(_crash_producer_child, p)  # 100 committed, 101-102 claimed, dead
        pids.append(pid)
        assert reap(pid) == 9
    cq = Q.open(p)
    assert cq.put(mk(7, 100)) == 0  # a live producer's message after the dead claim
    got, deadline = [], time.monotonic() + 5
    while len(got) < 2 and time.monotonic() < deadline:
        try:
            got.append(seq_of(q.get_nowait()))
        except fastq.Empty:
            time.sleep(0.001)
    assert got == [100, 7], f"polling consumer got {got} in 5 s"
    assert q.qsize() == 0
    cq.close()
    q.close()


def test_short_timeouts_still_get_past_dead_producer(tmp_path):
    """A consumer looping on get(timeout=0.1) never waits 0.2 s in one call;
    it must still run recovery (on timing out), or it would never get past a
    producer killed mid-put."""
    import fastq  # the package under test (see conftest.py)

    p = str(tmp_path / "short.seg")
    q = fastq.Queue.create(p, capacity=1 << 16, serializer="raw")
    with children() as pids:
        pid = fork(_crash_producer_child, p)  # 100 committed, 101-102 claimed, dead
        pids.append(pid)
        assert reap(pid) == 9
    cq = Q.open(p)
    assert cq.put(mk(7, 100)) == 0
    got, deadline = [], time.monotonic() + 5
    while len(got) < 2 and time.monotonic() < deadline:
        try:
            got.append(seq_of(q.get(timeout=0.1)))
        except fastq.Empty:
            pass
    assert got == [100, 7], f"consumer with short timeouts got {got} in 5 s"
    cq.close()
    q.close()

"""The queue side of the white-box tests (tests/c/test_ring_*.py, test_core_queue_fixes.py):
a thin wrapper of the C API (``Q``), waiting, moving the ring's cursors to a given index,
record lengths that stay clear of the ring's end, full recovery and a random workout.
"""

import os
import struct

from support.cseg import (BIG, CAP, Claims, create, ffi, Handle, HDR, lib, mk, open_seg, rec_size,
                          seq_of)


ALIGN = rec_size(1) - HDR  # record alignment of the core: 8 (or 16)


# ---------------------------------------------------------------------------
# a thin wrapper of the C API


class Q(Claims, Handle):
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

    # status
    def stats(self):
        lib.fq_stats(self.q, self._st)
        return {"tail": self._st[0], "head": self._st[1], "release": self._st[2],
                "requeued": self._st[3], "state": self._st[4]}

    def qsize(self):
        return lib.fq_qsize(self.q)

    def full(self):
        return lib.fq_full(self.q)

    @property
    def max_msg(self):
        return lib.fq_max_message(self.q)

    def assert_settled(self):
        s = self.stats()
        assert s["head"] == s["tail"] == s["release"], s
        assert self.qsize() == 0


_WAIT_ARGS = len(ffi.typeof(lib.fq_wait).args)


def sleepers(q):
    """(data, space, quiet) sleeper counts of a handle (fq_test_sleepers)."""
    out = ffi.new("uint64_t[3]")
    lib.fq_test_sleepers(q.q, out)
    return out[0], out[1], out[2]


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


def producer_child(path, point, countdown, batches):
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


def consumer_child(path, point, countdown, max_n, seen_w):
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


def crash_consumer_child(path):
    rc, qp, err = open_seg(path)
    assert rc == 0, err
    q = Q(qp, path)
    lib.fq_test_set_crash_point(b"get_after_claim", 1)
    q.begin(3)  # dies holding messages 0, 1, 2
    return 1


def crash_producer_child(path):
    rc, qp, err = open_seg(path)
    assert rc == 0, err
    q = Q(qp, path)
    lib.fq_test_set_crash_point(b"put_mid_commit", 1)
    q.put_batch([mk(100 + i, 100) for i in range(3)])  # dies: 100 committed, 101-102 not
    return 1


def crash_recoverer_child(path, point):
    rc, qp, err = open_seg(path)
    assert rc == 0, err
    q = Q(qp, path)
    lib.fq_test_set_crash_point(point.encode(), 1)
    q.recover()
    return 1  # the point was not reached

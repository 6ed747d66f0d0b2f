"""Put / get on a queue through the C API: round trips of random lengths, EMPTY,
ETOOBIG, FULL exactly, wrap-around padding at every alignment, batches.
"""

import random

from support.cring import advance_to, ALIGN, next_idx, safe_len
from support.cseg import BIG, CAP, ffi, HDR, lib, mk, rec_size


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

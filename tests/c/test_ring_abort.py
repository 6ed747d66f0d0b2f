"""Out-of-order completion of consumer claims, abort and redelivery, and claims whose
leading skip record was released.
"""

import random
import signal

from support.cring import advance_to, next_idx, Q, safe_len8, workout
from support.cseg import CAP, ffi, HDR, lib, mk, open_seg, rec_size
from support.procs import children, fork, reap


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

"""Threaded stress of a queue (cffi releases the GIL during C calls) and C loops that
put and get without Python in between: no loss, no duplicate, order per producer.
"""

import random
import struct
import threading
import time

import pytest

from support.cring import Q, wait, workout
from support.cseg import BIG, CAP, ffi, lib, rec_size


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

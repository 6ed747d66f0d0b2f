"""Fuzz: corrupted queue segments must not crash or hang a reader (or a writer).
"""

import os
import random
import struct

from support.cring import advance_to, consumer_child, crash_consumer_child, producer_child, Q
from support.cseg import BIG, CAP, ffi, lib, mk, open_seg, rec_size
from support.fuzz import open_fuzzed, run_fuzz
from support.procs import children, fork, reap


# ---------------------------------------------------------------------------
# fuzz: corrupted segments must not crash or hang a reader


def _fuzz_child(path, seed, do_put):
    """exit 10: rejected by fq_open; 11: opened and read; 12: and saw FQ_ECORRUPT
    (not 0/1: a sanitizer's report exits with 1)"""
    rng = random.Random(seed)
    qp = open_fuzzed(path)
    if qp is None:
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
                pid = fork(consumer_child, p, "get_after_claim", 2, 2,
                           os.open(os.devnull, os.O_WRONLY))
                pids.append(pid)
                assert reap(pid) == 9
            if k == 2:
                pid = fork(producer_child, p, "put_after_claim", 1, [[mk(50, 80)]])
                pids.append(pid)
                assert reap(pid) == 9
                pid = fork(producer_child, p, "put_mid_commit", 1, [[mk(51, 30)] * 3])
                pids.append(pid)
                assert reap(pid) == 9
            if k == 3:  # a dead consumer flagged FQ_N_FREEING, one DONE mark made
                for fn, args in ((crash_consumer_child, (p,)), (_mark_and_die_child, (p, 3))):
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

    def make_case(case):
        img, ds, recs = bases[case % len(bases)]
        return _mutate(img, ds, recs, rng)

    return run_fuzz(tmp_path, cases, budget, make_case,
                    lambda path, case: _fuzz_child(path, case, do_put), par=par)


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

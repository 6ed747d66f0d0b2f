"""7. Hostile topic segments: never a crash, a hang or an endless loop
(FASTQ_FUZZ_CASES cases, default 4000).
"""

import os
import random
import select
import signal
import struct
import time

from support.cseg import BIG, CAP, ffi, lib, mk, rec_size
from support.ctopic import (advance_to, ANON, DURABLE, EARLIEST, GROUP, LATEST, Log, MEM_ACTIVE,
                            MEM_ORPHAN, member_child, MUST_EXIST, PH_CLAIMING, PH_WON,
                            publisher_child, run_child, subscribe_child, T)
from support.fuzz import open_fuzzed, run_fuzz
from support.procs import children, fork, reap


# ---------------------------------------------------------------------------
# 7. hostile topic segments: never a crash, a hang or an endless loop


NAMES = ["g", "d", "a1", "h", "fz", "x" * 63]


def _fuzz_child(path, seed):
    """exit 10: rejected by fq_open; 11: opened and used; 12: and saw FQ_ECORRUPT (or
    ELOST) somewhere (not 0/1: a sanitizer's report exits with 1)"""
    rng = random.Random(seed)
    qp = open_fuzzed(path)
    if qp is None:
        return 10
    t = T(qp, path)
    corrupt = False
    subs = []
    inf = ffi.new("fq_sub_info *")
    touched = 0
    for _ in range(40):
        op = rng.random()
        if op < 0.15 or not subs:
            name = rng.choice(NAMES)
            kind = rng.choice([ANON, GROUP, DURABLE, GROUP | MUST_EXIST, DURABLE | MUST_EXIST])
            rc, s, err = t.subscribe_rc(name, kind, rng.choice([LATEST, EARLIEST]))
            if rc == 0:
                subs.append(s)
                if len(subs) > 3:
                    subs.pop(0).unsubscribe()
            else:
                assert err
        elif op < 0.6:
            s = rng.choice(subs)
            rc, c = s.begin(rng.randrange(0, 9), rng.choice([BIG, 100, 0, 1, 1 << 63]))
            if rc != 0:
                corrupt |= rc in (lib.FQ_ECORRUPT, lib.FQ_ELOST)
                continue
            d, ln = s._d, s._l
            for k in range(3000):
                if not lib.fq_sub_next(s.s, c, d, ln):
                    break
                touched += sum(bytes(ffi.buffer(d[0], ln[0]))[::61])
                lib.fq_sub_intact(s.s, c)
            else:
                raise AssertionError("fq_sub_next did not end")
            r = rng.random()
            if r < 0.15:
                s.hold(c, rng.choice([0, c.msg_pos, c.cursor, c.end, c.pos + 16]),
                       rng.randrange(2))
            else:
                s.end(c)
        elif op < 0.72:
            n = rng.choice([0, 24, 300])
            if rng.random() < 0.5:
                t.put(bytes(n))
            else:
                t.put_batch([bytes(n), bytes(16)])
        elif op < 0.8:
            t.recover()
        elif op < 0.88:
            for i in range(2 * t.nsubs):
                if lib.fq_topic_info(t.q, i, inf):
                    ffi.string(inf.name)
            lib.fq_topic_info(t.q, 2 * t.nsubs + 5, inf)
        elif op < 0.94:
            s = rng.choice(subs)
            s.lag()
            s.dropped()
            lib.fq_sub_spin(s.s, 1000)
            if rng.random() < 0.3:
                lib.fq_sub_wait(s.s, 1_000_000, 0)
        else:
            rng.choice(subs).unsubscribe()
            subs = [s for s in subs if s.s is not None]
    for s in subs:
        s.unsubscribe()
    t.stats()
    lib.fq_qsize(t.q)
    lib.fq_full(t.q)
    t.close()
    return 12 if corrupt else 11


def _gated_child(path, plan, gate):
    """subscribe to every (name, kind) of plan["subs"], report b"R", wait for b"G", then
    run plan["then"]: ("crash", point, max_n) begins claims of max_n on the last
    subscription with the crash point armed; ("claim", n): claim n and report b"D";
    ("read", k): read k messages on each, report b"D"; ("exit",): exit now"""
    t = T.open(path)
    subs = [t.subscribe(n, k) for n, k in plan["subs"]]
    ready_w, go_r = gate
    os.write(ready_w, b"R")
    if os.read(go_r, 1) != b"G":
        return 5
    what = plan["then"]
    if what[0] == "crash":
        lib.fq_test_set_crash_point(what[1].encode(), 1)
        for _ in range(100):
            rc, c = subs[-1].begin(what[2])
            if rc == 0:
                subs[-1].read(c)
                subs[-1].end(c)
        return 1
    if what[0] == "exit":
        return 0
    if what[0] == "read":
        for s in subs:
            for _ in range(what[1]):
                s.get()
    if what[0] == "claim":
        rc, c = subs[-1].begin(what[1])
        assert rc == 0, rc
        subs[-1].read(c, check_intact=False)
    os.write(ready_w, b"D")
    time.sleep(60)
    return 2


def _run_gated(path, plans, between=None):
    """start every plan's child (all subscribe while alive), then let them act in
    order; "claim"/"read" children are SIGKILLed once done.  between(i) runs before
    child i acts."""
    gates = []
    with children() as pids:
        try:
            for plan in plans:
                rr, rw = os.pipe()
                gr, gw = os.pipe()
                gates.append((rr, rw, gr, gw))
                pid = fork(_gated_child, path, plan, (rw, gr))
                pids.append(pid)
                assert os.read(rr, 1) == b"R"
            for i, plan in enumerate(plans):
                if between:
                    between(i)
                rr, rw, gr, gw = gates[i]
                os.write(gw, b"G")
                pid = pids[i]
                what = plan["then"][0]
                if what in ("claim", "read"):
                    assert select.select([rr], [], [], 10)[0]
                    assert os.read(rr, 1) == b"D"
                    os.kill(pid, signal.SIGKILL)
                    assert reap(pid) == -signal.SIGKILL
                else:
                    assert reap(pid) == (9 if what == "crash" else 0), plan
        finally:
            for g in gates:
                for fd in g:
                    os.close(fd)


def _fuzz_bases(tmp_path):
    """Topic segments in interesting states, left unrecovered: dead members idle,
    CLAIMING (won and lost) and WON, orphans (one duplicated by a dead taker), a
    durable name alone, a half-made group, dead publishers (a hole, WRITING
    records), a dead holder of the segment lock, wrapped rings; block and drop."""
    bases = []

    def fill(t, k, base=0, size=None):
        for i in range(k):
            assert t.put(mk(base + i, size or 40 + 37 * (i % 7))) == 0

    # 0: block; dead members of every kind, a dead publisher, a dead lock holder
    p = tmp_path / "base0.seg"
    t = T.create(p, capacity=CAP, max_slots=8, max_subs=10)
    a = t.subscribe("a1")
    advance_to(t, [a], CAP - 704)
    a.unsubscribe()
    plans = [
        {"subs": [("a1", ANON), ("g", GROUP), ("d", DURABLE)], "then": ("read", 2)},
        {"subs": [("g", GROUP)], "then": ("crash", "sub_after_claim", 2)},
        {"subs": [("g", GROUP)], "then": ("crash", "sub_after_intent", 2)},
        {"subs": [("g", GROUP)], "then": ("claim", 2)},
        {"subs": [("h", GROUP)], "then": ("exit",)},
    ]
    _run_gated(p, plans, lambda i: fill(t, 12) if i == 0 else None)
    pids = []
    with children() as pids:
        run_child(pids, publisher_child, p, "put_mid_commit", 1, [[mk(90 + i) for i in range(3)]])
        run_child(pids, subscribe_child, p, "late", GROUP, "subscribe_after_lock")
    t.close()
    bases.append(p)

    # 1: drop; a lapped durable member holding a claim, a dead publisher at
    # put_after_claim (a hole at the oldest record after a lap), an anonymous one
    p = tmp_path / "base1.seg"
    t = T.create(p, capacity=CAP, drop=True, max_slots=8, max_subs=6)
    plans = [
        {"subs": [("d", DURABLE)], "then": ("claim", 3)},
        {"subs": [("a1", ANON)], "then": ("read", 3)},
    ]
    _run_gated(p, plans, lambda i: fill(t, 8) if i == 0 else None)
    fill(t, 30, 100)  # laps them
    with children() as pids:
        run_child(pids, publisher_child, p, "put_after_claim", 1, [[mk(95)]])
        run_child(pids, publisher_child, p, "put_after_headers", 1, [[mk(96), mk(97)]])
    t.close()
    bases.append(p)

    # 2: block; an orphan (recovered), a taker killed covering it (two copies, the
    # lock held by the dead taker), a live member of the test process
    p = tmp_path / "base2.seg"
    t = T.create(p, capacity=CAP, max_slots=8, max_subs=8)
    live = t.subscribe("g", GROUP)
    fill(t, 9, 0, 100)
    with children() as pids:
        run_child(pids, member_child, p, "g", GROUP, "sub_before_end", 1, 3, Log())
        t.recover()
        run_child(pids, member_child, p, "g", GROUP, "take_orphan_covered", 1, 5, Log())
    assert live.s  # stays (its process is alive while the children run)
    t.close()
    bases.append(p)

    # 3: block; a half-made durable group (killed at subscribe_group_visible) and a
    # half-made anonymous one
    p = tmp_path / "base3.seg"
    t = T.create(p, capacity=CAP, max_slots=8, max_subs=4)
    fill(t, 6, 300)
    with children() as pids:
        run_child(pids, subscribe_child, p, "d", DURABLE, "subscribe_group_visible")
    t.close()
    bases.append(p)

    out = []
    for p in bases:
        with open(p, "rb") as f:
            img = f.read()
        hdr = {"salt": struct.unpack_from("<Q", img, 64)[0],
               "cap": struct.unpack_from("<Q", img, 16)[0],
               "ds": struct.unpack_from("<Q", img, 40)[0],
               "sub_off": struct.unpack_from("<Q", img, 88)[0],
               "grp_off": struct.unpack_from("<Q", img, 96)[0],
               "nsubs": struct.unpack_from("<I", img, 104)[0]}
        rel, tail = struct.unpack_from("<Q", img, 384)[0], struct.unpack_from("<Q", img, 128)[0]
        recs = []  # (position, ring offset) of the records from release
        x = rel
        while x < tail and len(recs) < 64:
            off = hdr["ds"] + (x & (hdr["cap"] - 1))
            w, ln = struct.unpack_from("<QI", img, off)
            if (w & ~7) != tag(hdr["salt"], x):
                break
            recs.append(x)
            x += ln if w & 7 == lib.FQ_REC_SKIP else rec_size(ln)
        hdr["recs"] = recs
        out.append((img, hdr))
    return out


def tag(salt, pos):
    return ((pos * 0x9E3779B97F4A7C15) & ((1 << 64) - 1)) ^ salt


INTERESTING = [0, 1, 2, 3, 7, 8, 15, 16, 24, 4095, 4096, 4104, 0xFFFF, 0x10000, 0xFFFFFFFF,
               0x7FFFFFFF, 1 << 32, 1 << 47, 1 << 48, 1 << 63, (1 << 64) - 1, (1 << 64) - 16]

MEMBER_FIELDS = [(0, 8), (8, 8), (16, 4), (20, 4), (24, 8), (32, 8), (40, 8), (48, 8), (56, 8)]
GROUP_FIELDS = [(0, 8), (8, 8), (16, 8), (24, 8), (32, 8), (40, 8)]


def _pack(b, off, size, v):
    struct.pack_into("<Q" if size == 8 else "<I", b, off, v & ((1 << (8 * size)) - 1))


def _mutate(img, h, rng):
    """1..4 mutations of the topic fields of the control block, the member and group
    tables and the ring, random and targeted"""
    b = bytearray(img)
    muts = []
    nsubs, cap, ds = h["nsubs"], h["cap"], h["ds"]
    tail = struct.unpack_from("<Q", b, 128)[0]

    def put(off, size, v, why):
        _pack(b, off, size, v)
        muts.append((why, off, v & ((1 << (8 * size)) - 1)))

    def mem(i, f):
        return h["sub_off"] + 128 * i + f

    def grp(i, f):
        return h["grp_off"] + 128 * i + f

    for _ in range(rng.randrange(1, 5)):
        r = rng.random()
        i = rng.randrange(nsubs)
        if r < 0.12:  # the control block's topic fields
            off, size = rng.choice([(128, 8), (136, 8), (384, 8), (392, 8), (520, 4), (524, 4),
                                    (528, 8), (84, 4), (104, 4), (88, 8), (96, 8)])
            cur = struct.unpack_from("<Q" if size == 8 else "<I", b, off)[0]
            v = rng.choice(INTERESTING + [cur + 16, cur - 16, cur + cap, cur ^ 1])
            put(off, size, v, "ctrl")
        elif r < 0.3:  # a member field
            off, size = rng.choice(MEMBER_FIELDS)
            cur = struct.unpack_from("<Q" if size == 8 else "<I", b, mem(i, off))[0]
            v = rng.choice(INTERESTING + [cur + 16, cur - 16, cur ^ (1 << rng.randrange(64))])
            put(mem(i, off), size, v, "member")
        elif r < 0.45:  # a group field
            off, size = rng.choice(GROUP_FIELDS)
            cur = struct.unpack_from("<Q", b, grp(i, off))[0]
            v = rng.choice(INTERESTING + [cur + (1 << 16), cur - (1 << 16), cur + 1,
                                          cur ^ (1 << rng.randrange(64))])
            put(grp(i, off), size, v, "group")
        elif r < 0.5:  # group index out of range
            put(mem(i, 16), 4, rng.choice([nsubs, nsubs + 1, 4096, 0xFFFFFFFF,
                                           rng.randrange(1 << 32)]), "member.group")
        elif r < 0.56:  # garbage heads: any u64, or a position near tail; any member
            if rng.random() < 0.5:
                v = rng.randrange(1 << 64)
            else:
                v = (tail + rng.choice([-2 * cap, -cap - 16, -16, 0, 16, 8, cap, 1 << 40,
                                        1 << 63])) % (1 << 64)
            put(grp(i, 16), 8, v, "group.head")
            put(grp(i, 24), 8, rng.choice([0, 1, nsubs, nsubs + 1, 0xFFFF, i + 1, 1 << 32,
                                           (1 << 64) - 1]), "group.head_by")
        elif r < 0.6:  # subs_hwm beyond the tables
            put(524, 4, rng.choice([nsubs + 1, nsubs + 7, 4097, 0xFFFFFFFF]), "subs_hwm")
        elif r < 0.64:  # a name without its NUL
            c = rng.choice([b"g", b"d", b"x", b"\xff"])
            b[grp(i, 64):grp(i, 128)] = c * 64
            muts.append(("name", grp(i, 64), c))
        elif r < 0.7:  # a member with a claim: ORPHAN / ACTIVE, WON / CLAIMING, garbage range
            kind = rng.choice([MEM_ORPHAN, MEM_ACTIVE, 1, 4, 0xFF])
            pid = rng.choice([0, 1, 0x7FFFFFFF, 0xFFFFFFFF, os.getpid()])
            put(mem(i, 0), 8, kind << 56 | 5 << 32 | pid, "member.word")
            put(mem(i, 48), 8, 7 << 2 | rng.choice([PH_WON, PH_CLAIMING, 3]), "member.state")
            lo = rng.choice([0, tail - cap, tail - 16, tail, tail + 8, 1 << 63])
            put(mem(i, 24), 8, lo, "member.pos")
            put(mem(i, 32), 8, lo + rng.choice([0, 16, 32, cap, -16, 1 << 62]), "member.end")
            put(mem(i, 40), 8, rng.choice([0, 1, 3, 1 << 40]), "member.n")
            put(mem(i, 16), 4, rng.choice([0, 1, i]), "member.group")
            if rng.random() < 0.5:
                put(grp(0, 40), 8, rng.choice([1, 5, 1 << 63]), "group.orphans")
        elif r < 0.74:  # a group made active with any flags
            put(grp(i, 0), 8, 1 | rng.randrange(256) << 8, "group.word")
        elif r < 0.9 and h["recs"]:  # a record: its len (even < 16), state, owner, index
            x = rng.choice(h["recs"])
            off = ds + (x & (cap - 1))
            what = rng.random()
            if what < 0.35:
                put(off + 8, 4, rng.choice([0, 1, 8, 15, 16, 17, 31, 32, 2032, 2033, 4096,
                                            0xFFFFFFFF]), "rec.len")
            elif what < 0.65:
                put(off, 8, tag(h["salt"], x) | rng.randrange(8), "rec.state")
            elif what < 0.8:
                put(off + 16, 8, rng.choice(INTERESTING), "rec.index")
            else:
                put(off + 12, 4, rng.choice(INTERESTING), "rec.owner")
        else:  # a random byte anywhere
            off = rng.randrange(0, len(b))
            b[off] = rng.randrange(256)
            muts.append(("byte", off, b[off]))
    return bytes(b), muts


def _keep(path, case, code):
    """a failing case's image, kept in /tmp/topic-c-bugs (or where it is)"""
    keep = "/tmp/topic-c-bugs/fuzz-case%d-%s.seg" % (case, code)
    try:
        os.makedirs("/tmp/topic-c-bugs", exist_ok=True)
        os.replace(path, keep)
    except OSError:
        keep = str(path)
    return keep


def _run_fuzz(tmp_path, cases, seed, budget, par=2):
    bases = _fuzz_bases(tmp_path)
    rng = random.Random(seed)

    def make_case(case):
        img, h = bases[case % len(bases)]
        return _mutate(img, h, rng)

    return run_fuzz(tmp_path, cases, budget, make_case, _fuzz_child, keep=_keep, par=par)


#: cases of the hostile-topic fuzz (default: well under a minute on 2 cores)
TOPIC_FUZZ_CASES = int(os.environ.get("FASTQ_FUZZ_CASES", "4000"))


def test_fuzz_hostile_topic_segments(tmp_path):
    counts, failures, took = _run_fuzz(tmp_path, TOPIC_FUZZ_CASES, 2024,
                                       budget=max(150, TOPIC_FUZZ_CASES / 15))
    assert not failures, "children crashed or hung (case, exit, mutations, image): %r" % (
        failures,)
    ran = sum(counts.values())
    print("topic fuzz: %d cases in %.1fs (%.0f/s), outcomes %r" % (ran, took, ran / took,
                                                                   counts))
    assert ran >= TOPIC_FUZZ_CASES, "only %d of %d cases in %.1fs" % (ran, TOPIC_FUZZ_CASES,
                                                                      took)
    assert counts[11] + counts[12] > ran // 2, counts  # most reach the tables and ring
    assert counts[12] > 0, counts

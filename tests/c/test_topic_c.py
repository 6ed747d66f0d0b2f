"""White-box tests of the fastq topic core (csrc/fq_topic.c) through cffi (see
tests/c_core.py and tests/test_ring_c.py for the style).

Covers: fan-out with wrap-around and batches (message indices, lag), groups that
split the messages, every topic crash point (subscriber: sub_after_intent,
sub_after_claim, sub_before_end; recoverer: topic_reap_claiming; orphan taker:
take_orphan_covered; fq_subscribe: subscribe_after_lock, subscribe_group_visible,
subscribe_before_unlock; publisher: topic_release_retry) and the producer crash
points on block and drop topics, the helping rule, dead durable / non-durable
subscribers in block mode, puts in progress never overwritten, drop-mode exactness
(fq_sub_intact, fq_sub_dropped) deterministic and at C speed with threads, and a
fuzz of hostile topic segments (FASTQ_FUZZ_CASES cases, default 4000), and one
regression test per bug the two adversarial reviews of the core found (section 8).
Every child process is bounded in time and killed in a finally clause.

Reproducers of the bugs these tests found are in /tmp/topic-c-bugs (see its
README.md).
"""

import os
import random
import select
import signal
import struct
import sys
import threading
import time
import zlib
from contextlib import contextmanager

import pytest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _cseg  # noqa: E402
from _cseg import BIG, CAP, HDR, Handle, ffi, lib, mk, open_seg, rec_size, seq_of  # noqa: E402,F401
from _procs import children, fork, reap, wait_dead  # noqa: E402

PREFIX = 16  # a topic record's payload starts with its message index
NO_IDX = (1 << 64) - 1

ANON, GROUP, DURABLE, MUST_EXIST = 0, 1, 2, 16
LATEST, EARLIEST = 0, 1
GRP_DURABLE, GRP_GROUP, GRP_ANON = 1, 2, 4
MEM_FREE, MEM_ACTIVE, MEM_ORPHAN = 0, 2, 3
PH_IDLE, PH_CLAIMING, PH_WON = 0, 1, 2
EBUSY = -16


def trec(n):
    """ring bytes of a topic message of n payload bytes"""
    return rec_size(n + PREFIX)


# ---------------------------------------------------------------------------
# thin wrappers of the C API


def create(path, **kw):
    """a topic segment (topic=0: a queue), as _cseg.create"""
    return _cseg.create(path, **{"topic": 1, "max_slots": 16, **kw})


class T(Handle):
    """a topic handle"""

    @classmethod
    def create(cls, path, **kw):
        rc, q, err = create(path, **kw)
        assert rc == 0, (rc, err)
        assert lib.fq_is_topic(q) == 1
        return cls(q, path)

    # subscriptions
    def subscribe_rc(self, name, kind=ANON, start=LATEST):
        out = ffi.new("fq_sub **")
        err = ffi.new("char[512]")
        rc = lib.fq_subscribe(self.q, name.encode(), kind, start, out, err, 512)
        return rc, (S(self, out[0]) if rc == 0 else None), ffi.string(err).decode()

    def subscribe(self, name, kind=ANON, start=LATEST):
        rc, s, err = self.subscribe_rc(name, kind, start)
        assert rc == 0, (rc, err)
        return s

    # status
    def stats(self):
        lib.fq_stats(self.q, self._st)
        return {"tail": self._st[0], "release": self._st[2], "state": self._st[4],
                "published": lib.fqt_published(self.q)}

    def recover(self):
        return lib.fq_recover(self.q)

    @property
    def cap(self):
        return lib.fq_capacity(self.q)

    @property
    def nsubs(self):
        return lib.fq_max_subs(self.q)

    def tail_idx(self):
        return self.stats()["tail"] & (self.cap - 1)

    def member(self, i):
        f = [lib.fqt_member_field(self.q, i, k) for k in range(8)]
        w = f[0]
        return {"kind": w >> 56, "gen": (w >> 32) & 0xFFFFFF, "pid": w & 0xFFFFFFFF,
                "owner": f[1], "group": f[2], "pos": f[3], "end": f[4], "n": f[5],
                "state": f[6], "phase": f[6] & 3, "got": f[7]}

    def group(self, i):
        f = [lib.fqt_group_field(self.q, i, k) for k in range(6)]
        return {"kind": f[0] & 0xFF, "flags": (f[0] >> 8) & 0xFF, "head_pos": f[1],
                "head_id": f[5], "next_idx": f[2], "dropped": f[3], "orphans": f[4]}

    def members_of_pid(self, pid):
        return [i for i in range(self.nsubs)
                if self.member(i)["kind"] == MEM_ACTIVE and self.member(i)["pid"] == pid]

    def entries(self, kinds=(MEM_ACTIVE, MEM_ORPHAN)):
        return [i for i in range(self.nsubs) if self.member(i)["kind"] in kinds]

    def info(self):
        """fq_topic_info rows: [(i, dict)]"""
        out = []
        inf = ffi.new("fq_sub_info *")
        for i in range(2 * self.nsubs):
            if lib.fq_topic_info(self.q, i, inf):
                out.append((i, {"name": ffi.string(inf.name).decode(), "flags": inf.flags,
                                "pid": inf.pid, "kind": inf.kind, "alive": inf.alive,
                                "position": inf.position, "lag": inf.lag, "got": inf.got}))
        return out


class S:
    """a subscription"""

    def __init__(self, t, ptr):
        self.t = t
        self.s = ptr
        self._d = ffi.new("const void **")
        self._l = ffi.new("uint64_t *")

    def begin(self, max_n=1, max_bytes=BIG):
        c = ffi.new("fq_claim *")
        rc = lib.fq_sub_begin(self.s, max_n, max_bytes, c)
        return rc, c

    def next(self, c):
        """(payload, msg_idx, msg_pos) of the next message, or None"""
        if not lib.fq_sub_next(self.s, c, self._d, self._l):
            return None
        return bytes(ffi.buffer(self._d[0], self._l[0])), c.msg_idx, c.msg_pos

    def read(self, c, check_intact=True):
        """[(msg_idx, payload)] of the claim; each must be intact"""
        out = []
        while True:
            m = self.next(c)
            if m is None:
                return out
            data, idx, _ = m
            if check_intact:
                assert lib.fq_sub_intact(self.s, c) == 1, "message %d not intact" % idx
            out.append((idx, data))
            assert len(out) <= c.n, "claim says %d messages, iteration gave more" % c.n

    def end(self, c):
        lib.fq_sub_end(self.s, c)

    def hold(self, c, frm=0, redelivered=0):
        lib.fq_sub_hold(self.s, c, frm, redelivered)

    def get(self, max_n=1, max_bytes=BIG):
        """(rc, [(idx, payload)], redelivered)"""
        rc, c = self.begin(max_n, max_bytes)
        if rc:
            return rc, [], 0
        msgs = self.read(c)
        assert len(msgs) == c.n, "claim says %d messages, iteration gave %d" % (c.n, len(msgs))
        red = c.redelivered
        self.end(c)
        return rc, msgs, red

    def drain(self, max_n=4, limit=100000):
        """every message until EMPTY: [(idx, payload, redelivered)]"""
        out = []
        for _ in range(limit):
            rc, msgs, red = self.get(max_n)
            if rc == lib.FQ_EMPTY:
                return out
            assert rc == lib.FQ_OK, rc
            out.extend((i, m, red) for i, m in msgs)
        raise AssertionError("drain did not end")

    def lag(self):
        return lib.fq_sub_lag(self.s)

    def dropped(self):
        return lib.fq_sub_dropped(self.s)

    def index(self):
        return lib.fq_sub_index(self.s)

    def unsubscribe(self):
        if self.s is not None:
            lib.fq_unsubscribe(self.s)
            self.s = None


def seqs(got):
    """[(seq, redelivered)] of drain() output, checking every index matches its seq
    when the payload says so"""
    return [(seq_of(m), red) for _, m, red in got]


# ---------------------------------------------------------------------------
# child processes


def run_child(pids, fn, *args, expect=9, timeout=10.0, zombie=False):
    pid = fork(fn, *args)
    pids.append(pid)
    code = wait_dead(pid, zombie, timeout)
    assert code == expect, "%s: exit %s, expected %s" % (fn.__name__, code, expect)
    if not zombie:
        pids.remove(pid)
    return pid


def recover_fully(t, expect_repair=True):
    """recover until nothing is left to repair; the first call must repair"""
    r = t.recover()
    if expect_repair:
        assert r > 0, "fq_recover found nothing to repair"
    for _ in range(5):
        if t.recover() == 0:
            return
    raise AssertionError("fq_recover keeps repairing")


class Log:
    """a pipe a child reports to: b'M' + idx (message read), b'R' + idx (read,
    redelivered), b'E' + 0 (claim ended), b'C' + n (claim begun, n messages)"""

    def __init__(self):
        self.r, self.w = os.pipe()

    def put(self, tag, v=0):
        os.write(self.w, tag + struct.pack("<Q", v))

    def collect(self):
        os.close(self.w)
        self.w = None
        data = b""
        while True:
            chunk = os.read(self.r, 65536)
            if not chunk:
                break
            data += chunk
        os.close(self.r)
        self.r = None
        return [(data[i:i + 1], struct.unpack_from("<Q", data, i + 1)[0])
                for i in range(0, len(data), 9)]

    def close(self):
        for fd in (self.r, self.w):
            if fd is not None:
                os.close(fd)


def acked_and_open(log):
    """(indices of messages whose claim ended, indices of the claim open at death)"""
    acked, cur = [], []
    for tag, v in log:
        if tag in (b"M", b"R"):
            cur.append(v)
        elif tag == b"E":
            acked += cur
            cur = []
    return acked, cur


def _member_child(path, name, kind, point, countdown, max_n, log, limit=1000, gate=None):
    """open, subscribe, then read claims of max_n until EMPTY (with a crash point);
    gate (ready_w, go_r): report b"R" once subscribed, wait for a byte to go on"""
    t = T.open(path)
    s = t.subscribe(name, kind)
    if gate:
        os.write(gate[0], b"R")
        if os.read(gate[1], 1) != b"G":
            return 5
    if point:
        lib.fq_test_set_crash_point(point.encode(), countdown)
    for _ in range(limit):
        rc, c = s.begin(max_n)
        if rc == lib.FQ_EMPTY:
            return 0
        assert rc == 0, rc
        log.put(b"C", c.n)
        for idx, data in s.read(c):
            assert seq_of(data) == idx
            log.put(b"R" if c.redelivered else b"M", idx)
        s.end(c)
        log.put(b"E")
    return 0


def _publisher_child(path, point, countdown, batches):
    t = T.open(path)
    lib.fq_test_set_crash_point(point.encode(), countdown)
    for datas in batches:
        rc = t.put(datas[0]) if len(datas) == 1 else t.put_batch(datas)[0]
        assert rc == 0, rc
    return 0  # the crash point was not reached


def _recoverer_child(path, point):
    t = T.open(path)
    lib.fq_test_set_crash_point(point.encode(), 1)
    t.recover()
    return 1  # the point was not reached


def _subscribe_child(path, name, kind, point):
    t = T.open(path)
    if point:
        lib.fq_test_set_crash_point(point.encode(), 1)
    rc, s, err = t.subscribe_rc(name, kind)
    assert rc == 0, (rc, err)
    return 0 if not point else 1


def _subscribe_and_read_child(path, name, kind, n_expect, timeout, ready_w=None):
    """subscribe, report (b"R" to ready_w), then read until n_expect messages (exit 0)
    or time out (exit 3)"""
    t = T.open(path)
    s = t.subscribe(name, kind)
    if ready_w is not None:
        os.write(ready_w, b"R")
    deadline = time.monotonic() + timeout
    got = 0
    while got < n_expect:
        rc, msgs, _ = s.get(8)
        if rc == lib.FQ_EMPTY:
            if time.monotonic() > deadline:
                return 3
            lib.fq_sub_wait(s.s, 2_000_000, 1)
            continue
        assert rc == 0, rc
        got += len(msgs)
    s.unsubscribe()
    return 0


@pytest.fixture
def path(tmp_path):
    return tmp_path / "t.seg"


def publish_all(t, datas):
    for d in datas:
        assert t.put(d) == 0


def advance_to(t, subs, target):
    """publish and drain fillers until tail % cap == target (every sub drains)"""
    cap = t.cap
    assert target % 16 == 0
    for _ in range(10000):
        i = t.tail_idx()
        if i == target:
            return
        d = (target - i) % cap
        size = min(d, 1024)
        if 0 < d - size < 32:
            size = d - 32 if d > 64 else d
        n = size - HDR - PREFIX
        if n < 0 or i + size > cap:  # not reachable in one record: pad around
            n = min(cap - i, 1024) - HDR - PREFIX
            n = max(n, 0)
        assert t.put(b"\xaa" * n) == 0
        for s in subs:
            s.drain()
    raise AssertionError("advance_to did not reach %d" % target)


# ---------------------------------------------------------------------------
# 1. fan-out


def test_create_topic_segment(path):
    t = T.create(path, capacity=CAP, max_subs=5)
    try:
        assert lib.fq_is_topic(t.q) == 1 and lib.fq_is_drop(t.q) == 0
        assert lib.fq_max_subs(t.q) == 5
        assert lib.fq_max_message(t.q) == CAP // 2 - HDR - PREFIX
        assert t.put(b"x" * (CAP // 2 - HDR - PREFIX + 1)) == lib.FQ_ETOOBIG
        s = t.subscribe("a")
        with pytest.raises(AssertionError):
            t.subscribe("")
        rc, _, err = t.subscribe_rc("n" * 64)
        assert rc == -22 and "64" in err
        assert t.put(b"hello") == 0
        assert s.get() == (0, [(0, b"hello")], 0)
        assert s.lag() == 0
    finally:
        t.close()
    rc, q, err = create(path.with_suffix(".q"), topic=0)
    assert rc == 0
    out = ffi.new("fq_sub **")
    e = ffi.new("char[256]")
    assert lib.fq_subscribe(q, b"a", 0, 0, out, e, 256) == -22 and b"topic" in ffi.string(e)
    lib.fq_close(q)


@pytest.mark.parametrize("mode", ["block", "drop"])
def test_fan_out_in_order_with_wrap_and_batches(path, mode):
    """Three subscriptions (two anonymous, one single-member group) each get every
    message, in order, across many wraps of a 4 KiB ring; batches of 1-4 messages;
    c->msg_idx is the publish order; lag is published - finished and ends at 0."""
    rng = random.Random(1 if mode == "block" else 2)
    t = T.create(path, capacity=CAP, drop=mode == "drop")
    subs = [t.subscribe("a"), t.subscribe("b"), t.subscribe("g", GROUP)]
    got = [[] for _ in subs]
    datas = []  # message index -> payload
    fin = [0, 0, 0]  # messages finished per sub
    wraps = 0
    fulls = 0
    pending_bytes = 0  # drop mode: published since the slowest sub last caught up
    try:
        while len(datas) < 3000:
            n = rng.choice([1, 1, 2, 3, 4])
            batch = [mk(len(datas) + i, rng.randrange(8, 400)) for i in range(n)]
            before = t.stats()
            if mode == "drop" and pending_bytes + sum(trec(len(b)) for b in batch) + 1024 > CAP:
                rc = lib.FQ_FULL  # would lap someone: let them read first
            else:
                rc, c = (t.put(batch[0]), None) if n == 1 else t.put_batch(batch)
            if rc == lib.FQ_FULL:
                fulls += 1
                assert mode == "block" or pending_bytes > 0
                for k, s in enumerate(subs):  # a random amount of reading
                    for _ in range(rng.randrange(1, 6)):
                        r, msgs, red = s.get(rng.randrange(1, 6), rng.choice([BIG, 300]))
                        if r == lib.FQ_EMPTY:
                            break
                        assert r == 0 and red == 0
                        got[k].extend(msgs)
                        fin[k] += len(msgs)
                    pub = len(datas)
                    assert s.lag() == pub - fin[k], (k, s.lag(), pub, fin[k])
                if mode == "drop":
                    for k, s in enumerate(subs):
                        r = s.drain()
                        got[k].extend((i, m) for i, m, _ in r)
                        fin[k] += len(r)
                    pending_bytes = 0
                continue
            assert rc == 0, rc
            after = t.stats()
            assert after["published"] == before["published"] + n
            if (after["tail"] & (CAP - 1)) < (before["tail"] & (CAP - 1)):
                wraps += 1
            if n > 1:
                assert c.n == n and c.end == after["tail"]
            pending_bytes += after["tail"] - before["tail"]
            datas.extend(batch)
        for k, s in enumerate(subs):
            r = s.drain(max_n=7)
            got[k].extend((i, m) for i, m, _ in r)
            assert s.lag() == 0 and s.dropped() == 0
        for k in range(3):
            assert [i for i, _ in got[k]] == list(range(len(datas))), "sub %d" % k
            for i, m in got[k]:
                assert m == datas[i]
        assert wraps > 100 and fulls > 10, (wraps, fulls)
        assert t.stats()["published"] == len(datas)
        rows = t.info()
        assert sorted(r["name"] for _, r in rows) == ["a", "b", "g"]
        assert all(r["lag"] == 0 and r["alive"] == 1 and r["pid"] == os.getpid()
                   for _, r in rows)
        assert sorted(r["got"] for _, r in rows) == [len(datas)] * 3
    finally:
        t.close()


def test_lag_counts_down_to_zero(path):
    t = T.create(path)
    try:
        a = t.subscribe("a")
        for i in range(10):
            assert t.put(mk(i)) == 0
        b = t.subscribe("b")  # latest: sees nothing published before
        assert a.lag() == 10 and b.lag() == 0
        lags = []
        while True:
            rc, msgs, _ = a.get(3)
            if rc:
                break
            lags.append(a.lag())
        assert lags == [7, 4, 1, 0]
        assert b.get() == (lib.FQ_EMPTY, [], 0)
        # a claimed message counts as received
        assert t.put(mk(10)) == 0
        assert a.lag() == 1 and b.lag() == 1
        rc, c = a.begin()
        assert rc == 0 and a.read(c)[0][0] == 10
        assert a.lag() == 0
        a.end(c)
        assert a.lag() == 0 and b.lag() == 1
    finally:
        t.close()


def test_earliest_start_gets_the_retained_messages(path):
    """earliest: every message still in the ring (from release), a contiguous suffix"""
    t = T.create(path)
    try:
        a = t.subscribe("a")
        for i in range(5):
            assert t.put(mk(i)) == 0
        assert len(a.drain()) == 5
        e = t.subscribe("e", ANON, EARLIEST)
        assert e.lag() == 5
        assert [i for i, _, _ in e.drain()] == [0, 1, 2, 3, 4]  # nothing released yet
        n = 5
        while t.stats()["release"] < 3 * CAP:  # wrap: release moves on
            assert t.put(mk(n, 200)) == 0, n
            n += 1
            a.drain()
            e.drain()
        rel = t.stats()["release"]
        f = t.subscribe("f", ANON, EARLIEST)
        got = [i for i, _, _ in f.drain()]
        assert got and got == list(range(got[0], n)), got
        x = rel  # the first message record at or after release
        while lib.fqt_rec_state(t.q, x) == lib.FQ_REC_SKIP:
            x += lib.fqt_rec_len(t.q, x)
        assert lib.fqt_rec_state(t.q, x) == lib.FQ_REC_COMMITTED
        assert struct.unpack_from("<Q", ffi.buffer(lib.fqt_rec_data(t.q, x), 8))[0] == got[0]
    finally:
        t.close()


# ---------------------------------------------------------------------------
# 2. groups


def test_group_members_split_and_other_group_gets_all(path):
    """Two members of group "g" split the messages (each message to exactly one of
    them, each in order); group "h" (one member) and an anonymous subscription get
    all, across wraps."""
    rng = random.Random(5)
    t = T.create(path, capacity=CAP)
    try:
        g1, g2 = t.subscribe("g", GROUP), t.subscribe("g", GROUP)
        assert g1.index() != g2.index()
        assert t.member(g1.index())["group"] == t.member(g2.index())["group"]
        h = t.subscribe("h", GROUP)
        a = t.subscribe("g")  # an anonymous one of the same name is another group
        assert len({t.member(s.index())["group"] for s in (g1, h, a)}) == 3
        readers = {"g1": g1, "g2": g2, "h": h, "a": a}
        got = {k: [] for k in readers}
        n = 0
        while n < 2500:
            rc = t.put(mk(n, rng.randrange(8, 300)))
            if rc == 0:
                n += 1
                continue
            assert rc == lib.FQ_FULL
            for k in rng.sample(sorted(readers), 4):
                for _ in range(rng.randrange(1, 4)):
                    r, msgs, red = readers[k].get(rng.randrange(1, 5))
                    if r == lib.FQ_EMPTY:
                        break
                    assert r == 0 and red == 0
                    got[k] += [seq_of(m) for _, m in msgs]
                    assert [i for i, _ in msgs] == [seq_of(m) for _, m in msgs]
        for k, s in readers.items():
            got[k] += [seq_of(m) for _, m, _ in s.drain()]
        allm = list(range(n))
        assert got["h"] == allm and got["a"] == allm
        assert got["g1"] == sorted(got["g1"]) and got["g2"] == sorted(got["g2"])
        assert sorted(got["g1"] + got["g2"]) == allm, "loss or duplicates in the group"
        assert len(got["g1"]) > 200 and len(got["g2"]) > 200
        assert all(s.lag() == 0 for s in readers.values())
        # a member leaving: the other one gets everything after
        g2.unsubscribe()
        for i in range(n, n + 20):
            assert t.put(mk(i)) == 0
        assert [seq_of(m) for _, m, _ in g1.drain()] == list(range(n, n + 20))
        # joining later: shares the group's position
        g3 = t.subscribe("g", GROUP)
        assert t.put(mk(n + 20)) == 0
        assert g3.get() == (0, [(n + 20, mk(n + 20))], 0)
        assert g1.get()[0] == lib.FQ_EMPTY
        # MUST_EXIST: only an existing group
        rc, _, err = t.subscribe_rc("nope", GROUP | MUST_EXIST)
        assert rc == -2 and "nope" in err
        assert t.subscribe_rc("g", GROUP | MUST_EXIST)[0] == 0
    finally:
        t.close()


def _c_sub_threads(subs, pub_handles, n_per, min16, max16, flags, delay=0, max_n=8,
                   seconds=20.0, groups=None, pub_delay=None, lead=0):
    """publishers (fqt_put_loop) and subscribers (fqt_sub_loop) as C loops in threads.
    groups: list of group ids per sub (members of one group share a counter).
    Returns (per-sub index lists, puts, rets, diags)."""
    deadline = time.monotonic_ns() + int(seconds * 1e9)
    total = n_per * len(pub_handles)
    groups = groups or list(range(len(subs)))
    counters = {g: ffi.new("int64_t *", 0) for g in set(groups)}
    outs = [ffi.new("uint64_t[]", total) for _ in subs]
    diags = [ffi.new("uint64_t[8]") for _ in subs]
    puts, rets = [None] * len(pub_handles), [None] * len(subs)
    progress = ffi.new("int64_t *", 0)

    def prod(i):
        if pub_delay is None:
            puts[i] = lib.fqt_put_loop(pub_handles[i].q, i, n_per, 11 + i, min16, max16,
                                       deadline)
        else:  # one publisher (id 0), paced
            puts[i] = lib.fqt_pub_loop(pub_handles[i].q, n_per, 11 + i, min16, max16,
                                       pub_delay, progress if lead else ffi.NULL, lead,
                                       deadline)

    def cons(i):
        rets[i] = lib.fqt_sub_loop(subs[i].t.q, subs[i].s, max_n, flags, delay, 77 + i, outs[i], total,
                                   counters[groups[i]], total,
                                   progress if i == 0 else ffi.NULL, deadline, diags[i])

    ps = [threading.Thread(target=prod, args=(i,)) for i in range(len(pub_handles))]
    cs = [threading.Thread(target=cons, args=(i,)) for i in range(len(subs))]
    for th in ps + cs:
        th.start()
    for th in ps + cs:
        th.join(seconds + 10)
    assert not any(th.is_alive() for th in ps + cs), "C loops did not return"
    got = [[int(v) for v in outs[i][0:max(0, rets[i])]] for i in range(len(subs))]
    return got, puts, rets, [list(d) for d in diags]


def test_c_loop_fan_out_and_groups_block(path):
    """At C speed: one publisher, two anonymous subscriptions (each gets all, in
    order) and a group of two members (split, exactly once), block mode."""
    t = T.create(path, capacity=16384)
    hs = [T.open(path) for _ in range(4)]
    try:
        subs = [hs[0].subscribe("a"), hs[1].subscribe("b"), hs[2].subscribe("g", GROUP),
                hs[3].subscribe("g", GROUP)]
        n = 40000
        got, puts, rets, diags = _c_sub_threads(subs, [t], n, 1, 40, flags=2,
                                                groups=[0, 1, 2, 2])
        assert puts == [n], (puts, t.stats())
        assert all(r >= 0 for r in rets), (rets, diags)
        assert got[0] == list(range(n)) and got[1] == list(range(n))
        assert sorted(got[2] + got[3]) == list(range(n)), "group: loss or duplicates"
        # (no fairness between members is promised: one may take everything)
        assert all(s.dropped() == 0 and s.lag() == 0 for s in subs)
    finally:
        for h in hs:
            h.close()
        t.close()


# ---------------------------------------------------------------------------
# 3. crash points of a subscriber (a member of group "g", with a live member M)


SUB_POINTS = ["sub_after_intent", "sub_after_claim", "sub_before_end"]


def _setup_group(path, nmsg=12, capacity=CAP):
    t = T.create(path, capacity=capacity)
    m = t.subscribe("g", GROUP)
    publish_all(t, [mk(i, 100) for i in range(nmsg)])
    return t, m


def _dead_member(t, pid):
    """the member entry (ACTIVE, dead) of pid"""
    es = t.members_of_pid(pid)
    assert len(es) == 1, es
    return es[0]


@pytest.mark.parametrize("zombie", [False, True], ids=["reaped", "zombie"])
@pytest.mark.parametrize("order", ["recover_first", "live_first"])
@pytest.mark.parametrize("point", SUB_POINTS)
def test_member_killed_at_crash_point(path, point, order, zombie):
    """Child member C of group g reads one claim of 3 (acked), then dies at `point` in
    its second claim (messages 3, 4, 5).  Whether the live member M reads before or
    after recovery: every message is delivered exactly once (acked by C or got by M),
    and C's second claim goes to M flagged redelivered exactly when C won it
    (sub_after_claim, sub_before_end)."""
    t, m = _setup_group(path)
    log = Log()
    won = point != "sub_after_intent"
    try:
        with children() as pids:
            pid = run_child(pids, _member_child, path, "g", GROUP, point, 2, 3, log,
                            zombie=zombie)
            acked, opened = acked_and_open(log.collect())
            assert acked == [0, 1, 2]
            assert opened == ([3, 4, 5] if point == "sub_before_end" else [])
            e = _dead_member(t, pid)
            ent = t.member(e)
            gi = ent["group"]
            assert gi == t.member(m.index())["group"]
            assert ent["phase"] == (PH_WON if point == "sub_before_end" else PH_CLAIMING)
            head = t.group(gi)
            if point == "sub_after_intent":  # the head is where C's first claim ended
                assert head["head_pos"] == ent["pos"] and head["head_id"] == e + 1
            else:  # C moved it over its second claim
                assert head["head_pos"] == ent["end"] and head["head_id"] == e + 1
            got = []
            if order == "live_first":
                got += [(seq_of(x), red) for _, x, red in m.drain(max_n=2)]
                assert got == [(i, 0) for i in range(6, 12)] or (
                    not won and got == [(i, 0) for i in range(3, 12)]), got
                if point == "sub_after_claim":  # M helped C to WON before passing it
                    assert t.member(e)["phase"] == PH_WON
            recover_fully(t)
            if zombie:
                reap(pid)
                pids.remove(pid)
            ent = t.member(e)
            if won:
                assert ent["kind"] == MEM_ORPHAN and (ent["pos"], ent["n"]) != (0, 0)
            else:
                assert ent["kind"] == MEM_FREE
            assert lib.fqt_slot_of_pid(t.q, pid) == -1
            got += [(seq_of(x), red) for _, x, red in m.drain(max_n=2)]
            want_red = [(i, 1) for i in (3, 4, 5)] if won else []
            if order == "live_first":
                want = [(i, 0) for i in range(6, 12)] + want_red if won else \
                    [(i, 0) for i in range(3, 12)]
            else:
                want = want_red + [(i, 0) for i in range(3 if not won else 6, 12)]
            assert got == want
            assert sorted(acked + [s for s, _ in got]) == list(range(12)), "exactly once"
            assert t.entries() == [m.index()], "the dead member's entry is still there"
            assert m.begin()[0] == lib.FQ_EMPTY
            _workout(t, [m], random.Random(zlib.crc32(repr((point, order)).encode())))
    finally:
        log.close()
        t.close()


def _workout(t, subs, rng, n=600):
    """publish n messages with wraps while every sub reads; each gets all, in order;
    publishers are never stuck (drop mode: the subs read after each message)"""
    base = 10_000 + rng.randrange(1 << 20)
    sent = 0
    got = [[] for _ in subs]
    stuck = 0
    drop = lib.fq_is_drop(t.q)
    while sent < n:
        rc = t.put(mk(base + sent, rng.randrange(8, 600)))
        if rc == 0:
            sent += 1
            stuck = 0
            if drop:  # read before anyone is lapped
                for k, s in enumerate(subs):
                    got[k] += [seq_of(x) for _, x, red in s.drain(max_n=3)]
            continue
        assert rc == lib.FQ_FULL, rc
        stuck += 1
        assert stuck < 3, "publisher stuck: %r" % (t.stats(),)
        for k, s in enumerate(subs):
            got[k] += [seq_of(x) for _, x, red in s.drain(max_n=3)]
    for k, s in enumerate(subs):
        got[k] += [seq_of(x) for _, x, red in s.drain(max_n=3)]
        assert got[k] == list(range(base, base + n)), "sub %d" % k
        assert s.lag() == 0


def test_helping_rule_dead_winner_becomes_orphan(path):
    """C dies at sub_after_claim (its head CAS done, still CLAIMING).  A live member M
    then claims: it must first help C to WON, then take the next range.  Recovery
    turns C's entry into an orphan, which M takes: messages exactly once."""
    t, m = _setup_group(path, 9)
    log = Log()
    try:
        with children() as pids:
            pid = run_child(pids, _member_child, path, "g", GROUP, "sub_after_claim", 1, 3,
                            log)
            assert acked_and_open(log.collect()) == ([], [])
            e = _dead_member(t, pid)
            gi = t.member(e)["group"]
            assert t.member(e)["phase"] == PH_CLAIMING
            assert (t.member(e)["pos"], t.member(e)["end"]) == (0, t.group(gi)["head_pos"])
            rc, c = m.begin(2)
            assert rc == 0 and c.redelivered == 0
            assert t.member(e)["phase"] == PH_WON, "M did not help C before moving the head"
            assert t.group(gi)["head_id"] == m.index() + 1
            first = [seq_of(x) for _, x in m.read(c)]
            assert first == [3, 4]
            m.end(c)
            recover_fully(t)
            ent = t.member(e)
            assert ent["kind"] == MEM_ORPHAN and ent["phase"] == PH_WON and ent["n"] == 3
            assert t.group(gi)["orphans"] >= 1
            # the orphan is a claim waiting for a member, not a subscriber: only
            # the live member is listed, and its group's lag counts the orphan's 3
            # and the 4 after M's claim, not the 2 M took between them
            rows = [r for _, r in t.info()]
            assert sorted((r["kind"], r["pid"]) for r in rows) == [(MEM_ACTIVE, os.getpid())]
            assert rows[0]["lag"] == 7 and m.lag() == 7, rows
            got = [(seq_of(x), red) for _, x, red in m.drain(max_n=3)]
            assert got == [(0, 1), (1, 1), (2, 1), (5, 0), (6, 0), (7, 0), (8, 0)]
            assert t.member(e)["kind"] == MEM_FREE
            assert t.entries() == [m.index()]
    finally:
        log.close()
        t.close()


def test_two_dead_claimers_of_one_range_only_the_winner_is_an_orphan(path):
    """B dies after its intent (CLAIMING, no CAS) at head 0; A then claims the same
    range and dies after its CAS.  Both dead and CLAIMING with the same start: only
    A, whom the head names, won; recovery makes A an orphan and frees B."""
    t, m = _setup_group(path, 9)
    log = Log()
    try:
        ready_r, ready_w = os.pipe()
        go_r, go_w = os.pipe()
        with children() as pids:
            # A subscribes first (B must not be reaped by A's fq_subscribe)
            pa = fork(_member_child, path, "g", GROUP, "sub_after_claim", 1, 3, log, 1000,
                      (ready_w, go_r))
            pids.append(pa)
            assert os.read(ready_r, 1) == b"R"
            pb = run_child(pids, _member_child, path, "g", GROUP, "sub_after_intent", 1, 2,
                           log)
            os.write(go_w, b"G")
            assert reap(pa) == 9
            pids.remove(pa)
            for fd in (ready_r, ready_w, go_r, go_w):
                os.close(fd)
            eb, ea = _dead_member(t, pb), _dead_member(t, pa)
            assert t.member(eb)["pos"] == t.member(ea)["pos"] == 0
            assert t.member(eb)["phase"] == t.member(ea)["phase"] == PH_CLAIMING
            recover_fully(t)
            assert t.member(ea)["kind"] == MEM_ORPHAN
            assert t.member(eb)["kind"] == MEM_FREE
            got = [(seq_of(x), red) for _, x, red in m.drain(max_n=4)]
            assert got == [(0, 1), (1, 1), (2, 1)] + [(i, 0) for i in range(3, 9)]
    finally:
        log.close()
        t.close()


@pytest.mark.parametrize("first", ["sub_after_claim", "sub_after_intent"])
def test_recoverer_killed_in_reap_of_claiming_member(path, first):
    """A member dies CLAIMING (won: sub_after_claim; lost: sub_after_intent); a
    recoverer is killed at topic_reap_claiming (it decided, stored WON or IDLE, and
    died before turning the entry into an orphan or freeing it, holding the lock).
    The next recovery finishes: exactly once."""
    t, m = _setup_group(path, 9)
    log = Log()
    won = first == "sub_after_claim"
    try:
        with children() as pids:
            pa = run_child(pids, _member_child, path, "g", GROUP, first, 1, 3, log)
            e = _dead_member(t, pa)
            pr = run_child(pids, _recoverer_child, path, "topic_reap_claiming")
            ent = t.member(e)
            assert ent["kind"] == MEM_ACTIVE and ent["pid"] == pa
            assert ent["phase"] == (PH_WON if won else PH_IDLE)
            assert lib.fqt_recover_lock(t.q) >> 32 == pr, "the recoverer held the lock"
            recover_fully(t)
            assert t.member(e)["kind"] == (MEM_ORPHAN if won else MEM_FREE)
            got = [(seq_of(x), red) for _, x, red in m.drain(max_n=4)]
            want = ([(i, 1) for i in range(3)] + [(i, 0) for i in range(3, 9)]) if won \
                else [(i, 0) for i in range(9)]
            assert got == want
            assert lib.fqt_recover_lock(t.q) == 0
            _workout(t, [m], random.Random(3))
    finally:
        log.close()
        t.close()


@pytest.mark.parametrize("order", ["recover_first", "live_first"])
@pytest.mark.parametrize("cause", ["sub_after_claim", "sub_before_end", "unsubscribe"])
def test_taker_killed_while_taking_an_orphan(path, cause, order):
    """An orphan (left by a member killed at `cause`, or one that unsubscribed holding
    a claim); a member B killed at take_orphan_covered (its entry covers the claim,
    the orphan is not freed yet, the lock is held).  After recovery exactly one copy
    of the claim remains: M gets it once, redelivered -- also when M takes the
    orphan over (stealing the dead taker's lock) and finishes it before recovery
    (live_first)."""
    t, m = _setup_group(path, 9)
    log = Log()
    try:
        with children() as pids:
            if cause == "unsubscribe":
                x = t.subscribe("g", GROUP)
                rc, c = x.begin(3)
                assert rc == 0 and c.n == 3
                x.unsubscribe()
            else:
                run_child(pids, _member_child, path, "g", GROUP, cause, 1, 3, log)
                recover_fully(t)
            orph = [i for i in t.entries((MEM_ORPHAN,))]
            assert len(orph) == 1
            pb = run_child(pids, _member_child, path, "g", GROUP, "take_orphan_covered", 1, 5,
                           log)
            eb = _dead_member(t, pb)
            o, b = t.member(orph[0]), t.member(eb)
            assert o["kind"] == MEM_ORPHAN and b["phase"] == PH_WON
            assert (o["pos"], o["end"], o["n"]) == (b["pos"], b["end"], b["n"])
            got = []
            if order == "live_first":
                got += [(seq_of(x), red) for _, x, red in m.drain(max_n=4)]
            recover_fully(t)
            if order == "recover_first":
                left = t.entries((MEM_ORPHAN,))
                assert len(left) == 1, "copies of the claim: %r" % left
            assert lib.fqt_recover_lock(t.q) == 0
            got += [(seq_of(x), red) for _, x, red in m.drain(max_n=4)]
            assert got == [(0, 1), (1, 1), (2, 1)] + [(i, 0) for i in range(3, 9)]
            assert t.entries() == [m.index()]
            assert m.begin()[0] == lib.FQ_EMPTY
            _workout(t, [m], random.Random(4))
    finally:
        log.close()
        t.close()


def _hold_child(path, ready_w, keep, max_n):
    """subscribe to g, claim max_n, read keep of them, fq_sub_hold from the next one's
    position, report b"D" and wait to be killed"""
    t = T.open(path)
    s = t.subscribe("g", GROUP)
    rc, c = s.begin(max_n)
    assert rc == 0 and c.n == max_n, (rc, c.n)
    for _ in range(keep):
        m = s.next(c)
        assert lib.fq_sub_intact(s.s, c) == 1
    m = s.next(c)
    s.hold(c, m[2])  # m[2]: the position of the first message not returned
    os.write(ready_w, b"D")
    time.sleep(60)
    return 2


def test_dead_member_holding_part_of_a_claim(path):
    """A member claims 4 messages, returns 2, keeps the other 2 with fq_sub_hold (as
    the binding does when get_many is interrupted) and is killed.  The group gets
    exactly those 2 again, redelivered, and the claim taken over says 2 messages."""
    t, m = _setup_group(path, 8)
    r, w = os.pipe()
    try:
        with children() as pids:
            pid = fork(_hold_child, path, w, 2, 4)
            pids.append(pid)
            assert select.select([r], [], [], 10)[0] and os.read(r, 1) == b"D"
            os.kill(pid, signal.SIGKILL)
            assert reap(pid) == -signal.SIGKILL
            pids.remove(pid)
            recover_fully(t)
            rc, c = m.begin(8)
            assert rc == 0 and c.redelivered == 1
            got = [i for i, _ in m.read(c)]
            m.end(c)
            assert got == [2, 3]
            assert c.n == 2, "the claim taken over says %d messages, holds %d" % (c.n, 2)
            assert [i for i, _, _ in m.drain()] == [4, 5, 6, 7]
    finally:
        os.close(r)
        os.close(w)
        t.close()


def test_orphan_claim_is_returned_whole_and_can_be_split(path):
    """fastq.h: a claim returned again (taken over from a dead member) is returned
    whole, whatever max_n; the caller takes what it needs and fq_sub_hold()s the
    rest from c->cursor.  A claim of 5 left by a dead member, taken 2 at a time
    that way: all 5 come exactly once, redelivered, then the new ones in order."""
    t, m = _setup_group(path, 8)
    log = Log()
    try:
        with children() as pids:
            run_child(pids, _member_child, path, "g", GROUP, "sub_before_end", 1, 5, log)
            recover_fully(t)
            got, sizes = [], []
            while True:
                rc, c = m.begin(2)
                if rc == lib.FQ_EMPTY:
                    break
                assert rc == 0
                if c.redelivered:
                    assert c.n == 5 - len(got), "the orphan's claim, whole"
                taken = []
                while len(taken) < 2:
                    msg = m.next(c)
                    if msg is None:
                        break
                    assert lib.fq_sub_intact(m.s, c) == 1
                    taken.append(msg)
                sizes.append(len(taken))
                got += [(i, c.redelivered) for _, i, _ in taken]
                if c.cursor < c.end:
                    m.hold(c, c.cursor, c.redelivered)
                else:
                    m.end(c)
            assert got == [(i, 1) for i in range(5)] + [(5, 0), (6, 0), (7, 0)], got
            assert max(sizes) <= 2, sizes
    finally:
        log.close()
        t.close()


# ---------------------------------------------------------------------------
# subscribers killed inside fq_subscribe (holding the segment lock)


SUBSCRIBE_POINTS = ["subscribe_after_lock", "subscribe_group_visible",
                    "subscribe_before_unlock"]


def _fill(t, subs, base, limit=10000, size=100):
    """publish mk(base + i) until FULL (or limit); the subs are not read; returns the
    number published"""
    for i in range(limit):
        rc = t.put(mk(base + i, size))
        if rc == lib.FQ_FULL:
            return i
        assert rc == 0, rc
    return limit


@pytest.mark.parametrize("kind", [ANON, GROUP, DURABLE], ids=["anon", "group", "durable"])
@pytest.mark.parametrize("point", SUBSCRIBE_POINTS)
def test_subscriber_killed_inside_subscribe(path, point, kind):
    """A child killed in fq_subscribe while holding the segment lock (and, from
    subscribe_group_visible on, with its new group visible at release).  Others can
    still subscribe (the lock is taken from the dead holder), and block-mode
    publishers are not held back by the half-made subscription after fq_recover --
    except a durable group, which stays (at the position it was made at)."""
    t = T.create(path, capacity=CAP)
    a = t.subscribe("a")
    publish_all(t, [mk(i) for i in range(5)])
    assert len(a.drain()) == 5
    try:
        with children() as pids:
            pid = run_child(pids, _subscribe_child, path, "x", kind, point)
            assert lib.fqt_recover_lock(t.q) >> 32 == pid, "the child died holding the lock"
            groups = [i for i in range(t.nsubs) if t.group(i)["kind"] == 1]
            made = point != "subscribe_after_lock"
            assert len(groups) == (2 if made else 1)
            # the half-made group holds publishers at its head (release)
            n = _fill(t, [a], 100)
            if made:
                assert n < CAP // trec(100) + 1, "publishers passed a visible group"
                assert t.put(mk(99)) == lib.FQ_FULL
            a_got = [seq_of(x) for _, x, _ in a.drain()]
            assert a_got == list(range(100, 100 + n))
            # another process subscribes (the lock is taken from the dead holder)
            ready_r, ready_w = os.pipe()
            try:
                pid2 = fork(_subscribe_and_read_child, path, "y", GROUP, 3, 5.0, ready_w)
                pids.append(pid2)
                assert select.select([ready_r], [], [], 5.0)[0], "fq_subscribe hangs"
                assert os.read(ready_r, 1) == b"R"
            finally:
                os.close(ready_r)
                os.close(ready_w)
            t.recover()
            assert lib.fqt_slot_of_pid(t.q, pid) == -1
            assert t.members_of_pid(pid) == []
            # a durable subscription whose fq_subscribe made it completely (killed just
            # before unlocking) stays, like one whose owner died after subscribing; a
            # half-made group (killed at subscribe_group_visible: head still at
            # release, no start chosen, never returned to anyone) must not hold
            # publishers back forever
            durable_left = point == "subscribe_before_unlock" and kind == DURABLE
            x = None
            if durable_left:
                # the durable group nobody is attached to stays (FULL) and keeps its
                # position (latest when it was made: after message 4): resume it
                assert t.put(mk(99)) == lib.FQ_FULL
                assert [r["name"] for i, r in t.info() if i >= t.nsubs] == ["x"]
                x = t.subscribe("x", DURABLE)
                got = [seq_of(m) for _, m, _ in x.drain()]
                assert got == list(range(100, 100 + n)), got
            for i in range(3):
                rc = t.put(mk(1000 + i))
                assert rc == 0, "publisher still held after recovery: %r" % (t.stats(),)
            assert reap(pid2) == 0
            pids.remove(pid2)
            names = sorted(r["name"] for _, r in t.info())
            assert names == (["a", "x"] if durable_left else ["a"]), names
            a.drain()
            if x is not None:
                x.drain()
            _workout(t, [a] + ([x] if x is not None else []), random.Random(6))
            b = t.subscribe("z", kind)
            assert t.put(mk(7)) == 0
            assert b.get()[1] == [(t.stats()["published"] - 1, mk(7))]
    finally:
        t.close()


# ---------------------------------------------------------------------------
# publishers killed at the producer crash points, on a topic


PUT_POINTS = ["put_after_intent", "put_after_claim", "put_after_headers", "put_before_commit",
              "put_mid_commit", "put_before_count"]


def _committed_before(point, batch):
    if point == "put_before_count":
        return batch
    return batch[:1] if point == "put_mid_commit" else []


def _fits(t, first_unread, n):
    """would a put of n bytes fit without passing first_unread (no eviction of an
    unread message, no padding trouble)?"""
    s = t.stats()
    tail, cap = s["tail"], t.cap
    size = trec(n)
    idx = tail & (cap - 1)
    span = size + (cap - idx if idx + size > cap else 0)
    return tail + span - first_unread <= cap


@pytest.mark.parametrize("n", [1, 3], ids=["single", "batch3"])
@pytest.mark.parametrize("mode", ["block", "drop"])
@pytest.mark.parametrize("point", PUT_POINTS)
def test_publisher_killed_at_crash_point(path, point, mode, n):
    """A publisher dies in its second batch at `point`.  Before recovery, subscribers
    stop at the hole and other publishers get FULL once the ring is full up to it
    (block and drop: a record being written cannot be evicted).  After recovery
    subscribers go on and every message is delivered in order, except the dead
    publisher's uncommitted ones; in drop mode publishers are never stuck again."""
    drop = mode == "drop"
    t = T.create(path, capacity=CAP, drop=drop)
    subs = [t.subscribe("a"), t.subscribe("g", GROUP)]
    pre = [mk(100 + i, 48) for i in range(2)]
    b1 = [mk(200 + i, x) for i, x in enumerate([40, 72, 24][:n])]
    b2 = [mk(300 + i, x) for i, x in enumerate([120, 8, 64][:n])]
    publish_all(t, pre)
    try:
        with children() as pids:
            t0 = t.stats()
            pid = run_child(pids, _publisher_child, path, point, 2, [b1, b2])
            s = t.stats()
            claimed = point != "put_after_intent"
            assert s["published"] == t0["published"] + n + (n if claimed else 0)
            hole = t0["tail"] + sum(trec(len(d)) for d in b1)
            if not claimed:
                assert s["tail"] == hole
            # subscribers read up to the hole
            want = pre + b1 + _committed_before(point, b2)
            for sb in subs:
                got = sb.drain()
                assert [seq_of(x) for _, x, _ in got] == [seq_of(d) for d in want]
                idx = [i for i, _, _ in got]
                assert idx == list(range(len(want))), idx  # b2[0] is index 2 + n
            # fill: FULL at the hole (which no eviction passes) unless there is none
            post = []
            first_post = t.stats()["tail"]
            full = False
            while _fits(t, first_post, 100):
                rc = t.put(mk(400 + len(post), 100))
                if rc == lib.FQ_FULL:
                    full = True
                    break
                assert rc == 0
                post.append(mk(400 + len(post), 100))
            # a hole: records claimed and not all committed.  In block mode the dead
            # publisher's intent also holds release (at its claim) until recovery.
            holed = claimed and point != "put_before_count" and not (
                point == "put_mid_commit" and n == 1)
            assert full == (claimed if not drop else holed), (full, holed, len(post),
                                                               t.stats())
            if holed:
                assert t.put(mk(999, 100)) == lib.FQ_FULL
                for sb in subs:
                    assert sb.begin()[0] == lib.FQ_EMPTY, "a subscriber passed the hole"
            else:  # nothing stops the subscribers
                for sb in subs:
                    assert [seq_of(x) for _, x, _ in sb.drain()] == \
                        [seq_of(d) for d in post]
                post = []
            recover_fully(t)
            assert lib.fqt_slot_of_pid(t.q, pid) == -1
            for sb in subs:
                got = sb.drain()
                assert [seq_of(x) for _, x, _ in got] == [seq_of(d) for d in post]
                first = len(pre) + 2 * n if claimed else len(pre) + n
                assert [i for i, _, _ in got] == list(range(first, first + len(post)))
            # publishers go on
            post2 = [mk(500 + i, 100) for i in range(5)]
            publish_all(t, post2)
            for sb in subs:
                assert [seq_of(x) for _, x, _ in sb.drain()] == [seq_of(d) for d in post2]
            if drop:
                # never stuck: lap the ring many times without reading
                before = [sb.dropped() for sb in subs]
                last = [t.stats()["published"] - 1] * 2
                k = 0
                while t.stats()["tail"] < first_post + 6 * CAP:
                    assert t.put(mk(600 + k, 200)) == 0
                    k += 1
                for j, sb in enumerate(subs):
                    got = [i for i, _, _ in sb.drain()]
                    assert got == list(range(got[0], got[-1] + 1))
                    assert got[-1] == t.stats()["published"] - 1
                    assert sb.dropped() - before[j] == got[0] - last[j] - 1, \
                        "dropped counts exactly the messages lapped"
            else:
                _workout(t, subs, random.Random(zlib.crc32(repr((point, n)).encode())))
    finally:
        t.close()


def _two_publishers_child(path, point, seconds):
    """three publisher threads (ids 0, 1, 2) at C speed, with a crash point armed: exit 9
    when it is reached, 0 if not within `seconds`"""
    t = T.open(path)
    lib.fq_test_set_crash_point(point.encode(), 1)
    deadline = time.monotonic_ns() + int(seconds * 1e9)
    ths = [threading.Thread(target=lib.fqt_put_loop,
                            args=(t.q, i, 1 << 40, 3 + i, 1, 20, deadline)) for i in range(3)]
    for th in ths:
        th.start()
    for th in ths:
        th.join()
    return 0


def test_publisher_killed_retrying_its_release_scan(path):
    """topic_release_retry: a publisher whose release CAS failed (another publisher
    moved release first) dies before scanning again.  The reader gets every message
    committed, whole, each publisher's in order, none twice; after recovery
    publishers are not held back."""
    t = T.create(path, capacity=CAP, max_subs=256)
    a = t.subscribe("g", GROUP)
    idle = [t.subscribe("g", GROUP) for _ in range(150)]  # slower scans: more races
    got = []
    try:
        with children() as pids:
            pid = fork(_two_publishers_child, path, "topic_release_retry", 20.0)
            pids.append(pid)
            deadline = time.monotonic() + 25
            while True:
                p, status = os.waitpid(pid, os.WNOHANG)
                if p:
                    break
                assert time.monotonic() < deadline, "child did not finish"
                rc, msgs, _ = a.get(1)
                if rc == lib.FQ_EMPTY:
                    time.sleep(0.0002)
                got += [m for _, m in msgs]
            pids.remove(pid)
            assert os.waitstatus_to_exitcode(status) == 9, "crash point not reached"
            recover_fully(t)
            got += [m for _, m, _ in a.drain()]
            last = {0: -1, 1: -1, 2: -1}
            for m in got:
                pub, seq = struct.unpack_from("<II", m)
                assert m[8:] == bytes([seq & 0xFF]) * (len(m) - 8), "torn message"
                assert seq > last[pub], "publisher %d: %d after %d" % (pub, seq, last[pub])
                last[pub] = seq
            assert max(last.values()) > 10, last
            for s in idle:
                s.unsubscribe()
            _workout(t, [a], random.Random(14))
    finally:
        t.close()


def _slow_publisher_child(path, ready_w, go_r):
    """claim a batch of 2, copy the first payload, report b"R", wait for b"G", copy
    the second, commit"""
    t = T.open(path)
    datas = [mk(7000, 200), mk(7001, 300)]
    lens = ffi.new("uint64_t[]", [len(d) for d in datas])
    c = ffi.new("fq_claim *")
    assert lib.fq_put_begin(t.q, lens, 2, c) == 0
    ffi.memmove(lib.fq_claim_buf(t.q, c), datas[0], len(datas[0]))
    os.write(ready_w, struct.pack("<Q", c.pos))
    if os.read(go_r, 1) != b"G":
        return 5
    ffi.memmove(lib.fq_claim_buf(t.q, c), datas[1], len(datas[1]))
    lib.fq_put_commit(t.q, c)
    return 0


@pytest.mark.parametrize("subscriber", ["none", "before", "after"])
@pytest.mark.parametrize("mode", ["block", "drop"])
def test_put_in_progress_is_never_overwritten(path, mode, subscriber):
    """A live publisher is copying a batch (claimed, not committed) while others
    publish a whole ring's worth: with no subscriber, one that subscribed before
    the claim, or one that subscribed after it (its group starts at tail, beyond
    the put in progress), release must not pass the batch: publishers get FULL
    instead, and once the batch is committed it is whole and in order."""
    drop = mode == "drop"
    t = T.create(path, capacity=CAP, drop=drop)
    ready_r, ready_w = os.pipe()
    go_r, go_w = os.pipe()
    subs = []
    try:
        if subscriber == "before":
            subs.append(t.subscribe("b"))
        publish_all(t, [mk(i, 100) for i in range(3)])
        for s in subs:
            s.drain()
        with children() as pids:
            pid = fork(_slow_publisher_child, path, ready_w, go_r)
            pids.append(pid)
            pos = struct.unpack("<Q", os.read(ready_r, 8))[0]
            if subscriber == "after":
                subs.append(t.subscribe("a"))
            k = 0
            while True:
                rc = t.put(mk(100 + k, 100))
                if rc == lib.FQ_FULL:
                    break
                assert rc == 0
                k += 1
                assert t.stats()["tail"] - pos <= CAP, "a publisher wrote over the batch"
                assert k < 100, "never FULL"
                if drop or subscriber != "none":
                    for s in subs:  # readers keep up: only the batch holds release
                        s.drain()
            assert t.stats()["release"] <= pos
            os.write(go_w, b"G")
            assert reap(pid) == 0
            pids.remove(pid)
            assert lib.fqt_rec_state(t.q, pos) == lib.FQ_REC_COMMITTED
            data = bytes(ffi.buffer(lib.fqt_rec_data(t.q, pos), 16 + 200))
            assert data[16:] == mk(7000, 200) and struct.unpack_from("<Q", data)[0] == 3
            if subscriber == "before":
                got = [seq_of(m) for _, m, _ in subs[0].drain()]
                assert got == [7000, 7001] + list(range(100, 100 + k)), got
            if not drop:
                assert t.put(mk(999)) == 0  # not held once committed
    finally:
        for fd in (ready_r, ready_w, go_r, go_w):
            os.close(fd)
        t.close()


@pytest.mark.parametrize("mode", ["block", "drop"])
@pytest.mark.parametrize("point", ["put_after_claim", "put_after_headers", "put_mid_commit"])
def test_dead_publisher_leaves_lag_and_dropped_exact(path, point, mode):
    """A publisher killed with a batch of 3 claimed (message indices taken) but not
    all committed.  Its uncommitted messages are not messages: once the subscriber
    has read everything there is, its lag must be 0; and nothing was lapped, so
    dropped must stay 0 (also after a later message is read past them)."""
    t = T.create(path, capacity=CAP, drop=mode == "drop")
    a = t.subscribe("a")
    try:
        with children() as pids:
            publish_all(t, [mk(i) for i in range(3)])
            run_child(pids, _publisher_child, path, point, 1, [[mk(10 + i) for i in range(3)]])
            recover_fully(t)
            got = [seq_of(x) for _, x, _ in a.drain()]
            assert got == [0, 1, 2] + ([10] if point == "put_mid_commit" else [])
            assert a.get()[0] == lib.FQ_EMPTY
            lag_end, dropped_end = a.lag(), a.dropped()
            assert t.put(mk(20)) == 0
            assert [seq_of(x) for _, x, _ in a.drain()] == [20]
            lag_after, dropped_after = a.lag(), a.dropped()
            assert (lag_end, dropped_end, lag_after, dropped_after) == (0, 0, 0, 0), \
                "lag %d dropped %d with nothing left to read; lag %d dropped %d after one " \
                "more message" % (lag_end, dropped_end, lag_after, dropped_after)
    finally:
        t.close()


# ---------------------------------------------------------------------------
# 5. dead subscribers in block mode; durable subscriptions


def _reader_child(path, name, kind, acks, then, gate, max_n=2):
    """subscribe, report b"R", wait for b"G"; read claims of max_n until `acks`
    messages are acked; then: "idle" (report b"D" and wait to be killed), "claim"
    (begin one more claim of 3, report b"D", wait), or a crash point name."""
    t = T.open(path)
    s = t.subscribe(name, kind)
    ready_w, go_r = gate
    os.write(ready_w, b"R")
    if os.read(go_r, 1) != b"G":
        return 5
    done = 0
    while done < acks:
        rc, msgs, _ = s.get(min(max_n, acks - done))
        assert rc == 0, rc
        done += len(msgs)
    if then == "idle":
        pass
    elif then == "claim":
        rc, c = s.begin(3)
        assert rc == 0 and c.n == 3
        s.read(c)
    else:
        lib.fq_test_set_crash_point(then.encode(), 1)
        rc, c = s.begin(3)
        s.read(c)
        s.end(c)
        return 1
    os.write(ready_w, b"D")
    time.sleep(60)
    return 2


@contextmanager
def gated(fn, *args):
    """fork fn(*args, gate); yields (pid, go) where go() lets it read; killed at exit"""
    ready_r, ready_w = os.pipe()
    go_r, go_w = os.pipe()
    with children() as pids:
        try:
            pid = fork(fn, *args, (ready_w, go_r))
            pids.append(pid)
            assert os.read(ready_r, 1) == b"R"

            def go(wait_done=True):
                os.write(go_w, b"G")
                if wait_done:
                    assert select.select([ready_r], [], [], 10)[0], "child did not read"
                    assert os.read(ready_r, 1) == b"D"

            yield pid, go, pids
        finally:
            for fd in (ready_r, ready_w, go_r, go_w):
                os.close(fd)


@pytest.mark.parametrize("then", ["idle", "claim", "sub_after_claim"])
@pytest.mark.parametrize("kind", [ANON, GROUP], ids=["anon", "group"])
def test_dead_nondurable_subscriber_stops_holding_publishers(path, kind, then):
    """Block mode: a subscriber that dies (idle, holding a claim, or at
    sub_after_claim) holds publishers back until fq_recover; after it, its group
    (and any orphan) is gone and publishers run freely."""
    t = T.create(path, capacity=CAP)
    a = t.subscribe("a")
    try:
        with gated(_reader_child, path, "x", kind, 4, then) as (pid, go, pids):
            publish_all(t, [mk(i, 100) for i in range(10)])
            if then == "sub_after_claim":
                go(False)
                assert reap(pid) == 9
            else:
                go()
                os.kill(pid, signal.SIGKILL)
                assert reap(pid) == -signal.SIGKILL
            pids.remove(pid)
            assert len(a.drain()) == 10
            n = _fill(t, [a], 100)
            assert t.put(mk(99, 100)) == lib.FQ_FULL, "the dead subscriber held nothing"
            assert [seq_of(x) for _, x, _ in a.drain()] == list(range(100, 100 + n))
            assert t.put(mk(99, 100)) == lib.FQ_FULL
            recover_fully(t)
            assert t.members_of_pid(pid) == [] and t.entries() == [a.index()]
            assert [r["name"] for _, r in t.info()] == ["a"]
            _workout(t, [a], random.Random(8))
    finally:
        t.close()


@pytest.mark.parametrize("mode", ["block", "drop"])
@pytest.mark.parametrize("then", ["idle", "claim", "sub_before_end"])
def test_dead_durable_subscriber_keeps_its_position(path, mode, then):
    """A durable subscriber acks 4 messages and dies (idle, or holding a claim of 3).
    Its position stays: in block mode publishers stay held after recovery, and
    fq_topic_info lists the name with nobody attached.  Subscribing with the same
    name resumes exactly there, the unfinished claim first (redelivered)."""
    drop = mode == "drop"
    t = T.create(path, capacity=CAP, drop=drop)
    a = t.subscribe("a")
    try:
        with gated(_reader_child, path, "d", DURABLE, 4, then) as (pid, go, pids):
            publish_all(t, [mk(i, 100) for i in range(10)])
            if then == "sub_before_end":
                go(False)
                assert reap(pid) == 9
            else:
                go()
                os.kill(pid, signal.SIGKILL)
                assert reap(pid) == -signal.SIGKILL
            pids.remove(pid)
            assert len(a.drain()) == 10
            n = 0
            if not drop:
                n = _fill(t, [a], 100)
                assert [seq_of(x) for _, x, _ in a.drain()] == list(range(100, 100 + n))
                assert t.put(mk(99, 100)) == lib.FQ_FULL
            else:  # as many as fit without lapping the dead one's claim
                while _fits(t, trec(100) * 4, 100):
                    assert t.put(mk(100 + n, 100)) == 0
                    n += 1
                assert len(a.drain()) == n
            recover_fully(t)
            if not drop:
                assert t.put(mk(99, 100)) == lib.FQ_FULL, "durable position not kept"
            held = then != "idle"
            rows = t.info()
            alone = [r for i, r in rows if i >= t.nsubs]
            assert len(alone) == 1 and alone[0]["name"] == "d"
            assert alone[0]["kind"] == MEM_FREE and alone[0]["flags"] == GRP_DURABLE
            assert alone[0]["pid"] == 0 and alone[0]["alive"] == 0
            # its unfinished claim waits as an orphan entry (not listed as a subscriber)
            assert not [r for i, r in rows if i < t.nsubs and r["name"] == "d"]
            assert len(t.entries(kinds=(MEM_ORPHAN,))) == (1 if held else 0)
            # 4..9 (its orphan's 3 among them) and the n published after
            assert alone[0]["lag"] == 6 + n, (alone[0]["lag"], n)
            d = t.subscribe("d", DURABLE)
            got = [(seq_of(x), red) for _, x, red in d.drain(max_n=3)]
            want = ([(i, 1) for i in (4, 5, 6)] + [(i, 0) for i in range(7, 10)]) if held \
                else [(i, 0) for i in range(4, 10)]
            want += [(100 + i, 0) for i in range(n)]
            assert got == want
            assert d.dropped() == 0 and d.lag() == 0
            if drop:
                rc, _, err = t.subscribe_rc("d", DURABLE)
                assert rc == lib.FQ_EINUSE, (rc, err)
            _workout(t, [a, d], random.Random(9))
            d.unsubscribe()  # a durable name survives its subscription's close
            assert [r["name"] for i, r in t.info() if i >= t.nsubs] == ["d"]
            assert t.put(mk(5000)) == 0
            d = t.subscribe("d", DURABLE)
            assert [seq_of(x) for _, x, _ in d.drain()] == [5000]
    finally:
        t.close()


# ---------------------------------------------------------------------------
# 6. drop mode: fq_sub_intact and fq_sub_dropped are exact


def test_drop_overwritten_claim_is_not_intact_and_dropped_is_exact(path):
    """A subscriber holds a claim; the publisher laps the ring.  The message whose
    pointer fq_sub_next gave before the lap is not intact (its bytes did change);
    the rest of the claim is gone; fq_sub_dropped then counts exactly the messages
    published between the last one received and the next one received."""
    t = T.create(path, capacity=CAP, drop=True)
    a = t.subscribe("a")
    pub = 0

    def publish(k, size=100):
        nonlocal pub
        for _ in range(k):
            assert t.put(mk(pub, size)) == 0
            pub += 1

    try:
        publish(5)
        rc, c = a.begin(2)
        assert rc == 0 and c.n == 2
        r = a.next(c)
        assert r is not None and r[1] == 0 and r[0] == mk(0, 100)
        ptr = a._d[0]
        publish(CAP // trec(100) + 5)  # lap the ring
        assert t.stats()["release"] > c.end
        assert bytes(ffi.buffer(ptr, 100)) != mk(0, 100), "not overwritten (test setup)"
        assert lib.fq_sub_intact(a.s, c) == 0
        assert a.next(c) is None  # message 1 was overwritten: the claim has no more
        a.end(c)
        assert a.dropped() == 0  # nothing received yet: nothing counted yet
        got = a.drain(max_n=3)
        idx = [i for i, _, _ in got]
        assert idx == list(range(idx[0], pub)) and idx[0] > 2
        assert all(seq_of(m) == i for i, m, _ in got)
        assert a.dropped() == idx[0], (a.dropped(), idx[0])
        assert a.lag() == 0
        # received one intact, then lapped inside a claim: counted from the last one
        rng = random.Random(12)
        for rnd in range(60):
            before = a.dropped()
            last = pub - 1
            publish(rng.randrange(1, 6), rng.randrange(8, 500))
            rc, c = a.begin(rng.randrange(1, 4))
            assert rc == 0
            m = a.next(c)
            assert m is not None and m[1] == last + 1
            publish(rng.randrange(0, 40), rng.randrange(8, 500))
            intact = lib.fq_sub_intact(a.s, c)
            rel = t.stats()["release"]
            assert intact == (m[2] >= rel), (intact, m[2], rel)
            if intact:
                assert m[0] == mk(m[1], len(m[0]))
            a.end(c)
            got = [i for i, _, _ in a.drain(max_n=rng.randrange(1, 5))]
            assert got == list(range(got[0], pub)) if got else pub == last + 2
            first = got[0] if got else pub
            if intact:
                assert a.dropped() - before == first - (last + 2), (rnd, a.dropped(), before)
            else:
                assert a.dropped() - before == first - (last + 1), (rnd, a.dropped(), before)
            assert a.lag() == 0
    finally:
        t.close()


def test_drop_subscriber_lapped_between_claims_counts_exactly(path):
    """received + dropped == published, over many laps with random pacing"""
    rng = random.Random(13)
    t = T.create(path, capacity=CAP, drop=True)
    a = t.subscribe("a")
    try:
        pub = 0
        recv = []
        for _ in range(400):
            for _ in range(rng.choice([0, 1, 2, 5, 20, 60])):
                assert t.put(mk(pub, rng.randrange(8, 700))) == 0
                pub += 1
            for _ in range(rng.randrange(0, 3)):
                rc, msgs, _ = a.get(rng.randrange(1, 8))
                if rc:
                    break
                recv += [i for i, _ in msgs]
                assert all(seq_of(m) == i for i, m in msgs)
                assert len(recv) + a.dropped() == recv[-1] + 1
        recv += [i for i, _, _ in a.drain()]
        assert recv == sorted(set(recv)) and recv[-1] == pub - 1
        assert len(recv) + a.dropped() == pub
        assert a.dropped() > pub // 4 and a.lag() == 0
    finally:
        t.close()


@pytest.mark.parametrize("max_n,delay,pub_delay,lead", [
    (1, 3000, 2000, 200), (16, 500, 1000, 200), (64, 50, 3000, 60), (8, 0, 0, 40),
    (4, 200, 5000, 0)])
def test_c_loop_drop_slow_reader_exact(path, max_n, delay, pub_delay, lead):
    """At C speed: a publisher thread laps a slow reader thread (GIL released) over
    and over (paced: at most `lead` messages ahead of the reader, if lead).  Every
    payload the reader keeps is whole (its copy, made in two halves with a pause
    between, passed fq_sub_intact), indices grow, the group's head is always at a
    record boundary, after every claim received + dropped == the last index + 1,
    and at the end received + dropped == published (the reader gets the last one)."""
    t = T.create(path, capacity=CAP, drop=True)
    h = T.open(path)
    try:
        a = h.subscribe("a")
        n = 300000
        got, puts, rets, diags = _c_sub_threads([a], [t], n, 1, 40, flags=7, delay=delay,
                                                max_n=max_n, seconds=8, pub_delay=pub_delay,
                                                lead=lead)
        d = diags[0]
        st = t.stats()
        g = t.group(t.member(a.index())["group"])
        if rets[0] == -5:
            raise AssertionError(
                "reader stuck (EMPTY until the deadline): last index %d, published %d, "
                "lag %d, dropped %d; head %d, release %d, tail %d; a record of the last "
                "claim overwritten makes fq_sub_next drop the retained rest (see "
                "test_drop_claim_partly_overwritten_keeps_the_retained_rest)"
                % (d[0], st["published"], a.lag(), a.dropped(), g["head_pos"],
                   st["release"], st["tail"]))
        assert rets[0] >= 0, (rets, d, st, g)
        assert puts == [n], (puts, st)
        recv = len(got[0])
        assert got[0][-1] == n - 1
        assert recv + a.dropped() == n, (recv, a.dropped())
        print("drop C loop max_n=%d: received %d, dropped %d, copies not intact %d, "
              "claims %d" % (max_n, recv, a.dropped(), d[3], d[4]))
        assert a.dropped() > 0, "the reader was never lapped"
    finally:
        h.close()
        t.close()


def test_drop_claim_partly_overwritten_keeps_the_retained_rest(path):
    """A claim of 10 messages of which the publisher then evicts only the first: the
    other 9 are still in the ring (retained, never overwritten).  A lapped subscriber
    skips to the oldest retained message: it must still receive messages 1..9, and
    count exactly one message dropped; with nothing left unread, its lag is 0 and
    fq_sub_begin returns EMPTY only then."""
    t = T.create(path, capacity=CAP, drop=True)
    a = t.subscribe("a")
    try:
        publish_all(t, [mk(i, 100) for i in range(10)])
        rc, c = a.begin(10)
        assert rc == 0 and c.n == 10 and (c.pos, c.end) == (0, 10 * trec(100))
        k = 10
        while t.stats()["release"] == 0:  # evict message 0 only
            assert t.put(mk(k, 100)) == 0
            k += 1
        assert t.stats()["release"] == trec(100), t.stats()
        for i in range(1, 10):  # messages 1..9 are intact in the ring
            p = i * trec(100)
            assert lib.fqt_rec_state(t.q, p) == lib.FQ_REC_COMMITTED
            assert bytes(ffi.buffer(lib.fqt_rec_data(t.q, p), 116))[16:] == mk(i, 100)
        got = []
        while True:
            m = a.next(c)
            if m is None:
                break
            if lib.fq_sub_intact(a.s, c):
                got.append(m[1])
        a.end(c)
        got += [i for i, _, _ in a.drain()]
        assert got == list(range(1, k)), "received %r of 0..%d (dropped %d, lag %d)" % (
            got, k - 1, a.dropped(), a.lag())
        assert a.dropped() == 1 and a.lag() == 0
    finally:
        t.close()


# ---------------------------------------------------------------------------
# 7. hostile topic segments: never a crash, a hang or an endless loop


NAMES = ["g", "d", "a1", "h", "fz", "x" * 63]


def _fuzz_child(path, seed):
    """exit 10: rejected by fq_open; 11: opened and used; 12: and saw FQ_ECORRUPT (or
    ELOST) somewhere (not 0/1: a sanitizer's report exits with 1)"""
    rng = random.Random(seed)
    rc, qp, err = open_seg(path)
    if rc != 0:
        assert rc == lib.FQ_EBADSEG or rc < 0, rc
        assert err
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
            rc, c = s.begin(rng.randrange(0, 9), rng.choice([BIG, 100, 0, 100 | (1 << 63)]))
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
        run_child(pids, _publisher_child, p, "put_mid_commit", 1, [[mk(90 + i) for i in range(3)]])
        run_child(pids, _subscribe_child, p, "late", GROUP, "subscribe_after_lock")
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
        run_child(pids, _publisher_child, p, "put_after_claim", 1, [[mk(95)]])
        run_child(pids, _publisher_child, p, "put_after_headers", 1, [[mk(96), mk(97)]])
    t.close()
    bases.append(p)

    # 2: block; an orphan (recovered), a taker killed covering it (two copies, the
    # lock held by the dead taker), a live member of the test process
    p = tmp_path / "base2.seg"
    t = T.create(p, capacity=CAP, max_slots=8, max_subs=8)
    live = t.subscribe("g", GROUP)
    fill(t, 9, 0, 100)
    with children() as pids:
        run_child(pids, _member_child, p, "g", GROUP, "sub_before_end", 1, 3, Log())
        t.recover()
        run_child(pids, _member_child, p, "g", GROUP, "take_orphan_covered", 1, 5, Log())
    assert live.s  # stays (its process is alive while the children run)
    t.close()
    bases.append(p)

    # 3: block; a half-made durable group (killed at subscribe_group_visible) and a
    # half-made anonymous one
    p = tmp_path / "base3.seg"
    t = T.create(p, capacity=CAP, max_slots=8, max_subs=4)
    fill(t, 6, 300)
    with children() as pids:
        run_child(pids, _subscribe_child, p, "d", DURABLE, "subscribe_group_visible")
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


def _run_fuzz(tmp_path, cases, seed, budget, par=2):
    bases = _fuzz_bases(tmp_path)
    rng = random.Random(seed)
    t0 = time.monotonic()
    failures = []
    counts = {10: 0, 11: 0, 12: 0}
    running = {}
    case = 0
    with children() as pids:
        while (case < cases or running) and len(failures) < 5:
            while case < cases and len(running) < par and time.monotonic() - t0 < budget:
                img, h = bases[case % len(bases)]
                mimg, muts = _mutate(img, h, rng)
                path = tmp_path / ("fuzz%d.seg" % case)
                with open(path, "wb") as f:
                    f.write(mimg)
                pid = fork(_fuzz_child, path, case)
                pids.append(pid)
                running[pid] = (case, time.monotonic(), muts, path)
                case += 1
            if not running:
                break
            for pid in list(running):
                kase, started, muts, path = running[pid]
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
                    keep = "/tmp/topic-c-bugs/fuzz-case%d-%s.seg" % (kase, code)
                    try:
                        os.makedirs("/tmp/topic-c-bugs", exist_ok=True)
                        os.replace(path, keep)
                    except OSError:
                        keep = str(path)
                    failures.append((kase, code, muts, keep))
            time.sleep(0.0003)
    return counts, failures, time.monotonic() - t0


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


# ---------------------------------------------------------------------------
# 8. regressions from the core reviews (first review: 2caa44d, second: 70d14a8)
#
# One test per bug the two adversarial reviews of csrc/fq_topic.c found; each
# docstring names the bug and the behaviour its fix guarantees.

#: fq_ctrl offsets in the segment file (static-asserted in csrc/fq_layout.h)
CTRL_RELEASE, CTRL_EPOCH = 384, 392


def _ctrl_u64(path, off):
    with open(path, "rb") as f:
        f.seek(off)
        return struct.unpack("<Q", f.read(8))[0]


def _poke_ctrl_u64(path, off, v):
    """write a u64 of the control block through the file (shared with every mapping)"""
    import mmap
    with open(path, "r+b") as f, mmap.mmap(f.fileno(), 4096) as mm:
        struct.pack_into("<Q", mm, off, v)


def _ring_end(t):
    """the address of data + cap: the first byte past the ring"""
    return int(ffi.cast("uintptr_t", lib.fqt_rec_data(t.q, 0))) - HDR + t.cap


def _open_guarded(path, attempts=20):
    """Open the segment so that the page right after its ring (the ring ends its
    mapping) is mapped PROT_NONE: any access past the ring faults, whatever
    mapping would otherwise follow it.  (Reserve mapping size + one page, unmap
    all but the top page, and let fq_open's mmap take the hole.)  For children."""
    import ctypes
    import mmap
    libc = ctypes.CDLL(None, use_errno=True)
    libc.mmap.restype = ctypes.c_void_p
    libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int,
                          ctypes.c_int, ctypes.c_long]
    libc.munmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
    size = os.path.getsize(path)
    assert size % mmap.PAGESIZE == 0, size
    page = mmap.PAGESIZE
    qq = ffi.new("fq_queue **")
    err = ffi.new("char[512]")
    bpath = str(path).encode()
    for _ in range(attempts):
        r = libc.mmap(None, size + page, 0, 0x22, -1, 0)  # PROT_NONE, MAP_PRIVATE|ANONYMOUS
        assert r not in (None, ctypes.c_void_p(-1).value)
        libc.munmap(r, size)
        assert lib.fq_open(bpath, qq, err, 512) == 0, ffi.string(err)
        t = T(qq[0], path)
        if _ring_end(t) == r + size:
            return t
        t.close()  # placed elsewhere: try again (the guard page stays, harmless)
    raise AssertionError("could not place a guard page after the ring")


@pytest.mark.parametrize("subscriber", ["none", "latest"])
def test_regression_release_never_passes_a_put_in_progress(path, subscriber):
    """First review, r1: fq_topic_release took the minimum of the group heads and
    member claims only, so with no group, or with a group that joined at tail
    (beyond a put still being copied), release passed the put in progress; other
    publishers then lapped it and its late commit landed on live records of the
    next lap (the subscriber then stalled behind a foreign header and lost
    messages).  Correct: while the put is in progress, release stays at or below
    it and other publishers get FQ_FULL instead of overwriting it; once it
    commits, publishing goes on and the subscriber receives every message
    published after it joined, intact and in order, none lost."""
    t = T.create(path, capacity=CAP)  # block
    p = T.open(path)  # a slow publisher: its own handle
    try:
        datas = [mk(7000, 200)]
        lens = ffi.new("uint64_t[1]", [200])
        c = ffi.new("fq_claim *")
        assert lib.fq_put_begin(p.q, lens, 1, c) == 0
        pos = c.pos
        s = t.subscribe("late") if subscriber == "latest" else None  # head at tail > pos
        got = []

        def drain():
            if s is not None:
                got.extend(seq_of(m) for _, m, _ in s.drain(16))

        k = 0
        while True:
            rc = t.put(mk(100 + k, 60))
            if rc == lib.FQ_FULL:
                break
            assert rc == lib.FQ_OK, rc
            k += 1
            assert t.stats()["tail"] - pos <= CAP, \
                "put %d went past the put in progress at %d: %r" % (k, pos, t.stats())
            assert k < 200, "never FULL"
            drain()
        assert t.stats()["release"] <= pos, t.stats()
        for _ in range(3):  # and it stays so
            assert t.put(mk(1, 60)) == lib.FQ_FULL
        # the slow publisher copies its payload and commits
        ffi.memmove(lib.fq_claim_buf(p.q, c), datas[0], 200)
        lib.fq_put_commit(p.q, c)
        assert lib.fqt_rec_state(t.q, pos) == lib.FQ_REC_COMMITTED
        rec = bytes(ffi.buffer(lib.fqt_rec_data(t.q, pos), PREFIX + 200))
        assert struct.unpack_from("<Q", rec)[0] == 0 and rec[PREFIX:] == datas[0]
        drain()
        # publishing goes on (release moves past the committed put)
        for j in range(80):
            assert t.put(mk(100 + k + j, 60)) == lib.FQ_OK, j
            drain()
        if s is not None:
            assert got == list(range(100, 100 + k + 80)), got
            assert s.dropped() == 0 and s.lag() == 0
        else:
            e = t.subscribe("e", ANON, EARLIEST)  # what is retained: intact, in order
            kept = [seq_of(m) for _, m, _ in e.drain(16)]
            assert kept and kept == list(range(kept[0], 100 + k + 80)), kept
    finally:
        p.close()
        t.close()


def test_regression_orphan_take_bumps_the_release_epoch(path):
    """First review, r2: fq_take_orphan moves a claim from the orphan's entry to
    the taker's; a publisher scanning the members in index order could read the
    taker's entry before the cover and the orphan's after the free, and release
    the records the taker is about to copy.  The interleaving itself needs a hook
    inside the scan; what makes it safe is deterministic and is checked here: the
    take bumps the (release, epoch) pair, so the CAS of any scan that began
    before it fails (and its rescan sees the taker's claim).  Then the taker gets
    the orphan's messages whole, publishers stay FULL until it is done, and go on
    after."""
    t = T.create(path, capacity=CAP)  # block
    taker = t.subscribe("grp", GROUP)
    try:
        publish_all(t, [mk(i, 200) for i in range(10)])
        log = Log()
        try:
            with children() as pids:  # a member claims 0..4 and dies
                run_child(pids, _member_child, path, "grp", GROUP, "sub_after_claim", 1, 5,
                          log)
        finally:
            log.close()
        rc, msgs, red = taker.get(16)  # 5..9: the head is past them
        assert rc == 0 and [seq_of(m) for _, m in msgs] == [5, 6, 7, 8, 9] and not red
        recover_fully(t)  # the dead member's claim of 0..4 becomes an orphan
        assert t.group(0)["orphans"] == 1
        n = 0
        while t.put(mk(100 + n, 200)) == lib.FQ_OK:
            n += 1
        assert n > 0 and t.put(mk(1, 200)) == lib.FQ_FULL
        ep0 = _ctrl_u64(path, CTRL_EPOCH)
        rel0 = _ctrl_u64(path, CTRL_RELEASE)
        assert rel0 == t.stats()["release"]  # the offset is right
        rc, c = taker.begin(16)  # takes the orphan over
        assert rc == 0 and c.redelivered and c.n == 5, (rc, c.redelivered, c.n)
        assert _ctrl_u64(path, CTRL_EPOCH) > ep0, \
            "taking an orphan over did not bump the release epoch"
        assert t.put(mk(1, 200)) == lib.FQ_FULL  # its records stay
        assert t.stats()["release"] <= c.pos
        assert [seq_of(m) for _, m in taker.read(c)] == [0, 1, 2, 3, 4]
        taker.end(c)
        assert t.group(0)["orphans"] == 0
        assert t.put(mk(1, 200)) == lib.FQ_OK
    finally:
        t.close()


def _reuse_entry_and_die_claiming_child(path):
    t = T.open(path)
    y = t.subscribe("B", GROUP)  # reuses entry 0 (left by group A's last claimer)
    if y.index() != 0:
        return 3
    lib.fq_test_set_crash_point(b"sub_after_intent", 1)
    y.begin(16)  # intent [pos, end) CLAIMING; killed before its head CAS
    return 1


def test_regression_help_checks_the_members_group(path):
    """First review, r3: fq_help trusted the member index named in a group head.
    After group A's last claimer (entry 0) left, a member of group B reused entry
    0 and died CLAIMING (before its head CAS) a claim that ended where A's head
    is; a member of A "helped" that unrelated intent to WON, and recovery made
    the never-won claim an orphan: group B got those messages twice.  Correct:
    group B receives each message exactly once (and A gets nothing more)."""
    t = T.create(path, capacity=CAP)
    try:
        m = t.subscribe("A", GROUP)   # entry 0, group A
        a2 = t.subscribe("A", GROUP)  # entry 1, group A
        z = t.subscribe("B", GROUP)   # entry 2, group B (head at 0)
        publish_all(t, [mk(i, 40) for i in range(5)])
        rc, msgs, _ = m.get(16)  # A's head -> (end, member 0)
        assert rc == 0 and [seq_of(d) for _, d in msgs] == [0, 1, 2, 3, 4]
        m.unsubscribe()  # entry 0 free; A's head still names it
        with children() as pids:
            run_child(pids, _reuse_entry_and_die_claiming_child, path)
        assert a2.get(16)[0] == lib.FQ_EMPTY  # fq_help(entry 0, A's head) runs here
        recover_fully(t)  # reaps the dead member of B
        got = seqs(z.drain(16))
        assert got == [(i, 0) for i in range(5)], "group B received %r" % (got,)
        assert z.get(16)[0] == lib.FQ_EMPTY and a2.get(16)[0] == lib.FQ_EMPTY
        assert all(t.group(i)["orphans"] == 0 for i in range(t.nsubs))
    finally:
        t.close()


def _misaligned_release_child(path, poke):
    t = T.open(path)
    s = t.subscribe("x", ANON, EARLIEST)  # head at release (0), behind 3 messages
    _poke_ctrl_u64(path, CTRL_RELEASE, poke)  # release ahead of the head, misaligned
    if t.stats()["release"] != poke:
        return 4
    rc, _ = s.begin(1)
    if rc != lib.FQ_ECORRUPT:
        return 3
    rc = t.put(mk(9, 40))  # the ring is full: the put must evict from release
    return 0 if rc == lib.FQ_ECORRUPT else 5


def test_regression_misaligned_release_is_corrupt_not_a_loop(path):
    """First review, r5: in a drop topic, a release that is not a multiple of 16
    (a hostile segment) ahead of a group's head made fq_sub_begin loop forever:
    it moved the head to pack(release), which drops the low 4 bits, found it
    still behind release, and again; eviction from a misaligned release looped
    likewise.  Correct: fq_sub_begin returns FQ_ECORRUPT promptly, and so does a
    put that has to evict (in a forked child, killed if it takes over 3 s)."""
    t = T.create(path, capacity=CAP, drop=True)
    try:
        n = 0
        while t.stats()["tail"] + trec(40) <= CAP:  # fill the ring, no lap
            assert t.put(mk(n, 40)) == 0
            n += 1
        assert t.stats()["release"] == 0 and n > 3
        with children() as pids:
            pid = fork(_misaligned_release_child, path, 8)
            pids.append(pid)
            t0 = time.monotonic()
            code = reap(pid, timeout=3.0)
            pids.remove(pid)
            assert code == 0, "child exit %s (3: sub_begin, 5: put not FQ_ECORRUPT)" % code
            assert time.monotonic() - t0 < 3.0
    finally:
        t.close()


def test_regression_drop_publisher_blocked_by_headerless_claim_sleeps(path):
    """First review, r7: in a drop topic, a publisher killed between its tail CAS
    and its headers leaves a header-less region at the oldest position; eviction
    returns FQ_FULL there, but fq_topic_space_ready said "ready" (no header
    matched), so fq_wait(SPACE) returned at once and a blocked publisher
    busy-looped until recovery.  Correct: the wait sleeps (fq_wait with a 100 ms
    timeout returns a handful of times in 0.5 s, not thousands), and recovery
    frees the space."""
    t = T.create(path, capacity=CAP, drop=True)
    try:
        with children() as pids:
            run_child(pids, _publisher_child, path, "put_after_claim", 1, [[mk(1, 100)]])
        n = 0
        while t.put(mk(10 + n, 100)) == lib.FQ_OK:
            n += 1
            assert n < 100
        assert t.put(mk(0, 100)) == lib.FQ_FULL
        t0 = time.monotonic()
        k = 0
        while time.monotonic() - t0 < 0.5:
            lib.fq_wait(t.q, 1, 100, 100_000_000, 0)  # FQ_WAIT_SPACE, 100 ms, no spin
            k += 1
            assert t.put(mk(0, 100)) == lib.FQ_FULL
        assert 1 <= k <= 20, "fq_wait(SPACE, 100 ms) returned %d times in 0.5 s" % k
        recover_fully(t)
        assert t.put(mk(0, 100)) == lib.FQ_OK
    finally:
        t.close()


def _guarded_recover_child(path):
    t = _open_guarded(path)
    t.recover()
    return 0


@pytest.mark.parametrize("mode", ["block", "drop"])
def test_regression_skip_region_at_ring_end_recovered_in_bounds(path, mode):
    """Second review, region_oob: a publisher killed after its claim (no headers)
    whose claim starts 16 bytes before the ring's end (its pad, then the record
    from offset 0) is replaced by recovery with one SKIP at ring offset cap-16,
    and fq_abandon_region stored the dead claim's message count after that header:
    at data + cap, past the ring and the mapping (SIGSEGV in every recoverer, or a
    write into whatever mapping follows).  Correct: the recoverer (a child whose
    ring is followed by a PROT_NONE page) exits 0, and the region is then read
    past: nothing received from it, lag 0, publishing goes on.  (In a drop topic
    the dead message, whose count has no room there, is counted as dropped.)"""
    t = T.create(path, capacity=CAP, drop=mode == "drop")
    try:
        s = t.subscribe("a")
        advance_to(t, [s], CAP - 16)
        with children() as pids:
            run_child(pids, _publisher_child, path, "put_after_claim", 1, [[mk(1, 64)]])
            st = t.stats()
            assert (st["tail"] - trec(64) - 16) % CAP == CAP - 16, st  # pad + record
            run_child(pids, _guarded_recover_child, path, expect=0)
        recover_fully(t, expect_repair=False)
        assert s.drain() == [] and s.lag() == 0 and s.dropped() == 0
        assert t.put(mk(2, 64)) == lib.FQ_OK
        assert seqs(s.drain()) == [(2, 0)]
        assert s.lag() == 0 and s.dropped() == (1 if mode == "drop" else 0)
    finally:
        t.close()


def _guarded_reader_child(path, nfill):
    t = _open_guarded(path)
    s = t.subscribe("b", ANON, EARLIEST)  # from release: through the SKIP at cap-16
    got = s.drain(8)
    if any(m != b"\xaa" * len(m) for _, m, _ in got):
        return 3
    idx = [i for i, _, _ in got]
    if not idx or idx != list(range(idx[0], nfill)) or s.lag() != 0:
        return 4
    return 0


def test_regression_reader_never_loads_a_skip_count_past_the_ring(path):
    """Second review, region_oob_reader: in a drop topic fq_sub_next read a
    recovery SKIP's message count 16 bytes past its header, so a SKIP at ring
    offset cap-16 (what recovery writes there, or a hostile segment) made the
    reader load 8 bytes past the ring and its mapping.  Correct: a reader whose
    ring is followed by a PROT_NONE page reads through that SKIP without a fault
    (child exit 0), receiving the retained messages before it, in order, lag 0."""
    t = T.create(path, capacity=CAP, drop=True)
    try:
        s = t.subscribe("a")
        advance_to(t, [s], CAP - 16)
        nfill = t.stats()["published"]
        with children() as pids:
            run_child(pids, _publisher_child, path, "put_after_claim", 1, [[mk(1, 64)]])
            st = t.stats()
            p = st["tail"] - trec(64) - 16  # the dead claim [p, tail), from cap-16
            assert p % CAP == CAP - 16, (p, st)
            # what fq_abandon_region leaves there (the count has no room in the ring)
            hdr = ffi.cast("char *", lib.fqt_rec_data(t.q, p)) - HDR
            ffi.cast("uint32_t *", hdr)[2] = st["tail"] - p  # len: the whole region
            ffi.cast("uint32_t *", hdr)[3] = 0xFFFFFFFF      # owner: recovery's SKIP
            ffi.cast("uint64_t *", hdr)[0] = lib.fqt_tag(t.q, p) | lib.FQ_REC_SKIP
            run_child(pids, _guarded_reader_child, path, nfill, expect=0)
    finally:
        t.close()


@pytest.mark.parametrize("abandoned", [False, True], ids=["committed", "abandoned"])
def test_regression_held_claim_does_not_carry_its_abandoned_count(path, abandoned):
    """Second review, count_stale_after_hold: fq_sub_account never reset the
    claim's count of abandoned records seen, and fq_sub_begin did not reset it
    when returning a claim kept by fq_sub_hold: the count already accounted was
    counted again with the kept claim, and 'dropped' undercounted the messages
    lapped afterwards.  Setup (drop): messages 0..5, message 1 committed or
    abandoned (its publisher killed); read two messages (0 and 1, or 0 and 2
    passing the abandoned 1), hold the rest, lap all of it but 5.  Correct: the
    kept claim yields 5, intact, and dropped is exactly 3 (2, 3, 4) or 2 (3, 4):
    received + dropped + abandoned == published."""
    t = T.create(path, capacity=CAP, drop=True)
    try:
        s = t.subscribe("a")
        assert t.put(mk(0, 48)) == 0
        if abandoned:
            with children() as pids:
                run_child(pids, _publisher_child, path, "put_before_commit", 1, [[mk(1, 48)]])
            recover_fully(t)
        else:
            assert t.put(mk(1, 48)) == 0
        publish_all(t, [mk(i, 48) for i in range(2, 6)])
        rc, c = s.begin(8)
        assert rc == 0
        got = []
        for _ in range(2):
            data, idx, _ = s.next(c)
            assert lib.fq_sub_intact(s.s, c) == 1 and seq_of(data) == idx
            got.append(idx)
        assert got == ([0, 2] if abandoned else [0, 1])
        rest = ffi.new("fq_claim *")
        rest[0] = c[0]
        left = []
        while True:
            m = s.next(rest)
            if m is None:
                break
            left.append((m[1], m[2]))
        assert [i for i, _ in left] == ([3, 4, 5] if abandoned else [2, 3, 4, 5])
        s.hold(c, c.cursor, 0)  # keep the rest
        pos5 = dict(left)[5]
        k = 100
        while t.stats()["release"] < pos5:  # lap all but 5
            assert t.put(mk(k, 48)) == 0
            k += 1
        assert t.stats()["release"] == pos5
        rc, c = s.begin(8)
        assert rc == 0
        data, idx, _ = s.next(c)
        assert idx == 5 and seq_of(data) == 5 and lib.fq_sub_intact(s.s, c) == 1
        assert s.next(c) is None
        s.end(c)
        got.append(5)
        want = 2 if abandoned else 3
        assert s.dropped() == want, "dropped %d, %d lapped" % (s.dropped(), want)
        rest = [seq_of(m) for _, m, _ in s.drain(16)]
        assert rest == list(range(100, k))
        assert s.dropped() == want and s.lag() == 0
        assert len(got) + len(rest) + s.dropped() + abandoned == t.stats()["published"]
    finally:
        t.close()


def test_regression_give_back_is_not_counted_as_received_block(path):
    """Second review, hold_accounts_given_back (block): fq_sub_hold(c, from <= pos)
    (a nack, an interrupted get/get_many) gives the claim back whole, yet it
    accounted the claim as returned: a message nacked then acked counted twice in
    the member's 'got'.  Correct: got == 1, and the message comes back once,
    flagged redelivered."""
    t = T.create(path, capacity=CAP)
    try:
        s = t.subscribe("a")
        assert t.put(mk(0, 48)) == 0
        rc, c = s.begin(1)
        assert rc == 0 and s.next(c)[1] == 0
        assert lib.fq_sub_intact(s.s, c) == 1  # copied out, as the binding does
        s.hold(c, 0, 1)  # nack: all of it given back
        assert t.member(s.index())["got"] == 0
        rc, c = s.begin(1)
        assert rc == 0 and c.redelivered
        assert [(i, seq_of(m)) for i, m in s.read(c)] == [(0, 0)]
        s.end(c)  # ack
        assert t.member(s.index())["got"] == 1
        assert s.get()[0] == lib.FQ_EMPTY and t.member(s.index())["got"] == 1
    finally:
        t.close()


def test_regression_given_back_message_lapped_counts_as_dropped(path):
    """Second review, hold_accounts_given_back (drop): a give-back moved the
    group's next index past the message it gave back, so when that message was
    lapped before it came back it was counted neither received nor dropped
    (received + dropped < published).  Correct: message 0, nacked then lapped,
    is dropped (dropped == 1 exactly), and every later message is received."""
    t = T.create(path, capacity=CAP, drop=True)
    try:
        s = t.subscribe("a")
        assert t.put(mk(0, 48)) == 0
        rc, c = s.begin(1)
        assert rc == 0
        assert s.next(c)[1] == 0 and lib.fq_sub_intact(s.s, c) == 1
        s.hold(c, 0, 1)  # nack: message 0 goes back
        k = 1
        while t.stats()["release"] <= c.pos:  # lap it
            assert t.put(mk(k, 48)) == 0
            k += 1
        got = []
        while True:  # the kept claim (0, overwritten) comes back first, then the rest
            rc, c = s.begin(8)
            if rc == lib.FQ_EMPTY:
                break
            assert rc == 0, rc
            while True:
                m = s.next(c)
                if m is None:
                    break
                if lib.fq_sub_intact(s.s, c):
                    assert seq_of(m[0]) == m[1]
                    got.append(m[1])
            s.end(c)
        pub = t.stats()["published"]
        assert pub == k
        assert s.dropped() == 1, "dropped %d (message 0 lapped)" % s.dropped()
        assert got == list(range(1, pub)), got  # all but 0, once each
        assert len(got) + s.dropped() == pub, (len(got), s.dropped(), pub)
        assert s.lag() == 0
    finally:
        t.close()

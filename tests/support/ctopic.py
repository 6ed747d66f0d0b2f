"""The topic side of the white-box tests (tests/c/test_topic_*.py): the topic constants,
thin wrappers of the C API (``T`` a topic handle, ``S`` a subscription), the child
processes the crash tests fork, the futex and control words of the segment, and a
guarded open that faults on any access past the ring.
"""

import os
import struct
import threading
import time

from support import cseg
from support.cseg import BIG, Claims, ffi, Handle, HDR, lib, mk, rec_size, seq_of
from support.procs import fork, wait_dead


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
    """a topic segment (topic=0: a queue), as cseg.create"""
    return cseg.create(path, **{"topic": 1, "max_slots": 16, **kw})


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

    @property
    def nsubs(self):
        return lib.fq_max_subs(self.q)

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


class S(Claims):
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


def member_child(path, name, kind, point, countdown, max_n, log, limit=1000, gate=None):
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


def publisher_child(path, point, countdown, batches):
    t = T.open(path)
    lib.fq_test_set_crash_point(point.encode(), countdown)
    for datas in batches:
        rc = t.put(datas[0]) if len(datas) == 1 else t.put_batch(datas)[0]
        assert rc == 0, rc
    return 0  # the crash point was not reached


def recoverer_child(path, point):
    t = T.open(path)
    lib.fq_test_set_crash_point(point.encode(), 1)
    t.recover()
    return 1  # the point was not reached


def subscribe_child(path, name, kind, point):
    t = T.open(path)
    if point:
        lib.fq_test_set_crash_point(point.encode(), 1)
    rc, s, err = t.subscribe_rc(name, kind)
    assert rc == 0, (rc, err)
    return 0 if not point else 1


def subscribe_and_read_child(path, name, kind, n_expect, timeout, ready_w=None):
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


def c_sub_threads(subs, pub_handles, n_per, min16, max16, flags, delay=0, max_n=8,
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


def workout(t, subs, rng, n=600):
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


def fill(t, subs, base, limit=10000, size=100):
    """publish mk(base + i) until FULL (or limit); the subs are not read; returns the
    number published"""
    for i in range(limit):
        rc = t.put(mk(base + i, size))
        if rc == lib.FQ_FULL:
            return i
        assert rc == 0, rc
    return limit


def fits(t, first_unread, n):
    """would a put of n bytes fit without passing first_unread (no eviction of an
    unread message, no padding trouble)?"""
    s = t.stats()
    tail, cap = s["tail"], t.cap
    size = trec(n)
    idx = tail & (cap - 1)
    span = size + (cap - idx if idx + size > cap else 0)
    return tail + span - first_unread <= cap



#: fq_ctrl offsets in the segment file (static-asserted in csrc/fq_layout.h)
CTRL_RELEASE, CTRL_EPOCH = 384, 392


def ctrl_u64(path, off):
    with open(path, "rb") as f:
        f.seek(off)
        return struct.unpack("<Q", f.read(8))[0]


def poke_ctrl_u64(path, off, v):
    """write a u64 of the control block through the file (shared with every mapping)"""
    import mmap
    with open(path, "r+b") as f, mmap.mmap(f.fileno(), 4096) as mm:
        struct.pack_into("<Q", mm, off, v)


def ring_end(t):
    """the address of data + cap: the first byte past the ring"""
    return int(ffi.cast("uintptr_t", lib.fqt_rec_data(t.q, 0))) - HDR + t.cap


def open_guarded(path, attempts=20):
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
        end = ring_end(t)
        if end == r + size:
            return t
        # placed elsewhere (an allocator, ASan's for one, may have taken the
        # hole): put a guard page right after the ring if nothing is there
        g = libc.mmap(end, page, 0, 0x22 | 0x100000, -1, 0)  # + MAP_FIXED_NOREPLACE
        if g == end:
            return t
        if g not in (None, ctypes.c_void_p(-1).value):
            libc.munmap(g, page)  # a kernel without MAP_FIXED_NOREPLACE took it as a hint
        t.close()  # try again (the first guard page stays, harmless)
    raise AssertionError("could not place a guard page after the ring")

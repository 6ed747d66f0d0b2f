"""Durability: a queue or topic in a file on disk outlives every process
that used it, including processes SIGKILLed in the middle of anything.

test_disk_segment_survives_everyone_killed[queue|topic]:
  * the segment is a file under tmp_path (a disk path, not /dev/shm);
  * rounds (FASTQ_DURABILITY_ROUNDS, default 16, or FASTQ_CHAOS_KILLS / 8
    when that is larger): 2 producers (publishers) and 2 consumers (for the
    topic: 2 subscribers of the durable name "d", which share it) are forked
    fresh, open the segment by path and work (a quarter of the rounds have
    producers only, so that a backlog builds up, and the last round too; a
    quarter consumers only); each is SIGKILLed at its own random moment
    30-600 ms into the round (in 30 % of the rounds all at the same moment;
    half the consumers as soon as they hold a message, if that happens
    within 100 ms), so nobody is left attached at the end of a round; the
    next round's processes find the dead ones' leftovers (claims,
    half-written messages, slots, subscriber entries) and carry on;
  * producers call flush() now and then (committed messages to the disk,
    while the others work);
  * logs as in test_chaos_topic.py (fixed 32-byte O_APPEND records): a
    producer writes "I" (first seq, count) before put()/put_many() and "P"
    after; a consumer's loads() writes "B" then "L" inside the call, then "G"
    (get/get_many) or "R" (flag redelivered), "Q", ack(), "K" (receive);
  * at the end a fresh interpreter reopens the file, runs recover(), checks
    qsize() (queue: the exact number it then drains), drains everything
    (queue: get/get_many/receive; topic: subscribes "d" and drains with
    receive/get_many), flushes, and prints what it got.

What is checked, message by message: every message a producer logged as
put (and any message of its unfinished call that somebody received) was
delivered exactly once overall, to a consumer or to the final drain, under
the same rules as the chaos tests for a consumer that died (a get() killed
after loads() may have taken its message with it: all or none of that
call's messages come back; a receive() killed before ack() must come back,
flagged redelivered); nothing else is delivered; a producer's messages come
in order except redelivered ones (at most one late run per consumer kill);
the fresh process's first look is exact: the queue's qsize() (after
recover()) or the durable subscription's lag is the number of messages it
then drains; after the drain the queue is empty (qsize() 0, empty(),
get_nowait() raises Empty) or the durable subscription has lag 0 and is the
only row of subscribers(), with nobody attached.

test_flush_on_disk_while_others_write_and_after_they_die: flush() on a disk
segment while another process writes, and after it was SIGKILLed; after
flush() the file has no dirty page left in the page cache (cachestat(2);
skipped where the kernel lacks it), for a queue and a topic; a fresh
process reopens the file and finds everything put before, in order.

test_creation_bigger_than_free_space_fails_cleanly: in a private mount
namespace, an 8 MiB tmpfs: a 4 MiB queue is created and can be filled to
the last byte; then less than 4 MiB is free, and a 4 MiB or 8 MiB queue, a
4 MiB topic, and Queue() (open-or-create) all fail at creation with
OSError ENOSPC saying they cannot reserve the bytes (filesystem full),
leaving no file behind (test_queue_api.py's test uses a file-size rlimit
instead of a full filesystem).  Skipped, with the reason, where no tmpfs
can be mounted.
"""
from __future__ import annotations

import os
import random
import shutil
import signal
import struct
import subprocess
import sys
import textwrap
import time
import traceback

import pytest

import fastq

from support import TESTS
from support.chaos import (CheckingSerializer, CTX, fail, K_ACKED, K_ACKING, K_BEGIN, K_CALL, K_GOT,
                           K_INTENT, K_LOADED, K_PUBLISHED, K_RECV, K_START, late_runs, log_got,
                           read_recs, REC, rec, receive_and_ack)
from support.messages import Framed, pick_size

CAPACITY = 8 << 20
M_GET, M_MANY, M_RECV = 1, 2, 3
#: payloads are cut from random bytes made before forking (inherited)
MSGS = Framed(0xFA57D15C, 777, 2 << 20)
#: message sizes: [(cumulative probability, smallest, largest)]
SIZES = [(0.02, 256 << 10, 1 << 20), (0.5, 0, 64), (1.0, 256, 4096)]


def fs_type(path):
    """The type of the filesystem that holds path (from /proc/mounts)."""
    path = os.path.realpath(path)
    best, kind = "", "?"
    try:
        for line in open("/proc/mounts"):
            f = line.split()
            if (path == f[1] or path.startswith(f[1].rstrip("/") + "/")) and len(f[1]) > len(best):
                best, kind = f[1], f[2]
    except OSError:
        pass
    return kind


# ---- workers (forked) ----------------------------------------------------------------


def open_seg(kind, path, serializer):
    if kind == "queue":
        return fastq.Queue.open(path, serializer=serializer)
    return fastq.Topic.open(path, serializer=serializer)


def producer_main(kind, path, prod, log, fail_path):
    try:
        h = open_seg(kind, path, "raw")
        put, put_many = ((h.put, h.put_many) if kind == "queue"
                         else (h.publish, h.publish_many))
        fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        rec(fd, K_START, arg=os.getpid())
        rng = random.Random(prod * 31337)
        seq = 0
        while True:
            if rng.random() < 0.25:
                k = rng.randint(2, 8)
                msgs = [MSGS.make(prod, seq + i, rng.randint(0, 2048)) for i in range(k)]
                rec(fd, K_INTENT, who=prod, seq=seq, arg=k)
                put_many(msgs, timeout=60)
            else:
                k = 1
                msg = MSGS.make(prod, seq, pick_size(rng, SIZES))
                rec(fd, K_INTENT, who=prod, seq=seq, arg=1)
                put(msg, timeout=60)
            rec(fd, K_PUBLISHED, who=prod, seq=seq, arg=k)
            seq += k
            if rng.random() < 0.01:
                h.flush()
    except BaseException:
        fail(fail_path, f"producer {prod}:\n{traceback.format_exc()}")


def consumer_main(kind, path, log, seed, fail_path):
    try:
        fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        h = open_seg(kind, path, CheckingSerializer(fd, fail_path, MSGS))
        s = h if kind == "queue" else h.subscribe(name="d")
        rec(fd, K_START, arg=os.getpid())
        rng = random.Random(seed)
        while True:
            r = rng.random()
            mode = M_RECV if r < 0.45 else (M_GET if r < 0.8 else M_MANY)
            k = rng.randint(2, 12) if mode == M_MANY else 1
            rec(fd, K_CALL, flag=mode, arg=k)
            try:
                if mode == M_GET:
                    prod, seq = s.get(timeout=0.5)
                    rec(fd, K_GOT, who=prod, seq=seq)
                elif mode == M_MANY:
                    got = s.get_many(k, timeout=0.5)
                    log_got(fd, got)
                else:
                    receive_and_ack(fd, s, 0.5)
            except fastq.Empty:
                pass
    except BaseException:
        fail(fail_path, f"consumer {os.getpid()}:\n{traceback.format_exc()}")


# ---- the final drain, in a fresh interpreter --------------------------------------------

FINAL = r"""
import os, sys, time
sys.path.insert(0, %r)  # tests/: the toolkit
import fastq
from support.messages import Framed
kind, path = sys.argv[1], sys.argv[2]
MSGS = Framed(%d, 0, 0)
def check(b):
    prod, seq = MSGS.header(b)
    return prod, seq, MSGS.check(b) is not None
def drain(h, modes):  # read h until 1 s without a message, cycling through modes
    i = 0
    while True:
        t0 = time.monotonic()
        mode = modes[i %% len(modes)]
        try:
            if mode == "receive":
                d = h.receive(timeout=1.0)
                batch, red = [d.value], int(d.redelivered)
                d.ack()
            elif mode == "get":
                batch, red = [h.get(timeout=1.0)], 0
            else:
                batch, red = h.get_many(7, timeout=1.0), 0
        except fastq.Empty:
            break
        i += 1
        for b in batch:
            p, s_, ok = check(b)
            print("M", p, s_, int(ok), red, mode, repr(t0))
def no_extra(h):
    try:
        h.get_nowait()
        print("EXTRA")
    except fastq.Empty:
        pass
out = []
if kind == "queue":
    q = fastq.Queue.open(path, serializer="raw")
    q.recover()
    print("QSIZE", q.qsize())
    drain(q, ("receive", "get", "get_many"))
    print("AFTER", q.qsize(), int(q.empty()))
    no_extra(q)
    q.flush()
    q.close()
else:
    t = fastq.Topic.open(path, serializer="raw")
    t.recover()
    s = t.subscribe(name="d")
    print("LAG", s.lag)
    drain(s, ("receive", "get_many"))
    print("AFTER", s.lag, 0)
    no_extra(s)
    s.close()
    t.recover()
    print("ROWS", repr([tuple(r) for r in t.subscribers()]))
    t.flush()
    t.close()
print("DONE")
""" % (str(TESTS), MSGS.magic)


# ---- log analysis (as in test_chaos_topic.py) ---------------------------------------------


class Dl:
    __slots__ = ("m", "tb", "stage", "redelivered", "who", "killed", "t_end", "call",
                 "status", "mode")

    def __init__(self, m, tb, who, killed, t_end, call, mode):
        self.m, self.tb, self.who, self.killed, self.t_end = m, tb, who, killed, t_end
        self.call, self.mode = call, mode
        self.stage, self.redelivered, self.status = "B", False, None

    def __repr__(self):
        return f"{self.who}:{self.mode}:{self.stage}{'(r)' if self.redelivered else ''}"


def parse_consumer(log, who, t_end):
    """([calls: (mode, k, [Dl], returned)], problems); every consumer was killed."""
    calls, problems = [], []
    cur = None
    for kind, flag, _, prod, seq, t, arg in read_recs(log):
        m = (prod, seq)
        if kind == K_CALL:
            cur = [flag, arg, [], False, 0]
            calls.append(cur)
        elif kind == K_BEGIN:
            if cur is None or (cur[2] and cur[2][-1].stage != "L") or \
                    (cur[0] != M_MANY and cur[2]):
                problems.append(f"{who}: B {m} out of place")
                continue
            cur[2].append(Dl(m, t, who, True, t_end, id(cur), cur[0]))
        elif kind == K_LOADED:
            if cur is None or not cur[2] or cur[2][-1].stage != "B" or cur[2][-1].m != m:
                problems.append(f"{who}: L {m} out of place")
            else:
                cur[2][-1].stage = "L"
        elif kind == K_GOT:
            if cur is None or cur[4] >= len(cur[2]) or cur[2][cur[4]].m != m \
                    or cur[2][cur[4]].stage != "L" or cur[0] == M_RECV:
                problems.append(f"{who}: G {m} out of place")
                continue
            cur[2][cur[4]].stage = "G"
            cur[4] += 1
            cur[3] = True
        elif kind in (K_RECV, K_ACKING, K_ACKED):
            want = {K_RECV: "L", K_ACKING: "R", K_ACKED: "Q"}[kind]
            if cur is None or cur[0] != M_RECV or len(cur[2]) != 1 or cur[2][0].m != m \
                    or cur[2][0].stage != want:
                problems.append(f"{who}: {chr(kind)} {m} out of place")
                continue
            d = cur[2][0]
            d.stage = {K_RECV: "R", K_ACKING: "Q", K_ACKED: "K"}[kind]
            if kind == K_RECV:
                d.redelivered = bool(flag)
                cur[3] = True
    for c in calls:
        for d in c[2]:
            d.status = "done" if d.stage in ("G", "K") else None
    for c in calls[:-1]:
        if any(d.status != "done" for d in c[2]):
            problems.append(f"{who}: an incomplete call before its last: {c[2]}")
    where = "waiting"
    if calls and calls[-1][2]:
        mode, _, ds, returned, _ = calls[-1]
        pending = [d for d in ds if d.status != "done"]
        if not pending:
            where = "between calls"
        elif mode == M_RECV:
            d = pending[0]
            d.status = "may" if d.stage == "Q" else "must"
            where = {"B": "in claim", "L": "in claim", "R": "unacked", "Q": "in ack()"}[d.stage]
        elif returned:
            for d in pending:
                d.status = "lost_ret"
            where = "returned, reporting"
        elif any(d.stage == "B" for d in pending):
            for d in pending:
                d.status = "must"
            where = "in claim"
        else:
            for d in pending:
                d.status = "ambiguous"
            where = "loaded, returned or not"
    for c in calls:
        if c[0] == M_MANY and len(c[2]) > c[1]:
            problems.append(f"{who}: get_many({c[1]}) returned {len(c[2])}")
    return calls, where, problems


def run_rounds(kind, path, tmp_path, procs, rounds, rng):
    fail_path = str(tmp_path / "FAILED")
    producers, consumers = [], []  # (id, log, t_end)
    nprod = 0
    stats = {"rounds": rounds, "kills": 0, "simultaneous_rounds": 0,
             "producer_only_rounds": 0, "consumer_only_rounds": 0}
    for r in range(rounds):
        started = []
        # some rounds only produce (a backlog for the next ones and for the final
        # drain: the last round is one of them), some only consume
        x = rng.random()
        what = "p" if r == rounds - 1 or x < 0.25 else ("c" if x < 0.5 else "pc")
        if what == "p":
            stats["producer_only_rounds"] += 1
        elif what == "c":
            stats["consumer_only_rounds"] += 1
        for _ in range(2 if "p" in what else 0):
            log = str(tmp_path / f"p{nprod}.log")
            p = procs.add(CTX.Process(target=producer_main,
                                      args=(kind, path, nprod, log, fail_path)))
            p.start()
            started.append((p, "p", nprod, log))
            nprod += 1
        for i in range(2 if "c" in what else 0):
            cid = f"c{r}.{i}"
            log = str(tmp_path / f"{cid}.log")
            p = procs.add(CTX.Process(target=consumer_main,
                                      args=(kind, path, log, rng.randrange(1 << 30), fail_path)))
            p.start()
            started.append((p, "c", cid, log))
        t0 = time.monotonic()
        if rng.random() < 0.3:
            stats["simultaneous_rounds"] += 1
            at = rng.uniform(0.03, 0.6)
            plan = [(at, x) for x in started]
        else:
            plan = sorted(((rng.uniform(0.03, 0.6), x) for x in started), key=lambda y: y[0])
        for at, (p, role, wid, log) in plan:
            delay = t0 + at - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            if os.path.exists(fail_path):
                pytest.fail(open(fail_path).read())
            if role == "c" and rng.random() < 0.5:
                # aimed: as soon as it is inside a call, holding a message ("B")
                stats["aimed"] = stats.get("aimed", 0) + 1
                deadline = time.monotonic() + 0.1
                lfd = os.open(log, os.O_RDONLY | os.O_CREAT, 0o600)
                while time.monotonic() < deadline:
                    size = os.fstat(lfd).st_size // REC.size * REC.size
                    if size and os.pread(lfd, 1, size - REC.size)[0] == K_BEGIN:
                        stats["aimed_hits"] = stats.get("aimed_hits", 0) + 1
                        break
                    time.sleep(0.0002)
                os.close(lfd)
            t_end = time.monotonic()
            os.kill(p.pid, signal.SIGKILL)
            p.join(10)
            assert p.exitcode == -signal.SIGKILL, f"{role}{wid} exited with {p.exitcode}"
            stats["kills"] += 1
            (producers if role == "p" else consumers).append((wid, log, t_end))
        if os.path.exists(fail_path):
            pytest.fail(open(fail_path).read())
    return producers, consumers, stats


def analyse(kind, producers, consumers, final, stats):
    """final: [(prod, seq, ok, redelivered, mode, t)] from the fresh process."""
    logged, inflight = set(), {}
    for wid, log, _ in producers:
        recs = read_recs(log)
        nxt, intent = 0, None
        for k, flag, _, prod, seq, t, arg in recs[1:]:
            assert prod == wid and seq == nxt, f"producer {wid}: log out of order"
            if k == K_INTENT:
                intent = (seq, arg)
            else:
                assert intent == (seq, arg), f"producer {wid}: P without its I"
                logged.update((prod, s) for s in range(seq, seq + arg))
                nxt, intent = seq + arg, None
        if intent is not None:
            inflight[wid] = intent

    def possible(m):
        p, s = m
        return m in logged or (p in inflight and inflight[p][0] <= s < sum(inflight[p]))

    deliveries, problems, where = {}, [], {}
    for cid, log, t_end in consumers:
        calls, w, probs = parse_consumer(log, cid, t_end)
        problems += probs
        where[w] = where.get(w, 0) + 1
        for c in calls:
            for d in c[2]:
                deliveries.setdefault(d.m, []).append(d)
    stats["consumer_kills_by_moment"] = where
    bad = [x for x in final if not x[2]]
    assert not bad, f"the final drain got {len(bad)} corrupt messages"
    for prod, seq, ok, red, mode, t in final:
        d = Dl((prod, seq), t, "final", False, None, None, "final")
        d.stage = "K" if mode == "receive" else "G"  # K: its redelivered flag is known
        d.status, d.redelivered = "done", bool(red)
        deliveries.setdefault(d.m, []).append(d)
    assert not problems, f"malformed consumer logs: {problems[:10]}"
    committed = logged | {m for m in deliveries if possible(m)}
    phantom = sorted(m for m in deliveries if not possible(m))
    lost, dups, bad_redelivery, mixed = [], [], [], []
    lost_with_reader, came_back = 0, 0
    backs = {}
    for m in committed:
        ds = sorted(deliveries.get(m, []), key=lambda d: d.tb)
        if not ds:
            lost.append((m, "never delivered"))
            continue
        came_back += len(ds) > 1
        for d, nxt in zip(ds, ds[1:]):
            if d.status in ("done", "lost_ret") or not d.killed:
                dups.append((m, ds))
                break
            if not nxt.tb > d.t_end or (nxt.stage in ("R", "Q", "K") and not nxt.redelivered):
                bad_redelivery.append((m, ds))
                break
        for d in ds:
            if d.status == "ambiguous":
                backs.setdefault(d.call, []).append(d is not ds[-1])
        if ds[-1].status == "must":
            lost.append((m, f"{ds[-1]} held it when killed; it never came back"))
        elif ds[-1].status in ("lost_ret", "ambiguous"):
            lost_with_reader += 1
    mixed = [b for b in backs.values() if any(b) and not all(b)]
    # per-producer order: the final drain, and each consumer
    redelivered = {m for m, ds in deliveries.items()
                   if len(ds) > 1 or any(d.redelivered for d in ds)}
    runs = 0
    seqs_by_reader = {}
    for m, ds in deliveries.items():
        for d in ds:
            seqs_by_reader.setdefault(d.who, []).append((d.tb, m))
    for who, lst in seqs_by_reader.items():
        lst.sort()
        runs += late_runs([m for _, m in lst], redelivered)
    stats.update(messages=len(committed), drained_at_end=len(final), came_back=came_back,
                 lost_with_consumer=lost_with_reader, late_runs=runs,
                 producer_kills_publishing=len(inflight))
    summary = f"{kind} durability summary: " + " ".join(f"{k}={v}" for k, v in stats.items())
    print("\n" + summary)
    errors = []
    if phantom:
        errors.append(f"{len(phantom)} messages nobody put: {phantom[:5]}")
    if lost:
        errors.append(f"{len(lost)} messages lost: {lost[:5]}")
    if dups:
        errors.append(f"{len(dups)} delivered twice: {dups[:5]}")
    if bad_redelivery:
        errors.append(f"{len(bad_redelivery)} bad redeliveries: {bad_redelivery[:5]}")
    if mixed:
        errors.append(f"{len(mixed)} calls of killed consumers came back in part: {mixed[:5]}")
    if runs > stats["kills"]:
        errors.append(f"{runs} runs out of per-producer order")
    assert not errors, "\n".join(errors) + "\n" + summary
    assert stats["messages"] > 200, summary
    return summary


@pytest.mark.parametrize("kind", ["queue", "topic"])
def test_disk_segment_survives_everyone_killed(kind, tmp_path, procs, child_env):
    rounds = int(os.environ.get("FASTQ_DURABILITY_ROUNDS") or
                 max(16, int(os.environ.get("FASTQ_CHAOS_KILLS", "0")) // 8))
    seed = int(os.environ.get("FASTQ_CHAOS_SEED") or random.SystemRandom().randrange(1 << 31))
    rng = random.Random(seed)
    MSGS.base()
    d = tmp_path / "disk"
    d.mkdir()
    path = str(d / f"dur-{kind}")
    T0 = time.monotonic()
    if kind == "queue":
        fastq.Queue.create(path, capacity=CAPACITY).close()
    else:
        with fastq.Topic.create(path, capacity=CAPACITY) as t:
            t.subscribe(name="d").close()  # the durable name exists before any publish
    assert os.path.exists(path), "a named segment stays when its creator closes it"
    producers, consumers, stats = run_rounds(kind, path, tmp_path, procs, rounds, rng)
    stats = {"seed": seed, "fs": fs_type(path), **stats}
    cp = subprocess.run([sys.executable, "-c", FINAL, kind, path], capture_output=True,
                        text=True, timeout=180, env=child_env())
    assert cp.returncode == 0 and "DONE" in cp.stdout, (cp.stdout[-2000:], cp.stderr)
    final, head, after, rows = [], None, None, None
    for line in cp.stdout.splitlines():
        f = line.split(maxsplit=1)
        if f[0] == "M":
            p, s, ok, red, mode, t = line.split()[1:]
            final.append((int(p), int(s), ok == "1", red == "1", mode, float(t)))
        elif f[0] in ("QSIZE", "LAG"):
            head = (f[0], int(f[1]))
        elif f[0] == "AFTER":
            after = tuple(int(x) for x in f[1].split())
        elif f[0] == "ROWS":
            rows = eval(f[1])  # a repr of tuples of str/int/bool/None
    assert "EXTRA" not in cp.stdout, "something was left after the drain"
    stats["runtime_s"] = round(time.monotonic() - T0, 1)
    summary = analyse(kind, producers, consumers, final, stats)
    if kind == "queue":
        assert head == ("QSIZE", len(final)), (
            f"after recover() qsize() said {head[1]}, the drain got {len(final)}; {summary}")
        assert after == (0, 1), f"after the drain qsize(), empty() = {after}; {summary}"
    else:
        assert head == ("LAG", len(final)), (
            f"the durable subscription's lag was {head[1]}, the drain got {len(final)}; "
            f"{summary}")
        assert after[0] == 0, f"lag after the drain {after[0]}; {summary}"
        assert rows is not None and len(rows) == 1 and rows[0][0] == "d" and \
            rows[0][2] is None and rows[0][3] is False and rows[0][5] == 0, (
                f"subscribers() after the drain and recover(): {rows}; {summary}")


# ---- flush() on a disk path ---------------------------------------------------------------


def cachestat(fd):
    """(cached, dirty, writeback) pages of the file (cachestat(2), Linux 6.5+),
    or None where the kernel has no cachestat."""
    import ctypes
    libc = ctypes.CDLL(None, use_errno=True)
    rng = struct.pack("QQ", 0, 0)  # the whole file
    out = ctypes.create_string_buffer(48)
    nr = {"x86_64": 451, "aarch64": 451}.get(os.uname().machine)
    if nr is None or libc.syscall(nr, fd, ctypes.c_char_p(rng), out, 0) != 0:
        return None
    return struct.unpack("6Q", out.raw)[:3]


def steady_writer(path, log):
    q = fastq.Queue.open(path, serializer="raw")
    fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    for seq in range(2000):  # ~3 MiB in all: never full
        q.put(MSGS.make(1, seq, 100 + seq % 3000), timeout=30)
        os.write(fd, b"%d\n" % seq)
        time.sleep(0.0001)
    time.sleep(60)


def test_flush_on_disk_while_others_write_and_after_they_die(tmp_path, procs, child_env):
    MSGS.base()
    path = str(tmp_path / "flushed")
    log = str(tmp_path / "writer.log")
    q = fastq.Queue.create(path, capacity=8 << 20, serializer="raw")
    p = procs.add(CTX.Process(target=steady_writer, args=(path, log)))
    p.start()
    t_end = time.monotonic() + random.uniform(0.1, 0.3)
    flushes = 0
    while time.monotonic() < t_end:  # flush while the writer writes
        q.flush()
        flushes += 1
    os.kill(p.pid, signal.SIGKILL)
    p.join(10)
    assert p.exitcode == -signal.SIGKILL
    n = len(open(log, "rb").read().splitlines())
    assert n > 100, f"the writer put only {n}"
    q.put_many([MSGS.make(2, i, 5000) for i in range(50)], timeout=5)  # fresh dirty pages
    before = cachestat(q.fileno())
    q.flush()  # after the writer's death too
    after = cachestat(q.fileno())
    q.close()
    with pytest.raises(ValueError):
        q.flush()  # closed
    with fastq.Topic.create(str(tmp_path / "tflushed"), capacity=1 << 20,
                            serializer="raw") as t:
        t.subscribe(name="d").close()
        t.publish_many([b"x" * 3000] * 100)
        t.flush()
        tafter = cachestat(t.fileno())
    # a fresh process finds every message put before, in order
    cp = subprocess.run([sys.executable, "-c", textwrap.dedent("""
        import sys, fastq
        q = fastq.Queue.open(sys.argv[1], serializer="raw")
        q.recover()
        while True:
            try:
                m = q.get(timeout=0.5)
            except fastq.Empty:
                break
            print(m[8:16].hex(), m[16:24].hex())
        print("END", q.qsize())
        """), path], capture_output=True, text=True, timeout=60, env=child_env())
    assert cp.returncode == 0, cp.stderr
    lines = cp.stdout.split()
    assert lines[-2:] == ["END", "0"], cp.stdout[-500:]
    got = [(int.from_bytes(bytes.fromhex(a), "little"), int.from_bytes(bytes.fromhex(b),
                                                                        "little"))
           for a, b in zip(lines[:-2:2], lines[1:-2:2])]
    w = [s for pr, s in got if pr == 1]
    assert w in (list(range(n)), list(range(n + 1))), \
        f"the writer logged {n}; reopened: {w[:5]}..{w[-5:]} ({len(w)})"
    assert [s for pr, s in got if pr == 2] == list(range(50))
    print(f"\nflush: {flushes} flushes while writing; page cache (cached, dirty, writeback) "
          f"before the last flush {before}, after {after}; topic after flush {tafter}")
    if after is None:
        pytest.skip("no cachestat(2) on this kernel: flush() ran, but whether the pages "
                    "were written back cannot be observed")
    assert before[1] > 0, f"nothing dirty before flush(): {before}"
    assert after[1] == 0 and after[2] == 0, f"dirty pages left after flush(): {after}"
    assert tafter[1] == 0 and tafter[2] == 0, f"dirty pages left after topic flush(): {tafter}"


# ---- a segment bigger than the free space of its filesystem ------------------------------

SMALL_FS = r"""
import os, sys, fastq
d = sys.argv[1]
st = os.statvfs(d)
print("FS", st.f_blocks * st.f_frsize, st.f_bavail * st.f_frsize)
q = fastq.Queue.create(d + "/a", capacity=4 << 20, serializer="raw")
st = os.statvfs(d)
print("FREE", st.f_bavail * st.f_frsize)
for what, mk in (("queue", lambda: fastq.Queue.create(d + "/b", capacity=4 << 20)),
                 ("queue8", lambda: fastq.Queue.create(d + "/c", capacity=8 << 20)),
                 ("topic", lambda: fastq.Topic.create(d + "/t", capacity=4 << 20)),
                 ("open_or_create", lambda: fastq.Queue(d + "/e", capacity=4 << 20))):
    try:
        mk()
        print("CREATED", what)
    except OSError as e:
        print("ERR", what, e.errno, "|", e)
print("LEFT", sorted(os.listdir(d)))
# the queue that fits can be filled to its last byte: its pages were reserved
# at creation, so a full filesystem never means SIGBUS later
sent = []
for size in (60 << 10, 1000, 0):  # big ones, then smaller ones into what is left
    while True:
        m = bytes([len(sent) % 251]) * size
        try:
            q.put_nowait(m)
        except fastq.Full:
            break
        sent.append(m)
used = sum((len(m) + 16 + 15) // 16 * 16 for m in sent)
print("FILLED", len(sent), q.full(), used)
ok = all(q.get_nowait() == m for m in sent)
print("DRAINED", ok, q.empty())
q.close()
q.unlink()
print("DONE")
"""


def test_creation_bigger_than_free_space_fails_cleanly(tmp_path, child_env):
    """A filesystem that is really full (an 8 MiB tmpfs, mounted in a private
    mount namespace): creating a segment bigger than its free space fails at
    creation, clearly, leaving no file; a segment that fitted works to its
    last byte."""
    unshare = shutil.which("unshare")
    if unshare is None:
        pytest.skip("no unshare(1): cannot mount a small tmpfs in a private namespace")
    d = tmp_path / "small"
    d.mkdir()
    inner = 'mount -t tmpfs -o size=8m fastq-small "$0" && echo MOUNTED && exec "$1" -c "$2" "$0"'
    why = []
    for ns in (["--mount", "--propagation", "private"],            # root
               ["--user", "--map-root-user", "--mount"]):          # unprivileged userns
        cp = subprocess.run([unshare, *ns, "sh", "-c", inner, str(d), sys.executable,
                             SMALL_FS], capture_output=True, text=True, timeout=120,
                            env=child_env())
        if "MOUNTED" in cp.stdout:
            break
        why.append(f"unshare {' '.join(ns)}: rc={cp.returncode} {cp.stderr.strip()[-300:]}")
    else:
        pytest.skip("cannot mount a small tmpfs: " + "; ".join(why))
    out = cp.stdout
    assert cp.returncode == 0 and "DONE" in out, (out, cp.stderr[-2000:])
    print("\n" + out)
    free = int(out.split("FREE")[1].split()[0])
    assert free < (4 << 20), f"the test needs less than 4 MiB free after the first queue: {out}"
    for what in ("queue", "queue8", "topic", "open_or_create"):
        line = next(ln for ln in out.splitlines() if ln.split()[1:2] == [what])
        assert line.startswith("ERR"), f"creating {what} on a full filesystem: {line}"
        assert "cannot reserve" in line and "full" in line and "No space left" in line, line
        assert line.split()[2] == "28", f"errno ENOSPC expected: {line}"
    assert "LEFT ['a']" in out, f"a failed creation left a file behind: {out}"
    filled = out.split("FILLED")[1].split()
    assert filled[1] == "True" and int(filled[2]) == 4 << 20, f"not filled to the last byte: {out}"
    assert "DRAINED True True" in out, out

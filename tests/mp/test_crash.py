"""Crash tolerance: processes SIGKILLed in the middle of put()/get() must not
lose, duplicate or corrupt messages of others, nor block survivors for longer
than the recovery bound (1 s by default; we allow 2 s).

Bookkeeping rules (what the application can know):
  * a producer records seq *after* put() returned; a message it put but had
    not recorded yet when killed may show up (at most one per killed producer:
    its next seq);
  * a consumer records a message *after* get() returned it; a consumer killed
    between the return and the write "loses" that message (by definition the
    application's: at most one per killed consumer, since it gets one at a
    time); a consumer killed *inside* get() (message claimed, not returned)
    must have it redelivered to someone else;
  * so: no message is ever recorded twice, and among the messages producers
    recorded, at most <consumer kills> are missing.
"""
from __future__ import annotations

import os
import random
import signal
import struct
import time

import pytest

import fastq

from support.api import get_all
from support.chaos import CTX, read_recs, start_worker
from support.messages import CheckOnLoad, Passthrough, Patterned
from support.waiting import wait_for

pytestmark = pytest.mark.usefixtures("fastq_dir")

HDR = struct.Struct("<QQ")        # producer id, seq
MSGS = Patterned(HDR)
PREC = struct.Struct("<qd")       # producer record: seq, t_returned
CREC = struct.Struct("<qqqd")     # consumer record: prod, seq, ok, t_returned
START = -2                        # consumer record kind: process started


def msg_size(rng):
    # Multiples of 16: every record size is then a multiple of 16 too, which
    # keeps this test clear of the ring-end padding bug covered elsewhere
    # (test_queue_api.py::test_put_when_tail_is_8_bytes_before_ring_end).
    return 16 * rng.randint(1, 500)  # 16 B .. 8000 B


def producer_main(q, prod, rec_path, stop_path):
    rng = random.Random(prod)
    fd = os.open(rec_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    seq = 0
    while not os.path.exists(stop_path):
        q.put(MSGS.make(prod, seq, msg_size(rng)), timeout=20)
        os.write(fd, PREC.pack(seq, time.monotonic()))
        seq += 1
    os.close(fd)
    q.close()


def consumer_main(q, rec_path, stop_path):
    q = fastq.Queue.open(q.path, serializer=CheckOnLoad(MSGS.check))  # own handle
    fd = os.open(rec_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    os.write(fd, CREC.pack(START, 0, 0, time.monotonic()))
    while True:
        try:
            prod, seq, ok = q.get(timeout=0.5)
        except fastq.Empty:
            if os.path.exists(stop_path):
                break
            continue
        os.write(fd, CREC.pack(prod, seq, ok, time.monotonic()))
    os.close(fd)
    q.close()


def max_gap(times, lo, hi):
    """Longest interval between successive events that lies inside [lo, hi]."""
    ts = sorted(t for t in times if lo <= t <= hi)
    gaps = [b - a for a, b in zip(ts, ts[1:])]
    return max(gaps, default=0.0)


def kill(p):
    os.kill(p.pid, signal.SIGKILL)
    p.join(10)
    assert not p.is_alive()


@pytest.mark.slow
@pytest.mark.parametrize("seed", [1, 2])
def test_sigkill_producers_and_consumers_survivors_carry_on(seed, tmp_path, procs):
    rng = random.Random(seed)
    q = fastq.Queue("crash", capacity=1 << 16, serializer="raw", max_processes=64)
    stop_prod = str(tmp_path / "stop_prod")
    stop_cons = str(tmp_path / "stop_cons")
    prod_ids = iter(range(1000))
    cons_ids = iter(range(1000))
    prods, cons = {}, {}  # id -> Process (live ones)
    killed_prods, killed_cons = set(), set()
    lifetimes = {}  # ("p"|"c", id) -> [start, end]

    workers, killed = {"p": prods, "c": cons}, {"p": killed_prods, "c": killed_cons}
    ids = {"p": prod_ids, "c": cons_ids}

    def start(role):
        i = next(ids[role])
        log = str(tmp_path / f"{role}{i}")
        workers[role][i] = (start_worker(procs, producer_main, q, i, log, stop_prod) if role == "p"
                            else start_worker(procs, consumer_main, q, log, stop_cons))
        lifetimes[role, i] = [time.monotonic(), None]

    def kill_one(role):
        victim = rng.choice(sorted(workers[role]))
        kill(workers[role].pop(victim))
        killed[role].add(victim)
        lifetimes[role, victim][1] = time.monotonic()
        start(role)

    try:
        for _ in range(2):
            start("p")
            start("c")
        t_begin = time.monotonic()
        for rnd in range(12):
            time.sleep(rng.uniform(0.1, 0.3))
            kill_one("p")
            time.sleep(rng.uniform(0.05, 0.2))
            kill_one("c")
            for w in list(prods.values()) + list(cons.values()):
                assert w.is_alive(), f"a survivor died: exitcode {w.exitcode}"
        time.sleep(0.5)
        t_stop = time.monotonic()
        open(stop_prod, "w").close()
        for i, p in prods.items():
            p.join(30)
            assert p.exitcode == 0, f"producer {i} exited with {p.exitcode}"
        # consumers drain, then leave after 0.5 s without a message
        open(stop_cons, "w").close()
        for i, p in cons.items():
            p.join(60)
            assert p.exitcode == 0, f"consumer {i} exited with {p.exitcode}"
        # whatever is left (e.g. requeued and not yet taken) goes to us: a live consumer
        q.recover()
        leftover = [MSGS.check(m) for m in get_all(q, 1.0)]
        assert q.qsize() == 0, f"qsize() says {q.qsize()} after a full drain"

        # ---- collect ---------------------------------------------------------
        put = {}  # prod -> number of recorded puts (seqs 0..n-1)
        put_times = {}
        for (kind, i) in lifetimes:
            if kind == "p":
                recs = read_recs(str(tmp_path / f"p{i}"), PREC)
                assert [s for s, _ in recs] == list(range(len(recs)))
                put[i] = len(recs)
                put_times[i] = [t for _, t in recs]
        got = {}  # cons -> [(prod, seq, ok)]
        get_times = {}
        for (kind, i) in lifetimes:
            if kind == "c":
                recs = read_recs(str(tmp_path / f"c{i}"), CREC)
                got[i] = [(p, s, ok) for p, s, ok, _ in recs if p != START]
                get_times[i] = [t for _, _, _, t in recs]
        got["parent"] = leftover
        total_put = sum(put.values())
        assert total_put > 200, f"too little traffic to mean anything ({total_put})"

        # ---- every message a live consumer received is intact -----------------
        bad = [(c, r) for c, rs in got.items() for r in rs if not r[2]]
        assert not bad, f"corrupt messages: {bad[:5]}"

        # ---- no duplicate ---------------------------------------------------
        received = [(p, s) for rs in got.values() for p, s, _ in rs]
        if len(received) != len(set(received)):
            where = {}
            for c, rs in got.items():
                for k, (p, s, _) in enumerate(rs):
                    where.setdefault((p, s), []).append(
                        (c, k, len(rs), "killed" if c in killed_cons else "survived"))
            dups = {m: w for m, w in where.items() if len(w) > 1}
            raise AssertionError(f"{len(dups)} messages delivered twice "
                                 f"(consumer, index, n, fate): {list(dups.items())[:5]}")

        # ---- nothing but what was put ------------------------------------------
        for p, s in set(received):
            assert p in put, f"message from unknown producer {p}"
            if s >= put[p]:
                # put() returned (or committed) but the producer died before recording
                assert s == put[p] and p in killed_prods, (p, s, put[p])

        # ---- no loss beyond what killed consumers took with them ---------------
        expected = {(p, s) for p, n in put.items() for s in range(n)}
        missing = expected - set(received)
        assert len(missing) <= len(killed_cons), (
            f"{len(missing)} messages lost (only {len(killed_cons)} consumers were killed, "
            f"each can take at most one with it): {sorted(missing)[:10]}")

        # ---- per-producer order (redeliveries may come late: one per killed consumer)
        late = 0
        for rs in got.values():
            last = {}
            for p, s, _ in rs:
                if s < last.get(p, -1):
                    late += 1
                else:
                    last[p] = s
        assert late <= len(killed_cons), f"{late} messages out of per-producer order"

        extra = set(received) - expected
        print(f"crash summary: put={total_put} received={len(received)} "
              f"missing={len(missing)} extra={len(extra)} late={late} "
              f"killed producers={len(killed_prods)} consumers={len(killed_cons)}")

        # ---- survivors never blocked for long -----------------------------------
        worst = 0.0
        for i, ts in get_times.items():
            lo, hi = lifetimes["c", i]
            hi = min(hi or t_stop, t_stop)
            worst = max(worst, max_gap(ts, max(lo, t_begin), hi))
        assert worst < 2.0, f"a consumer waited {worst:.2f} s between two messages"
        print(f"longest consumer gap {worst:.3f} s")
        worst = 0.0
        for i, ts in put_times.items():
            lo, hi = lifetimes["p", i]
            hi = min(hi or t_stop, t_stop)
            worst = max(worst, max_gap(ts, max(lo, t_begin) + 0.2, hi))
        assert worst < 2.0, f"a producer waited {worst:.2f} s between two puts"
        print(f"longest producer gap {worst:.3f} s")
    finally:
        open(stop_prod, "w").close()
        open(stop_cons, "w").close()
        q.close()


# ---- a consumer killed while it holds a claim ------------------------------------


class StallingLoads(Passthrough):
    """A serializer whose loads() announces itself and then sleeps: the
    consumer is killed while the message is claimed (inside get())."""

    def __init__(self, flag):
        self.flag = flag

    def loads(self, data):
        open(self.flag, "w").close()
        time.sleep(60)
        return data


def stalled_consumer(path, flag, many):
    q = fastq.Queue.open(path, serializer=StallingLoads(flag))
    if many:
        q.get_many(100, timeout=20)
    else:
        q.get(timeout=20)


@pytest.mark.parametrize("many", [False, True], ids=["get", "get_many"])
def test_consumer_killed_with_claimed_message_redelivered(many, tmp_path, procs):
    with fastq.Queue("claim", capacity=1 << 16, serializer="raw") as q:
        msgs = [b"m%d" % i * 50 for i in range(5)]
        q.put_many(msgs)
        flag = str(tmp_path / "claimed")
        p = start_worker(procs, stalled_consumer, q.path, flag, many)
        wait_for(lambda: os.path.exists(flag), "the consumer to claim", timeout=20)
        kill(p)
        # the claimed message(s) come back to a live consumer, recovery included,
        # within the recovery bound
        t0 = time.monotonic()
        got = []
        while len(got) < len(msgs):
            got += q.get_many(100, timeout=3)
        assert time.monotonic() - t0 < 2.0
        assert sorted(got) == sorted(msgs), "each message exactly once, intact"
        if many:  # the whole claimed batch comes back, in order
            assert got == msgs
        with pytest.raises(fastq.Empty):
            q.get(timeout=0.5)
        assert q.qsize() == 0
        # and the queue works normally afterwards
        q.put(b"after")
        assert q.get(timeout=1) == b"after"


def test_killed_consumers_claims_redelivered_to_other_process(tmp_path, procs, run_py,
                                                              fastq_dir):
    """The redelivery happens for another process too (not only the parent)."""
    with fastq.Queue("claim2", capacity=1 << 16, serializer="raw") as q:
        q.put(b"precious")
        flag = str(tmp_path / "claimed")
        p = start_worker(procs, stalled_consumer, q.path, flag, False)
        wait_for(lambda: os.path.exists(flag), "the consumer to claim", timeout=20)
        kill(p)
        cp = run_py("""
            import fastq, time
            q = fastq.Queue.open("claim2", serializer="raw")
            t = time.monotonic()
            print(q.get(timeout=5).decode(), round(time.monotonic() - t, 3))
        """, timeout=60)
        msg, dt = cp.stdout.split()
        assert msg == "precious"
        assert float(dt) < 2.0
        assert q.empty()


# ---- killing processes blocked in get()/put() ------------------------------------


def blocked_getter(path, out):
    q = fastq.Queue.open(path, serializer="raw")
    open(out + ".ready", "w").close()
    m = q.get(timeout=30)
    with open(out, "wb") as f:
        f.write(m)


def blocked_putter(path, out, payload):
    q = fastq.Queue.open(path, serializer="raw")
    open(out + ".ready", "w").close()
    q.put(payload, timeout=30)
    open(out, "w").close()


def test_kill_blocked_getter_others_still_wake(tmp_path, procs):
    with fastq.Queue("bg", capacity=1 << 14, serializer="raw") as q:
        outs = [str(tmp_path / f"g{i}") for i in range(3)]
        ps = [procs.add(CTX.Process(target=blocked_getter, args=(q.path, o))) for o in outs]
        for p in ps:
            p.start()
        wait_for(lambda: all(os.path.exists(o + ".ready") for o in outs), "getters", timeout=20)
        time.sleep(0.3)  # all asleep in get()
        kill(ps[0])
        kill(ps[1])
        t0 = time.monotonic()
        q.put(b"wake")
        ps[2].join(5)
        assert ps[2].exitcode == 0
        assert time.monotonic() - t0 < 1.0
        assert open(outs[2], "rb").read() == b"wake"
        assert q.empty()


def test_kill_blocked_putter_others_still_wake(tmp_path, procs):
    with fastq.Queue("bp", capacity=4096, serializer="raw") as q:
        while True:
            try:
                q.put_nowait(b"f" * 1008)
            except fastq.Full:
                break
        n_before = q.qsize()
        outs = [str(tmp_path / f"p{i}") for i in range(2)]
        ps = [procs.add(CTX.Process(target=blocked_putter, args=(q.path, o, b"%d" % i * 1008)))
              for i, o in enumerate(outs)]
        for p in ps:
            p.start()
        wait_for(lambda: all(os.path.exists(o + ".ready") for o in outs), "putters", timeout=20)
        time.sleep(0.3)  # both asleep in put(): the ring is full
        kill(ps[0])
        t0 = time.monotonic()
        assert q.get(timeout=1) == b"f" * 1008
        ps[1].join(5)
        assert ps[1].exitcode == 0, "the surviving putter did not wake"
        assert time.monotonic() - t0 < 1.0
        rest = q.get_many(100, timeout=1)
        assert rest == [b"f" * 1008] * (n_before - 1) + [b"1" * 1008]
        assert q.empty()


@pytest.mark.slow
def test_random_kills_of_many_consumers_no_loss(tmp_path, procs):
    """Only consumers get killed (many times, at random): every message the
    parent put is eventually received exactly once, except at most one per
    killed consumer (the one get() had returned when it died)."""
    KILLS = 15
    rng = random.Random(7)
    with fastq.Queue("ck", capacity=1 << 15, serializer="raw") as q:
        stop = str(tmp_path / "stop")
        ids = iter(range(1000))
        live = {}

        def start():
            i = next(ids)
            live[i] = start_worker(procs, consumer_main, q, str(tmp_path / f"c{i}"), stop)

        start()
        start()
        kills = 0
        seq = 0
        size_rng = random.Random(3)
        next_kill = time.monotonic() + rng.uniform(0.02, 0.1)
        while kills < KILLS or seq < 1000:
            assert seq < 10_000_000
            q.put(MSGS.make(0, seq, msg_size(size_rng)), timeout=10)
            seq += 1
            if time.monotonic() >= next_kill:
                victim = rng.choice(sorted(live))
                kill(live.pop(victim))
                kills += 1
                start()
                next_kill = time.monotonic() + rng.uniform(0.02, 0.1)
        open(stop, "w").close()
        for p in live.values():
            p.join(60)
            assert p.exitcode == 0
        leftover = [MSGS.check(m) for m in get_all(q, 1.0)]
        recs = [(p, s, ok) for i in range(next(ids))
                for p, s, ok, _ in read_recs(str(tmp_path / f"c{i}"), CREC) if p != START]
        recs += leftover
        N = seq
        assert all(ok for _, _, ok in recs)
        seqs = [s for _, s, _ in recs]
        assert len(seqs) == len(set(seqs)), (
            f"duplicate delivery ({kills} kills): "
            f"{sorted(x for x in set(seqs) if seqs.count(x) > 1)[:10]}")
        missing = set(range(N)) - set(seqs)
        assert len(missing) <= kills, f"{len(missing)} lost with {kills} kills"
        assert set(seqs) <= set(range(N))
        print(f"consumer kills: {kills}, messages: {N}, missing: {len(missing)}")
        assert q.qsize() == 0


# ---- recovery running while consumers attach -------------------------------------

HELPER = """
import fastq, os, sys, time
q = fastq.Queue.open(sys.argv[1], serializer="raw")
q.put(b"-%d" % os.getpid())  # takes a slot, then stays alive and idle
print("up", flush=True)
time.sleep(120)
"""


class SlowLoads(Passthrough):
    def loads(self, data):
        time.sleep(0.002)  # keep the message claimed for a while
        return data


def test_recovery_never_requeues_a_live_consumers_claim(tmp_path, procs, child_env):
    import subprocess
    import sys
    import threading
    path = str(tmp_path / "rq.seg")
    N = 6000
    q = fastq.Queue.create(path, capacity=1 << 20, serializer="raw")
    try:
        q.put_many([b"%d" % i for i in range(N)])
        fixed = fastq.Queue.open(path, serializer="raw")
        fixed.get_nowait()  # attached: slot 1 (our q took slot 0)
        fixed.put(b"0")     # ... and put it back (the queue is FIFO: it's last now)
        low = fastq.Queue.open(path, serializer="raw")
        low.put(b"low")     # slot 2: freed below, after the helpers took slots 3..32
        # idle live processes attached to the queue: recovery's liveness scan of
        # their slots (reading /proc) widens the window
        helpers = [procs.add(subprocess.Popen([sys.executable, "-c", HELPER, path],
                                              stdout=subprocess.PIPE, env=child_env()))
                   for _ in range(30)]
        for h in helpers:
            assert h.stdout.readline() == b"up\n"
        low.close()  # the fresh handles below take this low slot, below 30 live ones
        got_fresh, got_fixed = [], []
        stop = threading.Event()

        def recoverer():  # what any waiter does after 0.2 s without progress
            h = fastq.Queue.open(path, serializer="raw")
            while not stop.is_set():
                h.recover()
            h.close()

        def fresh_consumer():  # a new handle, hence a newly attached slot, for every get
            while not stop.is_set():
                h = fastq.Queue.open(path, serializer=SlowLoads())
                try:
                    got_fresh.append(h.get(timeout=0.5))
                except fastq.Empty:
                    return
                finally:
                    h.close()

        def fixed_consumer():
            while not stop.is_set():
                try:
                    got_fixed.append(fixed.get(timeout=0.5))
                except fastq.Empty:
                    return
                time.sleep(0.001)

        ts = [threading.Thread(target=f, daemon=True)
              for f in (recoverer, fresh_consumer, fixed_consumer)]
        for t in ts:
            t.start()
        deadline = time.monotonic() + 8
        try:
            while time.monotonic() < deadline and any(t.is_alive() for t in ts[1:]):
                allm = got_fresh + got_fixed
                if len(allm) != len(set(allm)):
                    break
                time.sleep(0.05)
        finally:
            stop.set()
            for t in ts:
                t.join(10)
        allm = got_fresh + got_fixed
        dups = sorted({m for m in allm if allm.count(m) > 1})[:10]
        assert not dups, f"delivered twice: {dups}"
        fixed.close()
    finally:
        q.close()

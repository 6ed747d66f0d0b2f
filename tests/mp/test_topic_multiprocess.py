"""fastq.Topic across real processes: fan-out to subscriber processes,
several publishers, late joiners, consumer groups, durable subscriptions
resumed after SIGKILL, a group member killed holding a delivery (or, with
prefetch, several), overflow="drop" exactness under lapping, dead subscribers
and the subscriber table.

Every check is message by message: publisher id + sequence number in each
message (and for raw self-checking payloads, a body derived from both), so
loss, duplication, reordering and torn messages are all detected.

Children are forked (``CTX``) and open the topic by path themselves; each
runs under ``_guarded``, which writes its return value or its traceback to a
file.  Every wait is bounded; leftovers are SIGKILLed by the ``procs``
fixture.  The machine has 2 cores: at most 7 processes at a time.

Bookkeeping for the SIGKILL tests (what the application can know): a child
writes a record *before* each get()/receive() (INTENT) and one *after* it
returned (GOT), and after ack() returned (ACKED), each a single O_APPEND
write.  So after a kill we know whether a call was in progress, but not
whether a get() in progress had already returned (then the message is
consumed: the application lost it with the process) or was still inside the
call (then the claim must go to the next subscriber).
"""
from __future__ import annotations

import multiprocessing as mp
import ast
import os
import pickle
import random
import re
import signal
import struct
import time
import traceback

import pytest

import fastq

from support.api import check_subscriber_limit, drain_nowait
from support.chaos import read_recs
from support.messages import Patterned, send_all
from support.waiting import wait_for

np = pytest.importorskip("numpy")

pytestmark = pytest.mark.usefixtures("fastq_dir")

CTX = mp.get_context("fork")
HDR = struct.Struct("<II")          # publisher id, seq
MSGS = Patterned(HDR)
U64 = struct.Struct("<Q")
REC = struct.Struct("<qq")          # child record: kind, seq
INTENT, GOT, ACKED = 1, 2, 3
SIZES = (8, 9, 16, 24, 40, 100, 250, 700)


# ---- messages -------------------------------------------------------------------


class Nap:
    """Unpickled as time.sleep(0.0003): a get() with the pickle serializer
    then spends a good share of its time inside the call, message claimed."""

    def __reduce__(self):
        return (time.sleep, (0.0003,))


class Touch:
    """Unpickled as open(path, "w"): creates the file (a flag)."""

    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return (open, (self.path, "w"))


class LongSleep:
    """Unpickled as time.sleep(60): get() stalls, message claimed."""

    def __reduce__(self):
        return (time.sleep, (60,))


# ---- children -------------------------------------------------------------------


def _guarded(out, fn, args):
    try:
        payload = ("ok", fn(*args))
    except BaseException:  # noqa: BLE001
        payload = ("err", traceback.format_exc())
    with open(out + ".tmp", "wb") as f:
        pickle.dump(payload, f)
    os.rename(out + ".tmp", out)


def start(procs, tmp_path, name, fn, *args):
    out = str(tmp_path / f"{name}.result")
    p = procs.add(CTX.Process(target=_guarded, args=(out, fn, args), name=name))
    p.out = out
    p.start()
    return p


def result(p, timeout):
    """The child's return value (it is killed if it runs past timeout)."""
    p.join(timeout)
    if p.is_alive():
        p.kill()
        p.join(5)
        raise AssertionError(f"{p.name} still running after {timeout} s")
    try:
        with open(p.out, "rb") as f:
            kind, val = pickle.load(f)
    except FileNotFoundError:
        raise AssertionError(f"{p.name} exited with {p.exitcode} without a result") from None
    if kind == "err":
        raise AssertionError(f"{p.name} failed:\n{val}")
    assert p.exitcode == 0, f"{p.name} exited with {p.exitcode}"
    return val


def kill(p):
    os.kill(p.pid, signal.SIGKILL)
    p.join(10)
    assert not p.is_alive()


def wait_event(ev, what, timeout=30):
    assert ev.wait(timeout), f"timed out waiting for {what}"


def n_recs(path, kind):
    return sum(1 for k, _ in read_recs(path, REC) if k == kind)


def late_ones(seqs):
    """Elements smaller than one received before them (out of order)."""
    out, top = [], -1
    for s in seqs:
        if s < top:
            out.append(s)
        else:
            top = s
    return out


def until_shutdown(s, how="get_many"):
    """Every message s receives until the topic is shut down and drained."""
    got = []
    if how == "iter":
        for m in s:
            got.append(m)
        return got
    while True:
        try:
            if how == "get_many":
                got.extend(s.get_many(512, timeout=30))
            elif how == "get":
                got.append(s.get(timeout=30))
            elif how == "receive":
                d = s.receive(timeout=30)
                got.append(d.value)
                d.ack()
            else:
                raise ValueError(how)
        except fastq.ShutDown:
            return got


def sub_reader(path, kw, how, ready):
    t = fastq.Topic.open(path, serializer="raw")
    s = t.subscribe(**kw)
    ready.set()
    got = until_shutdown(s, how)
    s.close()
    t.close()
    return [MSGS.check(m) for m in got]


def publisher(path, pub, n, batch):
    t = fastq.Topic.open(path, serializer="raw")
    rng = random.Random(pub)
    send_all(t.publish, t.publish_many, [MSGS.make(pub, i, rng.choice(SIZES)) for i in range(n)],
             batch)
    t.close()


def check_all(got, counts, who):
    """A plain subscriber's view: every message of every publisher, each
    once, intact, in per-publisher order."""
    bad = [(p, s) for p, s, ok in got if not ok]
    assert not bad, f"{who}: {len(bad)} corrupt messages, e.g. {bad[:3]}"
    for pub, n in counts.items():
        seqs = [s for p, s, _ in got if p == pub]
        if seqs != list(range(n)):
            dup = len(seqs) - len(set(seqs))
            missing = sorted(set(range(n)) - set(seqs))
            raise AssertionError(f"{who}: publisher {pub}: {len(seqs)} of {n} messages, "
                                 f"{dup} duplicated, missing {missing[:5]}, "
                                 f"late {late_ones(seqs)[:5]}")
    assert len(got) == sum(counts.values()), f"{who}: messages from unknown publishers"


def check_group(members, counts, who):
    """A group's view: the union is every message once; per-publisher order
    within each member."""
    for i, got in enumerate(members):
        assert all(ok for _, _, ok in got), f"{who} member {i}: corrupt messages"
        for pub in counts:
            seqs = [s for p, s, _ in got if p == pub]
            assert not late_ones(seqs), f"{who} member {i}: publisher {pub} out of order"
    allm = [(p, s) for got in members for p, s, _ in got]
    dup = len(allm) - len(set(allm))
    assert dup == 0, f"{who}: {dup} messages delivered to two members"
    expected = {(p, s) for p, n in counts.items() for s in range(n)}
    missing = expected - set(allm)
    assert not missing, f"{who}: {len(missing)} lost, e.g. {sorted(missing)[:5]}"
    assert set(allm) == expected


# ---- 1. one publisher, three subscriber processes -------------------------------------


def test_one_publisher_to_three_subscriber_processes(tmp_path, procs):
    N = 20000
    with fastq.Topic("fan1", capacity=1 << 16, serializer="raw") as t:
        hows = ["iter", "get_many", "receive"]
        readies = [CTX.Event() for _ in hows]
        subs = [start(procs, tmp_path, f"sub-{how}", sub_reader, t.path, {}, how, ev)
                for how, ev in zip(hows, readies)]
        for ev in readies:
            wait_event(ev, "the subscribers")
        pub = start(procs, tmp_path, "pub", publisher, t.path, 0, N, 0)
        result(pub, 60)
        t.shutdown()
        for p in subs:
            check_all(result(p, 60), {0: N}, p.name)


# ---- 2. three publisher processes, several subscribers --------------------------------


def test_three_publishers_several_subscribers_and_a_group(tmp_path, procs):
    N = 6000
    with fastq.Topic("fan3", capacity=1 << 16, serializer="raw") as t:
        specs = [("plain-get", {}, "get"), ("plain-many", {}, "get_many"),
                 ("g-many", {"group": "g"}, "get_many"), ("g-receive", {"group": "g"}, "receive")]
        readies = [CTX.Event() for _ in specs]
        subs = [start(procs, tmp_path, name, sub_reader, t.path, kw, how, ev)
                for (name, kw, how), ev in zip(specs, readies)]
        for ev in readies:
            wait_event(ev, "the subscribers")
        pubs = [start(procs, tmp_path, f"pub{i}", publisher, t.path, i, N, batch)
                for i, batch in enumerate([0, 50, 7])]
        for p in pubs:
            result(p, 120)
        t.shutdown()
        res = {p.name: result(p, 60) for p in subs}
        counts = {0: N, 1: N, 2: N}
        check_all(res["plain-get"], counts, "plain-get")
        check_all(res["plain-many"], counts, "plain-many")
        check_group([res["g-many"], res["g-receive"]], counts, "group g")
        print("group split:", len(res["g-many"]), len(res["g-receive"]))


# ---- 3. late joiners ------------------------------------------------------------------


def paused_publisher(path, K, M, counter, paused, go):
    t = fastq.Topic.open(path, serializer="raw")
    for i in range(K):
        t.publish(MSGS.make(0, i, 16), timeout=30)
        counter.value = i + 1
    paused.set()
    if not go.wait(30):
        raise RuntimeError("no go")
    for i in range(K, K + M):
        t.publish(MSGS.make(0, i, 16), timeout=30)
        counter.value = i + 1  # after publish() returned
        if i % 20 == 0:
            time.sleep(0.001)  # a stream that lasts a while, for the mid-stream joiner
    t.close()


def late_joiner(path, start, paused, ready, counter, join_at):
    t = fastq.Topic.open(path, serializer="raw")
    if paused is not None:
        if not paused.wait(30):
            raise RuntimeError("the publisher never paused")
    deadline = time.monotonic() + 30
    while counter.value < join_at:
        if time.monotonic() > deadline:
            raise RuntimeError("the publisher never got there")
        time.sleep(0.001)
    c0 = counter.value  # publish() of 0..c0-1 returned before subscribe() was called
    s = t.subscribe(start=start)
    c1 = counter.value  # publish() of c1+1.. starts after subscribe() returned
    if ready is not None:
        ready.set()
    got = [MSGS.check(m) for m in until_shutdown(s)]
    return c0, c1, got


def test_late_joiners_latest_and_earliest(tmp_path, procs):
    K, M = 2000, 10000
    total = K + M
    counter = CTX.RawValue("q", 0)
    paused, go = CTX.Event(), CTX.Event()
    ready_a, ready_b = CTX.Event(), CTX.Event()
    with fastq.Topic("late", capacity=4 << 20, serializer="raw") as t:
        holder = t.subscribe()  # reads nothing until the end: nothing is released
        pub = start(procs, tmp_path, "pub", paused_publisher, t.path, K, M, counter, paused, go)
        a = start(procs, tmp_path, "latest-at-pause", late_joiner, t.path, "latest", paused,
                  ready_a, counter, 0)
        b = start(procs, tmp_path, "earliest-at-pause", late_joiner, t.path, "earliest", paused,
                  ready_b, counter, 0)
        c = start(procs, tmp_path, "latest-mid-stream", late_joiner, t.path, "latest", None,
                  None, counter, K + M // 4)
        wait_event(ready_a, "joiner a")
        wait_event(ready_b, "joiner b")
        go.set()
        result(pub, 60)
        t.shutdown()
        ra, rb, rc = result(a, 60), result(b, 60), result(c, 60)
        held = [MSGS.check(m) for m in until_shutdown(holder)]

    c0, c1, got = ra
    assert (c0, c1) == (K, K)
    check_all([(p, s - K, ok) for p, s, ok in got], {0: M}, "latest at the pause")
    _, _, got = rb
    check_all(got, {0: total}, "earliest at the pause (nothing released yet)")
    check_all(held, {0: total}, "holder")

    c0, c1, got = rc
    assert all(ok for _, _, ok in got)
    seqs = [s for _, s, _ in got]
    first = seqs[0] if seqs else total
    assert seqs == list(range(first, total)), "a contiguous run to the end"
    assert c0 <= first, f"got {first}, published before subscribe() was called (c0={c0})"
    assert first <= c1 + 1, f"first is {first}, but {c1 + 1}.. came after subscribe() returned"
    print(f"mid-stream joiner: c0={c0} first={first} c1={c1}")


# ---- 4. a group of three splitting 300k messages, another group, a plain subscriber -----


def raw_consumer(path, kw, ready):
    t = fastq.Topic.open(path, serializer="raw")
    s = t.subscribe(**kw)
    ready.set()
    parts = []
    while True:
        try:
            parts.append(b"".join(s.get_many(4096, timeout=30)))
        except fastq.ShutDown:
            break
    s.close()
    t.close()
    return b"".join(parts)


def test_group_of_three_splits_300k_and_every_group_gets_all(tmp_path, procs):
    N = 300_000
    with fastq.Topic("g300k", capacity=1 << 20, serializer="raw") as t:
        specs = [("A0", {"group": "A"}), ("A1", {"group": "A"}), ("A2", {"group": "A"}),
                 ("B0", {"group": "B"}), ("B1", {"group": "B"}), ("plain", {})]
        readies = [CTX.Event() for _ in specs]
        cons = [start(procs, tmp_path, name, raw_consumer, t.path, kw, ev)
                for (name, kw), ev in zip(specs, readies)]
        for ev in readies:
            wait_event(ev, "the consumers")
        packed = np.arange(N, dtype="<u8").tobytes()
        B = 2000
        for i in range(0, N, B):
            t.publish_many([packed[8 * j:8 * j + 8] for j in range(i, min(N, i + B))], timeout=60)
        t.shutdown()
        got = {p.name: np.frombuffer(result(p, 120), dtype="<u8") for p in cons}

    every = np.arange(N, dtype="<u8")
    for name, arr in got.items():
        assert np.all(np.diff(arr.astype(np.int64)) > 0), f"{name}: not in publish order"
    for group, names in (("A", ["A0", "A1", "A2"]), ("B", ["B0", "B1"])):
        allm = np.concatenate([got[n] for n in names])
        assert len(allm) == N, f"group {group}: {len(allm)} messages for {N} published"
        assert np.array_equal(np.sort(allm), every), f"group {group}: lost or duplicated"
    assert np.array_equal(got["plain"], every)
    print("split:", {n: len(a) for n, a in got.items()})


# ---- 5. durable subscription resumed after SIGKILL ------------------------------------


def durable_reader(path, name, rec_path, ready, how, hang_at):
    """Reads the durable subscription `name` (pickle serializer) forever,
    recording INTENT before each call and GOT/ACKED after."""
    t = fastq.Topic.open(path)
    s = t.subscribe(name=name)
    fd = os.open(rec_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    ready.set()
    while True:
        os.write(fd, REC.pack(INTENT, -1))
        if how == "get":
            seq = s.get(timeout=30)[0]
            os.write(fd, REC.pack(GOT, seq))
            if seq % 2:
                time.sleep(0.0003)  # some time between calls too, for the random kills
        else:
            d = s.receive(timeout=30)
            seq = d.value[0]
            os.write(fd, REC.pack(GOT, seq))
            if seq == hang_at:
                time.sleep(60)  # killed holding the unacked delivery
            if seq % 3 == 1:
                time.sleep(0.0003)  # received, not acked yet
            d.ack()
            os.write(fd, REC.pack(ACKED, seq))
            if seq % 3 == 2:
                time.sleep(0.0003)  # between calls


def durable_resumer(path, name, how, end, stall_seq):
    """Subscribes with `name` in a new process; reads until the END marker
    (seq `end`), then runs recovery and takes whatever else is there.
    Returns [(seq, redelivered or None)] and the index of END."""
    raw = stall_seq is not None
    t = fastq.Topic.open(path, serializer="raw" if raw else "pickle")
    s = t.subscribe(name=name)

    def decode(v):
        if not raw:
            return v[0]
        return stall_seq if b"sleep" in v else pickle.loads(v)[0]

    def one(block):
        if how == "get":
            return decode(s.get(block=block, timeout=30 if block else None)), None
        d = s.receive(block=block, timeout=30 if block else None)
        d.ack()
        return decode(d.value), d.redelivered

    out = []
    while True:
        seq, flag = one(True)
        if seq == end:
            break
        out.append((seq, flag))
    end_index = len(out)
    t.recover()  # the killed reader is dead (joined): its claim is freed now
    while True:
        try:
            out.append(one(False))
        except fastq.Empty:
            break
    return out, end_index


def run_durable_kill(tmp_path, procs, *, how, N, msgs, kill_when, hang_at=None,
                     stall_seq=None):
    """Start a durable reader, publish msgs, kill it when kill_when(rec_path)
    is true, publish END, resume in a new process.  Returns (records of the
    killed reader, resumer's [(seq, redelivered)], index of END)."""
    rec = str(tmp_path / "reader.rec")
    with fastq.Topic("dur", capacity=1 << 20) as t:
        ready = CTX.Event()
        p = start(procs, tmp_path, "reader", durable_reader, t.path, "d", rec, ready, how,
                  hang_at)
        wait_event(ready, "the durable reader")
        t.publish_many(msgs, timeout=10)  # 1 MiB holds them all: nobody waits for the dead
        wait_for(lambda: kill_when(rec), "the reader to get there")
        assert p.is_alive(), f"the reader died by itself: {p.exitcode}"
        kill(p)
        t.publish((N, None))  # END
        r = start(procs, tmp_path, "resumer", durable_resumer, t.path, "d", how, N, stall_seq)
        out, end_index = result(r, 60)
    return read_recs(rec, REC), out, end_index


def _kill_at_random(tmp_path, procs, seed, how, kind):
    """run_durable_kill of 3000 messages, the reader killed once it logged a random
    number (100 .. 2000, from seed) of records of kind: (N, that number, its result)"""
    N = 3000
    target = random.Random(seed).randint(100, 2000)
    return N, target, run_durable_kill(
        tmp_path, procs, how=how, N=N, msgs=[(i, Nap()) for i in range(N)],
        kill_when=lambda rec: n_recs(rec, kind) >= target)


@pytest.mark.parametrize("seed", [1, 2, 3, 4])
def test_durable_get_resumes_after_sigkill_at_a_random_moment(seed, tmp_path, procs):
    N, target, (recs, out, end_index) = _kill_at_random(tmp_path, procs, seed, "get", GOT)
    R = [s for k, s in recs if k == GOT]
    r = len(R)
    assert R == list(range(r)), "the killed reader got 0, 1, 2, ... in order"
    assert target <= r < N, "killed while reading"
    in_call = recs[-1][0] == INTENT  # killed inside get() or before recording its result
    G = [s for s, _ in out]
    assert len(G) == len(set(G)), "the resumer got a message twice"
    dup = sorted(set(R) & set(G))
    assert not dup, (f"get() returned {dup} to the killed reader and again to the resumer "
                     f"(get(): nothing duplicated; in_call={in_call}, r={r})")
    missing = set(range(N)) - set(R) - set(G)
    if in_call:
        # the message its last get() was working on: redelivered if the kill
        # came inside the call, the application's loss if get() had returned
        assert missing <= {r}, f"lost {sorted(missing)[:5]} (r={r})"
    else:
        assert not missing, f"lost {sorted(missing)[:5]} (r={r}, no call in progress)"
    assert set(G) <= set(range(N))
    late = late_ones(G)
    assert late in ([], [r]), f"out of order: {late[:5]} (only a redelivered claim may be late)"
    assert all(s == r for s in G[end_index:]), "after END: at most the freed claim"
    print(f"seed {seed}: killed after {r} (in call: {in_call}), resumer got {len(G)} "
          f"from {G[0] if G else None}, missing {sorted(missing)}")


def test_durable_get_killed_inside_get_claim_goes_to_the_next_subscriber(tmp_path, procs):
    N, k = 500, 123
    flag = str(tmp_path / "claimed")
    msgs = [(i, None) for i in range(N)]
    msgs[k] = (k, Touch(flag), LongSleep())  # get() of k stalls, k claimed
    recs, out, end_index = run_durable_kill(
        tmp_path, procs, how="get", N=N, msgs=msgs,
        kill_when=lambda rec: os.path.exists(flag), stall_seq=k)
    R = [s for kd, s in recs if kd == GOT]
    assert R == list(range(k)) and recs[-1][0] == INTENT
    G = [s for s, _ in out]
    assert len(G) == len(set(G)), "the resumer got a message twice"
    assert sorted(G) == list(range(k, N)), "everything the killed reader had not returned"
    assert late_ones(G) in ([], [k])


@pytest.mark.parametrize("seed", [1, 2, 3, 4])
def test_durable_receive_resumes_after_sigkill_at_a_random_moment(seed, tmp_path, procs):
    N, target, (recs, out, end_index) = _kill_at_random(tmp_path, procs, seed, "receive", ACKED)
    A = [s for k, s in recs if k == ACKED]
    a = len(A)
    assert A == list(range(a)) and target <= a < N
    got_by_reader = [s for k, s in recs if k == GOT]
    assert got_by_reader == list(range(len(got_by_reader)))
    assert len(got_by_reader) in (a, a + 1)
    last = recs[-1][0]
    G = [s for s, _ in out]
    flags = dict(out)
    assert len(G) == len(set(G)), "the resumer got a message twice"
    assert not set(A) & set(G), "an acknowledged message was delivered again"
    redelivered = [s for s, f in out if f]
    assert redelivered in ([], [a]), f"redelivered {redelivered[:5]}: only {a} was held"
    missing = set(range(N)) - set(A) - set(G)
    if last == GOT:  # a received; ack() was called or not: if it came back, flagged
        assert missing <= {a}
        if a in flags:
            assert flags[a] is True, "an unacked delivery of the killed reader not flagged"
    else:
        assert not missing, f"lost {sorted(missing)[:5]} (a={a}, last record {last})"
        if last == ACKED:
            assert flags[a] is False, "a message nobody had received flagged redelivered"
    assert late_ones(G) in ([], [a])
    print(f"seed {seed}: acked {a}, last record {last}, resumer from "
          f"{G[0] if G else None} redelivered={redelivered}")


def test_durable_unacked_delivery_of_killed_process_comes_back_redelivered(tmp_path, procs):
    N, k = 500, 77
    recs, out, _ = run_durable_kill(
        tmp_path, procs, how="receive", N=N, msgs=[(i, None) for i in range(N)],
        kill_when=lambda rec: n_recs(rec, GOT) > k, hang_at=k)
    assert [s for kd, s in recs if kd == ACKED] == list(range(k))
    G = [s for s, _ in out]
    assert len(G) == len(set(G)) and sorted(G) == list(range(k, N))
    assert [s for s, f in out if f] == [k], "exactly the unacked one comes back redelivered"
    assert late_ones(G) in ([], [k])


# ---- 6. a group member killed holding a delivery ----------------------------------------


def group_member_holding(path, how, flag, ready):
    t = fastq.Topic.open(path)
    s = t.subscribe(group="w")
    ready.set()
    if how == "receive":
        d = s.receive(timeout=30)
        with open(flag + ".tmp", "w") as f:
            f.write(d.value)
        os.rename(flag + ".tmp", flag)
        time.sleep(60)  # killed before acking
    else:
        s.get(timeout=30)  # the message stalls get() itself (Touch + LongSleep)
        raise RuntimeError("get() returned")


def decode_job(b):
    """A raw view of the group test's messages (never unpickles the staller)."""
    return "job-1" if b"sleep" in b else pickle.loads(b)


@pytest.mark.parametrize("how", ["receive", "get"])
def test_group_member_killed_holding_a_message_another_member_gets_it(how, tmp_path, procs):
    flag = str(tmp_path / "held")
    with fastq.Topic("grpkill", capacity=1 << 16) as t, \
            fastq.Topic.open("grpkill", serializer="raw") as raw:
        me = raw.subscribe(group="w")
        other_group = raw.subscribe(group="other")
        ready = CTX.Event()
        p = start(procs, tmp_path, "member", group_member_holding, t.path, how, flag, ready)
        wait_event(ready, "the member")
        if how == "receive":
            t.publish_many(["job-1", "job-2"])
        else:  # job-1 stalls the member inside get(): claimed, never returned
            t.publish_many([("job-1", Touch(flag), LongSleep()), "job-2"])
        wait_for(lambda: os.path.exists(flag), "the member to take a message")
        held = open(flag).read() if how == "receive" else "job-1"
        assert held in ("job-1", "job-2")
        d = me.receive(timeout=5)
        assert not d.redelivered
        assert decode_job(d.value) != held, "the held message was given to a 2nd member"
        d.ack()
        kill(p)
        d = me.receive(timeout=5)  # waits, runs recovery, gets the dead member's message
        assert decode_job(d.value) == held
        if how == "receive":
            assert d.redelivered is True, "an unacked delivery comes back flagged"
        d.ack()
        with pytest.raises(fastq.Empty):
            me.get(timeout=0.5)
        # another group got both, once each
        assert sorted(decode_job(m) for m in drain_nowait(other_group)) == [
            "job-1", "job-2"]


# ---- 6b. a prefetch subscription killed holding several deliveries ----------------------


def prefetch_holder(path, kw, k, flag, ready):
    """Subscribes with prefetch k, receives k deliveries, records their values
    in flag, and waits to be killed without acking any."""
    t = fastq.Topic.open(path)
    s = t.subscribe(prefetch=k, **kw)
    ready.set()
    ds = [s.receive(timeout=30) for _ in range(k)]
    with open(flag + ".tmp", "w") as f:
        f.write(repr([(d.value, d.redelivered) for d in ds]))
    os.rename(flag + ".tmp", flag)
    time.sleep(60)  # killed holding all k


def read_flag(flag):
    with open(flag) as f:
        return ast.literal_eval(f.read())


@pytest.mark.parametrize("kw", [{"group": "w"}, {"name": "dn"}], ids=["group", "durable"])
def test_prefetch_subscription_killed_with_k_unacked_all_come_back(kw, tmp_path, procs):
    """A child with prefetch k (group member, or subscriber of a durable name)
    receives k deliveries and is SIGKILLed before acking: after recovery,
    every one of them goes to the survivor (the group's other member, or the
    next subscriber of the name), flagged redelivered; the other messages come
    once each, in order, not flagged."""
    k = 4 if "group" in kw else 2
    N = 40
    flag = str(tmp_path / "held")
    with fastq.Topic("pfkill", capacity=1 << 16) as t:
        me = t.subscribe(**kw) if "group" in kw else None  # idle until the kill
        ready = CTX.Event()
        p = start(procs, tmp_path, "holder", prefetch_holder, t.path, kw, k, flag, ready)
        wait_event(ready, "the holder")
        t.publish_many(range(N))
        wait_for(lambda: os.path.exists(flag), "the holder to receive its deliveries")
        held = read_flag(flag)
        assert [v for v, _ in held] == list(range(k)), "k deliveries, in order"
        assert not any(r for _, r in held)
        if me is not None:  # the survivor sees nothing of them meanwhile
            d = me.receive(timeout=5)
            assert d.value == k and not d.redelivered
            d.ack()
        kill(p)
        t.recover()
        if me is None:  # the next subscriber of the durable name
            me = t.subscribe(**kw)
        got = []
        while True:
            try:
                d = me.receive(block=False)
            except fastq.Empty:
                break
            got.append((d.value, d.redelivered))
            d.ack()
        back = sorted(v for v, r in got if r)
        assert back == list(range(k)), f"the killed holder's deliveries come back: {got}"
        rest = [v for v, r in got if not r]
        first = k + 1 if "group" in kw else k
        assert rest == list(range(first, N)), "the others once each, in order, unflagged"
        assert me.lag == 0


# ---- 7. overflow="drop": exact dropped count, no torn message ----------------------------


def drop_publisher(path, M, seed):
    t = fastq.Topic.open(path, serializer="raw")
    rng = random.Random(seed)
    for i in range(M):
        t.publish(MSGS.make(0, i, rng.randint(8, 1500)))  # never waits on a drop topic
    t.close()


def slow_drop_subscriber(path, how, ready, done):
    t = fastq.Topic.open(path, serializer="raw")
    s = t.subscribe()
    ready.set()
    seqs, bad, checks = [], 0, []

    def take(batch):
        nonlocal bad
        for m in batch:
            _, seq, ok = MSGS.check(m)
            bad += not ok
            seqs.append(seq)
        checks.append((len(seqs), seqs[-1], s.dropped))

    def one(block, timeout):
        if how == "get":
            return [s.get(block=block, timeout=timeout)]
        return s.get_many(8, block=block, timeout=timeout)

    while True:
        try:
            take(one(True, 0.2))
        except fastq.Empty:
            if done.is_set():  # the publisher has exited: take what is left
                while True:
                    try:
                        take(one(False, None))
                    except fastq.Empty:
                        break
                break
            continue
        time.sleep(0.001)  # slow: lapped over and over
    return seqs, bad, checks, s.dropped


@pytest.mark.parametrize("how", ["get", "get_many"])
def test_drop_lapped_subscriber_exact_dropped_and_never_torn(how, tmp_path, procs):
    M = 150_000
    with fastq.Topic("drop", capacity=1 << 14, overflow="drop", serializer="raw") as t:
        ready, done = CTX.Event(), CTX.Event()
        sub = start(procs, tmp_path, "sub", slow_drop_subscriber, t.path, how, ready, done)
        wait_event(ready, "the subscriber")
        pub = start(procs, tmp_path, "pub", drop_publisher, t.path, M, 5)
        result(pub, 60)
        done.set()
        seqs, bad, checks, dropped = result(sub, 60)
    assert bad == 0, f"{bad} torn or corrupt messages returned"
    assert seqs, "nothing received"
    assert not late_ones(seqs) and len(seqs) == len(set(seqs)), "sequence not strictly increasing"
    # after each call: everything before the last returned message was
    # either received or counted as dropped
    wrong = [(n, last, d) for n, last, d in checks if d != last + 1 - n]
    assert not wrong, f"dropped != last+1-received after some calls: {wrong[:5]}"
    assert seqs[-1] == M - 1, "the last message published is retained and received"
    assert len(seqs) + dropped == M
    assert dropped > M // 2 and len(seqs) > 50, (len(seqs), dropped)
    print(f"{how}: received {len(seqs)}, dropped {dropped}")


# ---- 8. dead subscribers and block overflow -------------------------------------------


def idle_subscriber(path, kw, ready):
    t = fastq.Topic.open(path, serializer="raw")
    s = t.subscribe(**kw)  # noqa: F841  (held, never read)
    ready.set()
    time.sleep(120)


def fill(t, size=100):
    n = 0
    while True:
        try:
            t.publish_nowait(MSGS.make(0, n, size))
        except fastq.Full:
            return n
        n += 1
        assert n < 100_000, "a subscriber that reads nothing never held the publisher back"


def test_killed_subscriber_stops_blocking_publishers(tmp_path, procs):
    with fastq.Topic("deadsub", capacity=4096, serializer="raw") as t:
        ready = CTX.Event()
        p = start(procs, tmp_path, "idle", idle_subscriber, t.path, {}, ready)
        wait_event(ready, "the subscriber")
        n = fill(t)
        assert n > 0
        with pytest.raises(fastq.Full):  # alive: recovery (after 0.2 s) must not free it
            t.publish(MSGS.make(0, n, 100), timeout=0.5)
        kill(p)
        deadline = time.monotonic() + 10
        total = 50 * n  # far more than the ring holds
        for i in range(n, n + total):
            left = deadline - time.monotonic()
            assert left > 0, f"published only {i - n} of {total} in 10 s after the kill"
            t.publish(MSGS.make(0, i, 100), timeout=left)
        t.recover()
        assert not [r for r in t.subscribers() if r.pid == p.pid and r.alive]


def test_killed_durable_subscriber_keeps_its_position_and_holds_publishers(tmp_path, procs):
    with fastq.Topic("deaddur", capacity=4096, serializer="raw") as t:
        ready = CTX.Event()
        p = start(procs, tmp_path, "idle", idle_subscriber, t.path, {"name": "keep"}, ready)
        wait_event(ready, "the subscriber")
        n = fill(t)
        kill(p)
        with pytest.raises(fastq.Full):  # by design: a durable position holds them back
            t.publish(MSGS.make(0, n, 100), timeout=1.0)
        t.recover()
        rows = [r for r in t.subscribers() if r.name == "keep"]
        assert len(rows) == 1, t.subscribers()
        assert rows[0].pid is None and not rows[0].alive and rows[0].lag == n
        s = t.subscribe(name="keep")
        got = drain_nowait(s, 100)
        assert [MSGS.check(m)[1] for m in got] == list(range(n))
        t.publish_nowait(MSGS.make(0, n, 100))
        assert MSGS.check(s.get(timeout=1))[1] == n


# ---- 9. the subscriber table ---------------------------------------------------------


def try_subscribe(path):
    t = fastq.Topic.open(path, serializer="raw")
    try:
        t.subscribe()
    except fastq.SubscriberLimit as e:
        return "limit", str(e)
    return "ok", ""


def test_subscriber_table_full_then_freed_by_close_and_by_death(tmp_path, procs):
    with fastq.Topic("limit", capacity=1 << 16, max_subscribers=4, serializer="raw") as t:
        ready = CTX.Event()
        idle = start(procs, tmp_path, "idle", idle_subscriber, t.path, {}, ready)
        wait_event(ready, "the subscriber")
        mine = [t.subscribe() for _ in range(3)]
        with pytest.raises(fastq.SubscriberLimit) as ei:
            t.subscribe()
        check_subscriber_limit(ei.value, 4)
        # the same from another process
        kind, text = result(start(procs, tmp_path, "other1", try_subscribe, t.path), 30)
        assert kind == "limit", "a 5th subscriber in another process"
        assert "max_subscribers" in text or re.search(r"\b4\b", text), text
        mine.pop().close()
        mine.append(t.subscribe())  # the closed one's entry
        with pytest.raises(fastq.SubscriberLimit):
            t.subscribe()
        kill(idle)
        t.recover()
        mine.append(t.subscribe())  # the killed one's entry
        rows = t.subscribers()
        assert len(rows) == 4 and all(r.alive and r.pid == os.getpid() for r in rows), rows
        with pytest.raises(fastq.SubscriberLimit):
            t.subscribe()
        t.publish(b"x")
        assert all(s.get(timeout=1) == b"x" for s in mine)


# ---- more: drop-topic durable names, publishers killed mid-stream ------------------------


def durable_drop_reader(path, name, n, rec_path, ready):
    t = fastq.Topic.open(path, serializer="raw")
    s = t.subscribe(name=name)
    ready.set()
    fd = os.open(rec_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    for _ in range(n):
        os.write(fd, REC.pack(GOT, MSGS.check(s.get(timeout=30))[1]))
    time.sleep(120)


def test_drop_topic_durable_name_reattachable_after_its_holder_is_killed(tmp_path, procs):
    rec = str(tmp_path / "rec")
    with fastq.Topic("dropdur", capacity=1 << 16, overflow="drop", serializer="raw") as t:
        ready = CTX.Event()
        p = start(procs, tmp_path, "holder", durable_drop_reader, t.path, "x", 3, rec, ready)
        wait_event(ready, "the holder")
        with pytest.raises(RuntimeError):
            t.subscribe(name="x")  # attached (alive) elsewhere
        t.publish_many([MSGS.make(0, i, 32) for i in range(10)])
        wait_for(lambda: n_recs(rec, GOT) == 3, "the holder to read 3")
        kill(p)
        t.recover()
        s = t.subscribe(name="x")  # the dead holder's name is free again
        assert [MSGS.check(m)[1] for m in s.get_many(100, timeout=5)] == list(range(3, 10))
        assert s.dropped == 0


def endless_publisher(path, pub):
    t = fastq.Topic.open(path, serializer="raw")
    rng = random.Random(pub)
    i = 0
    while True:
        t.publish(MSGS.make(pub, i, rng.choice(SIZES)), timeout=30)
        i += 1


@pytest.mark.parametrize("seed", [1, 2])
def test_publisher_killed_mid_stream_others_unaffected(seed, tmp_path, procs):
    """A publisher SIGKILLed while publishing: its messages arrive as an
    unbroken prefix 0..m-1, a live publisher's all arrive, and nobody hangs."""
    N = 20000
    rng = random.Random(seed)
    with fastq.Topic("pubkill", capacity=1 << 14, serializer="raw") as t:
        ready = CTX.Event()
        sub = start(procs, tmp_path, "sub", sub_reader, t.path, {}, "get_many", ready)
        wait_event(ready, "the subscriber")
        victim = start(procs, tmp_path, "victim", endless_publisher, t.path, 1)
        live = start(procs, tmp_path, "live", publisher, t.path, 0, N, 0)
        time.sleep(rng.uniform(0.05, 0.3))
        kill(victim)
        result(live, 60)
        t.shutdown()
        got = result(sub, 60)
    check_all([g for g in got if g[0] == 0], {0: N}, "live publisher")
    vs = [s for p, s, ok in got if p == 1]
    assert all(ok for p, _, ok in got if p == 1)
    assert vs == list(range(len(vs))), "the killed publisher's messages: a prefix, in order"
    assert vs, "the victim published nothing before it was killed"


class _StallOnZero:
    """A serializer whose loads() of b"0" marks a file and sleeps (the victim is
    killed there, inside get_many(), holding its claim)."""

    def __init__(self, mark):
        self.mark = mark

    def dumps(self, o):
        return o

    def loads(self, b):
        b = bytes(b)
        if b == b"0":
            open(self.mark, "w").close()
            time.sleep(60)
        return b


def _stalled_group_member(path, mark, ready):
    t = fastq.Topic.open(path, serializer=_StallOnZero(mark))
    s = t.subscribe(group="g")
    ready.set()
    s.get_many(5, timeout=30)  # claims 0..4; killed inside loads() of b"0"


def test_prefetch_nacked_message_comes_back_before_a_taken_over_claim(tmp_path, procs):
    """A prefetch subscription holds the rest of a claim taken over from a dead group
    member in one pool member, and nacks a fresh message held by another: the next
    receive() returns the nacked message (flagged), then the taken-over rest."""
    mark = str(tmp_path / "claimed")
    ctx = mp.get_context("fork")
    ready = ctx.Event()
    with fastq.Topic(str(tmp_path / "nackfirst"), capacity=1 << 16, serializer="raw") as t:
        s = t.subscribe(group="g", prefetch=2)
        p = procs.add(ctx.Process(target=_stalled_group_member, args=(t.path, mark, ready)))
        p.start()
        wait_event(ready, "the victim subscribed")
        t.publish_many([b"%d" % i for i in range(5)])
        wait_for(lambda: os.path.exists(mark), "the victim claimed 0..4")
        t.publish(b"5")
        kill(p)
        t.recover()
        a, b = s.receive(timeout=5), s.receive(timeout=5)
        got = sorted([(a.value, a.redelivered), (b.value, b.redelivered)])
        assert got == [(b"0", True), (b"5", False)], got
        d0, d5 = (a, b) if a.redelivered else (b, a)
        d5.nack()
        d0.ack()
        rest = []
        while True:
            try:
                d = s.receive(timeout=0.5)
            except fastq.Empty:
                break
            rest.append((d.value, d.redelivered))
            d.ack()
        assert rest == [(b"5", True)] + [(b"%d" % i, True) for i in range(1, 5)], rest

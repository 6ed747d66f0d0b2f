"""Chaos for topics: publishers, group members and a durable subscriber are
SIGKILLed at random moments (inside get()/get_many()/receive(), in the middle
of copying 2-4 MiB messages) while their replacements keep working; then the
outcome is checked message by message, for every group.

Set-up (test_topic_chaos_sigkill_random_workers):
  * one topic (32 MiB ring, overflow="block"); a supervisor (this test) keeps
    alive 2 publishers, 3 members of the group "workers", 1 subscriber of the
    durable name "billing" and 1 plain subscriber (7 processes, never more: a
    victim is SIGKILLed and reaped before its replacement is forked).  Every
    reader subscribes before the first publish, so every group must receive
    every committed message.  The plain subscriber is never killed: it is the
    exact reference.  The supervisor kills a random publisher (15 %), group
    member (50 %) or durable subscriber (35 %) every 2 ms .. 120 ms, until
    FASTQ_CHAOS_KILLS kills (default 250; e.g. FASTQ_CHAOS_KILLS=3000 for a
    long run); FASTQ_CHAOS_SEED replays a seed (the timing never replays
    exactly).  A killed durable subscriber is restarted with the same name; a
    killed member is replaced by a new member of the group (a member is
    killed only while another one has subscribed: a group goes away with its
    last member).  About a third of the reader kills are aimed: the
    supervisor watches the victim's log and kills it as soon as it is inside
    a call holding a claimed message (after 0-3 ms if that message is a
    2-4 MiB one, so the kill lands while it is being copied out of the
    ring); likewise a publisher is preferably killed while publishing a
    2-4 MiB message.
  * messages as in test_chaos.py: ``<magic><crc><pub><seq><size>`` + payload,
    sizes mixed: 0-64 B, ~1 KiB, and 0.5 % of 2-4 MiB.  Each publisher
    process has a new publisher id and counts seq from 0.  It publishes one
    message (publish) or 2-8 small ones (publish_many), writing an "I" record
    (first seq, count) before and a "P" record after the call returned.
  * readers: each call is chosen at random: get(), get_many(k) or
    receive()+ack() for "workers"; mostly receive()+ack() for "billing";
    get()/get_many() for the plain subscriber.  The reader's serializer
    loads() runs inside the call while the message is claimed: it writes "B"
    (message, size), copies the message out of the ring and checks its crc
    (a corrupt message fails the test at once), writes "L".  After the call
    returns: "G" per message for get()/get_many() (one write), or for
    receive(): "R" (with the redelivered flag), "Q" (about to ack), ack(),
    "K".  Every record is a fixed 32-byte O_APPEND write (a write cut short
    by SIGKILL loses whole records only), written before the next step, so it
    survives the reader's death.
  * prefetch readers: each group member and durable subscriber is, with
    probability 1/2 (the seeded RNG), subscribed with prefetch k in 2..4.
    Mostly it reads in batches: receive() up to k deliveries, holding them
    (each receive() a call: "A", "B"/"L", "R" with the flag and the number
    now held), sometimes waiting a moment; at the bound it sometimes checks
    that receive()/get()/get_many() raise RuntimeError at once (a call
    record: it must claim nothing); then it settles them in random order:
    "Q", ack(), "K", or (6 %) "N", nack(), "V".  Between batches it uses
    get()/get_many() too.  "M" logs the pool's size as it grows.  Aimed
    kills of a prefetch reader also land while it holds 2 or more.

What is allowed (anything else fails the test):
  * publishers: "P" records cover seqs 0..n-1 in order; a killed publisher
    may have committed (part of) the call it had announced with "I" but not
    finished.  The committed messages are those logged "P", plus those of an
    unfinished call that the plain subscriber (never killed, so exact)
    received; no group may receive any other message.
  * plain subscriber: every committed message exactly once, each
    publisher's in order.
  * "workers" and "billing", message by message, ordering each message's
    deliveries by the time loads() began:
      - every delivery but the last is an incomplete one of a killed reader,
        and the next one began after that reader was killed; if the next one
        is a receive() it is flagged redelivered;
      - a reader killed in a get()/get_many() after its loads() returned but
        before "G" cannot tell whether the call had returned (message gone
        with it) or not (the claim goes to another member): all or none of
        that call's messages come back, and if none, they count as lost with
        the reader (at most one call per killed reader); a "G" written for
        some of the call's messages proves it returned: none come back;
      - one with "B" but no "L" in its call was killed holding the claim:
        the message MUST come back;
      - receive(): reported "R" before ack, so a received message is always
        reported.  Killed after "R" before "Q": it MUST come back (flagged);
        after "Q" before "K": it may; after "K": it must not.  A message
        flagged redelivered that nobody reported before is allowed only
        after a kill of a reader of that group (killed after claiming,
        before loads()).  So receive()+ack() is exact.
      - receive() with prefetch: the same rules for each delivery held, in
        whatever order they are settled (killed holding several: each one
        "R" but not "Q" MUST come back, flagged; "Q" may; "K" must not);
        a reader never holds more than k ("R" not settled); a call at the
        bound claims nothing.  nack() ("N" .. "V"): the message MUST come
        back, flagged, as the very next delivery of that subscription, or,
        if it died before taking another one, after its death.
      - a committed message with no delivery at all is lost: a failure;
      - per-publisher order: within each reader, a message that was not
        redelivered comes after the earlier ones of its publisher, except
        the messages of a dead reader's claim taken over by another reader
        (redelivered, maybe without a trace when the victim died before
        loads()): at most one late run per kill of that group's readers.
  * get_many(k) never returns more than k messages.
  * nobody blocked for long: while the publishers ran, for each group the
    longest stretch in which none of its readers reported a message although
    one was pending for it (committed before, delivered after), the longest
    such stretch for each live reader, and the longest time between two
    successive publish returns of a live publisher are all < 2.0 s.
  * at the end: the durable subscriber is killed a last time while the
    publishers still run (holding a claim, if it takes one within 80 ms);
    after recover(), subscribers() lists every live reader's process once,
    "billing" once (nobody attached) and no dead entry (no row left by a
    killed reader); a live prefetch reader has one row per member of its
    pool (between the size it logged before and its final size); the publishers stop (cleanly: those waiting for
    "billing" finish once it is read again); this process subscribes as
    "billing" and receives exactly the remainder (checked with the rest),
    then its lag is 0 and get_nowait() raises Empty; the group and plain
    readers drain and exit cleanly; after recover() the only row of
    subscribers() is "billing" with nobody attached and lag 0; a new
    start="earliest" subscription gets an intact suffix of the publication
    order (the plain subscriber's order).

The summary line ("topic chaos summary: ...") is printed (see it with -s)
and included in every assertion message.

test_member_killed_inside_get_many_whole_claim_comes_back: deterministic:
a group member (or durable subscriber) killed inside get_many() holding a
claim of 10 messages; the next reader takes its claim with get(), receive()
or get_many(2): all 10 messages come back exactly once, at most 2 per
get_many(2).

test_durable_killed_copying_4mib_message_at_random: a durable subscriber
reading 4 MiB messages with the raw serializer (the copy out of the ring is
a memcpy without the GIL) or with a slow checking serializer is killed at
random moments; the next subscriber of the name gets every message exactly
once, intact, within the recovery bound, except what a killed raw reader
had been returned but not reported (at most one per kill inside get()).
"""
from __future__ import annotations

import bisect
import heapq
import os
import random
import signal
import time
import traceback

import pytest

import fastq

from support import chaos
from support.api import drain_nowait
from support.chaos import (Chaos, check_delivered, CheckingSerializer, CTX, fail, GAP_BOUND,
                           K_ACKED, K_ACKING, K_BEGIN, K_CALL, K_GOT, K_INTENT, K_LOADED,
                           K_PUBLISHED, K_RECV, K_START, late_runs, log_got, read_recs, REC, rec,
                           receive_and_ack)
from support.messages import Framed, Passthrough, pick_size
from support.waiting import wait_for

pytestmark = pytest.mark.usefixtures("fastq_dir")

CAPACITY = 32 << 20
BIG_MIN, BIG_MAX = 2 << 20, 4 << 20
PUB_TIMEOUT = 30.0
GET_TIMEOUT = 0.5
#: payloads are cut from random bytes made before forking (inherited)
MSGS = Framed(0xFA57C4A1, 4321, BIG_MAX + (1 << 20))
#: message sizes: [(cumulative probability, smallest, largest)]
SIZES = [(0.005, BIG_MIN, BIG_MAX), (0.3, 0, 64), (0.8, 512, 1536),
         (1.0, 8 << 10, 96 << 10)]

K_EXIT, K_NACKING, K_NACKED, K_MEMBERS = b"ENVM"  # and support.chaos's kinds
M_GET, M_MANY, M_RECV, M_PRECV, M_BOUND = 1, 2, 3, 4, 5
MODE_NAME = {M_GET: "get", M_MANY: "get_many", M_RECV: "receive", M_PRECV: "receive(prefetch)",
             M_BOUND: "call at the prefetch bound"}
RECV_STAGES = ("R", "Q", "K", "N", "V")  # a receive() that returned: its flag is known
GROUP = {"g": "workers", "d": "billing", "n": "plain"}


# ---- worker processes (forked) -----------------------------------------------------


def publisher_main(path, pub, seed, log_path, flags, fail_path):
    try:
        t = fastq.Topic.open(path, serializer="raw")
        fd = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        rec(fd, K_START, arg=os.getpid())
        rng = random.Random(seed * 1_000_003 + pub)
        seq = 0
        while not flags[0]:
            if rng.random() < 0.2:
                k = rng.randint(2, 8)
                msgs = [MSGS.make(pub, seq + i, rng.randint(0, 1500)) for i in range(k)]
                rec(fd, K_INTENT, who=pub, seq=seq, arg=k)
                t.publish_many(msgs, timeout=PUB_TIMEOUT)
            else:
                size = pick_size(rng, SIZES)
                k = 1
                msg = MSGS.make(pub, seq, size)
                rec(fd, K_INTENT, flag=size >= BIG_MIN, who=pub, seq=seq, arg=1)
                t.publish(msg, timeout=PUB_TIMEOUT)
            rec(fd, K_PUBLISHED, who=pub, seq=seq, arg=k)
            seq += k
        os.close(fd)
        t.close()
    except fastq.Full:
        fail(fail_path, f"publisher {pub} (pid {os.getpid()}): publish blocked "
                                f"{PUB_TIMEOUT} s (nobody freed space)")
    except BaseException:
        fail(fail_path, f"publisher {pub} (pid {os.getpid()}):\n"
                                + traceback.format_exc())


def pick_mode(role, rng, prefetch=1):
    r = rng.random()
    if role == "n":
        return M_GET if r < 0.5 else M_MANY
    if prefetch > 1:  # mostly batches of receive(), some get()/get_many() between them
        return M_PRECV if r < 0.85 else (M_GET if r < 0.93 else M_MANY)
    if role == "d":
        return M_RECV if r < 0.6 else (M_GET if r < 0.8 else M_MANY)
    return M_RECV if r < 0.4 else (M_GET if r < 0.7 else M_MANY)


def prefetch_batch(s, fd, rng, k, fail_path):
    """A reader with prefetch k: receive() up to n (1..k) deliveries, holding
    them (each: "A" call record, "B"/"L" inside, then "R" with the
    redelivered flag and the number now held); at the bound, sometimes check
    that receive()/get()/get_many() raise RuntimeError at once; then settle
    them in random order: "Q", ack(), "K", or now and then "N", nack(), "V"
    (Q and N carry how many were held, this one included).  "M" records the
    pool's member count each time it grows.  Raises Empty if it got nothing."""
    n = rng.randint(1, k) if rng.random() < 0.3 else k
    held = []
    members = len(s._pool.members)
    try:
        while len(held) < n:
            rec(fd, K_CALL, flag=M_PRECV, arg=k)
            try:
                if not held:
                    d = s.receive(timeout=GET_TIMEOUT)
                else:  # holding some: wait a little for more, or not at all
                    tmo = rng.choice((0.0, 0.0, 0.005, 0.03))
                    d = s.receive(block=tmo > 0, timeout=tmo or None)
            except fastq.Empty:
                if not held:
                    raise
                break
            finally:
                nm = len(s._pool.members)
                if nm != members:
                    rec(fd, K_MEMBERS, arg=nm)
                    members = nm
            pub, seq = d.value
            held.append(d)
            rec(fd, K_RECV, flag=bool(d.redelivered), who=pub, seq=seq, arg=len(held))
            if rng.random() < 0.3:
                time.sleep(rng.uniform(0, 0.002))
        if len(held) == k and rng.random() < 0.2:
            how = rng.randrange(3)
            rec(fd, K_CALL, flag=M_BOUND, arg=how)
            t0 = time.monotonic()
            try:
                if how == 0:
                    got = s.receive(timeout=GET_TIMEOUT)
                elif how == 1:
                    got = s.get(timeout=GET_TIMEOUT)
                else:
                    got = s.get_many(4, timeout=GET_TIMEOUT)
            except RuntimeError:
                got = None
            except fastq.Empty:
                got = "Empty"
            dt = time.monotonic() - t0
            if got is not None or dt > 0.25:
                fail(fail_path, f"reader pid {os.getpid()} holding {k} deliveries "
                                        f"(prefetch={k}): call {how} returned {got!r} after "
                                        f"{dt:.3f} s, not RuntimeError at once")
        if len(held) > 1 and rng.random() < 0.3:
            time.sleep(rng.uniform(0, 0.003))
    finally:
        # settle in random order (also when interrupted by Empty)
        rng.shuffle(held)
        left = len(held)
        for d in held:
            pub, seq = d.value
            if rng.random() < 0.06:
                rec(fd, K_NACKING, who=pub, seq=seq, arg=left)
                d.nack()
                rec(fd, K_NACKED, who=pub, seq=seq)
            else:
                rec(fd, K_ACKING, who=pub, seq=seq, arg=left)
                d.ack()
                rec(fd, K_ACKED, who=pub, seq=seq)
            left -= 1


def reader_loop(s, role, fd, rng, flags, prefetch=1, fail_path=None):
    """Read until flags[1] (drain) and then 1 s without a message."""
    idle = 0
    while True:
        mode = pick_mode(role, rng, prefetch)
        try:
            if mode == M_PRECV:
                prefetch_batch(s, fd, rng, prefetch, fail_path)
            else:
                k = rng.randint(2, 16) if mode == M_MANY else 1
                rec(fd, K_CALL, flag=mode, arg=k)
                if mode == M_GET:
                    pub, seq = s.get(timeout=GET_TIMEOUT)
                    rec(fd, K_GOT, flag=mode, who=pub, seq=seq)
                elif mode == M_MANY:
                    log_got(fd, s.get_many(k, timeout=GET_TIMEOUT), mode)
                else:
                    receive_and_ack(fd, s, GET_TIMEOUT)
        except fastq.Empty:
            if flags[1]:
                idle += 1
                if idle >= 2:
                    return
            continue
        idle = 0


def reader_main(path, role, log_path, seed, flags, fail_path, prefetch=1):
    try:
        fd = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        t = fastq.Topic.open(path, serializer=CheckingSerializer(fd, fail_path, MSGS))
        if role == "g":
            s = t.subscribe(group=GROUP[role], prefetch=prefetch)
        elif role == "d":
            s = t.subscribe(name=GROUP[role], prefetch=prefetch)
        else:
            s = t.subscribe()
        rec(fd, K_START, flag=prefetch, arg=os.getpid())
        reader_loop(s, role, fd, random.Random(seed), flags, prefetch, fail_path)
        s.close()
        t.close()
        rec(fd, K_EXIT)
        os.close(fd)
    except BaseException:
        fail(fail_path, f"reader {role} (pid {os.getpid()}):\n"
                                + traceback.format_exc())


# ---- log analysis ---------------------------------------------------------------------


class Worker(chaos.Worker):
    def __init__(self, role, wid, proc, log, t_start, prefetch=1):
        super().__init__(role, wid, proc, log, t_start)
        self.group = GROUP.get(role)
        self.prefetch = prefetch
        self.members = [(0.0, 1)]  # prefetch: (time logged, pool members) as it grew
        self.dls = []              # every delivery, in log order (by "B" time)

    def __repr__(self):
        pf = f"[prefetch {self.prefetch}]" if self.prefetch > 1 else ""
        return f"{self.role}{self.id}{pf}{'(killed)' if self.killed else ''}"


class Call:
    __slots__ = ("mode", "k", "t", "msgs", "ngot", "returned")

    def __init__(self, mode, k, t):
        self.mode, self.k, self.t = mode, k, t
        self.msgs = []     # [Dl]
        self.ngot = 0
        self.returned = False


class Dl:
    """One delivery of a message to a reader (from its log)."""
    __slots__ = ("m", "tb", "size", "stage", "redelivered", "t_report", "w", "call", "status",
                 "t_settle")

    def __init__(self, m, tb, size, w, call):
        self.m, self.tb, self.size, self.w, self.call = m, tb, size, w, call
        self.stage = "B"          # B, L, G (get/get_many), R, Q, K (receive), N, V (nack)
        self.redelivered = False
        self.t_report = None
        self.status = None        # see classify()
        self.t_settle = None      # "V": when nack() had returned

    def __repr__(self):
        return (f"{self.w}:{MODE_NAME[self.call.mode]}:{self.stage}"
                f"{'(redelivered)' if self.redelivered else ''}@{self.tb:.4f}")


def parse_reader(w):
    """(start time, [Call], clean exit, problems)"""
    start, calls, problems, exited = None, [], [], False
    cur = None
    held = {}  # prefetch: message -> its delivery, received and not yet settled
    for kind, flag, _, pub, seq, t, arg in read_recs(w.log):
        m = (pub, seq)
        if kind == K_START:
            start = t
            if flag != w.prefetch:
                problems.append(f"started with prefetch {flag}, not {w.prefetch}")
        elif kind == K_MEMBERS:
            if w.prefetch < 2 or not w.members[-1][1] < arg <= w.prefetch:
                problems.append(f"pool of {arg} members after {w.members[-1][1]} "
                                f"(prefetch {w.prefetch})")
            w.members.append((t, arg))
        elif w.prefetch > 1 and kind in (K_RECV, K_ACKING, K_ACKED, K_NACKING, K_NACKED):
            # deliveries held k at a time: each settled by message, in any order
            if kind == K_RECV:
                if cur is None or cur.mode != M_PRECV or len(cur.msgs) != 1 \
                        or cur.msgs[0].m != m or cur.msgs[0].stage != "L" or m in held:
                    problems.append(f"R {m} out of place (held: {sorted(held)})")
                    continue
                d = cur.msgs[0]
                d.stage, d.redelivered, d.t_report = "R", bool(flag), t
                cur.returned = True
                held[m] = d
                if len(held) > w.prefetch or arg != len(held):
                    problems.append(f"{len(held)} unacknowledged deliveries, the reader "
                                    f"counted {arg} (prefetch {w.prefetch})")
                continue
            want, new = {K_ACKING: ("R", "Q"), K_ACKED: ("Q", "K"),
                         K_NACKING: ("R", "N"), K_NACKED: ("N", "V")}[kind]
            d = held.get(m)
            if d is None or d.stage != want or (kind in (K_ACKING, K_NACKING)
                                                and arg != len(held)):
                problems.append(f"{chr(kind)} {m} out of place (held: {sorted(held)})")
                continue
            d.stage = new
            if new in ("K", "V"):
                del held[m]
                d.t_settle = t
        elif kind == K_CALL:
            cur = Call(flag, arg, t)
            calls.append(cur)
        elif kind == K_BEGIN:
            if cur is None or (cur.msgs and cur.msgs[-1].stage != "L"):
                problems.append(f"B {m} out of place")
                continue
            if cur.mode != M_MANY and cur.msgs:
                problems.append(f"{MODE_NAME[cur.mode]}() loaded two messages")
            if cur.mode == M_BOUND:
                problems.append(f"a call with {w.prefetch} deliveries unacknowledged (the "
                                f"prefetch bound) claimed {m}")
            cur.msgs.append(Dl(m, t, arg, w, cur))
            w.dls.append(cur.msgs[-1])
        elif kind == K_LOADED:
            if cur is None or not cur.msgs or cur.msgs[-1].stage != "B" or cur.msgs[-1].m != m:
                problems.append(f"L {m} out of place")
            else:
                cur.msgs[-1].stage = "L"
        elif kind == K_GOT:
            if cur is None or cur.ngot >= len(cur.msgs) or cur.msgs[cur.ngot].m != m \
                    or cur.msgs[cur.ngot].stage != "L" or cur.mode in (M_RECV, M_PRECV,
                                                                       M_BOUND):
                problems.append(f"G {m} out of place")
                continue
            d = cur.msgs[cur.ngot]
            d.stage, d.t_report = "G", t
            cur.ngot += 1
            cur.returned = True
        elif kind in (K_RECV, K_ACKING, K_ACKED):
            want = {K_RECV: "L", K_ACKING: "R", K_ACKED: "Q"}[kind]
            if cur is None or cur.mode != M_RECV or len(cur.msgs) != 1 \
                    or cur.msgs[0].m != m or cur.msgs[0].stage != want:
                problems.append(f"{chr(kind)} {m} out of place")
                continue
            d = cur.msgs[0]
            d.stage = {K_RECV: "R", K_ACKING: "Q", K_ACKED: "K"}[kind]
            if kind == K_RECV:
                d.redelivered, d.t_report = bool(flag), t
                cur.returned = True
        elif kind in (K_NACKING, K_NACKED):
            problems.append(f"{chr(kind)} {m} from a reader without prefetch")
        elif kind == K_EXIT:
            exited = True
            if held:
                problems.append(f"exited holding {sorted(held)}")
    return start, calls, exited, problems


def call_complete(c):
    """For a receive(prefetch): its delivery was settled (acked or nacked)."""
    if c.mode == M_RECV:
        return not c.msgs or c.msgs[0].stage == "K"
    if c.mode == M_PRECV:
        return not c.msgs or c.msgs[0].stage in ("K", "V")
    return all(d.stage == "G" for d in c.msgs)


def classify(w, calls):
    """Set each delivery's status:
      done      - complete (G, or K for receive)
      must      - the reader died holding the claim: must come back
      may       - receive() killed between "Q" and "K" (acked or not)
      ambiguous - get/get_many killed after loads(), no "G": all of the
                  call's messages come back, or none (returned, lost)
      lost_ret  - get/get_many returned (some "G" written): lost with the reader
      nacked    - receive(prefetch) nacked ("V"): must come back, flagged, to
                  the same subscription before any fresh message (only other
                  redelivered ones may come first), or, if it died before
                  that, to another reader after its death
    A prefetch reader's deliveries, held several at a time, each as one
    receive(): "K" done, "V" nacked, "Q" may, "B"/"L"/"R"/"N" must (its claim
    was held when the reader died).
    Returns a description of the last call of a killed reader ("between
    calls", "waiting", "in claim", ...) for the statistics."""
    for c in calls:
        for d in c.msgs:
            if c.mode == M_PRECV:
                d.status = {"K": "done", "V": "nacked", "Q": "may"}.get(d.stage, "must")
            else:
                d.status = "done" if d.stage in ("G", "K") else None
    if not calls:
        return "before its first call"
    last = calls[-1]
    if last.mode in (M_PRECV, M_BOUND):
        unacked = sum(d.stage in ("R", "Q", "N") for c in calls if c.mode == M_PRECV
                      for d in c.msgs)
        claim = any(d.stage in ("B", "L") for d in last.msgs)
        if unacked or claim:
            return f"prefetch: {unacked} unacked{' + in claim' if claim else ''}"
        return "between calls" if last.msgs else "waiting"
    if call_complete(last):
        return "between calls" if last.msgs or last is not calls[-1] else "waiting"
    if last.mode == M_RECV:
        d = last.msgs[0]
        d.status = {"B": "must", "L": "must", "R": "must", "Q": "may"}[d.stage]
        return {"B": "in claim (loads)", "L": "in claim (loaded)", "R": "received, not acked",
                "Q": "inside ack()"}[d.stage]
    pending = [d for d in last.msgs if d.stage != "G"]
    if last.returned:
        for d in pending:
            d.status = "lost_ret"
        return "returned, reporting"
    if any(d.stage == "B" for d in pending):
        for d in pending:
            d.status = "must"
        return "in claim (loads)"
    for d in pending:
        d.status = "ambiguous"
    return "loaded, returned or not"


def blocked_time(intervals, msgs):
    """Longest time, over the intervals (a, b, who) without a delivery, during
    which a message was pending: committed at tp < b and delivered at tg >= b.
    msgs: [(tp, tg)].  Returns (worst, (who, a, b, since))."""
    msgs = sorted(msgs)
    heap, i, worst, where = [], 0, 0.0, None
    for a, b, who in sorted(intervals, key=lambda x: x[1]):
        while i < len(msgs) and msgs[i][0] < b:
            heapq.heappush(heap, msgs[i])
            i += 1
        # the oldest pending one matters: drop those delivered before b (b only
        # grows: they are never pending again)
        while heap and heap[0][1] < b:
            heapq.heappop(heap)
        if heap:
            d = b - max(a, heap[0][0])
            if d > worst:
                worst, where = d, (who, round(a, 4), round(b, 4), round(heap[0][0], 4))
    return worst, where


# ---- the supervisor -------------------------------------------------------------------


def tail_record(fd):
    """The last complete record of a log (None if empty)."""
    size = os.fstat(fd).st_size // REC.size * REC.size
    if size == 0:
        return None
    return REC.unpack(os.pread(fd, REC.size, size - REC.size))


def reader_logs(workers, t_rows, pf_rows, late_errors, stats, fail):
    """Parse and check every reader's log (well formed, complete calls but a killed
    reader's last, a prefetch reader's pool rows against subscribers() at t_rows);
    count kills by moment into stats.  (per_group: group -> [(Worker, calls)], the
    get_many calls that returned more than k)."""
    per_group = {g: [] for g in GROUP.values()}  # group -> [(Worker, calls)]
    problems, over_k, kill_where = [], [], {}
    big_kills = 0
    pf = {"readers": 0, "kills": 0, "kills_unacked>1": 0, "max_unacked_at_kill": 0,
          "deliveries_checked": 0, "nacked": 0, "bound_checks": 0}
    for w in workers:
        if w.role == "p":
            continue
        start_t, calls, exited, probs = parse_reader(w)
        problems += [f"{w}: {p}" for p in probs]
        if not w.killed and not exited:
            problems.append(f"{w} survived but did not exit cleanly")
        for c in calls[:-1] if w.killed else calls:
            # a killed prefetch reader held up to prefetch (parse_reader checks)
            if not call_complete(c) and not (w.killed and c.mode == M_PRECV):
                problems.append(f"{w} has an incomplete call {c.msgs} before its last")
        if w.prefetch > 1:
            pf["readers"] += 1
            pf["deliveries_checked"] += sum(len(c.msgs) for c in calls if c.mode == M_PRECV)
            pf["nacked"] += sum(d.stage == "V" for c in calls if c.mode == M_PRECV
                                for d in c.msgs)
            pf["bound_checks"] += sum(c.mode == M_BOUND for c in calls)
            if w in pf_rows:  # live at the subscribers() check: one row per member
                lo = max(n for tt, n in w.members if tt < t_rows)
                hi = w.members[-1][1]
                if not lo <= pf_rows[w] <= hi:
                    late_errors.append(
                        f"after recover(), subscribers() listed {pf_rows[w]} rows of "
                        f"{w} (pid {w.proc.pid}): its pool had {lo} members then (at "
                        f"most {hi} later)")
        if w.killed and w.prefetch > 1:
            unacked = sum(d.stage in ("R", "Q", "N") for c in calls if c.mode == M_PRECV
                          for d in c.msgs)
            pf["kills"] += 1
            pf["kills_unacked>1"] += unacked > 1
            pf["max_unacked_at_kill"] = max(pf["max_unacked_at_kill"], unacked)
        for c in calls:
            if c.mode == M_MANY and len(c.msgs) > c.k:
                over_k.append((str(w), c.k, len(c.msgs)))
        where = classify(w, calls)
        if w.killed:
            kill_where[where] = kill_where.get(where, 0) + 1
            lastc = calls[-1] if calls else None
            if lastc and not call_complete(lastc) and any(
                    d.size >= BIG_MIN and d.status != "done" for d in lastc.msgs):
                big_kills += 1
        w.t_start = start_t
        per_group[w.group].append((w, calls))
    if problems:
        fail(f"{len(problems)} malformed reader logs: {problems[:10]}")
    stats["reader_kills_by_moment"] = kill_where
    stats["reader_kills_with_big_msg_in_hand"] = big_kills
    stats["prefetch"] = ",".join(f"{k}:{v}" for k, v in pf.items())
    return per_group, over_k


def group_errors(verdicts, over_k, pub_gap, errors):
    """append to errors what the verdicts of the groups, the get_many calls and the
    publishers' gaps break; the same list"""
    for gname, v in verdicts.items():
        for what in ("not_committed", "lost", "dups", "bad_redelivery", "mixed_call",
                     "unexplained_flag"):
            if v[what]:
                errors.append(f"{gname}: {len(v[what])} {what}: {v[what][:4]}")
        if v["late_runs"] > v["kills"]:
            errors.append(f"{gname}: {v['late_runs']} runs out of per-publisher order, "
                          f"only {v['kills']} kills of its readers")
        if v["worst_gap"] >= GAP_BOUND:
            errors.append(f"{gname}: no reader of the group got a message for "
                          f"{v['worst_gap']:.2f} s while one was pending (interval, "
                          f"pending since): {v['worst_gap_at']}")
        if v["worst_reader_gap"] >= GAP_BOUND:
            errors.append(f"{gname}: a live reader got nothing for "
                          f"{v['worst_reader_gap']:.2f} s while a message was pending: "
                          f"{v['worst_reader_gap_at']}")
    if over_k:
        errors.append(f"get_many(k) returned more than k messages: {over_k[:5]}")
    if pub_gap >= GAP_BOUND:
        errors.append(f"a publisher was blocked {pub_gap:.2f} s between two publishes")
    return errors


def publisher_logs(workers, t_stop, fail):
    """Check the publishers' logs (in order, each P after its I, an unfinished I only
    in a killed one); (logged messages, {killed publisher: its unfinished intent},
    {message: time published}, longest time between two publish returns, killed
    publishers that were publishing a big message)."""
    logged, inflight, pub_t, pub_gap = set(), {}, {}, 0.0
    pub_killed_big = 0
    for w in workers:
        if w.role != "p":
            continue
        recs = read_recs(w.log)
        start_t = recs[0][5] if recs and recs[0][0] == K_START else None
        nxt, intent, ts = 0, None, []
        for kind, flag, _, pub, seq, tt, arg in recs[1:]:
            if pub != w.id or seq != nxt:
                fail(f"publisher {w} log out of order at {chr(kind)} {pub} {seq}")
            if kind == K_INTENT:
                if intent is not None:
                    fail(f"publisher {w}: two I records")
                intent = (seq, arg, flag)
            elif kind == K_PUBLISHED:
                if intent is None or intent[:2] != (seq, arg):
                    fail(f"publisher {w}: P without its I")
                for s in range(seq, seq + arg):
                    logged.add((pub, s))
                    pub_t[pub, s] = tt
                ts.append(tt)
                nxt, intent = seq + arg, None
        if intent is not None:
            if not w.killed:
                fail(f"publisher {w} stopped cleanly inside a publish")
            inflight[w.id] = intent
            pub_killed_big += intent[2]
        ts = [tt for tt in ts if tt <= t_stop]
        if start_t is not None:
            ts = [start_t + 0.2] + ts  # fork and attach excluded
        ts.append(min(w.t_end, t_stop))
        for a, b in zip(ts, ts[1:]):
            pub_gap = max(pub_gap, b - a)
    return logged, inflight, pub_t, pub_gap, pub_killed_big


def last_delivery(v, m, d):
    """into verdict v, what the last delivery d of message m says: held by a reader when
    it was killed or nacked, and never back (lost), or returned to a reader killed then
    (lost with the reader)"""
    if d.status == "must":
        v["lost"].append((m, f"{d} held it when killed; it never came back"))
    elif d.status == "nacked":
        v["lost"].append((m, f"{d} nacked it (requeue); it never came back"))
    elif d.status in ("lost_ret", "ambiguous"):
        v["lost_with_reader"] += 1


def group_verdict(gname, members, committed, pub_t, t_begin, t_stop):
    """One group (its members: [(Worker, calls)]), message by message: every committed
    message delivered, once or again only after a kill or a nack (and then flagged
    redelivered, in the allowed order), nothing lost but with a killed reader, late runs,
    and the longest stretches without a delivery while one was pending.  (verdict,
    deliveries checked)."""
    tbs = {}

    def next_delivery(w, t):
        """w's first delivery that began after t (None if none)."""
        if w not in tbs:
            tbs[w] = [x.tb for x in w.dls]
        i = bisect.bisect_right(tbs[w], t)
        return w.dls[i] if i < len(w.dls) else None
    kills_g = sorted(w.t_end for w, _ in members if w.killed)
    deliveries = {}
    for w, calls in members:
        for c in calls:
            for d in c.msgs:
                deliveries.setdefault(d.m, []).append(d)
    checked = sum(len(v) for v in deliveries.values())
    for ds in deliveries.values():
        if len(ds) > 1:
            ds.sort(key=lambda d: d.tb)
    v = {"lost": [], "dups": [], "bad_redelivery": [], "not_committed": [],
         "mixed_call": [], "unexplained_flag": [], "came_back": 0,
         "lost_with_reader": 0, "flagged": 0}
    calls_back = {}  # ambiguous call -> [came back?]
    v["not_committed"] = [(m, ds) for m, ds in deliveries.items()
                          if m not in committed]
    for m in committed:
        ds = deliveries.get(m)
        if not ds:
            v["lost"].append((m, "never delivered"))
            continue
        if len(ds) == 1:  # the common case, quickly
            d = ds[0]
            if d.redelivered:
                v["flagged"] += 1
                if not any(k < d.tb for k in kills_g):
                    v["unexplained_flag"].append((m, ds))
            last_delivery(v, m, d)
            if d.status == "ambiguous":
                calls_back.setdefault(id(d.call), []).append(False)
            continue
        ds.sort(key=lambda d: d.tb)
        v["came_back"] += 1
        for d, nxt in zip(ds, ds[1:]):
            if d.status == "nacked":
                # nack(requeue=True): it comes back to the subscription
                # before any message that was not redelivered: its next
                # deliveries are redelivered ones (its pool's held claims:
                # messages it nacked, the rest of a claim taken over from
                # a dead reader, in some order) until this one; or, if it
                # died first, a later delivery to another reader
                own = next_delivery(d.w, d.t_settle)
                died_first = d.w.killed and nxt.tb > d.w.t_end
                if own is not None:
                    i = bisect.bisect_left(tbs[d.w], own.tb)
                    ok = False
                    for x in d.w.dls[i:]:
                        if x is nxt:
                            ok = True
                            break
                        if not (x.stage in RECV_STAGES and x.redelivered) \
                                and deliveries[x.m][0] is x \
                                and not (x.stage not in RECV_STAGES and any(
                                    k < x.tb for k in kills_g)):
                            break  # a fresh message overtook the nacked one
                    else:
                        # only redelivered ones came before it, then the
                        # reader died: it goes to another one after that
                        ok = died_first
                else:
                    ok = died_first
                if not ok or (nxt.stage in RECV_STAGES and not nxt.redelivered):
                    v["bad_redelivery"].append((m, ds, "nacked", round(d.t_settle, 4),
                                                own))
                    break
                continue
            if d.status in ("done", "lost_ret") or not d.w.killed:
                v["dups"].append((m, ds))
                break
            if not nxt.tb > d.w.t_end or (nxt.stage in RECV_STAGES
                                          and not nxt.redelivered):
                v["bad_redelivery"].append((m, ds, round(d.w.t_end, 4)))
                break
        for d in ds:
            if d.redelivered:
                v["flagged"] += 1
                if d is ds[0] and not any(k < d.tb for k in kills_g):
                    v["unexplained_flag"].append((m, ds))
            if d.status == "ambiguous":
                calls_back.setdefault(id(d.call), []).append(d is not ds[-1])
        last_delivery(v, m, ds[-1])
    for backs in calls_back.values():
        if any(backs) and not all(backs):
            v["mixed_call"].append(backs)
    # killed get()/get_many() calls that had loaded everything: claim held
    # (came back) or returned (gone with the reader)
    v["loaded_calls"] = (f"{sum(all(b) for b in calls_back.values())}back/"
                         f"{sum(not any(b) for b in calls_back.values())}gone")
    # per-publisher order within each reader: late runs
    redelivered = {m for m, ds in deliveries.items()
                   if len(ds) > 1 or any(d.redelivered for d in ds)}
    runs = 0
    for w, calls in members:
        runs += late_runs([d.m for c in calls for d in c.msgs], redelivered)
    v["late_runs"] = runs
    v["kills"] = len(kills_g)
    # blocking: stretches without a report by any reader of the group
    reports = {}
    for m, ds in deliveries.items():
        for d in ds:
            if d.t_report is not None and m in pub_t:
                reports.setdefault(m, []).append(d.t_report)
    pend = [(pub_t[m], max(ts)) for m, ts in reports.items()]
    allr = sorted(tt for ts in reports.values() for tt in ts if t_begin <= tt <= t_stop)
    allr = [t_begin] + allr + [t_stop]
    v["worst_gap"], v["worst_gap_at"] = blocked_time(
        [(a, b, gname) for a, b in zip(allr, allr[1:])], pend)
    iv = []  # each live reader's stretches without a report
    for w, calls in members:
        if w.t_start is None or w.t_start > t_stop:
            continue
        ts = [w.t_start] + [d.t_report for c in calls for d in c.msgs
                            if d.t_report is not None and d.t_report <= t_stop]
        ts.append(min(w.t_end, t_stop))
        iv += [(a, b, str(w)) for a, b in zip(ts, ts[1:])]
    v["worst_reader_gap"], v["worst_reader_gap_at"] = blocked_time(iv, pend)
    return v, checked


def test_topic_chaos_sigkill_random_workers(tmp_path, procs):
    ch = Chaos(tmp_path, "topic chaos", "pgdn",
               {"p": "publishers", "g": "group members", "d": "durable"})
    MSGS.base()
    t = fastq.Topic.create("tchaos", capacity=CAPACITY, serializer="raw")
    path = t.path
    tail_fds = {}

    def start(role):
        wid = ch.next_id[role]
        ch.next_id[role] += 1
        log = str(tmp_path / f"{role}{wid}.log")
        open(log, "wb").close()
        pf = 1
        if role == "p":
            args = (path, wid, ch.seed, log, ch.flags, ch.fail_path)
            target = publisher_main
        else:
            if role in "gd" and ch.rng.random() < 0.5:
                pf = ch.rng.randint(2, 4)  # holds up to pf deliveries unacknowledged
            args = (path, role, log, ch.seed * 1009 + wid * 7 + ord(role), ch.flags,
                    ch.fail_path, pf)
            target = reader_main
        p = procs.add(CTX.Process(target=target, args=args, daemon=True))
        w = Worker(role, wid, p, log, time.monotonic(), pf)
        tail_fds[w] = os.open(log, os.O_RDONLY)
        p.start()
        ch.workers.append(w)
        ch.live[role].append(w)
        return w

    def wait_started(w):
        """Until w wrote its first record (a reader: after subscribe())."""
        deadline = time.monotonic() + 30
        while tail_record(tail_fds[w]) is None:
            ch.check_marker()
            if time.monotonic() > deadline:
                ch.fail(f"{w} did not start")
            time.sleep(0.002)

    def aimed_wait(w):
        """Wait (up to 80 ms) until w is inside a call holding a message (a
        reader: last record "B"; a prefetch reader also: holding 2 or more
        unacknowledged deliveries, last record "R", "Q" or "N"), or publishing
        a big one (a publisher: last record a big "I"); then a moment more if
        the message is big."""
        fd = tail_fds[w]
        deadline = time.monotonic() + 0.08
        while time.monotonic() < deadline:
            r = tail_record(fd)
            if r is not None:
                if w.role == "p" and r[0] == K_INTENT and r[1]:
                    time.sleep(ch.rng.uniform(0, 0.0015))
                    return True
                if w.role != "p" and r[0] == K_BEGIN:
                    if r[6] >= BIG_MIN:
                        time.sleep(ch.rng.uniform(0, 0.003))
                    return True
                if w.prefetch > 1 and r[0] in (K_RECV, K_ACKING, K_NACKING) and r[6] >= 2:
                    return True
            time.sleep(0.0002)
        return False

    final_reader = None
    try:
        for role in "ngggd":
            start(role)
        # every reader subscribed before the first publish
        for w in ch.workers:
            wait_started(w)
        for _ in range(2):
            start("p")
        t_begin = time.monotonic()
        ch.stats["aimed_hits"] = 0
        while ch.next_kill(t_begin):
            r = ch.rng.random()
            role = "p" if r < 0.15 else ("g" if r < 0.65 else "d")
            w = ch.rng.choice(ch.live[role])
            if role == "g" and not any(tail_record(tail_fds[x]) is not None
                                       for x in ch.live["g"] if x is not w):
                # a group whose last member leaves goes away (and a new member
                # would start a new group at "latest"): keep one subscribed
                role = "d"
                w = ch.live["d"][0]
                ch.stats["group_kills_deferred"] = ch.stats.get("group_kills_deferred", 0) + 1
            if ch.rng.random() < (0.5 if role == "p" else 0.35):
                ch.stats["aimed_hits"] += aimed_wait(w)
            ch.kill(w)
            start(role)
        t_stop = time.monotonic()
        ch.stats["chaos_s"] = round(t_stop - t_begin, 1)

        # ---- the durable reader is killed a last time, while publishers still run (so
        # that it has a backlog): aimed at a moment it holds a claim, so that
        # recover() has a dead entry to clear
        ch.stats["last_kill_in_claim"] = aimed_wait(ch.live["d"][0])
        ch.kill(ch.live["d"][0])
        ch.check_marker()
        for w in ch.live["g"] + ch.live["n"]:  # a replacement just forked has subscribed
            wait_started(w)
        t.recover()
        t_rows = time.monotonic()
        rows = t.subscribers()
        late_errors = []  # reported with the message-by-message verdicts
        # a prefetch reader has one row per member of its pool: checked against
        # its log (members logged before t_rows .. its final pool) with the rest
        live_pids = sorted(w.proc.pid for r in "gn" for w in ch.live[r] if w.prefetch == 1)
        pf_live = [w for r in "gn" for w in ch.live[r] if w.prefetch > 1]
        pf_pids = {w.proc.pid for w in pf_live}
        row_pids = sorted(r.pid for r in rows if r.pid is not None and r.pid not in pf_pids)
        pf_rows = {w: sum(r.pid == w.proc.pid for r in rows) for w in pf_live}
        nobody = [r for r in rows if r.pid is None]
        if row_pids != live_pids or any(r.pid is not None and not r.alive for r in rows) \
                or len(nobody) != 1 or nobody[0].name != "billing":
            late_errors.append(
                f"after the durable reader's last kill and recover(), subscribers() should "
                f"list each live reader {live_pids} once (prefetch readers "
                f"{sorted(pf_pids)}: once per member), 'billing' once with nobody attached, "
                f"and no dead entry: {rows}")
        ch.stats["rows_after_recover"] = len(rows)

        # ---- publishers stop (they may wait for "billing"); this process resumes
        # "billing" and must get exactly the remainder ----------------------------------
        ch.flags[0] = 1
        flog = str(tmp_path / "final.log")
        final_reader = Worker("d", "final", None, flog, time.monotonic())
        ffd = os.open(flog, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        ft = fastq.Topic.open(path, serializer=CheckingSerializer(ffd, ch.fail_path, MSGS))
        fs = ft.subscribe(name="billing")
        rec(ffd, K_START, flag=1, arg=os.getpid())
        t_final = time.monotonic()
        frng = random.Random(ch.seed)
        while any(w.proc.exitcode is None for w in ch.live["p"]):
            reader_loop(fs, "d", ffd, frng, (0, 1))  # returns after 1 s without a message
            if time.monotonic() - t_final > PUB_TIMEOUT + 10:
                break
        reader_loop(fs, "d", ffd, frng, (0, 1))
        ch.stats["final_drain_s"] = round(time.monotonic() - t_final, 1)
        ch.join_clean(list(ch.live["p"]), 10, "(a publisher) did not stop cleanly")
        final_lag = fs.lag
        try:
            fs.get_nowait()
            extra = "a message"
        except fastq.Empty:
            extra = None
        fs.close()
        ft.close()
        rec(ffd, K_EXIT)
        os.close(ffd)
        final_reader.t_end = time.monotonic()
        ch.workers.append(final_reader)
        ch.check_marker()
        # ---- the group and plain readers drain and exit --------------------------------
        ch.flags[1] = 1
        ch.join_clean(ch.live["g"] + ch.live["n"], 120, "did not drain cleanly")
        ch.check_marker()
        if final_lag != 0 or extra:
            late_errors.append(f"billing drained: lag={final_lag}, get_nowait() returned "
                               f"{extra}")
        t.recover()
        rows = t.subscribers()
        if len(rows) != 1 or rows[0].name != "billing" or rows[0].pid is not None \
                or rows[0].alive or rows[0].lag != 0 or rows[0].group is not None:
            late_errors.append(f"after everything stopped, subscribers() should be just "
                               f"'billing', nobody attached, lag 0: {rows}")
        # a new "earliest" subscription: an intact suffix of the publication order
        es = t.subscribe(start="earliest")
        earliest = drain_nowait(es, 256)
        es.close()
        ch.stats["drain_s"] = round(time.monotonic() - t_stop, 1)

        # ---- collect the publishers' logs ---------------------------------------------
        t_analysis = time.monotonic()
        logged, inflight, pub_t, pub_gap, pub_killed_big = publisher_logs(ch.workers, t_stop,
                                                                          ch.fail)
        ch.stats["publisher_kills_publishing"] = len(inflight)
        ch.stats["publisher_kills_with_big_msg"] = pub_killed_big

        def possible(m):
            p, s = m
            return m in logged or (p in inflight and inflight[p][0] <= s
                                   < inflight[p][0] + inflight[p][1])

        # ---- collect the readers' logs --------------------------------------------------
        per_group, over_k = reader_logs(ch.workers, t_rows, pf_rows, late_errors, ch.stats, ch.fail)

        # ---- the plain subscriber: exact -----------------------------------------------
        plain_order = [d.m for w, calls in per_group["plain"] for c in calls for d in c.msgs]
        committed = logged | set(plain_order)
        phantom = sorted(m for m in committed if not possible(m))
        if phantom:
            ch.fail(f"{len(phantom)} messages nobody published: {phantom[:10]}")
        ch.stats["messages"] = len(committed)
        ch.stats["big_messages"] = sum(
            1 for w, calls in per_group["plain"] for c in calls for d in c.msgs
            if d.size >= BIG_MIN)
        dup = len(plain_order) - len(set(plain_order))
        missing = logged - set(plain_order)
        if dup or missing:
            ch.fail(f"plain subscriber (never killed): {dup} duplicates, "
                 f"{len(missing)} committed messages missing: {sorted(missing)[:10]}")
        last = {}
        for p, s in plain_order:
            if s < last.get(p, -1):
                ch.fail(f"plain subscriber: publisher {p}'s {s} after {last[p]}")
            last[p] = s

        # ---- every group, message by message -------------------------------------------
        verdicts = {}
        checked = 0
        for gname in ("workers", "billing", "plain"):
            verdicts[gname], n = group_verdict(gname, per_group[gname], committed, pub_t,
                                               t_begin, t_stop)
            checked += n
        ch.stats["deliveries_checked"] = checked
        for gname, v in verdicts.items():
            ch.stats[gname] = (f"kills:{v['kills']},came_back:{v['came_back']},"
                            f"flagged:{v['flagged']},lost_with_reader:{v['lost_with_reader']},"
                            f"killed_loaded_calls:{v['loaded_calls']},"
                            f"late_runs:{v['late_runs']},gap:{v['worst_gap']:.3f},"
                            f"reader_gap:{v['worst_reader_gap']:.3f}")
        ch.stats["worst_gap"] = round(max(v["worst_gap"] for v in verdicts.values()), 3)
        ch.stats["worst_reader_gap"] = round(max(v["worst_reader_gap"]
                                              for v in verdicts.values()), 3)
        ch.stats["worst_publish_gap"] = round(pub_gap, 3)
        ch.stats["earliest_suffix"] = len(earliest)
        ch.stats["analysis_s"] = round(time.monotonic() - t_analysis, 1)
        print("\n" + ch.summary())

        # ---- verdicts -----------------------------------------------------------------
        assert ch.stats["kills"] >= min(ch.kills_target, 200), ch.summary()
        errors = group_errors(verdicts, over_k, pub_gap, late_errors)
        bad_earliest = [x for x in earliest if MSGS.check(x) is None]
        keys = [MSGS.check(x)[:2] for x in earliest if MSGS.check(x) is not None]
        if bad_earliest or (keys and keys != plain_order[len(plain_order) - len(keys):]):
            errors.append(f"start='earliest' after the run: {len(bad_earliest)} corrupt, "
                          f"not a suffix of the publication order: {keys[:5]}")
        if errors:
            ch.fail("\n".join(errors))
        assert ch.stats["messages"] > 1000, ch.summary()
    finally:
        ch.flags[0] = ch.flags[1] = 1
        for ws in ch.live.values():
            for w in ws:
                w.proc.join(5)
        for fd in tail_fds.values():
            os.close(fd)
        t.close()


# ---- focused: a reader killed inside get_many() holding a claim of 10 -----------------


class StallOn3(Passthrough):
    """loads() (inside get_many(), the claim held) stalls on message b"3"."""

    def __init__(self, flag):
        self.flag = flag

    def loads(self, b):
        b = bytes(b)
        if b == b"3":
            open(self.flag, "w").close()
            time.sleep(60)  # killed here
        return b


def stalling_member(path, kw, flag):
    t = fastq.Topic.open(path, serializer=StallOn3(flag))
    s = t.subscribe(**kw)
    open(flag + ".ready", "w").close()
    s.get_many(100, timeout=30)
    os._exit(0)


@pytest.mark.parametrize("kind,how", [("group", "get"), ("group", "receive"),
                                      ("group", "get_many"), ("durable", "receive")])
def test_member_killed_inside_get_many_whole_claim_comes_back(kind, how, tmp_path, procs):
    kw = {"group": "g"} if kind == "group" else {"name": "d"}
    flag = str(tmp_path / "claimed")
    with fastq.Topic("gm", capacity=1 << 16, serializer="raw") as t:
        keep = t.subscribe(**kw)  # the other member (or the next subscriber of the name)
        p = procs.add(CTX.Process(target=stalling_member, args=(t.path, kw, flag)))
        p.start()
        wait_for(lambda: os.path.exists(flag + ".ready"), "the member to subscribe", timeout=20)
        t.publish_many([b"%d" % i for i in range(10)])
        wait_for(lambda: os.path.exists(flag), "the member to claim the batch", timeout=20)
        os.kill(p.pid, signal.SIGKILL)
        p.join(10)
        assert p.exitcode == -signal.SIGKILL
        t0 = time.monotonic()
        got, calls = [], []
        while len(got) < 10 and time.monotonic() - t0 < 5:
            try:
                if how == "get":
                    got.append(keep.get(timeout=0.5))
                elif how == "receive":
                    d = keep.receive(timeout=0.5)
                    got.append(d.value)
                    calls.append(d.redelivered)
                    d.ack()
                else:
                    batch = keep.get_many(2, timeout=0.5)
                    calls.append(len(batch))
                    got += batch
            except fastq.Empty:
                pass
        dt = time.monotonic() - t0
        with pytest.raises(fastq.Empty):
            keep.get(timeout=0.3)
        want = [b"%d" % i for i in range(10)]
        assert sorted(got) == want, (
            f"{kind} reader killed in get_many() holding 10 messages; the next one "
            f"used {how}() and got {got} ({calls})")
        assert got == want, f"a claim taken over comes back in its order: {got}"
        if how == "get_many":
            assert max(calls) <= 2, f"get_many(2) returned batches of {calls}"
        if how == "receive":
            assert all(calls), f"every message of the dead reader's claim is redelivered: {calls}"
        assert dt < GAP_BOUND, f"taking the claim over took {dt:.2f} s"
        assert keep.lag == 0


# ---- focused: a durable reader killed copying 4 MiB messages ----------------------------


class SlowCheck(Passthrough):
    """Copies the message out of the ring and checks it 256 KiB at a time
    (a few ms per message): inside get(), the claim held."""

    def __init__(self, fd):
        self.fd = fd

    def loads(self, data):
        os.write(self.fd, b"B %d\n" % MSGS.HDR.unpack_from(data)[3])
        buf = bytearray()
        for i in range(0, len(data), 256 << 10):
            buf += data[i:i + (256 << 10)]
            time.sleep(0.0005)
        r = MSGS.check(buf)
        os.write(self.fd, b"L %d\n" % MSGS.HDR.unpack_from(data)[3])
        return -1 if r is None else r[1]


def durable_big_reader(path, log_path, slow):
    fd = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    t = fastq.Topic.open(path, serializer=SlowCheck(fd) if slow else "raw")
    s = t.subscribe(name="big")
    while True:
        os.write(fd, b"A\n")
        m = s.get(timeout=30)
        if not slow:
            os.write(fd, b"R %d\n" % MSGS.HDR.unpack_from(m)[3])  # returned
            r = MSGS.check(m)
            m = -1 if r is None else r[1]
        os.write(fd, b"G %d\n" % m)


def test_durable_killed_copying_4mib_message_at_random(tmp_path, procs):
    MSGS.base()
    rng = random.Random()
    KILLS = 24
    big = 4 << 20
    with fastq.Topic("tbig", capacity=CAPACITY, serializer="raw") as t:
        t.subscribe(name="big").close()  # the durable name exists from here on
        n = 0
        while n < 5:  # 5 x 4 MiB: fits, nobody waits
            t.publish(MSGS.make(5, n, big - n), timeout=5)
            n += 1
        logs, in_get_raw, maybe_lost, must_back = [], 0, set(), set()
        for k in range(KILLS):
            slow = k % 2 == 1
            log = str(tmp_path / f"b{k}.log")
            p = procs.add(CTX.Process(target=durable_big_reader, args=(t.path, log, slow)))
            p.start()
            wait_for(lambda: os.path.exists(log) and b"A" in open(log, "rb").read(),
                     "the reader to call get()", timeout=20)
            time.sleep(rng.uniform(0.0, 0.012))
            os.kill(p.pid, signal.SIGKILL)
            p.join(10)
            assert p.exitcode == -signal.SIGKILL
            lines = open(log, "rb").read().splitlines()
            logs.append((log, slow))
            # raw: killed after "A": inside get() (maybe in its memcpy), or just
            # after it returned (then the message is lost with it); after "R s":
            # s was returned, lost with it.  slow: killed after "L s" (loads()
            # had returned: inside get() or after); after "B": inside loads(),
            # the claim held: it must come back
            in_get_raw += (not slow) and lines[-1] == b"A"
            if lines[-1].startswith((b"L", b"R")):
                maybe_lost.add(int(lines[-1].split()[1]))
            elif lines[-1].startswith(b"B"):
                must_back.add(int(lines[-1].split()[1]))
            # keep up to 5 queued; a message held by the dead reader takes its place
            while True:
                try:
                    t.publish(MSGS.make(5, n, big - n % 7), timeout=0.05)
                except fastq.Full:
                    break
                n += 1
                if n % 5 == 0:
                    break
        t0 = time.monotonic()
        rest = []
        with fastq.Topic.open(t.path, serializer="raw") as t2:
            s = t2.subscribe(name="big")
            while True:
                try:
                    m = s.get(timeout=1.0 if not rest else 0.5)
                except fastq.Empty:
                    break
                if not rest:
                    first_dt = time.monotonic() - t0
                r = MSGS.check(m)
                assert r is not None, "a corrupt message"
                rest.append(r[1])
            assert s.lag == 0
            s.close()
        got = []
        for log, slow in logs:
            for ln in open(log, "rb").read().splitlines():
                if ln.startswith(b"G"):
                    got.append(int(ln.split()[1]))
        assert -1 not in got, "a reader received a corrupt message"
        got += rest
        missing = sorted(set(range(n)) - set(got))
        unexplained = sorted(set(missing) - maybe_lost)
        info = (f"4 MiB: {KILLS} kills ({in_get_raw} of raw readers inside get(), "
                f"{len(must_back)} of slow readers inside loads(), {len(maybe_lost)} "
                f"after the message was (maybe) returned), {n} messages, "
                f"{len(got)} delivered, missing {missing}")
        # a message held by a killed reader (must_back) comes back, but the next
        # reader may be killed too: lost only in a way one of them can explain
        check_delivered(got, n, info, unexplained, may_lose=in_get_raw)
        assert first_dt < GAP_BOUND + 0.5, f"the first message took {first_dt:.2f} s"

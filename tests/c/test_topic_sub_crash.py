"""3. Crash points of a subscriber (a member of group "g", with a live member M):
sub_after_intent, sub_after_claim, sub_before_end; the helping rule and orphans; a
recoverer killed reaping a claiming member; a taker killed taking an orphan.
"""

import os
import random
import select
import signal
import time
import zlib

import pytest

from support.cseg import CAP, lib, mk, recover_fully, seq_of
from support.ctopic import (acked_and_open, GROUP, Log, MEM_ACTIVE, MEM_FREE, MEM_ORPHAN,
                            member_child, PH_CLAIMING, PH_IDLE, PH_WON, publish_all,
                            recoverer_child, run_child, T, workout)
from support.procs import children, fork, reap


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
            pid = run_child(pids, member_child, path, "g", GROUP, point, 2, 3, log,
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
            workout(t, [m], random.Random(zlib.crc32(repr((point, order)).encode())))
    finally:
        log.close()
        t.close()



def test_helping_rule_dead_winner_becomes_orphan(path):
    """C dies at sub_after_claim (its head CAS done, still CLAIMING).  A live member M
    then claims: it must first help C to WON, then take the next range.  Recovery
    turns C's entry into an orphan, which M takes: messages exactly once."""
    t, m = _setup_group(path, 9)
    log = Log()
    try:
        with children() as pids:
            pid = run_child(pids, member_child, path, "g", GROUP, "sub_after_claim", 1, 3,
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
            pa = fork(member_child, path, "g", GROUP, "sub_after_claim", 1, 3, log, 1000,
                      (ready_w, go_r))
            pids.append(pa)
            assert os.read(ready_r, 1) == b"R"
            pb = run_child(pids, member_child, path, "g", GROUP, "sub_after_intent", 1, 2,
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
            pa = run_child(pids, member_child, path, "g", GROUP, first, 1, 3, log)
            e = _dead_member(t, pa)
            pr = run_child(pids, recoverer_child, path, "topic_reap_claiming")
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
            workout(t, [m], random.Random(3))
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
                run_child(pids, member_child, path, "g", GROUP, cause, 1, 3, log)
                recover_fully(t)
            orph = [i for i in t.entries((MEM_ORPHAN,))]
            assert len(orph) == 1
            pb = run_child(pids, member_child, path, "g", GROUP, "take_orphan_covered", 1, 5,
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
            workout(t, [m], random.Random(4))
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
            run_child(pids, member_child, path, "g", GROUP, "sub_before_end", 1, 5, log)
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

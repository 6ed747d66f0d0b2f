"""8. Regressions from the core reviews of csrc/fq_topic.c (first review: 2caa44d,
second: 70d14a8): one test per bug; each docstring names the bug and the behaviour its
fix guarantees.
"""

import struct
import time

import pytest

from support.cseg import CAP, ffi, HDR, lib, mk, recover_fully, seq_of
from support.ctopic import (advance_to, ANON, CTRL_EPOCH, CTRL_RELEASE, ctrl_u64, EARLIEST, GROUP,
                            Log, member_child, open_guarded, poke_ctrl_u64, PREFIX, publish_all,
                            publisher_child, run_child, seqs, T, trec)
from support.procs import children, fork, reap


# ---------------------------------------------------------------------------
# 8. regressions from the core reviews (first review: 2caa44d, second: 70d14a8)
#
# One test per bug the two adversarial reviews of csrc/fq_topic.c found; each
# docstring names the bug and the behaviour its fix guarantees.



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
                run_child(pids, member_child, path, "grp", GROUP, "sub_after_claim", 1, 5,
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
        ep0 = ctrl_u64(path, CTRL_EPOCH)
        rel0 = ctrl_u64(path, CTRL_RELEASE)
        assert rel0 == t.stats()["release"]  # the offset is right
        rc, c = taker.begin(16)  # takes the orphan over
        assert rc == 0 and c.redelivered and c.n == 5, (rc, c.redelivered, c.n)
        assert ctrl_u64(path, CTRL_EPOCH) > ep0, \
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
    poke_ctrl_u64(path, CTRL_RELEASE, poke)  # release ahead of the head, misaligned
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
            run_child(pids, publisher_child, path, "put_after_claim", 1, [[mk(1, 100)]])
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
    t = open_guarded(path)
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
            run_child(pids, publisher_child, path, "put_after_claim", 1, [[mk(1, 64)]])
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
    t = open_guarded(path)
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
            run_child(pids, publisher_child, path, "put_after_claim", 1, [[mk(1, 64)]])
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
                run_child(pids, publisher_child, path, "put_before_commit", 1, [[mk(1, 48)]])
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

"""White-box tests of a topic's group heads and of a block topic's release scan
(csrc/fq_topic.c fq_topic_release, fq_topic.h the group head pair, fq_sub.c fq_group_lag), through
cffi (tests/support/cbuild.py, cseg.py; the wrappers are tests/support/ctopic.py's).

Regressions of issue 9: a member joining an existing group while a publisher's
release scan is in progress (bug 8, with the pause point
"topic_release_after_hwm"); every table change made under the segment lock bumps
the release epoch; a durable subscriber of a drop topic that lags more than 2^51
bytes (bug 6: group heads were packed into 48 bits and rebuilt next to tail).
"""

import os
import select

from support.cseg import CAP, lib, mk, recover_fully, seq_of
from support.ctopic import (CTRL_EPOCH, CTRL_RELEASE, ctrl_u64, DURABLE, EARLIEST, GROUP,
                            poke_ctrl_u64, publisher_child, T, trec)
from support.procs import children, fork, reap

import pytest

CTRL_TAIL, CTRL_PUBLISHED = 128, 136


def _wait_byte(fd, timeout=10.0):
    r, _, _ = select.select([fd], [], [], timeout)
    assert r, "the child did not reach its pause point in %.0fs" % timeout
    return os.read(fd, 1)


def _paused_publisher_child(path, point, notify_w, resume_r, n):
    """put one message of n bytes, pausing at point (first time); exit 10: put,
    11: FULL, 12: anything else"""
    t = T.open(path)
    lib.fq_test_set_pause_point(point.encode(), 1, notify_w, resume_r)
    rc = t.put(mk(9999, n))
    return {0: 10, lib.FQ_FULL: 11}.get(rc, 12)


def _fill(t):
    """publish until the ring is full; the number of messages"""
    n = 0
    while t.put(mk(n, 1000 if n == 0 else 64)) == 0:
        n += 1
    assert n > 2
    return n


def test_regression_member_joining_a_group_during_a_release_scan(path):
    """Issue 9, bug 8: fq_topic_release loaded subs_hwm once, before the group
    heads.  A member joining an existing group lands at index hwm (the table is
    full up to it) and did not bump the epoch; if it claimed [h, p) between the
    publisher's hwm load and its head load, the publisher saw head p, never
    scanned the new entry, moved release to p and overwrote the claim being
    read (a torn message; or, copied later, a message skipped).  Here the
    publisher is paused right after its hwm load while member B joins group g
    (index 1 = hwm) and claims message 0.  Correct: the publisher's put is FULL
    (release stays at 0) and B reads message 0 whole."""
    t = T.create(path, capacity=CAP)
    try:
        a = t.subscribe("g", GROUP)
        assert a.index() == 0
        n = _fill(t)
        assert t.stats()["release"] == 0
        notify_r, notify_w = os.pipe()
        resume_r, resume_w = os.pipe()
        with children() as pids:
            pid = fork(_paused_publisher_child, path, "topic_release_after_hwm", notify_w,
                       resume_r, 64)
            pids.append(pid)
            assert _wait_byte(notify_r) == b"P"
            b = t.subscribe("g", GROUP)  # joins g at index hwm
            assert b.index() == 1
            rc, c = b.begin(1)
            assert rc == 0 and c.pos == 0 and c.end == trec(1000), (rc, c.pos, c.end)
            os.write(resume_w, b"G")
            code = reap(pid)
            pids.remove(pid)
            msgs = b.read(c)
            assert [(i, seq_of(m)) for i, m in msgs] == [(0, 0)], \
                "B's claim of message 0 was overwritten (publisher exit %s)" % code
            assert code == 11, "the publisher's put passed B's claim (exit %s)" % code
            assert t.stats()["release"] == 0
            b.end(c)
            # the rest comes whole to the group, and the publisher has room again
            got = [seq_of(m) for _, m, _ in a.drain()]
            assert got == list(range(1, n))
            assert t.put(mk(n, 64)) == 0
        for fd in (notify_r, notify_w, resume_r, resume_w):
            os.close(fd)
    finally:
        t.close()


def test_every_table_change_under_the_lock_bumps_the_epoch(path):
    """Issue 9, bug 8 (the rule made structural): a publisher's scan that began
    before any change of the member or group tables fails its (release, epoch)
    CAS.  Each change made under the segment lock (a member joining an existing
    group, leaving, a group forgotten, a dead member reaped) bumps the epoch."""
    t = T.create(path, capacity=CAP)
    try:
        def bumped(fn):
            e0 = ctrl_u64(path, CTRL_EPOCH)
            r = fn()
            assert ctrl_u64(path, CTRL_EPOCH) > e0, fn
            return r

        a = bumped(lambda: t.subscribe("g", GROUP))  # a new group
        b = bumped(lambda: t.subscribe("g", GROUP))  # joins it
        d = bumped(lambda: t.subscribe("d", DURABLE))
        bumped(b.unsubscribe)
        bumped(d.unsubscribe)
        assert bumped(lambda: lib.fq_topic_forget(t.q, b"d")) == 0
        a.unsubscribe()
    finally:
        t.close()


def _group_info(t, name):
    rows = [r for _, r in t.info() if r["name"] == name]
    assert len(rows) == 1, rows
    return rows[0]


@pytest.mark.parametrize("lag_bytes", [3 << 50, 1 << 52, (1 << 62) + (5 << 12)])
def test_regression_durable_subscriber_lagging_past_2_51_bytes(path, lag_bytes):
    """Issue 9, bug 6: group heads were packed into 48 bits of pos >> 4 and
    rebuilt next to tail, so a durable subscriber of a drop topic that lagged
    more than 2^51 bytes had its head rebuilt ahead of tail: fq_sub_begin
    returned FQ_ECORRUPT forever, its position and lag were wrong.  A hand-made
    segment: "d" subscribes at 0 and leaves; tail and release are set lag_bytes
    on (published 1000 on: every message in between was lost), 5 messages are
    published.  Correct: its position is still 0 and its lag 5; subscribed
    again it gets the 5 (indices 1000..1004) and counts 1000 dropped."""
    t = T.create(path, capacity=CAP, drop=True)
    try:
        t.subscribe("d", DURABLE, EARLIEST).unsubscribe()
        for off, v in ((CTRL_TAIL, lag_bytes), (CTRL_PUBLISHED, 1000),
                       (CTRL_RELEASE, lag_bytes)):
            poke_ctrl_u64(path, off, v)
        for i in range(5):
            assert t.put(mk(1000 + i, 64)) == 0
        st = t.stats()
        assert st["tail"] == lag_bytes + 5 * trec(64) and st["published"] == 1005
        info = _group_info(t, "d")
        assert (info["position"], info["lag"]) == (0, 5), info
        d = t.subscribe("d", DURABLE)
        got = d.drain()
        assert [(i, seq_of(m)) for i, m, _ in got] == [(1000 + k,) * 2 for k in range(5)]
        assert (d.dropped(), d.lag()) == (1000, 0)
        assert _group_info(t, "d")["position"] == st["tail"]
        d.unsubscribe()
    finally:
        t.close()


# ---------------------------------------------------------------------------
# lag: what it counts (issue 9, suspected item on lag)


def test_lag_counts_a_nacked_claim_like_one_given_back_on_close(path):
    """Issue 9: lag counted a message given back by close() (an orphan) but not
    one given back by nack() (fq_sub_hold).  lag counts what the group is still
    to deliver: both, but not a delivery in flight (received, not settled)."""
    t = T.create(path, capacity=CAP)
    try:
        a = t.subscribe("g", GROUP)
        b = t.subscribe("g", GROUP)
        for i in range(3):
            assert t.put(mk(i, 64)) == 0
        assert a.lag() == 3
        rc, c = a.begin(1)
        assert rc == 0 and c.n == 1
        assert a.lag() == 2, "a delivery in flight is not to come"
        a.hold(c, 0, 1)  # nack: comes again
        assert a.lag() == b.lag() == 3
        assert [r["lag"] for _, r in t.info() if r["name"] == "g"] == [3, 3]
        rc, c = a.begin(1)
        assert rc == 0 and c.redelivered and [seq_of(m) for _, m in a.read(c)] == [0]
        assert a.lag() == 2
        a.end(c)
        assert a.lag() == 2
        rc, c = b.begin(1)  # message 1, then b closes holding it: an orphan
        assert rc == 0 and c.n == 1 and a.lag() == 1
        b.unsubscribe()
        assert a.lag() == 2
        assert [(seq_of(m), red) for _, m, red in a.drain()] == [(1, 1), (2, 0)]
        assert a.lag() == 0
    finally:
        t.close()


def test_lag_counts_a_nacked_remainder_of_a_claim(path):
    """A claim kept from a message on (the rest of a claim taken over, or a
    nack from the middle): lag counts what is left of it."""
    t = T.create(path, capacity=CAP)
    try:
        a = t.subscribe("g", GROUP)
        for i in range(4):
            assert t.put(mk(i, 64)) == 0
        rc, c = a.begin(3)
        assert rc == 0 and c.n == 3
        assert a.next(c)[0] == mk(0, 64)
        _, _, pos1 = a.next(c)  # message 1: given back from here
        a.hold(c, pos1, 1)
        assert a.lag() == 3  # 1, 2 held; 3 after the head
        got = a.drain()
        assert [(seq_of(m), red) for _, m, red in got] == [(1, 1), (2, 1), (3, 0)]
        assert a.lag() == 0
    finally:
        t.close()


def test_lag_counts_past_a_put_killed_before_its_headers(path):
    """Issue 9: fq_group_lag stopped at a region without headers (a put killed
    between its tail CAS and its headers, until recovery) and ignored every
    message after it; its count-by-index fallback never fired there.  Correct:
    the killed put's message counts like a put in progress (its intent names
    the region) until recovery abandons it, and the messages after it count."""
    t = T.create(path, capacity=CAP)
    try:
        s = t.subscribe("x")
        with children() as pids:
            pid = fork(publisher_child, path, "put_after_claim", 1, [[mk(0, 64)]])
            pids.append(pid)
            assert reap(pid) == 9
            pids.remove(pid)
        for i in range(1, 4):
            assert t.put(mk(i, 64)) == 0
        assert s.lag() == 4
        assert _group_info(t, "x")["lag"] == 4
        recover_fully(t)
        assert s.lag() == 3
        assert [seq_of(m) for _, m, _ in s.drain()] == [1, 2, 3]
        assert s.lag() == 0
    finally:
        t.close()


def test_lag_counts_past_a_put_in_progress(path):
    """A put paused between its tail CAS and its headers: lag counts it and
    every message after it; all of them then come."""
    t = T.create(path, capacity=CAP)
    try:
        s = t.subscribe("x")
        notify_r, notify_w = os.pipe()
        resume_r, resume_w = os.pipe()
        with children() as pids:
            pid = fork(_paused_publisher_child, path, "put_after_claim", notify_w, resume_r, 64)
            pids.append(pid)
            assert _wait_byte(notify_r) == b"P"
            for i in range(2):
                assert t.put(mk(i, 64)) == 0
            assert s.lag() == 3
            os.write(resume_w, b"G")
            assert reap(pid) == 10
            pids.remove(pid)
        assert s.lag() == 3
        assert [seq_of(m) for _, m, _ in s.drain()] == [9999, 0, 1]
        for fd in (notify_r, notify_w, resume_r, resume_w):
            os.close(fd)
    finally:
        t.close()

"""A queue consumer lane's held word (fq_layout.h; fq_get_mark_unacked,
fq_counts_read): a delivery kept by receive() counts while its claim is
open, and a later claim of the same lane (a get()) is not mistaken for it."""

import time

from support.cseg import ffi, lib


def _held(q):
    c = ffi.new("fq_counts *")
    lib.fq_counts_read(q.q, c)
    return c.held, c.held_since_ns


def test_held_counts_only_the_claim_it_names(seg):
    q = seg()
    for i in range(3):
        assert q.put(b"m%d" % i) == 0
    rc, a = q.begin()
    assert rc == 0 and _held(q) == (0, 0)  # claimed, not kept: a get() in progress
    lib.fq_get_mark_unacked(q.q, a)
    n, since = _held(q)
    assert n == 1 and since > 0
    rc, b = q.begin()  # another lane, a claim while a is held
    assert rc == 0 and b.lane != a.lane and _held(q) == (1, since)
    q.end(b)
    q.end(a)
    assert _held(q) == (0, 0)
    rc, c = q.begin()  # a's lane again, its held word stale: not counted
    assert rc == 0 and c.lane == a.lane and _held(q) == (0, 0)
    q.end(c)


def test_held_since_is_the_wall_clock(seg):
    """The age's start is CLOCK_REALTIME (review 15, T1: the clock every
    process reads alike, in any time namespace, after a reboot), at ms
    resolution: between the clock read before the receive's mark and after."""
    q = seg()
    assert q.put(b"m") == 0
    rc, a = q.begin()
    assert rc == 0
    t0 = time.time_ns()
    lib.fq_get_mark_unacked(q.q, a)
    t1 = time.time_ns()
    n, since = _held(q)
    assert n == 1 and t0 - 1000000 < since <= t1, (t0, since, t1)
    q.end(a)
    assert _held(q) == (0, 0)


def test_a_get_after_a_nack_on_the_same_lane_is_not_held(seg):
    """The nacked record taken again on its lane (a get(), fq_take_requeued) at
    the same position: the new claim cleared the lane's held word (H1)."""
    q = seg()
    assert q.put(b"m") == 0 and q.put(b"n") == 0
    rc, a = q.begin()
    assert rc == 0
    lib.fq_get_mark_unacked(q.q, a)
    q.abort(a)
    rc, b = q.begin()
    assert rc == 0 and b.lane == a.lane and b.redelivered and b.pos == a.pos
    assert _held(q) == (0, 0)
    lib.fq_get_mark_unacked(q.q, b)  # a receive() of it: counted again
    assert _held(q)[0] == 1
    q.end(b)
    assert _held(q) == (0, 0)

"""A queue consumer lane's held word (fq_layout.h; fq_get_mark_unacked,
fq_counts_read): a delivery kept by receive() counts while its claim is
open, and a later claim of the same lane (a get()) is not mistaken for it."""

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

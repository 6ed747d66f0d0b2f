"""The adaptive spin budget (csrc/fq_wait.c, "Before sleeping, a waiter spins"): the rule
that sets how long a handle spins before it sleeps, driven through the C API in one
process (fq_spin: one spin within the budget; fq_spin_missed: the waiter had to sleep).
Counted, never timed: each spin here either finds the condition at its first look (a
message is there) or cannot find it (the queue is empty and nobody puts).
"""
import os

import pytest

from support.cring import Q
from support.cseg import ffi, lib

WAIT_DATA = 0

pytestmark = pytest.mark.skipif((os.cpu_count() or 1) < 2,
                                reason="no spinning at all on a single core")


def _limits():
    out = ffi.new("uint32_t[3]")
    lib.fqt_spin_limits(out)
    return out[0], out[1], out[2]


MIN_NS, MAX_NS, PROBE_EVERY = _limits()


def _miss(q):
    """a wait whose spin found nothing (the queue is empty): the waiter sleeps"""
    assert lib.fq_spin(q.q, WAIT_DATA, 0, MAX_NS) == 0
    lib.fq_spin_missed(q.q)


def _pay(q):
    """a wait whose spin found a message: it is there before the spin starts"""
    assert q.put(b"m") == 0
    assert lib.fq_spin(q.q, WAIT_DATA, 0, MAX_NS) == 1
    rc, msgs, _ = q.get()
    assert rc == 0 and msgs == [b"m"]


def _to_the_floor(q):
    """misses until the budget is at the floor (the last one halved it there)"""
    for _ in range(64):
        if lib.fqt_spin_ns(q.q) == MIN_NS:
            return
        _miss(q)
    raise AssertionError("64 misses in a row left the budget at %d ns" % lib.fqt_spin_ns(q.q))


def test_misses_take_the_budget_to_the_floor_and_it_stays_there(seg):
    q = seg()
    assert lib.fqt_spin_ns(q.q) == MAX_NS
    for _ in range(20):
        _miss(q)
    assert lib.fqt_spin_ns(q.q) == MIN_NS


def test_a_probe_that_pays_restores_the_full_budget(seg):
    """At the floor, every PROBE_EVERY-th wait spins the full budget once; when that
    spin finds the message, the budget is back at the max at once (halving left it at
    the floor for good: only a spin within 1 us could double it, one step at a time)."""
    q = seg()
    _to_the_floor(q)
    for _ in range(PROBE_EVERY):
        _miss(q)
    assert lib.fqt_spin_ns(q.q) == MIN_NS
    _pay(q)
    assert lib.fqt_spin_ns(q.q) == MAX_NS


def test_a_spin_that_pays_between_probes_only_doubles(seg):
    q = seg()
    _to_the_floor(q)
    _miss(q)
    _pay(q)
    assert lib.fqt_spin_ns(q.q) == 2 * MIN_NS

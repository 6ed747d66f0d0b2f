"""The adaptive spin budget (csrc/fq_wait.c, "Before sleeping, a waiter spins"): the rule
that sets how long a handle spins before it sleeps, driven through the C API in one
process (fq_spin: one spin within the budget; fq_spin_missed: the waiter had to sleep).
Counted, never timed: each spin here either finds the condition at its first look (a
message is there) or cannot find it (the queue is empty and nobody puts).
"""
import os

import pytest

from support.cseg import ffi, lib

WAIT_DATA = 0
FLOOR = 0  # below FQ_SPIN_MIN_NS: no spin at all

pytestmark = pytest.mark.skipif((os.cpu_count() or 1) < 2,
                                reason="no spinning at all on a single core")


def _limits():
    out = ffi.new("uint64_t[5]")
    lib.fqt_spin_limits(out)
    return tuple(out)


MIN_NS, MAX_NS, PROBE_EVERY, PROBE_NEAR_NS, TRY_EVERY = _limits()


def _miss(q):
    """a wait whose spin found nothing (the queue is empty): the waiter sleeps"""
    assert lib.fq_spin(q.q, WAIT_DATA, 0, MAX_NS) == 0
    lib.fq_spin_missed(q.q)


def _pay(q, ns=MAX_NS):
    """a wait whose spin found a message: it is there before the spin starts"""
    assert q.put(b"m") == 0
    assert lib.fq_spin(q.q, WAIT_DATA, 0, ns) == 1
    rc, msgs, _ = q.get()
    assert rc == 0 and msgs == [b"m"]


def _to_the_floor(q):
    """misses until the budget is at the floor (the last one halved it there)"""
    for _ in range(64):
        if lib.fqt_spin_ns(q.q) == FLOOR:
            return
        _miss(q)
    raise AssertionError("64 misses in a row left the budget at %d ns" % lib.fqt_spin_ns(q.q))



def test_misses_take_the_budget_to_the_floor_and_it_stays_there(seg):
    q = seg()
    assert lib.fqt_spin_ns(q.q) == MAX_NS
    _miss(q)
    assert lib.fqt_spin_ns(q.q) == MAX_NS // 2
    for _ in range(2 * PROBE_EVERY):
        _miss(q)
    assert lib.fqt_spin_ns(q.q) == FLOOR


def test_a_probe_that_pays_restores_the_full_budget(seg):
    """At the floor, every PROBE_EVERY-th wait spins the full budget once; when that
    spin finds the message, the budget is back at the max at once (halving left it at
    the floor for good: only a spin within 1 us could double it, one step at a time)."""
    q = seg()
    _to_the_floor(q)
    for _ in range(PROBE_EVERY):
        _miss(q)
    assert lib.fqt_spin_ns(q.q) == FLOOR
    _pay(q)
    assert lib.fqt_spin_ns(q.q) == MAX_NS


def test_a_short_probe_that_pays_leaves_the_floor_one_step(seg):
    """Every TRY_EVERY-th miss at the floor (between full probes) spins FQ_SPIN_MIN_NS:
    if that pays, the budget is twice that, and doubles on from there."""
    q = seg()
    _to_the_floor(q)
    for _ in range(TRY_EVERY):
        _miss(q)
    _pay(q)
    assert lib.fqt_spin_ns(q.q) == 2 * MIN_NS
    _pay(q)
    assert lib.fqt_spin_ns(q.q) == 4 * MIN_NS


def test_at_the_floor_a_look_that_finds_a_message_is_no_probe(seg):
    """Between probes a waiter at the floor looks once: finding a message then says
    nothing about spinning, the budget stays; nor does it restart the count (the
    probe still comes after PROBE_EVERY misses)."""
    q = seg()
    _to_the_floor(q)
    _pay(q)
    assert lib.fqt_spin_ns(q.q) == FLOOR
    for _ in range(PROBE_EVERY - 1):
        _miss(q)
    _pay(q)
    assert lib.fqt_spin_ns(q.q) == FLOOR
    _miss(q)
    _pay(q)
    assert lib.fqt_spin_ns(q.q) == MAX_NS


def test_a_probe_that_misses_waits_for_the_next_round(seg):
    q = seg()
    _to_the_floor(q)
    for _ in range(PROBE_EVERY):
        _miss(q)
    _miss(q)  # the probe: nothing came; the first miss of the next round
    assert lib.fqt_spin_ns(q.q) == FLOOR
    for _ in range(TRY_EVERY - 2):
        _miss(q)
    _pay(q)  # TRY_EVERY - 1 misses since the probe: a look, no spin
    assert lib.fqt_spin_ns(q.q) == FLOOR
    _miss(q)
    _pay(q)  # TRY_EVERY: a short probe
    assert lib.fqt_spin_ns(q.q) == 2 * MIN_NS


def test_above_the_floor_a_spin_that_pays_doubles(seg):
    q = seg()
    for _ in range(3):
        _miss(q)
    assert lib.fqt_spin_ns(q.q) == MAX_NS // 8
    _pay(q)
    assert lib.fqt_spin_ns(q.q) == MAX_NS // 4


def test_a_waiter_idle_for_long_does_not_probe(seg):
    """A consumer whose last sleep lasted long (nothing came for a while) spins no
    probe: it would spin once per idle period for nothing.  After a short sleep it
    probes again."""
    q = seg()
    _to_the_floor(q)
    for _ in range(PROBE_EVERY):
        _miss(q)
    lib.fqt_spin_slept(q.q, PROBE_NEAR_NS)
    for _ in range(3):
        _pay(q)
        assert lib.fqt_spin_ns(q.q) == FLOOR
    lib.fqt_spin_slept(q.q, PROBE_NEAR_NS - 1)
    _pay(q)
    assert lib.fqt_spin_ns(q.q) == MAX_NS


def test_a_short_spin_never_probes(seg):
    """A caller that allows less than the full budget (the binding's spin with the GIL
    held) does not take the probe: the next wait that allows it does."""
    q = seg()
    _to_the_floor(q)
    for _ in range(PROBE_EVERY):
        _miss(q)
    _pay(q, MAX_NS - 1)
    assert lib.fqt_spin_ns(q.q) == FLOOR
    _pay(q)
    assert lib.fqt_spin_ns(q.q) == MAX_NS

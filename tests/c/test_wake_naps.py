"""Waking each sleep once (csrc/fq_wait.c): a writer that sees a slot's nap
SLEEPING (registration n) wakes, then CASes exactly that value to WOKEN; later writers see
WOKEN and make no FUTEX_WAKE.  The danger is a WOKEN mark on a sleep that no
FUTEX_WAKE covers: that sleeper sleeps forever beside a message.

White-box, in one process with two handles (two slots) on one segment: a thread
sleeps through the sleeper's handle; the writer's fq_wake runs in another thread,
paused at the named point between its FUTEX_WAKE and its CAS
("wake_before_nap_cas") while the woken sleeper goes back to sleep.
"""
import pytest

from support.cseg import create, ffi, lib, mk, open_seg
from support.futexwatch import (BOUND, CTRL_DATA_SEQ, LONG_NS, WAIT_DATA, Waiter, asleep_on,
                                need_futex_nr, seg_base)

FOREVER = 2**64 - 1
STRATEGY_SLEEP = 2
NAP_WOKEN = 1


class _H:
    """just what seg_base needs"""

    def __init__(self, q):
        self.q = q


class Paused:
    """fn run in a thread of ours, paused at a named point of the C core until resume()"""

    def __init__(self, point, fn):
        import os
        import threading
        self._os = os
        self.nr, self.nw = os.pipe()
        self.rr, self.rw = os.pipe()
        lib.fq_test_set_pause_point(point.encode(), 1, self.nw, self.rr)
        self.th = threading.Thread(target=fn, daemon=True)
        self.th.start()
        assert os.read(self.nr, 1) == b"P", "the thread did not reach the pause point"

    def resume(self):
        self._os.write(self.rw, b"G")
        self.th.join(BOUND)
        assert not self.th.is_alive(), "the paused call did not finish"

    def close(self):
        if self.th.is_alive():
            self._os.write(self.rw, b"G")
            self.th.join(BOUND)
        lib.fq_test_set_pause_point(b"", 0, -1, -1)
        for fd in (self.nr, self.nw, self.rr, self.rw):
            self._os.close(fd)


@pytest.fixture
def seg(tmp_path):
    rc, owner, err = create(tmp_path / "q")
    assert rc == 0, err
    rc, sleeper, err = open_seg(tmp_path / "q")
    assert rc == 0, err
    rc, writer, err = open_seg(tmp_path / "q")
    assert rc == 0, err
    yield owner, sleeper, writer
    for h in (writer, sleeper, owner):
        lib.fq_close(h)


def _sleep_on_data(q):
    """a thread asleep in fq_wait_for(DATA) with no timeout (nothing in flight:
    the deep sleep), returned once it is in FUTEX_WAIT on the data word"""
    w = Waiter(lambda: lib.fq_wait_for(q, WAIT_DATA, 1, LONG_NS, FOREVER, STRATEGY_SLEEP))
    assert w.blocked_in(asleep_on(seg_base(_H(q)) + CTRL_DATA_SEQ)), "the sleeper did not sleep"
    return w


def _slot(q):
    s = lib.fqt_my_slot(q)
    assert s >= 0
    return s


def _data_seq(q):
    return ffi.cast("uint32_t *", seg_base(_H(q)) + CTRL_DATA_SEQ)[0]


def _put(q, n=1):
    for i in range(n):
        assert lib.fq_put(q, mk(i), 64) == 0


@need_futex_nr
def test_a_sleep_registered_after_the_wake_is_not_marked_woken(seg):
    """The writer saw SLEEPING(v0) and woke; before its CAS the sleeper went back
    to sleep on a later value: the CAS must fail, and the next write must wake it."""
    _owner, sleeper, writer = seg
    w1 = _sleep_on_data(sleeper)
    s = _slot(sleeper)
    v0 = _data_seq(sleeper)
    n0 = lib.fqt_nap(sleeper, s, WAIT_DATA)
    assert not n0 & NAP_WOKEN, "a sleep says SLEEPING"
    p = Paused("wake_before_nap_cas", lambda: lib.fqt_wake(writer, WAIT_DATA))
    try:
        w1.join(BOUND)
        assert not w1.is_alive(), "the FUTEX_WAKE did not wake the sleeper"
        w2 = _sleep_on_data(sleeper)  # asleep again, on the bumped word
        v1 = _data_seq(sleeper)
        assert v1 != v0
        n1 = lib.fqt_nap(sleeper, s, WAIT_DATA)
        assert not n1 & NAP_WOKEN and n1 != n0, "a new sleep is a new registration"
        p.resume()
    finally:
        p.close()
    nap = lib.fqt_nap(sleeper, s, WAIT_DATA)
    assert not nap & NAP_WOKEN, "the stale CAS marked a sleep no FUTEX_WAKE covered"
    _put(writer)
    w2.join(BOUND)
    assert not w2.is_alive(), "lost wake-up: the sleeper slept through a put"


@need_futex_nr
def test_a_woken_sleep_costs_later_writers_no_syscall(seg):
    _owner, sleeper, writer = seg
    w = _sleep_on_data(sleeper)
    s = _slot(sleeper)
    before = ffi.new("uint64_t[3]")
    lib.fq_wait_counts(before)
    _put(writer)  # wakes, marks WOKEN
    assert lib.fqt_nap(sleeper, s, WAIT_DATA) & NAP_WOKEN
    _put(writer, 20)  # the sleeper may not have run yet: no FUTEX_WAKE either way
    after = ffi.new("uint64_t[3]")
    lib.fq_wait_counts(after)
    assert after[1] - before[1] == 1, "FUTEX_WAKEs: %d" % (after[1] - before[1])
    w.join(BOUND)
    assert not w.is_alive()


@need_futex_nr
def test_the_last_sleeper_leaving_marks_its_nap_woken(seg):
    """a sleep that ends without a writer's wake (its timeout) must not cost the
    next writer a FUTEX_WAKE on nobody"""
    _owner, sleeper, writer = seg
    assert lib.fq_wait_for(sleeper, WAIT_DATA, 1, 10**6, 10**6, STRATEGY_SLEEP) == 0
    s = _slot(sleeper)
    assert lib.fqt_nap(sleeper, s, WAIT_DATA) & NAP_WOKEN
    before = ffi.new("uint64_t[3]")
    lib.fq_wait_counts(before)
    _put(writer, 5)
    after = ffi.new("uint64_t[3]")
    lib.fq_wait_counts(after)
    assert after[1] == before[1]

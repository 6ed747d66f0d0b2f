"""Review of "Waking each sleep once" (docs/review-naps.md): the one defect found,
D1, fixed (the nap is now a count of registrations, not the futex value).

The nap was SLEEPING(v), only the 32 bits of the futex word.  A writer stopped
between its FUTEX_WAKE and its CAS (preempted right after the wake: the woken
thread often takes its core; SIGSTOP; a debugger) still holds SLEEPING(v0).  If,
before it runs again, the word comes round to v0 (2^32 bumps: here simulated by
storing v0 back into the word, which is all a sleeper or a CAS can see of 2^32
bumps) and a new sleep registers at v0, the stale CAS succeeds: that new sleep
is marked WOKEN although no FUTEX_WAKE covers it, and every later writer skips
it.  A deep sleeper (nothing in flight, no slice) then sleeps beside a message.

The same white-box set-up as tests/c/test_wake_naps.py: one process, two handles
(two slots) on one segment; the writer's fq_wake runs in a thread paused at
"wake_before_nap_cas".
"""
import pytest

from support.cseg import ffi, lib
from support.futexwatch import BOUND, CTRL_DATA_SEQ, WAIT_DATA, need_futex_nr, seg_base

from .test_wake_naps import NAP_WOKEN, Paused, _H, _data_seq, _put, _sleep_on_data, _slot, seg  # noqa: F401


def _set_data_seq(q, v):
    """what 2^32 - k bumps leave in the 32-bit word, k bumps after v"""
    ffi.cast("uint32_t *", seg_base(_H(q)) + CTRL_DATA_SEQ)[0] = v


@need_futex_nr
def test_a_stale_cas_across_a_wrap_of_the_word_loses_no_wake(seg):
    _owner, sleeper, writer = seg
    w1 = _sleep_on_data(sleeper)
    s = _slot(sleeper)
    v0 = _data_seq(sleeper)
    assert not lib.fqt_nap(sleeper, s, WAIT_DATA) & NAP_WOKEN
    p = Paused("wake_before_nap_cas", lambda: lib.fqt_wake(writer, WAIT_DATA))
    w2 = None
    try:
        w1.join(BOUND)
        assert not w1.is_alive(), "the FUTEX_WAKE did not wake the sleeper"
        assert _data_seq(sleeper) == (v0 + 1) & 0xFFFFFFFF
        _set_data_seq(sleeper, v0)  # the word comes round while the writer is stopped
        w2 = _sleep_on_data(sleeper)  # a new sleep, registered after the bump, at v0
        assert not lib.fqt_nap(sleeper, s, WAIT_DATA) & NAP_WOKEN
        p.resume()
        nap = lib.fqt_nap(sleeper, s, WAIT_DATA)
        assert not nap & NAP_WOKEN, "the stale CAS marked a sleep no FUTEX_WAKE covered"
        _put(writer)
        w2.join(BOUND)
        assert not w2.is_alive(), "lost wake-up: the sleeper slept through a put"
    finally:
        p.close()
        if w2 is not None and w2.is_alive():
            lib.fq_interrupt(sleeper)  # do not leave a thread asleep in a handle we close
            w2.join(BOUND)

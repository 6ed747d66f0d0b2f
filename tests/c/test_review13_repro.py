"""Reproductions of the findings of review 13 (docs/review13.md): the watermark of
233019c (ctrl->nb_latest, review 11 F2).  Each test asserts the wanted behaviour and
is a strict xfail whose reason names the defect, where it is and a fix; each was seen
failing on main (233019c).

No timing assertion.  A process living at another time is a child whose
CLOCK_REALTIME is shifted by the LD_PRELOAD shim of test_review11_repro (the only
clock the not-before and the watermark are measured with).
"""

import importlib.util
import os
import subprocess
import sys
import textwrap

import pytest

_spec = importlib.util.spec_from_file_location(
    "_review11_repro", os.path.join(os.path.dirname(os.path.abspath(__file__)), "test_review11_repro.py"))
_r11 = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_r11)
later_env = _r11.later_env  # the clock shim fixture
_get_later = _r11._get_later

_NACK_LATER = textwrap.dedent("""
    import sys
    import fastq
    q = fastq.Queue(sys.argv[1])
    d = q.receive(timeout=10)
    print(repr(d.value))
    d.nack(delay=0.05)
""")

_W1 = (
    "W1 (csrc/fq_get.c fq_get_nack / fq_nb_left): one nack(delay=) made while the wall "
    "clock reads ahead (a clock stepped back later, or wrong at boot and corrected by "
    "NTP) leaves ctrl->nb_latest that far in the future, for good (CAS-max, kept in the "
    "segment): until the real clock reaches it, fq_nb_left falls back to the 24-bit "
    "comparison and F2 is back for every record, not only 'while another was delayed "
    "in the last hour' (fq_layout.h, README).  Late, never early.  Fix: every honest "
    "watermark is at most FQ_MAX_DELAY_MS + 2 units past its nacker's clock; fq_nb_left, "
    "finding nb_latest further ahead than now + FQ_MAX_DELAY_MS + 3 units, CASes it down "
    "to that bound computed from a clock read AFTER loading nb_latest (a stale now would "
    "lower a concurrent honest raise: early); a not-before that far ahead already reads "
    "as due (d > FQ_MAX_DELAY_MS).  Or document the case (docs/review13.md W1)")


@pytest.mark.xfail(strict=True, reason=_W1)
def test_a_nack_under_a_clock_ahead_does_not_bring_the_wrap_back(tmp_path, later_env):
    import fastq
    name = str(tmp_path / "q")
    q = fastq.Queue(name, capacity=4096)
    # a process whose clock reads 200 h ahead nacks a message with a 50 ms delay
    q.put("ahead")
    r = subprocess.run([sys.executable, "-c", _NACK_LATER, name], env=later_env(200 * 3600),
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == repr("ahead"), r.stdout
    # back at the right time that message is visible (its not-before reads more
    # than an hour ahead: not trusted), and taken
    assert q.get_nowait() == "ahead"
    # a message nacked now with a 50 ms delay, looked at 74 hours later: long due
    q.put("r")
    d = q.receive()
    d.nack(delay=0.05)
    q.close()
    t, got = _get_later(name, later_env, 74 * 3600)
    assert got == repr("r"), "a record due 74 hours ago was not visible (%s)" % got

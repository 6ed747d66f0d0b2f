"""Reproductions of the findings of review 14 (docs/review14.md): the changes to csrc/
between a6ebdf1 and db1aa27 (review 13 W1's fix, fq_nb_lower; the adaptive spin's
probes; FQ_OPEN_NOSWEEP).  A finding that fails on main is a strict xfail (raises=
AssertionError: an error of the test itself is not taken for the finding).

No timing assertion.  Clocks: review 11's shim (a process living N seconds later or
earlier) and review 13's virtual clock (moved by the test while a process is held by
gdb).
"""

import importlib.util
import os
import shutil
import subprocess
import sys
import time

import pytest
from support.cli import fastq_cli
from support.cring import Q
from support.cseg import lib, mk, rec_size, seq_of
from support.gdbstop import line_of, need_gdb, no_asan

_spec = importlib.util.spec_from_file_location(
    "_review13_repro", os.path.join(os.path.dirname(os.path.abspath(__file__)), "test_review13_repro.py"))
_r13 = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_r13)
vclock = _r13.vclock  # the virtual clock fixture (CLOCK_REALTIME + a shift the test sets)
_r11 = _r13._r11
later_env = _r11.later_env  # the fixed clock shim: a process living N seconds later (or earlier)

HOUR_MS = 3600 * 1000


def _now_ms():
    return int(time.time() * 1000)


def _queue_with_a_delayed_record(path):
    """a queue of records 0 and 1, record 0 given back with an hour's delay (the
    requeued hint up: a walk of release..head looks at its not-before)"""
    q = Q.create(path)
    for i in range(2):
        assert q.put(mk(i, 64)) == lib.FQ_OK
    rc, c = q.begin()
    assert rc == lib.FQ_OK and [seq_of(m) for m in q.read(c)] == [0]
    lib.fq_get_nack(q.q, c, HOUR_MS)
    return q


@pytest.mark.xfail(strict=True, raises=AssertionError, reason="R1: qsize (fq_delayed) lowers nb_latest, so the "
                   "read-only tools write into the segment (fastq.h, FQ_OPEN_NOSWEEP)")
def test_a_read_only_tool_does_not_write_the_watermark(tmp_path):
    """R1: `fastq stat` (and ls, top, metrics: whatever reads a queue's depth) opens the
    segment "to read it only ... change nothing on disk" (fastq.h FQ_OPEN_NOSWEEP,
    fastq._ops.open_segment).  Its depth is qsize(), which walks the requeued records
    (fq_delayed -> fq_nb_left); since a07e0e3 fq_nb_left lowers a watermark it finds
    implausible (fq_nb_lower: a CAS, then a re-raise), so the tool writes ctrl->nb_latest
    of the file it was only to look at."""
    path = str(tmp_path / "q.seg")
    q = _queue_with_a_delayed_record(path)
    try:
        huge = _now_ms() + 200 * HOUR_MS  # as a nack under a clock 200 h ahead leaves it
        lib.fqt_set_nb_latest(q.q, huge)
        cp = fastq_cli("stat", path, check=0)
        assert "depth" in cp.stdout, cp.stdout
        assert lib.fqt_nb_latest(q.q) == huge, (
            "`fastq stat` moved the watermark from %d to %d" % (huge, lib.fqt_nb_latest(q.q)))
    finally:
        q.close()


@pytest.mark.xfail(strict=True, raises=AssertionError, reason="R2: every open fallocates a sparse segment, a read-only "
                   "one too (fq_segment_open_fd)")
def test_a_read_only_tool_does_not_allocate_a_sparse_segment(tmp_path):
    """R2 (predates a6ebdf1; the claim is new): the same promise, "change nothing on
    disk", for a segment file with holes (cp --sparse=always: fq_segment_open_fd
    reserves the holes with fallocate at every open, the tools' too).  `fastq stat`
    allocates the whole ring, and on a full filesystem it cannot look at the segment
    at all (ENOSPC: "cannot reserve ... is the filesystem full?")."""
    import fastq
    a, b = str(tmp_path / "a"), str(tmp_path / "b")
    q = fastq.Queue(a, capacity=1 << 22)
    q.put("x")
    q.close()
    if shutil.which("cp") is None:
        pytest.skip("needs cp --sparse")
    subprocess.run(["cp", "--sparse=always", a, b], check=True)
    before = os.stat(b).st_blocks * 512
    if before >= os.stat(b).st_size // 2:
        pytest.skip("this filesystem keeps no holes")
    fastq_cli("stat", b, check=0)
    after = os.stat(b).st_blocks * 512
    assert after == before, "`fastq stat` allocated %d bytes of the file" % (after - before)


@need_gdb
@no_asan
def test_the_residual_window_never_opens_before_two_hours_after_the_lowerers_clock(
        tmp_path, vclock):
    """The documented residual of W1's fix (csrc/fq_get.c, "Residual window"): all three
    conditions made at once (the lowerer stalls 65 min between its clock read F and its
    CAS; a whole nack of B, re-check included, inside the stall; the lowerer killed
    between its CAS and its re-raise).  The watermark is then left at L = F + 2 h + 48 ms,
    below B's until: the window is open (asserted, so the test tests).  The bound the
    comment gives must hold: B's record is not delivered before L (60 s before it, the
    gets return record 0, due, and then EMPTY).  Passes on main: a guard of the bound."""
    set_clock = vclock[1]
    bound_ms = 2 * HOUR_MS + 3 * 16
    with _r13._queue_with_a_nacker(tmp_path, vclock) as (q, actors, b):
        huge = _r13._pin_ahead(q)
        with open(str(tmp_path / "gdb.log"), "w") as log:
            reraise = line_of("csrc/fq_get.c", "uint64_t r = fq_nb_now().ms + FQ_NB_BOUND_MS;")
            lo, cont = _r13._lowerer_paused_before_its_cas(
                tmp_path, actors, log, ["break fq_get.c:%d" % reraise, "continue", "kill", "quit"])
            set_clock(3900)  # the stall: an hour and 5 minutes
            actors.go(b)  # B's whole nack, re-check included, inside the stall
            b_ms = int(actors.line(b))
            assert actors.line(b) == "nacked"
            assert b.wait(_r13.BOUND) == 0
            assert lib.fqt_nb_latest(q.q) == huge  # B raised nothing, its re-check neither
            assert lib.fqt_rec_state(q.q, rec_size(64)) == lib.FQ_REC_REQUEUED
            open(cont, "w").close()  # the lowering CAS, then killed before the re-raise
            lo.wait(_r13.BOUND)
            assert lo.returncode != 0, "the lowerer was not killed before its re-raise"
        low = lib.fqt_nb_latest(q.q)
        assert low < b_ms + HOUR_MS, "the residual window did not open (the test did not test)"
        f_ms = low - bound_ms  # the lowerer's clock read F
        assert f_ms <= b_ms - 3900 * 1000 + 1000, (f_ms, b_ms)
        # the virtual clock 60 s before L (its shift in whole seconds, rounded down)
        set_clock((low - 60 * 1000 - _now_ms()) // 1000)
        got = []
        for _ in range(2):
            t = actors.start("take")
            assert actors.line(t) == "ready"
            actors.go(t)
            rc = int(actors.line(t))
            got.append(actors.line(t) if rc == lib.FQ_OK else "EMPTY")
            assert t.wait(_r13.BOUND) == 0
        assert got == ["0", "EMPTY"], (
            "before L = F + 2 h + 48 ms (the residual's documented bound) the gets returned %r"
            % (got,))

_GET_ONE = """
import sys, fastq
q = fastq.Queue(sys.argv[1])
try:
    print(repr(q.get_nowait()))
except fastq.Empty:
    print("EMPTY")
"""


@pytest.mark.xfail(strict=True, raises=AssertionError, reason="R3: a process whose clock alone reads behind lowers "
                   "nb_latest below honest untils, and correct-clock processes deliver early")
def test_a_process_with_a_clock_behind_does_not_make_others_deliver_early(tmp_path, later_env):
    """R3: fq_nb_lower trusts the lowerer's clock.  A process whose CLOCK_REALTIME alone
    reads 90 min behind (an LD_PRELOAD faketime; the core assumes one clock per machine)
    finds the honest watermark (an hour ahead of the right clock) 2.5 h ahead of its own
    and lowers it to its clock + 2 h, i.e. 30 min ahead of the right one.  It takes
    record a itself (its not-before reads 2.5 h ahead: "not trusted", due: F6 in that
    process, before a6ebdf1 as well).  New since a07e0e3: a process with the right clock
    31 min after the nacks finds the watermark passed and takes record c, 29 min before
    its hour (on a6ebdf1 the watermark stays an hour ahead and c reads delayed: EMPTY)."""
    import fastq
    name = str(tmp_path / "q")
    q = fastq.Queue(name, capacity=4096)
    q.put("a")
    q.put("c")
    for _ in range(2):
        d = q.receive()
        d.nack(delay=3600)  # an hour each, with the right clock
    q.close()
    r = subprocess.run([sys.executable, "-c", _GET_ONE, name], env=later_env(-5400),
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == repr("a"), r.stdout  # F6 in the process behind (not this finding)
    _, got = _r11._get_later(name, later_env, 31 * 60)
    assert got == "EMPTY", (
        "a process with the right clock took %s 29 minutes before its delay ended" % got)

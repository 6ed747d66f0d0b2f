"""Reproductions of the findings of review 13 (docs/review13.md): the watermark of
233019c (ctrl->nb_latest, review 11 F2).  W1 was a strict xfail, seen failing on main
(233019c); it is fixed (csrc/fq_get.c fq_nb_lower), and the tests after it hold the
fix's lowering inside its steps to show that it never makes a record come out early.

No timing assertion.  A process living at another time is a child whose
CLOCK_REALTIME is shifted by the LD_PRELOAD shim of test_review11_repro (the only
clock the not-before and the watermark are measured with).
"""

import contextlib
import importlib.util
import os
import select
import subprocess
import sys
import textwrap
import time

import pytest

from support import procs as _procs
from support.cring import Q
from support.cseg import lib, mk, rec_size, seq_of
from support.gdbstop import gdb_at, line_of, need_gdb, no_asan

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

def test_a_nack_under_a_clock_ahead_does_not_bring_the_wrap_back(tmp_path, later_env):
    """W1 (fixed, csrc/fq_get.c fq_nb_lower): one nack(delay=) made while the wall clock
    reads 200 h ahead left ctrl->nb_latest that far ahead for good (CAS-max), and F2's
    wrap was back for every record until the real clock got there.  A taker that finds
    the watermark further ahead than any honest nack puts it now lowers it: a record
    nacked for 50 ms is visible 74 hours later (failed on main: EMPTY)."""
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


# ---------------------------------------------------------------------------
# W1's fix (csrc/fq_get.c fq_nb_lower): a taker lowers a watermark no honest
# nack can have made (more than FQ_MAX_DELAY_MS + 3 units + S past a clock read
# after loading it, S = one more hour), re-raises it after a read of the clock
# after its CAS, and a nacker re-checks it after its give-back.  The lowering
# must never make a record come out before its delay: these tests hold a lowerer
# inside its steps (gdb) while a nacker whose clock read came more than S after
# the lowerer's runs a whole nack.  Every actor but the test process lives on one
# virtual clock: CLOCK_REALTIME plus the seconds in a file the test advances (a
# stall of an hour without waiting an hour).

BOUND = 60.0
HOUR_MS = 3600 * 1000
TESTS = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

_VCLOCK = r"""
#define _GNU_SOURCE
#include <dlfcn.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>
/* CLOCK_REALTIME plus the seconds written in the file FQT_SHIFT_FILE, read at
 * every call: a clock the test moves forward while a process is stopped */
int clock_gettime(clockid_t clk, struct timespec *ts)
{
    static int (*real)(clockid_t, struct timespec *);
    if (!real)
        real = (int (*)(clockid_t, struct timespec *))dlsym(RTLD_NEXT, "clock_gettime");
    int rc = real(clk, ts);
    const char *f = getenv("FQT_SHIFT_FILE");
    if (rc == 0 && clk == CLOCK_REALTIME && f) {
        FILE *fp = fopen(f, "r");
        long long s = 0;
        if (fp) {
            if (fscanf(fp, "%lld", &s) != 1)
                s = 0;
            fclose(fp);
        }
        ts->tv_sec += s;
    }
    return rc;
}
"""

# an actor on the virtual clock, white-box (the cffi module of tests/support)
_ACTOR = textwrap.dedent("""
    import sys, time
    sys.path.insert(0, sys.argv[1])
    from support.cring import Q
    from support.cseg import lib, seq_of
    q = Q.open(sys.argv[2])
    mode = sys.argv[3]
    def out(*a):
        print(*a, flush=True)
    if mode == "hold":  # claim a record; on the go, nack it with an hour's delay
        rc, c = q.begin()
        assert rc == lib.FQ_OK, rc
        out(" ".join(str(seq_of(m)) for m in q.read(c)))
        sys.stdin.buffer.read(1)  # the go (a gdb may be attached meanwhile)
        out(int(time.time() * 1000))  # before the nack's clock read
        lib.fq_get_nack(q.q, c, %d)
        out("nacked")
    elif mode == "take":  # on the go, one get
        out("ready")
        sys.stdin.buffer.read(1)
        rc, c = q.begin()
        out(rc)
        if rc == lib.FQ_OK:
            out(" ".join(str(seq_of(m)) for m in q.read(c)))
            q.end(c)
    q.close()
""" % HOUR_MS)


@pytest.fixture
def vclock(tmp_path):
    """(env, set): the environment of an actor on the virtual clock, and set(s)
    that puts that clock s seconds after the real one"""
    cc = os.environ.get("CC", "cc")
    src = tmp_path / "vclock.c"
    src.write_text(_VCLOCK)
    so = tmp_path / "vclock.so"
    subprocess.run([cc, "-shared", "-fPIC", "-o", str(so), str(src), "-ldl"], check=True)
    shift = tmp_path / "shift"

    def set_(s):
        tmp = tmp_path / "shift.tmp"
        tmp.write_text("%d\n" % s)
        os.rename(str(tmp), str(shift))  # atomic: a reader never sees it empty
    set_(0)
    pre = os.environ.get("LD_PRELOAD", "")
    env = _procs.child_env({"LD_PRELOAD": (pre + " " + str(so)).strip(),
                            "FQT_SHIFT_FILE": str(shift)})
    return env, set_


class _Actors:
    """the actor processes of a test, killed at its end"""

    def __init__(self, env, path):
        self.env, self.path, self.procs, self.gdbs, self.bufs = env, path, [], [], {}

    def start(self, mode):
        p = subprocess.Popen([sys.executable, "-c", _ACTOR, TESTS, self.path, mode], env=self.env,
                             stdin=subprocess.PIPE, stdout=subprocess.PIPE, bufsize=0)
        self.procs.append(p)
        return p

    def line(self, p):
        """its next line, within BOUND (a get that does not return is a failure: a
        taker must not spin on a record it keeps taking and giving back)"""
        buf = self.bufs.setdefault(p.pid, bytearray())
        while b"\n" not in buf:
            r, _, _ = select.select([p.stdout], [], [], BOUND)
            assert r, "actor %d said nothing for %d s (stuck in its call)" % (p.pid, BOUND)
            chunk = os.read(p.stdout.fileno(), 4096)
            assert chunk, "actor %d ended early (rc %s)" % (p.pid, p.wait())
            buf += chunk
        i = buf.index(b"\n")
        s = bytes(buf[:i]).decode()
        del buf[:i + 1]
        return s.strip()

    def go(self, p):
        p.stdin.write(b"G")

    def gdb(self, p, where, then, log):
        g = gdb_at(p.pid, where, then, log)
        self.gdbs.append(g)
        return g

    def close(self):
        for g in self.gdbs:
            if g.poll() is None:
                g.kill()
                g.wait()
        for p in self.procs:
            if p.poll() is None:
                p.kill()
            p.wait()


def _wait_file(path, what):
    deadline = time.monotonic() + BOUND
    while not os.path.exists(path):
        assert time.monotonic() < deadline, what
        time.sleep(0.01)


def _pause(tmp_path, name, after=()):
    """gdb commands at a breakpoint: say so (file tmp_path/name.stopped), wait
    for tmp_path/name.cont, then `after` (default: detach and quit)"""
    stopped, cont = str(tmp_path / (name + ".stopped")), str(tmp_path / (name + ".cont"))
    cmds = ["shell touch " + stopped, "shell while [ ! -e %s ]; do sleep 0.01; done" % cont]
    return cmds + (list(after) or ["detach", "quit"]), stopped, cont


def _now_ms():
    return int(time.time() * 1000)


def test_an_honest_watermark_is_never_lowered(tmp_path):
    """(a) a nack with the longest delay, made with the real clock, puts the watermark
    as far ahead as an honest nack can: no taker lowers it, and the record stays
    delayed (fails if the plausibility bound is dropped or cut to the delay)"""
    q = Q.create(str(tmp_path / "q.seg"))
    try:
        for i in range(3):
            assert q.put(mk(i, 64)) == lib.FQ_OK
        rc, c = q.begin()
        assert rc == lib.FQ_OK and [seq_of(m) for m in q.read(c)] == [0]
        t0 = _now_ms()
        lib.fq_get_nack(q.q, c, HOUR_MS)
        w0 = lib.fqt_nb_latest(q.q)
        assert w0 >= t0 + HOUR_MS, (w0, t0)
        # every reader of the watermark, each walking the delayed record
        for want in (1, 2):
            rc, c = q.begin()
            assert rc == lib.FQ_OK and [seq_of(m) for m in q.read(c)] == [want]
            q.end(c)
        assert lib.fq_delayed(q.q) == 1
        # the ready rule (fq_has_requeued): a 1 ms wait, nothing to take
        assert lib.fq_wait_for(q.q, lib.FQ_WAIT_DATA, 1, 10**6, 10**6, lib.FQ_STRATEGY_SLEEP) == 0
        rc, c = q.begin()
        assert rc == lib.FQ_EMPTY, "the record nacked for an hour was taken at once"
        assert lib.fqt_nb_latest(q.q) == w0, "an honest watermark was moved"
    finally:
        q.close()


@contextlib.contextmanager
def _queue_with_a_nacker(tmp_path, vclock):
    """A queue of records 0 and 1; record 0 given back with an hour's delay (real
    clock: the requeued hint is up, takers walk it), record 1 held by a nacker actor
    B.  Yields (q, actors, B); kills the actors and closes the queue after."""
    path = str(tmp_path / "q.seg")
    q = Q.create(path)
    actors = _Actors(vclock[0], path)
    try:
        for i in range(2):
            assert q.put(mk(i, 64)) == lib.FQ_OK
        rc, c0 = q.begin()
        assert rc == lib.FQ_OK and [seq_of(m) for m in q.read(c0)] == [0]
        b = actors.start("hold")  # takes record 1 from the head (nothing requeued yet)
        assert actors.line(b) == "1"
        lib.fq_get_nack(q.q, c0, HOUR_MS)
        yield q, actors, b
    finally:
        actors.close()
        q.close()


def _pin_ahead(q):
    """the watermark put 200 h ahead (as a nack under a clock 200 h ahead leaves it)"""
    huge = _now_ms() + 200 * HOUR_MS
    lib.fqt_set_nb_latest(q.q, huge)
    return huge


def _lowerer_paused_before_its_cas(tmp_path, actors, log, after=()):
    """a taker L on the virtual clock, stopped in fq_nb_lower after its clock read
    (the record 0's not-before sends it there), before its CAS"""
    lo = actors.start("take")
    assert actors.line(lo) == "ready"
    cas = line_of("csrc/fq_get.c", "if (atomic_compare_exchange_strong_explicit(lat, &w, l, SEQ, SEQ))")
    cmds, stopped, cont = _pause(tmp_path, "lowerer", after)
    actors.gdb(lo, "fq_get.c:%d" % cas, cmds, log)
    actors.go(lo)
    _wait_file(stopped, "the taker did not reach its lowering CAS")
    return lo, cont


def _assert_not_early(q, actors, b_ms, set_clock, huge):
    """the watermark covers B's until, and a get 60 s before B's record is due
    takes record 0 (due) and then nothing"""
    w = lib.fqt_nb_latest(q.q)
    assert w < huge, "the taker did not lower the watermark (the test did not test)"
    assert w >= b_ms + HOUR_MS, (
        "the watermark (%d) was left below the until of a nack of B (>= %d): B's record "
        "comes out %.1f s early" % (w, b_ms + HOUR_MS, (b_ms + HOUR_MS - w) / 1e3))
    set_clock(3900 + 3540)
    got = []
    for _ in range(2):
        t = actors.start("take")
        assert actors.line(t) == "ready"
        actors.go(t)
        rc = int(actors.line(t))
        got.append(actors.line(t) if rc == lib.FQ_OK else "EMPTY")
        assert t.wait(BOUND) == 0
    assert got == ["0", "EMPTY"], (
        "60 s before record 1's hour of delay ends, the gets returned %r" % (got,))


@need_gdb
@no_asan
def test_a_lowering_leaves_the_watermark_above_a_nack_made_during_its_stall(tmp_path, vclock):
    """(b) the lowerer stalls (gdb) an hour and more between its clock read and its
    CAS; meanwhile B reads its clock, finds the watermark high (no raise), gives its
    record back with an hour's delay and re-checks (still high).  The CAS then lowers
    the watermark below B's until; the re-raise (clock read after the CAS) must put
    it back above (fails without the re-raise)"""
    set_clock = vclock[1]
    with _queue_with_a_nacker(tmp_path, vclock) as (q, actors, b):
        huge = _pin_ahead(q)
        with open(str(tmp_path / "gdb.log"), "w") as log:
            lo, cont = _lowerer_paused_before_its_cas(tmp_path, actors, log)
            set_clock(3900)  # the stall: an hour and 5 minutes
            actors.go(b)
            b_ms = int(actors.line(b))
            assert actors.line(b) == "nacked"
            assert b.wait(BOUND) == 0
            assert lib.fqt_nb_latest(q.q) == huge  # B raised nothing
            open(cont, "w").close()
            assert int(actors.line(lo)) == lib.FQ_EMPTY  # record 1: not before its time
            assert lo.wait(BOUND) == 0
        _assert_not_early(q, actors, b_ms, set_clock, huge)


@need_gdb
@no_asan
def test_a_lowerer_killed_before_its_re_raise_leaves_the_nacker_to_raise_back(tmp_path, vclock):
    """(c) as (b), but B stops (gdb) after its give-back, before its re-check; the
    lowerer then makes its CAS and is killed before its re-raise; B's re-check,
    after that CAS, must raise the watermark back to its until (fails without the
    nacker's re-check)"""
    set_clock = vclock[1]
    with _queue_with_a_nacker(tmp_path, vclock) as (q, actors, b):
        huge = _pin_ahead(q)
        with open(str(tmp_path / "gdb.log"), "w") as log:
            reraise = line_of("csrc/fq_get.c", "uint64_t r = fq_nb_now().ms + FQ_NB_BOUND_MS;")
            lo, cont = _lowerer_paused_before_its_cas(
                tmp_path, actors, log, ["break fq_get.c:%d" % reraise, "continue", "kill", "quit"])
            set_clock(3900)  # the stall: an hour and 5 minutes
            recheck = line_of("csrc/fq_get.c", "fq_nb_raise(q, until); /* the re-check */")
            bcmds, bstopped, bcont = _pause(tmp_path, "nacker")
            actors.gdb(b, "fq_get.c:%d" % recheck, bcmds, log)
            actors.go(b)
            b_ms = int(actors.line(b))
            _wait_file(bstopped, "the nacker did not reach its re-check")
            assert lib.fqt_rec_state(q.q, rec_size(64)) == lib.FQ_REC_REQUEUED  # given back
            open(cont, "w").close()  # the lowering CAS, then killed before the re-raise
            lo.wait(BOUND)
            assert lo.returncode != 0, "the lowerer was not killed before its re-raise"
            lowered = lib.fqt_nb_latest(q.q)
            assert lowered < huge, "the lowerer did not make its CAS"
            open(bcont, "w").close()  # B's re-check
            assert actors.line(b) == "nacked"
            assert b.wait(BOUND) == 0
        _assert_not_early(q, actors, b_ms, set_clock, huge)


@need_gdb
@no_asan
def test_a_taker_does_not_loop_on_a_record_given_back_after_its_clock_read(tmp_path, vclock):
    """Found writing (b): a taker's walk reads its clock once; a record given back with
    an hour's delay after that read (here 10 s after it) has a not-before more than
    the delay past the walk's clock, which reads as "not trusted: due".  The taker
    claims it, its check after the CAS (a fresh clock) finds it delayed and gives it
    back, and the walk re-read it with the old clock: due again, claimed again, until
    its time (an hour of spinning in one get; fixed: the walk goes on with the fresh
    clock).  The get must return EMPTY (both records delayed) within BOUND."""
    set_clock = vclock[1]
    with _queue_with_a_nacker(tmp_path, vclock) as (q, actors, b):
        with open(str(tmp_path / "gdb.log"), "w") as log:
            t = actors.start("take")
            assert actors.line(t) == "ready"
            walk = line_of("csrc/fq_get.c", "if (rel == hd) {")  # fq_take_requeued, after now
            cmds, stopped, cont = _pause(tmp_path, "taker")
            actors.gdb(t, "fq_get.c:%d" % walk, cmds, log)
            actors.go(t)
            _wait_file(stopped, "the taker did not reach its walk")
            set_clock(10)
            actors.go(b)  # B nacks record 1 for an hour, 10 s after the taker's clock read
            actors.line(b)
            assert actors.line(b) == "nacked"
            assert b.wait(BOUND) == 0
            open(cont, "w").close()
            assert int(actors.line(t)) == lib.FQ_EMPTY, "a delayed record was taken"
            assert t.wait(BOUND) == 0

"""Program workloads: whole programs (a pool, a pipeline) timed side by side, fastq against each peer.

A queue cell (``runner``) moves one stream between processes the harness starts;
a *program* workload instead runs a small program that starts its own worker
processes (``fastq.Pool``, ``multiprocessing.Pool``, ``fastq.pipeline``, ...), once
with fastq and once per peer variant.  Every run is one fresh interpreter
(``python -c``) in its own session, under a hard timeout: a run that hangs (as
``multiprocessing.Pool`` does when a worker is killed) is killed with its whole
process group and reported as ``TIMEOUT`` ("hung after N s"), never holding up the
benchmark.  A run verifies its own results and returns a dict of figures; a peer
that does not import is reported as skipped.

Each row of the report is one peer variant: the peer's figure, fastq's figure on
the same workload in the same run, and the ratio fastq / peer.

Adding a family of program workloads: a module in this package that
defines ``NAMES`` (workload names), ``programs(cfg)`` (the ``Program`` list for a
run's settings), the functions its ``Run`` entries name and, optionally,
``summary(outcomes)`` (lines under the table), listed in ``MODULES``.
"""

from __future__ import annotations

import importlib
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field

MODULES = ("pool", "subjects", "events", "bridge", "wait")  # modules of fastq.bench that define program workloads
EXIT_GRACE = 5.0          # seconds a run may take to exit once its result is written


@dataclass(frozen=True)
class Run:
    """One measured program: ``<module>.<func>(**kwargs)`` (full module name) in a fresh interpreter."""

    label: str                # what the table calls it, e.g. "multiprocessing.Pool.imap chunksize=64"
    module: str
    func: str
    kwargs: dict = field(default_factory=dict)
    needs: tuple = ()         # modules it imports: a missing one skips the run
    timeout: float = 60.0     # seconds before the run is killed (with its process group)
    unavailable: str = ""     # why it cannot run here (no server...): skipped with this as the reason


@dataclass(frozen=True)
class Program:
    """A workload: fastq's run and the peers' runs of the same program, and the rows to show."""

    name: str
    fastq: Run
    peers: tuple
    rows: tuple               # (row label, figure key, higher_is_better)
    note: str = ""            # printed under the table when the workload ran


@dataclass
class Outcome:
    """What one run gave: status ok / FAILED / ERROR / TIMEOUT / skipped, figures, detail."""

    program: str
    label: str
    status: str
    figures: dict = field(default_factory=dict)
    detail: str = ""
    seconds: float = 0.0


def names() -> list:
    """Every program workload name, over all MODULES."""
    return [n for m in MODULES for n in _module(m).NAMES]


def select(wanted, cfg) -> list:
    """The programs (at ``cfg``'s settings) whose name equals or starts with one of ``wanted``."""
    chosen = [n for n in names() if any(n == w or n.startswith(w) for w in wanted)]
    return [p for m in MODULES for p in _module(m).programs(cfg) if p.name in chosen]


def _module(name: str):
    return importlib.import_module(f"{__package__}.{name}")


def _missing(run: Run):
    for mod in run.needs:
        try:
            importlib.import_module(mod)
        except Exception as e:  # noqa: BLE001 - any import failure means "skip"
            return f"{mod} not importable ({type(e).__name__}: {e})"
    return None


def run_one(program: str, run: Run) -> Outcome:
    """Run ``run`` in a fresh interpreter in its own session; never raises, never hangs."""
    why = run.unavailable or _missing(run)
    if why:
        return Outcome(program, run.label, "skipped", detail=why)
    src = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [src, os.environ.get("PYTHONPATH")])))
    code = f"from {__package__}.programs import child_main; child_main()"
    arg = json.dumps({"module": run.module, "func": run.func, "kwargs": run.kwargs})
    with tempfile.TemporaryDirectory(prefix="fastq-bench-") as tmp:
        result, errlog = os.path.join(tmp, "result.json"), os.path.join(tmp, "stderr")
        t0 = time.monotonic()
        with open(errlog, "w") as err:
            # the result comes back in a file, not a pipe: a peer's leftover workers may hold a pipe open
            proc = subprocess.Popen([sys.executable, "-c", code, arg, result], stdin=subprocess.DEVNULL,
                                    stdout=subprocess.DEVNULL, stderr=err, env=env, start_new_session=True)
        try:
            hung = not _wait(proc, result, t0 + run.timeout)
        finally:
            _kill_group(proc)            # the run's leftovers (all of it on a timeout or Ctrl-C)
        if hung:
            secs = time.monotonic() - t0
            return Outcome(program, run.label, "TIMEOUT", detail=f"hung after {secs:.0f} s (killed)", seconds=secs)
        secs = time.monotonic() - t0
        try:
            with open(result) as f:
                res = json.load(f)
        except (OSError, ValueError):
            with open(errlog) as f:
                tail = (f.read().strip().splitlines() or [f"exit code {proc.returncode}"])[-1]
            return Outcome(program, run.label, "ERROR", detail=tail, seconds=secs)
    if res.get("error"):
        return Outcome(program, run.label, "ERROR", detail=res["error"], seconds=secs)
    if res.get("errors"):
        return Outcome(program, run.label, "FAILED", detail="; ".join(res["errors"][:3]), seconds=secs)
    return Outcome(program, run.label, "ok", res["figures"], res.get("detail", ""), secs)


def _wait(proc, result: str, deadline: float) -> bool:
    """Wait for ``proc`` to exit, by ``deadline`` or at most EXIT_GRACE s after its result is
    written (a peer's atexit cleanup may hang); False if it ran out of time without a result."""
    while proc.poll() is None:
        now = time.monotonic()
        if os.path.exists(result):
            deadline = min(deadline, now + EXIT_GRACE)
        if now >= deadline:
            return os.path.exists(result)
        time.sleep(0.01)
    return True


def _kill_group(proc, grace: float = 2.0) -> None:
    """SIGKILL what is left of the run's session: at once if the run itself still runs, else once
    its other processes have had ``grace`` s to finish (joblib's and loky's workers clean up
    shared-memory files as they exit)."""
    if proc.poll() is not None:
        end = time.monotonic() + grace
        while time.monotonic() < end:
            try:
                os.killpg(proc.pid, 0)
            except OSError:
                break
            time.sleep(0.05)
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except OSError:
        pass
    proc.wait()


def child_main() -> None:
    """Entry point of a run's interpreter: call the function, write its result dict (or the error)
    as JSON to the file named by the second argument, then exit normally (atexit cleanups run)."""
    spec = json.loads(sys.argv[1])
    try:
        res = getattr(importlib.import_module(spec["module"]), spec["func"])(**spec["kwargs"])
    except BaseException as e:  # noqa: BLE001 - report everything to the parent
        res = {"error": f"{type(e).__name__}: {e}"}
    with open(sys.argv[2] + ".part", "w") as f:
        json.dump(res, f)
    os.rename(sys.argv[2] + ".part", sys.argv[2])   # the parent sees the whole result or none


def run(programs, progress=None) -> list:
    """Every run of every program (fastq's first), as Outcomes; Ctrl-C returns what was measured."""
    jobs = [(p.name, r) for p in programs for r in (p.fastq,) + tuple(p.peers)]
    outs = []
    try:
        for i, (name, r) in enumerate(jobs, 1):
            outs.append(run_one(name, r))
            if progress:
                progress(i, len(jobs), outs[-1])
    except KeyboardInterrupt:
        print("interrupted: reporting the program runs measured so far", file=sys.stderr)
    return outs


def _text(o: Outcome, key: str, fmt) -> str:
    if o is None:
        return "-"
    if o.status == "ok":
        v = o.figures.get(key)
        return fmt(v) if isinstance(v, (int, float)) else str(v)
    return o.detail.replace(" (killed)", "") if o.status == "TIMEOUT" else o.status


def ratio(ours, theirs, key: str):
    """fastq's figure ``key`` over the peer's, or None unless both runs are ok with numbers."""
    if not (ours and theirs and ours.status == theirs.status == "ok"):
        return None
    a, b = ours.figures.get(key), theirs.figures.get(key)
    if isinstance(a, (int, float)) and isinstance(b, (int, float)) and b > 0:
        return a / b
    return None


def checked(outcome: Outcome) -> Outcome:
    """outcome if it ran and passed its checks; asv's skip (NotImplementedError) for a peer that
    is not installed; RuntimeError for a failed or hung run (the asv suites of program workloads)."""
    if outcome.status == "skipped":
        raise NotImplementedError(outcome.detail)
    if outcome.status != "ok":
        raise RuntimeError(f"{outcome.program} / {outcome.label}: {outcome.status} {outcome.detail}")
    return outcome


def ratio_cases(progs: dict, skip=()) -> list:
    """asv parameters "workload | figure | peer", one per figure of each peer of progs (by name)."""
    return [f"{p.name} | {key} | {peer.label}" for p in progs.values() if p.name not in skip
            for _, key, _ in p.rows for peer in p.peers]


def case_ratio(progs: dict, case: str):
    """Run one ratio_cases() case: fastq's figure / the peer's, both measured now."""
    name, key, label = case.split(" | ")
    prog = progs[name]
    theirs = checked(run_one(name, next(r for r in prog.peers if r.label == label)))
    ours = checked(run_one(name, prog.fastq))
    return ratio(ours, theirs, key)


def table_rows(programs, outcomes, fmt) -> list:
    """Rows of text: [row label, peer, peer figure, fastq figure, fastq / peer]."""
    by = {(o.program, o.label): o for o in outcomes}
    rows = []
    for p in programs:
        ours = by.get((p.name, p.fastq.label))
        for row_label, key, _higher in p.rows:
            for i, peer in enumerate(p.peers):
                theirs = by.get((p.name, peer.label))
                r = ratio(ours, theirs, key)
                ratio_text = "-" if r is None else f"{r:.2f}x"
                rows.append([row_label if i == 0 else "", peer.label, _text(theirs, key, fmt), _text(ours, key, fmt), ratio_text])
    return rows


def notes(programs, outcomes) -> list:
    """Lines under the table: each program's note, and every run that did not give figures, with why."""
    ran = {o.program for o in outcomes}
    lines = [p.note for p in programs if p.name in ran and p.note]
    for m in MODULES:                    # a module's own summary (its targets), if it has one
        lines += getattr(_module(m), "summary", lambda outcomes: [])(outcomes)
    lines += [f"{o.program} / {o.label}: {o.status}: {o.detail}" for o in outcomes if o.status != "ok"]
    lines += [f"{o.program} / {o.label}: {o.detail}" for o in outcomes if o.status == "ok" and o.detail]
    return lines

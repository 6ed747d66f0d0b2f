"""The ``fastq bench`` subcommand: its options and ``main``."""

from __future__ import annotations

import argparse
import sys

from . import programs
from .adapters import labels_of, library_names, select_adapters
from .report import _progress, _program_progress, print_programs, print_table, topic_summary, write_json, write_plot
from .runner import reference_jobs, run
from .workloads import WORKLOADS, Settings, select_workloads


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The ``bench`` subcommand's options."""
    p.add_argument("--quick", action="store_true", help="short cells: the whole run takes under a minute")
    p.add_argument("--only", type=_checked(select_adapters),
                   help="comma-separated libraries (of the queue workloads): " + ",".join(library_names()))
    p.add_argument("--workloads", type=_checked(_split_workloads),
                   help="comma-separated workload names or prefixes: "
                   + ",".join(w.name for w in WORKLOADS) + "; and, run only when named here (fastq against "
                   "multiprocessing.Pool and its peers, 2 workers; fastq.bridge against nats-py, with a nats-server): " + ",".join(programs.names()))
    p.add_argument("--json", metavar="FILE", help="write all results to FILE")
    p.add_argument("--plot", metavar="FILE.png", help="write a bar chart (needs matplotlib)")
    p.add_argument("--duration", type=_positive_seconds, help="seconds each stream cell sends for")
    p.add_argument("--start-method", choices=("fork", "spawn", "forkserver"), default="fork",
                   help="how the benchmark's producer and consumer processes are started "
                   "(multiprocessing start method; default: fork)")


def _positive_seconds(text: str) -> float:
    """argparse type of --duration: a finite number of seconds above 0."""
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not (v > 0 and v != float("inf")):
        raise argparse.ArgumentTypeError(f"must be a number of seconds above 0, not {text}")
    return v


def _checked(select):
    """argparse type of a comma-separated list checked by select(names) (which
    raises SystemExit with its message): the list, or an argparse error."""
    def parse(text: str) -> list:
        names = [n for n in text.split(",") if n.strip()]
        if not names:
            raise argparse.ArgumentTypeError(f"names nothing: {text!r}")
        try:
            select(names)
        except SystemExit as e:
            raise argparse.ArgumentTypeError(str(e)) from None
        return names
    return parse


def _split_workloads(names) -> tuple:
    """(queue workload names, program workload names) of ``names``; SystemExit if one matches nothing."""
    queue, progs = [], []
    prog_names = programs.names()
    for n in (n.strip() for n in names if n.strip()):
        hits_prog = any(p == n or p.startswith(n) for p in prog_names)
        hits_queue = any(w.name == n or w.name.startswith(n) for w in WORKLOADS)
        if not (hits_prog or hits_queue):
            raise SystemExit(f"no workload matches {n!r}; known: "
                             + ", ".join([w.name for w in WORKLOADS] + prog_names))
        (progs if hits_prog else queue).append(n)
        if hits_prog and hits_queue:
            queue.append(n)
    return queue, progs


def main(args: argparse.Namespace) -> int:
    """Run the benchmark described by parsed ``args``; returns the exit code."""
    cfg = Settings.quick() if args.quick else Settings()
    cfg.start_method = args.start_method
    if args.duration is not None:
        cfg.duration = args.duration
    queue_names, prog_names = _split_workloads(args.workloads) if args.workloads else (None, [])
    workloads = select_workloads(queue_names) if queue_names or not prog_names else []
    notes, adapters = [], []
    for a in select_adapters(args.only):
        why = a.missing()
        if why:
            notes.append(f"skipped {a.label}: not importable ({why})")
            print(notes[-1], file=sys.stderr)
        else:
            adapters.append(a)
    extra = reference_jobs(adapters, workloads)
    cells = run(adapters, workloads, cfg, progress=_progress, extra=extra)
    interrupted = len(cells) < len(extra) + sum(a.supports(wl) for wl in workloads for a in adapters)
    if interrupted:
        notes.append("interrupted: the table shows only the cells measured before Ctrl-C")
    if extra:
        workloads = [extra[0][0]] + workloads
        notes.append(f"{extra[0][0].name} measured for fastq only: the reference of the topic 1->1 ratio")
    labels = labels_of(adapters)
    bad = [c for c in cells if c.status in ("FAILED", "ERROR", "TIMEOUT")]
    notes += [f"{c.status} {c.workload} / {c.library}: {c.detail}" for c in bad]
    notes += topic_summary(cells)
    if workloads:
        print_table(cells, workloads, labels, notes)
    progs = programs.select(prog_names, cfg) if prog_names else []
    outcomes = programs.run(progs, progress=_program_progress) if progs else []
    if progs:
        print_programs(progs, outcomes, programs.notes(progs, outcomes))
        interrupted = interrupted or len(outcomes) < sum(1 + len(p.peers) for p in progs)
    if args.json:
        write_json(args.json, cells, cfg, notes, outcomes)
    if args.plot:
        write_plot(args.plot, cells, workloads, labels)
    if interrupted:
        return 130
    return 1 if any(c.status == "FAILED" for c in cells + outcomes) else 0

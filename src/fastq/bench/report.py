"""The report of a run: the table (rich or plain text), the topic summary, JSON and a plot."""

from __future__ import annotations

import json
import os
import platform
import sys
import time
from dataclasses import asdict

from . import programs
from .runner import TOPIC_REFERENCE
from .workloads import TOPIC_FANOUT, TOPIC_SIZES, _size_name, topic_name


def machine_info() -> dict:
    """What the figures were measured on."""
    cpu = ""
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next((ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name")), "")
    except OSError:
        pass
    versions = {}
    for dist in ("fastq-ipc", "pyzmq", "faster-fifo", "cloudtoid-interprocess", "zeroq", "iceoryx2", "numpy"):
        try:
            from importlib.metadata import version
            versions[dist] = version(dist)
        except Exception:  # noqa: BLE001
            versions[dist] = None
    if versions["fastq-ipc"] is None:   # running from a source tree
        try:
            versions["fastq-ipc"] = __import__("fastq").__version__
        except Exception:  # noqa: BLE001
            pass
    return {"platform": platform.platform(), "python": sys.version.split()[0], "cpu": cpu,
            "cpus": os.cpu_count(), "load_avg": os.getloadavg(), "versions": versions,
            "time": time.strftime("%Y-%m-%dT%H:%M:%S%z")}


def topic_summary(cells) -> list:
    """Lines relating the topic cells to their targets (and, for the peers, the same figures).

    - the 1-to-1 topic rate per subscriber as a share of the same library's Queue
      raw-64B (SPSC) rate measured in the same run (fastq target: >= 90%);
    - the publisher's rate with 4 subscribers as a share of its rate with 1
      (fastq target: within 10%, i.e. >= 90%).
    """
    by = {(c.workload, c.library): c for c in cells if c.status == "ok"}
    labels = list(dict.fromkeys(c.library for c in cells if c.workload.startswith("topic-")))
    lines = []
    for lab in labels:
        target = lab.startswith("fastq")
        one, ref = by.get((topic_name(64, 1), lab)), by.get((TOPIC_REFERENCE, lab))
        if one and ref:
            pct = 100.0 * one.figures["msgs_per_s"] / ref.figures["msgs_per_s"]
            verdict = (" (target >= 90%: " + ("met" if pct >= 90 else "NOT met") + ")") if target else ""
            lines.append(f"{lab}: topic 1->1 64B {_fmt(one.figures['msgs_per_s'])} msg/s per subscriber = "
                         f"{pct:.0f}% of its Queue {TOPIC_REFERENCE} {_fmt(ref.figures['msgs_per_s'])} msg/s "
                         f"in this run{verdict}")
        elif one and target:
            lines.append(f"{lab}: topic 1->1 64B vs Queue {TOPIC_REFERENCE}: no verified {TOPIC_REFERENCE} "
                         f"cell of {lab} in this run")
        for size in TOPIC_SIZES:
            a, b = by.get((topic_name(size, 1), lab)), by.get((topic_name(size, max(TOPIC_FANOUT)), lab))
            if not (a and b):
                continue
            n = max(TOPIC_FANOUT)
            pct = 100.0 * b.figures["pub_msgs_per_s"] / a.figures["pub_msgs_per_s"]
            verdict = (" (target within 10%: " + ("met" if pct >= 90 else "NOT met") + ")") if target else ""
            lines.append(f"{lab}: topic {_size_name(size)} publisher with {n} subscribers "
                         f"{_fmt(b.figures['pub_msgs_per_s'])} msg/s vs with 1 {_fmt(a.figures['pub_msgs_per_s'])}"
                         f" = {pct:.0f}%{verdict}")
    return lines


def _fmt(v: float) -> str:
    for div, suffix in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(v) >= div:
            return f"{v / div:.3g}{suffix}"
    return f"{v:.3g}"


def table_rows(cells, workloads, labels):
    """Rows of text: [row label, one cell per library..., fastq / best peer]."""
    by = {(c.workload, c.library): c for c in cells}
    rows = []
    for wl in workloads:
        for row_label, key, higher in wl.rows():
            vals, texts = {}, []
            for lab in labels:
                c = by.get((wl.name, lab))
                if c is None:
                    texts.append("-")
                elif c.status != "ok":
                    texts.append(c.status)
                else:
                    vals[lab] = c.figures[key]
                    texts.append(_fmt(c.figures[key]))
            best = max if higher else min
            ours = [v for lab, v in vals.items() if lab.startswith("fastq")]
            peers = [v for lab, v in vals.items() if not lab.startswith("fastq")]
            ratio = "-"
            if ours and peers and best(peers) > 0:
                ratio = f"{best(ours) / best(peers):.2f}x"
            rows.append([row_label] + texts + [ratio])
    return rows


def print_table(cells, workloads, labels, notes=(), file=None) -> None:
    """Print the result table (rich if installed, else plain text)."""
    rows = table_rows(cells, workloads, labels)
    header = ["workload"] + labels + ["fastq / best peer"]
    caption = ("↑ higher is better, ↓ lower is better (ratio < 1 is better for ↓ rows); "
               "fastq / best peer compares the best fastq column with the best peer column")
    render_table("fastq vs peers: 1 producer -> 1 consumer process unless noted", header, rows, caption, file)
    for n in notes:
        print(n, file=file or sys.stdout)


def render_table(title, header, rows, caption, file=None) -> None:
    """Print rows of text under ``header`` (rich if installed, else aligned plain text)."""
    file = file or sys.stdout
    try:
        from rich.console import Console
        from rich.table import Table
    except ImportError:
        widths = [max(len(str(r[i])) for r in rows + [header]) for i in range(len(header))]
        for r in [header] + rows:
            print("  ".join(str(x).rjust(w) if i else str(x).ljust(w)
                            for i, (x, w) in enumerate(zip(r, widths))), file=file)
        print(caption, file=file)
    else:
        table = Table(title=title, caption=caption)
        for i, h in enumerate(header):
            table.add_column(h, justify="left" if i == 0 else "right", no_wrap=True)
        for r in rows:
            table.add_row(*r)
        Console(file=file, width=400).print(table)


def write_json(path, cells, cfg, notes, outcomes=()) -> None:
    """Write machine info, settings, notes, every cell (figures and verification) and every program
    run to ``path``."""
    with open(path, "w") as f:
        json.dump({"machine": machine_info(), "settings": asdict(cfg), "notes": list(notes),
                   "cells": [asdict(c) for c in cells], "programs": [asdict(o) for o in outcomes]}, f, indent=2)


def print_programs(progs, outcomes, notes=(), file=None) -> None:
    """Print the program workloads' table: one row per peer run, beside fastq's run and the ratio."""
    header = ["workload", "peer", "peer figure", "fastq", "fastq / peer"]
    caption = ("↑ higher is better, ↓ lower is better (fastq / peer < 1 is better for ↓ rows); each row "
               "sets one peer's run beside fastq's run of the same program in this run")
    render_table("fastq vs peers: programs (pools and pipelines: 2 worker processes; bridges)", header,
                 programs.table_rows(progs, outcomes, _fmt), caption, file)
    for n in notes:
        print(n, file=file or sys.stdout)


def write_plot(path, cells, workloads, labels) -> None:
    """Bar chart, one log-scale panel per table row, one bar per library; failures marked."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FuncFormatter, NullFormatter

    by = {(c.workload, c.library): c for c in cells}
    panels = [(wl, lab, key) for wl in workloads for lab, key, _ in wl.rows()]
    ncol = 4
    nrow = -(-len(panels) // ncol)
    fig, axes = plt.subplots(nrow, ncol, figsize=(4.2 * ncol, 3.2 * nrow), squeeze=False)
    colors = plt.get_cmap("tab10").colors
    for ax, (wl, lab, key) in zip(axes.flat, panels):
        vals = []
        for i, name in enumerate(labels):
            c = by.get((wl.name, name))
            v = c.figures[key] if c and c.status == "ok" else None
            if v and v > 0:
                ax.bar(i, v, color=colors[i % 10])
                ax.text(i, v, _fmt(v), ha="center", va="bottom", fontsize=6)
                vals.append(v)
            else:
                ax.text(i, 0.05, c.status if c else "n/a", rotation=90, ha="center", va="bottom",
                        fontsize=7, color="gray", transform=ax.get_xaxis_transform())
        ax.set_yscale("log")
        if vals:
            ax.set_ylim(min(vals) / 4, max(vals) * 3)
        ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: _fmt(v)))
        ax.yaxis.set_minor_formatter(NullFormatter())
        ax.set_title(lab, fontsize=9)
        ax.set_xlim(-0.6, len(labels) - 0.4)
        ax.set_xticks(range(len(labels)))
        ax.set_xticklabels(labels, rotation=60, ha="right", fontsize=7)
        ax.tick_params(axis="y", labelsize=7)
    for ax in list(axes.flat)[len(panels):]:
        ax.axis("off")
    fig.suptitle("fastq vs peers (log scale; ↑ higher is better, ↓ lower is better)")
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def _program_progress(i, n, o):
    figs = ", ".join(f"{k}={_fmt(v)}" for k, v in o.figures.items() if isinstance(v, float))
    print(f"[{i}/{n}] {o.program:<15} {o.label:<40} {o.status:<7} {figs} ({o.seconds:.1f} s)"
          f"{'  ' + o.detail if o.status != 'ok' else ''}", file=sys.stderr, flush=True)


def _progress(i, n, cell):
    fig = ""
    if cell.status == "ok":
        fig = ", ".join(f"{k}={_fmt(v)}" for k, v in cell.figures.items()
                        if k in ("msgs_per_s", "mb_per_s", "pub_msgs_per_s", "p50", "p99", "cpu_pct"))
    print(f"[{i}/{n}] {cell.workload:<15} {cell.library:<17} {cell.status:<7} {fig} "
          f"({cell.seconds:.1f} s){'  ' + cell.detail if cell.status != 'ok' else ''}",
          file=sys.stderr, flush=True)

"""Runs queue cells: one (workload, adapter) pair in fresh child processes, under a deadline, verified."""

from __future__ import annotations

import functools
import sys
import time
from dataclasses import dataclass, field
from multiprocessing import connection

from .adapters import base
from .adapters.base import Adapter
from .payloads import LAST, PAYLOADS, SEQ_BITS
from .roles import _child
from .workloads import WORKLOADS, Settings, Workload, chunk_len, topic_name


@dataclass
class Cell:
    """Result of one (workload, library) pair."""

    workload: str
    library: str
    status: str                      # ok, FAILED, TIMEOUT, ERROR, skipped
    figures: dict = field(default_factory=dict)
    detail: str = ""
    seconds: float = 0.0


class _CellTimeout(Exception):
    pass


def _plan(wl: Workload):
    """(role, pid, n_stops, which queue spec) for every child of a cell."""
    if wl.kind == "pingpong":
        return [("_pong", 0, 0, "both"), ("_ping", 0, 0, "both")]
    if wl.kind == "idle":
        return [("_idle_wait", 0, 0, 0), ("_idle_send", 0, 0, 0)]
    if wl.kind == "topic":   # every subscriber gets the whole stream, and its one stop
        return [("_consume", c, 1, 0) for c in range(wl.consumers)] + [("_produce", 0, 1, 0)]
    return ([("_consume", c, wl.producers, 0) for c in range(wl.consumers)]
            + [("_produce", p, wl.consumers, 0) for p in range(wl.producers)])


def _budget(wl: Workload, cfg: Settings) -> float:
    run = {"stream": cfg.duration * 3, "topic": cfg.duration * 3 + base.JOIN_TIMEOUT,
           "pingpong": cfg.pingpong_budget * 2, "idle": cfg.idle}[wl.kind]
    return run + cfg.grace


def _reap(procs) -> None:
    for p in procs:
        p.join(3)
    for p in procs:
        if p.is_alive():
            p.terminate()
            p.join(1)
        if p.is_alive():
            p.kill()
            p.join()


def _collect(procs, conns, deadline):
    outs, pending = [], dict(zip(conns, procs))
    while pending:
        left = deadline - time.monotonic()
        if left <= 0:
            raise _CellTimeout()
        for c in connection.wait(list(pending), timeout=left):
            p = pending.pop(c)
            try:
                out = c.recv()
            except EOFError:
                p.join(1)
                out = {"error": f"child died (exit code {p.exitcode})"}
            outs.append(out)
            if out.get("error") or out.get("errors"):
                return outs
    return outs


def run_cell(adapter: Adapter, wl: Workload, cfg: Settings, ctx) -> Cell:
    """Run one workload for one library in fresh child processes; never raises, never hangs."""
    t_start = time.monotonic()
    specs, procs = [], []
    try:
        n_queues = 2 if wl.kind == "pingpong" else 1
        for _ in range(n_queues):
            specs.append(adapter.open(ctx, wl, cfg.capacity))
        plan = _plan(wl)
        barrier = ctx.Barrier(len(plan))
        conns = []
        for role, pid, n_stops, which in plan:
            r, w = ctx.Pipe(duplex=False)
            spec = tuple(specs) if which == "both" else specs[which]
            p = ctx.Process(target=_child, daemon=True, name=f"bench{role}",
                            args=(role, adapter, spec, wl, cfg, pid, n_stops, barrier, w))
            p.start()
            w.close()
            procs.append(p)
            conns.append(r)
        outs = _collect(procs, conns, t_start + _budget(wl, cfg))
        cell = evaluate(wl, adapter.label, outs, cfg)
    except _CellTimeout:
        cell = Cell(wl.name, adapter.label, "TIMEOUT", detail=f"no result within {_budget(wl, cfg):.0f} s")
    except Exception as e:  # noqa: BLE001 - a broken peer must not stop the run
        cell = Cell(wl.name, adapter.label, "ERROR", detail=f"{type(e).__name__}: {e}")
    finally:
        _reap(procs)
        for spec in specs:
            try:
                adapter.close(spec)
            except Exception:  # noqa: BLE001
                pass
    cell.seconds = time.monotonic() - t_start
    return cell


def evaluate(wl: Workload, label: str, outs: list, cfg: Settings) -> Cell:
    """Verify the children's reports and turn them into figures (or a FAILED cell)."""
    for o in outs:
        if o.get("error"):
            return Cell(wl.name, label, "ERROR", detail=f"{o.get('role', '?')}: {o['error']}")
        if o.get("errors"):
            return Cell(wl.name, label, "FAILED", detail="; ".join(o["errors"][:3]))
    if wl.kind == "pingpong":
        ping = next(o for o in outs if o["role"] == "ping")
        if not ping["round_trips"]:
            return Cell(wl.name, label, "FAILED", detail="no round trip completed")
        figs = {k: ping[k] for k in ("p50", "p99", "p99.9", "round_trips")}
        return Cell(wl.name, label, "ok", figs, f"{ping['round_trips']} round trips verified")
    if wl.kind == "idle":
        cons = next(o for o in outs if o["role"] == "consumer")
        return Cell(wl.name, label, "ok", {"cpu_pct": cons["cpu_pct"]},
                    f"woken after {cons['waited']:.2f} s with the right message")
    if wl.kind == "topic":
        return _evaluate_topic(wl, label, outs, cfg)
    return _evaluate_stream(wl, label, outs, cfg)


def _evaluate_topic(wl, label, outs, cfg):
    """One publisher, ``wl.consumers`` subscribers: each subscriber must have received the whole stream."""
    fail = functools.partial(Cell, wl.name, label, "FAILED")
    pubs = [o for o in outs if o["role"] == "producer"]
    subs = [o for o in outs if o["role"] == "consumer"]
    if len(pubs) != 1 or len(subs) != wl.consumers:
        return fail(detail=f"{len(pubs)} publisher and {len(subs)} subscriber reports, "
                           f"expected 1 and {wl.consumers}")
    pub = pubs[0]
    sent, K = pub["sent"], chunk_len(wl)
    if sent != pub["chunks"] * K + K - 1:
        return fail(detail=f"publisher reports {sent} messages in {pub['chunks']} chunks")
    want = list(range(K - 1, pub["chunks"] * K, K))
    want[-1] |= LAST
    pl = PAYLOADS[wl.payload](wl.size, 0)
    rates, n_samples = [], 0
    for sub in sorted(subs, key=lambda o: o["pid"]):
        who = f"subscriber {sub['pid']}"
        got = sum(sub["counts"].values())
        if got != sent:
            return fail(detail=f"publisher sent {sent}, {who} got {got}")
        if [t for t, _ in sub["samples"]] != want:
            return fail(detail=f"{who}: samples missing, duplicated or misplaced")
        for tag, crc in sub["samples"]:
            if pl.digest(pl.make(tag)) != crc:
                return fail(detail=f"{who}: payload of tag {tag:#x} has a wrong CRC32")
            n_samples += 1
        if sub["t0"] is None or sub["t1"] <= sub["t0"]:
            return fail(detail=f"{who}: too few messages to time (raise --duration)")
        rates.append(sub["timed"] / (sub["t1"] - sub["t0"]))
    if pub["t0"] is None or pub["t1"] <= pub["t0"] or pub["timed"] <= 0:
        return fail(detail="publisher: too few messages to time (raise --duration)")
    pub_rate = pub["timed"] / (pub["t1"] - pub["t0"])
    mean = sum(rates) / len(rates)
    figs = {"msgs_per_s": mean, "mb_per_s": mean * wl.size / 1e6, "sub_min_msgs_per_s": min(rates),
            "delivered_msgs_per_s": sum(rates), "pub_msgs_per_s": pub_rate, "subscribers": wl.consumers,
            "messages": sent}
    return Cell(wl.name, label, "ok", figs,
                f"each of {wl.consumers} subscribers got all {sent} msgs in order (checked every {K}th), "
                f"{n_samples} CRC32 samples match")


def _evaluate_stream(wl, label, outs, cfg):
    sent = {o["pid"]: o["sent"] for o in outs if o["role"] == "producer"}
    chunks = {o["pid"]: o["chunks"] for o in outs if o["role"] == "producer"}
    cons = [o for o in outs if o["role"] == "consumer"]
    fail = functools.partial(Cell, wl.name, label, "FAILED")
    K = chunk_len(wl)
    by_producer = {p: [] for p in sent}
    for c in cons:
        for tag, crc in c["samples"]:
            if tag >> SEQ_BITS not in by_producer:
                return fail(detail=f"sample tag {tag:#x} names no producer")
            by_producer[tag >> SEQ_BITS].append((tag, crc))
    for p, n in sent.items():
        got = sum(c["counts"].get(p, 0) for c in cons)
        if got != n:
            return fail(detail=f"producer {p} sent {n}, consumers got {got}")
        # exactly once: every sample position K-1, 2K-1, ... of the stream, the last one flagged
        base = p << SEQ_BITS
        want = [base | s for s in range(K - 1, chunks[p] * K, K)]
        want[-1] |= LAST
        if sorted(t for t, _ in by_producer[p]) != want or n != chunks[p] * K + K - 1:
            return fail(detail=f"producer {p}: samples missing, duplicated or misplaced")
    n_samples = 0
    for p, got in by_producer.items():
        pl = PAYLOADS[wl.payload](wl.size, p)
        for tag, crc in got:
            if pl.digest(pl.make(tag)) != crc:
                return fail(detail=f"payload of tag {tag:#x} has a wrong CRC32")
            n_samples += 1
    if any(c["t0"] is None for c in cons):
        return fail(detail="too few messages to time (raise --duration)")
    timed = sum(c["timed"] for c in cons)
    secs = max(c["t1"] for c in cons) - min(c["t0"] for c in cons)
    rate = timed / secs
    figs = {"msgs_per_s": rate, "mb_per_s": rate * wl.size / 1e6, "messages": sum(sent.values()),
            "timed_seconds": secs}
    return Cell(wl.name, label, "ok", figs,
                f"{sum(sent.values())} msgs exactly once in order (checked every {K}th), "
                f"{n_samples} CRC32 samples match")


def run(adapters, workloads, cfg: Settings, progress=None, extra=()) -> list:
    """Run every supported (workload, adapter) cell; returns the list of Cells.

    ``extra`` is a list of further (workload, adapter) cells, run first (see
    ``reference_jobs``).  ``progress(i, n, cell)`` is called after each cell.
    Ctrl-C stops the run and returns what was measured so far (children are
    always reaped).
    """
    import multiprocessing as mp

    ctx = mp.get_context(cfg.start_method)
    jobs = _pair_reference(list(extra) + [(wl, a) for wl in workloads for a in adapters if a.supports(wl)])
    cells = []
    try:
        for i, (wl, a) in enumerate(jobs, 1):
            cell = run_cell(a, wl, cfg, ctx)
            cells.append(cell)
            if progress:
                progress(i, len(jobs), cell)
    except KeyboardInterrupt:
        print("interrupted: reporting the cells measured so far", file=sys.stderr)
    return cells


TOPIC_REFERENCE = "raw-64B"    # the Queue cell a 1-to-1 topic is compared with


def reference_jobs(adapters, workloads) -> list:
    """fastq Queue cells the topic summary needs and ``workloads`` lacks: raw-64B for each fastq
    variant whose 1-to-1 64B topic cell runs (the topic / Queue SPSC ratio is taken in the same run)."""
    names = {w.name for w in workloads}
    if topic_name(64, 1) not in names or TOPIC_REFERENCE in names:
        return []
    ref = next(w for w in WORKLOADS if w.name == TOPIC_REFERENCE)
    topic_labels = {a.label for a in adapters if a.topic and a.key == "fastq"}
    return [(ref, a) for a in adapters
            if a.key == "fastq" and not a.topic and a.label in topic_labels and a.supports(ref)]


def _pair_reference(jobs) -> list:
    """``jobs`` with each 1-to-1 64B topic cell moved right after the raw-64B cell of the same label,
    so that the two figures of the topic / Queue ratio are measured back to back."""
    one = topic_name(64, 1)
    moved = [j for j in jobs if j[0].name == one
             and any(w.name == TOPIC_REFERENCE and a.label == j[1].label for w, a in jobs)]
    out = []
    for j in jobs:
        if j in moved:
            continue
        out.append(j)
        if j[0].name == TOPIC_REFERENCE:
            out += [m for m in moved if m[1].label == j[1].label]
    return out

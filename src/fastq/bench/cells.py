"""Figures of single verified cells, one number at a time: what the asv suite in ``benchmarks/`` tracks.

A cell that fails its checks raises RuntimeError (asv: failed) instead of giving a
figure; a library that is not installed, or cannot run the workload, raises
NotImplementedError (asv: skipped).  Tracks that read several figures of one cell
(msgs/s and MB/s of a stream; p50, p99 and p99.9 of a ping-pong) share it through
a file in a directory (``cell_dir``): asv runs each track in its own process, so an
in-memory cache would not survive.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import pickle
import tempfile

from .adapters import ADAPTERS
from .runner import run_cell
from .workloads import WORKLOADS, Settings

DURATION = 0.3          # seconds each producer sends in a stream or topic cell


def adapter_named(lib: str, topic: bool = False):
    """The adapter named ``lib`` (its topic variant if ``topic``, else its queue variant)."""
    return next(a for a in ADAPTERS if a.name == lib and a.topic == topic)


def workload_named(name: str):
    return next(w for w in WORKLOADS if w.name == name)


def libs_for(libs, *workloads, topic: bool = False) -> list:
    """The names of ``libs`` whose adapter can run all of ``workloads`` (static: installed or not)."""
    return [lib for lib in libs if all(adapter_named(lib, topic).supports(workload_named(w)) for w in workloads)]


def check(lib: str, workload: str, topic: bool = False):
    """(adapter, workload), or NotImplementedError (asv: skipped) if ``lib`` is missing or cannot run it."""
    adapter, wl = adapter_named(lib, topic), workload_named(workload)
    why = adapter.missing()
    if why or not adapter.supports(wl):
        raise NotImplementedError(f"{lib} cannot run {workload} here: {why or 'unsupported'}")
    return adapter, wl


def figures(lib: str, workload: str, topic: bool = False, **settings) -> dict:
    """Figures of one verified cell at quick settings (``settings`` override them)."""
    adapter, wl = check(lib, workload, topic)
    cfg = Settings.quick(**{"duration": DURATION, **settings})
    cell = run_cell(adapter, wl, cfg, mp.get_context("fork"))
    if cell.status != "ok":
        raise RuntimeError(f"{lib} {workload}: {cell.status} {cell.detail}")
    return cell.figures


def cell_dir() -> str:
    """A fresh directory for shared cells, in the current one (asv's setup_cache directory)."""
    return os.path.abspath(tempfile.mkdtemp(prefix="cells-", dir="."))


def shared_figures(cells: str, readers: int, lib: str, workload: str, topic: bool = False, **settings) -> dict:
    """Figures of the cell (lib, workload) for one of ``readers`` tracks: measured by the first
    reader, read from the directory ``cells`` by the others, forgotten once all have read it
    (so a further asv round measures afresh)."""
    check(lib, workload, topic)
    path = os.path.join(cells, f"{lib}-{workload}.pickle")
    try:
        with open(path, "rb") as f:
            entry = pickle.load(f)
    except FileNotFoundError:
        entry = {"figures": figures(lib, workload, topic, **settings), "left": readers}
    entry["left"] -= 1
    if entry["left"] > 0:
        with open(path, "wb") as f:
            pickle.dump(entry, f)
    elif os.path.exists(path):
        os.remove(path)
    return entry["figures"]

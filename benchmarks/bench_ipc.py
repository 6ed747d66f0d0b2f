"""Cross-process figures of fastq and its peers, measured by ``fastq.bench`` cells.

Every figure comes from one verified benchmark cell of ``fastq.bench`` (fresh
child processes, quick settings, count / order / CRC checks): a cell that fails
its checks fails the asv benchmark instead of reporting a number.  A library
that is not installed, or cannot run a workload, is skipped (asv shows n/a).

Classes whose tracks read several figures of the same cell (msgs/s and MB/s of
a stream; p50, p99 and p99.9 of a ping-pong) measure the cell once, in the
``setup`` of the first of those tracks, and hand it to the others through a
file in the ``setup_cache`` directory (asv runs each track in its own
process, so an in-memory cache would not survive; asv removes the directory
at the end of the run).  Once every track of the class has read a cell the
file is dropped, so a further asv round measures afresh.
"""

import importlib.util
import multiprocessing as mp
import os
import pickle
import tempfile

from fastq import bench

LIBS = ["fastq", "mp_queue", "mp_pipe", "faster_fifo", "zmq", "cloudtoid", "zeroq"]
SIZES = ["8B", "64B", "1KiB", "64KiB", "1MiB"]   # raw-<size> and batch-<size> workloads of fastq.bench
DURATION = 0.3          # seconds each producer sends in a stream cell
ROUND_TRIPS = 5000      # timed ping-pong round trips (at most Settings.quick().pingpong_budget s)
IDLE = 1.5              # seconds the consumer stays blocked in get() in the idle-CPU cell


def _adapter(lib):
    return next(a for a in bench.ADAPTERS if a.name == lib)


def _workload(name):
    return next(w for w in bench.WORKLOADS if w.name == name)


def _libs_for(*workloads):
    """The libraries of LIBS whose adapter can run all of ``workloads`` (static: installed or not)."""
    return [lib for lib in LIBS if all(_adapter(lib).supports(_workload(w)) for w in workloads)]


def _check(lib, workload):
    """Raise NotImplementedError (asv: skipped) if ``lib`` is missing or cannot run ``workload``."""
    adapter, wl = _adapter(lib), _workload(workload)
    if adapter.missing() or not adapter.supports(wl):
        raise NotImplementedError(f"{lib} cannot run {workload} here")
    return adapter, wl


def _cell(lib, workload, **settings):
    """Figures of one verified cell; RuntimeError (asv: failed) if the cell is not ok."""
    adapter, wl = _check(lib, workload)
    cfg = bench.Settings.quick(**{"duration": DURATION, **settings})
    cell = bench.run_cell(adapter, wl, cfg, mp.get_context("fork"))
    if cell.status != "ok":
        raise RuntimeError(f"{lib} {workload}: {cell.status} {cell.detail}")
    return cell.figures


def _cell_dir():
    """A fresh directory for shared cells, in the current one (asv's setup_cache directory)."""
    return os.path.abspath(tempfile.mkdtemp(prefix="cells-", dir="."))


def _shared_cell(cells, readers, lib, workload, **settings):
    """Figures of the cell (lib, workload) for one of ``readers`` tracks: measured by the first
    reader, read from ``cells`` by the others, then forgotten once all ``readers`` have read it."""
    _check(lib, workload)
    path = os.path.join(cells, f"{lib}-{workload}.pickle")
    try:
        with open(path, "rb") as f:
            entry = pickle.load(f)
    except FileNotFoundError:
        entry = {"figures": _cell(lib, workload, **settings), "left": readers}
    entry["left"] -= 1
    if entry["left"] > 0:
        with open(path, "wb") as f:
            pickle.dump(entry, f)
    elif os.path.exists(path):
        os.remove(path)
    return entry["figures"]


class _Stream:
    """msgs/s and MB/s of the stream workload ``<prefix>-<size>``, one cell for both tracks."""

    prefix = "raw"
    param_names = ["library", "size"]
    timeout = 120

    def setup_cache(self):
        return _cell_dir()

    def setup(self, cells, lib, size):
        self.figures = _shared_cell(cells, 2, lib, f"{self.prefix}-{size}")

    def track_msgs_per_s(self, cells, lib, size):
        return self.figures["msgs_per_s"]

    track_msgs_per_s.unit = "msgs/s"

    def track_mb_per_s(self, cells, lib, size):
        return self.figures["mb_per_s"]

    track_mb_per_s.unit = "MB/s"


class Throughput(_Stream):
    """Raw bytes, one put() / get() per message, 1 producer -> 1 consumer process."""

    prefix = "raw"
    params = (_libs_for(*(f"raw-{s}" for s in SIZES)), SIZES)


class ThroughputBatch(_Stream):
    """Raw bytes through put_many() / get_many(), 1 producer -> 1 consumer process."""

    prefix = "batch"
    params = (_libs_for(*(f"batch-{s}" for s in SIZES)), SIZES)


class PickledTuple:
    """A tuple of five ints per message (the library's pickle path), 1 -> 1 process."""

    params = (_libs_for("pickle-tuple"),)
    param_names = ["library"]
    unit = "msgs/s"
    timeout = 120

    def setup(self, lib):
        _check(lib, "pickle-tuple")

    def track_msgs_per_s(self, lib):
        return _cell(lib, "pickle-tuple")["msgs_per_s"]


class NumpyArray:
    """1 MiB uint8 numpy arrays, 1 -> 1 process."""

    params = (_libs_for("numpy-1MiB"),)
    param_names = ["library"]
    unit = "MB/s"
    timeout = 120

    def setup(self, lib):
        if importlib.util.find_spec("numpy") is None:
            raise NotImplementedError("numpy is not installed")
        _check(lib, "numpy-1MiB")

    def track_mb_per_s(self, lib):
        return _cell(lib, "numpy-1MiB")["mb_per_s"]


class MPMC:
    """2 producer + 2 consumer processes on one queue, 64-byte messages: aggregate msgs/s."""

    params = (_libs_for("mpmc-64B"),)
    param_names = ["library"]
    unit = "msgs/s"
    timeout = 120

    def setup(self, lib):
        _check(lib, "mpmc-64B")

    def track_msgs_per_s(self, lib):
        return _cell(lib, "mpmc-64B")["msgs_per_s"]


class Latency:
    """Ping-pong round trip between two processes over two queues (8-byte payloads).

    The three percentiles come from the same cell (one measurement per asv round)."""

    params = (_libs_for("pingpong"),)
    param_names = ["library"]
    unit = "us"
    timeout = 120

    def setup_cache(self):
        return _cell_dir()

    def setup(self, cells, lib):
        self.figures = _shared_cell(cells, 3, lib, "pingpong", round_trips=ROUND_TRIPS)

    def track_rtt_p50_us(self, cells, lib):
        return self.figures["p50"]

    def track_rtt_p99_us(self, cells, lib):
        return self.figures["p99"]

    def track_rtt_p99_9_us(self, cells, lib):
        return self.figures["p99.9"]


class IdleCPU:
    """CPU time of a consumer blocked in get() on an empty queue for IDLE seconds."""

    params = (_libs_for("idle-cpu"),)
    param_names = ["library"]
    unit = "% core"
    timeout = 120

    def setup(self, lib):
        _check(lib, "idle-cpu")

    def track_idle_get_cpu_pct(self, lib):
        return _cell(lib, "idle-cpu", idle=IDLE)["cpu_pct"]

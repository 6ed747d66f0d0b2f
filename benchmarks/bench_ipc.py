"""Cross-process figures of fastq and its peers, measured by ``fastq.bench`` cells.

Each ``track_*`` runs one verified benchmark cell in child processes (quick
settings) and returns its figure; a library that is not installed is skipped.
"""

import multiprocessing as mp

from fastq import bench

LIBS = ["fastq", "mp_queue", "mp_pipe", "faster_fifo", "zmq", "cloudtoid", "zeroq"]


def _check(lib, workload):
    """Raise NotImplementedError (asv: skipped) if ``lib`` is missing or cannot run ``workload``."""
    adapter = next(a for a in bench.ADAPTERS if a.name == lib)
    wl = next(w for w in bench.WORKLOADS if w.name == workload)
    if adapter.missing() or not adapter.supports(wl):
        raise NotImplementedError(f"{lib} cannot run {workload} here")
    return adapter, wl


def _cell(lib, workload, **settings):
    adapter, wl = _check(lib, workload)
    cell = bench.run_cell(adapter, wl, bench.Settings.quick(duration=0.3, **settings), mp.get_context("fork"))
    if cell.status != "ok":
        raise RuntimeError(f"{lib} {workload}: {cell.status} {cell.detail}")
    return cell.figures


class Throughput:
    """Messages per second, 1 producer -> 1 consumer process."""

    params = (LIBS, ["raw-64B", "raw-1KiB", "raw-1MiB", "batch-64B", "pickle-tuple"])
    param_names = ["library", "workload"]
    unit = "msgs/s"
    timeout = 120

    def setup(self, lib, workload):
        _check(lib, workload)

    def track_msgs_per_s(self, lib, workload):
        return _cell(lib, workload)["msgs_per_s"]


class Latency:
    """Ping-pong round trip between two processes over two queues (8-byte payloads)."""

    params = (LIBS,)
    param_names = ["library"]
    unit = "us"
    timeout = 120

    def setup(self, lib):
        _check(lib, "pingpong")

    def track_rtt_p50_us(self, lib):
        return _cell(lib, "pingpong", round_trips=5000)["p50"]

    def track_rtt_p99_us(self, lib):
        return _cell(lib, "pingpong", round_trips=5000)["p99"]

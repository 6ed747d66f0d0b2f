"""Cross-process figures of fastq and its peers, measured by ``fastq.bench`` cells.

Every figure comes from one verified benchmark cell of ``fastq.bench`` (fresh
child processes, quick settings, count / order / CRC checks): a cell that fails
its checks fails the asv benchmark instead of reporting a number.  A library
that is not installed, or cannot run a workload, is skipped (asv shows n/a).

Classes whose tracks read several figures of the same cell (msgs/s and MB/s of
a stream; p50, p99 and p99.9 of a ping-pong) measure the cell once, in the
``setup`` of the first of those tracks, and hand it to the others through a
file in the ``setup_cache`` directory (``fastq.bench.cells.shared_figures``;
asv removes the directory at the end of the run).
"""

import importlib.util

from fastq.bench import cells

LIBS = ["fastq", "mp_queue", "mp_pipe", "faster_fifo", "zmq", "cloudtoid", "zeroq"]
SIZES = ["8B", "64B", "1KiB", "64KiB", "1MiB"]   # raw-<size> and batch-<size> workloads of fastq.bench
ROUND_TRIPS = 5000      # timed ping-pong round trips (at most Settings.quick().pingpong_budget s)
IDLE = 1.5              # seconds the consumer stays blocked in get() in the idle-CPU cell


class _Stream:
    """msgs/s and MB/s of the stream workload ``<prefix>-<size>``, one cell for both tracks."""

    prefix = "raw"
    param_names = ["library", "size"]
    timeout = 120

    def setup_cache(self):
        return cells.cell_dir()

    def setup(self, cell_dir, lib, size):
        self.figures = cells.shared_figures(cell_dir, 2, lib, f"{self.prefix}-{size}")

    def track_msgs_per_s(self, cell_dir, lib, size):
        return self.figures["msgs_per_s"]

    track_msgs_per_s.unit = "msgs/s"

    def track_mb_per_s(self, cell_dir, lib, size):
        return self.figures["mb_per_s"]

    track_mb_per_s.unit = "MB/s"


class Throughput(_Stream):
    """Raw bytes, one put() / get() per message, 1 producer -> 1 consumer process."""

    prefix = "raw"
    params = (cells.libs_for(LIBS, *(f"raw-{s}" for s in SIZES)), SIZES)


class ThroughputBatch(_Stream):
    """Raw bytes through put_many() / get_many(), 1 producer -> 1 consumer process."""

    prefix = "batch"
    params = (cells.libs_for(LIBS, *(f"batch-{s}" for s in SIZES)), SIZES)


class _OneFigure:
    """One figure (``key``) of one cell of ``workload`` per library; subclasses name the track."""

    workload = key = ""
    settings: dict = {}
    param_names = ["library"]
    timeout = 120

    def setup(self, lib):
        cells.check(lib, self.workload)

    def figure(self, lib):
        return cells.figures(lib, self.workload, **self.settings)[self.key]


class _Rate(_OneFigure):
    """``track_msgs_per_s`` of ``workload``."""

    key, unit = "msgs_per_s", "msgs/s"

    def track_msgs_per_s(self, lib):
        return self.figure(lib)


class PickledTuple(_Rate):
    """A tuple of five ints per message (the library's pickle path), 1 -> 1 process."""

    workload = "pickle-tuple"
    params = (cells.libs_for(LIBS, workload),)


class NumpyArray(_OneFigure):
    """1 MiB uint8 numpy arrays, 1 -> 1 process."""

    workload, key, unit = "numpy-1MiB", "mb_per_s", "MB/s"
    params = (cells.libs_for(LIBS, workload),)

    def setup(self, lib):
        if importlib.util.find_spec("numpy") is None:
            raise NotImplementedError("numpy is not installed")
        super().setup(lib)

    def track_mb_per_s(self, lib):
        return self.figure(lib)


class MPMC(_Rate):
    """2 producer + 2 consumer processes on one queue, 64-byte messages: aggregate msgs/s."""

    workload = "mpmc-64B"
    params = (cells.libs_for(LIBS, workload),)


class Latency:
    """Ping-pong round trip between two processes over two queues (8-byte payloads).

    The three percentiles come from the same cell (one measurement per asv round)."""

    params = (cells.libs_for(LIBS, "pingpong"),)
    param_names = ["library"]
    unit = "us"
    timeout = 120

    def setup_cache(self):
        return cells.cell_dir()

    def setup(self, cell_dir, lib):
        self.figures = cells.shared_figures(cell_dir, 3, lib, "pingpong", round_trips=ROUND_TRIPS)

    def track_rtt_p50_us(self, cell_dir, lib):
        return self.figures["p50"]

    def track_rtt_p99_us(self, cell_dir, lib):
        return self.figures["p99"]

    def track_rtt_p99_9_us(self, cell_dir, lib):
        return self.figures["p99.9"]


class IdleCPU(_OneFigure):
    """CPU time of a consumer blocked in get() on an empty queue for IDLE seconds."""

    workload, key, unit, settings = "idle-cpu", "cpu_pct", "% core", {"idle": IDLE}
    params = (cells.libs_for(LIBS, workload),)

    def track_idle_get_cpu_pct(self, lib):
        return self.figure(lib)

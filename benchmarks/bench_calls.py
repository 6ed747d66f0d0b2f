"""Per-call cost of put + get of one 64-byte message inside one process.

``PutGet`` deliberately has no ``setup``: with a setup hook, the asv runner in
use re-runs setup before every timed call (``number`` resolves to 1), so each
sample would time one put + get on a freshly opened queue, i.e. the cold
first call (tens of microseconds), not the steady per-call cost.  Instead the
queue is opened on the first call (asv's calibration and warm-up absorb that
call) and the timed calls run back to back on the same warm queue, each
leaving it empty again.

asv ends a benchmark process with ``os._exit`` (no atexit, no finalizers), and
without a setup there is no teardown that runs only once, so the names a queue
holds in the file system are removed right after opening it (the open handles
keep working), and libraries whose handles leave files behind (cloudtoid's
reader registrations) are not listed.
"""

import multiprocessing as mp

from fastq import bench

try:
    from asv_runner.benchmarks.mark import SkipNotImplemented as _Skip
except ImportError:  # pragma: no cover - older asv
    _Skip = NotImplementedError

WL = next(w for w in bench.WORKLOADS if w.name == "raw-64B")
MSG = bench.RawPayload(64, 0).make(1)


def _forget_names(lib, adapter, spec):
    """Remove what the queue ``spec`` holds in the file system; its open endpoints stay usable."""
    if lib == "fastq":
        spec.unlink()
    elif lib in ("zmq", "zeroq"):   # ipc:// socket path / the creator's shared-memory handle
        adapter.close(spec)


class PutGet:
    """``time_put_get``: one put followed by one get on the same queue (64-byte raw message)."""

    params = (["fastq", "mp_queue", "mp_pipe", "faster_fifo", "zmq", "zeroq"],)
    param_names = ["library"]

    _lib = None

    def _open(self, lib):
        adapter = next(a for a in bench.ADAPTERS if a.name == lib)
        if adapter.missing():
            raise _Skip(f"{lib} is not installed")
        spec = adapter.open(mp.get_context("fork"), WL, 1 << 20)
        rx = adapter.receiver(spec, WL)
        tx = adapter.sender(spec, WL)
        tx.put(MSG)                     # connects zmq's PUSH to its PULL before the path goes
        if bytes(rx.get()) != MSG:
            raise RuntimeError(f"{lib}: wrong message back")
        _forget_names(lib, adapter, spec)
        self._keep = (adapter, spec, tx, rx)
        self._put, self._get, self._lib = tx.put, rx.get, lib

    def time_put_get(self, lib):
        if self._lib != lib:
            self._open(lib)
        self._put(MSG)
        self._get()

"""The worker process of a stage (shared by :class:`fastq.Pool`,
:func:`fastq.pipeline` and the RPC server's failures): what a chunk is, how a
worker runs one, sends its outputs (in parts when they exceed a message) and
acks its input only after; the failures it reports (:class:`WorkerLost`,
:class:`RemoteTraceback`).  The parent's side (jobs, the collector, the
supervisor) is :mod:`fastq._workers`, whose docstring tells the whole design.
"""
from __future__ import annotations

import itertools
import os
import pickle
import signal
import time
import traceback
from typing import Any, Callable, Dict, List, Optional

from . import _batch
from ._batch import Salvaged, pack, unpack
from ._errors import Empty, MessageTooLarge, ShutDown
from ._queue import Queue


__all__ = ["WorkerLost", "RemoteTraceback"]

# items per chunk: a chunk should keep one worker busy about TARGET_S seconds
TARGET_S = 0.004
TAIL_S = TARGET_S / 8                # the smallest share of the end of a known-length input
COST_DECAY = 0.5                     # weight of the earlier batches in the cost per item
MAX_CHUNK = 1 << 14
MAX_CHUNK_BYTES = 1 << 20           # estimated (sys.getsizeof of the first item)
NSLOT = 5                           # per worker: busy, job, chunk, position (-1: unknown), items done
NPOISON = 64                        # poisoned items remembered: job, stage, position, runs
MODE_MAP, MODE_STAR, MODE_APPLY = 0, 1, 2
WORKER_SPIN_S = 100e-6              # a worker polls its queue this long after a chunk
LINGER_S = 0.002                    # the collector waits this long after the last waiter left
COLLECT_SLICE_S = 0.05              # the collector's longest read of the results queue


class WorkerLost(Exception):
    """A worker process died (a signal, the OOM killer, ``os._exit``) while it ran
    an item, and the item was re-run on a new worker ``max_retries`` times and
    killed it every time.

    Attributes
    ----------
    position : int
        The item's position in the input (0-based).
    stage : int
        The pipeline stage whose worker died (0 for a Pool).
    runs : int
        How many times the item was started and killed its worker.
    """

    def __init__(self, position: int, stage: int = 0, runs: int = 1):
        super().__init__(f"worker process died {runs} time(s) running the item at input "
                         f"position {position} (stage {stage}); gave up")
        self.position, self.stage, self.runs = position, stage, runs

    def __reduce__(self):
        return (type(self), (self.position, self.stage, self.runs))


class RemoteTraceback(Exception):
    """The ``__cause__`` of an exception re-raised from a worker: its traceback text
    as the worker formatted it (as ``concurrent.futures`` does)."""

    def __init__(self, tb: str):
        super().__init__(tb)
        self.tb = tb

    def __str__(self) -> str:
        return self.tb


class _Failed:
    """Stands for an item whose function raised: travels in place of its output."""

    __slots__ = ("exc", "tb")

    def __init__(self, exc: BaseException, tb: str):
        self.exc, self.tb = exc, tb

    @classmethod
    def current(cls, exc: BaseException) -> "_Failed":
        tb = traceback.format_exc()
        try:  # the round trip: one that pickles may still fail to unpickle
            pickle.loads(pickle.dumps(exc))  # (an __init__ that wants other arguments)
        except Exception as e:  # the exception itself cannot travel: say what it was
            exc = RuntimeError(f"unpicklable exception {exc!r} ({type(e).__name__}: {e})")
        return cls(exc, f'\n"""\n{tb}"""')

    def __reduce__(self):
        return (_Failed, (self.exc, self.tb))

    def rebuild(self) -> BaseException:
        exc = self.exc
        if self.tb:
            exc.__cause__ = RemoteTraceback(self.tb)
        return exc


_batch.make_failure = _Failed


def _nfailed(items: list) -> int:
    return sum(type(x) is _Failed for x in items)


# ---- the worker process ------------------------------------------------------------

class _StageSpec:
    """What a worker of one stage needs (pickled into spawn/forkserver children)."""

    def __init__(self, stage: int, fn: Optional[Callable], flat: bool, workers: int,
                 max_retries: int, in_q: Queue, out_q: Queue):
        self.stage, self.fn, self.flat, self.workers = stage, fn, flat, workers
        self.max_retries = max_retries
        # anonymous queues: inherited by a forked worker, handed to a spawned
        # one as a file descriptor while it starts (pickling them at any other
        # time is refused, as for multiprocessing.Queue)
        self.in_q, self.out_q = in_q, out_q
        self.initializer: Optional[Callable] = None
        self.initargs: tuple = ()
        self.maxtasks: Optional[int] = None
        self.wids = range(0)                # the worker ids of this stage


def _poisoned(poison: Any, job: int, stage: int) -> Dict[int, int]:
    n = min(poison[0], NPOISON)
    got = {}
    for i in range(n):
        j = 1 + 4 * i
        if poison[j] == job and poison[j + 1] == stage:
            got[poison[j + 2]] = poison[j + 3]
    return got


def _run_chunk(fn: Callable, mode: int, flat: bool, items: list, origin: Any, nfailed: int,
               careful: bool, slots: Any, k: int, poison: Any, job: int, stage: int):
    """The outputs of one chunk: (items, origin, nfailed)."""
    if not (careful or nfailed or flat):  # the fast path: whole chunk in C loops
        out: list = []
        it = map(fn, items) if mode == MODE_MAP else itertools.starmap(fn, items)
        nf = 0
        while True:
            try:
                out.extend(it)
                break
            except Exception as e:  # out holds the items before the failing one
                out.append(_Failed.current(e))
                nf += 1
        return out, origin, nf
    bad = _poisoned(poison, job, stage) if careful else {}
    out, outo, nf = [], ([] if flat else origin), 0
    for i, x in enumerate(items):
        o = origin + i if type(origin) is int else origin[i]
        if careful:
            slots[k + 3] = o
        if type(x) is _Failed or o in bad:
            out.append(x if type(x) is _Failed else _Failed(WorkerLost(o, stage, bad[o]), ""))
            nf += 1
            if flat:
                outo.append(o)
            continue
        try:
            if flat:
                for y in fn(x):
                    out.append(y)
                    outo.append(o)
            elif mode == MODE_MAP:
                out.append(fn(x))
            else:
                out.append(fn(*x))
        except Exception as e:
            out.append(_Failed.current(e))
            nf += 1
            if flat:
                outo.append(o)
    if careful:
        slots[k + 3] = -1
    return out, outo, nf


def _await_counted(slots: Any, wids: range, wid: int, job: int, chunk: int) -> None:
    """A redelivered chunk: wait until the supervisor has counted the death of the
    worker that held it (its slot stays busy until then), so that an item that
    has now killed too many workers is seen poisoned.  Any process may run
    recovery and give the chunk back before the supervisor saw the death.
    Bounded: a supervisor that does not come is no reason to stop."""
    deadline = time.monotonic() + 2.0
    while time.monotonic() < deadline:
        if not any(slots[w * NSLOT] == 1 and slots[w * NSLOT + 1] == job
                   and slots[w * NSLOT + 2] == chunk for w in wids if w != wid):
            return
        time.sleep(0.001)


def _sendable(out: list) -> list:
    """out with each output that cannot be pickled replaced by the error that
    says so, with this worker's traceback (as concurrent.futures reports an
    unpicklable result)."""
    res = []
    for y in out:
        try:  # out-of-band buffers (numpy) are not copied to find out
            pickle.dumps(y, protocol=5, buffer_callback=lambda b: None)
        except Exception as e:
            y = _Failed.current(e)
        res.append(y)
    return res


def _send(out_q: Queue, job: int, chunk: int, outo: Any, out: list, nf: int,
          cost: float, parts: tuple) -> None:
    """Put one chunk's outputs: one message, or several (parts) when they do not
    fit in one.  An output that cannot travel travels as its error: a worker
    that died in put() would leave its chunk to another worker, which would
    die the same way, forever."""
    for attempt in range(2):
        try:
            out_q.put((job, chunk, outo, None, pack(out), nf, cost, parts))
            return
        except ShutDown:
            raise
        except MessageTooLarge:
            _send_parts(out_q, job, chunk, outo, out, cost, parts)
            return
        except Exception as e:
            # first an output at a time; if the list still fails as a whole,
            # every output gets the error
            out = _sendable(out) if attempt == 0 else [_Failed.current(e)] * len(out)
        nf = _nfailed(out)
    out_q.put((job, chunk, outo, None, pack(out), nf, cost, parts))


def _pickled_size(y: Any) -> int:
    """Bytes of y in a message (its pickle and its out-of-band buffers)."""
    bufs: list = []
    n = len(pickle.dumps(y, protocol=5, buffer_callback=bufs.append))
    return n + sum(b.raw().nbytes for b in bufs)


def _send_parts(out_q: Queue, job: int, chunk: int, outo: Any, out: list, cost: float,
                parts: tuple) -> None:
    """Put outputs that do not fit in one message as consecutive parts, each
    marked (i, n, run) after the input's own part marks: the reader puts a
    chunk together from the n parts of one run (see _Job.deliver_part).  The
    input is acknowledged only after the last part: a worker killed between
    two parts leaves its input to be run again, by a new run whose parts the
    reader does not mix with the dead run's.  An output larger than a message
    on its own is replaced by the MessageTooLarge that says so."""
    limit = out_q.max_message
    budget = limit // 2          # for the items; the rest for origins and framing
    sizes = []
    for i, y in enumerate(out):
        try:
            n = _pickled_size(y)
        except Exception as e:
            out[i], n = _Failed.current(e), 0
        if n > budget:
            out[i] = _Failed(MessageTooLarge(
                f"an output of {n} bytes (pickled) does not fit in one message of the "
                f"queue (at most {limit} bytes: a queue's capacity // 2; pass a larger "
                f"capacity to the Pool or pipeline)"), "")
            n = _pickled_size(out[i])
        sizes.append(n)
    cuts, acc = [0], 0
    for i, n in enumerate(sizes):
        if acc + n > budget and i > cuts[-1]:
            cuts.append(i)
            acc = 0
        acc += n
    cuts.append(len(out))
    _put_parts(out_q, job, chunk, outo, out, cost, parts, cuts)


def _put_parts(out_q: Queue, job: int, chunk: int, outo: Any, out: list, cost: float,
               parts: tuple, cuts: List[int]) -> None:
    """Put out[cuts[k]:cuts[k + 1]] as part k; a part that still does not fit
    (the sizes were estimated) is put as two parts of its own, one level down."""
    run = int.from_bytes(os.urandom(8), "little") >> 2
    total = len(cuts) - 1
    for k in range(total):
        a, b = cuts[k], cuts[k + 1]
        o = outo + a if type(outo) is int else outo[a:b]
        piece, mark = out[a:b], parts + ((k, total, run),)
        try:
            out_q.put((job, chunk, o, None, pack(piece), _nfailed(piece), cost, mark))
        except MessageTooLarge as e:
            if len(piece) == 1:
                piece = [_Failed(MessageTooLarge(f"an output does not fit in one message "
                                                 f"of the queue: {e}"), "")]
                out_q.put((job, chunk, o, None, pack(piece), 1, cost, mark))
            else:
                _put_parts(out_q, job, chunk, o, piece, cost, mark, [0, len(piece) // 2,
                                                                    len(piece)])


def _apply(fa: Any) -> Any:
    fn, args, kwargs = fa
    return fn(*args, **kwargs)


def _worker_main(spec: _StageSpec, wid: int, slots: Any, poison: Any) -> None:
    """A worker: take chunks, compute, pass them on, ack; until the queue is shut down."""
    import multiprocessing as mp
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent owns Ctrl-C and stops us
    in_q, out_q = spec.in_q, spec.out_q
    if spec.initializer is not None:
        spec.initializer(*spec.initargs)
    parent = mp.parent_process()
    k = wid * NSLOT
    calls: Dict[bytes, tuple] = {}
    tasks = 0
    spin_until = 0.0
    qsize = in_q.qsize
    while True:
        # Poll a little before sleeping: the next chunk often comes within
        # microseconds (a loop of apply(), a stream), and a futex wake-up costs
        # tens of them.  qsize(), not receive(block=False): a polling receive
        # runs recovery at once, and would hand a dead worker's chunk on before
        # the supervisor counted the death (and poisoned the item).
        while not qsize() and time.perf_counter() < spin_until:
            pass
        try:
            d = in_q.receive(timeout=0.5)
        except Empty:
            if parent is not None and not parent.is_alive():
                return  # orphaned: nobody will read what we compute
            continue
        except ShutDown:
            return
        job, chunk, origin, call, batch, nfailed, cost, parts = d.value
        items = unpack(batch)
        if type(items) is Salvaged:  # an item that did not load fails alone
            items = list(items)
            nfailed = _nfailed(items)
        if d.redelivered:
            _await_counted(slots, spec.wids, wid, job, chunk)
        slots[k + 1], slots[k + 2], slots[k + 3], slots[k] = job, chunk, -1, 1
        if call is None:
            fn, mode = spec.fn, MODE_MAP
        else:
            got = calls.get(call)
            if got is None:
                if len(calls) > 64:
                    calls.clear()
                got = calls[call] = pickle.loads(call)
            fn, mode = got
            if mode == MODE_APPLY:
                fn, mode, items = _apply, MODE_MAP, [(fn, a, kw) for a, kw in items]
        t0 = time.perf_counter()
        out, outo, nf = _run_chunk(fn, mode, spec.flat, items, origin, nfailed, d.redelivered,
                                   slots, k, poison, job, spec.stage)
        cost = max(cost, (time.perf_counter() - t0) / max(1, len(items)))
        try:
            _send(out_q, job, chunk, outo, out, nf, cost, parts)
            d.ack()
        except ShutDown:
            return
        slots[k] = 0
        slots[k + 4] += len(items)
        spin_until = time.perf_counter() + WORKER_SPIN_S
        tasks += 1
        if spec.maxtasks and tasks >= spec.maxtasks:
            return

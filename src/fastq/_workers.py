"""Worker processes fed by fastq queues, and the supervisor that keeps them alive.

Shared by :class:`fastq.Pool` and :func:`fastq.pipeline`.  The unit of work is a
*chunk*: one message ``(job, chunk, origin, call, items, nfailed, cost, parts)``
holding a list of items (packed by ``fastq._batch.pack``: its own pickle, read
item by item if it does not load whole).  ``origin`` is the input position of the
first item (an int, the items being consecutive) or a list with one position per
item (after a ``flat`` stage).  A stage's worker takes a chunk with acknowledged
delivery (``receive()``), computes the chunk of outputs, puts it on the next
queue as one message and only then acks: a worker killed anywhere in between
leaves its chunk in the queue, and fastq's recovery gives it to another worker
(at-least-once).  The parent keeps the first copy of each chunk it receives
(exactly-once results).  Outputs too large for one message go as several
*parts*, each marked ``(i, n, run)`` (after the marks of the input, itself maybe
a part): the parent puts a chunk together from the parts of one run
(``_send_parts``, ``_Job.deliver_part``).

The supervisor (a thread of the parent) waits on the workers' sentinels.  When one
dies, it reads what the worker was doing from a small shared table (job, chunk,
and, when the chunk is a redelivered one, the item's input position), counts the
death against that item, repairs the queues (``recover()``: the chunk is given
back at once) and starts a replacement.  An item that killed its worker more than
``max_retries`` times is *poisoned*: the next worker to take its chunk emits a
:class:`WorkerLost` in its place instead of running it again.  A chunk is run
item by item with the item's position published only when it was redelivered
(the rare case), so the common case costs one table write per chunk.

The last queue's chunks are read by the parent thread that waits for them, else
by a collector thread (see ``_Engine.wait``).
"""
from __future__ import annotations

import itertools
import os
import threading
import time
import weakref
from multiprocessing import connection
from typing import Any, Callable, Dict, Iterator, List, Optional

from ._batch import Salvaged, pack, unpack
from ._errors import Empty, MessageTooLarge, ShutDown
from ._queue import Queue

from ._stage import (COLLECT_SLICE_S, COST_DECAY, LINGER_S, MAX_CHUNK, MAX_CHUNK_BYTES, NPOISON,
                     NSLOT, TAIL_S, TARGET_S, _nfailed, _StageSpec, _worker_main)
# re-exported: the pool, the RPC server and the package take these from here
from ._stage import MODE_APPLY, MODE_MAP, MODE_STAR, RemoteTraceback, WorkerLost, _Failed  # noqa: F401

__all__ = ["WorkerLost", "RemoteTraceback"]

# ---- the parent: jobs, collector, supervisor ----------------------------------------

class _Job:
    """One stream of chunks in the parent: the ordered/unordered reassembly of its
    results, the in-flight window that bounds it, and its completion."""

    def __init__(self, engine: "_Engine", jid: int, ordered: bool, window: int,
                 release_on_receive: bool, total: Optional[int] = None):
        self.engine, self.jid, self.ordered = engine, jid, ordered
        self.mu = threading.Lock()
        # chunks in flight at most (none: a job of one chunk, put by its caller)
        self.window = threading.BoundedSemaphore(window) if window else None
        self.release_on_receive = release_on_receive
        self.buf: Dict[int, tuple] = {}      # ordered: chunk -> (outputs, failures)
        self.arrived: List[tuple] = []       # unordered: (outputs, failures) as they come
        self.low = 0                         # every chunk below was received
        self.seen: set = set()               # chunks >= low received
        self.parts: Dict[int, dict] = {}     # chunk -> {part mark: items}, until whole
        self.received = 0
        self.total = total                   # chunks, once the input is exhausted
        self.items_total = total
        self.error: Optional[BaseException] = None  # the input or the engine failed
        self.next = 0                        # ordered: next chunk to yield
        self.on_done: Optional[Callable[["_Job"], None]] = None
        self.finished = False
        self.background = True

    def deliver(self, chunk: int, items: list, nfailed: int) -> None:
        with self.mu:
            if chunk < self.low or chunk in self.seen:
                return  # a copy computed again after its worker died: drop it
            self.seen.add(chunk)
            while self.low in self.seen:
                self.seen.discard(self.low)
                self.low += 1
            self.received += 1
            if self.ordered:
                self.buf[chunk] = (items, nfailed)
            else:
                self.arrived.append((items, nfailed))
            if self.release_on_receive and self.window is not None:
                self.window.release()
        self._check_done()

    def deliver_part(self, chunk: int, mark: tuple, items: list) -> None:
        """One part of a chunk whose outputs did not fit in one message (see
        _send_parts): delivered as the chunk once every part of one run is
        in, at every level of splitting."""
        with self.mu:
            if chunk < self.low or chunk in self.seen:
                return  # the chunk is in (from another run): drop it
            got = self.parts.setdefault(chunk, {})
            got.setdefault(mark, items)  # the first copy of a part of a run
            whole = _assemble(got, ())
            if whole is None:
                return
            del self.parts[chunk]
        self.deliver(chunk, whole, _nfailed(whole))

    def set_total(self, chunks: int, items: int) -> None:
        with self.mu:
            self.total, self.items_total = chunks, items
        self._check_done()
        self.engine.nudge()

    def fail(self, exc: BaseException) -> None:
        with self.mu:
            if self.error is None:
                self.error = exc
        self._check_done()
        self.engine.nudge()

    def _check_done(self) -> None:
        with self.mu:
            if self.finished or not (self.error is not None
                                     or (self.total is not None and self.received >= self.total)):
                return
            self.finished = True
        self.engine._job_finished(self)
        if self.on_done is not None:
            self.on_done(self)

    def _ready(self) -> bool:
        """Something for chunks() to do: a chunk to yield, the end, or an error
        (read without the lock: chunks() looks again with it)."""
        if self.ordered:
            if self.next in self.buf:
                return True
            done = self.next
        else:
            if self.arrived:
                return True
            done = self.received
        return self.error is not None or (self.total is not None and done >= self.total)

    def chunks(self, timeout: Optional[float] = None):
        """Yield (outputs, failures) per chunk as they become available (in input order if
        ordered); raises the job's error, or TimeoutError.  The consuming thread
        reads the results queue itself while it waits (see _Engine.wait)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            with self.mu:
                if self.ordered and self.next in self.buf:
                    items = self.buf.pop(self.next)
                    self.next += 1
                elif not self.ordered and self.arrived:
                    items = self.arrived.pop(0)
                else:
                    items = None
                    done = self.next if self.ordered else self.received
                    if self.total is not None and done >= self.total and not self.arrived:
                        return
                    if self.error is not None:
                        raise self.error
            if items is None:
                if not self.engine.wait(self._ready, deadline):
                    raise TimeoutError("no result in time")
                continue
            yield items
            # the consumer came back for more: it took every item of this
            # chunk, which leaves the window now (not when it was handed
            # over, which let the input run a whole chunk further ahead)
            if not self.release_on_receive and self.window is not None:
                self.window.release()


def _assemble(got: Dict[tuple, list], prefix: tuple) -> Optional[list]:
    """The items of the part at prefix (() for the whole chunk) from the parts
    in got (mark -> items), or None while one is missing.  A mark is a tuple
    of (i, n, run) levels: the part i of the n parts of a run.  The parts of
    one run only are put together (a run that died between two parts left
    some of them; the run of its replacement may cut differently)."""
    if prefix in got:
        return got[prefix]
    depth = len(prefix)
    runs: Dict[int, tuple] = {}
    for mark in got:
        if len(mark) > depth and mark[:depth] == prefix:
            i, n, run = mark[depth]
            runs.setdefault(run, (n, set()))[1].add(i)
    for run, (n, have) in runs.items():
        if len(have) == n:
            pieces = [_assemble(got, prefix + ((i, n, run),)) for i in range(n)]
            if all(p is not None for p in pieces):
                return [y for p in pieces for y in p]
    return None


def _output_lists(job: _Job, on_end: Callable[[], None]) -> Iterator[Any]:
    try:
        for items, nfailed in job.chunks():
            if nfailed:  # the items before the first failure, then raise it from here
                i = next(i for i, x in enumerate(items) if type(x) is _Failed)
                yield items[:i]
                raise items[i].rebuild()
            yield items
    finally:
        on_end()


def outputs(job: _Job, on_end: Callable[[], None]) -> Iterator[Any]:
    """The job's outputs one by one; the first failure is raised and ends the
    iteration; on_end() runs when the iteration ends or is abandoned.  Items are
    taken from each chunk's list by itertools.chain (in C: a Python generator
    costs ~100 ns an item, as much as a worker's whole trip)."""
    return itertools.chain.from_iterable(_output_lists(job, on_end))


def _sizeof(x: Any) -> int:
    try:
        import sys
        return sys.getsizeof(x)
    except Exception:
        return 64


class _Engine:
    """Stages of worker processes joined by fastq queues, a supervisor thread that
    replaces dead workers, and the routing of the last queue's chunks to their
    jobs (by the thread waiting for them, else by a collector thread)."""

    def __init__(self, stages: List[tuple], ctx: Any, capacity: int,
                 initializer: Optional[Callable] = None, initargs: tuple = (),
                 maxtasks: Optional[int] = None, on_progress: Optional[Callable] = None):
        self.ctx = ctx
        self.queues = [Queue(None, capacity=capacity) for _ in range(len(stages) + 1)]
        self.specs: List[_StageSpec] = []
        for s, (fn, workers, flat, retries) in enumerate(stages):
            sp = _StageSpec(s, fn, flat, workers, retries, self.queues[s], self.queues[s + 1])
            sp.initializer, sp.initargs, sp.maxtasks = initializer, initargs, maxtasks
            first = sum(o.workers for o in self.specs)
            sp.wids = range(first, first + workers)
            self.specs.append(sp)
        self.nworkers = sum(sp.workers for sp in self.specs)
        self.slots = ctx.RawArray("q", NSLOT * self.nworkers)
        self.poison = ctx.RawArray("q", 1 + 4 * NPOISON)
        self.procs: Dict[int, Any] = {}          # worker id -> Process
        self.stage_of: List[int] = []
        for sp in self.specs:
            self.stage_of += [sp.stage] * sp.workers
        self.jobs: Dict[int, _Job] = {}
        self.lock = threading.Lock()
        self.jids = itertools.count()
        self.cost: Optional[float] = None        # seconds per item at the slowest stage
        self.cost_s = self.cost_n = 0.0          # its decayed sums: seconds, items
        self.reruns = 0                          # chunks given back by a dead worker
        self.deaths: Dict[tuple, int] = {}       # (job, stage, position) -> deaths
        self.unknown: Dict[tuple, int] = {}      # (job, stage, chunk) -> deaths, item unknown
        self.closing = self.stopping = False
        self.feeding = 0                         # feeders still putting their input
        self.fatal: Optional[BaseException] = None
        self.on_progress = on_progress
        self.collect_lock = threading.Lock()     # held by the thread reading the results
        self.turn = threading.Condition(threading.Lock())  # results came / the reader changed
        self.fg_waiters = 0                      # threads waiting for results in wait()
        self.fg_left = 0.0                       # when one last left (monotonic)
        self.background = 0                      # jobs with background=True (new_job)
        self.bg_wanted = threading.Event()       # wakes the collector: a background job came
        self.results_closed = False              # the results queue is shut down or closed
        self._wake_r, self._wake_w = os.pipe()
        try:
            for wid in range(self.nworkers):
                self._start(wid)
        except BaseException:
            self.terminate()
            raise
        self.supervisor = threading.Thread(target=self._supervise, name="fastq-supervisor",
                                           daemon=True)
        self.collector = threading.Thread(target=self._collect, name="fastq-collector",
                                          daemon=True)
        self.supervisor.start()
        self.collector.start()
        _live.add(self)

    # -- workers
    def _start(self, wid: int) -> None:
        p = self.ctx.Process(target=_worker_main, name=f"fastq-worker-{wid}",
                             args=(self.specs[self.stage_of[wid]], wid, self.slots, self.poison),
                             daemon=True)
        p.start()
        self.procs[wid] = p

    def stage_done(self) -> List[int]:
        """Items each stage's workers have finished, now."""
        done = [0] * len(self.specs)
        for wid, s in enumerate(self.stage_of):
            done[s] += self.slots[wid * NSLOT + 4]
        return done

    def pids(self) -> List[int]:
        """The worker processes' pids, now."""
        return [p.pid for p in list(self.procs.values())]

    def _supervise(self) -> None:
        while not self.stopping:
            procs = dict(self.procs)
            if not procs:
                return  # closed and every worker exited
            by = {p.sentinel: wid for wid, p in procs.items()}
            ready = connection.wait(list(by) + [self._wake_r], timeout=1.0)
            for s in ready:
                if s == self._wake_r:
                    os.read(self._wake_r, 512)
                    continue
                if self.stopping:
                    return
                try:
                    self._on_exit(by[s])
                except BaseException as e:  # cannot start a worker: fail every job
                    self.fatal = e
                    for job in list(self.jobs.values()):
                        job.fail(e)
                    return

    def _on_exit(self, wid: int) -> None:
        p = self.procs[wid]
        p.join(0)
        k = wid * NSLOT
        stage = self.stage_of[wid]
        spec = self.specs[stage]
        busy = self.slots[k] == 1
        if busy:
            job, chunk, pos = self.slots[k + 1], self.slots[k + 2], self.slots[k + 3]
            self.reruns += 1
            if pos < 0:
                key = (job, stage, chunk)
                self.unknown[key] = self.unknown.get(key, 0) + 1
            else:
                key = (job, stage, pos)
                n = self.deaths[key] = (self.deaths.get(key, 0) + 1
                                        + self.unknown.pop((job, stage, chunk), 0))
                if n > spec.max_retries:
                    i = self.poison[0] % NPOISON
                    self.poison[1 + 4 * i:5 + 4 * i] = [job, stage, pos, n]
                    self.poison[0] += 1
            # cleared only now: a worker given the chunk by a recovery that ran
            # before this one waits for it (_await_counted) to see the poison
            self.slots[k] = 0
        if self.closing and not busy and p.exitcode == 0:
            del self.procs[wid]  # drained and exited: not replaced
            return
        # The replacement starts before the chunk is given back, so whoever sees
        # the re-run's result also sees the new worker in pids().
        self._start(wid)
        if busy:
            for q in (self.queues[stage], self.queues[stage + 1]):
                try:
                    q.recover()  # give its chunk back now, not within the recovery bound
                except Exception:
                    pass

    # -- results
    # The results queue is read by one thread at a time, the one holding
    # collect_lock.  A thread waiting for a result (imap's consumer, get())
    # reads it itself: its result then reaches it without a hop through
    # another thread, which costs a futex wake and a GIL hand-off (~50 us, more
    # than the whole trip through the workers).  The collector thread only
    # reads while no thread waits in the foreground (for callbacks and
    # ready() of results nobody waits for).  Whoever reads delivers every
    # job's chunks, then notifies `turn`, on which the other waiters sleep.
    def wake(self) -> None:
        """Wake the threads waiting in wait(): a job's state changed."""
        with self.turn:
            self.turn.notify_all()

    def nudge(self) -> None:
        """A job changed with no message to say so (its total became known, it
        failed): wake the threads waiting in wait(), and the one reading the
        results queue, asleep there until a message comes or its read times out
        (0.2 s, at the end of every imap or pipeline whose feeder saw the end of
        its input after the consumer took the last results), with a message of
        no job (_NUDGE).  A reader that takes the lock after the look sees the
        change before it reads (wait() looks at ready() with the lock held)."""
        self.wake()
        if self.collect_lock.locked():
            try:
                self.queues[-1].put(_NUDGE, block=False)
            except Exception:
                pass  # full: the reader has messages; shut down or closed: it is told

    def wait(self, ready: Callable[[], bool], deadline: Optional[float]) -> bool:
        """Wait until ready() (False at the monotonic deadline), reading the
        results queue meanwhile when no other thread does."""
        with self.turn:
            self.fg_waiters += 1
        try:
            while not ready():
                self._check_alive()
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    return False
                slice_ = 0.2 if left is None else min(left, 0.2)
                if self.collect_lock.acquire(False):
                    try:
                        open_ = ready() or self._pump(slice_)
                    finally:
                        self.collect_lock.release()
                    # Read after the release: a waiter that failed to take the
                    # lock had counted itself before, so it is seen here.
                    if self.fg_waiters > 1:
                        self.wake()  # chunks were delivered, or the next reader's turn
                    if open_:
                        continue
                with self.turn:
                    # locked() is looked at with turn held and a reader releases
                    # the lock before it notifies turn: no wake-up is lost
                    if not ready() and (self.collect_lock.locked() or self.results_closed):
                        self.turn.wait(slice_)
            return True
        finally:
            with self.turn:
                self.fg_waiters -= 1
            self.fg_left = time.monotonic()

    def poll(self) -> None:
        """Deliver what the results queue holds now, unless another thread reads it."""
        if self.collect_lock.acquire(False):
            try:
                self._pump(0)
            finally:
                self.collect_lock.release()
            if self.fg_waiters:
                self.wake()

    def _collect(self) -> None:
        """The collector thread: reads the results queue while nobody waits in
        the foreground, until the queue is shut down or closed.  While there are
        background jobs it polls (every LINGER_S) rather than being notified of
        every change: a notification would wake it, and make it take the GIL, on
        every result of a loop of apply().  While there are none it sleeps until
        the first one comes, or close() or terminate()."""
        while not (self.stopping or self.results_closed):
            # It reads only for jobs that need it (see new_job), or when closing
            # (join() waits for it to see the queue shut down): else it would
            # hold the queue when a thread comes to wait for a single apply().
            if not (self.background or self.closing):
                # Nothing to read for: no wake-up every LINGER_S (500 a second
                # of an idle pool, each taking the GIL from whoever runs).  The
                # Event is set after the change it announces (new_job, close,
                # terminate) and cleared before the loop looks again.
                self.bg_wanted.wait()
                self.bg_wanted.clear()
                continue
            if self.fg_waiters or time.monotonic() - self.fg_left < LINGER_S:
                self.bg_wanted.wait(LINGER_S)
                self.bg_wanted.clear()  # a hint only: the loop looks again
                continue
            if not self.collect_lock.acquire(timeout=0.05):
                continue
            try:
                self._pump(COLLECT_SLICE_S)
            finally:
                self.collect_lock.release()
            if self.fg_waiters:
                self.wake()

    def _pump(self, timeout: float) -> bool:
        """With collect_lock held: read one batch of the results queue (waiting up
        to timeout; 0: not at all) and deliver it; False once the queue is shut
        down and drained, or closed."""
        try:
            msgs = self.queues[-1].get_many(256, timeout > 0, timeout)
        except Empty:
            return True
        except ShutDown:
            self.results_closed = True
            return False
        except Exception as e:
            if self.queues[-1].closed:  # closed under us (terminate)
                self.results_closed = True
                return False
            # Not a result that does not unpickle: a batch is read item by
            # item then (fastq._batch), and the message's header always loads.
            # Whose message it was is unknown: every job in flight fails with
            # the reason, rather than waiting for it forever.
            err = RuntimeError(f"a message of the results queue could not be read "
                               f"({type(e).__name__}: {e})")
            err.__cause__ = e
            for job in list(self.jobs.values()):
                job.fail(err)
            return True
        for job_id, chunk, origin, _, batch, nfailed, cost, parts in msgs:
            if job_id < 0:
                continue  # a nudge (see nudge())
            items = unpack(batch)
            if type(items) is Salvaged:  # an item that did not load fails alone
                items = list(items)
                nfailed = _nfailed(items)
            # Seconds per item, weighted by items (decayed sums): the first
            # batches are single items whose fixed costs make an item look
            # tens of times dearer than it is; weighted 0.3 each, as before,
            # they kept batches small for ten batches more.
            n = len(items)
            self.cost_s = COST_DECAY * self.cost_s + cost * n
            self.cost_n = COST_DECAY * self.cost_n + n
            self.cost = self.cost_s / self.cost_n if self.cost_n else cost
            job = self.jobs.get(job_id)
            if job is not None:
                if parts:
                    job.deliver_part(chunk, parts, items)
                else:
                    job.deliver(chunk, items, nfailed)
            if self.on_progress is not None:
                self.on_progress(len(items))
        return True

    def _job_finished(self, job: _Job) -> None:
        with self.lock:
            if self.jobs.pop(job.jid, None) is not None and job.background:
                self.background -= 1

    def _check_alive(self) -> None:
        if self.fatal is not None:
            raise self.fatal

    # -- feeding
    def new_job(self, ordered: bool, window: Optional[int] = None,
                release_on_receive: bool = False, total: Optional[int] = None,
                background: bool = True) -> _Job:
        """A job; window: chunks in flight at most (default 2 per worker and 2;
        0: no window, for a job of one chunk of known total).  background: its
        results must be delivered even while no thread waits for them (it has
        callbacks, or a feeder that waits for room its window gets back as
        chunks are received: release_on_receive); else they are delivered when
        a thread waits or polls.  An iterator's job (imap, a pipeline) is not
        background: its window opens as its consumer takes chunks, a consumer
        that waits reads the results itself, and a collector reading for it
        too only hands the chunks over between two threads (a futex wake and a
        GIL hand-off per batch) and polls every LINGER_S."""
        if self.closing or self.stopping:
            raise ValueError("the pool is not running")
        if window is None:
            window = 2 * self.nworkers + 2
        with self.lock:
            jid = next(self.jids)
            job = self.jobs[jid] = _Job(self, jid, ordered, window, release_on_receive, total)
            job.background = background
            if background:
                self.background += 1
                if self.background == 1:
                    self.bg_wanted.set()
        return job

    def chunk_size(self, first: Any, remaining: Optional[int]) -> int:
        """Items for the next chunk: about TARGET_S of work for one worker, at most
        MAX_CHUNK_BYTES (estimated), and a share of what is left when that is known."""
        c = self.cost
        n = 1 if c is None else int(TARGET_S / max(c, 1e-9))
        n = min(n, MAX_CHUNK, max(1, MAX_CHUNK_BYTES // max(1, _sizeof(first))))
        if remaining is not None:
            # the end comes in shares (so that the workers finish together),
            # halving down to TAIL_S of work: smaller ones cost more in fixed
            # costs (a trip through every stage each) than they balance
            least = 1 if c is None else int(TAIL_S / max(c, 1e-9))
            n = min(n, max(least, -(-remaining // (2 * self.specs[0].workers))))
        return max(1, n)

    def feed(self, job: _Job, iterable: Any, call: Optional[bytes],
             chunksize: Optional[int] = None, background: bool = True) -> None:
        """Put the iterable's items on the first queue in chunks, within the job's
        window; in a thread of its own unless background is False."""
        with self.lock:
            self.feeding += 1
        if background:
            t = threading.Thread(target=self._feed, args=(job, iterable, call, chunksize),
                                 name="fastq-feeder", daemon=True)
            t.start()
        else:
            self._feed(job, iterable, call, chunksize)

    def _feed(self, job: _Job, iterable: Any, call: Optional[bytes],
              chunksize: Optional[int]) -> None:
        try:
            self._feed_chunks(job, iterable, call, chunksize)
        finally:
            with self.lock:
                self.feeding -= 1
                last = self.feeding == 0 and self.closing
            if last and not self.stopping:
                self.queues[0].shutdown()

    def _room(self, job: _Job) -> bool:
        """Wait for room in the job's window; False if the job or the engine ended."""
        while not job.window.acquire(timeout=0.2):
            if self.stopping or job.finished:
                return False
        return True

    def _feed_chunks(self, job: _Job, iterable: Any, call: Optional[bytes],
                     chunksize: Optional[int]) -> None:
        q = self.queues[0]
        try:
            remaining = len(iterable)
        except Exception:
            remaining = None
        chunk = pos = 0
        # a list, tuple or range is cut in slices: a range's slice is a range,
        # which pickles in a few bytes (no list of ints built, pickled, read)
        seq = iterable if type(iterable) in (list, tuple, range) else None
        try:
            it = iter(iterable) if seq is None else None
            while True:
                # room first, then the items: the input is read at most a
                # window ahead of the consumer (and a batch sized after the
                # wait knows the latest cost per item)
                if not self._room(job):
                    return
                if seq is not None:
                    if pos >= len(seq):
                        job.window.release()
                        break
                    n = chunksize or self.chunk_size(seq[pos], remaining)
                    items = seq[pos:pos + n]
                else:
                    try:
                        first = next(it)
                    except StopIteration:
                        job.window.release()
                        break
                    n = chunksize or self.chunk_size(first, remaining)
                    items = [first]
                    items.extend(itertools.islice(it, n - 1))
                try:
                    q.put((job.jid, chunk, pos, call, pack(items), 0, 0.0, ()))
                except MessageTooLarge:
                    if len(items) == 1:
                        raise
                    for i, x in enumerate(items):  # one item per message
                        if i and not self._room(job):
                            return
                        q.put((job.jid, chunk + i, pos + i, call, pack([x]), 0, 0.0, ()))
                    chunk += len(items) - 1
                chunk += 1
                pos += len(items)
                if remaining is not None:
                    remaining -= len(items)
            job.set_total(chunk, pos)
        except ShutDown:
            job.fail(RuntimeError("the pool was terminated"))
        except BaseException as e:
            job.fail(e)

    # -- ending
    def close(self) -> None:
        """No new work: workers exit once the first queue is drained."""
        with self.lock:
            self.closing = True
            idle = self.feeding == 0
        self.bg_wanted.set()  # the collector reads until the results queue ends
        if idle:  # else the last feeder shuts it down when its input is in
            self.queues[0].shutdown()

    def join(self, timeout: Optional[float] = None) -> bool:
        """After close(): wait until every stage drained and exited."""
        deadline = None if timeout is None else time.monotonic() + timeout
        for s, sp in enumerate(self.specs):
            wids = [w for w in range(self.nworkers) if self.stage_of[w] == s]
            for w in wids:
                while True:
                    p = self.procs.get(w)
                    if p is None:
                        break
                    left = None if deadline is None else deadline - time.monotonic()
                    if left is not None and left <= 0:
                        return False
                    p.join(0.1 if left is None else min(0.1, left))
            self.queues[s + 1].shutdown()  # the next stage drains it, then exits
        self.collector.join(None if deadline is None else max(0, deadline - time.monotonic()))
        return not self.collector.is_alive()

    def terminate(self) -> None:
        """Stop every worker now; pending jobs fail; the queues are removed."""
        if self.stopping:
            return
        self.stopping = self.closing = True
        self.bg_wanted.set()
        try:
            os.write(self._wake_w, b"x")
        except OSError:
            pass
        sup = getattr(self, "supervisor", None)
        if sup is not None and sup is not threading.current_thread():
            sup.join(5)
        for q in self.queues:
            try:
                q.shutdown(immediate=True)
            except Exception:
                pass
        procs = list(self.procs.values())
        for p in procs:
            if p.is_alive():
                p.terminate()
        deadline = time.monotonic() + 2
        for p in procs:
            p.join(max(0, deadline - time.monotonic()))
            if p.is_alive():
                p.kill()
                p.join(5)
        col = getattr(self, "collector", None)
        if col is not None and col is not threading.current_thread():
            col.join(5)
        err = RuntimeError("the pool was terminated")
        for job in list(self.jobs.values()):
            job.fail(err)
        for q in self.queues:
            try:
                q.close()
            except Exception:
                pass
        for fd in (self._wake_r, self._wake_w):
            try:
                os.close(fd)
            except OSError:
                pass
        _live.discard(self)


_live: "weakref.WeakSet[_Engine]" = weakref.WeakSet()

# what nudge() puts on the results queue: a chunk message of no job
_NUDGE = (-1, 0, 0, None, pack([]), 0, 0.0, ())


def _terminate_all() -> None:
    for e in list(_live):
        e.terminate()


import atexit  # noqa: E402

atexit.register(_terminate_all)

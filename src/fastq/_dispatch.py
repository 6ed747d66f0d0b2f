"""fastq.Dispatcher: handlers subscribed to queues and topics, run in worker processes,
with retries, backoff and dead letters.

Each route (one ``@d.on(...)`` handler) runs in ``workers`` processes; each process
takes deliveries with acknowledgement (``receive()``) and runs up to ``concurrency``
handlers at once (threads for plain functions, tasks for coroutines).  A handler
that returns acks its message (after publishing its return value to ``publish_to``);
one that raises nacks it with a delay (``Delivery.nack(delay=...)``: the message
comes back after the backoff without holding a worker) until its ``max_attempts``-th
attempt, whose failure puts a :class:`DeadLetter` on ``dead_letter`` and acks.

The attempt count is the core's (``Delivery.attempt``, kept in the segment, so an
attempt killed with its process counts).  What the core does not keep, the workers of
one route keep in a small shared table (``_Ledger``): the time of a message's first
attempt, and which messages were already dead-lettered.  A message redelivered
after its last attempt (its worker was killed) gets a "WorkerLost" dead letter
unless one is already there: marked in the table (the worker died after marking
it), or still in the dead-letter queue (it died between the put and the mark:
``Queue._browse`` walks the queue without taking anything).  What remains: a
worker killed between the put and the mark whose dead letter was consumed from
the dead-letter queue before the message's redelivery reached a worker (or, the
table being per Dispatcher run, before the next run took it) gets a second dead
letter, with the same ``id``.

The parent's supervisor thread waits on the workers' sentinels: a worker that dies is
replaced, and the source is repaired at once (``recover()``) so that what it held
comes back without waiting for the recovery bound.
"""
from __future__ import annotations

import concurrent.futures
import hashlib
import inspect
import multiprocessing as mp
import os
import random
import signal
import threading
import time
import traceback
from multiprocessing import connection
from typing import (TYPE_CHECKING, Any, Callable, Dict, List, NamedTuple, Optional, Sequence,
                    Tuple, Union)

if TYPE_CHECKING:  # imported where a coroutine runs: `import fastq` does without asyncio
    import asyncio

from ._errors import Empty, SegmentError, ShutDown
from ._queue import Queue
from ._segment import _strategy
from ._topic import Topic

__all__ = ["Dispatcher", "DeadLetter"]

POLL_S = 0.1            # a worker checks for a stop request this often while idle
YOUNG_S = 1.0           # a worker dead this soon after its start died young
LEDGER_ROWS = 4096      # rows per worker in the shared table (first times, dead letters)
_FIRST, _DEAD = 1, 2    # kinds of ledger rows


class DeadLetter(NamedTuple):
    """What a :class:`Dispatcher` puts on a route's ``dead_letter`` queue for a
    message whose handler failed ``max_attempts`` times.

    ``exc_type`` is ``"WorkerLost"`` (and ``traceback`` empty) when the last
    attempt killed its worker process rather than raising.
    """

    message: Any
    """The original message (its value as the handler received it)."""
    source: str
    """The name of the queue or topic it came from."""
    handler: str
    """The handler's qualified name."""
    attempts: int
    """How many times it was delivered to the handler."""
    exc_type: str
    """The last exception's class name (``module.Class`` unless a builtin)."""
    exc_message: str
    """``str()`` of the last exception."""
    traceback: str
    """The last exception's formatted traceback, as the worker printed it."""
    first_attempt: float
    """``time.time()`` when the first attempt started (the earliest attempt
    recorded: an attempt killed with its worker before failing is not)."""
    last_attempt: float
    """``time.time()`` when the last attempt started."""
    id: Any
    """``Delivery.id`` of the message (stable across redeliveries)."""
    subject: Optional[str]
    """The message's subject (topic sources), or None."""


def _source_name(src: Any) -> str:
    return src.name if isinstance(src, (Queue, Topic)) else str(src)


def _open_by_name(name: str) -> Union[Queue, Topic]:
    try:
        return Queue.open(name)
    except (ValueError, SegmentError):
        return Topic.open(name)


def _exc_type(exc: BaseException) -> str:
    t = type(exc)
    return t.__qualname__ if t.__module__ == "builtins" else f"{t.__module__}.{t.__qualname__}"


def _key(mid: Any) -> int:
    """A 63-bit key for a Delivery.id, the same in every process."""
    if isinstance(mid, int):
        return (mid & ((1 << 63) - 1)) or 1
    digest = hashlib.blake2b(repr(mid).encode(), digest_size=8).digest()
    return (int.from_bytes(digest, "little") >> 1) or 1


def backoff_delay(attempt: int, bounds: Tuple[float, float]) -> float:
    """The wait before attempt ``attempt + 1``: exponential in ``attempt``
    (``lo * 2 ** (attempt - 1)``) with jitter (uniform in the upper half of
    that), always within ``bounds = (lo, hi)``."""
    lo, hi = bounds
    base = min(hi, lo * (2 ** max(0, attempt - 1)))
    return max(lo, min(hi, random.uniform(base / 2, base)))


class _Ledger:
    """What the workers of one route remember together, in shared memory: per
    worker slot a ring of rows (key, kind, time).  A worker writes only its own
    slot's ring (its replacement continues it); any worker reads all of them.
    A row's kind and time are stored before its key (x86 and ARM keep two
    stores of one thread in order for another thread reading them in reverse
    order only with a fence: a reader that sees the key of a row being
    rewritten may read the old kind/time; the rows are hints for times and the
    dead flag is re-checked against the key after reading)."""

    def __init__(self, ctx: Any, slots: int):
        self.slots = slots
        self.keys = ctx.RawArray("q", slots * LEDGER_ROWS)
        self.kinds = ctx.RawArray("b", slots * LEDGER_ROWS)
        self.times = ctx.RawArray("d", slots * LEDGER_ROWS)
        self.heads = ctx.RawArray("q", slots)

    def add(self, slot: int, key: int, kind: int, t: float) -> None:
        head = self.heads[slot]
        i = slot * LEDGER_ROWS + head % LEDGER_ROWS
        self.keys[i] = 0
        self.kinds[i], self.times[i] = kind, t
        self.keys[i] = key
        self.heads[slot] = head + 1

    def find(self, key: int, kind: int) -> Optional[float]:
        """The earliest time of a row (key, kind), or None."""
        keys, best, start = self.keys[:], None, 0
        while True:
            try:
                i = keys.index(key, start)
            except ValueError:
                return best
            t = self.times[i]
            if self.kinds[i] == kind and self.keys[i] == key and (best is None or t < best):
                best = t
            start = i + 1


class _Route:
    """One ``@d.on(...)``: what its worker processes need (picklable)."""

    def __init__(self, handler: Callable, source: Any, group: Optional[str],
                 subjects: Any, workers: int, concurrency: int, max_attempts: int,
                 backoff: Tuple[float, float], dead_letter: Any, publish_to: Any,
                 strategy: Optional[int] = None):
        self.handler, self.source = handler, source
        self.name = getattr(handler, "__qualname__", type(handler).__qualname__)
        module = getattr(handler, "__module__", None)
        self.group = group or (f"{module}.{self.name}" if module else self.name)
        self.subjects, self.workers, self.concurrency = subjects, workers, concurrency
        self.max_attempts, self.backoff = max_attempts, backoff
        self.dead_letter, self.publish_to = dead_letter, publish_to
        self.strategy = strategy
        self.is_async = inspect.iscoroutinefunction(handler) or \
            inspect.iscoroutinefunction(getattr(handler, "__call__", None))
        self.ledger: Optional[_Ledger] = None
        self.first_slot = 0


def _check_route(source: Any, group: Optional[str], subjects: Any, workers: int, concurrency: int,
                 max_attempts: int, backoff: Any, dead_letter: Any, publish_to: Any) -> None:
    if not isinstance(source, (Queue, Topic, str)):
        raise TypeError(f"source must be a fastq.Queue, a fastq.Topic or a name, not {source!r}")
    for what, v, lo in (("workers", workers, 1), ("concurrency", concurrency, 1),
                        ("max_attempts", max_attempts, 1)):
        if not isinstance(v, int) or isinstance(v, bool) or v < lo:
            raise ValueError(f"{what} must be an int >= {lo}, not {v!r}")
    if isinstance(source, Queue) and concurrency > 7:
        raise ValueError("concurrency is at most 7 for a queue source (the deliveries one "
                         "process may hold unacknowledged)")
    if isinstance(source, Queue) and subjects is not None:
        raise ValueError("subjects filter a topic's messages; the source is a queue")
    if isinstance(source, Queue) and group is not None:
        raise ValueError("a group is a topic's subscription; the workers of a queue source "
                         "share its messages anyway")
    if (not isinstance(backoff, (tuple, list)) or len(backoff) != 2
            or not 0 <= backoff[0] <= backoff[1]):
        raise ValueError(f"backoff must be (low, high) seconds with 0 <= low <= high, "
                         f"not {backoff!r}")
    if dead_letter is not None and not isinstance(dead_letter, Queue):
        raise TypeError(f"dead_letter must be a fastq.Queue, not {dead_letter!r}")
    if publish_to is not None and not isinstance(publish_to, (Queue, Topic)):
        raise TypeError(f"publish_to must be a fastq.Queue or a fastq.Topic, not {publish_to!r}")


# ---- the worker process --------------------------------------------------------------

class _Worker:
    """A route's handler loop in one worker process."""

    def __init__(self, route: _Route, slot: int, grace: float):
        self.r, self.slot, self.grace = route, slot, grace
        self.stop = threading.Event()
        src = route.source
        if isinstance(src, str):
            src = _open_by_name(src)
        self.source_name = _source_name(route.source)
        if route.strategy is not None:
            src.strategy = route.strategy
        if isinstance(src, Topic):
            kw: Dict[str, Any] = {}
            if route.subjects is not None:
                kw["subjects"] = route.subjects
            self.src: Any = src.subscribe(name=route.group, prefetch=route.concurrency, **kw)
        else:
            src._set_prefetch(min(7, max(route.concurrency, 1)))
            self.src = src
        # nack(delay=) keeps a queue's message in the segment; a topic's retry
        # waits in the worker (one of its concurrency slots)
        self.delays = isinstance(src, Queue)
        out = route.publish_to
        self.emit = None if out is None else (out.publish if isinstance(out, Topic) else out.put)

    # -- one delivery: before, after success, after failure

    def begin(self, d: Any) -> Optional[float]:
        """The attempt's start time, or None if the message is not to be run
        (its attempts are used up: it was dead-lettered here)."""
        now = time.time()
        attempt = d.attempt
        if attempt > self.r.max_attempts:
            # the last attempt killed its worker, or the worker died between the dead
            # letter and the ack: the table says so if it died after marking it, the
            # dead-letter queue (still holding it) if it died before
            key = _key(d.id)
            marked = self.r.ledger.find(key, _DEAD) is not None  # type: ignore[union-attr]
            if not marked and not self.in_dead_letters(d):
                self.dead(d, attempt - 1, "WorkerLost",
                          f"the worker process died during attempt {attempt - 1}", "", now)
            else:
                d.ack()
            return None
        if attempt > 1 and self.r.dead_letter is not None:
            # the first time a dead letter would need, if the first attempt died unrecorded
            key = _key(d.id)
            if self.r.ledger.find(key, _FIRST) is None:  # type: ignore[union-attr]
                self.r.ledger.add(self.slot, key, _FIRST, now)  # type: ignore[union-attr]
        return now

    def succeeded(self, d: Any, result: Any) -> None:
        if self.emit is not None and result is not None:
            self.emit(result)
        d.ack()

    def failed(self, d: Any, exc: BaseException, tb: str, started: float) -> float:
        """Dead-letter or nack with a backoff; the seconds the caller must still
        wait before ``d.nack()`` (a topic's delivery: the core delays only a
        queue's), else 0."""
        attempt = d.attempt
        if attempt == 1 and self.r.dead_letter is not None:
            self.r.ledger.add(self.slot, _key(d.id), _FIRST, started)  # type: ignore
        if attempt >= self.r.max_attempts:
            self.dead(d, attempt, _exc_type(exc), str(exc), tb, started)
            return 0.0
        delay = backoff_delay(attempt, self.r.backoff)
        if not self.delays:
            return delay
        d.nack(requeue=True, delay=delay)
        return 0.0

    def in_dead_letters(self, d: Any) -> bool:
        """Is a dead letter of ``d`` (this route's, for this message) still in the
        dead-letter queue?  Asked only of a message redelivered after its last
        attempt, so rarely; it walks the queue without taking anything."""
        if self.r.dead_letter is None:
            return False
        for dl in self.r.dead_letter._browse():
            if (isinstance(dl, DeadLetter) and dl.id == d.id
                    and dl.source == self.source_name and dl.handler == self.r.name):
                return True
        return False

    def dead(self, d: Any, attempts: int, etype: str, emsg: str, tb: str,
             last: float) -> None:
        ledger, key = self.r.ledger, _key(d.id)
        first = ledger.find(key, _FIRST)  # type: ignore[union-attr]
        if self.r.dead_letter is not None:
            self.r.dead_letter.put(DeadLetter(
                d.value, self.source_name, self.r.name, attempts, etype, emsg, tb,
                last if first is None else min(first, last), last, d.id,
                getattr(d, "subject", None)))
        ledger.add(self.slot, key, _DEAD, time.time())  # type: ignore[union-attr]
        d.ack()

    def run_sync(self, d: Any) -> None:
        started = self.begin(d)
        if started is None:
            return
        try:
            result = self.r.handler(d.value)
        except Exception as exc:
            wait = self.failed(d, exc, traceback.format_exc(), started)
            if wait:
                self.stop.wait(wait)     # a topic's message: held here meanwhile
                d.nack()
        else:
            self.succeeded(d, result)

    async def run_async(self, d: Any) -> None:
        import asyncio
        started = self.begin(d)
        if started is None:
            return
        try:
            result = await self.r.handler(d.value)
        except asyncio.CancelledError:
            d.nack()          # stopped past the grace period: give it back as it was
            raise
        except Exception as exc:
            wait = self.failed(d, exc, traceback.format_exc(), started)
            if wait:
                try:
                    await asyncio.sleep(wait)     # a topic's message: held here meanwhile
                finally:
                    d.nack()
        else:
            self.succeeded(d, result)

    # -- the loops

    def loop_sync(self) -> None:
        n = self.r.concurrency
        # a handler may run its deliveries itself (fastq.rpc's responder: it has
        # no retry limit and no dead letters, so nothing to count per message)
        run = getattr(self.r.handler, "_fastq_run_delivery", None) or self.run_sync
        if n == 1:     # the common case runs the handler in this thread
            while not self.stop.is_set():
                try:
                    d = self.src.receive(timeout=POLL_S)
                except Empty:
                    continue
                except ShutDown:
                    break
                run(d)
            return
        free = threading.Semaphore(n)
        pool = concurrent.futures.ThreadPoolExecutor(n)
        pending: set = set()

        def done(f: Any) -> None:
            free.release()
            pending.discard(f)

        try:
            while not self.stop.is_set():
                if not free.acquire(timeout=POLL_S):
                    continue
                try:
                    d = self.src.receive(timeout=POLL_S)
                except (Empty, ShutDown) as e:
                    free.release()
                    if isinstance(e, ShutDown):
                        break
                    continue
                f = pool.submit(run, d)
                pending.add(f)
                f.add_done_callback(done)
            concurrent.futures.wait(list(pending), timeout=self.grace)
        finally:
            pool.shutdown(wait=False)

    async def loop_async(self) -> None:
        import asyncio
        free = asyncio.Semaphore(self.r.concurrency)
        tasks: set = set()
        while not self.stop.is_set():
            await free.acquire()
            try:
                d = await self.src.areceive(timeout=POLL_S)
            except Empty:
                free.release()
                continue
            except ShutDown:
                free.release()
                break
            t = asyncio.ensure_future(self.run_async(d))
            tasks.add(t)
            t.add_done_callback(_Finished(tasks, free))
        if tasks:
            _, late = await asyncio.wait(tasks, timeout=self.grace)
            for t in late:
                t.cancel()
            if late:
                await asyncio.wait(late)


class _Finished:
    """A task's done callback: it leaves the set and frees its slot."""

    def __init__(self, tasks: set, free: asyncio.Semaphore):
        self.tasks, self.free = tasks, free

    def __call__(self, t: "asyncio.Future[Any]") -> None:
        self.tasks.discard(t)
        self.free.release()


def _worker_main(route: _Route, slot: int, grace: float, ready: Any) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)      # Ctrl-C is the parent's to handle
    w = _Worker(route, slot, grace)
    signal.signal(signal.SIGTERM, lambda *_: w.stop.set())
    ready[slot] = 1
    if route.is_async:
        import asyncio
        asyncio.run(w.loop_async())
    else:
        w.loop_sync()
    # handlers still running past the grace period: exit anyway; recovery gives
    # their messages back
    os._exit(0)


# ---- the parent ----------------------------------------------------------------------

class Dispatcher:
    """Handlers for the messages of queues and topics, run in worker processes.

    Register handlers with :meth:`on`, then :meth:`run` (blocks until SIGTERM,
    SIGINT or :meth:`stop`) or :meth:`start` (runs in the background).

    Delivery is at least once: a message whose worker is killed comes back
    (``Delivery.attempt`` tells a retry from a first delivery, ``Delivery.id``
    is the same on every delivery, so handlers can be made idempotent).  A
    handler that raises gets the message again after a backoff, up to
    ``max_attempts`` times; then a :class:`DeadLetter` goes to the route's
    ``dead_letter`` queue and the message is acked.  One dead letter per
    message, even when workers are killed, except in one case: a worker killed
    right after putting the dead letter, whose dead letter is read from the
    queue before the message comes back to a worker, can cause a second one
    (with the same ``id``).

    Parameters
    ----------
    grace : float
        On stop, how long handlers in flight may run to completion (seconds).
        Messages of handlers still running after it come back to their source.
    context : multiprocessing context or str, optional
        How worker processes start (``"fork"``, ``"spawn"``, ``"forkserver"``);
        handlers must be picklable for the latter two.

    Examples
    --------
    >>> d = fastq.Dispatcher()
    >>> @d.on(fastq.Queue("orders"), workers=2, dead_letter=fastq.Queue("orders.dead"))
    ... def handle(order):
    ...     charge(order)
    >>> d.run()
    """

    def __init__(self, *, grace: float = 10.0, context: Any = None):
        self.grace = float(grace)
        self._ctx: Any = mp.get_context(context) if context is None or isinstance(context, str) \
            else context
        self._routes: List[_Route] = []
        self._procs: List[Any] = []
        self._ready: Any = None
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._stopped = threading.Event()
        self._stopped.set()
        self._thread: Optional[threading.Thread] = None
        self.restarts = 0
        """Worker processes replaced after they died (since :meth:`start`)."""

    def on(self, source: "Union[Queue[Any], Topic, str]", *, group: Optional[str] = None,
           subjects: "Union[str, Sequence[str], None]" = None, workers: int = 1,
           concurrency: int = 1, max_attempts: int = 3,
           backoff: Tuple[float, float] = (0.1, 30.0),
           dead_letter: "Optional[Queue[Any]]" = None,
           publish_to: "Union[Queue[Any], Topic, None]" = None,
           wait: Optional[str] = None) -> Callable[[Callable], Callable]:
        """Decorator: run the function for each message of ``source``.

        Parameters
        ----------
        source : Queue, Topic or str
            Where the messages come from (a name opens an existing queue or topic).
        group : str, optional
            For a topic: the durable subscription the route's workers share
            (default: the handler's module and qualified name).  Routes with
            different groups each receive every message.
        subjects : str or list of str, optional
            For a topic: only messages whose subject matches (``*`` one token,
            ``>`` the rest).
        workers : int
            Worker processes.
        concurrency : int
            Handlers in flight per process: threads for a plain function, tasks
            for an ``async def`` one (at most 7 for a queue source).
        max_attempts : int
            Deliveries of a message to the handler before it is dead-lettered.
        backoff : (float, float)
            Bounds of the wait before a retry (seconds): exponential in the
            attempt count, with jitter.  The message waits in the source, not in
            a worker.
        dead_letter : Queue, optional
            Where :class:`DeadLetter` records go (None: dropped after the last
            attempt).
        publish_to : Queue or Topic, optional
            Where the handler's return values go (``None`` returns publish
            nothing); before the ack, so in the source's order when
            ``workers == concurrency == 1``.
        wait : {"adaptive", "spin", "sleep"}, optional
            How the workers wait for messages (see "Wait strategies" in the
            README; default ``"adaptive"``).
        """
        _check_route(source, group, subjects, workers, concurrency, max_attempts, backoff,
                     dead_letter, publish_to)
        strategy = None if wait is None else _strategy(wait)
        if isinstance(source, str):
            _open_by_name(source).close()     # FileNotFoundError here, not in the workers

        def register(fn: Callable) -> Callable:
            if not callable(fn):
                raise TypeError(f"a handler must be callable, not {fn!r}")
            if not self._stopped.is_set():
                raise RuntimeError("add handlers before start()")
            self._routes.append(_Route(fn, source, group, subjects, workers, concurrency,
                                       max_attempts, (backoff[0], backoff[1]), dead_letter,
                                       publish_to,
                                       strategy))
            return fn
        return register

    # ---- lifecycle -------------------------------------------------------------------

    def start(self, timeout: Optional[float] = 30.0) -> "Dispatcher":
        """Start the workers and their supervisor in the background; returns
        once every worker is taking messages (``TimeoutError`` after
        ``timeout`` seconds)."""
        if not self._routes:
            raise RuntimeError("no handlers: register some with @dispatcher.on(...)")
        if not self._stopped.is_set():
            raise RuntimeError("already started")
        slots = sum(r.workers for r in self._routes)
        self._ready = self._ctx.RawArray("b", slots)
        n = 0
        for r in self._routes:
            r.ledger, r.first_slot = _Ledger(self._ctx, r.workers), n
            n += r.workers
        self._stopping.clear()
        self._stopped.clear()
        self.restarts = 0
        self._procs = [None] * slots
        self._born = [0.0] * slots
        for i in range(slots):
            self._spawn(i)
        self._thread = threading.Thread(target=self._supervise, name="fastq-dispatcher",
                                        daemon=True)
        self._thread.start()
        deadline = None if timeout is None else time.monotonic() + timeout
        while not all(self._ready[:]):
            if deadline is not None and time.monotonic() > deadline:
                self.stop()
                raise TimeoutError("the dispatcher's workers did not start in time")
            if self._stopped.is_set():
                raise RuntimeError("the dispatcher stopped while starting")
            time.sleep(0.005)
        return self

    def _route_of(self, i: int) -> Tuple[_Route, int]:
        for r in self._routes:
            if i < r.first_slot + r.workers:
                return r, i - r.first_slot
        raise IndexError(i)

    def _spawn(self, i: int) -> None:
        r, slot = self._route_of(i)
        p = self._ctx.Process(target=_worker_main, args=(r, slot, self.grace, _Ready(self._ready, i)),
                              name=f"fastq-dispatch-{r.name}-{slot}", daemon=True)
        p.start()
        self._procs[i] = p
        self._born[i] = time.monotonic()

    def _supervise(self) -> None:
        # a worker that keeps failing young (its handler cannot be unpickled, say)
        # is restarted after a growing pause rather than in a tight loop
        quick = [0] * len(self._procs)
        due: Dict[int, float] = {}       # slot -> when its replacement starts
        while not self._stopping.is_set():
            now = time.monotonic()
            with self._lock:
                for i in [i for i, at in due.items() if at <= now]:
                    del due[i]
                    self._spawn(i)
                    self.restarts += 1
                sentinels = {p.sentinel: i for i, p in enumerate(self._procs) if i not in due}
            wait = min([0.2] + [at - now for at in due.values()])
            for s in connection.wait(list(sentinels), timeout=max(0.0, wait)):
                with self._lock:
                    if self._stopping.is_set():
                        return
                    i = sentinels[s]
                    self._procs[i].join()
                    self._repair(self._route_of(i)[0])
                    now = time.monotonic()
                    # killed by a signal: at once; failed young (an error, not a kill): a pause
                    failed = self._procs[i].exitcode > 0 and now - self._born[i] < YOUNG_S
                    quick[i] = quick[i] + 1 if failed else 0
                    due[i] = now + (0.0 if quick[i] <= 2 else min(5.0, 0.05 * 2 ** quick[i]))

    @staticmethod
    def _repair(route: _Route) -> None:
        src = route.source
        try:
            if isinstance(src, (Queue, Topic)):
                src.recover()    # what the dead worker held comes back now
        except Exception:
            pass

    @property
    def pids(self) -> List[int]:
        """The worker processes' ids, route by route (in :meth:`on` order)."""
        with self._lock:
            return [p.pid for p in self._procs if p is not None]

    def stop(self, timeout: Optional[float] = None) -> None:
        """Stop: workers take no new messages, handlers in flight finish (up to
        ``grace`` seconds), the rest go back to their source.  Waits for the
        workers to exit (at most ``timeout``, default ``grace`` + 5 s, after
        which they are killed; their messages still come back)."""
        if self._stopped.is_set():
            return
        self._stopping.set()
        with self._lock:
            procs = list(self._procs)
        for p in procs:
            if p.is_alive():
                try:
                    os.kill(p.pid, signal.SIGTERM)
                except ProcessLookupError:
                    pass
        deadline = time.monotonic() + (self.grace + 5.0 if timeout is None else timeout)
        for p in procs:
            p.join(max(0.0, deadline - time.monotonic()))
            if p.is_alive():
                p.kill()
                p.join()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join()
        for r in self._routes:
            self._repair(r)
        self._stopped.set()

    def run(self) -> None:
        """Start, and block until SIGTERM or SIGINT (in the main thread) or
        :meth:`stop`; then stop gracefully."""
        stop_now = threading.Event()
        old = {}
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGTERM, signal.SIGINT):
                old[sig] = signal.signal(sig, lambda *_: stop_now.set())
        try:
            self.start()
            while not stop_now.wait(0.1) and not self._stopping.is_set():
                pass
        finally:
            self.stop()
            for sig, h in old.items():
                signal.signal(sig, h)

    def __enter__(self) -> "Dispatcher":
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    def __repr__(self) -> str:
        state = "stopped" if self._stopped.is_set() else f"running, {len(self._procs)} workers"
        return f"<fastq.Dispatcher {len(self._routes)} handlers, {state}>"


class _Ready:
    """A worker's ready flag in the parent's shared array (picklable with it)."""

    def __init__(self, arr: Any, i: int):
        self.arr, self.i = arr, i

    def __setitem__(self, _slot: int, v: int) -> None:
        self.arr[self.i] = v

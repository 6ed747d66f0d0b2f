"""fastq.Pool and fastq.Executor: the multiprocessing.Pool and concurrent.futures
APIs over worker processes fed by fastq queues (see fastq._workers)."""
from __future__ import annotations

import concurrent.futures as cf
import multiprocessing as mp
import os
import pickle
import time
import types
from typing import Any, Callable, Dict, Iterable, Iterator, List, Optional

from ._batch import pack
from ._workers import MODE_APPLY, MODE_MAP, MODE_STAR, _Engine, _Failed, _Job, outputs

__all__ = ["Pool", "AsyncResult", "Executor"]

DEFAULT_CAPACITY = 16 << 20


def _context(context: Any):
    if context is None:
        return mp.get_context()
    if isinstance(context, str):
        return mp.get_context(context)
    return context


_calls: Dict[tuple, bytes] = {}


def _call(func: Callable, mode: int) -> bytes:
    """The pickled (func, mode) a chunk carries.  A plain function pickles by
    name, the same bytes every time: those are kept (a bound method or a
    partial carries state that may change, and is pickled each time)."""
    if type(func) is not types.FunctionType:
        return pickle.dumps((func, mode), protocol=5)
    key = (func, mode)
    got = _calls.get(key)
    if got is None:
        if len(_calls) >= 256:
            _calls.clear()
        got = _calls[key] = pickle.dumps(key, protocol=5)
    return got


class AsyncResult:
    """The result of :meth:`Pool.apply_async` or :meth:`Pool.map_async`, as in
    :mod:`multiprocessing.pool`: ``get(timeout)``, ``wait(timeout)``, ``ready()``,
    ``successful()``."""

    def __init__(self, job: _Job, single: bool, callback: Optional[Callable],
                 error_callback: Optional[Callable]):
        self._job, self._single = job, single
        self._callback, self._error_callback = callback, error_callback
        self._ready = False  # set by whichever thread delivers the result
        self._value: Any = None
        self._exc: Optional[BaseException] = None
        job.on_done = self._done

    def _done(self, job: _Job) -> None:
        if job.error is not None:
            self._exc = job.error
        else:
            out: List[Any] = []
            for c in range(job.total or 0):
                items, nfailed = job.buf.pop(c)
                if nfailed:
                    bad = next(x for x in items if type(x) is _Failed)
                    self._exc = bad.rebuild()
                    break
                out.extend(items)
            else:
                self._value = out[0] if self._single else out
        self._ready = True
        try:
            if self._exc is None and self._callback is not None:
                self._callback(self._value)
            elif self._exc is not None and self._error_callback is not None:
                self._error_callback(self._exc)
        except Exception:  # as multiprocessing: a failing callback must not kill the collector
            import traceback
            traceback.print_exc()

    def ready(self) -> bool:
        """True once the call completed (with a value or an exception)."""
        if not self._ready:
            self._job.engine.poll()  # nobody may be reading the results: look
        return self._ready

    def successful(self) -> bool:
        """True if it completed without raising; ``ValueError`` if not ready."""
        if not self.ready():
            raise ValueError(f"{self!r} not ready")
        return self._exc is None

    def wait(self, timeout: Optional[float] = None) -> None:
        """Wait until the result is ready or ``timeout`` seconds passed."""
        self._wait(timeout)

    def _wait(self, timeout: Optional[float]) -> bool:
        # the waiting thread reads the results itself (see _Engine.wait)
        if self._ready:
            return True
        deadline = None if timeout is None else time.monotonic() + timeout
        return self._job.engine.wait(self._is_ready, deadline)

    def _is_ready(self) -> bool:
        return self._ready

    def get(self, timeout: Optional[float] = None) -> Any:
        """The value; re-raises the worker's exception (its traceback as
        ``__cause__``); ``multiprocessing.TimeoutError`` if not ready in time."""
        if not self._wait(timeout):
            raise mp.TimeoutError("result not ready in time")
        if self._exc is not None:
            raise self._exc
        return self._value


def _results(job: _Job) -> Iterator[Any]:
    """A job's outputs; abandoning the iteration fails the job (its feeder stops)."""
    def end() -> None:
        if not job.finished:
            job.fail(GeneratorExit("iteration abandoned"))
    return outputs(job, end)


class Pool:
    """A pool of worker processes with the :class:`multiprocessing.pool.Pool` API,
    fed by fastq queues.

    Differences that matter: ``chunksize`` may be left out (work is batched
    adaptively: single items while there is little, large batches while the
    stream is long); a worker that dies mid-task (a signal, the OOM killer) is
    replaced and its task run again on another worker, up to ``max_retries``
    times, then :class:`fastq.WorkerLost` is raised for that item instead of a
    hang; ``imap`` reads its input lazily, at most a bounded window ahead of the
    consumer (an endless iterable is fine); an exception in ``imap`` ends the
    iteration (as ``concurrent.futures``); leaving the ``with`` block calls
    :meth:`terminate` (as ``multiprocessing``), and pending results then raise
    instead of waiting forever.

    Parameters
    ----------
    processes : int, optional
        Worker processes (default ``os.cpu_count()``).
    initializer, initargs
        ``initializer(*initargs)`` runs in every worker when it starts.
    maxtasksperchild : int, optional
        A worker exits and is replaced after this many batches.
    context : multiprocessing context or str, optional
        ``"fork"``, ``"spawn"``, ``"forkserver"`` or a context object.
    max_retries : int
        Re-runs of an item whose worker died, before :class:`WorkerLost`.
    capacity : int
        Bytes of each of the pool's two queues (tasks and results).
    """

    def __init__(self, processes: Optional[int] = None, initializer: Optional[Callable] = None,
                 initargs: Iterable[Any] = (), maxtasksperchild: Optional[int] = None,
                 context: Any = None, *, max_retries: int = 3,
                 capacity: int = DEFAULT_CAPACITY):
        if processes is None:
            processes = os.cpu_count() or 1
        if not isinstance(processes, int) or processes < 1:
            raise ValueError("Number of processes must be at least 1")
        if initializer is not None and not callable(initializer):
            raise TypeError("initializer must be a callable")
        if maxtasksperchild is not None and (not isinstance(maxtasksperchild, int)
                                             or maxtasksperchild <= 0):
            raise ValueError("maxtasksperchild must be a positive int or None")
        if not isinstance(max_retries, int) or max_retries < 0:
            raise ValueError("max_retries must be an int >= 0")
        self._processes = processes
        self._engine = _Engine([(None, processes, False, max_retries)], _context(context),
                               capacity, initializer, tuple(initargs), maxtasksperchild)
        self._state = "RUN"

    # ---- one call
    def apply_async(self, func: Callable, args: Iterable[Any] = (), kwds: Optional[dict] = None,
                    callback: Optional[Callable] = None,
                    error_callback: Optional[Callable] = None) -> AsyncResult:
        """Run ``func(*args, **kwds)`` in a worker; returns an :class:`AsyncResult`."""
        self._check_running()
        # a result with no callback is delivered when someone waits or asks
        job = self._engine.new_job(True, window=0, total=1,
                                   background=callback is not None or error_callback is not None)
        res = AsyncResult(job, True, callback, error_callback)
        try:
            self._engine.queues[0].put((job.jid, 0, 0, _call(func, MODE_APPLY),
                                        pack([(tuple(args), dict(kwds or {}))]), 0, 0.0, ()))
        except BaseException as e:
            job.fail(e)
            raise
        return res

    def apply(self, func: Callable, args: Iterable[Any] = (), kwds: Optional[dict] = None) -> Any:
        """``func(*args, **kwds)`` run in a worker."""
        return self.apply_async(func, args, kwds).get()

    # ---- many calls
    def _map_async(self, func, iterable, mode, chunksize, callback, error_callback):
        self._check_running()
        if not hasattr(iterable, "__len__"):
            iterable = list(iterable)
        job = self._engine.new_job(True, release_on_receive=True)
        res = AsyncResult(job, False, callback, error_callback)
        self._engine.feed(job, iterable, _call(func, mode), chunksize)
        return res

    def map_async(self, func: Callable, iterable: Iterable[Any], chunksize: Optional[int] = None,
                  callback: Optional[Callable] = None,
                  error_callback: Optional[Callable] = None) -> AsyncResult:
        """``[func(x) for x in iterable]`` in the workers; returns an AsyncResult."""
        return self._map_async(func, iterable, MODE_MAP, chunksize, callback, error_callback)

    def map(self, func: Callable, iterable: Iterable[Any], chunksize: Optional[int] = None) -> list:
        """``[func(x) for x in iterable]``, computed by the workers, in order."""
        return self._map_async(func, iterable, MODE_MAP, chunksize, None, None).get()

    def starmap_async(self, func: Callable, iterable: Iterable[Iterable[Any]],
                      chunksize: Optional[int] = None, callback: Optional[Callable] = None,
                      error_callback: Optional[Callable] = None) -> AsyncResult:
        """``[func(*args) for args in iterable]``; returns an AsyncResult."""
        return self._map_async(func, iterable, MODE_STAR, chunksize, callback, error_callback)

    def starmap(self, func: Callable, iterable: Iterable[Iterable[Any]],
                chunksize: Optional[int] = None) -> list:
        """``[func(*args) for args in iterable]``, computed by the workers, in order."""
        return self._map_async(func, iterable, MODE_STAR, chunksize, None, None).get()

    def _imap(self, func, iterable, mode, chunksize, ordered):
        self._check_running()
        # read by the consumer only: its window opens as it consumes (see new_job)
        job = self._engine.new_job(ordered, background=False)
        self._engine.feed(job, iterable, _call(func, mode), chunksize)
        return _results(job)

    def imap(self, func: Callable, iterable: Iterable[Any],
             chunksize: Optional[int] = None) -> Iterator[Any]:
        """``func(x)`` for each x, lazily, in input order.  The input is read at most a
        bounded window of batches ahead of the consumer."""
        return self._imap(func, iterable, MODE_MAP, chunksize, True)

    def imap_unordered(self, func: Callable, iterable: Iterable[Any],
                       chunksize: Optional[int] = None) -> Iterator[Any]:
        """As :meth:`imap`, yielding each batch of results as soon as it is ready."""
        return self._imap(func, iterable, MODE_MAP, chunksize, False)

    # ---- lifecycle
    @property
    def reruns(self) -> int:
        """Batches run again because their worker died."""
        return self._engine.reruns

    def pids(self) -> List[int]:
        """The worker processes' pids."""
        return self._engine.pids()

    def _check_running(self) -> None:
        if self._state != "RUN":
            raise ValueError("Pool not running")

    def close(self) -> None:
        """Accept no more work; workers exit once the submitted work is done."""
        if self._state == "RUN":
            self._state = "CLOSE"
            self._engine.close()

    def join(self) -> None:
        """Wait for the workers to exit (after :meth:`close` or :meth:`terminate`)."""
        if self._state == "RUN":
            raise ValueError("Pool is still running")
        if self._state == "CLOSE":
            self._engine.join()
        self._engine.terminate()  # nothing left to stop: removes the queues

    def terminate(self) -> None:
        """Stop the workers now; results not yet computed raise ``RuntimeError``."""
        self._state = "TERMINATE"
        self._engine.terminate()

    def __enter__(self) -> "Pool":
        self._check_running()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.terminate()

    def __repr__(self) -> str:
        return f"<fastq.Pool state={self._state} processes={self._processes}>"


class _Future(cf.Future):
    """A Future whose result() and exception() read the pool's results in the
    waiting thread, as AsyncResult.get() does, instead of waiting for the
    collector thread to hand the result over."""

    _res: Optional[AsyncResult] = None

    def _timeout(self, timeout: Optional[float]) -> Optional[float]:
        # done in the pool: the callback that completes this Future comes at once
        res = self._res
        return timeout if res is None or res._wait(timeout) else 0

    def result(self, timeout: Optional[float] = None) -> Any:
        return super().result(self._timeout(timeout))

    def exception(self, timeout: Optional[float] = None) -> Optional[BaseException]:
        return super().exception(self._timeout(timeout))


class Executor(cf.Executor):
    """A :class:`concurrent.futures.Executor` over a :class:`fastq.Pool`'s workers, so
    that ``loop.run_in_executor`` and code written for ``ProcessPoolExecutor`` work.

    A submitted call starts running at once (it is in the pool's queue), so
    ``Future.cancel()`` returns False and ``shutdown(cancel_futures=True)`` cancels
    nothing; a worker's death is retried as in :class:`Pool`.
    """

    def __init__(self, max_workers: Optional[int] = None, mp_context: Any = None,
                 initializer: Optional[Callable] = None, initargs: tuple = (), *,
                 max_tasks_per_child: Optional[int] = None, max_retries: int = 3):
        self._pool = Pool(max_workers, initializer, initargs, max_tasks_per_child, mp_context,
                          max_retries=max_retries)
        self._shutdown = False

    def submit(self, fn: Callable, /, *args: Any, **kwargs: Any) -> "cf.Future[Any]":
        """Schedule ``fn(*args, **kwargs)``; returns a Future."""
        if self._shutdown:
            raise RuntimeError("cannot schedule new futures after shutdown")
        fut = _Future()
        fut.set_running_or_notify_cancel()
        fut._res = self._pool.apply_async(fn, args, kwargs, callback=fut.set_result,
                                          error_callback=fut.set_exception)
        return fut

    def map(self, fn: Callable, *iterables: Iterable[Any], timeout: Optional[float] = None,
            chunksize: int = 1) -> Iterator[Any]:
        """``fn(*args)`` for each tuple of the iterables, in order; batched adaptively
        (``chunksize`` is accepted for compatibility and ignored)."""
        if self._shutdown:
            raise RuntimeError("cannot schedule new futures after shutdown")
        pool = self._pool
        pool._check_running()
        job = pool._engine.new_job(True, background=False)  # as Pool._imap
        pool._engine.feed(job, zip(*iterables), _call(fn, MODE_STAR), None)
        if timeout is None:
            return _results(job)
        return _timed(job, timeout)

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        """Accept no more calls; with ``wait``, return when all of them are done and the
        workers exited."""
        if self._shutdown:
            return
        self._shutdown = True
        self._pool.close()
        if wait:
            self._pool.join()


def _timed(job: _Job, timeout: float) -> Iterator[Any]:
    deadline = time.monotonic() + timeout
    try:
        while True:
            try:
                chunks = job.chunks(max(0.0, deadline - time.monotonic()))
                items, nfailed = next(chunks)
            except StopIteration:
                return
            except TimeoutError:
                raise cf.TimeoutError() from None
            for x in items:
                if type(x) is _Failed:
                    raise x.rebuild()
                yield x
    finally:
        if not job.finished:
            job.fail(GeneratorExit("iteration abandoned"))

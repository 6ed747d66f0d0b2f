"""Request/reply over fastq queues: :class:`Server` and :class:`Client`.

A server named ``name`` takes requests from the queue ``name`` (with
acknowledgement, in its :class:`fastq.Dispatcher` worker processes) and puts each
reply on the reply queue of the client process that asked.  A request is
``(reply_queue, correlation_id, payload)``; a reply ``(correlation_id, ok, value)``
where ``value`` is the handler's result, or the exception it raised with its
traceback text (re-raised in the caller, the remote traceback as its
``__cause__``, a :class:`fastq.RemoteTraceback`).

Each client process has one reply queue (a segment named
``<name>.reply-<pid>-<token>``, removed when the client is closed or its process
exits normally), shared by all its :class:`Client` objects' threads and tasks: a
caller waiting for its reply reads the reply queue itself and hands over the
replies of the others, so a call costs no thread switch.

A server killed in the middle of a request does not lose it: the request comes
back to the queue and another server process (a replacement, or another instance)
answers it, so a handler may run more than once for one call (at least once).  With
no server left, the call times out (``TimeoutError``) if it was given a timeout,
else it waits for a server to come back.

>>> with fastq.rpc.Server("prices", lambda sku: 9.99):
...     fastq.rpc.Client("prices").call("apple", timeout=5)
9.99
"""
from __future__ import annotations

import atexit
import itertools
import os
import threading
import time
import weakref
from collections import OrderedDict
from typing import TYPE_CHECKING, Any, Callable, Dict, Optional

if TYPE_CHECKING:  # imported where a coroutine runs: `import fastq` does without asyncio
    import asyncio

from ._dispatch import Dispatcher
from ._errors import Empty
from ._queue import Queue
from ._segment import _strategy
from ._workers import RemoteTraceback, _Failed

__all__ = ["Server", "Client", "RemoteTraceback"]

REPLY_CACHE = 64          # reply queues a server process keeps open
REPLY_CAPACITY = 1 << 20


class _Responder:
    """A Dispatcher handler that answers requests (picklable if ``fn`` is)."""

    def __init__(self, fn: Callable[[Any], Any]):
        self.fn = fn
        self.__qualname__ = f"rpc.{getattr(fn, '__qualname__', type(fn).__qualname__)}"
        self.__module__ = getattr(fn, "__module__", None) or "fastq.rpc"
        self.replies: "OrderedDict[str, Optional[Queue[Any]]]" = OrderedDict()

    def __getstate__(self) -> dict:
        return {"fn": self.fn, "__qualname__": self.__qualname__, "__module__": self.__module__}

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self.replies = OrderedDict()

    def _reply_queue(self, name: str) -> "Optional[Queue[Any]]":
        q = self.replies.get(name)
        if q is None and name not in self.replies:
            try:
                q = Queue.open(name)
            except FileNotFoundError:
                q = None        # the client is gone: nobody to answer
            self.replies[name] = q
            if len(self.replies) > REPLY_CACHE:
                _, old = self.replies.popitem(last=False)
                if old is not None:
                    old.close()
        else:
            self.replies.move_to_end(name)
        return q

    def __call__(self, request: Any) -> None:
        reply_to, cid, payload = request
        try:
            reply = (cid, True, self.fn(payload))
        except Exception as exc:
            reply = (cid, False, _Failed.current(exc))
        q = self._reply_queue(reply_to)
        if q is None:
            return
        try:
            q.put(reply)
        except Exception as exc:      # the result does not pickle, or is too large
            q.put((cid, False, _Failed.current(exc)))


class Server:
    """Answer the requests sent to ``name`` with ``handler(request)``.

    ``handler`` runs in ``workers`` processes (a :class:`fastq.Dispatcher`);
    what it returns goes back to the caller, what it raises is re-raised in
    the caller.  ``start()`` (or ``with Server(...):``) serves in the
    background, :meth:`serve_forever` until SIGTERM/SIGINT.

    Parameters
    ----------
    name : str
        The request queue's name (created if missing).
    handler : callable
        One argument, the request; picklable when ``context`` is not fork.
    workers : int
        Server processes.
    concurrency : int
        Requests in flight per process (threads), at most 7.
    capacity : int
        Request queue size in bytes if it is created.
    context : multiprocessing context or str, optional
        As for :class:`fastq.Dispatcher`.
    grace : float
        On stop, how long requests in progress may take to be answered.
    wait : {"adaptive", "spin", "sleep"}
        How the server processes wait for requests (see "Wait strategies" in
        the README: ``"spin"`` gives the lowest latency and keeps a core busy
        per server process).
    """

    def __init__(self, name: str, handler: Callable[[Any], Any], workers: int = 1, *,
                 concurrency: int = 1, capacity: int = 1 << 20, context: Any = None,
                 grace: float = 5.0, wait: str = "adaptive"):
        self.name = name
        self.requests: "Queue[Any]" = Queue(name, capacity)
        self._dispatcher = Dispatcher(grace=grace, context=context)
        # no retries for a request: an exception is the answer; a killed server's
        # request is answered by the next one (attempts beyond are answered too)
        self._dispatcher.on(self.requests, workers=workers, concurrency=concurrency,
                            max_attempts=1 << 30, wait=wait)(_Responder(handler))

    @property
    def pids(self) -> list:
        """The server's worker processes."""
        return self._dispatcher.pids

    def start(self) -> "Server":
        """Serve in the background (returns once the workers take requests)."""
        self._dispatcher.start()
        return self

    def stop(self) -> None:
        """Stop serving: requests in progress are answered first (up to
        ``grace`` seconds); waiting ones stay in the queue."""
        self._dispatcher.stop()

    def serve_forever(self) -> None:
        """Serve until SIGTERM or SIGINT (or :meth:`stop` from another thread)."""
        self._dispatcher.run()

    def close(self) -> None:
        """Stop and close the request queue handle."""
        self.stop()
        self.requests.close()

    def __enter__(self) -> "Server":
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.close()


class _Waiter:
    __slots__ = ("event", "future", "loop", "reply")

    def __init__(self) -> None:
        self.event: Optional[threading.Event] = None
        self.future: Optional[asyncio.Future] = None
        self.loop: Optional[asyncio.AbstractEventLoop] = None
        self.reply: Any = None


def _resolve_future(fut: asyncio.Future, reply: Any) -> None:
    if not fut.done():
        fut.set_result(reply)


class _ReplyPath:
    """The reply queue of this process for one server name, and the table of
    calls waiting for their reply."""

    def __init__(self, name: str):
        token = os.urandom(4).hex()
        self.queue: "Queue[Any]" = Queue.create(f"{name}.reply-{os.getpid()}-{token}",
                                                REPLY_CAPACITY)
        self.reply_to = self.queue.path     # a path: the server opens it wherever it runs
        self.waiting: Dict[int, _Waiter] = {}
        self.lock = threading.Lock()        # the table
        self.reader = threading.Lock()      # whoever holds it reads the queue
        self.ids = itertools.count(1)
        self.pid = os.getpid()
        self.async_readers: "weakref.WeakKeyDictionary[Any, Any]" = weakref.WeakKeyDictionary()

    def register(self, w: _Waiter) -> int:
        cid = next(self.ids)
        with self.lock:
            self.waiting[cid] = w
        return cid

    def forget(self, cid: int) -> None:
        with self.lock:
            self.waiting.pop(cid, None)

    def deliver(self, reply: Any) -> None:
        with self.lock:
            w = self.waiting.pop(reply[0], None)
        if w is None:
            return          # a call that timed out: its reply is dropped
        w.reply = reply
        if w.future is not None:
            w.loop.call_soon_threadsafe(_resolve_future, w.future, reply)  # type: ignore
        elif w.event is not None:
            w.event.set()

    def wait_sync(self, w: _Waiter, cid: int, deadline: Optional[float]) -> bool:
        """Wait for ``w``'s reply, reading the queue when no other thread does."""
        get = self.queue.get
        while w.reply is None:
            if deadline is not None and time.monotonic() >= deadline:
                return False
            if self.reader.acquire(blocking=False):
                try:
                    while w.reply is None:
                        left = 0.5 if deadline is None else min(0.5, deadline - time.monotonic())
                        if left <= 0:
                            return False
                        try:
                            # a bounded slice: the reader checks its deadline
                            reply = get(timeout=left)
                        except Empty:
                            continue
                        if reply[0] == cid:          # the common case: ours
                            with self.lock:
                                self.waiting.pop(cid, None)
                            w.reply = reply
                        else:
                            self.deliver(reply)
                finally:
                    self.reader.release()
                    if self.waiting:
                        self._hand_over()
            else:
                ev = w.event
                if ev is None:
                    # another thread reads: wait for it to hand our reply over (its
                    # deliver() sets w.reply before it looks at w.event)
                    ev = _local.__dict__.get("event")
                    if ev is None:
                        ev = _local.event = threading.Event()
                    ev.clear()
                    w.event = ev      # one per thread: a thread waits for one call at a time
                    continue
                if ev.wait(0.01):
                    ev.clear()
        return True

    def _hand_over(self) -> None:
        # wake one sync waiter to take over reading (each also polls the lock)
        with self.lock:
            for other in self.waiting.values():
                if other.event is not None:
                    other.event.set()
                    break

    def ensure_async_reader(self, loop: asyncio.AbstractEventLoop) -> None:
        task = self.async_readers.get(loop)
        if task is None or task.done():
            self.async_readers[loop] = loop.create_task(self._read_async())

    async def _read_async(self) -> None:
        # reads while any awaitable call of this loop waits
        while True:
            with self.lock:
                if not any(w.future is not None for w in self.waiting.values()):
                    return
            try:
                reply = await self.queue.aget(timeout=0.5)
            except Empty:
                continue
            self.deliver(reply)

    def close(self) -> None:
        self.queue.close()
        self.queue.unlink()


_paths: Dict[str, _ReplyPath] = {}
_local = threading.local()
_paths_lock = threading.Lock()


def _reply_path(name: str) -> _ReplyPath:
    with _paths_lock:
        path = _paths.get(name)
        if path is None or path.pid != os.getpid():   # a forked child has its own
            path = _paths[name] = _ReplyPath(name)
        return path


@atexit.register
def _close_paths() -> None:
    with _paths_lock:
        for path in list(_paths.values()):
            if path.pid == os.getpid():
                try:
                    path.close()
                except Exception:
                    pass
        _paths.clear()


class Client:
    """Call the server named ``name``.

    All clients of one name in a process share its reply queue; calls from
    several threads, tasks and processes at once each get their own reply.

    Parameters
    ----------
    name : str
        The server's name (its request queue is created if missing, so a
        client may start first).
    wait : {"adaptive", "spin", "sleep"}
        How this process's callers wait for replies (the process's reply
        queue for ``name`` waits as the last Client created asked).
    """

    def __init__(self, name: str, *, wait: str = "adaptive"):
        self.name = name
        self.requests: "Queue[Any]" = Queue(name)
        self._strategy = _strategy(wait)
        self._path: Optional[_ReplyPath] = None
        self._reply_path()

    def _reply_path(self) -> _ReplyPath:
        path = _reply_path(self.name)
        if path is not self._path:     # first call, or in a forked child
            path.queue.strategy = self._strategy
            self._path = path
        return path

    def _send(self, obj: Any, w: _Waiter) -> tuple:
        path = self._reply_path()
        cid = path.register(w)
        try:
            self.requests.put((path.reply_to, cid, obj))
        except BaseException:
            path.forget(cid)
            raise
        return path, cid

    @staticmethod
    def _result(reply: Any) -> Any:
        _, ok, value = reply
        if ok:
            return value
        raise value.rebuild()

    def call(self, obj: Any, timeout: Optional[float] = None) -> Any:
        """Send ``obj``, wait for the reply and return it.

        Raises the server handler's exception (its remote traceback in
        ``__cause__``), or ``TimeoutError`` after ``timeout`` seconds (the
        server may still run the request; its late reply is dropped).
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        w = _Waiter()
        path, cid = self._send(obj, w)
        if not path.wait_sync(w, cid, deadline):
            path.forget(cid)
            if w.reply is None:
                raise TimeoutError(f"no reply from {self.name!r} in {timeout} s")
        return self._result(w.reply)

    async def acall(self, obj: Any, timeout: Optional[float] = None) -> Any:
        """Awaitable :meth:`call`: the event loop runs while it waits."""
        import asyncio
        loop = asyncio.get_running_loop()
        w = _Waiter()
        w.loop, w.future = loop, loop.create_future()
        path, cid = self._send(obj, w)
        path.ensure_async_reader(loop)
        try:
            reply = await asyncio.wait_for(asyncio.shield(w.future), timeout)
        except asyncio.TimeoutError:
            path.forget(cid)
            if w.reply is None:
                raise TimeoutError(f"no reply from {self.name!r} in {timeout} s") from None
            reply = w.reply
        except BaseException:
            path.forget(cid)
            raise
        return self._result(reply)

    def close(self) -> None:
        """Close the request queue handle (the process's reply queue stays for
        its other clients until the process exits)."""
        self.requests.close()

    def __enter__(self) -> "Client":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

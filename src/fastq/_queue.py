"""fastq.Queue and fastq.JoinableQueue: the public API of a queue.  The
hot methods (put, get, receive, ...) are the compiled base class's
(fastq._core.QueueSegment); the lifecycle is SegmentHandle's (_segment.py)."""
from __future__ import annotations

import collections
import os
import time
from typing import TYPE_CHECKING, Any, Generic, Iterable, Iterator, List, Optional, TypeVar

from . import _core
from ._aio import QueueAio, wake_closed
from ._naming import segment_path
from ._segment import (DEFAULT_CAPACITY, _CAPACITY, _MAX_PROCESSES, _MODE, SegmentHandle,
                       _check_int, iterate)
from ._serializers import PickleSerializer, RawSerializer

__all__ = ["Queue", "JoinableQueue", "segment_path", "PickleSerializer", "RawSerializer"]

_T = TypeVar("_T")


class Queue(_core.QueueSegment, SegmentHandle, QueueAio, Generic[_T]):
    """A multi-producer, multi-consumer FIFO queue shared by processes.

    ``fastq.Queue[int]`` is its type for messages of type int (generic for
    type checkers; at run time the same class).  ``for item in q`` gets
    messages until the queue is shut down and drained.

    Messages live in a memory-mapped segment file; any process that knows the
    name can attach.  Order is FIFO per producer; nothing is lost or
    duplicated; a process killed in the middle of a call blocks nobody for
    longer than the recovery bound (see the README).

    Parameters
    ----------
    name : str, optional
        Queue name (a file in ``$FASTQ_DIR``, default ``/dev/shm``) or a path
        containing ``/``.  ``None`` creates an anonymous queue: it has no
        file (a memfd), goes away with the last process that holds it however
        processes end, and reaches child processes when they start
        (``Process(args=...)``, ``Pool(initargs=...)``, or fork).
    capacity : int
        Ring size in bytes when the queue is created (rounded up to a power
        of two, at least 4096; default 1 MiB, for messages of up to 512 KiB).
        Ignored when an existing queue is opened.
    max_message : int, optional
        Largest message in bytes (after serialization); default and maximum
        ``capacity // 2 - 16``.
    serializer : {"pickle", "raw"} or object
        ``"pickle"`` (protocol 5, out-of-band buffers), ``"raw"`` (bytes-like
        in, ``bytes`` out) or any object with ``dumps`` and ``loads``.
    mode : int
        File mode of a created segment (default ``0o600``: owner only).
    max_processes : int
        Process slots in a created segment (default 64, at most 1024).
    prefetch : int
        Most deliveries from :meth:`receive` this handle may hold
        unacknowledged at once (1 to 7: a process holds at most 7,
        default 4).
    trusted : bool
        Open a segment even if another user owns it or can write it.  By
        default that is refused (``PermissionError``): whoever can write a
        segment can make its readers unpickle anything, that is, run code.
    temporary : bool
        Mark a new segment temporary: ``fastq gc`` removes it once no
        process is attached to it (it ignores segments not so marked).
        Only used when the segment is created.
    wait : {"adaptive", "spin", "sleep"}
        How this handle's blocking calls wait (see "Wait strategies" in the
        README): ``"adaptive"`` spins briefly, as long as spinning has been
        paying off, then sleeps; ``"spin"`` never sleeps (lowest latency, a
        core busy while it waits); ``"sleep"`` sleeps at once (least CPU).
        Awaitable calls spin at most 20 µs, within the adaptive budget,
        before they arm (never with ``"sleep"``).

    Examples
    --------
    >>> q = fastq.Queue("jobs", capacity=1 << 20)
    >>> q.put({"id": 1}); q.get()
    {'id': 1}
    """

    def __init__(self: "Queue[Any]", name: "Optional[str | os.PathLike[str]]" = None,
                 capacity: int = _CAPACITY, *,
                 max_message: Optional[int] = None, serializer: Any = "pickle",
                 mode: int = _MODE, max_processes: int = _MAX_PROCESSES, prefetch: int = 4,
                 trusted: bool = False, wait: str = "adaptive", temporary: bool = False,
                 _how: str = "open_or_create",
                 _vetted: Optional[tuple] = None):
        strategy = self._options(serializer, trusted, wait)
        _check_int("prefetch", prefetch, 1, _core.MAX_PREFETCH)
        self._set_prefetch(prefetch)
        self._attach(name, _how, (capacity, max_message, max_processes, mode), (0, "", 0),
                     trusted, _vetted, temporary)
        self.strategy = strategy

    if TYPE_CHECKING:  # the compiled methods, typed by message (docs: _core.QueueSegment)
        def put(self, obj: _T, block: bool = True, timeout: Optional[float] = None) -> None: ...
        def put_nowait(self, obj: _T) -> None: ...
        def put_many(self, items: Iterable[_T], block: bool = True,
                     timeout: Optional[float] = None) -> int: ...
        def get(self, block: bool = True, timeout: Optional[float] = None) -> _T: ...
        def get_nowait(self) -> _T: ...
        def get_many(self, max_messages: int = 1024, block: bool = True,
                     timeout: Optional[float] = None, max_bytes: int = 1 << 20) -> List[_T]: ...

    # ---- constructors -------------------------------------------------------

    @classmethod
    def create(cls, name: Optional[str] = None, capacity: int = DEFAULT_CAPACITY,
               **kwargs: Any) -> "Queue[Any]":
        """Create a new queue; ``FileExistsError`` if the name exists."""
        return cls(name, capacity, _how="create", **kwargs)

    @classmethod
    def open(cls, name: str, **kwargs: Any) -> "Queue[Any]":
        """Attach to an existing queue; ``FileNotFoundError`` if it is missing,
        ``SegmentError`` if the file is not a valid segment.  Options given
        must agree with the queue's (``ValueError``)."""
        return cls(name, _how="open", **kwargs)

    def close(self) -> None:
        _core.QueueSegment.close(self)
        wake_closed(self)  # tasks awaiting on it raise ValueError now

    close.__doc__ = _core.QueueSegment.close.__doc__

    def __reduce__(self):
        where, name, spec, trusted, vetted, wait = self._reduce_args("queue")
        return (_reopen, (where, name, spec, trusted, self.prefetch, vetted, None, wait))

    def __iter__(self) -> Iterator[_T]:
        """Messages (as :meth:`get`) until the queue is shut down and drained."""
        return iterate(self.get)

    # ---- status -------------------------------------------------------------

    def empty(self) -> bool:
        """True if :meth:`get` has nothing to take now (``qsize() == 0``)."""
        return self.qsize() == 0

    def unacked(self) -> int:
        """Messages taken from the queue and not settled yet, in every
        process: deliveries of :meth:`receive` not yet acked or nacked, gets
        in progress, and those held by a killed consumer until recovery gives
        them back (they then count in :meth:`qsize` again)."""
        return self.unacked_count()

    def __repr__(self) -> str:
        state = "closed" if self.closed else f"capacity={self.capacity}"
        return f"<fastq.Queue {self._name!r} {state}>"


class JoinableQueue(Queue[_T]):
    """A :class:`Queue` with ``task_done()`` and ``join()``, as
    ``multiprocessing.JoinableQueue``.

    A task is a message: it is finished when the consumer that got it calls
    :meth:`task_done` (or when it is taken by a plain ``get()`` of a
    ``Queue`` handle, or acked).  :meth:`get` takes the message as an
    unacknowledged delivery (see :meth:`Queue.receive`) that
    :meth:`task_done` acks, oldest first: so a consumer killed between
    ``get()`` and ``task_done()`` does not leave ``join()`` hanging, nor is
    its task lost: recovery gives the message back, another consumer gets it
    (``redelivered``), and ``join()`` returns once that one is done.  The
    count of unfinished tasks lives in the segment, for every process.

    Each handle may hold at most ``prefetch`` tasks not yet done (1 to 7,
    default 4: ``RuntimeError`` beyond); until done, a task pins its place
    in the ring.  ``get_many()`` is not available (``NotImplementedError``).
    """

    def __init__(self: "JoinableQueue[Any]", *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self._tasks: "collections.deque[Any]" = collections.deque()

    def get(self, block: bool = True, timeout: Optional[float] = None) -> _T:
        """Take a task (as :meth:`Queue.get`); call :meth:`task_done` when it
        is done."""
        d = self.receive(block, timeout)
        self._tasks.append(d)
        return d.value

    def get_nowait(self) -> _T:
        """``get(block=False)``."""
        return self.get(False)

    def get_many(self, *args: Any, **kwargs: Any) -> List[_T]:
        """Not available: ``NotImplementedError``."""
        raise NotImplementedError("JoinableQueue.get_many(): get tasks one at a time "
                                  "(each is done by its own task_done())")

    def task_done(self) -> None:
        """The oldest task this handle got is done: it leaves the queue.
        ``ValueError`` if no task got by this handle is left."""
        if not self._tasks:
            raise ValueError("task_done() called too many times")
        self._tasks.popleft().ack()

    def join(self, timeout: Optional[float] = None) -> bool:
        """Wait until every task put (by any process) is done; True then,
        False if ``timeout`` seconds passed first.  While it waits it runs
        recovery, so that tasks of killed consumers go back to the queue.
        After ``shutdown(immediate=True)`` only the tasks already got count,
        as for ``queue.Queue``."""
        deadline = None if timeout is None else time.monotonic() + timeout
        nap, last_recover = 0.001, time.monotonic()
        while self.unfinished():
            now = time.monotonic()
            if deadline is not None and now >= deadline:
                return False
            if now - last_recover >= 0.2:
                self.recover()
                last_recover = now
            nap = min(nap * 2, 0.05)
            time.sleep(nap if deadline is None else max(0.0, min(nap, deadline - now)))
        return True

    def __reduce__(self):
        fn, args = super().__reduce__()
        return fn, args[:6] + (JoinableQueue,) + args[7:]


def _reopen(where: Any, name: str, serializer: Any, trusted: bool = False,
            prefetch: int = 4, vetted: Optional[tuple] = None,
            cls: Any = None, wait: str = "adaptive") -> "Queue[Any]":
    cls = Queue if cls is None else cls
    if isinstance(where, str):
        return cls.open(where, serializer=serializer, trusted=trusted, prefetch=prefetch,
                        wait=wait, _vetted=vetted)
    return cls((where, name), serializer=serializer, prefetch=prefetch, wait=wait,
               _how="open")

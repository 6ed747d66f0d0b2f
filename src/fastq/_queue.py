"""fastq.Queue: the public API over the C core (fastq._core.Segment)."""
from __future__ import annotations

import collections
import time
import os
import pickle
import struct
import uuid
from multiprocessing import context, reduction
from typing import Any, Generic, Iterable, Iterator, List, Optional, TypeVar

from . import _core
from ._aio import QueueAio
from ._errors import Empty, Full, MessageTooLarge, SegmentError, ShutDown

#: 1 MiB: a container's default /dev/shm (64 MB) holds dozens of such queues,
#: a ring this size stays in the CPU's caches, and it holds messages of up to
#: 512 KiB; a larger message raises MessageTooLarge naming the capacity that
#: would take it.
DEFAULT_CAPACITY = 1 << 20
DEFAULT_DIR = "/dev/shm"

__all__ = ["Queue", "JoinableQueue", "segment_path", "PickleSerializer", "RawSerializer"]


def segment_path(name: "str | os.PathLike[str]") -> str:
    """The file a queue name refers to, as an absolute path.

    A ``str`` name without ``/`` lives in ``$FASTQ_DIR`` (default
    ``/dev/shm``); a name with ``/``, or an ``os.PathLike`` (a
    ``pathlib.Path``), is a path, on any filesystem.  A relative path is
    resolved against the current directory now, so that a handle pickled
    into another process (or used after ``os.chdir``) names the same file.
    """
    if isinstance(name, os.PathLike):
        name = os.fspath(name)
        if not isinstance(name, str):
            raise TypeError(f"name must be a str or an os.PathLike of str, not {name!r}")
        is_path = True
    elif isinstance(name, str):
        is_path = "/" in name
    else:
        raise TypeError(f"name must be a str or an os.PathLike of str, not "
                        f"{type(name).__name__}")
    if "\0" in name:
        raise ValueError(f"name must not contain a NUL byte: {name!r}")
    base = os.path.basename(name)
    if not base or base in (".", ".."):
        raise ValueError(f"invalid queue name: {name!r}")
    nbytes = len(os.fsencode(base))
    if nbytes > _NAME_MAX:
        raise ValueError(f"name too long: its file name {base[:40]!r}... has {nbytes} bytes, "
                         f"at most {_NAME_MAX} are allowed (a segment is created under a "
                         "temporary name that adds to it)")
    path = name if is_path else os.path.join(os.environ.get("FASTQ_DIR", DEFAULT_DIR), name)
    return os.path.abspath(path)


#: longest file name of a segment: NAME_MAX (255) less the suffix of the
#: temporary file it is created as (".tmp-<pid up to 7 digits>-<16 hex>")
_NAME_MAX = 255 - len(".tmp-4194304-0123456789abcdef")


class _Default:
    """A keyword's default value, told apart from the same value given
    explicitly: an explicit option must agree with an existing segment, a
    default need not."""

    __slots__ = ("value",)

    def __init__(self, value: Any):
        self.value = value

    def __repr__(self) -> str:
        return repr(self.value)


def _given(v: Any) -> Any:
    """v, or the value of a _Default."""
    return v.value if isinstance(v, _Default) else v


def _strategy(wait: Any) -> int:
    """The C core's FQ_STRATEGY_* for wait=: ValueError if unknown."""
    try:
        return _core.STRATEGIES[wait]
    except (KeyError, TypeError):
        raise ValueError(f"wait must be one of {sorted(_core.STRATEGIES)}, not {wait!r}") \
            from None


def _check_int(what: str, v: Any, lo: int, hi: int) -> int:
    """v as an int in lo..hi: TypeError for another type (bool too), ValueError
    out of range."""
    if not isinstance(v, int) or isinstance(v, bool):
        raise TypeError(f"{what} must be an int, not {type(v).__name__} ({v!r})")
    if not lo <= v <= hi:
        raise ValueError(f"{what} must be in {lo}..{hi}, not {v!r}")
    return v


def _check_mode(mode: Any) -> int:
    if not isinstance(mode, int) or isinstance(mode, bool):
        raise TypeError(f"mode must be an int of permission bits such as 0o600, not "
                        f"{type(mode).__name__} ({mode!r})")
    if mode & ~0o777 or mode < 0:
        raise ValueError(f"mode must hold permission bits only (0o000..0o777): {mode!r} "
                         "(setuid, setgid and sticky bits are refused)")
    return mode


#: an int option above this cannot reach the C core (uint64); the core
#: itself refuses values above its real bounds, with a message naming them
_U63 = (1 << 63) - 1


# ---- serializers ------------------------------------------------------------

_OOB = struct.Struct("<BIQ")  # marker 0, buffer count, pickle length


class PickleSerializer:
    """pickle protocol 5 with out-of-band buffers.

    A message is the pickle stream alone (it starts with the PROTO opcode,
    0x80), or, when the object exports out-of-band buffers (a numpy array), a
    frame: ``<B marker=0><I nbuf><Q pickle_len><Q len>*nbuf`` then the pickle
    stream then the buffers, gathered straight into the ring: the array's
    bytes are copied once, into the segment, never into an intermediate bytes.
    """

    name = "pickle"

    def dumps(self, obj: Any):
        """The message for obj: the pickle stream, or a list of frame parts."""
        bufs: list = []
        data = pickle.dumps(obj, protocol=5, buffer_callback=bufs.append)
        if not bufs:
            return data
        try:
            raws = [b.raw() for b in bufs]
        except BufferError:  # a non-contiguous buffer: pickle it in-band
            return pickle.dumps(obj, protocol=5)
        head = _OOB.pack(0, len(raws), len(data)) + struct.pack(
            f"<{len(raws)}Q", *(r.nbytes for r in raws))
        return [head, data, *raws]

    def loads(self, mv: memoryview) -> Any:
        """The object in a message (out-of-band buffers are copied out)."""
        if not mv or mv[0] != 0:
            return pickle.loads(mv)
        _, nbuf, plen = _OOB.unpack_from(mv, 0)
        off = _OOB.size
        lens = struct.unpack_from(f"<{nbuf}Q", mv, off)
        off += 8 * nbuf
        data = mv[off:off + plen]
        off += plen
        buffers = []
        for n in lens:
            buffers.append(bytearray(mv[off:off + n]))  # copied out of the ring
            off += n
        try:
            return pickle.loads(data, buffers=buffers)
        finally:
            data.release()


class RawSerializer:
    """No serialization: bytes-like objects in, ``bytes`` out."""

    name = "raw"

    def dumps(self, obj: Any):
        """obj itself: it must be bytes-like."""
        return obj

    loads = None  # the binding returns bytes


class _CustomSerializer:
    """Wraps any object with ``dumps(obj) -> bytes`` and ``loads(bytes)``."""

    def __init__(self, impl: Any):
        self.impl = impl
        self.name = None

    def dumps(self, obj: Any):
        return self.impl.dumps(obj)

    def loads(self, mv: memoryview) -> Any:
        return self.impl.loads(bytes(mv))


def _make_serializer(spec: Any):
    if spec == "pickle":
        return PickleSerializer()
    if spec == "raw":
        return RawSerializer()
    if isinstance(spec, str):
        raise ValueError(f"unknown serializer {spec!r}: use 'pickle', 'raw' or an object "
                         "with dumps() and loads()")
    if not (callable(getattr(spec, "dumps", None)) and callable(getattr(spec, "loads", None))):
        raise TypeError("serializer must be 'pickle', 'raw' or an object with dumps and loads")
    return _CustomSerializer(spec)


# ---- trust and inheritance ----------------------------------------------------


def _check_trust(seg: Any, path: str, what: str, vetted: Optional[tuple] = None) -> None:
    """Refuse (PermissionError, closing seg) a segment another user can write,
    unless it is the very file (vetted: its (st_dev, st_ino)) that the
    process which handed this handle over had accepted: a creator's own
    children take the queue it made, whatever mode it chose."""
    st = os.fstat(seg.fileno())
    if vetted is not None and (st.st_dev, st.st_ino) == tuple(vetted):
        return
    why = None
    if st.st_uid != os.geteuid():
        why = f"it is owned by uid {st.st_uid}"
    elif st.st_mode & 0o022:
        why = f"its mode {st.st_mode & 0o777:#o} lets other users write it"
    if why:
        seg.close()
        raise PermissionError(
            f"refusing to open {what} {path}: {why}, and whoever can write a "
            "segment can make its readers run code (unpickling); pass trusted=True "
            "if you trust every user who can write it")


def _where(handle: "_Handle", what: str) -> Any:
    """What a pickled handle reopens: the path of a named segment, or, for an
    anonymous one (which has no name anywhere), its file descriptor, duplicated
    into the child being started the way multiprocessing hands over its own
    pipes.  Outside of starting a child process that is impossible: an
    anonymous queue has no name to find it by."""
    if handle._path is not None:
        return handle._path
    if context.get_spawning_popen() is None:
        raise RuntimeError(
            f"an anonymous {what} can be passed to a child process only as it starts "
            "(Process(args=...), Pool(initializer=..., initargs=...)), like "
            f"multiprocessing.Queue; to pass it any other way give the {what} a name")
    return reduction.DupFd(handle._seg.fileno())


def _vetted(handle: "_Handle") -> tuple:
    st = os.fstat(handle._seg.fileno())
    return (st.st_dev, st.st_ino)


_H = TypeVar("_H", bound="_Handle")
_T = TypeVar("_T")

# defaults of the size options: told apart from the same values given explicitly
_CAPACITY: Any = _Default(DEFAULT_CAPACITY)
_MODE: Any = _Default(0o600)
_MAX_PROCESSES: Any = _Default(64)


class _Handle:
    """What a Queue and a Topic share: a mapped segment and its lifecycle."""

    _seg: Any
    _name: str
    _path: Optional[str]
    _ser: Any

    def _attach(self, name: Any, how: str, sizes: tuple, topic: tuple, trusted: bool,
                vetted: Optional[tuple] = None) -> None:
        """Open or create the segment (how: "open", "create", "open_or_create"),
        check its kind, owner and the options given explicitly, set the
        serializer; sizes: (capacity, max_message, max_processes, mode), each
        possibly a _Default; topic: (is_topic, overflow, max_subs).  name: a
        name, None (a new anonymous segment), or, when a pickled anonymous
        handle is rebuilt, its (DupFd, name)."""
        capacity, max_message, max_processes, mode = (_given(v) for v in sizes)
        overflow, max_subs = _given(topic[1]), _given(topic[2])
        what = "topic" if topic[0] else "queue"
        # types and bounds first: a bad argument creates nothing
        _check_int("capacity", capacity, 1, _U63)
        if max_message is not None:
            _check_int("max_message", max_message, 1, _U63)
        _check_int("max_processes", max_processes, 1, 1024)
        _check_mode(mode)
        args = (capacity, max_message or 0, max_processes, mode,
                topic[0], 1 if overflow == "drop" else 0, max_subs)
        opened = True
        if isinstance(name, tuple):  # an anonymous segment handed down by our parent
            dupfd, name = name
            fd = dupfd.detach()
            try:
                self._seg = _core.Segment.open_fd(fd, name)
            finally:
                os.close(fd)
            path = None
            trusted = True  # the descriptor came from the process that started us
        elif name is None:
            # anonymous: a memfd, with no name anywhere, gone with the last
            # process that holds it however they all end (nothing to sweep)
            prefix = "fastq-topic" if topic[0] else "fastq"
            name = f"{prefix}-{os.getpid()}-{uuid.uuid4().hex[:16]}"
            path = None
            self._seg, opened = _core.Segment.create(None, *args), False
        else:
            path = segment_path(name)
            if how == "create":
                self._seg, opened = _core.Segment.create(path, *args), False
            elif how == "open":
                self._seg = _core.Segment.open(path)
            else:
                try:
                    self._seg = _core.Segment.open(path)
                except FileNotFoundError:
                    try:
                        self._seg, opened = _core.Segment.create(path, *args), False
                    except FileExistsError:  # lost a creation race: the winner's is complete
                        self._seg = _core.Segment.open(path)
        self._name = name
        self._path = path
        if opened and self._seg.is_topic != bool(topic[0]):
            self._seg.close()
            other = "Queue" if topic[0] else "Topic"
            raise ValueError(f"{path or name} is a {'queue' if topic[0] else 'topic'}, not a "
                             f"{what}: open it with fastq.{other}")
        if opened and not trusted:
            _check_trust(self._seg, path, what, vetted)
        if opened:
            self._check_agrees(what, sizes, topic)
        self._seg.set_serializer(
            None if isinstance(self._ser, RawSerializer) else self._ser.dumps, self._ser.loads,
            isinstance(self._ser, PickleSerializer))

    def _check_agrees(self, what: str, sizes: tuple, topic: tuple) -> None:
        """Refuse (ValueError, closing the segment) an option given explicitly
        that the existing segment contradicts: it would be ignored."""
        seg = self._seg
        capacity, max_message, max_processes, mode = sizes
        have = [("capacity", capacity, seg.capacity),
                ("max_message", max_message, seg.max_message),
                ("max_processes", max_processes, seg.max_processes),
                ("mode", mode, os.fstat(seg.fileno()).st_mode & 0o777)]
        if topic[0]:
            have += [("overflow", topic[1], "drop" if seg.is_drop else "block"),
                     ("max_subscribers", topic[2], seg.max_subscribers)]
        for opt, given, existing in have:
            if isinstance(given, _Default) or given is None:
                continue
            if opt == "capacity":  # the ring is the capacity rounded up (fq_create)
                same = existing >= given and (existing // 2 < given or existing == 4096)
            else:
                same = given == existing
            if not same:
                seg.close()
                shown = (oct(given), oct(existing)) if opt == "mode" else (given, existing)
                raise ValueError(
                    f"{opt}={shown[0]!r} was given, but the existing {what} {self._path} has "
                    f"{opt}={shown[1]!r}: pass the same value, or leave {opt} out to use "
                    "the existing one")

    @property
    def capacity(self) -> int:
        """Ring size in bytes."""
        return self._seg.capacity

    @property
    def max_message(self) -> int:
        """Largest message accepted, in bytes (after serialization)."""
        return self._seg.max_message

    @property
    def name(self) -> str:
        """The queue's or topic's name."""
        return self._name

    @property
    def path(self) -> Optional[str]:
        """The segment file; None for an anonymous queue (it has none)."""
        return self._path

    @property
    def closed(self) -> bool:
        """True once :meth:`close` was called."""
        return self._seg.closed

    def shutdown(self, immediate: bool = False) -> None:
        """Shut the segment down for every process, as ``queue.Queue.shutdown``.

        Later puts raise ``ShutDown``; gets return what is left, then raise
        ``ShutDown`` (at once if ``immediate``); blocked callers wake.  What
        is left includes messages that may still come back: held by a killed
        consumer (gets wait for recovery) or unacknowledged in another
        process; this handle's own unsettled deliveries do not count.
        """
        self._seg.shutdown(immediate)

    def is_shutdown(self) -> bool:
        """True once any process shut the segment down."""
        return self._seg.is_shutdown()

    def reset_shutdown(self) -> None:
        """Undo :meth:`shutdown`, for every process: puts are accepted again
        and gets wait for messages again (what the queue still holds stays).

        A shutdown lives in the segment, so a named queue stays shut down for
        every later run until one resets it.  Call it when no process relies
        on the queue staying shut down (before starting a new run's
        producers and consumers, say).
        """
        self._seg.reset_shutdown()

    def flush(self) -> None:
        """Write the segment to stable storage (``msync``).

        Without it, messages on a disk path survive the exit or kill of every
        process (the file is the segment) but not a power loss or OS crash.
        Useless (and cheap) for queues in ``/dev/shm``.
        """
        self._seg.flush()

    def recover(self) -> bool:
        """Repair now what processes killed mid-call left behind (waiting
        callers do this by themselves); True if anything was repaired."""
        return self._seg.recover()

    def close(self) -> None:
        """Detach this handle.  Other processes (and other handles of this
        process) keep the segment: an anonymous one goes away with the last
        process that holds it, a named one stays until :meth:`unlink`."""
        self._seg.close()

    def unlink(self) -> None:
        """Remove the segment file; processes attached keep using it.  An
        anonymous segment has no file: nothing to do."""
        if self._path is None:
            return
        try:
            os.unlink(self._path)
        except FileNotFoundError:
            pass

    def __enter__(self: _H) -> _H:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()



class Queue(_Handle, QueueAio, Generic[_T]):
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
        unacknowledged at once (1 to 7, default 4).
    trusted : bool
        Open a segment even if another user owns it or can write it.  By
        default that is refused (``PermissionError``): whoever can write a
        segment can make its readers unpickle anything, that is, run code.
    wait : {"adaptive", "spin", "sleep"}
        How this handle's blocking calls wait (see "Wait strategies" in the
        README): ``"adaptive"`` spins briefly, as long as spinning has been
        paying off, then sleeps; ``"spin"`` never sleeps (lowest latency, a
        core busy while it waits); ``"sleep"`` sleeps at once (least CPU).
        Awaitable calls never spin.

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
                 trusted: bool = False, wait: str = "adaptive", _how: str = "open_or_create",
                 _vetted: Optional[tuple] = None):
        strategy = _strategy(wait)
        self._ser_spec = serializer
        self._ser = _make_serializer(serializer)
        self._trusted = trusted
        _check_int("prefetch", prefetch, 1, _core.MAX_PREFETCH)
        self._prefetch = prefetch
        self._attach(name, _how, (capacity, max_message, max_processes, mode), (0, "", 0),
                     trusted, _vetted)
        # The hot calls go straight to the compiled segment: a Python-level
        # wrapper would double their cost.  The methods below document them.
        seg = self._seg
        seg.prefetch = prefetch
        seg.strategy = strategy
        self.put, self.put_nowait, self.get, self.get_nowait = (
            seg.put, seg.put_nowait, seg.get, seg.get_nowait)
        self.put_many, self.get_many, self.receive = seg.put_many, seg.get_many, seg.receive

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

    def __reduce__(self):
        spec = self._ser_spec if isinstance(self._ser_spec, str) else self._ser.impl
        return (_reopen, (_where(self, "queue"), self._name, spec, self._trusted,
                          self._prefetch, _vetted(self)))

    # ---- producer -----------------------------------------------------------

    def put(self, obj: _T, block: bool = True, timeout: Optional[float] = None) -> None:
        """Put obj at the tail of the queue.

        Blocks while the queue is full (up to ``timeout`` seconds, then
        ``queue.Full``); with ``block=False`` raises ``Full`` at once.  Raises
        ``MessageTooLarge`` if the serialized message exceeds ``max_message``
        and ``ShutDown`` after :meth:`shutdown`.
        """
        self._seg.put(obj, block, timeout)

    def put_nowait(self, obj: _T) -> None:
        """``put(obj, block=False)``."""
        self._seg.put(obj, False, None)

    def put_many(self, items: Iterable[_T], block: bool = True,
                 timeout: Optional[float] = None) -> int:
        """Put every item, in order, claiming ring space for many at once.

        Returns the number of items put.  If the queue stays full past the
        timeout, raises ``Full``; the items before the one that did not fit
        have been put, in order.
        """
        return self._seg.put_many(items, block, timeout)

    # ---- consumer -----------------------------------------------------------

    def get(self, block: bool = True, timeout: Optional[float] = None) -> _T:
        """Remove and return the message at the head of the queue.

        Blocks while the queue is empty (up to ``timeout`` seconds, then
        ``queue.Empty``).  After :meth:`shutdown` it drains what is left, then
        raises ``ShutDown``.
        """
        return self._seg.get(block, timeout)

    def get_nowait(self) -> _T:
        """``get(block=False)``."""
        return self._seg.get(False, None)

    def get_many(self, max_messages: int = 1024, block: bool = True,
                 timeout: Optional[float] = None, max_bytes: int = 1 << 20) -> List[_T]:
        """Remove and return a list of 1 to ``max_messages`` messages.

        Waits like :meth:`get` for the first; returns whatever else is
        already there, without waiting for more, up to ``max_bytes`` of
        serialized payload in all (the first message is returned whatever its
        size: for large messages, each call returns one; a message given back
        by ``nack()`` or by recovery comes alone).  The batch leaves
        the queue whole or not at all, even if this process is killed inside
        the call; if ``loads()`` fails on a message, the ones before it are
        returned and the rest stay in the queue.
        """
        return self._seg.get_many(max_messages, block, timeout, max_bytes)

    def receive(self, block: bool = True, timeout: Optional[float] = None) -> "_core.Delivery":
        """Take a message with acknowledged (at-least-once) delivery.

        Returns a :class:`fastq.Delivery` whose ``value`` is the message.  It
        stays in the queue, invisible to other consumers, until ``ack()``;
        ``nack(requeue=True)`` gives it back.  If this process dies before
        acking, the message goes to another consumer within the recovery
        bound, with ``redelivered`` true.  ``with q.receive() as d:`` acks on
        success and gives the message back on an exception.

        If ``prefetch`` deliveries of this handle are already unacknowledged,
        waits until another thread acks or nacks one (threads may share a
        handle), within ``timeout`` (then ``queue.Empty``); with
        ``block=False`` raises ``RuntimeError`` (the caller may hold them
        all).  ``close()`` from another thread makes it raise ``ValueError``.
        An unacknowledged delivery pins its place in the ring: producers cannot
        reuse space past it, so a queue fills if one is held for too long.
        """
        return self._seg.receive(block, timeout)

    def __iter__(self) -> Iterator[_T]:
        """Messages (as :meth:`get`) until the queue is shut down and drained."""
        get = self.get
        while True:
            try:
                yield get()
            except ShutDown:
                return

    # ---- status and lifecycle -----------------------------------------------

    def qsize(self) -> int:
        """Number of messages :meth:`get` can take now (exact when no call is
        in flight).  Messages held by unacknowledged deliveries are not
        counted (see :meth:`unacked`); after ``shutdown(immediate=True)``
        it is 0, as for ``queue.Queue``."""
        return self._seg.qsize()

    def empty(self) -> bool:
        """True if :meth:`get` has nothing to take now (``qsize() == 0``)."""
        return self._seg.qsize() == 0

    def unacked(self) -> int:
        """Messages taken from the queue and not settled yet, in every
        process: deliveries of :meth:`receive` not yet acked or nacked, gets
        in progress, and those held by a killed consumer until recovery gives
        them back (they then count in :meth:`qsize` again)."""
        return self._seg.unacked_count()

    def full(self) -> bool:
        """True if not even the smallest message would fit now."""
        return self._seg.full()

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
        # get() takes a delivery: the bound method of Queue is replaced
        self.get = self._get_task  # type: ignore[method-assign]
        self.get_nowait = self._get_task_nowait  # type: ignore[method-assign]
        self.get_many = self._no_get_many  # type: ignore[method-assign]

    def _get_task(self, block: bool = True, timeout: Optional[float] = None) -> _T:
        d = self._seg.receive(block, timeout)
        self._tasks.append(d)
        return d.value

    def _get_task_nowait(self) -> _T:
        return self._get_task(False)

    def _no_get_many(self, *args: Any, **kwargs: Any) -> List[_T]:
        raise NotImplementedError("JoinableQueue.get_many(): get tasks one at a time "
                                  "(each is done by its own task_done())")

    def get(self, block: bool = True, timeout: Optional[float] = None) -> _T:
        """Take a task (as :meth:`Queue.get`); call :meth:`task_done` when it
        is done."""
        return self._get_task(block, timeout)

    def get_nowait(self) -> _T:
        """``get(block=False)``."""
        return self._get_task(False)

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
        while self._seg.unfinished():
            now = time.monotonic()
            if deadline is not None and now >= deadline:
                return False
            if now - last_recover >= 0.2:
                self._seg.recover()
                last_recover = now
            nap = min(nap * 2, 0.05)
            time.sleep(nap if deadline is None else max(0.0, min(nap, deadline - now)))
        return True

    def __reduce__(self):
        fn, args = super().__reduce__()
        return fn, args + (JoinableQueue,)


def _reopen(where: Any, name: str, serializer: Any, trusted: bool = False,
            prefetch: int = 4, vetted: Optional[tuple] = None,
            cls: Any = None) -> "Queue[Any]":
    cls = Queue if cls is None else cls
    if isinstance(where, str):
        return cls.open(where, serializer=serializer, trusted=trusted, prefetch=prefetch,
                        _vetted=vetted)
    return cls((where, name), serializer=serializer, prefetch=prefetch, _how="open")

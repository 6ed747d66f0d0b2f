"""The segment a Queue or Topic maps, on the Python side: its options,
the checks before a process trusts it (owner, mode, agreeing options), how
a handle is handed to another process, and SegmentHandle, the lifecycle
that fastq.Queue and fastq.Topic share (attach, name, unlink).  The
compiled segment (fastq._core.Segment) is the other base of both."""
from __future__ import annotations

import os
import stat
import uuid
from multiprocessing import context, reduction
from typing import TYPE_CHECKING, Any, Iterator, List, Optional, Tuple, TypeVar, cast

from . import _core
from ._errors import ShutDown
from ._naming import segment_path
from ._serializers import bind_serializer, make_serializer
from ._stats import Stats, read_stats

#: 1 MiB: a container's default /dev/shm (64 MB) holds dozens of such queues,
#: a ring this size stays in the CPU's caches, and it holds messages of up to
#: 512 KiB; a larger message raises MessageTooLarge naming the capacity that
#: would take it.
DEFAULT_CAPACITY = 1 << 20


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


def _wait_name(strategy: int) -> str:
    """The wait= name of a FQ_STRATEGY_* (what a pickled handle passes on)."""
    for k, v in _core.STRATEGIES.items():
        if v == strategy:
            return k
    return "adaptive"


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


# ---- trust and inheritance ----------------------------------------------------


def _check_trust(seg: Any, path: Optional[str], what: str, vetted: Optional[tuple] = None) -> None:
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


def _where(handle: "SegmentHandle", what: str) -> Any:
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
    return reduction.DupFd(handle.fileno())


def _vetted(handle: "SegmentHandle") -> tuple:
    st = os.fstat(handle.fileno())
    return (st.st_dev, st.st_ino)


#: the bytes of a segment's header that no other creation repeats: salt
#: (64 random bits) and created_ns, at offsets 64..80 (csrc/fq_layout.h);
#: both are written once, by the creator, before the file has a name
_CREATION = slice(64, 80)


def _file_identity(fd: int) -> Optional[tuple]:
    """(st_dev, st_ino, salt and created_ns as bytes) of the segment file
    open as fd; None if fd is no regular file of a segment's size.  The
    inode number alone names no file for good: once a file is freed (no
    name, descriptor or mapping left) the filesystem gives its number to a
    new file (ext4 at once), possibly a segment created under the same name;
    the bytes read from the file tell that one apart.  They are only
    compared: whatever the file holds, an unequal identity is another file."""
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode):
        return None
    try:
        head = os.pread(fd, _CREATION.stop, 0)
    except OSError:
        return None
    if len(head) != _CREATION.stop:
        return None
    return (st.st_dev, st.st_ino, head[_CREATION])


def iterate(get: Any) -> Iterator[Any]:
    """get() until it raises ShutDown: ``for item in q`` (a Queue, a
    Subscription)."""
    while True:
        try:
            yield get()
        except ShutDown:
            return


_H = TypeVar("_H", bound="SegmentHandle")

# defaults of the size options: told apart from the same values given explicitly
_CAPACITY: Any = _Default(DEFAULT_CAPACITY)
_MODE: Any = _Default(0o600)
_MAX_PROCESSES: Any = _Default(64)


if TYPE_CHECKING:  # the compiled handle every SegmentHandle is mixed into
    _Compiled = _core.Segment
else:
    _Compiled = object


class SegmentHandle(_Compiled):
    """What a Queue and a Topic share on the Python side: attaching their
    segment (the compiled base class, _core.QueueSegment or
    _core.TopicSegment, is the segment handle itself), its name and file."""

    _name: str
    _path: Optional[str]
    _ser: Any

    def _options(self, serializer: Any, trusted: bool, wait: Any) -> int:
        """The options every handle takes before attaching: the serializer
        (kept as given, for pickling into children), trust; returns the wait
        strategy (set after attaching)."""
        strategy = _strategy(wait)
        self._ser_spec = serializer
        self._ser = make_serializer(serializer)
        self._trusted = trusted
        return strategy

    def _attach(self, name: Any, how: str, sizes: tuple, topic: tuple, trusted: bool,
                vetted: Optional[tuple] = None, temporary: bool = False) -> None:
        """Open or create the segment (how: "open", "create", "open_or_create";
        "inspect": open it only to read, as the operators' tools do, see
        Segment._open),
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
        _check_int("max_processes", max_processes, 1, _core.MAX_SLOTS)
        _check_mode(mode)
        args = (capacity, max_message or 0, max_processes, mode,
                topic[0], 1 if overflow == "drop" else 0, max_subs, 1 if temporary else 0)
        opened = True
        if isinstance(name, tuple):  # an anonymous segment handed down by our parent
            dupfd, name = name
            fd = dupfd.detach()
            try:
                self._open_fd(fd, name)
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
            self._create(None, *args)
            opened = False
        else:
            path = segment_path(name)
            if how == "create":
                self._create(path, *args)
                opened = False
            elif how in ("open", "inspect"):
                self._open(path, sweep=how == "open")
            else:
                try:
                    self._open(path)
                except FileNotFoundError:
                    try:
                        self._create(path, *args)
                        opened = False
                    except FileExistsError:  # lost a creation race: the winner's is complete
                        self._open(path)
        self._name = name
        self._path = path
        # the file this handle maps, for unlink(): the name may come to
        # another segment's file (removed, then created again), even one
        # with the same inode number (see _file_identity)
        self._file_id = _file_identity(self.fileno()) if path is not None else None
        if opened and self.is_topic != bool(topic[0]):
            self.close()
            other = "Queue" if topic[0] else "Topic"
            raise ValueError(f"{path or name} is a {'queue' if topic[0] else 'topic'}, not a "
                             f"{what}: open it with fastq.{other}")
        if opened and not trusted:
            _check_trust(self, path, what, vetted)
        if opened:
            self._check_agrees(what, sizes, topic)
        bind_serializer(self, self._ser)

    def _check_agrees(self, what: str, sizes: tuple, topic: tuple) -> None:
        """Refuse (ValueError, closing the segment) an option given explicitly
        that the existing segment contradicts: it would be ignored."""
        capacity, max_message, max_processes, mode = sizes
        have: List[Tuple[str, Any, Any]] = [
            ("capacity", capacity, self.capacity),
            ("max_message", max_message, self.max_message),
            ("max_processes", max_processes, self.max_processes),
            ("mode", mode, os.fstat(self.fileno()).st_mode & 0o777)]
        if topic[0]:  # a topic's handle
            t = cast(_core.TopicSegment, self)
            have += [("overflow", topic[1], "drop" if t.is_drop else "block"),
                     ("max_subscribers", topic[2], t.max_subscribers)]
        for opt, given, existing in have:
            if isinstance(given, _Default) or given is None:
                continue
            if opt == "capacity":  # the ring is the capacity rounded up (fq_create)
                same = existing >= given and (existing // 2 < given
                                               or existing == _core.MIN_CAPACITY)
            else:
                same = given == existing
            if not same:
                self.close()
                shown = (oct(given), oct(existing)) if opt == "mode" else (given, existing)
                raise ValueError(
                    f"{opt}={shown[0]!r} was given, but the existing {what} {self._path} has "
                    f"{opt}={shown[1]!r}: pass the same value, or leave {opt} out to use "
                    "the existing one")

    @property
    def name(self) -> str:
        """The queue's or topic's name."""
        return self._name

    @property
    def path(self) -> Optional[str]:
        """The segment file; None for an anonymous queue (it has none)."""
        return self._path

    def stats(self) -> "Stats":
        """The counters kept in the segment, for every process (a
        :class:`fastq.Stats`; ``fastq stat NAME`` prints the same)."""
        return read_stats(self)

    def unlink(self) -> None:
        """Remove the segment file; processes attached keep using it.  An
        anonymous segment has no file: nothing to do.  Nor is there when the
        name is gone, or names another segment by now (this one's was
        removed and a new one created under the same name): that one is
        left alone, even if the filesystem gave it this one's inode number
        (it is told by the creation's random salt and time in its header,
        read through the name; unlink() works after close() too).  (The
        check and the removal are two steps: a file put under the name
        between them, by another unlink and create, is removed; they are not
        atomic.)"""
        if self._path is None:
            return
        try:
            fd = os.open(self._path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
        except OSError:
            # gone, or a name we cannot open (a socket, another user's file):
            # not our segment's file, which every user of it can open
            return
        try:
            same = _file_identity(fd) == self._file_id
        finally:
            os.close(fd)
        if not same:
            return
        try:
            os.unlink(self._path)
        except FileNotFoundError:
            pass

    def __enter__(self: _H) -> _H:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def _reduce_args(self, what: str) -> tuple:
        """What a pickled handle is rebuilt from: where it reopens (see
        _where), its name, serializer and trust, the file it had vetted, and
        its wait= strategy."""
        spec = self._ser_spec if isinstance(self._ser_spec, str) else self._ser.impl
        return (_where(self, what), self._name, spec, self._trusted, _vetted(self),
                _wait_name(self.strategy))

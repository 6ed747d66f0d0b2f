"""fastq.Topic and fastq.Subscription: publish once, every subscription
receives (the design is in csrc/fq_topic.c and the README).  The hot
methods are the compiled base classes' (fastq._core.TopicSegment for
publish; the subscription's members for get and receive)."""
from __future__ import annotations

import functools
import hashlib
import os
import uuid
from typing import TYPE_CHECKING, Any, Iterator, List, NamedTuple, Optional, Sequence, Tuple, Union

from . import _core
from ._aio import SubscriptionAio, TopicAio, wake_closed
from ._errors import SubscriberLimit
from ._segment import (DEFAULT_CAPACITY, _CAPACITY, _MAX_PROCESSES, _MODE, SegmentHandle,
                       _check_int, _Default, _given, iterate)

__all__ = ["Topic", "Subscription", "SubscriberInfo"]

_KIND_ANON, _KIND_GROUP, _KIND_DURABLE = _core.SUB_ANON, _core.SUB_GROUP, _core.SUB_DURABLE
_MUST_EXIST = _core.SUB_MUST_EXIST
_FLAG_DURABLE, _FLAG_GROUP = _core.GRP_DURABLE, _core.GRP_GROUP
_STARTS = {"latest": _core.START_LATEST, "earliest": _core.START_EARLIEST}
#: most unacknowledged deliveries per Subscription (each holds a subscriber
#: entry); a Queue handle's bound is _core.MAX_PREFETCH, a process's lanes
MAX_PREFETCH = _core.SUB_MAX_PREFETCH
# defaults, told apart from the same values given explicitly (see _queue._Default)
_OVERFLOW: Any = _Default("block")
_MAX_SUBSCRIBERS: Any = _Default(64)


class SubscriberInfo(NamedTuple):
    """One row of :meth:`Topic.subscribers`."""

    name: Optional[str]
    """The durable name, or None."""
    group: Optional[str]
    """The group name, or None."""
    pid: Optional[int]
    """The subscriber's process; None for a durable name nobody is attached to."""
    alive: bool
    """Whether that process is alive (a dead one is reclaimed by recovery)."""
    position: int
    """Byte position of its group's cursor in the topic's log."""
    lag: int
    """Messages published that its group is still to deliver (see
    ``Subscription.lag``)."""


class Topic(_core.TopicSegment, SegmentHandle, TopicAio):
    """Publish/subscribe in a shared-memory segment: every subscription
    receives every message published after it subscribed.

    One publish writes the message once, whatever the number of
    subscribers.  Subscriptions that share a ``group`` split its messages;
    a subscription with a ``name`` is durable (its position stays in the
    segment when its process closes it or dies).

    Parameters
    ----------
    name : str, optional
        As for :class:`fastq.Queue` (``None``: anonymous, gone with the last
        process that holds it).
    capacity : int
        Ring bytes when created (power of two, at least 4096; default 1 MiB).
    max_message : int, optional
        Largest serialized message; default and maximum ``capacity // 2 - 32``.
    overflow : {"block", "drop"}
        ``"block"``: a publisher waits for the slowest live subscriber.
        ``"drop"``: a publisher never waits for subscribers; a subscriber
        that is lapped skips to the oldest retained message and counts what
        it lost in :attr:`Subscription.dropped`.  Drop topics have no groups
        and one subscriber per durable name.
    max_subscribers : int
        Subscriber entries (and groups) the topic can hold (default 64).
    serializer, mode, max_processes, trusted, wait, temporary
        As for :class:`fastq.Queue` (``wait``: for publishing, and for the
        blocking calls of this handle's subscriptions).

    Examples
    --------
    >>> t = fastq.Topic()
    >>> s = t.subscribe()
    >>> t.publish({"px": 1.5}); s.get()
    {'px': 1.5}
    """

    def __init__(self, name: "Optional[str | os.PathLike[str]]" = None,
                 capacity: int = _CAPACITY, *,
                 max_message: Optional[int] = None, overflow: str = _OVERFLOW,
                 max_subscribers: int = _MAX_SUBSCRIBERS, serializer: Any = "pickle",
                 mode: int = _MODE, max_processes: int = _MAX_PROCESSES, trusted: bool = False,
                 wait: str = "adaptive", temporary: bool = False,
                 _how: str = "open_or_create",
                 _vetted: Optional[tuple] = None):
        strategy = self._options(serializer, trusted, wait)
        if _given(overflow) not in ("block", "drop"):
            raise ValueError(f'overflow must be "block" or "drop", not {overflow!r}')
        _check_int("max_subscribers", _given(max_subscribers), 1, _core.MAX_SUBS)
        self._attach(name, _how, (capacity, max_message, max_processes, mode),
                     (1, overflow, max_subscribers), trusted, _vetted, temporary)
        self.strategy = strategy

    @classmethod
    def create(cls, name: Optional[str] = None, capacity: int = DEFAULT_CAPACITY,
               **kwargs: Any) -> "Topic":
        """Create a new topic; ``FileExistsError`` if the name exists."""
        return cls(name, capacity, _how="create", **kwargs)

    @classmethod
    def open(cls, name: str, **kwargs: Any) -> "Topic":
        """Attach to an existing topic (``overflow`` and sizes come from it;
        options given must agree with it: ``ValueError``)."""
        return cls(name, _how="open", **kwargs)

    def close(self) -> None:
        _core.TopicSegment.close(self)
        wake_closed(self)  # tasks awaiting on it (or its subscriptions) raise ValueError

    close.__doc__ = _core.TopicSegment.close.__doc__

    def __reduce__(self):
        return (_reopen, self._reduce_args("topic"))

    # ---- subscribing --------------------------------------------------------

    def subscribe(self, start: str = "latest", *, group: Optional[str] = None,
                  name: Optional[str] = None, prefetch: int = 1,
                  subjects: "Union[str, Sequence[str], None]" = None) -> "Subscription":
        """A new subscription.

        ``start="latest"``: messages published after this call returns;
        ``"earliest"``: from the oldest message the topic still retains.
        ``group``: join (or create) that group: its members split its
        messages, each to exactly one of them.  ``name``: a durable
        subscription: if the name exists, resume where it left off (``start``
        is ignored); several live subscribers of one name share it like a
        group (not in a drop topic).  Raises ``SubscriberLimit`` when every
        entry is taken.

        ``prefetch``: the most deliveries from :meth:`Subscription.receive`
        the subscription may hold unacknowledged at once (1 to 64, and at
        most ``max_subscribers``; default 1).  Each one in flight holds an
        entry of the topic's subscriber table: the subscription takes one
        more entry (in its own group) the first time it needs it and keeps
        it until :meth:`Subscription.close`.  A drop topic allows only 1.

        ``subjects``: a pattern or a list of them (NATS semantics: tokens
        separated by ``.``, ``*`` matches any one token, ``>`` as the last
        token matches one or more; ``"orders.*.created"``, ``"orders.>"``):
        the subscription receives only the messages published with a
        matching subject; the others are passed over without being
        deserialized (no unpickling).  ValueError for an invalid pattern
        (empty tokens, ``>`` not last, wildcards inside a token).  All the
        members of a group (and the subscribers of a durable name) share one
        filter: joining with other ``subjects`` than its live members raises
        ValueError.  ``lag`` counts every message the group has not passed
        yet, matching or not.
        """
        if not isinstance(prefetch, int) or isinstance(prefetch, bool):
            raise ValueError(f"prefetch must be an int, not {prefetch!r}")
        top = min(MAX_PREFETCH, self.max_subscribers)
        if not 1 <= prefetch <= top:
            raise ValueError(f"prefetch must be in 1..{top} (at most {MAX_PREFETCH}, and at "
                             f"most the topic's max_subscribers), not {prefetch!r}")
        if prefetch > 1 and self.is_drop:
            raise ValueError('a topic with overflow="drop" allows prefetch=1 only: each '
                             "unacknowledged delivery needs a group member of its own, and "
                             "a drop topic's subscription is one member (it counts its "
                             "losses)")
        if start not in _STARTS:
            raise ValueError(f'start must be "latest" or "earliest", not {start!r}')
        if group is not None and name is not None:
            raise ValueError("a subscription has a group or a durable name, not both")
        for what, v in (("group", group), ("name", name)):
            if v is not None and (not isinstance(v, str) or not v
                                  or len(v.encode()) > _core.GROUP_NAME_MAX or "\0" in v):
                raise ValueError(f"{what} must be a non-empty str of at most "
                                 f"{_core.GROUP_NAME_MAX} bytes, not {v!r}")
        if group is not None and self.is_drop:
            raise ValueError('a topic with overflow="drop" has no consumer groups '
                             "(a lapped group could not count its losses per member)")
        patterns = _patterns(subjects)
        if name is not None:
            key, kind = name, _KIND_DURABLE
        elif group is not None:
            key, kind = group, _KIND_GROUP
        else:
            key, kind = f"~{os.getpid()}-{uuid.uuid4().hex[:20]}", _KIND_ANON
        return Subscription(self, key, kind, _STARTS[start], prefetch, patterns)

    def forget(self, name: str) -> bool:
        """Remove the durable subscription ``name``, its position and the
        messages it had not finished, so that it stops holding messages (and
        publishers).  True if it existed; ``RuntimeError`` while a subscriber
        of that name is attached."""
        if not isinstance(name, str):
            raise TypeError(f"name must be a str, not {type(name).__name__}")
        if "\0" in name:
            raise ValueError(f"name must not contain a NUL byte: {name!r}")
        return self._forget(name)

    def subscribers(self) -> List[SubscriberInfo]:
        """One row per subscriber entry (and per durable name nobody is
        attached to).  A subscription with ``prefetch`` > 1 shows one row for
        each entry it holds (up to ``prefetch``), identical but for their
        number: the rows count the entries that ``max_subscribers`` bounds."""
        rows = []
        for key, flags, pid, kind, alive, pos, lag, *_ in self._subscribers():
            rows.append(SubscriberInfo(
                name=key if flags & _FLAG_DURABLE else None,
                group=key if flags & _FLAG_GROUP else None,
                pid=pid or None, alive=alive, position=pos, lag=lag))
        return rows

    # ---- status and lifecycle -----------------------------------------------

    @property
    def overflow(self) -> str:
        """``"block"`` or ``"drop"``."""
        return "drop" if self.is_drop else "block"

    def __repr__(self) -> str:
        state = "closed" if self.closed else f"capacity={self.capacity} overflow={self.overflow}"
        return f"<fastq.Topic {self._name!r} {state}>"


class Subscription(_core.SubscriptionBase, SubscriptionAio):
    """A subscription to a :class:`Topic` (from :meth:`Topic.subscribe`).

    A subscription is for one thread at a time (its deliveries may be acked
    or nacked from any thread; a nacked one comes back at once to a
    :meth:`receive` waiting in another thread).  :meth:`close` (or closing the
    topic) from another thread succeeds: a call waiting in the subscription
    raises ``ValueError`` at once.  Pickled into another process, or inherited
    by a forked child (which joins at its first call), it becomes another
    member of the same group there, with the same ``prefetch`` (for a plain
    subscription: of its anonymous group, so both processes split its
    messages; for a durable name: a subscriber of that name).
    """

    def __init__(self, topic: Topic, key: str, kind: int, start: int, prefetch: int = 1,
                 patterns: Optional[Tuple[str, ...]] = None):
        self._topic = topic
        self._key, self._kind = key, kind & ~_MUST_EXIST
        self._prefetch = prefetch
        self._patterns = patterns
        self._member(_core_subscribe(topic, key, kind, start, patterns))

    def _member(self, sub: Any) -> None:
        """Use sub, a member of the group (a C entry that holds one claim at
        a time), and, for prefetch > 1, the pool grown from it."""
        pool = None
        if self._prefetch > 1:
            # a pool of members, joined as deliveries are held (no reference
            # to self: a dropped subscription leaves at once, not at a GC)
            pool = _core.SubscriberPool(sub, self._prefetch, functools.partial(
                _join_member, self._topic, self._key, self._kind, self._prefetch,
                os.getpid(), self._patterns))
        self._use(sub, pool)

    def _join(self) -> None:
        """In a forked child, at its first call (SubscriptionBase): join the
        group with a member of this process, as a pickled subscription does
        (so a subscription passed to a fork child in Process(args=...) works
        as under spawn)."""
        kind = self._kind | (_MUST_EXIST if self._kind == _KIND_ANON else 0)
        self._member(_core_subscribe(self._topic, self._key, kind, 0, self._patterns))

    if TYPE_CHECKING:  # the compiled methods, typed (docs: _core.SubscriptionBase)
        def get(self, block: bool = True, timeout: Optional[float] = None) -> Any: ...
        def get_nowait(self) -> Any: ...
        def get_many(self, max_messages: int = 1024, block: bool = True,
                     timeout: Optional[float] = None, max_bytes: int = 1 << 20) -> List[Any]: ...
        def receive(self, block: bool = True,
                    timeout: Optional[float] = None) -> "_core.Delivery": ...

    def __iter__(self) -> Iterator[Any]:
        """Messages until the topic is shut down (and drained)."""
        return iterate(self.get)

    # ---- status and lifecycle -----------------------------------------------------

    @property
    def prefetch(self) -> int:
        """The most unacknowledged deliveries this subscription may hold."""
        return self._prefetch

    @property
    def name(self) -> Optional[str]:
        """The durable name, or None."""
        return self._key if self._kind == _KIND_DURABLE else None

    @property
    def group(self) -> Optional[str]:
        """The group, or None."""
        return self._key if self._kind == _KIND_GROUP else None

    @property
    def topic(self) -> Topic:
        """The topic."""
        return self._topic

    @property
    def subjects(self) -> Optional[Tuple[str, ...]]:
        """The subject patterns it receives (None: every message)."""
        return self._patterns

    def close(self) -> None:
        _core.SubscriptionBase.close(self)
        wake_closed(self)  # tasks awaiting on it raise ValueError now

    close.__doc__ = _core.SubscriptionBase.close.__doc__

    def __enter__(self) -> "Subscription":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def __reduce__(self):
        return (_rejoin, (self._topic, self._key, self._kind, self._prefetch, self._patterns))

    def __repr__(self) -> str:
        what = {_KIND_ANON: "plain", _KIND_GROUP: f"group={self._key!r}",
                _KIND_DURABLE: f"name={self._key!r}"}[self._kind]
        if self._prefetch > 1:
            what += f" prefetch={self._prefetch}"
        state = "closed" if self.closed else f"lag={self.lag}"
        return f"<fastq.Subscription {what} of {self._topic.name!r} {state}>"


def _patterns(subjects: "Union[str, Sequence[str], None]") -> Optional[Tuple[str, ...]]:
    """subscribe()'s subjects, checked, as a sorted tuple without duplicates."""
    if subjects is None:
        return None
    if isinstance(subjects, str):
        subjects = [subjects]
    out = set()
    for p in subjects:
        if not isinstance(p, str):
            raise TypeError(f"subjects must be a str or a list of str, not one {type(p).__name__}")
        _core.check_subject(p, True)
        out.add(p)
    if not out:
        raise ValueError("subjects is empty: give at least one pattern (or None for all)")
    return tuple(sorted(out))


def _filter_key(patterns: Optional[Tuple[str, ...]]) -> int:
    """The key the members of a group compare (fq_sub_filter): 1 for no
    filter, else a digest of the patterns (never 0 or 1)."""
    if patterns is None:
        return 1
    d = hashlib.blake2b("\n".join(patterns).encode(), digest_size=8).digest()
    return max(2, int.from_bytes(d, "little"))


def _core_subscribe(topic: Topic, key: str, kind: int, start: int,
                    patterns: Optional[Tuple[str, ...]] = None) -> Any:
    cp = None if patterns is None else tuple(p.encode() for p in patterns)
    return topic._subscribe(key, kind, start, cp, _filter_key(patterns))


def _join_member(topic: Topic, key: str, kind: int, prefetch: int, pid: int,
                 patterns: Optional[Tuple[str, ...]], n: int) -> Any:
    """One more member of a subscription's group, for its pool of n members."""
    if os.getpid() != pid:
        raise RuntimeError("this subscription belongs to the process that subscribed; a "
                           "forked child cannot use it (pass it pickled: the child then "
                           "joins its group) or subscribe in the child")
    try:
        return _core_subscribe(topic, key, kind | _MUST_EXIST, 0, patterns)
    except SubscriberLimit as e:
        raise SubscriberLimit(
            f"{e}.  This subscription holds {n} unacknowledged "
            f"deliver{'y' if n == 1 else 'ies'}, one entry each, and needs one more entry "
            f"for another (prefetch={prefetch}): ack or nack one first") from None


def _rejoin(topic: Topic, key: str, kind: int, prefetch: int = 1,
            patterns: Optional[Tuple[str, ...]] = None) -> Subscription:
    # a plain subscription's anonymous group must still exist
    return Subscription(topic, key, kind | (_MUST_EXIST if kind == _KIND_ANON else 0), 0,
                        prefetch, patterns)


def _reopen(where: Any, name: str, serializer: Any, trusted: bool = False,
            vetted: Optional[tuple] = None, wait: str = "adaptive") -> Topic:
    if isinstance(where, str):
        return Topic.open(where, serializer=serializer, trusted=trusted, wait=wait,
                          _vetted=vetted)
    handed: Any = (where, name)  # _attach's private form of a name: (DupFd, name)
    return Topic(handed, serializer=serializer, wait=wait, _how="open")

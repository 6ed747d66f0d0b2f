"""fastq.Topic: publish once, every subscription receives (the public API
over fastq._core; the design is in csrc/fq_topic.c and the README)."""
from __future__ import annotations

import functools
import os
import uuid
import weakref
from typing import Any, Iterable, Iterator, List, NamedTuple, Optional

from . import _core
from ._aio import SubscriptionAio, TopicAio
from ._errors import ShutDown, SubscriberLimit
from ._queue import (DEFAULT_CAPACITY, _CAPACITY, _MAX_PROCESSES, _MODE, _check_int, _Default, _given, _Handle,
                     _make_serializer, _strategy, _vetted, _where)

__all__ = ["Topic", "Subscription", "SubscriberInfo"]

_KIND_ANON, _KIND_GROUP, _KIND_DURABLE, _MUST_EXIST = 0, 1, 2, 16
_FLAG_DURABLE, _FLAG_GROUP, _FLAG_ANON = 1, 2, 4
_STARTS = {"latest": 0, "earliest": 1}
#: most unacknowledged deliveries per Subscription (each holds a subscriber entry)
MAX_PREFETCH = 64
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


class Topic(_Handle, TopicAio):
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
    serializer, mode, max_processes, trusted, wait
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
                 wait: str = "adaptive", _how: str = "open_or_create",
                 _vetted: Optional[tuple] = None):
        strategy = _strategy(wait)
        self._ser_spec = serializer
        self._ser = _make_serializer(serializer)
        self._trusted = trusted
        if _given(overflow) not in ("block", "drop"):
            raise ValueError(f'overflow must be "block" or "drop", not {overflow!r}')
        _check_int("max_subscribers", _given(max_subscribers), 1, 4096)
        self._attach(name, _how, (capacity, max_message, max_processes, mode),
                     (1, overflow, max_subscribers), trusted, _vetted)
        seg = self._seg
        seg.strategy = strategy
        self.publish, self.publish_many = seg.put, seg.put_many

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

    def __reduce__(self):
        spec = self._ser_spec if isinstance(self._ser_spec, str) else self._ser.impl
        return (_reopen, (_where(self, "topic"), self._name, spec, self._trusted,
                          _vetted(self)))

    # ---- publishing ---------------------------------------------------------

    def publish(self, obj: Any, block: bool = True, timeout: Optional[float] = None) -> None:
        """Publish obj to every subscription.

        In an ``overflow="block"`` topic, waits while the slowest live
        subscriber's unread messages fill the ring (up to ``timeout``, then
        ``queue.Full``).  A ``"drop"`` topic never waits for subscribers.
        Raises ``MessageTooLarge`` and, after :meth:`shutdown`, ``ShutDown``.
        """
        self._seg.put(obj, block, timeout)

    def publish_nowait(self, obj: Any) -> None:
        """``publish(obj, block=False)``."""
        self._seg.put(obj, False, None)

    def publish_many(self, items: Iterable[Any], block: bool = True,
                     timeout: Optional[float] = None) -> int:
        """Publish every item in order (batched); returns how many."""
        return self._seg.put_many(items, block, timeout)

    # ---- subscribing --------------------------------------------------------

    def subscribe(self, start: str = "latest", *, group: Optional[str] = None,
                  name: Optional[str] = None, prefetch: int = 1) -> "Subscription":
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
        """
        if not isinstance(prefetch, int) or isinstance(prefetch, bool):
            raise ValueError(f"prefetch must be an int, not {prefetch!r}")
        top = min(MAX_PREFETCH, self._seg.max_subscribers)
        if not 1 <= prefetch <= top:
            raise ValueError(f"prefetch must be in 1..{top} (at most {MAX_PREFETCH}, and at "
                             f"most the topic's max_subscribers), not {prefetch!r}")
        if prefetch > 1 and self._seg.is_drop:
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
                                  or len(v.encode()) > 63 or "\0" in v):
                raise ValueError(f"{what} must be a non-empty str of at most 63 bytes, not {v!r}")
        if group is not None and self._seg.is_drop:
            raise ValueError('a topic with overflow="drop" has no consumer groups '
                             "(a lapped group could not count its losses per member)")
        if name is not None:
            key, kind = name, _KIND_DURABLE
        elif group is not None:
            key, kind = group, _KIND_GROUP
        else:
            key, kind = f"~{os.getpid()}-{uuid.uuid4().hex[:20]}", _KIND_ANON
        return Subscription(self, key, kind, _STARTS[start], prefetch)

    def forget(self, name: str) -> bool:
        """Remove the durable subscription ``name``, its position and the
        messages it had not finished, so that it stops holding messages (and
        publishers).  True if it existed; ``RuntimeError`` while a subscriber
        of that name is attached."""
        if not isinstance(name, str):
            raise TypeError(f"name must be a str, not {type(name).__name__}")
        if "\0" in name:
            raise ValueError(f"name must not contain a NUL byte: {name!r}")
        return self._seg.forget(name)

    def subscribers(self) -> List[SubscriberInfo]:
        """One row per subscriber entry (and per durable name nobody is
        attached to).  A subscription with ``prefetch`` > 1 shows one row for
        each entry it holds (up to ``prefetch``), identical but for their
        number: the rows count the entries that ``max_subscribers`` bounds."""
        rows = []
        for key, flags, pid, kind, alive, pos, lag, _got in self._seg.subscribers():
            rows.append(SubscriberInfo(
                name=key if flags & _FLAG_DURABLE else None,
                group=key if flags & _FLAG_GROUP else None,
                pid=pid or None, alive=alive, position=pos, lag=lag))
        return rows

    # ---- status and lifecycle -----------------------------------------------

    @property
    def overflow(self) -> str:
        """``"block"`` or ``"drop"``."""
        return "drop" if self._seg.is_drop else "block"

    @property
    def max_subscribers(self) -> int:
        """Subscriber entries the topic holds."""
        return self._seg.max_subscribers

    def shutdown(self, immediate: bool = False) -> None:
        """Shut the topic down for every process: publishes raise ``ShutDown``;
        subscriptions receive what is left, then raise ``ShutDown`` (at once
        if ``immediate``); iteration over a subscription ends."""
        self._seg.shutdown(immediate)

    def __repr__(self) -> str:
        state = "closed" if self.closed else f"capacity={self.capacity} overflow={self.overflow}"
        return f"<fastq.Topic {self._name!r} {state}>"


class Subscription(SubscriptionAio):
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

    def __init__(self, topic: Topic, key: str, kind: int, start: int, prefetch: int = 1):
        self._topic = topic
        self._key, self._kind = key, kind & ~_MUST_EXIST
        self._prefetch = prefetch
        self._member(_core_subscribe(topic, key, kind, start))
        _live.add(self)

    def _member(self, sub: Any) -> None:
        """Use sub, a member of the group (a C entry that holds one claim at
        a time), and the pool grown from it."""
        self._sub = sub
        if self._prefetch == 1:
            self._via = self._sub
        else:
            # a pool of members, joined as deliveries are held (no reference
            # to self: a dropped subscription leaves at once, not at a GC)
            self._via = _core.SubscriberPool(self._sub, self._prefetch, functools.partial(
                _join_member, self._topic, self._key, self._kind, self._prefetch,
                os.getpid()))
        # The hot calls go straight to the compiled object: a Python-level
        # wrapper would double their cost.  The methods below document them.
        via = self._via
        self.get, self.get_many, self.receive = via.get, via.get_many, via.receive

    def _forked(self) -> None:
        """In a forked child: the members are the parent's.  The first call
        joins the group with a member of this process, as a pickled
        subscription does (so a subscription passed to a fork child in
        Process(args=...) works as under spawn); until then nothing is done."""
        if self._sub.closed:
            return
        self.get, self.get_many, self.receive = self._join_get, self._join_get_many, \
            self._join_receive

    def _join(self) -> None:
        kind = self._kind | (_MUST_EXIST if self._kind == _KIND_ANON else 0)
        self._member(_core_subscribe(self._topic, self._key, kind, 0))

    def _join_get(self, *args: Any, **kwargs: Any) -> Any:
        self._join()
        return self.get(*args, **kwargs)

    def _join_get_many(self, *args: Any, **kwargs: Any) -> Any:
        self._join()
        return self.get_many(*args, **kwargs)

    def _join_receive(self, *args: Any, **kwargs: Any) -> Any:
        self._join()
        return self.receive(*args, **kwargs)

    # ---- receiving --------------------------------------------------------------

    def get(self, block: bool = True, timeout: Optional[float] = None) -> Any:
        """The next message.  Blocks while there is none (up to ``timeout``,
        then ``queue.Empty``); once the topic is shut down and this
        subscription has received everything, raises ``ShutDown``.  While
        ``prefetch`` deliveries are unacknowledged, raises ``RuntimeError``
        (see :meth:`receive`)."""
        return self._via.get(block, timeout)

    def get_nowait(self) -> Any:
        """``get(block=False)``."""
        return self.get(False, None)

    def get_many(self, max_messages: int = 1024, block: bool = True,
                 timeout: Optional[float] = None, max_bytes: int = 1 << 20) -> List[Any]:
        """1 to ``max_messages`` messages: waits like :meth:`get` for the
        first, then takes what is already there (up to ``max_bytes`` of
        payload in all; the first is returned whatever its size)."""
        return self._via.get_many(max_messages, block, timeout, max_bytes)

    def receive(self, block: bool = True, timeout: Optional[float] = None) -> "_core.Delivery":
        """The next message with acknowledged delivery (a :class:`fastq.Delivery`).

        Until ``ack()`` the message stays claimed by this subscription; if its
        process dies, it goes to another member of the group (or the next
        subscriber of a durable name) with ``redelivered`` true.
        ``nack(requeue=True)`` makes the next ``receive()`` (or ``get()``) of
        this subscription return it again (``redelivered``); closing the
        subscription leaves it to the group.  In an ``overflow="block"``
        topic an unacknowledged delivery holds publishers back once the ring
        fills.

        Up to ``prefetch`` deliveries (see :meth:`Topic.subscribe`) may be
        unacknowledged at once; they come in order and may be settled in any
        order, from any thread.  With ``prefetch`` of them unacknowledged,
        ``receive()``, ``get()`` and ``get_many()`` raise ``RuntimeError``
        (naming the bound) at once, without waiting: ack or nack one first.
        Each delivery in flight holds an entry of the topic's subscriber
        table: if the subscription needs one more entry and every one is
        taken, it raises ``SubscriberLimit`` (a ``RuntimeError``) and stays
        usable.  (Messages that ``get_many()`` gave back, after a message it
        could not deserialize or an interrupt, come one delivery at a time:
        until it is settled the next call raises ``RuntimeError``.)
        """
        return self._via.receive(block, timeout)

    def __iter__(self) -> Iterator[Any]:
        """Messages until the topic is shut down (and drained)."""
        get = self.get
        while True:
            try:
                yield get()
            except ShutDown:
                return

    # ---- status and lifecycle -----------------------------------------------------

    @property
    def prefetch(self) -> int:
        """The most unacknowledged deliveries this subscription may hold."""
        return self._prefetch

    @property
    def lag(self) -> int:
        """Messages published that this subscription's group is still to deliver:
        not taken yet, or given back (``nack()``, a member's ``close()`` or death);
        not a delivery received and not yet settled."""
        return self._sub.lag

    @property
    def dropped(self) -> int:
        """Messages this subscription lost to lapping (``overflow="drop"``;
        a message whose publisher was killed mid-publish counts too)."""
        return self._sub.dropped

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
    def closed(self) -> bool:
        """True once closed (or its topic handle was closed)."""
        return self._sub.closed

    def close(self) -> None:
        """Leave: a durable name keeps its position; a plain subscription's
        group goes away with its last member.  Unacknowledged deliveries go
        back to the group (redelivered to another member, or to the next
        subscriber of a durable name); every entry of the subscriber table
        the subscription held is freed.  May be called from any thread: a
        call waiting in the subscription raises ``ValueError`` at once (one
        in progress finishes, then the entry it used is freed)."""
        self._via.close()

    def __enter__(self) -> "Subscription":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def __reduce__(self):
        return (_rejoin, (self._topic, self._key, self._kind, self._prefetch))

    def __repr__(self) -> str:
        what = {_KIND_ANON: "plain", _KIND_GROUP: f"group={self._key!r}",
                _KIND_DURABLE: f"name={self._key!r}"}[self._kind]
        if self._prefetch > 1:
            what += f" prefetch={self._prefetch}"
        state = "closed" if self.closed else f"lag={self.lag}"
        return f"<fastq.Subscription {what} of {self._topic.name!r} {state}>"


#: open subscriptions of this process, told when it forks (see Subscription._forked)
_live: "weakref.WeakSet[Subscription]" = weakref.WeakSet()


def _after_fork_in_child() -> None:
    for sub in list(_live):
        sub._forked()


os.register_at_fork(after_in_child=_after_fork_in_child)


def _core_subscribe(topic: Topic, key: str, kind: int, start: int) -> Any:
    return topic._seg.subscribe(key, kind, start)


def _join_member(topic: Topic, key: str, kind: int, prefetch: int, pid: int, n: int) -> Any:
    """One more member of a subscription's group, for its pool of n members."""
    if os.getpid() != pid:
        raise RuntimeError("this subscription belongs to the process that subscribed; a "
                           "forked child cannot use it (pass it pickled: the child then "
                           "joins its group) or subscribe in the child")
    try:
        return _core_subscribe(topic, key, kind | _MUST_EXIST, 0)
    except SubscriberLimit as e:
        raise SubscriberLimit(
            f"{e}.  This subscription holds {n} unacknowledged "
            f"deliver{'y' if n == 1 else 'ies'}, one entry each, and needs one more entry "
            f"for another (prefetch={prefetch}): ack or nack one first") from None


def _rejoin(topic: Topic, key: str, kind: int, prefetch: int = 1) -> Subscription:
    # a plain subscription's anonymous group must still exist
    return Subscription(topic, key, kind | (_MUST_EXIST if kind == _KIND_ANON else 0), 0,
                        prefetch)


def _reopen(where: Any, name: str, serializer: Any, trusted: bool = False,
            vetted: Optional[tuple] = None) -> Topic:
    if isinstance(where, str):
        return Topic.open(where, serializer=serializer, trusted=trusted, _vetted=vetted)
    return Topic((where, name), serializer=serializer, _how="open")

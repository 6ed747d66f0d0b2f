"""fastq.Topic: publish once, every subscription receives (the public API
over fastq._core; the design is in csrc/fq_topic.c and the README)."""
from __future__ import annotations

import os
import uuid
from typing import Any, Iterable, Iterator, List, NamedTuple, Optional

from . import _core
from ._errors import ShutDown
from ._queue import DEFAULT_CAPACITY, _Handle, _make_serializer

__all__ = ["Topic", "Subscription", "SubscriberInfo"]

_KIND_ANON, _KIND_GROUP, _KIND_DURABLE, _MUST_EXIST = 0, 1, 2, 16
_FLAG_DURABLE, _FLAG_GROUP, _FLAG_ANON = 1, 2, 4
_STARTS = {"latest": 0, "earliest": 1}


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
    """Messages published that its group has not received yet."""


class Topic(_Handle):
    """Publish/subscribe in a shared-memory segment: every subscription
    receives every message published after it subscribed.

    One publish writes the message once, whatever the number of
    subscribers.  Subscriptions that share a ``group`` split its messages;
    a subscription with a ``name`` is durable (its position stays in the
    segment when its process closes it or dies).

    Parameters
    ----------
    name : str, optional
        As for :class:`fastq.Queue` (``None``: anonymous, removed when its
        creator closes it or exits).
    capacity : int
        Ring bytes when created (power of two, at least 4096).
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
    serializer, mode, max_processes, trusted
        As for :class:`fastq.Queue`.

    Examples
    --------
    >>> t = fastq.Topic()
    >>> s = t.subscribe()
    >>> t.publish({"px": 1.5}); s.get()
    {'px': 1.5}
    """

    def __init__(self, name: Optional[str] = None, capacity: int = DEFAULT_CAPACITY, *,
                 max_message: Optional[int] = None, overflow: str = "block",
                 max_subscribers: int = 64, serializer: Any = "pickle", mode: int = 0o600,
                 max_processes: int = 64, trusted: bool = False,
                 _how: str = "open_or_create"):
        self._ser_spec = serializer
        self._ser = _make_serializer(serializer)
        self._trusted = trusted
        if overflow not in ("block", "drop"):
            raise ValueError(f'overflow must be "block" or "drop", not {overflow!r}')
        if _how != "open" and (not isinstance(max_subscribers, int)
                               or not 1 <= max_subscribers <= 4096):
            raise ValueError(f"max_subscribers must be in 1..4096, not {max_subscribers!r}")
        self._attach(name, _how, (capacity, max_message, max_processes, mode),
                     (1, 1 if overflow == "drop" else 0, max_subscribers), trusted)
        seg = self._seg
        self.publish, self.publish_many = seg.put, seg.put_many

    @classmethod
    def create(cls, name: Optional[str] = None, capacity: int = DEFAULT_CAPACITY,
               **kwargs: Any) -> "Topic":
        """Create a new topic; ``FileExistsError`` if the name exists."""
        return cls(name, capacity, _how="create", **kwargs)

    @classmethod
    def open(cls, name: str, **kwargs: Any) -> "Topic":
        """Attach to an existing topic (``overflow`` and sizes come from it)."""
        kwargs.pop("capacity", None)
        kwargs.pop("overflow", None)
        return cls(name, _how="open", **kwargs)

    def __reduce__(self):
        spec = self._ser_spec if isinstance(self._ser_spec, str) else self._ser.impl
        return (_reopen, (self._path, spec, self._trusted))

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
                  name: Optional[str] = None) -> "Subscription":
        """A new subscription.

        ``start="latest"``: messages published after this call returns;
        ``"earliest"``: from the oldest message the topic still retains.
        ``group``: join (or create) that group: its members split its
        messages, each to exactly one of them.  ``name``: a durable
        subscription: if the name exists, resume where it left off (``start``
        is ignored); several live subscribers of one name share it like a
        group (not in a drop topic).  Raises ``SubscriberLimit`` when every
        entry is taken.
        """
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
        return Subscription(self, key, kind, _STARTS[start])

    def forget(self, name: str) -> bool:
        """Remove the durable subscription ``name``, its position and the
        messages it had not finished, so that it stops holding messages (and
        publishers).  True if it existed; ``RuntimeError`` while a subscriber
        of that name is attached."""
        return self._seg.forget(name)

    def subscribers(self) -> List[SubscriberInfo]:
        """One row per subscriber (and per durable name nobody is attached to)."""
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


class Subscription:
    """A subscription to a :class:`Topic` (from :meth:`Topic.subscribe`).

    A subscription is for one thread at a time.  Pickled into another
    process, it becomes another member of the same group there (for a plain
    subscription: of its anonymous group, so both processes split its
    messages; for a durable name: a subscriber of that name).
    """

    def __init__(self, topic: Topic, key: str, kind: int, start: int):
        self._topic = topic
        self._key, self._kind = key, kind & ~_MUST_EXIST
        self._sub = _core_subscribe(topic, key, kind, start)
        sub = self._sub
        self.get, self.get_many, self.receive = sub.get, sub.get_many, sub.receive

    def get(self, block: bool = True, timeout: Optional[float] = None) -> Any:
        """The next message.  Blocks while there is none (up to ``timeout``,
        then ``queue.Empty``); once the topic is shut down and this
        subscription has received everything, raises ``ShutDown``."""
        return self._sub.get(block, timeout)

    def get_nowait(self) -> Any:
        """``get(block=False)``."""
        return self._sub.get(False, None)

    def get_many(self, max_messages: int = 1024, block: bool = True,
                 timeout: Optional[float] = None) -> List[Any]:
        """1 to ``max_messages`` messages: waits like :meth:`get` for the
        first, then takes what is already there (up to 1 MiB in all)."""
        return self._sub.get_many(max_messages, block, timeout)

    def receive(self, block: bool = True, timeout: Optional[float] = None) -> "_core.Delivery":
        """The next message with acknowledged delivery (a :class:`fastq.Delivery`).

        Until ``ack()`` the message stays claimed by this subscription; if its
        process dies, it goes to another member of the group (or the next
        subscriber of a durable name) with ``redelivered`` true.
        ``nack(requeue=True)`` makes the next ``receive()`` of this
        subscription return it again (``redelivered``); closing the
        subscription leaves it to the group.  One delivery at a time: calling
        ``receive()`` or ``get()`` while one is unacknowledged raises
        ``RuntimeError``.  In an ``overflow="block"`` topic an unacknowledged
        delivery holds publishers back once the ring fills.
        """
        return self._sub.receive(block, timeout)

    def __iter__(self) -> Iterator[Any]:
        """Messages until the topic is shut down (and drained)."""
        get = self._sub.get
        while True:
            try:
                yield get()
            except ShutDown:
                return

    @property
    def lag(self) -> int:
        """Messages published that this subscription's group has not received."""
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
        group goes away with its last member."""
        self._sub.close()

    def __enter__(self) -> "Subscription":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def __reduce__(self):
        return (_rejoin, (self._topic, self._key, self._kind))

    def __repr__(self) -> str:
        what = {_KIND_ANON: "plain", _KIND_GROUP: f"group={self._key!r}",
                _KIND_DURABLE: f"name={self._key!r}"}[self._kind]
        state = "closed" if self.closed else f"lag={self.lag}"
        return f"<fastq.Subscription {what} of {self._topic.name!r} {state}>"


def _core_subscribe(topic: Topic, key: str, kind: int, start: int) -> Any:
    return topic._seg.subscribe(key, kind, start)


def _rejoin(topic: Topic, key: str, kind: int) -> Subscription:
    # a plain subscription's anonymous group must still exist
    return Subscription(topic, key, kind | (_MUST_EXIST if kind == _KIND_ANON else 0), 0)


def _reopen(path: str, serializer: Any, trusted: bool = False) -> Topic:
    return Topic.open(path, serializer=serializer, trusted=trusted)

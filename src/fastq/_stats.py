"""What a queue or topic reports about itself: :class:`Stats`, read from the
counters kept in its segment (fq_inspect.c) by ``q.stats()``, ``t.stats()``
and the ``fastq`` command.  Reading takes no process slot."""
from __future__ import annotations

import dataclasses
import time
from typing import Any, Dict, List, Optional, Tuple

from . import _core

__all__ = ["Stats", "read_stats", "wait_summary"]


@dataclasses.dataclass
class Stats:
    """A snapshot of one queue's or topic's counters.

    The counters live in the segment, so they count every process's traffic
    since the segment was created, including processes that have exited;
    each process writes only its own slot's, and this sums them (the sums
    are not of one instant: a put in progress may show in ``bytes_used`` but
    not yet in ``puts``).  ``s["x"]`` is ``s.x`` (as the dict ``stats()``
    returned before).

    Attributes
    ----------
    name, path, kind
        The name, the file (None: anonymous), ``"queue"`` or ``"topic"``.
    capacity, max_message, max_processes
        Ring bytes, largest message, process slots.
    temporary, shutdown
        Created with ``temporary=True`` (``fastq gc`` may remove it); shut down.
    created_ns, creator_pid
        Creation time (ns since the epoch) and the creating process.
    depth
        Messages waiting: a queue's ``qsize()``; a topic's largest
        subscriber lag.
    bytes_used
        Ring bytes in use (records and their headers, padding included).
    unacked
        Queue: messages delivered and not yet finished (acked).
    unacked_deliveries, oldest_unacked_s
        Queue: deliveries of :meth:`fastq.Queue.receive` (and
        ``receive_many``, ``JoinableQueue.get``) in every process not yet
        acked or nacked, and the age in seconds of the oldest (None: none);
        a killed holder's count until recovery gives its messages back.
        Topics have these per subscriber row.
    puts, put_bytes
        Messages and payload bytes put (published).
    gets, get_bytes
        Queue: messages finished and payload bytes delivered; topic: messages
        received by subscribers (``get_bytes`` 0).
    full, blocked_s
        Back-pressure: puts (publishes) that found the ring full, each
        counted once however many times it tried again (a non-blocking put
        that raised ``queue.Full`` counts too), and the seconds they spent
        waiting for space in all.
    redelivered, nacked
        Queue: messages delivered again (after a nack or a dead consumer),
        and messages given back (nack).
    recovered_slots, recovered_puts, recovered_gets
        Recovery from dead processes: their slots freed, their open put
        claims and open get claims repaired.
    processes, dead_processes
        Attached processes alive, and slots still held by dead ones (recovery
        frees them).
    subscribers
        Topic: one dict per subscriber row (:meth:`fastq.Topic.subscribers`),
        with ``lag_bytes`` (ring bytes from its group's head to the tail),
        ``unacked`` (messages of its open claim: delivered, not yet finished
        or acknowledged), ``oldest_unacked_s`` (seconds since ``receive()``
        returned that delivery; None: none, or taken by ``get()``) and its group's time in queue (``wait_p50_s``,
        ``wait_p99_s``, ``wait_max_s``, ``wait_samples``, as below).
    wait_p50_s, wait_p99_s, wait_max_s, wait_samples, wait_window_s
        Time in queue, measured: how long messages waited from their put's
        commit to their first delivery, over the samples still kept in the
        segment (one message per 1/16 of the capacity put is sampled; each
        process keeps its last 32 deliveries of sampled messages): median,
        99th percentile and largest (None: no sample yet), the number of
        samples, and how far back the oldest goes (seconds).  A topic's
        figures cover every subscriber; each row of ``subscribers`` has its
        own group's.
    age_s, arrival_rate, departure_rate, mean_wait_s
        Seconds since creation; messages per second put and got over that
        time; and Little's law, the mean time a message waits:
        ``depth / departure_rate`` (None when nothing departed): the model's
        figure, to set beside the measured ``wait_*`` (``fastq top`` gives
        both over its last interval).
    tail, head, release, requeued, state, slot
        Internals: the cursors, the requeued hint, state bits, this handle's
        slot (-1: none taken).
    """

    name: str
    path: Optional[str]
    kind: str
    capacity: int
    max_message: int
    max_processes: int
    temporary: bool
    shutdown: bool
    created_ns: int
    creator_pid: int
    depth: int
    bytes_used: int
    unacked: int
    unacked_deliveries: int
    oldest_unacked_s: Optional[float]
    puts: int
    put_bytes: int
    gets: int
    get_bytes: int
    full: int
    blocked_s: float
    redelivered: int
    nacked: int
    recovered_slots: int
    recovered_puts: int
    recovered_gets: int
    processes: int
    dead_processes: int
    subscribers: List[Dict[str, Any]]
    age_s: float
    arrival_rate: float
    departure_rate: float
    mean_wait_s: Optional[float]
    wait_p50_s: Optional[float]
    wait_p99_s: Optional[float]
    wait_max_s: Optional[float]
    wait_samples: int
    wait_window_s: Optional[float]
    tail: int
    head: int
    release: int
    requeued: int
    state: int
    slot: int

    def to_dict(self) -> Dict[str, Any]:
        """The fields as a dict (JSON-ready)."""
        return dataclasses.asdict(self)

    def __getitem__(self, key: str) -> Any:
        try:
            return getattr(self, key)
        except AttributeError:
            raise KeyError(key) from None


def wait_summary(waits: List[Tuple[int, int]], now_ns: int) -> Dict[str, Any]:
    """p50/p99/max (seconds) of sampled waits [(wait_ns, at_ns)], their
    count and the age of the oldest (at_ns and now_ns: time.monotonic_ns())."""
    if not waits:
        return {"wait_p50_s": None, "wait_p99_s": None, "wait_max_s": None,
                "wait_samples": 0, "wait_window_s": None}
    ws = sorted(w for w, _ in waits)
    n = len(ws)
    return {"wait_p50_s": ws[(n - 1) // 2] / 1e9,
            "wait_p99_s": ws[min(n - 1, (99 * n) // 100)] / 1e9,
            "wait_max_s": ws[-1] / 1e9, "wait_samples": n,
            "wait_window_s": max(0, now_ns - min(a for _, a in waits)) / 1e9}


def read_stats(seg: Any) -> Stats:
    """The Stats of an open Queue or Topic handle."""
    c = seg._counts()
    raw = seg._raw_stats()
    topic = seg.is_topic
    subs: List[Dict[str, Any]] = []
    now = time.monotonic_ns()
    by_group: Dict[int, List[Tuple[int, int]]] = {}
    for g, w, at in seg._waits():
        by_group.setdefault(g, []).append((w, at))
    if topic:
        for (key, flags, pid, kind, alive, pos, lag, got, gi, lag_bytes,
             unacked_n, since) in seg._subscribers():
            row = {"name": key if flags & _core.GRP_DURABLE else None,
                   "group": key if flags & _core.GRP_GROUP else None,
                   "pid": pid or None, "alive": bool(alive), "position": pos,
                   "lag": lag, "lag_bytes": lag_bytes, "got": got, "unacked": unacked_n,
                   # since: CLOCK_REALTIME (fq_sub_mark_unacked), as a queue's held
                   "oldest_unacked_s": max(0, time.time_ns() - since) / 1e9 if unacked_n and since
                   else None}
            row.update(wait_summary(by_group.get(gi + 1, []), now))
            subs.append(row)
        depth = max((s["lag"] for s in subs), default=0)
        gets = sum(s["got"] for s in subs)
        unacked = 0
    else:
        depth = seg.qsize()
        gets = c["gets"]
        unacked = seg.unacked_count()
    # held_since_ns is CLOCK_REALTIME (the clock every process reads alike,
    # in any time namespace and after a reboot: review 15, T1)
    oldest = (max(0, time.time_ns() - c["held_since_ns"]) / 1e9
              if c["held"] and c["held_since_ns"] else None)
    waits = wait_summary([x for v in by_group.values() for x in v], now)
    age = max(time.time() - raw["created_ns"] / 1e9, 1e-9)
    dep = gets / age
    return Stats(
        name=seg.name, path=seg.path, kind="topic" if topic else "queue",
        capacity=seg.capacity, max_message=seg.max_message, max_processes=seg.max_processes,
        temporary=bool(c["flags"] & _core.FLAG_TEMP), shutdown=seg.is_shutdown(),
        created_ns=raw["created_ns"], creator_pid=raw["creator_pid"], depth=depth,
        bytes_used=c["tail"] - c["release"], unacked=unacked,
        unacked_deliveries=c["held"], oldest_unacked_s=oldest, puts=c["puts"],
        put_bytes=c["put_bytes"], gets=gets, get_bytes=c["get_bytes"], full=c["full"],
        blocked_s=c["blocked_ns"] / 1e9,
        redelivered=c["redelivered"], nacked=c["nacked"],
        recovered_slots=c["recovered_slots"], recovered_puts=c["recovered_puts"],
        recovered_gets=c["recovered_gets"], processes=c["alive"], dead_processes=c["dead"],
        subscribers=subs, age_s=age, arrival_rate=c["puts"] / age, departure_rate=dep,
        mean_wait_s=depth / dep if dep else None, **waits, tail=raw["tail"], head=raw["head"],
        release=raw["release"], requeued=raw["requeued"], state=raw["state"],
        slot=raw["slot"])

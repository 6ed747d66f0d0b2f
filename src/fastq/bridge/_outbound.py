"""fastq.bridge.Outbound: a local queue or topic subscription forwarded to a
JetStream subject (the package docstring states its guarantees)."""
from __future__ import annotations

import asyncio
import collections
import json
from typing import Any, Deque, Dict, Optional, Sequence, Union

from .._errors import Empty, ShutDown
from .._queue import Queue
from .._topic import Subscription, Topic
from . import _base
from ._base import DEFAULT_SERVER, _Bridge, _LocalFailure, _log, _raw_check, ensure_stream

#: publishes in flight from a queue by default (Outbound, max_inflight)
QUEUE_INFLIGHT = 1024
#: states of an outbound entry once published (entry[3]; None: not published);
#: _REJECTED: larger than the server takes, settled without a publish
_SENT, _STORED, _DUPLICATE, _REJECTED = 1, 2, 3, 4


class Outbound(_Bridge):
    """Forward a local queue (or topic subscription) to a JetStream subject.

    Parameters
    ----------
    source : fastq.Queue or fastq.Subscription
        Where messages come from, opened with ``serializer="raw"``.  Messages
        are taken with ``receive()`` and acked once JetStream has stored them;
        a topic is bridged through a durable subscription
        (``topic.subscribe(name=...)``) so that nothing is missed while the
        bridge is down.
    subject : str
        The JetStream subject messages are published to; a topic message
        published with a subject (``topic.publish(x, subject="eu.created")``)
        goes to ``<subject>.<its subject>`` (``jobs.remote.eu.created``), and a
        created stream captures ``<subject>.>`` too.
    servers : str or list of str
        NATS server URLs (default ``nats://127.0.0.1:4222``).
    stream : str, optional
        If given, the stream is created (capturing ``subject``) when missing,
        with ``duplicate_window`` seconds and ``retention``.
    max_inflight : int, optional
        Most publishes awaiting JetStream's ack at once.  From a queue,
        messages are taken in batches (``receive_many``, each one delivery
        acked once JetStream has stored all its messages), so the default is
        1024, in at most ``prefetch`` batches (at most 7: ``Queue(...,
        prefetch=7)``; the default 4); a queue taking fewer messages than that
        at a time (a producer slower than the bridge) gets fewer in flight.
        From a subscription it is bounded by its ``prefetch`` (at most 64).
    ack_timeout : float
        Seconds to wait for a publish ack before reconnecting.
    backoff : (float, float)
        First and largest delay between connection attempts (doubling, with
        jitter).
    connect_options : dict, optional
        More keyword arguments for ``nats.connect`` (credentials, TLS...).

    Examples
    --------
    >>> q = fastq.Queue("jobs", serializer="raw")
    >>> bridge = fastq.bridge.Outbound(q, "jobs.remote", stream="JOBS").start()
    >>> ...; bridge.stop()
    """

    def __init__(self, source: Union[Queue, Subscription], subject: str, *,
                 servers: Union[str, Sequence[str]] = DEFAULT_SERVER,
                 stream: Optional[str] = None, duplicate_window: float = 120.0,
                 retention: str = "limits", max_inflight: Optional[int] = None,
                 ack_timeout: float = 5.0, backoff: tuple = (0.1, 5.0),
                 connect_options: Optional[dict] = None):
        super().__init__(servers, backoff, connect_options)
        seg: Union[Queue, Topic]  # the segment messages come from
        if isinstance(source, Subscription):
            _raw_check(source.topic, "topic")
            window, seg, self._batches = source.prefetch, source.topic, False
        elif isinstance(source, Queue):
            _raw_check(source, "queue")
            window, seg, self._batches = QUEUE_INFLIGHT, source, True
        else:
            raise TypeError(f"source must be a fastq.Queue or fastq.Subscription, not "
                            f"{type(source).__name__}")
        if max_inflight is not None:
            window = max(1, max_inflight if self._batches else min(window, max_inflight))
        self._source, self._window = source, window
        # hysteresis: the session takes more once this many publishes of the
        # window are free, from a queue in batches of at most this many (so
        # the oldest batch is acked while the newest are in flight, instead
        # of the window draining to zero before each refill)
        self._refill = max(1, window // 4) if self._batches else 1
        self._subject, self._stream = subject, stream
        self._stream_opts = (duplicate_window, retention)
        self._ack_timeout = ack_timeout
        self._id_prefix = f"{seg.stats()['created_ns']:x}."
        self._id_suffix = f"@{subject}"
        # messages taken locally, not yet confirmed by JetStream, in order:
        # [what to settle once this one is confirmed (its Delivery, the
        # Deliveries of a batch on its last message, else None), payload,
        # msg id, state (None: not published on this connection, _SENT,
        # _STORED, _DUPLICATE), loop time of the publish, subject]
        self._unconfirmed: Deque[list] = collections.deque()
        self._settled: Optional[asyncio.Event] = None   # wakes the session: acks, room or failure
        self._executor: Any = None
        self._source_done = False
        # the publishes of the current connection: its reply inbox (with a
        # trailing dot), entries by sequence, the next sequence, and the
        # first failure an ack or the watchdog found
        self._inbox, self._seq = "\x00", 0
        self._waiting: Dict[int, list] = {}
        self._failure: Optional[BaseException] = None

    def msg_id(self, delivery: Any) -> str:
        """The Nats-Msg-Id a delivery is published with (of a batch: its
        first message's)."""
        return self._msg_id(delivery.position)

    def _msg_id(self, position: int) -> str:
        return f"{self._id_prefix}{position:x}{self._id_suffix}"

    # ---- the local side ---------------------------------------------------------
    # Deliveries are taken with non-blocking receives and settled on the loop's
    # thread (each a few microseconds).  Only when the source is empty and no
    # delivery is in flight does a blocking receive wait, in a thread of its
    # own: a subscription is for one thread at a time, and nothing else uses
    # it then.

    def _begin(self) -> None:
        from concurrent.futures import ThreadPoolExecutor  # noqa: PLC0415
        self._settled = asyncio.Event()
        self._executor = ThreadPoolExecutor(1, thread_name_prefix="fastq-bridge-local")

    def _end(self) -> None:
        # whatever was not confirmed goes back to the source (the next run
        # publishes it again, under the same Nats-Msg-Id)
        while self._unconfirmed:
            d = self._unconfirmed.popleft()[0]
            try:
                if d is not None:
                    d.nack(True)
            except Exception:  # noqa: BLE001,S110 - closed: recovery gives it back
                pass
        self._executor.shutdown(wait=True)

    def _receive(self, room: int, block: bool, timeout: Optional[float]) -> list:
        """Entries of up to room messages (one delivery: a batch from a queue)."""
        src = self._source
        if isinstance(src, Subscription):  # (not self._batches)
            d = src.receive(block, timeout)
            if d.redelivered:
                self._count(redelivered=1)
            subj = d.subject  # a topic message's subject goes under the bridge's
            return [[d, d.value, self._msg_id(d.position), None, 0.0,
                     self._subject if subj is None else f"{self._subject}.{subj}"]]
        b = src.receive_many(min(room, self._refill), block, timeout)
        if b.redelivered:
            self._count(redelivered=len(b))
        pre, suf, subject = self._id_prefix, self._id_suffix, self._subject
        entries = [[None, v, f"{pre}{p:x}{suf}", None, 0.0, subject]
                   for v, p in zip(b.values, b.positions)]
        entries[-1][0] = b
        return entries

    def _take(self, room: int) -> list:
        """Entries of up to room messages that are there now."""
        batch: list = []
        try:
            while len(batch) < room:
                batch += self._receive(room - len(batch), False, None)
        except Empty:
            pass
        except ShutDown:  # the source is shut down and drained
            self._source_done = True
        except RuntimeError:  # the prefetch bound: this process holds enough
            pass
        except Exception as e:
            raise _LocalFailure() from e
        return batch

    def _wait_one(self, room: int) -> list:
        """In the executor: wait a little for a delivery."""
        try:
            return self._receive(room, True, 0.1)
        except Empty:
            return []
        except ShutDown:
            self._source_done = True
            return []
        except Exception as e:
            raise _LocalFailure() from e

    # ---- the JetStream side ---------------------------------------------------
    # Publishes are pipelined on nats-py's core API, as its publish_async does
    # (a request with a reply subject under one inbox subscription), without
    # its per-message costs the bridge does not need (a future, a random
    # token, a semaphore, a PubAck dataclass): half the CPU per message.  An
    # entry's state: None (not published on this connection), _SENT, then
    # _STORED or _DUPLICATE when its ack came (or _REJECTED, never sent:
    # larger than the server's max_payload); the acks settle the entries
    # oldest first (_on_ack), the watchdog bounds the wait for the oldest.

    async def _publish(self, nc: Any, entries: Any) -> int:
        """Publish entries (appended to _unconfirmed already), in order: the
        hot loop of the bridge.  Returns how many were published."""
        publish, inbox, waiting = nc.publish, self._inbox, self._waiting
        assert self._loop is not None
        clock, seq, limit = self._loop.time, self._seq, nc.max_payload
        rejected = skipped = 0
        for entry in entries:
            if len(entry[1]) > limit:
                skipped += 1
                if entry[3] != _REJECTED:
                    rejected += 1
                    self._reject(entry, limit)
                continue
            waiting[seq] = entry  # before the publish: its ack may come at once
            entry[3], entry[4] = _SENT, clock()
            await publish(entry[5], entry[1], reply=f"{inbox}{seq:x}",
                          headers={"Nats-Msg-Id": entry[2]})
            seq += 1
            self._seq = seq
        if rejected:
            self._settle_confirmed()
        return len(entries) - skipped

    def _reject(self, entry: list, limit: int) -> None:
        """A message larger than the server's max_payload: no publish can
        take it, and retrying would stop the bridge for good.  Logged,
        counted (BridgeStats.rejected) and settled as if stored: dropped."""
        entry[3] = _REJECTED
        _log.warning("fastq.bridge: a message of %d bytes (Nats-Msg-Id %s) is larger than the "
                     "NATS server's max_payload (%d bytes): not published, dropped",
                     len(entry[1]), entry[2], limit)
        with self._lock:
            self._stats.rejected += 1
            self._stats.last_error = (f"MaxPayloadError: a message of {len(entry[1])} bytes, "
                                      f"max_payload {limit}")

    async def _on_ack(self, msg: Any) -> None:
        """A publish ack (nats-py calls it in order, one at a time): mark its
        entry, then settle what is confirmed at the head.  Never raises (nats-py
        would only log it): a failure is kept for the session to raise."""
        subj = msg.subject
        if not subj.startswith(self._inbox):
            return  # an ack for an earlier connection's publish: republished since
        try:
            entry = self._waiting.pop(int(subj[len(self._inbox):], 16), None)
        except ValueError:
            return
        if entry is None:
            return
        data = msg.data
        if not data or (msg.headers and msg.headers.get("Status")):
            # 503: no stream captures the subject (nats-py: NoStreamResponseError)
            return self._fail(ConnectionError(
                f"no JetStream stream took the publish to {entry[5]!r} "
                f"(status {msg.headers.get('Status') if msg.headers else None})"))
        try:
            resp = json.loads(data)
            err = resp.get("error")
        except (ValueError, AttributeError) as e:
            return self._fail(ConnectionError(f"a publish ack that is not JSON: {e}"))
        if err is not None:
            return self._fail(ConnectionError(f"JetStream refused a publish: {err}"))
        entry[3] = _DUPLICATE if resp.get("duplicate") else _STORED
        self._settle_confirmed()

    def _settle_confirmed(self) -> None:
        """Ack the local deliveries JetStream confirmed, oldest first."""
        u, settled = self._unconfirmed, self._settled
        assert settled is not None
        acked = dups = 0
        try:
            while u and u[0][3] is not None and u[0][3] >= _STORED:
                if _base._CRASH_AT is not None:  # (set by tests only)
                    _base._crash_point("confirmed")
                entry = u.popleft()
                dups += entry[3] == _DUPLICATE
                if entry[0] is not None:  # a delivery (or a batch) is settled
                    entry[0].ack()
                    acked += len(entry[0]) if self._batches else 1
        except Exception as e:  # noqa: BLE001 - the local ack failed: the bridge stops
            f = _LocalFailure()
            f.__cause__ = e
            self._fail(f)
        if acked or dups:  # (the counters take a lock: not per message)
            self._count(acked=acked, duplicates=dups)
        if acked or len(u) <= self._window - self._refill:  # room: wake the session
            settled.set()

    def _fail(self, e: BaseException) -> None:
        """Keep the first failure of the acks for the session, and wake it."""
        if self._failure is None:
            self._failure = e
        assert self._settled is not None
        self._settled.set()

    async def _watchdog(self) -> None:
        """Fail the session if the oldest publish waits for its ack beyond
        ack_timeout (a timer per message would cost more than the publish)."""
        loop = self._loop
        assert loop is not None
        while self._failure is None:
            await asyncio.sleep(self._ack_timeout / 4)
            u = self._unconfirmed
            if u and u[0][3] == _SENT and loop.time() - u[0][4] > self._ack_timeout:
                self._fail(TimeoutError(f"no publish ack from JetStream within "
                                        f"{self._ack_timeout} s"))

    def _check(self) -> None:
        """Raise what failed since the session began."""
        if self._failure is not None:
            raise self._failure

    async def _session(self, nc: Any, js: Any) -> None:
        if self._stream:
            subjects = [self._subject] + ([] if self._batches else [self._subject + ".>"])
            await ensure_stream(js, self._stream, subjects, *self._stream_opts)
        settled, loop = self._settled, self._loop
        assert settled is not None and loop is not None
        self._failure = None
        self._inbox, self._waiting, self._seq = nc.new_inbox() + ".", {}, 0
        sub = await nc.subscribe(self._inbox + "*", cb=self._on_ack)
        self.connected.set()
        watchdog = asyncio.ensure_future(self._watchdog())
        try:
            # left by the last connection: the same ids
            self._count(forwarded=await self._publish(nc, list(self._unconfirmed)))
            while not self._stopping.is_set():
                self._check()
                if nc.is_closed:
                    raise ConnectionError("the connection to the NATS server was lost")
                room = self._window - len(self._unconfirmed)
                batch = (self._take(room) if room >= self._refill and not self._source_done
                         else [])
                if not batch:
                    if self._unconfirmed or self._source_done:
                        # the window is full, or the source is empty while
                        # publishes are in flight: wait for an ack (_on_ack
                        # sets it when there is room or a delivery was acked,
                        # _fail when something failed), or poll again soon
                        settled.clear()
                        poll = loop.call_later(0.002 if room >= self._refill
                                               and not self._source_done else 0.5, settled.set)
                        await settled.wait()
                        poll.cancel()
                        continue
                    batch = await loop.run_in_executor(self._executor, self._wait_one,
                                                       max(room, 1))
                self._unconfirmed.extend(batch)
                self._count(forwarded=await self._publish(nc, batch))
            # stopping: let what is in flight be confirmed, within ack_timeout
            end = loop.time() + self._ack_timeout
            while self._unconfirmed and loop.time() < end and self._failure is None:
                settled.clear()
                poll = loop.call_later(0.05, settled.set)
                await settled.wait()
                poll.cancel()
            self._check()
        finally:
            watchdog.cancel()
            try:
                await watchdog
            except (asyncio.CancelledError, Exception):  # noqa: BLE001,S110 - cancelled
                pass
            self._inbox = "\x00"  # no subject starts so: a late ack is ignored
            self._waiting = {}
            try:
                await sub.unsubscribe()
            except Exception:  # noqa: BLE001,S110 - the connection closes next anyway
                pass
            for entry in self._unconfirmed:
                if entry[3] != _REJECTED:
                    entry[3] = None

"""fastq.bridge: extend local queues and topics across machines through NATS JetStream.

:class:`Outbound` forwards a local :class:`fastq.Queue` (or a topic
:class:`fastq.Subscription`) to a JetStream subject; :class:`Inbound` feeds a
durable JetStream pull consumer into a local Queue or Topic.  Both are
at-least-once across the bridge:

* outbound, a local delivery is acked only after JetStream acknowledged its
  publish (from a queue, a batch of :meth:`fastq.Queue.receive_many` after
  all of its publishes).  Every publish carries
  ``Nats-Msg-Id: <segment>.<position>@<subject>``: the local segment's creation
  time (ns, hex) and the message's position (:attr:`fastq.Delivery.position`,
  :attr:`fastq.Deliveries.positions`), which a redelivered message keeps.  A bridge
  killed after JetStream stored a message but before the local ack gets the
  message again from the local queue, publishes it again under the same id, and
  the stream drops it as a duplicate (within the stream's duplicate window,
  default 2 minutes; after it, it is stored twice).
* inbound, a JetStream message is acked (double ack: the bridge waits for the
  server's confirmation, as ``ack_sync`` does) only after the local put
  returned.  A message committed locally whose ack was not confirmed is
  acked again by the next connection, and if it comes back meanwhile
  (``num_delivered`` > 1), while the same bridge runs, it is recognised by its
  stream sequence and only acked again; a bridge killed between a local put
  and its ack puts those messages (at most one fetch batch) again after its
  restart.  Into a queue, JetStream's delivery
  count (``num_delivered``) becomes the local message's first attempt: a
  message JetStream delivered twice is received with
  :attr:`fastq.Delivery.attempt` 2, then 3 after a local nack.  A topic keeps
  attempts per subscription, not per message: there a message starts at
  attempt 1 (the redelivery is counted in :attr:`BridgeStats.redelivered`
  either way).  Messages carry no headers across.

Payloads cross the bridge unchanged: open the local queue or topic with
``serializer="raw"`` in the bridge (the producers and consumers on either side
keep their own serializer, pickle by default).  The client is nats-py
(``pip install 'fastq-ipc[nats]'``, or ``[bridge]``: the same extra); each bridge runs an asyncio loop
(:meth:`Outbound.start`: in a thread of its own); local calls that need not
wait run on the loop, those that wait in a helper thread.
"""
from __future__ import annotations

import asyncio
import collections
import dataclasses
import json
import logging
import random
import threading
from typing import Any, Deque, Dict, Optional, Sequence, Union

from . import _core
from ._errors import Empty, Full, MessageTooLarge, ShutDown
from ._queue import Queue, RawSerializer
from ._topic import Subscription, Topic

__all__ = ["Outbound", "Inbound", "BridgeStats", "ensure_stream"]

DEFAULT_SERVER = "nats://127.0.0.1:4222"
#: publishes in flight from a queue by default (Outbound, max_inflight)
QUEUE_INFLIGHT = 1024
#: states of an outbound entry once published (entry[3]; None: not published);
#: _REJECTED: larger than the server takes, settled without a publish
_SENT, _STORED, _DUPLICATE, _REJECTED = 1, 2, 3, 4
#: most stream sequences an Inbound remembers as put locally but not acked
_COMMITTED_MAX = 1 << 16

_log = logging.getLogger("fastq.bridge")

#: test hook, as FQ_CRASH_POINT in the C core: (point name, n); the process
#: exits with os._exit(9) the n-th time it passes that point
_CRASH_AT: Optional[tuple] = None


def _crash_point(name: str) -> None:
    global _CRASH_AT
    if _CRASH_AT is not None and _CRASH_AT[0] == name:
        if _CRASH_AT[1] <= 1:
            import os  # noqa: PLC0415
            os._exit(9)
        _CRASH_AT = (name, _CRASH_AT[1] - 1)


class _LocalFailure(Exception):
    """A local queue or topic call failed (its cause): the bridge stops,
    since reconnecting to the server cannot help."""


def _nats() -> Any:
    try:
        import nats  # noqa: PLC0415
    except ImportError as e:  # pragma: no cover - depends on the install
        raise ImportError("fastq.bridge needs nats-py: pip install 'fastq-ipc[nats]'") from e
    return nats


@dataclasses.dataclass
class BridgeStats:
    """Counters of one bridge (a snapshot: :meth:`Outbound.stats`)."""

    forwarded: int = 0
    """Messages handed on: published to JetStream (outbound, republications
    included) or put into the local queue or topic (inbound)."""
    acked: int = 0
    """Messages settled at the source after the far end took them: local acks
    after JetStream's publish ack (outbound), JetStream acks the server
    confirmed (inbound)."""
    redelivered: int = 0
    """Messages that came again: local deliveries flagged ``redelivered``
    (outbound), JetStream messages with ``num_delivered`` > 1 (inbound)."""
    duplicates: int = 0
    """Outbound: publishes JetStream reported as duplicates (dropped by the
    Nats-Msg-Id); inbound: redelivered messages already put by this bridge,
    acked and not put again."""
    errors: int = 0
    """Failures (connection lost, publish or ack timed out, ...), each
    followed by a reconnection."""
    reconnects: int = 0
    """Connections made after the first one."""
    rejected: int = 0
    """Messages that cannot cross, each logged on the ``fastq.bridge``
    logger, the bridge going on with the next one.  Inbound: a JetStream
    subject that is not a valid fastq subject, a payload larger than the
    local ``max_message``: terminated on JetStream (AckTerm: never
    redelivered; the stream keeps it under limits retention, found by the
    sequence logged), not put.  Outbound: a payload larger than the server's
    ``max_payload`` (1 MiB by default): acked locally, not published
    (dropped: no publish could ever take it)."""
    last_error: str = ""
    """The most recent failure, as text."""

    def to_dict(self) -> dict:
        """The counters as a plain dict, field name to value, in the order
        above (what ``fastq bridge`` prints as JSON, for ``fastq stat``/``top``)."""
        return dataclasses.asdict(self)


async def ensure_stream(js: Any, name: str, subjects: Sequence[str],
                        duplicate_window: float = 120.0, retention: str = "limits") -> None:
    """Create the JetStream stream ``name`` capturing ``subjects`` unless a
    stream of that name exists (an existing one is left as it is)."""
    from nats.js import api, errors  # noqa: PLC0415
    try:
        await js.stream_info(name)
        return
    except errors.NotFoundError:
        pass
    await js.add_stream(api.StreamConfig(
        name=name, subjects=list(subjects), duplicate_window=duplicate_window,
        retention=api.RetentionPolicy(retention)))


def _raw_check(handle: Any, what: str) -> None:
    if not isinstance(handle._ser, RawSerializer):
        raise ValueError(f"open the {what} with serializer='raw' for a bridge: payloads cross "
                         "it unchanged (its producers and consumers keep their serializer)")


class _Bridge:
    """The loop, the reconnection with backoff and the start/stop shared by
    both directions."""

    def __init__(self, servers: Union[str, Sequence[str]], backoff: tuple,
                 connect_options: Optional[dict]):
        self._servers = [servers] if isinstance(servers, str) else list(servers)
        self._backoff = backoff
        self._connect_options = dict(connect_options or {})
        self._stats = BridgeStats()
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._thread: Optional[threading.Thread] = None
        self._loop: Optional[asyncio.AbstractEventLoop] = None
        self._stop_async: Optional[asyncio.Event] = None
        self._error: Optional[BaseException] = None
        #: set while the bridge is connected to a server (and its stream or
        #: consumer is ready); cleared when the connection is lost
        self.connected = threading.Event()

    def _count(self, **kw: int) -> None:
        with self._lock:
            for k, v in kw.items():
                setattr(self._stats, k, getattr(self._stats, k) + v)

    def _failed(self, e: BaseException) -> None:
        with self._lock:
            self._stats.errors += 1
            self._stats.last_error = f"{type(e).__name__}: {e}"

    async def _client_error(self, e: Exception) -> None:
        # nats-py's errors (its default prints each with a traceback): kept as
        # the last error; the failure they cause is counted where it surfaces
        with self._lock:
            self._stats.last_error = f"{type(e).__name__}: {e}"

    def stats(self) -> BridgeStats:
        """A snapshot of the bridge's counters."""
        with self._lock:
            return dataclasses.replace(self._stats)

    # ---- lifecycle ------------------------------------------------------------

    def start(self) -> "_Bridge":
        """Run the bridge in a thread of its own (returns at once)."""
        if self._thread is not None:
            raise RuntimeError("this bridge was started already")
        self._thread = threading.Thread(target=asyncio.run, args=(self.run_async(),),
                                        name=type(self).__name__, daemon=True)
        self._thread.start()
        return self

    def stop(self, timeout: Optional[float] = None) -> None:
        """Stop: no new message is taken; those in flight finish (or are left
        for redelivery, with the same Nats-Msg-Id outbound); returns when the
        bridge has stopped (or after ``timeout`` seconds)."""
        self._stopping.set()
        loop, ev = self._loop, self._stop_async
        if loop is not None and ev is not None:
            try:
                loop.call_soon_threadsafe(ev.set)
            except RuntimeError:  # the loop has closed already
                pass
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout)

    def run(self) -> None:
        """Run the bridge in this thread until :meth:`stop` (from another
        thread or a signal handler); raises what made a local call fail."""
        asyncio.run(self.run_async())
        if self._error is not None:
            raise self._error

    @property
    def error(self) -> Optional[BaseException]:
        """What made a local call fail (the queue closed, a payload that is
        not bytes...): the bridge stopped then.  None otherwise (failures on
        the server's side are retried, not fatal)."""
        return self._error

    async def run_async(self) -> None:
        """Run the bridge in the running asyncio loop until :meth:`stop`."""
        nats = _nats()
        self._loop = asyncio.get_running_loop()
        self._stop_async = asyncio.Event()
        if self._stopping.is_set():
            self._stop_async.set()
        self._begin()
        delay, first = self._backoff[0], True
        try:
            while not self._stopping.is_set():
                nc = None
                try:
                    # nats-py's own reconnection is off: after a lost connection
                    # everything (consumer, subscriptions) is built again here,
                    # since a pull subscription may not survive a server restart
                    # (max_reconnect_attempts=1, no wait: the initial
                    # connection tries each server twice at once, then fails
                    # here, instead of retrying inside nats-py for minutes)
                    opts = {"allow_reconnect": False, "connect_timeout": 2,
                            "max_reconnect_attempts": 1, "reconnect_time_wait": 0,
                            "error_cb": self._client_error, **self._connect_options}
                    nc = await nats.connect(self._servers, **opts)
                    if not first:
                        self._count(reconnects=1)
                    first = False
                    await self._session(nc, nc.jetstream())
                    return  # stopped cleanly
                except asyncio.CancelledError:
                    raise
                except _LocalFailure as e:
                    self._error = e.__cause__
                    self._failed(e.__cause__)  # type: ignore[arg-type]
                    self._stopping.set()
                    return
                except Exception as e:  # noqa: BLE001 - any other failure: reconnect
                    if self.connected.is_set():  # it had worked: retry soon
                        delay = self._backoff[0]
                    self.connected.clear()
                    if self._stopping.is_set():
                        return
                    self._failed(e)
                finally:
                    self.connected.clear()
                    if nc is not None:
                        try:
                            await nc.close()
                        except Exception:  # noqa: BLE001,S110 - closing a broken connection
                            pass
                # exponential backoff with jitter, cut short by stop()
                try:
                    await asyncio.wait_for(self._stop_async.wait(),
                                           delay * (0.5 + random.random() / 2))
                except asyncio.TimeoutError:
                    pass
                delay = min(delay * 2, self._backoff[1])
        finally:
            self._end()

    async def _until_stop(self, aw: Any, timeout: Optional[float] = None) -> Any:
        """Await aw; None if stop() came first (aw is cancelled)."""
        assert self._stop_async is not None
        task = asyncio.ensure_future(aw)
        stop = asyncio.ensure_future(self._stop_async.wait())
        try:
            await asyncio.wait({task, stop}, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
        finally:
            stop.cancel()
        if task.done():
            return task.result()
        task.cancel()
        try:
            await task
        except (asyncio.CancelledError, Exception):  # noqa: BLE001,S110 - abandoned
            pass
        return None

    def _begin(self) -> None:
        """Start the local side (in run_async, before the first connection)."""

    def _end(self) -> None:
        """Stop the local side (run_async is ending)."""

    async def _session(self, nc: Any, js: Any) -> None:
        raise NotImplementedError


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
                if _CRASH_AT is not None:
                    _crash_point("confirmed")
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


class Inbound(_Bridge):
    """Feed a durable JetStream pull consumer into a local queue or topic.

    Parameters
    ----------
    subject : str
        The consumer's filter subject (wildcards allowed).
    subject_prefix : str, optional
        Into a topic, each message is published with the local subject that
        follows this prefix in its JetStream subject (``orders.eu.created``
        with prefix ``orders``: ``eu.created``; the prefix itself or another
        subject: no subject).  Default: the filter's tokens before its first
        wildcard (``orders.>``: ``orders``), so that ``Outbound(subscription,
        "orders")`` and ``Inbound("orders.>", topic)`` carry subjects across
        unchanged; ``""``: the whole JetStream subject.
    target : fastq.Queue or fastq.Topic
        Where messages go, opened with ``serializer="raw"``.
    durable : str
        The durable consumer's name: a restarted bridge resumes where the
        last one acked.  Created if missing (``pull_subscribe`` never changes
        an existing consumer).
    stream : str, optional
        The stream (found from the subject if not given; created when missing,
        as for :class:`Outbound`, if ``create_stream``).
    batch : int
        Messages per fetch: also the most messages taken from JetStream and
        not yet acked (the bridge fetches again only once a batch is put and
        acked), so a full local queue stops the fetching: backpressure.
    ack_wait : float
        The consumer's ack wait (seconds): a message not acked within it is
        redelivered.  While the local queue is full the bridge tells
        JetStream the batch is in progress.
    servers, backoff, connect_options
        As for :class:`Outbound`.
    """

    def __init__(self, subject: str, target: Union[Queue, Topic], *, durable: str,
                 servers: Union[str, Sequence[str]] = DEFAULT_SERVER,
                 stream: Optional[str] = None, create_stream: bool = False,
                 duplicate_window: float = 120.0, retention: str = "limits",
                 batch: int = 64, ack_wait: float = 30.0, ack_timeout: float = 5.0,
                 backoff: tuple = (0.1, 5.0), connect_options: Optional[dict] = None,
                 subject_prefix: Optional[str] = None):
        super().__init__(servers, backoff, connect_options)
        if subject_prefix is None:
            literal = []
            for tok in subject.split("."):
                if tok in ("*", ">"):
                    break
                literal.append(tok)
            subject_prefix = ".".join(literal)
        self._prefix = subject_prefix
        if isinstance(target, Topic):
            _raw_check(target, "topic")
        elif isinstance(target, Queue):
            _raw_check(target, "queue")
        else:
            raise TypeError(f"target must be a fastq.Queue or fastq.Topic, not "
                            f"{type(target).__name__}")
        if not isinstance(batch, int) or batch < 1:
            raise ValueError(f"batch must be a positive int, not {batch!r}")
        self._subject, self._target, self._durable = subject, target, durable
        self._stream, self._create = stream, create_stream
        self._stream_opts = (duplicate_window, retention)
        self._batch, self._ack_wait, self._ack_timeout = batch, ack_wait, ack_timeout
        # stream sequences put locally whose ack is not confirmed yet, with
        # the ack subject of their last delivery: such a message coming back
        # is acked, not put again, and a new connection acks them all again
        # (the last one's acks may have been taken without a confirmation)
        self._committed: "collections.OrderedDict[int, str]" = collections.OrderedDict()
        self._executor: Any = None
        # the double acks of the current connection: the reply inbox (with a
        # trailing dot), the stream sequence of each ack not confirmed yet by
        # its sequence, the next sequence, the first sequence of the batch
        # the fetch loop waits for, how many of it are left, the event set
        # when none is, and the confirmations not counted in stats yet
        self._inbox, self._seq, self._batch_from, self._batch_left = "\x00", 0, 0, 0
        self._acks: Dict[int, int] = {}
        self._acks_done: Optional[asyncio.Event] = None
        self._confirmed = 0

    def _begin(self) -> None:
        from concurrent.futures import ThreadPoolExecutor  # noqa: PLC0415
        self._executor = ThreadPoolExecutor(1, thread_name_prefix="fastq-bridge-local")

    def _end(self) -> None:
        self._executor.shutdown(wait=True)

    def local_subject(self, subject: str) -> Optional[str]:
        """The local subject a message of JetStream subject ``subject`` is
        published with into a topic: what follows ``subject_prefix`` and a
        dot (None for the prefix itself or another subject)."""
        pre = self._prefix
        if pre and subject.startswith(pre + ".") and len(subject) > len(pre) + 1:
            return subject[len(pre) + 1:]
        return None if pre else subject

    def _put(self, msgs: list, slice_s: float, rejects: list) -> int:
        """Put the messages' payloads in order (into a topic with their local
        subject); returns how many were done (put, or appended to rejects
        with the reason when they cannot be put at all) before the local
        queue stayed full for slice_s seconds (0: not at all, no wait)."""
        target = self._target  # the compiled handle: put (queue) or publish (topic) of raw bytes
        block = slice_s > 0
        timeout = slice_s if block else None
        for i, m in enumerate(msgs):
            subject = None
            try:
                if isinstance(target, Topic):
                    subject = self.local_subject(m.subject)
                    target.publish(m.data, block, timeout, subject=subject)
                else:  # JetStream's deliveries so far are the local first attempt
                    target._put_attempt(m.data, m.metadata.num_delivered or 1, block, timeout)
            except Full:
                return i
            except MessageTooLarge as e:  # this message only: the next may fit
                rejects.append((m, e))
            except ValueError as e:
                # a subject fastq refuses (too long, an empty token...) is
                # this message's; any other ValueError (a closed handle) is
                # the bridge's
                why = self._bad_subject(subject)
                if why is None:
                    raise _LocalFailure() from e
                rejects.append((m, why))
            except Exception as e:
                raise _LocalFailure() from e
        return len(msgs)

    @staticmethod
    def _bad_subject(subject: Optional[str]) -> Optional[ValueError]:
        """Why subject is not one a topic takes (None: it is, or no subject)."""
        if subject is None:
            return None
        try:
            _core.check_subject(subject, False)
        except ValueError as e:
            return e
        return None

    async def _reject(self, rejects: list) -> None:
        """Terminate messages that cannot be put (BridgeStats.rejected)."""
        for m, why in rejects:
            md = m.metadata
            _log.warning("fastq.bridge: JetStream message %s/%d (subject %.80r) not put into %s: "
                         "%s; terminated, not redelivered", md.stream, md.sequence.stream,
                         m.subject, getattr(self._target, "path", "the local target"), why)
            await m.term()
        if rejects:
            with self._lock:
                self._stats.rejected += len(rejects)
                self._stats.last_error = f"{type(rejects[-1][1]).__name__}: {rejects[-1][1]}"

    def _settle_put(self, done: list, rejects: list) -> None:
        """Remember the messages just put (not the rejected) as committed."""
        skip = {id(m) for m, _ in rejects}
        for m in done:
            if id(m) not in skip:
                self._committed[m.metadata.sequence.stream] = m.reply
        self._count(forwarded=len(done) - len(skip))

    async def _session(self, nc: Any, js: Any) -> None:
        from nats.js import api  # noqa: PLC0415
        if self._stream and self._create:
            await ensure_stream(js, self._stream, [self._subject], *self._stream_opts)
        config = api.ConsumerConfig(ack_policy=api.AckPolicy.EXPLICIT, ack_wait=self._ack_wait,
                                    max_ack_pending=max(self._batch * 2, 1024),
                                    deliver_policy=api.DeliverPolicy.ALL)
        sub = await js.pull_subscribe(self._subject, durable=self._durable, stream=self._stream,
                                      config=config)
        self._inbox, self._acks, self._seq = nc.new_inbox() + ".", {}, 0
        self._batch_from, self._batch_left = 1 << 62, 0  # no batch yet: acks again only
        acks = await nc.subscribe(self._inbox + "*", cb=self._on_ack)
        try:
            # put by the last connection, their acks not confirmed: acked
            # again (before the first fetch, so JetStream does not redeliver
            # those it takes), each counted once confirmed; not waited for
            await self._send_acks(nc, list(self._committed.items()))
            await self._fetch_loop(nc, sub)
        finally:
            self._inbox, self._acks = "\x00", {}  # a late confirmation is ignored
            self._count_confirmed()
            for s in (acks, sub):
                try:
                    await s.unsubscribe()
                except Exception:  # noqa: BLE001,S110 - the connection closes next anyway
                    pass

    async def _send_acks(self, nc: Any, acks: list) -> None:
        """Ack each (stream sequence, ack subject) of acks with a reply
        subject of this bridge's inbox: confirmed in _on_ack."""
        publish, inbox, pending, seq = nc.publish, self._inbox, self._acks, self._seq
        for sseq, subject in acks:
            pending[seq] = sseq
            await publish(subject, b"+ACK", reply=f"{inbox}{seq:x}")
            seq += 1
            self._seq = seq

    async def _ack_sync(self, nc: Any, msgs: list) -> None:
        """Double ack: ack every message with a reply subject of this bridge's
        inbox and wait until the server confirmed all of them (nats-py's
        ack_sync, pipelined: one publish each instead of a request with its
        future, timer and task each).  TimeoutError after ack_timeout: the
        session fails; the messages not confirmed stay committed: acked again
        by the next connection, and recognised if they come again."""
        if not msgs:
            return
        self._batch_from, self._batch_left = self._seq, len(msgs)
        self._acks_done = done = asyncio.Event()
        try:
            await self._send_acks(nc, [(m.metadata.sequence.stream, m.reply) for m in msgs])
            await asyncio.wait_for(done.wait(), self._ack_timeout)
        except asyncio.TimeoutError:
            raise TimeoutError(f"JetStream confirmed {len(msgs) - self._batch_left} of "
                               f"{len(msgs)} acks within {self._ack_timeout} s") from None
        finally:
            self._count_confirmed()

    async def _on_ack(self, msg: Any) -> None:
        """A confirmation of an ack (nats-py calls it in order): its message
        is settled (no longer committed) and counted as acked once."""
        subj = msg.subject
        if not subj.startswith(self._inbox):
            return  # an earlier connection's
        try:
            seq = int(subj[len(self._inbox):], 16)
        except ValueError:
            return
        sseq = self._acks.pop(seq, None)
        if sseq is None:
            return
        if self._committed.pop(sseq, None) is not None:
            self._confirmed += 1
        if seq < self._batch_from:  # a new connection's ack again: counted now
            self._count_confirmed()
            return
        self._batch_left -= 1
        if not self._batch_left and self._acks_done is not None:
            self._acks_done.set()

    def _count_confirmed(self) -> None:
        """Add the confirmations counted so far to the stats (once per batch:
        the counters take a lock)."""
        n, self._confirmed = self._confirmed, 0
        if n:
            self._count(acked=n)

    async def _fetch_loop(self, nc: Any, sub: Any) -> None:
        from nats import errors as nerrors  # noqa: PLC0415
        self.connected.set()
        loop = asyncio.get_running_loop()
        slice_s = max(0.05, min(1.0, self._ack_wait / 3))
        while not self._stopping.is_set():
            if nc.is_closed:
                raise ConnectionError("the connection to the NATS server was lost")
            try:
                msgs = await self._until_stop(sub.fetch(self._batch, timeout=1.0), timeout=2.0)
            except nerrors.TimeoutError:
                continue  # nothing there: fetch raises by design on an empty stream
            if not msgs:
                continue
            fresh: list = []
            again: list = []
            for m in msgs:
                md = m.metadata
                if md.num_delivered > 1:
                    self._count(redelivered=1)
                (again if md.sequence.stream in self._committed else fresh).append(m)
            self._count(duplicates=len(again))
            # a put that need not wait costs microseconds: on the loop; the
            # rest waits for room in the executor's thread
            rejects: list = []
            done = self._put(fresh, 0, rejects)
            self._settle_put(fresh[:done], rejects)
            while done < len(fresh):
                had = len(rejects)
                n = await loop.run_in_executor(self._executor, self._put, fresh[done:],
                                               slice_s, rejects)
                self._settle_put(fresh[done:done + n], rejects[had:])
                done += n
                if done < len(fresh):
                    if self._stopping.is_set():  # give the rest back at once
                        await asyncio.gather(*(m.nak() for m in fresh[done:]))
                        break
                    # the local side is full: keep JetStream from redelivering
                    # what waits here, and fetch nothing more meanwhile
                    await asyncio.gather(*(m.in_progress() for m in fresh[done:]))
            while len(self._committed) > _COMMITTED_MAX:
                self._committed.popitem(last=False)
            _crash_point("committed")
            await self._reject(rejects)
            # double ack: each ack waits for the server's confirmation
            skip = {id(m) for m, _ in rejects}
            for m in again:  # acked by its last delivery's subject, as the new ones
                self._committed[m.metadata.sequence.stream] = m.reply
            put = again + [m for m in fresh[:done] if id(m) not in skip]
            await self._ack_sync(nc, put)

"""What both directions of fastq.bridge share: the counters (BridgeStats),
the stream a bridge may create, the loop with its reconnection and
backoff (_Bridge), and the test hook of crash points."""
from __future__ import annotations

import asyncio
import dataclasses
import logging
import random
import threading
from typing import Any, Optional, Sequence, Union

from .._queue import RawSerializer

DEFAULT_SERVER = "nats://127.0.0.1:4222"

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

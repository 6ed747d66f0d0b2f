"""The queue workloads (rows of the table), the settings of a run, and the chunk sizes of a stream."""

from __future__ import annotations

from dataclasses import dataclass

from .payloads import KiB, MiB


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
    # program workloads (``programs``, ``pool``)
    items: int = 400_000          # small items through a pool or pipeline
    arrays: int = 200             # 1 MiB arrays through a pipeline
    calls: int = 2000             # apply() calls timed on a warm pool
    kill_seconds: float = 3.0     # seconds of rounds while workers are killed
    program_timeout: float = 60.0  # seconds a program run may take before it is killed
    bridge_messages: int = 20000  # messages per bridge run (``bridge``)
    bridge_repeat: int = 3        # runs of each bridge program, the median reported

    @classmethod
    def quick(cls, **kw) -> "Settings":
        return cls(**{**dict(duration=0.15, round_trips=2000, pingpong_budget=0.5, idle=1.0, grace=15.0,
                             items=100_000, arrays=50, calls=500, kill_seconds=2.0, program_timeout=30.0,
                             bridge_messages=5000, bridge_repeat=1), **kw})

    def warmup(self, wl: Workload) -> int:
        return max(8, min(2000, 8 * MiB // wl.size))


def select_workloads(names=None) -> list:
    """Workloads whose name equals or starts with one of ``names`` (all if empty)."""
    if not names:
        return list(WORKLOADS)
    names = [n.strip() for n in names if n.strip()]
    chosen = [w for w in WORKLOADS if any(w.name == n or w.name.startswith(n) for n in names)]
    if not chosen:
        raise SystemExit(f"no workload matches {names}; known: {', '.join(w.name for w in WORKLOADS)}")
    return chosen


def chunk_len(wl: Workload) -> int:
    """K: messages per chunk (one sample and K - 1 fillers); samples stay under ~1/16 of the bytes."""
    return max(16, min(1024, 16 * MiB // wl.size))


def batch_len(wl: Workload) -> int:
    """Messages per put_many call in batch workloads (divides ``chunk_len``)."""
    return max(1, min(256, MiB // wl.size))

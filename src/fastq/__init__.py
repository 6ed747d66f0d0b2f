"""fastq: lock-free multi-process message queues and topics in a shared-memory segment.

>>> import fastq
>>> q = fastq.Queue()            # anonymous; or fastq.Queue("jobs")
>>> q.put({"job": 1}); q.get()
{'job': 1}
"""
from ._errors import Empty, Full, MessageTooLarge, SegmentError, ShutDown, SubscriberLimit
from ._core import Deliveries, Delivery
from ._naming import segment_path
from ._serializers import PickleSerializer, RawSerializer
from ._queue import JoinableQueue, Queue
from ._topic import SubscriberInfo, Subscription, Topic
from ._stats import Stats
from ._workers import RemoteTraceback, WorkerLost
from ._pool import AsyncResult, Executor, Pool
from ._pipeline import Pipeline, Stage, pipeline
from ._dispatch import DeadLetter, Dispatcher
from . import rpc

__version__ = "0.1.0"

__all__ = [
    "Queue",
    "JoinableQueue",
    "Topic",
    "Subscription",
    "SubscriberInfo",
    "Stats",
    "Delivery",
    "Deliveries",
    "Empty",
    "Full",
    "ShutDown",
    "MessageTooLarge",
    "SegmentError",
    "SubscriberLimit",
    "PickleSerializer",
    "RawSerializer",
    "segment_path",
    "Pool",
    "AsyncResult",
    "Executor",
    "pipeline",
    "Pipeline",
    "Stage",
    "WorkerLost",
    "RemoteTraceback",
    "Dispatcher",
    "DeadLetter",
    "rpc",
]


def __getattr__(name: str):
    # fastq.bridge imports nats-py (an optional extra): loaded on first use
    if name == "bridge":
        import importlib  # noqa: PLC0415

        return importlib.import_module(".bridge", __name__)
    raise AttributeError(f"module 'fastq' has no attribute {name!r}")

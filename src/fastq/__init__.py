"""fastq: lock-free multi-process message queues in a shared-memory segment.

>>> import fastq
>>> q = fastq.Queue()            # anonymous; or fastq.Queue("jobs")
>>> q.put({"job": 1}); q.get()
{'job': 1}
"""
from ._errors import Empty, Full, MessageTooLarge, SegmentError, ShutDown
from ._core import Delivery
from ._queue import PickleSerializer, Queue, RawSerializer, segment_path

__version__ = "0.1.0"

__all__ = [
    "Queue",
    "Delivery",
    "Empty",
    "Full",
    "ShutDown",
    "MessageTooLarge",
    "SegmentError",
    "PickleSerializer",
    "RawSerializer",
    "segment_path",
]

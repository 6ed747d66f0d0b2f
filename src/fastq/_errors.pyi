"""Types of fastq's exceptions (the module is _errors.py; this stub adds what
the standard library's classes do not declare)."""
import queue as _queue
import sys

Empty = _queue.Empty

class Full(_queue.Full):
    # set on the Full raised by put_many()/publish_many(): the items put
    # before the one that did not fit (at run time Full is queue.Full)
    count: int

if sys.version_info >= (3, 13):
    ShutDown = _queue.ShutDown
else:
    class ShutDown(Exception): ...

class MessageTooLarge(ValueError): ...
class SegmentError(OSError): ...
class SubscriberLimit(RuntimeError): ...

__all__ = ["Empty", "Full", "ShutDown", "MessageTooLarge", "SegmentError", "SubscriberLimit"]

"""Exceptions raised by fastq.

``Empty`` and ``Full`` are the standard library's :class:`queue.Empty` and
:class:`queue.Full`, so code written for :mod:`queue` catches them unchanged.
"""
import queue as _queue

Empty = _queue.Empty
Full = _queue.Full

if hasattr(_queue, "ShutDown"):  # Python 3.13+
    ShutDown = _queue.ShutDown
else:

    class ShutDown(Exception):  # type: ignore[no-redef]
        """Raised by put() on a queue that was shut down, and by get() once a
        shut-down queue is drained (``queue.ShutDown`` on Python 3.13+)."""


class MessageTooLarge(ValueError):
    """A message is larger than the queue's ``max_message``: it can never fit."""


class SegmentError(OSError):
    """A segment file is not a valid fastq segment, or holds impossible values."""


class SubscriberLimit(RuntimeError):
    """Every subscriber entry of a topic is taken (set ``max_subscribers`` when
    creating it); entries of dead subscribers are reclaimed first."""


__all__ = ["Empty", "Full", "ShutDown", "MessageTooLarge", "SegmentError", "SubscriberLimit"]

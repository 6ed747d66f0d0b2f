"""What every peer adapter is: the ``Adapter`` interface, the ``Endpoint`` a child calls, and the
small helpers several adapters share (polling loops, retrying sends, names, handles the parent keeps)."""

from __future__ import annotations

import itertools
import time

from ..workloads import Workload

FOREVER = 1e6                     # "no timeout" for APIs that refuse None (faster-fifo)
_PARENT_HANDLES: dict = {}        # queues the parent must keep open while a cell runs
# seconds a publisher waits for its subscribers to attach; read as ``base.JOIN_TIMEOUT`` at call time (tests patch it)
JOIN_TIMEOUT = 10.0
_names = itertools.count()


class Endpoint:
    """What a child process calls: bound library methods where possible."""

    __slots__ = ("put", "get", "put_many", "get_many", "close")

    def __init__(self, put=None, get=None, put_many=None, get_many=None, close=lambda: None):
        self.put, self.get, self.put_many, self.get_many, self.close = put, get, put_many, get_many, close


def _poll_none(try_get):
    """Spin on a receive that returns None when empty."""
    def get():
        while True:
            m = try_get()
            if m is not None:
                return m
    return get


def _poll_exc(try_op, exc):
    """Spin on a non-blocking call that raises ``exc`` when it cannot proceed now."""
    def op(*args):
        while True:
            try:
                return try_op(*args)
            except exc:
                pass
    return op


def _retry_send(try_send, backoff: bool):
    """Blocking send over a try_send that returns False when full (sleeps up to 1 ms if ``backoff``)."""
    sleep = time.sleep

    def put(m):
        if try_send(m):
            return
        delay = 0.0
        while not try_send(m):
            if backoff:
                sleep(delay)
                delay = min(delay * 2 or 1e-5, 1e-3)
    return put


def _ident(x):
    return x


class Adapter:
    """Interface of one library.  Instances are sent to the children, so keep them plain."""

    key = "?"
    module = ""
    raw = True          # can move raw bytes
    objects = False     # has its own object (pickle) path
    batch = False       # has put_many/get_many
    mpmc = False        # several producers and consumers may share one queue
    views = False       # raw get returns (unhashable, possibly reused) memoryviews
    topic = False       # publish/subscribe: runs the "topic" workloads (and only those)

    def __init__(self, poll: bool = False):
        self.poll = poll

    @property
    def name(self) -> str:
        return self.key + ("_poll" if self.poll else "")

    @property
    def label(self) -> str:
        return self.key + (" (poll)" if self.poll else "")

    def missing(self):
        """None if the library imports, else a note why it is skipped."""
        try:
            __import__(self.module)
            return None
        except Exception as e:  # noqa: BLE001 - any import failure means "skip"
            return f"{type(e).__name__}: {e}"

    def supports(self, wl: Workload) -> bool:
        """Whether this library can run ``wl`` the way the workload demands."""
        if (wl.kind == "topic") != self.topic:
            return False
        ok = self.raw if wl.raw else self.objects
        if wl.batch:
            ok = ok and self.batch and not self.poll
        if wl.kind != "topic" and (wl.producers > 1 or wl.consumers > 1):
            ok = ok and self.mpmc
        return ok

    def open(self, ctx, wl: Workload, capacity: int):
        """Create one queue in the parent; return a picklable spec the children attach with."""
        raise NotImplementedError

    def sender(self, spec, wl: Workload) -> Endpoint:
        raise NotImplementedError

    def receiver(self, spec, wl: Workload) -> Endpoint:
        raise NotImplementedError

    def close(self, spec) -> None:
        """Release what ``open`` created (parent side)."""


# A topic adapter's sender is the publisher and each receiver one subscriber;
# receiver() returns only once the subscriber is attached (so that it receives
# everything published after the cell's start barrier) and sender() only once
# every subscriber of the cell is attached where the library lets a late
# subscriber miss messages.  Back-pressure is lossless everywhere: a publisher
# waits for its slowest subscriber instead of dropping.

def _fanout_depth(wl: Workload, capacity: int) -> int:
    """Messages a peer may buffer per subscriber (fastq's topic shares one ring of ``capacity`` bytes)."""
    return max(16, min(capacity // wl.size, 16384))

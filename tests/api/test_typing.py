"""Typing: the package is typed (py.typed, inline annotations, a .pyi stub for
the compiled module); mypy must accept ordinary use of the public API and
reject an obvious misuse."""
from __future__ import annotations

from support.typecheck import PKG, assert_mypy_accepts, assert_mypy_rejects

STUBS = [p for p in (PKG / "py.typed", PKG / "_core.pyi") if p.exists()]


def test_package_ships_typing_files():
    assert len(STUBS) == 2, f"py.typed and _core.pyi must ship in {PKG}"


GOOD = """
import queue
from typing import Any, List, Optional
import fastq

q: fastq.Queue = fastq.Queue("jobs", capacity=1 << 20, serializer="raw")
q2 = fastq.Queue.create("x", capacity=4096, max_message=100, mode=0o600)
q3 = fastq.Queue.open("x")
q.put(b"x")
q.put(b"x", block=False, timeout=None)
q.put_nowait(b"y")
n: int = q.put_many([b"a", b"b"], timeout=1.0)
m: Any = q.get(timeout=0.5)
m2: Any = q.get_nowait()
ms: List[Any] = q.get_many(10, block=True, timeout=1)
size: int = q.qsize()
e: bool = q.empty()
f: bool = q.full()
cap: int = q.capacity
mx: int = q.max_message
name: str = q.name
path: Optional[str] = q.path  # None: an anonymous queue has no file
closed: bool = q.closed
q.shutdown(immediate=True)
sd: bool = q.is_shutdown()
with fastq.Queue() as anon:
    anon.put(1)
try:
    q.get_nowait()
except fastq.Empty:
    pass
except (fastq.ShutDown, fastq.SegmentError, fastq.MessageTooLarge, fastq.Full):
    pass
assert fastq.Empty is queue.Empty
p: str = fastq.segment_path("jobs")
q.close()

t: fastq.Topic = fastq.Topic("ticks", capacity=1 << 20, overflow="drop", max_subscribers=8)
t.publish({"px": 1}); t.publish_nowait(2); k: int = t.publish_many([3, 4], timeout=1.0)
s: fastq.Subscription = t.subscribe(start="earliest")
g = t.subscribe(group="workers"); d = t.subscribe(name="billing")
v: Any = s.get(timeout=0.5); vs: List[Any] = s.get_many(10); v2: Any = s.get_nowait()
dl: fastq.Delivery = s.receive(timeout=1.0); dl.ack()
sp = t.subscribe(group="w", prefetch=4); pf: int = sp.prefetch
lag: int = s.lag; dropped: int = s.dropped; sn: Optional[str] = s.name
rows: List[fastq.SubscriberInfo] = t.subscribers()
pid: Optional[int] = rows[0].pid
for item in s:
    break
with t.subscribe() as s2:
    s2.get_nowait()
ov: str = t.overflow; forgot: bool = t.forget("billing")
try:
    t.subscribe()
except fastq.SubscriberLimit:
    pass
t.close()
"""

BAD = """
import fastq
q = fastq.Queue("jobs")
n: str = q.qsize()
q.get_many("ten")
t = fastq.Topic("ticks")
lag: str = t.subscribe().lag
"""


def test_stubs_accept_public_api_usage(tmp_path):
    assert_mypy_accepts(tmp_path, GOOD)


def test_stubs_reject_misuse(tmp_path):
    assert_mypy_rejects(tmp_path, BAD, (4, 5, 7))

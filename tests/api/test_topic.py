"""The public API of fastq.Topic (publish/subscribe), in one process and with
threads, plus small helper processes where a process boundary is the point
(a Topic or a Subscription handed to a multiprocessing child, anonymous-topic
cleanup).  Real multi-process delivery guarantees (fan-out, groups, SIGKILL,
overflow) are in test_topic_multiprocess.py.

Contract under test (the Topic spec):
  * fan-out: every subscription gets every message published after
    subscribe() returned ("latest"), or from the oldest retained one
    ("earliest"), in per-publisher order;
  * groups: each message to exactly one member, every group gets all;
  * durable names keep their position across close;
  * overflow="block": publishers wait for the slowest live subscriber;
    overflow="drop": they never wait, a lapped subscriber skips ahead and
    ``dropped`` counts exactly what it lost;
  * receive(): at most ``prefetch`` (default 1) unacknowledged Deliveries per
    Subscription, in order; a nacked one comes back to the same subscription.
"""
from __future__ import annotations

import multiprocessing as mp
import os
import pickle
import queue
import random
import struct
import textwrap
import threading
import time

import pytest

import fastq

from support.api import check_subscriber_limit, drain_nowait
from support.waiting import call_bounded, in_thread

np = pytest.importorskip("numpy")

pytestmark = pytest.mark.usefixtures("fastq_dir")

SMALL = 4096
MID = 1 << 16
SEQ = struct.Struct("<Q")


def is_shutdown(t):
    """t.is_shutdown, whether the implementation made it a property or (like
    Queue.is_shutdown) a method."""
    v = t.is_shutdown
    return v() if callable(v) else v


def drain_to_shutdown(s):
    """Everything s gets until ShutDown (the topic must be shut down)."""
    out = []
    while True:
        try:
            out += s.get_many(64, timeout=10)
        except fastq.ShutDown:
            return out


def msg(i, size=64):
    """A self-checking raw message: seq then a body derived from it."""
    head = SEQ.pack(i)
    return (head + bytes([(i * 7 + 3) & 0xFF]) * (size - 8))[:max(size, 8)]


def seq_of(m):
    i = SEQ.unpack_from(m)[0]
    assert m == msg(i, len(m)), f"torn or corrupt message (seq {i}, {len(m)} bytes)"
    return i


def fill(t, size=100):
    """publish_nowait raw messages of `size` bytes until Full; how many fit."""
    n = 0
    while True:
        try:
            t.publish_nowait(msg(n, size))
        except fastq.Full:
            return n
        n += 1
        assert n < 100_000, "a block topic with a subscriber that reads nothing never got Full"


def exec_process(ctx, src, **ns):
    """A Process running ``src`` with ``ns`` as globals (works with spawn:
    exec is pickled by reference, the namespace is pickled)."""
    return ctx.Process(target=exec, args=(textwrap.dedent(src), ns))


def join_ok(p, timeout):
    p.join(timeout)
    assert not p.is_alive(), f"{p} still running after {timeout} s"
    assert p.exitcode == 0, f"{p} exited with {p.exitcode}"


# ---- the names the spec adds ------------------------------------------------------


def test_exports():
    assert isinstance(fastq.Topic, type)
    assert issubclass(fastq.SubscriberLimit, RuntimeError)
    assert fastq.SubscriberInfo._fields == ("name", "group", "pid", "alive", "position", "lag")
    assert fastq.Empty is queue.Empty and fastq.Full is queue.Full
    assert callable(fastq.Topic.create) and callable(fastq.Topic.open)


# ---- fan-out ----------------------------------------------------------------------


def test_every_subscriber_gets_every_message_in_order():
    with fastq.Topic("fan", capacity=MID) as t:
        subs = [t.subscribe() for _ in range(3)]
        items = [1, "two", (3, 4), {"five": 5}, None, b"six", [7.0]]
        for x in items:
            t.publish(x)
        for s in subs:
            assert [s.get(timeout=1) for _ in items] == items
            with pytest.raises(fastq.Empty):
                s.get_nowait()


def test_latest_sees_nothing_published_before_subscribe():
    with fastq.Topic("latest", capacity=MID, serializer="raw") as t:
        holder = t.subscribe()  # keeps the early messages retained
        t.publish_many([msg(i) for i in range(5)])
        s = t.subscribe()  # start="latest" is the default
        s2 = t.subscribe(start="latest")
        for x in (s, s2):
            with pytest.raises(fastq.Empty):
                x.get_nowait()
            assert x.lag == 0
        t.publish(msg(5))
        assert seq_of(s.get(timeout=1)) == 5
        assert seq_of(s2.get(timeout=1)) == 5
        assert [seq_of(m) for m in drain_nowait(holder)] == list(range(6))


def test_latest_without_any_subscriber_before():
    with fastq.Topic("latest0", capacity=MID, serializer="raw") as t:
        t.publish_many([msg(i) for i in range(5)])
        s = t.subscribe()
        with pytest.raises(fastq.Empty):
            s.get_nowait()
        t.publish(msg(5))
        assert [seq_of(m) for m in drain_nowait(s)] == [5]


def test_earliest_gets_all_retained_when_nothing_was_released():
    with fastq.Topic("early", capacity=1 << 20, serializer="raw") as t:
        holder = t.subscribe()  # reads nothing: nothing can be released
        t.publish_many([msg(i) for i in range(10)])
        e = t.subscribe(start="earliest")
        late = t.subscribe(start="latest")
        t.publish_many([msg(i) for i in range(10, 13)])
        assert [seq_of(m) for m in drain_nowait(e)] == list(range(13))
        assert [seq_of(m) for m in drain_nowait(late)] == [10, 11, 12]
        assert [seq_of(m) for m in drain_nowait(holder)] == list(range(13))


def test_earliest_after_partial_consumption_is_a_contiguous_suffix():
    with fastq.Topic("early2", capacity=1 << 20, serializer="raw") as t:
        holder = t.subscribe()
        t.publish_many([msg(i) for i in range(10)])
        assert [seq_of(holder.get(timeout=1)) for _ in range(5)] == [0, 1, 2, 3, 4]
        e = t.subscribe(start="earliest")
        got = [seq_of(m) for m in drain_nowait(e)]
        # the oldest retained message is at most the holder's next one (5: 5..9
        # cannot have been released), and what follows is every later message
        assert got and got[0] <= 5 and got == list(range(got[0], 10)), got


def test_earliest_on_a_lapped_drop_topic():
    with fastq.Topic("early3", capacity=SMALL, overflow="drop", serializer="raw") as t:
        N = 1000
        for i in range(N):
            t.publish_nowait(msg(i, 100))  # a drop topic never refuses
        e = t.subscribe(start="earliest")
        got = [seq_of(m) for m in drain_nowait(e)]
        # what a 4 KiB ring retains: a contiguous run ending with the last one
        assert got and got == list(range(got[0], N)), got[:5]
        assert 0 < got[0] and len(got) * 100 <= SMALL
        assert e.dropped == 0, "nothing was lost after the subscription started"


# ---- publish_many / get_many ------------------------------------------------------


def test_publish_many_and_get_many():
    with fastq.Topic("many", capacity=MID) as t:
        s = t.subscribe()
        t.publish_many([])
        t.publish_many(range(10))
        t.publish_many(iter([10, 11]))  # any iterable
        t.publish_many(x for x in (12, 13))
        first = s.get_many(3)
        assert isinstance(first, list) and 1 <= len(first) <= 3
        got = first
        while len(got) < 14:
            batch = s.get_many(5, timeout=1)
            assert 1 <= len(batch) <= 5
            got += batch
        assert got == list(range(14))
        with pytest.raises(fastq.Empty):
            s.get_many(5, block=False)
        with pytest.raises(fastq.Empty):
            s.get_many(5, timeout=0.05)
        t.publish("only")
        assert s.get_many(timeout=1) == ["only"]  # max_messages defaults to 1024


def test_get_many_large_batches_across_wrap():
    with fastq.Topic("gmw", capacity=SMALL, serializer="raw") as t:
        s = t.subscribe()
        sent, got = [], []
        for rnd in range(30):
            batch = [msg(rnd * 30 + i, 8 + i * 3) for i in range(30)]
            t.publish_many(batch, timeout=2)
            sent += batch
            while len(got) < len(sent):
                got += s.get_many(7, timeout=2)
        assert got == sent


def test_publish_many_larger_than_ring_waits_for_the_subscriber():
    with fastq.Topic("pm", capacity=SMALL, serializer="raw") as t:
        s = t.subscribe()
        items = [msg(i, 100) for i in range(300)]
        got = []

        def consume():
            while len(got) < len(items):
                got.extend(s.get_many(16, timeout=5))

        th = threading.Thread(target=consume, daemon=True)
        th.start()
        t.publish_many(items, timeout=5)
        th.join(10)
        assert not th.is_alive()
        assert got == items


# ---- serializers ------------------------------------------------------------------


class Point:
    def __init__(self, x, y):
        self.x, self.y = x, y

    def __eq__(self, other):
        return isinstance(other, Point) and (self.x, self.y) == (other.x, other.y)


def test_pickle_serializer_arbitrary_objects():
    with fastq.Topic("pk", capacity=MID) as t:
        s = t.subscribe()
        objs = [Point(1, 2), {1, 2}, 1 + 2j, 10 ** 40, {"n": [Point(3, 4), (b"b", bytearray(b"x"))]},
                "", b"", ()]
        for o in objs:
            t.publish(o)
        got = [s.get(timeout=1) for _ in objs]
        assert got == objs and type(got[0]) is Point


@pytest.mark.parametrize("arr", [
    np.arange(12, dtype=np.int16).reshape(3, 4),
    np.linspace(0, 1, 7, dtype=np.float32),
    np.zeros((2, 0, 3)),
    np.asfortranarray(np.arange(20, dtype=np.int64).reshape(4, 5)),
    np.arange(30, dtype=np.int32).reshape(5, 6)[::2, 1::2],  # non-contiguous
    np.array([(1, 2.5), (3, 4.5)], dtype=[("a", "<i4"), ("b", "<f8")]),
    np.arange(8, dtype=">u4"),
], ids=lambda a: f"{a.dtype}-{a.shape}")
def test_numpy_roundtrip(arr):
    with fastq.Topic("np", capacity=MID) as t:
        s1, s2 = t.subscribe(), t.subscribe()
        t.publish(arr)
        t.publish({"wrapped": arr})
        for s in (s1, s2):
            out = s.get(timeout=1)
            assert out.dtype == arr.dtype and out.shape == arr.shape
            assert np.array_equal(out, arr)
            assert out.flags.writeable  # a copy, not a view into the ring
            assert np.array_equal(s.get(timeout=1)["wrapped"], arr)


def test_numpy_large_array_to_two_subscribers():
    arr = np.random.default_rng(0).integers(0, 1 << 30, size=(1 << 20) // 8, dtype=np.int64)
    with fastq.Topic("np1m", capacity=4 << 20) as t:
        s1, s2 = t.subscribe(), t.subscribe()
        t.publish(arr)
        a = s1.get(timeout=2)
        a[:] = 0  # the other subscriber's copy is not affected
        b = s2.get(timeout=2)
        assert np.array_equal(b, arr)


def test_raw_serializer_bytes_like_in_bytes_out():
    with fastq.Topic("raw", capacity=MID, serializer="raw") as t:
        s = t.subscribe()
        t.publish(b"bytes")
        t.publish(bytearray(b"bytearray"))
        t.publish(memoryview(b"xxmemoryviewxx")[2:-2])
        t.publish(np.arange(4, dtype=np.uint8))
        t.publish(b"")
        t.publish_many([b"a", bytearray(b"b"), memoryview(b"c")])
        got = drain_nowait(s)
        assert got == [b"bytes", b"bytearray", b"memoryview", bytes([0, 1, 2, 3]), b"",
                       b"a", b"b", b"c"]
        assert all(type(g) is bytes for g in got)
        with pytest.raises(TypeError):
            t.publish("a str is not bytes-like")
        with pytest.raises(fastq.Empty):
            s.get_nowait()
        t.publish(b"still usable")
        assert s.get(timeout=1) == b"still usable"


def test_serializer_errors():
    with pytest.raises(ValueError):
        fastq.Topic("se1", capacity=SMALL, serializer="json")


# ---- sizes and properties ---------------------------------------------------------


def test_properties(fastq_dir):
    with fastq.Topic("props", capacity=5000) as t:
        assert t.name == "props"
        assert t.path == str(fastq_dir / "props")
        assert os.path.exists(t.path)
        assert t.capacity >= 5000
        assert 0 < t.max_message <= t.capacity
        assert t.overflow == "block"
        assert t.max_subscribers == 64
        assert t.closed is False
        assert not is_shutdown(t)
    with fastq.Topic("props2", capacity=SMALL, overflow="drop", max_subscribers=5) as t:
        assert t.overflow == "drop" and t.max_subscribers == 5


def test_max_message_and_message_too_large():
    with fastq.Topic("big", capacity=MID, max_message=1000, serializer="raw") as t:
        assert t.max_message == 1000
        s = t.subscribe()
        t.publish(b"x" * 1000)
        for fn in (lambda: t.publish(b"x" * 1001), lambda: t.publish_nowait(b"x" * 1001),
                   lambda: t.publish(b"x" * 1001, timeout=30),
                   lambda: t.publish_many([b"ok", b"x" * 1001])):
            kind, val = call_bounded(fn, timeout=5)
            assert kind == "exc" and isinstance(val, fastq.MessageTooLarge), (kind, val)
            assert isinstance(val, ValueError)
        got = drain_nowait(s)
        assert got[0] == b"x" * 1000
        assert b"x" * 1001 not in got
        t.publish(b"after")
        assert drain_nowait(s) == [b"after"]


def test_create_and_open(fastq_dir):
    with fastq.Topic.create("co", capacity=1 << 14) as t:
        with pytest.raises(FileExistsError):
            fastq.Topic.create("co", capacity=1 << 14)
        with fastq.Topic.open("co", capacity=1 << 14) as t2:  # an agreeing capacity
            assert t2.capacity == t.capacity and t2.path == t.path
            s = t2.subscribe()
            t.publish("via t")
            assert s.get(timeout=1) == "via t"
        with fastq.Topic("co") as t3:  # open-or-create opens
            assert t3.capacity == t.capacity
    with pytest.raises(FileNotFoundError):
        fastq.Topic.open("missing")
    assert not (fastq_dir / "missing").exists()
    assert sorted(os.listdir(fastq_dir)) == ["co"]


def test_anonymous_topic_unique_and_leaves_no_file(fastq_dir):
    a, b = fastq.Topic(capacity=SMALL), fastq.Topic.create(capacity=SMALL)
    try:
        assert a.name != b.name
        assert a.path is None and b.path is None  # a memfd: no file anywhere
        s = b.subscribe()
        a.publish(1)
        assert s.lag == 0  # another topic
        b.publish(2)
        assert s.get(timeout=5) == 2
    finally:
        a.close()
        b.close()
    assert os.listdir(fastq_dir) == []


def test_anonymous_topic_leaves_nothing_when_creator_exits(fastq_dir, run_py):
    cp = run_py("""
        import fastq
        t = fastq.Topic(capacity=4096)
        s = t.subscribe()
        t.publish("x")
        print(t.path, flush=True)
        # exit without close()
    """, timeout=30)
    assert cp.stdout.strip() == "None"
    assert os.listdir(fastq_dir) == []


@pytest.mark.parametrize("child", ["exit", "close", "publish_then_exit"])
def test_fork_child_leaves_parents_subscriptions_and_anonymous_topic_alone(child, run_py):
    """A forked child that uses, closes or just exits with the handle it
    inherited (like a Queue's) must not unsubscribe its parent nor remove
    the parent's anonymous topic."""
    cp = run_py(f"""
        import os, sys, fastq
        t = fastq.Topic(capacity=1 << 16, serializer="raw")
        s = t.subscribe()
        t.publish(b"before")
        pid = os.fork()
        if pid == 0:
            if {child!r} == "close":
                t.close()
            elif {child!r} == "publish_then_exit":
                t.publish(b"from child")
            sys.exit(0)  # a normal interpreter exit (atexit handlers, GC)
        os.waitpid(pid, 0)
        t.publish(b"after")
        got = []
        try:
            while True:
                got.append(s.get_nowait())
        except Exception as e:
            end = type(e).__name__
        print(not t.closed, len(t.subscribers()), end, got, flush=True)
    """, timeout=30)
    extra = [b"from child"] if child == "publish_then_exit" else []
    assert cp.stdout.strip() == f"True 1 Empty {[b'before'] + extra + [b'after']}"


def test_context_managers_and_closed_handles():
    with fastq.Topic("cm", capacity=MID) as t:
        with t.subscribe() as s:
            assert s.closed is False
            t.publish(1)
            assert s.get(timeout=1) == 1
        assert s.closed is True
        with pytest.raises(ValueError):
            s.get_nowait()
        with pytest.raises(ValueError):
            s.get(timeout=1)
        s.close()  # idempotent
    assert t.closed is True
    for fn in (lambda: t.publish(1), lambda: t.publish_nowait(1), lambda: t.publish_many([1]),
               lambda: t.subscribe(), t.subscribers):
        with pytest.raises(ValueError):
            fn()
    t.close()  # idempotent


def test_close_in_with_block_on_exception():
    with pytest.raises(KeyError):
        with fastq.Topic("cme", capacity=SMALL) as t:
            raise KeyError
    assert t.closed


def test_flush_recover_unlink(tmp_path):
    path = str(tmp_path / "t.seg")
    t = fastq.Topic(path, capacity=1 << 14, serializer="raw")
    try:
        assert t.path == path
        s = t.subscribe()
        t.publish(b"a")
        t.flush()
        assert not t.recover(), "nothing to repair"
        t.unlink()
        assert not os.path.exists(path)
        t.publish(b"b")  # attached handles keep working
        assert drain_nowait(s) == [b"a", b"b"]
        t.unlink()  # already gone: no error
    finally:
        t.close()


def test_file_mode_and_trust(tmp_path):
    import stat
    with fastq.Topic("m1", capacity=SMALL) as t:
        assert stat.S_IMODE(os.stat(t.path).st_mode) == 0o600
    path = str(tmp_path / "shared")
    old = os.umask(0o077)
    try:
        with fastq.Topic(path, capacity=SMALL, mode=0o666) as t:
            assert stat.S_IMODE(os.stat(path).st_mode) == 0o666
            s = t.subscribe()
            with pytest.raises(PermissionError):
                fastq.Topic.open(path)  # others can write it: refused by default
            with fastq.Topic.open(path, trusted=True) as t2:
                t2.publish("trusted")
            assert s.get(timeout=1) == "trusted"
    finally:
        os.umask(old)


# ---- block overflow: Full, timeouts -------------------------------------------------


def test_block_topic_full_and_timeouts():
    with fastq.Topic("full", capacity=SMALL, serializer="raw") as t:
        s = t.subscribe()  # reads nothing for now: holds the publishers back
        n = fill(t, 100)
        assert n > 0
        for fn in (lambda: t.publish_nowait(msg(n, 100)),
                   lambda: t.publish(msg(n, 100), block=False),
                   lambda: t.publish(msg(n, 100), timeout=0.1),
                   lambda: t.publish(msg(n, 100), timeout=0),
                   lambda: t.publish_many([msg(n, 100)] * 3, timeout=0.1)):
            kind, val = call_bounded(fn, timeout=5)
            assert kind == "exc" and isinstance(val, fastq.Full), (kind, val)
        assert s.lag == n
        got = drain_nowait(s)
        assert [seq_of(m) for m in got] == list(range(n))
        t.publish_nowait(msg(n, 100))  # room again
        assert [seq_of(m) for m in drain_nowait(s)] == [n]
        # the get side: Empty on every non-blocking / timed-out call
        for fn in (s.get_nowait, lambda: s.get(block=False), lambda: s.get(timeout=0.05),
                   lambda: s.get(timeout=0), lambda: s.get_many(4, block=False),
                   lambda: s.get_many(4, timeout=0.05), lambda: s.receive(block=False),
                   lambda: s.receive(timeout=0.05)):
            kind, val = call_bounded(fn, timeout=5)
            assert kind == "exc" and isinstance(val, fastq.Empty), (kind, val)


def test_blocked_publish_wakes_when_subscriber_reads():
    with fastq.Topic("wk", capacity=SMALL, serializer="raw") as t:
        s = t.subscribe()
        n = fill(t, 500)
        timer = threading.Timer(0.2, lambda: s.get_many(100))
        timer.start()
        t.publish(msg(n, 500), timeout=10)
        timer.join(10)
        # the timer took the first batch (at least one); the new one comes last
        rest = [seq_of(m) for m in drain_nowait(s)]
        assert rest[-1] == n and rest == list(range(rest[0], n + 1))


def test_blocked_get_wakes_on_publish_from_another_thread():
    with fastq.Topic("wkg", capacity=SMALL) as t:
        s = t.subscribe()
        threading.Timer(0.2, t.publish, args=("late",)).start()
        assert s.get(timeout=10) == "late"


def test_no_subscriber_means_no_waiting():
    with fastq.Topic("nosub", capacity=SMALL, serializer="raw") as t:
        for i in range(2000):  # ~50 times the ring
            t.publish_nowait(msg(i, 100))
        s = t.subscribe()
        t.publish(msg(2000, 100))
        assert [seq_of(m) for m in drain_nowait(s)] == [2000]


def test_closed_subscription_stops_holding_publishers_back():
    with fastq.Topic("clh", capacity=SMALL, serializer="raw") as t:
        s = t.subscribe()
        fast = t.subscribe()
        n = fill(t, 100)
        assert len(drain_nowait(fast)) == n
        with pytest.raises(fastq.Full):
            t.publish_nowait(msg(n, 100))  # s still holds it
        s.close()
        for i in range(n, n + 3 * n):
            t.publish_nowait(msg(i, 100))
            assert seq_of(fast.get_nowait()) == i


def test_negative_timeouts_and_bad_batch_sizes_are_value_errors():
    with fastq.Topic("neg", capacity=SMALL) as t:
        s = t.subscribe()
        for fn in (lambda: s.get(timeout=-1), lambda: s.get_many(3, timeout=-1),
                   lambda: s.receive(timeout=-1), lambda: t.publish(1, timeout=-0.5),
                   lambda: t.publish_many([1], timeout=-1), lambda: s.get_many(0)):
            with pytest.raises(ValueError):
                fn()
        with pytest.raises(fastq.Empty):
            s.get_nowait()  # the failed calls published nothing
        t.publish(1)
        assert s.get(timeout=1) == 1


# ---- drop overflow ----------------------------------------------------------------


def test_drop_topic_publisher_never_waits_and_dropped_is_exact():
    with fastq.Topic("drop", capacity=SMALL, overflow="drop", serializer="raw") as t:
        s = t.subscribe()
        assert s.dropped == 0
        N = 1000
        for i in range(N):
            t.publish_nowait(msg(i, 100))
        got = []
        while True:
            try:
                m = s.get_nowait()
            except fastq.Empty:
                break
            got.append(seq_of(m))
            assert s.dropped == got[-1] + 1 - len(got), (got[-1], len(got), s.dropped)
        assert got and got[-1] == N - 1
        assert got == list(range(got[0], N)), "one lap: the retained run is contiguous"
        assert len(got) + s.dropped == N and s.dropped > 0


def test_drop_topic_subscriber_that_keeps_up_loses_nothing():
    with fastq.Topic("drop2", capacity=SMALL, overflow="drop", serializer="raw") as t:
        s = t.subscribe()
        for i in range(2000):
            t.publish_nowait(msg(i, 100))
            if i % 5 == 4:
                assert [seq_of(m) for m in drain_nowait(s)] == list(range(i - 4, i + 1))
        assert s.dropped == 0


def test_drop_topic_receive_ack():
    with fastq.Topic("drop3", capacity=SMALL, overflow="drop", serializer="raw") as t:
        s = t.subscribe()
        t.publish(msg(0))
        d = s.receive(timeout=1)
        assert seq_of(d.value) == 0 and not d.redelivered
        d.ack()
        with pytest.raises(fastq.Empty):
            s.get_nowait()


# ---- lag and subscribers() ---------------------------------------------------------


def test_lag():
    with fastq.Topic("lag", capacity=MID) as t:
        s = t.subscribe()
        g1, g2 = t.subscribe(group="g"), t.subscribe(group="g")
        assert s.lag == 0 and g1.lag == 0
        t.publish_many(range(5))
        assert s.lag == 5 and g1.lag == 5 and g2.lag == 5
        assert s.get(timeout=1) == 0 and s.get(timeout=1) == 1
        assert s.lag == 3
        assert g1.get(timeout=1) == 0
        assert g1.lag == 4 and g2.lag == 4, "lag is the group's"
        drain_nowait(s)
        assert s.lag == 0
        t.publish(5)
        assert s.lag == 1 and g2.lag == 5


def test_subscribers_rows():
    with fastq.Topic("rows", capacity=MID) as t:
        assert t.subscribers() == []
        plain = t.subscribe()
        g1, g2 = t.subscribe(group="g"), t.subscribe(group="g")
        dur = t.subscribe(name="billing")
        assert plain.name is None
        assert g1.group == "g" and g1.name is None
        assert dur.name == "billing"
        t.publish_many(range(10))
        rows = t.subscribers()
        assert len(rows) == 4, rows
        for r in rows:
            assert isinstance(r, fastq.SubscriberInfo)
            assert r.pid == os.getpid() and r.alive
            assert r.lag == 10
            assert isinstance(r.position, int) and r.position >= 0
        assert sum(r.group == "g" for r in rows) == 2
        assert [r.name for r in rows].count("billing") == 1

        def row_of(pred):
            match = [r for r in t.subscribers() if pred(r)]
            assert len(match) == 1, t.subscribers()
            return match[0]

        def is_plain(r):
            return r.name is None and r.group != "g"

        before = row_of(is_plain)
        assert [plain.get(timeout=1) for _ in range(3)] == [0, 1, 2]
        after = row_of(is_plain)
        assert after.lag == 7 == plain.lag
        assert after.position > before.position
        g1.get(timeout=1)
        assert all(r.lag == 9 for r in t.subscribers() if r.group == "g")
        # a durable name with nobody attached: pid None, not alive, position kept
        dur.close()
        r = row_of(lambda r: r.name == "billing")
        assert r.pid is None and not r.alive and r.lag == 10
        t.publish(10)
        assert row_of(lambda r: r.name == "billing").lag == 11
        # a closed plain subscription has no row any more
        plain.close()
        assert not [r for r in t.subscribers() if is_plain(r)]
        assert len(t.subscribers()) == 3


# ---- durable subscriptions ----------------------------------------------------------


def test_durable_close_and_reopen_resumes():
    with fastq.Topic("dur", capacity=MID) as t:
        s = t.subscribe(name="billing")
        t.publish_many(range(10))
        assert [s.get(timeout=1) for _ in range(4)] == [0, 1, 2, 3]
        s.close()
        t.publish_many(range(10, 15))  # published while nobody is attached
        s2 = t.subscribe(name="billing")
        assert s2.name == "billing"
        assert s2.lag == 11
        assert drain_nowait(s2) == list(range(4, 15))
        # an unacknowledged delivery goes back on close, to the next subscriber
        t.publish_many([15, 16])
        d = s2.receive(timeout=1)
        assert d.value == 15
        s2.close()
        s3 = t.subscribe(name="billing")
        d = s3.receive(timeout=5)
        assert d.value == 15 and d.redelivered
        d.ack()
        assert drain_nowait(s3) == [16]


def test_durable_position_survives_reopening_the_topic(tmp_path):
    path = str(tmp_path / "durable.seg")
    with fastq.Topic(path, capacity=MID) as t:
        s = t.subscribe(name="d")
        t.publish_many(range(6))
        assert s.get(timeout=1) == 0
        t.flush()
    with fastq.Topic.open(path) as t:
        t.publish(6)
        s = t.subscribe(name="d")
        assert drain_nowait(s) == [1, 2, 3, 4, 5, 6]


def test_durable_name_attached_twice_on_block_topic_splits():
    """Two subscriptions with one durable name share its position (like a
    group): each message to exactly one of them."""
    with fastq.Topic("dur2", capacity=MID) as t:
        a, b = t.subscribe(name="n"), t.subscribe(name="n")
        t.publish_many(range(200))
        got_a, got_b = [], []
        rng = random.Random(1)
        for _ in range(10_000):
            if len(got_a) + len(got_b) >= 200:
                break
            sub, acc = rng.choice([(a, got_a), (b, got_b)])
            try:
                acc.extend(sub.get_many(rng.randint(1, 5), block=False))
            except fastq.Empty:
                pass
        assert sorted(got_a + got_b) == list(range(200))
        assert got_a == sorted(got_a) and got_b == sorted(got_b)


def test_drop_topic_durable_name_is_exclusive():
    with fastq.Topic("dur3", capacity=MID, overflow="drop") as t:
        a = t.subscribe(name="only")
        with pytest.raises(RuntimeError) as ei:
            t.subscribe(name="only")
        assert not isinstance(ei.value, fastq.SubscriberLimit)
        a.close()
        b = t.subscribe(name="only")  # free again once closed
        t.publish(1)
        assert b.get(timeout=1) == 1


# ---- groups -----------------------------------------------------------------------


def test_groups_split_and_every_group_gets_all():
    with fastq.Topic("grp", capacity=MID) as t:
        a1, a2 = t.subscribe(group="A"), t.subscribe(group="A")
        b = t.subscribe(group="B")
        plain = t.subscribe()
        N = 300
        t.publish_many(range(N))
        got1, got2 = [], []
        rng = random.Random(0)
        for _ in range(20_000):
            if len(got1) + len(got2) >= N:
                break
            sub, acc = rng.choice([(a1, got1), (a2, got2)])
            try:
                if rng.random() < 0.5:
                    acc.append(sub.get_nowait())
                else:
                    acc.extend(sub.get_many(rng.randint(1, 7), block=False))
            except fastq.Empty:
                pass
        assert got1 and got2, "both members of the group got messages"
        assert sorted(got1 + got2) == list(range(N)), "each message to exactly one member"
        assert got1 == sorted(got1) and got2 == sorted(got2)
        assert drain_nowait(b) == list(range(N))
        assert drain_nowait(plain) == list(range(N))
        with pytest.raises(fastq.Empty):
            a1.get_nowait()
        with pytest.raises(fastq.Empty):
            a2.get_nowait()
        assert a1.lag == a2.lag == 0


def test_group_member_joining_later_shares_the_group_position():
    with fastq.Topic("grp2", capacity=MID) as t:
        a1 = t.subscribe(group="A")
        t.publish_many(range(10))
        assert [a1.get(timeout=1) for _ in range(3)] == [0, 1, 2]
        a2 = t.subscribe(group="A")
        assert a2.lag == 7
        assert drain_nowait(a2) == list(range(3, 10))
        with pytest.raises(fastq.Empty):
            a1.get_nowait()


def test_group_nack_redelivers_once_and_to_nobody_else_meanwhile():
    # Where a nacked group message goes is not in the spec; the docstring of
    # Subscription.receive says: the next receive() of this subscription
    # returns it again.  Either way: exactly once more, flagged redelivered.
    with fastq.Topic("grp3", capacity=MID) as t:
        a1, a2 = t.subscribe(group="A"), t.subscribe(group="A")
        t.publish("job")
        d = a1.receive(timeout=1)
        with pytest.raises(fastq.Empty):
            a2.get_nowait()  # invisible while a1 holds it
        d.nack()
        d2 = a1.receive(timeout=5)
        assert d2.value == "job" and d2.redelivered
        d2.ack()
        for s in (a1, a2):
            with pytest.raises(fastq.Empty):
                s.get_nowait()


def test_close_with_unacked_delivery_gives_it_to_the_group():
    with fastq.Topic("grp4", capacity=MID) as t:
        a1, a2 = t.subscribe(group="A"), t.subscribe(group="A")
        t.publish_many(["x", "y"])
        d = a1.receive(timeout=1)
        assert d.value == "x"
        a1.close()
        got = []
        for _ in range(2):
            d2 = a2.receive(timeout=5)
            got.append((d2.value, d2.redelivered))
            d2.ack()
        assert sorted(got) == [("x", True), ("y", False)]


# ---- receive / ack / nack ----------------------------------------------------------


def test_receive_ack_nack_one_unacked_at_a_time():
    with fastq.Topic("rcv", capacity=MID) as t:
        s = t.subscribe()
        t.publish_many(["a", "b", "c", "d"])
        d = s.receive(timeout=1)
        assert isinstance(d, fastq.Delivery)
        assert d.value == "a" and not d.redelivered
        for fn in (lambda: s.receive(timeout=0.1), lambda: s.receive(block=False),
                   lambda: s.get(timeout=0.1), s.get_nowait):
            with pytest.raises(RuntimeError):
                fn()
        d.ack()
        with pytest.raises(ValueError):
            d.ack()  # already settled
        d = s.receive(timeout=1)
        assert d.value == "b" and not d.redelivered
        d.nack()  # requeue=True: comes back
        d = s.receive(timeout=1)
        assert d.value == "b" and d.redelivered
        d.nack(requeue=False)  # dropped
        d = s.receive(timeout=1)
        assert d.value == "c" and not d.redelivered
        d.ack()
        assert s.get(timeout=1) == "d"
        with pytest.raises(fastq.Empty):
            s.get_nowait()
        assert s.lag == 0


def test_delivery_context_manager():
    with fastq.Topic("rcm", capacity=MID) as t:
        s = t.subscribe()
        t.publish_many(["ok", "boom"])
        with s.receive(timeout=1) as d:
            assert d.value == "ok"
        with pytest.raises(KeyError):
            with s.receive(timeout=1) as d2:
                raise KeyError(d2.value)
        d3 = s.receive(timeout=1)
        assert d3.value == "boom" and d3.redelivered
        d3.ack()
        with pytest.raises(fastq.Empty):
            s.get_nowait()


def test_receive_wakes_on_publish_and_times_out():
    with fastq.Topic("rcw", capacity=MID) as t:
        s = t.subscribe()
        with pytest.raises(fastq.Empty):
            s.receive(timeout=0.05)
        threading.Timer(0.2, t.publish, args=("late",)).start()
        d = s.receive(timeout=10)
        assert d.value == "late"
        d.ack()


# ---- shutdown and iteration -------------------------------------------------------


def test_shutdown_publish_raises_get_drains():
    with fastq.Topic("sd", capacity=MID) as t, fastq.Topic.open("sd") as other:
        s, s2 = t.subscribe(), t.subscribe()
        t.publish_many([1, 2, 3])
        assert not is_shutdown(t)
        t.shutdown()
        assert is_shutdown(t) and is_shutdown(other)
        for fn in (lambda: t.publish(4), lambda: t.publish_nowait(4),
                   lambda: t.publish_many([4, 5]), lambda: other.publish(4)):
            with pytest.raises(fastq.ShutDown):
                fn()
        assert s.get(timeout=1) == 1
        assert s.get_many(10, timeout=1) == [2, 3]
        for fn in (s.get_nowait, lambda: s.get(timeout=5), s.get, lambda: s.get_many(3),
                   s.receive):
            kind, val = call_bounded(fn, timeout=5)
            assert kind == "exc" and isinstance(val, fastq.ShutDown), (kind, val)
        # another subscription still has its own copy of everything
        d = s2.receive(timeout=1)
        assert d.value == 1
        d.ack()
        assert s2.get_many(10, timeout=1) == [2, 3]
        with pytest.raises(fastq.ShutDown):
            s2.get(timeout=5)


def test_shutdown_immediate():
    with fastq.Topic("sdi", capacity=MID) as t:
        s = t.subscribe()
        t.publish_many([1, 2, 3])
        t.shutdown(immediate=True)
        for fn in (s.get_nowait, lambda: s.get(timeout=1), lambda: s.get_many(5),
                   lambda: t.publish(1)):
            with pytest.raises(fastq.ShutDown):
                fn()


def test_shutdown_wakes_blocked_get_and_publish_threads():
    with fastq.Topic("sdw", capacity=SMALL, serializer="raw") as t:
        s, full = t.subscribe(), t.subscribe()
        fill(t, 100)
        drain_nowait(s)
        res = {}

        def blocked(key, fn):
            try:
                fn()
                res[key] = "returned"
            except BaseException as e:  # noqa: BLE001
                res[key] = e

        ths = [threading.Thread(target=blocked, args=("get", lambda: s.get()), daemon=True),
               threading.Thread(target=blocked, args=("pub", lambda: t.publish(msg(0, 100))),
                                daemon=True)]
        for th in ths:
            th.start()
        time.sleep(0.3)  # both asleep: s has nothing, `full` holds the ring
        assert not res, res
        t.shutdown()
        for th in ths:
            th.join(5)
            assert not th.is_alive(), "a blocked call did not wake on shutdown"
        assert isinstance(res["get"], fastq.ShutDown), res
        assert isinstance(res["pub"], fastq.ShutDown), res


def test_iteration_ends_on_shutdown_after_draining():
    with fastq.Topic("it", capacity=MID) as t:
        s = t.subscribe()
        t.publish_many(range(5))
        t.shutdown()
        assert list(s) == [0, 1, 2, 3, 4]
        assert list(s) == []


def test_iteration_in_a_thread_while_publishing():
    with fastq.Topic("it2", capacity=SMALL, serializer="raw") as t:
        out = []
        ready = threading.Event()

        def reader():
            with t.subscribe() as s:
                ready.set()
                for m in s:
                    out.append(seq_of(m))

        th = threading.Thread(target=reader, daemon=True)
        th.start()
        assert ready.wait(10)
        for i in range(2000):
            t.publish(msg(i, 40), timeout=10)
        t.shutdown()
        th.join(10)
        assert not th.is_alive(), "iteration did not end on shutdown"
        assert out == list(range(2000))


# ---- bad arguments -------------------------------------------------------------


def test_bad_arguments_are_value_errors():
    with pytest.raises(ValueError):
        fastq.Topic("b1", capacity=SMALL, overflow="ring")
    for bad in (0, -1):
        with pytest.raises(ValueError):
            fastq.Topic("b3", capacity=bad)
    for bad in (1.5, "big"):  # a wrong type (issue 10, item 13)
        with pytest.raises(TypeError):
            fastq.Topic("b3", capacity=bad)
    with fastq.Topic("b4", capacity=SMALL) as t:
        with pytest.raises(ValueError):
            t.subscribe(start="middle")
        with pytest.raises(ValueError):
            t.subscribe(group="g", name="n")
        assert t.subscribers() == [], "a refused subscribe takes no entry"
    with fastq.Topic("b5", capacity=SMALL, overflow="drop") as t:
        with pytest.raises(ValueError):
            t.subscribe(group="g")  # drop topics have no groups
        assert t.subscribers() == []


def test_bad_max_subscribers_is_value_error():
    for bad in (0, -1):
        with pytest.raises(ValueError):
            fastq.Topic("b6", capacity=SMALL, max_subscribers=bad)


# ---- subscriber table ----------------------------------------------------------------


def test_subscriber_limit_in_one_process():
    with fastq.Topic("lim", capacity=MID, max_subscribers=4) as t:
        subs = [t.subscribe() for _ in range(4)]
        with pytest.raises(fastq.SubscriberLimit) as ei:
            t.subscribe()
        check_subscriber_limit(ei.value, 4)
        subs.pop().close()
        s = t.subscribe()  # an entry is free again
        t.publish("x")
        assert s.get(timeout=1) == "x"
        with pytest.raises(fastq.SubscriberLimit):
            t.subscribe()


# ---- threads ------------------------------------------------------------------------


def test_threads_each_with_their_own_subscription():
    N, NT = 3000, 4
    with fastq.Topic("thr", capacity=1 << 14, serializer="raw") as t:
        results, errors = {}, []
        barrier = threading.Barrier(NT + 1)

        def reader(k):
            try:
                with t.subscribe() as s:
                    barrier.wait(10)
                    got = []
                    while len(got) < N:
                        got += [seq_of(m) for m in s.get_many(100, timeout=10)]
                    results[k] = got
            except BaseException as e:  # noqa: BLE001
                errors.append(e)

        ths = [threading.Thread(target=reader, args=(k,), daemon=True) for k in range(NT)]
        for th in ths:
            th.start()
        barrier.wait(10)
        for i in range(0, N, 50):
            t.publish_many([msg(j, 8 + j % 50) for j in range(i, i + 50)], timeout=10)
        for th in ths:
            th.join(30)
        assert not any(th.is_alive() for th in ths)
        assert not errors, errors
        for k in range(NT):
            assert results[k] == list(range(N)), k


def test_group_members_in_threads_split():
    N = 4000
    with fastq.Topic("thr2", capacity=1 << 14, serializer="raw") as t:
        results, errors = {}, []
        barrier = threading.Barrier(3)

        def member(k):
            try:
                with t.subscribe(group="w") as s:
                    barrier.wait(10)
                    got = []
                    while True:
                        try:
                            got += [seq_of(m) for m in s.get_many(32, timeout=10)]
                        except fastq.ShutDown:
                            break
                    results[k] = got
            except BaseException as e:  # noqa: BLE001
                errors.append(e)

        ths = [threading.Thread(target=member, args=(k,), daemon=True) for k in range(2)]
        for th in ths:
            th.start()
        barrier.wait(10)
        for i in range(N):
            t.publish(msg(i, 16), timeout=10)
        t.shutdown()
        for th in ths:
            th.join(30)
        assert not any(th.is_alive() for th in ths)
        assert not errors, errors
        allm = results[0] + results[1]
        assert sorted(allm) == list(range(N)), "each message to exactly one member"
        for k in (0, 1):
            assert results[k] == sorted(results[k])


def test_subscription_used_from_two_threads_at_once_raises():
    with fastq.Topic("two", capacity=MID) as t:
        s = t.subscribe()
        th, res = in_thread(lambda: s.get(timeout=10))
        time.sleep(0.3)  # the thread is inside s.get()
        assert th.is_alive()
        for fn in (s.get_nowait, lambda: s.get_many(3, block=False),
                   lambda: s.receive(block=False)):
            with pytest.raises(RuntimeError):
                fn()
        t.publish("for the first thread")
        th.join(10)
        assert res.get("value", res.get("error")) == "for the first thread"
        with pytest.raises(fastq.Empty):
            s.get_nowait()  # usable again from this thread


# ---- pickling and children ------------------------------------------------------------


def test_pickled_topic_reopens_the_same_segment():
    with fastq.Topic("pt", capacity=1 << 14, serializer="raw", overflow="drop") as t:
        t2 = pickle.loads(pickle.dumps(t))
        try:
            assert t2.path == t.path and t2.capacity == t.capacity
            assert t2.overflow == "drop"
            s = t.subscribe()
            t2.publish(b"\x80not pickle")  # raw kept
            assert s.get(timeout=1) == b"\x80not pickle"
        finally:
            t2.close()


@pytest.mark.parametrize("method", ["fork", "spawn"])
def test_topic_passes_to_a_child(method, procs):
    ctx = mp.get_context(method)
    with fastq.Topic("tchild", capacity=1 << 16, serializer="raw") as t, \
            fastq.Queue("tchild_back", capacity=1 << 16) as back:
        s = t.subscribe()
        p = procs.add(exec_process(ctx, """
            import os
            t.publish(b"from-child:%d" % os.getpid())
            sub = t.subscribe()
            back.put(("ready", t.path, t.capacity, t.overflow))
            m = sub.get(timeout=30)
            back.put(("got", m, type(m).__name__))
            sub.close()
            t.close()
        """, t=t, back=back))
        p.start()
        assert back.get(timeout=60) == ("ready", t.path, t.capacity, "block")
        assert s.get(timeout=10) == b"from-child:%d" % p.pid
        t.publish(b"\x00raw\xff")
        assert back.get(timeout=30) == ("got", b"\x00raw\xff", "bytes")
        join_ok(p, 30)
        assert s.get_nowait() == b"\x00raw\xff"


@pytest.mark.parametrize("method", ["fork", "spawn"])
@pytest.mark.parametrize("kind", ["plain", "group", "durable"])
def test_pickled_subscription_makes_the_child_a_member(kind, method, procs):
    """A Subscription pickled into a child: the child becomes another member
    of the same group (plain: of its anonymous group; durable: same name),
    so parent and child split the messages."""
    ctx = mp.get_context(method)
    N = 400
    with fastq.Topic("sp", capacity=1 << 16, serializer="raw") as t, \
            fastq.Queue("sp_back", capacity=1 << 20) as back:
        s = {"plain": lambda: t.subscribe(), "group": lambda: t.subscribe(group="g"),
             "durable": lambda: t.subscribe(name="dn")}[kind]()
        independent = t.subscribe()
        p = procs.add(exec_process(ctx, """
            import pickle, fastq
            sub = pickle.loads(blob)
            back.put(("ready", sub.name, sub.group))
            got = []
            while True:
                try:
                    got.extend(sub.get_many(16, timeout=30))
                except fastq.ShutDown:
                    break
            back.put(("done", got))
        """, blob=pickle.dumps(s), back=back))
        p.start()
        tag, name, group = back.get(timeout=60)
        assert tag == "ready"
        if kind == "group":
            assert group == "g"
        if kind == "durable":
            assert name == "dn"
        t.publish_many([msg(i, 16) for i in range(N)])
        t.shutdown()
        mine = []
        while True:
            try:
                mine += s.get_many(16, timeout=30)
            except fastq.ShutDown:
                break
        tag, theirs = back.get(timeout=60)
        join_ok(p, 30)
        a, b = [seq_of(m) for m in mine], [seq_of(m) for m in theirs]
        assert sorted(a + b) == list(range(N)), (
            f"parent {len(a)} + child {len(b)}: each message to exactly one member")
        assert a == sorted(a) and b == sorted(b)
        assert [seq_of(m) for m in drain_to_shutdown(independent)] == list(range(N))


# ---- forget() and kinds of segment -------------------------------------------


def test_forget_removes_a_durable_name_and_frees_publishers(fastq_dir):
    """A durable name nobody reads holds the ring (block topic); forget()
    removes it, its position and its unfinished messages."""
    with fastq.Topic("fg", capacity=1 << 12, serializer="raw") as t:
        d = t.subscribe(name="billing")
        with pytest.raises(RuntimeError, match="live subscriber"):
            t.forget("billing")
        d.close()
        n = 0
        with pytest.raises(fastq.Full):
            while True:
                t.publish_nowait(b"x" * 100)
                n += 1
        assert n > 0
        rows = t.subscribers()
        assert [(r.name, r.pid, r.alive) for r in rows] == [("billing", None, False)]
        assert rows[0].lag == n
        assert t.forget("billing") is True
        assert t.forget("billing") is False
        assert t.subscribers() == []
        t.publish_nowait(b"fits again")
        # a new subscriber of the name starts afresh (latest), not at the old position
        d = t.subscribe(name="billing")
        t.publish(b"after")
        assert d.get_nowait() == b"after"
        with pytest.raises(fastq.Empty):
            d.get_nowait()


def test_queue_and_topic_refuse_each_others_segments(fastq_dir):
    with fastq.Topic("tk", capacity=1 << 12):
        with pytest.raises(ValueError, match="is a topic, not a queue"):
            fastq.Queue.open("tk")
        with pytest.raises(ValueError, match="is a topic, not a queue"):
            fastq.Queue("tk")
    with fastq.Queue("qk", capacity=1 << 12):
        with pytest.raises(ValueError, match="is a queue, not a topic"):
            fastq.Topic.open("qk")


# ---- prefetch: several unacknowledged deliveries per subscription ----------------------


def receive_now(s):
    """s.receive() when a message is there: the value (raises RuntimeError at once
    at the prefetch bound, whatever the timeout)."""
    t0 = time.monotonic()
    try:
        return s.receive(timeout=5)
    finally:
        assert time.monotonic() - t0 < 2.5, "receive() waited instead of raising"


def test_prefetch_three_in_order_then_the_bound():
    with fastq.Topic("pf3", capacity=MID) as t:
        s = t.subscribe(prefetch=3)
        assert s.prefetch == 3
        t.publish_many(range(10))
        ds = [s.receive(timeout=1) for _ in range(3)]
        assert [d.value for d in ds] == [0, 1, 2]
        assert not any(d.redelivered for d in ds)
        for fn in (lambda: receive_now(s), lambda: s.receive(block=False)):
            with pytest.raises(RuntimeError, match=r"3 deliveries are unacknowledged, the "
                                                   r"prefetch bound"):
                fn()
        assert len(t.subscribers()) == 3, "one subscriber entry per delivery in flight"
        ds[1].ack()  # out of order
        d3 = s.receive(timeout=1)
        assert d3.value == 3 and not d3.redelivered
        with pytest.raises(RuntimeError, match="prefetch bound"):
            s.receive(block=False)
        ds[2].ack()
        ds[0].ack()
        d4, d5 = s.receive(timeout=1), s.receive(timeout=1)
        assert (d4.value, d5.value) == (4, 5)
        assert len(t.subscribers()) == 3, "the entries are reused, not added"
        for d in (d5, d3, d4):
            d.ack()
        assert drain_nowait(s) == [6, 7, 8, 9]
        assert s.lag == 0
        with pytest.raises(fastq.Empty):
            s.receive(block=False)


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_prefetch_random_acks_and_nacks_lose_and_duplicate_nothing(seed):
    """Thousands of messages, deliveries settled in random order, some nacked:
    the fresh ones come in publish order, a nacked one comes back at the next
    receive() flagged redelivered, every message is acked exactly once."""
    rng = random.Random(seed)
    N, k = 3000, rng.choice([2, 4, 7])
    with fastq.Topic("pfr", capacity=1 << 20, serializer="raw") as t:
        s = t.subscribe(prefetch=k)
        t.publish_many([msg(i, 16) for i in range(N)])
        held, acked, nacked = [], [], set()
        next_fresh = 0
        bound_hits = 0
        while len(acked) < N:
            if len(held) < k and (not held or rng.random() < 0.55):
                try:
                    d = s.receive(block=False)
                except fastq.Empty:
                    assert held, "nothing held and nothing to receive before the end"
                    continue
                i = seq_of(d.value)
                if nacked:
                    assert d.redelivered and i in nacked, \
                        f"the next receive() after a nack returns a nacked message, not {i}"
                    nacked.discard(i)
                else:
                    assert not d.redelivered
                    assert i == next_fresh, f"expected {next_fresh} in order, got {i}"
                    next_fresh += 1
                held.append((i, d))
                continue
            if len(held) == k:
                with pytest.raises(RuntimeError, match=f"{k} deliveries are unacknowledged"):
                    s.receive(block=False)
                bound_hits += 1
            i, d = held.pop(rng.randrange(len(held)))
            if rng.random() < 0.25:
                d.nack()
                nacked.add(i)
            else:
                d.ack()
                acked.append(i)
        assert sorted(acked) == list(range(N)), "every message acked exactly once"
        assert next_fresh == N and not held and not nacked
        assert bound_hits > 0
        with pytest.raises(fastq.Empty):
            s.get_nowait()
        assert s.lag == 0


def test_prefetch_get_and_get_many_while_deliveries_are_unacked():
    with fastq.Topic("pfg", capacity=MID) as t:
        s = t.subscribe(prefetch=2)
        t.publish_many(range(12))
        d0 = s.receive(timeout=1)
        assert d0.value == 0
        assert s.get(timeout=1) == 1
        assert s.get_many(3, timeout=1) == [2, 3, 4]
        d5 = s.receive(timeout=1)
        assert d5.value == 5
        # both members hold a delivery: get() needs one that does not
        for fn in (s.get_nowait, lambda: s.get(timeout=5), lambda: s.get_many(3),
                   lambda: list(zip(range(1), s))):
            with pytest.raises(RuntimeError, match="2 deliveries are unacknowledged"):
                fn()
        d0.ack()
        assert s.get_nowait() == 6
        d5.nack()
        assert s.get(timeout=1) == 5, "a nacked message comes back to the next call"
        d7 = s.receive(timeout=1)
        assert d7.value == 7 and not d7.redelivered
        assert s.get_many(10, timeout=1) == [8, 9, 10, 11]
        d7.ack()
        with pytest.raises(fastq.Empty):
            s.get_nowait()


def test_prefetch_one_keeps_todays_behaviour():
    with fastq.Topic("pf1", capacity=MID) as t:
        s = t.subscribe()
        assert s.prefetch == 1
        t.publish_many(range(3))
        d = s.receive(timeout=1)
        for fn in (lambda: s.receive(block=False), s.get_nowait, lambda: s.get_many(2)):
            with pytest.raises(RuntimeError, match="1 delivery is unacknowledged, the "
                                                   "prefetch bound"):
                fn()
        d.ack()
        assert s.get_nowait() == 1
        assert len(t.subscribers()) == 1


def test_prefetch_two_subscriptions_of_a_group_split_exactly():
    N = 2000
    rng = random.Random(7)
    with fastq.Topic("pfgrp", capacity=1 << 20) as t:
        a, b = t.subscribe(group="g", prefetch=4), t.subscribe(group="g", prefetch=4)
        other = t.subscribe(group="other", prefetch=4)
        t.publish_many(range(N))
        got = {a: [], b: []}
        held = {a: [], b: []}
        while sum(len(v) for v in got.values()) + sum(len(v) for v in held.values()) < N \
                or any(held.values()):
            s = rng.choice([a, b])
            if len(held[s]) < 4 and rng.random() < 0.6:
                try:
                    d = s.receive(block=False)
                except fastq.Empty:
                    continue
                assert not d.redelivered
                held[s].append(d)
            elif held[s]:
                d = held[s].pop(rng.randrange(len(held[s])))
                d.ack()
                got[s].append(d.value)
        assert got[a] and got[b], "both members got messages"
        assert sorted(got[a] + got[b]) == list(range(N)), "each message to exactly one"
        assert len(t.subscribers()) <= 4 + 4 + 1 + 0 and a.lag == b.lag == 0
        assert drain_nowait(other) == list(range(N)), "another group gets all, in order"


def test_prefetch_close_gives_every_unacked_delivery_to_the_group():
    with fastq.Topic("pfcl", capacity=MID) as t:
        a, b = t.subscribe(group="g", prefetch=3), t.subscribe(group="g")
        t.publish_many(range(5))
        ds = [a.receive(timeout=1) for _ in range(3)]
        assert [d.value for d in ds] == [0, 1, 2]
        rows = t.subscribers()
        assert len(rows) == 4 and {(r.group, r.pid) for r in rows} == {("g", os.getpid())}
        a.close()
        assert a.closed and len(t.subscribers()) == 1, "close() frees every entry"
        with pytest.raises(ValueError):
            a.receive(block=False)
        got = []
        for _ in range(5):
            d = b.receive(timeout=5)
            got.append((d.value, d.redelivered))
            d.ack()
        assert sorted(got) == [(0, True), (1, True), (2, True), (3, False), (4, False)]
        with pytest.raises(ValueError):
            ds[0].ack()  # left to the group on close: settled


def test_prefetch_drop_topic_and_bad_values_are_value_errors():
    with fastq.Topic("pfbad", capacity=SMALL, max_subscribers=8) as t:
        for bad in (0, -1, 1.5, "2", None, True, 65, 9):
            with pytest.raises(ValueError, match="prefetch"):
                t.subscribe(prefetch=bad)
        assert t.subscribers() == [], "a refused subscribe takes no entry"
        assert t.subscribe(prefetch=8).prefetch == 8  # up to max_subscribers
    with fastq.Topic("pfbig", capacity=SMALL, max_subscribers=100) as t:
        assert t.subscribe(prefetch=64).prefetch == 64
        with pytest.raises(ValueError, match=r"1\.\.64"):
            t.subscribe(prefetch=65)
    with fastq.Topic("pfdrop", capacity=SMALL, overflow="drop") as t:
        for kw in ({}, {"name": "d"}):
            with pytest.raises(ValueError, match='overflow="drop"'):
                t.subscribe(prefetch=2, **kw)
        assert t.subscribers() == []
        s = t.subscribe(prefetch=1)
        t.publish(1)
        d = s.receive(timeout=1)
        assert d.value == 1
        d.ack()


def test_prefetch_table_full_when_adding_a_member_then_usable():
    with fastq.Topic("pffull", capacity=MID, max_subscribers=4) as t:
        s = t.subscribe(prefetch=4)
        others = [t.subscribe(), t.subscribe()]
        t.publish_many(range(10))
        d0, d1 = s.receive(timeout=1), s.receive(timeout=1)  # the 2nd takes the 4th entry
        with pytest.raises(fastq.SubscriberLimit) as ei:
            s.receive(timeout=5)
        assert isinstance(ei.value, RuntimeError)
        text = str(ei.value)
        assert "max_subscribers" in text and "2 unacknowledged deliveries" in text, text
        with pytest.raises(fastq.SubscriberLimit):
            s.get_nowait()  # get() too needs a member without a delivery
        d0.ack()  # usable: a member is free again
        d2 = s.receive(timeout=1)
        assert d2.value == 2 and not d2.redelivered, "the refused call took no message"
        others.pop().close()  # an entry is free: the pool grows
        d3 = s.receive(timeout=1)
        assert d3.value == 3
        assert len([r for r in t.subscribers() if r.group is None]) == 4
        for d in (d1, d2, d3):
            d.ack()
        assert drain_nowait(s) == list(range(4, 10))
        assert drain_nowait(others[0]) == list(range(10))


def test_prefetch_rest_of_a_batch_given_back_comes_first():
    """get_many() that cannot deserialize a message returns those before it and
    keeps the rest of its claim (not redelivered: still in order).  receive()
    then takes them one by one: while one is unacknowledged, a fresh claim by
    another member would overtake the rest, so the next call is refused."""
    with fastq.Topic("pfrest", capacity=MID) as t:
        s = t.subscribe(prefetch=3)
        t.publish_many([0, 1, BadPickle(), 3, 4])
        assert s.get_many(10, timeout=1) == [0, 1]
        with pytest.raises(ValueError):
            s.receive(timeout=1)  # the bad one: consumed, the error propagates
        d3 = s.receive(timeout=1)
        assert d3.value == 3 and not d3.redelivered
        t.publish_many([5, 6])
        with pytest.raises(RuntimeError, match="come next, in order"):
            s.receive(timeout=1)
        d3.ack()
        d4 = s.receive(timeout=1)
        assert d4.value == 4 and not d4.redelivered
        d5 = s.receive(timeout=1)  # the rest is done: other members claim again
        d6 = s.receive(timeout=1)
        assert (d5.value, d6.value) == (5, 6)
        for d in (d6, d4, d5):
            d.ack()
        with pytest.raises(fastq.Empty):
            s.get_nowait()


def test_prefetch_nack_of_a_batch_rest_keeps_the_order_and_the_flags():
    """A message of a claim given back by get_many() is received and nacked: it
    comes back flagged redelivered, and the messages after it in that claim still
    come next, in order and not flagged (they were never delivered); a nack must
    not let another member's fresh claim overtake them."""
    with fastq.Topic("pfnack", capacity=MID) as t:
        s = t.subscribe(prefetch=3)
        t.publish_many([0, 1, BadPickle(), 3, 4, 5])
        assert s.get_many(10, timeout=1) == [0, 1]
        with pytest.raises(ValueError):
            s.receive(timeout=1)
        d3 = s.receive(timeout=1)
        assert d3.value == 3 and not d3.redelivered
        d3.nack()
        t.publish_many([6, 7])
        d3 = s.receive(timeout=1)
        assert d3.value == 3 and d3.redelivered
        d3.ack()
        got = []
        for _ in range(4):
            d = s.receive(timeout=1)
            got.append((d.value, d.redelivered))
            d.ack()
        assert got == [(4, False), (5, False), (6, False), (7, False)], got


@pytest.mark.parametrize("prefetch", [1, 2])
def test_a_dropped_subscription_delivery_is_given_back(prefetch):
    """A Delivery dropped without an answer is given back at once (its __del__
    nacks it), as for a Queue: no reference cycle keeps it, and the subscription
    does not stay at its prefetch bound."""
    with fastq.Topic("pfdrop%d" % prefetch, capacity=MID) as t:
        s = t.subscribe(prefetch=prefetch)
        t.publish_many(range(5))
        for _ in range(prefetch):
            d = s.receive(timeout=1)
        del d
        got = []
        for _ in range(5):
            d = s.receive(timeout=1)
            got.append(d.value)
            d.ack()
            del d
        assert sorted(got) == [0, 1, 2, 3, 4], got
        with pytest.raises(fastq.Empty):
            s.get_nowait()


@pytest.mark.parametrize("kind", ["queue", "topic"])
def test_forked_child_cannot_settle_the_parents_delivery(run_py, kind):
    """A Delivery inherited by a forked child is the parent's claim: ack() or
    nack() there raises RuntimeError and changes nothing (the child's garbage
    collection does not give it back either); the parent settles it."""
    make = ("q = fastq.Queue(capacity=1 << 16); q.put_many(range(3)); src = q"
            if kind == "queue" else
            "t = fastq.Topic(capacity=1 << 16); src = t.subscribe(); t.publish_many(range(3))")
    cp = run_py("""
        import os, fastq
        %s
        d = src.receive(timeout=5)
        pid = os.fork()
        if pid == 0:
            for how in ("ack", "nack"):
                try:
                    getattr(d, how)()
                    print("child", how, "worked", flush=True)
                except RuntimeError as e:
                    print("child", how, "refused" if "forked" in str(e) else e, flush=True)
            del d
            os._exit(0)
        os.waitpid(pid, 0)
        d.nack()
        print([src.receive(timeout=5).value for _ in range(1)], d.value, flush=True)
    """ % make, timeout=30)
    lines = cp.stdout.split("\n")
    assert lines[:3] == ["child ack refused", "child nack refused", "[0] 0"], \
        cp.stdout + cp.stderr


class BadPickle:
    """Pickles; unpickling it raises ValueError (int("not a number"))."""

    def __reduce__(self):
        return (int, ("not a number",))


def test_prefetch_subscription_one_thread_at_a_time_acks_from_any():
    with fastq.Topic("pfthr", capacity=MID) as t:
        s = t.subscribe(prefetch=3)
        t.publish("first")
        d = s.receive(timeout=1)
        th, res = in_thread(lambda: s.receive(timeout=10))
        time.sleep(0.3)  # the thread is inside s.receive()
        assert th.is_alive()
        for fn in (s.get_nowait, lambda: s.get_many(3, block=False),
                   lambda: s.receive(block=False)):
            with pytest.raises(RuntimeError, match="another thread"):
                fn()
        # (close() from another thread succeeds: test_threads_hangs.py)
        d.ack()  # a delivery may be settled from another thread meanwhile
        t.publish("second")
        th.join(10)
        d2 = res.get("value", res.get("error"))
        assert isinstance(d2, fastq.Delivery) and d2.value == "second", d2
        d2.ack()
        with pytest.raises(fastq.Empty):
            s.get_nowait()


@pytest.mark.parametrize("method", ["fork", "spawn"])
def test_pickled_subscription_keeps_prefetch(method, procs):
    ctx = mp.get_context(method)
    with fastq.Topic("pfpk", capacity=1 << 16) as t, \
            fastq.Queue("pfpk_back", capacity=1 << 16) as back:
        s = t.subscribe(group="g", prefetch=3)
        same = pickle.loads(pickle.dumps(s))
        assert same.prefetch == 3 and same.group == "g"
        same.close()
        p = procs.add(exec_process(ctx, """
            import pickle
            sub = pickle.loads(blob)
            back.put(("ready", sub.prefetch))
            ds = [sub.receive(timeout=30) for _ in range(3)]
            try:
                sub.receive(timeout=5)
                err = None
            except RuntimeError as e:
                err = str(e)
            back.put(("got", [d.value for d in ds], err))
            for d in ds:
                d.ack()
            sub.close()
        """, blob=pickle.dumps(s), back=back))
        p.start()
        assert back.get(timeout=60) == ("ready", 3)
        t.publish_many(range(3))
        tag, values, err = back.get(timeout=30)
        assert tag == "got" and values == [0, 1, 2]
        assert err is not None and "3 deliveries are unacknowledged" in err, err
        join_ok(p, 30)
        t.publish(3)
        assert s.get(timeout=1) == 3
        with pytest.raises(fastq.Empty):
            s.get_nowait()


def test_prefetch_forked_child_joins_with_a_member_of_its_own(run_py):
    """A forked child that uses an inherited prefetch subscription joins its
    group with a member of its own (as a pickled one does): it never takes
    the parent's member or its delivery, and each message goes to one of them."""
    cp = run_py("""
        import os, sys, fastq
        t = fastq.Topic(capacity=1 << 16)
        s = t.subscribe(prefetch=2)
        t.publish_many(range(3))
        d = s.receive(timeout=5)
        pid = os.fork()
        if pid == 0:
            with s.receive(block=False) as mine:
                print("child:", mine.value, mine.redelivered, flush=True)
            s.close()
            os._exit(0)
        os.waitpid(pid, 0)
        d.ack()
        print(len(t.subscribers()), [s.get_nowait() for _ in range(1)], flush=True)
        try:
            s.get_nowait()
        except fastq.Empty:
            print("drained", flush=True)
    """, timeout=30)
    assert cp.stdout.split("\n")[:3] == ["child: 1 False", "1 [2]", "drained"], \
        cp.stdout + cp.stderr

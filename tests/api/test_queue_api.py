"""The public API of fastq.Queue, in one process (plus small helper
subprocesses where a process boundary is the point: anonymous-queue cleanup,
Ctrl-C)."""
from __future__ import annotations

import json
import os
import pickle
import queue
import random
import signal
import stat
import threading
import time
from collections import defaultdict

import pytest

import fastq

from support.api import get_all_nowait
from support.messages import Passthrough
from support.waiting import call_bounded

np = pytest.importorskip("numpy")

pytestmark = pytest.mark.usefixtures("fastq_dir")

SMALL = 4096  # the minimum ring: max_message = 2032


def fill_raw(q, size=0):
    """Put raw messages of `size` bytes until Full; return how many fit."""
    n = 0
    while True:
        try:
            q.put_nowait(b"\0" * size)
        except fastq.Full:
            return n
        n += 1
        assert n < 1_000_000


# ---- basic operations ---------------------------------------------------------


def test_put_get_fifo():
    with fastq.Queue("fifo", capacity=1 << 16) as q:
        items = [1, "two", (3, 4), {"five": 5}, None, b"six", [7.0]]
        for x in items:
            q.put(x)
        assert q.qsize() == len(items)
        assert [q.get(timeout=1) for _ in items] == items
        assert q.empty() and q.qsize() == 0


def test_nowait_variants():
    with fastq.Queue("nw", capacity=SMALL, serializer="raw") as q:
        with pytest.raises(queue.Empty):
            q.get_nowait()
        with pytest.raises(queue.Empty):
            q.get(block=False)
        q.put_nowait(b"a")
        q.put(b"b", block=False)
        assert q.get_nowait() == b"a"
        assert q.get(block=False) == b"b"
        n = fill_raw(q, 100)
        assert n > 0
        with pytest.raises(queue.Full):
            q.put_nowait(b"x" * 100)
        with pytest.raises(queue.Full):
            q.put(b"x" * 100, block=False)
        assert q.qsize() == n


def test_put_many_get_many_order_and_bounds():
    with fastq.Queue("many", capacity=1 << 16) as q:
        assert q.put_many([]) == 0
        assert q.put_many(range(10)) == 10
        assert q.put_many(iter([10, 11])) == 2  # any iterable
        assert q.qsize() == 12
        assert q.get_many(1) == [0]
        assert q.get_many(3) == [1, 2, 3]
        t0 = time.monotonic()
        rest = q.get_many(100, timeout=5)  # returns what is there, no waiting for more
        assert time.monotonic() - t0 < 1.0
        assert rest == list(range(4, 12))
        with pytest.raises(queue.Empty):
            q.get_many(5, block=False)
        with pytest.raises(ValueError):
            q.get_many(0)


def test_get_many_returns_without_waiting_for_more():
    with fastq.Queue("gm", capacity=1 << 16) as q:
        q.put("only")
        t0 = time.monotonic()
        assert q.get_many(1000, timeout=3) == ["only"]
        assert time.monotonic() - t0 < 1.0


def test_get_many_waits_for_the_first():
    with fastq.Queue("gmw", capacity=1 << 16) as q:
        threading.Timer(0.2, q.put, args=("late",)).start()
        t0 = time.monotonic()
        assert q.get_many(10, timeout=5) == ["late"]
        assert 0.1 < time.monotonic() - t0 < 3


def test_get_many_large_batch_across_wrap():
    with fastq.Queue("gmb", capacity=SMALL, serializer="raw") as q:
        got = []
        sent = []
        for rnd in range(20):
            batch = [bytes([rnd, i]) * (i + 1) for i in range(30)]
            assert q.put_many(batch, timeout=2) == 30
            sent += batch
            while len(got) < len(sent):
                got += q.get_many(7, timeout=2)
        assert got == sent


def test_put_many_larger_than_ring_blocks_and_completes():
    # 200 messages of 100 bytes do not fit a 4 KiB ring at once: put_many must
    # split and wait for a consumer.
    with fastq.Queue("pm", capacity=SMALL, serializer="raw") as q:
        items = [bytes([i]) * 100 for i in range(200)]
        got = []

        def consume():
            while len(got) < len(items):
                got.extend(q.get_many(16, timeout=5))

        t = threading.Thread(target=consume, daemon=True)
        t.start()
        assert q.put_many(items, timeout=5) == 200
        t.join(10)
        assert not t.is_alive()
        assert got == items


VARIED_SIZES = """
import random, fastq
rng = random.Random(%(seed)d)
q = fastq.Queue("wrap", capacity=4096, serializer="raw")
pending = []
for i in range(%(n)d):
    n = rng.choice([0, 1, 7, 8, 9, 15, 16, 17, 100, 1000, 2032])
    msg = bytes([i & 0xFF]) * n
    try:
        q.put_nowait(msg)
        pending.append(msg)
        continue
    except fastq.Full:
        assert pending, "Full on an empty queue"
    # drain a few, then one by one until it fits (a record never crosses the
    # end of the ring, so it may need more than its own size)
    for _ in range(rng.randint(1, len(pending))):
        assert q.get_nowait() == pending.pop(0)
    while True:
        try:
            q.put_nowait(msg)
            break
        except fastq.Full:
            assert pending, "Full on an empty queue"
            assert q.get_nowait() == pending.pop(0)
    pending.append(msg)
while pending:
    assert q.get_nowait() == pending.pop(0)
try:
    q.get_nowait()
    raise SystemExit("a message too many")
except fastq.Empty:
    pass
print("ok")
"""


def test_varied_sizes_wraparound_single_process(run_py):
    # in a subprocess: a segfault is a failed assertion, not a dead pytest
    cp = run_py(VARIED_SIZES % {"seed": 1, "n": 3000}, timeout=60, check=False)
    assert cp.returncode == 0 and cp.stdout.strip() == "ok", (cp.returncode, cp.stderr[-2000:])


RING_END_8 = """
import fastq
C = %(cap)d
q = fastq.Queue(capacity=C, serializer="raw")
q.put(b"a" * (C // 2 - 16)); assert q.get_nowait() == b"a" * (C // 2 - 16)  # record of C/2
q.put(b"b" * (C // 2 - 24)); assert q.get_nowait() == b"b" * (C // 2 - 24)  # record of C/2-8
# the tail is now 8 bytes before the end of the ring: the next record needs
# padding that is shorter than a record header
q.put(b"c")
assert q.get_nowait() == b"c"
q.put(b"d" * 100)
assert q.get_nowait() == b"d" * 100
print("ok")
"""


@pytest.mark.parametrize("cap", [4096, 1 << 16])
def test_put_when_tail_is_8_bytes_before_ring_end(cap, run_py):
    cp = run_py(RING_END_8 % {"cap": cap}, timeout=30, check=False)
    assert cp.returncode == 0 and cp.stdout.strip() == "ok", (cp.returncode, cp.stderr[-2000:])


# ---- status -------------------------------------------------------------------


def test_qsize_empty_full():
    with fastq.Queue("st", capacity=SMALL, serializer="raw") as q:
        assert q.empty() and not q.full() and q.qsize() == 0
        # records are 16-byte header + payload, rounded to 16: 1000-byte
        # payloads take 1024 bytes; three of them and a 992-byte one (1008)
        # leave 16 bytes: room for exactly one empty message
        for _ in range(3):
            q.put_nowait(b"x" * 1000)
        q.put_nowait(b"y" * 992)
        assert q.qsize() == 4 and not q.empty()
        with pytest.raises(queue.Full):
            q.put_nowait(b"x" * 1000)
        # a big message does not fit, but the smallest one does: not full()
        assert not q.full()
        q.put_nowait(b"")
        assert q.full(), "not even an empty message fits: full() must be True"
        assert q.qsize() == 5
        with pytest.raises(queue.Full):
            q.put_nowait(b"")
        assert q.get_nowait() == b"x" * 1000
        assert not q.full()
        assert q.qsize() == 4


def test_full_matches_put_nowait_of_empty_message():
    with fastq.Queue("st2", capacity=SMALL, serializer="raw") as q:
        n = fill_raw(q, 0)
        assert n == SMALL // 16
        assert q.full()
        assert q.qsize() == n


def test_capacity_and_max_message():
    with fastq.Queue("c1", capacity=5000) as q:
        assert q.capacity == 8192  # rounded up to a power of two
        assert q.max_message == 8192 // 2 - 16
    with fastq.Queue("c2", capacity=100) as q:
        assert q.capacity == 4096  # at least 4096
    with fastq.Queue("c3", capacity=1 << 16, max_message=1000, serializer="raw") as q:
        assert q.max_message == 1000
        q.put(b"x" * 1000)
        with pytest.raises(fastq.MessageTooLarge):
            q.put(b"x" * 1001)
        assert q.get_nowait() == b"x" * 1000
    with pytest.raises(ValueError):
        fastq.Queue("c4", capacity=SMALL, max_message=SMALL)  # cannot fit the ring
    for bad in (0, -1):
        with pytest.raises(ValueError):
            fastq.Queue("c5", capacity=bad)
    for bad in (1.5, "big"):  # a wrong type (issue 10, item 13)
        with pytest.raises(TypeError):
            fastq.Queue("c5", capacity=bad)


def test_open_reports_the_real_capacity_and_refuses_a_conflicting_one():
    with fastq.Queue.create("c6", capacity=1 << 14) as q:
        with fastq.Queue.open("c6") as q2:
            assert q2.capacity == q.capacity == 1 << 14
        with fastq.Queue("c6", capacity=1 << 14) as q3:  # open_or_create opens
            assert q3.capacity == 1 << 14
        # an explicit capacity the queue does not have is refused (issue 10, item 12)
        with pytest.raises(ValueError, match="capacity"):
            fastq.Queue.open("c6", capacity=1 << 20)
        with pytest.raises(ValueError, match="capacity"):
            fastq.Queue("c6", capacity=1 << 20)


# ---- timeouts -----------------------------------------------------------------


def test_exceptions_are_the_stdlib_ones():
    assert fastq.Empty is queue.Empty
    assert fastq.Full is queue.Full
    assert issubclass(fastq.MessageTooLarge, ValueError)
    assert issubclass(fastq.SegmentError, OSError)


@pytest.mark.parametrize("timeout", [0.05, 0.3])
def test_get_timeout(timeout):
    with fastq.Queue("to", capacity=SMALL) as q:
        t0 = time.monotonic()
        with pytest.raises(queue.Empty):
            q.get(timeout=timeout)
        dt = time.monotonic() - t0
        assert timeout * 0.9 <= dt < timeout + 0.5
        t0 = time.monotonic()
        with pytest.raises(queue.Empty):
            q.get_many(5, timeout=timeout)
        assert timeout * 0.9 <= time.monotonic() - t0 < timeout + 0.5


def test_get_timeout_zero_and_nonblocking_are_immediate():
    with fastq.Queue("to0", capacity=SMALL) as q:
        t0 = time.monotonic()
        for _ in range(10):
            with pytest.raises(queue.Empty):
                q.get(timeout=0)
            with pytest.raises(queue.Empty):
                q.get(block=False, timeout=5)  # timeout ignored when not blocking
        assert time.monotonic() - t0 < 0.5


@pytest.mark.parametrize("timeout", [0.05, 0.3])
def test_put_timeout(timeout):
    with fastq.Queue("tp", capacity=SMALL, serializer="raw") as q:
        fill_raw(q, 100)
        t0 = time.monotonic()
        with pytest.raises(queue.Full):
            q.put(b"y" * 100, timeout=timeout)
        dt = time.monotonic() - t0
        assert timeout * 0.9 <= dt < timeout + 0.5
        t0 = time.monotonic()
        with pytest.raises(queue.Full):
            q.put_many([b"y" * 100] * 3, timeout=timeout)
        assert timeout * 0.9 <= time.monotonic() - t0 < timeout + 0.5


def test_negative_timeout_is_value_error():
    with fastq.Queue("neg", capacity=SMALL) as q:
        with pytest.raises(ValueError):
            q.get(timeout=-1)
        with pytest.raises(ValueError):
            q.put(1, timeout=-0.5)
        with pytest.raises(ValueError):
            q.get_many(3, timeout=-1)
        with pytest.raises(ValueError):
            q.put_many([1], timeout=-1)
        assert q.qsize() == 0  # nothing was put by the failed calls
        q.put(1)
        assert q.get(timeout=1) == 1


def test_blocked_get_wakes_on_put_from_another_thread():
    with fastq.Queue("wk", capacity=SMALL) as q:
        threading.Timer(0.2, q.put, args=("x",)).start()
        t0 = time.monotonic()
        assert q.get(timeout=5) == "x"
        assert time.monotonic() - t0 < 1.5


def test_blocked_put_wakes_on_get_from_another_thread():
    with fastq.Queue("wk2", capacity=SMALL, serializer="raw") as q:
        fill_raw(q, 500)
        threading.Timer(0.2, q.get).start()
        t0 = time.monotonic()
        q.put(b"z" * 500, timeout=5)
        assert time.monotonic() - t0 < 1.5


# ---- MessageTooLarge ----------------------------------------------------------


def _too_large_calls(q, big):
    return {
        "put": lambda: q.put(big),
        "put_timeout": lambda: q.put(big, timeout=30),
        "put_nowait": lambda: q.put_nowait(big),
        "put_many": lambda: q.put_many([big]),
        "put_many_mixed": lambda: q.put_many([b"ok", big, b"ok2"]),
    }


@pytest.mark.parametrize("state", ["empty", "partly", "full"])
def test_message_too_large_raw(state):
    q = fastq.Queue("big", capacity=SMALL, serializer="raw")
    try:
        before = []
        if state == "partly":
            before = [b"m%d" % i for i in range(5)]
            q.put_many(before)
        elif state == "full":
            while True:
                try:
                    m = b"f%d" % len(before)
                    q.put_nowait(m)
                    before.append(m)
                except fastq.Full:
                    break
            while True:  # top up with empty messages: not even those fit now
                try:
                    q.put_nowait(b"")
                    before.append(b"")
                except fastq.Full:
                    break
            assert q.full()
        big = b"B" * (q.max_message + 1)
        for what, fn in _too_large_calls(q, big).items():
            t0 = time.monotonic()
            kind, val = call_bounded(fn, timeout=5)
            assert kind != "hung", f"{what} hung on a too-large message ({state} queue)"
            assert kind == "exc" and isinstance(val, fastq.MessageTooLarge), (what, kind, val)
            assert isinstance(val, ValueError)
            assert not isinstance(val, queue.Full)
            assert time.monotonic() - t0 < 0.5, f"{what} was not raised at once"
        # the queue stays usable, nothing lost, no partial batch
        assert q.qsize() == len(before)
        got = get_all_nowait(q)
        assert got == before
        q.put(b"x" * q.max_message)  # the largest message still fits
        assert q.get_nowait() == b"x" * q.max_message
    finally:
        q.shutdown()  # wakes anything left blocked by a bug
        q.close()


def test_message_too_large_pickle_and_numpy():
    with fastq.Queue("bigp", capacity=SMALL) as q:
        q.put("keep")
        with pytest.raises(fastq.MessageTooLarge):
            q.put(b"x" * q.max_message)  # pickling adds a header
        with pytest.raises(fastq.MessageTooLarge):
            q.put(np.zeros(q.max_message, dtype=np.uint8))  # out-of-band path
        with pytest.raises(fastq.MessageTooLarge):
            q.put_nowait(list(range(10000)))
        with pytest.raises(fastq.MessageTooLarge):
            q.put_many(["a", np.zeros(10000)])
        assert q.qsize() == 1
        assert q.get_nowait() == "keep"
        q.put(np.arange(10))
        assert np.array_equal(q.get_nowait(), np.arange(10))


def test_max_message_boundary():
    with fastq.Queue("bnd", capacity=SMALL, serializer="raw") as q:
        assert q.max_message == 2032
        q.put(b"a" * 2032)
        with pytest.raises(fastq.MessageTooLarge) as ei:
            q.put(b"a" * 2033)
        assert "2033" in str(ei.value) and "2032" in str(ei.value)
        assert q.get_nowait() == b"a" * 2032


# ---- shutdown -----------------------------------------------------------------


def test_shutdown_puts_raise_gets_drain():
    with fastq.Queue("sd", capacity=SMALL) as q:
        q.put_many([1, 2, 3])
        assert not q.is_shutdown()
        q.shutdown()
        assert q.is_shutdown()
        with pytest.raises(fastq.ShutDown):
            q.put(4)
        with pytest.raises(fastq.ShutDown):
            q.put_nowait(4)
        with pytest.raises(fastq.ShutDown):
            q.put_many([4, 5])
        assert q.get(timeout=1) == 1
        assert q.get_many(10, timeout=1) == [2, 3]
        for fn in (q.get_nowait, lambda: q.get(timeout=5), lambda: q.get(),
                   lambda: q.get_many(3)):
            kind, val = call_bounded(fn, timeout=3)
            assert kind == "exc" and isinstance(val, fastq.ShutDown), (kind, val)


def test_shutdown_immediate():
    with fastq.Queue("sdi", capacity=SMALL) as q:
        q.put_many([1, 2, 3])
        q.shutdown(immediate=True)
        with pytest.raises(fastq.ShutDown):
            q.get_nowait()
        with pytest.raises(fastq.ShutDown):
            q.get(timeout=1)
        with pytest.raises(fastq.ShutDown):
            q.put(1)


def test_shutdown_seen_by_other_handle():
    with fastq.Queue("sdo", capacity=SMALL) as a, fastq.Queue.open("sdo") as b:
        a.shutdown()
        assert b.is_shutdown()
        with pytest.raises(fastq.ShutDown):
            b.put(1)


def test_shutdown_wakes_blocked_get_thread():
    with fastq.Queue("sdw", capacity=SMALL) as q:
        res = {}

        def blocked():
            t0 = time.monotonic()
            try:
                q.get()  # no timeout: only shutdown can end it
            except BaseException as e:  # noqa: BLE001
                res["exc"] = e
            res["t"] = time.monotonic() - t0

        t = threading.Thread(target=blocked, daemon=True)
        t.start()
        time.sleep(0.3)
        assert t.is_alive()
        t_sd = time.monotonic()
        q.shutdown()
        t.join(5)
        assert not t.is_alive(), "get() did not wake on shutdown"
        assert isinstance(res.get("exc"), fastq.ShutDown)
        assert time.monotonic() - t_sd < 1.0


def test_shutdown_wakes_blocked_put_thread():
    with fastq.Queue("sdp", capacity=SMALL, serializer="raw") as q:
        fill_raw(q, 100)
        res = {}

        def blocked():
            try:
                q.put(b"x" * 100)
            except BaseException as e:  # noqa: BLE001
                res["exc"] = e

        t = threading.Thread(target=blocked, daemon=True)
        t.start()
        time.sleep(0.3)
        assert t.is_alive()
        q.shutdown()
        t.join(5)
        assert not t.is_alive(), "put() did not wake on shutdown"
        assert isinstance(res.get("exc"), fastq.ShutDown)


# ---- lifecycle ----------------------------------------------------------------


def test_close_then_use_raises_value_error():
    q = fastq.Queue("cl", capacity=SMALL)
    q.put(1)
    assert not q.closed
    q.close()
    assert q.closed
    q.close()  # idempotent
    for fn in (lambda: q.put(1), lambda: q.get(), lambda: q.get_nowait(),
               lambda: q.put_nowait(1), lambda: q.put_many([1]), lambda: q.get_many(2),
               q.qsize, q.empty, q.full, lambda: q.capacity, lambda: q.max_message,
               q.shutdown, q.is_shutdown):
        with pytest.raises(ValueError):
            fn()
    assert "closed" in repr(q)


def test_context_manager_closes():
    with fastq.Queue("cm", capacity=SMALL) as q:
        assert isinstance(q, fastq.Queue)
        q.put("x")
        assert q.name == "cm"
        assert "cm" in repr(q)
    assert q.closed
    with pytest.raises(ValueError):
        q.put(1)
    # the named queue persists: reopen and find the message
    with fastq.Queue.open("cm") as q2:
        assert q2.get_nowait() == "x"


def test_close_in_with_block_on_exception():
    with pytest.raises(RuntimeError):
        with fastq.Queue("cme", capacity=SMALL) as q:
            raise RuntimeError
    assert q.closed


def test_create_exists_and_open_missing(fastq_dir):
    with fastq.Queue.create("ex", capacity=SMALL):
        with pytest.raises(FileExistsError):
            fastq.Queue.create("ex", capacity=SMALL)
    with pytest.raises(FileNotFoundError):
        fastq.Queue.open("missing")
    assert not (fastq_dir / "missing").exists()  # open never creates
    # no temporary files left behind by create / failed create
    assert sorted(os.listdir(fastq_dir)) == ["ex"]


def test_anonymous_queues_are_unique_and_leave_no_file(fastq_dir):
    a, b = fastq.Queue(capacity=SMALL), fastq.Queue(capacity=SMALL)
    try:
        assert a.name != b.name
        assert a.path is None and b.path is None  # a memfd: no file anywhere
        a.put(1)
        assert b.empty()
    finally:
        a.close()
        b.close()
    assert os.listdir(fastq_dir) == []


def test_anonymous_queue_kept_when_forked_child_exits(fastq_dir, run_py):
    cp = run_py("""
        import os, sys, fastq
        q = fastq.Queue(capacity=4096)
        q.put("x")
        pid = os.fork()
        if pid == 0:
            q.put("from child")
            q.close()
            sys.exit(0)  # a normal interpreter exit (atexit handlers run)
        os.waitpid(pid, 0)
        print(q.qsize(), flush=True)
        # exit without close(): nothing to remove
    """, timeout=30)
    assert cp.stdout.strip() == "2"
    assert os.listdir(fastq_dir) == []


def test_anonymous_queue_of_killed_creator_leaves_nothing(fastq_dir, run_py):
    """A creator killed with SIGKILL runs no atexit: its anonymous queue and
    topic go with it all the same (nothing to sweep later)."""
    cp = run_py("""
        import os, signal, fastq
        q, t = fastq.Queue(capacity=4096), fastq.Topic(capacity=4096)
        q.put(1)
        os.kill(os.getpid(), signal.SIGKILL)
    """, timeout=30, check=False)
    assert cp.returncode == -signal.SIGKILL, cp.stderr
    assert os.listdir(fastq_dir) == []


def test_names_and_paths(fastq_dir, tmp_path):
    assert fastq.segment_path("jobs") == os.path.join(str(fastq_dir), "jobs")
    assert fastq.segment_path(str(tmp_path / "x.seg")) == str(tmp_path / "x.seg")
    # resolved at open, so that a pickled handle survives chdir (issue 10, item 13)
    assert fastq.segment_path("./rel") == os.path.abspath("rel")
    for bad in ("", ".", ".."):
        with pytest.raises(ValueError):
            fastq.segment_path(bad)
    for bad in (None, 3):  # a wrong type (issue 10, item 13)
        with pytest.raises(TypeError):
            fastq.segment_path(bad)
    with fastq.Queue("inside", capacity=SMALL) as q:
        assert q.path == str(fastq_dir / "inside")
        assert (fastq_dir / "inside").is_file()


def test_queue_on_disk_keeps_messages_after_every_handle_closed(tmp_path):
    path = str(tmp_path / "sub" / "q.seg")
    os.makedirs(os.path.dirname(path))
    q = fastq.Queue(path, capacity=1 << 14)
    assert q.path == path and q.name == path
    q.put_many([{"n": i} for i in range(50)])
    other = fastq.Queue.open(path)
    other.close()
    q.close()
    assert os.path.exists(path)
    with fastq.Queue.open(path) as q2:
        assert q2.qsize() == 50
        assert q2.get_many(100, timeout=1) == [{"n": i} for i in range(50)]
        q2.put("again")
    with fastq.Queue.open(path) as q3:
        assert q3.get(timeout=1) == "again"
        q3.unlink()
    assert not os.path.exists(path)


def test_file_mode(fastq_dir):
    with fastq.Queue("m1", capacity=SMALL) as q:
        assert stat.S_IMODE(os.stat(q.path).st_mode) == 0o600
    old = os.umask(0o077)  # an explicit mode is honoured regardless of umask
    try:
        with fastq.Queue.create("m2", capacity=SMALL, mode=0o640) as q:
            assert stat.S_IMODE(os.stat(q.path).st_mode) == 0o640
        with fastq.Queue("m3", capacity=SMALL, mode=0o666) as q:
            assert stat.S_IMODE(os.stat(q.path).st_mode) == 0o666
    finally:
        os.umask(old)


# ---- serializers --------------------------------------------------------------


class Point:
    def __init__(self, x, y):
        self.x, self.y = x, y

    def __eq__(self, other):
        return isinstance(other, Point) and (self.x, self.y) == (other.x, other.y)


def test_pickle_default_arbitrary_objects():
    with fastq.Queue("pk", capacity=1 << 16) as q:
        objs = [Point(1, 2), {1, 2, 3}, frozenset("ab"), 1 + 2j, 10 ** 40, float("inf"),
                {"nested": [Point(3, 4), ("t", b"b", bytearray(b"ba"))]}, "", b"", ()]
        for o in objs:
            q.put(o)
        got = [q.get(timeout=1) for _ in objs]
        assert got == objs
        assert type(got[0]) is Point and type(got[-4]) is dict


@pytest.mark.parametrize("arr", [
    np.arange(12, dtype=np.int16).reshape(3, 4),
    np.linspace(0, 1, 7, dtype=np.float32),
    np.zeros((2, 0, 3), dtype=np.float64),
    np.array(5, dtype=np.uint8),
    np.array([True, False, True]),
    np.asfortranarray(np.arange(20, dtype=np.int64).reshape(4, 5)),
    np.arange(30, dtype=np.int32).reshape(5, 6)[::2, 1::2],  # non-contiguous
    np.array([(1, 2.5), (3, 4.5)], dtype=[("a", "<i4"), ("b", "<f8")]),
    np.array(["x", "yz"], dtype="U2"),
    np.arange(8, dtype=">u4"),
], ids=lambda a: f"{a.dtype}-{a.shape}")
def test_numpy_roundtrip(arr):
    with fastq.Queue("np", capacity=1 << 16) as q:
        q.put(arr)
        q.put({"wrapped": arr, "more": [arr, arr]})
        out = q.get(timeout=1)
        assert out.dtype == arr.dtype and out.shape == arr.shape
        assert np.array_equal(out, arr)
        w = q.get(timeout=1)
        assert np.array_equal(w["wrapped"], arr) and w["more"][1].dtype == arr.dtype
        assert out.flags.writeable  # a copy, not a view into the ring


def test_numpy_one_mebibyte():
    arr = np.random.default_rng(0).integers(0, 2 ** 31, size=(1 << 20) // 8, dtype=np.int64)
    assert arr.nbytes == 1 << 20
    with fastq.Queue("np1m", capacity=4 << 20) as q:
        q.put(arr)
        q.put_many([arr, arr[::-1].copy()])
        a = q.get(timeout=2)
        b, c = q.get_many(2, timeout=2, max_bytes=4 << 20)
        for x, y in ((a, arr), (b, arr), (c, arr[::-1])):
            assert x.dtype == np.int64 and x.shape == arr.shape
            assert np.array_equal(x, y)
        # the byte bound: the first message comes whatever its size, then stop
        q.put_many([arr, arr])
        (d,) = q.get_many(2, timeout=2, max_bytes=1)
        assert np.array_equal(d, arr) and q.qsize() == 1


def test_numpy_array_not_aliased_to_ring():
    with fastq.Queue("npal", capacity=1 << 16) as q:
        q.put(np.full(100, 7, dtype=np.int64))
        a = q.get(timeout=1)
        q.put(np.full(100, 9, dtype=np.int64))  # may reuse the same ring bytes
        q.put(np.full(100, 9, dtype=np.int64))
        q.get(timeout=1)
        assert (a == 7).all()


def test_raw_serializer_bytes_like_in_bytes_out():
    with fastq.Queue("raw", capacity=1 << 16, serializer="raw") as q:
        q.put(b"bytes")
        q.put(bytearray(b"bytearray"))
        q.put(memoryview(b"xxmemoryviewxx")[2:-2])
        q.put(np.arange(4, dtype=np.uint8))  # any contiguous buffer
        q.put(b"")
        q.put_many([b"a", bytearray(b"b"), memoryview(b"c")])
        got = q.get_many(100, timeout=1)
        assert got == [b"bytes", b"bytearray", b"memoryview", bytes([0, 1, 2, 3]), b"",
                       b"a", b"b", b"c"]
        assert all(type(g) is bytes for g in got)
        with pytest.raises(TypeError):
            q.put("a str is not bytes-like")
        with pytest.raises(TypeError):
            q.put_many([b"ok", 123])
        assert q.qsize() == 0
        q.put(b"still usable")
        assert q.get(timeout=1) == b"still usable"


class JsonSerializer:
    def __init__(self):
        self.calls = 0

    def dumps(self, obj):
        self.calls += 1
        return json.dumps(obj).encode()

    def loads(self, data):
        assert isinstance(data, bytes)
        return json.loads(data)


def test_custom_serializer():
    ser = JsonSerializer()
    with fastq.Queue("cs", capacity=1 << 16, serializer=ser) as q:
        q.put({"a": [1, 2]})
        q.put_many([1, "two"])
        assert ser.calls == 3
        assert q.get(timeout=1) == {"a": [1, 2]}
        assert q.get_many(5, timeout=1) == [1, "two"]
        # what is in the ring is the custom encoding
        with fastq.Queue.open("cs", serializer="raw") as r:
            q.put([3])
            assert r.get(timeout=1) == b"[3]"


def test_serializer_errors():
    with pytest.raises(ValueError):
        fastq.Queue("se1", capacity=SMALL, serializer="json")
    with pytest.raises(ValueError):
        fastq.Queue("se2", capacity=SMALL, serializer="Pickle")
    with pytest.raises(TypeError):
        fastq.Queue("se3", capacity=SMALL, serializer=object())


def test_unpicklable_object_raises_and_queue_stays_usable():
    with fastq.Queue("unp", capacity=SMALL) as q:
        q.put("before")
        with pytest.raises((pickle.PicklingError, AttributeError, TypeError)):
            q.put(lambda: 1)
        with pytest.raises((pickle.PicklingError, AttributeError, TypeError)):
            q.put_nowait(threading.Lock())
        with pytest.raises((pickle.PicklingError, AttributeError, TypeError)):
            q.put_many(["ok", lambda: 2])
        assert q.qsize() == 1
        q.put("after")
        assert q.get_many(10, timeout=1) == ["before", "after"]


class BadLoads(Passthrough):
    def loads(self, data):
        if data == b"bad":
            raise RuntimeError("cannot decode")
        return data


def test_failing_loads_consumes_message_and_queue_stays_usable():
    with fastq.Queue("bl", capacity=SMALL, serializer=BadLoads()) as q:
        q.put_many([b"one", b"bad", b"two"])
        assert q.get(timeout=1) == b"one"
        with pytest.raises(RuntimeError):
            q.get(timeout=1)
        assert q.get(timeout=1) == b"two"
        with pytest.raises(queue.Empty):
            q.get_nowait()
        assert q.qsize() == 0


# ---- threads ------------------------------------------------------------------


def test_threads_share_one_handle():
    NPROD, NCONS, N = 4, 2, 2000
    with fastq.Queue("thr", capacity=1 << 14) as q:
        results = defaultdict(list)
        errors = []

        def producer(pid):
            try:
                for i in range(N):
                    q.put((pid, i), timeout=10)
            except BaseException as e:  # noqa: BLE001
                errors.append(e)

        def consumer(cid):
            try:
                while True:
                    m = q.get(timeout=10)
                    if m is None:
                        return
                    results[cid].append(m)
            except BaseException as e:  # noqa: BLE001
                errors.append(e)

        prods = [threading.Thread(target=producer, args=(i,), daemon=True)
                 for i in range(NPROD)]
        cons = [threading.Thread(target=consumer, args=(i,), daemon=True)
                for i in range(NCONS)]
        for t in prods + cons:
            t.start()
        for t in prods:
            t.join(60)
        assert not any(t.is_alive() for t in prods)
        for _ in cons:
            q.put(None)
        for t in cons:
            t.join(60)
        assert not any(t.is_alive() for t in cons)
        assert not errors, errors
        allmsgs = [m for c in results.values() for m in c]
        assert len(allmsgs) == NPROD * N
        assert set(allmsgs) == {(p, i) for p in range(NPROD) for i in range(N)}
        for c in results.values():  # per-producer order within each consumer
            last = {}
            for p, i in c:
                assert i > last.get(p, -1)
                last[p] = i
        assert q.qsize() == 0


def test_threads_put_many_get_many():
    with fastq.Queue("thr2", capacity=SMALL, serializer="raw") as q:
        got = []
        lock = threading.Lock()
        done = threading.Event()

        def consumer():
            while not done.is_set() or not q.empty():
                try:
                    batch = q.get_many(50, timeout=0.1)
                except queue.Empty:
                    continue
                with lock:
                    got.extend(batch)

        def producer(k):
            for j in range(100):
                q.put_many([b"%d:%d:%d" % (k, j, i) for i in range(10)], timeout=10)

        ts = [threading.Thread(target=producer, args=(k,), daemon=True) for k in range(3)]
        cs = [threading.Thread(target=consumer, daemon=True) for _ in range(2)]
        for t in ts + cs:
            t.start()
        for t in ts:
            t.join(60)
        done.set()
        for t in cs:
            t.join(30)
        assert not any(t.is_alive() for t in ts + cs)
        assert len(got) == 3000 and len(set(got)) == 3000


# ---- Ctrl-C -------------------------------------------------------------------


@pytest.mark.parametrize("op", ["get", "get_timeout", "put", "get_many"])
def test_ctrl_c_interrupts_blocking_call(op, fastq_dir, child_env):
    import signal
    import subprocess
    import sys
    code = f"""
import sys, time, fastq
q = fastq.Queue("cc", capacity=4096, serializer="raw")
if {op!r} == "put":
    while True:
        try:
            q.put_nowait(b"x" * 100)
        except fastq.Full:
            break
print("ready", flush=True)
try:
    if {op!r} == "get":
        q.get()
    elif {op!r} == "get_timeout":
        q.get(timeout=60)
    elif {op!r} == "get_many":
        q.get_many(10)
    else:
        q.put(b"x" * 100)
except KeyboardInterrupt:
    print("KI", time.monotonic(), flush=True)
    sys.exit(0)
print("returned without interrupt", flush=True)
sys.exit(3)
"""
    p = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True, env=child_env())
    try:
        assert p.stdout.readline().strip() == "ready"
        time.sleep(0.3)  # let it block in the call
        assert p.poll() is None
        t_sig = time.monotonic()
        p.send_signal(signal.SIGINT)
        out, err = p.communicate(timeout=10)
        assert p.returncode == 0, (out, err)
        line = out.strip().splitlines()[-1]
        assert line.startswith("KI"), (out, err)
        latency = float(line.split()[1]) - t_sig  # CLOCK_MONOTONIC is system-wide
        assert latency < 1.0, f"KeyboardInterrupt after {latency:.3f} s"
    finally:
        if p.poll() is None:
            p.kill()
            p.wait(5)


# ---- durability and trust ---------------------------------------------------------


def test_flush_then_reopen_keeps_messages(tmp_path):
    path = str(tmp_path / "durable")
    with fastq.Queue(path, capacity=SMALL) as q:
        q.put_many([1, "two", (3,)])
        q.flush()
    with fastq.Queue.open(path) as q:
        assert q.get_many(10, timeout=1) == [1, "two", (3,)]


def test_open_refuses_segment_other_users_can_write(tmp_path):
    path = str(tmp_path / "shared")
    with fastq.Queue(path, capacity=SMALL, mode=0o666) as q:
        q.put("secret")
        assert os.stat(path).st_mode & 0o777 == 0o666
        with pytest.raises(PermissionError, match="trusted=True"):
            fastq.Queue.open(path)
        with pytest.raises(PermissionError, match="other users write"):
            fastq.Queue(path)  # open-or-create opens it: the same check
        with fastq.Queue.open(path, trusted=True) as t:
            assert t.get(timeout=1) == "secret"
            # the trust travels with the handle into a child
            assert pickle.loads(pickle.dumps(t))._trusted is True


def test_open_refuses_segment_owned_by_another_user(tmp_path):
    if os.geteuid() != 0:
        pytest.skip("needs root to give the file away")
    path = str(tmp_path / "foreign")
    with fastq.Queue(path, capacity=SMALL):
        os.chown(path, 12345, -1)
        with pytest.raises(PermissionError, match="owned by uid 12345"):
            fastq.Queue.open(path)
        fastq.Queue.open(path, trusted=True).close()


def test_creation_fails_cleanly_when_space_cannot_be_reserved(fastq_dir, run_py):
    """All pages are reserved at creation: a filesystem without room (here a
    file-size limit) fails Queue.create with a clear error, not SIGBUS later,
    and leaves no file behind."""
    cp = run_py(f"""
        import os, resource, signal, fastq
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (1 << 20, 1 << 20))
        try:
            fastq.Queue.create("big", capacity=8 << 20)
        except OSError as e:
            print("ERR", e)
        print("LEFT", sorted(os.listdir({str(fastq_dir)!r})))
    """, timeout=30)
    out = cp.stdout
    assert "ERR" in out and "cannot reserve" in out and "full" in out, out
    assert "LEFT []" in out, out


def test_get_many_byte_bound_beyond_the_first_message():
    with fastq.Queue("gmb", capacity=4 << 20, serializer="raw") as q:
        q.put_many([b"a" * 600_000] * 3)
        assert len(q.get_many(10, timeout=1, max_bytes=1 << 20)) == 1
        assert len(q.get_many(10, timeout=1, max_bytes=1_200_000)) == 2
        q.put_many([b"b" * 100_000] * 12)
        got = q.get_many(100, timeout=1, max_bytes=1_000_000)
        assert len(got) == 10 and sum(map(len, got)) == 1_000_000


def test_get_many_with_a_failing_loads_keeps_the_rest():
    class Picky(Passthrough):
        def loads(self, b):
            if b == b"bad":
                raise ValueError("bad message")
            return b

    with fastq.Queue("gml", capacity=1 << 16, serializer=Picky()) as q:
        q.put_many([b"a", b"b", b"bad", b"c"])
        assert q.get_many(10, timeout=1) == [b"a", b"b"]  # stops before the bad one
        with pytest.raises(ValueError):
            q.get_many(10, timeout=1)  # the bad one is consumed, with its error
        assert q.get_many(10, timeout=1) == [b"c"]  # nothing else lost
        assert q.empty()


def test_browse_lists_what_is_not_consumed_without_taking_it():
    # the Dispatcher's check for a dead letter already put: waiting, unacknowledged and
    # given-back (delayed) messages are listed, consumed ones are not; across the ring's
    # end, with a message larger than the walk's first buffer, skipping one that cannot
    # be loaded; and nothing moves
    class Picky(Passthrough):
        def loads(self, b):
            if b == b"bad":
                raise ValueError("bad message")
            return bytes(b)

    with fastq.Queue("browse", capacity=SMALL * 4, serializer=Picky()) as q:
        for lap in range(3):                    # move the ring's cursors around
            q.put_many([b"x" * 1000] * 10)
            assert len(q.get_many(10)) == 10
        big = b"B" * 6000
        q.put_many([b"gone", b"held", b"delayed", b"bad", big, b"last"])
        assert q.get() == b"gone"
        held = q.receive()
        delayed = q.receive()
        delayed.nack(delay=60)
        assert list(q._browse()) == [b"held", b"delayed", big, b"last"]
        assert list(q._browse()) == [b"held", b"delayed", big, b"last"]   # took nothing
        held.ack()
        assert list(q._browse()) == [b"delayed", big, b"last"]
        with pytest.raises(ValueError):
            q.get()                             # the bad one is still there to get
        assert q.get() == big and q.get() == b"last"
        assert list(q._browse()) == [b"delayed"]

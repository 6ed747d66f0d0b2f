"""Acknowledged delivery: Queue.receive() / Delivery.ack() / nack().

A received message stays in the queue, invisible to others, until it is
acked; nack gives it back; a consumer that dies before acking has it
redelivered to another consumer, flagged ``redelivered``.
"""
from __future__ import annotations

import gc
import multiprocessing as mp
import os
import signal
import time

import pytest

import fastq

SMALL = 1 << 16


@pytest.fixture
def q(fastq_dir):
    with fastq.Queue("dq", capacity=SMALL) as q:
        yield q


def test_ack_removes_and_unacked_counts_unacked(q):
    q.put_many(["a", "b"])
    d = q.receive(timeout=1)
    assert d.value == "a" and not d.redelivered and not d.settled
    # qsize() is what get() can take; the unacked one is counted apart (issue 10, item 15)
    assert (q.qsize(), q.unacked()) == (1, 1), "an unacked message is still in the queue"
    d.ack()
    assert d.settled and (q.qsize(), q.unacked()) == (1, 0)
    with pytest.raises(ValueError, match="already"):
        d.ack()
    assert q.get(timeout=1) == "b"
    assert q.empty()


def test_nack_requeues_flagged_redelivered_and_drop(q):
    q.put_many([1, 2])
    d = q.receive(timeout=1)
    d.nack()
    assert q.qsize() == 2
    again = q.receive(timeout=1)
    assert again.value == 1 and again.redelivered
    again.nack(requeue=False)  # dropped
    assert q.qsize() == 1
    assert q.get(timeout=1) == 2
    with pytest.raises(fastq.Empty):
        q.get_nowait()


def test_context_manager_acks_on_success_requeues_on_error(q):
    q.put_many(["ok", "boom"])
    with q.receive(timeout=1) as d:
        assert d.value == "ok"
    assert d.settled and q.qsize() == 1
    with pytest.raises(KeyError):
        with q.receive(timeout=1) as d2:
            raise KeyError(d2.value)
    assert q.qsize() == 1
    d3 = q.receive(timeout=1)
    assert d3.value == "boom" and d3.redelivered
    d3.ack()
    assert q.empty()


def test_prefetch_bound_raises_and_is_settable(fastq_dir):
    with fastq.Queue("pf", capacity=SMALL, prefetch=2) as q:
        q.put_many(range(5))
        held = [q.receive(timeout=1), q.receive(timeout=1)]
        with pytest.raises(RuntimeError, match="prefetch"):
            q.receive(block=False)
        with pytest.raises(fastq.Empty):  # waited for a settlement (another thread's)
            q.receive(timeout=0.1)
        held[0].ack()
        third = q.receive(timeout=1)
        assert third.value == 2
    with pytest.raises(ValueError):
        fastq.Queue("pf2", capacity=SMALL, prefetch=0)
    with pytest.raises(ValueError):
        fastq.Queue("pf3", capacity=SMALL, prefetch=8)


def test_dropped_delivery_and_close_give_messages_back(fastq_dir):
    q = fastq.Queue("gc", capacity=SMALL)
    q.put_many(["x", "y", "z"])
    d = q.receive(timeout=1)
    del d
    gc.collect()
    assert q.receive(timeout=1).value == "x"  # redelivered (and dropped again)
    gc.collect()
    held = q.receive(timeout=1)
    assert held.value in ("x", "y")
    q.close()  # gives the unacked deliveries back
    with fastq.Queue.open("gc") as q2:
        assert sorted(q2.get(timeout=1) for _ in range(3)) == ["x", "y", "z"]
        assert q2.empty()


def _receive_and_hang(q, ready):
    d = q.receive(timeout=5)
    ready.put(d.value)
    time.sleep(60)  # killed before acking


def test_consumer_killed_before_ack_message_redelivered(fastq_dir, procs):
    ctx = mp.get_context("fork")
    with fastq.Queue("kill", capacity=SMALL) as q:
        q.put_many(["job-1", "job-2"])
        ready = ctx.Queue()
        p = procs.add(ctx.Process(target=_receive_and_hang, args=(q, ready)))
        p.start()
        assert ready.get(timeout=10) == "job-1"
        assert q.get(timeout=5) == "job-2"  # the other message is available
        os.kill(p.pid, signal.SIGKILL)
        p.join(5)
        t = time.monotonic()
        d = q.receive(timeout=5)  # waits, runs recovery, gets it back
        waited = time.monotonic() - t
        assert d.value == "job-1" and d.redelivered
        assert waited < 2.0, f"redelivery took {waited:.2f} s"
        d.ack()
        assert q.empty() and q.qsize() == 0


def test_many_receivers_each_message_acked_once(fastq_dir):
    """Two threads receive/ack concurrently through one handle: each message
    is acked exactly once."""
    import threading

    with fastq.Queue("thr", capacity=SMALL, serializer="raw") as q:
        n = 2000
        got, lock = [], threading.Lock()

        def worker():
            while True:
                try:
                    d = q.receive(timeout=0.5)
                except fastq.Empty:
                    return
                with lock:
                    got.append(d.value)
                d.ack()

        ts = [threading.Thread(target=worker) for _ in range(2)]
        for t in ts:
            t.start()
        for i in range(n):
            q.put(i.to_bytes(4, "little"))
        for t in ts:
            t.join(30)
        assert sorted(int.from_bytes(b, "little") for b in got) == list(range(n))
        assert q.empty()


def test_prefetch_bound_holds_across_threads(fastq_dir):
    """The bound is reserved before the claim: 8 threads racing into
    receive(block=False) on a handle with prefetch=3 get exactly 3 deliveries
    (a blocking one would wait for a settlement: test_threads_hangs.py)."""
    import threading

    with fastq.Queue("pft", capacity=SMALL, prefetch=3) as q:
        q.put_many(range(10))
        held, refused, lock = [], [], threading.Lock()
        barrier = threading.Barrier(8)

        def worker():
            barrier.wait()
            try:
                d = q.receive(block=False)
            except RuntimeError:
                with lock:
                    refused.append(1)
                return
            with lock:
                held.append(d)

        ts = [threading.Thread(target=worker) for _ in range(8)]
        for t in ts:
            t.start()
        for t in ts:
            t.join(10)
        assert len(held) == 3 and len(refused) == 5
        q.put_nowait("still usable")  # a lane is left for other calls
        for d in held:
            d.ack()
        assert q.qsize() == 8


def test_close_gives_back_exactly_the_unsettled_deliveries(fastq_dir):
    """close() gives back what its handle still holds, and only that: here
    deliveries settled from the middle and both ends of the handle's list,
    one dropped unanswered (given back at once), and a batch; the settled
    ones stay settled, the others read settled after close()."""
    q = fastq.Queue("cl", capacity=SMALL, prefetch=7)
    q.put_many(range(8))
    ds = [q.receive(timeout=1) for _ in range(5)]           # 0..4
    batch = q.receive_many(2, timeout=1)                    # 5, 6
    assert [d.value for d in ds] == [0, 1, 2, 3, 4] and batch.values == [5, 6]
    ds[2].ack()                     # the middle
    ds[0].ack()                     # the first
    ds[4].nack(requeue=False)       # the last single one: dropped for good
    ds[3] = None                    # dropped unanswered: 3 comes back now
    gc.collect()
    again = q.receive(timeout=1)    # 3 (given back first) or 7
    assert again.value in (3, 7)
    left = ds[1]
    q.close()
    for d in (left, batch, again):
        assert d.settled
        with pytest.raises(ValueError, match="already settled"):
            d.ack()
    with fastq.Queue.open("cl") as q2:
        assert sorted(q2.get(timeout=1) for _ in range(5)) == [1, 3, 5, 6, 7]
        assert q2.empty() and q2.stats().unacked == 0


def test_delivery_in_a_cycle_with_its_handle_is_given_back(fastq_dir):
    """A delivery dropped with its (unclosed) handle in one garbage cycle is
    given back when the collector frees them, whichever goes first."""
    with fastq.Queue("cy", capacity=SMALL) as keep:
        keep.put_many(["a", "b"])
        q = fastq.Queue.open("cy")
        d = q.receive(timeout=1)
        cycle = [q, d]
        cycle.append(cycle)
        del q, d, cycle
        gc.collect()
        back = keep.receive(timeout=1)
        assert back.value == "a" and back.redelivered
        back.ack()
        assert keep.get(timeout=1) == "b" and keep.empty()


def test_closing_from_a_thread_gives_back_every_threads_deliveries(fastq_dir):
    """Deliveries received by several threads on one handle are all given
    back by close() (the handle's list is shared by its threads)."""
    import threading

    q = fastq.Queue("thc", capacity=SMALL, prefetch=7)
    q.put_many(range(12))
    held, lock = [], threading.Lock()

    def worker():
        for _ in range(2):
            d = q.receive(timeout=5)
            with lock:
                held.append(d)
        d.ack()  # each thread settles its second one

    ts = [threading.Thread(target=worker) for _ in range(3)]
    for t in ts:
        t.start()
    for t in ts:
        t.join(10)
    assert len(held) == 6 and sum(d.settled for d in held) == 3
    acked = {d.value for d in held if d.settled}
    closer = threading.Thread(target=q.close)
    closer.start()
    closer.join(10)
    assert all(d.settled for d in held)
    with fastq.Queue.open("thc") as q2:
        assert sorted(q2.get(timeout=1) for _ in range(9)) == sorted(set(range(12)) - acked)
        assert q2.empty()


def test_forked_childs_close_leaves_the_parents_deliveries(run_py):
    """A forked child's close() (and its collection of its copies, here in
    garbage cycles) leaves the deliveries it inherited to the parent, who
    then acks them: nothing comes back, nothing is lost."""
    cp = run_py("""
        import gc, os, fastq
        q = fastq.Queue(capacity=1 << 16, prefetch=7)
        q.put_many([[i] for i in range(5)])
        d = q.receive(timeout=5)
        batch = q.receive_many(2, timeout=5)
        mine = q.receive(timeout=5)
        mine.ack()
        pid = os.fork()
        if pid == 0:
            q.close()
            print("child", d.settled, batch.settled, flush=True)
            # cycles through the deliveries alone: the collector may free
            # the handle before them (Segment.__dealloc__ detaches them)
            d.value.append(d)
            batch.values.append(batch)
            del q, d, batch
            gc.collect()
            os._exit(0)
        _, status = os.waitpid(pid, 0)
        print("status", status, flush=True)
        print("parent", d.settled, batch.settled, q.stats().unacked, flush=True)
        d.ack()
        batch.ack()
        print("left", q.get(timeout=5), q.empty(), q.stats().unacked, flush=True)
    """, timeout=30)
    assert cp.stdout.split("\n")[:4] == [
        "child False False", "status 0", "parent False False 3", "left [4] True 0"], \
        cp.stdout + cp.stderr

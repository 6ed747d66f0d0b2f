"""Threads sharing a handle, and files that could crash or hang a caller
(issue 10, items 1-4 and 16).

  * put_many(serializer="raw") keeps the items alive while it copies them
    without the GIL, whatever another thread does to the caller's list;
  * a sparse segment file has its pages reserved when it is opened (or is
    refused with ENOSPC), instead of a SIGBUS in a later put();
  * a nack() from one thread gives the message at once to another thread
    blocked in receive() on the same subscription (prefetch > 1);
  * closing a topic or a subscription while another thread waits in it
    succeeds, and the waiter gets ValueError at once, as with a Queue;
  * Queue.receive() at the prefetch bound waits for a delivery to be
    settled when it may block.

A thread that should have returned is joined with a generous timeout: a
hang fails the test instead of blocking the run.
"""
from __future__ import annotations

import errno
import os
import subprocess
import threading
import time

import pytest

import fastq

from support.waiting import in_thread

pytestmark = pytest.mark.usefixtures("fastq_dir")

MID = 1 << 16
JOIN = 20.0  # seconds: only a hang takes this long


def joined(th):
    th.join(JOIN)
    return not th.is_alive()


# ---- 1: raw put_many while another thread clears the list ---------------------------


def test_raw_put_many_keeps_its_items_while_another_thread_clears_the_list(run_py):
    """The items are large (copied without the GIL) and referenced only by the
    caller's list, which another thread clears as soon as it can run: their
    memory would be freed (unmapped) under the copy.  Run in a child: a crash
    must fail this test, not kill pytest."""
    cp = run_py("""
        import sys, threading, fastq
        sys.setswitchinterval(5)  # the clearer runs only when put_many lets go of the GIL
        N, SIZE = 12, 4 << 20
        q = fastq.Queue(capacity=64 << 20, serializer="raw")
        for rnd in range(3):
            items = [bytes([i]) * SIZE for i in range(N)]
            go = threading.Event()
            def clear():
                go.wait()
                items.clear()
            th = threading.Thread(target=clear)
            th.start()
            go.set()
            n = q.put_many(items)
            th.join()
            assert n == N, n
            for i in range(N):
                m = q.get(timeout=5)
                assert len(m) == SIZE and m[0] == i and m[-1] == i and m.count(bytes([i])) == SIZE, i
            assert q.empty()
        q.close()
        print("ok")
    """, timeout=120, check=False)
    assert cp.returncode == 0 and cp.stdout.strip() == "ok", (cp.returncode, cp.stdout,
                                                              cp.stderr[-2000:])


# ---- 2: sparse segment files --------------------------------------------------------


def sparse_copy(src, dst):
    subprocess.run(["cp", "--sparse=always", str(src), str(dst)], check=True)


def test_sparse_segment_is_reserved_when_opened(fastq_dir):
    """A copy with holes (cp --sparse=always) is opened with every page reserved,
    and puts over the whole ring work."""
    cap = 1 << 20
    with fastq.Queue("orig", capacity=cap, serializer="raw") as q:
        path = q.path
    copy = fastq_dir / "copy"
    sparse_copy(path, copy)
    st = os.stat(copy)
    if st.st_blocks * 512 >= st.st_size:
        pytest.skip("this filesystem made no holes in the copy")
    with fastq.Queue.open(str(copy), serializer="raw") as q:
        st = os.stat(copy)
        assert st.st_blocks * 512 >= st.st_size, "the holes were not reserved at open"
        for _ in range(3):  # three laps of the ring
            q.put_many([b"x" * 4000] * (cap // 4096 // 2))
            assert len(q.get_many(1 << 20, timeout=1, max_bytes=cap)) == cap // 4096 // 2


def test_truncated_up_segment_is_reserved_when_opened(fastq_dir):
    """A segment whose tail was cut and grown back (a hole, the same size)."""
    with fastq.Queue("cut", capacity=1 << 20, serializer="raw") as q:
        path = q.path
        size = os.stat(path).st_size
    os.truncate(path, size // 2)
    os.truncate(path, size)
    with fastq.Queue.open(path, serializer="raw") as q:
        st = os.stat(path)
        assert st.st_blocks * 512 >= st.st_size
        q.put_many([b"y" * 4000] * 200)
        assert len(q.get_many(1000, timeout=1, max_bytes=1 << 20)) == 200


@pytest.fixture
def small_tmpfs(tmp_path):
    """A 3 MiB tmpfs (needs the right to mount: skipped without it)."""
    d = tmp_path / "small"
    d.mkdir()
    try:
        subprocess.run(["mount", "-t", "tmpfs", "-o", "size=3m", "tmpfs", str(d)],
                       check=True, capture_output=True)
    except (OSError, subprocess.CalledProcessError) as e:
        pytest.skip(f"cannot mount a tmpfs here: {e}")
    try:
        yield d
    finally:
        subprocess.run(["umount", "-l", str(d)], check=False)


def test_sparse_segment_on_a_full_filesystem_is_refused_not_a_sigbus(fastq_dir, small_tmpfs,
                                                                     run_py):
    """The issue's case: a 4 MiB segment copied sparse onto a 3 MiB tmpfs fits
    (its holes take no room); a put into it used to die with SIGBUS.  Opening
    it must raise OSError(ENOSPC) instead.  In a child: a SIGBUS must fail
    this test, not kill pytest."""
    with fastq.Queue("big", capacity=4 << 20, serializer="raw") as q:
        path = q.path
    dst = small_tmpfs / "big"
    sparse_copy(path, dst)
    assert os.stat(dst).st_blocks * 512 < 3 << 20
    cp = run_py(f"""
        import errno, fastq
        try:
            q = fastq.Queue.open({str(dst)!r}, serializer="raw")
        except OSError as e:
            print("refused", e.errno == errno.ENOSPC, "full" in str(e))
        else:
            for i in range(200):
                q.put(b"z" * 60000)
                q.get()
            print("opened and used")
    """, timeout=60, check=False)
    assert cp.returncode == 0, (cp.returncode, cp.stderr[-2000:])
    assert cp.stdout.strip() == "refused True True", cp.stdout
    # nothing of the file's room was kept by the refused open: the copy is still sparse
    assert os.stat(dst).st_blocks * 512 < 3 << 20


# ---- 3: a nack from another thread wakes a blocked receive() -------------------------


@pytest.mark.parametrize("timeout", [None, 60])
def test_nack_from_another_thread_wakes_a_blocked_receive(timeout):
    with fastq.Topic("nackwake", capacity=MID) as t:
        s = t.subscribe(prefetch=2)
        t.publish("m")
        d = s.receive(timeout=1)
        th, res = in_thread(s.receive, True, timeout)
        time.sleep(0.3)  # the thread waits inside receive(): the topic is empty
        assert th.is_alive()
        d.nack()
        assert joined(th), "receive() was not woken by the nack"
        d2 = res.get("value")
        assert isinstance(d2, fastq.Delivery), res
        assert d2.value == "m" and d2.redelivered
        d2.ack()
        with pytest.raises(fastq.Empty):
            s.get_nowait()


def test_many_nacks_from_worker_threads_lose_nothing():
    """A receiver thread hands deliveries to workers that nack some and ack the
    rest: every message is acked exactly once, and the receiver, which waits
    with timeout=None, is never left asleep (the last ack publishes None to
    end it)."""
    N = 300
    with fastq.Topic("nackmany", capacity=1 << 20) as t:
        s = t.subscribe(prefetch=4)
        acked, lock = [], threading.Lock()
        nacked_once = set()

        def worker(d):
            with lock:
                again = d.value not in nacked_once and d.value % 3 == 0
                if again:
                    nacked_once.add(d.value)
                else:
                    acked.append(d.value)
                last = len(acked) == N and not again
            if again:
                d.nack()
            else:
                d.ack()
            if last:
                t.publish(None)

        def receiver():
            workers = []
            while True:
                try:
                    d = s.receive(timeout=None)
                except RuntimeError:  # prefetch deliveries in flight: a worker settles one
                    time.sleep(0.001)
                    continue
                if d.value is None:
                    d.ack()
                    for w in workers:
                        w.join()
                    return
                w = threading.Thread(target=worker, args=(d,))
                w.start()
                workers.append(w)

        th, res = in_thread(receiver)
        t.publish_many(range(N))
        assert joined(th), f"the receiver hung with {len(acked)} of {N} acked"
        assert "error" not in res, res
        assert sorted(acked) == list(range(N))
        assert len(nacked_once) == N // 3


# ---- 4: close while another thread waits ---------------------------------------------


def iterate(s):
    return list(s)


@pytest.mark.parametrize("prefetch", [1, 3])
@pytest.mark.parametrize("how", ["topic", "subscription", "with"])
def test_close_while_another_thread_iterates(how, prefetch):
    t = fastq.Topic(capacity=MID)
    s = t.subscribe(prefetch=prefetch)
    t.publish_many([1, 2])
    got = []

    def loop():
        for x in s:
            got.append(x)

    th, res = in_thread(loop)
    time.sleep(0.3)  # the thread waits inside get() for a third message
    assert th.is_alive() and got == [1, 2]
    if how == "topic":
        t.close()
    elif how == "subscription":
        s.close()
    else:
        with t:
            pass
    assert joined(th), "the iterating thread stayed blocked"
    assert isinstance(res.get("error"), ValueError), res
    assert "closed" in str(res["error"])
    assert s.closed
    s.close()  # again: nothing to do
    with pytest.raises(ValueError, match="closed"):
        s.get_nowait()
    if how == "subscription":
        s2 = t.subscribe()
        t.publish(3)  # the topic still works
        assert s2.get(timeout=1) == 3
    t.close()
    assert t.closed


def test_close_while_a_receive_waits_gives_unacked_deliveries_back():
    """prefetch=2: one delivery held, a second receive() waiting in another
    thread; closing the subscription frees both entries, the held message
    goes back to the group."""
    with fastq.Topic("closewait", capacity=MID) as t:
        s = t.subscribe(group="g", prefetch=2)
        other = t.subscribe(group="g")
        t.publish("held")
        d = s.receive(timeout=1)
        th, res = in_thread(s.receive, True, None)
        time.sleep(0.3)
        s.close()
        assert joined(th)
        assert isinstance(res.get("error"), ValueError), res
        assert d.settled
        back = other.receive(timeout=5)
        assert back.value == "held" and back.redelivered
        back.ack()
        assert len(t.subscribers()) == 1


# ---- 16: Queue.receive() with more threads than prefetch ------------------------------


def test_eight_threads_share_a_queue_with_prefetch_two():
    N, THREADS = 400, 8
    with fastq.Queue("pool", capacity=1 << 20, prefetch=2) as q:
        got, lock = [], threading.Lock()

        def work():
            while True:
                d = q.receive(timeout=JOIN)
                if d.value is None:
                    d.ack()
                    return
                with lock:
                    got.append(d.value)
                time.sleep(0)  # hold the delivery across a thread switch
                d.ack()

        ths = [in_thread(work) for _ in range(THREADS)]
        q.put_many(range(N))
        q.put_many([None] * THREADS)
        for th, res in ths:
            assert joined(th)
            assert "error" not in res, res["error"]
        assert sorted(got) == list(range(N)), "every message received exactly once"
        assert q.empty()


def test_receive_at_the_bound_waits_for_a_settlement():
    with fastq.Queue("bound", capacity=MID, prefetch=2) as q:
        q.put_many(range(4))
        d0, d1 = q.receive(timeout=1), q.receive(timeout=1)
        with pytest.raises(RuntimeError, match="2 deliveries are unacknowledged"):
            q.receive(block=False)  # cannot wait: the caller may hold them all
        with pytest.raises(fastq.Empty):
            q.receive(timeout=0.1)  # waited; nothing was settled
        th, res = in_thread(q.receive, True, None)
        time.sleep(0.3)
        assert th.is_alive(), res
        d1.nack()
        assert joined(th)
        d2 = res["value"]
        assert d2.value == 1 and d2.redelivered
        for d in (d0, d2):
            d.ack()
        assert [q.get(timeout=1), q.get(timeout=1)] == [2, 3]


def test_close_while_a_receive_waits_at_the_bound():
    q = fastq.Queue("boundclose", capacity=MID, prefetch=1)
    q.put_many([1, 2])
    d = q.receive(timeout=1)
    th, res = in_thread(q.receive, True, None)
    time.sleep(0.3)
    assert th.is_alive(), res
    q.close()
    assert joined(th)
    assert isinstance(res.get("error"), ValueError), res
    assert d.settled
    with fastq.Queue.open("boundclose") as q2:
        assert q2.get(timeout=1) == 1  # given back by close()

"""A segment's lifecycle across processes: anonymous queues handed to children
and gone with their last process however it ends (closed right after start,
SIGTERM, SIGKILL, os._exit), creation killed halfway, one attachment per
process, the default capacity, undoing a shutdown, and handing a queue, a
delivery or a subscription across fork and spawn (issue 10: items 5-9, 14, 18).

Real processes throughout; every wait is bounded; the ``procs`` fixture kills
what a failed test leaves running.
"""
from __future__ import annotations

import gc
import multiprocessing as mp
import os
import pickle
import re
import signal
import textwrap

import pytest

import fastq

from support import REPO
from support.procs import fork, memfd_segments, reap

pytestmark = pytest.mark.usefixtures("fastq_dir")

CONTEXTS = ["fork", "spawn", "forkserver"]
SMALL = 4096


def child(ctx, src, **ns):
    """A Process running ``src`` with ``ns`` as its globals (``exec`` pickles by
    reference: spawn and forkserver children need not import this module)."""
    return ctx.Process(target=exec, args=(textwrap.dedent(src), ns))


def join_ok(p, timeout=120):
    p.join(timeout)
    assert not p.is_alive(), f"{p} still running after {timeout} s"
    assert p.exitcode == 0, f"{p} exited with {p.exitcode}"


def shm_fastq_files():
    return sorted(n for n in os.listdir("/dev/shm") if "fastq" in n or ".tmp-" in n)


# ---- item 5: close() right after start() ----------------------------------------


@pytest.mark.parametrize("method", CONTEXTS)
def test_anonymous_queue_closed_right_after_start_reaches_the_child(method, procs):
    """Leaving ``with fastq.Queue() as q:`` just after starting a worker must not
    pull the queue from under it (under spawn and forkserver the child attaches
    after start() returns)."""
    ctx = mp.get_context(method)
    with fastq.Queue(capacity=SMALL) as q:
        q.put("hello")
        p = procs.add(child(ctx, """
            assert q.get(timeout=30) == "hello"
            q.put("back")
            q.close()
        """, q=q))
        p.start()
    assert q.closed
    join_ok(p)


@pytest.mark.parametrize("method", CONTEXTS)
def test_anonymous_topic_closed_right_after_start_reaches_the_child(method, procs):
    ctx = mp.get_context(method)
    t = fastq.Topic(capacity=SMALL)
    p = procs.add(child(ctx, """
        s = t.subscribe()
        t.publish("to myself")
        assert s.get(timeout=30) == "to myself"
        t.close()
    """, t=t))
    p.start()
    t.close()
    join_ok(p)


@pytest.mark.parametrize("method", CONTEXTS)
def test_anonymous_queue_both_ways_between_parent_and_children(method, procs):
    ctx = mp.get_context(method)
    with fastq.Queue(capacity=SMALL) as jobs, fastq.Queue(capacity=SMALL) as done:
        ps = [procs.add(child(ctx, """
            for x in iter(jobs.get, None):
                done.put(x * 2)
        """, jobs=jobs, done=done)) for _ in range(2)]
        for p in ps:
            p.start()
        for i in range(20):
            jobs.put(i)
        for _ in ps:
            jobs.put(None)
        got = sorted(done.get(timeout=60) for _ in range(20))
        assert got == [2 * i for i in range(20)]
        for p in ps:
            join_ok(p)


# ---- item 6: nothing left behind --------------------------------------------------


def test_anonymous_queue_has_no_file(fastq_dir):
    before = shm_fastq_files()
    q, t = fastq.Queue(capacity=SMALL), fastq.Topic(capacity=SMALL)
    assert q.path is None and t.path is None and q.name != t.name
    assert os.listdir(fastq_dir) == [] and shm_fastq_files() == before
    q.unlink()  # nothing to remove
    q.put(1)
    assert q.get() == 1
    q.close()
    t.close()


def test_anonymous_queue_released_when_closed_or_collected():
    held = memfd_segments(os.getpid())
    a, b = fastq.Queue(capacity=SMALL), fastq.Queue(capacity=SMALL)
    assert len(memfd_segments(os.getpid()) - held) == 2
    a.put(1)
    assert b.empty()
    a.close()
    del b
    gc.collect()
    assert memfd_segments(os.getpid()) - held == set()


def test_killed_mid_create_leaves_no_file(fastq_dir):
    """A creator killed after reserving the whole file but before linking it
    into place leaves nothing (before: a full-size *.tmp-<pid>-* file, forever)."""
    from support.cseg import create, lib
    path = fastq_dir / "big"

    def creator():
        lib.fq_test_set_crash_point(b"create_reserved", 1)
        create(path, capacity=1 << 20)
        return 3  # not reached: the crash point exits with 9

    assert reap(fork(creator)) == 9
    assert os.listdir(fastq_dir) == []
    q = fastq.Queue.create("big", capacity=SMALL)  # the name is free
    q.unlink()
    q.close()


@pytest.mark.parametrize("method", CONTEXTS)
def test_sigterm_pool_leaves_nothing(fastq_dir, run_py, method):
    """Pool.terminate-style endings (SIGTERM: no atexit) and SIGKILL leave no
    anonymous queue or topic behind."""
    before = shm_fastq_files()
    for sig in (signal.SIGTERM, signal.SIGKILL):
        cp = run_py(f"""
            import multiprocessing as mp, os, signal, fastq
            if __name__ == "__main__":
                q, t = fastq.Queue(capacity=4096), fastq.Topic(capacity=4096)
                q.put("x")
                pool = mp.get_context("{method}").Pool(2, initializer=fastq.Queue.qsize,
                                                        initargs=(q,))
                print(pool.apply(abs, (-3,)), flush=True)
                os.kill(os.getpid(), {int(sig)})
        """, timeout=120, check=False)
        assert cp.returncode == -sig, cp.stderr
        assert cp.stdout.strip() == "3"
        assert os.listdir(fastq_dir) == []
    assert shm_fastq_files() == before


def test_os_exit_fork_children_leave_nothing(fastq_dir, run_py):
    cp = run_py("""
        import os, fastq
        q = fastq.Queue(capacity=4096)
        for _ in range(3):
            pid = os.fork()
            if pid == 0:
                fastq.Queue(capacity=4096).put(1)
                fastq.Topic(capacity=4096)
                q.put("child")
                os._exit(0)
            os.waitpid(pid, 0)
        print(q.qsize(), flush=True)
        os._exit(0)  # the creator too: no atexit, no close
    """, timeout=60)
    assert cp.stdout.strip() == "3"
    assert os.listdir(fastq_dir) == []


def test_anonymous_queue_pickled_outside_process_start_is_refused():
    q, t = fastq.Queue(capacity=SMALL), fastq.Topic(capacity=SMALL)
    with pytest.raises(RuntimeError, match="only as it starts.*give the queue a name"):
        pickle.dumps(q)
    with pytest.raises(RuntimeError, match="give the topic a name"):
        pickle.dumps(t)
    with pytest.raises(RuntimeError, match="give the topic a name"):
        pickle.dumps(t.subscribe())
    named = fastq.Queue("named", capacity=SMALL)
    again = pickle.loads(pickle.dumps(named))
    named.put(5)
    assert again.get(timeout=5) == 5
    for h in (q, t, named, again):
        h.close()


def test_anonymous_segment_cannot_be_truncated():
    """A memfd segment's size is sealed: nobody holding its descriptor can
    truncate it under the processes that map it (SIGBUS, item 18)."""
    q = fastq.Queue(capacity=SMALL)
    with pytest.raises(PermissionError):
        os.ftruncate(q.fileno(), 0)
    q.put(1)
    assert q.get() == 1
    q.close()


def test_readme_warns_that_truncating_a_segment_kills_with_sigbus():
    readme = open(REPO / "README.md").read()
    assert re.search(r"truncat[^.]*SIGBUS", readme, re.S), \
        "README must say that truncating a mapped segment kills attached processes"


# ---- item 7: one attachment per process ----------------------------------------------


def test_handles_of_one_process_share_one_slot(fastq_dir, run_py):
    q = fastq.Queue("one", capacity=1 << 16, max_processes=1)
    handles = [fastq.Queue.open("one") for _ in range(70)]
    for i, h in enumerate(handles):
        h.put(i)
    assert [q.get(timeout=5) for _ in handles] == list(range(70))
    probe = f"""
        import fastq
        try:
            fastq.Queue.open({str(fastq_dir / "one")!r}).put(1)
            print("attached")
        except OSError as e:
            print("refused" if "slots" in str(e) else e)
    """
    for h in handles:
        h.close()
    q.put("still attached")
    assert q.get(timeout=5) == "still attached"
    assert run_py(probe).stdout.strip() == "refused"
    q.close()  # the last handle: the slot is free
    assert run_py(probe).stdout.strip() == "attached"
    q.unlink()


def test_deliveries_of_all_handles_are_bounded_per_process(fastq_dir):
    """Handles share the slot's lanes: together they cannot hold every lane,
    so a put through a third handle never waits for a lane forever."""
    a = fastq.Queue("lanes", capacity=1 << 16, prefetch=fastq._core.MAX_PREFETCH)
    b = fastq.Queue.open("lanes", prefetch=fastq._core.MAX_PREFETCH)
    for i in range(10):
        a.put(i)
    held = [a.receive(timeout=5) for _ in range(4)] + [b.receive(timeout=5) for _ in range(3)]
    with pytest.raises(RuntimeError, match="this process's handles"):
        b.receive(timeout=5)
    c = fastq.Queue.open("lanes")
    c.put("still room")
    held.pop().ack()
    held.append(b.receive(timeout=5))
    for d in held:
        d.ack()
    for h in (a, b, c):
        h.close()


# ---- item 8: default capacity ------------------------------------------------------------


def test_default_capacity_fits_a_container_dev_shm_many_times():
    q, t = fastq.Queue(), fastq.Topic()
    for h in (q, t):
        assert h.capacity <= 4 << 20 and 64_000_000 // h.capacity >= 16
        assert h.max_message >= 256 << 10
    q.close()
    t.close()


@pytest.mark.parametrize("kind", ["queue", "topic"])
def test_too_large_message_names_a_capacity_that_fits(kind):
    cls = fastq.Queue if kind == "queue" else fastq.Topic
    h = cls(capacity=SMALL, serializer="raw")
    big = b"x" * 100_000
    with pytest.raises(fastq.MessageTooLarge, match=f"a {kind} created with capacity=") as e:
        (h.put if kind == "queue" else h.publish)(big)
    fit = int(re.search(r"capacity=(\d+)", str(e.value)).group(1))
    h.close()
    h = cls(capacity=fit, serializer="raw")
    assert h.capacity == fit and h.max_message >= len(big)
    smaller = cls(capacity=fit // 2, serializer="raw")
    assert smaller.max_message < len(big), "the capacity named is the smallest that fits"
    for x in (h, smaller):
        x.close()


# ---- item 9: undoing a shutdown ------------------------------------------------------------


@pytest.mark.parametrize("kind", ["queue", "topic"])
def test_reset_shutdown_reopens_a_named_segment_for_a_later_run(kind, run_py, fastq_dir):
    cls = "Queue" if kind == "queue" else "Topic"
    run_py(f"""
        import fastq
        h = fastq.{cls}("run", capacity=4096)
        if "{kind}" == "queue":
            h.put("left over")
        h.shutdown()
    """)
    h = getattr(fastq, cls)("run")
    assert h.is_shutdown()
    with pytest.raises(fastq.ShutDown):
        (h.put if kind == "queue" else h.publish)("refused")
    h.reset_shutdown()
    assert not h.is_shutdown()
    if kind == "queue":
        assert h.get(timeout=5) == "left over"
        h.put("new run")
        assert h.get(timeout=5) == "new run"
    else:
        s = h.subscribe()
        h.publish("new run")
        assert s.get(timeout=5) == "new run"
    cp = run_py(f"""
        import fastq
        print(fastq.{cls}.open("run").is_shutdown())
    """)
    assert cp.stdout.strip() == "False"
    h.unlink()
    h.close()


# ---- item 14: trust, forked close, forked subscription --------------------------------------


@pytest.mark.parametrize("method", ["spawn", "forkserver"])
def test_group_writable_queue_reaches_its_creators_children(method, procs):
    ctx = mp.get_context(method)
    q = fastq.Queue("shared660", capacity=SMALL, mode=0o660)
    p = procs.add(child(ctx, 'q.put("from child")', q=q))
    p.start()
    join_ok(p)
    assert q.get(timeout=5) == "from child"
    q.unlink()
    q.close()


def test_vetted_trust_is_for_the_same_file_only(fastq_dir):
    q = fastq.Queue("swap", capacity=SMALL, mode=0o660)
    data = pickle.dumps(q)
    q.unlink()
    other = fastq.Queue("swap", capacity=SMALL, mode=0o662)  # another file, same name
    with pytest.raises(PermissionError, match="lets other users write it"):
        pickle.loads(data)
    other.unlink()
    for h in (q, other):
        h.close()


def test_close_in_forked_child_leaves_parents_delivery(fastq_dir):
    q = fastq.Queue("deliv", capacity=SMALL)
    q.put("m")
    d = q.receive(timeout=5)

    def in_child():
        q.close()
        return 0 if q.closed else 5

    assert reap(fork(in_child)) == 0
    assert not d.settled
    d.ack()
    assert q.qsize() == 0
    q.unlink()
    q.close()


@pytest.mark.parametrize("method", CONTEXTS)
@pytest.mark.parametrize("prefetch", [1, 3])
def test_subscription_passed_to_a_child_joins_its_group(method, prefetch, procs):
    ctx = mp.get_context(method)
    t = fastq.Topic("subs", capacity=1 << 16)
    s = t.subscribe(prefetch=prefetch)
    out = fastq.Queue("out", capacity=1 << 16)
    p = procs.add(child(ctx, """
        got = [s.get(timeout=30) for _ in range(3)]
        with s.receive(timeout=30) as d:
            got.append(d.value)
        out.put(got)
        s.close()
    """, s=s, out=out))
    p.start()
    ready = fastq.Topic.open("subs")
    for i in range(4):
        ready.publish(i)
    assert out.get(timeout=60) == [0, 1, 2, 3]
    join_ok(p)
    s.close()
    for h in (t, out, ready):
        h.unlink()
        h.close()

"""Lost wake-ups: every blocked thread, of every process, on both sides, must be
woken by the write it waits for.

Writers skip the FUTEX_WAKE of a sleep that an earlier writer woke already (the
slot's nap, csrc/fq_wait.c "Waking each sleep once"); a mistake there leaves a
consumer asleep forever beside a message (get() without a timeout never returns)
or a producer asleep beside free space.  These runs make sleeps as frequent as
possible: two processes with two threads each block in get() and put() with no
timeout on a ring of a few messages, fed in bursts with pauses (so that every
thread falls asleep between bursts), and the parent checks every message arrives
exactly once.  A lost wake-up shows as a hang; the bound is only the hang detector.
"""

import os
import queue
import random
import threading
import time

import pytest

import fastq
from support.procs import children, kill_and_reap

BOUND = 120.0  # hang detector; a healthy run takes a few seconds
PER_PRODUCER = 1500


def _producer(name, who, seed):
    q = fastq.Queue(name)
    rng = random.Random(seed)
    i = 0
    while i < PER_PRODUCER:
        burst = rng.randint(1, 12)
        for _ in range(burst):
            if i == PER_PRODUCER:
                break
            q.put((who, i))  # blocks (no timeout) when the ring is full
            i += 1
        if rng.random() < 0.3:
            time.sleep(rng.random() * 0.002)  # let the consumers fall asleep


def _consumer(name, out_name):
    q = fastq.Queue(name)
    out = fastq.Queue(out_name)

    def run():
        while True:
            item = q.get()  # no timeout: the deep sleep
            if item is None:
                return
            out.put(item)

    ts = [threading.Thread(target=run) for _ in range(2)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()


def _fork(fn, *args):
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            fn(*args)
            code = 0
        finally:
            os._exit(code)
    return pid


@pytest.mark.parametrize("wait", ["adaptive", "sleep"])
def test_no_wake_up_is_lost_between_processes_and_threads(tmp_path, wait):
    name = str(tmp_path / "storm")
    out_name = str(tmp_path / "out")
    # a ring of a few messages: producers sleep on space as often as consumers on data
    q = fastq.Queue(name, capacity=4096, max_message=256, wait=wait)
    out = fastq.Queue(out_name, capacity=1 << 20)
    producers, consumers = 2, 2
    seen = {}
    with children() as pids:
        cons = [_fork(_consumer, name, out_name) for _ in range(consumers)]
        pids.extend(cons)
        prods = [_fork(_producer, name, w, 1000 + w) for w in range(producers)]
        pids.extend(prods)
        # the parent's own producer thread blocks on space too
        t = threading.Thread(target=_producer, args=(name, producers, 7))
        t.start()
        total = (producers + 1) * PER_PRODUCER
        end = time.monotonic() + BOUND
        while len(seen) < total:
            left = end - time.monotonic()
            if left <= 0:
                break
            try:
                who, i = out.get(timeout=min(left, 5.0))
            except queue.Empty:
                continue
            assert (who, i) not in seen, "duplicate %r" % ((who, i),)
            seen[(who, i)] = True
        t.join(timeout=max(0.0, end - time.monotonic()))
        assert len(seen) == total, "lost wake-up or message: %d of %d arrived; depth %d" % (
            len(seen), total, q.qsize())
        for pid in prods:
            assert os.waitpid(pid, 0)[1] == 0
        for _ in range(2 * consumers):
            q.put(None)
        for pid in cons:
            assert os.waitpid(pid, 0)[1] == 0
    # order per producer: one queue, consumers forward in the order they took
    # each message, so only per-consumer order is kept; check nothing is missing
    for who in range(producers + 1):
        assert sorted(i for (w, i) in seen if w == who) == list(range(PER_PRODUCER))
    q.close()
    out.close()


def test_topic_subscribers_are_woken_in_every_process(tmp_path):
    """Fan-out: two subscriber processes, each with a plain subscription and a
    member of one shared group, block without a timeout; every subscription gets
    every message once, every group message goes to one member."""
    name = str(tmp_path / "t")
    t = fastq.Topic(name, capacity=8192, max_message=256)
    n = 3000
    outs = [str(tmp_path / ("o%d" % k)) for k in range(2)]
    for o in outs:
        fastq.Queue(o, capacity=1 << 20).close()

    def sub_main(k):
        tt = fastq.Topic(name)
        out = fastq.Queue(outs[k])
        s_all = tt.subscribe()
        s_grp = tt.subscribe(group="g")
        ready.put(k)

        def pump(s, tag):
            for m in s:  # ends at shutdown
                out.put((tag, m))

        ths = [threading.Thread(target=pump, args=(s_all, "all")),
               threading.Thread(target=pump, args=(s_grp, "grp"))]
        for th in ths:
            th.start()
        for th in ths:
            th.join()

    ready = fastq.Queue(str(tmp_path / "ready"))
    with children() as pids:
        for k in range(2):
            pids.append(_fork(sub_main, k))
        for _ in range(2):
            ready.get(timeout=BOUND)
        rng = random.Random(3)
        for i in range(n):
            t.publish(i)
            if rng.random() < 0.05:
                time.sleep(rng.random() * 0.002)
        got = {(k, tag): [] for k in range(2) for tag in ("all", "grp")}
        out_qs = [fastq.Queue(o) for o in outs]
        end = time.monotonic() + BOUND
        want = 2 * n + n
        count = 0
        while count < want and time.monotonic() < end:
            for k in range(2):
                try:
                    while True:
                        tag, m = out_qs[k].get(timeout=0.05)
                        got[(k, tag)].append(m)
                        count += 1
                except queue.Empty:
                    pass
        assert count == want, "lost wake-up or message: %d of %d" % (count, want)
        for k in range(2):
            assert got[(k, "all")] == list(range(n))
        assert sorted(got[(0, "grp")] + got[(1, "grp")]) == list(range(n))
        t.shutdown()
        for pid in pids:
            assert os.waitpid(pid, 0)[1] == 0
        pids.clear()
    t.close()

"""fastq.Pool: results reach the thread that waits for them (it reads the results
queue itself) and results nobody waits for still complete (the collector thread):
several waiting threads at once, callbacks with no waiter, waiting with a timeout."""
from __future__ import annotations

import threading

import pytest

import fastq

from support import poolfuncs as F


def test_threads_waiting_at_once_each_get_their_own_results(fastq_dir):
    got: dict = {}
    errors: list = []

    def applies(k):
        try:
            got[k] = [p.apply(F.sq, (k * 1000 + i,)) for i in range(200)]
        except BaseException as e:  # pragma: no cover - reported below
            errors.append(e)

    def imaps(k):
        try:
            got[k] = list(p.imap(F.inc, range(k * 1000, k * 1000 + 3000)))
        except BaseException as e:  # pragma: no cover - reported below
            errors.append(e)

    with fastq.Pool(2) as p:
        threads = [threading.Thread(target=applies if k % 2 else imaps, args=(k,))
                   for k in range(6)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        assert not any(t.is_alive() for t in threads)
    assert errors == []
    for k in range(6):
        if k % 2:
            assert got[k] == [(k * 1000 + i) ** 2 for i in range(200)]
        else:
            assert got[k] == list(range(k * 1000 + 1, k * 1000 + 3001))


def test_callbacks_run_with_nobody_waiting(fastq_dir):
    done = threading.Event()
    got: list = []

    def cb(v):
        got.append(v)
        if len(got) == 3:
            done.set()

    with fastq.Pool(2) as p:
        rs = [p.apply_async(F.sq, (3,), callback=cb), p.map_async(F.inc, range(5), callback=cb),
              p.apply_async(F.sq, (4,), callback=cb)]
        assert done.wait(30)  # nobody called get(): the collector thread delivered them
        assert all(r.ready() and r.successful() for r in rs)
    assert sorted(map(str, got)) == sorted(map(str, [9, 16, [1, 2, 3, 4, 5]]))


def test_a_result_that_comes_while_another_thread_reads(fastq_dir):
    # one thread waits (and reads the results) for a slow item while another
    # waits for fast ones: the reader delivers them to the other thread
    with fastq.Pool(2) as p:
        slow = p.apply_async(F.tick, (1,))
        fast: list = []
        t = threading.Thread(target=lambda: fast.extend(p.map(F.sq, range(100))))
        t.start()
        assert slow.get(30)[0] == 1
        t.join(30)
        assert fast == [x * x for x in range(100)]
        with pytest.raises(ValueError, match="boom at 5"):
            p.apply_async(F.boom, (5,)).get(30)


def test_get_with_timeout_times_out_then_succeeds(fastq_dir):
    import multiprocessing as mp
    with fastq.Pool(1) as p:
        r = p.apply_async(F.nap, (0.5,))
        with pytest.raises(mp.TimeoutError):
            r.get(0.01)
        assert not r.ready()
        assert r.get(30) == 0.5


def test_a_result_nobody_waits_for_is_seen_by_ready(fastq_dir):
    import time
    with fastq.Pool(2) as p:
        r = p.apply_async(F.sq, (7,))  # no callback: delivered when asked
        deadline = time.monotonic() + 30
        while not r.ready() and time.monotonic() < deadline:
            time.sleep(0.001)
        assert r.ready() and r.successful() and r.get(0) == 49


def test_map_async_goes_on_while_nobody_waits(fastq_dir):
    # far more chunks than its window: the collector thread must take the
    # results for the feeder to go on
    import time
    with fastq.Pool(2) as p:
        r = p.map_async(F.inc, range(2000), chunksize=1)
        deadline = time.monotonic() + 30
        while sum(p._engine.stage_done()) < 2000 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert sum(p._engine.stage_done()) == 2000
        assert r.get(30) == list(range(1, 2001))


def test_executor_future_waits_in_the_caller(fastq_dir):
    import concurrent.futures as cf
    with fastq.Executor(1) as ex:
        slow = ex.submit(F.nap, 0.5)
        with pytest.raises(cf.TimeoutError):
            slow.result(timeout=0.01)
        assert slow.result(timeout=30) == 0.5
        bad = ex.submit(F.boom, 5)
        assert isinstance(bad.exception(timeout=30), ValueError)
        assert [f.result() for f in [ex.submit(F.sq, i) for i in range(50)]] == \
            [i * i for i in range(50)]


def test_an_idle_pool_wakes_no_thread_of_the_parent(fastq_dir):
    # The collector used to poll every 2 ms with nothing to read: ~230
    # wake-ups (voluntary context switches) of the parent in 0.5 s.  Now it
    # sleeps until a result needs it; the supervisor wakes once a second.
    import resource
    import time
    with fastq.Pool(2) as p:
        assert p.apply(F.sq, (3,)) == 9
        assert list(p.imap(F.inc, range(100))) == list(range(1, 101))
        before = resource.getrusage(resource.RUSAGE_SELF).ru_nvcsw
        time.sleep(0.5)
        woke = resource.getrusage(resource.RUSAGE_SELF).ru_nvcsw - before
        assert woke < 25, f"the parent's threads woke {woke} times in 0.5 s of an idle pool"
        # a result with a callback after the idle time still arrives
        got = []
        done = threading.Event()
        p.apply_async(F.sq, (4,), callback=lambda v: (got.append(v), done.set()))
        assert done.wait(30) and got == [16]
        p.close()
        p.join()  # the collector, asleep again, sees the close


def _end_while_the_consumer_sleeps(monkeypatch, start):
    """Hold the feeder after its last batch (before it sees the end of the
    input) until the consumer took every result and sleeps reading the results
    queue for more; then let the input end.  start() -> (iterator, engine).
    Returns the consumer's result and the reads that slept through the end
    (began before it, ended by their timeout after it)."""
    import time

    from fastq import _workers as W
    from support.waiting import in_thread, wait_for
    gate, held = threading.Event(), threading.Event()
    late, reading, last = [], [], []
    size, room = W._Engine.chunk_size, W._Engine._room

    def chunk_size(self, first, remaining):
        n = size(self, first, remaining)
        if remaining is not None and n >= remaining:
            last.append(1)  # the batch being cut is the last one
        return n

    def room_then_hold(self, job):
        ok = room(self, job)
        if last:  # the last batch is in: hold the feeder before it sees the end
            held.set()
            gate.wait(30)
        return ok

    monkeypatch.setattr(W._Engine, "chunk_size", chunk_size)
    monkeypatch.setattr(W._Engine, "_room", room_then_hold)
    it, eng = start()
    q = eng.queues[-1]
    read = q.get_many

    def get_many(*a, **k):  # the engine's only read of the results queue
        before = gate.is_set()
        reading.append(1)
        try:
            return read(*a, **k)
        except fastq.Empty:
            if not before and gate.is_set():
                late.append("a read of the results queue slept through the end of the input")
            raise
        finally:
            reading.pop()

    q.get_many = get_many  # before anyone reads: the consumer starts below
    th, res = in_thread(list, it)
    wait_for(lambda: held.is_set() and reading and q.qsize() == 0
             and not any(eng.slots[w * 5] for w in range(eng.nworkers)),
             "every result read and the consumer reading for more")
    time.sleep(0.05)  # let it fall asleep in that read (shorter: only less sensitive)
    gate.set()
    th.join(30)
    assert not th.is_alive()
    return res, late


def test_the_end_of_an_imap_input_wakes_its_consumer(fastq_dir, monkeypatch):
    # The feeder learns that the input ended (and sets the job's total) after
    # the consumer took every result and fell asleep reading the results
    # queue: the consumer used to sleep there until its read timed out (0.2 s),
    # at the end of an imap or a pipeline whenever the feeder came late (after
    # its last batch it waits for room in the window first): a third of the
    # runs of 400k ints under load.
    with fastq.Pool(2) as p:
        res, late = _end_while_the_consumer_sleeps(
            monkeypatch, lambda: (p.imap(F.inc, list(range(40))), p._engine))
    assert res.get("value") == list(range(1, 41)), res
    assert late == []


def test_the_end_of_a_pipeline_input_wakes_its_consumer(fastq_dir, monkeypatch):
    made = []

    def start():
        made.append(fastq.pipeline(list(range(40)), F.inc, F.inc))
        return iter(made[0]), made[0]._engine
    try:
        res, late = _end_while_the_consumer_sleeps(monkeypatch, start)
    finally:
        for pl in made:
            pl.close()
    assert res.get("value") == list(range(2, 42)), res
    assert late == []

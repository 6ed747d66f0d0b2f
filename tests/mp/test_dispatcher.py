"""fastq.Dispatcher: handlers of both kinds in worker processes, publish_to, retries with
backoff, dead letters and their metadata, workers killed message by message and at
random times, graceful stop (stop() and SIGTERM)."""
from __future__ import annotations

import asyncio
import functools
import os
import signal
import time

import pytest

import fastq
from support.procs import random_sigkills, start_py

def drain(q, n, timeout=20.0):
    """n messages from q (fails the test if they do not come within timeout)."""
    return [q.get(timeout=timeout) for _ in range(n)]


def rest(q):
    """Everything q holds now (one by one: a message given back comes alone)."""
    got = []
    while True:
        try:
            got.append(q.get_nowait())
        except fastq.Empty:
            return got


def assert_empty(q, wait=0.3):
    with pytest.raises(fastq.Empty):
        q.get(timeout=wait)


# ---- handlers (module level: picklable) ------------------------------------------------

def double(x):
    return 2 * x


async def adouble(x):
    await asyncio.sleep(0.001)
    return 2 * x


def flaky(log, fail_times, x):
    """Fails the first ``fail_times`` attempts of each message; logs (x, attempt, time)."""
    log.put((x, time.time(), os.getpid()))
    n = int(open(_counter(log, x)).read()) if os.path.exists(_counter(log, x)) else 0
    with open(_counter(log, x), "w") as f:
        f.write(str(n + 1))
    if n < fail_times:
        raise ValueError(f"attempt {n + 1} of {x} fails")
    return x


def fails_first_for(target, log, x):
    """The first attempt of ``target`` fails; everything else succeeds."""
    return flaky(log, 1 if x == target else 0, x)


def _counter(log, x):
    return os.path.join(os.environ["FASTQ_DIR"], f"count-{log.name}-{x}")


def always_fails(x):
    raise KeyError(f"no such order {x}")


async def always_fails_async(x):
    await asyncio.sleep(0)
    always_fails(x)


def mixed(out, x):
    """x % 5 == 0 always raises; x % 3 == 0 kills its worker on its first attempt."""
    if x % 3 == 0 and not os.path.exists(_counter(out, x)):
        open(_counter(out, x), "w").close()
        os.kill(os.getpid(), signal.SIGKILL)
    if x % 5 == 0:
        raise RuntimeError(f"poison {x}")
    out.put(x)


def busy_or_poison(x):
    time.sleep(0.002)
    if x % 4 == 0:
        raise RuntimeError(f"poison {x}")
    return x


def kills_always(x):
    os.kill(os.getpid(), signal.SIGKILL)


def slow(started, x):
    started.put(x)
    time.sleep(0.5)
    return x


async def aslow(started, seconds, x):
    started.put(x)
    await asyncio.sleep(seconds)
    return x


def busy(x):
    time.sleep(0.002)
    return x


# ---- handlers of both kinds ------------------------------------------------------------

@pytest.mark.parametrize("fn,concurrency", [(double, 1), (double, 3), (adouble, 1), (adouble, 5)],
                         ids=["sync", "threads", "async", "tasks"])
def test_handler_results_published(fastq_dir, fn, concurrency):
    src, out = fastq.Queue("in"), fastq.Queue("out")
    d = fastq.Dispatcher()
    d.on(src, workers=2, concurrency=concurrency, publish_to=out)(fn)
    with d:
        src.put_many(range(300))
        got = drain(out, 300)
    assert sorted(got) == [2 * i for i in range(300)]
    assert src.qsize() == 0 and src.unacked() == 0


def test_ordered_source_publishes_in_order(fastq_dir):
    src, out = fastq.Queue("in"), fastq.Queue("out")
    d = fastq.Dispatcher()
    d.on(src, publish_to=out)(double)
    with d:
        src.put_many(range(500))
        assert drain(out, 500) == [2 * i for i in range(500)]


def test_source_by_name(fastq_dir):
    src, out = fastq.Queue("in"), fastq.Queue("out")
    fastq.Topic("events")
    d = fastq.Dispatcher()
    d.on("in", publish_to=out)(double)
    d.on("events", publish_to=out)(double)
    with d:
        src.put(1)
        fastq.Topic("events").publish(2)
        assert sorted(drain(out, 2)) == [2, 4]


def test_topic_source_group_shares_messages(fastq_dir):
    t, out = fastq.Topic("events"), fastq.Queue("out")
    d = fastq.Dispatcher()
    d.on(t, group="doublers", workers=2, publish_to=out)(double)
    with d:
        for i in range(200):
            t.publish(i)
        got = drain(out, 200)
        assert_empty(out)
    assert sorted(got) == [2 * i for i in range(200)]


def test_topic_subjects_filter(fastq_dir):
    t, out = fastq.Topic("orders"), fastq.Queue("out")
    d = fastq.Dispatcher()
    d.on(t, group="eu", subjects="orders.eu.*", publish_to=out)(double)
    with d:
        for i in range(100):
            t.publish(i, subject=f"orders.{'eu' if i % 2 else 'us'}.created")
        got = drain(out, 50)
        assert_empty(out)
    assert sorted(got) == [2 * i for i in range(1, 100, 2)]


def test_bad_arguments(fastq_dir):
    d = fastq.Dispatcher()
    q = fastq.Queue("in")
    with pytest.raises(ValueError):
        d.on(q, workers=0)
    with pytest.raises(ValueError):
        d.on(q, concurrency=8)
    with pytest.raises(ValueError):
        d.on(q, subjects="a.b")
    with pytest.raises(ValueError):
        d.on(q, backoff=(2.0, 1.0))
    with pytest.raises(TypeError):
        d.on(q, dead_letter="dead")
    with pytest.raises(FileNotFoundError):
        d.on("no-such-queue")
    with pytest.raises(ValueError):
        d.on(q, group="g")
    with pytest.raises(RuntimeError):
        d.start()


# ---- retries, backoff, dead letters ----------------------------------------------------

def test_retries_back_off_within_bounds(fastq_dir):
    src, out, log = fastq.Queue("in"), fastq.Queue("out"), fastq.Queue("log")
    lo, hi = 0.2, 0.4
    d = fastq.Dispatcher()
    d.on(src, max_attempts=3, backoff=(lo, hi), publish_to=out)(functools.partial(flaky, log, 2))
    with d:
        src.put("a")
        assert out.get(timeout=20) == "a"
        times = [t for _, t, _ in drain(log, 3)]
        assert_empty(log)
    # attempt 2 waited at least lo, attempt 3 at least min(hi, 2 lo) / 2 (jittered down)
    assert times[1] - times[0] >= lo
    assert times[2] - times[1] >= min(hi, 2 * lo) / 2


def test_backoff_does_not_hold_the_worker(fastq_dir):
    # one worker, a long backoff: other messages are handled while the failed one waits
    src, out, log = fastq.Queue("in"), fastq.Queue("out"), fastq.Queue("log")
    d = fastq.Dispatcher()
    d.on(src, max_attempts=2, backoff=(3.0, 3.0), publish_to=out)(
        functools.partial(fails_first_for, "x", log))
    with d:
        src.put_many(["x", "y", "z"])
        first = drain(out, 3, timeout=30)
    assert first[:2] == ["y", "z"] and first[2] == "x"


def test_backoff_delay_bounds():
    from fastq._dispatch import backoff_delay
    for attempt in range(1, 20):
        for _ in range(50):
            assert 0.1 <= backoff_delay(attempt, (0.1, 5.0)) <= 5.0
    assert backoff_delay(30, (0.1, 5.0)) >= 2.5        # capped, jitter in the upper half


@pytest.mark.parametrize("kind", ["sync", "async"])
def test_dead_letter_metadata(fastq_dir, kind):
    src, dead = fastq.Queue("in"), fastq.Queue("dead")
    fn = always_fails if kind == "sync" else always_fails_async
    d = fastq.Dispatcher()
    d.on(src, max_attempts=3, backoff=(0.05, 0.1), dead_letter=dead)(fn)
    t0 = time.time()
    with d:
        src.put({"order": 7})
        dl = dead.get(timeout=20)
        assert_empty(dead)
        assert src.qsize() == 0 and src.unacked() == 0
    assert isinstance(dl, fastq.DeadLetter)
    assert dl.message == {"order": 7}
    assert dl.source == "in" and dl.attempts == 3
    assert dl.exc_type == "KeyError" and "no such order" in dl.exc_message
    assert "always_fails" in dl.traceback and "KeyError" in dl.traceback
    assert t0 <= dl.first_attempt < dl.last_attempt <= time.time()
    assert dl.id is not None


def test_worker_killed_every_attempt_is_dead_lettered(fastq_dir):
    src, dead = fastq.Queue("in"), fastq.Queue("dead")
    d = fastq.Dispatcher()
    d.on(src, max_attempts=2, dead_letter=dead)(kills_always)
    with d:
        src.put("poison")
        dl = dead.get(timeout=30)
        assert_empty(dead, 1.0)
        assert d.restarts == 2
    assert dl.message == "poison" and dl.exc_type == "WorkerLost" and dl.attempts == 2


def test_kills_message_by_message(fastq_dir):
    # every third message kills its worker on its first attempt, every fifth always raises:
    # nothing lost, each poison message dead-lettered exactly once with its attempts counted
    src, out, dead = fastq.Queue("in"), fastq.Queue("out"), fastq.Queue("dead")
    n = 60
    d = fastq.Dispatcher()
    d.on(src, workers=2, max_attempts=3, backoff=(0.01, 0.05), dead_letter=dead)(
        functools.partial(mixed, out))
    with d:
        src.put_many(range(n))
        ok = [x for x in range(n) if x % 5]
        poison = [x for x in range(n) if x % 5 == 0]
        got = drain(out, len(ok), timeout=60)
        dls = drain(dead, len(poison), timeout=60)
        assert_empty(dead, 0.5)
        assert_empty(out, 0.1)
    assert sorted(got) == ok
    assert sorted(dl.message for dl in dls) == poison
    for dl in dls:
        # killed on attempt 1 when x % 3 == 0 (attempt counted), raised on the others
        assert dl.attempts == 3 and dl.exc_type == "RuntimeError"


def test_random_kills_lose_nothing(fastq_dir):
    src, out, dead = fastq.Queue("in"), fastq.Queue("out"), fastq.Queue("dead")
    n = 400
    d = fastq.Dispatcher()
    d.on(src, workers=2, max_attempts=1000, publish_to=out, dead_letter=dead)(busy)
    with d:
        src.put_many(range(n))
        seen = set()
        with random_sigkills(lambda: d.pids, seed=14):
            while len(seen) < n:
                seen.add(out.get(timeout=60))
        assert d.restarts > 0
    assert seen == set(range(n))
    assert_empty(dead)


def test_random_kills_dead_letter_each_poison_message_once(fastq_dir):
    src, out, dead = fastq.Queue("in"), fastq.Queue("out"), fastq.Queue("dead")
    n = 240
    d = fastq.Dispatcher()
    d.on(src, workers=2, max_attempts=3, backoff=(0.01, 0.02), publish_to=out,
         dead_letter=dead)(busy_or_poison)
    with d:
        src.put_many(range(n))
        seen, dls = set(), []
        with random_sigkills(lambda: d.pids, seed=41):
            while len(seen) < n * 3 // 4 or len(dls) < n // 4:
                try:
                    seen.add(out.get(timeout=0.05))
                except fastq.Empty:
                    pass
                dls += dead.get_many(block=False) if dead.qsize() else []
        assert d.restarts > 0
        assert_empty(dead, 1.0)
    assert seen == {x for x in range(n) if x % 4}
    assert sorted(dl.message for dl in dls) == list(range(0, n, 4))     # each once
    assert {dl.attempts for dl in dls} == {3}
    assert {dl.exc_type for dl in dls} <= {"RuntimeError", "WorkerLost"}


@pytest.mark.parametrize("after_mark", [False, True], ids=["before_mark", "after_mark"])
def test_worker_killed_right_after_the_dead_letter_puts_it_once(fastq_dir, monkeypatch,
                                                               after_mark):
    # SIGKILL in the worker after its dead letter is in the queue: before the shared
    # table marks the message dead-lettered (the next worker used to put a second,
    # "WorkerLost" one), or after the mark, before the ack
    from fastq import _dispatch
    flag = os.path.join(os.environ["FASTQ_DIR"], "killed")
    add = _dispatch._Ledger.add

    def add_then_die(self, slot, key, kind, t):
        dying = kind == _dispatch._DEAD and not os.path.exists(flag)
        if dying:
            open(flag, "w").close()
            if not after_mark:
                os.kill(os.getpid(), signal.SIGKILL)
        add(self, slot, key, kind, t)
        if dying:
            os.kill(os.getpid(), signal.SIGKILL)

    monkeypatch.setattr(_dispatch._Ledger, "add", add_then_die)   # forked workers inherit it
    src, dead = fastq.Queue("in"), fastq.Queue("dead")
    d = fastq.Dispatcher()
    d.on(src, max_attempts=2, backoff=(0.01, 0.02), dead_letter=dead)(always_fails)
    with d:
        src.put("poison")
        # the dead letter is read only once the message has left its source (reading it
        # before the redelivery is checked is the one case that can still duplicate it)
        deadline = time.monotonic() + 30
        while src.unfinished() and time.monotonic() < deadline:
            time.sleep(0.01)
        assert d.restarts == 1
    dls = rest(dead)
    assert [(dl.message, dl.attempts, dl.exc_type) for dl in dls] == [("poison", 2, "KeyError")]
    assert src.unfinished() == 0


# ---- stopping --------------------------------------------------------------------------

def test_stop_lets_the_handler_in_flight_finish(fastq_dir):
    src, out, started = fastq.Queue("in"), fastq.Queue("out"), fastq.Queue("started")
    d = fastq.Dispatcher(grace=10)
    d.on(src, publish_to=out)(functools.partial(slow, started))
    d.start()
    src.put_many([1, 2, 3])
    assert started.get(timeout=20) == 1
    d.stop()
    assert out.get(timeout=1) == 1            # finished before stop() returned
    assert src.unacked() == 0
    assert sorted(rest(src)) == [2, 3]  # the rest is still there


def test_sigterm_stops_run_gracefully(fastq_dir, procs):
    code = """
import functools, fastq, sys
sys.path.insert(0, {tests!r})
from mp.test_dispatcher import slow
src, out, started = fastq.Queue("in"), fastq.Queue("out"), fastq.Queue("started")
d = fastq.Dispatcher(grace=10)
d.on(src, workers=2, publish_to=out)(functools.partial(slow, started))
d.run()
print("stopped")
""".format(tests=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    src, out, started = fastq.Queue("in"), fastq.Queue("out"), fastq.Queue("started")
    child = start_py(procs, code, {"FASTQ_DIR": str(fastq_dir)})
    src.put_many(range(10))
    first = {started.get(timeout=30), started.get(timeout=30)}
    child.send_signal(signal.SIGTERM)
    stdout, err = child.communicate(timeout=30)
    assert child.returncode == 0, err
    assert "stopped" in stdout
    done = set(out.get_many(block=False))
    assert first <= done                               # in flight: finished
    assert src.unacked() == 0
    assert done | set(rest(src)) == set(range(10))   # nothing lost


def test_topic_source_retries_and_dead_letters(fastq_dir):
    # a topic's retry waits in the worker (the core delays only a queue's nack)
    t, dead, log = fastq.Topic("events"), fastq.Queue("dead"), fastq.Queue("log")
    d = fastq.Dispatcher()
    d.on(t, group="g", max_attempts=3, backoff=(0.05, 0.1), dead_letter=dead)(
        functools.partial(flaky, log, 99))
    with d:
        t.publish("e")
        dl = dead.get(timeout=20)
        assert_empty(dead)
    assert (dl.message, dl.source, dl.attempts, dl.exc_type) == ("e", "events", 3, "ValueError")
    assert len(log.get_many(block=False)) == 3


def test_spawned_workers(fastq_dir, child_env, monkeypatch):
    # workers started with spawn unpickle the route: the handler, the queues (an
    # anonymous one too) and the shared ledger
    from support import poolfuncs
    monkeypatch.setenv("PYTHONPATH", child_env()["PYTHONPATH"] + os.pathsep
                       + os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    src, out = fastq.Queue(), fastq.Queue("out")
    d = fastq.Dispatcher(context="spawn")
    d.on(src, workers=2, publish_to=out, dead_letter=fastq.Queue("dead"))(poolfuncs.inc)
    with d:
        src.put_many(range(50))
        assert sorted(drain(out, 50)) == list(range(1, 51))


def test_stop_with_threads_lets_every_handler_in_flight_finish(fastq_dir):
    src, out, started = fastq.Queue("in"), fastq.Queue("out"), fastq.Queue("started")
    d = fastq.Dispatcher(grace=10)
    d.on(src, concurrency=3, publish_to=out)(functools.partial(slow, started))
    d.start()
    src.put_many(range(5))
    running = set(drain(started, 3))
    d.stop()
    assert set(out.get_many(block=False)) == running
    assert src.unacked() == 0
    assert sorted(rest(src)) == sorted(set(range(5)) - running)


def test_async_handlers_past_the_grace_give_their_message_back(fastq_dir):
    src, out, started = fastq.Queue("in"), fastq.Queue("out"), fastq.Queue("started")
    d = fastq.Dispatcher(grace=0.2)
    d.on(src, concurrency=2, publish_to=out)(functools.partial(aslow, started, 60))
    d.start()
    src.put_many([1, 2])
    assert sorted(drain(started, 2)) == [1, 2]
    d.stop()
    assert_empty(out, 0.1)
    assert src.unacked() == 0
    assert sorted(rest(src)) == [1, 2]     # nacked, nothing lost

"""wait= strategies per handle (issue #12): every strategy hands messages over
between threads and processes without loss, "sleep" never spins, "spin" never
sleeps (counted: the C core's FUTEX_WAIT calls of this process), and a bad
name is refused."""
from __future__ import annotations

import threading

import pytest

import fastq
from fastq import _core

from support.procs import children, fork, reap  # noqa: E402

pytestmark = pytest.mark.usefixtures("fastq_dir")

STRATEGIES = ["adaptive", "spin", "sleep"]


def _echo(name, n, wait):
    q = fastq.Queue(name + ".ping", wait=wait)
    r = fastq.Queue(name + ".pong", wait=wait)
    for _ in range(n):
        r.put(q.get(timeout=30))
    return 0


@pytest.mark.parametrize("wait", STRATEGIES)
def test_ping_pong_between_processes(wait):
    q = fastq.Queue("pp.ping", capacity=4096, wait=wait)
    r = fastq.Queue("pp.pong", capacity=4096, wait=wait)
    n = 300
    with children() as pids:
        pids.append(fork(_echo, "pp", n, wait))
        for i in range(n):
            q.put(i)
            assert r.get(timeout=30) == i
        assert reap(pids[0]) == 0


@pytest.mark.parametrize("wait", STRATEGIES)
def test_topic_strategy_reaches_its_subscriptions(wait):
    t = fastq.Topic(None, capacity=4096, wait=wait)
    s = t.subscribe()
    out = []
    th = threading.Thread(target=lambda: out.append(s.get(timeout=30)))
    th.start()
    t.publish("m")
    th.join(30)
    assert out == ["m"]
    t.close()


def test_spin_never_sleeps_and_sleep_always_does():
    """A get that waits 0.2 s: with "spin" it makes no FUTEX_WAIT at all; with
    "sleep" it sleeps at once."""
    for wait, slept in (("spin", False), ("sleep", True)):
        q = fastq.Queue(None, capacity=4096, wait=wait)
        before = _core._wait_counts()[0]
        with pytest.raises(fastq.Empty):
            q.get(timeout=0.2)
        assert (_core._wait_counts()[0] > before) == slept, wait
        q.close()


@pytest.mark.parametrize("bad", ["busy", None, 1])
def test_unknown_strategy_is_refused(bad):
    with pytest.raises(ValueError):
        fastq.Queue(None, wait=bad)
    with pytest.raises(ValueError):
        fastq.Topic(None, wait=bad)

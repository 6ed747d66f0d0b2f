"""A handle pickled into a child process keeps its wait= strategy (issue
#12): the child's copy reports it, and waits by it (counted: the child's
FUTEX_WAIT calls; "spin" makes none, "sleep" and "adaptive" sleep)."""
from __future__ import annotations

import multiprocessing

import pytest

import fastq
from fastq import _core

pytestmark = pytest.mark.usefixtures("fastq_dir")

NAMES = {v: k for k, v in _core.STRATEGIES.items()}


def _child(handle, out):
    """Report handle's strategy and the sleeps of one empty 50 ms get."""
    strategy = NAMES[(handle.topic if isinstance(handle, fastq.Subscription)
                      else handle).strategy]
    before = _core._wait_counts()[0]
    try:
        handle.get(timeout=0.05)
        got = "message"
    except fastq.Empty:
        got = "empty"
    out.put((strategy, got, _core._wait_counts()[0] - before))


def in_child(handle):
    ctx = multiprocessing.get_context("spawn")
    out = ctx.Queue()
    p = ctx.Process(target=_child, args=(handle, out))
    p.start()
    try:
        return out.get(timeout=60)
    finally:
        p.join(30)
        assert p.exitcode == 0


@pytest.mark.parametrize("wait", ["spin", "sleep", "adaptive"])
@pytest.mark.parametrize("what", ["queue", "joinable", "topic-subscription"])
def test_pickled_handle_keeps_its_wait_strategy(what, wait):
    if what == "queue":
        h = keep = fastq.Queue("pk", capacity=4096, wait=wait)
    elif what == "joinable":
        h = keep = fastq.JoinableQueue("pk", capacity=4096, wait=wait)
    else:
        keep = fastq.Topic("pk", capacity=4096, wait=wait)
        h = keep.subscribe(group="g")
    strategy, got, sleeps = in_child(h)
    assert (strategy, got) == (wait, "empty")
    if wait == "spin":
        assert sleeps == 0
    else:
        assert sleeps >= 1
    keep.close()

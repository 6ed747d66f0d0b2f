"""Killed workers and Ctrl-C under the start methods that hand the anonymous
queues to a new worker by descriptor (spawn, forkserver): a replacement worker
is started by the supervisor long after the pool or pipeline began, and must
still reach the same queues (issue 13: "works under fork, spawn and
forkserver" for every failure, not only for the happy path)."""
from __future__ import annotations

import os
import time

import pytest

import fastq

from support import poolfuncs as F, TESTS
from support.procs import check_ctrl_c

METHODS = ["spawn", "forkserver"]


@pytest.mark.parametrize("method", METHODS)
def test_pipeline_replaces_a_killed_worker(fastq_dir, tmp_path, method):
    marker = str(tmp_path / "died")
    items = [(x, str(marker)) for x in range(30)]
    with fastq.pipeline(items, fastq.Stage(F.die_once, workers=2, max_retries=1), F.inc,
                        context=method) as p:
        before = set(p.pids())
        got = list(p)
        assert got == [x * 10 + 1 for x in range(30)]  # each result once, in order
        assert os.path.exists(marker) and p.reruns >= 1
        # a worker started after the kill takes its place (awaited, bounded: the
        # other worker may re-run the item before the supervisor saw the death)
        deadline = time.monotonic() + 10
        while set(p.pids()) == before and time.monotonic() < deadline:
            time.sleep(0.01)
        assert set(p.pids()) != before and len(p.pids()) == 3
    assert list(fastq_dir.iterdir()) == []


@pytest.mark.parametrize("method", METHODS)
def test_pool_replaces_a_killed_worker_and_goes_on(fastq_dir, tmp_path, method):
    marker = str(tmp_path / "died")
    with fastq.Pool(2, context=method, max_retries=1) as p:
        assert p.map(F.die_once, [(x, marker) for x in range(20)]) == [x * 10 for x in range(20)]
        assert os.path.exists(marker) and p.reruns >= 1
        # the replacement (spawned with the queues' descriptors) runs work too
        assert p.map(F.sq, range(50)) == [x * x for x in range(50)]
    assert list(fastq_dir.iterdir()) == []


@pytest.mark.parametrize("method", METHODS)
def test_item_that_always_kills_raises_worker_lost(fastq_dir, method):
    with pytest.raises(fastq.WorkerLost) as ei:
        with fastq.pipeline(range(20), F.inc, fastq.Stage(F.always_die, max_retries=1),
                            context=method) as p:
            list(p)
    assert ei.value.position == 6 and ei.value.stage == 1 and ei.value.runs == 2


CTRL_C = r"""
import sys
sys.path.insert(0, {tests!r})
import fastq
from support import poolfuncs as F
if __name__ == "__main__":
    p = fastq.pipeline(iter(int, 1), fastq.Stage(F.tick, workers=2), F.inc_first,
                       context="spawn")
    next(p)
    print(" ".join(map(str, p.pids())), flush=True)
    for _ in p:
        pass
"""


def test_pipeline_ctrl_c_under_spawn_leaves_no_process_and_no_segment(fastq_dir, procs):
    check_ctrl_c(procs, CTRL_C.format(tests=str(TESTS)), fastq_dir, 3)

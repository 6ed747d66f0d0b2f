"""A chunk's outputs larger than one message of the queue (issue 13, README
"Limits"): a flat stage whose outputs for one input exceed a message, and a
Pool whose batch of results does.  They used to fail with MessageTooLarge;
now the outputs travel in several messages (parts) and are put back together
in order, exactly once, even when the worker is SIGKILLed between two parts
(its input is run again, and only one complete run's parts are used).  One
single output larger than a message fails alone, saying its size and the
limit.  Every wait is bounded: a hang fails the test."""
from __future__ import annotations

import os
import signal
import time


import fastq

from support import poolfuncs as F
from support.waiting import bounded as _bounded, in_thread, wait_for

WAIT = 60.0
CAP = 256 << 10   # a queue of 256 KiB: a message is at most half of it


def _expected_flat(xs):
    return [y for x in xs for y in F.big_flat(x)]



def test_a_flat_stage_whose_outputs_exceed_a_message(fastq_dir):
    def run():
        with fastq.pipeline(range(6), fastq.Stage(F.big_flat, workers=2, flat=True),
                            capacity=CAP) as p:
            return list(p)
    got = _bounded(run)
    assert got == _expected_flat(range(6))


def test_parts_go_through_the_next_stages_in_order(fastq_dir):
    def run():
        with fastq.pipeline(range(5), fastq.Stage(F.big_flat, flat=True),
                            fastq.Stage(len, workers=2), fastq.Stage(F.inc, workers=2),
                            capacity=CAP) as p:
            return list(p)
    assert _bounded(run) == [F.BIG + 1] * (30 * 5)

    def unordered():
        with fastq.pipeline(range(5), fastq.Stage(F.big_flat, workers=2, flat=True),
                            fastq.Stage(str.upper, workers=2), ordered=False,
                            capacity=CAP) as p:
            return list(p)
    got = _bounded(unordered)
    assert sorted(got) == sorted(y.upper() for y in _expected_flat(range(5)))


def test_a_pool_batch_of_results_larger_than_a_message(fastq_dir):
    with fastq.Pool(2, capacity=CAP) as p:
        assert p.map(F.big, range(40), chunksize=40) == [F.big(x) for x in range(40)]
        assert list(p.imap(F.big, range(40), chunksize=20)) == [F.big(x) for x in range(40)]


def test_one_output_larger_than_a_message_fails_alone_naming_its_size(fastq_dir):
    limit = []

    def run():
        got = []
        with fastq.pipeline(range(5), fastq.Stage(F.huge_at_2, flat=True), capacity=CAP) as p:
            limit.append(p._engine.queues[1].max_message)
            try:
                for y in p:
                    got.append(y)
            except fastq.MessageTooLarge as e:
                return got, e
        return got, None
    got, err = _bounded(run)
    assert got == [0, 0, 1, -1, 2], got
    assert err is not None and "2000" in str(err) and str(limit[0]) in str(err), err


def test_a_worker_killed_between_two_parts_gives_each_output_once(fastq_dir, tmp_path):
    """The first stage puts the parts of its input's outputs; the second stage
    holds the first one (gate) so that the queue between them fills and the
    first stage waits in the middle of its parts; it is SIGKILLed there.  Its
    input is run again by its replacement, and the parent gets every output
    once, in order (the dead run's parts are not mixed with the new run's)."""
    d = str(tmp_path)
    items = [(x, d) for x in range(3)]
    with fastq.pipeline(items, fastq.Stage(F.big_flat_with, flat=True),
                        fastq.Stage(F.gate), capacity=CAP) as p:
        eng = p._engine
        th, res = in_thread(list, p)
        wait_for(lambda: os.path.exists(os.path.join(d, "started")), "the gate")
        # the first stage's worker waits for room in the full queue, mid-parts
        wait_for(lambda: eng.queues[1].qsize() >= 1 and eng.slots[0] == 1,
                 "the first stage to wait for room")
        time.sleep(0.2)
        victim = eng.procs[0].pid
        os.kill(victim, signal.SIGKILL)
        wait_for(lambda: eng.procs[0].pid != victim, "the replacement")
        open(os.path.join(d, "go"), "w").close()
        th.join(WAIT)
        assert not th.is_alive(), "hung"
        assert "error" not in res, res.get("error")
        got = res["value"]
        assert p.reruns >= 1
    # each input's outputs once, in order, all from one run (the run that
    # completed: never some parts of the killed run and some of the new one)
    assert [(x, i) for _, x, i, _ in got] == [(x, i) for x in range(3) for i in range(30)]
    for x in range(3):
        mine = [(tag, len(text)) for tag, y, _, text in got if y == x]
        assert len(set(mine)) == 1, (x, set(mine))
    assert ("b", F.BIG * 3 // 4) in {(tag, len(text)) for tag, _, _, text in got}
    assert list(fastq_dir.iterdir()) == []

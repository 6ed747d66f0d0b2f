"""fastq.pipeline and fastq.Stage: order across stages, flat stages, exceptions
with tracebacks, killed workers (every result exactly once), bounded memory on an
endless input, every start method, Ctrl-C, progress bars."""
from __future__ import annotations

import os
import sys
import time

import pytest

import fastq

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import _poolfuncs as F  # noqa: E402
from _poolsupport import Endless, ctrl_c, gone, sigkilling  # noqa: E402


@pytest.mark.parametrize("method", ["fork", "spawn", "forkserver"])
def test_two_stages_keep_order_every_start_method(fastq_dir, method):
    with fastq.pipeline(range(500), fastq.Stage(F.inc, workers=2), F.sq,
                        context=method) as p:
        assert list(p) == [(x + 1) ** 2 for x in range(500)]
    assert list(fastq_dir.iterdir()) == []


def test_flat_and_unordered(fastq_dir):
    with fastq.pipeline(range(100), fastq.Stage(F.twice, workers=2, flat=True),
                        fastq.Stage(F.inc, workers=2)) as p:
        assert list(p) == [v + 1 for x in range(100) for v in (x, -x)]
    with fastq.pipeline(range(300), fastq.Stage(F.sq, workers=2), ordered=False) as p:
        assert sorted(p) == [x * x for x in range(300)]
    # a stage that is not ordered makes the output unordered; every item still comes
    with fastq.pipeline(range(300), fastq.Stage(F.sq, workers=2, ordered=False)) as p:
        assert sorted(p) == [x * x for x in range(300)]


def test_exception_in_a_stage_is_raised_in_order_and_stops_everything(fastq_dir):
    p = fastq.pipeline(range(50), fastq.Stage(F.inc, workers=2), F.boom)
    pids = p.pids()
    got = []
    with pytest.raises(ValueError, match="boom at 5") as ei:
        for x in p:
            got.append(x)
    assert got == [1, 2, 3, 4]  # everything before the failing item, in order
    assert isinstance(ei.value.__cause__, fastq.RemoteTraceback)
    assert "in boom" in str(ei.value.__cause__)
    for pid in pids:
        assert gone(pid)
    assert list(fastq_dir.iterdir()) == []


def test_error_of_the_input_iterable_is_raised(fastq_dir):
    def bad():
        yield 1
        raise KeyError("input broke")
    with pytest.raises(KeyError, match="input broke"):
        with fastq.pipeline(bad(), F.inc) as p:
            list(p)


def test_worker_lost_names_the_item(fastq_dir):
    with pytest.raises(fastq.WorkerLost) as ei:
        with fastq.pipeline(range(20), F.inc, fastq.Stage(F.always_die, workers=2,
                                                           max_retries=1)) as p:
            list(p)
    assert ei.value.position == 6 and ei.value.stage == 1 and ei.value.runs == 2


def test_random_sigkills_every_result_exactly_once(fastq_dir):
    """Workers of both stages are SIGKILLed at random moments; each item's result
    arrives exactly once and in order, message by message."""
    n = 1200
    p = fastq.pipeline(range(n), fastq.Stage(F.tick, workers=2, max_retries=50),
                       fastq.Stage(F.sq_first, workers=1, max_retries=50))
    with sigkilling(p.pids, seed=2), p:
        got = list(p)
    assert got == [x * x for x in range(n)]
    assert p.reruns >= 1
    assert list(fastq_dir.iterdir()) == []


def test_endless_input_bounded_read_ahead(fastq_dir):
    src = Endless()
    from fastq._workers import MAX_CHUNK
    with fastq.pipeline(src, fastq.Stage(F.inc, workers=2), F.inc) as p:
        for i in range(3000):
            assert next(p) == i + 2
        time.sleep(0.5)
        assert src.pulled <= 3000 + (2 * 3 + 2) * MAX_CHUNK
        for i in range(3000, 6000):
            assert next(p) == i + 2
        assert src.pulled <= 6000 + (2 * 3 + 2) * MAX_CHUNK


CTRL_C = r"""
import sys, time
sys.path.insert(0, {tests!r})
import fastq, _poolfuncs as F
if __name__ == "__main__":
    p = fastq.pipeline(iter(int, 1), fastq.Stage(F.tick, workers=2), F.inc_first,
                       context={method!r})
    next(p)
    print(" ".join(map(str, p.pids())), flush=True)
    for _ in p:
        pass
"""


@pytest.mark.parametrize("method", ["fork", "forkserver"])
def test_ctrl_c_leaves_no_process_and_no_segment(fastq_dir, child_env, procs, method):
    # the pipeline's queues are anonymous: memfds held by the processes, no file
    pids = ctrl_c(CTRL_C.format(tests=HERE, method=method), procs,
                  child_env({"FASTQ_DIR": str(fastq_dir)}), 3, fastq_dir)
    assert len(pids) == 3


def test_progress_bars_per_stage(fastq_dir, run_py):
    pytest.importorskip("tqdm")
    cp = run_py(f"""
        import sys
        sys.path.insert(0, {HERE!r})
        import fastq, _poolfuncs as F
        if __name__ == "__main__":
            with fastq.pipeline(range(300), fastq.Stage(F.inc, workers=2), F.sq,
                                progress=True) as p:
                assert len(list(p)) == 300
        """, timeout=60, env={"FASTQ_DIR": str(fastq_dir)})
    err = cp.stderr
    assert "stage 0 inc" in err and "stage 1 sq" in err, err
    assert "300it" in err and "queue" in err, err

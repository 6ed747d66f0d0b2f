"""Program workloads of ``fastq bench`` (``fastq.bench.programs``, ``fastq.bench.pool``): every run in its own
interpreter under a hard timeout, verified results, skipped peers, and the fastq / peer table."""

import argparse
import os
import time

import pytest

from fastq.bench import Settings, cli, pool, programs, report

HERE = os.path.dirname(os.path.abspath(__file__))
TINY = Settings.quick(items=3000, arrays=4, calls=50, kill_seconds=1.0, program_timeout=60.0)


# functions the runs below call in their own interpreter (this file is imported there by name)

def hang(pidfile):
    with open(pidfile, "w") as f:
        f.write(str(os.getpid()))
    time.sleep(3600)


def boom():
    raise ValueError("boom")


def wrong():
    return {"figures": {"x": 1.0}, "errors": ["result 3 seen twice"]}


def fine():
    return {"figures": {"x": 2.0}, "detail": "checked"}


@pytest.fixture
def here_importable(monkeypatch):
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [HERE, os.environ.get("PYTHONPATH")])))


def _run(func, timeout=60.0, needs=(), **kw):
    return programs.run_one("t", programs.Run(func, "test_bench_programs", func, kw, needs, timeout))


def test_a_hanging_run_is_killed_with_its_process_group(here_importable, tmp_path):
    pidfile = tmp_path / "pid"
    t0 = time.monotonic()
    o = _run("hang", timeout=3.0, pidfile=str(pidfile))
    assert o.status == "TIMEOUT" and o.detail.startswith("hung after")
    assert time.monotonic() - t0 < 3.0 + 10
    with pytest.raises(ProcessLookupError):
        os.kill(int(pidfile.read_text()), 0)


def test_run_outcomes(here_importable):
    assert _run("boom").status == "ERROR" and "ValueError: boom" in _run("boom").detail
    o = _run("wrong")
    assert o.status == "FAILED" and "seen twice" in o.detail and not o.figures
    o = _run("fine")
    assert (o.status, o.figures, o.detail) == ("ok", {"x": 2.0}, "checked")
    o = _run("fine", needs=("no_such_peer_module",))
    assert o.status == "skipped" and "no_such_peer_module" in o.detail


def test_pool_small_and_table():
    progs = programs.select(["pool-small"], TINY)
    assert [p.name for p in progs] == ["pool-small"]
    labels = [r.label for r in progs[0].peers]
    assert [f"multiprocessing.Pool.imap chunksize={cs}" for cs in (1, 64, 1024, 8192)] == labels[:4]
    wanted = {"fastq.Pool.imap (default)", "multiprocessing.Pool.imap chunksize=1",
              "ProcessPoolExecutor.map chunksize=1024"}
    runs = [r for r in (progs[0].fastq,) + progs[0].peers if r.label in wanted]
    outs = [programs.run_one("pool-small", r) for r in runs]
    assert all(o.status == "ok" and o.figures["items_per_s"] > 0 for o in outs), outs
    rows = programs.table_rows(progs, outs, report._fmt)
    assert len(rows) == len(progs[0].peers)
    by_peer = {r[1]: r for r in rows}
    assert by_peer["multiprocessing.Pool.imap chunksize=1"][4].endswith("x")
    not_run = by_peer["multiprocessing.Pool.imap chunksize=64"]
    assert not_run[2] == "-" and not_run[4] == "-" and not_run[3] == rows[0][3]


def test_pool_kill_fastq_exactly_once_multiprocessing_hangs():
    prog = programs.select(["pool-kill"], TINY)[0]
    ours = programs.run_one(prog.name, prog.fastq)
    assert ours.status == "ok", ours
    assert ours.figures["kills"] >= 2 and "exactly once" in ours.figures["result"]
    theirs = programs.run_one(prog.name, prog.peers[0])
    # multiprocessing.Pool loses the killed worker's tasks: hung, killed by the timeout (or, if every
    # kill hit an idle worker, finished with its results checked)
    assert theirs.status in ("TIMEOUT", "ok"), theirs


def test_pipelines_and_latency_verify():
    outs = programs.run(programs.select(["pipeline", "pool-latency"], TINY))
    assert {o.program for o in outs} == {"pipeline-small", "pipeline-numpy", "pool-latency"}
    for o in outs:
        assert o.status in ("ok", "skipped"), o
    lat = [o for o in outs if o.program == "pool-latency"]
    assert all(o.figures["p50_us"] <= o.figures["p99_us"] for o in lat)


def test_workload_names_split_between_queue_cells_and_programs():
    assert cli._split_workloads(["pool", "pipeline"]) == ([], ["pool", "pipeline"])
    assert cli._split_workloads(["raw-64B", "pool-kill"]) == (["raw-64B"], ["pool-kill"])
    assert cli._split_workloads(["p"]) == (["p"], ["p"])
    with pytest.raises(SystemExit):
        cli._split_workloads(["nothing-like-this"])
    assert set(pool.NAMES) <= set(programs.names())


def test_main_prints_the_program_table(capsys):
    p = argparse.ArgumentParser()
    cli.add_arguments(p)
    rc = cli.main(p.parse_args(["--quick", "--workloads", "pool-latency"]))
    out = capsys.readouterr().out
    assert rc == 0, out
    assert "fastq / peer" in out and "multiprocessing.Pool.apply" in out
    assert "fastq vs peers: 1 producer" not in out        # no queue cell was asked for


def _o(program, label, status="ok", **figures):
    return programs.Outcome(program, label, status, figures, "hung after 13 s (killed)" if status == "TIMEOUT" else "")


def test_summary_states_the_targets():
    outs = [_o("pool-small", "fastq.Pool.imap (default)", items_per_s=5e6),
            _o("pool-small", "multiprocessing.Pool.imap chunksize=1", items_per_s=50e3),
            _o("pool-small", "multiprocessing.Pool.imap chunksize=1024", items_per_s=4e6),
            _o("pool-small", "multiprocessing.Pool.imap chunksize=8192", "TIMEOUT"),
            _o("pipeline-small", "fastq.pipeline, 2 stages", items_per_s=3e6),
            _o("pipeline-small", "2 chained Pool.imap chunksize=64", items_per_s=2e6),
            _o("pool-latency", "fastq.Pool.apply", p50_us=5.0, p99_us=9.0),
            _o("pool-latency", "multiprocessing.Pool.apply", p50_us=60.0, p99_us=900.0),
            _o("pool-kill", "multiprocessing.Pool.imap chunksize=64", "TIMEOUT")]
    text = "\n".join(pool.summary(outs))
    assert "pool-small: fastq 5M vs the best multiprocessing.Pool.imap (chunksize=1024) 4M: 1.25x " \
           "(target >= 1x: met)" in text
    assert "pool-small: fastq vs multiprocessing.Pool.imap chunksize=1: 100.0x (target >= 20x: met)" in text
    assert "pipeline-small: fastq 3M vs the best 2 chained Pool.imap (chunksize=64) 2M: 1.50x " \
           "(target >= 2x: NOT met)" in text
    assert "multiprocessing / fastq 12.00x (target >= 10x: met)" in text
    assert "pool-kill: multiprocessing.Pool.imap chunksize=64: hung after 13 s" in text
    assert "pipeline-numpy" not in text                 # no run, no line

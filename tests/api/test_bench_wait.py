"""The waiting workloads of ``fastq bench`` (``fastq.bench.wait``): every run of every program
runs in its own interpreter and checks what it measured (every reply of a ping-pong, every
message of a throughput run, a waiting process that did not return); no timing is asserted."""

from fastq.bench import Settings, cli, programs, wait

TINY = Settings.quick(round_trips=200, items=4000, idle=0.2, program_timeout=60.0)
# a zmq.asyncio PULL was seen to stop receiving with messages sent (pyzmq 27.3): that run reports
# the stall (FAILED) instead of hanging; every other run must give its figures
STALLS = {("async-throughput-64B", "zmq.asyncio PULL (blocking PUSH)")}


def _runs(prog):
    return (prog.fastq,) + tuple(prog.peers)


def test_names_and_selection():
    assert set(wait.NAMES) <= set(programs.names())
    progs = programs.select(["async"], TINY)
    assert [p.name for p in progs] == ["async-pingpong-8B", "async-pingpong-1KiB", "async-throughput-64B"]
    # "pingpong" names the queue cell and the per-strategy programs: one run has both
    assert cli._split_workloads(["pingpong"]) == (["pingpong"], ["pingpong"])
    assert cli._split_workloads(["idle-wait"]) == ([], ["idle-wait"])


def _check(outs):
    for o in outs:
        if (o.program, o.label) in STALLS and o.status == "FAILED":
            assert "stalled" in o.detail, o
            continue
        assert o.status in ("ok", "skipped"), o
        if o.status == "ok":
            assert all(v >= 0 for v in o.figures.values()), o
            if "p50_us" in o.figures:
                assert o.figures["p50_us"] <= o.figures["p99_us"] <= o.figures["p999_us"], o


def test_async_programs_run_and_verify():
    progs = programs.select(["async"], TINY)
    outs = programs.run(progs)
    assert len(outs) == sum(len(_runs(p)) for p in progs)
    _check(outs)
    fastq_runs = [o for o in outs if o.label.startswith("fastq")]
    assert fastq_runs and all(o.status == "ok" for o in fastq_runs), fastq_runs
    rows = programs.table_rows(progs, outs, str)
    assert any(r[1] == "zmq.asyncio PAIR (ipc)" for r in rows)


def test_idle_and_strategy_programs_run_and_verify():
    progs = programs.select(["idle-wait", "pingpong-wait"], TINY)
    assert [p.name for p in progs] == ["idle-wait", "pingpong-wait-8B", "pingpong-wait-8B-loaded"]
    outs = programs.run(progs)
    _check(outs)
    assert all(o.status == "ok" for o in outs if o.label.startswith("fastq")), outs
    assert {"cpu_pct", "wakeups_per_s"} <= set(next(o for o in outs if o.program == "idle-wait").figures)


def _o(program, label, **figures):
    return programs.Outcome(program, label, "ok", figures)


def test_summary_states_the_targets():
    outs = [_o("async-pingpong-8B", "fastq aget/aput, asyncio", p50_us=20.0, p99_us=60.0),
            _o("async-pingpong-8B", "zmq.asyncio PAIR (ipc)", p50_us=150.0, p99_us=150.0),
            _o("pingpong-wait-8B", 'fastq wait="spin"', p99_us=3.0),
            _o("pingpong-wait-8B", "cloudtoid try_receive() polling", p99_us=2.0),
            _o("pingpong-wait-8B", "polling floor (spin on a shared counter)", p99_us=4.0)]
    text = "\n".join(wait.summary(outs))
    assert ("async-pingpong-8B: fastq aget/aput, asyncio p50 is 7.5x lower than zmq.asyncio's "
            "(target >= 5x: met)") in text
    assert "p99 is 2.5x lower than zmq.asyncio's (target >= 3x: NOT met)" in text
    assert ('pingpong-wait-8B: fastq wait="spin" p99 3 us vs cloudtoid try_receive() polling 2 us: '
            "1.50x (target <= 1x: NOT met)") in text
    assert ('pingpong-wait-8B: fastq wait="spin" p99 3 us vs polling floor (spin on a shared counter) '
            "4 us: 0.75x (target <= 1x: met)") in text
    assert "uvloop" not in text and "1KiB" not in text          # no run, no line


def test_module_main_runs_through_fastq_bench(monkeypatch):
    seen = {}

    def fake_main(args):
        seen["args"] = args
        return 0
    monkeypatch.setattr(cli, "main", fake_main)
    assert wait.main(["--quick"]) == 0
    assert seen["args"].quick and seen["args"].workloads == list(wait.NAMES)

"""The ``bridge-*`` workloads of ``fastq bench`` (``fastq.bench.bridge``): each run verifies what
crossed, the table sets the bridge beside nats-py, and without a server they skip with the reason."""

import argparse

from support.natsserver import require_server

from fastq.bench import Settings, bridge, cli, programs, report

TINY = Settings.quick(bridge_messages=300, bridge_repeat=1, program_timeout=60.0)


def test_bridge_runs_verify_and_the_table_has_ratios(nats_server, monkeypatch):
    monkeypatch.setenv("FASTQ_NATS_URL", nats_server.url)   # the runs' children use this server
    progs = programs.select(["bridge-out-64B", "bridge-out-topic-1KiB", "bridge-in-64B"], TINY)
    assert [p.name for p in progs] == ["bridge-out-64B", "bridge-out-topic-1KiB", "bridge-in-64B"]
    outs = programs.run(progs)
    assert len(outs) == sum(1 + len(p.peers) for p in progs)
    for o in outs:
        assert o.status == "ok" and o.figures["msgs_per_s"] > 0, o
    rows = programs.table_rows(progs, outs, report._fmt)
    assert [r[1] for r in rows] == ["nats-py publish_async, 1024 in flight",
                                    "nats-py publish_async, 4000 in flight (its default)",
                                    "nats-py publish_async, 64 in flight",
                                    "nats-py publish_async, 4000 in flight (its default)",
                                    "nats-py fetch(64) + ack_sync"]
    assert all(r[4].endswith("x") for r in rows), rows
    lines = bridge.summary(outs)
    assert [ln.split(":")[0] for ln in lines] == ["bridge-out-64B", "bridge-out-topic-1KiB", "bridge-in-64B"]
    assert all("target >= 0.8x" in ln for ln in lines)


def test_a_run_starts_its_own_server(monkeypatch):
    require_server()
    monkeypatch.delenv("FASTQ_NATS_URL", raising=False)
    prog = programs.select(["bridge-in-1KiB"], TINY)[0]
    o = programs.run_one(prog.name, prog.fastq)
    assert o.status == "ok" and o.figures["runs"] == 1, o


def test_without_a_server_the_workloads_skip_with_the_reason(monkeypatch, capsys):
    monkeypatch.delenv("FASTQ_NATS_URL", raising=False)
    monkeypatch.setenv("FASTQ_NATS_SERVER", "/nonexistent/nats-server")
    p = argparse.ArgumentParser()
    cli.add_arguments(p)
    rc = cli.main(p.parse_args(["--quick", "--workloads", "bridge-in"]))
    out = capsys.readouterr().out
    assert rc == 0, out
    assert "bridge-in-64B / fastq.bridge.Inbound into a queue (fetch 64): skipped: no nats-server" in out
    assert "FASTQ_NATS_URL" in out

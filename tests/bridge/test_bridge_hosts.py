"""Two machines simulated as two fastq directories, one nats-server between
them, `fastq bridge` processes on each side: a pipeline spans both with the
code it would run on one machine.  And a topic group split by two bridges."""
from __future__ import annotations

import signal
import subprocess
import sys
import textwrap

import fastq

from support.natsserver import stream_payloads
from support.waiting import wait_for

WORKER = """
import fastq
jobs, results = fastq.Queue("jobs"), fastq.Queue("results")
for x in jobs:               # the same worker as on one machine
    results.put({"x": x, "square": x * x})
"""


def _cli(procs, child_env, fastq_dir, *args):
    return procs.add(subprocess.Popen(
        [sys.executable, "-m", "fastq", "bridge", *args],
        env=child_env({"FASTQ_DIR": fastq_dir}), stdout=subprocess.PIPE,
        stderr=subprocess.PIPE, text=True))


def test_pipeline_spans_two_hosts(nats_server, tmp_path, procs, child_env):
    host_a, host_b = tmp_path / "host-a", tmp_path / "host-b"
    host_a.mkdir()
    host_b.mkdir()
    url = nats_server.url
    bridges = [
        # host A: jobs out, results in
        _cli(procs, child_env, str(host_a), "out", "--queue", "jobs", "--subject", "work.jobs",
             "--stream", "WORK_JOBS", "--server", url),
        _cli(procs, child_env, str(host_a), "in", "--queue", "results", "--subject",
             "work.results", "--stream", "WORK_RESULTS", "--create-stream", "--durable", "a",
             "--server", url),
        # host B: jobs in, results out
        _cli(procs, child_env, str(host_b), "in", "--queue", "jobs", "--subject", "work.jobs",
             "--stream", "WORK_JOBS", "--create-stream", "--durable", "b", "--server", url),
        _cli(procs, child_env, str(host_b), "out", "--queue", "results", "--subject",
             "work.results", "--stream", "WORK_RESULTS", "--server", url),
    ]
    workers = [procs.add(subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(WORKER)],
        env=child_env({"FASTQ_DIR": str(host_b)}))) for _ in range(2)]
    jobs = fastq.Queue(str(host_a / "jobs"))
    results = fastq.Queue(str(host_a / "results"))
    n = 1000
    jobs.put_many(range(n))
    got = [results.get(timeout=60) for _ in range(n)]
    assert sorted(r["x"] for r in got) == list(range(n))  # each job once
    assert all(r["square"] == r["x"] ** 2 for r in got)
    fastq.Queue(str(host_b / "jobs")).shutdown()  # the workers finish
    for w in workers:
        assert w.wait(30) == 0
    for b in bridges:
        b.send_signal(signal.SIGTERM)
    for b in bridges:
        _, err = b.communicate(timeout=30)
        assert b.returncode == 0, err


def test_topic_group_split_by_two_bridges(nats_server, tmp_path):
    """Two Outbound bridges in one group of a topic split its messages: the
    stream gets every message once."""
    from fastq import bridge  # noqa: PLC0415
    path = str(tmp_path / "t")
    t = fastq.Topic(path, serializer="raw")
    subs = [t.subscribe("earliest", group="to-nats", prefetch=8) for _ in range(2)]
    outs = [bridge.Outbound(s, "ev.one", servers=nats_server.url, stream="EV").start()
            for s in subs]
    want = [b"%06d" % i for i in range(3000)]
    try:
        t.publish_many(want)
        wait_for(lambda: sum(o.stats().acked for o in outs) >= len(want), timeout=60, what="all acked")
    finally:
        for o in outs:
            o.stop()
    assert all(o.stats().acked > 0 for o in outs), [o.stats() for o in outs]
    got = stream_payloads(nats_server.url, "EV")
    assert sorted(got) == want


def test_cli_topic_out_to_queue_in(nats_server, tmp_path, procs, child_env):
    """`fastq bridge out --topic` (a durable subscription: messages published
    before the bridge starts are not missed) to `fastq bridge in --queue`."""
    d = str(tmp_path)
    t = fastq.Topic(str(tmp_path / "ticks"))
    t.subscribe("earliest", name="fastq-bridge").close()  # the bridge's name, kept
    t.publish_many(range(200))
    out = _cli(procs, child_env, d, "out", "--topic", "ticks", "--subject", "ticks.a",
               "--stream", "TICKS", "--server", nats_server.url)
    inb = _cli(procs, child_env, d, "in", "--queue", "ticks-in", "--subject", "ticks.>",
               "--stream", "TICKS", "--create-stream", "--durable", "in",
               "--server", nats_server.url)
    q = fastq.Queue(str(tmp_path / "ticks-in"))
    assert [q.get(timeout=60) for _ in range(200)] == list(range(200))
    for p in (out, inb):
        p.send_signal(signal.SIGTERM)
        _, err = p.communicate(timeout=30)
        assert p.returncode == 0, err
    assert len(t.subscribers()) == 1  # the bridge's name, no entry left held

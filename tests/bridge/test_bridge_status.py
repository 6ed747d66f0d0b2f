"""A running ``fastq bridge`` process's counters, seen by ``fastq stat`` and
``fastq top`` in other processes (through the console script): the status
file it rewrites each second in its segment's directory, removed at a clean
exit, ignored once its process is gone (SIGKILL) and then removed by the next
bridge started there."""
from __future__ import annotations

import glob
import os
import signal
import subprocess

import fastq

from support.cli import fastq_cli, fastq_json, fastq_script
from support.waiting import wait_for


def _bridge_out(procs, child_env, src, url):
    return procs.add(subprocess.Popen(
        [fastq_script(), "bridge", "out", "--queue", src, "--subject", "st.x", "--stream", "ST",
         "--server", url], env=child_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        text=True))


def _bridges(src):
    return fastq_json("stat", src).get("bridges", [])


def test_stat_and_top_show_a_running_bridge(nats_server, tmp_path, procs, child_env):
    d = tmp_path / "d"
    d.mkdir()
    src = str(d / "src")
    q = fastq.Queue(src, serializer="raw")
    p = _bridge_out(procs, child_env, src, nats_server.url)
    q.put_many([b"m%d" % i for i in range(50)])
    # the file is rewritten each second: wait until it shows every message acked
    wait_for(lambda: [b["acked"] for b in _bridges(src)] == [50], timeout=60,
             what="fastq stat --json showing the bridge's 50 acks", step=0.2)
    (b,) = _bridges(src)
    assert (b["pid"], b["direction"], b["subject"], b["segment"]) == (p.pid, "out", "st.x", src)
    assert b["forwarded"] == 50 and b["connected"] and b["errors"] == 0
    text = fastq_cli("stat", src, check=0).stdout
    assert f"bridge out -> st.x (pid {p.pid}, connected" in text
    assert "forwarded 50, acked 50, redelivered 0, duplicates 0, rejected 0" in text
    top = fastq_cli("top", "--once", "--interval", "0", "--dir", str(d), check=0).stdout
    rows = top.splitlines()
    at = next(i for i, ln in enumerate(rows) if ln.startswith("src "))
    assert rows[at + 1].split()[:3] == [">nats", "st.x", "brdg"], top
    # a clean stop removes the file: stat shows no bridge
    p.send_signal(signal.SIGTERM)
    assert p.wait(30) == 0, p.stderr.read()
    assert "bridges" not in fastq_json("stat", src)
    assert glob.glob(str(d / ".fastq-bridge-*")) == []
    q.close()


def test_a_killed_bridge_is_not_shown_and_its_file_is_removed_later(nats_server, tmp_path,
                                                                    procs, child_env):
    d = tmp_path / "d"
    d.mkdir()
    src = str(d / "src")
    q = fastq.Queue(src, serializer="raw")
    p = _bridge_out(procs, child_env, src, nats_server.url)
    wait_for(lambda: len(_bridges(src)) == 1, timeout=60, what="the bridge's status", step=0.2)
    left = str(d / f".fastq-bridge-{p.pid}.json")
    p.kill()
    assert p.wait(30) == -signal.SIGKILL  # reaped: its pid is free
    assert os.path.exists(left)
    assert "bridges" not in fastq_json("stat", src)  # a dead process's file is ignored
    p2 = _bridge_out(procs, child_env, src, nats_server.url)
    wait_for(lambda: [b["pid"] for b in _bridges(src)] == [p2.pid], timeout=60,
             what="the new bridge's status", step=0.2)
    assert not os.path.exists(left)  # removed by the next bridge
    p2.send_signal(signal.SIGTERM)
    assert p2.wait(30) == 0
    q.close()

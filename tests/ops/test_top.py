"""``fastq top`` in a real terminal: tmux runs the console script at 80x24,
the screen is captured over a few refreshes, keys change the sort and quit."""
from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import time

import pytest

import fastq
from support.cli import fastq_cli, fastq_script
from support.procs import child_env

pytestmark = pytest.mark.skipif(shutil.which("tmux") is None, reason="needs tmux")


def _tmux(*args):
    return subprocess.run(["tmux", *args], capture_output=True, text=True, timeout=30)


def _screen(session):
    return _tmux("capture-pane", "-p", "-t", session).stdout.splitlines()


def _wait_screen(session, pred, timeout=30.0):
    deadline = time.monotonic() + timeout
    while True:
        lines = _screen(session)
        if pred(lines):
            return lines
        if time.monotonic() > deadline:
            raise AssertionError("screen never matched:\n" + "\n".join(lines))
        time.sleep(0.1)


def _names(lines):
    """The NAME column of the table rows, in order."""
    i = next(i for i, ln in enumerate(lines) if ln.startswith("NAME"))
    return [ln.split()[0] for ln in lines[i + 1:] if ln.strip()]


def test_top_in_tmux(fastq_dir):
    busy = fastq.Queue("busy")
    idle = fastq.Queue("idle")
    for i in range(50):
        busy.put(i)
    idle.put(0)
    empty = fastq.Queue("aaa")
    t = fastq.Topic("feed")
    lagging = t.subscribe(name="lagging")
    for i in range(20):
        t.publish(i)
    session = f"fastqtop{os.getpid()}"
    env = child_env({"FASTQ_DIR": fastq_dir})
    cmd = " ".join(f"{k}={shlex.quote(v)}" for k, v in env.items()
                   if k in ("PYTHONPATH", "FASTQ_DIR", "PATH"))
    cmd = f"env {cmd} {shlex.quote(fastq_script())} top --interval 0.5; echo TOP-EXITED $?; " \
          "sleep 30"
    assert _tmux("new-session", "-d", "-s", session, "-x", "80", "-y", "24", cmd).returncode == 0
    try:
        lines = _wait_screen(session, lambda ls: any(ln.startswith("NAME") for ln in ls))
        assert len(lines) <= 24 and all(len(ln) <= 80 for ln in lines)
        assert lines[0].startswith("fastq top") and "sort: lag" in lines[0]
        # most behind first: busy (50), feed (20) with its subscriber, idle (1)
        assert _names(lines) == ["busy", "feed", "lagging", "idle", "aaa"]
        # a few refreshes while traffic moves: rates and depth follow
        for _ in range(3):
            stamp = lines[0]
            for _ in range(10):
                busy.get()
            lines = _wait_screen(session, lambda ls: ls and ls[0] != stamp)
        lines = _screen(session)
        assert lines[1].split() == ["NAME", "KIND", "DEPTH", "IN/s", "OUT/s", "LITTLE",
                                    "WAIT50", "WAIT99", "PROCS"]
        row = next(ln for ln in lines if ln.startswith("busy"))
        assert row.split()[2] == "20"  # DEPTH: 50 - 30 taken
        # time in queue, measured: busy's first message (position 0, a sample
        # point) was taken; nothing was taken from idle
        assert row.split()[6] != "-" and row.split()[7] != "-"
        idle_row = next(ln for ln in lines if ln.startswith("idle"))
        assert idle_row.split()[6:8] == ["-", "-"]
        # sort by name, then quit
        _tmux("send-keys", "-t", session, "n")
        lines = _wait_screen(session, lambda ls: ls and "sort: name" in ls[0])
        assert _names(lines) == ["aaa", "busy", "feed", "lagging", "idle"]
        _tmux("send-keys", "-t", session, "q")
        _wait_screen(session, lambda ls: any("TOP-EXITED 0" in ln for ln in ls))
    finally:
        _tmux("kill-session", "-t", session)
        lagging.close()
        for h in (busy, idle, empty, t):
            h.close()


def test_top_once_text(fastq_dir):
    q = fastq.Queue("one")
    q.put(1)
    out = fastq_cli("top", "--once", "--interval", "0", check=0).stdout.splitlines()
    assert out[1].startswith("NAME") and out[2].split()[:3] == ["one", "queue", "1"]
    q.close()

"""Test-side support shared by the Pool and pipeline tests (the functions the
workers run are in _poolfuncs): an endless input that counts what was read, a
thread that SIGKILLs workers at random moments, and the check that a worker is
gone."""
from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import threading
import time
from contextlib import contextmanager

from _procs import memfd_segments


class Endless:
    """0, 1, 2, ... forever; ``pulled`` counts the items read so far."""

    def __init__(self):
        self.pulled = 0

    def __iter__(self):
        while True:
            self.pulled += 1
            yield self.pulled - 1


@contextmanager
def sigkilling(pids, seed):
    """While in the block, SIGKILL one of ``pids()`` every 0.05-0.25 s."""
    stop = threading.Event()

    def killer():
        rnd = random.Random(seed)
        while not stop.wait(rnd.uniform(0.05, 0.25)):
            try:
                os.kill(rnd.choice(pids()), signal.SIGKILL)
            except (ProcessLookupError, IndexError):
                pass
    t = threading.Thread(target=killer)
    t.start()
    try:
        yield
    finally:
        stop.set()
        t.join()


def gone(pid):
    """The process exited (a zombie not yet reaped counts)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] == "Z"
    except FileNotFoundError:
        return True


def ctrl_c(code, procs, env, nqueues, fastq_dir, settle=0.0):
    """Run ``code`` in a child Python that prints its workers' pids on one line and
    keeps them busy; check its ``nqueues`` queues are anonymous (memfds, no file
    in ``fastq_dir``); Ctrl-C it after ``settle`` seconds; check that it raised
    KeyboardInterrupt and left no worker and no file."""
    child = procs.add(subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE,
                                       stderr=subprocess.PIPE, text=True, env=env))
    pids = [int(x) for x in child.stdout.readline().split()]
    assert len(memfd_segments(child.pid)) == nqueues
    assert list(fastq_dir.iterdir()) == []
    time.sleep(settle)
    child.send_signal(signal.SIGINT)
    _, err = child.communicate(timeout=30)
    assert "KeyboardInterrupt" in err
    for pid in pids:
        assert gone(pid), f"worker {pid} survived"
    assert list(fastq_dir.iterdir()) == []
    return pids

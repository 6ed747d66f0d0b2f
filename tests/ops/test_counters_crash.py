"""Counters after processes die: dead processes shown, then recoveries
counted by kind (slots freed, open puts, open gets), exactly."""
from __future__ import annotations

import os
import signal
import subprocess
import sys

import fastq
from support.cli import fastq_json
from support.procs import child_env


def _child(code, fastq_dir):
    return subprocess.Popen([sys.executable, "-c", code], env=child_env({"FASTQ_DIR": fastq_dir}),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def test_recoveries_counted_after_kills(fastq_dir, procs):
    q = fastq.Queue("crashy", capacity=1 << 16)
    for i in range(3):
        q.put(i)
    # a producer killed inside put (claim won, headers not written)
    p1 = _child("import fastq; from fastq import _core\n"
                "q = fastq.Queue('crashy')\n"
                "_core._test_set_crash_point('put_after_claim')\n"
                "q.put('lost')\n", str(fastq_dir))
    # a consumer killed holding its claim of one message
    p2 = _child("import fastq; from fastq import _core\n"
                "q = fastq.Queue('crashy')\n"
                "_core._test_set_crash_point('get_after_claim')\n"
                "q.get()\n", str(fastq_dir))
    for p in (p1, p2):
        assert p.wait(timeout=60) == 9, p.stderr.read()
    # an idle process SIGKILLed while attached (nothing in flight)
    p3 = procs.add(_child("import fastq, sys\n"
                          "q = fastq.Queue('crashy')\n"
                          "q.put('from p3')\n"
                          "print('ready', flush=True)\n"
                          "import time; time.sleep(600)\n", str(fastq_dir)))
    assert p3.stdout.readline().strip() == "ready"
    os.kill(p3.pid, signal.SIGKILL)
    p3.wait(timeout=60)

    s = fastq_json("stat", "crashy")
    assert s["dead_processes"] == 3 and s["processes"] == 1  # this test's own slot
    assert (s["recovered_slots"], s["recovered_puts"], s["recovered_gets"]) == (0, 0, 0)
    assert s["puts"] == 4  # 3 here and p3's; p1's put never committed

    assert q.recover()
    s = fastq_json("stat", "crashy")
    assert s["dead_processes"] == 0 and s["processes"] == 1
    assert (s["recovered_slots"], s["recovered_puts"], s["recovered_gets"]) == (3, 1, 1)
    assert s["puts"] == 4 and s["gets"] == 0
    # the message p2 held comes back: redelivered, and every message taken once
    got = sorted(map(str, (q.get(timeout=10) for _ in range(4))))
    assert got == ["0", "1", "2", "from p3"]
    s = fastq_json("stat", "crashy")
    assert s["gets"] == 4 and s["redelivered"] == 1 and s["depth"] == 0
    # a second recovery finds nothing: the counts do not move
    q.recover()
    assert fastq_json("stat", "crashy")["recovered_slots"] == 3
    q.close()

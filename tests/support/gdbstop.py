"""Stopping a child process at a line of the C core with gdb, to land a kill (or a
pause) inside a window no crash point names: find the line by its text, attach
gdb with a breakpoint there, and wait until the child runs again (blocked in its
read of the test's go pipe)."""
import os
import shutil
import subprocess
import time

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
BOUND = 60.0

need_gdb = pytest.mark.skipif(shutil.which("gdb") is None,
                              reason="needs gdb to stop a process inside the window")
no_asan = pytest.mark.skipif("libasan" in os.environ.get("LD_PRELOAD", ""), reason=(
    "gdb attaching to a process under AddressSanitizer (its shadow mappings) does not "
    "finish within the bound on a loaded machine; the protocol is tested unsanitized"))


def line_of(rel, text):
    """the line number of the one line of REPO/rel that contains text"""
    with open(os.path.join(REPO, rel)) as f:
        hits = [i for i, line in enumerate(f, 1) if text in line]
    assert len(hits) == 1, "%r is on lines %r of %s" % (text, hits, rel)
    return hits[0]


def proc_status(pid):
    """(state letter, TracerPid) of pid"""
    st = tracer = None
    with open("/proc/%d/status" % pid) as f:
        for line in f:
            if line.startswith("State:"):
                st = line.split()[1]
            elif line.startswith("TracerPid:"):
                tracer = int(line.split()[1])
    return st, tracer


def gdb_at(pid, where, then, log=subprocess.DEVNULL):
    """gdb attached to child pid, a breakpoint at `where`, continued; at the
    breakpoint it runs the commands `then`.  Returns the gdb process once it is
    attached and the child is running again."""
    cmd = ["gdb", "-nx", "-batch", "-p", str(pid), "-ex", "break " + where, "-ex", "continue"]
    for c in then:
        cmd += ["-ex", c]
    g = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + BOUND
    while True:
        st, tracer = proc_status(pid)
        if tracer and st == "S":
            return g
        assert time.monotonic() < deadline, "gdb did not attach"
        time.sleep(0.01)

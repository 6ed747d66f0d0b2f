"""Child processes for the white-box tests: fork a function, kill, reap, or leave a
zombie (a dead process whose pid still exists: its slot must be judged dead too)."""

import faulthandler
import os
import signal
import time
from contextlib import contextmanager


@contextmanager
def children():
    """a list to append child pids to; every child still there is killed and reaped"""
    pids = []
    try:
        yield pids
    finally:
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            try:
                os.waitpid(pid, 0)
            except ChildProcessError:
                pass


def fork(fn, *args):
    pid = os.fork()
    if pid == 0:  # child: never return into pytest
        code = 71
        faulthandler.disable()  # a crash is reported by the parent, not dumped
        try:
            code = fn(*args) or 0
        except BaseException:
            import traceback
            traceback.print_exc()
            code = 70
        finally:
            os._exit(code)
    return pid


def reap(pid, timeout=10.0):
    """wait for the child and reap it; its exit code (negative: killed by that signal)"""
    deadline = time.monotonic() + timeout
    while True:
        p, status = os.waitpid(pid, os.WNOHANG)
        if p:
            return os.waitstatus_to_exitcode(status)
        if time.monotonic() > deadline:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            raise AssertionError("child %d did not finish in %.1fs" % (pid, timeout))
        time.sleep(0.0005)


def wait_zombie(pid, timeout=10.0):
    """wait for the child to die but leave it a zombie; its exit code"""
    deadline = time.monotonic() + timeout
    while True:
        info = os.waitid(os.P_PID, pid, os.WEXITED | os.WNOHANG | os.WNOWAIT)
        if info is not None:
            with open("/proc/%d/stat" % pid) as f:
                assert f.read().rsplit(")", 1)[1].split()[0] == "Z"
            if info.si_code == os.CLD_EXITED:
                return info.si_status
            return -info.si_status
        if time.monotonic() > deadline:
            os.kill(pid, signal.SIGKILL)
            raise AssertionError("child %d did not finish in %.1fs" % (pid, timeout))
        time.sleep(0.0005)


def wait_dead(pid, zombie, timeout=10.0):
    return wait_zombie(pid, timeout) if zombie else reap(pid, timeout)


def memfd_segments(pid):
    """The anonymous fastq segments (memfds) process pid holds, as a set of
    (st_dev, st_ino): one per segment however many descriptors it has of it."""
    out = set()
    fds = f"/proc/{pid}/fd"
    for fd in os.listdir(fds):
        try:
            if os.readlink(f"{fds}/{fd}").startswith("/memfd:fastq"):
                st = os.stat(f"{fds}/{fd}")
                out.add((st.st_dev, st.st_ino))
        except OSError:
            pass
    return out

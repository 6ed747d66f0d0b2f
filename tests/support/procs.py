"""Child processes: fork a function, kill, reap, or leave a zombie (a dead process
whose pid still exists: its slot must be judged dead too); a fresh interpreter that
imports the same fastq (``run_py``); the ``procs`` fixture's killer (``Procs``)."""

import faulthandler
import os
import random
import signal
import subprocess
import sys
import textwrap
import threading
import time
from contextlib import contextmanager


def kill_and_reap(pid):
    """SIGKILL a child pid (if still there) and reap it"""
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    try:
        os.waitpid(pid, 0)
    except ChildProcessError:
        pass


@contextmanager
def children():
    """a list to append child pids to; every child still there is killed and reaped"""
    pids = []
    try:
        yield pids
    finally:
        for pid in pids:
            kill_and_reap(pid)


class Procs:
    """Processes started by a test (Popen, a bare pid from os.fork, or a
    multiprocessing.Process); kill_all() kills and reaps whatever is still alive."""

    def __init__(self):
        self.items = []

    def add(self, p):
        self.items.append(p)
        return p

    def kill_all(self):
        for p in self.items:
            try:
                if isinstance(p, subprocess.Popen):
                    if p.poll() is None:
                        p.kill()
                    p.wait(timeout=5)
                elif isinstance(p, int):  # a bare pid (os.fork)
                    kill_and_reap(p)
                else:  # multiprocessing.Process
                    if p.is_alive():
                        p.kill()
                    p.join(timeout=5)
            except Exception:  # pragma: no cover - best effort cleanup
                pass


def child_env(extra=None):
    """os.environ plus a PYTHONPATH that imports the same fastq (the one this test run
    imported: the in-place build or the installed package)."""
    import fastq
    parent = os.path.dirname(os.path.dirname(os.path.realpath(fastq.__file__)))
    env = dict(os.environ)
    pp = env.get("PYTHONPATH", "")
    env["PYTHONPATH"] = parent + (os.pathsep + pp if pp else "")
    if extra:
        env.update({k: str(v) for k, v in extra.items()})
    return env


def start_py(procs, code, env=None):
    """Start ``code`` in a fresh interpreter (stdout and stderr piped, as text),
    registered with the ``procs`` fixture."""
    return procs.add(subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE,
                                      stderr=subprocess.PIPE, text=True, env=child_env(env)))


def run_py(code, timeout=30.0, env=None, check=True):
    """Run ``code`` in a fresh interpreter; the child is killed after ``timeout``
    seconds (subprocess.run kills it and raises TimeoutExpired)."""
    cp = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True,
                        text=True, timeout=timeout, env=child_env(env))
    if check and cp.returncode != 0:
        raise AssertionError(f"child failed (rc={cp.returncode}):\nstdout:\n{cp.stdout}\n"
                             f"stderr:\n{cp.stderr}")
    return cp


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


def zombie_or_gone(pid):
    """pid has exited (a zombie not yet reaped by its parent, or gone)"""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] == "Z"
    except FileNotFoundError:
        return True


@contextmanager
def random_sigkills(pids, seed):
    """While the block runs, a thread SIGKILLs one of pids() (a pool's or a pipeline's
    workers) at random every 0.05 to 0.25 s."""
    stop = threading.Event()

    def killer():
        rnd = random.Random(seed)
        while not stop.wait(rnd.uniform(0.05, 0.25)):
            ps = pids()
            if ps:
                try:
                    os.kill(rnd.choice(ps), signal.SIGKILL)
                except ProcessLookupError:
                    pass

    t = threading.Thread(target=killer)
    t.start()
    try:
        yield
    finally:
        stop.set()
        t.join()


def check_ctrl_c(procs, code, fastq_dir, nworkers, settle=0.0):
    """Ctrl-C leaves no process and no segment: ``code`` (run in FASTQ_DIR=fastq_dir)
    prints its workers' pids and works on; its queues are anonymous (the workers hold
    ``nworkers`` memfds, no file); after ``settle`` seconds a SIGINT makes it raise
    KeyboardInterrupt, and then every worker is gone and still no file exists."""
    child = start_py(procs, code, {"FASTQ_DIR": str(fastq_dir)})
    pids = [int(x) for x in child.stdout.readline().split()]
    assert len(pids) == nworkers and len(memfd_segments(child.pid)) == nworkers
    assert list(fastq_dir.iterdir()) == []
    time.sleep(settle)
    child.send_signal(signal.SIGINT)
    _, err = child.communicate(timeout=30)
    assert "KeyboardInterrupt" in err
    for pid in pids:
        assert zombie_or_gone(pid), f"worker {pid} survived"
    assert list(fastq_dir.iterdir()) == []

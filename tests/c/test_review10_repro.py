"""Reproductions of the findings of the fourth adversarial review of the C core
(the fixes of review 9, branch h/fix9).  Each test asserts the behaviour the core
had before those fixes and should keep; each is a strict xfail whose reason names
the defect, where it is, and a way to fix it.

The first two are about the cost of R5 (fq_wake loads the sleeper bits instead of
taking them): a bit stays up until its owner leaves the wait (or disarms), or until
recovery reaps a dead owner, so every writer meanwhile made a FUTEX_WAKE; and
fq_wake_quiet, called on every claim (puts AND gets), called fq_wake(q, -1) as long
as another process's quiet bit was up.  Fixed by the per-slot nap marks (fq_wait.c,
"Waking each sleep once"); they pass now and guard it.

The counts are syscalls made by this process (fastq._core._wait_counts: sleeps,
FUTEX_WAKEs, bell datagrams), not timings.  A sleeper that is woken but has not
run yet is made deterministic with SIGSTOP; a dead one with SIGKILL.  The last
two are about which file a removal removes: R4's sweep of temporary files (by name
alone) and R3's identity check (an inode number, which the filesystem reuses).
"""

import os
import signal
import time
from contextlib import contextmanager

import pytest

import fastq
from fastq import _core
from support.cseg import create, lib, open_seg
from support.procs import children, kill_and_reap
from support.notmpfile import create_in_child, no_tmpfile_env  # noqa: F401 (a fixture)

BOUND = 30.0


def _asleep(q):
    """Wait until the child's get sleeps (its data and quiet bits are up)."""
    end = time.monotonic() + BOUND
    while time.monotonic() < end:
        data, _space, quiet = _core._test_sleepers(q)
        if data and quiet:
            time.sleep(0.05)  # past its re-check, into FUTEX_WAIT
            return
        time.sleep(0.005)
    raise AssertionError("the child did not go to sleep")


@contextmanager
def _sleeping_consumer(tag):
    """(queue, pid): a queue and a child process asleep in get() on it (no
    timeout: the deep, quiet sleep); the child is killed and the queue removed
    afterwards."""
    name = "rev10%s%d" % (tag, os.getpid())
    q = fastq.Queue(name, capacity=4096)
    try:
        with children() as pids:
            pid = os.fork()
            if pid == 0:
                try:
                    fastq.Queue(name).get()
                finally:
                    os._exit(0)
            pids.append(pid)
            _asleep(q)
            yield q, pid
    finally:
        q.close()
        q.unlink()


def _wakes():
    return _core._wait_counts()[1]


def test_one_put_to_a_woken_sleeper_makes_one_futex_wake():
    with _sleeping_consumer("a") as (q, pid):
        os.kill(pid, signal.SIGSTOP)  # woken, but not yet run
        try:
            before = _wakes()
            q.put(1)
            n = _wakes() - before
        finally:
            os.kill(pid, signal.SIGCONT)
        assert os.waitpid(pid, 0)[1] == 0
        assert n == 1, n


def test_a_killed_sleeper_costs_writers_nothing_after_one_wake():
    with _sleeping_consumer("b") as (q, pid):
        kill_and_reap(pid)
        before = _wakes()
        for i in range(50):
            q.put(i)
            assert q.get() == i
        n = _wakes() - before
        assert n <= 2, n


def _dead_pid():
    """A pid that no process has now (a child's, reaped)."""
    pid = os.fork()
    if pid == 0:
        os._exit(0)
    os.waitpid(pid, 0)
    return pid


def test_opening_a_hard_linked_segment_leaves_other_segments_alone(tmp_path):
    q = tmp_path / "q"
    other = tmp_path / ("q.tmp-%d-%016x" % (_dead_pid(), 0x0123456789abcdef))
    rc, a, err = create(q)
    assert rc == 0, err
    rc, b, err = create(other)  # a segment of its own, in use
    assert rc == 0, err
    os.link(q, tmp_path / "q.bak")  # a second name of q's file
    rc, c, err = open_seg(q)
    assert rc == 0, err
    for h in (a, b, c):
        lib.fq_close(h)
    assert os.path.exists(other), "opening q removed another segment"


def test_unlink_after_close_leaves_a_newer_segment_with_the_same_inode(tmp_path):
    name = str(tmp_path / "q")
    old = fastq.Queue(name)
    ino = os.fstat(old.fileno()).st_ino
    other = fastq.Queue(name)
    other.unlink()  # old's file has no name now
    other.close()
    old.close()  # and no descriptor or mapping: it is freed
    new = fastq.Queue(name)  # a new segment under the same name, in use
    try:
        if os.fstat(new.fileno()).st_ino != ino:
            pytest.skip("this filesystem gave the new file another inode number")
        new.put("kept")
        old.unlink()  # should do nothing: old's file has no name any more
        assert os.path.exists(name), "unlink() of a closed handle removed another segment"
    finally:
        new.close()
        if os.path.exists(name):
            os.unlink(name)


def test_creating_a_segment_leaves_a_segment_named_like_its_temporary_file(
        tmp_path, no_tmpfile_env):
    """The creator's sweep (no O_TMPFILE) removes a leftover temporary file of
    the path it creates, not a finished segment that only has such a name."""
    d = tmp_path / "dir"
    d.mkdir()
    other = d / ("q.tmp-%d-%016x" % (_dead_pid(), 0x0123456789abcdef))
    rc, b, err = create(other)  # a segment of its own, in use
    assert rc == 0, err
    try:
        assert create_in_child(d / "q", "", no_tmpfile_env) == 0
        assert os.path.exists(other), "creating q removed another segment"
    finally:
        lib.fq_close(b)


def test_a_complete_temporary_file_is_swept_by_the_next_creator(tmp_path, no_tmpfile_env):
    """A killed creator's temporary file whose header is complete (its magic
    written: killed at or after the link) is still its creation's leftover,
    told by the pid and salt that its name records: the next creator removes
    it even when it has no other name any more."""
    d = tmp_path / "dir"
    d.mkdir()
    assert create_in_child(d / "q", "create_linked", no_tmpfile_env) == 9, \
        "the creator was not killed at create_linked"
    os.unlink(d / "q")  # the leftover is the only name of a finished segment
    (left,) = os.listdir(d)
    assert create_in_child(d / "q", "", no_tmpfile_env) == 0
    assert sorted(os.listdir(d)) == ["q"], "the leftover %s was kept" % left

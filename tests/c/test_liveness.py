"""Process liveness: when a survivor may take over what a slot's or a member's owner
left (issue 9 bugs 3 and 4 and its suspected items; issue 10 item 19).

An owner is gone exactly when it can no longer reach the segment: it exited, was
killed, or exec()'d (its mapping and its handles are gone, its pid and start time
are not).  A process whose main thread exited while other threads work is alive.
What a file on disk says about processes means nothing after a reboot.  Judging
liveness reads no /proc (hidepid, other users) and costs one probe per distinct
process per table operation, however many entries that process holds.
"""

import ctypes
import os
import queue
import shutil
import sys
import threading
import time

import pytest

import fastq

from support.cseg import create, ffi, Handle, lib, open_seg
from support.procs import children, fork, reap, wait_zombie

#: the image a child exec()s: it reports on the inherited fd argv[1], then sleeps
SLEEPER = "import os, sys, time; os.write(int(sys.argv[1]), b'E'); time.sleep(120)"


def _exec_sleeper(w):
    """exec a python that writes 'E' to fd w and sleeps (never returns)"""
    os.set_inheritable(w, True)
    os.execv(sys.executable, [sys.executable, "-c", SLEEPER, str(w)])


def _read1(fd, timeout=20.0):
    """one byte from a pipe, or fail after timeout seconds"""
    import select
    r, _, _ = select.select([fd], [], [], timeout)
    assert r, "the child did not report"
    return os.read(fd, 1)


def _state(pid):
    with open("/proc/%d/stat" % pid) as f:
        return f.read().rsplit(")", 1)[1].split()[0]


def _wait_state(pid, want, timeout=20.0):
    deadline = time.monotonic() + timeout
    while _state(pid) != want:
        assert time.monotonic() < deadline, "pid %d never reached state %s" % (pid, want)
        time.sleep(0.001)


# ---- exec ------------------------------------------------------------------------


def _queue_of_one(tmp_path):
    """(path, a queue there holding the message "m")"""
    path = str(tmp_path / "q")
    q = fastq.Queue(path, capacity=1 << 16)
    q.put("m")
    return path, q


def _receive_then_exec(path, w):
    q = fastq.Queue(path, prefetch=1)
    d = q.receive(timeout=10)
    assert d.value == "m"
    _exec_sleeper(w)


def test_exec_gives_back_a_delivery(tmp_path):
    """issue 9 bug 3: a consumer that exec()s while holding a delivery has lost the
    segment; its message comes back to the others"""
    path, q = _queue_of_one(tmp_path)
    r, w = os.pipe()
    with children() as pids:
        pids.append(fork(_receive_then_exec, path, w))
        assert _read1(r) == b"E"  # exec'd, still alive
        assert q.recover(), "the exec'd consumer's claim was kept"
        assert q.get(timeout=10) == "m"
    q.close()


def _subscribe_receive_then_exec(path, w):
    t = fastq.Topic(path)
    s = t.subscribe(group="g")
    os.write(w, b"S")
    m = s.receive(timeout=10)
    assert m.value == "m"
    _exec_sleeper(w)


def test_exec_gives_back_a_topic_claim(tmp_path):
    """issue 9 bug 3, topics: a group member that exec()s holding a delivery leaves
    it to the other members"""
    path = str(tmp_path / "t")
    t = fastq.Topic(path, capacity=1 << 16)
    mine = t.subscribe(group="g")
    r, w = os.pipe()
    with children() as pids:
        pids.append(fork(_subscribe_receive_then_exec, path, w))
        assert _read1(r) == b"S"
        t.publish("m")
        assert _read1(r) == b"E"
        assert t.recover(), "the exec'd member's claim was kept"
        assert mine.get(timeout=10) == "m"
    mine.close()
    t.close()


def _hold_lock_then_exec(path, w):
    rc, q, err = open_seg(path)
    assert rc == 0, err
    _notify_r, notify_w = os.pipe()
    resume_r, _resume_w = os.pipe()  # never written: the thread stays paused until exec
    lib.fq_test_set_pause_point(b"recover_after_lock", 1, notify_w, resume_r)
    # cffi releases the GIL in the call: the thread stays paused holding the lock
    threading.Thread(target=lib.fq_recover, args=(q,), daemon=True).start()
    deadline = time.monotonic() + 10
    while lib.fqt_recover_lock(q) >> 32 != os.getpid():
        assert time.monotonic() < deadline
        time.sleep(0.001)
    _exec_sleeper(w)


def test_exec_releases_the_recovery_lock(tmp_path):
    """issue 9 bug 3: a thread exec()s while another thread of its process holds the
    segment lock: the lock is free for the others at once"""
    path = tmp_path / "q.seg"
    rc, q, err = create(path)
    assert rc == 0, err
    h = Handle(q, path)
    r, w = os.pipe()
    with children() as pids:
        pid = fork(_hold_lock_then_exec, path, w)
        pids.append(pid)
        assert _read1(r) == b"E"
        assert lib.fqt_recover_lock(q) >> 32 == pid, "the child held the lock when it exec'd"
        lib.fq_recover(q)
        assert lib.fqt_recover_lock(q) == 0, "recovery could not take the lock"
    h.close()


# ---- a main thread that exited -------------------------------------------------


#: the exit system call (one thread; exit_group ends them all)
SYS_EXIT = {"x86_64": 60, "aarch64": 93}.get(os.uname().machine)


def _exit_main_thread():
    """end the calling (main) thread only; the process lives on in its other threads.
    The raw exit system call, as pthread_exit() ends in (which a sanitizer runtime
    turns into the end of the process when the main thread calls it)."""
    libc = ctypes.CDLL(None)  # releases the GIL for the call
    if SYS_EXIT is None:
        libc.pthread_exit(None)
    libc.syscall(SYS_EXIT, 0)


def _ack_in_a_thread_then_exit_main(d, r_go, w):
    """a worker thread says R, acks d once told to (G), says A and ends the process;
    the main thread exits at once"""
    def worker():
        os.write(w, b"R")
        assert os.read(r_go, 1) == b"G"
        d.ack()
        os.write(w, b"A")
        os._exit(0)

    threading.Thread(target=worker).start()
    _exit_main_thread()


def _let_it_ack_and_end(pid, pids, r, w_go):
    """tell the child's worker thread to ack (G); it says A and the child exits 0"""
    os.write(w_go, b"G")
    assert _read1(r) == b"A"
    assert reap(pid) == 0
    pids.remove(pid)


def _receive_then_exit_main(path, r_go, w):
    q = fastq.Queue(path, prefetch=1)
    _ack_in_a_thread_then_exit_main(q.receive(timeout=10), r_go, w)


def test_main_thread_exit_keeps_claims(tmp_path):
    """issue 9 bug 4: a consumer whose main thread exited (its /proc stat says Z)
    while a worker thread holds its delivery is alive: nothing is stolen"""
    path, q = _queue_of_one(tmp_path)
    r, w = os.pipe()
    r_go, w_go = os.pipe()
    with children() as pids:
        pid = fork(_receive_then_exit_main, path, r_go, w)
        pids.append(pid)
        assert _read1(r) == b"R"
        _wait_state(pid, "Z")  # the thread group leader is a zombie; the worker runs
        assert not q.recover(), "recovery took the claims of a live process"
        with pytest.raises(queue.Empty):
            q.get(block=False)
        _let_it_ack_and_end(pid, pids, r, w_go)
    q.recover()  # frees the exited child's slot; its message was acknowledged
    assert q.qsize() == 0
    with pytest.raises(queue.Empty):
        q.get(block=False)
    q.close()


def _subscribe_then_exit_main(path, r_go, w):
    t = fastq.Topic(path)
    s = t.subscribe(group="g")
    os.write(w, b"S")
    _ack_in_a_thread_then_exit_main(s.receive(timeout=10), r_go, w)


def test_main_thread_exit_keeps_topic_claims(tmp_path):
    """issue 9 bug 4, topics: the member of a process whose main thread exited keeps
    its entry and its delivery; the message is not delivered twice"""
    path = str(tmp_path / "t")
    t = fastq.Topic(path, capacity=1 << 16)
    mine = t.subscribe(group="g")
    r, w = os.pipe()
    r_go, w_go = os.pipe()
    with children() as pids:
        pid = fork(_subscribe_then_exit_main, path, r_go, w)
        pids.append(pid)
        assert _read1(r) == b"S"
        t.publish("m")
        assert _read1(r) == b"R"
        _wait_state(pid, "Z")
        assert not t.recover(), "recovery took the entry of a live process"
        assert [s.alive for s in t.subscribers() if s.pid == pid] == [True]
        with pytest.raises(queue.Empty):
            mine.get(block=False)
        _let_it_ack_and_end(pid, pids, r, w_go)
    with pytest.raises(queue.Empty):
        mine.get(block=False)
    mine.close()
    t.close()


def _wait_then_exit_main(r_go, w):
    def worker():
        os.write(w, b"R")
        os.read(r_go, 1)
        os._exit(0)

    threading.Thread(target=worker).start()
    _exit_main_thread()


def test_pid_alive_main_thread_exited():
    """fastq's pid check (used to sweep the files of dead anonymous queues): a
    process whose main thread exited is alive"""
    from fastq import _core
    r, w = os.pipe()
    r_go, w_go = os.pipe()
    with children() as pids:
        pid = fork(_wait_then_exit_main, r_go, w)
        pids.append(pid)
        assert _read1(r) == b"R"
        _wait_state(pid, "Z")
        assert _core.pid_alive(pid)
        assert lib.fq_pid_alive(pid, 0) == 1
        os.write(w_go, b"G")
        assert reap(pid) == 0
        pids.remove(pid)


# ---- a file from before a reboot --------------------------------------------------


def _receive_and_wait(path, w):
    q = fastq.Queue(path, prefetch=1)
    d = q.receive(timeout=10)
    assert d.value == "m"
    os.write(w, b"R")
    time.sleep(120)


def test_disk_segment_after_reboot(tmp_path):
    """issue 9, suspected: a segment on disk outlives a reboot; the pids and start
    times in it may then name live processes (start times count from boot).  The
    copy made here is such a file: its consumer's pid and start time name a live
    process, but no process of this boot uses the copy; its claim comes back."""
    path, q = _queue_of_one(tmp_path)
    r, w = os.pipe()
    with children() as pids:
        pids.append(fork(_receive_and_wait, path, w))
        assert _read1(r) == b"R"
        copy = str(tmp_path / "after-reboot")
        shutil.copyfile(path, copy)
        q2 = fastq.Queue(copy)
        assert q2.recover(), "a slot from before the reboot was judged alive"
        assert q2.get(timeout=10) == "m"
        q2.close()
        # the original, in use by the live consumer, is left alone
        assert not q.recover()
        with pytest.raises(queue.Empty):
            q.get(block=False)
    q.close()


# ---- what judging liveness costs ---------------------------------------------------


def _topic(path, **kw):
    rc, q, err = create(path, topic=1, **kw)
    assert rc == 0, err
    return q


def _subscribe(q, name):
    out = ffi.new("fq_sub **")
    err = ffi.new("char[256]")
    rc = lib.fq_subscribe(q, name.encode(), lib.FQ_SUB_ANON, lib.FQ_START_LATEST, out, err, 256)
    assert rc == 0, ffi.string(err)
    return out[0]


def _probes():
    return lib.fq_test_probe_count(0) + lib.fq_test_probe_count(1)


def _cost_of_subscribe_close(q):
    before = _probes()
    lib.fq_unsubscribe(_subscribe(q, "x"))
    return _probes() - before


def test_table_operations_probe_each_process_once(tmp_path):
    """issue 10 item 19: subscribe() and close() judge each distinct process once,
    however many entries it holds: with 300 entries of this process they probe as
    much as with none"""
    q = _topic(tmp_path / "t.seg", max_subs=512)
    alone = _cost_of_subscribe_close(q)
    subs = [_subscribe(q, "s%d" % i) for i in range(300)]
    crowded = _cost_of_subscribe_close(q)
    assert crowded == alone, "300 entries of one process cost %d probes, none %d" % (
        crowded, alone)
    assert alone <= 2  # one process: at most one probe in each of the two operations
    for s in subs:
        lib.fq_unsubscribe(s)
    lib.fq_close(q)


def _kill_holding(path, w):
    rc, q, err = open_seg(path)
    assert rc == 0, err
    c = ffi.new("fq_claim *")
    assert lib.fq_get_begin(q, 1, 1 << 20, c) == 0
    os.write(w, b"R")
    time.sleep(120)


def test_liveness_reads_no_proc(tmp_path):
    """issue 9, suspected: with /proc mounted hidepid, or the owner another user, a
    check that reads /proc/<pid> falls back to the pid alone.  Liveness reads
    nothing from /proc and sends no signal: recovery of a killed consumer, and
    subscribe/close next to a live subscriber of another process, count no such
    probe"""
    rc, q, err = create(tmp_path / "q.seg")
    assert rc == 0, err
    assert lib.fq_put(q, b"x" * 32, 32) == 0
    r, w = os.pipe()
    with children() as pids:
        pid = fork(_kill_holding, tmp_path / "q.seg", w)
        pids.append(pid)
        assert _read1(r) == b"R"
        before = lib.fq_test_probe_count(0)
        assert lib.fq_recover(q) == 0  # alive
        os.kill(pid, 9)
        reap(pid)
        pids.remove(pid)
        assert lib.fq_recover(q) == 1  # dead
        assert lib.fq_test_probe_count(0) == before, "liveness read /proc or called kill()"
    lib.fq_close(q)


# ---- fork ------------------------------------------------------------------------


def _receive_fork_then_wait(path, w):
    q = fastq.Queue(path, prefetch=1)
    d = q.receive(timeout=10)
    assert d.value == "m"
    child = os.fork()
    if child == 0:  # inherits the handle (and, unless closed at fork, its locks)
        time.sleep(120)
        os._exit(0)
    os.write(w, child.to_bytes(4, "little"))
    time.sleep(120)


def test_forked_child_does_not_keep_its_parent_alive(tmp_path):
    """a child forked by a consumer holding a delivery inherits its handle; when
    the consumer is killed, the child (still running) does not keep the consumer's
    slot held: the message comes back"""
    path, q = _queue_of_one(tmp_path)
    r, w = os.pipe()
    with children() as pids:
        pid = fork(_receive_fork_then_wait, path, w)
        pids.append(pid)
        grandchild = int.from_bytes(os.read(r, 4), "little")
        try:
            assert not q.recover()  # the consumer is alive
            os.kill(pid, 9)
            reap(pid)
            pids.remove(pid)
            assert os.kill(grandchild, 0) is None  # still running
            assert q.recover(), "the forked child kept its parent's slot"
            assert q.get(timeout=10) == "m"
        finally:
            os.kill(grandchild, 9)
    q.close()


# ---------------------------------------------------------------------------
# fq_pid_alive (from the former test_ring_c.py)


def _start_time(pid):
    with open("/proc/%d/stat" % pid) as f:
        return int(f.read().rsplit(")", 1)[1].split()[19])


def _sleep_child(r):
    os.read(r, 1)
    return 0


def test_pid_alive():
    me = os.getpid()
    assert lib.fq_pid_alive(me, 0) == 1
    assert lib.fq_pid_alive(me, _start_time(me)) == 1
    assert lib.fq_pid_alive(me, _start_time(me) + 1) == 0  # pid reused by another process
    assert lib.fq_pid_alive(0, 0) == 0
    assert lib.fq_pid_alive(-1, 0) == 0
    assert lib.fq_pid_alive(-(2 ** 31), 0) == 0
    r, w = os.pipe()
    try:
        with children() as pids:
            pid = fork(_sleep_child, r)
            pids.append(pid)
            assert lib.fq_pid_alive(pid, 0) == 1
            assert lib.fq_pid_alive(pid, _start_time(pid)) == 1
            os.write(w, b"x")
            assert wait_zombie(pid) == 0  # a zombie is dead
            assert lib.fq_pid_alive(pid, 0) == 0
            assert reap(pid) == 0  # reaped: gone
            pids.remove(pid)
            assert lib.fq_pid_alive(pid, 0) == 0
    finally:
        os.close(r)
        os.close(w)

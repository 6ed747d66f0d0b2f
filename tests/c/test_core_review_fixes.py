"""Regression tests for what a review of the merged C core found after issue 9
(csrc/fq_segment.c, csrc/fq_topic.c), through cffi:

- F1: a fork() from another thread while a handle was being opened gave the child
  the handle's lock descriptor, and with it the parent's liveness locks;
- F2: a process that dropped privileges could not use an inherited anonymous queue;
- F3: "earliest" did not know its start index while a put between its tail CAS
  and its header was in progress, nor after more than 1024 skipped records;
- F4: fq_take_orphan went on (and dropped a lock it did not hold) when taking the
  segment lock failed;
- F5: closing a handle while another thread uses it;
- and, found on the way, fq_enter taking an attach error for a lane number.

Races are made deterministic with the pause points of fq_segment.c.
"""

import os
import select
import struct
import threading
import time

import pytest

from support.cseg import Handle, create, ffi, lib, mk, open_seg, seq_of  # noqa: E402
from support.procs import children, fork, reap  # noqa: E402
from support.ctopic import ANON, EARLIEST, GROUP, NO_IDX, T, publish_all  # noqa: E402

SLOT_KIND_SHIFT = 56  # FQ_SLOT_KIND (csrc/fq_layout.h)


def _read1(fd, timeout=30.0):
    r, _, _ = select.select([fd], [], [], timeout)
    assert r, "no report within %.0fs" % timeout
    return os.read(fd, 64)


def _unpause():
    lib.fq_test_set_pause_point(b"", 0, -1, -1)


# ---------------------------------------------------------------------------
# F1: a fork while a handle opens (or closes) its lock descriptor


def _fork_in_window(point, action, pipes):
    """Run action() in thread A, paused at pause point `point`; while it is
    paused, thread B forks a child that reports on pipes["gc_w"] and sleeps
    (holding what it inherited).  The test resumes A (not this process: B may
    hold the GIL while fork() waits for A to leave a critical section).
    Returns (action's result, the grandchild's pid)."""
    notify_r, notify_w = os.pipe()
    lib.fq_test_set_pause_point(point, 1, notify_w, pipes["resume_r"])
    box = {}
    a = threading.Thread(target=lambda: box.update(r=action()))
    a.start()
    _read1(notify_r)  # A is paused in the window

    def forker():
        pid = os.fork()
        if pid == 0:
            os.write(pipes["gc_w"], b"C")
            time.sleep(300)
            os._exit(0)
        box["child"] = pid

    b = threading.Thread(target=forker)
    os.write(pipes["ev_w"], b"F")  # before: B may then hold the GIL, blocked in fork()
    b.start()
    a.join()
    b.join()
    _unpause()
    return box["r"], box["child"]


def _run_fork_window(child, path):
    """fork child(path, pipes) and drive _fork_in_window; returns (pid of child,
    grandchild, slot) once child reported (grandchild pid, slot) on out_w"""
    pipes = {}
    for k in ("resume", "ev", "gc", "out"):
        pipes[k + "_r"], pipes[k + "_w"] = os.pipe()
    pid = fork(child, str(path), pipes)
    try:
        assert _read1(pipes["ev_r"]) == b"F"
        # unfixed, the fork completes inside the window (the grandchild reports);
        # fixed, it waits for A to leave its critical section: resume A either way
        select.select([pipes["gc_r"]], [], [], 1.0)
        os.write(pipes["resume_w"], b"g")
        grandchild, slot = struct.unpack("<ii", _read1(pipes["out_r"]))
    except BaseException:
        os.kill(pid, 9)
        reap(pid)
        raise
    return pid, grandchild, slot


def _open_while_forking(path, pipes):
    """open path, forking while the handle is between opening its second
    descriptor and joining the handle list; then attach (lock a slot) and exit"""
    (rc, q, err), child = _fork_in_window(b"handle_reopened", lambda: open_seg(path), pipes)
    assert rc == 0, err
    assert lib.fq_put(q, b"x" * 8, 8) == 0  # attaches: locks a slot
    os.write(pipes["out_w"], struct.pack("<ii", child, lib.fqt_my_slot(q)))
    return 0  # exits holding the slot: dead, its lock must go with it


def test_fork_while_opening_keeps_no_copy_of_the_lock(tmp_path):
    """F1: a child forked by another thread while a handle was between opening its
    lock descriptor and joining the handle list kept that descriptor, so the
    parent's slot lock outlived the parent: its slot was judged alive forever"""
    path = tmp_path / "q"
    rc, q, err = create(path)
    assert rc == 0, err
    h = Handle(q, path)
    with children() as pids:
        pid, grandchild, slot = _run_fork_window(_open_while_forking, path)
        pids.append(pid)
        try:
            assert reap(pid) == 0
            assert slot >= 0
            lib.fq_recover(h.q)
            kind = lib.fqt_slot_word(h.q, slot) >> SLOT_KIND_SHIFT
            assert kind == lib.FQ_SLOT_FREE, \
                "the dead opener's slot is still held (by the forked child's copy)"
        finally:
            os.kill(grandchild, 9)
    h.close()


def _slot_lock_free(path, slot):
    """F_OFD_GETLK from a description of our own: is slot's file lock free?"""
    import fcntl
    off = (1 << 62) + 1 + slot  # FQ_LOCK_SLOT (csrc/fq_layout.h)
    fd = os.open(str(path), os.O_RDWR)
    try:
        fl = struct.pack("hhqqi4x", fcntl.F_WRLCK, os.SEEK_SET, off, 1, 0)
        t = struct.unpack("hhqqi4x", fcntl.fcntl(fd, fcntl.F_OFD_GETLK, fl))[0]
    finally:
        os.close(fd)
    return t == fcntl.F_UNLCK


def _close_while_forking(path, pipes):
    """attach a handle (lock a slot), then close it, forking while the handle is
    off the list but its lock descriptor not yet closed; report and stay alive"""
    rc, q, err = open_seg(path)
    assert rc == 0, err
    assert lib.fq_put(q, b"x" * 8, 8) == 0
    slot = lib.fqt_my_slot(q)
    _, child = _fork_in_window(b"handle_removed", lambda: lib.fq_close(q), pipes)
    os.write(pipes["out_w"], struct.pack("<ii", child, slot))
    time.sleep(300)


def test_fork_while_closing_keeps_no_copy_of_the_lock(tmp_path):
    """F1, close: a child forked while fq_close had taken the handle off the list
    but not yet closed its lock descriptor kept the slot's lock after the close"""
    path = tmp_path / "q"
    rc, q, err = create(path)
    assert rc == 0, err
    with children() as pids:
        pid, grandchild, slot = _run_fork_window(_close_while_forking, path)
        pids.append(pid)
        try:
            assert slot >= 0
            assert _slot_lock_free(path, slot), \
                "the closed handle's slot lock is still held (by the forked child's copy)"
        finally:
            os.kill(grandchild, 9)
    lib.fq_close(q)


# ---------------------------------------------------------------------------
# F2: an inherited anonymous queue after dropping privileges


def _use_as_nobody(fd, q, out_w):
    os.setgroups([])
    os.setgid(65534)
    os.setuid(65534)
    # the inherited handle (its lock descriptor is reopened after the fork)
    c = ffi.new("fq_claim *")
    rc = lib.fq_get_begin(q, 1, 1 << 62, c)
    if rc != 0:
        os.write(out_w, struct.pack("<i", rc))
        return 1
    lib.fq_get_end(q, c)
    rc = lib.fq_put(q, b"z" * 8, 8)  # attaches: needs the lock descriptor
    if rc != 0:
        os.write(out_w, struct.pack("<i", rc))
        return 2
    # a new handle of the inherited descriptor
    qq = ffi.new("fq_queue **")
    err = ffi.new("char[512]")
    rc = lib.fq_open_fd(fd, ffi.NULL, qq, err, 512)
    if rc == 0:
        rc = lib.fq_put(qq[0], b"y" * 8, 8)
    os.write(out_w, struct.pack("<i", rc) + ffi.string(err))
    return 0


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to setuid() to nobody")
def test_unprivileged_child_uses_an_inherited_anonymous_queue():
    """F2: an anonymous queue is usable by whoever inherits its fd, whatever its uid;
    the reopen for the lock descriptor checked the memfd's 0600 mode (and an error
    named a file "an anonymous segment": ENOENT)"""
    o = ffi.new("fq_create_opts *", {"capacity": 4096, "max_slots": 8, "mode": 0o600})
    qq = ffi.new("fq_queue **")
    err = ffi.new("char[512]")
    assert lib.fq_create(ffi.NULL, o, qq, err, 512) == 0, ffi.string(err)
    q = qq[0]
    assert lib.fq_put(q, b"x" * 8, 8) == 0
    fd = lib.fq_fd(q)
    r, w = os.pipe()
    with children() as pids:
        pids.append(fork(_use_as_nobody, fd, q, w))
        out = _read1(r)
        assert reap(pids[0]) == 0, "get/put through the inherited handle: rc %d" % \
            struct.unpack_from("<i", out)[0]
        rc = struct.unpack_from("<i", out)[0]
        assert rc == 0, "fq_open_fd of the inherited fd: rc %d (%s)" % (rc, out[4:])
    c = ffi.new("fq_claim *")
    assert lib.fq_get_begin(q, 2, 1 << 62, c) == 0 and c.n == 2  # the child's puts
    lib.fq_get_end(q, c)
    lib.fq_close(q)


# ---------------------------------------------------------------------------
# F3: "earliest" knows where it starts


def _publisher_paused_after_claim(path, notify_w, resume_r):
    """publish one message, pausing between its tail CAS and its headers"""
    t = T.open(path)
    lib.fq_test_set_pause_point(b"put_after_claim", 1, notify_w, resume_r)
    rc = t.put(mk(5, 64))
    _unpause()
    return 0 if rc == 0 else 3


def test_earliest_waits_for_a_header_being_written(tmp_path):
    """F3: a put between its tail CAS and its header, at release: the subscriber
    computing its start index saw no header and stored UNKNOWN (its first read
    then counts nothing of what was lost before it)"""
    path = tmp_path / "t"
    t = T.create(path, capacity=1 << 16, drop=True)
    pn_r, pn_w = os.pipe()
    pr_r, pr_w = os.pipe()
    sn_r, sn_w = os.pipe()
    sr_r, sr_w = os.pipe()
    try:
        with children() as pids:
            rel = t.stats()["release"]
            pids.append(fork(_publisher_paused_after_claim, str(path), pn_w, pr_r))
            _read1(pn_r)  # its tail CAS is done, its header not written
            assert t.stats()["tail"] > rel and t.stats()["release"] == rel
            # the subscriber pauses when it meets the unwritten record (fixed code)
            lib.fq_test_set_pause_point(b"first_index_unwritten", 1, sn_w, sr_r)
            box = {}
            done_r, done_w = os.pipe()

            def sub():
                box["s"] = t.subscribe("e", ANON, EARLIEST)
                os.write(done_w, b"d")

            th = threading.Thread(target=sub)
            th.start()
            r, _, _ = select.select([sn_r, done_r], [], [], 30)
            assert r, "the subscriber neither paused nor finished"
            if sn_r in r:
                os.read(sn_r, 1)
                os.write(pr_w, b"g")  # the publisher writes its header and commits
                assert reap(pids[0]) == 0
                os.write(sr_w, b"g")
            th.join()
            _unpause()
            s = box["s"]
            g = t.group(t.member(s.index())["group"])
            assert g["next_idx"] != NO_IDX, "the start index was stored UNKNOWN"
            if sn_r not in r:
                os.write(pr_w, b"g")
    finally:
        _unpause()
        t.close()


def test_earliest_walks_past_many_skipped_records(tmp_path):
    """F3: more than 1024 SKIP/ABANDONED records in a row at release made the
    start index UNKNOWN"""
    path = tmp_path / "t"
    t = T.create(path, capacity=1 << 17, drop=True)
    n = 1500
    publish_all(t, [mk(i, 8) for i in range(n + 1)])
    # turn the first n records into ABANDONED ones (as recovery leaves a dead
    # publisher's), keeping their tags and lengths
    pos = 0
    for _ in range(n):
        w = lib.fqt_rec_word(t.q, pos)
        assert w & 7 == lib.FQ_REC_COMMITTED
        hdr = ffi.cast("uint64_t *", lib.fqt_rec_data(t.q, pos)) - 2
        hdr[0] = (w & ~7) | lib.FQ_REC_ABANDONED
        pos += lib.fqt_rec_size(lib.fqt_rec_len(t.q, pos))
    s = t.subscribe("e", ANON, EARLIEST)
    g = t.group(t.member(s.index())["group"])
    assert g["next_idx"] == n, "start index %#x, expected %d" % (g["next_idx"], n)
    rc, msgs, _ = s.get(1)
    assert rc == 0 and seq_of(msgs[0][1]) == n
    t.close()


# ---------------------------------------------------------------------------
# F4: taking an orphan when the segment lock cannot be taken


def _lock_fd_of(q):
    """the handle's lock descriptor: this process's other fd of the segment file"""
    st = os.fstat(lib.fq_fd(q))
    for name in os.listdir("/proc/self/fd"):
        fd = int(name)
        if fd == lib.fq_fd(q):
            continue
        try:
            o = os.fstat(fd)
        except OSError:
            continue
        if (o.st_dev, o.st_ino) == (st.st_dev, st.st_ino):
            return fd
    raise AssertionError("no lock descriptor found")


def test_take_orphan_returns_the_lock_error(tmp_path):
    """F4: fq_take_orphan ignored an error of fq_lock_wait, took the orphan without
    the lock and then dropped the lock (unlocking a mutex it did not hold)"""
    path = tmp_path / "t"
    t = T.create(path)
    m1 = t.subscribe("g", GROUP)
    m2 = t.subscribe("g", GROUP)
    publish_all(t, [mk(7, 64)])
    rc, c = m1.begin(1)
    assert rc == 0 and c.n == 1
    m1.unsubscribe()  # gives the message back: an orphan of the group
    assert t.group(t.member(m2.index())["group"])["orphans"]
    lfd = _lock_fd_of(t.q)
    saved = os.dup(lfd)
    os.close(lfd)  # every lock operation of this handle now fails: EBADF
    try:
        rc, c = m2.begin(1)
        assert rc < 0, "the orphan was taken without the segment lock (rc %d)" % rc
        assert t.member(m2.index())["phase"] == 0  # nothing claimed
    finally:
        os.dup2(saved, lfd)
        os.close(saved)
    rc, msgs, red = m2.get(1)  # the lock works again: the orphan is taken
    assert rc == 0 and [seq_of(m) for _, m in msgs] == [7] and red
    t.close()


# ---------------------------------------------------------------------------
# F5: what fq_close leaves behind


def _fds():
    return set(os.listdir("/proc/self/fd"))


@pytest.mark.parametrize("anonymous", [False, True])
def test_close_leaves_no_descriptor_and_no_listed_handle(tmp_path, anonymous):
    """F5 (and F1's close half): fq_close closes both of the handle's descriptors
    and takes it off the handle list in one step; a fork after it (the atfork
    handler walks that list) still works, and no descriptor of the segment stays
    open.  (Closing while another thread uses the handle is the caller's error:
    the Python binding defers the close until calls in flight return, see
    tests/test_threads_hangs.py::test_close_while_another_thread_iterates.)"""
    before = _fds()
    if anonymous:
        o = ffi.new("fq_create_opts *", {"capacity": 4096, "max_slots": 8, "mode": 0o600})
        qq = ffi.new("fq_queue **")
        err = ffi.new("char[512]")
        assert lib.fq_create(ffi.NULL, o, qq, err, 512) == 0
        q = qq[0]
    else:
        rc, q, err = create(tmp_path / "q")
        assert rc == 0, err
    assert lib.fq_put(q, b"x" * 8, 8) == 0
    assert len(_fds() - before) == 2  # the mapping's descriptor and the lock's
    lib.fq_close(q)
    assert _fds() == before
    with children() as pids:
        pids.append(fork(lambda: 0))
        assert reap(pids[0]) == 0


# ---------------------------------------------------------------------------
# found while checking F2: a failed attach became a lane number


def _put_and_get_without_descriptors(q, out_w):
    """a forked child (its lock descriptor is reopened on first use) that has no
    descriptor left: the reopen fails with EMFILE"""
    import resource
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (64, hard))
    held = []
    try:
        while True:
            held.append(os.open("/dev/null", os.O_RDONLY))
    except OSError:
        pass
    c = ffi.new("fq_claim *")
    rcs = (lib.fq_put(q, b"x" * 8, 8), lib.fq_get_begin(q, 1, 1 << 62, c), lib.fqt_my_slot(q))
    for fd in held:
        os.close(fd)
    os.write(out_w, struct.pack("<iii", *rcs))
    return 0


def test_attach_error_is_returned_not_used_as_a_lane(tmp_path):
    """fq_enter returned -rc for fq_attach's rc, but rc is -errno there (a lock
    descriptor that cannot be reopened): put and get then ran on lane errno of
    slot -1, out of bounds.  They return -errno."""
    rc, q, err = create(tmp_path / "q")
    assert rc == 0, err
    assert lib.fq_put(q, b"m" * 8, 8) == 0
    r, w = os.pipe()
    with children() as pids:
        pids.append(fork(_put_and_get_without_descriptors, q, w))
        put_rc, get_rc, slot = struct.unpack("<iii", _read1(r))
        assert reap(pids[0]) == 0
    assert (put_rc, get_rc, slot) == (-24, -24, -1), \
        "put %d, get %d (EMFILE is -24), slot %d" % (put_rc, get_rc, slot)
    c = ffi.new("fq_claim *")
    assert lib.fq_get_begin(q, 4, 1 << 62, c) == 0 and c.n == 1  # only our message
    lib.fq_get_end(q, c)
    lib.fq_close(q)

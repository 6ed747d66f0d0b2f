"""Every producer and consumer crash point of a queue (the child killed by the core's own
fault injection, FQ_CRASH_POINT) and recovery after it; dead producers and their witnesses;
live processes left alone; slots of dead processes reclaimed.
"""

import os
import random
import signal
import struct
import zlib

import pytest

from support.cring import (advance_to, consumer_child, crash_consumer_child, crash_recoverer_child,
                           producer_child, Q, workout)
from support.cseg import CAP, ffi, lib, mk, open_seg, rec_size, recover_fully, seq_of
from support.procs import children, fork, reap, wait_dead


# ---------------------------------------------------------------------------
# crash points


PUT_POINTS = ["put_after_intent", "put_after_claim", "put_after_headers", "put_before_commit",
              "put_mid_commit", "put_before_count"]
GET_POINTS = ["get_after_intent", "get_after_claim", "get_before_free", "get_before_count"]


def _killed_at(points):
    """a crash-point test's matrix: each point, a single put/get or a batch of 3, flat or
    across the ring's end, the dead child reaped or left a zombie"""
    def mark(fn):
        for m in (pytest.mark.parametrize("point", points),
                  pytest.mark.parametrize("n", [1, 3], ids=["single", "batch3"]),
                  pytest.mark.parametrize("wrap", [False, True], ids=["flat", "wrap"]),
                  pytest.mark.parametrize("zombie", [False, True], ids=["reaped", "zombie"])):
            fn = m(fn)
        return fn
    return mark


def _committed_before(point, batch):
    """messages of the crashing put that are committed when the child dies there"""
    if point == "put_mid_commit":
        return batch[:1]
    if point == "put_before_count":
        return batch
    return []


@_killed_at(PUT_POINTS)
def test_producer_killed_at_crash_point(tmp_path, point, n, wrap, zombie):
    p = tmp_path / "q.seg"
    q = Q.create(p, capacity=CAP, max_slots=4)
    cap = q.cap
    lens1 = [40, 72, 24][:n] if n > 1 else [200]
    lens2 = [120, 8, 64][:n] if n > 1 else [300]
    pre = [mk(100 + i, 48) for i in range(2)]
    b1 = [mk(200 + i, x) for i, x in enumerate(lens1)]
    b2 = [mk(300 + i, x) for i, x in enumerate(lens2)]
    s_pre = sum(rec_size(len(d)) for d in pre)
    s1 = sum(rec_size(len(d)) for d in b1)
    s2 = sum(rec_size(len(d)) for d in b2)
    pad = 0
    if wrap:
        pad = 48  # b2 does not fit in the 48 bytes left: SKIP + b2 at the start
        advance_to(q, cap - pad - s1 - s_pre)
    p0 = q.stats()["tail"]
    for d in pre:
        assert q.put(d) == 0
    t_b2 = p0 + s_pre + s1
    with children() as pids:
        pid = fork(producer_child, p, point, 2, [b1, b2])
        pids.append(pid)
        code = wait_dead(pid, zombie)
        assert code == 9, "child did not die at %s (exit %s)" % (point, code)
        s = q.stats()
        if point == "put_after_intent":
            assert s["tail"] == t_b2
        else:
            assert s["tail"] == t_b2 + pad + s2
        slot = lib.fqt_slot_of_pid(q.q, pid)
        assert slot >= 0
        recover_fully(q)
        assert lib.fqt_slot_of_pid(q.q, pid) == -1, "dead child's slot not freed"
        for lane in range(lib.FQ_LANES):
            assert lib.fqt_intent(q.q, slot, lane, 0, 3) & 3 == lib.FQ_PH_IDLE
        if wrap and point == "put_after_claim":
            # one SKIP over the whole header-less region, across the ring's end
            assert lib.fqt_rec_state(q.q, t_b2) == lib.FQ_REC_SKIP
            assert lib.fqt_rec_len(q.q, t_b2) == pad + s2
        expect = pre + b1 + _committed_before(point, b2)
        assert q.qsize() == len(expect)
        got = q.drain(max_n=3)
        assert [seq_of(m) for m, _ in got] == [seq_of(m) for m in expect]
        assert all(red == 0 for _, red in got)
        q.assert_settled()
        assert s["tail"] == q.stats()["tail"] or point == "put_after_intent"
        workout(q, random.Random(zlib.crc32(repr((point, n, wrap)).encode())))
    q.close()


@_killed_at(GET_POINTS)
def test_consumer_killed_at_crash_point(tmp_path, point, n, wrap, zombie):
    p = tmp_path / "q.seg"
    q = Q.create(p, capacity=CAP, max_slots=4)
    cap = q.cap
    size = rec_size(100)
    m = 12
    if wrap:
        # the second claim holds a SKIP: before its only message (n=1), or between
        # its first and second messages (n=3)
        w = 1 if n == 1 else 4
        advance_to(q, cap - w * size - 48)
    datas = [mk(i, 100) for i in range(m)]
    for d in datas:
        assert q.put(d) == 0
    if wrap:
        assert lib.fqt_rec_state(q.q, q.stats()["head"] + w * size) == lib.FQ_REC_SKIP
    claim1, claim2, rest = list(range(n)), list(range(n, 2 * n)), list(range(2 * n, m))
    r, w_ = os.pipe()
    try:
        with children() as pids:
            pid = fork(consumer_child, p, point, 2, n, w_)
            pids.append(pid)
            code = wait_dead(pid, zombie)
            assert code == 9, "child did not die at %s (exit %s)" % (point, code)
            os.close(w_)
            w_ = None
            log = b""
            while True:
                chunk = os.read(r, 65536)
                if not chunk:
                    break
                log += chunk
            ended = log.count(b"ENDC")
            seen = [struct.unpack("<I", log[i:i + 4])[0] for i in range(0, len(log), 4)
                    if log[i:i + 4] != b"ENDC"]
            assert ended == 1 and seen[:n] == claim1
            if point == "get_before_free":
                assert seen[n:] == claim2
            s = q.stats()
            if point in ("get_after_claim", "get_before_free"):
                assert s["head"] > s["release"], "the crashed claim should hold records"
            else:
                assert s["head"] == s["release"], s
            recover_fully(q)
            assert lib.fqt_slot_of_pid(q.q, pid) == -1
            if point in ("get_after_claim", "get_before_free"):
                want = [(i, 1) for i in claim2] + [(i, 0) for i in rest]
            elif point == "get_before_count":
                want = [(i, 0) for i in rest]
            else:
                want = [(i, 0) for i in claim2 + rest]
            assert q.qsize() == len(want)
            got = [(seq_of(x), red) for x, red in q.drain(max_n=3)]
            assert got == want
            q.assert_settled()
            assert q.stats()["requeued"] == 0
            workout(q, random.Random(zlib.crc32(repr((point, n, wrap)).encode())))
    finally:
        os.close(r)
        if w_ is not None:
            os.close(w_)
    q.close()


def _marking_child(path, marks, keep):
    """claim messages 1-4 behind the parent's older claim (so fq_get_end marks them
    DONE one by one) and die after `marks` DONE marks; keep < 4: end partially"""
    rc, qp, err = open_seg(path)
    assert rc == 0, err
    q = Q(qp, path)
    rc, c = q.begin(4)
    assert rc == 0 and c.n == 4, (rc, c.n)
    assert [seq_of(x) for x in q.read(c)] == [1, 2, 3, 4]
    if marks:
        lib.fq_test_set_crash_point(b"get_mid_done", marks)
    else:  # flagged, nothing marked yet
        lib.fq_test_set_crash_point(b"get_after_flag", 1)
    if keep == 4:
        q.end(c)
    else:
        lib.fq_get_end_partial(q.q, c, keep)
    return 1  # not reached


@pytest.mark.parametrize("keep", [4, 3], ids=["end", "partial"])
@pytest.mark.parametrize("marks", [0, 1, 2])
@pytest.mark.parametrize("recoverer", [False, True], ids=["", "recoverer_killed"])
def test_consumer_killed_marking_its_claim_done(tmp_path, marks, keep, recoverer):
    """A get_many() whose claim is not the oldest is freed by DONE marks, one record
    at a time.  Killed after `marks` of them (0: right after flagging), its batch is consumed whole (recovery
    finishes the marks), never split into a consumed prefix and a requeued rest.
    With keep=3 (fq_get_end_partial: the 4th given back) the 4th comes back alone.
    Optionally the first recoverer is itself killed in the middle of finishing."""
    p = tmp_path / "q.seg"
    q = Q.create(p, capacity=CAP, max_slots=6)
    for i in range(10):
        assert q.put(mk(i, 100)) == 0
    base = q.stats()["head"]
    rc, older = q.begin(1)  # message 0, held: release stays at its start
    assert rc == 0 and older.n == 1
    with children() as pids:
        pid = fork(_marking_child, p, marks, keep)
        pids.append(pid)
        assert reap(pid) == 9, "the consumer did not die at its crash point"
        states = [lib.fqt_rec_state(q.q, base + i * rec_size(100)) for i in range(1, 5)]
        DONE, COMMITTED, REQ = lib.FQ_REC_DONE, lib.FQ_REC_COMMITTED, lib.FQ_REC_REQUEUED
        gave_back = [REQ] if keep == 3 else []
        assert states == [DONE] * marks + [COMMITTED] * (keep - marks) + gave_back, states
        assert [seq_of(x) for x in q.read(older)] == [0]
        q.end(older)  # release moves over 0 and the DONE prefix, stops at the rest
        if recoverer:
            rpid = fork(crash_recoverer_child, p, "recover_mid_done")
            pids.append(rpid)
            assert reap(rpid) == 9, "the recoverer did not die at recover_mid_done"
        recover_fully(q)
    want = ([(4, 1)] if keep == 3 else []) + [(i, 0) for i in range(5, 10)]
    assert q.qsize() == len(want), (q.qsize(), want)
    got = [(seq_of(x), red) for x, red in q.drain(max_n=3)]
    assert got == want, "a batch whose freeing was interrupted came back in part: %r" % got
    q.assert_settled()
    assert q.stats()["requeued"] == 0
    workout(q, random.Random(marks * 10 + keep))
    q.close()


def test_hostile_freeing_intent_cannot_wedge_the_queue(tmp_path):
    """A dead consumer's intent read from the segment says it was freeing (the
    FQ_N_FREEING flag) a claim that ends past head.  Recovery finishes the marks
    only up to head: the records after it, which nobody claimed, stay COMMITTED and
    are delivered (marking them DONE would leave them at head forever: consumers
    wait on a record that is not COMMITTED, and no sweep passes head)."""
    p = tmp_path / "q.seg"
    q = Q.create(p, capacity=CAP, max_slots=4)
    for i in range(6):
        assert q.put(mk(i, 100)) == 0
    with children() as pids:
        pid = fork(crash_consumer_child, p)  # dies holding 0, 1, 2
        pids.append(pid)
        assert reap(pid) == 9
        s = lib.fqt_slot_of_pid(q.q, pid)
        lane = [ln for ln in range(lib.FQ_LANES)
                if lib.fqt_intent(q.q, s, ln, 1, 3) & 3 == lib.FQ_PH_WON]
        assert len(lane) == 1
        lane = lane[0]
        end = lib.fqt_intent(q.q, s, lane, 1, 1)
        assert end == q.stats()["head"]
        lib.fqt_set_intent(q.q, s, lane, 1, 2, 3 | (1 << 62))
        lib.fqt_set_intent(q.q, s, lane, 1, 1, end + 3 * rec_size(100))
        recover_fully(q)
    got = [(seq_of(x), red) for x, red in q.drain(max_n=3)]
    assert got == [(i, 0) for i in range(3, 6)], got  # 0-2: consumed, as the flag says
    q.assert_settled()
    workout(q, random.Random(5))
    q.close()


def test_consumer_crash_then_live_consumer_before_recovery(tmp_path):
    """A live consumer goes on past the dead consumer's claim; recovery then gives the
    dead claim's messages back, and nothing else."""
    p = tmp_path / "q.seg"
    q = Q.create(p, max_slots=4)
    datas = [mk(i, 80) for i in range(10)]
    for d in datas:
        assert q.put(d) == 0
    with children() as pids:
        pid = fork(consumer_child, p, "get_after_claim", 1, 3, os.open(os.devnull, os.O_WRONLY))
        pids.append(pid)
        assert reap(pid) == 9
        pids.remove(pid)
    got = [seq_of(m) for m, _ in q.drain()]
    assert got == list(range(3, 10))
    assert q.qsize() == 3
    s = q.stats()
    assert s["release"] < s["head"] == s["tail"]
    assert q.put(mk(50, 80)) == 0
    recover_fully(q)
    got = [(seq_of(m), red) for m, red in q.drain()]
    assert got == [(0, 1), (1, 1), (2, 1), (50, 0)]
    q.assert_settled()
    workout(q, random.Random(7))


def test_dead_producer_without_header_then_live_producers(tmp_path):
    p = tmp_path / "q.seg"
    q = Q.create(p, max_slots=4)
    for i in range(2):
        assert q.put(mk(i, 64)) == 0
    with children() as pids:
        pid = fork(producer_child, p, "put_after_claim", 1, [[mk(99, 500)]])
        pids.append(pid)
        assert reap(pid) == 9
        pids.remove(pid)
    hole = q.stats()["tail"] - rec_size(500)
    assert lib.fqt_rec_state(q.q, hole) == -1  # no header
    for i in range(2, 7):
        assert q.put(mk(i, 64)) == 0
    assert [seq_of(m) for m, _ in q.drain()] == [0, 1]
    assert q.get() == (lib.FQ_EMPTY, [], 0)  # blocked at the hole
    assert q.qsize() == 5
    recover_fully(q)
    assert lib.fqt_rec_state(q.q, hole) == lib.FQ_REC_SKIP
    assert lib.fqt_rec_len(q.q, hole) == rec_size(500)
    assert [seq_of(m) for m, _ in q.drain()] == [2, 3, 4, 5, 6]
    q.assert_settled()
    workout(q, random.Random(8))


def test_dead_producer_lost_cas_to_a_live_winner(tmp_path):
    """A producer dies after its intent but before its CAS (put_after_intent); a live
    producer then claims the same tail position.  Recovery must not abandon the
    winner's records nor move tail."""
    p = tmp_path / "q.seg"
    q = Q.create(p, max_slots=4)
    assert q.put(mk(0, 64)) == 0
    t = q.stats()["tail"]
    with children() as pids:
        pid = fork(producer_child, p, "put_after_intent", 1, [[mk(99, 700)]])
        pids.append(pid)
        assert reap(pid) == 9
        pids.remove(pid)
    assert q.stats()["tail"] == t
    slot = lib.fqt_slot_of_pid(q.q, pid)
    st = lib.fqt_intent(q.q, slot, 0, 0, 3)
    assert st & 3 == lib.FQ_PH_CLAIMING and lib.fqt_intent(q.q, slot, 0, 0, 0) == t
    for i in range(1, 4):  # the winner at the loser's position
        assert q.put(mk(i, 40)) == 0
    s0 = q.stats()
    recover_fully(q)
    assert q.stats() == s0
    assert lib.fqt_intent(q.q, slot, 0, 0, 3) == st & ~3  # IDLE, count unchanged
    assert q.qsize() == 4
    assert [seq_of(m) for m, _ in q.drain()] == [0, 1, 2, 3]
    q.assert_settled()
    workout(q, random.Random(9))


def test_two_dead_producers_at_same_tail_before_cas(tmp_path):
    p = tmp_path / "q.seg"
    q = Q.create(p, max_slots=4)
    assert q.put(mk(0, 64)) == 0
    t = q.stats()["tail"]
    with children() as pids:
        for size in (100, 900):
            pid = fork(producer_child, p, "put_after_intent", 1, [[mk(99, size)]])
            pids.append(pid)
            assert reap(pid) == 9
    assert q.stats()["tail"] == t
    recover_fully(q)
    assert q.stats()["tail"] == t
    assert q.qsize() == 1
    assert [seq_of(m) for m, _ in q.drain()] == [0]
    q.assert_settled()
    workout(q, random.Random(10))


@pytest.mark.parametrize("later", [False, True], ids=["nothing_after", "live_puts_after"])
@pytest.mark.parametrize("loser_end", ["shorter", "longer"])
def test_witness_picks_the_true_end(tmp_path, loser_end, later):
    """Two dead producers at one position, both only CLAIMING: loser A (intent, no
    CAS) and winner B (CAS done, no header; we turn its WON back into CLAIMING, as if
    it died between the CAS and the WON store).  Recovery must cover exactly B's
    region with one SKIP, whichever end is shorter."""
    p = tmp_path / "q.seg"
    q = Q.create(p, max_slots=4)
    assert q.put(mk(0, 64)) == 0
    t = q.stats()["tail"]
    a_len, b_len = (100, 600) if loser_end == "shorter" else (600, 100)
    with children() as pids:
        pa = fork(producer_child, p, "put_after_intent", 1, [[mk(90, a_len)]])
        pids.append(pa)
        assert reap(pa) == 9
        pb = fork(producer_child, p, "put_after_claim", 1, [[mk(91, b_len)]])
        pids.append(pb)
        assert reap(pb) == 9
    sb = lib.fqt_slot_of_pid(q.q, pb)
    sa = lib.fqt_slot_of_pid(q.q, pa)
    eb = t + rec_size(b_len)
    assert q.stats()["tail"] == eb
    assert lib.fqt_intent(q.q, sa, 0, 0, 0) == lib.fqt_intent(q.q, sb, 0, 0, 0) == t
    assert lib.fqt_intent(q.q, sa, 0, 0, 1) == t + rec_size(a_len)
    st = lib.fqt_intent(q.q, sb, 0, 0, 3)
    assert st & 3 == lib.FQ_PH_WON
    lib.fqt_set_intent_state(q.q, sb, 0, 0, (st & ~3) | lib.FQ_PH_CLAIMING)
    if later:
        for i in range(1, 6):
            assert q.put(mk(i, 56)) == 0
    recover_fully(q)
    assert lib.fqt_rec_state(q.q, t) == lib.FQ_REC_SKIP
    assert lib.fqt_rec_len(q.q, t) == eb - t
    want = [0] + (list(range(1, 6)) if later else [])
    assert q.qsize() == len(want)
    assert [seq_of(m) for m, _ in q.drain()] == want
    q.assert_settled()
    workout(q, random.Random(11))


def _hold_child(path, what, ready_w, go_r):
    """claims something (get or put), reports, then blocks until told to go"""
    rc, qp, err = open_seg(path)
    assert rc == 0
    q = Q(qp, path)
    if what == "get":
        rc, c = q.begin(3)
        assert rc == 0 and c.n == 3
    else:
        lens = ffi.new("uint64_t[]", [64, 64])
        c = ffi.new("fq_claim *")
        assert lib.fq_put_begin(q.q, lens, 2, c) == 0
        ffi.memmove(lib.fq_claim_buf(q.q, c), mk(500, 64), 64)
    os.write(ready_w, b"R")
    os.read(go_r, 1)
    return 0


@pytest.mark.parametrize("what", ["get", "put"])
def test_recovery_leaves_live_processes_alone(tmp_path, what):
    p = tmp_path / "q.seg"
    q = Q.create(p, max_slots=4)
    for i in range(5):
        assert q.put(mk(i, 64)) == 0
    ready_r, ready_w = os.pipe()
    go_r, go_w = os.pipe()
    try:
        with children() as pids:
            pid = fork(_hold_child, p, what, ready_w, go_r)
            pids.append(pid)
            assert os.read(ready_r, 1) == b"R"
            assert lib.fq_pid_alive(pid, 0) == 1
            s0 = q.stats()
            assert q.recover() == 0, "recovery touched a live process"
            assert q.stats() == s0
            if what == "get":
                assert [seq_of(m) for m, _ in q.drain()] == [3, 4]
                assert q.qsize() == 3
            else:
                assert [seq_of(m) for m, _ in q.drain()] == [0, 1, 2, 3, 4]
                assert q.put(mk(9, 64)) == 0
                assert q.get() == (lib.FQ_EMPTY, [], 0)  # behind the live WRITING ones
            os.kill(pid, signal.SIGKILL)
            assert reap(pid) == -signal.SIGKILL
            pids.remove(pid)
            recover_fully(q)
            got = [(seq_of(m), red) for m, red in q.drain()]
            if what == "get":
                assert got == [(0, 1), (1, 1), (2, 1)]
            else:
                assert got == [(9, 0)]
            q.assert_settled()
            workout(q, random.Random(12))
    finally:
        for fd in (ready_r, ready_w, go_r, go_w):
            os.close(fd)


def _exit_without_close(path):
    rc, qp, err = open_seg(path)
    assert rc == 0
    assert lib.fq_put(qp, b"child", 5) == 0
    return 0


def _attach_child(path):
    rc, qp, err = open_seg(path)
    assert rc == 0
    rc = lib.fq_put(qp, b"second", 6)
    return 0 if rc == 0 else 10 + rc


def test_slots_of_dead_processes_are_reclaimed(tmp_path):
    p = tmp_path / "q.seg"
    q = Q.create(p, max_slots=2)
    assert q.put(b"parent") == 0  # parent takes a slot
    ready_r, ready_w = os.pipe()
    go_r, go_w = os.pipe()
    try:
        with children() as pids:
            holder = fork(_hold_child, p, "put", ready_w, go_r)  # live: holds slot 2
            pids.append(holder)
            assert os.read(ready_r, 1) == b"R"
            c = fork(_attach_child, p)
            pids.append(c)
            assert reap(c) == 10 + lib.FQ_ENOSLOT
            pids.remove(c)
            os.kill(holder, signal.SIGKILL)
            assert reap(holder) == -9
            pids.remove(holder)
            # a dead owner's slot is taken over (fq_attach runs recovery)
            c = fork(_attach_child, p)
            pids.append(c)
            assert reap(c) == 0
            pids.remove(c)
            # a child exiting without fq_close leaves a slot that recovery frees
            c = fork(_exit_without_close, p)
            pids.append(c)
            assert reap(c) == 0
            pids.remove(c)
            assert lib.fqt_slot_of_pid(q.q, c) >= 0
            recover_fully(q)
            assert lib.fqt_slot_of_pid(q.q, c) == -1
    finally:
        for fd in (ready_r, ready_w, go_r, go_w):
            os.close(fd)
    assert [m for m, _ in q.drain()] == [b"parent", b"second", b"child"]
    q.assert_settled()

"""Publishers killed at the producer crash points, on block and drop topics; a
publisher killed retrying its release scan; a put in progress is never overwritten.
"""

import os
import random
import struct
import threading
import time
import zlib

import pytest

from support.cseg import CAP, ffi, lib, mk, recover_fully, seq_of
from support.ctopic import fits, GROUP, publish_all, publisher_child, run_child, T, trec, workout
from support.procs import children, fork, reap


# ---------------------------------------------------------------------------
# publishers killed at the producer crash points, on a topic


PUT_POINTS = ["put_after_intent", "put_after_claim", "put_after_headers", "put_before_commit",
              "put_mid_commit", "put_before_count"]


def _committed_before(point, batch):
    if point == "put_before_count":
        return batch
    return batch[:1] if point == "put_mid_commit" else []



@pytest.mark.parametrize("n", [1, 3], ids=["single", "batch3"])
@pytest.mark.parametrize("mode", ["block", "drop"])
@pytest.mark.parametrize("point", PUT_POINTS)
def test_publisher_killed_at_crash_point(path, point, mode, n):
    """A publisher dies in its second batch at `point`.  Before recovery, subscribers
    stop at the hole and other publishers get FULL once the ring is full up to it
    (block and drop: a record being written cannot be evicted).  After recovery
    subscribers go on and every message is delivered in order, except the dead
    publisher's uncommitted ones; in drop mode publishers are never stuck again."""
    drop = mode == "drop"
    t = T.create(path, capacity=CAP, drop=drop)
    subs = [t.subscribe("a"), t.subscribe("g", GROUP)]
    pre = [mk(100 + i, 48) for i in range(2)]
    b1 = [mk(200 + i, x) for i, x in enumerate([40, 72, 24][:n])]
    b2 = [mk(300 + i, x) for i, x in enumerate([120, 8, 64][:n])]
    publish_all(t, pre)
    try:
        with children() as pids:
            t0 = t.stats()
            pid = run_child(pids, publisher_child, path, point, 2, [b1, b2])
            s = t.stats()
            claimed = point != "put_after_intent"
            assert s["published"] == t0["published"] + n + (n if claimed else 0)
            hole = t0["tail"] + sum(trec(len(d)) for d in b1)
            if not claimed:
                assert s["tail"] == hole
            # subscribers read up to the hole
            want = pre + b1 + _committed_before(point, b2)
            for sb in subs:
                got = sb.drain()
                assert [seq_of(x) for _, x, _ in got] == [seq_of(d) for d in want]
                idx = [i for i, _, _ in got]
                assert idx == list(range(len(want))), idx  # b2[0] is index 2 + n
            # fill: FULL at the hole (which no eviction passes) unless there is none
            post = []
            first_post = t.stats()["tail"]
            full = False
            while fits(t, first_post, 100):
                rc = t.put(mk(400 + len(post), 100))
                if rc == lib.FQ_FULL:
                    full = True
                    break
                assert rc == 0
                post.append(mk(400 + len(post), 100))
            # a hole: records claimed and not all committed.  In block mode the dead
            # publisher's intent also holds release (at its claim) until recovery.
            holed = claimed and point != "put_before_count" and not (
                point == "put_mid_commit" and n == 1)
            assert full == (claimed if not drop else holed), (full, holed, len(post),
                                                               t.stats())
            if holed:
                assert t.put(mk(999, 100)) == lib.FQ_FULL
                for sb in subs:
                    assert sb.begin()[0] == lib.FQ_EMPTY, "a subscriber passed the hole"
            else:  # nothing stops the subscribers
                for sb in subs:
                    assert [seq_of(x) for _, x, _ in sb.drain()] == \
                        [seq_of(d) for d in post]
                post = []
            recover_fully(t)
            assert lib.fqt_slot_of_pid(t.q, pid) == -1
            for sb in subs:
                got = sb.drain()
                assert [seq_of(x) for _, x, _ in got] == [seq_of(d) for d in post]
                first = len(pre) + 2 * n if claimed else len(pre) + n
                assert [i for i, _, _ in got] == list(range(first, first + len(post)))
            # publishers go on
            post2 = [mk(500 + i, 100) for i in range(5)]
            publish_all(t, post2)
            for sb in subs:
                assert [seq_of(x) for _, x, _ in sb.drain()] == [seq_of(d) for d in post2]
            if drop:
                # never stuck: lap the ring many times without reading
                before = [sb.dropped() for sb in subs]
                last = [t.stats()["published"] - 1] * 2
                k = 0
                while t.stats()["tail"] < first_post + 6 * CAP:
                    assert t.put(mk(600 + k, 200)) == 0
                    k += 1
                for j, sb in enumerate(subs):
                    got = [i for i, _, _ in sb.drain()]
                    assert got == list(range(got[0], got[-1] + 1))
                    assert got[-1] == t.stats()["published"] - 1
                    assert sb.dropped() - before[j] == got[0] - last[j] - 1, \
                        "dropped counts exactly the messages lapped"
            else:
                workout(t, subs, random.Random(zlib.crc32(repr((point, n)).encode())))
    finally:
        t.close()


def _two_publishers_child(path, point, seconds):
    """three publisher threads (ids 0, 1, 2) at C speed, with a crash point armed: exit 9
    when it is reached, 0 if not within `seconds`"""
    t = T.open(path)
    lib.fq_test_set_crash_point(point.encode(), 1)
    deadline = time.monotonic_ns() + int(seconds * 1e9)
    ths = [threading.Thread(target=lib.fqt_put_loop,
                            args=(t.q, i, 1 << 40, 3 + i, 1, 20, deadline)) for i in range(3)]
    for th in ths:
        th.start()
    for th in ths:
        th.join()
    return 0


def test_publisher_killed_retrying_its_release_scan(path):
    """topic_release_retry: a publisher whose release CAS failed (another publisher
    moved release first) dies before scanning again.  The reader gets every message
    committed, whole, each publisher's in order, none twice; after recovery
    publishers are not held back."""
    t = T.create(path, capacity=CAP, max_subs=256)
    a = t.subscribe("g", GROUP)
    idle = [t.subscribe("g", GROUP) for _ in range(150)]  # slower scans: more races
    got = []
    try:
        with children() as pids:
            pid = fork(_two_publishers_child, path, "topic_release_retry", 20.0)
            pids.append(pid)
            deadline = time.monotonic() + 25
            while True:
                p, status = os.waitpid(pid, os.WNOHANG)
                if p:
                    break
                assert time.monotonic() < deadline, "child did not finish"
                rc, msgs, _ = a.get(1)
                if rc == lib.FQ_EMPTY:
                    time.sleep(0.0002)
                got += [m for _, m in msgs]
            pids.remove(pid)
            assert os.waitstatus_to_exitcode(status) == 9, "crash point not reached"
            recover_fully(t)
            got += [m for _, m, _ in a.drain()]
            last = {0: -1, 1: -1, 2: -1}
            for m in got:
                pub, seq = struct.unpack_from("<II", m)
                assert m[8:] == bytes([seq & 0xFF]) * (len(m) - 8), "torn message"
                assert seq > last[pub], "publisher %d: %d after %d" % (pub, seq, last[pub])
                last[pub] = seq
            assert max(last.values()) > 10, last
            for s in idle:
                s.unsubscribe()
            workout(t, [a], random.Random(14))
    finally:
        t.close()


def _slow_publisher_child(path, ready_w, go_r):
    """claim a batch of 2, copy the first payload, report b"R", wait for b"G", copy
    the second, commit"""
    t = T.open(path)
    datas = [mk(7000, 200), mk(7001, 300)]
    lens = ffi.new("uint64_t[]", [len(d) for d in datas])
    c = ffi.new("fq_claim *")
    assert lib.fq_put_begin(t.q, lens, 2, c) == 0
    ffi.memmove(lib.fq_claim_buf(t.q, c), datas[0], len(datas[0]))
    os.write(ready_w, struct.pack("<Q", c.pos))
    if os.read(go_r, 1) != b"G":
        return 5
    ffi.memmove(lib.fq_claim_buf(t.q, c), datas[1], len(datas[1]))
    lib.fq_put_commit(t.q, c)
    return 0


@pytest.mark.parametrize("subscriber", ["none", "before", "after"])
@pytest.mark.parametrize("mode", ["block", "drop"])
def test_put_in_progress_is_never_overwritten(path, mode, subscriber):
    """A live publisher is copying a batch (claimed, not committed) while others
    publish a whole ring's worth: with no subscriber, one that subscribed before
    the claim, or one that subscribed after it (its group starts at tail, beyond
    the put in progress), release must not pass the batch: publishers get FULL
    instead, and once the batch is committed it is whole and in order."""
    drop = mode == "drop"
    t = T.create(path, capacity=CAP, drop=drop)
    ready_r, ready_w = os.pipe()
    go_r, go_w = os.pipe()
    subs = []
    try:
        if subscriber == "before":
            subs.append(t.subscribe("b"))
        publish_all(t, [mk(i, 100) for i in range(3)])
        for s in subs:
            s.drain()
        with children() as pids:
            pid = fork(_slow_publisher_child, path, ready_w, go_r)
            pids.append(pid)
            pos = struct.unpack("<Q", os.read(ready_r, 8))[0]
            if subscriber == "after":
                subs.append(t.subscribe("a"))
            k = 0
            while True:
                rc = t.put(mk(100 + k, 100))
                if rc == lib.FQ_FULL:
                    break
                assert rc == 0
                k += 1
                assert t.stats()["tail"] - pos <= CAP, "a publisher wrote over the batch"
                assert k < 100, "never FULL"
                if drop or subscriber != "none":
                    for s in subs:  # readers keep up: only the batch holds release
                        s.drain()
            assert t.stats()["release"] <= pos
            os.write(go_w, b"G")
            assert reap(pid) == 0
            pids.remove(pid)
            assert lib.fqt_rec_state(t.q, pos) == lib.FQ_REC_COMMITTED
            data = bytes(ffi.buffer(lib.fqt_rec_data(t.q, pos), 16 + 200))
            assert data[16:] == mk(7000, 200) and struct.unpack_from("<Q", data)[0] == 3
            if subscriber == "before":
                got = [seq_of(m) for _, m, _ in subs[0].drain()]
                assert got == [7000, 7001] + list(range(100, 100 + k)), got
            if not drop:
                assert t.put(mk(999)) == 0  # not held once committed
    finally:
        for fd in (ready_r, ready_w, go_r, go_w):
            os.close(fd)
        t.close()


@pytest.mark.parametrize("mode", ["block", "drop"])
@pytest.mark.parametrize("point", ["put_after_claim", "put_after_headers", "put_mid_commit"])
def test_dead_publisher_leaves_lag_and_dropped_exact(path, point, mode):
    """A publisher killed with a batch of 3 claimed (message indices taken) but not
    all committed.  Its uncommitted messages are not messages: once the subscriber
    has read everything there is, its lag must be 0; and nothing was lapped, so
    dropped must stay 0 (also after a later message is read past them)."""
    t = T.create(path, capacity=CAP, drop=mode == "drop")
    a = t.subscribe("a")
    try:
        with children() as pids:
            publish_all(t, [mk(i) for i in range(3)])
            run_child(pids, publisher_child, path, point, 1, [[mk(10 + i) for i in range(3)]])
            recover_fully(t)
            got = [seq_of(x) for _, x, _ in a.drain()]
            assert got == [0, 1, 2] + ([10] if point == "put_mid_commit" else [])
            assert a.get()[0] == lib.FQ_EMPTY
            lag_end, dropped_end = a.lag(), a.dropped()
            assert t.put(mk(20)) == 0
            assert [seq_of(x) for _, x, _ in a.drain()] == [20]
            lag_after, dropped_after = a.lag(), a.dropped()
            assert (lag_end, dropped_end, lag_after, dropped_after) == (0, 0, 0, 0), \
                "lag %d dropped %d with nothing left to read; lag %d dropped %d after one " \
                "more message" % (lag_end, dropped_end, lag_after, dropped_after)
    finally:
        t.close()

"""5. Dead subscribers in block mode (a dead non-durable one stops holding the
publishers); durable subscriptions keep their position.
"""

import os
import random
import select
import signal
import time
from contextlib import contextmanager

import pytest

from support.cseg import CAP, lib, mk, recover_fully, seq_of
from support.ctopic import (ANON, DURABLE, fill, fits, GROUP, GRP_DURABLE, MEM_FREE, MEM_ORPHAN,
                            publish_all, T, trec, workout)
from support.procs import children, fork, reap


# ---------------------------------------------------------------------------
# 5. dead subscribers in block mode; durable subscriptions


def _reader_child(path, name, kind, acks, then, gate, max_n=2):
    """subscribe, report b"R", wait for b"G"; read claims of max_n until `acks`
    messages are acked; then: "idle" (report b"D" and wait to be killed), "claim"
    (begin one more claim of 3, report b"D", wait), or a crash point name."""
    t = T.open(path)
    s = t.subscribe(name, kind)
    ready_w, go_r = gate
    os.write(ready_w, b"R")
    if os.read(go_r, 1) != b"G":
        return 5
    done = 0
    while done < acks:
        rc, msgs, _ = s.get(min(max_n, acks - done))
        assert rc == 0, rc
        done += len(msgs)
    if then == "idle":
        pass
    elif then == "claim":
        rc, c = s.begin(3)
        assert rc == 0 and c.n == 3
        s.read(c)
    else:
        lib.fq_test_set_crash_point(then.encode(), 1)
        rc, c = s.begin(3)
        s.read(c)
        s.end(c)
        return 1
    os.write(ready_w, b"D")
    time.sleep(60)
    return 2


@contextmanager
def gated(fn, *args):
    """fork fn(*args, gate); yields (pid, go) where go() lets it read; killed at exit"""
    ready_r, ready_w = os.pipe()
    go_r, go_w = os.pipe()
    with children() as pids:
        try:
            pid = fork(fn, *args, (ready_w, go_r))
            pids.append(pid)
            assert os.read(ready_r, 1) == b"R"

            def go(wait_done=True):
                os.write(go_w, b"G")
                if wait_done:
                    assert select.select([ready_r], [], [], 10)[0], "child did not read"
                    assert os.read(ready_r, 1) == b"D"

            yield pid, go, pids
        finally:
            for fd in (ready_r, ready_w, go_r, go_w):
                os.close(fd)


def _publish_10_and_let_it_die(t, a, pid, go, pids, at_crash_point):
    """publish 10 messages (subscriber a gets them all); the gated reader dies at its
    crash point (exit 9) or is SIGKILLed after its acks"""
    publish_all(t, [mk(i, 100) for i in range(10)])
    if at_crash_point:
        go(False)
        assert reap(pid) == 9
    else:
        go()
        os.kill(pid, signal.SIGKILL)
        assert reap(pid) == -signal.SIGKILL
    pids.remove(pid)
    assert len(a.drain()) == 10


@pytest.mark.parametrize("then", ["idle", "claim", "sub_after_claim"])
@pytest.mark.parametrize("kind", [ANON, GROUP], ids=["anon", "group"])
def test_dead_nondurable_subscriber_stops_holding_publishers(path, kind, then):
    """Block mode: a subscriber that dies (idle, holding a claim, or at
    sub_after_claim) holds publishers back until fq_recover; after it, its group
    (and any orphan) is gone and publishers run freely."""
    t = T.create(path, capacity=CAP)
    a = t.subscribe("a")
    try:
        with gated(_reader_child, path, "x", kind, 4, then) as (pid, go, pids):
            _publish_10_and_let_it_die(t, a, pid, go, pids, then == "sub_after_claim")
            n = fill(t, [a], 100)
            assert t.put(mk(99, 100)) == lib.FQ_FULL, "the dead subscriber held nothing"
            assert [seq_of(x) for _, x, _ in a.drain()] == list(range(100, 100 + n))
            assert t.put(mk(99, 100)) == lib.FQ_FULL
            recover_fully(t)
            assert t.members_of_pid(pid) == [] and t.entries() == [a.index()]
            assert [r["name"] for _, r in t.info()] == ["a"]
            workout(t, [a], random.Random(8))
    finally:
        t.close()


@pytest.mark.parametrize("mode", ["block", "drop"])
@pytest.mark.parametrize("then", ["idle", "claim", "sub_before_end"])
def test_dead_durable_subscriber_keeps_its_position(path, mode, then):
    """A durable subscriber acks 4 messages and dies (idle, or holding a claim of 3).
    Its position stays: in block mode publishers stay held after recovery, and
    fq_topic_info lists the name with nobody attached.  Subscribing with the same
    name resumes exactly there, the unfinished claim first (redelivered)."""
    drop = mode == "drop"
    t = T.create(path, capacity=CAP, drop=drop)
    a = t.subscribe("a")
    try:
        with gated(_reader_child, path, "d", DURABLE, 4, then) as (pid, go, pids):
            _publish_10_and_let_it_die(t, a, pid, go, pids, then == "sub_before_end")
            n = 0
            if not drop:
                n = fill(t, [a], 100)
                assert [seq_of(x) for _, x, _ in a.drain()] == list(range(100, 100 + n))
                assert t.put(mk(99, 100)) == lib.FQ_FULL
            else:  # as many as fit without lapping the dead one's claim
                while fits(t, trec(100) * 4, 100):
                    assert t.put(mk(100 + n, 100)) == 0
                    n += 1
                assert len(a.drain()) == n
            recover_fully(t)
            if not drop:
                assert t.put(mk(99, 100)) == lib.FQ_FULL, "durable position not kept"
            held = then != "idle"
            rows = t.info()
            alone = [r for i, r in rows if i >= t.nsubs]
            assert len(alone) == 1 and alone[0]["name"] == "d"
            assert alone[0]["kind"] == MEM_FREE and alone[0]["flags"] == GRP_DURABLE
            assert alone[0]["pid"] == 0 and alone[0]["alive"] == 0
            # its unfinished claim waits as an orphan entry (not listed as a subscriber)
            assert not [r for i, r in rows if i < t.nsubs and r["name"] == "d"]
            assert len(t.entries(kinds=(MEM_ORPHAN,))) == (1 if held else 0)
            # 4..9 (its orphan's 3 among them) and the n published after
            assert alone[0]["lag"] == 6 + n, (alone[0]["lag"], n)
            d = t.subscribe("d", DURABLE)
            got = [(seq_of(x), red) for _, x, red in d.drain(max_n=3)]
            want = ([(i, 1) for i in (4, 5, 6)] + [(i, 0) for i in range(7, 10)]) if held \
                else [(i, 0) for i in range(4, 10)]
            want += [(100 + i, 0) for i in range(n)]
            assert got == want
            assert d.dropped() == 0 and d.lag() == 0
            if drop:
                rc, _, err = t.subscribe_rc("d", DURABLE)
                assert rc == lib.FQ_EINUSE, (rc, err)
            workout(t, [a, d], random.Random(9))
            d.unsubscribe()  # a durable name survives its subscription's close
            assert [r["name"] for i, r in t.info() if i >= t.nsubs] == ["d"]
            assert t.put(mk(5000)) == 0
            d = t.subscribe("d", DURABLE)
            assert [seq_of(x) for _, x, _ in d.drain()] == [5000]
    finally:
        t.close()

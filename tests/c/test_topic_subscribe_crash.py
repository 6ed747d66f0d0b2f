"""Subscribers killed inside fq_subscribe (holding the segment lock):
subscribe_after_lock, subscribe_group_visible, subscribe_before_unlock.
"""

import os
import random
import select

import pytest

from support.cseg import CAP, lib, mk, seq_of
from support.ctopic import (ANON, DURABLE, fill, GROUP, publish_all, run_child,
                            subscribe_and_read_child, subscribe_child, T, trec, workout)
from support.procs import children, fork, reap


# ---------------------------------------------------------------------------
# subscribers killed inside fq_subscribe (holding the segment lock)


SUBSCRIBE_POINTS = ["subscribe_after_lock", "subscribe_group_visible",
                    "subscribe_before_unlock"]



@pytest.mark.parametrize("kind", [ANON, GROUP, DURABLE], ids=["anon", "group", "durable"])
@pytest.mark.parametrize("point", SUBSCRIBE_POINTS)
def test_subscriber_killed_inside_subscribe(path, point, kind):
    """A child killed in fq_subscribe while holding the segment lock (and, from
    subscribe_group_visible on, with its new group visible at release).  Others can
    still subscribe (the lock is taken from the dead holder), and block-mode
    publishers are not held back by the half-made subscription after fq_recover --
    except a durable group, which stays (at the position it was made at)."""
    t = T.create(path, capacity=CAP)
    a = t.subscribe("a")
    publish_all(t, [mk(i) for i in range(5)])
    assert len(a.drain()) == 5
    try:
        with children() as pids:
            pid = run_child(pids, subscribe_child, path, "x", kind, point)
            assert lib.fqt_recover_lock(t.q) >> 32 == pid, "the child died holding the lock"
            groups = [i for i in range(t.nsubs) if t.group(i)["kind"] == 1]
            made = point != "subscribe_after_lock"
            assert len(groups) == (2 if made else 1)
            # the half-made group holds publishers at its head (release)
            n = fill(t, [a], 100)
            if made:
                assert n < CAP // trec(100) + 1, "publishers passed a visible group"
                assert t.put(mk(99)) == lib.FQ_FULL
            a_got = [seq_of(x) for _, x, _ in a.drain()]
            assert a_got == list(range(100, 100 + n))
            # another process subscribes (the lock is taken from the dead holder)
            ready_r, ready_w = os.pipe()
            try:
                pid2 = fork(subscribe_and_read_child, path, "y", GROUP, 3, 5.0, ready_w)
                pids.append(pid2)
                assert select.select([ready_r], [], [], 5.0)[0], "fq_subscribe hangs"
                assert os.read(ready_r, 1) == b"R"
            finally:
                os.close(ready_r)
                os.close(ready_w)
            t.recover()
            assert lib.fqt_slot_of_pid(t.q, pid) == -1
            assert t.members_of_pid(pid) == []
            # a durable subscription whose fq_subscribe made it completely (killed just
            # before unlocking) stays, like one whose owner died after subscribing; a
            # half-made group (killed at subscribe_group_visible: head still at
            # release, no start chosen, never returned to anyone) must not hold
            # publishers back forever
            durable_left = point == "subscribe_before_unlock" and kind == DURABLE
            x = None
            if durable_left:
                # the durable group nobody is attached to stays (FULL) and keeps its
                # position (latest when it was made: after message 4): resume it
                assert t.put(mk(99)) == lib.FQ_FULL
                assert [r["name"] for i, r in t.info() if i >= t.nsubs] == ["x"]
                x = t.subscribe("x", DURABLE)
                got = [seq_of(m) for _, m, _ in x.drain()]
                assert got == list(range(100, 100 + n)), got
            for i in range(3):
                rc = t.put(mk(1000 + i))
                assert rc == 0, "publisher still held after recovery: %r" % (t.stats(),)
            assert reap(pid2) == 0
            pids.remove(pid2)
            names = sorted(r["name"] for _, r in t.info())
            assert names == (["a", "x"] if durable_left else ["a"]), names
            a.drain()
            if x is not None:
                x.drain()
            workout(t, [a] + ([x] if x is not None else []), random.Random(6))
            b = t.subscribe("z", kind)
            assert t.put(mk(7)) == 0
            assert b.get()[1] == [(t.stats()["published"] - 1, mk(7))]
    finally:
        t.close()

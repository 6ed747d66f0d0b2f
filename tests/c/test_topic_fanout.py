"""1. Fan-out: every subscriber gets every message in order, across wrap-around and
batches (message indices, lag); an earliest start gets what is retained.
"""

import os
import random
import struct

import pytest

from support.cseg import BIG, CAP, ffi, HDR, lib, mk
from support.ctopic import ANON, create, EARLIEST, GROUP, PREFIX, publish_all, T, trec


# ---------------------------------------------------------------------------
# 1. fan-out


def test_create_topic_segment(path):
    t = T.create(path, capacity=CAP, max_subs=5)
    try:
        assert lib.fq_is_topic(t.q) == 1 and lib.fq_is_drop(t.q) == 0
        assert lib.fq_max_subs(t.q) == 5
        assert lib.fq_max_message(t.q) == CAP // 2 - HDR - PREFIX
        assert t.put(b"x" * (CAP // 2 - HDR - PREFIX + 1)) == lib.FQ_ETOOBIG
        s = t.subscribe("a")
        with pytest.raises(AssertionError):
            t.subscribe("")
        rc, _, err = t.subscribe_rc("n" * 64)
        assert rc == -22 and "64" in err
        assert t.put(b"hello") == 0
        assert s.get() == (0, [(0, b"hello")], 0)
        assert s.lag() == 0
    finally:
        t.close()
    rc, q, err = create(path.with_suffix(".q"), topic=0)
    assert rc == 0
    out = ffi.new("fq_sub **")
    e = ffi.new("char[256]")
    assert lib.fq_subscribe(q, b"a", 0, 0, out, e, 256) == -22 and b"topic" in ffi.string(e)
    lib.fq_close(q)


@pytest.mark.parametrize("mode", ["block", "drop"])
def test_fan_out_in_order_with_wrap_and_batches(path, mode):
    """Three subscriptions (two anonymous, one single-member group) each get every
    message, in order, across many wraps of a 4 KiB ring; batches of 1-4 messages;
    c->msg_idx is the publish order; lag is published - finished and ends at 0."""
    rng = random.Random(1 if mode == "block" else 2)
    t = T.create(path, capacity=CAP, drop=mode == "drop")
    subs = [t.subscribe("a"), t.subscribe("b"), t.subscribe("g", GROUP)]
    got = [[] for _ in subs]
    datas = []  # message index -> payload
    fin = [0, 0, 0]  # messages finished per sub
    wraps = 0
    fulls = 0
    pending_bytes = 0  # drop mode: published since the slowest sub last caught up
    try:
        while len(datas) < 3000:
            n = rng.choice([1, 1, 2, 3, 4])
            batch = [mk(len(datas) + i, rng.randrange(8, 400)) for i in range(n)]
            before = t.stats()
            if mode == "drop" and pending_bytes + sum(trec(len(b)) for b in batch) + 1024 > CAP:
                rc = lib.FQ_FULL  # would lap someone: let them read first
            else:
                rc, c = (t.put(batch[0]), None) if n == 1 else t.put_batch(batch)
            if rc == lib.FQ_FULL:
                fulls += 1
                assert mode == "block" or pending_bytes > 0
                for k, s in enumerate(subs):  # a random amount of reading
                    for _ in range(rng.randrange(1, 6)):
                        r, msgs, red = s.get(rng.randrange(1, 6), rng.choice([BIG, 300]))
                        if r == lib.FQ_EMPTY:
                            break
                        assert r == 0 and red == 0
                        got[k].extend(msgs)
                        fin[k] += len(msgs)
                    pub = len(datas)
                    assert s.lag() == pub - fin[k], (k, s.lag(), pub, fin[k])
                if mode == "drop":
                    for k, s in enumerate(subs):
                        r = s.drain()
                        got[k].extend((i, m) for i, m, _ in r)
                        fin[k] += len(r)
                    pending_bytes = 0
                continue
            assert rc == 0, rc
            after = t.stats()
            assert after["published"] == before["published"] + n
            if (after["tail"] & (CAP - 1)) < (before["tail"] & (CAP - 1)):
                wraps += 1
            if n > 1:
                assert c.n == n and c.end == after["tail"]
            pending_bytes += after["tail"] - before["tail"]
            datas.extend(batch)
        for k, s in enumerate(subs):
            r = s.drain(max_n=7)
            got[k].extend((i, m) for i, m, _ in r)
            assert s.lag() == 0 and s.dropped() == 0
        for k in range(3):
            assert [i for i, _ in got[k]] == list(range(len(datas))), "sub %d" % k
            for i, m in got[k]:
                assert m == datas[i]
        assert wraps > 100 and fulls > 10, (wraps, fulls)
        assert t.stats()["published"] == len(datas)
        rows = t.info()
        assert sorted(r["name"] for _, r in rows) == ["a", "b", "g"]
        assert all(r["lag"] == 0 and r["alive"] == 1 and r["pid"] == os.getpid()
                   for _, r in rows)
        assert sorted(r["got"] for _, r in rows) == [len(datas)] * 3
    finally:
        t.close()


def test_lag_counts_down_to_zero(path):
    t = T.create(path)
    try:
        a = t.subscribe("a")
        publish_all(t, [mk(i) for i in range(10)])
        b = t.subscribe("b")  # latest: sees nothing published before
        assert a.lag() == 10 and b.lag() == 0
        lags = []
        while True:
            rc, msgs, _ = a.get(3)
            if rc:
                break
            lags.append(a.lag())
        assert lags == [7, 4, 1, 0]
        assert b.get() == (lib.FQ_EMPTY, [], 0)
        # a claimed message counts as received
        assert t.put(mk(10)) == 0
        assert a.lag() == 1 and b.lag() == 1
        rc, c = a.begin()
        assert rc == 0 and a.read(c)[0][0] == 10
        assert a.lag() == 0
        a.end(c)
        assert a.lag() == 0 and b.lag() == 1
    finally:
        t.close()


def test_earliest_start_gets_the_retained_messages(path):
    """earliest: every message still in the ring (from release), a contiguous suffix"""
    t = T.create(path)
    try:
        a = t.subscribe("a")
        publish_all(t, [mk(i) for i in range(5)])
        assert len(a.drain()) == 5
        e = t.subscribe("e", ANON, EARLIEST)
        assert e.lag() == 5
        assert [i for i, _, _ in e.drain()] == [0, 1, 2, 3, 4]  # nothing released yet
        n = 5
        while t.stats()["release"] < 3 * CAP:  # wrap: release moves on
            assert t.put(mk(n, 200)) == 0, n
            n += 1
            a.drain()
            e.drain()
        rel = t.stats()["release"]
        f = t.subscribe("f", ANON, EARLIEST)
        got = [i for i, _, _ in f.drain()]
        assert got and got == list(range(got[0], n)), got
        x = rel  # the first message record at or after release
        while lib.fqt_rec_state(t.q, x) == lib.FQ_REC_SKIP:
            x += lib.fqt_rec_len(t.q, x)
        assert lib.fqt_rec_state(t.q, x) == lib.FQ_REC_COMMITTED
        assert struct.unpack_from("<Q", ffi.buffer(lib.fqt_rec_data(t.q, x), 8))[0] == got[0]
    finally:
        t.close()

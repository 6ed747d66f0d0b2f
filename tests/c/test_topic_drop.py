"""6. Drop mode: fq_sub_intact and fq_sub_dropped are exact, deterministic and at C
speed with threads.
"""

import random

import pytest

from support.cseg import CAP, ffi, lib, mk, seq_of
from support.ctopic import c_sub_threads, publish_all, T, trec


# ---------------------------------------------------------------------------
# 6. drop mode: fq_sub_intact and fq_sub_dropped are exact


def test_drop_overwritten_claim_is_not_intact_and_dropped_is_exact(path):
    """A subscriber holds a claim; the publisher laps the ring.  The message whose
    pointer fq_sub_next gave before the lap is not intact (its bytes did change);
    the rest of the claim is gone; fq_sub_dropped then counts exactly the messages
    published between the last one received and the next one received."""
    t = T.create(path, capacity=CAP, drop=True)
    a = t.subscribe("a")
    pub = 0

    def publish(k, size=100):
        nonlocal pub
        for _ in range(k):
            assert t.put(mk(pub, size)) == 0
            pub += 1

    try:
        publish(5)
        rc, c = a.begin(2)
        assert rc == 0 and c.n == 2
        r = a.next(c)
        assert r is not None and r[1] == 0 and r[0] == mk(0, 100)
        ptr = a._d[0]
        publish(CAP // trec(100) + 5)  # lap the ring
        assert t.stats()["release"] > c.end
        assert bytes(ffi.buffer(ptr, 100)) != mk(0, 100), "not overwritten (test setup)"
        assert lib.fq_sub_intact(a.s, c) == 0
        assert a.next(c) is None  # message 1 was overwritten: the claim has no more
        a.end(c)
        assert a.dropped() == 0  # nothing received yet: nothing counted yet
        got = a.drain(max_n=3)
        idx = [i for i, _, _ in got]
        assert idx == list(range(idx[0], pub)) and idx[0] > 2
        assert all(seq_of(m) == i for i, m, _ in got)
        assert a.dropped() == idx[0], (a.dropped(), idx[0])
        assert a.lag() == 0
        # received one intact, then lapped inside a claim: counted from the last one
        rng = random.Random(12)
        for rnd in range(60):
            before = a.dropped()
            last = pub - 1
            publish(rng.randrange(1, 6), rng.randrange(8, 500))
            rc, c = a.begin(rng.randrange(1, 4))
            assert rc == 0
            m = a.next(c)
            assert m is not None and m[1] == last + 1
            publish(rng.randrange(0, 40), rng.randrange(8, 500))
            intact = lib.fq_sub_intact(a.s, c)
            rel = t.stats()["release"]
            assert intact == (m[2] >= rel), (intact, m[2], rel)
            if intact:
                assert m[0] == mk(m[1], len(m[0]))
            a.end(c)
            got = [i for i, _, _ in a.drain(max_n=rng.randrange(1, 5))]
            assert got == list(range(got[0], pub)) if got else pub == last + 2
            first = got[0] if got else pub
            if intact:
                assert a.dropped() - before == first - (last + 2), (rnd, a.dropped(), before)
            else:
                assert a.dropped() - before == first - (last + 1), (rnd, a.dropped(), before)
            assert a.lag() == 0
    finally:
        t.close()


def test_drop_subscriber_lapped_between_claims_counts_exactly(path):
    """received + dropped == published, over many laps with random pacing"""
    rng = random.Random(13)
    t = T.create(path, capacity=CAP, drop=True)
    a = t.subscribe("a")
    try:
        pub = 0
        recv = []
        for _ in range(400):
            for _ in range(rng.choice([0, 1, 2, 5, 20, 60])):
                assert t.put(mk(pub, rng.randrange(8, 700))) == 0
                pub += 1
            for _ in range(rng.randrange(0, 3)):
                rc, msgs, _ = a.get(rng.randrange(1, 8))
                if rc:
                    break
                recv += [i for i, _ in msgs]
                assert all(seq_of(m) == i for i, m in msgs)
                assert len(recv) + a.dropped() == recv[-1] + 1
        recv += [i for i, _, _ in a.drain()]
        assert recv == sorted(set(recv)) and recv[-1] == pub - 1
        assert len(recv) + a.dropped() == pub
        assert a.dropped() > pub // 4 and a.lag() == 0
    finally:
        t.close()


@pytest.mark.parametrize("max_n,delay,pub_delay,lead", [
    (1, 3000, 2000, 200), (16, 500, 1000, 200), (64, 50, 3000, 60), (8, 0, 0, 40),
    (4, 200, 5000, 0)])
def test_c_loop_drop_slow_reader_exact(path, max_n, delay, pub_delay, lead):
    """At C speed: a publisher thread laps a slow reader thread (GIL released) over
    and over (paced: at most `lead` messages ahead of the reader, if lead).  Every
    payload the reader keeps is whole (its copy, made in two halves with a pause
    between, passed fq_sub_intact), indices grow, the group's head is always at a
    record boundary, after every claim received + dropped == the last index + 1,
    and at the end received + dropped == published (the reader gets the last one)."""
    t = T.create(path, capacity=CAP, drop=True)
    h = T.open(path)
    try:
        a = h.subscribe("a")
        n = 300000
        got, puts, rets, diags = c_sub_threads([a], [t], n, 1, 40, flags=7, delay=delay,
                                                max_n=max_n, seconds=8, pub_delay=pub_delay,
                                                lead=lead)
        d = diags[0]
        st = t.stats()
        g = t.group(t.member(a.index())["group"])
        if rets[0] == -5:
            raise AssertionError(
                "reader stuck (EMPTY until the deadline): last index %d, published %d, "
                "lag %d, dropped %d; head %d, release %d, tail %d; a record of the last "
                "claim overwritten makes fq_sub_next drop the retained rest (see "
                "test_drop_claim_partly_overwritten_keeps_the_retained_rest)"
                % (d[0], st["published"], a.lag(), a.dropped(), g["head_pos"],
                   st["release"], st["tail"]))
        assert rets[0] >= 0, (rets, d, st, g)
        assert puts == [n], (puts, st)
        recv = len(got[0])
        assert got[0][-1] == n - 1
        assert recv + a.dropped() == n, (recv, a.dropped())
        print("drop C loop max_n=%d: received %d, dropped %d, copies not intact %d, "
              "claims %d" % (max_n, recv, a.dropped(), d[3], d[4]))
        assert a.dropped() > 0, "the reader was never lapped"
    finally:
        h.close()
        t.close()


def test_drop_claim_partly_overwritten_keeps_the_retained_rest(path):
    """A claim of 10 messages of which the publisher then evicts only the first: the
    other 9 are still in the ring (retained, never overwritten).  A lapped subscriber
    skips to the oldest retained message: it must still receive messages 1..9, and
    count exactly one message dropped; with nothing left unread, its lag is 0 and
    fq_sub_begin returns EMPTY only then."""
    t = T.create(path, capacity=CAP, drop=True)
    a = t.subscribe("a")
    try:
        publish_all(t, [mk(i, 100) for i in range(10)])
        rc, c = a.begin(10)
        assert rc == 0 and c.n == 10 and (c.pos, c.end) == (0, 10 * trec(100))
        k = 10
        while t.stats()["release"] == 0:  # evict message 0 only
            assert t.put(mk(k, 100)) == 0
            k += 1
        assert t.stats()["release"] == trec(100), t.stats()
        for i in range(1, 10):  # messages 1..9 are intact in the ring
            p = i * trec(100)
            assert lib.fqt_rec_state(t.q, p) == lib.FQ_REC_COMMITTED
            assert bytes(ffi.buffer(lib.fqt_rec_data(t.q, p), 116))[16:] == mk(i, 100)
        got = []
        while True:
            m = a.next(c)
            if m is None:
                break
            if lib.fq_sub_intact(a.s, c):
                got.append(m[1])
        a.end(c)
        got += [i for i, _, _ in a.drain()]
        assert got == list(range(1, k)), "received %r of 0..%d (dropped %d, lag %d)" % (
            got, k - 1, a.dropped(), a.lag())
        assert a.dropped() == 1 and a.lag() == 0
    finally:
        t.close()

"""2. Groups: the members of a group split the messages, another group gets them all
(also at C speed with threads that block).
"""

import random

from support.cseg import CAP, lib, mk, seq_of
from support.ctopic import c_sub_threads, GROUP, MUST_EXIST, publish_all, T


# ---------------------------------------------------------------------------
# 2. groups


def test_group_members_split_and_other_group_gets_all(path):
    """Two members of group "g" split the messages (each message to exactly one of
    them, each in order); group "h" (one member) and an anonymous subscription get
    all, across wraps."""
    rng = random.Random(5)
    t = T.create(path, capacity=CAP)
    try:
        g1, g2 = t.subscribe("g", GROUP), t.subscribe("g", GROUP)
        assert g1.index() != g2.index()
        assert t.member(g1.index())["group"] == t.member(g2.index())["group"]
        h = t.subscribe("h", GROUP)
        a = t.subscribe("g")  # an anonymous one of the same name is another group
        assert len({t.member(s.index())["group"] for s in (g1, h, a)}) == 3
        readers = {"g1": g1, "g2": g2, "h": h, "a": a}
        got = {k: [] for k in readers}
        n = 0
        while n < 2500:
            rc = t.put(mk(n, rng.randrange(8, 300)))
            if rc == 0:
                n += 1
                continue
            assert rc == lib.FQ_FULL
            for k in rng.sample(sorted(readers), 4):
                for _ in range(rng.randrange(1, 4)):
                    r, msgs, red = readers[k].get(rng.randrange(1, 5))
                    if r == lib.FQ_EMPTY:
                        break
                    assert r == 0 and red == 0
                    got[k] += [seq_of(m) for _, m in msgs]
                    assert [i for i, _ in msgs] == [seq_of(m) for _, m in msgs]
        for k, s in readers.items():
            got[k] += [seq_of(m) for _, m, _ in s.drain()]
        allm = list(range(n))
        assert got["h"] == allm and got["a"] == allm
        assert got["g1"] == sorted(got["g1"]) and got["g2"] == sorted(got["g2"])
        assert sorted(got["g1"] + got["g2"]) == allm, "loss or duplicates in the group"
        assert len(got["g1"]) > 200 and len(got["g2"]) > 200
        assert all(s.lag() == 0 for s in readers.values())
        # a member leaving: the other one gets everything after
        g2.unsubscribe()
        publish_all(t, [mk(i) for i in range(n, n + 20)])
        assert [seq_of(m) for _, m, _ in g1.drain()] == list(range(n, n + 20))
        # joining later: shares the group's position
        g3 = t.subscribe("g", GROUP)
        assert t.put(mk(n + 20)) == 0
        assert g3.get() == (0, [(n + 20, mk(n + 20))], 0)
        assert g1.get()[0] == lib.FQ_EMPTY
        # MUST_EXIST: only an existing group
        rc, _, err = t.subscribe_rc("nope", GROUP | MUST_EXIST)
        assert rc == -2 and "nope" in err
        assert t.subscribe_rc("g", GROUP | MUST_EXIST)[0] == 0
    finally:
        t.close()



def test_c_loop_fan_out_and_groups_block(path):
    """At C speed: one publisher, two anonymous subscriptions (each gets all, in
    order) and a group of two members (split, exactly once), block mode."""
    t = T.create(path, capacity=16384)
    hs = [T.open(path) for _ in range(4)]
    try:
        subs = [hs[0].subscribe("a"), hs[1].subscribe("b"), hs[2].subscribe("g", GROUP),
                hs[3].subscribe("g", GROUP)]
        n = 40000
        got, puts, rets, diags = c_sub_threads(subs, [t], n, 1, 40, flags=2,
                                                groups=[0, 1, 2, 2])
        assert puts == [n], (puts, t.stats())
        assert all(r >= 0 for r in rets), (rets, diags)
        assert got[0] == list(range(n)) and got[1] == list(range(n))
        assert sorted(got[2] + got[3]) == list(range(n)), "group: loss or duplicates"
        # (no fairness between members is promised: one may take everything)
        assert all(s.dropped() == 0 and s.lag() == 0 for s in subs)
    finally:
        for h in hs:
            h.close()
        t.close()

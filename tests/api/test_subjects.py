"""Subjects on topics (issue 14): publish(subject=), subscribe(subjects=),
NATS matching, filtering before deserialization, one filter per group."""
from __future__ import annotations

import pickle

import pytest

import fastq
from fastq import _core

SMALL = 1 << 16


@pytest.fixture
def t(fastq_dir):
    with fastq.Topic("subj", capacity=SMALL) as t:
        yield t


@pytest.mark.parametrize("pattern,subject,hit", [
    ("a", "a", True),
    ("a", "b", False),
    ("a", "a.b", False),
    ("a.b", "a", False),
    ("a.*", "a.b", True),
    ("a.*", "a", False),
    ("a.*", "a.b.c", False),
    ("*", "a", True),
    ("*", "a.b", False),
    ("*.b", "a.b", True),
    ("*.*", "a.b", True),
    ("a.>", "a.b", True),
    ("a.>", "a.b.c.d", True),
    ("a.>", "a", False),
    (">", "a", True),
    (">", "a.b.c", True),
    ("orders.*.created", "orders.eu.created", True),
    ("orders.*.created", "orders.eu.deleted", False),
    ("orders.*.created", "orders.eu.x.created", False),
    ("*.>", "a", False),
    ("*.>", "a.b", True),
    ("ab", "abc", False),
    ("abc", "ab", False),
    ("a.b", "a.bc", False),
    ("é.*", "é.x", True),
])
def test_matching(pattern, subject, hit):
    assert _core.subject_matches(pattern, subject) is hit


@pytest.mark.parametrize("bad", ["", ".", "a.", ".a", "a..b", "a.>.b", ">.a", "a*", "a>",
                                 "*a", "a. b", "a\tb", "x" * 256])
def test_bad_patterns_refused(t, bad):
    with pytest.raises(ValueError):
        t.subscribe(subjects=bad)
    with pytest.raises(ValueError):
        t.subscribe(subjects=["ok", bad])


@pytest.mark.parametrize("bad", ["", "a.", "a..b", "a.*", "a.>", ">", "*", "a b"])
def test_bad_subjects_refused(t, bad):
    with pytest.raises(ValueError):
        t.publish("x", subject=bad)
    with pytest.raises(ValueError):
        t.publish_many(["x"], subject=bad)
    with pytest.raises(TypeError):
        t.publish("x", subject=b"a")


def test_empty_subject_list_refused(t):
    with pytest.raises(ValueError):
        t.subscribe(subjects=[])


def test_filter_and_delivery_subject(t):
    s = t.subscribe(subjects="orders.*.created")
    every = t.subscribe()
    t.publish("x", subject="orders.eu.created")
    t.publish("y", subject="orders.eu.deleted")
    t.publish("z")  # no subject: only subscriptions without a filter
    t.publish_many(["m1", "m2"], subject="orders.us.created")
    d = s.receive(timeout=1)
    assert (d.value, d.subject) == ("x", "orders.eu.created")
    d.ack()
    assert s.get_many(timeout=1) == ["m1", "m2"]
    with pytest.raises(fastq.Empty):
        s.get_nowait()
    got = []
    for _ in range(5):
        d = every.receive(timeout=1)
        got.append((d.value, d.subject))
        d.ack()
    assert got == [("x", "orders.eu.created"), ("y", "orders.eu.deleted"), ("z", None),
                   ("m1", "orders.us.created"), ("m2", "orders.us.created")]


def test_list_of_patterns(t):
    s = t.subscribe(subjects=["a.>", "b"])
    assert s.subjects == ("a.>", "b")
    for subj in ("a.x", "b", "b.x", "c", "a"):
        t.publish(subj, subject=subj)
    assert [s.get(timeout=1), s.get(timeout=1)] == ["a.x", "b"]
    with pytest.raises(fastq.Empty):
        s.get_nowait()


def test_non_matching_messages_are_not_deserialized(fastq_dir):
    """The filter runs before loads(): a message that does not match is never loaded."""
    loaded = []

    class Counting:
        def dumps(self, o):
            return o

        def loads(self, b):
            loaded.append(bytes(b))
            return bytes(b)

    with fastq.Topic("nl", capacity=SMALL, serializer=Counting()) as t:
        s = t.subscribe(subjects="keep")
        for i in range(50):
            t.publish(b"drop%d" % i, subject="other")
        t.publish(b"kept", subject="keep")
        t.publish_many([b"k1", b"k2"], subject="keep")
        assert s.get(timeout=1) == b"kept"
        assert s.get_many(timeout=1) == [b"k1", b"k2"]
        assert loaded == [b"kept", b"k1", b"k2"]


def test_raw_serializer_strips_the_subject(fastq_dir):
    with fastq.Topic("raw", capacity=SMALL, serializer="raw") as t:
        s = t.subscribe()
        t.publish(b"payload", subject="a.b")
        t.publish_many([b"p2"], subject="a.c")
        d = s.receive(timeout=1)
        assert (d.value, d.subject) == (b"payload", "a.b")
        d.ack()
        assert s.get(timeout=1) == b"p2"


def test_group_members_share_the_filter(t):
    g1 = t.subscribe(group="g", subjects=["a.>"])
    with pytest.raises(ValueError, match="another subject filter"):
        t.subscribe(group="g", subjects="b")
    with pytest.raises(ValueError, match="another subject filter"):
        t.subscribe(group="g")  # no filter is another filter
    g2 = t.subscribe(group="g", subjects=["a.>", "a.>"])  # the same set
    t.publish("no", subject="b")
    t.publish("yes", subject="a.x")
    got = []
    for s in (g1, g2):
        try:
            got.append(s.get_nowait())
        except fastq.Empty:
            pass
    assert got == ["yes"]
    g1.close()
    g2.close()
    # the group has no member left: the next one sets its filter
    g3 = t.subscribe(group="g", subjects="b")
    g3.close()


def test_durable_name_keeps_filter_for_its_subscribers(t):
    a = t.subscribe(name="d", subjects="x")
    with pytest.raises(ValueError):
        t.subscribe(name="d", subjects="y")
    b = t.subscribe(name="d", subjects="x")
    a.close()
    b.close()


def test_pickled_subscription_keeps_its_subjects(t):
    s = t.subscribe(group="pg", subjects="a.*")
    s2 = pickle.loads(pickle.dumps(s))
    assert s2.subjects == ("a.*",)
    t.publish("no", subject="b.a")
    t.publish("yes", subject="a.b")
    got = []
    for sub in (s, s2):
        try:
            got.append(sub.get_nowait())
        except fastq.Empty:
            pass
    assert got == ["yes"]


def test_lag_counts_every_message_not_only_matching(t):
    s = t.subscribe(subjects="a")
    t.publish("1", subject="a")
    t.publish("2", subject="b")
    assert s.lag == 2  # documented: lag counts what the group has not passed
    assert s.get(timeout=1) == "1"
    with pytest.raises(fastq.Empty):
        s.get_nowait()
    assert s.lag == 0


def test_drop_topic_filters(fastq_dir):
    with fastq.Topic("dropsubj", capacity=SMALL, overflow="drop") as t:
        s = t.subscribe(subjects="a")
        t.publish("no", subject="b")
        t.publish("yes", subject="a")
        d = s.receive(timeout=1)
        assert (d.value, d.subject) == ("yes", "a")
        d.ack()


def test_apublish_with_subject(t):
    import asyncio
    s = t.subscribe(subjects="a.*")

    async def main():
        await t.apublish("no", subject="b.x")
        await t.apublish("yes", subject="a.x")
        assert await t.apublish_many(["m1", "m2"], subject="a.y") == 2

    asyncio.run(main())
    assert s.get_many(timeout=1) == ["yes", "m1", "m2"]


def test_timeout_holds_while_only_non_matching_messages_arrive(t):
    """get(timeout=) counts its timeout from the call, not from the last message
    passed over: a stream of messages the filter skips cannot hold it forever."""
    import threading
    import time

    s = t.subscribe(subjects="wanted")
    stop = threading.Event()
    capped = []

    def publish():
        end = time.monotonic() + 20
        while not stop.is_set():
            if time.monotonic() > end:
                capped.append(True)
                return
            t.publish("x", subject="other")
            time.sleep(0.01)

    th = threading.Thread(target=publish)
    th.start()
    try:
        for call in (lambda: s.get(timeout=0.3), lambda: s.receive(timeout=0.3),
                     lambda: s.get_many(timeout=0.3)):
            with pytest.raises(fastq.Empty):
                call()
    finally:
        stop.set()
        th.join()
    assert not capped, "a call waited until the publisher gave up"

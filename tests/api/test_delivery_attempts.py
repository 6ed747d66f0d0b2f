"""Delivery.attempt, Delivery.id and nack(delay=) in one process (issue 14);
the multi-process cases (a holder killed, a nacker killed during the delay)
are in tests/mp/test_delivery_attempts.py."""
from __future__ import annotations

import time

import pytest

import fastq

SMALL = 1 << 16


@pytest.fixture
def q(fastq_dir):
    with fastq.Queue("att", capacity=SMALL) as q:
        yield q


def test_attempt_counts_each_nack_and_id_is_stable(q):
    q.put("a")
    ids = set()
    for n in range(1, 6):
        d = q.receive(timeout=1)
        assert (d.value, d.attempt, d.redelivered) == ("a", n, n > 1)
        ids.add(d.id)
        d.nack()
    d = q.receive(timeout=1)
    assert d.attempt == 6
    d.ack()
    assert len(ids) == 1


def test_id_names_the_segment_and_the_position(q):
    q.put_many(["a", "b"])
    a, b = q.receive(timeout=1), q.receive(timeout=1)
    created = q.stats()["created_ns"]
    assert a.id == f"{created:x}.{a.position:x}" and b.id == f"{created:x}.{b.position:x}"
    assert a.id != b.id
    a.ack()
    b.ack()


def test_attempt_is_kept_in_the_segment_across_handles(fastq_dir):
    """A second handle (another reader) sees the count the first one left."""
    with fastq.Queue("att2", capacity=SMALL) as q1, fastq.Queue.open("att2") as q2:
        q1.put("m")
        q1.receive(timeout=1).nack()
        d = q2.receive(timeout=1)
        assert d.attempt == 2
        d.nack()
        d = q1.receive(timeout=1)
        assert d.attempt == 3
        d.ack()


def test_get_many_give_back_counts_as_delivered(q):
    q.put_many(["a", "b"])
    d1 = q.receive(timeout=1)
    assert d1.attempt == 1
    d1.nack()
    assert q.get(timeout=1) == "a"  # a plain get takes it too (first the requeued)
    d2 = q.receive(timeout=1)
    assert (d2.value, d2.attempt) == ("b", 1)
    d2.ack()


def test_delay_validation(q):
    q.put("a")
    d = q.receive(timeout=1)
    for bad in (-1, float("nan"), 3601, float("inf")):
        with pytest.raises(ValueError):
            d.nack(delay=bad)
    with pytest.raises(ValueError):
        d.nack(requeue=False, delay=1)
    assert not d.settled
    d.nack(delay=0)  # no delay: back at once
    d = q.receive(block=False)
    assert d.attempt == 2
    d.ack()


def test_delayed_nack_lets_others_flow_past_then_comes_first(q):
    """FIFO around a delayed message: messages behind it are delivered while
    it waits; once due it is taken before the head's messages (as every
    message given back is), with its attempt count."""
    q.put_many(["a", "b", "c"])
    d = q.receive(timeout=1)
    assert d.value == "a"
    t0 = time.monotonic()
    d.nack(delay=0.3)
    for v in ("b", "c"):  # "a" is not visible: the others flow past it
        x = q.receive(block=False)
        assert (x.value, x.attempt) == (v, 1)
        x.ack()
    a = q.receive(timeout=10)  # waits for "a"
    assert time.monotonic() - t0 >= 0.3  # never before its delay
    assert (a.value, a.attempt, a.redelivered) == ("a", 2, True)
    a.nack(delay=0.1)
    q.put("d")
    time.sleep(0.2)  # "a" is due now, "d" waits at the head
    a = q.receive(timeout=10)
    assert (a.value, a.attempt) == ("a", 3)  # the due message first
    a.ack()
    d = q.receive(timeout=1)
    assert (d.value, d.attempt) == ("d", 1)
    d.ack()
    assert q.empty()


def test_delayed_message_is_not_visible_to_get_nowait(q):
    q.put("a")
    d = q.receive(timeout=1)
    d.nack(delay=3600)  # far ahead: it must stay hidden
    with pytest.raises(fastq.Empty):
        q.get_nowait()
    with pytest.raises(fastq.Empty):
        q.receive(block=False)
    assert q.unfinished() == 1  # still in the queue


def test_two_delays_come_back_in_due_order(q):
    q.put_many(["long", "short"])
    d1, d2 = q.receive(timeout=1), q.receive(timeout=1)
    t0 = time.monotonic()
    d1.nack(delay=0.6)
    d2.nack(delay=0.2)
    first = q.receive(timeout=10)
    assert first.value == "short" and time.monotonic() - t0 >= 0.2
    first.ack()
    second = q.receive(timeout=10)
    assert second.value == "long" and time.monotonic() - t0 >= 0.6
    second.ack()


def test_topic_attempts_count_nacks(fastq_dir):
    with fastq.Topic("tatt", capacity=SMALL) as t:
        s = t.subscribe()
        t.publish_many(["a", "b"])
        ids = set()
        for n in (1, 2, 3):
            d = s.receive(timeout=1)
            assert (d.value, d.attempt) == ("a", n)
            ids.add(d.id)
            d.nack()
        s.receive(timeout=1).ack()
        d = s.receive(timeout=1)
        assert (d.value, d.attempt) == ("b", 1) and d.id not in ids
        d.ack()
        with pytest.raises(ValueError, match="queue"):
            t.publish("c")
            s.receive(timeout=1).nack(delay=1)

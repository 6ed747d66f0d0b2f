"""Queue._put_attempt: a message put with its first attempt (what
fastq.bridge.Inbound does with JetStream's redelivery count).  The count is the
record's (fq_claim.attempt, kept in the segment): redeliveries after a nack or
after the holder was SIGKILLed count on from it, and a claim from the head
never mixes records put with different attempts."""
from __future__ import annotations

import os
import signal

import pytest

import fastq
from support.procs import fork, reap

SMALL = 1 << 16


@pytest.fixture
def q(fastq_dir):
    with fastq.Queue("pa", capacity=SMALL, serializer="raw", prefetch=4) as q:
        yield q


def test_first_attempt_then_one_more_per_nack(q):
    q._put_attempt(b"m", 3)
    d = q.receive(timeout=1)
    assert (d.value, d.attempt, d.redelivered) == (b"m", 3, False)
    d.nack()
    d = q.receive(timeout=1)
    assert (d.attempt, d.redelivered) == (4, True)
    d.ack()
    q.put(b"plain")  # an ordinary put after it: attempt 1 again
    d = q.receive(timeout=1)
    assert (d.value, d.attempt) == (b"plain", 1)
    d.ack()


def test_bounds(q):
    with pytest.raises(ValueError):
        q._put_attempt(b"x", 0)
    q._put_attempt(b"big", 10_000)  # saturates where the count does (256)
    d = q.receive(timeout=1)
    assert d.attempt == 256
    d.nack()
    assert q.receive(timeout=1).attempt == 256


def test_a_batch_claim_stops_where_the_attempt_changes(q):
    q.put_many([b"a", b"b"])
    q._put_attempt(b"c", 2)
    q._put_attempt(b"d", 2)
    q.put(b"e")
    got = []
    while sum(len(v) for v, _ in got) < 5:
        b = q.receive_many(10, timeout=1)
        got.append((b.values, b.attempt))
        b.ack()
    assert got == [([b"a", b"b"], 1), ([b"c", b"d"], 2), ([b"e"], 1)]


def test_get_ignores_the_attempt(q):
    q._put_attempt(b"a", 5)
    q.put(b"b")
    assert q.get_many(10, timeout=1) == [b"a"]  # a claim: one attempt
    assert q.get(timeout=1) == b"b"


def _hold_and_die(wfd):
    with fastq.Queue.open("pa", serializer="raw") as q:
        d = q.receive(timeout=10)
        os.write(wfd, b"%s %d\n" % (d.value, d.attempt))
        os.kill(os.getpid(), signal.SIGKILL)


def test_a_holder_killed_counts_on_from_the_first_attempt(q):
    q._put_attempt(b"m", 2)
    r, w = os.pipe()
    assert reap(fork(_hold_and_die, w), timeout=30) == -signal.SIGKILL
    os.close(w)
    with os.fdopen(r) as f:
        assert f.read() == "m 2\n"
    q.recover()
    d = q.receive(timeout=10)
    assert (d.value, d.attempt, d.redelivered) == (b"m", 3, True)
    d.ack()
    assert q.unfinished() == 0


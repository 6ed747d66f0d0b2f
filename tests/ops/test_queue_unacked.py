"""A queue's unacknowledged deliveries (receive() not yet acked or nacked)
and the age of the oldest, read through the real ``fastq`` console script:
exact after known traffic, and after their holder is SIGKILLed (counted
until recovery gives the messages back, then gone).

No timing assertion: an age is checked only against a bound that causality
gives (the delivery was received before the test slept)."""
from __future__ import annotations

import os
import signal
import time

import fastq
from support.cli import fastq_cli, fastq_json
from support.procs import start_py

PAUSE = 0.2


def _prometheus(name):
    """{metric sample name: value} of the segment's one-shot exposition"""
    from prometheus_client.parser import text_string_to_metric_families

    out = {}
    text = fastq_cli("stat", "--prometheus", name, check=0).stdout
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            out[s.name] = s.value
    return out


def test_queue_unacked_deliveries_counted_exactly(fastq_dir):
    q = fastq.Queue("held", serializer="raw", prefetch=7)
    for i in range(10):
        q.put(b"m%d" % i)
    s = fastq_json("stat", "held")
    assert s["unacked_deliveries"] == 0 and s["oldest_unacked_s"] is None
    first = q.receive()
    time.sleep(PAUSE)
    more = [q.receive(), q.receive_many(3), q.receive()]
    assert q.get() == b"m6"  # a get() finishes its claim: not a held delivery
    s = fastq_json("stat", "held")
    assert s["unacked_deliveries"] == 4 and s["unacked"] == 6
    assert s["oldest_unacked_s"] >= PAUSE  # the first receive() came before the sleep
    assert s == {**s, **{k: v for k, v in q.stats().to_dict().items()
                         if k in ("unacked_deliveries", "unacked")}}
    text = fastq_cli("stat", "held", check=0).stdout
    assert "unacked      6 messages, 4 deliveries, oldest " in text
    m = _prometheus("held")
    assert m["fastq_unacked_deliveries"] == 4 and m["fastq_unacked_messages"] == 6
    assert m["fastq_oldest_unacked_seconds"] >= PAUSE

    first.ack()
    more[1].nack()  # its three messages go back: one delivery less
    s = fastq_json("stat", "held")
    assert s["unacked_deliveries"] == 2 and s["unacked"] == 2
    assert s["nacked"] == 3 and s["depth"] == 6  # 8 left, 2 of them held
    for d in (more[0], more[2]):
        d.ack()
    s = fastq_json("stat", "held")
    assert s["unacked_deliveries"] == 0 and s["unacked"] == 0
    assert s["oldest_unacked_s"] is None
    assert "fastq_oldest_unacked_seconds" not in _prometheus("held")
    assert "deliveries, oldest" not in fastq_cli("stat", "held", check=0).stdout
    q.close()


def test_queue_unacked_deliveries_of_a_killed_holder_go_after_recovery(fastq_dir, procs):
    q = fastq.Queue("heldkill", serializer="raw")
    for i in range(5):
        q.put(b"k%d" % i)
    p = start_py(procs, """
import time, fastq
q = fastq.Queue.open("heldkill", serializer="raw", prefetch=3)
held = [q.receive(), q.receive_many(2)]
print("ready", flush=True)
time.sleep(600)
""")
    assert p.stdout.readline().strip() == "ready", p.stderr.read()
    mine = q.receive()  # this process's own: not the dead one's
    s = fastq_json("stat", "heldkill")
    assert s["unacked_deliveries"] == 3 and s["unacked"] == 4

    os.kill(p.pid, signal.SIGKILL)
    p.wait(timeout=60)
    s = fastq_json("stat", "heldkill")
    # dead, not yet recovered: its claims still hold their messages
    assert s["dead_processes"] == 1 and s["unacked_deliveries"] == 3 and s["unacked"] == 4

    assert q.recover()
    s = fastq_json("stat", "heldkill")
    assert s["dead_processes"] == 0 and s["recovered_gets"] == 2
    assert s["unacked_deliveries"] == 1 and s["unacked"] == 1
    assert s["oldest_unacked_s"] is not None
    assert s["depth"] == 4  # the three given back and one never taken (mine is held)
    mine.ack()
    got = sorted(q.get(timeout=10) for _ in range(4))
    assert got == sorted({b"k0", b"k1", b"k2", b"k3", b"k4"} - {mine.value})
    s = fastq_json("stat", "heldkill")
    assert s["unacked_deliveries"] == 0 and s["oldest_unacked_s"] is None
    assert s["depth"] == 0 and s["redelivered"] == 3
    q.close()

"""Time in queue (sampled), back-pressure time, and the subscriber rows'
bytes of lag and unacknowledged deliveries, read through the real ``fastq``
console script after traffic made by real processes.

No timing assertion: a wait is checked only against a bound that causality
gives (every message was committed before its producer exited, and no
consumer started before the test had slept after that exit)."""
from __future__ import annotations

import time

import fastq
from support.cli import fastq_cli, fastq_json
from support.procs import run_py, start_py

PAUSE = 0.2  # between the producer's exit and the consumers' start


def _ready(p):
    assert p.stdout.readline().strip() == "ready", p.stderr.read()


def _slow_consumer(procs, name, n):
    """a process that frees the n 200-byte records of queue name one at a time,
    started and ready"""
    p = start_py(procs, f"""
import time, fastq
q = fastq.Queue.open("{name}", serializer="raw")
print("ready", flush=True)
time.sleep(0.3)
for _ in range({n}):
    assert q.get(timeout=30) == b"y" * 200
    time.sleep(0.05)
q.close()
""")
    _ready(p)
    return p


def test_blocked_put_counts_once_with_the_time_it_waited(fastq_dir, procs):
    """A put that waits for space while a consumer frees it one message at a
    time is one back-pressure event, however often it tried again."""
    q = fastq.Queue("bp", capacity=4096, serializer="raw")
    n = 18  # records of 224 bytes: 4032 of the 4096
    for _ in range(n):
        q.put_nowait(b"y" * 200)
    before = fastq_json("stat", "bp")
    assert before["full"] == 0 and before["blocked_s"] == 0
    p = _slow_consumer(procs, "bp", n)
    q.put(b"z" * 1500, timeout=60)  # needs about 7 of the 200-byte records freed
    p.wait(60)
    assert p.returncode == 0, p.stderr.read()
    s = fastq_json("stat", "bp")
    assert s["full"] == 1 and s["blocked_s"] > 0
    assert s["puts"] == n + 1 and s["depth"] == 1 and q.get() == b"z" * 1500
    text = fastq_cli("stat", "bp", check=0).stdout
    assert "ring full    1 puts, blocked " in text
    q.close()


def test_queue_time_in_queue_is_sampled_at_each_point(fastq_dir):
    """1000 records of 128 bytes in a 128 KiB ring cross the sample points
    at 0, 8 KiB, ... 120 KiB: 16 samples, each a message that waited at
    least PAUSE (committed before its producer exited, taken after)."""
    fastq.Queue("tiq", capacity=1 << 17, serializer="raw").close()
    run_py("""
import fastq
q = fastq.Queue.open("tiq", serializer="raw")
for i in range(1000):
    q.put(i.to_bytes(4, "little") * 28)
q.close()
""")
    time.sleep(PAUSE)
    run_py("""
import fastq
q = fastq.Queue.open("tiq", serializer="raw")
for i in range(1000):
    assert q.get_nowait() == i.to_bytes(4, "little") * 28
q.close()
""")
    s = fastq_json("stat", "tiq")
    assert s["puts"] == s["gets"] == 1000 and s["depth"] == 0
    assert s["wait_samples"] == 16
    assert PAUSE <= s["wait_p50_s"] <= s["wait_p99_s"] <= s["wait_max_s"]
    assert s["wait_window_s"] >= 0
    assert fastq.Queue.open("tiq").stats().wait_samples == 16
    text = fastq_cli("stat", "tiq", check=0).stdout
    assert "time in queue" in text and "16 samples" in text


def test_queue_time_in_queue_sampled_at_each_point_across_lanes(fastq_dir):
    """The hot path's sample test compares a claim's end with a mark kept
    per lane (fq_sample_due): with four producer threads sharing a handle
    (puts of several lanes, committing out of claim order) and a consumer
    holding up to six receive()s (gets of several lanes), each of the 16
    sample points is still measured once."""
    fastq.Queue("tiql", capacity=1 << 17, serializer="raw").close()
    run_py("""
import threading, fastq
q = fastq.Queue.open("tiql", serializer="raw")
def put(k):
    for i in range(250):
        q.put((k * 250 + i).to_bytes(4, "little") * 28)
ts = [threading.Thread(target=put, args=(k,)) for k in range(4)]
for t in ts: t.start()
for t in ts: t.join()
q.close()
""")
    time.sleep(PAUSE)
    run_py("""
import collections, fastq
q = fastq.Queue.open("tiql", serializer="raw", prefetch=7)
held, seen = collections.deque(), set()
for i in range(1000):
    d = q.receive(block=False)
    seen.add(d.value)
    held.append(d)
    if len(held) == 6 or i % 7 == 0:
        held.popleft().ack()
while held:
    held.pop().ack()
assert len(seen) == 1000
q.close()
""")
    s = fastq_json("stat", "tiql")
    assert s["puts"] == s["gets"] == 1000 and s["depth"] == 0
    assert s["wait_samples"] == 16
    assert PAUSE <= s["wait_p50_s"] <= s["wait_max_s"]


def test_topic_time_in_queue_per_subscriber(fastq_dir, procs):
    """Each durable subscriber's row has its own group's samples: both read
    the same 16 sample points."""
    t = fastq.Topic("tiqt", capacity=1 << 17, serializer="raw")
    subs = [start_py(procs, f"""
import sys, fastq
t = fastq.Topic.open("tiqt", serializer="raw")
s = t.subscribe(name="{name}")
print("ready", flush=True)
import time
while t.stats().puts < 1000:
    time.sleep(0.01)
time.sleep({PAUSE})
for i in range(1000):
    assert s.get_nowait() == i.to_bytes(4, "little") * 24
print("done", flush=True)
""") for name in ("a", "b")]
    for p in subs:
        _ready(p)
    run_py("""
import fastq
t = fastq.Topic.open("tiqt", serializer="raw")
for i in range(1000):
    t.publish(i.to_bytes(4, "little") * 24)  # 96 + 16 prefix + 16 header: 128 bytes
t.close()
""")
    for p in subs:
        assert p.stdout.readline().strip() == "done", p.stderr.read()
        p.wait(30)
    s = fastq_json("stat", "tiqt")
    rows = {r["name"]: r for r in s["subscribers"]}
    assert set(rows) == {"a", "b"}
    for r in rows.values():
        assert r["lag"] == 0 and r["lag_bytes"] == 0  # each read all 1000, in order
        assert r["wait_samples"] == 16 and PAUSE <= r["wait_p50_s"] <= r["wait_max_s"]
    assert s["wait_samples"] == 32
    t.close()


def test_subscriber_lag_bytes_and_unacked(fastq_dir):
    t = fastq.Topic("lagb", serializer="raw")
    fast = t.subscribe(name="fast")
    slow = t.subscribe(name="slow")
    for i in range(5):
        t.publish(b"p" * 100)  # 100 + 16 prefix + 16 header, to 16: 144 bytes
    d = fast.receive()  # delivered, not acknowledged
    slow.get()
    s = fastq_json("stat", "lagb")
    rows = {r["name"]: r for r in s["subscribers"]}
    assert rows["slow"]["lag"] == 4 and rows["slow"]["lag_bytes"] == 4 * 144
    assert rows["slow"]["unacked"] == 0
    assert rows["fast"]["unacked"] == 1 and rows["fast"]["lag_bytes"] == 4 * 144
    assert rows["fast"]["oldest_unacked_s"] >= 0 and rows["slow"]["oldest_unacked_s"] is None
    d.ack()
    rows = {r["name"]: r for r in fastq_json("stat", "lagb")["subscribers"]}
    assert rows["fast"]["unacked"] == 0 and rows["fast"]["oldest_unacked_s"] is None
    t.close()


def test_awaited_put_counts_once_with_the_time_it_awaited(fastq_dir, procs):
    """aput retries put(block=False) at each wake-up: still one event."""
    import asyncio

    q = fastq.Queue("abp", capacity=4096, serializer="raw")
    n = 18
    for _ in range(n):
        q.put_nowait(b"y" * 200)
    p = _slow_consumer(procs, "abp", n)
    asyncio.run(asyncio.wait_for(q.aput(b"z" * 1500), 60))
    p.wait(60)
    assert p.returncode == 0, p.stderr.read()
    s = fastq_json("stat", "abp")
    assert s["full"] == 1 and s["blocked_s"] > 0 and s["puts"] == n + 1
    assert not q.full_retrying
    q.close()

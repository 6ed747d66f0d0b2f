"""fastq.bridge against a real nats-server with JetStream (tests/support/natsserver.py):
round trips, a bridge killed with SIGKILL, the server restarted, SIGTERM, the CLI."""
from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time

import pytest

import fastq

from support.natsserver import _stream, stream_count, stream_payloads
from support.waiting import wait_for


def _bridge():
    from fastq import bridge  # noqa: PLC0415 - needs nats-py; the fixture checked it
    return bridge


def drain(q, n, timeout=60.0):
    got = []
    deadline = time.monotonic() + timeout
    while len(got) < n and time.monotonic() < deadline:
        try:
            got += q.get_many(timeout=0.5)
        except fastq.Empty:
            pass
    return got


def payloads(n, size=0):
    return [(b"%08d" % i).ljust(size, b".") for i in range(n)]


def test_queue_round_trip_message_by_message(nats_server, tmp_path):
    """queue -> Outbound -> JetStream -> Inbound -> queue: all, in order, once."""
    bridge = _bridge()
    src = fastq.Queue(str(tmp_path / "src"), serializer="raw")
    dst = fastq.Queue(str(tmp_path / "dst"), serializer="raw")
    out = bridge.Outbound(src, "jobs.a", servers=nats_server.url, stream="JOBS").start()
    inb = bridge.Inbound("jobs.a", dst, durable="far", servers=nats_server.url,
                         stream="JOBS", batch=16).start()
    try:
        want = payloads(300)
        got = []
        for p in want:  # one at a time: each crosses before the next is put
            src.put(p)
            got.append(dst.get(timeout=30))
        assert got == want
        # and a burst
        burst = payloads(3000, 64)
        src.put_many(burst)
        got = drain(dst, len(burst))
        assert got == burst
        with pytest.raises(fastq.Empty):
            dst.get(timeout=0.3)
    finally:
        out.stop()
        inb.stop()
    so, si = out.stats(), inb.stats()
    assert so.forwarded == so.acked == 3300 and so.duplicates == 0
    assert si.forwarded == si.acked == 3300
    assert stream_payloads(nats_server.url, "JOBS") == want + burst
    assert src.unacked() == 0 and src.qsize() == 0


def test_topic_round_trip_with_pickled_values(nats_server, tmp_path):
    """A topic through a durable subscription to a topic at the far end;
    producers and consumers keep their pickle serializer."""
    bridge = _bridge()
    here = fastq.Topic(str(tmp_path / "here"))
    there = fastq.Topic(str(tmp_path / "there"))
    sub = there.subscribe()
    raw_here = fastq.Topic.open(str(tmp_path / "here"), serializer="raw")
    out = bridge.Outbound(raw_here.subscribe("earliest", name="to-nats", prefetch=8),
                          "ticks.x", servers=nats_server.url, stream="TICKS").start()
    inb = bridge.Inbound("ticks.>", fastq.Topic.open(str(tmp_path / "there"), serializer="raw"),
                         durable="far", servers=nats_server.url, stream="TICKS").start()
    try:
        want = [{"i": i, "px": i * 0.5} for i in range(500)]
        here.publish_many(want)
        got = [sub.get(timeout=30) for _ in want]
        assert got == want
    finally:
        out.stop()
        inb.stop()


def test_outbound_refuses_a_pickle_handle(tmp_path):
    pytest.importorskip("nats")
    bridge = _bridge()
    with pytest.raises(ValueError, match="serializer='raw'"):
        bridge.Outbound(fastq.Queue(str(tmp_path / "q")), "x")


OUTBOUND_SCRIPT = """
import dataclasses, json, signal, sys, threading, fastq
from fastq import bridge
crash = sys.argv[3] if len(sys.argv) > 3 else ""
if crash:
    point, n = crash.split(":")
    bridge._base._CRASH_AT = (point, int(n))  # the crash points (fastq/bridge/_base.py)
# the handler before the bridge starts: a bridge thread that drains the queue at
# once could otherwise hold the main thread off until the test's SIGTERM came
stop = threading.Event()
signal.signal(signal.SIGTERM, lambda *a: stop.set())
q = fastq.Queue.open(sys.argv[1], serializer="raw")
b = bridge.Outbound(q, "jobs.k", servers=sys.argv[2], stream="JOBS", ack_timeout=2).start()
while not stop.wait(0.2):
    pass
b.stop()
print(json.dumps(dataclasses.asdict(b.stats())))
"""


def _catches(pid, sig):
    """does process pid have a handler for sig (SigCgt of /proc/pid/status)?"""
    with open("/proc/%d/status" % pid) as f:
        for line in f:
            if line.startswith("SigCgt:"):
                return bool(int(line.split()[1], 16) >> (sig - 1) & 1)
    return False


def _outbound_proc(procs, child_env, qpath, url, crash=""):
    return procs.add(subprocess.Popen(
        [sys.executable, "-c", OUTBOUND_SCRIPT, qpath, url, crash], env=child_env(),
        stdout=subprocess.PIPE, stderr=subprocess.PIPE))


def test_outbound_crash_after_publish_ack_no_duplicate(nats_server, tmp_path, procs, child_env):
    """The bridge dies (os._exit) right after JetStream acked a publish and
    before the local ack: the restarted bridge gets the message again from
    the queue, republishes it under the same Nats-Msg-Id, and the stream
    keeps one copy."""
    qpath = str(tmp_path / "q")
    q = fastq.Queue(qpath, serializer="raw")
    want = payloads(200)
    q.put_many(want)
    p = _outbound_proc(procs, child_env, qpath, nats_server.url, "confirmed:50")
    assert p.wait(60) == 9, p.stderr.read()
    q.recover()
    stored = stream_payloads(nats_server.url, "JOBS")
    assert len(stored) >= 50 and stored == want[:len(stored)]
    left = q.qsize()  # message 50 was stored but not acked here (nor, maybe, some before)
    assert left >= 200 - 49 and q.unacked() == 0
    p = _outbound_proc(procs, child_env, qpath, nats_server.url)
    wait_for(lambda: q.qsize() == 0 and q.unacked() == 0, timeout=60, what="the queue to drain")
    wait_for(lambda: stream_count(nats_server.url, "JOBS") >= 200, timeout=60, what="200 stored")
    p.send_signal(signal.SIGTERM)
    stdout, stderr = p.communicate(timeout=30)
    assert p.returncode == 0, stderr
    stats = json.loads(stdout)
    # every message stored but not acked locally before the crash (the 50th
    # and those around it) came back and was dropped as a duplicate
    assert stats["duplicates"] == len(stored) - (200 - left) >= 1
    assert stats["redelivered"] >= stats["duplicates"] and stats["acked"] == left
    assert stream_payloads(nats_server.url, "JOBS") == want


@pytest.mark.slow
def test_outbound_kill9_again_and_again(nats_server, tmp_path, procs, child_env):
    """SIGKILL the bridge at arbitrary moments mid-stream, restart it, again
    and again: the stream ends with every message once, in order."""
    qpath = str(tmp_path / "q")
    q = fastq.Queue(qpath, 1 << 22, serializer="raw")
    n = 20000
    want = payloads(n, 64)
    q.put_many(want)
    kills = 0
    last = -1
    for i in range(8):
        p = _outbound_proc(procs, child_env, qpath, nats_server.url)
        # let it make some progress (the stream grows), then kill it
        base = stream_count(nats_server.url, "JOBS") if i else 0
        wait_for(lambda: q.qsize() < n - base - 200 or q.qsize() == 0, timeout=60, what="progress")
        time.sleep(0.01 * i)
        p.kill()
        p.wait()
        kills += 1
        q.recover()
        stored = stream_count(nats_server.url, "JOBS")
        assert stored >= last
        last = stored
        if q.qsize() == 0 and q.unacked() == 0:
            break
    p = _outbound_proc(procs, child_env, qpath, nats_server.url)
    wait_for(lambda: q.qsize() == 0 and q.unacked() == 0, timeout=60, what="the queue to drain")
    wait_for(lambda: stream_count(nats_server.url, "JOBS") >= n, timeout=60, what="all stored")
    # the queue may have been drained by the killed bridges already: wait until this
    # one has its handler, or the SIGTERM lands while it is still importing (-15)
    wait_for(lambda: _catches(p.pid, signal.SIGTERM), timeout=60, what="the SIGTERM handler")
    p.send_signal(signal.SIGTERM)
    assert p.wait(30) == 0
    assert kills >= 2
    assert stream_payloads(nats_server.url, "JOBS") == want


def test_server_restart_bridges_reconnect_and_resume(nats_server, tmp_path):
    """Stop the server mid-stream and start it again (same store): both
    bridges reconnect by themselves; everything arrives, once, in order."""
    bridge = _bridge()
    src = fastq.Queue(str(tmp_path / "src"), 1 << 22, serializer="raw")
    dst = fastq.Queue(str(tmp_path / "dst"), 1 << 22, serializer="raw")
    out = bridge.Outbound(src, "jobs.r", servers=nats_server.url, stream="JOBS",
                          ack_timeout=2, backoff=(0.05, 0.5)).start()
    inb = bridge.Inbound("jobs.r", dst, durable="far", servers=nats_server.url, stream="JOBS",
                         ack_timeout=2, backoff=(0.05, 0.5)).start()
    try:
        first, second = payloads(2000), payloads(4000)[2000:]
        src.put_many(first)
        got = drain(dst, 500)
        nats_server.stop()
        src.put_many(second)  # taken by the bridge while the server is gone
        time.sleep(0.5)
        nats_server.start()
        got += drain(dst, 4000 - len(got))
        assert got == first + second
        with pytest.raises(fastq.Empty):
            dst.get(timeout=0.5)
    finally:
        out.stop()
        inb.stop()
    assert out.stats().reconnects >= 1 and inb.stats().reconnects >= 1
    assert out.stats().errors >= 1
    assert stream_payloads(nats_server.url, "JOBS") == first + second


def test_inbound_backpressure_from_a_full_local_queue(nats_server, tmp_path):
    """A small local queue nobody reads: the bridge stops fetching (a batch
    waits at most) instead of buffering the stream; reading it lets the rest in."""
    bridge = _bridge()

    async def fill():
        import nats  # noqa: PLC0415
        nc = await nats.connect(nats_server.url)
        js = nc.jetstream()
        await bridge.ensure_stream(js, "BIG", ["big.>"])
        for p in payloads(2000, 200):
            await js.publish("big.x", p)
        await nc.close()
    asyncio.run(fill())
    dst = fastq.Queue(str(tmp_path / "dst"), 8192, serializer="raw")
    inb = bridge.Inbound("big.>", dst, durable="slow", servers=nats_server.url, stream="BIG",
                         batch=10).start()
    try:
        wait_for(lambda: dst.full() or inb.stats().forwarded >= 30, timeout=60, what="the queue to fill")
        time.sleep(1.0)
        s = inb.stats()
        held = dst.qsize()
        assert s.forwarded == held < 2000 and s.acked <= held

        async def consumer(js):
            return await js.consumer_info("BIG", "slow")
        ci = _stream(nats_server.url, consumer)
        # JetStream still holds the rest: the bridge has taken one batch at most
        # beyond what it acked, and has not buffered the stream
        assert ci.num_ack_pending <= 10
        assert ci.num_pending >= 2000 - held - 10
        got = drain(dst, 2000)
        assert got == payloads(2000, 200)
    finally:
        inb.stop()


def test_cli_sigterm_clean_shutdown(nats_server, tmp_path, procs, child_env):
    """`fastq bridge out` and `fastq bridge in` through the console script:
    messages cross; SIGTERM stops both with exit status 0 and their counters."""
    exe = os.path.join(os.path.dirname(sys.executable), "fastq")
    if not os.path.exists(exe):
        exe = None
    cmd = [exe] if exe else [sys.executable, "-m", "fastq"]
    src, dst = str(tmp_path / "src"), str(tmp_path / "dst")
    qs = fastq.Queue(src)  # pickle on both ends: the bridge forwards the bytes
    qd = fastq.Queue(dst)
    out = procs.add(subprocess.Popen(
        cmd + ["bridge", "out", "--queue", src, "--subject", "cli.x", "--stream", "CLI",
               "--server", nats_server.url], env=child_env(), stdout=subprocess.PIPE,
        stderr=subprocess.PIPE, text=True))
    cfg = tmp_path / "in.json"
    cfg.write_text(json.dumps({"servers": [nats_server.url], "bridges": [
        {"direction": "in", "subject": "cli.>", "durable": "cli", "queue": dst,
         "stream": "CLI", "create_stream": True}]}))
    inb = procs.add(subprocess.Popen(cmd + ["bridge", "--config", str(cfg)], env=child_env(),
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    want = [{"n": i} for i in range(100)]
    qs.put_many(want)
    assert [qd.get(timeout=60) for _ in want] == want
    for p in (out, inb):
        p.send_signal(signal.SIGTERM)
    for p, direction in ((out, "out"), (inb, "in")):
        stdout, stderr = p.communicate(timeout=30)
        assert p.returncode == 0, stderr
        row = json.loads(stdout.strip().splitlines()[-1])
        assert row["direction"] == direction and row["forwarded"] == 100 == row["acked"]
    assert qs.unacked() == 0 and qs.qsize() == 0


def test_bridge_waits_for_a_server_not_up_yet(nats_server, tmp_path):
    """Started before the server: the bridge retries with backoff (errors
    counted) and forwards once the server is there."""
    bridge = _bridge()
    nats_server.stop()
    src = fastq.Queue(str(tmp_path / "src"), serializer="raw")
    src.put_many(payloads(50))
    out = bridge.Outbound(src, "late.x", servers=nats_server.url, stream="LATE",
                          backoff=(0.02, 0.2)).start()
    try:
        wait_for(lambda: out.stats().errors >= 3, timeout=60, what="failed attempts")
        assert out.stats().acked == 0 and not out.connected.is_set()
        nats_server.start()
        wait_for(lambda: out.stats().acked == 50, timeout=60, what="forwarding after the server came")
    finally:
        out.stop()
    assert stream_payloads(nats_server.url, "LATE") == payloads(50)
    assert src.qsize() == 0 and src.unacked() == 0


INBOUND_SCRIPT = """
import sys, fastq
from fastq import bridge
point, n = sys.argv[3].split(":")
bridge._base._CRASH_AT = (point, int(n))
q = fastq.Queue.open(sys.argv[1], serializer="raw")
bridge.Inbound("in.k", q, durable="k", servers=sys.argv[2], stream="INK", batch=10,
               ack_wait=1).run()
"""


def test_inbound_crash_between_put_and_ack(nats_server, tmp_path, procs, child_env):
    """The inbound bridge dies after putting a batch locally and before acking
    it: nothing is lost; what comes again is that one batch at most, and the
    restarted bridge counts it as redelivered."""
    bridge = _bridge()
    want = payloads(100)

    async def fill(js):
        await bridge.ensure_stream(js, "INK", ["in.k"])
        for p in want:
            await js.publish("in.k", p)
    _stream(nats_server.url, fill)
    qpath = str(tmp_path / "q")
    q = fastq.Queue(qpath, serializer="raw")
    p = procs.add(subprocess.Popen([sys.executable, "-c", INBOUND_SCRIPT, qpath,
                                    nats_server.url, "committed:3"], env=child_env(),
                                   stderr=subprocess.PIPE))
    assert p.wait(60) == 9, p.stderr.read()
    first = drain(q, 30, timeout=5)
    assert first == want[:30]  # three batches of 10 put, the third not acked
    inb = bridge.Inbound("in.k", q, durable="k", servers=nats_server.url, stream="INK",
                         batch=10).start()
    try:
        rest = drain(q, 80)
        wait_for(lambda: inb.stats().acked >= 80, timeout=60, what="the rest acked")
    finally:
        inb.stop()
    # the unacked batch again (when ack_wait ran out: not necessarily first),
    # and the others once
    assert sorted(rest) == want[20:] and q.qsize() == 0
    assert inb.stats().redelivered == 10 and inb.stats().acked == 80


def test_a_local_failure_stops_the_bridge(nats_server, tmp_path):
    """A local call that fails (here: the queue handle closed under the
    bridge) stops it with the error, instead of reconnecting forever."""
    bridge = _bridge()
    src = fastq.Queue(str(tmp_path / "src"), serializer="raw")
    out = bridge.Outbound(src, "fail.x", servers=nats_server.url, stream="FAIL").start()
    assert out.connected.wait(30)
    src.close()
    out._thread.join(30)
    assert not out._thread.is_alive()
    assert isinstance(out.error, ValueError), out.error
    assert out.stats().errors == 1 and out.stats().reconnects == 0
    with pytest.raises(ValueError):
        out.run()  # run() raises it (again, at once: the bridge is stopped)

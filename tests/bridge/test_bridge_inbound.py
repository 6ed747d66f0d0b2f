"""fastq.bridge.Inbound against a real nats-server: JetStream's redelivery
count carried into the local delivery's attempt, and messages the bridge cannot
put locally (their subject is not a valid fastq subject) skipped, counted and
terminated on JetStream instead of stopping the bridge."""
from __future__ import annotations

import time

import fastq

from support.natsserver import _stream
from support.waiting import wait_for


def _bridge():
    from fastq import bridge  # noqa: PLC0415 - needs nats-py; the fixture checked it
    return bridge


def _nak_once(url, stream, subject, durable, payloads):
    """Publish payloads, then fetch each once through the durable pull
    consumer Inbound will use and nak it: JetStream delivers them again
    with num_delivered == 2."""
    bridge = _bridge()

    async def go(js):
        from nats.js import api  # noqa: PLC0415
        await bridge.ensure_stream(js, stream, [subject])
        for p in payloads:
            await js.publish(subject, p)
        sub = await js.pull_subscribe(subject, durable=durable, stream=stream,
                                      config=api.ConsumerConfig(ack_wait=30))
        got = []
        while len(got) < len(payloads):
            got += await sub.fetch(len(payloads) - len(got), timeout=5)
        assert [m.metadata.num_delivered for m in got] == [1] * len(payloads)
        for m in got:
            await m.nak()
    _stream(url, go)


def test_redelivery_count_becomes_the_local_attempt(nats_server, tmp_path):
    """Delivered twice by JetStream (nak'd once): attempt 2 locally, and 3
    after a local nack; a fresh message after them: attempt 1."""
    bridge = _bridge()
    _nak_once(nats_server.url, "ATT", "att.x", "far", [b"m0", b"m1"])

    async def more(js):
        await js.publish("att.x", b"fresh")
    _stream(nats_server.url, more)
    q = fastq.Queue(str(tmp_path / "q"), serializer="raw")
    inb = bridge.Inbound("att.x", q, durable="far", servers=nats_server.url,
                         stream="ATT", batch=8).start()
    try:
        got = []
        for _ in range(3):
            d = q.receive(timeout=30)
            got.append((d.value, d.attempt, d.redelivered))
            if d.value == b"m0":
                d.nack()
                d = q.receive(timeout=30)
                got.append((d.value, d.attempt, d.redelivered))
            d.ack()
        wait_for(lambda: inb.stats().acked >= 3, timeout=30, what="the bridge acked all")
    finally:
        inb.stop()
    assert got == [(b"m0", 2, False), (b"m0", 3, True), (b"m1", 2, False), (b"fresh", 1, False)]
    assert inb.stats().redelivered == 2 and inb.stats().forwarded == 3
    assert q.unfinished() == 0


def test_into_a_topic_the_attempt_starts_at_1(nats_server, tmp_path):
    """A topic keeps attempts per subscription, not per message: a message
    JetStream redelivered arrives in a topic with attempt 1 (documented)."""
    bridge = _bridge()
    _nak_once(nats_server.url, "ATT", "att.t", "far", [b"t0"])
    t = fastq.Topic(str(tmp_path / "t"), serializer="raw")
    sub = t.subscribe("earliest", name="s")
    inb = bridge.Inbound("att.t", t, durable="far", servers=nats_server.url,
                         stream="ATT").start()
    try:
        d = sub.receive(timeout=30)
        assert (d.value, d.attempt) == (b"t0", 1)
        d.ack()
        wait_for(lambda: inb.stats().acked >= 1, timeout=30, what="the bridge acked it")
    finally:
        inb.stop()
    assert inb.stats().redelivered == 1


def test_a_message_that_cannot_be_put_is_terminated_and_skipped(nats_server, tmp_path, caplog):
    """A JetStream subject longer than a fastq subject may be (255 bytes) and
    a payload larger than the topic's max_message: each is counted, logged
    and terminated on JetStream (never redelivered); the messages around
    them arrive, in order, and the bridge keeps running."""
    bridge = _bridge()
    long_subject = "bad." + "x" * 300
    big = b"B" * 5000
    sent = [("bad.a", b"0"), (long_subject, b"1"), ("bad.b", b"2"), ("bad.c", big),
            ("bad.d", b"3")]

    async def fill(js):
        await bridge.ensure_stream(js, "BAD", ["bad.>"])
        for subj, p in sent:
            await js.publish(subj, p)
    _stream(nats_server.url, fill)
    t = fastq.Topic(str(tmp_path / "t"), capacity=1 << 14, max_message=4096, serializer="raw")
    sub = t.subscribe("earliest", name="s")
    inb = bridge.Inbound("bad.>", t, durable="far", servers=nats_server.url, stream="BAD",
                         batch=2, ack_wait=1.0).start()
    try:
        got = []
        for _ in range(3):
            d = sub.receive(timeout=30)
            got.append((d.subject, d.value))
            d.ack()
        wait_for(lambda: inb.stats().acked + inb.stats().rejected >= 5, timeout=30,
                 what="every message settled")
        assert inb.error is None and inb._thread.is_alive()
        time.sleep(1.5)  # past ack_wait: a message left unacked would come again
    finally:
        inb.stop()
    assert got == [("a", b"0"), ("b", b"2"), ("d", b"3")]
    st = inb.stats()
    assert (st.forwarded, st.acked, st.rejected, st.redelivered) == (3, 3, 2, 0)
    assert "subject" in st.last_error or "large" in st.last_error.lower()

    async def pending(js):
        ci = await js.consumer_info("BAD", "far")
        return ci.num_ack_pending, ci.num_redelivered, ci.num_pending
    assert _stream(nats_server.url, pending) == (0, 0, 0)
    logged = [r.getMessage() for r in caplog.records if r.name == "fastq.bridge"]
    assert len(logged) == 2 and all("BAD" in m for m in logged), logged


def test_a_stalled_server_neither_loses_nor_duplicates_inbound(nats_server, tmp_path):
    """The server stops answering (SIGSTOP) while the inbound bridge fetches
    and double-acks: a confirmation overdue fails the connection after
    ack_timeout; once the server runs again, what was put but not confirmed
    comes back (ack_wait), is recognised and only acked: every message is in
    the local queue exactly once.  (Stalled while a fetch waits, no error:
    the fetch times out and is repeated.)"""
    import os
    import signal

    bridge = _bridge()
    want = [b"%06d" % i for i in range(20000)]

    async def fill(js):
        await bridge.ensure_stream(js, "STALLIN", ["stallin.x"])
        for p in want:
            await js.publish_async("stallin.x", p)
        await js.publish_async_completed()
    _stream(nats_server.url, fill)
    async def pending(js):
        ci = await js.consumer_info("STALLIN", "far")
        return ci.num_ack_pending, ci.num_pending

    q = fastq.Queue(str(tmp_path / "q"), 1 << 22, serializer="raw")
    inb = bridge.Inbound("stallin.x", q, durable="far", servers=nats_server.url, stream="STALLIN",
                         batch=64, ack_wait=2.0, ack_timeout=0.5, backoff=(0.05, 0.2),
                         connect_options={"connect_timeout": 0.5}).start()
    try:
        wait_for(lambda: inb.stats().acked > 0, timeout=30, what="some acks")
        os.kill(nats_server.proc.pid, signal.SIGSTOP)
        try:
            stalled_at = inb.stats().acked
            time.sleep(1.5)  # beyond ack_timeout: an ack in flight is overdue
        finally:
            os.kill(nats_server.proc.pid, signal.SIGCONT)
        wait_for(lambda: q.qsize() >= len(want), timeout=60, what="every message put")
        # settled on JetStream: nothing pending, nothing unacked (the acks of
        # the batch whose confirmation was overdue, processed when the server
        # resumed or not, are sent again by the next connection: counted)
        wait_for(lambda: _stream(nats_server.url, pending) == (0, 0), timeout=60,
                 what="every message acked on JetStream", step=0.2)
    finally:
        inb.stop()
    got = []
    while q.qsize():
        got += q.get_many()
    assert sorted(got) == want  # once each (redeliveries may come after later messages)
    st = inb.stats()
    assert stalled_at < len(want), "the stall came after the end: make the stream longer"
    assert inb.error is None and st.forwarded == len(want)
    assert st.acked == len(want)


def test_acked_counts_a_batch_whose_confirmations_were_overdue(nats_server, tmp_path):
    """The bridge sends a batch's acks to a stopped server (SIGSTOP) and its
    wait for their confirmations times out: the connection fails.  When the
    server runs again it processes those acks (they were in its socket), so
    JetStream never redelivers the batch; the new connection must still learn
    that they were acked: ``acked`` ends equal to the messages put, each
    once."""
    import os
    import signal

    bridge = _bridge()
    want = [b"m%d" % i for i in range(10)]

    async def fill(js):
        await bridge.ensure_stream(js, "OVERDUE", ["overdue.x"])
        for p in want:
            await js.publish("overdue.x", p)
    _stream(nats_server.url, fill)

    async def pending(js):
        from nats.js.errors import NotFoundError  # noqa: PLC0415
        try:
            ci = await js.consumer_info("OVERDUE", "far")
        except NotFoundError:  # the bridge has not created it yet
            return None
        return ci.num_ack_pending, ci.num_pending, ci.num_redelivered

    q = fastq.Queue(str(tmp_path / "q"), 4096, serializer="raw")
    fillers = 0
    while True:  # the local queue full: the bridge's batch waits to be put
        try:
            q.put(b"filler", block=False)
        except fastq.Full:
            break
        fillers += 1
    inb = bridge.Inbound("overdue.x", q, durable="far", servers=nats_server.url,
                         stream="OVERDUE", batch=len(want), ack_wait=30.0, ack_timeout=0.5,
                         backoff=(0.05, 0.2), connect_options={"connect_timeout": 0.5}).start()
    try:
        wait_for(lambda: _stream(nats_server.url, pending) == (len(want), 0, 0), timeout=30,
                 what="the batch fetched", step=0.05)
        os.kill(nats_server.proc.pid, signal.SIGSTOP)
        try:
            assert q.get_many(fillers) == [b"filler"] * fillers  # room: the batch is put
            wait_for(lambda: q.qsize() == len(want), timeout=30, what="the batch put")
            wait_for(lambda: inb.stats().errors > 0, timeout=30, what="the ack timeout")
        finally:
            os.kill(nats_server.proc.pid, signal.SIGCONT)
        wait_for(lambda: _stream(nats_server.url, pending) == (0, 0, 0), timeout=30,
                 what="the batch acked on JetStream, never redelivered", step=0.05)
        wait_for(lambda: inb.stats().acked == len(want), timeout=10,
                 what=f"acked == {len(want)}", step=0.05)
    finally:
        inb.stop()
    assert q.get_many(len(want) + 1) == want
    st = inb.stats()
    assert (st.forwarded, st.acked, st.redelivered, st.duplicates) == (len(want), len(want), 0, 0)
    assert inb.error is None

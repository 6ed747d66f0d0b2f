"""fastq.bridge.Outbound's own publish pipeline (publishes with a reply inbox,
acks settled oldest first) against a real nats-server: a publish no stream
takes is an error the bridge retries, without acking anything locally."""
from __future__ import annotations

import fastq

from support.natsserver import _stream, stream_payloads
from support.waiting import wait_for


def _bridge():
    from fastq import bridge  # noqa: PLC0415 - needs nats-py; the fixture checked it
    return bridge


def test_a_publish_no_stream_takes_is_retried_until_one_does(nats_server, tmp_path):
    bridge = _bridge()
    src = fastq.Queue(str(tmp_path / "src"), serializer="raw")
    want = [b"m%d" % i for i in range(10)]
    src.put_many(want)
    out = bridge.Outbound(src, "nostream.x", servers=nats_server.url,
                          backoff=(0.05, 0.2)).start()
    try:
        wait_for(lambda: out.stats().errors >= 2, timeout=30, what="failed publishes")
        st = out.stats()
        assert "no JetStream stream took the publish" in st.last_error, st
        assert st.acked == 0 and src.unfinished() == 10  # nothing settled locally
        assert out.error is None  # a failure on the server's side: retried, not fatal

        async def create(js):
            await bridge.ensure_stream(js, "NOSTREAM", ["nostream.x"])
        _stream(nats_server.url, create)
        wait_for(lambda: out.stats().acked == 10, timeout=30, what="all acked once a stream exists")
    finally:
        out.stop()
    assert stream_payloads(nats_server.url, "NOSTREAM") == want
    assert src.unfinished() == 0 and out.stats().duplicates == 0


def test_a_message_larger_than_max_payload_is_dropped_not_stuck(nats_server, tmp_path, caplog):
    """A local message larger than the server's max_payload (1 MiB by
    default) can never be published: the bridge logs it, counts it
    (rejected), acks it locally and goes on; before, every publish of it
    raised MaxPayloadError and the bridge reconnected forever, the messages
    after it never crossing."""
    bridge = _bridge()
    src = fastq.Queue(str(tmp_path / "src"), 1 << 23, serializer="raw")
    big = b"B" * (1 << 21)
    sent = [b"a", b"b", big, b"c"]
    src.put_many(sent)
    out = bridge.Outbound(src, "big.x", servers=nats_server.url, stream="BIG").start()
    try:
        wait_for(lambda: src.unfinished() == 0, timeout=30, what="the queue settled")
        assert out.error is None
    finally:
        out.stop()
    st = out.stats()
    assert stream_payloads(nats_server.url, "BIG") == [b"a", b"b", b"c"]
    assert (st.rejected, st.forwarded, st.acked, st.errors) == (1, 3, 4, 0), st
    assert "max_payload" in st.last_error
    logged = [r.getMessage() for r in caplog.records if r.name == "fastq.bridge"]
    assert len(logged) == 1 and "max_payload" in logged[0], logged


def test_acks_overdue_fail_the_connection_and_everything_crosses_once(nats_server, tmp_path):
    """The server stops answering (SIGSTOP) with publishes in flight: the
    watchdog fails the connection after ack_timeout, the bridge reconnects
    once the server runs again, republishes what was not confirmed under the
    same ids, and ignores the acks addressed to the old connection: the stream
    holds every message once, in order, and every local message is acked."""
    import os
    import signal
    import time

    bridge = _bridge()
    src = fastq.Queue(str(tmp_path / "src"), 1 << 22, serializer="raw")
    want = [b"%06d" % i for i in range(20000)]
    out = bridge.Outbound(src, "stall.x", servers=nats_server.url, stream="STALL",
                          ack_timeout=0.5, backoff=(0.05, 0.2),
                          connect_options={"connect_timeout": 0.5}).start()
    try:
        assert out.connected.wait(30)
        src.put_many(want)
        wait_for(lambda: out.stats().acked > 0, timeout=30, what="some acks")
        os.kill(nats_server.proc.pid, signal.SIGSTOP)
        try:
            wait_for(lambda: out.stats().errors >= 1, timeout=30, what="the overdue acks noticed")
            time.sleep(0.3)
        finally:
            os.kill(nats_server.proc.pid, signal.SIGCONT)
        wait_for(lambda: src.unfinished() == 0, timeout=60, what="every message acked locally")
    finally:
        out.stop()
    assert stream_payloads(nats_server.url, "STALL") == want
    st = out.stats()
    assert st.acked == len(want) and st.reconnects >= 1 and st.rejected == 0
    assert st.forwarded >= len(want) and out.error is None

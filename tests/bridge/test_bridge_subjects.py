"""Subjects across the bridge: a topic message's subject goes under the outbound subject in
JetStream, and an inbound bridge publishes what follows its prefix as the local subject."""
from __future__ import annotations

import fastq

from support.natsserver import _stream


def _subjects(url, stream):
    async def read(js):
        st = (await js.stream_info(stream)).state
        out = []
        for seq in range(st.first_seq, st.last_seq + 1):
            m = await js.get_msg(stream, seq)
            out.append((m.subject, m.data))
        return out
    return _stream(url, read)


SENT = [(b"a", "eu.created"), (b"b", None), (b"c", "us.created"), (b"d", "eu.paid.late")]


def test_topic_subjects_round_trip(nats_server, tmp_path):
    from fastq import bridge
    here = fastq.Topic(str(tmp_path / "here"), serializer="raw")
    there = fastq.Topic(str(tmp_path / "there"), serializer="raw")
    every = there.subscribe()
    eu = there.subscribe(subjects="eu.>")
    out = bridge.Outbound(here.subscribe("earliest", name="b", prefetch=4), "orders",
                          servers=nats_server.url, stream="ORDERS").start()
    inb = bridge.Inbound("orders.>", there, durable="far", servers=nats_server.url,
                         stream="ORDERS", batch=8).start()
    try:
        for data, subject in SENT:
            here.publish(data, subject=subject)
        got = []
        for _ in range(3):  # the message without a subject is on "orders": not "orders.>"
            d = every.receive(timeout=30)
            got.append((d.value, d.subject))
            d.ack()
        d = eu.receive(timeout=30)
        eu_got = [(d.value, d.subject)]
        d.ack()
        d = eu.receive(timeout=30)
        eu_got.append((d.value, d.subject))
        d.ack()
    finally:
        out.stop()
        inb.stop()
    assert got == [(b"a", "eu.created"), (b"c", "us.created"), (b"d", "eu.paid.late")]
    assert eu_got == [(b"a", "eu.created"), (b"d", "eu.paid.late")]
    assert _subjects(nats_server.url, "ORDERS") == [
        ("orders.eu.created", b"a"), ("orders", b"b"), ("orders.us.created", b"c"),
        ("orders.eu.paid.late", b"d")]


def test_inbound_prefix_choices(tmp_path):
    from fastq import bridge
    t = fastq.Topic(str(tmp_path / "t"), serializer="raw")

    def local(filter_subject, subject, **kw):
        return bridge.Inbound(filter_subject, t, durable="x", **kw).local_subject(subject)

    assert local("orders.>", "orders.eu.created") == "eu.created"
    assert local("orders.*.created", "orders.eu.created") == "eu.created"
    assert local("orders", "orders") is None
    assert local("orders.>", "other.eu") is None
    assert local("orders.>", "orders.eu.created", subject_prefix="") == "orders.eu.created"
    assert local("orders.>", "orders.eu.created", subject_prefix="orders.eu") == "created"
    t.close()

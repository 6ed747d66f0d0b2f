"""Prometheus metrics: ``fastq metrics --port`` scraped over HTTP and parsed,
and ``fastq stat --prometheus``, checked against known traffic."""
from __future__ import annotations

import pickle
import signal
import socket
import subprocess
import urllib.request

import pytest

import fastq
from support.cli import fastq_cli, fastq_script
from support.procs import child_env

parser = pytest.importorskip("prometheus_client.parser")


def _samples(text):
    """{(metric sample name, frozenset of labels): value}"""
    out = {}
    for fam in parser.text_string_to_metric_families(text):
        for s in fam.samples:
            out[(s.name, frozenset(s.labels.items()))] = s.value
    return out


def _traffic():
    q = fastq.Queue("orders")
    for i in range(4):
        q.put(i)
    q.get()
    d = q.receive()
    d.nack()
    t = fastq.Topic("prices")
    sub = t.subscribe(name="risk")
    for i in range(3):
        t.publish(i)
    sub.get()
    return q, t, sub


def _check(m):
    q = {("name", "orders"), ("kind", "queue")}
    t = {("name", "prices"), ("kind", "topic")}
    assert m[("fastq_messages_put_total", frozenset(q))] == 4
    assert m[("fastq_messages_taken_total", frozenset(q))] == 1
    assert m[("fastq_put_bytes_total", frozenset(q))] == sum(
        len(pickle.dumps(i, protocol=pickle.HIGHEST_PROTOCOL)) for i in range(4))
    assert m[("fastq_nacked_messages_total", frozenset(q))] == 1
    assert m[("fastq_depth_messages", frozenset(q))] == 3
    assert m[("fastq_processes", frozenset(q | {("state", "alive")}))] == 1
    assert m[("fastq_processes", frozenset(q | {("state", "dead")}))] == 0
    assert m[("fastq_recoveries_total", frozenset(q | {("what", "slot")}))] == 0
    assert m[("fastq_ring_capacity_bytes", frozenset(q))] == 1 << 20
    assert m[("fastq_messages_put_total", frozenset(t))] == 3
    assert m[("fastq_subscriber_lag_messages", frozenset(t | {("subscriber", "risk")}))] == 2
    rec = [(16 + 16 + len(pickle.dumps(i, protocol=pickle.HIGHEST_PROTOCOL)) + 15) // 16 * 16
           for i in (1, 2)]  # the two not received: header, topic prefix, payload, padding
    assert m[("fastq_subscriber_lag_bytes", frozenset(t | {("subscriber", "risk")}))] == sum(rec)
    assert m[("fastq_subscriber_unacked_messages",
              frozenset(t | {("subscriber", "risk")}))] == 0
    assert m[("fastq_ring_full_total", frozenset(q))] == 0
    assert m[("fastq_blocked_seconds_total", frozenset(q))] == 0
    # the first message of each (position 0: a sample point) was taken once
    assert m[("fastq_time_in_queue_samples", frozenset(q))] == 1
    assert m[("fastq_time_in_queue_samples", frozenset(t))] == 1
    for qv in ("0.5", "0.99", "1"):
        assert m[("fastq_time_in_queue_seconds", frozenset(q | {("quantile", qv)}))] >= 0
        assert m[("fastq_subscriber_time_in_queue_seconds",
                  frozenset(t | {("subscriber", "risk"), ("quantile", qv)}))] >= 0
    assert m[("fastq_littles_law_wait_seconds", frozenset(q))] > 0


def test_stat_prometheus(fastq_dir):
    handles = _traffic()
    _check(_samples(fastq_cli("stat", "--prometheus", "orders", "prices", check=0).stdout))
    for h in reversed(handles):
        h.close()


def test_metrics_endpoint_scraped(fastq_dir, procs):
    handles = _traffic()
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    p = procs.add(subprocess.Popen([fastq_script(), "metrics", "--port", str(port)],
                                   stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                   env=child_env({"FASTQ_DIR": fastq_dir})))
    line = p.stdout.readline()
    assert f"127.0.0.1:{port}/metrics" in line, p.stderr.read()
    url = f"http://127.0.0.1:{port}/metrics"
    with urllib.request.urlopen(url, timeout=30) as r:
        assert r.status == 200
        _check(_samples(r.read().decode()))
    # each scrape reads the segments again
    handles[0].get()
    with urllib.request.urlopen(url, timeout=30) as r:
        m = _samples(r.read().decode())
    assert m[("fastq_messages_taken_total",
              frozenset({("name", "orders"), ("kind", "queue")}))] == 2
    p.send_signal(signal.SIGTERM)
    assert p.wait(timeout=30) == 0
    for h in reversed(handles):
        h.close()

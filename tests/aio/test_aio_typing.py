"""The awaitable calls are typed: mypy accepts their ordinary use and rejects
misuse."""
from __future__ import annotations

from support.typecheck import assert_mypy_accepts, assert_mypy_rejects

GOOD = """
import asyncio
from typing import Any, List
import fastq

async def main() -> None:
    q: fastq.Queue[Any] = fastq.Queue("jobs", wait="sleep")
    await q.aput(1, timeout=1.0)
    n: int = await q.aput_many([1, 2])
    x: Any = await q.aget(timeout=0.5)
    xs: List[Any] = await q.aget_many(10)
    d = await q.areceive()
    d.ack()
    async for m in q:
        pass
    t = fastq.Topic("ticks", wait="spin")
    await t.apublish("x")
    k: int = await t.apublish_many(["a"])
    s = t.subscribe()
    y: Any = await s.aget()
    ys: List[Any] = await s.aget_many(5, timeout=1)
    e = await s.areceive()
    e.ack()
    async for m in s:
        pass

asyncio.run(main())
"""

BAD = """
import fastq

async def main() -> None:
    q = fastq.Queue("jobs")
    n: str = await q.aput_many([1])
    await q.aget_many("ten")
"""


def test_awaitable_calls_type_check(tmp_path):
    assert_mypy_accepts(tmp_path, GOOD)


def test_awaitable_misuse_is_rejected(tmp_path):
    assert_mypy_rejects(tmp_path, BAD, (6, 7))

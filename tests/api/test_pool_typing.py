"""Typing of fastq.Pool, Executor and pipeline (inline annotations, checked by mypy
as tests/api/test_typing.py does for the queue API)."""
from __future__ import annotations

from support.typecheck import assert_mypy_accepts, assert_mypy_rejects

GOOD = """
import concurrent.futures
from typing import Any, Iterator, List
import fastq

def f(x: int) -> int:
    return x + 1

with fastq.Pool(2, context="spawn", max_retries=1) as p:
    r: List[Any] = p.map(f, range(3), chunksize=8)
    it: Iterator[Any] = p.imap(f, range(3))
    u: Iterator[Any] = p.imap_unordered(f, range(3))
    a: fastq.AsyncResult = p.apply_async(f, (1,), callback=print)
    v: Any = a.get(timeout=1.0)
    ok: bool = a.ready() and a.successful()
    s: List[Any] = p.starmap(pow, [(2, 3)])
    n: int = p.reruns
p.close(); p.join(); p.terminate()
ex: concurrent.futures.Executor = fastq.Executor(2)
fut: concurrent.futures.Future[Any] = ex.submit(f, 1)
ex.shutdown(wait=True)
with fastq.pipeline(range(3), fastq.Stage(f, workers=2, flat=False, max_retries=2), f,
                    ordered=False, progress=False, context="fork") as pl:
    for y in pl:
        pass
try:
    pass
except fastq.WorkerLost as e:
    pos: int = e.position
"""

BAD = """
import fastq
p = fastq.Pool("two")
fastq.Stage(len, workers="3")
n: str = p.reruns
"""


def test_pool_api_types_accepted(tmp_path):
    assert_mypy_accepts(tmp_path, GOOD)


def test_pool_api_misuse_rejected(tmp_path):
    assert_mypy_rejects(tmp_path, BAD, (3, 4, 5))

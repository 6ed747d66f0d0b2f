"""An anonymous segment (the queues of a Pool and a pipeline) has every page
reserved when it is created, but none of its ring faulted in: a run touches
only the pages its messages pass through, and a pipeline's start does not pay
for zeroing and mapping 16 MiB per queue (issue 13).  The reservation is what
keeps a put from dying with SIGBUS (issue 10): a page that exists in the
file is only mapped at its first touch, never allocated then."""
from __future__ import annotations

import multiprocessing as mp
import os

import pytest

import fastq

from support import pages, poolfuncs

CAP = 16 << 20


def test_a_new_anonymous_queue_is_reserved_but_not_faulted_in():
    q = fastq.Queue(None, capacity=CAP)
    try:
        st = os.fstat(q.fileno())
        assert st.st_size > CAP
        assert st.st_blocks * 512 >= st.st_size  # every page allocated: no SIGBUS later
        maps = [m for m in pages.fastq_mappings() if m[0] == st.st_size]
        assert len(maps) == 1
        assert maps[0][1] < CAP // 8, f"{maps[0][1]} bytes resident in a new queue"
    finally:
        q.close()


def _fill_and_drain(q, laps):
    """Put 64 KiB messages through the whole ring `laps` times."""
    msg = b"x" * (64 << 10)
    n = laps * CAP // len(msg)
    for i in range(n):
        q.put(msg)
        assert q.get() == msg
    return n


def test_every_page_of_a_lazily_faulted_ring_is_usable_in_a_forked_child():
    q = fastq.Queue(None, capacity=CAP, serializer="raw")
    try:
        ctx = mp.get_context("fork")
        p = ctx.Process(target=_fill_and_drain, args=(q, 2))
        p.start()
        p.join(60)
        assert p.exitcode == 0  # a SIGBUS would be -7
        assert _fill_and_drain(q, 1) == CAP // (64 << 10)
    finally:
        q.close()


@pytest.mark.parametrize("method", ["spawn", "forkserver"])
def test_a_worker_that_opens_the_queues_by_descriptor_does_not_fault_them_in(method):
    with fastq.Pool(1, context=method) as pool:
        assert pool.apply(poolfuncs.inc, (1,)) == 2
        maps = pool.apply(pages.fastq_mappings)
    big = [m for m in maps if m[0] > CAP]
    assert big, maps  # the worker maps its two queues
    for size, rss in big:
        assert rss < CAP // 8, f"{rss} of {size} bytes resident in a worker"

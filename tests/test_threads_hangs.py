"""Threads sharing a handle, and files that could crash or hang a caller
(issue 10, items 1-4 and 16).

  * put_many(serializer="raw") keeps the items alive while it copies them
    without the GIL, whatever another thread does to the caller's list;
  * a sparse segment file has its pages reserved when it is opened (or is
    refused with ENOSPC), instead of a SIGBUS in a later put();
  * a nack() from one thread gives the message at once to another thread
    blocked in receive() on the same subscription (prefetch > 1);
  * closing a topic or a subscription while another thread waits in it
    succeeds, and the waiter gets ValueError at once, as with a Queue;
  * Queue.receive() at the prefetch bound waits for a delivery to be
    settled when it may block.

A thread that should have returned is joined with a generous timeout: a
hang fails the test instead of blocking the run.
"""
from __future__ import annotations

import errno
import os
import subprocess
import threading
import time

import pytest

import fastq

pytestmark = pytest.mark.usefixtures("fastq_dir")

MID = 1 << 16
JOIN = 20.0  # seconds: only a hang takes this long


def start(fn, *args):
    """Run fn(*args) in a daemon thread; returns (thread, result dict): the
    dict gets "value" or "error"."""
    res = {}

    def run():
        try:
            res["value"] = fn(*args)
        except BaseException as e:  # noqa: BLE001
            res["error"] = e

    th = threading.Thread(target=run, daemon=True)
    th.start()
    return th, res


def joined(th):
    th.join(JOIN)
    return not th.is_alive()


# ---- 1: raw put_many while another thread clears the list ---------------------------


def test_raw_put_many_keeps_its_items_while_another_thread_clears_the_list(run_py):
    """The items are large (copied without the GIL) and referenced only by the
    caller's list, which another thread clears as soon as it can run: their
    memory would be freed (unmapped) under the copy.  Run in a child: a crash
    must fail this test, not kill pytest."""
    cp = run_py("""
        import sys, threading, fastq
        sys.setswitchinterval(5)  # the clearer runs only when put_many lets go of the GIL
        N, SIZE = 12, 4 << 20
        q = fastq.Queue(capacity=64 << 20, serializer="raw")
        for rnd in range(3):
            items = [bytes([i]) * SIZE for i in range(N)]
            go = threading.Event()
            def clear():
                go.wait()
                items.clear()
            th = threading.Thread(target=clear)
            th.start()
            go.set()
            n = q.put_many(items)
            th.join()
            assert n == N, n
            for i in range(N):
                m = q.get(timeout=5)
                assert len(m) == SIZE and m[0] == i and m[-1] == i and m.count(bytes([i])) == SIZE, i
            assert q.empty()
        q.close()
        print("ok")
    """, timeout=120, check=False)
    assert cp.returncode == 0 and cp.stdout.strip() == "ok", (cp.returncode, cp.stdout,
                                                              cp.stderr[-2000:])

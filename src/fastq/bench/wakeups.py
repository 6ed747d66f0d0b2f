"""Wake-up syscalls per message of a stream: counted, not timed.

A producer process puts N messages to one consumer process that takes batches;
each side reports its FUTEX_WAIT sleeps and FUTEX_WAKE calls
(``fastq._core._wait_counts``).  A writer should wake each sleep once: the
producer's FUTEX_WAKEs stay near the consumer's sleeps, however many messages
arrive while a woken consumer has not run yet.  Counts repeat on a noisy
machine where throughput does not, which is why this is the figure the README
quotes for the wake path (csrc/fq_wait.c, "Waking each sleep once").

Run: ``python -m fastq.bench.wakeups [--messages N] [--size BYTES] [--json]``.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time

import fastq
from fastq import _core


def run(messages: int = 200_000, size: int = 64, batch: int = 256) -> dict:
    """Stream `messages` puts of `size` bytes to a consumer process; returns the
    counts of both sides and the rate (the rate is for orientation only)."""
    d = tempfile.mkdtemp(prefix="fastq-wakeups-")
    name = os.path.join(d, "q")
    q = fastq.Queue(name, capacity=1 << 16)
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # the consumer
        code = 1
        try:
            os.close(r)
            c = fastq.Queue(name)
            n = 0
            while n < messages:
                n += len(c.get_many(max_messages=batch))
            sleeps, wakes, _bells = _core._wait_counts()
            os.write(w, json.dumps({"sleeps": sleeps, "wakes": wakes, "got": n}).encode())
            code = 0
        finally:
            os._exit(code)
    os.close(w)
    base = _core._wait_counts()
    payload = bytes(size)
    t = time.perf_counter()
    for _ in range(messages):
        q.put(payload)
    data = b""
    while True:
        chunk = os.read(r, 4096)
        if not chunk:
            break
        data += chunk
    os.close(r)
    _, status = os.waitpid(pid, 0)
    dt = time.perf_counter() - t
    sleeps, wakes, _bells = (a - b for a, b in zip(_core._wait_counts(), base))
    q.close()
    q.unlink()
    os.rmdir(d)
    if status != 0 or not data:
        raise RuntimeError("the consumer failed (status %d)" % status)
    cons = json.loads(data)
    if cons["got"] != messages:
        raise RuntimeError("the consumer got %d of %d" % (cons["got"], messages))
    return {
        "messages": messages,
        "size": size,
        "producer_sleeps": sleeps,
        "producer_wakes": wakes,
        "consumer_sleeps": cons["sleeps"],
        "consumer_wakes": cons["wakes"],
        "wakes_per_message": wakes / messages,
        "msgs_per_s": messages / dt,
    }


def main(argv=None) -> int:
    """Command line: print the counts (or JSON with ``--json``)."""
    ap = argparse.ArgumentParser(prog="python -m fastq.bench.wakeups", description=__doc__.split("\n")[0])
    ap.add_argument("--messages", type=int, default=200_000)
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--json", action="store_true", help="print the result as JSON")
    a = ap.parse_args(argv)
    res = run(a.messages, a.size)
    if a.json:
        print(json.dumps(res))
    else:
        print("%(messages)d messages of %(size)d B: producer FUTEX_WAKEs %(producer_wakes)d "
              "(%(wakes_per_message).3f per message), consumer sleeps %(consumer_sleeps)d; "
              "%(msgs_per_s).0f msg/s" % res)
    return 0


if __name__ == "__main__":
    sys.exit(main())

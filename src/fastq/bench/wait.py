"""Benchmarks of waiting (issue #12): async ping-pong and throughput, idle CPU
of a blocked consumer, and ping-pong per wait strategy, each against peers
measured in the same run (report ratios; absolute times drift).

Run: ``python -m fastq.bench.wait [--quick] [--only async-pingpong,...]``.

Workloads
---------
async-pingpong    round trips between two processes, 8 B and 1 KiB: fastq
                  (asyncio, uvloop) against zmq.asyncio (PAIR over ipc) and
                  asyncio.to_thread over a multiprocessing.Queue
async-throughput  64 B messages from a producer coroutine to a consumer
                  coroutine in another process: aput/aget, aput_many/aget_many,
                  zmq.asyncio PUSH/PULL
idle-cpu          CPU time and wake-ups of a process waiting with nothing to
                  do: blocked get(), blocked aget(), 100 awaiting tasks; against
                  multiprocessing.Queue.get, a blocking zmq recv, zmq.asyncio
pingpong-wait     blocking round trips, 8 B, per wait strategy (adaptive,
                  spin, sleep) against a pipe (multiprocessing.Pipe) and a
                  polling peer (a spin on a multiprocessing.Value), on an idle
                  machine and on one loaded by two busy processes
"""
from __future__ import annotations

import argparse
import asyncio
import multiprocessing as mp
import os
import sys
import tempfile
import time
import uuid
from typing import Any, Callable, Dict, List, Optional

CTX = mp.get_context("fork")
WORKLOADS = ["async-pingpong", "async-throughput", "idle-cpu", "pingpong-wait"]


def _pct(xs: List[float], q: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(len(xs) * q))]


def _loop_runner(kind: str) -> Callable[[Any], Any]:
    if kind == "uvloop":
        import uvloop
        return lambda coro: asyncio.Runner(loop_factory=uvloop.new_event_loop).run(coro)
    return asyncio.run


def _start(target, *args):
    """Start a child running target(*args, ready) and wait until it is ready."""
    ready = CTX.Event()
    p = CTX.Process(target=target, args=(*args, ready))
    p.start()
    ready.wait()
    return p


async def _atrips(n, trip):
    """Round-trip times of n awaits of trip()."""
    lat = []
    for _ in range(n):
        t0 = time.perf_counter()
        await trip()
        lat.append(time.perf_counter() - t0)
    return lat


# ---------------------------------------------------------------- async ping-pong

def _fastq_echo(names, n, kind, ready):
    import fastq
    a, b = fastq.Queue.open(names[0], serializer="raw"), fastq.Queue.open(names[1], serializer="raw")

    async def main():
        ready.set()
        for _ in range(n):
            await b.aput(await a.aget())
    _loop_runner(kind)(main())


def _fastq_pingpong(size, n, kind):
    import fastq
    names = [f"bw-{uuid.uuid4().hex[:8]}-{i}" for i in range(2)]
    a = fastq.Queue(names[0], capacity=1 << 16, serializer="raw")
    b = fastq.Queue(names[1], capacity=1 << 16, serializer="raw")
    p = _start(_fastq_echo, names, n, kind)
    msg = b"x" * size

    async def trip():
        await a.aput(msg)
        await b.aget()
    lat = _loop_runner(kind)(_atrips(n, trip))
    p.join()
    for q in (a, b):
        q.unlink()
        q.close()
    return lat


def _zmq_echo(addr, n, ready):
    import zmq
    import zmq.asyncio

    async def main():
        ctx = zmq.asyncio.Context()
        s = ctx.socket(zmq.PAIR)
        s.connect(addr)
        ready.set()
        for _ in range(n):
            await s.send(await s.recv())
        s.close(linger=1000)
        ctx.term()
    asyncio.run(main())


def _zmq_pingpong(size, n):
    import zmq
    import zmq.asyncio
    addr = f"ipc://{tempfile.gettempdir()}/bw-{uuid.uuid4().hex[:8]}"
    lat = []

    async def main():
        ctx = zmq.asyncio.Context()
        s = ctx.socket(zmq.PAIR)
        s.bind(addr)
        p = _start(_zmq_echo, addr, n)
        msg = b"x" * size

        async def trip():
            await s.send(msg)
            await s.recv()
        lat.extend(await _atrips(n, trip))
        p.join()
        s.close()
        ctx.term()
    asyncio.run(main())
    try:
        os.unlink(addr[len("ipc://"):])
    except OSError:
        pass
    return lat


def _mpq_echo(a, b, n, ready):
    async def main():
        ready.set()
        for _ in range(n):
            b.put(await asyncio.to_thread(a.get))
    asyncio.run(main())


def _to_thread_pingpong(size, n):
    a, b = CTX.Queue(), CTX.Queue()
    p = _start(_mpq_echo, a, b, n)
    msg = b"x" * size

    async def trip():
        a.put(msg)
        await asyncio.to_thread(b.get)
    lat = asyncio.run(_atrips(n, trip))
    p.join()
    return lat


def _summary(lat: List[float], warm: int) -> Dict[str, float]:
    lat = lat[warm:]
    return {"p50_us": _pct(lat, .5) * 1e6, "p99_us": _pct(lat, .99) * 1e6,
            "p999_us": _pct(lat, .999) * 1e6}


def async_pingpong(quick: bool) -> List[dict]:
    n, warm = (2000, 200) if quick else (20000, 1000)
    rows = []
    for size in (8, 1024):
        cells = [("fastq asyncio", lambda: _fastq_pingpong(size, n, "asyncio")),
                 ("fastq uvloop", lambda: _fastq_pingpong(size, n, "uvloop")),
                 ("zmq.asyncio", lambda: _zmq_pingpong(size, n)),
                 ("to_thread mp.Queue", lambda: _to_thread_pingpong(size, n // 4))]
        for name, fn in cells:
            try:
                r = _summary(fn(), warm // (4 if "to_thread" in name else 1))
            except ImportError as e:
                r = {"skipped": str(e)}
            rows.append({"workload": f"async-pingpong-{size}B", "peer": name, **r})
    return rows


# ---------------------------------------------------------------- async throughput

def _fastq_async_producer(name, n, many, kind):
    import fastq
    q = fastq.Queue.open(name, serializer="raw")
    msg = b"x" * 64

    async def main():
        if many:
            for i in range(0, n, 256):
                await q.aput_many([msg] * min(256, n - i))
        else:
            for _ in range(n):
                await q.aput(msg)
    _loop_runner(kind)(main())


def _fastq_throughput(n, many, kind):
    import fastq
    name = f"bw-{uuid.uuid4().hex[:8]}"
    q = fastq.Queue(name, capacity=1 << 20, serializer="raw")
    p = CTX.Process(target=_fastq_async_producer, args=(name, n, many, kind))

    async def main():
        first = await q.aget(timeout=60)  # the clock starts at the first message
        t0 = time.perf_counter()
        got = 1
        try:
            while got < n:
                if many:
                    got += len(await q.aget_many(4096, timeout=60))
                else:
                    await q.aget(timeout=60)
                    got += 1
        except Exception:
            raise RuntimeError(f"got {got} of {n}; producer exit code {p.exitcode}, "
                               f"queue {q._seg.stats()} qsize {q.qsize()}")
        return time.perf_counter() - t0, first
    p.start()
    dt, _ = _loop_runner(kind)(main())
    p.join()
    q.unlink()
    q.close()
    return (n - 1) / dt


def _zmq_push(addr, n):
    """The producer: a plain blocking PUSH (an asyncio one, closed with a
    linger, was seen to leave the consumer without its last messages)."""
    import zmq
    ctx = zmq.Context()
    s = ctx.socket(zmq.PUSH)
    s.connect(addr)
    msg = b"x" * 64
    for _ in range(n):
        s.send(msg)
    s.close(linger=-1)
    ctx.term()


def _zmq_throughput(n):
    import zmq
    import zmq.asyncio
    addr = f"ipc://{tempfile.gettempdir()}/bw-{uuid.uuid4().hex[:8]}"

    async def main():
        # forked before this process has a zmq context (zmq is not fork-safe);
        # its PUSH connects and retries until the PULL below is bound
        p = CTX.Process(target=_zmq_push, args=(addr, n))
        p.start()
        ctx = zmq.asyncio.Context()
        s = ctx.socket(zmq.PULL)
        s.bind(addr)
        await s.recv()
        t0 = time.perf_counter()

        async def rest():
            for _ in range(n - 1):
                await s.recv()
        try:  # seen here: the last messages never arrive (pyzmq's edge-triggered FD)
            await asyncio.wait_for(rest(), 120)
        finally:
            dt = time.perf_counter() - t0
            p.join()
            s.close(linger=0)
            ctx.term()
        return dt
    dt = asyncio.run(main())
    try:
        os.unlink(addr[len("ipc://"):])
    except OSError:
        pass
    return (n - 1) / dt


def async_throughput(quick: bool) -> List[dict]:
    n = 50000 if quick else 500000
    rows = []
    for name, fn in [("fastq aput/aget asyncio", lambda: _fastq_throughput(n, False, "asyncio")),
                     ("fastq aput/aget uvloop", lambda: _fastq_throughput(n, False, "uvloop")),
                     ("fastq aput_many/aget_many asyncio",
                      lambda: _fastq_throughput(n * 4, True, "asyncio")),
                     ("zmq.asyncio PULL (blocking PUSH)", lambda: _zmq_throughput(n))]:
        try:
            rows.append({"workload": "async-throughput-64B", "peer": name, "msgs_per_s": fn()})
        except ImportError as e:
            rows.append({"workload": "async-throughput-64B", "peer": name, "skipped": str(e)})
        except asyncio.TimeoutError:
            rows.append({"workload": "async-throughput-64B", "peer": name,
                         "failed": "stalled: messages did not arrive within 120 s"})
    return rows


# ---------------------------------------------------------------- idle CPU

def _cpu_and_wakeups(pid: int):
    """(CPU ns, context switches) of every thread of pid so far."""
    ns = sw = 0
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            with open(f"/proc/{pid}/task/{tid}/schedstat") as f:
                ns += int(f.read().split()[0])
            with open(f"/proc/{pid}/task/{tid}/status") as f:
                for line in f:
                    if line.startswith(("voluntary_ctxt_switches", "nonvoluntary_ctxt_switches")):
                        sw += int(line.split()[1])
        except OSError:
            pass
    return ns, sw


def _idle_fastq_get(name, ready):
    import fastq
    q = fastq.Queue.open(name)
    ready.set()
    q.get()


def _idle_fastq_aget(name, ready, tasks):
    import fastq
    qs = [fastq.Queue.open(f"{name}-{i}") for i in range(max(1, tasks // 10))] if tasks > 1 \
        else [fastq.Queue.open(name)]

    async def main():
        ts = [asyncio.ensure_future(qs[i % len(qs)].aget()) for i in range(tasks)]
        await asyncio.sleep(0.2)
        ready.set()
        await asyncio.gather(*ts)
    asyncio.run(main())


def _idle_mpq(q, ready):
    ready.set()
    q.get()


def _idle_zmq(addr, ready):
    import zmq
    s = zmq.Context().socket(zmq.PULL)
    s.bind(addr)
    ready.set()
    s.recv()


def _idle_zmq_async(addr, ready, tasks):
    import zmq
    import zmq.asyncio

    async def main():
        ctx = zmq.asyncio.Context()
        socks = []
        for i in range(tasks):
            s = ctx.socket(zmq.PULL)
            s.bind(f"{addr}-{i}")
            socks.append(s)
        ts = [asyncio.ensure_future(s.recv()) for s in socks]
        await asyncio.sleep(0.2)
        ready.set()
        await asyncio.gather(*ts)
    asyncio.run(main())


def idle_cpu(quick: bool) -> List[dict]:
    import fastq
    secs = 2.0 if quick else 10.0
    name = f"bw-{uuid.uuid4().hex[:8]}"
    addr = f"ipc://{tempfile.gettempdir()}/bw-{uuid.uuid4().hex[:8]}"
    handles = [fastq.Queue(name, capacity=4096)] + [fastq.Queue(f"{name}-{i}", capacity=4096)
                                                     for i in range(10)]
    mpq = CTX.Queue()
    cells = [("fastq get()", _idle_fastq_get, (name,)),
             ("fastq aget()", _idle_fastq_aget, (name, 1)),
             ("fastq 100 awaiting tasks", _idle_fastq_aget, (name, 100)),
             ("mp.Queue get()", _idle_mpq, (mpq,)),
             ("zmq recv()", _idle_zmq, (addr,)),
             ("zmq.asyncio 100 awaiting tasks", _idle_zmq_async, (addr, 100))]
    rows = []
    for label, fn, args in cells:
        ready = CTX.Event()
        if fn in (_idle_fastq_aget, _idle_zmq_async):
            p = CTX.Process(target=fn, args=(*args[:1], ready, *args[1:]))
        else:
            p = CTX.Process(target=fn, args=(*args, ready))
        p.daemon = True
        try:
            p.start()
            ready.wait(10)
            time.sleep(0.3)
            ns0, sw0 = _cpu_and_wakeups(p.pid)
            time.sleep(secs)
            ns1, sw1 = _cpu_and_wakeups(p.pid)
            rows.append({"workload": "idle-cpu", "peer": label,
                         "cpu_pct": (ns1 - ns0) / (secs * 1e9) * 100,
                         "wakeups_per_s": (sw1 - sw0) / secs})
        except ImportError as e:
            rows.append({"workload": "idle-cpu", "peer": label, "skipped": str(e)})
        finally:
            p.kill()
            p.join()
    for h in handles:
        h.unlink()
        h.close()
    return rows


# ---------------------------------------------------------------- ping-pong per strategy

def _busy(stop):
    while not stop.value:
        pass


def _fq_sync_echo(names, n, wait, ready):
    import fastq
    a = fastq.Queue.open(names[0], serializer="raw", wait=wait)
    b = fastq.Queue.open(names[1], serializer="raw", wait=wait)
    ready.set()
    for _ in range(n):
        b.put(a.get())


def _fq_sync_pingpong(n, wait):
    import fastq
    names = [f"bw-{uuid.uuid4().hex[:8]}-{i}" for i in range(2)]
    a = fastq.Queue(names[0], capacity=1 << 16, serializer="raw", wait=wait)
    b = fastq.Queue(names[1], capacity=1 << 16, serializer="raw", wait=wait)
    p = _start(_fq_sync_echo, names, n, wait)
    lat = []
    msg = b"x" * 8
    for _ in range(n):
        t0 = time.perf_counter()
        a.put(msg)
        b.get()
        lat.append(time.perf_counter() - t0)
    p.join()
    for q in (a, b):
        q.unlink()
        q.close()
    return lat


def _pipe_echo(c, n, ready):
    ready.set()
    for _ in range(n):
        c.send_bytes(c.recv_bytes())


def _pipe_pingpong(n):
    a, c = CTX.Pipe()
    p = _start(_pipe_echo, c, n)
    lat = []
    for _ in range(n):
        t0 = time.perf_counter()
        a.send_bytes(b"x" * 8)
        a.recv_bytes()
        lat.append(time.perf_counter() - t0)
    p.join()
    return lat


def _spin_echo(v, n, ready):
    ready.set()
    for i in range(n):
        while v.value != 2 * i + 1:
            pass
        v.value = 2 * i + 2


def _spin_pingpong(n):
    """The polling peer: a shared counter, both sides spinning (the floor)."""
    v = CTX.Value("q", 0, lock=False)
    p = _start(_spin_echo, v, n)
    lat = []
    for i in range(n):
        t0 = time.perf_counter()
        v.value = 2 * i + 1
        while v.value != 2 * i + 2:
            pass
        lat.append(time.perf_counter() - t0)
    p.join()
    return lat


def pingpong_wait(quick: bool) -> List[dict]:
    n, warm = (2000, 200) if quick else (20000, 1000)
    rows = []
    for loaded in (False, True):
        stop = CTX.Value("b", 0, lock=False)
        busy = [CTX.Process(target=_busy, args=(stop,)) for _ in range(2 if loaded else 0)]
        for b in busy:
            b.start()
        try:
            m = n // 4 if loaded else n
            cells = [(f"fastq wait={w}", (lambda w=w: _fq_sync_pingpong(m, w)))
                     for w in ("adaptive", "spin", "sleep")]
            cells += [("pipe (mp.Pipe)", lambda: _pipe_pingpong(m)),
                      ("polling (spin on mp.Value)", lambda: _spin_pingpong(m))]
            for name, fn in cells:
                rows.append({"workload": "pingpong-wait-8B" + (" loaded" if loaded else ""),
                             "peer": name, **_summary(fn(), warm // (4 if loaded else 1))})
        finally:
            stop.value = 1
            for b in busy:
                b.join()
    return rows


# ---------------------------------------------------------------- report

RUNNERS = {"async-pingpong": async_pingpong, "async-throughput": async_throughput,
           "idle-cpu": idle_cpu, "pingpong-wait": pingpong_wait}


def report(rows: List[dict], out=sys.stdout) -> None:
    work = None
    for r in rows:
        if r["workload"] != work:
            work = r["workload"]
            print(f"\n{work}", file=out)
        vals = "  ".join(f"{k} {v:,.4g}" if isinstance(v, float) else f"{k} {v}"
                         for k, v in r.items() if k not in ("workload", "peer"))
        print(f"  {r['peer']:<36} {vals}", file=out)


def main(argv: Optional[List[str]] = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m fastq.bench.wait", description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="short cells")
    ap.add_argument("--only", default=",".join(WORKLOADS),
                    help="comma-separated workloads: " + ",".join(WORKLOADS))
    args = ap.parse_args(argv)
    # a directory of its own: nothing else removes or reuses its segments
    base = "/dev/shm" if os.path.isdir("/dev/shm") else None
    os.environ["FASTQ_DIR"] = tempfile.mkdtemp(prefix="fastq-bench-wait-", dir=base)
    rows: List[dict] = []
    try:
        for w in args.only.split(","):
            got = RUNNERS[w.strip()](args.quick)
            report(got)
            rows += got
    finally:
        import shutil
        shutil.rmtree(os.environ["FASTQ_DIR"], ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

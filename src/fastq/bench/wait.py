"""Waiting workloads of ``fastq bench`` (issue #12): async ping-pong and throughput, the idle CPU
of a blocked consumer, and blocking ping-pong per wait strategy, each run beside its peers in the
same ``fastq bench`` run (program workloads: ``fastq.bench.programs``; ratios, not absolute times,
compare across runs).

Run: ``fastq bench --workloads async,idle-wait,pingpong-wait [--quick]`` (the prefix ``async``
selects the three asyncio workloads; ``python -m fastq.bench.wait`` runs all of them).

Workloads
---------
async-pingpong-8B, async-pingpong-1KiB
                  round trips between two processes: fastq with asyncio against fastq with
                  uvloop, zmq.asyncio (PAIR over ipc) and asyncio.to_thread over a
                  multiprocessing.Queue; every reply is checked.  p50 / p99 / p99.9 (us).
async-throughput-64B
                  64 B messages from a producer coroutine to a consumer coroutine in another
                  process: aput/aget (asyncio) against aput/aget under uvloop,
                  aput_many/aget_many and zmq.asyncio PULL (a blocking PUSH).  msgs/s.
idle-wait         CPU time and wake-ups of a process waiting with nothing to do: a blocked
                  get() against a blocked aget(), 100 awaiting tasks on 10 queues,
                  multiprocessing.Queue.get, a blocking zmq recv and 100 zmq.asyncio tasks.
pingpong-wait-8B, pingpong-wait-8B-loaded
                  blocking round trips, 8 B: fastq wait="adaptive" against fastq
                  wait="spin" and wait="sleep", a pipe (multiprocessing.Pipe), cloudtoid
                  (blocking receive, and polling try_receive) and a polling floor (two
                  processes spinning on a shared counter); "loaded": the run starts two
                  busy processes on the machine's cores first.
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

from .programs import Program, Run

CTX = mp.get_context("fork")
STALL = 30.0   # seconds: a zmq.asyncio PULL was seen to stop receiving (pyzmq 27.3); reported, not waited for
NAMES = ("async-pingpong-8B", "async-pingpong-1KiB", "async-throughput-64B", "idle-wait",
         "pingpong-wait-8B", "pingpong-wait-8B-loaded")


def _pct(xs: List[float], q: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(len(xs) * q))]


def _summary(lat: List[float], warm: int) -> Dict[str, float]:
    lat = lat[warm:]
    return {"p50_us": _pct(lat, .5) * 1e6, "p99_us": _pct(lat, .99) * 1e6,
            "p999_us": _pct(lat, .999) * 1e6}


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


def _names(k: int) -> List[str]:
    return [f"bw-{os.getpid()}-{uuid.uuid4().hex[:8]}-{i}" for i in range(k)]


class _Trips:
    """Round-trip times, and the replies that were not the message sent."""

    def __init__(self, msg: bytes):
        self.msg, self.lat, self.errors = msg, [], []

    def check(self, reply: Any, i: int) -> None:
        if bytes(reply) != self.msg and len(self.errors) < 3:
            self.errors.append(f"round trip {i}: got {bytes(reply)[:16]!r}, sent {self.msg[:16]!r}")

    async def arun(self, n: int, trip: Callable[[], Any]) -> None:
        for i in range(n):
            t0 = time.perf_counter()
            r = await trip()
            self.lat.append(time.perf_counter() - t0)
            self.check(r, i)

    def run(self, n: int, trip: Callable[[], Any]) -> None:
        for i in range(n):
            t0 = time.perf_counter()
            r = trip()
            self.lat.append(time.perf_counter() - t0)
            self.check(r, i)

    def result(self, warm: int) -> dict:
        return {"figures": _summary(self.lat, warm), "errors": self.errors}


# ---------------------------------------------------------------- async ping-pong

def _fastq_echo(names, n, kind, ready):
    import fastq
    a, b = fastq.Queue.open(names[0], serializer="raw"), fastq.Queue.open(names[1], serializer="raw")

    async def main():
        ready.set()
        for _ in range(n):
            await b.aput(await a.aget())
    _loop_runner(kind)(main())


def _fastq_apingpong(t: _Trips, n: int, kind: str) -> None:
    import fastq
    names = _names(2)
    a = fastq.Queue(names[0], capacity=1 << 16, serializer="raw")
    b = fastq.Queue(names[1], capacity=1 << 16, serializer="raw")
    try:
        p = _start(_fastq_echo, names, n, kind)

        async def trip():
            await a.aput(t.msg)
            return await b.aget()
        _loop_runner(kind)(t.arun(n, trip))
        p.join()
    finally:
        for q in (a, b):
            q.unlink()
            q.close()


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


def _zmq_apingpong(t: _Trips, n: int) -> None:
    import zmq
    import zmq.asyncio
    addr = f"ipc://{tempfile.gettempdir()}/bw-{uuid.uuid4().hex[:8]}"

    async def main():
        ctx = zmq.asyncio.Context()
        s = ctx.socket(zmq.PAIR)
        s.bind(addr)
        p = _start(_zmq_echo, addr, n)

        async def trip():
            await s.send(t.msg)
            return await s.recv()
        await t.arun(n, trip)
        p.join()
        s.close()
        ctx.term()
    try:
        asyncio.run(main())
    finally:
        try:
            os.unlink(addr[len("ipc://"):])
        except OSError:
            pass


def _mpq_echo(a, b, n, ready):
    async def main():
        ready.set()
        for _ in range(n):
            b.put(await asyncio.to_thread(a.get))
    asyncio.run(main())


def _to_thread_apingpong(t: _Trips, n: int) -> None:
    a, b = CTX.Queue(), CTX.Queue()
    p = _start(_mpq_echo, a, b, n)

    async def trip():
        a.put(t.msg)
        return await asyncio.to_thread(b.get)
    asyncio.run(t.arun(n, trip))
    p.join()


def async_pingpong(lib: str, size: int, n: int, kind: str = "asyncio") -> dict:
    """``n`` awaited round trips of a ``size``-byte message to an echoing process (the first
    tenth a warm-up): fastq under ``kind`` (asyncio, uvloop), zmq.asyncio or to_thread."""
    t = _Trips(b"x" * size)
    if lib == "fastq":
        _fastq_apingpong(t, n, kind)
    elif lib == "zmq":
        _zmq_apingpong(t, n)
    else:
        _to_thread_apingpong(t, n)
    return t.result(n // 10)


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
    name = _names(1)[0]
    q = fastq.Queue(name, capacity=1 << 20, serializer="raw")
    p = CTX.Process(target=_fastq_async_producer, args=(name, n, many, kind))

    async def main():
        await q.aget(timeout=60)  # the clock starts at the first message
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
                               f"qsize {q.qsize()}")
        return time.perf_counter() - t0
    try:
        p.start()
        dt = _loop_runner(kind)(main())
        p.join()
    finally:
        q.unlink()
        q.close()
    return dt


def _zmq_push(addr, n, bound):
    """The producer: a plain blocking PUSH (an asyncio one, closed with a
    linger, was seen to leave the consumer without its last messages),
    connected once the PULL is bound (``bound`` set)."""
    import zmq
    bound.wait()
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
        # forked before this process has a zmq context (zmq is not fork-safe); it connects
        # once the PULL is bound: a PUSH that connected first lost ~400 of its first 5000
        # messages here (pyzmq 27.3, libzmq 4.3.5; the run stalled, waiting for them)
        bound = CTX.Event()
        p = CTX.Process(target=_zmq_push, args=(addr, n, bound))
        p.start()
        ctx = zmq.asyncio.Context()
        s = ctx.socket(zmq.PULL)
        s.bind(addr)
        bound.set()
        await s.recv()
        t0 = time.perf_counter()

        async def rest():
            for _ in range(n - 1):
                await s.recv()
        try:
            await asyncio.wait_for(rest(), STALL)
        finally:
            dt = time.perf_counter() - t0
            p.join()
            s.close(linger=0)
            ctx.term()
        return dt
    try:
        return asyncio.run(main())
    finally:
        try:
            os.unlink(addr[len("ipc://"):])
        except OSError:
            pass


def async_throughput(lib: str, n: int, many: bool = False, kind: str = "asyncio") -> dict:
    """``n`` 64 B messages from a producer coroutine to a consumer coroutine in this process,
    every one counted: msgs/s from the first message to the last."""
    try:
        dt = _zmq_throughput(n) if lib == "zmq" else _fastq_throughput(n, many, kind)
    except asyncio.TimeoutError:
        return {"figures": {}, "errors": [f"stalled: the rest of the {n} messages did not arrive "
                                          f"within {STALL:g} s"]}
    return {"figures": {"msgs_per_s": (n - 1) / dt}, "errors": []}


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


def _idle_fastq_get(names, tasks, ready):
    import fastq
    q = fastq.Queue.open(names[0])
    ready.set()
    q.get()


def _idle_fastq_aget(names, tasks, ready):
    import fastq
    qs = [fastq.Queue.open(n) for n in names]

    async def main():
        ts = [asyncio.ensure_future(qs[i % len(qs)].aget()) for i in range(tasks)]
        await asyncio.sleep(0.2)
        ready.set()
        await asyncio.gather(*ts)
    asyncio.run(main())


def _idle_mpq(q, tasks, ready):
    ready.set()
    q.get()


def _idle_zmq(addr, tasks, ready):
    import zmq
    s = zmq.Context().socket(zmq.PULL)
    s.bind(addr)
    ready.set()
    s.recv()


def _idle_zmq_async(addr, tasks, ready):
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


def idle_wait(peer: str, seconds: float, tasks: int = 1) -> dict:
    """CPU (% of a core) and context switches per second of a process that waits ``seconds``
    with nothing to do: ``peer`` fastq-get, fastq-aget (``tasks`` tasks on up to 10 queues),
    mpq, zmq or zmq-async (``tasks`` sockets)."""
    import fastq
    qs: List[Any] = []
    addr = f"ipc://{tempfile.gettempdir()}/bw-{uuid.uuid4().hex[:8]}"
    if peer.startswith("fastq"):
        qs = [fastq.Queue(n, capacity=4096) for n in _names(min(10, tasks))]
        fn, arg = (_idle_fastq_get if peer == "fastq-get" else _idle_fastq_aget), [q.name for q in qs]
    elif peer == "mpq":
        fn, arg = _idle_mpq, CTX.Queue()
    else:
        fn, arg = (_idle_zmq if peer == "zmq" else _idle_zmq_async), addr
    ready = CTX.Event()
    p = CTX.Process(target=fn, args=(arg, tasks, ready), daemon=True)
    try:
        p.start()
        if not ready.wait(30):
            return {"figures": {}, "errors": [f"the waiting process was not ready after 30 s "
                                              f"(exit code {p.exitcode})"]}
        time.sleep(0.3)
        ns0, sw0 = _cpu_and_wakeups(p.pid)
        time.sleep(seconds)
        ns1, sw1 = _cpu_and_wakeups(p.pid)
        alive = p.is_alive()
    finally:
        p.kill()
        p.join()
        for q in qs:
            q.unlink()
            q.close()
        for i in range(tasks):
            for path in (addr, f"{addr}-{i}"):
                try:
                    os.unlink(path[len("ipc://"):])
                except OSError:
                    pass
    return {"figures": {"cpu_pct": (ns1 - ns0) / (seconds * 1e9) * 100,
                        "wakeups_per_s": (sw1 - sw0) / seconds},
            "errors": [] if alive else ["the waiting process returned while nothing was sent"]}


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


def _fq_sync_pingpong(t: _Trips, n: int, wait: str) -> None:
    import fastq
    names = _names(2)
    a = fastq.Queue(names[0], capacity=1 << 16, serializer="raw", wait=wait)
    b = fastq.Queue(names[1], capacity=1 << 16, serializer="raw", wait=wait)
    try:
        p = _start(_fq_sync_echo, names, n, wait)

        def trip():
            a.put(t.msg)
            return b.get()
        t.run(n, trip)
        p.join()
    finally:
        for q in (a, b):
            q.unlink()
            q.close()


def _pipe_echo(c, n, ready):
    ready.set()
    for _ in range(n):
        c.send_bytes(c.recv_bytes())


def _pipe_pingpong(t: _Trips, n: int) -> None:
    a, c = CTX.Pipe()
    p = _start(_pipe_echo, c, n)

    def trip():
        a.send_bytes(t.msg)
        return a.recv_bytes()
    t.run(n, trip)
    p.join()


def _adapter_echo(adapter, specs, n, ready):
    get, put = adapter.receiver(specs[0], None).get, adapter.sender(specs[1], None).put
    ready.set()
    for _ in range(n):
        put(get())


def _adapter_pingpong(t: _Trips, n: int, adapter) -> None:
    """Round trips through two queues of a peer library's bench adapter (``adapters``)."""
    specs = [adapter.open(CTX, None, 1 << 16) for _ in range(2)]
    try:
        send, recv = adapter.sender(specs[0], None), adapter.receiver(specs[1], None)
        p = _start(_adapter_echo, adapter, specs, n)

        def trip():
            send.put(t.msg)
            return recv.get()
        t.run(n, trip)
        p.join()
        send.close()
        recv.close()
    finally:
        for s in specs:
            adapter.close(s)


def _spin_echo(v, n, ready):
    ready.set()
    for i in range(n):
        while v.value != 2 * i + 1:
            pass
        v.value = 2 * i + 2


def _spin_pingpong(t: _Trips, n: int) -> None:
    """The polling floor: a shared counter, both sides spinning (no payload moves)."""
    v = CTX.Value("q", 0, lock=False)
    p = _start(_spin_echo, v, n)

    count = iter(range(n))

    def trip():
        i = next(count)
        v.value = 2 * i + 1
        while v.value != 2 * i + 2:
            pass
        return t.msg
    t.run(n, trip)
    p.join()


def pingpong_wait(lib: str, n: int, wait: str = "adaptive", loaded: bool = False) -> dict:
    """``n`` blocking round trips of 8 B (the first tenth a warm-up): fastq with ``wait``,
    pipe, cloudtoid, cloudtoid-poll or spin; ``loaded``: two busy processes run meanwhile."""
    t = _Trips(b"x" * 8)
    stop = CTX.Value("b", 0, lock=False)
    busy = [CTX.Process(target=_busy, args=(stop,), daemon=True) for _ in range(2 if loaded else 0)]
    for b in busy:
        b.start()
    try:
        if lib == "fastq":
            _fq_sync_pingpong(t, n, wait)
        elif lib == "pipe":
            _pipe_pingpong(t, n)
        elif lib.startswith("cloudtoid"):
            from .adapters import CloudtoidAdapter
            _adapter_pingpong(t, n, CloudtoidAdapter(poll=lib.endswith("poll")))
        else:
            _spin_pingpong(t, n)
    finally:
        stop.value = 1
        for b in busy:
            b.join()
    return t.result(n // 10)


# ---------------------------------------------------------------- the programs

def programs(cfg) -> list:
    """The waiting Programs at ``cfg``'s sizes (``round_trips``, ``items``, ``idle``)."""
    to = cfg.program_timeout

    def run(label, func, needs=(), timeout=to, **kw):
        return Run(label, __name__, func, kw, needs, timeout)

    n, m = cfg.round_trips, max(100, cfg.round_trips // 4)   # to_thread and loaded trips are slow
    lat = (("p50", "p50_us"), ("p99", "p99_us"), ("p99.9", "p999_us"))
    progs = []
    for size, sz in ((8, "8B"), (1024, "1KiB")):
        progs.append(Program(
            f"async-pingpong-{sz}",
            run("fastq aget/aput, asyncio", "async_pingpong", lib="fastq", size=size, n=n),
            (run("fastq aget/aput, uvloop", "async_pingpong", ("uvloop",), lib="fastq", size=size, n=n,
                 kind="uvloop"),
             run("zmq.asyncio PAIR (ipc)", "async_pingpong", ("zmq",), lib="zmq", size=size, n=n),
             run("asyncio.to_thread over mp.Queue", "async_pingpong", lib="to_thread", size=size, n=m)),
            tuple((f"async-pingpong-{sz}: awaited RTT {p} of {n} (us) ↓", k, False) for p, k in lat)))
    k = cfg.items // 2
    progs.append(Program(
        "async-throughput-64B",
        run("fastq aput -> aget, asyncio", "async_throughput", lib="fastq", n=k),
        (run("fastq aput -> aget, uvloop", "async_throughput", ("uvloop",), lib="fastq", n=k, kind="uvloop"),
         run("fastq aput_many -> aget_many, asyncio", "async_throughput", lib="fastq", n=k * 4, many=True),
         run("zmq.asyncio PULL (blocking PUSH)", "async_throughput", ("zmq",), timeout=max(to, STALL + 30),
             lib="zmq", n=k)),
        ((f"async-throughput-64B: 1 -> 1 coroutine, {k // 1000}k msgs (msgs/s) ↑", "msgs_per_s", True),)))
    s = cfg.idle
    progs.append(Program(
        "idle-wait",
        run("fastq get()", "idle_wait", peer="fastq-get", seconds=s),
        (run("fastq aget()", "idle_wait", peer="fastq-aget", seconds=s),
         run("fastq 100 tasks in aget(), 10 queues", "idle_wait", peer="fastq-aget", seconds=s, tasks=100),
         run("multiprocessing.Queue get()", "idle_wait", peer="mpq", seconds=s),
         run("zmq recv()", "idle_wait", ("zmq",), peer="zmq", seconds=s),
         run("zmq.asyncio, 100 tasks in recv()", "idle_wait", ("zmq",), peer="zmq-async", seconds=s,
             tasks=100)),
        ((f"idle-wait: waiting {s:g} s (% of a core) ↓", "cpu_pct", False),
         (f"idle-wait: waiting {s:g} s (context switches/s) ↓", "wakeups_per_s", False))))
    for loaded in (False, True):
        name, trips = ("pingpong-wait-8B-loaded", m) if loaded else ("pingpong-wait-8B", n)

        def pp(label, lib, needs=(), **kw):
            return run(label, "pingpong_wait", needs, lib=lib, n=trips, loaded=loaded, **kw)
        progs.append(Program(
            name, pp('fastq wait="adaptive"', "fastq"),
            (pp('fastq wait="spin"', "fastq", wait="spin"), pp('fastq wait="sleep"', "fastq", wait="sleep"),
             pp("pipe (multiprocessing.Pipe)", "pipe"),
             pp("cloudtoid receive()", "cloudtoid", ("cloudtoid_interprocess",)),
             pp("cloudtoid try_receive() polling", "cloudtoid-poll", ("cloudtoid_interprocess",)),
             pp("polling floor (spin on a shared counter)", "spin")),
            tuple((f"{name}: blocking RTT {p} of {trips} (us) ↓", k, False) for p, k in lat),
            note=f"{name}: two busy processes ran on the cores meanwhile" if loaded else ""))
    return progs


def _fig(outcomes, program, label, key):
    return next((o.figures.get(key) for o in outcomes
                 if o.program == program and o.label == label and o.status == "ok"), None)


def summary(outcomes) -> list:
    """Lines relating the runs to the targets of issue #12."""
    lines = []

    def met(ok):
        return "met" if ok else "NOT met"
    for sz in ("8B", "1KiB"):
        prog = f"async-pingpong-{sz}"
        for ours in ("fastq aget/aput, asyncio", "fastq aget/aput, uvloop"):
            for key, target in (("p50_us", 5.0), ("p99_us", 3.0)):
                a, z = _fig(outcomes, prog, ours, key), _fig(outcomes, prog, "zmq.asyncio PAIR (ipc)", key)
                if a and z:
                    lines.append(f"{prog}: {ours} {key[:-3]} is {z / a:.1f}x lower than zmq.asyncio's "
                                 f"(target >= {target:g}x: {met(z / a >= target)})")
    for name in ("pingpong-wait-8B", "pingpong-wait-8B-loaded"):
        for key in ("p99_us", "p999_us"):
            spin = _fig(outcomes, name, 'fastq wait="spin"', key)
            for peer in ("cloudtoid try_receive() polling", "polling floor (spin on a shared counter)"):
                v = _fig(outcomes, name, peer, key)
                if spin and v:
                    lines.append(f'{name}: fastq wait="spin" {key[:-3]} {spin:.3g} us vs {peer} {v:.3g} us: '
                                 f"{spin / v:.2f}x (target <= 1x: {met(spin <= v)})")
    return lines


def main(argv: Optional[List[str]] = None) -> int:
    """``python -m fastq.bench.wait [--quick]``: the waiting workloads of ``fastq bench``."""
    from . import cli
    ap = argparse.ArgumentParser(prog="python -m fastq.bench.wait", description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="short runs")
    args = ap.parse_args(argv)
    bench = argparse.ArgumentParser()
    cli.add_arguments(bench)
    return cli.main(bench.parse_args((["--quick"] if args.quick else []) + ["--workloads", ",".join(NAMES)]))


if __name__ == "__main__":
    sys.exit(main())

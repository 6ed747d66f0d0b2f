"""Event-driven workloads: fastq.rpc and fastq.Dispatcher against their peers on one machine.

- ``rpc-latency``: ``cfg.calls`` round trips one after the other (an 8 B request,
  an 8 B reply, a server process answering with its input): ``fastq.rpc``
  ``Client.call`` against pyzmq REQ/REP over ``ipc://`` and a
  ``multiprocessing.managers`` proxy method call.  p50 and p99 in microseconds.
- ``rpc-throughput``: 4 caller processes, each making ``cfg.calls`` calls back to
  back; calls/s over all of them.  fastq with 1 server process against one pyzmq
  REP socket (4 REQ sockets), and fastq with 2 server processes.
- ``dispatch``: ``cfg.items`` small ints put on a queue and handled by a trivial
  handler in 2 worker processes, from the first put until the queue holds nothing
  taken or untaken: a ``fastq.Dispatcher`` (2 workers) against the same work done by
  2 processes running a hand-written ``receive()`` / handler / ``ack()`` loop (the
  Dispatcher's overhead).  Items/s.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import tempfile
import time

from .programs import Program, Run

NAMES = ("rpc-latency", "rpc-throughput", "dispatch")
CALLERS = 4
PAYLOAD = b"12345678"


# --------------------------------------------------------------------------- servers (top level: picklable)

def _echo(x):
    return x


def _noop(x):
    return None


def _pct(times) -> dict:
    times = sorted(times)
    return {k: times[min(len(times) - 1, int(len(times) * q))] / 1000.0
            for k, q in (("p50_us", 0.5), ("p99_us", 0.99))}


def _zmq_server(addr, ready):
    import zmq
    ctx = zmq.Context()
    s = ctx.socket(zmq.REP)
    s.bind(addr)
    ready.set()
    while True:
        s.send(s.recv())


class _Echo:
    def call(self, x):
        return x


def _manager():
    from multiprocessing.managers import BaseManager

    class M(BaseManager):
        pass
    M.register("Echo", _Echo)
    m = M()
    m.start()
    return m, m.Echo()


# --------------------------------------------------------------------------- one caller, each library

def _caller(lib, where, wait="adaptive"):
    """(call(x), close) for ``lib``; ``where`` is the fastq server name or the zmq address."""
    if lib == "fastq":
        from fastq import rpc
        c = rpc.Client(where, wait=wait)
        return c.call, c.close
    import zmq
    ctx = zmq.Context()
    s = ctx.socket(zmq.REQ)
    s.connect(where)

    def call(x):
        s.send(x)
        return s.recv()
    return call, lambda: (s.close(0), ctx.term())


def _serve(lib, workers=1, wait="adaptive"):
    """(where, stop) of a running server of ``lib``."""
    if lib == "fastq":
        from fastq import rpc
        name = f"bench-rpc-{os.getpid()}"
        srv = rpc.Server(name, _echo, workers=workers, wait=wait).start()

        def stop():
            srv.close()
            srv.requests.unlink()
        return name, stop
    tmp = tempfile.mkdtemp(prefix="fastq-bench-zmq-")
    addr = f"ipc://{tmp}/rep"
    ctx = mp.get_context("fork")
    ready = ctx.Event()
    p = ctx.Process(target=_zmq_server, args=(addr, ready), daemon=True)
    p.start()
    ready.wait(10)

    def stop_zmq():
        p.kill()
        p.join()
    return addr, stop_zmq


def rpc_latency(lib, calls, wait="adaptive"):
    """``calls`` round trips of an 8 B payload, one after the other: p50 / p99 in microseconds."""
    clock, times, errors = time.perf_counter_ns, [], []
    if lib == "mp":
        m, echo = _manager()
        call, stop, close = echo.call, m.shutdown, (lambda: None)
    else:
        where, stop = _serve(lib, wait=wait)
        call, close = _caller(lib, where, wait)
    try:
        for _ in range(200):
            call(PAYLOAD)
        for _ in range(calls):
            t = clock()
            r = call(PAYLOAD)
            times.append(clock() - t)
            if r != PAYLOAD:
                errors.append(f"got {r!r}")
                break
    finally:
        close()
        stop()
    return {"figures": _pct(times), "errors": errors}


def _throughput_caller(lib, where, calls, start, out):
    call, close = _caller(lib, where)
    for _ in range(20):
        call(PAYLOAD)
    start.wait()
    ok = all(call(PAYLOAD) == PAYLOAD for _ in range(calls))
    close()
    if lib == "fastq":
        from fastq import rpc
        rpc._close_paths()
    out.put(ok)


def rpc_throughput(lib, calls, workers=1):
    """``CALLERS`` processes each making ``calls`` calls back to back: calls/s in all."""
    where, stop = _serve(lib, workers)
    ctx = mp.get_context("fork")
    start, out = ctx.Event(), ctx.Queue()
    ps = [ctx.Process(target=_throughput_caller, args=(lib, where, calls, start, out)) for _ in range(CALLERS)]
    try:
        for p in ps:
            p.start()
        time.sleep(0.5)
        t0 = time.perf_counter()
        start.set()
        oks = [out.get(timeout=120) for _ in ps]
        secs = time.perf_counter() - t0
        for p in ps:
            p.join()
    finally:
        stop()
    errors = [] if all(oks) else ["a caller got a wrong reply"]
    return {"figures": {"calls_per_s": CALLERS * calls / secs, "seconds": secs}, "errors": errors}


# --------------------------------------------------------------------------- Dispatcher against a hand-written loop

def _hand_loop(q, ready, stop):
    from fastq import Empty
    ready.set()
    while not stop.is_set():
        try:
            d = q.receive(timeout=0.1)
        except Empty:
            continue
        _noop(d.value)
        d.ack()


def dispatch(lib, n):
    """``n`` ints through a trivial handler in 2 worker processes: items/s from the first put
    until nothing is left in the queue, taken or not."""
    import fastq
    name = f"bench-dispatch-{os.getpid()}"
    q = fastq.Queue(name, 16 << 20)
    ctx = mp.get_context("fork")
    if lib == "fastq":
        d = fastq.Dispatcher()
        d.on(q, workers=2)(_noop)
        d.start()
        stop = d.stop
    else:
        ev = ctx.Event()
        readies = [ctx.Event() for _ in range(2)]
        ps = [ctx.Process(target=_hand_loop, args=(q, r, ev)) for r in readies]
        for p in ps:
            p.start()
        for r in readies:
            r.wait(10)

        def stop():
            ev.set()
            for p in ps:
                p.join()
    try:
        q.put_many(range(1000))                       # warm
        while q.qsize() or q.unacked():
            time.sleep(0.0005)
        t0 = time.perf_counter()
        q.put_many(range(n))
        while q.qsize() or q.unacked():
            time.sleep(0.0002)
        secs = time.perf_counter() - t0
    finally:
        stop()
        q.unlink()
    return {"figures": {"items_per_s": n / secs, "seconds": secs}, "errors": []}


# --------------------------------------------------------------------------- the programs

def programs(cfg) -> list:
    """The event-driven Programs at ``cfg``'s sizes (``calls``, ``items``)."""
    t = cfg.program_timeout

    def run(label, func, needs=(), **kw):
        return Run(label, __name__, func, kw, needs, t)

    calls, n = cfg.calls * 2, cfg.items // 2
    return [
        Program("rpc-latency", run("fastq.rpc Client.call", "rpc_latency", lib="fastq", calls=calls),
                (run("fastq.rpc Client.call, wait=\"spin\"", "rpc_latency", lib="fastq", calls=calls,
                     wait="spin"),
                 run("pyzmq REQ/REP (ipc)", "rpc_latency", ("zmq",), lib="zmq", calls=calls),
                 run("multiprocessing.managers proxy call", "rpc_latency", lib="mp", calls=calls)),
                ((f"rpc-latency: 8 B call, p50 of {calls} (us) ↓", "p50_us", False),
                 (f"rpc-latency: 8 B call, p99 of {calls} (us) ↓", "p99_us", False))),
        Program("rpc-throughput", run("fastq.rpc, 1 server process", "rpc_throughput", lib="fastq",
                                      calls=calls),
                (run("pyzmq REQ/REP, 1 REP socket", "rpc_throughput", ("zmq",), lib="zmq", calls=calls),
                 run("fastq.rpc, 2 server processes", "rpc_throughput", lib="fastq", calls=calls,
                     workers=2)),
                ((f"rpc-throughput: {CALLERS} caller processes x {calls} calls (calls/s) ↑",
                  "calls_per_s", True),)),
        Program("dispatch", run("fastq.Dispatcher, 2 workers", "dispatch", lib="fastq", n=n),
                (run("receive()/ack() loop, 2 processes", "dispatch", lib="loop", n=n),),
                ((f"dispatch: trivial handler, {n // 1000}k ints (items/s) ↑", "items_per_s", True),)),
    ]


def _fig(outcomes, name, prefix, key):
    return next((o.figures[key] for o in outcomes
                 if o.program == name and o.status == "ok" and o.label.startswith(prefix)), None)


def summary(outcomes) -> list:
    """Lines relating the runs to the targets of issue #14."""
    lines = []
    for label in ("fastq.rpc Client.call", 'fastq.rpc Client.call, wait="spin"'):
        ours = next((o.figures["p50_us"] for o in outcomes if o.program == "rpc-latency"
                     and o.status == "ok" and o.label == label), None)
        for prefix, target in (("pyzmq", 5.0), ("multiprocessing", 10.0)):
            peer = _fig(outcomes, "rpc-latency", prefix, "p50_us")
            if ours and peer:
                r = peer / ours
                lines.append(f"rpc-latency: {label} p50 is {r:.1f}x lower than {prefix} "
                             f"(target >= {target:g}x: {'met' if r >= target else 'NOT met'})")
    d, loop = (_fig(outcomes, "dispatch", p, "items_per_s") for p in ("fastq", "receive"))
    if d and loop:
        over = loop / d - 1
        lines.append(f"dispatch: the Dispatcher's overhead over a hand-written loop is {over:.0%} "
                     f"(target < 30%: {'met' if over < 0.3 else 'NOT met'})")
    return lines

"""Pool and pipeline workloads: fastq.Pool and fastq.pipeline against multiprocessing and its peers.

Every program uses 2 worker processes (``WORKERS``) and runs in its own
interpreter under a hard timeout (see ``programs``).  The workloads:

- ``pool-small``: ``x + 1`` over ``cfg.items`` ints (400k; 100k with --quick),
  ``list(pool.imap(...))`` on a warm pool (workers started and used once before
  the clock starts): fastq ``Pool.imap`` with default settings against
  ``multiprocessing.Pool.imap`` at chunksize 1, 64, 1024 and 8192,
  ``ProcessPoolExecutor.map`` (chunksize 1024), loky's executor (chunksize
  1024), ``joblib.Parallel`` (automatic batching) and ``mpire.WorkerPool.imap``
  (its default chunking).  Items/s.
- ``pipeline-small``: the same ints through two stages (``x + 1``, then ``2x``):
  ``fastq.pipeline`` (one worker per stage) against two chained
  ``multiprocessing.Pool(2).imap`` calls at chunksize 64, 1024 and 8192.  Timed
  from the start of the pool or pipeline (both start their workers).  Items/s.
- ``pipeline-numpy``: ``cfg.arrays`` 1 MiB uint8 arrays through two stages (a
  new array ``a + 1``, then a small checksum): ``fastq.pipeline`` against two
  chained ``multiprocessing.Pool(2).imap`` (chunksize 1).  MB/s of input.
- ``pool-latency``: time to the result of one small task on a warm pool,
  ``pool.apply(x + 1)`` called ``cfg.calls`` times one after the other: p50 and
  p99 in microseconds, fastq against multiprocessing.
- ``pool-kill``: the ``pool-small`` program run again and again for
  ``cfg.kill_seconds`` while a thread SIGKILLs one worker every 0.5 s; every
  round's results are compared with the expected list (each result exactly once,
  in order).  fastq reports rounds, kills and re-runs; ``multiprocessing.Pool``
  loses the killed worker's tasks and hangs: its run is killed after
  ``cfg.kill_seconds + 10`` s and reported as "hung after N s".
"""

from __future__ import annotations

import os
import random
import signal
import threading
import time

from .programs import Program, Run
from .report import _fmt

WORKERS = 2
MP_CHUNKSIZES = (1, 64, 1024, 8192)
PIPE_CHUNKSIZES = (64, 1024, 8192)
KILL_EVERY = 0.5          # seconds between two SIGKILLs of a worker in pool-kill
NAMES = ("pool-small", "pool-latency", "pool-kill", "pipeline-small", "pipeline-numpy")
MiB = 1 << 20


# --------------------------------------------------------------------------- the work (top level: picklable)

def _inc(x):
    return x + 1


def _double(x):
    return 2 * x


def _add1(a):
    return a + 1


def _checksum(a):
    return int(a[0]) + int(a[-1]) + a.size


def _arrays(m):
    import numpy as np
    return (np.full(MiB, i & 255, dtype=np.uint8) for i in range(m))


def _expected_checksums(m):
    return [2 * ((i + 1) & 255) + MiB for i in range(m)]


# --------------------------------------------------------------------------- one pool, each library

def _open_pool(lib, arg):
    """(pool, imap(func, iterable), shutdown) for ``lib``; ``arg`` is the chunksize where it takes one."""
    if lib == "fastq":
        import fastq
        p = fastq.Pool(WORKERS)
        return p, p.imap, p.terminate
    if lib == "mp":
        import multiprocessing as mp
        p = mp.Pool(WORKERS)
        return p, lambda f, it: p.imap(f, it, chunksize=arg), p.terminate
    if lib in ("ppe", "loky"):
        if lib == "ppe":
            from concurrent.futures import ProcessPoolExecutor
            ex = ProcessPoolExecutor(WORKERS)
        else:
            from loky import get_reusable_executor
            ex = get_reusable_executor(max_workers=WORKERS)
        return ex, lambda f, it: ex.map(f, it, chunksize=arg), ex.shutdown
    if lib == "joblib":
        from joblib import Parallel, delayed
        par = Parallel(n_jobs=WORKERS)
        par.__enter__()                  # keeps its workers between calls

        def imap(f, it):
            return par(delayed(f)(x) for x in it)
        return par, imap, lambda: par.__exit__(None, None, None)
    if lib == "mpire":
        from mpire import WorkerPool
        p = WorkerPool(n_jobs=WORKERS)
        p.__enter__()
        return p, p.imap, lambda: p.__exit__(None, None, None)
    raise ValueError(lib)


def small(lib, n, arg=None):
    """``x + 1`` over ``n`` ints on a warm pool of ``lib``: items/s, results checked."""
    _, imap, shutdown = _open_pool(lib, arg)
    try:
        list(imap(_inc, range(2000)))    # start and warm the workers
        t0 = time.perf_counter()
        got = list(imap(_inc, range(n)))
        secs = time.perf_counter() - t0
    finally:
        shutdown()
    errors = [] if got == list(range(1, n + 1)) else [f"{len(got)} results, not the {n} expected in order"]
    return {"figures": {"items_per_s": n / secs, "seconds": secs}, "errors": errors}


def latency(lib, calls):
    """``pool.apply(_inc, (i,))`` ``calls`` times on a warm pool: p50 / p99 of the time to its result."""
    if lib == "fastq":
        import fastq
        p = fastq.Pool(WORKERS)
    else:
        import multiprocessing as mp
        p = mp.Pool(WORKERS)
    clock, times, errors = time.perf_counter_ns, [], []
    try:
        for i in range(50):
            p.apply(_inc, (i,))
        for i in range(calls):
            t = clock()
            r = p.apply(_inc, (i,))
            times.append(clock() - t)
            if r != i + 1:
                errors.append(f"apply({i}) gave {r}")
                break
    finally:
        p.terminate()
    times.sort()
    pct = {k: times[min(len(times) - 1, int(len(times) * q))] / 1000.0 for k, q in (("p50_us", 0.5), ("p99_us", 0.99))}
    return {"figures": pct, "errors": errors}


# --------------------------------------------------------------------------- pipelines

def _chained(n_or_items, cs, stage1, stage2):
    import multiprocessing as mp
    with mp.Pool(WORKERS) as p:
        return list(p.imap(stage2, p.imap(stage1, n_or_items, chunksize=cs), chunksize=cs))


def _fastq_pipeline(items, stage1, stage2):
    import fastq
    with fastq.pipeline(items, fastq.Stage(stage1), fastq.Stage(stage2)) as out:
        return list(out)


def pipeline_small(lib, n, cs=None):
    """``2 (x + 1)`` over ``n`` ints through two stages, from the pool's or pipeline's start: items/s."""
    t0 = time.perf_counter()
    if lib == "fastq":
        got = _fastq_pipeline(range(n), _inc, _double)
    else:
        got = _chained(range(n), cs, _inc, _double)
    secs = time.perf_counter() - t0
    errors = [] if got == [2 * (x + 1) for x in range(n)] else [f"{len(got)} results, not the {n} expected in order"]
    return {"figures": {"items_per_s": n / secs, "seconds": secs}, "errors": errors}


def pipeline_numpy(lib, m):
    """``m`` 1 MiB arrays through two stages (``a + 1``, a checksum): MB/s of input."""
    t0 = time.perf_counter()
    if lib == "fastq":
        got = _fastq_pipeline(_arrays(m), _add1, _checksum)
    else:
        got = _chained(_arrays(m), 1, _add1, _checksum)
    secs = time.perf_counter() - t0
    errors = [] if got == _expected_checksums(m) else ["wrong checksums or order"]
    return {"figures": {"mb_per_s": m * MiB / secs / 1e6, "seconds": secs}, "errors": errors}


# --------------------------------------------------------------------------- a worker SIGKILLed every 0.5 s

def _mp_pids(p):
    return [w.pid for w in p._pool if w.is_alive()]   # multiprocessing has no public list of its workers


def kill(lib, n, seconds):
    """Rounds of ``list(pool.imap(_inc, range(n)))`` for ``seconds`` while one worker is SIGKILLed every
    KILL_EVERY s; each round must give every result exactly once, in order."""
    if lib == "fastq":
        import fastq
        p = fastq.Pool(WORKERS)
        imap, pids = p.imap, p.pids
    else:
        import multiprocessing as mp
        p = mp.Pool(WORKERS)
        imap, pids = (lambda f, it: p.imap(f, it, chunksize=64)), (lambda: _mp_pids(p))
    stop, kills, rng = threading.Event(), [0], random.Random(13)

    def killer():
        while not stop.wait(KILL_EVERY):
            alive = pids()
            if alive:
                try:
                    os.kill(rng.choice(alive), signal.SIGKILL)
                    kills[0] += 1
                except OSError:
                    pass
    want, rounds, errors = list(range(1, n + 1)), 0, []
    th = threading.Thread(target=killer, daemon=True)
    t0 = time.perf_counter()
    th.start()
    try:
        while not errors and (rounds == 0 or time.perf_counter() - t0 < seconds or kills[0] < 2):
            got = list(imap(_inc, range(n)))
            rounds += 1
            if got != want:
                errors.append(f"round {rounds}: {len(got)} results, not each of the {n} exactly once in order")
    finally:
        stop.set()
        th.join()
        secs = time.perf_counter() - t0
        reruns = getattr(p, "reruns", None)
        p.terminate()
    result = (f"{rounds} x {n} results exactly once; {kills[0]} kills, {reruns} re-runs" if lib == "fastq"
              else f"finished: {rounds} x {n} results, {kills[0]} kills")
    return {"figures": {"result": result, "rounds": rounds, "kills": kills[0], "reruns": reruns,
                        "seconds": secs}, "errors": errors}


# --------------------------------------------------------------------------- the programs of a run

def programs(cfg) -> list:
    """The pool and pipeline Programs at ``cfg``'s sizes (``items``, ``arrays``, ``calls``, ``kill_seconds``)."""
    n, t = cfg.items, cfg.program_timeout

    def run(label, func, needs=(), timeout=t, **kw):
        return Run(label, __name__, func, kw, needs, timeout)

    size = f"{n // 1000}k ints" + (" (--quick; 400k without)" if n < 400_000 else "")
    return [
        Program("pool-small", run("fastq.Pool.imap (default)", "small", lib="fastq", n=n),
                tuple(run(f"multiprocessing.Pool.imap chunksize={cs}", "small", lib="mp", n=n, arg=cs)
                      for cs in MP_CHUNKSIZES)
                + (run("ProcessPoolExecutor.map chunksize=1024", "small", lib="ppe", n=n, arg=1024),
                   run("loky executor map chunksize=1024", "small", ("loky",), lib="loky", n=n, arg=1024),
                   run("joblib.Parallel (auto batch)", "small", ("joblib",), lib="joblib", n=n),
                   run("mpire.WorkerPool.imap (default)", "small", ("mpire",), lib="mpire", n=n)),
                ((f"pool-small: x+1, {size} (items/s) ↑", "items_per_s", True),)),
        Program("pipeline-small", run("fastq.pipeline, 2 stages", "pipeline_small", lib="fastq", n=n),
                tuple(run(f"2 chained Pool.imap chunksize={cs}", "pipeline_small", lib="mp", n=n, cs=cs)
                      for cs in PIPE_CHUNKSIZES),
                ((f"pipeline-small: 2 stages, {size} (items/s) ↑", "items_per_s", True),)),
        Program("pipeline-numpy", run("fastq.pipeline, 2 stages", "pipeline_numpy", ("numpy",), lib="fastq",
                                      m=cfg.arrays),
                (run("2 chained Pool.imap chunksize=1", "pipeline_numpy", ("numpy",), lib="mp", m=cfg.arrays),),
                ((f"pipeline-numpy: {cfg.arrays} x 1 MiB arrays, 2 stages (MB/s) ↑", "mb_per_s", True),)),
        Program("pool-latency", run("fastq.Pool.apply", "latency", lib="fastq", calls=cfg.calls),
                (run("multiprocessing.Pool.apply", "latency", lib="mp", calls=cfg.calls),),
                ((f"pool-latency: apply, warm pool, p50 of {cfg.calls} (us) ↓", "p50_us", False),
                 (f"pool-latency: apply, warm pool, p99 of {cfg.calls} (us) ↓", "p99_us", False))),
        Program("pool-kill", run("fastq.Pool.imap", "kill", lib="fastq", n=n, seconds=cfg.kill_seconds,
                                 timeout=cfg.kill_seconds + t),
                (run("multiprocessing.Pool.imap chunksize=64", "kill", lib="mp", n=n, seconds=cfg.kill_seconds,
                     timeout=cfg.kill_seconds + 10),),
                ((f"pool-kill: a worker SIGKILLed every {KILL_EVERY} s, {cfg.kill_seconds:g} s of rounds",
                  "result", True),),
                note=("pool-kill: multiprocessing.Pool replaces a killed worker but loses the tasks it held, "
                      "so imap waits for them forever (CPython issue 96062); its run is killed by the "
                      "benchmark's timeout.")),
    ]


# --------------------------------------------------------------------------- the targets of issue #13

def _best(outcomes, name, prefix, key):
    """(label, figure) of the best ok run of program ``name`` whose label starts with ``prefix``."""
    runs = [(o.figures[key], o.label) for o in outcomes
            if o.program == name and o.status == "ok" and o.label.startswith(prefix)]
    return max(runs)[::-1] if runs else (None, None)


def _verdict(ratio, target):
    return f"(target >= {target:g}x: {'met' if ratio >= target else 'NOT met'})"


def summary(outcomes) -> list:
    """Lines relating fastq's runs to the targets of issue #13, from the runs of this report."""
    def ours(name):
        return next((o for o in outcomes if o.program == name and o.label.startswith("fastq") and o.status == "ok"),
                    None)
    lines = []
    rows = (("pool-small", "multiprocessing.Pool.imap", "items_per_s", 1.0, "the best multiprocessing.Pool.imap"),
            ("pipeline-small", "2 chained Pool.imap", "items_per_s", 2.0, "the best 2 chained Pool.imap"),
            ("pipeline-numpy", "2 chained Pool.imap", "mb_per_s", 5.0, "2 chained Pool.imap"))
    for name, prefix, key, target, what in rows:
        o, (label, best) = ours(name), _best(outcomes, name, prefix, key)
        if o and best:
            r = o.figures[key] / best
            lines.append(f"{name}: fastq {_fmt(o.figures[key])} vs {what} ({label[len(prefix):].strip()}) "
                         f"{_fmt(best)}: {r:.2f}x {_verdict(r, target)}")
    o = ours("pool-small")
    one = next((x for x in outcomes if x.program == "pool-small" and x.status == "ok"
                and x.label == f"multiprocessing.Pool.imap chunksize={MP_CHUNKSIZES[0]}"), None)
    if o and one:
        r = o.figures["items_per_s"] / one.figures["items_per_s"]
        lines.append(f"pool-small: fastq vs {one.label}: {r:.1f}x {_verdict(r, 20)}")
    o, (label, mp_p50) = ours("pool-latency"), _best(outcomes, "pool-latency", "multiprocessing", "p50_us")
    if o and mp_p50:
        r = mp_p50 / o.figures["p50_us"]
        lines.append(f"pool-latency: apply p50 fastq {_fmt(o.figures['p50_us'])} us vs multiprocessing "
                     f"{_fmt(mp_p50)} us: multiprocessing / fastq {r:.2f}x {_verdict(r, 10)}")
    for o in outcomes:
        if o.program == "pool-kill":
            what = o.figures.get("result") if o.status == "ok" else o.detail
            lines.append(f"pool-kill: {o.label}: {what}")
    return lines

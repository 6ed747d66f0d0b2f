"""What the child processes of a queue cell do: produce, consume and check, ping-pong, idle wait."""

from __future__ import annotations

import collections
import itertools
import time
import traceback
import zlib

from .payloads import LAST, PAYLOADS, SAMPLE_MASK, SEQ_BITS, STOP_SEQ, RawPayload, _raw_seq
from .workloads import batch_len, chunk_len


def _stream(ep, batch):
    """Endless iterator over received messages, driven from C (no Python frame per message)."""
    calls = itertools.repeat(())
    if batch:
        return itertools.chain.from_iterable(itertools.starmap(ep.get_many, calls))
    return itertools.starmap(ep.get, calls)


def _drain(it, _deque=collections.deque):
    """Exhaust ``it`` from C."""
    _deque(it, maxlen=0)


def _produce(adapter, spec, wl, cfg, pid, n_stops, barrier):
    ep = adapter.sender(spec, wl)
    pl = PAYLOADS[wl.payload](wl.size, pid)
    stop = PAYLOADS[wl.payload](wl.size, 0).make(STOP_SEQ)
    put, put_many, fillers, make, base = ep.put, ep.put_many, pl.fillers, pl.make, pl.base
    K, B = chunk_len(wl), batch_len(wl)
    min_chunks = -(-cfg.warmup(wl) // K) + 2      # a timed sample after the warm-up, and a later one

    def send_chunk(seq, last_msg):
        """K - 1 fillers from position ``seq`` on, then ``last_msg`` (a sample or the stop)."""
        if not wl.batch:
            _drain(map(put, fillers(seq, K - 1)))
            put(last_msg)
            return
        for off in range(0, K - B, B):
            put_many(list(fillers(seq + off, B)))
        batch = list(fillers(seq + K - B, B - 1))
        batch.append(last_msg)
        put_many(batch)

    warm = cfg.warmup(wl)
    clock = time.perf_counter
    barrier.wait(cfg.grace)
    end = clock() + cfg.duration
    seq, chunks, t0, s0 = 0, 0, None, 0
    while True:
        chunks += 1
        if t0 is None and seq >= warm:             # the producer's own rate: from the first chunk after
            t0, s0 = clock(), seq                  # the warm-up to the end of the last data chunk
        last = chunks >= min_chunks and time.perf_counter() >= end
        send_chunk(seq, make(base | (LAST if last else 0) | (seq + K - 1)))
        seq += K
        if last:
            break
    t1, s1 = clock(), seq
    send_chunk(seq, stop)
    seq += K - 1                                   # the stop's position: data messages sent
    for _ in range(n_stops - 1):
        put(stop)
    ep.close()
    return {"role": "producer", "pid": pid, "sent": seq, "chunks": chunks,
            "timed": s1 - s0, "t0": t0, "t1": t1}


def _consume(adapter, spec, wl, cfg, pid, n_stops, barrier):
    ep = adapter.receiver(spec, wl)
    warm = cfg.warmup(wl)
    barrier.wait(cfg.grace)
    if n_stops == 1 and wl.producers == 1:
        out = _consume_one(ep, wl, warm)
    else:
        out = _consume_many(ep, adapter, wl, warm, n_stops)
    ep.close()
    return {"role": "consumer", "pid": pid, **out}


def _consume_one(ep, wl, warm):
    """One producer, one consumer: check every sample sits at the stream position its tag says.

    Python runs once per K messages (``islice`` steps over the fillers in C); the
    final K messages (fillers, then the stop) are checked one by one, so a loss
    there fails the cell instead of hanging it.
    """
    pl = PAYLOADS[wl.payload](wl.size, 0)
    seq_of, digest, filler_tag = pl.seq_of, pl.digest, pl.filler_tag
    K = chunk_len(wl)
    clock = time.perf_counter
    stream = _stream(ep, wl.batch)
    samples, errors = [], []
    t0 = t1 = None
    i0 = i1 = n = 0
    i = K - 1                                      # position of the next sample
    for m in itertools.islice(stream, K - 1, None, K):
        tag = seq_of(m)
        if tag == i:
            samples.append((tag, digest(m)))
            if t0 is None and i >= warm:
                t0, i0 = clock(), i
            i += K
            continue
        if tag != LAST | i:
            errors.append(f"message {i}: expected sample {i}, got tag {tag:#x}")
            break
        t1, i1 = clock(), i
        samples.append((tag, digest(m)))
        if t0 is None:
            t0, i0 = t1, i
        for j in range(i + 1, i + K):
            tag = seq_of(next(stream))
            if tag != filler_tag(j):
                errors.append(f"message {j}: expected filler tag {filler_tag(j):#x}, got {tag:#x}")
                break
        else:
            tag = seq_of(next(stream))
            if tag != STOP_SEQ:
                errors.append(f"message {i + K}: expected the stop, got tag {tag:#x}")
            n = i + K
        break
    else:   # the stream cannot end; only a broken adapter gets here
        errors.append("message stream ended")
    return {"counts": {0: n}, "samples": samples, "errors": errors,
            "timed": i1 - i0, "t0": t0 if i1 > i0 else None, "t1": t1}


def _consume_many(ep, adapter, wl, warm, n_stops):
    """Several producers or consumers: count every message per producer, from C.

    Fillers are identical per producer and stops identical for all, so
    ``Counter.update`` over ``iter(get, stop)`` counts the stream without a Python
    frame per message; the few other keys (samples) are taken out after each
    block and checked for order per producer here, for exactly-once by ``evaluate``.
    """
    if not wl.raw:
        raise ValueError("multi-process workloads need raw payloads")
    pls = [RawPayload(wl.size, p) for p in range(wl.producers)]
    owner = {pl.filler: p for p, pl in enumerate(pls)}
    stop = RawPayload(wl.size, 0).make(STOP_SEQ)
    K = chunk_len(wl)
    stream = _stream(ep, wl.batch)
    if adapter.views:                              # memoryviews are not hashable (and may be reused)
        stream = map(bytes, stream)
    nxt = ep.get if not (wl.batch or adapter.views) else stream.__next__
    clock = time.perf_counter
    counts, samples, errors, last = collections.Counter(), [], [], {}
    n_samples, n, stops, t0, n0 = 0, 0, 0, None, 0
    src = iter(nxt, stop)
    while stops < n_stops and not errors:
        counts.update(itertools.islice(src, K))
        for key in [k for k in counts if k not in owner]:
            c = counts.pop(key)
            tag = _raw_seq(key)
            p, s = tag >> SEQ_BITS, tag & STOP_SEQ & ~LAST
            if c != 1 or p >= len(pls) or (s + 1) % K or s <= last.get(p, -1):
                errors.append(f"bad or out-of-order sample tag {tag:#x} (seen {c}x, after {last.get(p)})")
                break
            last[p] = s
            samples.append((tag, zlib.crc32(key)))
            n_samples += 1
        block = sum(counts.values()) + n_samples - n
        n += block
        if t0 is None and n >= warm:
            t0, n0 = clock(), n
        if block < K:                              # src stopped at a stop message
            stops += 1
            src = iter(nxt, stop)
    t1 = clock()
    per = {owner[k]: c for k, c in counts.items() if k in owner}
    for tag, _ in samples:
        per[tag >> SEQ_BITS] = per.get(tag >> SEQ_BITS, 0) + 1
    return {"counts": per, "samples": samples, "errors": errors,
            "timed": n - n0, "t0": t0, "t1": t1}


def _ping(adapter, specs, wl, cfg, pid, n_stops, barrier):
    out, back = adapter.sender(specs[0], wl), adapter.receiver(specs[1], wl)
    payload = RawPayload(wl.size, 0)
    put, get, make, seq_of = out.put, back.get, payload.make, payload.seq_of
    warm, rtts, errors = 200, [], []
    clock = time.perf_counter_ns
    barrier.wait(cfg.grace)
    end = None
    for i in range(warm + cfg.round_trips):
        if i == warm:
            end = time.perf_counter() + cfg.pingpong_budget
        elif end is not None and not i & 63 and time.perf_counter() > end:
            break
        m = make(i)
        t = clock()
        put(m)
        r = get()
        dt = clock() - t
        if seq_of(r) != i or (not i & SAMPLE_MASK and r != m):
            errors.append(f"round trip {i}: got seq {seq_of(r)}")
            break
        if i >= warm:
            rtts.append(dt)
    put(make(STOP_SEQ))
    out.close()
    back.close()
    rtts.sort()
    pct = {p: rtts[min(len(rtts) - 1, int(len(rtts) * q))] / 1000.0 if rtts else None
           for p, q in (("p50", 0.5), ("p99", 0.99), ("p99.9", 0.999))}
    return {"role": "ping", "errors": errors, "round_trips": len(rtts), **pct}


def _pong(adapter, specs, wl, cfg, pid, n_stops, barrier):
    inp, out = adapter.receiver(specs[0], wl), adapter.sender(specs[1], wl)
    get, put, seq_of = inp.get, out.put, RawPayload.seq_of
    barrier.wait(cfg.grace)
    while True:
        m = get()
        if seq_of(m) == STOP_SEQ:
            break
        put(bytes(m))   # faster-fifo's raw get returns a memoryview its put refuses
    inp.close()
    out.close()
    return {"role": "pong"}


def _idle_send(adapter, spec, wl, cfg, pid, n_stops, barrier):
    ep = adapter.sender(spec, wl)
    barrier.wait(cfg.grace)
    time.sleep(cfg.idle)
    ep.put(RawPayload(wl.size, 0).make(0))
    ep.close()
    return {"role": "producer"}


def _idle_wait(adapter, spec, wl, cfg, pid, n_stops, barrier):
    ep = adapter.receiver(spec, wl)
    barrier.wait(cfg.grace)
    c0, w0 = time.process_time(), time.perf_counter()
    m = ep.get()
    c1, w1 = time.process_time(), time.perf_counter()
    ep.close()
    errors = [] if m == RawPayload(wl.size, 0).make(0) else ["wrong wake-up message"]
    return {"role": "consumer", "errors": errors, "cpu_pct": 100.0 * (c1 - c0) / (w1 - w0), "waited": w1 - w0}


_ROLES = {f.__name__: f for f in (_produce, _consume, _ping, _pong, _idle_send, _idle_wait)}


def _child(role, adapter, spec, wl, cfg, pid, n_stops, barrier, conn):
    """Entry point of every child: run one role and send its result dict (or the error) back."""
    try:
        out = _ROLES[role](adapter, spec, wl, cfg, pid, n_stops, barrier)
    except BaseException:  # noqa: BLE001 - report everything to the parent
        out = {"role": role, "error": traceback.format_exc(limit=6).strip().splitlines()[-1],
               "traceback": traceback.format_exc(limit=6)}
    try:
        conn.send(out)
    finally:
        conn.close()

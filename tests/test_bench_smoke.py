"""Smoke tests of the side-by-side benchmark runner (``fastq.bench``) and per-call micro-benchmarks."""

import multiprocessing as mp
import time

import pytest

from fastq import bench

TINY = bench.Settings.quick(duration=0.05, round_trips=300, pingpong_budget=0.2, idle=0.2, grace=10.0)
WORKLOADS = bench.select_workloads(["raw-64B", "raw-64KiB", "batch-64B", "pickle-tuple", "mpmc-64B",
                                    "pingpong", "idle-cpu"])


def _fastq_ready():
    try:
        import fastq
        return hasattr(fastq, "Queue")
    except ImportError:
        return False


@pytest.mark.parametrize("lib", [
    "mp_queue",
    pytest.param("fastq", marks=pytest.mark.skipif(not _fastq_ready(), reason="fastq.Queue not built")),
])
def test_runner_verifies_every_cell(lib):
    adapters = bench.select_adapters([lib])
    cells = bench.run(adapters, WORKLOADS, TINY)
    assert cells, "no cell ran"
    for c in cells:
        assert c.status == "ok", (c.workload, c.library, c.status, c.detail)
        if c.workload.startswith(("raw", "batch", "pickle", "mpmc")):
            assert "exactly once in order" in c.detail and c.figures["msgs_per_s"] > 0
    ran = {c.workload for c in cells}
    assert {"raw-64B", "pickle-tuple", "mpmc-64B", "pingpong", "idle-cpu"} <= ran
    text = bench.table_rows(cells, WORKLOADS, [a.label for a in adapters])
    assert any(r[0].startswith("raw-64B") for r in text)


def _faulty(base, fault, at):
    """An adapter class over ``base`` whose sender applies ``fault`` to the messages at stream indexes ``at``.

    ``fault`` is "drop", "dup" or "corrupt" (last byte flipped); ``at(i, m)`` says
    whether message ``i`` (0-based, per sending process) is hit.  Works for put and put_many.
    """

    def hit(i, m):
        if not at(i, m):
            return [m]
        if fault == "drop":
            return []
        if fault == "dup":
            return [m, m]
        return [bytes(m[:-1]) + bytes([m[-1] ^ 1])]

    class Faulty(base):
        def sender(self, spec, wl):
            ep = super().sender(spec, wl)
            put, put_many, count = ep.put, ep.put_many, iter(range(1 << 62))

            def put1(m):
                for x in hit(next(count), m):
                    put(x)

            def put_n(ms):
                put_many([x for m in ms for x in hit(next(count), m)])
            ep.put = put1
            if put_many:
                ep.put_many = put_n
            return ep

    Faulty.__name__ = Faulty.__qualname__ = f"{fault}_{base.__name__}"
    return Faulty


class _DropBeforeStop(bench.MpPipeAdapter):
    """A broken peer: loses the last message before the stop (the final chunk is checked one by one)."""

    def sender(self, spec, wl):
        ep = super().sender(spec, wl)
        put, held = ep.put, []

        def delayed(m):
            if bench.RawPayload.seq_of(m) == bench.STOP_SEQ:
                held.clear()
            elif held:
                put(held.pop())
            if bench.RawPayload.seq_of(m) == bench.STOP_SEQ:
                put(m)
            else:
                held.append(m)
        ep.put = delayed
        return ep


class _Hang(bench.MpPipeAdapter):
    """A broken peer: the receiver never returns."""

    def receiver(self, spec, wl):
        return bench.Endpoint(get=lambda: time.sleep(3600))


_first_sample = bench.chunk_len(bench.select_workloads(["raw-64B"])[0]) - 1
_RARE = 100_000       # 1 message in 100k


@pytest.mark.parametrize("adapter,status", [
    (_faulty(bench.MpPipeAdapter, "drop", lambda i, m: i == 3)(), "FAILED"),
    (_faulty(bench.MpPipeAdapter, "corrupt", lambda i, m: i == _first_sample)(), "FAILED"),
    (_DropBeforeStop(), "FAILED"),
    (_Hang(), "TIMEOUT")])
def test_runner_reports_broken_peers(adapter, status):
    wl = bench.select_workloads(["raw-64B"])[0]
    cfg = bench.Settings.quick(duration=0.05, grace=2.0)
    cell = bench.run_cell(adapter, wl, cfg, mp.get_context("fork"))
    assert cell.status == status, cell
    assert not cell.figures
    assert not mp.active_children()


@pytest.mark.skipif(not _fastq_ready(), reason="fastq.Queue not built")
@pytest.mark.parametrize("workload,fault", [(w, f) for w in ("raw-64B", "batch-64B", "mpmc-64B")
                                            for f in ("drop", "dup")] + [("mpmc-64B", "corrupt")])
def test_runner_catches_rare_faults(workload, fault):
    """One message in 100k lost or duplicated (a filler, never looked at by itself) fails the cell.

    With several producers or consumers every message is counted by its bytes, so a
    corrupted filler fails too.
    """
    adapter = _faulty(bench.FastqAdapter, fault, lambda i, m: i % _RARE == _RARE - 1)()
    wl = bench.select_workloads([workload])[0]
    cfg = bench.Settings.quick(duration=0.4, grace=10.0)
    cell = bench.run_cell(adapter, wl, cfg, mp.get_context("fork"))
    assert cell.status == "FAILED", cell
    assert not cell.figures
    assert not mp.active_children()
    clean = bench.run_cell(bench.FastqAdapter(), wl, bench.Settings.quick(duration=0.05), mp.get_context("fork"))
    assert clean.status == "ok", clean


_CALL_LIBS = ["fastq", "mp_queue", "mp_pipe", "faster_fifo", "zmq", "cloudtoid", "zeroq"]


@pytest.mark.parametrize("lib", _CALL_LIBS)
def test_put_get_cost(benchmark, lib):
    """Per-call cost of put + get of one 64-byte message on one queue inside one process."""
    adapter = bench.select_adapters([lib])[0]
    if adapter.missing() or (lib == "fastq" and not _fastq_ready()):
        pytest.skip(f"{lib} not available")
    wl = bench.select_workloads(["raw-64B"])[0]
    msg = bench.RawPayload(64, 0).make(7)
    spec = adapter.open(mp.get_context("fork"), wl, 1 << 20)
    rx = adapter.receiver(spec, wl)
    tx = adapter.sender(spec, wl)
    try:
        def put_get():
            tx.put(msg)
            return rx.get()
        assert bytes(benchmark(put_get)) == msg
    finally:
        tx.close()
        rx.close()
        adapter.close(spec)

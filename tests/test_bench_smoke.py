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


class _DropOne(bench.MpPipeAdapter):
    """A broken peer: loses message 3."""

    def sender(self, spec, wl):
        ep = super().sender(spec, wl)
        put = ep.put
        ep.put = lambda m: None if bench.RawPayload.seq_of(m) == 3 else put(m)
        return ep


class _Corrupt(bench.MpPipeAdapter):
    """A broken peer: flips the last byte of message 1024 (a CRC32-sampled one)."""

    def sender(self, spec, wl):
        ep = super().sender(spec, wl)
        put = ep.put
        ep.put = lambda m: put(m[:-1] + b"!" if bench.RawPayload.seq_of(m) == 1024 else m)
        return ep


class _Hang(bench.MpPipeAdapter):
    """A broken peer: the receiver never returns."""

    def receiver(self, spec, wl):
        return bench.Endpoint(get=lambda: time.sleep(3600))


@pytest.mark.parametrize("adapter,status", [(_DropOne(), "FAILED"), (_Corrupt(), "FAILED"),
                                            (_Hang(), "TIMEOUT")])
def test_runner_reports_broken_peers(adapter, status):
    wl = bench.select_workloads(["raw-64B"])[0]
    cfg = bench.Settings.quick(duration=0.05, grace=2.0)
    cell = bench.run_cell(adapter, wl, cfg, mp.get_context("fork"))
    assert cell.status == status, cell
    assert not cell.figures
    assert not mp.active_children()


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

"""Per-call cost of put + get of one 64-byte message inside one process."""

import multiprocessing as mp

from fastq import bench

WL = next(w for w in bench.WORKLOADS if w.name == "raw-64B")
MSG = bench.RawPayload(64, 0).make(1)


class PutGet:
    """``time_put_get``: one put followed by one get on the same queue."""

    params = (["fastq", "mp_queue", "mp_pipe", "faster_fifo", "zmq", "cloudtoid", "zeroq"],)
    param_names = ["library"]

    def setup(self, lib):
        self.adapter = next(a for a in bench.ADAPTERS if a.name == lib)
        if self.adapter.missing():
            raise NotImplementedError(f"{lib} is not installed")
        self.spec = self.adapter.open(mp.get_context("fork"), WL, 1 << 20)
        self.rx = self.adapter.receiver(self.spec, WL)
        self.tx = self.adapter.sender(self.spec, WL)

    def teardown(self, lib):
        self.tx.close()
        self.rx.close()
        self.adapter.close(self.spec)

    def time_put_get(self, lib):
        self.tx.put(MSG)
        self.rx.get()

"""Peak memory (max RSS of the benchmark process) of fastq in one process."""

import fastq
from fastq import bench

N_MESSAGES = 10_000


class PeakMemory:
    """``peakmem_queue_64MiB_10k_msgs``: create a 64 MiB raw queue, put 10k 1 KiB messages, get them all.

    The figure is the process's max RSS: the interpreter with fastq imported, plus
    the queue's mapping (prefaulted) and whatever put/get keep alive."""

    timeout = 60

    def peakmem_queue_64MiB_10k_msgs(self):
        payload = bench.RawPayload(bench.KiB, 0)
        make, seq_of = payload.make, payload.seq_of
        q = fastq.Queue(None, 64 * bench.MiB, serializer="raw")
        try:
            for i in range(N_MESSAGES):
                q.put(make(i))
            for i in range(N_MESSAGES):
                if seq_of(q.get()) != i:
                    raise RuntimeError(f"message {i} out of order")
        finally:
            q.close()

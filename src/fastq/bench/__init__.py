"""Side-by-side benchmark of fastq against other inter-process queues.

Each cell of the result table runs in fresh child processes: producers and
consumers attach to one queue, the producers send for a fixed time, and the
consumers time the stream (first to last timed message after a warm-up) and
verify it.  So that the table measures the queues rather than the harness, a
producer sends chunks of K messages: K - 1 copies of one pre-built filler from
a C-level loop, then one unique sample carrying (producer id, position in the
stream) and pseudo-random bytes whose CRC32 is checked; the consumer steps over
the fillers in C (``itertools.islice``) and checks that every sample arrives at
the position its tag says, so a lost, duplicated or reordered message fails the
cell.  With several producers or consumers, messages are counted per producer
in C and the samples must arrive exactly once, in order per producer.  A cell
whose check fails is reported as FAILED and never shows a figure.

Publish/subscribe cells (``topic-*`` workloads) run one publisher and 1, 2 or
4 subscriber processes: every subscriber receives and verifies the whole
stream on its own (count, positions of the samples, CRC32), the subscribers
time their own streams (messages/s delivered per subscriber) and the
publisher times its sends (the publisher's own rate).  ``topic_summary``
relates the figures to fastq's own Queue in the same run.

Libraries are reached through one small adapter class each (see ``ADAPTERS``);
a library that is not installed is skipped with a note.

The package, by concern (read in this order):

- ``payloads``: what a producer sends and how a consumer checks it;
- ``workloads``: the queue workloads (table rows), the ``Settings`` of a run;
- ``adapters``: one module per peer library (``adapters.base`` is the interface);
- ``roles``: what each child process of a cell does;
- ``runner``: one cell in fresh processes under a deadline, verified (``run_cell``), and a run (``run``);
- ``report``: the table, the topic summary, JSON and plot;
- ``cli``: the ``fastq bench`` options and ``main``.

``fastq bench`` and the asv suite in ``benchmarks/`` both use these modules.
"""

from .adapters import (ADAPTERS, CloudtoidAdapter, FasterFifoAdapter, FastqAdapter, FastqTopicAdapter,
                       Iceoryx2Adapter, MpPipeAdapter, MpQueueAdapter, ZeroqAdapter, ZmqAdapter, ZmqPubSubAdapter,
                       labels_of, library_names, select_adapters)
from .adapters.base import Adapter, Endpoint
from .cli import add_arguments, main
from .payloads import KiB, MiB, PAYLOADS, STOP_SEQ, ArrayPayload, RawPayload, TuplePayload
from .report import machine_info, print_table, table_rows, topic_summary, write_json, write_plot
from .runner import TOPIC_REFERENCE, Cell, evaluate, reference_jobs, run, run_cell
from .workloads import (TOPIC_FANOUT, TOPIC_SIZES, WORKLOADS, Settings, Workload, batch_len, chunk_len,
                        select_workloads, topic_name)

__all__ = ["ADAPTERS", "Adapter", "ArrayPayload", "Cell", "CloudtoidAdapter", "Endpoint", "FasterFifoAdapter",
           "FastqAdapter", "FastqTopicAdapter", "Iceoryx2Adapter", "KiB", "MiB", "MpPipeAdapter", "MpQueueAdapter",
           "PAYLOADS", "RawPayload", "STOP_SEQ", "Settings", "TOPIC_FANOUT", "TOPIC_REFERENCE", "TOPIC_SIZES",
           "TuplePayload", "WORKLOADS", "Workload", "ZeroqAdapter", "ZmqAdapter", "ZmqPubSubAdapter",
           "add_arguments", "batch_len", "chunk_len", "evaluate", "labels_of", "library_names", "machine_info",
           "main", "print_table", "reference_jobs", "run", "run_cell", "select_adapters", "select_workloads",
           "table_rows", "topic_name", "topic_summary", "write_json", "write_plot"]

"""Publish/subscribe figures of ``fastq.Topic`` and its peers, measured by ``fastq.bench`` cells.

One publisher process and 1, 2 or 4 subscriber processes; raw 64-byte and
1 KiB messages; fastq (blocking ``get`` and polling ``get_nowait``), pyzmq
XPUB/SUB over ``ipc://`` (lossless: ``XPUB_NODROP``) and iceoryx2's Python
publish/subscribe (its subscribers poll).  Every figure comes from a verified
cell (each subscriber checks the whole stream: count, positions, CRC32): a
cell that fails its checks fails the asv benchmark instead of reporting a
number.  A library that is not installed is skipped (asv shows n/a; ``fastq
bench`` says why in its notes).

``TopicFanout`` tracks the two figures of each cell (messages/s delivered per
subscriber, the publisher's own rate), measured once for both tracks as in
``bench_ipc``.  ``TopicTargets`` tracks the two ratios the topic is held to,
each from cells measured in the same asv process: the 1-to-1 topic rate as a
percentage of the Queue's SPSC raw-64B rate (target >= 90), and the
publisher's rate with 4 subscribers as a percentage of its rate with 1
(target >= 90).
"""

import multiprocessing as mp
import os
import pickle
import tempfile

from fastq import bench

LIBS = ["fastq", "fastq_poll", "zmq", "iceoryx2_poll"]   # topic adapter names in fastq.bench
SUBSCRIBERS = [1, 2, 4]
SIZES = ["64B", "1KiB"]
DURATION = 0.3          # seconds the publisher sends in a cell


def _adapter(lib, topic=True):
    """The adapter named ``lib`` (its topic variant, or its Queue variant if not ``topic``)."""
    return next(a for a in bench.ADAPTERS if a.name == lib and a.topic == topic)


def _workload(name):
    return next(w for w in bench.WORKLOADS if w.name == name)


def _cell(lib, workload, topic=True):
    """Figures of one verified cell; NotImplementedError (asv: skipped) if ``lib`` cannot run it,
    RuntimeError (asv: failed) if the cell is not ok."""
    adapter, wl = _adapter(lib, topic), _workload(workload)
    why = adapter.missing()
    if why or not adapter.supports(wl):
        raise NotImplementedError(f"{lib} cannot run {workload} here: {why or 'unsupported'}")
    cfg = bench.Settings.quick(duration=DURATION)
    cell = bench.run_cell(adapter, wl, cfg, mp.get_context("fork"))
    if cell.status != "ok":
        raise RuntimeError(f"{lib} {workload}: {cell.status} {cell.detail}")
    return cell.figures


def _shared_cell(cells, readers, lib, workload):
    """Figures of the topic cell (lib, workload) for one of ``readers`` tracks: measured by the first
    reader, read from the directory ``cells`` by the others, forgotten once all have read it."""
    path = os.path.join(cells, f"{lib}-{workload}.pickle")
    try:
        with open(path, "rb") as f:
            entry = pickle.load(f)
    except FileNotFoundError:
        entry = {"figures": _cell(lib, workload), "left": readers}
    entry["left"] -= 1
    if entry["left"] > 0:
        with open(path, "wb") as f:
            pickle.dump(entry, f)
    elif os.path.exists(path):
        os.remove(path)
    return entry["figures"]


class TopicFanout:
    """1 publisher -> N subscriber processes, raw messages: msgs/s per subscriber and of the publisher."""

    params = (LIBS, SUBSCRIBERS, SIZES)
    param_names = ["library", "subscribers", "size"]
    timeout = 120

    def setup_cache(self):
        return os.path.abspath(tempfile.mkdtemp(prefix="cells-", dir="."))

    def setup(self, cells, lib, n, size):
        self.figures = _shared_cell(cells, 2, lib, bench.topic_name(bench.KiB if size == "1KiB" else 64, n))

    def track_sub_msgs_per_s(self, cells, lib, n, size):
        return self.figures["msgs_per_s"]

    track_sub_msgs_per_s.unit = "msgs/s"

    def track_pub_msgs_per_s(self, cells, lib, n, size):
        return self.figures["pub_msgs_per_s"]

    track_pub_msgs_per_s.unit = "msgs/s"


class TopicTargets:
    """Ratios of the targets, each from cells of one asv process (so of one machine state)."""

    timeout = 120

    def track_topic_1to1_vs_queue_pct(self, lib):
        """fastq topic-64B-1sub per-subscriber rate as % of fastq Queue raw-64B (target >= 90)."""
        queue = _cell(lib, bench.TOPIC_REFERENCE, topic=False)["msgs_per_s"]
        topic = _cell(lib, bench.topic_name(64, 1))["msgs_per_s"]
        return 100.0 * topic / queue

    track_topic_1to1_vs_queue_pct.params = (["fastq", "fastq_poll"],)
    track_topic_1to1_vs_queue_pct.param_names = ["library"]
    track_topic_1to1_vs_queue_pct.unit = "%"

    def track_pub_4_vs_1_sub_pct(self, lib, size):
        """Publisher rate with 4 subscribers as % of its rate with 1 (fastq target >= 90)."""
        nbytes = bench.KiB if size == "1KiB" else 64
        one = _cell(lib, bench.topic_name(nbytes, 1))["pub_msgs_per_s"]
        four = _cell(lib, bench.topic_name(nbytes, max(bench.TOPIC_FANOUT)))["pub_msgs_per_s"]
        return 100.0 * four / one

    track_pub_4_vs_1_sub_pct.params = (LIBS, SIZES)
    track_pub_4_vs_1_sub_pct.param_names = ["library", "size"]
    track_pub_4_vs_1_sub_pct.unit = "%"

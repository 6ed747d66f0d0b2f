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
``bench_ipc`` (``fastq.bench.cells.shared_figures``).  ``TopicTargets`` tracks the two ratios the topic is held to,
each from cells measured in the same asv process: the 1-to-1 topic rate as a
percentage of the Queue's SPSC raw-64B rate (target >= 90), and the
publisher's rate with 4 subscribers as a percentage of its rate with 1
(target >= 90).
"""

from fastq import bench
from fastq.bench import cells

LIBS = ["fastq", "fastq_poll", "zmq", "iceoryx2_poll"]   # topic adapter names in fastq.bench
SUBSCRIBERS = [1, 2, 4]
SIZES = ["64B", "1KiB"]


def _cell(lib, workload, topic=True):
    """Figures of one verified cell (see ``fastq.bench.cells.figures``)."""
    return cells.figures(lib, workload, topic)


class TopicFanout:
    """1 publisher -> N subscriber processes, raw messages: msgs/s per subscriber and of the publisher."""

    params = (LIBS, SUBSCRIBERS, SIZES)
    param_names = ["library", "subscribers", "size"]
    timeout = 120

    def setup_cache(self):
        return cells.cell_dir()

    def setup(self, cell_dir, lib, n, size):
        name = bench.topic_name(bench.KiB if size == "1KiB" else 64, n)
        self.figures = cells.shared_figures(cell_dir, 2, lib, name, topic=True)

    def track_sub_msgs_per_s(self, cell_dir, lib, n, size):
        return self.figures["msgs_per_s"]

    track_sub_msgs_per_s.unit = "msgs/s"

    def track_pub_msgs_per_s(self, cell_dir, lib, n, size):
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

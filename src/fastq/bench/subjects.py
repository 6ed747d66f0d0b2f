"""Program workload ``topic-subjects`` (issue 14): reading a topic stream with a subject filter.

The stream carries 100 subjects in turn (``orders.<k>.created``, k = 0..99); the
subscriber wants one of them.  fastq's run subscribes with ``subjects=`` (the
filter runs on the subject stored ahead of each payload, so the 99 in 100 it
does not want are never unpickled); the peer run is the same subscriber without
``subjects=``, unpickling every message and filtering on a field in Python.
The whole stream is published first, then timed as it is read (messages of the
stream passed per second, wanted or not), so the figure is the read path's.
Each run checks that it got exactly the wanted messages, in order.
"""

from __future__ import annotations

import os
import tempfile
import time

from .programs import Program, Run

NAMES = ("topic-subjects",)
SUBJECTS = 100
WANTED = 7
TARGET = 10.0


def _publish(t, n: int) -> None:
    for start in range(0, n, 1000):
        for i in range(start, min(n, start + 1000)):
            k = i % SUBJECTS
            t.publish({"id": i, "subject": f"orders.{k}.created", "amount": i * 3 % 1000},
                      subject=f"orders.{k}.created")


def read(mode: str, n: int) -> dict:
    """Publish n messages, then read them all with one subscriber ("filter": subjects=,
    "python": unpickle and filter); figures: stream messages/s read."""
    import fastq
    with tempfile.TemporaryDirectory(prefix="fastq-bench-subj-") as d:
        name = os.path.join(d, "t")
        want = f"orders.{WANTED}.created"
        with fastq.Topic(name, capacity=1 << 26) as t:
            if mode == "filter":
                s = t.subscribe(start="earliest", subjects=want)
            else:
                s = t.subscribe(start="earliest")
            _publish(t, n)
            expect = list(range(WANTED, n, SUBJECTS))
            got = []
            t0 = time.perf_counter()
            if mode == "filter":
                while len(got) < len(expect):
                    got.extend(m["id"] for m in s.get_many(4096, timeout=10))
            else:
                while s.lag or len(got) < len(expect):
                    got.extend(m["id"] for m in s.get_many(4096, timeout=10) if m["subject"] == want)
            secs = time.perf_counter() - t0
            s.close()
    errors = [] if got == expect else [f"got {len(got)} wanted messages, expected {len(expect)} in order"]
    return {"figures": {"msgs_per_s": n / secs, "seconds": secs}, "errors": errors}


def programs(cfg) -> list:
    n = max(cfg.items, 10 * SUBJECTS)

    def run(label, mode):
        return Run(label, __name__, "read", {"mode": mode, "n": n}, (), cfg.program_timeout)

    return [Program("topic-subjects", run("fastq subscribe(subjects=...)", "filter"),
                    (run("fastq subscribe(), unpickle and filter in Python", "python"),),
                    ((f"topic-subjects: 1 subject in {SUBJECTS}, {n} msgs (stream msgs/s) ↑",
                      "msgs_per_s", True),))]


def summary(outcomes) -> list:
    """The ratio of issue 14's target, from the runs of this report."""
    by = {o.label: o for o in outcomes if o.program == "topic-subjects" and o.status == "ok"}
    ours = next((o for label, o in by.items() if "subjects=" in label), None)
    peer = next((o for label, o in by.items() if "Python" in label), None)
    if not (ours and peer):
        return []
    r = ours.figures["msgs_per_s"] / peer.figures["msgs_per_s"]
    return [f"topic-subjects: filtering before unpickling reads the stream {r:.1f}x faster than "
            f"unpickling and filtering in Python (target >= {TARGET:g}x: "
            f"{'met' if r >= TARGET else 'NOT met'})"]

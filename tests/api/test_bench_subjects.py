"""The ``topic-subjects`` program workload of ``fastq bench`` (fastq.bench.subjects): both runs
verify what they read, and the summary states the ratio against issue 14's target."""

from fastq.bench import Settings, programs, subjects


def test_both_runs_read_exactly_the_wanted_messages():
    for mode in ("filter", "python"):
        res = subjects.read(mode, 2000)
        assert res["errors"] == [] and res["figures"]["msgs_per_s"] > 0


def test_listed_and_summarized():
    assert "topic-subjects" in programs.names()
    (prog,) = programs.select(["topic-subjects"], Settings.quick(items=2000))
    ours = programs.Outcome("topic-subjects", prog.fastq.label, "ok", {"msgs_per_s": 30.0})
    peer = programs.Outcome("topic-subjects", prog.peers[0].label, "ok", {"msgs_per_s": 2.0})
    (line,) = subjects.summary([ours, peer])
    assert "15.0x" in line and "met" in line and "NOT" not in line

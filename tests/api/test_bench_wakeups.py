"""``python -m fastq.bench.wakeups``: the counted figure of the wake path runs through
its command line and reports a complete stream (the module raises if the consumer
missed a message)."""
import json
import subprocess
import sys


def test_wakeups_command_reports_counts_of_a_complete_stream():
    out = subprocess.run([sys.executable, "-m", "fastq.bench.wakeups", "--messages", "20000", "--json"],
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    res = json.loads(out.stdout)
    assert res["messages"] == 20000
    for k in ("producer_wakes", "consumer_sleeps", "wakes_per_message", "msgs_per_s"):
        assert k in res
    assert res["wakes_per_message"] == res["producer_wakes"] / 20000

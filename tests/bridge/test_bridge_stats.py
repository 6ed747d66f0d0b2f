"""BridgeStats.to_dict: the counters a bridge exposes (``fastq bridge`` prints them; ``fastq stat``/``top``
read them)."""
import dataclasses
import json

from fastq.bridge import BridgeStats, Outbound


def test_to_dict_names_every_counter_in_order_and_is_json():
    s = BridgeStats(forwarded=5, acked=4, redelivered=1, duplicates=1, errors=2, reconnects=1,
                    rejected=3, last_error="ConnectionError: gone")
    d = s.to_dict()
    assert list(d) == [f.name for f in dataclasses.fields(BridgeStats)]
    assert d == {"forwarded": 5, "acked": 4, "redelivered": 1, "duplicates": 1, "errors": 2,
                 "reconnects": 1, "rejected": 3, "last_error": "ConnectionError: gone"}
    assert json.loads(json.dumps(d)) == d
    d["acked"] = 99                    # a copy: the stats are not changed through it
    assert s.acked == 4


def test_a_bridge_snapshot_converts(tmp_path):
    import fastq
    q = fastq.Queue(str(tmp_path / "q"), 4096, serializer="raw")
    b = Outbound(q, "s.x", servers="nats://127.0.0.1:1")     # never started: no server needed
    assert b.stats().to_dict() == BridgeStats().to_dict()
    q.close()

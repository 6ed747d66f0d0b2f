"""Queue.receive_many: a batch of acknowledged deliveries with each message's position (what
fastq.bridge.Outbound takes from a queue, so that more than prefetch messages are in flight)."""
import os
import pickle
import signal
import subprocess
import sys
import textwrap

import pytest

import fastq


def _positions_one_by_one(path, n):
    q = fastq.Queue(path, 1 << 16, serializer="raw")
    q.put_many([b"%d" % i for i in range(n)])
    out = []
    for _ in range(n):
        d = q.receive()
        out.append(d.position)
        d.ack()
    q.close()
    return out


def test_values_and_positions_are_those_receive_gives(tmp_path):
    want = _positions_one_by_one(str(tmp_path / "a"), 10)
    q = fastq.Queue(str(tmp_path / "b"), 1 << 16, serializer="raw", prefetch=2)
    q.put_many([b"%d" % i for i in range(10)])
    b = q.receive_many(4)
    c = q.receive_many()
    assert isinstance(b, fastq.Deliveries) and isinstance(b, fastq.Delivery)
    assert b.values == [b"0", b"1", b"2", b"3"] and c.values == [b"%d" % i for i in range(4, 10)]
    assert b.positions + c.positions == want and b.position == want[0] and len(b) == 4
    assert b.value is b.values and not b.redelivered
    with pytest.raises(RuntimeError):       # a batch is one delivery against prefetch (2)
        q.receive_many(block=False)
    c.ack()
    assert q.qsize() == 0 and q.unacked_count() == 4 and q.unfinished() == 4
    b.nack()                                # all back, each on its own, same position
    again = []
    for _ in range(4):
        again.append(q.receive_many(10, timeout=5))
        again[-1].ack()
    assert [a.values for a in again] == [[b"0"], [b"1"], [b"2"], [b"3"]]
    assert [p for a in again for p in a.positions] == want[:4]
    assert all(a.redelivered for a in again)
    assert q.qsize() == 0 and q.unacked_count() == 0
    with pytest.raises(ValueError):
        q.receive_many(0)
    with pytest.raises(fastq.Empty):
        q.receive_many(block=False)


def test_a_killed_receiver_gives_each_back_with_its_position(tmp_path):
    path = str(tmp_path / "q")
    q = fastq.Queue(path, serializer="raw")
    q.put_many([b"a", b"b", b"c", b"d"])
    q.receive().ack()
    code = textwrap.dedent(f"""
        import os, sys, fastq
        q = fastq.Queue.open({path!r}, serializer="raw")
        b = q.receive_many(2)
        print(*b.positions, flush=True)
        sys.stdout.close()
        os.kill(os.getpid(), 9)
    """)
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                       env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)})
    assert p.returncode == -signal.SIGKILL
    held = [int(x) for x in p.stdout.split()]
    assert len(held) == 2
    q.recover()
    got = [q.receive_many(10, timeout=5) for _ in range(2)]
    assert [g.values for g in got] == [[b"b"], [b"c"]]
    assert [g.positions[0] for g in got] == held and all(g.redelivered for g in got)
    rest = q.receive_many(10, timeout=5)
    assert rest.values == [b"d"] and not rest.redelivered


def test_a_message_that_does_not_load(tmp_path):
    q = fastq.Queue(str(tmp_path / "q"))
    q.put(1)
    raw = fastq.Queue.open(str(tmp_path / "q"), serializer="raw")
    raw.put(b"not a pickle")
    raw.put(pickle.dumps(3))
    # a later message fails: all are given back; the failing one, back alone, is then consumed
    with pytest.raises(Exception):
        q.receive_many()
    first = q.receive_many()
    assert first.values == [1] and first.redelivered
    first.ack()
    with pytest.raises(Exception):
        q.receive_many()
    last = q.receive_many()
    assert last.values == [3]
    last.ack()
    assert q.qsize() == 0 and q.unacked_count() == 0

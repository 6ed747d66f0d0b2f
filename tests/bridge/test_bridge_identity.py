"""Delivery.position: the stable identity fastq.bridge derives Nats-Msg-Id from."""
import os
import signal
import subprocess
import sys
import textwrap

import fastq


def test_queue_positions_unique_and_kept_by_nack(tmp_path):
    q = fastq.Queue(str(tmp_path / "q"), 4096, serializer="raw")
    seen = []
    for round_ in range(20):  # several laps of a 4 KiB ring
        q.put_many([b"x" * 100] * 5)
        for _ in range(5):
            d = q.receive()
            seen.append(d.position)
            if _ == 2:
                pos = d.position
                d.nack()
                again = q.receive()
                assert again.redelivered and again.position == pos
                again.ack()
            else:
                d.ack()
    assert len(seen) == len(set(seen)) and seen == sorted(seen)


def test_queue_position_kept_across_a_killed_receiver(tmp_path):
    path = str(tmp_path / "q")
    q = fastq.Queue(path, serializer="raw")
    q.put_many([b"a", b"b", b"c"])
    first = q.receive()
    first.ack()
    code = textwrap.dedent(f"""
        import os, sys, fastq
        q = fastq.Queue.open({path!r}, serializer="raw")
        d = q.receive()
        print(d.position, flush=True)
        sys.stdout.close()
        os.kill(os.getpid(), 9)
    """)
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                       env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)})
    assert p.returncode == -signal.SIGKILL
    pos = int(p.stdout)
    q.recover()
    d = q.receive(timeout=5)
    assert d.value == b"b" and d.redelivered and d.position == pos
    assert pos > first.position


def test_topic_positions_same_for_every_subscriber_and_kept_by_nack():
    t = fastq.Topic(serializer="raw")
    s1, s2 = t.subscribe(), t.subscribe(prefetch=4)
    t.publish_many([b"1", b"2", b"3"])
    a = [s1.receive() for _ in range(1)]
    a[0].ack()
    p1 = [a[0].position]
    for _ in range(2):
        d = s1.receive()
        p1.append(d.position)
        d.ack()
    ds = [s2.receive() for _ in range(3)]
    assert [d.position for d in ds] == p1 and p1 == sorted(set(p1))
    ds[1].nack()
    for d in (ds[0], ds[2]):
        d.ack()
    again = s2.receive()
    assert again.redelivered and again.value == b"2" and again.position == p1[1]
    again.ack()

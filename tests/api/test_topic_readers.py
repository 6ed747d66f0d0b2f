"""Topic readers through the Python binding: what the C-level tests of
tests/c/test_topic_c_readers.py cannot see (the binding's object lifetime)."""

import gc

import pytest

import fastq

pytestmark = pytest.mark.usefixtures("fastq_dir")


def test_subscriber_collected_in_a_reference_cycle_leaves_its_group():
    """Issue 9 (suspected): Subscriber.__dealloc__ leaves the group only while its
    `seg` is set; the cycle collector's tp_clear set it to None first when the
    Subscriber was older than the cycle holding it, so its entry stayed ACTIVE
    under a live pid (holding a block topic's publishers, forever).  Correct: a
    Subscriber collected in a reference cycle leaves its group like one dropped
    without a cycle, and publishing past the ring's capacity does not block."""
    t = fastq.Topic(capacity=4096)  # overflow="block"
    try:
        sub = t._subscribe("x", 0, 0)  # the binding's member object
        assert len(t.subscribers()) == 1
        box = [sub]  # newer than the Subscriber: gc clears the Subscriber first
        box.append(box)
        del sub, box
        gc.collect()
        assert t.subscribers() == [], "a collected Subscriber still holds its entry"
        for i in range(100):  # 100 x 100 bytes: more than the ring holds
            t.publish(b"x" * 100, timeout=5)
    finally:
        t.close()

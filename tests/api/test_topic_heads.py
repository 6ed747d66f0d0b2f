"""Public-API tests of what a topic subscription's ``lag`` counts (issue 9): the
messages its group is still to deliver, including those given back by nack(),
close() or a subscriber's death, but not a delivery received and not settled.
The C-level regressions of the group heads and the release scan are in
tests/c/test_topic_c_heads.py."""

import pytest

import fastq

pytestmark = pytest.mark.usefixtures("fastq_dir")


def _lags(t, group):
    return [s.lag for s in t.subscribers() if s.group == group]


def test_lag_counts_a_message_given_back_by_nack_as_by_close():
    """lag counted a message given back by close() (an orphan for the group)
    but not one given back by nack(): now both, and neither while received."""
    with fastq.Topic("lagnack", capacity=1 << 16, serializer="raw") as t:
        a = t.subscribe(group="g")
        b = t.subscribe(group="g")
        t.publish_many([b"m0", b"m1", b"m2"])
        assert a.lag == 3
        d = a.receive(timeout=1)
        assert d.value == b"m0" and a.lag == 2  # in flight: not counted
        d.nack()
        assert a.lag == b.lag == 3 and _lags(t, "g") == [3, 3]
        d = a.receive(timeout=1)
        assert (d.value, d.redelivered) == (b"m0", True) and a.lag == 2
        d.ack()
        assert b.receive(timeout=1).value == b"m1" and a.lag == 1
        b.close()  # m1 unsettled: given back to the group
        assert a.lag == 2
        d = a.receive(timeout=1)
        assert (d.value, d.redelivered) == (b"m1", True)
        d.ack()
        assert a.get(timeout=1) == b"m2" and a.lag == 0
        a.close()


def test_lag_is_zero_after_nack_without_requeue():
    """nack(requeue=False) drops the message: it is not to come, not counted."""
    with fastq.Topic("lagdrop", capacity=1 << 16, serializer="raw") as t:
        s = t.subscribe()
        t.publish(b"x")
        d = s.receive(timeout=1)
        d.nack(requeue=False)
        assert s.lag == 0
        with pytest.raises(fastq.Empty):
            s.get_nowait()
        s.close()

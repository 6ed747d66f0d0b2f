"""Reproductions of the findings of review 15 (docs/review15.md): the C changes of
h/counters (a6ebdf1..7ca989f): the per-lane sample mark (fq_sample_due), the unlocked
statistics add, FQ_NO_COUNTERS, and a queue's unacknowledged deliveries (the held word
of a consumer lane, fq_get_mark_unacked / fq_held_read, layout 12).

A test that shows a defect asserts the wanted behaviour and is a strict xfail whose
reason names the defect, where it is and a fix.  The others check a suspicion the
review refuted, so that it stays refuted.  No timing assertion.
"""

import os
import signal

import pytest

import fastq
from support.cli import fastq_json
from support.cring import Q
from support.cseg import ffi, lib
from support.procs import start_py


def _held(q):
    c = ffi.new("fq_counts *")
    lib.fq_counts_read(q.q, c)
    return c.held, c.held_since_ns


# ---- H1: a held word is never cleared, and a later claim at the same position
# ---- (a requeued record taken again) matches it ---------------------------------

_H1 = (
    "H1 (csrc/fq_get.c fq_get_mark_unacked / fq_inspect.c fq_held_read): the held word "
    "of a consumer lane is never cleared when its claim ends (ack, nack, recovery), and "
    "a reader counts it whenever the lane is WON at the position it names.  A record "
    "given back (nack, or recovery of a killed holder) keeps its position; the next "
    "claim of it on that lane (a get(), in this process or in the slot's next owner) "
    "is then counted as an unacknowledged receive() delivery, with the old receive's "
    "time as 'oldest'; a get() killed there stays counted until recovery.  Fix: clear "
    "the held word when the marked claim ends (fq_get_end / fq_give_back, before the "
    "IDLE store; a flag in fq_claim says it was marked, so get() pays nothing) and in "
    "recovery (fq_fix_cons_count, before RECOVERED) - or clear it in fq_intent_claim "
    "for consumers (one store to the line the claim writes anyway)")


@pytest.mark.xfail(strict=True, reason=_H1)
def test_a_get_of_a_record_nacked_on_its_lane_is_not_a_held_delivery(seg):
    q = seg()
    assert q.put(b"x") == 0
    rc, a = q.begin()  # receive(): claim, then the mark
    assert rc == 0
    lib.fq_get_mark_unacked(q.q, a)
    n, since = _held(q)
    assert n == 1 and since > 0
    lane = a.lane
    q.abort(a)  # nack(): the record is requeued at the same position
    assert _held(q) == (0, 0)
    rc, b = q.begin()  # a get(): takes the requeued record, on the same lane
    assert rc == 0 and b.lane == lane and b.redelivered
    try:
        assert _held(q) == (0, 0), "a get() in progress counted as an unacked delivery"
    finally:
        q.end(b)


_CHILD_GET_BLOCKED_IN_LOADS = """
import sys, time, fastq

class Ser:
    calls = 0
    def dumps(self, o):
        return o
    def loads(self, b):
        Ser.calls += 1
        if Ser.calls == %d:  # the get(): block inside loads, its claim open
            print("in get", flush=True)
            time.sleep(600)
        return b

q = fastq.Queue.open(%r, serializer=Ser())
%s
q.get(timeout=30)
"""


@pytest.mark.xfail(strict=True, reason=_H1)
def test_held_through_fastq_stat_a_get_after_a_nack_is_not_a_delivery(fastq_dir, procs):
    q = fastq.Queue("h1", serializer="raw")
    q.put(b"one")
    # one process: receive() the message, nack() it, then get() it (the same lane,
    # the same position), blocked in loads while `fastq stat` looks
    p = start_py(procs, _CHILD_GET_BLOCKED_IN_LOADS % (2, "h1", "q.receive(timeout=30).nack()"))
    assert p.stdout.readline().strip() == "in get", p.stderr.read()
    s = fastq_json("stat", "h1")
    assert s["unacked"] == 1, s  # the get()'s claim: a message delivered, not finished
    try:
        assert s["unacked_deliveries"] == 0, s  # but no receive() delivery is open
    finally:
        os.kill(p.pid, signal.SIGKILL)
        p.wait(timeout=60)
        q.close()


@pytest.mark.xfail(strict=True, reason=_H1)
def test_held_through_fastq_stat_a_dead_holders_word_is_not_the_next_owners(fastq_dir, procs):
    q = fastq.Queue("h1b", serializer="raw")
    q.put(b"one")  # this process takes its slot first
    holder = start_py(procs, """
import time, fastq
q = fastq.Queue.open("h1b", serializer="raw")
d = q.receive(timeout=30)
print("held", flush=True)
time.sleep(600)
""")
    assert holder.stdout.readline().strip() == "held", holder.stderr.read()
    assert fastq_json("stat", "h1b")["unacked_deliveries"] == 1
    os.kill(holder.pid, signal.SIGKILL)
    holder.wait(timeout=60)
    assert q.recover()  # the message is requeued, the holder's slot freed
    s = fastq_json("stat", "h1b")
    assert s["unacked_deliveries"] == 0 and s["depth"] == 1 and s["dead_processes"] == 0
    # the slot's next owner get()s the requeued message on the same lane, blocked
    # in loads: its claim is at the position the dead holder's word names
    p = start_py(procs, _CHILD_GET_BLOCKED_IN_LOADS % (1, "h1b", ""))
    assert p.stdout.readline().strip() == "in get", p.stderr.read()
    s = fastq_json("stat", "h1b")
    assert s["unacked"] == 1, s
    try:
        assert s["unacked_deliveries"] == 0, s
    finally:
        os.kill(p.pid, signal.SIGKILL)
        p.wait(timeout=60)
        q.close()

"""Delivery.attempt and nack(delay=) across processes (issue 14): attempts
counted message by message when holders are SIGKILLed, and a delayed
message coming back after the process that nacked it died (after its nack,
or inside it)."""
from __future__ import annotations

import os
import signal
import time

import fastq
from fastq import _core
from support.procs import fork, reap

SMALL = 1 << 16
N = 20
# (message, attempt) at which the child holding it kills itself before acking
KILLS = {(3, 1), (3, 2), (7, 1), (12, 1), (12, 2), (12, 3), (19, 1)}
# (message, attempt) that the child nacks with a delay instead
DELAYS = {(5, 1), (12, 4)}


def _consumer(wfd):
    with fastq.Queue.open("qa") as q:
        while True:
            d = q.receive(timeout=30)
            os.write(wfd, f"{d.value} {d.attempt} {d.id} {int(d.redelivered)}\n".encode())
            if (d.value, d.attempt) in KILLS:
                os.kill(os.getpid(), signal.SIGKILL)
            if (d.value, d.attempt) in DELAYS:
                d.nack(delay=0.05)
                continue
            d.ack()
            if q.unfinished() == 0:  # every message acked (held ones count until acked)
                return 0


def test_attempts_message_by_message_across_kills(fastq_dir):
    with fastq.Queue("qa", capacity=SMALL) as q:
        q.put_many(range(N))
        r, w = os.pipe()
        codes = []
        while not codes or codes[-1] != 0:
            assert len(codes) <= len(KILLS), f"more children than kills: {codes}"
            codes.append(reap(fork(_consumer, w), timeout=60))
        os.close(w)
        with os.fdopen(r) as f:
            seen = [line.split() for line in f.read().splitlines()]
        assert codes.count(-signal.SIGKILL) == len(KILLS), (codes, seen)
        by_msg = {}
        for v, a, ident, redelivered in seen:
            by_msg.setdefault(int(v), []).append((int(a), ident, int(redelivered)))
        assert sorted(by_msg) == list(range(N)), "every message delivered"
        for m, got in by_msg.items():
            rounds = 1 + sum(1 for k in KILLS | DELAYS if k[0] == m)
            assert [a for a, _, _ in got] == list(range(1, rounds + 1)), (m, got)
            assert len({i for _, i, _ in got}) == 1, "the id is stable"
            assert [rd for _, _, rd in got] == [0] + [1] * (rounds - 1)
        assert len({got[0][1] for got in by_msg.values()}) == N, "ids are distinct"
        assert q.empty() and q.unfinished() == 0


def _nack_then_die(wfd, delay, inside):
    with fastq.Queue.open("qd") as q:
        d = q.receive(timeout=10)
        if inside:  # killed inside nack(), after the not-before was written
            _core._test_set_crash_point("nack_after_delay")
        t = time.time()
        os.write(wfd, f"{t!r}\n".encode())
        d.nack(delay=delay)
        os.kill(os.getpid(), signal.SIGKILL)


def _delayed_nack_survives(delay, inside):
    with fastq.Queue("qd", capacity=SMALL) as q:
        q.put_many(["m", "n"])
        r, w = os.pipe()
        code = reap(fork(_nack_then_die, w, delay, inside))
        os.close(w)
        with os.fdopen(r) as f:
            t_nack = float(f.read())
        assert code == (9 if inside else -signal.SIGKILL)
        # "n" flows past the delayed "m" (taken first if it were visible)
        n = q.receive(timeout=30)
        assert (n.value, n.attempt) == ("n", 1)
        n.ack()
        m = q.receive(timeout=30)
        assert time.time() >= t_nack + delay, "never before the delay"
        assert (m.value, m.attempt, m.redelivered) == ("m", 2, True)
        m.ack()
        assert q.empty() and q.unfinished() == 0


def test_delayed_nack_survives_the_death_of_the_nacker(fastq_dir):
    _delayed_nack_survives(0.5, inside=False)


def test_delayed_nack_survives_a_death_inside_nack(fastq_dir):
    """Killed after writing the not-before, before giving the record back:
    recovery requeues it, and the delay holds."""
    _delayed_nack_survives(0.5, inside=True)

"""fastq.rpc: calls and awaitable calls, remote exceptions with their traceback, timeouts,
many callers in many processes each getting their own answers, a killed server."""
from __future__ import annotations

import asyncio
import os
import signal
import threading
import time

import pytest

import fastq
from fastq import rpc
from support.procs import fork, reap


def echo(x):
    return ("echo", os.getpid(), x)


def answer(x):
    if x == "raise":
        raise LookupError("no such thing")
    if x == "slow":
        time.sleep(1.0)
    if x == "unpicklable":
        return lambda: None
    return x * 2


def dies_once(x):
    """Kills its server process the first time it sees ``x == "die"``."""
    mark = os.path.join(os.environ["FASTQ_DIR"], "died")
    if x == "die" and not os.path.exists(mark):
        open(mark, "w").close()
        os.kill(os.getpid(), signal.SIGKILL)
    return (x, os.getpid())


def test_call(fastq_dir):
    with rpc.Server("svc", answer):
        c = rpc.Client("svc")
        assert c.call(21, timeout=10) == 42
        assert [c.call(i) for i in range(100)] == [2 * i for i in range(100)]


def test_remote_exception_with_traceback(fastq_dir):
    with rpc.Server("svc", answer):
        with pytest.raises(LookupError, match="no such thing") as ei:
            rpc.Client("svc").call("raise", timeout=10)
    cause = ei.value.__cause__
    assert isinstance(cause, fastq.RemoteTraceback)
    assert "answer" in cause.tb and "LookupError" in cause.tb


def test_a_reply_that_cannot_travel_raises_in_the_caller(fastq_dir):
    with rpc.Server("svc", answer):
        c = rpc.Client("svc")
        with pytest.raises(Exception) as ei:
            c.call("unpicklable", timeout=10)
        assert isinstance(ei.value.__cause__, fastq.RemoteTraceback)
        assert c.call(2, timeout=10) == 4         # and the server goes on


def test_timeout(fastq_dir):
    with rpc.Server("svc", answer):
        c = rpc.Client("svc")
        with pytest.raises(TimeoutError):
            c.call("slow", timeout=0.1)
        assert c.call(1, timeout=10) == 2        # the late reply is not taken for this one


def test_no_server_times_out(fastq_dir):
    c = rpc.Client("nobody")
    with pytest.raises(TimeoutError):
        c.call(1, timeout=0.2)


def test_acall(fastq_dir):
    async def main(c):
        got = await asyncio.gather(*(c.acall(i, timeout=10) for i in range(50)))
        with pytest.raises(LookupError):
            await c.acall("raise", timeout=10)
        with pytest.raises(TimeoutError):
            await c.acall("slow", timeout=0.1)
        return got

    with rpc.Server("svc", answer, workers=2):
        assert asyncio.run(main(rpc.Client("svc"))) == [2 * i for i in range(50)]


def test_threads_share_the_reply_path(fastq_dir):
    errors = []

    def caller(k):
        c = rpc.Client("svc")
        for i in range(200):
            r = c.call((k, i), timeout=20)
            if r[2] != (k, i):
                errors.append((k, i, r))

    with rpc.Server("svc", echo, workers=2):
        ts = [threading.Thread(target=caller, args=(k,)) for k in range(4)]
        for t in ts:
            t.start()
        for t in ts:
            t.join()
    assert errors == []


def _caller_process(k, n):
    c = rpc.Client("svc")
    res = [c.call((os.getpid(), k, i), timeout=30) for i in range(n)]
    ok = all(r[2] == (os.getpid(), k, i) for i, r in enumerate(res))
    rpc._close_paths()
    return 0 if ok else 3


def test_callers_in_many_processes(fastq_dir):
    with rpc.Server("svc", echo, workers=2) as srv:
        pids = [fork(_caller_process, k, 300) for k in range(4)]
        codes = [reap(pid, 60) for pid in pids]
        servers = set(srv.pids)
    assert codes == [0, 0, 0, 0]
    # every client's reply queue went away with it
    assert [p.name for p in fastq_dir.iterdir()] == ["svc"]
    assert servers


def test_killed_server_request_answered_by_replacement(fastq_dir):
    with rpc.Server("svc", dies_once) as srv:
        first = srv.pids[0]
        x, pid = rpc.Client("svc").call("die", timeout=30)
    assert x == "die" and pid != first


def test_killed_server_other_instance_answers(fastq_dir):
    # two server instances (as two services would be); one is killed mid-request
    with rpc.Server("svc", dies_once), rpc.Server("svc", dies_once):
        c = rpc.Client("svc")
        got = {c.call("die", timeout=30)[0]} | {c.call(i, timeout=30)[0] for i in range(20)}
    assert got == {"die"} | set(range(20))


def test_reply_queue_removed_at_exit(fastq_dir, run_py):
    with rpc.Server("svc", answer):
        run_py("""
from fastq import rpc
assert rpc.Client("svc").call(5, timeout=20) == 10
""", env={"FASTQ_DIR": str(fastq_dir)})
    assert [p.name for p in fastq_dir.iterdir()] == ["svc"]


def test_sync_and_awaitable_calls_share_the_reply_path(fastq_dir):
    # a thread's event loop reads the reply queue for its awaitable calls while
    # other threads make plain calls: each gets its own answers, whoever reads
    errors = []

    async def many_acalls(c):
        got = await asyncio.gather(*(c.acall(("a", i), timeout=30) for i in range(300)))
        errors.extend((i, r) for i, r in enumerate(got) if r[2] != ("a", i))

    def caller(k):
        c = rpc.Client("svc")
        for i in range(300):
            r = c.call((k, i), timeout=30)
            if r[2] != (k, i):
                errors.append((k, i, r))

    with rpc.Server("svc", echo, workers=2):
        c = rpc.Client("svc")
        ts = [threading.Thread(target=asyncio.run, args=(many_acalls(c),))]
        ts += [threading.Thread(target=caller, args=(k,)) for k in range(3)]
        for t in ts:
            t.start()
        for t in ts:
            t.join()
    assert errors == []


def test_a_call_times_out_while_another_thread_reads(fastq_dir):
    # the slow call's thread holds the reader: the other call waits for a hand-over,
    # times out, and its late reply is not taken for a later call
    with rpc.Server("svc", answer, workers=2, concurrency=2):
        c = rpc.Client("svc")
        slow = threading.Thread(target=lambda: c.call("slow", timeout=30))
        slow.start()
        time.sleep(0.2)
        with pytest.raises(TimeoutError):
            c.call("slow", timeout=0.3)
        assert [c.call(i, timeout=30) for i in range(5)] == [0, 2, 4, 6, 8]
        slow.join()
        time.sleep(1.0)        # the timed-out call's reply arrives meanwhile
        assert [c.call(i, timeout=30) for i in range(5, 10)] == [10, 12, 14, 16, 18]


def _forked_caller(c):
    res = [c.call((os.getpid(), i), timeout=30) for i in range(100)]
    ok = all(r[2] == (os.getpid(), i) for i, r in enumerate(res))
    rpc._close_paths()
    return 0 if ok else 3


def test_a_client_used_in_a_forked_child_gets_its_own_reply_path(fastq_dir):
    with rpc.Server("svc", echo, workers=2):
        c = rpc.Client("svc")
        assert c.call(1, timeout=30)[2] == 1
        pids = [fork(_forked_caller, c) for _ in range(3)]
        mine = [c.call(("parent", i), timeout=30)[2] for i in range(100)]
        codes = [reap(pid, 60) for pid in pids]
    assert codes == [0, 0, 0]
    assert mine == [("parent", i) for i in range(100)]

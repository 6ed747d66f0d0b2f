"""The conventions of ``queue`` and ``multiprocessing`` and the errors a new
user trips on (issue 10, items 10-13, 15, 17 and 20): bad arguments raise the
exception the standard library would (TypeError for a wrong type, ValueError
for a bad value, naming the option); options that disagree with an existing
segment are refused; qsize()/empty() count what get() can take; a Queue
iterates, a JoinableQueue joins even when a consumer is killed mid-task; the
``fastq`` command line checks its options and prints its version."""
from __future__ import annotations

import multiprocessing as mp
import os
import pickle
import signal
import subprocess
import sys
import threading
import time

import pytest

import fastq

from support.typecheck import mypy

SMALL = 1 << 14


# ---- item 10: NUL bytes -------------------------------------------------------


def test_nul_byte_in_a_name_raises_valueerror(fastq_dir):
    with fastq.Queue("victim", capacity=SMALL) as victim:
        victim.put("secret")
        for cls in (fastq.Queue, fastq.Topic):
            with pytest.raises(ValueError, match="NUL"):
                cls("victim\0x", capacity=SMALL)
        with pytest.raises(ValueError, match="NUL"):
            fastq.Queue(str(fastq_dir) + "/victim\0x")
        with pytest.raises(ValueError, match="NUL"):
            fastq.segment_path("a\0b")
        assert victim.get_nowait() == "secret"  # nothing else took it
    with fastq.Topic("tnul", capacity=SMALL) as t:
        with pytest.raises(ValueError):
            t.forget("bill\0ing")


# ---- item 11: raw serializer takes bytes-like objects only ----------------------


def test_raw_put_of_a_list_raises_typeerror(fastq_dir):
    with fastq.Queue("raw11", capacity=SMALL, serializer="raw") as q:
        with pytest.raises(TypeError, match="bytes-like"):
            q.put([b"a", b"b"])
        with pytest.raises(TypeError, match="bytes-like"):
            q.put_nowait([b"a"])
        with pytest.raises(TypeError):
            q.put_many([[b"a", b"b"]])
        assert q.empty() and q.qsize() == 0, "nothing was stored"
        q.put(bytearray(b"ok"))
        assert q.get_nowait() == b"ok"
    with fastq.Topic("raw11t", capacity=SMALL, serializer="raw") as t:
        with pytest.raises(TypeError, match="bytes-like"):
            t.publish([b"a", b"b"])


# ---- item 12: explicit options that disagree with an existing segment -------------


def test_conflicting_queue_options_raise_naming_option_and_both_values(fastq_dir):
    with fastq.Queue.create("c12", capacity=SMALL, max_message=1000, max_processes=8) as q:
        cases = [
            (dict(capacity=1 << 20), "capacity", str(1 << 20), str(SMALL)),
            (dict(max_message=999), "max_message", "999", "1000"),
            (dict(max_processes=9), "max_processes", "9", "8"),
            (dict(mode=0o644), "mode", "0o644", "0o600"),
        ]
        for kw, opt, given, existing in cases:
            for ctor in (fastq.Queue, fastq.Queue.open):
                with pytest.raises(ValueError) as ei:
                    ctor("c12", **kw)
                msg = str(ei.value)
                assert opt in msg and given in msg and existing in msg, msg
        # values that agree (a capacity that rounds to the same ring) are fine
        for kw in (dict(capacity=SMALL), dict(capacity=SMALL - 100), dict(max_message=1000),
                   dict(max_processes=8), dict(mode=0o600), {}):
            with fastq.Queue("c12", **kw) as q2:
                assert q2.capacity == q.capacity


def test_conflicting_topic_options_raise(fastq_dir):
    with fastq.Topic.create("t12", capacity=SMALL, max_subscribers=8) as t:
        for kw, opt, given, existing in [
                (dict(overflow="drop"), "overflow", "drop", "block"),
                (dict(max_subscribers=16), "max_subscribers", "16", "8"),
                (dict(capacity=1 << 20), "capacity", str(1 << 20), str(SMALL))]:
            for ctor in (fastq.Topic, fastq.Topic.open):
                with pytest.raises(ValueError) as ei:
                    ctor("t12", **kw)
                msg = str(ei.value)
                assert opt in msg and given in msg and existing in msg, msg
        with fastq.Topic("t12", overflow="block", max_subscribers=8) as t2:
            assert t2.overflow == "block" and t2.max_subscribers == t.max_subscribers


# ---- item 13: types, bounds, modes, long names, paths, pickling -------------------


@pytest.mark.parametrize("bad", ["x", 3.5, None, True, b"1", [4096]])
def test_capacity_of_a_wrong_type_raises_typeerror(fastq_dir, bad):
    for cls in (fastq.Queue, fastq.Topic):
        with pytest.raises(TypeError, match="capacity"):
            cls("t13", capacity=bad)
    assert not os.listdir(fastq_dir)


@pytest.mark.parametrize("opt", ["max_message", "max_processes"])
def test_other_int_options_of_a_wrong_type_raise_typeerror(fastq_dir, opt):
    for bad in ("8", 8.0, True):
        with pytest.raises(TypeError, match=opt):
            fastq.Queue("t13b", capacity=SMALL, **{opt: bad})
    with pytest.raises(TypeError, match="max_subscribers"):
        fastq.Topic("t13c", capacity=SMALL, max_subscribers="8")
    with pytest.raises(TypeError, match="prefetch"):
        fastq.Queue("t13d", capacity=SMALL, prefetch=2.0)


def test_huge_capacity_raises_valueerror_not_overflowerror(fastq_dir):
    for big in (2 ** 64, 2 ** 100, 1 << 40):
        with pytest.raises(ValueError, match="capacity"):
            fastq.Queue("huge", capacity=big)
    with pytest.raises(ValueError, match="max_message"):
        fastq.Queue("huge", capacity=SMALL, max_message=2 ** 64)
    with pytest.raises(ValueError, match="capacity"):
        fastq.Queue("huge", capacity=0)


@pytest.mark.parametrize("bad", [b"x", 42, 1.5, ["x"]])
def test_name_of_a_wrong_type_raises_typeerror(fastq_dir, bad):
    for cls in (fastq.Queue, fastq.Topic):
        with pytest.raises(TypeError, match="name"):
            cls(bad, capacity=SMALL)
    with pytest.raises(TypeError):
        fastq.segment_path(bad)


def test_pathlike_names_are_accepted(tmp_path):
    p = tmp_path / "viapath"
    with fastq.Queue(p, capacity=SMALL) as q:
        assert q.path == str(p) and os.path.exists(p)
        q.put(1)
        with fastq.Queue(str(p)) as q2:
            assert q2.get_nowait() == 1
    with fastq.Topic(tmp_path / "tviapath", capacity=SMALL) as t:
        assert t.path == str(tmp_path / "tviapath")


def test_forget_of_a_wrong_type_raises_typeerror(fastq_dir):
    with fastq.Topic("tf", capacity=SMALL) as t:
        for bad in (None, 42, b"x"):
            with pytest.raises(TypeError, match="name"):
                t.forget(bad)
        assert t.forget("nobody") is False


def test_mode_is_permission_bits_only(fastq_dir):
    for bad in (0o4755, 0o2700, 0o1777, 0o10000, -1):
        with pytest.raises(ValueError, match="mode"):
            fastq.Queue("m13", capacity=SMALL, mode=bad)
    for bad in ("rw", "0o600", 6.0, None, True):
        with pytest.raises(TypeError, match="mode must be an int"):
            fastq.Queue("m13", capacity=SMALL, mode=bad)
    assert not os.listdir(fastq_dir), "nothing was created"
    with fastq.Queue("m13", capacity=SMALL, mode=0o640) as q:
        assert os.stat(q.path).st_mode & 0o7777 == 0o640


def test_too_long_names_raise_a_clear_valueerror(fastq_dir):
    for n in (230, 255, 300):
        with pytest.raises(ValueError) as ei:
            fastq.Queue("n" * n, capacity=SMALL)
        msg = str(ei.value)
        assert "name" in msg and "bytes" in msg and ".tmp" not in msg, msg
    with fastq.Queue("n" * 200, capacity=SMALL) as q:  # a long one that fits
        q.put(1)
        assert q.get_nowait() == 1


def test_relative_paths_are_resolved_at_open_and_survive_chdir(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "sub").mkdir()
    with fastq.Queue("./rel13", capacity=SMALL) as q, \
            fastq.Topic("sub/relt13", capacity=SMALL) as t:
        assert q.path == str(tmp_path / "rel13") and q.name == "./rel13"
        assert t.path == str(tmp_path / "sub" / "relt13")
        q.put("here")
        blob, tblob = pickle.dumps(q), pickle.dumps(t)
        monkeypatch.chdir(tmp_path / "sub")
        with pickle.loads(blob) as q2, pickle.loads(tblob) as t2:
            assert q2.path == q.path and q2.get_nowait() == "here"
            assert t2.path == t.path


def test_pickling_a_delivery_raises_a_clear_typeerror(fastq_dir):
    with fastq.Queue("dp", capacity=SMALL) as q:
        q.put(1)
        d = q.receive(timeout=5)
        with pytest.raises(TypeError, match="Delivery cannot be pickled"):
            pickle.dumps(d)
        d.ack()


# ---- item 15: qsize()/empty() count what get() can take --------------------------


def test_qsize_and_empty_are_what_get_can_take(fastq_dir):
    with fastq.Queue("q15", capacity=SMALL) as q:
        q.put_many([1, 2, 3])
        assert (q.qsize(), q.unacked()) == (3, 0)
        d1, d2 = q.receive(timeout=5), q.receive(timeout=5)
        assert (q.qsize(), q.unacked()) == (1, 2)
        drained = []
        while not q.empty():  # must not block on the unacknowledged ones
            drained.append(q.get(timeout=5))
        assert drained == [3] and q.qsize() == 0 and q.unacked() == 2
        d1.ack()
        d2.nack()  # back in the queue: get() can take it again
        assert (q.qsize(), q.unacked(), q.empty()) == (1, 0, False)
        assert q.get(timeout=5) == 2
        assert (q.qsize(), q.unacked(), q.empty()) == (0, 0, True)


def test_qsize_after_immediate_shutdown_is_zero(fastq_dir):
    with fastq.Queue("q15s", capacity=SMALL) as q:
        q.put_many([1, 2, 3])
        q.shutdown(immediate=True)
        assert q.qsize() == 0 and q.empty()
        with pytest.raises(fastq.ShutDown):
            q.get_nowait()
    with fastq.Queue("q15t", capacity=SMALL) as q:
        q.put_many([1, 2, 3])
        q.shutdown()  # not immediate: what is left can still be got
        assert q.qsize() == 3 and not q.empty()
        assert q.get_many(10, timeout=5) == [1, 2, 3]
        assert q.qsize() == 0 and q.empty()


# ---- item 17: iteration, JoinableQueue, generics, stubs ---------------------------


def test_queue_iterates_until_shutdown(fastq_dir):
    with fastq.Queue("it17", capacity=SMALL) as q:
        q.put_many(range(5))
        q.shutdown()
        assert list(q) == [0, 1, 2, 3, 4]
        assert list(q) == []


def test_iteration_ends_when_another_thread_shuts_down(fastq_dir):
    with fastq.Queue("it17b", capacity=SMALL) as q:
        got = []

        def consume():
            for x in q:
                got.append(x)

        th = threading.Thread(target=consume)
        th.start()
        q.put_many(["a", "b"])
        q.shutdown()
        th.join(30)
        assert not th.is_alive() and got == ["a", "b"]


def test_joinable_queue_task_done_and_join(fastq_dir):
    with fastq.JoinableQueue("j17", capacity=SMALL) as q:
        assert q.join(timeout=0) is True  # nothing put: nothing to wait for
        q.put_many(["a", "b"])
        assert q.join(timeout=0) is False
        assert q.get(timeout=5) == "a"
        assert q.qsize() == 1 and q.unacked() == 1
        assert q.join(timeout=0) is False, "a got task is not done before task_done()"
        q.task_done()
        assert q.get_nowait() == "b"
        assert q.join(timeout=0) is False
        q.task_done()
        assert q.join(timeout=5) is True
        q.join()  # returns at once
        with pytest.raises(ValueError, match="too many times"):
            q.task_done()


def test_joinable_queue_join_wakes_a_waiting_thread(fastq_dir):
    with fastq.JoinableQueue("j17w", capacity=SMALL) as q:
        q.put("job")
        done = threading.Event()

        def joiner():
            q.join()
            done.set()

        th = threading.Thread(target=joiner)
        th.start()
        assert q.get(timeout=5) == "job"
        assert not done.is_set(), "join() returned while a task was not done"
        q.task_done()
        th.join(30)
        assert done.is_set()


def test_joinable_queue_after_immediate_shutdown_waits_only_for_got_tasks(fastq_dir):
    with fastq.JoinableQueue("j17s", capacity=SMALL) as q:
        q.put_many([1, 2, 3])
        assert q.get(timeout=5) == 1
        q.shutdown(immediate=True)
        assert q.join(timeout=0) is False  # the task got before is not done
        q.task_done()
        assert q.join(timeout=5) is True  # the rest were removed, as in queue.Queue


def _joinable_consumer(path, flag):
    q = fastq.JoinableQueue.open(path)
    item = q.get(timeout=30)
    with open(flag, "w") as f:
        f.write(item)
    signal.pause()  # killed mid-task, before task_done()


def test_join_survives_a_consumer_killed_mid_task(fastq_dir, tmp_path, procs):
    """A consumer SIGKILLed between get() and task_done() cannot hang join():
    its task goes back to the queue (recovery) and join() waits until another
    consumer has done it."""
    ctx = mp.get_context("fork")
    with fastq.JoinableQueue("j17k", capacity=SMALL) as q:
        q.put_many(["first", "second"])
        flag = str(tmp_path / "flag")
        p = procs.add(ctx.Process(target=_joinable_consumer, args=(q.path, flag)))
        p.start()
        t0 = time.monotonic()
        while not (os.path.exists(flag) and os.path.getsize(flag)):
            assert time.monotonic() - t0 < 60 and p.is_alive(), "the consumer never got"
            time.sleep(0.01)
        assert open(flag).read() == "first"
        os.kill(p.pid, signal.SIGKILL)
        p.join(30)
        assert p.exitcode == -signal.SIGKILL
        assert q.get(timeout=30) == "second"
        q.task_done()
        assert q.join(timeout=0.5) is False, "the killed consumer's task is not done"
        # recovery gives the killed consumer's task back; another consumer does it
        d = q.get(timeout=30)
        assert d == "first"
        q.task_done()
        assert q.join(timeout=30) is True


def test_queue_is_generic_at_runtime():
    alias = fastq.Queue[int]
    assert alias.__origin__ is fastq.Queue and alias.__args__ == (int,)
    assert fastq.JoinableQueue[str].__origin__ is fastq.JoinableQueue


TYPED = """
from typing import List
import fastq

q: fastq.Queue[int] = fastq.Queue("jobs", capacity=1 << 20)
q.put(1)
x: int = q.get()
xs: List[int] = q.get_many(10)
for item in q:
    y: int = item
n: int = q.unacked()
jq: fastq.JoinableQueue[str] = fastq.JoinableQueue("jq")
jq.put("a"); s: str = jq.get(); jq.task_done(); jq.join(); ok: bool = jq.join(timeout=1.0)
t = fastq.Topic("ticks")
sub = t.subscribe()
vs = sub.get_many(10, max_bytes=1 << 16)
try:
    q.put_many([1, 2])
except fastq.Full as e:
    c: int = e.count
"""

TYPED_BAD = """
import fastq
q: fastq.Queue[int] = fastq.Queue("jobs")
s: str = q.get()
q.put("not an int")
"""


def test_stubs_accept_generics_max_bytes_and_full_count(tmp_path):
    cp = mypy(tmp_path, TYPED)
    assert cp.returncode == 0, cp.stdout + cp.stderr
    cp = mypy(tmp_path, TYPED_BAD)
    assert "snippet.py:4" in cp.stdout and "snippet.py:5" in cp.stdout, cp.stdout


# ---- item 20: the command line ------------------------------------------------------

CLIS = {
    "python -m fastq": [sys.executable, "-m", "fastq"],
    # what the console script ``fastq`` runs (its entry point, fastq.__main__:main)
    "console script": [sys.executable, "-c",
                       "import sys; from fastq.__main__ import main; sys.exit(main())"],
}


@pytest.fixture
def cli(child_env, tmp_path):
    """cli(cmd, *args) -> CompletedProcess of the command line cmd (a key of CLIS)."""
    def run(cmd, *args):
        return subprocess.run(CLIS[cmd] + list(args), capture_output=True, text=True,
                              timeout=120, env=child_env(), cwd=str(tmp_path))
    return run


@pytest.mark.parametrize("cmd", list(CLIS))
def test_cli_version(cli, cmd):
    cp = cli(cmd, "--version")
    assert cp.returncode == 0, cp.stderr
    assert cp.stdout.strip() == f"fastq {fastq.__version__}"


@pytest.mark.parametrize("cmd", list(CLIS))
@pytest.mark.parametrize("args,what", [
    (["--duration", "-1"], "--duration"),
    (["--duration", "0"], "--duration"),
    (["--duration", "nan"], "--duration"),
    (["--duration", "x"], "--duration"),
    (["--only", ","], "--only"),
    (["--only", ""], "--only"),
    (["--only", "nosuchlib"], "nosuchlib"),
    (["--workloads", ","], "--workloads"),
])
def test_cli_bench_rejects_bad_options(cli, cmd, args, what):
    cp = cli(cmd, "bench", *args)
    assert cp.returncode == 2, (cp.returncode, cp.stdout, cp.stderr)
    assert "usage:" in cp.stderr and what in cp.stderr, cp.stderr
    assert "[1/" not in cp.stderr, "no cell may run"


def test_cli_bench_lists_each_library_once(cli):
    cp = cli("python -m fastq", "bench", "--only", "nosuchlib")
    known = cp.stderr.split("known:")[1].split("\n")[0]
    names = [n.strip() for n in known.split(",") if n.strip()]
    assert names and len(names) == len(set(names)), names
    assert "fastq" in names


def test_cli_bench_help_documents_every_option(cli):
    cp = cli("python -m fastq", "bench", "--help")
    assert cp.returncode == 0
    text = " ".join(cp.stdout.split())
    assert "--start-method {fork,spawn,forkserver}" in text
    # the option's own line (the last mention; the first is the usage line) has a help text
    after = text.rsplit("--start-method {fork,spawn,forkserver}", 1)[1]
    assert "process" in after and "fork" in after, text

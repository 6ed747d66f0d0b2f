"""The ``fastq`` operations subcommands (ls, stat, rm, gc, check), run as the
real console script in subprocesses: output parsed and checked exactly
against the traffic the test made, and exit codes."""
from __future__ import annotations

import os
import pickle

import pytest

import fastq
from support.cli import fastq_cli, fastq_json


def _pickled(obj):
    return len(pickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL))


def test_help_everywhere_and_version():
    out = fastq_cli("--help", check=0).stdout
    for sub in ("ls", "stat", "rm", "gc", "check", "bench"):
        assert sub in out
    for sub in ("ls", "stat", "rm", "gc", "check"):
        assert f"usage: fastq {sub}" in fastq_cli(sub, "--help", check=0).stdout
    assert fastq_cli("--version", check=0).stdout.strip() == f"fastq {fastq.__version__}"
    assert fastq_cli("nosuch", check=2).returncode == 2


def test_python_dash_m_is_the_same_command(fastq_dir):
    import subprocess
    import sys

    from support.procs import child_env
    cp = subprocess.run([sys.executable, "-m", "fastq", "ls", "--json"], capture_output=True,
                        text=True, env=child_env(), timeout=60)
    assert cp.returncode == 0 and cp.stdout.strip() == "[]"


def test_ls_lists_exactly_the_segments(fastq_dir):
    q = fastq.Queue("jobs", capacity=1 << 16)
    for i in range(7):
        q.put(i)
    q.get()
    t = fastq.Topic("ticks", temporary=True)
    (fastq_dir / "not-a-segment").write_bytes(b"hello")
    rows = fastq_json("ls")
    assert [r["name"] for r in rows] == ["jobs", "ticks"]
    jobs, ticks = rows
    assert jobs == {"name": "jobs", "path": str(fastq_dir / "jobs"), "kind": "queue",
                    "capacity": 1 << 16, "depth": 6, "bytes_used": q.stats().bytes_used,
                    "processes": 1, "dead_processes": 0, "attached": True,
                    "temporary": False, "error": None}
    assert ticks["kind"] == "topic" and ticks["temporary"] is True and ticks["depth"] == 0
    assert ticks["processes"] == 0 and ticks["attached"] is False  # nothing published yet
    # --dir: another directory, and the human table
    other = fastq_dir / "other"
    other.mkdir()
    assert fastq_json("ls", "--dir", other) == []
    text = fastq_cli("ls", check=0).stdout
    assert "jobs" in text and "ticks" in text and "not-a-segment" not in text
    q.close()
    t.close()


def test_stat_json_counts_exactly_what_was_put_and_taken(fastq_dir):
    q = fastq.Queue("work")
    items = [b"x" * n for n in (1, 10, 100, 1000, 5)]
    for it in items:
        q.put(it)
    got = [q.get(), q.get()]
    d = q.receive()
    d.nack()  # given back: redelivered on the next get
    again = q.get()
    s = fastq_json("stat", "work")
    assert s["kind"] == "queue" and s["name"] == "work" and s["path"] == str(fastq_dir / "work")
    assert s["puts"] == 5
    assert s["put_bytes"] == sum(_pickled(x) for x in items)
    assert s["gets"] == 3  # two gets and the redelivered one; the nacked delivery is not done
    assert s["nacked"] == 1 and s["redelivered"] == 1
    assert s["get_bytes"] == sum(_pickled(x) for x in got) + 2 * _pickled(items[2])
    assert again == items[2]
    assert s["depth"] == 2 == q.qsize() and s["unacked"] == 0
    assert s["full"] == 0 and s["recovered_slots"] == 0
    assert s["processes"] == 1 and s["dead_processes"] == 0
    assert s == {**s, **{k: v for k, v in q.stats().to_dict().items()
                         if k in ("puts", "gets", "tail", "head", "release")}}
    text = fastq_cli("stat", "work", check=0).stdout
    assert "put          5 messages" in text and "redelivered  1, nacked 1" in text
    q.close()


def test_stat_counts_a_full_ring(fastq_dir):
    q = fastq.Queue("small", capacity=4096)
    n = 0
    with pytest.raises(fastq.Full):
        while True:
            q.put_nowait(b"y" * 200)
            n += 1
    with pytest.raises(fastq.Full):
        q.put_nowait(b"y" * 200)
    s = fastq_json("stat", "small")
    assert s["puts"] == n and s["full"] == 2 and s["depth"] == n
    q.close()


def test_stat_topic_subscribers(fastq_dir):
    t = fastq.Topic("news")
    fast = t.subscribe(name="fast")
    slow = t.subscribe(name="slow")
    for i in range(5):
        t.publish(i)
    for _ in range(5):
        fast.get()
    slow.get()
    s = fastq_json("stat", "news")
    assert s["kind"] == "topic" and s["puts"] == 5 and s["gets"] == 6
    subs = {r["name"]: r for r in s["subscribers"]}
    assert subs["fast"]["lag"] == 0 and subs["fast"]["got"] == 5
    assert subs["slow"]["lag"] == 4 and subs["slow"]["got"] == 1
    assert s["depth"] == 4
    text = fastq_cli("stat", "news", check=0).stdout
    table = text[text.index("subscribers (most behind first)"):].splitlines()[2:]
    assert [ln.split()[0] for ln in table] == ["slow", "fast"]
    t.close()


def test_stat_several_names_and_a_missing_one(fastq_dir):
    fastq.Queue("a").close()
    fastq.Queue("b").close()
    rows = fastq_json("stat", "a", "b")
    assert [r["name"] for r in rows] == ["a", "b"]
    cp = fastq_cli("stat", "nope", check=2)
    assert "no such segment" in cp.stderr


def test_rm(fastq_dir):
    for n in ("r1", "r2"):
        fastq.Queue(n).close()
    (fastq_dir / "plain").write_bytes(b"data")
    fastq_cli("rm", "r1", "r2", check=0)
    assert not (fastq_dir / "r1").exists() and not (fastq_dir / "r2").exists()
    cp = fastq_cli("rm", "plain", check=1)  # not a segment: left alone
    assert "not removed" in cp.stderr and (fastq_dir / "plain").exists()
    fastq_cli("rm", "--force", "plain", check=0)
    assert not (fastq_dir / "plain").exists()
    assert "no such segment" in fastq_cli("rm", "gone", check=1).stderr


def test_gc_removes_only_unattached_temporary_segments(fastq_dir, run_py):
    keep_named = fastq.Queue("named")  # not temporary: never collected
    keep_named.close()
    attached = fastq.Queue("temp-attached", temporary=True)
    attached.put(1)  # this process holds a slot: alive
    # a temporary segment whose only process is gone (killed outright)
    run_py("""
        import os, fastq
        q = fastq.Topic("temp-dead", temporary=True)
        q.publish(1)
        os._exit(0)
    """)
    fastq.Queue("temp-idle", temporary=True).close()
    # a creator's leftover (filesystems without O_TMPFILE): its pid is gone
    dead_pid = run_py("import os; print(os.getpid())").stdout.strip()
    leftover = fastq_dir / f"x.tmp-{dead_pid}-0123456789abcdef"
    leftover.write_bytes(b"\0" * 64)
    before = sorted(os.listdir(fastq_dir))
    dry = fastq_cli("gc", "--dry-run", check=0).stdout
    assert sorted(os.listdir(fastq_dir)) == before
    assert dry.count("would remove") == 3
    fastq_cli("gc", check=0)
    assert sorted(os.listdir(fastq_dir)) == ["named", "temp-attached"]
    assert "nothing to collect" in fastq_cli("gc", check=0).stdout
    attached.close()


def test_check_consistent_and_corrupt(fastq_dir):
    q = fastq.Queue("chk", capacity=4096)
    for i in range(10):
        q.put(i)
    for _ in range(4):
        q.get()
    cp = fastq_cli("check", "chk", check=0)
    assert "consistent" in cp.stdout
    t = fastq.Topic("tchk")
    s = t.subscribe()
    t.publish(1)
    fastq_cli("check", "tchk", check=0)
    s.close()
    t.close()
    # damage the first record's word: the check names the problem
    st = q.stats()
    data_offset = os.path.getsize(fastq_dir / "chk") - q.capacity
    q.close()
    with open(fastq_dir / "chk", "r+b") as f:
        f.seek(data_offset + (st.head & (4096 - 1)))
        f.write(b"\xff" * 8)
        f.seek(data_offset + (st.release & (4096 - 1)))
        f.write(b"\xff" * 8)
    cp = fastq_cli("check", "chk", check=1)
    assert "problem" in cp.stdout and "record at" in cp.stdout
    assert fastq_cli("check", "missing", check=1).returncode == 1

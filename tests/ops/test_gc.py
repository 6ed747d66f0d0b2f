"""``fastq gc``, ``ls`` and ``rm`` and the temporary files of creations: on a
filesystem without O_TMPFILE a creator builds its segment as
<name>.tmp-<pid>-<16 hex digits> and links it into place (fq_segment.c).  Such
a file is told by the core's rule (its header agrees with its name, or has no
magic yet; its creator gone and its creating lock free), never by its name
alone: a segment renamed or linked to such a name is a segment (issue 9's
review 10, R4, here in the operators' tools).  Run as the real console script
in subprocesses."""
from __future__ import annotations

import fcntl
import hashlib
import os
import re
import signal
import struct

import pytest

import fastq
from support import procs as _procs
from support.cli import fastq_cli, fastq_json
from support.notmpfile import create_in_child, creator_stopped_at_link
from support.notmpfile import no_tmpfile_env  # noqa: F401 (a fixture)

_GC_LINE = re.compile(r"^(?:would remove|removed) (.+?): ", re.M)


def _dead_pid():
    """A pid that no process has now (a child's, reaped)."""
    pid = _procs.fork(lambda: 0)
    _procs.reap(pid)
    return pid


def _tmp_name(base, pid, salt=0x0123456789ABCDEF):
    return "%s.tmp-%d-%016x" % (base, pid, salt)


def _gc(*args):
    """The paths ``fastq gc ARGS`` says it removes (or would)."""
    out = fastq_cli("gc", *args, check=0).stdout
    return set(_GC_LINE.findall(out))


def _names(d):
    return sorted(os.listdir(d))


def test_gc_keeps_segments_that_only_have_a_temporary_files_name(fastq_dir):
    dead = _dead_pid()
    live = fastq.Queue("live")
    for i in range(3):
        live.put(i)
    # a second name of a live segment, as its own creator's temporary file
    # would be named (but its header records another creation) ...
    os.link(fastq_dir / "live", fastq_dir / _tmp_name("live", dead))
    # ... and as another name's
    os.link(fastq_dir / "live", fastq_dir / _tmp_name("x", dead))
    # a segment whose only name is such a name (renamed there), in use
    moved = fastq.Queue("moved")
    moved.put("kept")
    os.rename(fastq_dir / "moved", fastq_dir / _tmp_name("moved", dead))
    before = _names(fastq_dir)
    assert _gc("--dry-run") == set()
    assert _names(fastq_dir) == before
    assert _gc() == set()
    assert _names(fastq_dir) == before, "fastq gc removed a segment named like a temporary file"
    with fastq.Queue(str(fastq_dir / _tmp_name("moved", dead))) as m:
        assert m.get(timeout=5) == "kept"
    assert [live.get(timeout=5) for _ in range(3)] == [0, 1, 2]
    live.close()
    moved.close()


def test_gc_collects_a_temporary_segment_renamed_to_a_temporary_files_name(fastq_dir):
    """Such a segment is a segment: collected as any other, by its mark."""
    dead = _dead_pid()
    fastq.Queue("t", temporary=True).close()
    name = fastq_dir / _tmp_name("t", dead)
    os.rename(fastq_dir / "t", name)
    assert _gc("--dry-run") == {str(name)}
    assert _gc() == {str(name)}
    assert _names(fastq_dir) == []


def test_ls_lists_a_segment_that_only_has_a_temporary_files_name(fastq_dir):
    dead = _dead_pid()
    q = fastq.Queue("moved", capacity=1 << 16)
    for i in range(5):
        q.put(i)
    name = _tmp_name("moved", dead)
    os.rename(fastq_dir / "moved", fastq_dir / name)
    rows = fastq_json("ls")
    assert [(r["name"], r["kind"], r["depth"], r["capacity"]) for r in rows] == \
        [(name, "queue", 5, 1 << 16)]
    assert name in fastq_cli("ls", check=0).stdout
    q.close()


def test_gc_removes_what_killed_creators_left_and_dry_run_says_so(fastq_dir, no_tmpfile_env):
    d = fastq_dir
    # killed before its header was complete (no magic yet): the whole file reserved
    assert create_in_child(d / "a", "create_reserved", no_tmpfile_env) == 9
    # killed after its link, before it removed its temporary name, and the
    # segment removed since: the leftover is the only name of a finished file
    assert create_in_child(d / "c", "create_linked", no_tmpfile_env) == 9
    os.unlink(d / "c")
    # a file that a creator killed at once left (shorter than a header)
    (d / _tmp_name("x", _dead_pid())).write_bytes(b"\0" * 64)
    left = _names(d)
    assert len(left) == 3 and all(".tmp-" in n for n in left)
    fastq.Queue("keep").close()  # a segment: not collected
    before = _names(d)
    dry = _gc("--dry-run")
    assert _names(d) == before, "--dry-run removed something"
    assert dry == {str(d / n) for n in left}
    assert _gc() == dry
    assert _names(d) == ["keep"]
    assert "nothing to collect" in fastq_cli("gc", check=0).stdout


def test_gc_removes_the_temporary_name_of_a_killed_creators_segment(fastq_dir, no_tmpfile_env):
    """Killed after its link: the leftover is a second name of the segment,
    which keeps its name and messages."""
    d = fastq_dir
    assert create_in_child(d / "b", "create_linked", no_tmpfile_env) == 9
    (left,) = [n for n in _names(d) if n != "b"]
    assert left.startswith("b.tmp-")
    # listed: reading b (temporary or not?) leaves it (FQ_OPEN_NOSWEEP)
    assert _gc("--dry-run") == {str(d / left)}
    fastq_cli("gc", check=0)
    assert _names(d) == ["b"]
    with fastq.Queue("b") as b:
        b.put(1)
        assert b.get(timeout=5) == 1


def test_a_creation_in_progress_is_neither_collected_listed_nor_removed(
        fastq_dir, no_tmpfile_env, procs):
    d = fastq_dir
    p = procs.add(creator_stopped_at_link(d / "q", no_tmpfile_env))
    (tmp,) = _names(d)
    assert tmp.startswith("q.tmp-%d-" % p.pid)  # complete, not linked yet
    assert _gc("--dry-run") == set()
    assert _gc() == set()
    assert fastq_json("ls") == []
    cp = fastq_cli("rm", str(d / tmp), check=1)
    assert "not removed" in cp.stderr
    assert _names(d) == [tmp]
    os.kill(p.pid, signal.SIGCONT)
    assert p.wait(timeout=60) == 0, "the creation failed"
    assert _names(d) == ["q"]


def test_gc_keeps_a_temporary_file_whose_creating_lock_is_held(fastq_dir):
    """The pid in the name is gone, but the creating lock is held (a creator
    in another pid namespace): a creation in progress."""
    d = fastq_dir
    name = d / _tmp_name("q", _dead_pid())
    fd = os.open(name, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        lk = struct.pack("hhqqi4x", fcntl.F_WRLCK, os.SEEK_SET, (1 << 62) - 1, 1, 0)
        fcntl.fcntl(fd, 37, lk)  # F_OFD_SETLK of FQ_LOCK_CREATING, as its creator holds it
        assert _gc("--dry-run") == set()
        assert _gc() == set()
        assert name.exists()
    finally:
        os.close(fd)
    assert _gc() == {str(name)}  # the lock is free now: a leftover


def test_rm_removes_a_killed_creators_leftover(fastq_dir, no_tmpfile_env):
    """Not a valid segment (no magic yet), but fastq's own leftover: removed
    without --force."""
    d = fastq_dir
    assert create_in_child(d / "a", "create_reserved", no_tmpfile_env) == 9
    (left,) = _names(d)
    fastq_cli("rm", str(d / left), check=0)
    assert _names(d) == []


def _files_on_disk(d):
    """Every file of d: its name and the digest of its bytes."""
    return {n: hashlib.sha256((d / n).read_bytes()).hexdigest() for n in _names(d)}


@pytest.mark.parametrize("args", [("ls",), ("ls", "--json"), ("stat", "b"), ("check", "b"),
                                  ("gc", "--dry-run")], ids=" ".join)
def test_read_only_commands_and_dry_run_change_nothing_on_disk(fastq_dir, no_tmpfile_env, args):
    """A killed creator's leftover that is a second name of its segment: the
    tools that only read (ls, stat, check, gc --dry-run) open the segment
    and must not sweep that name (it is gc's to remove, and a dry run says
    it would, not does)."""
    d = fastq_dir
    assert create_in_child(d / "b", "create_linked", no_tmpfile_env) == 9
    (left,) = [n for n in _names(d) if n != "b"]
    assert left.startswith("b.tmp-")
    fastq.Topic("t").close()  # another segment, of the other kind
    before = _files_on_disk(d)
    fastq_cli(*args, check=0)
    assert _files_on_disk(d) == before, f"fastq {' '.join(args)} changed the directory"
    assert _gc() == {str(d / left)}
    assert _names(d) == ["b", "t"]

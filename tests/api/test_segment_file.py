"""Invalid, truncated and corrupted segment files: Queue.open and get must
raise fastq.SegmentError naming what is wrong, never crash or hang.

Everything that touches a damaged mapping runs in a child interpreter, so a
segfault shows up as a failed assertion (with the child's return code), not
as a dead pytest.  Layout: csrc/fq_layout.h.
"""
from __future__ import annotations

import json
import os
import struct
import subprocess
import sys

import pytest

import fastq

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

# fq_ctrl offsets (csrc/fq_layout.h)
MAGIC, VERSION, KIND, CAPACITY, MAX_MESSAGE, FILE_SIZE = 0, 8, 12, 16, 24, 32
DATA_OFFSET, SLOT_OFFSET, MAX_SLOTS, LANES, SALT = 40, 48, 56, 60, 64
TAIL, HEAD, RELEASE, STATE = 128, 256, 384, 520
FQ_MAGIC = 0x3147535154534146
REC_SKIP = 7

PROBE = r"""
import json, sys, fastq
out = []
for path in sys.argv[1:]:
    r = {"path": path}
    try:
        q = fastq.Queue.open(path, serializer="raw")
    except BaseException as e:
        r["open"] = [type(e).__name__, str(e)]
        out.append(r)
        continue
    r["open"] = "ok"
    gets = []
    for fn in ("get_nowait", "get", "get_many"):
        try:
            if fn == "get_nowait":
                v = q.get_nowait()
            elif fn == "get":
                v = q.get(timeout=0.05)
            else:
                v = q.get_many(10, timeout=0.05)
            gets.append(["value", len(v)])
        except BaseException as e:
            gets.append([type(e).__name__, str(e)])
    r["gets"] = gets
    q.close()
    out.append(r)
print(json.dumps(out))
"""


def probe(*paths, timeout=30):
    """Open each path and try to get from it, in a child interpreter."""
    env = dict(os.environ)
    parent = os.path.dirname(os.path.dirname(fastq.__file__))
    env["PYTHONPATH"] = parent + os.pathsep + env.get("PYTHONPATH", "")
    cp = subprocess.run([sys.executable, "-c", PROBE, *paths], capture_output=True, text=True,
                        timeout=timeout, env=env)
    assert cp.returncode == 0, f"child crashed (rc={cp.returncode}): {cp.stderr[-3000:]}"
    return json.loads(cp.stdout)


def make_segment(path, capacity=4096, msgs=(b"hello" * 10, b"world" * 20, b"x")):
    with fastq.Queue.create(str(path), capacity=capacity, serializer="raw",
                            max_processes=2) as q:
        for m in msgs:
            q.put(m)
    return str(path)


def patch(path, off, fmt, value):
    with open(path, "r+b") as f:
        f.seek(off)
        f.write(struct.pack(fmt, value))


def read(path, off, fmt):
    with open(path, "rb") as f:
        f.seek(off)
        return struct.unpack(fmt, f.read(struct.calcsize(fmt)))[0]


# ---- Queue.open on invalid files -------------------------------------------------


def _empty(p):
    open(p, "wb").close()


def _small(p):
    with open(p, "wb") as f:
        f.write(b"\0" * 1000)


def _zero_right_size(p):
    size = os.path.getsize(p)
    with open(p, "wb") as f:
        f.write(b"\0" * size)


def _random_right_size(p):
    size = os.path.getsize(p)
    with open(p, "wb") as f:
        f.write(os.urandom(size))


def _truncate_half(p):
    os.truncate(p, os.path.getsize(p) // 2)


def _truncate_by_one_page(p):
    os.truncate(p, os.path.getsize(p) - 4096)


def _extend(p):
    os.truncate(p, os.path.getsize(p) + 4096)


def _byteswapped_magic(p):
    patch(p, MAGIC, ">Q", FQ_MAGIC)


def _file_size_field(p):
    patch(p, FILE_SIZE, "<Q", read(p, FILE_SIZE, "<Q") + 4096)


def _file_size_field_and_file(p):
    # header and file agree with each other, but not with the layout
    patch(p, FILE_SIZE, "<Q", read(p, FILE_SIZE, "<Q") + 4096)
    os.truncate(p, os.path.getsize(p) + 4096)


def _capacity_and_file(p):
    # a consistent-looking header for a larger ring, on a file of the old size
    patch(p, CAPACITY, "<Q", 8192)
    patch(p, FILE_SIZE, "<Q", read(p, DATA_OFFSET, "<Q") + 8192)


CASES = {
    # name: (mutation, keyword expected in the SegmentError message)
    "empty_file": (_empty, "smaller than a segment header"),
    "1000_bytes": (_small, "smaller than a segment header"),
    "zero_filled_right_size": (_zero_right_size, "magic"),
    "random_bytes_right_size": (_random_right_size, "magic"),
    "wrong_magic": (lambda p: patch(p, MAGIC, "<Q", 0x3247535154534146), "magic"),
    "byteswapped_magic": (_byteswapped_magic, "magic"),
    "wrong_version": (lambda p: patch(p, VERSION, "<I", read(p, VERSION, "<I") + 1), "version"),
    "version_zero": (lambda p: patch(p, VERSION, "<I", 0), "version"),
    "wrong_kind": (lambda p: patch(p, KIND, "<I", 9), "kind"),
    "capacity_not_power_of_two": (lambda p: patch(p, CAPACITY, "<Q", 4096 + 8), "capacity"),
    "capacity_zero": (lambda p: patch(p, CAPACITY, "<Q", 0), "capacity"),
    "capacity_too_small": (lambda p: patch(p, CAPACITY, "<Q", 2048), "capacity"),
    "capacity_huge": (lambda p: patch(p, CAPACITY, "<Q", 1 << 62), "capacity"),
    "capacity_larger_than_file": (_capacity_and_file, "bytes but its header says"),
    "max_message_zero": (lambda p: patch(p, MAX_MESSAGE, "<Q", 0), "max_message"),
    "max_message_too_big": (lambda p: patch(p, MAX_MESSAGE, "<Q", 4096), "max_message"),
    "max_slots_zero": (lambda p: patch(p, MAX_SLOTS, "<I", 0), "slot"),
    "max_slots_huge": (lambda p: patch(p, MAX_SLOTS, "<I", 1 << 20), "slot"),
    "lanes_wrong": (lambda p: patch(p, LANES, "<I", 7), "slot"),
    "data_offset_wrong": (lambda p: patch(p, DATA_OFFSET, "<Q", 0), "offset"),
    "slot_offset_wrong": (lambda p: patch(p, SLOT_OFFSET, "<Q", 2048), "offset"),
    "file_size_field_mismatch": (_file_size_field, "file size"),
    "file_size_field_and_file_agree": (_file_size_field_and_file, "file size"),
    "truncated_half": (_truncate_half, "truncated"),
    "truncated_one_page": (_truncate_by_one_page, "truncated"),
    "extended": (_extend, "extended"),
    "salt_low_bits": (lambda p: patch(p, SALT, "<Q", read(p, SALT, "<Q") | 3), "salt"),
    "release_gt_head": (lambda p: patch(p, RELEASE, "<Q", read(p, HEAD, "<Q") + 8), "cursors"),
    "head_gt_tail": (lambda p: patch(p, HEAD, "<Q", read(p, TAIL, "<Q") + 8), "cursors"),
    "tail_beyond_capacity": (lambda p: patch(p, TAIL, "<Q", 4096 * 3), "cursors"),
    "cursor_unaligned": (lambda p: patch(p, TAIL, "<Q", read(p, TAIL, "<Q") + 3), "cursors"),
    "cursors_all_huge_unaligned": (lambda p: [patch(p, o, "<Q", (1 << 64) - 1)
                                              for o in (TAIL, HEAD, RELEASE)], "cursors"),
}


@pytest.fixture(scope="module")
def bad_segments(tmp_path_factory):
    """Every case of CASES, built once and probed in one child interpreter."""
    d = tmp_path_factory.mktemp("badseg")
    paths = {}
    for name, (mutate, _) in CASES.items():
        p = make_segment(d / name)
        mutate(p)
        paths[name] = p
    results = {r["path"]: r for r in probe(*paths.values())}
    return {name: results[p] for name, p in paths.items()}


@pytest.mark.parametrize("name", sorted(CASES))
def test_open_invalid_segment_raises_segment_error(name, bad_segments):
    keyword = CASES[name][1]
    r = bad_segments[name]
    assert r["open"] != "ok", f"opened a bad segment ({name}): {r}"
    etype, msg = r["open"]
    assert etype == "SegmentError", (etype, msg)
    assert keyword in msg, f"message does not say what is wrong: {msg!r}"
    assert name in msg  # names the file


def test_segment_error_is_oserror_and_catchable(tmp_path):
    p = make_segment(tmp_path / "seg")
    patch(p, VERSION, "<I", 99)
    # opening is validated from a pread() copy: safe in-process
    with pytest.raises(fastq.SegmentError, match="version 99") as ei:
        fastq.Queue.open(p)
    assert isinstance(ei.value, OSError)
    # open_or_create must not overwrite a bad file either
    with pytest.raises(fastq.SegmentError):
        fastq.Queue(p)
    with pytest.raises(FileExistsError):
        fastq.Queue.create(p)
    assert read(p, VERSION, "<I") == 99


def test_open_directory_or_unreadable(tmp_path):
    with pytest.raises(OSError):
        fastq.Queue.open(str(tmp_path))
    if os.geteuid() != 0:  # root reads anything
        p = make_segment(tmp_path / "ro")
        os.chmod(p, 0)
        with pytest.raises(PermissionError):
            fastq.Queue.open(p)


def test_valid_segment_probe_baseline(tmp_path):
    """The probe itself: an intact segment yields its messages."""
    p = make_segment(tmp_path / "ok")
    (r,) = probe(p)
    assert r["open"] == "ok"
    assert r["gets"] == [["value", 50], ["value", 100], ["value", 1]]


# ---- corrupted records inside a live segment ---------------------------------------


def _data_offset(p):
    return read(p, DATA_OFFSET, "<Q")


def _rec_len_huge(p):
    patch(p, _data_offset(p) + 8, "<I", 0xFFFFFFFF)


def _rec_len_just_over_max(p):
    patch(p, _data_offset(p) + 8, "<I", read(p, MAX_MESSAGE, "<Q") + 1)


def _rec_crosses_ring_end(p):
    # a waiting record at 3072 whose length is legal (<= max_message) but runs
    # past the end of the 4096-byte ring (records are 16-byte aligned)
    os.unlink(p)
    with fastq.Queue.create(p, capacity=4096, serializer="raw", max_processes=2) as q:
        q.put(b"a" * 2032)
        q.get_nowait()
        q.put(b"b" * 1000)
        q.get_nowait()
        q.put(b"x")
    off = _data_offset(p) + 2048 + 1024
    assert read(p, off + 8, "<I") == 1
    patch(p, off + 8, "<I", read(p, MAX_MESSAGE, "<Q"))


def _rec_skip_bad_span(p):
    off = _data_offset(p)
    w = read(p, off, "<Q")
    patch(p, off, "<Q", (w & ~7) | REC_SKIP)
    patch(p, off + 8, "<I", 3)


def _rec_skip_huge_span(p):
    off = _data_offset(p)
    w = read(p, off, "<Q")
    patch(p, off, "<Q", (w & ~7) | REC_SKIP)
    patch(p, off + 8, "<I", 1 << 30)


RECORD_CASES = {
    "len_huge": _rec_len_huge,
    "len_over_max_message": _rec_len_just_over_max,
    "len_crosses_ring_end": _rec_crosses_ring_end,
    "skip_span_not_multiple_of_8": _rec_skip_bad_span,
    "skip_span_larger_than_ring": _rec_skip_huge_span,
}


@pytest.mark.parametrize("name", sorted(RECORD_CASES))
def test_corrupt_record_header_raises_segment_error(name, tmp_path):
    p = make_segment(tmp_path / name)
    RECORD_CASES[name](p)
    (r,) = probe(p)
    assert r["open"] == "ok"  # the header is fine
    for kind, msg in r["gets"]:
        assert kind == "SegmentError", (name, r["gets"])
        assert "corrupt" in msg or "impossible" in msg, msg


def test_corrupt_tag_reads_as_empty_not_crash(tmp_path):
    """A record whose tag does not match its position is not a message
    (an older lap, or garbage): the queue looks empty up to it."""
    p = make_segment(tmp_path / "tag")
    off = _data_offset(p)
    patch(p, off, "<Q", read(p, off, "<Q") ^ (1 << 40))
    (r,) = probe(p)
    assert r["open"] == "ok"
    assert [k for k, _ in r["gets"]] == ["Empty", "Empty", "Empty"]


def test_shutdown_bit_in_file_is_honoured(tmp_path):
    p = make_segment(tmp_path / "sd")
    patch(p, STATE, "<I", 1)
    (r,) = probe(p)
    assert r["gets"][0] == ["value", 50]  # drains
    with fastq.Queue.open(p, serializer="raw") as q:
        assert q.is_shutdown()
        with pytest.raises(fastq.ShutDown):
            q.put(b"x")


# ---- fuzzing: random bytes in the header and the records ---------------------------

WORKER = r"""
import sys, fastq
for line in sys.stdin:
    path = line.strip()
    res = []
    try:
        q = fastq.Queue.open(path, serializer="raw")
    except fastq.SegmentError:
        res.append("open:SegmentError")
    except BaseException as e:
        res.append("open:" + type(e).__name__ + ":" + str(e).replace("\n", " "))
    else:
        try:
            for _ in range(8):
                try:
                    q.get_nowait()
                    res.append("value")
                except (fastq.Empty, fastq.SegmentError, fastq.ShutDown) as e:
                    res.append(type(e).__name__)
                    if not isinstance(e, fastq.Empty):
                        break
            try:
                q.put_nowait(b"fuzz" * 4)
                res.append("put")
            except (fastq.Full, fastq.ShutDown, fastq.SegmentError, fastq.MessageTooLarge) as e:
                res.append("put:" + type(e).__name__)
            try:
                q.qsize(); q.full(); q.empty()
            except BaseException as e:
                res.append("status:" + type(e).__name__)
        except BaseException as e:
            res.append("unexpected:" + type(e).__name__ + ":" + str(e).replace("\n", " "))
        finally:
            q.close()
    print(" ".join(res), flush=True)
"""

ALLOWED = {"open:SegmentError", "value", "Empty", "SegmentError", "ShutDown", "put",
           "put:Full", "put:ShutDown", "put:SegmentError",
           # a valid header may say max_message < 16: then the probe's 16-byte put is
           # refused before it reaches the ring, as it must be
           "put:MessageTooLarge"}


class Worker:
    """A child interpreter that probes one file per request, so that a crash
    or a hang is caught (and hypothesis can shrink it) without killing pytest."""

    def __init__(self):
        self.p = None

    def start(self):
        env = dict(os.environ)
        parent = os.path.dirname(os.path.dirname(fastq.__file__))
        env["PYTHONPATH"] = parent + os.pathsep + env.get("PYTHONPATH", "")
        self.p = subprocess.Popen([sys.executable, "-c", WORKER], stdin=subprocess.PIPE,
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                  env=env)

    def ask(self, path, timeout=10.0):
        import selectors
        if self.p is None or self.p.poll() is not None:
            self.start()
        self.p.stdin.write(path + "\n")
        self.p.stdin.flush()
        sel = selectors.DefaultSelector()
        sel.register(self.p.stdout, selectors.EVENT_READ)
        ready = sel.select(timeout)
        sel.close()
        if not ready:
            self.stop()
            raise AssertionError(f"probe hung for {timeout} s on {path}")
        line = self.p.stdout.readline()
        if not line:
            rc = self.p.wait(5)
            err = self.p.stderr.read()[-2000:]
            self.p = None
            raise AssertionError(f"probe crashed (rc={rc}) on {path}: {err}")
        return line.split()

    def stop(self):
        if self.p is not None:
            if self.p.poll() is None:
                self.p.kill()
            self.p.wait(5)
            self.p = None


@pytest.fixture(scope="module")
def worker():
    w = Worker()
    try:
        yield w
    finally:
        w.stop()


@pytest.fixture(scope="module")
def fuzz_base(tmp_path_factory):
    """A real segment with a history: laps, SKIP padding, consumed and waiting
    messages (record sizes multiples of 16 or not)."""
    d = tmp_path_factory.mktemp("fuzz")
    p = str(d / "base")
    with fastq.Queue.create(p, capacity=4096, serializer="raw", max_processes=2) as q:
        for i in range(40):
            q.put(bytes([i]) * (16 * (i % 7) + 48))
            if i % 3:
                q.get_nowait()
        for i in range(6):
            q.put(bytes([100 + i]) * (5 + 37 * i))
    with open(p, "rb") as f:
        data = f.read()
    return d, data


mutation = st.tuples(st.sampled_from(["header", "record"]), st.integers(0, 1 << 20),
                     st.integers(0, 255))


@settings(max_examples=500, deadline=None, database=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture,
                                 HealthCheck.too_slow])
@given(muts=st.lists(mutation, min_size=1, max_size=8),
       word=st.one_of(st.none(), st.tuples(st.sampled_from([16, 24, 32, 40, 48, 56, 64, 72,
                                                            80, 88, 128, 256, 384, 512, 520,
                                                            528]),
                                           st.integers(0, (1 << 64) - 1))))
def test_fuzz_header_and_records(muts, word, fuzz_base, worker):
    d, base = fuzz_base
    data = bytearray(base)
    data_off = struct.unpack_from("<Q", base, DATA_OFFSET)[0]
    for where, pos, val in muts:
        if where == "header":
            data[pos % 1024] = val
        else:
            data[data_off + pos % (len(base) - data_off)] = val
    if word is not None:  # a whole 64-bit field replaced
        off, val = word
        data[off:off + 8] = struct.pack("<Q", val)
    p = str(d / "case")
    with open(p, "wb") as f:
        f.write(data)
    outcome = worker.ask(p)
    bad = [o for o in outcome if o not in ALLOWED]
    assert not bad, f"unexpected outcome {outcome} for mutations {muts} {word}"


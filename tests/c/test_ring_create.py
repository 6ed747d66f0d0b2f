"""fq_create / fq_open of a queue segment: capacity rounding, option validation,
exclusive creation, mode, the max_message limit, sharing, and the bad segments open rejects.
"""

import errno
import os
import struct

import pytest

from support.cring import Q
from support.cseg import CAP, create, ffi, HDR, lib, open_seg, rec_size


# ---------------------------------------------------------------------------
# create / open


def data_offset(slots):
    return (1024 + slots * 2304 + 4095) & ~4095


@pytest.mark.parametrize("asked,cap", [(0, 4096), (1, 4096), (4096, 4096), (4097, 8192),
                                       (5000, 8192), (65536, 65536), (65537, 131072)])
def test_create_rounds_capacity_to_power_of_two(tmp_path, asked, cap):
    p = tmp_path / "q.seg"
    rc, q, err = create(p, capacity=asked, max_slots=0)
    assert rc == 0, err
    try:
        assert lib.fq_capacity(q) == cap
        assert lib.fq_max_message(q) == cap // 2 - 16
        assert lib.fq_max_slots(q) == 64
        assert os.path.getsize(p) == data_offset(64) + cap
        assert [n for n in os.listdir(tmp_path)] == ["q.seg"], "temporary file left behind"
    finally:
        lib.fq_close(q)


def test_create_validates_options(tmp_path):
    p = str(tmp_path / "q.seg")
    rc, q, err = create(p, capacity=8192, max_message=8192 // 2 - 16)
    assert rc == 0, err
    assert lib.fq_max_message(q) == 4080
    lib.fq_close(q)
    os.unlink(p)
    rc, q, err = create(p, capacity=8192, max_message=100)
    assert rc == 0 and lib.fq_max_message(q) == 100
    lib.fq_close(q)
    os.unlink(p)
    # a max_message that does not fit half the (rounded) ring
    rc, q, err = create(p, capacity=5000, max_message=8192 // 2 - 15)
    assert rc == -22 and "max_message" in err and not os.path.exists(p)
    rc, q, err = create(p, capacity=(1 << 40) + 1)
    assert rc == -22 and "capacity" in err
    rc, q, err = create(p, max_slots=1025)
    assert rc == -22 and "1025" in err
    rc, q, err = create(p, max_slots=1024)
    assert rc == 0, err
    assert lib.fq_max_slots(q) == 1024
    assert os.path.getsize(p) == data_offset(1024) + 4096
    lib.fq_close(q)
    assert os.listdir(tmp_path) == ["q.seg"]


def test_create_is_exclusive(tmp_path):
    p = tmp_path / "q.seg"
    q1 = Q.create(p)
    assert q1.put(b"hello") == 0
    rc, q2, err = create(p, capacity=65536)
    assert rc == -17, (rc, err)  # -EEXIST
    assert "exists" in err.lower()
    assert os.listdir(tmp_path) == ["q.seg"], "temporary file left behind"
    q3 = Q.open(p)  # the original is intact
    assert q3.cap == CAP and q3.qsize() == 1
    assert q3.get() == (0, [b"hello"], 0)
    q3.close()
    q1.close()
    rc, q, err = create(tmp_path / "nodir" / "q.seg")
    assert rc == -2 and err


def test_create_mode(tmp_path):
    p = tmp_path / "q.seg"
    rc, q, err = create(p, mode=0o640)
    assert rc == 0
    assert os.stat(p).st_mode & 0o777 == 0o640
    lib.fq_close(q)


def test_max_message_fits_the_record_len_field(tmp_path):
    """Regression (579e566: max capacity 2^40, so max_message could exceed the u32 len
    and fq_put_begin stored (uint32_t)len: the message came out truncated, the ring
    wedged behind it).
    A (sparse) segment of 16 GiB whose max_message exceeds what a record's u32 len
    holds: either fq_open rejects it, or a message longer than 4 GiB keeps its length.
    (fq_create would accept it too.  fq_open reserves the holes of a sparse file:
    16 GiB of disk, or ENOSPC where there is less, a refusal like EBADSEG.)"""
    p = tmp_path / "q.seg"
    Q.create(p, capacity=CAP, max_slots=2).close()
    cap = 1 << 34
    ds = data_offset(2)
    with open(p, "r+b") as f:
        f.seek(16)
        f.write(struct.pack("<QQQ", cap, cap // 2 - HDR, ds + cap))
        f.truncate(ds + cap)  # sparse: only touched pages take memory
    rc, qp, err = open_seg(p)
    if rc in (lib.FQ_EBADSEG, -errno.ENOSPC):
        return  # rejected: fine
    assert rc == 0, err
    q = Q(qp, p)
    try:
        assert q.max_msg == cap // 2 - HDR > 0xFFFFFFFF
        n = (1 << 32) + 64
        lens = ffi.new("uint64_t[1]", [n])
        c = ffi.new("fq_claim *")
        rc = lib.fq_put_begin(q.q, lens, 1, c)
        if rc == lib.FQ_ETOOBIG:
            return  # refused: fine
        assert rc == 0
        assert c.end - c.pos == rec_size(n)
        lib.fq_claim_buf(q.q, c)  # (the payload is left as zeros: sparse)
        lib.fq_put_commit(q.q, c)
        rc, g = q.begin()
        assert rc == 0
        d, ln = q._d, q._l
        assert lib.fq_claim_next(q.q, g, d, ln) == 1
        assert ln[0] == n, "a message of %d bytes comes out with %d" % (n, ln[0])
    finally:
        q.close()


def test_open_shares_the_segment(tmp_path):
    p = tmp_path / "q.seg"
    a = Q.create(p, capacity=16384, max_message=1000, max_slots=3)
    b = Q.open(p)
    assert (b.cap, b.max_msg, lib.fq_max_slots(b.q)) == (16384, 1000, 3)
    assert a.put(b"x" * 1000) == 0
    assert a.put(b"x" * 1001) == lib.FQ_ETOOBIG
    assert b.qsize() == 1
    assert b.get() == (0, [b"x" * 1000], 0)
    assert a.qsize() == 0
    # two handles of one process take two slots
    assert lib.fqt_my_slot(a.q) != lib.fqt_my_slot(b.q)
    b.close()
    a.close()
    rc, q, err = open_seg(tmp_path / "missing.seg")
    assert rc == -2 and "missing.seg" in err


def _ctrl_patch(fmt, off, val):
    return ("patch", fmt, off, val)


BAD_SEGMENTS = {
    "empty": (("truncate", 0), "smaller than a segment header"),
    "short": (("truncate", 1000), "smaller than a segment header"),
    "magic": (_ctrl_patch("<Q", 0, 0x1234), "not a fastq segment"),
    "version": (("version",), "version"),
    "kind": (_ctrl_patch("<I", 12, 3), "kind"),
    # a queue relabelled as a topic has no topic tables
    "kind_topic": (_ctrl_patch("<I", 12, 2), "topic fields"),
    "queue_with_subs": (_ctrl_patch("<I", 104, 4), "topic fields"),
    "flags": (_ctrl_patch("<I", 84, 1), "topic fields"),
    "capacity_not_pow2": (_ctrl_patch("<Q", 16, 4096 + 8), "capacity"),
    "capacity_small": (_ctrl_patch("<Q", 16, 2048), "capacity"),
    "max_message_zero": (_ctrl_patch("<Q", 24, 0), "max_message"),
    "max_message_big": (_ctrl_patch("<Q", 24, 2048 - 15), "max_message"),
    "file_size": (_ctrl_patch("<Q", 32, 12345), "file size"),
    "data_offset": (_ctrl_patch("<Q", 40, 4096 * 7), "offsets"),
    "slot_offset": (_ctrl_patch("<Q", 48, 512), "offsets"),
    "slots_zero": (_ctrl_patch("<I", 56, 0), "slot table"),
    "slots_many": (_ctrl_patch("<I", 56, 5000), "slot table"),
    "lanes": (_ctrl_patch("<I", 60, 4), "slot table"),
    "salt": (_ctrl_patch("<Q", 64, 0x1235), "salt"),
    "truncated": (("truncate", -4096), "truncated or extended"),
    "extended": (("truncate", +4096), "truncated or extended"),
    "release_after_head": (("cursors", 64, 32, 96), "cursors"),
    "head_after_tail": (("cursors", 0, 96, 64), "cursors"),
    "tail_past_ring": (("cursors", 0, 0, 4096 + 8), "cursors"),
    "misaligned": (("cursors", 4, 4, 4), "cursors"),
}


@pytest.mark.parametrize("name", sorted(BAD_SEGMENTS))
def test_open_rejects_bad_segments(tmp_path, name):
    p = tmp_path / "q.seg"
    q = Q.create(p, max_slots=4)
    q.close()
    (op, *args), words = BAD_SEGMENTS[name]
    size = os.path.getsize(p)
    with open(p, "r+b") as f:
        if op == "truncate":
            n = args[0]
            f.truncate(n if n >= 0 and abs(n) < 4096 else size + n)
        elif op == "version":  # one the core does not read
            f.seek(8)
            v = struct.unpack("<I", f.read(4))[0]
            f.seek(8)
            f.write(struct.pack("<I", v + 1))
        elif op == "patch":
            fmt, off, val = args
            f.seek(off)
            f.write(struct.pack(fmt, val))
        else:
            rel, hd, tl = args
            for off, v in ((128, tl), (256, hd), (384, rel)):
                f.seek(off)
                f.write(struct.pack("<Q", v))
    rc, qp, err = open_seg(p)
    assert rc == lib.FQ_EBADSEG, (rc, err)
    assert words in err, err
    assert str(p) in err

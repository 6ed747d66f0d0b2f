"""Watching threads block in the C core's futex sleeps: which syscall a
thread is in (/proc/self/task/<tid>/syscall), a thread that runs one blocking
C call, and the addresses of a segment's futex words (white-box C tests)."""
import platform
import threading
import time

import pytest

from support.cseg import ffi, HDR, lib

#: fq_ctrl offsets of the futex words (csrc/fq_layout.h, static-asserted there)
CTRL_DATA_SEQ, CTRL_SPACE_SEQ = 512, 516
WAIT_DATA, WAIT_SPACE = 0, 1
SYS_FUTEX = {"x86_64": 202, "aarch64": 98}.get(platform.machine())
SYS_SLEEPS = {"x86_64": (35, 230), "aarch64": (101, 115)}.get(platform.machine(), ())
LONG_NS = 600 * 10**9  # a wait slice no test waits out
BOUND = 60.0           # how long a woken thread may take to be seen back


def seg_base(t):
    """the address the segment is mapped at (its control block)"""
    return int(ffi.cast("uintptr_t", lib.fqt_rec_data(t.q, 0))) - HDR - lib.fqt_data_offset(t.q)


def syscall_of(tid):
    """(number, first argument) of the syscall thread tid is blocked in, or None"""
    try:
        with open("/proc/self/task/%d/syscall" % tid) as f:
            fields = f.read().split()
    except FileNotFoundError:
        return None
    if not fields or fields[0] in ("running", "-1"):
        return None
    return int(fields[0]), (int(fields[1], 16) if len(fields) > 1 else 0)


class Waiter(threading.Thread):
    """a thread that runs fn (a C call that releases the GIL) once"""

    def __init__(self, fn):
        super().__init__(daemon=True)
        self.fn = fn
        self.tid = None
        self.result = None
        self.error = None
        self.started_evt = threading.Event()

    def run(self):
        self.tid = threading.get_native_id()
        self.started_evt.set()
        try:
            self.result = self.fn()
        except BaseException as e:  # reported by the test
            self.error = e

    def blocked_in(self, pred, limit=BOUND):
        """wait until the thread is blocked in a syscall pred(nr, arg0) accepts (True)
        or has finished (False)"""
        self.start()
        self.started_evt.wait(limit)
        deadline = time.monotonic() + limit
        while time.monotonic() < deadline:
            if not self.is_alive():
                return False
            sc = syscall_of(self.tid)
            if sc is not None and pred(*sc):
                return True
            time.sleep(0.001)
        raise AssertionError("the thread neither blocked nor finished")


def asleep_on(addr):
    return lambda nr, a0: nr == SYS_FUTEX and a0 == addr


need_futex_nr = pytest.mark.skipif(SYS_FUTEX is None, reason="syscall numbers of this arch")


def wake_all(t):
    """fq_unsubscribe wakes every sleeper: frees a test's thread if its check failed"""
    s = t.subscribe("wake-all")
    s.unsubscribe()

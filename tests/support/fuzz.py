"""The fuzz runner of the white-box tests of hostile segments (tests/c/test_*_fuzz.py)."""
import os
import signal
import time

from support.cseg import lib, open_seg
from support.procs import children, fork

#: exit codes of a fuzz child that are outcomes (what each means is the child's to say)
OUTCOMES = (10, 11, 12)


def open_fuzzed(path):
    """fq_open of a fuzzed segment: its fq_queue *, or None if it was refused (as it
    must be, if at all: FQ_EBADSEG or an errno, with a message)"""
    rc, qp, err = open_seg(path)
    if rc != 0:
        assert rc == lib.FQ_EBADSEG or rc < 0, rc
        assert err
        return None
    return qp


def run_fuzz(tmp_path, cases, budget, make_case, child, keep=str, par=2):
    """Run up to `cases` fuzz cases, `par` children at a time, while `budget` seconds last.

    make_case(case) -> (segment image, mutations); the image is written to a file and
    child(path, case) forked on it.  A child must exit with one of OUTCOMES; anything
    else (a signal, another code, or "hang": alive after 5 s, then killed) is a failure,
    whose image keep(path, case, code) keeps (default: where it is).  Stops after 5
    failures.  Returns (counts of outcomes, failures [(case, code, mutations, kept)],
    seconds)."""
    t0 = time.monotonic()
    failures = []
    counts = dict.fromkeys(OUTCOMES, 0)
    running = {}  # pid -> (case, started, mutations, path)
    case = 0
    with children() as pids:
        while (case < cases or running) and len(failures) < 5:
            while case < cases and len(running) < par and time.monotonic() - t0 < budget:
                mimg, muts = make_case(case)
                path = tmp_path / ("fuzz%d.seg" % case)
                with open(path, "wb") as f:
                    f.write(mimg)
                pid = fork(child, path, case)
                pids.append(pid)
                running[pid] = (case, time.monotonic(), muts, path)
                case += 1
            if not running:
                break
            for pid in list(running):
                kase, started, muts, path = running[pid]
                p, status = os.waitpid(pid, os.WNOHANG)
                if p:
                    code = os.waitstatus_to_exitcode(status)
                elif time.monotonic() - started > 5.0:
                    os.kill(pid, signal.SIGKILL)
                    os.waitpid(pid, 0)
                    code = "hang"
                else:
                    continue
                pids.remove(pid)
                del running[pid]
                if code in counts:
                    counts[code] += 1
                    os.unlink(path)
                else:
                    failures.append((kase, code, muts, keep(path, kase, code)))
            time.sleep(0.0003)
    return counts, failures, time.monotonic() - t0

"""Bounded waits: for a condition another process makes true, and for a call that
might hang (a test reports the hang instead of hanging itself)."""
import threading
import time


def wait_for(pred, what, timeout=30.0, step=0.002):
    """poll pred() until it is true; fail naming ``what`` after ``timeout`` seconds"""
    deadline = time.monotonic() + timeout
    while not pred():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(step)


def call_bounded(fn, timeout=5.0):
    """Run fn() in a daemon thread; ("ok", value), ("exc", exc), or ("hung", None) if
    it did not return within timeout."""
    box = {}

    def run():
        try:
            box["r"] = ("ok", fn())
        except BaseException as e:  # noqa: BLE001
            box["r"] = ("exc", e)

    t = threading.Thread(target=run, daemon=True)
    t.start()
    t.join(timeout)
    if t.is_alive():
        return ("hung", None)
    return box["r"]


def in_thread(fn, *args):
    """Run fn(*args) in a daemon thread; returns (thread, result dict): the dict gets
    "value" or "error"."""
    res = {}

    def run():
        try:
            res["value"] = fn(*args)
        except BaseException as e:  # noqa: BLE001
            res["error"] = e

    th = threading.Thread(target=run, daemon=True)
    th.start()
    return th, res


def bounded(fn, *args, wait=60.0):
    """fn(*args) in a thread, its value; fails the test if it hangs (only a hang
    takes `wait` seconds) or raises."""
    th, res = in_thread(fn, *args)
    th.join(wait)
    assert not th.is_alive(), "hung"
    assert "error" not in res, res.get("error")
    return res["value"]


def collect(it):
    """(the items of iterator it before its first error, that error or None)"""
    got = []
    try:
        for x in it:
            got.append(x)
    except Exception as e:  # noqa: BLE001
        return got, e
    return got, None

"""Functions the Pool and pipeline tests run in worker processes (importable by
name, so that spawn and forkserver children can unpickle them)."""
import os
import signal
import time


def inc(x):
    return x + 1


def sq(x):
    return x * x


def boom(x):
    if x == 5:
        raise ValueError(f"boom at {x}")
    return x


def twice(x):
    yield x
    yield -x


def tick(x):
    """A little work: so that kills land in the middle of items."""
    time.sleep(0.001)
    return (x, os.getpid())


def die_once(arg):
    """Kill this worker the first time the item is run (a marker file says so)."""
    x, marker = arg
    if x == 7 and not os.path.exists(marker):
        open(marker, "w").close()
        os.kill(os.getpid(), signal.SIGKILL)
    return x * 10


def always_die(x):
    if x == 7:
        os.kill(os.getpid(), signal.SIGKILL)
    return x


def pid_of(_):
    return os.getpid()


_init = []


def init(value):
    _init.append(value)


def initialized(_):
    return list(_init)


def sq_first(pair):
    return pair[0] * pair[0]


def inc_first(pair):
    return pair[0] + 1


def endless(pulled):
    """0, 1, 2, ... for ever, counting in pulled[0] how many were taken"""
    i = 0
    while True:
        pulled[0] += 1
        yield i
        i += 1


def nap(seconds):
    """sleep seconds, then return them"""
    time.sleep(seconds)
    return seconds

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


BIG = 20_000  # characters of each of big_flat's outputs


def big_flat(x):
    """30 outputs of BIG characters for the input x (600 kB: more than one
    message of a 256 KiB queue), each naming (x, i)."""
    for i in range(30):
        yield f"{x}:{i}:".ljust(BIG, ".")


def big(x):
    """One output of BIG characters naming x."""
    return f"{x}:".ljust(BIG, ".")


def huge_at_2(x):
    """Flat: x, then for x == 2 one output of 200 kB (more than one message of
    a 256 KiB queue), then -x."""
    yield x
    if x == 2:
        yield "h" * 200_000
    yield -x


def gate(arg):
    """The first time it runs (no ``started`` file in the directory): say so,
    then wait (bounded) until the test creates ``go``.  Returns the item."""
    item, d = arg
    started, go = os.path.join(d, "started"), os.path.join(d, "go")
    if not os.path.exists(started):
        open(started, "w").close()
        deadline = time.monotonic() + 60
        while not os.path.exists(go) and time.monotonic() < deadline:
            time.sleep(0.005)
    return item


def big_flat_with(arg):
    """For arg (x, d): 30 outputs (tag, x, i, text), each paired with d for
    gate.  Run again for the same x (a marker file says so), the tag is "b"
    instead of "a" and the texts are a quarter shorter: the parts are cut at
    other places than the first run's."""
    x, d = arg
    marker = os.path.join(d, f"ran{x}")
    tag = "b" if os.path.exists(marker) else "a"
    open(marker, "a").close()
    size = BIG if tag == "a" else BIG * 3 // 4
    for i in range(30):
        yield ((tag, x, i, "".ljust(size, ".")), d)

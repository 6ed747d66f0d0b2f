"""asyncio for fastq: awaitable gets and puts without polling and without a
thread (issue #12).

How a coroutine waits.  Every call first tries the non-blocking call
(``get(block=False)``...).  If it cannot proceed, the task registers as a
waiter of that segment and side (data or space) and arms this process's
slot there (``fq_arm``): its bit goes up in the segment's sleeper mask, as a
blocked thread's would, and the slot names this process's *bell*, an
abstract Unix datagram socket that every event loop of the process with
waiters watches (``loop.add_reader``).  A writer that finds the bit up rings
the bell (one datagram, only while the bit is up: a busy queue with no
sleeper costs its writers nothing).  The loop that reads the datagram takes
the slot's rung bits and wakes one waiter of each side rung (every waiter,
for a topic's subscriptions: each wants every message); the woken task
tries again.  Idle waiters cost nothing: no timer runs while nothing is in
flight that a dead process could leave stalled (``FQ_ARM_QUIET``);
otherwise a waiter wakes every ``RECOVER_AFTER`` seconds to run recovery.

Closing: ``close()`` of a queue, topic or subscription (from any thread)
wakes the tasks awaiting on that handle (``wake_closed``); they raise
``ValueError``, as blocking calls do.

Cancellation: a task only ever awaits its own future; the get or put itself
is a non-blocking call that runs to completion between two awaits.  A
cancelled call has therefore taken nothing and put nothing, and a wake-up it
had received is passed on to the next waiter.
"""
from __future__ import annotations

import collections
import errno
import os
import secrets
import socket
import threading
import time
from typing import TYPE_CHECKING, Any, AsyncIterator, Callable, Iterable, List, Optional

from . import _core
from ._errors import Empty, Full, ShutDown

if TYPE_CHECKING:
    import asyncio
# asyncio is imported where a loop runs (it is imported then already): `import
# fastq` does without it (~15 ms and 200 modules fewer at start-up)

__all__ = ["QueueAio", "TopicAio", "SubscriptionAio", "wake_closed"]

DATA, SPACE = 0, 1
_SPIN, _SLEEP = _core.STRATEGIES["spin"], _core.STRATEGIES["sleep"]
READY, QUIET = _core.ARM_READY, _core.ARM_QUIET
RECOVER_AFTER = 0.2  # seconds: a waiter with a claim in flight runs recovery this often

# The spin before arming (_Habit): at most SPIN_MAX_NS; off once a spin is
# below SPIN_MIN_NS, except one wait in SPIN_PROBE_EVERY, which spins
# SPIN_MAX_NS to see whether spinning pays again.
SPIN_MAX_NS = 50_000
SPIN_MIN_NS = 2_000
SPIN_PROBE_EVERY = 128
_MULTICORE = len(os.sched_getaffinity(0)) > 1 if hasattr(os, "sched_getaffinity") \
    else (os.cpu_count() or 1) > 1
_UNSEEN = object()
_all_tasks: Any = _UNSEEN  # asyncio's registry of live tasks (_loop_free), once looked up

# What this process's waiters did (tests count wake-ups, never time them):
# rings: bell datagrams read; wakes: waiters woken by a bell; slices: timer
# expiries (a recovery slice or a deadline); sleeps: futures awaited; futile:
# wake-ups after which the call could not proceed (and armed again); spins:
# spins before arming; spin_hits: those that saw the condition hold.
stats = {"rings": 0, "wakes": 0, "slices": 0, "sleeps": 0, "futile": 0, "spins": 0,
         "spin_hits": 0}


class _Habit:
    """What this process learned from its recent waits on one side of one
    handle: whether, and how long, a task spins before it arms, and whether
    waits end within a slice (brisk: see _call_waiting).

    The spin (the loop and the GIL held: a hand-off from a process running on
    another core then costs a few us instead of a bell and a scheduler
    wake-up, ~50 us).  Adaptive: a spin that saw the message or the room
    sets the budget to SPIN_MAX_NS, a spin that missed divides it by 4; below
    SPIN_MIN_NS it is off, and one wait in SPIN_PROBE_EVERY spins
    SPIN_MAX_NS (a probe).  So spinning stops within three waits once the
    other side is slower than the spin (or has no core to run on), and
    costs SPIN_MAX_NS / SPIN_PROBE_EVERY per wait while off.  A task never
    spins while its loop has other work ready (_loop_free), and no one spins
    on a single core.  Only a task that starts a wait spins: a task asleep
    costs nothing."""
    __slots__ = ("budget", "skipped", "brisk")

    def __init__(self) -> None:
        self.budget = SPIN_MAX_NS
        self.skipped = 0     # waits without a spin since the budget went off
        self.brisk = False   # the last wait that armed was woken within its first slice

    def allowance(self) -> int:
        """Nanoseconds to spin now (0: arm at once)."""
        if self.budget >= SPIN_MIN_NS:
            return self.budget
        self.skipped += 1
        if self.skipped < SPIN_PROBE_EVERY:
            return 0
        self.skipped = 0
        return SPIN_MAX_NS

    def record(self, hit: bool) -> None:
        """The spin saw the condition hold (hit) or ran out."""
        self.budget = SPIN_MAX_NS if hit else self.budget // 4


def _loop_free(loop: asyncio.AbstractEventLoop) -> bool:
    """Nothing else of loop is ready to run: a spin delays no one (besides
    I/O that arrives meanwhile, at most SPIN_MAX_NS).  asyncio's loops show
    their ready queue; for one that does not (uvloop), the running task must
    be the only task alive in this process."""
    global _all_tasks
    ready = getattr(loop, "_ready", None)
    if ready is not None:
        return not ready
    if _all_tasks is _UNSEEN:
        import asyncio.tasks
        # CPython 3.11: _all_tasks; 3.12-3.13: _scheduled_tasks (no registry: never spin)
        _all_tasks = getattr(asyncio.tasks, "_all_tasks", None)
        if _all_tasks is None:
            _all_tasks = getattr(asyncio.tasks, "_scheduled_tasks", None)
    return _all_tasks is not None and len(_all_tasks) <= 1


def _habit(handle: Any, what: int) -> "_Habit":
    """The _Habit of side what of handle (made on its first wait)."""
    try:
        return handle._aio_habits[what]
    except AttributeError:
        hs = handle._aio_habits = (_Habit(), _Habit())
        return hs[what]


def _spin_first(loop: asyncio.AbstractEventLoop, seg: Any, h: "_Habit",
                spin: Callable[[int], bool]) -> bool:
    """Before the first arm: spin, if seg's wait strategy, the habit h and
    loop allow it.  True if the condition may hold now."""
    strategy = seg.strategy
    if strategy == _SLEEP or not _MULTICORE or not _loop_free(loop):
        return False
    if strategy == _SPIN:
        ns = SPIN_MAX_NS
    else:
        ns = h.allowance()
        if not ns:
            return False
    stats["spins"] += 1
    hit = spin(ns)
    h.record(hit)
    if hit:
        stats["spin_hits"] += 1
    return hit


class _Waiter:
    """One task waiting on one side of one segment."""
    __slots__ = ("loop", "fut", "woken", "arm", "handles", "closed", "tick", "quiet")

    def __init__(self, loop: asyncio.AbstractEventLoop, arm: Callable[..., int],
                 handles: tuple):
        self.loop = loop
        self.fut: Optional[asyncio.Future] = None
        self.woken = False  # a bell resolved fut (or will: another loop's thread)
        self.arm = arm
        self.handles = handles  # whose close() wakes it (the segment, a subscription)
        self.closed = False     # one of them was closed: raise ValueError
        self.tick = 0           # _Ticker.tick when it went to sleep in a slice
        self.quiet = True       # its last arm: quietly (fq_arm) or in slices (fq_arm_slice)


class _Ticker:
    """The slices of one loop's tasks that sleep with a recovery timer: one
    timer per loop, every RECOVER_AFTER / 2 while such a task sleeps, instead
    of a timer per sleep (a TimerHandle made, pushed and cancelled per
    message cost a sixth of an awaited message's instructions).  A task
    asleep since before the last tick is woken (a slice passed): between
    RECOVER_AFTER / 2 and RECOVER_AFTER after it went to sleep.  Used from
    its loop's thread only."""
    __slots__ = ("loop", "sleeping", "tick", "timer")

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.sleeping: set = set()
        self.tick = 0
        self.timer: Any = None

    def add(self, w: _Waiter) -> None:
        w.tick = self.tick
        self.sleeping.add(w)
        if self.timer is None:
            self.timer = self.loop.call_later(RECOVER_AFTER / 2, self.fire)

    def fire(self) -> None:
        self.timer = None
        self.tick += 1
        for w in [w for w in self.sleeping if w.tick < self.tick - 1]:
            self.sleeping.discard(w)
            if w.fut is not None:
                _expire(w.fut)
        if self.sleeping:
            self.timer = self.loop.call_later(RECOVER_AFTER / 2, self.fire)


def _set(w: _Waiter) -> None:
    """In w's loop: wake w (if it still sleeps)."""
    if w.fut is not None and not w.fut.done():
        w.fut.set_result(None)


def wake_closed(handle: Any) -> None:
    """handle (a Queue, Topic or Subscription) was closed: wake the tasks
    of this process awaiting on it (any loop, any thread); they raise
    ValueError.  Called by close() after the handle is closed, so that a
    task woken cannot arm it again."""
    b = _bell
    if b is None:
        return
    with b.lock:
        ws = [w for s in b.sides.values() for w in s.waiters
              if any(h is handle for h in w.handles)]
    import asyncio
    try:
        running = asyncio.get_running_loop()
    except RuntimeError:
        running = None
    for w in ws:
        w.closed = True
        if w.loop is running:
            _set(w)
        else:
            try:
                w.loop.call_soon_threadsafe(_set, w)
            except RuntimeError:  # its loop is closed: it never runs again
                pass


def _resolve(side: "_Side", w: _Waiter) -> None:
    """In w's loop: wake w, or, if it is gone meanwhile, the next one."""
    if w.fut is not None and not w.fut.done():
        w.fut.set_result(None)
    else:
        side.wake(w.loop)


class _Side:
    """The waiters of this process on one side of one segment."""

    def __init__(self, bell: "_Bell", key: Any, what: int, broadcast: bool):
        self.bell, self.key, self.what = bell, key, what
        self.both = ((key, DATA), (key, SPACE))  # this segment's keys in bell.sides
        self.broadcast = broadcast  # a topic's data side: every subscription wants the message
        self.waiters: collections.deque = collections.deque()

    def wake(self, running: Optional[asyncio.AbstractEventLoop]) -> None:
        """Wake the first waiter asleep (every one, if broadcast); running:
        the loop this runs in (its waiters are woken directly)."""
        for w in list(self.waiters):  # a snapshot: other threads' loops add and remove
            if w.woken or w.fut is None or w.fut.done():
                continue  # already woken, or awake (it re-arms before sleeping)
            w.woken = True
            stats["wakes"] += 1
            if w.loop is running:
                w.fut.set_result(None)
            else:
                try:
                    w.loop.call_soon_threadsafe(_resolve, self, w)
                except RuntimeError:  # its loop is closed: it never runs again
                    continue
            if not self.broadcast:
                return

    def rearm(self, running: asyncio.AbstractEventLoop) -> None:
        """After a wake-up, for the waiters still asleep: arm again (the bit
        stays up while any task of this process is armed, but the rung bits
        were taken with the datagram), and wake one if it may proceed now.
        In the mode the task armed in: a task asleep in slices re-armed
        quietly would put the quiet bit up for its side (review 16, I2)."""
        if len(self.waiters) < 2:
            return  # only the task that calls this (awake): no one else to arm for
        for w in list(self.waiters):
            if w.fut is not None and not w.fut.done() and not w.woken:
                try:
                    flags = w.arm(True, w.quiet)
                except Exception:
                    flags = READY  # let it find out itself
                if flags & READY:
                    self.wake(running)
                return

    def remove(self, w: _Waiter) -> None:
        """w leaves; the last one out disarms.  Under the bell's lock, as
        _Bell.join: a waiter of another thread's loop that joins meanwhile
        arms after this disarm, or is seen here and keeps it armed."""
        with self.bell.lock:
            try:
                self.waiters.remove(w)
            except ValueError:
                pass
            if self.waiters:
                return
            try:
                w.arm(False)
            except Exception:
                pass  # closed meanwhile: nothing is armed any more
            sides = self.bell.sides
            dkey, skey = self.both
            sides.pop(skey if self.what else dkey, None)
            if dkey not in sides and skey not in sides:
                self.bell.targets.pop(self.key, None)


class _Bell:
    """This process's doorbell and its registry of waiters."""

    def __init__(self) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
        self.sock.setblocking(False)
        while True:
            name = secrets.randbits(64)
            if not name:  # 0 means "no bell"
                continue
            try:
                self.sock.bind(b"\0fastq-bell-%016x" % name)
                break
            except OSError as e:  # taken (1 in 2**64): draw again
                if e.errno != errno.EADDRINUSE:
                    raise
        self.name = name
        self.lock = threading.Lock()  # joining and leaving a side (loops in threads)
        self.sides: dict = {}      # (key, what) -> _Side
        self.targets: dict = {}    # key -> the segment handle to take its rung bits with,
        #                            while a task waits there
        self.loops: dict = {}      # id(loop) -> (loop, fd, _Ticker): loops that watch the bell
        _core._bell_set(name)

    def watch(self, loop: asyncio.AbstractEventLoop) -> _Ticker:
        """Watch the bell from loop (once); loop's _Ticker."""
        ent = self.loops.get(id(loop))
        if ent is not None and ent[0] is loop:
            return ent[2]
        for k, (lp, fd, _) in list(self.loops.items()):  # forget closed loops
            if lp.is_closed():
                del self.loops[k]
                os.close(fd)
        # a descriptor of its own per loop: one loop's remove_reader, or its
        # closing, never touches another's registration
        fd = os.dup(self.sock.fileno())
        loop.add_reader(fd, self.ring, loop)
        ticker = _Ticker(loop)
        self.loops[id(loop)] = (loop, fd, ticker)
        return ticker

    def join(self, seg: Any, what: int, broadcast: bool, w: _Waiter) -> _Side:
        """Register w as a waiter on side what of seg (it arms afterwards)."""
        key = _core._seg_key(seg)
        with self.lock:
            self.targets[key] = seg
            s = self.sides.get((key, what))
            if s is None:
                # the side this handle's last wait left (empty), if it is
                # this bell's and this segment's: not a new one per wait
                try:
                    cache = seg._aio_sides
                except AttributeError:
                    cache = seg._aio_sides = [None, None]
                s = cache[what]
                if s is None or s.bell is not self or s.key != key or \
                        s.broadcast != broadcast or s.waiters:
                    s = cache[what] = _Side(self, key, what, broadcast)
                self.sides[s.both[what]] = s
            s.waiters.append(w)
        return s

    def ring(self, loop: asyncio.AbstractEventLoop) -> None:
        """The bell rang (in loop, one of this process's)."""
        try:
            self.sock.recv(16)  # one: the loop calls again while more are queued
            stats["rings"] += 1
        except (BlockingIOError, InterruptedError):
            pass
        # after the recv: a ring after this take sends another datagram
        take, sides = _core._seg_bell_take, self.sides
        for key, seg in list(self.targets.items()):
            try:
                rung = take(seg)
            except Exception:
                rung = 0
            if not rung:
                continue
            if rung & (1 << DATA):
                s = sides.get((key, DATA))
                if s is not None:
                    s.wake(loop)
            if rung & (1 << SPACE):
                s = sides.get((key, SPACE))
                if s is not None:
                    s.wake(loop)


_bell: Optional[_Bell] = None
_bell_lock = threading.Lock()


def _get_bell() -> _Bell:
    global _bell
    b = _bell
    if b is None:
        with _bell_lock:
            b = _bell
            if b is None:
                b = _bell = _Bell()
    return b


_loops: dict = {}  # thread ident -> the event loop last found running in that thread
_get_ident = threading.get_ident


def _running_loop() -> asyncio.AbstractEventLoop:
    """asyncio.get_running_loop(), without its getpid() system call (CPython
    3.11 makes one on every call to tell a forked child from its parent;
    this module forgets its loops in a forked child instead): the loop last
    found running in this thread, while it still runs in this thread."""
    ident = _get_ident()
    lp = _loops.get(ident)
    # a selector loop knows its thread while it runs (None once stopped);
    # uvloop's does not say: a thread runs one loop at a time, so a loop
    # that still runs, cached for this thread, is the one running here
    if lp is not None:
        tid = getattr(lp, "_thread_id", _UNSEEN)
        if tid == ident or (tid is _UNSEEN and lp.is_running()):
            return lp
    import asyncio
    lp = _loops[ident] = asyncio.get_running_loop()
    return lp


def _forget_bell() -> None:
    """In a forked child: the parent's bell, waiters and loops are not ours."""
    global _bell, _bell_lock
    _bell, _bell_lock = None, threading.Lock()
    _loops.clear()
    _core._bell_set(0)


os.register_at_fork(after_in_child=_forget_bell)


async def _call(seg: Any, what: int, attempt: Callable[[], Any], arm: Callable[..., int],
                timeout: Optional[float], broadcast: bool = False,
                more: Optional[Callable[[], bool]] = None,
                spin: Optional[Callable[[int], bool]] = None, sub: Any = None,
                ready: Optional[Callable[[], bool]] = None, tried: bool = False) -> Any:
    """Run attempt(), a non-blocking call that raises Empty (what=DATA) or
    Full (SPACE) when it cannot proceed, until it returns; between tries,
    await a wake-up of that side of seg (arm(True) arms it).  spin(ns), if
    given, spins up to ns first (_spin_first decides).  sub: the
    subscription awaited on, if any (its close() wakes the task too).
    ready(), if given, says whether attempt() may proceed, cheaper than
    attempt() raising (an exception and its traceback) when it cannot.
    tried: the caller made that first try already (it raised; only with
    timeout None)."""
    exc = Empty if what == DATA else Full
    if tried:
        pass
    elif ready is None or (timeout is not None and timeout <= 0) or ready():
        try:
            return attempt()
        except exc:
            if timeout is not None and timeout <= 0:
                raise
    if timeout is not None and timeout < 0:
        raise ValueError("'timeout' must be a non-negative number")
    if what == SPACE:
        # the first try counted one back-pressure event; the retries count
        # none, and the time awaited is added when this call ends
        t0 = time.monotonic_ns()
        seg.full_retrying = True
        try:
            return await _call_waiting(seg, what, attempt, arm, timeout, broadcast, more, spin,
                                       sub)
        finally:
            seg.full_retrying = False
            seg._note_full(0, time.monotonic_ns() - t0)
    return await _call_waiting(seg, what, attempt, arm, timeout, broadcast, more, spin, sub)


async def _call_waiting(seg: Any, what: int, attempt: Callable[[], Any],
                        arm: Callable[..., int], timeout: Optional[float], broadcast: bool,
                        more: Optional[Callable[[], bool]], spin: Optional[Callable[[int], bool]],
                        sub: Any) -> Any:
    """_call after its first try failed: spin, then await wake-ups."""
    exc = Empty if what == DATA else Full
    loop = _running_loop()
    try:
        h = (seg if sub is None else sub)._aio_habits[what]
    except AttributeError:
        h = _habit(seg if sub is None else sub, what)
    if spin is not None and _spin_first(loop, seg, h, spin):
        try:
            return attempt()
        except exc:
            pass
    deadline = None if timeout is None else loop.time() + timeout
    bell = _bell or _get_bell()
    ent = bell.loops.get(id(loop))
    ticker = ent[2] if ent is not None and ent[0] is loop else bell.watch(loop)
    w = _Waiter(loop, arm, (seg,) if sub is None else (seg, sub))
    side = bell.join(seg, what, broadcast, w)
    # Quiet or in slices.  Armed quietly (the quiet bit up), a task that
    # finds nothing in flight sleeps without a timer, but every claim (of a
    # writer, for data) rings its bell, ahead of that writer's publication:
    # the task wakes, finds the claim in flight, arms again and sleeps until
    # the publication rings a second time (two datagrams and two scheduler
    # wake-ups per message; most wake-ups of a ping-pong were such).  Armed
    # in slices (fq_arm_slice), only the publication rings, and the task
    # sleeps with a RECOVER_AFTER timer.  So: in slices while this side's
    # waits end within a slice (h.brisk), quietly from the first slice that
    # passes without a wake-up on (an idle task: one timer, then none).
    quiet = not h.brisk
    expired = False
    try:
        while True:
            w.quiet = quiet
            flags = arm(True, quiet)
            if not flags & READY:
                # not QUIET: a claim in flight, or armed in slices: recover
                # if it stalls (slices: the loop's _Ticker; with a deadline,
                # a timer of its own)
                sliced = not flags & QUIET
                delay = None if deadline is None else deadline - loop.time()
                if sliced and delay is not None:
                    delay, sliced = min(delay, RECOVER_AFTER), False
                if delay is None or delay > 0:
                    w.woken = False
                    fut = w.fut = loop.create_future()
                    timer = None if delay is None else loop.call_later(
                        delay, _expire, fut)
                    if sliced:
                        ticker.add(w)
                    stats["sleeps"] += 1
                    try:
                        await fut
                    finally:
                        if timer is not None:
                            timer.cancel()
                        if sliced:
                            ticker.sleeping.discard(w)
                    if w.closed:
                        raise ValueError(
                            "the subscription was closed while this call waited" if sub
                            is not None else "the queue or topic was closed while this call "
                            "waited")
                    if not w.woken:
                        quiet, expired = True, True
                        if not _core._seg_idle(seg):
                            seg.recover()  # a slice without progress
            try:
                out = attempt()
            except exc:
                if deadline is not None and loop.time() >= deadline:
                    raise
                stats["futile"] += w.woken
                continue
            h.brisk = not expired
            if more is not None and more():
                side.wake(loop)
            else:
                side.rearm(loop)
            return out
    except BaseException:
        if w.woken:  # a wake-up we did not use: the next waiter's
            w.woken = False
            side.wake(loop)
        raise
    finally:
        w.fut = None
        side.remove(w)


def _expire(fut: asyncio.Future) -> None:
    stats["slices"] += 1
    if not fut.done():
        fut.set_result(None)


def _need(ser: Any, obj: Any) -> int:
    """Payload bytes of obj once serialized (what a put must wait room for)."""
    data = obj if ser is None else ser.dumps(obj)
    if isinstance(data, list):
        return sum(memoryview(p).nbytes for p in data)
    return memoryview(data).nbytes


def _subject_len(subject: Optional[str]) -> int:
    """Bytes a topic record stores for the subject ahead of the message (publish
    checks it; a subject it refuses never waits)."""
    return len(subject.encode()) if isinstance(subject, str) else 0


async def _aput(handle: Any, put: Callable[..., Any], obj: Any, timeout: Optional[float],
                more: Optional[Callable[[], bool]], extra: int = 0, tried: bool = False) -> None:
    """Put obj through handle (a compiled segment), awaiting room (extra: bytes
    the record stores ahead of the message, a topic message's subject; tried:
    the caller's own first try raised Full)."""
    seg = handle
    need: List[int] = []

    def size() -> int:
        if not need:  # serialized once more, only when it must wait
            need.append(_need(handle._ser, obj) + extra)
        return need[0]

    def arm(on: bool, quiet: bool = True) -> int:
        return _core._seg_arm(seg, SPACE, size() if on else 0, on, quiet)

    await _call(seg, SPACE, lambda: put(obj, False, None), arm, timeout, more=more,
                spin=lambda ns: _core._seg_spin(seg, SPACE, size(), ns), tried=tried)


async def _aput_many(handle: Any, put_many: Callable[..., int], items: Iterable[Any],
                     timeout: Optional[float], more: Optional[Callable[[], bool]],
                     extra: int = 0) -> int:
    """Put every item in order through handle (a compiled segment), awaiting room
    (extra: as for _aput, per item)."""
    seg = handle
    items = list(items)
    done = [0]

    def attempt() -> int:
        try:
            done[0] += put_many(items[done[0]:], False, None)
        except Full as e:
            done[0] += getattr(e, "count", 0)
            raise
        return done[0]

    def size() -> int:
        return _need(handle._ser, items[done[0]]) + extra if done[0] < len(items) else 0

    def arm(on: bool, quiet: bool = True) -> int:
        return _core._seg_arm(seg, SPACE, size() if on else 0, on, quiet)

    try:
        return await _call(seg, SPACE, attempt, arm, timeout, more=more,
                           spin=lambda ns: _core._seg_spin(seg, SPACE, size(), ns))
    except Full as e:
        e.count = done[0]
        raise


async def _until_shutdown(aget: Callable[[], Any]) -> AsyncIterator[Any]:
    while True:
        try:
            yield await aget()
        except ShutDown:
            return


class _QueueFns:
    """A queue's callables for its awaited gets, made once per handle (not
    four closures per call): ready() (a message may be there), arm(on,
    quiet), spin(ns) and get() (the non-blocking get)."""
    __slots__ = ("ready", "arm", "spin", "get")

    def __init__(self, seg: Any) -> None:
        seg_ready, seg_arm, seg_spin = _core._seg_ready, _core._seg_arm, _core._seg_spin
        get = seg.get

        def ready() -> bool:
            return seg_ready(seg, DATA, 0)

        def arm(on: bool, quiet: bool = True) -> int:
            return seg_arm(seg, DATA, 0, on, quiet)

        def spin(ns: int) -> bool:
            return seg_spin(seg, DATA, 0, ns)

        def attempt() -> Any:
            return get(False, None)

        self.ready, self.arm, self.spin, self.get = ready, arm, spin, attempt


def _queue_fns(seg: Any) -> _QueueFns:
    try:
        return seg._aio_fns
    except AttributeError:
        fns = seg._aio_fns = _QueueFns(seg)
        return fns


class QueueAio:
    """The awaitable calls of :class:`fastq.Queue` (a base class of it)."""

    async def aput(self, obj: Any, timeout: Optional[float] = None) -> None:
        """Put obj, awaiting room (up to ``timeout`` seconds, then
        ``queue.Full``).  Cancelled, it has put nothing."""
        if timeout is None:
            # the common case without a coroutine, closures or lambdas: the
            # put goes through (_call's first try, done here)
            try:
                return self.put(obj, False, None)
            except Full:
                pass
            await _aput(self, self.put, obj, timeout, lambda: not self.full(), tried=True)
            return
        await _aput(self, self.put, obj, timeout, lambda: not self.full())

    async def aput_many(self, items: Iterable[Any], timeout: Optional[float] = None) -> int:
        """Put every item in order, awaiting room; returns how many.  On
        ``queue.Full`` its ``count`` says how many were put; cancelled, a
        prefix of the items (whole messages, in order) may have been put."""
        return await _aput_many(self, self.put_many, items, timeout, lambda: not self.full())

    def _aio_get(self, attempt: Callable[[], Any], timeout: Optional[float],
                 precheck: bool = True) -> Any:
        seg = self

        def ready() -> bool:
            return _core._seg_ready(seg, DATA, 0)
        return _call(seg, DATA, attempt,
                     lambda on, quiet=True: _core._seg_arm(seg, DATA, 0, on, quiet), timeout,
                     more=ready, spin=lambda ns: _core._seg_spin(seg, DATA, 0, ns),
                     ready=ready if precheck else None)

    async def aget(self, timeout: Optional[float] = None) -> Any:
        """The next message, awaiting one (up to ``timeout`` seconds, then
        ``queue.Empty``; ``ShutDown`` once shut down and drained).
        Cancelled, it has taken nothing."""
        if timeout is None:
            # _call inlined, with this handle's callables made once: one
            # coroutine and four closures fewer per awaited message
            try:
                fns = self._aio_fns
            except AttributeError:
                fns = _queue_fns(self)
            if fns.ready():
                try:
                    return self.get(False, None)
                except Empty:
                    pass
            return await _call_waiting(self, DATA, fns.get, fns.arm, None, False, fns.ready,
                                       fns.spin, None)
        seg = self
        return await self._aio_get(lambda: seg.get(False, None), timeout)

    async def aget_many(self, max_messages: int = 1024, timeout: Optional[float] = None,
                        max_bytes: int = 1 << 20) -> List[Any]:
        """1 to ``max_messages`` messages: awaits the first, then takes what
        is already there (as :meth:`get_many`)."""
        seg = self
        if max_messages < 1:
            raise ValueError("max_messages must be at least 1")
        return await self._aio_get(lambda: seg.get_many(max_messages, False, None, max_bytes),
                                   timeout)

    async def areceive(self, timeout: Optional[float] = None) -> "_core.Delivery":
        """:meth:`receive`, awaiting a message.  At the ``prefetch`` bound it
        raises ``RuntimeError`` at once (as ``receive(block=False)``)."""
        seg = self
        # no pre-check: at the prefetch bound receive() raises at once
        return await self._aio_get(lambda: seg.receive(False, None), timeout, False)

    def __aiter__(self) -> AsyncIterator[Any]:
        """Messages (as :meth:`aget`) until the queue is shut down and drained."""
        return _until_shutdown(self.aget)


class TopicAio:
    """The awaitable calls of :class:`fastq.Topic` (a base class of it)."""

    async def apublish(self, obj: Any, timeout: Optional[float] = None, *,
                       subject: Optional[str] = None) -> None:
        """:meth:`publish`, awaiting room in a ``"block"`` topic (up to
        ``timeout``, then ``queue.Full``).  Cancelled, it has published nothing."""
        publish = self.publish
        if timeout is None and subject is None:
            try:  # as QueueAio.aput: the first try without the slow path's closures
                return publish(obj, False, None)
            except Full:
                pass
            await _aput(self, publish, obj, timeout, None, 0, tried=True)
            return
        if subject is not None:
            def publish(obj: Any, block: bool, timeout: Optional[float]) -> None:
                self.publish(obj, block, timeout, subject=subject)
        await _aput(self, publish, obj, timeout, None, _subject_len(subject))

    async def apublish_many(self, items: Iterable[Any], timeout: Optional[float] = None, *,
                            subject: Optional[str] = None) -> int:
        """:meth:`publish_many`, awaiting room; returns how many (see
        :meth:`fastq.Queue.aput_many` for ``Full.count`` and cancellation)."""
        publish_many = self.publish_many
        if subject is not None:
            def publish_many(items: Any, block: bool, timeout: Optional[float]) -> int:
                return self.publish_many(items, block, timeout, subject=subject)
        return await _aput_many(self, publish_many, items, timeout, None, _subject_len(subject))


class SubscriptionAio:
    """The awaitable calls of :class:`fastq.Subscription` (a base class of it)."""

    def _aio_call(self, attempt: Callable[[], Any], timeout: Optional[float]) -> Any:
        seg = self._topic

        def arm(on: bool, quiet: bool = True) -> int:  # a topic's arming is always quiet
            return _core._sub_arm(self._sub, on)

        return _call(seg, DATA, attempt, arm, timeout, broadcast=True,
                     spin=lambda ns: _core._seg_spin(seg, DATA, 0, ns, self._sub), sub=self)

    async def aget(self, timeout: Optional[float] = None) -> Any:
        """The next message, awaiting one (as :meth:`get`).  Cancelled, it
        has taken nothing."""
        return await self._aio_call(lambda: self.get(False, None), timeout)

    async def aget_many(self, max_messages: int = 1024, timeout: Optional[float] = None,
                        max_bytes: int = 1 << 20) -> List[Any]:
        """1 to ``max_messages`` messages, awaiting the first (as :meth:`get_many`)."""
        if max_messages < 1:
            raise ValueError("max_messages must be at least 1")
        return await self._aio_call(lambda: self.get_many(max_messages, False, None, max_bytes),
                                    timeout)

    async def areceive(self, timeout: Optional[float] = None) -> "_core.Delivery":
        """:meth:`receive`, awaiting a message (``RuntimeError`` at once at the
        ``prefetch`` bound)."""
        return await self._aio_call(lambda: self.receive(False, None), timeout)

    def __aiter__(self) -> AsyncIterator[Any]:
        """Messages (as :meth:`aget`) until the topic is shut down and drained."""
        return _until_shutdown(self.aget)

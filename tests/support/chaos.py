"""What the chaos, crash and durability harnesses (tests/mp) share: the failure
marker a worker leaves before it exits, the workers' binary logs (fixed-size records
appended with one write(2) each, so a kill never tears one in the middle of the file),
and the serializer that checks a message while it is still claimed."""
import mmap
import multiprocessing
import os
import random
import signal
import struct
import time

from support.messages import Passthrough

#: the start method of the workers (forked: they inherit the payloads' random bytes)
CTX = multiprocessing.get_context("fork")
#: how long a live worker may go without progress while there is work for it (s)
GAP_BOUND = 2.0

#: a worker's log record: kind, flag, pad, sender, seq, t (monotonic), arg (32 bytes)
REC = struct.Struct("<BBHIQdQ")
assert REC.size == 32
#: record kinds: a worker started, a consumer called (flag: how), began copying a message
#: (in loads()), checked it, got it, received it (a delivery), acks it, acked it; a
#: producer is about to put (arg: how many), has put
(K_START, K_CALL, K_BEGIN, K_LOADED, K_GOT, K_RECV, K_ACKING, K_ACKED,
 K_INTENT, K_PUBLISHED) = b"SABLGRQKIP"


def start_worker(procs, target, *args, **kw):
    """target(*args) in a forked process, registered with the ``procs`` fixture, started"""
    p = procs.add(CTX.Process(target=target, args=args, **kw))
    p.start()
    return p


def fail(fail_path, text):
    """append text to the failure marker the supervisor reads, and exit (code 3)"""
    with open(fail_path, "a") as f:
        f.write(text + "\n")
    os._exit(3)


def rec(fd, kind, flag=0, who=0, seq=0, arg=0):
    """append one REC, stamped now"""
    os.write(fd, REC.pack(kind, flag, 0, who, seq, time.monotonic(), arg))


def read_recs(path, st=REC):
    """the records of st in a log; a record cut short by a kill is dropped"""
    try:
        with open(path, "rb") as f:
            data = f.read()
    except FileNotFoundError:
        return []
    n = len(data) // st.size * st.size
    return list(st.iter_unpack(memoryview(data)[:n]))


class CheckingSerializer(Passthrough):
    """loads() runs inside the call, the message claimed: log "B", copy the message out
    of the ring and check it (a few ms for MiBs), log "L"; a damaged message writes
    the failure marker and exits.  ``log(kind, who, seq, nbytes)`` writes the log;
    the default appends a REC to fd."""

    def __init__(self, fd, fail_path, messages, log=None):
        self.fd, self.fail_path, self.messages = fd, fail_path, messages
        self.log = log or self._rec

    def _rec(self, kind, who, seq, nbytes):
        rec(self.fd, kind, who=who & 0xFFFFFFFF, seq=seq, arg=nbytes if kind == K_BEGIN else 0)

    def loads(self, data):
        who, seq = self.messages.header(data)
        self.log(K_BEGIN, who, seq, len(data))
        buf = bytes(data)  # the copy out of the ring
        if self.messages.check(buf) is None:
            hdr = self.messages.HDR
            head = hdr.unpack_from(buf) if len(buf) >= hdr.size else buf
            fail(self.fail_path, f"consumer pid {os.getpid()}: corrupt message: len={len(buf)} "
                                 f"header={head!r}")
        self.log(K_LOADED, who, seq, len(data))
        return who, seq


def log_got(fd, got, mode=0):
    """a K_GOT record for each (sender, seq) of a get_many(), in one write"""
    os.write(fd, b"".join(REC.pack(K_GOT, mode, 0, p, q, time.monotonic(), 0) for p, q in got))


def receive_and_ack(fd, s, timeout):
    """receive() one delivery of (sender, seq) and ack it, logging K_RECV (flag:
    redelivered), K_ACKING and K_ACKED"""
    d = s.receive(timeout=timeout)
    who, seq = d.value
    rec(fd, K_RECV, flag=bool(d.redelivered), who=who, seq=seq)
    rec(fd, K_ACKING, who=who, seq=seq)
    d.ack()
    rec(fd, K_ACKED, who=who, seq=seq)


class Worker:
    """a worker process of a chaos run: its role, id, process, log, and when it ran"""

    def __init__(self, role, wid, proc, log, t_start):
        self.role, self.id, self.proc, self.log = role, wid, proc, log
        self.t_start, self.t_end, self.killed = t_start, None, False

    def __repr__(self):
        return f"{self.role}{self.id}"


class Chaos:
    """A chaos supervisor's state: FASTQ_CHAOS_KILLS kills (default 250) within at most
    max(45 s, a quarter second per kill), every random choice seeded by FASTQ_CHAOS_SEED
    (default: a random seed, reported in the summary).  ``roles``: the workers' roles;
    ``killed``: {role: name} of the roles whose kills the summary counts."""

    def __init__(self, tmp_path, title, roles, killed):
        self.kills_target = int(os.environ.get("FASTQ_CHAOS_KILLS", "250"))
        self.seed = int(os.environ.get("FASTQ_CHAOS_SEED")
                        or random.SystemRandom().randrange(1 << 31))
        self.max_chaos = max(45.0, self.kills_target * 0.25)
        self.rng = random.Random(self.seed)
        self.flags = mmap.mmap(-1, 16)  # [0]: producers stop, [1]: consumers drain; shared
        self.fail_path = str(tmp_path / "FAILED")
        self.T0 = time.monotonic()
        self.title, self.killed = title, killed
        self.workers = []  # every worker ever started
        self.live = {r: [] for r in roles}
        self.next_id = dict.fromkeys(roles, 0)
        self.stats = {"seed": self.seed, "kills": 0, **{"k" + r: 0 for r in killed}}

    def summary(self):
        s = self.stats
        counted = ("seed", "kills", *("k" + r for r in self.killed))
        return (f"{self.title} summary: seed={s['seed']} kills={s['kills']} ("
                + ", ".join(f"{name} {s['k' + r]}" for r, name in self.killed.items()) + ") "
                + " ".join(f"{k}={v}" for k, v in s.items() if k not in counted)
                + f" runtime={time.monotonic() - self.T0:.1f}s")

    def fail(self, msg):
        raise AssertionError(f"{msg}\n{self.summary()}")

    def check_marker(self):
        """fail if a worker left the failure marker"""
        if os.path.exists(self.fail_path):
            self.fail("a worker failed: " + open(self.fail_path).read())

    def next_kill(self, t_begin):
        """Until the kills are done or the time is up (from t_begin): wait a random moment
        (2 to 20 ms or 20 to 120 ms), fail on the failure marker or a live worker that
        exited on its own; True if a kill is due."""
        if self.stats["kills"] >= self.kills_target or time.monotonic() - t_begin > self.max_chaos:
            return False
        time.sleep(self.rng.uniform(0.002, 0.02) if self.rng.random() < 0.5
                   else self.rng.uniform(0.02, 0.12))
        self.check_marker()
        for ws in self.live.values():
            for w in ws:
                if w.proc.exitcode is not None:
                    self.check_marker()
                    self.fail(f"{w} exited on its own with {w.proc.exitcode}")
        return True

    def join_clean(self, ws, timeout, what):
        """join each worker of ws (up to timeout s each); each must have exited with 0,
        or the run fails with "<worker> <what>" """
        for w in ws:
            w.proc.join(timeout)
            w.t_end = time.monotonic()
            if w.proc.exitcode != 0:
                self.check_marker()
                self.fail(f"{w} {what}: exit code {w.proc.exitcode}")

    def kill(self, w):
        """SIGKILL the live worker w (it must die of that signal) and count the kill"""
        w.t_end = time.monotonic()
        os.kill(w.proc.pid, signal.SIGKILL)
        w.proc.join(10)
        if w.proc.exitcode != -signal.SIGKILL:
            self.check_marker()
            self.fail(f"{w} exited with {w.proc.exitcode}, not by our SIGKILL")
        w.killed = True
        self.live[w.role].remove(w)
        self.stats["kills"] += 1
        self.stats["k" + w.role] += 1


def check_delivered(got, n, info, unexplained=(), may_lose=0):
    """Print info (the run's numbers); got (the seqs delivered, 0 .. n-1 sent): none
    twice, none that was not sent, and at most may_lose lost that nothing explains."""
    print("\n" + info)
    dups = sorted({s for s in got if got.count(s) > 1})
    assert not dups, f"delivered twice: {dups}; {info}"
    assert set(got) <= set(range(n)), info
    assert len(unexplained) <= may_lose, f"lost: {sorted(unexplained)}; {info}"


def late_runs(msgs, skip):
    """how many runs of messages came after a later one of the same sender: msgs, one
    reader's (sender, seq) in the order it got them; the messages in skip ignored"""
    last, in_run, runs = {}, False, 0
    for p, s in msgs:
        if (p, s) in skip:
            continue
        if s < last.get(p, -1):
            runs += not in_run
            in_run = True
        else:
            last[p] = s
            in_run = False
    return runs

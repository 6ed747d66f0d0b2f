# Waiting: the policy of the binding's blocking loops (included by
# _core.pyx; the loops themselves are Segment._wait, _begin_put and the
# _claim of each consumer), and the calls the event-loop side (fastq._aio)
# needs.
#
# A blocking call that cannot proceed sleeps in the C core (fq_wait_for,
# fq_sub_wait_for) with the GIL released.  While nothing is in flight that a
# dead process could leave stalled (a queue with no claim open), it sleeps
# without a timer: the next claim, a message, space, shutdown or a signal
# (EINTR) wakes it.  Otherwise it sleeps in slices of RECOVER_AFTER and runs
# crash recovery after each slice without progress.  close() from another
# thread wakes it (_seg_interrupt).  Signals are checked after every sleep.

cdef double RECOVER_AFTER = 0.2        # seconds without progress before recovery
cdef double SPIN_SLICE = 0.01          # seconds: a busy-spinning call checks signals this often
cdef int WAKE_TRIES = 1000             # _seg_interrupt, _sub_wake: yields before giving up
cdef uint64_t SPIN_GIL_NS = 5000       # spin this long holding the GIL before waiting

ARM_READY = FQ_ARM_READY    # fq_arm: the condition may hold already
ARM_QUIET = FQ_ARM_QUIET    # fq_arm: nothing in flight (no recovery timer needed)
from posix.time cimport CLOCK_MONOTONIC, clock_gettime, timespec

STRATEGIES = {"adaptive": FQ_STRATEGY_ADAPTIVE, "spin": FQ_STRATEGY_SPIN,
              "sleep": FQ_STRATEGY_SLEEP}


cdef class _Waiter:
    """State of one blocking call: its deadline and when it last recovered."""
    cdef double deadline, last_recover
    cdef bint forever
    cdef bint spun

    def __cinit__(self, timeout):
        now = _monotonic()
        self.forever = timeout is None
        self.deadline = 0.0 if timeout is None else now + float(timeout)
        self.last_recover = now


cdef int _seg_interrupt(Segment self) except -1:
    """Wake this handle's calls asleep in a wait (close() from another
    thread): they see self.closing.  Repeated, yielding with the GIL
    released, until they have left their sleep, WAKE_TRIES times at most."""
    cdef fq_queue *q = self.q
    cdef int i
    for i in range(WAKE_TRIES):
        if self._sleeping <= 0 or q == NULL:
            return 0
        with nogil:
            fq_interrupt(q)
            sched_yield()
    return 0


# ---- the event-loop side (fastq._aio) -------------------------------------

def _bell_set(uint64_t name):
    """Name this process's bell (0: none): writers ring it (fq_bell_set)."""
    fq_bell_set(name)


def _wait_counts():
    """(sleeps, futex wakes, bells rung) by this process so far."""
    cdef uint64_t out[3]
    fq_wait_counts(out)
    return out[0], out[1], out[2]


def _seg_key(Segment seg):
    """The identity of the segment this handle maps, shared by every handle
    of it in this process (they share one slot, so one bell_rung)."""
    seg._enter_quick()
    return seg.att.key


def _seg_arm(Segment seg, int what, uint64_t need, bint on, bint quiet=True):
    """fq_arm for this handle: FQ_ARM_READY, FQ_ARM_QUIET or 0; quiet=False:
    fq_arm_slice (the caller sleeps with a recovery timer; never QUIET)."""
    cdef fq_queue *q = seg._enter_quick()
    cdef int rc
    with nogil:
        if on and not quiet:
            rc = fq_arm_slice(q, what, need)
        else:
            rc = fq_arm(q, what, need, on)
    if rc < 0:
        _raise_rc(rc, q, 0)
    return rc


def _seg_ready(Segment seg, int what, uint64_t need):
    """fq_ready: the condition of side what may hold now (another awaiting
    task may proceed: cheaper than qsize(), which sums over the slots)."""
    return fq_ready(seg._enter_quick(), what, need) != 0


def _sub_arm(Subscriber sub, bint on):
    """fq_sub_arm for this member (the data side of its group)."""
    if sub.s == NULL:
        if on:
            raise ValueError("operation on a closed subscription")
        return 0
    cdef fq_queue *q = sub.seg._enter_quick()
    cdef int rc
    with nogil:
        rc = fq_sub_arm(sub.s, on)
    if rc < 0:
        _raise_rc(rc, q, 0)
    return rc


cdef inline uint64_t _now_ns() noexcept nogil:
    cdef timespec ts
    clock_gettime(CLOCK_MONOTONIC, &ts)
    return <uint64_t>ts.tv_sec * 1000000000u + <uint64_t>ts.tv_nsec


def _seg_spin(Segment seg, int what, uint64_t need, uint64_t ns, Subscriber sub=None):
    """Before a task arms: spin up to ns nanoseconds (the GIL and the loop
    held; fastq._aio decides whether and how long).  True if the condition
    may hold now.  Each fq_spin call is given no time of its own (a few
    checks), so the blocking calls' adaptive budget does not cap this spin."""
    cdef fq_queue *q = seg._enter_quick()
    cdef fq_sub *s = NULL
    if sub is not None:
        s = sub.s
        if s == NULL:
            return True  # closed: let the call find out
    cdef uint64_t start = _now_ns()
    cdef int ok
    while True:
        if s != NULL:
            ok = fq_sub_spin(s, 0)
        else:
            ok = fq_spin(q, what, need, 0)
        if ok:
            return True
        if _now_ns() - start >= ns:
            return False


def _seg_bell_take(Segment seg):
    """The sides (bit FQ_WAIT_*) rung for this segment since the last call
    (through the process's attachment: this handle may be closed while
    another handle of the segment still waits)."""
    if seg.att is None or seg.att.q == NULL:
        return 0
    return fq_bell_take(seg.att.q)


def _seg_idle(Segment seg):
    """Nothing in flight (fq_idle; a topic: never)."""
    cdef fq_queue *q = seg._enter_quick()
    return not fq_is_topic(q) and fq_idle(q)


def _test_set_crash_point(str name, int countdown=1):
    """Test hook: this process _exit(9)s at the countdown-th pass of the
    named crash point of the C core (fq_test_set_crash_point)."""
    b = name.encode()
    fq_test_set_crash_point(b, countdown)


def _test_sleepers(Segment seg):
    """Test hook: (data, space, quiet) sleeper bits up, OR-ed over slots."""
    cdef uint64_t out[3]
    fq_test_sleepers(seg._enter_quick(), out)
    return out[0], out[1], out[2]

# Waiting: the blocking loops of the binding (included by _core.pyx), and
# the calls the event-loop side (fastq._aio) needs.
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


cdef int _seg_wait(Segment self, fq_queue *q, int what, uint64_t need, _Waiter w,
                   fq_sub *sub=NULL, Subscriber owner=None) except -1:
    """Wait once (for a subscription: at its group's head); raise Empty/Full
    on timeout.  Returns 0, or 1 without waiting if owner (the subscriber
    waiting) must return to its pool (see Subscriber._wake)."""
    now = _monotonic()
    cdef uint64_t timeout_ns = FQ_FOREVER
    cdef double left
    if not w.forever:
        left = w.deadline - now
        if left <= 0:
            # a caller looping on short timeouts never waits 0.2 s in one
            # call: recover (rate-limited per handle) before giving up
            self._poll_recover(q)
            raise Empty if what == FQ_WAIT_DATA else Full
        timeout_ns = <uint64_t>(left * 1e9)
    if sub == NULL and not fq_is_topic(q) and fq_idle(q):
        w.last_recover = now  # nothing in flight: no stall can have begun
    elif now - w.last_recover >= RECOVER_AFTER:
        w.last_recover = now
        with nogil:
            fq_recover(q)
    cdef int strategy = self.strategy
    if strategy == FQ_STRATEGY_ADAPTIVE and w.spun:
        strategy = FQ_STRATEGY_SLEEP  # spin only before the first sleep
    w.spun = True
    cdef uint64_t slice_ns = <uint64_t>((SPIN_SLICE if strategy == FQ_STRATEGY_SPIN
                                         else RECOVER_AFTER) * 1e9)
    if owner is not None:
        # checked, then flagged, with no Python code (no other thread)
        # between them and the sleep: a _wake after the check sees the flag
        if owner._interrupted():
            return 1
        owner.waiting = True
    if self.closing:
        raise ValueError("the queue or topic was closed while this call waited")
    self._sleeping += 1  # before the sleep: _seg_interrupt wakes until it is 0
    with nogil:
        if sub != NULL:
            fq_sub_wait_for(sub, slice_ns, timeout_ns, strategy)
        else:
            fq_wait_for(q, what, need, slice_ns, timeout_ns, strategy)
    self._sleeping -= 1
    if owner is not None:
        owner.waiting = False
    PyErr_CheckSignals()
    if self.closing:
        raise ValueError("the queue or topic was closed while this call waited")
    return 0


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


cdef int _seg_begin_put(Segment self, fq_queue *q, uint64_t *lens, size_t *k, fq_claim *c,
                        bint block, object timeout) except -1:
    """Claim ring space for k records (k may be halved if the batch is
    too big for one claim), waiting while the ring is full."""
    cdef int rc
    cdef uint64_t need = 0
    cdef size_t i
    cdef _Waiter w = None
    while True:
        rc = fq_put_begin(q, lens, k[0], c)
        if rc == FQ_OK:
            return 0
        if rc == FQ_EBUSY:  # all lanes busy: let their threads run
            with nogil:
                sched_yield()
            PyErr_CheckSignals()
            continue
        if rc == FQ_ETOOBIG and k[0] > 1:
            k[0] = k[0] // 2
            continue
        if rc == FQ_FULL and not block:
            self._poll_recover(q)
        if rc != FQ_FULL or not block:
            _raise_rc(rc, q, lens[0])
        if w is None:
            w = _Waiter(timeout)
        need = 0
        for i in range(k[0]):
            need += (lens[i] + 31) & ~(<uint64_t>15)
        self._wait(q, FQ_WAIT_SPACE, need - 16, w)


cdef int _seg_poll_recover(Segment self, fq_queue *q) except -1:
    """A caller that only polls (get_nowait, put_nowait) never waits, so
    never runs recovery: when it finds nothing it can use while the queue
    is not idle (something is claimed or being written), run recovery at
    most every RECOVER_AFTER seconds, or a dead process could stall it
    forever."""
    if fq_idle(q):
        return 0
    now = _monotonic()
    if now - self._last_poll_recover >= RECOVER_AFTER:
        self._last_poll_recover = now
        with nogil:
            fq_recover(q)
    return 0


cdef int _seg_claim(Segment self, fq_queue *q, size_t max_n, uint64_t max_bytes, fq_claim *c,
                    bint block, object timeout) except -1:
    cdef int rc, spun = 0
    cdef _Waiter w = None
    while True:
        rc = fq_get_begin(q, max_n, max_bytes, c)
        if rc == FQ_OK:
            return 0
        if rc == FQ_EBUSY:
            with nogil:
                sched_yield()
            PyErr_CheckSignals()
            continue
        if rc == FQ_EMPTY and not block:
            self._poll_recover(q)
        if rc != FQ_EMPTY or not block:
            _raise_rc(rc, q, 0)
        if w is None:
            # a short spin first, with the GIL held: releasing it and
            # setting up a timed wait cost more than a typical hand-off
            if (spun < 1 and self.strategy != FQ_STRATEGY_SLEEP
                    and fq_spin(q, FQ_WAIT_DATA, 0, SPIN_GIL_NS)):
                spun += 1
                continue
            w = _Waiter(timeout)
        self._wait(q, FQ_WAIT_DATA, 0, w)


cdef _Waiter _seg_reserve(Segment self, bint block, object timeout):
    """Count one more unacknowledged delivery (returns None), or, at the
    prefetch bound, wait until another thread settles one (returns the
    _Waiter whose deadline the rest of the call keeps): Empty at the
    deadline, ValueError if the handle is closed meanwhile, RuntimeError
    at once if not block (the caller may hold them all)."""
    if self.unacked < self.prefetch:
        self.unacked += 1
        return None
    if not block:
        raise RuntimeError(
            f"{self.unacked} deliveries are unacknowledged, the prefetch bound of this "
            "handle: ack or nack one first (a blocking receive() waits for another "
            "thread to)")
    cdef _Waiter w = _Waiter(timeout)
    cdef double left
    if self._settled is None:
        import threading
        self._settled = threading.Condition()  # an RLock: a __del__ may settle inside
    cond = self._settled
    self._bound_waiters += 1  # before the check below: _unreserve notifies
    try:
        with cond:
            while True:
                # check and count in one step: no Python code runs (and no
                # other thread) between them
                if self.unacked < self.prefetch:
                    self.unacked += 1
                    return w
                if self.q == NULL or self.closing:
                    raise ValueError("the queue or topic was closed while this call waited")
                left = RECOVER_AFTER  # a prefetch changed meanwhile is seen within it
                if not w.forever:
                    left = min(w.deadline - _monotonic(), RECOVER_AFTER)
                    if left <= 0:
                        raise Empty
                cond.wait(left)
    finally:
        self._bound_waiters -= 1


cdef int _seg_unreserve(Segment self) except -1:
    """One unacknowledged delivery less: wake a receive() waiting at the bound."""
    self.unacked -= 1
    if self._bound_waiters:
        with self._settled:
            self._settled.notify()
    return 0


cdef void _sub_wake(Subscriber self):
    """Wake the call in progress (in another thread) if it sleeps: it
    then sees why (_interrupted).  fq_interrupt bumps the futex words
    whatever the sleeper bits say; it is repeated (yielding, the GIL
    released) until the call leaves its sleep, WAKE_TRIES times at most."""
    cdef fq_queue *q
    cdef int i
    for i in range(WAKE_TRIES):
        if not self.waiting:
            return
        q = self.seg.q  # not closed: the waiting call holds the segment
        with nogil:
            fq_interrupt(q)
            sched_yield()


cdef int _sub_claim(Subscriber self, fq_queue *q, size_t max_n, uint64_t max_bytes, fq_claim *c,
                    bint block, object timeout) except -1:
    """Claim (0), or 1 if the pool must pick a member again (the caller
    returns _REPICK)."""
    cdef int rc, spun = 0
    cdef _Waiter w = None
    while True:
        rc = fq_sub_begin(self.s, max_n, max_bytes, c)
        if rc == FQ_OK:
            self.held = False  # a kept claim is returned first
            self.again, self.nacked = self.nacked, False
            return 0
        if rc == -16:  # -EBUSY: a claim is open
            raise RuntimeError(_UNACKED_ONE)
        if rc == FQ_EMPTY and not block:
            self.seg._poll_recover(q)
        if rc != FQ_EMPTY or not block:
            _raise_rc(rc, q, 0)
        if w is None:
            if (spun < 1 and self.seg.strategy != FQ_STRATEGY_SLEEP
                    and fq_sub_spin(self.s, SPIN_GIL_NS)):
                spun += 1
                continue
            w = _Waiter(timeout)
        if self.seg._wait(q, FQ_WAIT_DATA, 0, w, self.s, self):
            return 1  # back to the pool: a member keeps a claim given back
        if self.closing:  # woken by close(): take nothing more
            raise ValueError("the subscription was closed while this call waited")


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


def _seg_arm(Segment seg, int what, uint64_t need, bint on):
    """fq_arm for this handle: FQ_ARM_READY, FQ_ARM_QUIET or 0."""
    cdef fq_queue *q = seg._enter_quick()
    cdef int rc
    with nogil:
        rc = fq_arm(q, what, need, on)
    if rc < 0:
        _raise_rc(rc, q, 0)
    return rc


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


cdef uint64_t SPIN_LOOP_NS = 20000   # an event loop spins at most this long before it arms


def _seg_spin(Segment seg, int what, uint64_t need, Subscriber sub=None):
    """Before a task arms: spin (the GIL and the loop held) within the
    handle's adaptive budget, at most SPIN_LOOP_NS, if its strategy spins.
    True if the condition may hold now."""
    cdef fq_queue *q = seg._enter_quick()
    if seg.strategy == FQ_STRATEGY_SLEEP:
        return False
    cdef int ok
    if sub is not None and sub.s != NULL:
        ok = fq_sub_spin(sub.s, SPIN_LOOP_NS)
    else:
        ok = fq_spin(q, what, need, SPIN_LOOP_NS)
    if not ok:
        fq_spin_missed(q)
    return ok


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

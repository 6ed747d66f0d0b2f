# Included by _core.pyx: the members of a topic's groups (one entry of
# its member table each, fq_member in C) and a subscription's pool of them.


_REPICK = object()  # a Subscriber call's answer: its pool must pick a member again


_UNACKED_ONE = ("1 delivery is unacknowledged, the prefetch bound of this subscription: "
                "ack or nack it first (or subscribe with a larger prefetch)")


# no_gc_clear: the cycle collector must not set `seg` to None before
# __dealloc__ runs, or the member would never leave its group (its entry
# ACTIVE under a live pid, holding a block topic's publishers); `seg` also
# keeps the segment mapped until then.  Cycles through a Subscriber still
# break at the other objects in them (Segment, lists, instances).
@cython.no_gc_clear
@cython.final
cdef class Subscriber:
    """One member entry of a topic group (fastq.Subscription keeps one, or a
    pool of up to its prefetch bound).  A member holds at most one claim, so
    at most one unacknowledged delivery.

    Used by one thread at a time (a second thread gets RuntimeError); closed
    from any thread (a call in progress raises ValueError, at once if it
    waits, and closes it on its way out)."""
    cdef fq_sub *s
    cdef Segment seg
    cdef bint drop
    cdef bint busy
    cdef bint closing     # close() came while a call was in progress
    cdef bint waiting     # the call in progress sleeps in fq_sub_wait
    cdef object pool      # a weak reference to the SubscriberPool it belongs to
    cdef readonly bint unacked  # a delivery of this member is unacknowledged
    cdef readonly bint held     # a claim kept by fq_sub_hold: the next call returns it
    # the unacknowledged delivery's claim holds further messages, not
    # redelivered, that come after it (the group's next ones, in order)
    cdef readonly bint pending
    cdef bint nacked      # the held claim starts with a nacked message
    cdef bint again       # the claim just begun starts with a nacked message
    cdef object delivery  # a weak reference to the unacknowledged Delivery
    cdef tuple patterns   # subject patterns (bytes); None: every message
    cdef bytes subject    # the subject of the message _next returned last (None: none)
    cdef object __weakref__

    def __dealloc__(self):
        # the segment closes its subscribers first; a subscriber dropped
        # without close() while its segment lives is closed here
        if self.s != NULL and self.seg is not None and self.seg.q != NULL:
            fq_unsubscribe(self.s)
            self.s = NULL

    cdef fq_queue *_enter(self) except NULL:
        if self.s == NULL or self.closing:
            raise ValueError("operation on a closed subscription")
        if self.busy:
            raise RuntimeError("this subscription is in use by another thread: a "
                               "Subscription is for one thread at a time")
        cdef fq_queue *q = self.seg._enter()
        self.busy = True
        return q

    cdef void _exit(self):
        self.busy = False
        if self.closing:
            self._leave()
        self.seg._exit()

    cdef bint _interrupted(self) except -1:
        """Must the call in progress stop waiting?  ValueError if this member
        was closed meanwhile; True if its pool must pick a member again."""
        if self.closing:
            raise ValueError("the subscription was closed while this call waited")
        if self.pool is not None:
            p = self.pool()
            return p is not None and (<SubscriberPool>p).again
        return False

    cdef void _wake(self):
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

    def close(self):
        """Leave the group.  An unacknowledged delivery goes back to the
        group (redelivered to another member, or to the next subscriber of a
        durable name).  If another thread is in a call of this member, that
        call raises ValueError (at once if it waits) and leaves then."""
        if self.s == NULL or self.closing:
            return
        if self.busy:
            self.closing = True
            self._wake()
            return
        self._leave()

    cdef int _leave(self) except -1:
        cdef Delivery d = self.delivery() if self.delivery is not None else None
        if d is not None and not d.settled:
            d.settled = True  # its claim is left as an orphan
        self.delivery = None
        self.unacked = self.held = self.pending = self.nacked = False
        fq_unsubscribe(self.s)
        self.s = NULL
        return 0

    @property
    def closed(self):
        return self.s == NULL or self.closing

    @property
    def lag(self):
        if self.s == NULL:
            raise ValueError("operation on a closed subscription")
        return fq_sub_lag(self.s)

    @property
    def dropped(self):
        if self.s == NULL:
            raise ValueError("operation on a closed subscription")
        return fq_sub_dropped(self.s)

    cdef int _claim(self, fq_queue *q, size_t max_n, uint64_t max_bytes, fq_claim *c,
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

    cdef object _next(self, fq_claim *c, object loads, bint *done):
        """The next intact message of claim c as an object (done[0] set when
        the claim has no more).  A drop topic's message is copied out and
        checked before it is deserialized: a publisher may overwrite it."""
        cdef const void *data
        cdef const unsigned char *p
        cdef uint64_t n, sl
        while True:
            if not fq_sub_next(self.s, c, &data, &n):
                done[0] = True
                return None
            sl = c.subject_len  # checked by fq_sub_next: sl <= n
            p = <const unsigned char *>data
            if not self.drop:
                if self.patterns is not None and not (
                        sl and _subjects_match(self.patterns, p, <Py_ssize_t>sl)):
                    fq_claim_keep(c)  # not for this subscription: passed, never loaded
                    continue
                self.subject = PyBytes_FromStringAndSize(<const char *>p, sl) if sl else None
                out = self.seg._load(loads, p + sl, n - sl)
                fq_claim_keep(c)  # as fq_sub_intact: nothing overwrites a block topic
                return out
            raw = self.seg._load(None, data, n)
            if not fq_sub_intact(self.s, c):
                continue  # overwritten while we copied it: lost, counted
            p = <const unsigned char *>PyBytes_AS_STRING(raw)
            if self.patterns is not None and not (
                    sl and _subjects_match(self.patterns, p, <Py_ssize_t>sl)):
                continue  # counted as returned by fq_sub_intact
            self.subject = raw[:sl] if sl else None
            if loads is None:
                return raw[sl:] if sl else raw
            return self.seg._load(loads, p + sl, n - sl)

    cdef void _hold(self, fq_claim *c, uint64_t frm, int redelivered):
        """fq_sub_hold, noted: the next call of this member returns the claim."""
        fq_sub_hold(self.s, c, frm, redelivered)
        self.held = True

    cdef void _finish(self, fq_claim *c, bint done):
        """End claim c, or, if messages of it were not returned (a claim taken
        over from a dead member holds several), keep those for the next call.
        done: the claim has nothing more (or, in a drop topic, was overwritten)."""
        if not done and c.cursor < c.end:
            self._hold(c, c.cursor, c.redelivered)
        else:
            fq_sub_end(self.s, c)

    cdef object _one(self, fq_claim *c, object loads, bint *done):
        """The one message of claim c, or done[0] set when it was overwritten
        (drop topics).  If deserializing fails the message is consumed (it
        would come back forever) and the error propagates; if interrupted,
        it is returned again next time."""
        try:
            return self._next(c, loads, done)
        except Exception:
            if c.kept == 0:
                fq_claim_keep(c)  # consumed
            self._finish(c, False)
            raise
        except BaseException:
            self._hold(c, 0, 0)
            raise

    cdef object _get(self, bint block, object timeout):
        """Take the next message (see fastq.Subscription.get)."""
        if block and timeout is not None and timeout < 0:
            raise ValueError("'timeout' must be a non-negative number")
        loads = self.seg._loads
        cdef fq_queue *q = self._enter()
        cdef fq_claim c
        cdef bint done
        cdef double deadline = _deadline(block, timeout)
        try:
            while True:
                if self._claim(q, 1, NO_BYTE_LIMIT, &c, block, timeout):
                    return _REPICK
                done = False
                out = self._one(&c, loads, &done)
                self._finish(&c, done)
                if not done:
                    return out
                timeout = _left(timeout, deadline)  # passed over: the rest of the time
        finally:
            self._exit()

    cdef object _get_many(self, Py_ssize_t max_messages, bint block, object timeout,
                          uint64_t max_bytes):
        """Take 1..max_messages messages (see fastq.Subscription.get_many)."""
        if block and timeout is not None and timeout < 0:
            raise ValueError("'timeout' must be a non-negative number")
        if max_messages < 1:
            raise ValueError("max_messages must be at least 1")
        loads = self.seg._loads
        cdef fq_queue *q = self._enter()
        cdef fq_claim c
        cdef bint done
        cdef uint64_t cursor, idx, kept, seen
        cdef bint c_claimed = False
        cdef list out = []
        cdef double deadline = _deadline(block, timeout)
        try:
            while not out:
                if c_claimed:
                    timeout = _left(timeout, deadline)  # passed over: the rest of the time
                c_claimed = True
                if self._claim(q, <size_t>max_messages, max_bytes, &c, block, timeout):
                    return _REPICK
                done = False
                while True:
                    cursor = c.cursor
                    idx = c.idx
                    kept = c.kept
                    seen = c.count
                    try:
                        v = self._next(&c, loads, &done)
                    except Exception:
                        if not out:  # the first one is consumed, the rest kept
                            c.kept = kept
                            fq_claim_keep(&c)
                            self._hold(&c, c.cursor, c.redelivered)
                            raise
                        # keep what was delivered; this one and the rest stay
                        # (walked again from where this call to _next began)
                        c.kept = kept
                        c.idx = idx
                        c.count = seen
                        self._hold(&c, cursor, c.redelivered)
                        return out
                    except BaseException:
                        self._hold(&c, 0, 0)
                        raise
                    if done:
                        break
                    out.append(v)
                    if len(out) >= max_messages:
                        break
                self._finish(&c, done)
            return out
        finally:
            self._exit()

    cdef object _receive(self, bint block, object timeout):
        """Take the next message, kept until the Delivery is acked."""
        if block and timeout is not None and timeout < 0:
            raise ValueError("'timeout' must be a non-negative number")
        if self.unacked:
            raise RuntimeError(_UNACKED_ONE)
        loads = self.seg._loads
        cdef fq_queue *q = self._enter()
        cdef Delivery d = Delivery.__new__(Delivery)
        cdef bint done
        cdef double deadline = _deadline(block, timeout)
        try:
            while True:
                if self._claim(q, 1, NO_BYTE_LIMIT, &d.c, block, timeout):
                    return _REPICK
                done = False
                out = self._one(&d.c, loads, &done)
                if done:  # overwritten (drop topic) or passed over by the filter
                    fq_sub_end(self.s, &d.c)
                    timeout = _left(timeout, deadline)
                    continue
                d.value = out
                d.position = d.c.msg_pos
                d.sub = self
                d.epoch = fq_epoch()
                # c.redelivered: taken over from a dead member (the whole claim)
                d.redelivered = d.c.redelivered != 0 or self.again
                d.attempt = d.c.attempt
                d.created_ns = self.seg.created_ns
                d._subject = self.subject
                self.unacked = True
                fq_sub_mark_unacked(self.s)  # the age of the oldest unacked (stats)
                # the claim holds messages after this one, not redelivered
                # (given back by get_many()): no other member's claim may
                # overtake them
                self.pending = d.c.kept < d.c.n and not d.c.redelivered
                # weakly: a delivery dropped unanswered is given back by its
                # __del__, which a reference cycle would put off until a GC
                self.delivery = _weakref(d)
                return d
        finally:
            self._exit()

    cdef int _settle(self, fq_claim *c, bint consume) except -1:
        if self.s != NULL and self.busy:  # before any change: it can be retried
            raise RuntimeError("this subscription is in use by another thread")
        self.unacked = self.pending = False
        self.delivery = None
        if self.s == NULL:
            return 0  # closed: the claim was left to the group
        if consume:
            self._finish(c, False)
        else:
            # returned next, flagged redelivered; the messages after it in the
            # claim (if any) keep their own flag
            self._hold(c, 0, c.redelivered)
            self.nacked = True
        if self.held and self.pool is not None:
            # a call of the pool waiting in another thread must take this first
            p = self.pool()
            if p is not None:
                (<SubscriberPool>p)._kick()
        return 0

    def index(self):
        return fq_sub_index(self.s)


cdef class SubscriberPool:
    """The members of one Subscription with prefetch > 1 (fastq.Subscription
    composes it; its hot calls are bound here).  Each call uses a member
    without an unacknowledged delivery, one that keeps a claim given back
    first; while every member holds one and fewer than prefetch exist,
    join(n) (Python: subscribes to the same group) adds one, kept for reuse.

    Used by one thread at a time (a second thread gets RuntimeError), while
    deliveries are settled from any thread: a call waiting for a message
    picks again, at once, when another thread's nack (or ack) leaves a
    member with a claim to return first.  Closed from any thread, as a
    Subscriber."""
    cdef list _members
    cdef int prefetch
    cdef bint busy
    cdef bint again   # a member got a claim to return first: the call in progress picks again
    cdef bint shut    # closed
    cdef object join
    cdef object __weakref__

    def __cinit__(self, Subscriber first, int prefetch, join):
        self._members = [first]
        self.prefetch = prefetch
        self.join = join
        first.pool = _weakref(self)

    @property
    def members(self):
        return list(self._members)

    cdef Subscriber _enter(self):
        if self.shut:
            raise ValueError("operation on a closed subscription")
        if self.busy:
            raise RuntimeError("this subscription is in use by another thread: a "
                               "Subscription is for one thread at a time")
        self.busy = True
        self.again = False  # what _pick sees now is taken into account
        try:
            return self._pick()
        except BaseException:
            self.busy = False
            raise

    cdef Subscriber _pick(self):
        cdef Subscriber m, free = None, held = None
        for m in self._members:
            if not m.unacked:
                if m.held and m.nacked:  # a nacked message comes back first
                    return m
                if m.held and held is None:  # then other claims given back
                    held = m
                if free is None:
                    free = m
        if held is not None:
            return held
        cdef Py_ssize_t n = len(self._members)
        if free is None and n >= self.prefetch:
            raise RuntimeError(_UNACKED_ONE if n == 1 else
                               f"{n} deliveries are unacknowledged, the prefetch bound of "
                               "this subscription: ack or nack one first")
        for m in self._members:
            # its claim still holds the group's next messages (not redelivered):
            # a claim of another member would return later ones before them
            if m.pending:
                raise RuntimeError(
                    "the messages after an unacknowledged delivery (given back earlier by "
                    "get_many()) come next, in order: ack or nack that delivery first")
        if free is not None:
            return free
        m = <Subscriber?>self.join(n)  # may raise SubscriberLimit
        m.pool = _weakref(self)
        self._members.append(m)
        return m

    cdef Subscriber _repick(self):
        """The member for a call whose member returned _REPICK."""
        self.again = False
        return self._pick()

    cdef void _kick(self):
        """A member now keeps a claim to return first (another thread's nack
        or ack): the call in progress, if it waits, picks again."""
        if not self.busy:
            return
        self.again = True
        for m in self._members:
            (<Subscriber>m)._wake()

    cdef object _call(self, int op, Py_ssize_t max_messages, bint block, object timeout,
                      uint64_t max_bytes):
        """A call (op, see _member_call) of a member, made again with the
        member picked next while it answers _REPICK."""
        cdef Subscriber m = self._enter()
        cdef double deadline = _deadline(block, timeout)
        try:
            while True:
                out = _member_call(m, op, max_messages, block, timeout, max_bytes)
                if out is not _REPICK:
                    return out
                timeout = _left(timeout, deadline)
                m = self._repick()
        finally:
            self.busy = False

    def close(self):
        """Every member leaves (their unacknowledged deliveries go back to the
        group).  A call in progress in another thread raises ValueError (at
        once if it waits)."""
        self.shut = True
        for m in self._members:
            (<Subscriber>m).close()


cdef enum:
    _GET, _GET_MANY, _RECEIVE


cdef inline object _member_call(Subscriber m, int op, Py_ssize_t max_messages, bint block,
                                object timeout, uint64_t max_bytes):
    """Subscriber m's get, get_many or receive (op: _GET, _GET_MANY, _RECEIVE)."""
    if op == _GET:
        return m._get(block, timeout)
    if op == _GET_MANY:
        return m._get_many(max_messages, block, timeout, max_bytes)
    return m._receive(block, timeout)


cdef class SubscriptionBase:
    """What fastq.Subscription subclasses: its calls go to its member
    (prefetch 1) or to its pool of members.  A forked child's first call
    joins the group with a member of its own (_join, in Python), as a
    pickled subscription does: the members it inherited are its parent's."""
    cdef readonly Subscriber _sub  # its first member: lag, dropped, closed
    cdef readonly SubscriberPool _pool   # prefetch > 1: the pool grown from _sub
    cdef unsigned _epoch        # fq_epoch() when the members joined

    def _use(self, Subscriber sub, SubscriberPool pool):
        """Use sub (a new member) and, for prefetch > 1, the pool grown from it."""
        self._sub = sub
        self._pool = pool
        self._epoch = fq_epoch()

    cdef object _call(self, int op, Py_ssize_t max_messages, bint block, object timeout,
                      uint64_t max_bytes):
        if self._epoch != fq_epoch() and not self._sub.closed:
            self._join()  # forked: the members are the parent's
        if self._pool is None:
            return _member_call(self._sub, op, max_messages, block, timeout, max_bytes)
        return self._pool._call(op, max_messages, block, timeout, max_bytes)

    def get(self, bint block=True, timeout=None):
        """The next message.  Blocks while there is none (up to ``timeout``,
        then ``queue.Empty``); once the topic is shut down and this
        subscription has received everything, raises ``ShutDown``.  While
        ``prefetch`` deliveries are unacknowledged, raises ``RuntimeError``
        (see :meth:`receive`)."""
        if self._pool is None and self._epoch == fq_epoch():  # the common case, direct
            return self._sub._get(block, timeout)
        return self._call(_GET, 1, block, timeout, 0)

    def get_nowait(self):
        """``get(block=False)``."""
        return self._call(_GET, 1, False, None, 0)

    def get_many(self, Py_ssize_t max_messages=1024, bint block=True, timeout=None,
                 uint64_t max_bytes=BATCH_BYTES):
        """1 to ``max_messages`` messages: waits like :meth:`get` for the
        first, then takes what is already there (up to ``max_bytes`` of
        payload in all; the first is returned whatever its size)."""
        return self._call(_GET_MANY, max_messages, block, timeout, max_bytes)

    def receive(self, bint block=True, timeout=None):
        """The next message with acknowledged delivery (a :class:`fastq.Delivery`).

        Until ``ack()`` the message stays claimed by this subscription; if its
        process dies, it goes to another member of the group (or the next
        subscriber of a durable name) with ``redelivered`` true.
        ``nack(requeue=True)`` makes the next ``receive()`` (or ``get()``) of
        this subscription return it again (``redelivered``); closing the
        subscription leaves it to the group.  In an ``overflow="block"``
        topic an unacknowledged delivery holds publishers back once the ring
        fills.

        Up to ``prefetch`` deliveries (see :meth:`Topic.subscribe`) may be
        unacknowledged at once; they come in order and may be settled in any
        order, from any thread.  With ``prefetch`` of them unacknowledged,
        ``receive()``, ``get()`` and ``get_many()`` raise ``RuntimeError``
        (naming the bound) at once, without waiting: ack or nack one first.
        Each delivery in flight holds an entry of the topic's subscriber
        table: if the subscription needs one more entry and every one is
        taken, it raises ``SubscriberLimit`` (a ``RuntimeError``) and stays
        usable.  (Messages that ``get_many()`` gave back, after a message it
        could not deserialize or an interrupt, come one delivery at a time:
        until it is settled the next call raises ``RuntimeError``.)
        """
        return self._call(_RECEIVE, 1, block, timeout, 0)

    @property
    def lag(self):
        """Messages published that this subscription's group is still to deliver:
        not taken yet, or given back (``nack()``, a member's ``close()`` or death);
        not a delivery received and not yet settled."""
        return self._sub.lag

    @property
    def dropped(self):
        """Messages this subscription lost to lapping (``overflow="drop"``;
        a message whose publisher was killed mid-publish counts too)."""
        return self._sub.dropped

    @property
    def closed(self):
        """True once closed (or its topic handle was closed)."""
        return self._sub.closed

    def close(self):
        """Leave: a durable name keeps its position; a plain subscription's
        group goes away with its last member.  Unacknowledged deliveries go
        back to the group (redelivered to another member, or to the next
        subscriber of a durable name); every entry of the subscriber table
        the subscription held is freed.  May be called from any thread: a
        call waiting in the subscription raises ``ValueError`` at once (one
        in progress finishes, then the entry it used is freed)."""
        if self._pool is None:
            self._sub.close()
        else:
            self._pool.close()


cdef double _deadline(bint block, object timeout) except? -1:
    """When a blocking call with this timeout ends (0: never or not blocking)."""
    if not block or timeout is None or timeout < 0:
        return 0.0  # (a negative timeout is refused by the member)
    return _monotonic() + float(timeout)


cdef object _left(object timeout, double deadline):
    """The rest of a call's timeout when its pool picks a member again, or when
    it claims again after passing messages over (drop topics, the subject
    filter): a stream of those cannot extend it."""
    if deadline == 0.0:
        return timeout
    return max(0.0, deadline - _monotonic())



# Included by _core.pyx: a queue segment: its consumer (get, get_many),
# receive() (acknowledged deliveries: Delivery is in _delivery.pxi) and
# the queue's counts.


cdef class QueueSegment(Segment):
    """A handle of a queue segment: fastq.Queue subclasses it (its hot
    methods are these, compiled; their docstrings are the public ones)."""

    # ---- producer ---------------------------------------------------------

    def put(self, obj, bint block=True, timeout=None):
        """Put obj at the tail of the queue.

        Blocks while the queue is full (up to ``timeout`` seconds, then
        ``queue.Full``); with ``block=False`` raises ``Full`` at once.  Raises
        ``MessageTooLarge`` if the serialized message exceeds ``max_message``
        and ``ShutDown`` after :meth:`shutdown`.
        """
        self._put(obj, block, timeout)

    def put_nowait(self, obj):
        """``put(obj, block=False)``."""
        self._put(obj, False, None)

    def _put_attempt(self, obj, unsigned attempt, bint block=True, timeout=None):
        """put(obj, block, timeout) as a message already delivered
        ``attempt - 1`` times elsewhere: its first delivery here has
        ``attempt`` (at least 1, at most 256), each redelivery one more.
        For fastq.bridge.Inbound (JetStream's redelivery count); private."""
        if attempt < 1:
            raise ValueError(f"attempt must be at least 1, not {attempt}")
        self._put(obj, block, timeout, None, min(attempt, 256))

    def put_many(self, objs, bint block=True, timeout=None):
        """Put every item, in order, claiming ring space for many at once.

        Returns the number of items put.  If the queue stays full past the
        timeout, raises ``Full``; the items before the one that did not fit
        have been put, in order.
        """
        return self._put_many(objs, block, timeout)

    # ---- consumer ---------------------------------------------------------

    def get_nowait(self):
        """``get(block=False)``."""
        return self.get(False)

    cdef int _claim(self, fq_queue *q, size_t max_n, uint64_t max_bytes, fq_claim *c,
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

    cdef object _load_one(self, fq_queue *q, fq_claim *c, object loads):
        """The one message of claim c.  If that fails, the claim is settled
        before the error propagates: a message that cannot be deserialized
        is consumed (it would otherwise come back forever); after anything
        else (no memory, an interrupt) nothing was returned: it is put back."""
        cdef const void *data
        cdef uint64_t n
        if not fq_claim_next(q, c, &data, &n):
            fq_get_abort(q, c)
            raise SegmentError("a claimed record vanished (corrupt segment?)")
        try:
            return self._load(loads, data, n)
        except Exception:
            if loads is None:
                fq_get_abort(q, c)
            else:
                fq_get_end(q, c)
            raise
        except BaseException:
            fq_get_abort(q, c)
            raise

    def get(self, bint block=True, timeout=None):
        """Remove and return the message at the head of the queue.

        Blocks while the queue is empty (up to ``timeout`` seconds, then
        ``queue.Empty``).  After :meth:`shutdown` it drains what is left, then
        raises ``ShutDown``.  If the serializer's ``loads()`` raises, the
        message has left the queue (a message that cannot be deserialized
        would otherwise come back forever) and the error propagates.
        """
        if block and timeout is not None and timeout < 0:
            raise ValueError("'timeout' must be a non-negative number")
        loads = self._loads
        cdef fq_queue *q = self._enter()
        cdef fq_claim c
        try:
            self._claim(q, 1, NO_BYTE_LIMIT, &c, block, timeout)
            out = self._load_one(q, &c, loads)
            fq_get_end(q, &c)
            return out
        finally:
            self._exit()

    def get_many(self, Py_ssize_t max_messages=1024, bint block=True, timeout=None,
                 uint64_t max_bytes=BATCH_BYTES):
        """Remove and return a list of 1 to ``max_messages`` messages.

        Waits like :meth:`get` for the first; returns whatever else is
        already there, without waiting for more, up to ``max_bytes`` of
        serialized payload in all (the first message is returned whatever its
        size: for large messages, each call returns one; a message given back
        by ``nack()`` or by recovery comes alone).  The batch leaves
        the queue whole or not at all, even if this process is killed inside
        the call; if ``loads()`` fails on a message, the ones before it are
        returned and the rest stay in the queue (if it is the first, it
        leaves the queue and the error propagates, as in :meth:`get`).
        """
        if block and timeout is not None and timeout < 0:
            raise ValueError("'timeout' must be a non-negative number")
        if max_messages < 1:
            raise ValueError("max_messages must be at least 1")
        loads = self._loads
        cdef fq_queue *q = self._enter()
        cdef fq_claim c
        cdef const void *data
        cdef uint64_t n, k = 0
        cdef list out = []
        try:
            # One claim: it is freed whole (fq_get_end), so the batch leaves
            # the queue whole or not at all, even if this process is killed
            # while it is freed; and an interrupted loads() can give back
            # what was not returned.
            self._claim(q, <size_t>max_messages, max_bytes, &c, block, timeout)
            try:
                while fq_claim_next(q, &c, &data, &n):
                    out.append(self._load(loads, data, n))
                    k += 1
            except Exception:
                # keep what was delivered; give the rest back.  A first
                # message that cannot be deserialized is consumed.
                if k == 0 and loads is not None:
                    fq_get_end_partial(q, &c, 1)
                    raise
                fq_get_end_partial(q, &c, k)
                if k == 0:
                    raise
                return out
            except BaseException:
                fq_get_abort(q, &c)  # interrupted: nothing was returned
                raise
            fq_get_end(q, &c)
            return out
        finally:
            self._exit()

    # ---- acknowledged delivery --------------------------------------------

    def receive(self, bint block=True, timeout=None):
        """Take a message with acknowledged (at-least-once) delivery.

        Returns a :class:`fastq.Delivery` whose ``value`` is the message.  It
        stays in the queue, invisible to other consumers, until ``ack()``;
        ``nack(requeue=True)`` gives it back.  If this process dies before
        acking, the message goes to another consumer within the recovery
        bound, with ``redelivered`` true.  ``with q.receive() as d:`` acks on
        success and gives the message back on an exception.

        If ``prefetch`` deliveries of this handle are already unacknowledged,
        waits until another thread acks or nacks one (threads may share a
        handle), within ``timeout`` (then ``queue.Empty``); with
        ``block=False`` raises ``RuntimeError`` (the caller may hold them
        all).  ``close()`` from another thread makes it raise ``ValueError``.
        An unacknowledged delivery pins its place in the ring: producers cannot
        reuse space past it, so a queue fills if one is held for too long.
        """
        cdef Delivery d = Delivery.__new__(Delivery)
        self._receive(d, 1, NO_BYTE_LIMIT, block, timeout)
        return d

    def receive_many(self, Py_ssize_t max_messages=1024, bint block=True, timeout=None,
                     uint64_t max_bytes=BATCH_BYTES):
        """Take 1 to ``max_messages`` messages with acknowledged delivery, as
        one :class:`fastq.Deliveries` settled together.

        Waits as :meth:`receive` for the first message and takes what else is
        there, up to ``max_bytes``, as :meth:`get_many`.  The batch counts as
        one delivery against ``prefetch`` (it holds one claim): ``ack()``
        removes all its messages, ``nack()`` gives them all back, and if this
        process dies first, recovery gives each back to another consumer, on
        its own, with ``redelivered`` true and the same position.  If the
        serializer's ``loads()`` raises on the first message, it is consumed
        and the rest given back; on a later one, all are given back (the
        failing one, coming back alone, is then consumed by the next call).
        """
        if max_messages < 1:
            raise ValueError("max_messages must be at least 1")
        cdef Deliveries d = Deliveries.__new__(Deliveries)
        self._receive(d, <size_t>max_messages, max_bytes, block, timeout)
        return d

    cdef int _receive(self, Delivery d, size_t max_n, uint64_t max_bytes, bint block,
                      object timeout) except -1:
        """Fill d with a claim of up to max_n messages (receive, receive_many)."""
        if block and timeout is not None and timeout < 0:
            raise ValueError("'timeout' must be a non-negative number")
        if self.att.epoch != fq_epoch():  # forked: the parent's deliveries are not ours
            self.att.epoch = fq_epoch()
            self.att.unacked = 0
        if self.att.unacked >= MAX_PREFETCH:
            raise RuntimeError(
                f"{self.att.unacked} deliveries of this process's handles of this queue are "
                f"unacknowledged, the most one process may hold ({MAX_PREFETCH}): ack or "
                "nack one first")
        cdef _Waiter w = self._reserve(block, timeout)  # other threads may be receiving too
        if w is not None and not w.forever:  # the rest of the time is for the message
            timeout = max(0.0, w.deadline - _monotonic())
        loads = self._loads
        cdef fq_queue *q
        try:
            q = self._enter()  # held by the delivery until it is settled
        except BaseException:
            self._unreserve()
            raise
        cdef bint ok = False
        self.att.unacked += 1
        try:
            self._claim(q, max_n, max_bytes, &d.c, block, timeout)
            fq_get_mark_unacked(q, &d.c)  # unacked deliveries and the oldest's age (stats)
            if isinstance(d, Deliveries):
                self._load_all(q, <Deliveries>d, loads)
            else:
                d.value = self._load_one(q, &d.c, loads)
                d.position = d.c.pos + d.c.first_off  # a taken (requeued) record: first_off 0
            d.seg = self
            d.epoch = fq_epoch()
            d.redelivered = d.c.redelivered != 0
            d.attempt = d.c.attempt
            d.created_ns = self.created_ns
            _link_add(&self._unsettled, &d.link, <PyObject *>d)  # for close()
            ok = True
            return 0
        finally:
            if not ok:
                self._unreserve()
                self.att.unacked -= 1
                self._exit()

    cdef int _load_all(self, fq_queue *q, Deliveries d, object loads) except -1:
        """The messages of claim d.c into d.values and d.positions; if that
        fails, the claim is settled before the error propagates (see
        receive_many)."""
        cdef const void *data
        cdef uint64_t n
        cdef list values = [], positions = []
        try:
            while fq_claim_next(q, &d.c, &data, &n):
                positions.append(d.c.msg_pos)
                values.append(self._load(loads, data, n))
        except Exception:
            if not values and loads is not None:
                fq_get_end_partial(q, &d.c, 1)
            else:
                fq_get_abort(q, &d.c)
            raise
        except BaseException:
            fq_get_abort(q, &d.c)
            raise
        if not values:
            fq_get_abort(q, &d.c)
            raise SegmentError("a claimed record vanished (corrupt segment?)")
        d.values = d.value = values
        d.positions = positions
        d.position = positions[0]
        return 0

    cdef _Waiter _reserve(self, bint block, object timeout):
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

    cdef int _unreserve(self) except -1:
        """One unacknowledged delivery less: wake a receive() waiting at the bound."""
        self.unacked -= 1
        if self._bound_waiters:
            with self._settled:
                self._settled.notify()
        return 0

    # ---- status -----------------------------------------------------------

    def _browse(self):
        """Yield each message still in the queue (put and not consumed yet:
        waiting, delivered and unacknowledged, or given back), oldest first,
        without taking any; a message its serializer cannot load is skipped.
        A walk as of no single instant: a message consumed meanwhile may be
        missed, one put meanwhile may be included.  For tools (the
        Dispatcher's check for a dead letter already put)."""
        cdef uint64_t pos = 0, nxt = 0, n = 0, cap = 4096
        cdef int rc
        cdef fq_queue *q
        loads = self._loads
        buf = bytearray(cap)
        cdef char *b
        while True:
            q = self._enter()
            try:
                b = buf
                rc = fq_browse(q, &pos, &nxt, b, cap, &n)
                if rc == FQ_EMPTY:
                    return
                if rc != FQ_OK:
                    _raise_rc(rc, q)
                if n > cap:        # larger than the buffer: again, from the same record
                    cap = n
                    buf = bytearray(cap)
                    continue
                try:
                    value = self._load(loads, b, n)
                except Exception:
                    pos = nxt
                    continue
            finally:
                self._exit()
            pos = nxt
            yield value

    def qsize(self):
        """Number of messages :meth:`get` can take now (exact when no call is
        in flight).  Messages held by unacknowledged deliveries are not
        counted (see :meth:`unacked`), nor those given back with
        ``nack(delay=...)`` until their time comes (:meth:`unfinished`
        counts both); after ``shutdown(immediate=True)`` it is 0, as for
        ``queue.Queue``."""
        cdef fq_queue *q = self._enter()
        cdef uint64_t n, d
        try:
            n = fq_available(q)
            d = fq_delayed(q) if n else 0
            return n - d if d < n else 0
        finally:
            self._exit()

    def unfinished(self):
        """Messages put and not yet freed (fq_qsize); after an immediate
        shutdown, only those taken (fq_unacked): the rest were dropped."""
        cdef fq_queue *q = self._enter()
        try:
            # shut down with nothing to get (drained, or immediate): what is
            # left to finish is what was taken
            if fq_is_shutdown(q) and fq_available(q) == 0:
                return fq_unacked(q)
            return fq_qsize(q)
        finally:
            self._exit()

    def unacked_count(self):
        """Messages taken and not yet freed or given back (fq_unacked)."""
        cdef fq_queue *q = self._enter()
        try:
            return fq_unacked(q)
        finally:
            self._exit()

    def full(self):
        """True if not even the smallest message would fit now."""
        cdef fq_queue *q = self._enter()
        try:
            return bool(fq_full(q))
        finally:
            self._exit()


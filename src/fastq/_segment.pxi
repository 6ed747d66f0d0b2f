# Included by _core.pyx: the mapped segment (this process's attachment,
# the handle's lifecycle and status) and the copies into and out of its
# ring (the producer path, loading a message).  The queue consumer is in
# _queue.pxi, the topic side in _topic.pxi.


cdef inline void _copy(void *dst, const void *src, size_t n) noexcept nogil:
    memcpy(dst, src, n)


cdef inline bint _scalar(object x):
    t = type(x)
    return t is int or t is float or t is str or t is bytes or t is bool or x is None


cdef bint _plain(object obj):
    """Can pickle protocol 5 produce no out-of-band buffer for obj?  True
    for scalars and short tuples/lists of scalars: the common small message,
    which then skips the buffer_callback machinery."""
    if _scalar(obj):
        return True
    t = type(obj)
    if (t is tuple or t is list) and len(obj) <= 32:
        for x in obj:
            if not _scalar(x):
                return False
        return True
    return False



cdef class _Attachment:
    """This process's attachment to one segment: its mapping and its slot,
    shared by every handle (Segment) of that segment in the process, so
    that a process takes one slot of max_processes however many handles it
    opens.  The last handle released detaches.  Only touched with the GIL
    held."""
    cdef fq_queue *q
    cdef int users
    cdef int unacked   # deliveries of all its handles: each holds one of the slot's lanes
    cdef unsigned epoch  # fq_epoch() that unacked counts for
    cdef object key


# (st_dev, st_ino) -> the _Attachment of that segment in this process (a
# forked child inherits both, consistently: its handles are copies too)
_attachments = {}


cdef _Attachment _share(fq_queue *q):
    """The attachment for the segment that q (just opened) maps: a new one
    that owns q, or this process's existing one (and q is closed: it has
    taken no slot yet, slots are taken on first use)."""
    import os
    cdef _Attachment a
    try:
        st = os.fstat(fq_fd(q))
    except BaseException:
        fq_close(q)
        raise
    key = (st.st_dev, st.st_ino)
    a = _attachments.get(key)
    if a is not None and a.q != NULL:
        fq_close(q)
        a.users += 1
        return a
    a = _Attachment.__new__(_Attachment)
    a.q = q
    a.users = 1
    a.key = key
    a.epoch = fq_epoch()
    _attachments[key] = a
    return a


cdef void _release(_Attachment a):
    a.users -= 1
    if a.users > 0 or a.q == NULL:
        return
    if _attachments.get(a.key) is a:
        del _attachments[a.key]
    fq_close(a.q)
    a.q = NULL




from cpython.ref cimport PyObject


# The unsettled deliveries of a queue handle, for close() to give back: an
# intrusive circular list, its head in the handle (Segment._unsettled), a
# link in each Delivery (Delivery.link), linked at the end of receive() and
# unlinked when the delivery is settled or freed.  It holds no references:
# a delivery dropped unanswered is still freed, and given back by its
# __del__ (as with the WeakSet this replaced, which cost ~3k instructions
# per receive).  Both ends unlink in their __dealloc__, so no link points
# at freed memory.  The GIL guards it: linking and unlinking run no Python
# code, nor does close()'s walk (a list append only reallocates memory,
# which never starts a collection).
cdef struct _Link:
    _Link *prev
    _Link *next     # NULL: not linked
    PyObject *owner  # the Delivery (a borrowed reference); NULL in a head

cdef inline void _link_add(_Link *head, _Link *n, PyObject *owner) noexcept:
    n.owner = owner
    n.prev = head.prev
    n.next = head
    head.prev.next = n
    head.prev = n

cdef inline void _link_del(_Link *n) noexcept:
    if n.next != NULL:
        n.prev.next = n.next
        n.next.prev = n.prev
        n.prev = n.next = NULL


cdef class Segment:
    """A handle of a mapped fastq segment (a queue's or a topic's: fq_queue
    in C).  Thread-safe; the handles of one segment in one process share one
    attachment.  QueueSegment and TopicSegment are its two kinds; a handle
    is attached by one of _create, _open, _open_fd."""
    cdef fq_queue *q
    cdef _Attachment att
    cdef int inflight
    cdef bint closing
    cdef object _dumps   # obj -> bytes-like or list of them; None: raw
    cdef object _loads   # memoryview -> obj; None: return bytes
    cdef bint _pickle    # the serializer is fastq's pickle: fast paths apply
    cdef readonly int prefetch  # most unacknowledged deliveries of receive() at once
    cdef int unacked
    cdef object _settled       # Condition: a delivery was settled (receive() waits at the bound)
    cdef int _bound_waiters    # threads waiting on it
    cdef _Link _unsettled      # head of the list of unsettled queue deliveries (close())
    cdef double _last_poll_recover
    cdef object _subs          # WeakSet of open Subscribers (closed first)
    cdef public int strategy   # FQ_STRATEGY_*: how blocking calls wait (_wait.pxi)
    cdef uint64_t created_ns   # the segment's creation time (ids of its deliveries)
    cdef int _sleeping         # threads of this handle asleep in a wait (_seg_interrupt)
    # an awaitable put is retrying: its tries do not count as back-pressure
    # events each (its loop counts one, with the time it awaited)
    cdef public bint full_retrying

    def _set_serializer(self, dumps, loads, bint is_pickle=False):
        """Functions applied by put*/get* (None, None: raw bytes).  With
        is_pickle, plain objects are pickled (and plain pickle streams
        unpickled) directly, skipping the serializer's framing logic."""
        self._dumps = dumps
        self._loads = loads
        self._pickle = is_pickle

    def __cinit__(self):
        self.prefetch = 4
        self._unsettled.prev = self._unsettled.next = &self._unsettled

    def _set_prefetch(self, int n):
        self.prefetch = n

    def __dealloc__(self):
        # a delivery still listed outlives its handle only when the garbage
        # collector broke a cycle through it (its seg cleared first): detach
        # it so that its own dealloc does not write into freed memory
        cdef _Link *n = self._unsettled.next
        cdef _Link *nxt
        while n != NULL and n != &self._unsettled:
            nxt = n.next
            n.prev = n.next = NULL
            n = nxt
        if self.q != NULL:
            self.q = NULL
            _release(self.att)

    cdef int _adopt(self, fq_queue *q) except -1:
        """Attach this handle to q, just opened (see _share)."""
        if self.q != NULL or self.closing:
            fq_close(q)
            raise ValueError("this handle is attached already")
        self.att = _share(q)
        self.q = self.att.q
        cdef uint64_t st[8]
        fq_stats(self.q, st)
        self.created_ns = st[7]
        return 0

    def _create(self, str path, uint64_t capacity, uint64_t max_message, uint32_t max_slots,
                uint32_t mode, uint32_t topic=0, uint32_t drop=0, uint32_t max_subs=0,
                uint32_t temporary=0):
        """Create a segment at path and attach to it; path None: an anonymous
        one (a memfd: hand it to another process by its fileno(), see
        _open_fd)."""
        cdef fq_create_opts o
        cdef char err[512]
        cdef fq_queue *q = NULL
        memset(&o, 0, sizeof(o))
        o.topic = topic
        o.drop = drop
        o.max_subs = max_subs
        o.temporary = temporary
        o.capacity = capacity
        o.max_message = max_message
        o.max_slots = max_slots
        o.mode = mode
        b = path.encode() if path is not None else b""
        cdef const char *cp = NULL
        if path is not None:
            cp = b
        err[0] = 0
        with nogil:
            rc = fq_create(cp, &o, &q, err, sizeof(err))
        if rc != 0:
            _raise_rc(rc, NULL, 0, err.decode(errors="replace") or path, path)
        self._adopt(q)

    def _open(self, str path, bint sweep=True):
        """Attach to the existing segment at path; sweep False: to read it
        only (the operators' tools), leave a killed creator's second name of
        it in place (FQ_OPEN_NOSWEEP, fastq.h)."""
        cdef char err[512]
        cdef fq_queue *q = NULL
        b = path.encode()
        cdef const char *cp = b
        cdef unsigned flags = 0 if sweep else FQ_OPEN_NOSWEEP
        err[0] = 0
        with nogil:
            rc = fq_open_flags(cp, flags, &q, err, sizeof(err))
        if rc != 0:
            _raise_rc(rc, NULL, 0, err.decode(errors="replace") or path, path)
        self._adopt(q)

    def _open_fd(self, int fd, str name):
        """Attach to the segment fd refers to (the caller keeps fd; the
        handle holds its own copy); name only names it in error messages."""
        cdef char err[512]
        cdef fq_queue *q = NULL
        b = name.encode()
        cdef const char *cp = b
        err[0] = 0
        with nogil:
            rc = fq_open_fd(fd, cp, &q, err, sizeof(err))
        if rc != 0:
            _raise_rc(rc, NULL, 0, err.decode(errors="replace") or name, name)
        self._adopt(q)

    cdef inline fq_queue *_enter(self) except NULL:
        if self.q == NULL or self.closing:
            raise ValueError("operation on a closed queue")
        self.inflight += 1
        return self.q

    cdef inline void _exit(self):
        self.inflight -= 1
        if self.closing and self.inflight == 0 and self.q != NULL:
            self.q = NULL
            _release(self.att)

    def close(self):
        """Detach this handle.  Other processes (and other handles of this
        process) keep the segment: an anonymous one goes away with the last
        process that holds it, a named one stays until ``unlink()``.  This
        handle's unacknowledged deliveries are given back and its
        subscriptions closed first; this process's slot is released (and the
        segment unmapped) with its last handle, once no call is in flight."""
        if self.q == NULL or self.closing:
            return
        cdef list held = []
        cdef _Link *n = self._unsettled.next
        while n != &self._unsettled:  # no Python code runs in this loop (see _Link)
            held.append(<object>n.owner)
            n = n.next
        for d in held:
            # a forked child's copies of its parent's deliveries are the
            # parent's to settle (their lanes are the parent's)
            if not (<Delivery>d).settled and (<Delivery>d).epoch == fq_epoch():
                (<Delivery>d).nack(True)
        if self._subs:
            for sub in list(self._subs):
                (<Subscriber>sub).close()
        self.closing = True
        _seg_interrupt(self)  # a call asleep in a wait: raise now
        if self._bound_waiters:  # a receive() at the prefetch bound: raise now
            with self._settled:
                self._settled.notify_all()
        if self.inflight == 0:
            self.q = NULL
            _release(self.att)

    @property
    def closed(self):
        """True once :meth:`close` was called."""
        return self.q == NULL or self.closing

    cdef int _wait(self, fq_queue *q, int what, uint64_t need, _Waiter w,
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

    # ---- producer ---------------------------------------------------------

    cdef int _begin_put(self, fq_queue *q, uint64_t *lens, size_t *k, fq_claim *c,
                        bint block, object timeout) except -1:
        """Claim ring space for k records (k may be halved if the batch is
        too big for one claim), waiting while the ring is full."""
        if fq_put_begin(q, lens, k[0], c) == FQ_OK:
            return 0
        return self._begin_put_slow(q, lens, k, c, block, timeout)

    cdef int _begin_put_slow(self, fq_queue *q, uint64_t *lens, size_t *k, fq_claim *c,
                             bint block, object timeout) except -1:
        """_begin_put after its first try failed.  A put that found the ring
        full counts once (fq_note_full), with the time it waited."""
        cdef int rc
        cdef uint64_t need = 0
        cdef _Waiter w = None
        cdef object blocked = None  # monotonic_ns() when the ring was first full
        try:
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
                if rc == FQ_FULL and blocked is None:
                    blocked = _monotonic_ns()
                if rc == FQ_FULL and not block:
                    self._poll_recover(q)
                if rc != FQ_FULL or not block:
                    _raise_rc(rc, q, lens[0])
                if w is None:
                    w = _Waiter(timeout)
                need = fq_put_need(q, lens, k[0])
                self._wait(q, FQ_WAIT_SPACE, need, w)
        finally:
            # one back-pressure event per put, however many tries it took (an
            # awaitable put's retries are counted by its loop: _note_full)
            if blocked is not None and not self.full_retrying:
                fq_note_full(q, 1, _monotonic_ns() - blocked)

    def _note_full(self, events, blocked_ns):
        """Count back-pressure (fq_note_full): for the awaitable put's loop,
        whose retries run with ``full_retrying`` set."""
        fq_note_full(self._enter_quick(), events, blocked_ns)

    cdef int _put(self, object obj, bint block, object timeout, bytes subject=None,
                  uint32_t attempt=1) except -1:
        """Put one message (serialized by dumps: a bytes-like object, or a
        list of them, gathered into one message): Queue.put, Topic.publish
        (subject: its bytes, checked, stored ahead of the payload); attempt:
        its first delivery's (fq_claim.attempt: queues only)."""
        if block and timeout is not None and timeout < 0:
            raise ValueError("'timeout' must be a non-negative number")
        if self._dumps is None:
            if type(obj) is list:  # a list is how dumps() returns parts: not raw data
                raise TypeError("serializer='raw' takes one bytes-like object per message, "
                                "not list")
            data = obj
        elif self._pickle and _plain(obj):
            data = _pdumps(obj, 5)
        else:
            data = self._dumps(obj)
        if subject is not None:
            data = [subject] + data if type(data) is list else [subject, data]
        cdef fq_queue *q = self._enter()
        try:
            if type(data) is list:
                self._put_parts(q, data, block, timeout,
                                0 if subject is None else len(subject), attempt)
            else:
                self._put_one(q, data, block, timeout, attempt)
        finally:
            self._exit()
        return 0

    cdef int _put_one(self, fq_queue *q, object data, bint block, object timeout,
                      uint32_t attempt=1) except -1:
        cdef Py_buffer view
        cdef fq_claim c
        cdef uint64_t n
        cdef void *dst
        cdef const char *src
        cdef bint has_view = False
        if type(data) is bytes:  # fast path: no buffer protocol
            src = PyBytes_AS_STRING(data)
            n = <uint64_t>PyBytes_GET_SIZE(data)
        else:
            PyObject_GetBuffer(data, &view, PyBUF_ANY_CONTIGUOUS)
            has_view = True
            src = <const char *>view.buf
            n = <uint64_t>view.len
        cdef size_t one = 1
        try:
            self._begin_put(q, &n, &one, &c, block, timeout)
            c.attempt = attempt
            dst = fq_claim_buf(q, &c)
            if n >= NOGIL_COPY:
                with nogil:
                    _copy(dst, src, n)
                    fq_put_commit(q, &c)
            else:
                _copy(dst, src, n)
                fq_put_commit(q, &c)
        finally:
            if has_view:
                PyBuffer_Release(&view)
        return 0

    cdef int _put_parts(self, fq_queue *q, list parts, bint block, object timeout,
                        uint32_t subject_len=0, uint32_t attempt=1) except -1:
        cdef Py_ssize_t k = len(parts), i
        cdef Py_buffer *views = <Py_buffer *>malloc(sizeof(Py_buffer) * (k if k else 1))
        cdef Py_ssize_t got = 0
        cdef uint64_t n = 0
        cdef size_t one = 1
        cdef fq_claim c
        cdef char *dst
        if views == NULL:
            raise MemoryError()
        try:
            for i in range(k):
                PyObject_GetBuffer(parts[i], &views[i], PyBUF_ANY_CONTIGUOUS)
                got += 1
                n += <uint64_t>views[i].len
            self._begin_put(q, &n, &one, &c, block, timeout)
            c.subject_len = subject_len
            c.attempt = attempt
            dst = <char *>fq_claim_buf(q, &c)
            with nogil:
                for i in range(k):
                    _copy(dst, views[i].buf, <size_t>views[i].len)
                    dst += views[i].len
                fq_put_commit(q, &c)
        finally:
            for i in range(got):
                PyBuffer_Release(&views[i])
            free(views)
        return 0

    cdef object _put_many(self, object objs, bint block, object timeout, bytes subject=None):
        """Put every item in order, in as few claims as fit.  Returns the
        number put (all of them, or an exception): Queue.put_many,
        Topic.publish_many."""
        if block and timeout is not None and timeout < 0:
            raise ValueError("'timeout' must be a non-negative number")
        cdef list items
        if self._dumps is None:
            # a private copy, even of a list: the copy below runs without the
            # GIL from pointers into these objects, which must stay alive
            # whatever another thread does to the caller's sequence
            items = list(objs) if subject is None else [subject + bytes(x) for x in objs]
        else:
            dumps = self._dumps
            items = []
            for x in objs:
                d = dumps(x)
                if subject is not None:
                    items.append(b"".join([subject] + d if type(d) is list else [subject, d]))
                else:
                    items.append(b"".join(d) if type(d) is list else d)
        cdef fq_queue *q = self._enter()
        cdef Py_ssize_t total = len(items), start = 0, k, i, got = 0
        cdef Py_buffer *views = NULL
        cdef const char **srcs = NULL
        cdef char *isview = NULL
        cdef uint64_t *lens = NULL
        cdef uint64_t budget, used
        cdef size_t kk
        cdef fq_claim c
        cdef char *dst
        try:
            if total == 0:
                return 0
            views = <Py_buffer *>malloc(sizeof(Py_buffer) * total)
            srcs = <const char **>malloc(sizeof(char *) * total)
            isview = <char *>malloc(total)
            lens = <uint64_t *>malloc(sizeof(uint64_t) * total)
            if views == NULL or lens == NULL or srcs == NULL or isview == NULL:
                raise MemoryError()
            for i in range(total):
                item = items[i]
                isview[i] = 0
                got += 1
                if type(item) is bytes:  # fast path: no buffer protocol
                    srcs[i] = PyBytes_AS_STRING(item)
                    lens[i] = <uint64_t>PyBytes_GET_SIZE(item)
                else:
                    PyObject_GetBuffer(item, &views[i], PyBUF_ANY_CONTIGUOUS)
                    isview[i] = 1
                    srcs[i] = <const char *>views[i].buf
                    lens[i] = <uint64_t>views[i].len
                if lens[i] > fq_max_message(q):
                    _raise_rc(FQ_ETOOBIG, q, lens[i])
            budget = min(fq_capacity(q) // 4, BATCH_BYTES)
            while start < total:
                # a chunk: as many records as fit a quarter of the ring
                k = 0
                used = 0
                while start + k < total and k < <Py_ssize_t>BATCH_MAX:
                    used += fq_record_size(lens[start + k])
                    if k and used > budget:
                        break
                    k += 1
                kk = <size_t>k
                try:
                    self._begin_put(q, &lens[start], &kk, &c, block, timeout)
                except (Full, ShutDown) as e:
                    e.count = start  # items put before this one, in order
                    raise
                k = <Py_ssize_t>kk
                c.subject_len = 0 if subject is None else <uint32_t>len(subject)
                with nogil:
                    for i in range(start, start + k):
                        dst = <char *>fq_claim_buf(q, &c)
                        _copy(dst, srcs[i], <size_t>lens[i])
                    fq_put_commit(q, &c)
                start += k
            return total
        finally:
            for i in range(got):
                if isview[i]:
                    PyBuffer_Release(&views[i])
            free(views)
            free(srcs)
            free(isview)
            free(lens)
            self._exit()

    # ---- consumer ---------------------------------------------------------

    cdef int _poll_recover(self, fq_queue *q) except -1:
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

    cdef object _load(self, object loads, const void *data, uint64_t n):
        """A message as an object: bytes (raw: copied, without the GIL when
        large) or loads() of a view of the ring, released right after."""
        cdef char *dst
        if loads is None:
            out = PyBytes_FromStringAndSize(NULL, <Py_ssize_t>n)
            dst = PyBytes_AS_STRING(out)
            if n >= NOGIL_COPY:
                with nogil:
                    _copy(dst, data, n)
            else:
                _copy(dst, data, n)
            return out
        mv = PyMemoryView_FromMemory(<char *>data, <Py_ssize_t>n, PyBUF_READ)
        try:
            if self._pickle and n and (<const unsigned char *>data)[0] == 0x80:
                return _ploads(mv)  # a plain pickle stream: no frame
            return loads(mv)
        finally:
            mv.release()

    @property
    def capacity(self):
        """Ring size in bytes."""
        return fq_capacity(self._enter_quick())

    @property
    def max_message(self):
        """Largest message accepted, in bytes (after serialization)."""
        return fq_max_message(self._enter_quick())

    @property
    def max_processes(self):
        """Process slots of the segment (processes attached at once)."""
        return fq_max_slots(self._enter_quick())

    cdef fq_queue *_enter_quick(self) except NULL:
        if self.q == NULL:
            raise ValueError("operation on a closed queue")
        return self.q

    def is_shutdown(self):
        """True once any process shut the segment down."""
        return bool(fq_is_shutdown(self._enter_quick()))

    def shutdown(self, bint immediate=False):
        """Shut the segment down for every process, as ``queue.Queue.shutdown``.

        Later puts (publishes) raise ``ShutDown``; gets (a topic's
        subscriptions) return what is left, then raise ``ShutDown`` (at once
        if ``immediate``); blocked callers wake; iteration ends.  What is
        left includes messages that may still come back: held by a killed
        consumer (gets wait for recovery) or unacknowledged in another
        process; this handle's own unsettled deliveries do not count.
        """
        fq_shutdown(self._enter_quick(), immediate)

    def reset_shutdown(self):
        """Undo :meth:`shutdown`, for every process: puts are accepted again
        and gets wait for messages again (what the segment still holds stays).

        A shutdown lives in the segment, so a named queue stays shut down for
        every later run until one resets it.  Call it when no process relies
        on the queue staying shut down (before starting a new run's
        producers and consumers, say).
        """
        fq_reset_shutdown(self._enter_quick())

    def recover(self):
        """Repair now what processes killed mid-call left behind (waiting
        callers do this by themselves); True if anything was repaired."""
        cdef fq_queue *q = self._enter()
        cdef int r
        try:
            with nogil:
                r = fq_recover(q)
            return bool(r)
        finally:
            self._exit()

    def fileno(self):
        """The segment file's descriptor (owned by the segment: do not close)."""
        return fq_fd(self._enter_quick())

    def flush(self):
        """Write the segment to stable storage (``msync``).

        Without it, messages on a disk path survive the exit or kill of every
        process (the file is the segment) but not a power loss or OS crash.
        Useless (and cheap) for queues in ``/dev/shm``.
        """
        cdef fq_queue *q = self._enter()
        cdef int rc
        try:
            with nogil:
                rc = fq_flush(q)
            if rc:
                _raise_rc(rc)
        finally:
            self._exit()

    @property
    def is_topic(self):
        """True for a topic's segment."""
        return bool(fq_is_topic(self._enter_quick()))

    def _counts(self):
        """The counters kept in the segment, summed over its slots, and its
        attached processes (fq_counts_read); no slot is taken."""
        cdef fq_counts c
        fq_counts_read(self._enter_quick(), &c)
        return {"puts": c.puts, "put_bytes": c.put_bytes, "full": c.full,
                "blocked_ns": c.blocked_ns, "gets": c.gets,
                "get_bytes": c.get_bytes, "redelivered": c.redelivered, "nacked": c.nacked,
                "recovered_slots": c.rec_slots, "recovered_puts": c.rec_puts,
                "recovered_gets": c.rec_gets, "tail": c.tail, "head": c.head,
                "release": c.release, "held": c.held, "held_since_ns": c.held_since_ns,
                "alive": c.alive, "dead": c.dead, "flags": c.flags}

    def _waits(self):
        """Time in queue, sampled (fq_waits_read): a list of (group, wait_ns,
        at_ns), group 0 for a queue and g + 1 for topic group g, at_ns the
        CLOCK_MONOTONIC time of the delivery (``time.monotonic_ns()``)."""
        cdef fq_queue *q = self._enter_quick()
        cdef size_t cap = fq_waits_max(q)
        cdef fq_wait_sample *buf = <fq_wait_sample *>malloc(cap * sizeof(fq_wait_sample) + 1)
        cdef long long n, i
        if buf == NULL:
            raise MemoryError()
        try:
            with nogil:
                n = fq_waits_read(q, buf, cap)
            if n < 0:
                raise MemoryError()
            return [(buf[i].group, buf[i].wait_ns, buf[i].at_ns) for i in range(n)]
        finally:
            free(buf)

    def _check(self):
        """(problems, the first one described): fq_check."""
        cdef char err[512]
        cdef fq_queue *q = self._enter()
        cdef int n
        try:
            with nogil:
                n = fq_check(q, err, sizeof(err))
            return n, err.decode(errors="replace") if n else ""
        finally:
            self._exit()

    def _raw_stats(self):
        """Cursors and internals, for debugging and tests."""
        cdef uint64_t out[8]
        fq_stats(self._enter_quick(), out)
        return {"tail": out[0], "head": out[1], "release": out[2], "requeued": out[3],
                "state": out[4], "slot": <long long>out[5], "creator_pid": out[6],
                "created_ns": out[7]}


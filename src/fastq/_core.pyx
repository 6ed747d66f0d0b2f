# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True
"""Thin binding over the C core (csrc/).  Private: use fastq.Queue.

It converts arguments, runs the blocking loop (wait in slices with the GIL
released, check for signals between slices, run crash recovery when no
progress is made for a while) and maps return codes to exceptions.
"""
cimport cython
from cpython.buffer cimport PyBUF_ANY_CONTIGUOUS, PyBuffer_Release, PyObject_GetBuffer
from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_FromStringAndSize, PyBytes_GET_SIZE
from cpython.exc cimport PyErr_CheckSignals
from cpython.memoryview cimport PyMemoryView_FromMemory
from libc.stdint cimport uint32_t, uint64_t
from libc.stdlib cimport free, malloc
from libc.string cimport memcpy, memset

cdef extern from "<sched.h>" nogil:
    int sched_yield()

cdef extern from "fq_internal.h" nogil:
    # wake this segment's sleepers on one side (FQ_WAIT_DATA: every process's
    # readers): Subscriber._wake uses it to wake a thread of this process
    void fq_wake(fq_queue *q, int what)

from pickle import dumps as _pdumps, loads as _ploads
from time import monotonic as _monotonic
from weakref import ref as _weakref

from ._errors import Empty, Full, MessageTooLarge, SegmentError, ShutDown

cdef extern from "Python.h":
    int PyBUF_READ

cdef size_t NOGIL_COPY = 64 * 1024     # copy with the GIL released above this
cdef double WAIT_SLICE = 0.05          # seconds: Ctrl-C is seen within this
cdef double RECOVER_AFTER = 0.2        # seconds without progress before recovery
cdef int WAKE_TRIES = 1000             # Subscriber._wake: yields before leaving it to the slice
cdef uint64_t SPIN_GIL_NS = 5000       # spin this long holding the GIL before waiting
MAX_PREFETCH = 7                       # a delivery holds one of a handle's 8 lanes
cdef size_t BATCH_MAX = 4096           # records per claim in put_many
# Bytes per batch claim (put_many, get_many): a claim is published or freed
# only as a whole, so a huge one stops the other side from overlapping with
# it; 1 MiB keeps both sides streaming (one 1 MiB message is one claim).
cdef uint64_t BATCH_BYTES = 1 << 20
cdef uint64_t NO_BYTE_LIMIT = (1ULL << 63) - 1  # below FQ_BYTES_STRICT


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


cdef class Subscriber
cdef class SubscriberPool


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


cdef Segment _new_segment(fq_queue *q, str path):
    cdef Segment s = Segment.__new__(Segment)
    s.att = _share(q)
    s.q = s.att.q
    s.path = path
    return s


cdef class Segment:
    """A handle of a mapped fastq segment (one queue).  Thread-safe; the
    handles of one segment in one process share one attachment."""
    cdef fq_queue *q
    cdef _Attachment att
    cdef int inflight
    cdef bint closing
    cdef readonly str path
    cdef object _dumps   # obj -> bytes-like or list of them; None: raw
    cdef object _loads   # memoryview -> obj; None: return bytes
    cdef bint _pickle    # the serializer is fastq's pickle: fast paths apply
    cdef public int prefetch   # most unacknowledged deliveries at once
    cdef int unacked
    cdef object _settled       # Condition: a delivery was settled (receive() waits at the bound)
    cdef int _bound_waiters    # threads waiting on it
    cdef object _deliveries    # WeakSet of unsettled Delivery objects
    cdef double _last_poll_recover
    cdef object _subs          # WeakSet of open Subscribers (closed first)

    def set_serializer(self, dumps, loads, bint is_pickle=False):
        """Functions applied by put*/get* (None, None: raw bytes).  With
        is_pickle, plain objects are pickled (and plain pickle streams
        unpickled) directly, skipping the serializer's framing logic."""
        self._dumps = dumps
        self._loads = loads
        self._pickle = is_pickle

    def __cinit__(self):
        self.prefetch = 4

    def __dealloc__(self):
        if self.q != NULL:
            self.q = NULL
            _release(self.att)

    @staticmethod
    def create(str path, uint64_t capacity, uint64_t max_message, uint32_t max_slots,
               uint32_t mode, uint32_t topic=0, uint32_t drop=0, uint32_t max_subs=0):
        """Create a segment at path; path None: an anonymous one (a memfd:
        hand it to another process by its fileno(), see open_fd)."""
        cdef fq_create_opts o
        cdef char err[512]
        cdef fq_queue *q = NULL
        memset(&o, 0, sizeof(o))
        o.topic = topic
        o.drop = drop
        o.max_subs = max_subs
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
            _raise_open(rc, err, path)
        return _new_segment(q, path)

    @staticmethod
    def open(str path):
        cdef char err[512]
        cdef fq_queue *q = NULL
        b = path.encode()
        cdef const char *cp = b
        err[0] = 0
        with nogil:
            rc = fq_open(cp, &q, err, sizeof(err))
        if rc != 0:
            _raise_open(rc, err, path)
        return _new_segment(q, path)

    @staticmethod
    def open_fd(int fd, str name):
        """Open the segment fd refers to (the caller keeps fd; the handle
        holds its own copy); name only names it in error messages."""
        cdef char err[512]
        cdef fq_queue *q = NULL
        b = name.encode()
        cdef const char *cp = b
        err[0] = 0
        with nogil:
            rc = fq_open_fd(fd, cp, &q, err, sizeof(err))
        if rc != 0:
            _raise_open(rc, err, name)
        return _new_segment(q, None)

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
        """Release this process's slot and unmap (once no call is in flight).
        Unacknowledged deliveries are given back first."""
        if self.q == NULL or self.closing:
            return
        if self._deliveries:
            for d in list(self._deliveries):
                # a forked child's copies of its parent's deliveries are the
                # parent's to settle (their lanes are the parent's)
                if not (<Delivery>d).settled and (<Delivery>d).epoch == fq_epoch():
                    (<Delivery>d).nack(True)
        if self._subs:
            for sub in list(self._subs):
                (<Subscriber>sub).close()
        self.closing = True
        if self._bound_waiters:  # a receive() at the prefetch bound: raise now
            with self._settled:
                self._settled.notify_all()
        if self.inflight == 0:
            self.q = NULL
            _release(self.att)

    @property
    def closed(self):
        return self.q == NULL or self.closing

    cdef int _wait(self, fq_queue *q, int what, uint64_t need, _Waiter w,
                   fq_sub *sub=NULL, Subscriber owner=None) except -1:
        """Wait one slice (for a subscription: at its group's head); raise
        Empty/Full on timeout.  Returns 0, or 1 without waiting if owner (the
        subscriber waiting) must return to its pool (see Subscriber._wake)."""
        now = _monotonic()
        cdef double left = WAIT_SLICE
        if not w.forever:
            left = w.deadline - now
            if left <= 0:
                # a caller looping on short timeouts never waits 0.2 s in one
                # call: recover (rate-limited per handle) before giving up
                self._poll_recover(q)
                raise Empty if what == FQ_WAIT_DATA else Full
            if left > WAIT_SLICE:
                left = WAIT_SLICE
        if now - w.last_recover >= RECOVER_AFTER:
            w.last_recover = now
            with nogil:
                fq_recover(q)
        cdef uint64_t ns = <uint64_t>(left * 1e9)
        cdef int spin = not w.spun  # spin only before the first sleep
        w.spun = True
        if owner is not None:
            # checked, then flagged, with no Python code (no other thread)
            # between them and the sleep: a _wake after the check sees the flag
            if owner._interrupted():
                return 1
            owner.waiting = True
        with nogil:
            if sub != NULL:
                fq_sub_wait(sub, ns, spin)
            else:
                fq_wait(q, what, need, ns, spin)
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

    def put(self, obj, bint block=True, timeout=None):
        """Put one message (serialized by dumps: a bytes-like object, or a
        list of them, gathered into one message)."""
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
        cdef fq_queue *q = self._enter()
        try:
            if type(data) is list:
                self._put_parts(q, data, block, timeout)
            else:
                self._put_one(q, data, block, timeout)
        finally:
            self._exit()

    cdef int _put_one(self, fq_queue *q, object data, bint block, object timeout) except -1:
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

    cdef int _put_parts(self, fq_queue *q, list parts, bint block, object timeout) except -1:
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

    def put_nowait(self, obj):
        """put(obj, block=False)."""
        return self.put(obj, False)

    def get_nowait(self):
        """get(block=False)."""
        return self.get(False)

    def put_many(self, objs, bint block=True, timeout=None):
        """Put every item in order, in as few claims as fit.  Returns the
        number put (all of them, or an exception)."""
        if block and timeout is not None and timeout < 0:
            raise ValueError("'timeout' must be a non-negative number")
        cdef list items
        if self._dumps is None:
            # a private copy, even of a list: the copy below runs without the
            # GIL from pointers into these objects, which must stay alive
            # whatever another thread does to the caller's sequence
            items = list(objs)
        else:
            dumps = self._dumps
            items = []
            for x in objs:
                d = dumps(x)
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
                    used += (lens[start + k] + 31) & ~(<uint64_t>15)
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
                if spun < 1 and fq_spin(q, FQ_WAIT_DATA, 0, SPIN_GIL_NS):
                    spun += 1
                    continue
                w = _Waiter(timeout)
            self._wait(q, FQ_WAIT_DATA, 0, w)

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
        """Take one message: bytes, or loads(memoryview) if a serializer is
        set (the memoryview points into the ring and is released right after).

        If loads() raises, the message has left the queue (a message that
        cannot be deserialized would otherwise come back forever) and the
        error propagates."""
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
        """Take 1..max_messages messages as a list: waits for the first, then
        takes whatever else is already there, up to max_bytes of payload in
        all (the first message is returned whatever its size).

        If loads() raises for a message, the messages before it are returned
        and it and the ones after it stay in the queue; if it is the first,
        it leaves the queue and the error propagates (as in get())."""
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
        """Take one message, leaving it in the queue until the returned
        Delivery is acked (see Delivery).  With `prefetch` deliveries of this
        handle unacknowledged, waits (within timeout) for another thread to
        settle one; RuntimeError if block is false."""
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
        cdef Delivery d = Delivery.__new__(Delivery)
        cdef bint ok = False
        self.att.unacked += 1
        try:
            self._claim(q, 1, NO_BYTE_LIMIT, &d.c, block, timeout)
            d.value = self._load_one(q, &d.c, loads)
            d.position = d.c.pos + d.c.first_off  # a taken (requeued) record: first_off 0
            d.seg = self
            d.epoch = fq_epoch()
            d.redelivered = d.c.redelivered != 0
            if self._deliveries is None:
                import weakref
                self._deliveries = weakref.WeakSet()
            self._deliveries.add(d)
            ok = True
            return d
        finally:
            if not ok:
                self._unreserve()
                self.att.unacked -= 1
                self._exit()

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
                    left = WAIT_SLICE  # a prefetch changed meanwhile is seen within it
                    if not w.forever:
                        left = min(w.deadline - _monotonic(), WAIT_SLICE)
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

    def qsize(self):
        """Messages a get can take now (fq_available)."""
        cdef fq_queue *q = self._enter()
        try:
            return fq_available(q)
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
        cdef fq_queue *q = self._enter()
        try:
            return bool(fq_full(q))
        finally:
            self._exit()

    @property
    def capacity(self):
        return fq_capacity(self._enter_quick())

    @property
    def max_message(self):
        return fq_max_message(self._enter_quick())

    @property
    def max_processes(self):
        return fq_max_slots(self._enter_quick())

    cdef fq_queue *_enter_quick(self) except NULL:
        if self.q == NULL:
            raise ValueError("operation on a closed queue")
        return self.q

    def is_shutdown(self):
        return bool(fq_is_shutdown(self._enter_quick()))

    def shutdown(self, bint immediate=False):
        fq_shutdown(self._enter_quick(), immediate)

    def reset_shutdown(self):
        fq_reset_shutdown(self._enter_quick())

    def recover(self):
        """Repair what dead processes left behind now; returns True if any."""
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
        """msync the segment: committed messages reach stable storage."""
        cdef fq_queue *q = self._enter()
        cdef int rc
        try:
            with nogil:
                rc = fq_flush(q)
            if rc:
                import os
                raise OSError(-rc, os.strerror(-rc))
        finally:
            self._exit()

    # ---- topics -------------------------------------------------------------

    @property
    def is_topic(self):
        return bool(fq_is_topic(self._enter_quick()))

    @property
    def is_drop(self):
        return bool(fq_is_drop(self._enter_quick()))

    @property
    def max_subscribers(self):
        return fq_max_subs(self._enter_quick())

    def subscribe(self, str name, int kind, int start):
        """A new Subscriber (a member of the group `name`, see fastq.h)."""
        cdef fq_queue *q = self._enter()
        cdef fq_sub *sp = NULL
        cdef char err[512]
        cdef int rc
        b = name.encode()
        cdef const char *cp = b
        err[0] = 0
        try:
            with nogil:
                rc = fq_subscribe(q, cp, kind, start, &sp, err, sizeof(err))
            if rc != 0:
                msg = err.decode(errors="replace")
                if rc == FQ_ENOSUB:
                    from ._errors import SubscriberLimit
                    raise SubscriberLimit(msg)
                if rc == FQ_EINUSE:
                    raise RuntimeError(msg)
                if rc == FQ_ENOSLOT:
                    raise OSError(msg)
                import errno
                if rc == -errno.ENOENT:
                    raise FileNotFoundError(errno.ENOENT, msg)
                if rc == -errno.EINVAL:
                    raise ValueError(msg)
                _raise_rc(rc, q, 0)
            sub = Subscriber.__new__(Subscriber)
            (<Subscriber>sub).s = sp
            (<Subscriber>sub).seg = self
            (<Subscriber>sub).drop = fq_is_drop(q)
            if self._subs is None:
                import weakref
                self._subs = weakref.WeakSet()
            self._subs.add(sub)
            return sub
        finally:
            self._exit()

    def forget(self, str name):
        """Remove a durable subscription: True if it existed."""
        cdef fq_queue *q = self._enter()
        cdef int rc
        b = name.encode()
        cdef const char *cp = b
        try:
            with nogil:
                rc = fq_topic_forget(q, cp)
            if rc == FQ_EINUSE:
                raise RuntimeError(f"durable subscription {name!r} has a live subscriber: "
                                   "close it first")
            return rc == FQ_OK
        finally:
            self._exit()

    def subscribers(self):
        """Raw rows of the subscriber tables: (name, flags, pid, kind, alive,
        position, lag, got)."""
        cdef fq_queue *q = self._enter()
        cdef fq_sub_info info
        cdef uint32_t i
        rows = []
        try:
            for i in range(2 * fq_max_subs(q)):
                if fq_topic_info(q, i, &info):
                    rows.append((info.name.decode(errors="replace"), info.flags, info.pid,
                                 info.kind, bool(info.alive), info.position, info.lag,
                                 info.got))
            return rows
        finally:
            self._exit()

    def stats(self):
        """Cursors and internals, for debugging and tests."""
        cdef uint64_t out[8]
        fq_stats(self._enter_quick(), out)
        return {"tail": out[0], "head": out[1], "release": out[2], "requeued": out[3],
                "state": out[4], "slot": <long long>out[5], "creator_pid": out[6],
                "created_ns": out[7]}


cdef class Delivery:
    """A message received with acknowledgement (Queue.receive(),
    Subscription.receive()).

    The message stays in the queue, invisible to other consumers, until
    ack(); nack() gives it back (or drops it); if this process dies first,
    recovery gives it to another consumer, with ``redelivered`` true.  Used
    as a context manager it acks on success and gives the message back on
    an exception.  Dropped unanswered, it is given back.  Only the process
    that received it can settle it (RuntimeError in a forked child).

    ``position`` is the message's byte position in the segment's log: no
    two messages of one segment share it, and a redelivered message keeps
    it (together with the segment's creation time it names the message, as
    fastq.bridge does for JetStream's ``Nats-Msg-Id``).
    """
    cdef Segment seg
    cdef Subscriber sub      # set for a topic subscription's delivery
    cdef fq_claim c
    cdef readonly object value
    cdef readonly bint redelivered
    cdef readonly bint settled
    # the message's byte position in the segment's log: unique for the life
    # of the segment and the same when the message is redelivered (a record
    # is requeued in place); fastq.bridge derives the Nats-Msg-Id from it
    cdef readonly uint64_t position
    cdef unsigned epoch      # fq_epoch() when received: a forked child's copy is not its own
    cdef object __weakref__

    def ack(self):
        """The message was processed: remove it from the queue."""
        self._settle(True)

    def nack(self, bint requeue=True):
        """Give the message back to the queue (requeue=True: a later receive
        or get takes it, flagged redelivered) or drop it (requeue=False)."""
        self._settle(not requeue)

    cdef int _settle(self, bint consume) except -1:
        if self.settled:
            raise ValueError("this delivery was already settled (acked, nacked, or given "
                             "back when its subscription closed)")
        if self.epoch != fq_epoch():
            raise RuntimeError("this delivery was received by the process this one was forked "
                               "from: only that process can ack or nack it (if it dies, the "
                               "message goes to another consumer)")
        if self.sub is not None:
            self.sub._settle(&self.c, consume)  # raises with nothing changed
            self.settled = True
            return 0
        if self.seg is None:
            raise ValueError("not a received delivery")
        self.settled = True
        cdef Segment seg = self.seg
        if consume:
            fq_get_end(seg.q, &self.c)
        else:
            fq_get_abort(seg.q, &self.c)
        seg._unreserve()
        seg.att.unacked -= 1
        seg._exit()
        return 0

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb):
        if not self.settled:
            if exc_type is None:
                self.ack()
            else:
                self.nack(True)
        return False

    def __del__(self):
        # dropped without an answer: give the message back
        if not self.settled and (self.seg is not None or self.sub is not None):
            try:
                self.nack(True)
            except Exception:
                pass

    def __reduce__(self):
        raise TypeError("a fastq.Delivery cannot be pickled: it is a claim of the process "
                        "that received it (send its value instead; ack or nack it here)")

    def __repr__(self):
        state = "settled" if self.settled else "unacked"
        return f"<fastq.Delivery {state} redelivered={self.redelivered} value={self.value!r:.60}>"


_REPICK = object()  # a Subscriber call's answer: its pool must pick a member again

_UNACKED_ONE = ("1 delivery is unacknowledged, the prefetch bound of this subscription: "
                "ack or nack it first (or subscribe with a larger prefetch)")


# no_gc_clear: the cycle collector must not set `seg` to None before
# __dealloc__ runs, or the member would never leave its group (its entry
# ACTIVE under a live pid, holding a block topic's publishers); `seg` also
# keeps the segment mapped until then.  Cycles through a Subscriber still
# break at the other objects in them (Segment, lists, instances).
@cython.no_gc_clear
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
        then sees why (_interrupted).  fq_wake wakes the sleepers whose bit is
        set, and the sleeper sets its bit only once inside fq_sub_wait: the
        wake is repeated (yielding, the GIL released) until the call leaves
        its sleep, WAKE_TRIES times at most; a wake that still misses it (it
        set its bit and read the futex word between our first wake's taking
        the bits and its bump) is seen at the end of its slice (WAIT_SLICE)."""
        cdef fq_queue *q
        cdef int i
        for i in range(WAKE_TRIES):
            if not self.waiting:
                return
            q = self.seg.q  # not closed: the waiting call holds the segment
            with nogil:
                fq_wake(q, FQ_WAIT_DATA)
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
                if spun < 1 and fq_sub_spin(self.s, SPIN_GIL_NS):
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
        cdef uint64_t n
        while True:
            if not fq_sub_next(self.s, c, &data, &n):
                done[0] = True
                return None
            if not self.drop:
                out = self.seg._load(loads, data, n)
                c.kept += 1  # fq_sub_intact, inline: nothing overwrites a block topic
                c.idx = c.msg_idx
                return out
            raw = self.seg._load(None, data, n)
            if not fq_sub_intact(self.s, c):
                continue  # overwritten while we copied it: lost, counted
            if loads is None:
                return raw
            return self.seg._load(loads, PyBytes_AS_STRING(raw), n)

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
                c.kept = 1
                c.idx = c.msg_idx
            self._finish(c, False)
            raise
        except BaseException:
            self._hold(c, 0, 0)
            raise

    def get(self, bint block=True, timeout=None):
        """Take the next message (see fastq.Subscription.get)."""
        if block and timeout is not None and timeout < 0:
            raise ValueError("'timeout' must be a non-negative number")
        loads = self.seg._loads
        cdef fq_queue *q = self._enter()
        cdef fq_claim c
        cdef bint done
        try:
            while True:
                if self._claim(q, 1, NO_BYTE_LIMIT, &c, block, timeout):
                    return _REPICK
                done = False
                out = self._one(&c, loads, &done)
                self._finish(&c, done)
                if not done:
                    return out
        finally:
            self._exit()

    def get_many(self, Py_ssize_t max_messages=1024, bint block=True, timeout=None,
                 uint64_t max_bytes=BATCH_BYTES):
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
        cdef list out = []
        try:
            while not out:
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
                            c.kept = kept + 1
                            c.idx = c.msg_idx
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

    def receive(self, bint block=True, timeout=None):
        """Take the next message, kept until the Delivery is acked."""
        if block and timeout is not None and timeout < 0:
            raise ValueError("'timeout' must be a non-negative number")
        if self.unacked:
            raise RuntimeError(_UNACKED_ONE)
        loads = self.seg._loads
        cdef fq_queue *q = self._enter()
        cdef Delivery d = Delivery.__new__(Delivery)
        cdef bint done
        try:
            while True:
                if self._claim(q, 1, NO_BYTE_LIMIT, &d.c, block, timeout):
                    return _REPICK
                done = False
                out = self._one(&d.c, loads, &done)
                if done:  # overwritten (drop topic): lost, counted
                    fq_sub_end(self.s, &d.c)
                    continue
                d.value = out
                d.position = d.c.msg_pos
                d.sub = self
                d.epoch = fq_epoch()
                # c.redelivered: taken over from a dead member (the whole claim)
                d.redelivered = d.c.redelivered != 0 or self.again
                self.unacked = True
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

    def get(self, bint block=True, timeout=None):
        cdef Subscriber m = self._enter()
        cdef double deadline = _deadline(block, timeout)
        try:
            while True:
                out = m.get(block, timeout)
                if out is not _REPICK:
                    return out
                timeout = _left(timeout, deadline)
                m = self._repick()
        finally:
            self.busy = False

    def get_many(self, Py_ssize_t max_messages=1024, bint block=True, timeout=None,
                 uint64_t max_bytes=BATCH_BYTES):
        cdef Subscriber m = self._enter()
        cdef double deadline = _deadline(block, timeout)
        try:
            while True:
                out = m.get_many(max_messages, block, timeout, max_bytes)
                if out is not _REPICK:
                    return out
                timeout = _left(timeout, deadline)
                m = self._repick()
        finally:
            self.busy = False

    def receive(self, bint block=True, timeout=None):
        cdef Subscriber m = self._enter()
        cdef double deadline = _deadline(block, timeout)
        try:
            while True:
                out = m.receive(block, timeout)
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


cdef double _deadline(bint block, object timeout) except? -1:
    """When a blocking call with this timeout ends (0: never or not blocking)."""
    if not block or timeout is None or timeout < 0:
        return 0.0  # (a negative timeout is refused by the member)
    return _monotonic() + float(timeout)


cdef object _left(object timeout, double deadline):
    """The rest of a call's timeout when its pool picks a member again."""
    if deadline == 0.0:
        return timeout
    return max(0.0, deadline - _monotonic())


def pid_alive(int pid, uint64_t start_time=0):
    """Whether process pid (with /proc start time, 0 = any) is alive."""
    return bool(fq_pid_alive(pid, start_time))


cdef int _raise_rc(int rc, fq_queue *q, uint64_t n) except -1:
    if rc == FQ_FULL:
        raise Full
    if rc == FQ_EMPTY:
        raise Empty
    if rc == FQ_SHUTDOWN:
        raise ShutDown
    if rc == FQ_ETOOBIG:
        fit = fq_capacity_for(n, fq_is_topic(q))
        raise MessageTooLarge(
            f"message of {n} bytes exceeds max_message ({fq_max_message(q)} bytes); " + (
                f"a {'topic' if fq_is_topic(q) else 'queue'} created with capacity={fit} "
                "(or more) would take it" if fit else "no capacity is large enough for it"))
    if rc == FQ_ECORRUPT:
        raise SegmentError("the segment holds an impossible record header (corrupted?)")
    if rc == FQ_EFORKED:
        raise RuntimeError("this subscription belongs to the process that subscribed; a "
                           "forked child cannot use it (pass it pickled: the child then "
                           "joins its group) or subscribe in the child")
    if rc == FQ_ELOST:
        raise RuntimeError("this subscription's entry was reclaimed by recovery (its "
                           "process was taken for dead); subscribe again")
    if rc == FQ_ENOSLOT:
        raise OSError(f"every one of the queue's {fq_max_slots(q)} process slots is taken "
                      "by a live process (create it with a larger max_processes)")
    import os
    raise OSError(-rc, os.strerror(-rc))


cdef int _raise_open(int rc, char *err, str path) except -1:
    msg = err.decode(errors="replace") or path
    import errno, os
    if rc == FQ_EBADSEG:
        raise SegmentError(msg)
    if rc == -errno.EEXIST:
        raise FileExistsError(errno.EEXIST, msg, path)
    if rc == -errno.ENOENT:
        raise FileNotFoundError(errno.ENOENT, msg, path)
    if rc == -errno.EINVAL:
        raise ValueError(msg)
    if rc < 0:
        raise OSError(-rc, msg, path)
    raise OSError(msg)

# Included by _core.pyx: a topic segment: publishing, its members
# (_members.pxi) and its subscriber table.


cdef class TopicSegment(Segment):
    """A handle of a topic segment: fastq.Topic subclasses it (its hot
    methods are these, compiled; their docstrings are the public ones)."""

    # ---- publishing ---------------------------------------------------------

    def publish(self, obj, bint block=True, timeout=None, *, subject=None):
        """Publish obj to every subscription.

        ``subject`` (a str such as ``"orders.eu.created"``: dot-separated
        tokens, no wildcards, at most 255 bytes): the message goes only to
        subscriptions whose ``subjects`` match it (and to those without
        ``subjects``); ``Delivery.subject`` gives it.  ValueError if it is
        not a valid subject.

        In an ``overflow="block"`` topic, waits while the slowest live
        subscriber's unread messages fill the ring (up to ``timeout``, then
        ``queue.Full``).  A ``"drop"`` topic never waits for subscribers.
        Raises ``MessageTooLarge`` and, after :meth:`shutdown`, ``ShutDown``.
        """
        self._put(obj, block, timeout, None if subject is None else _subject_bytes(subject))

    def publish_nowait(self, obj, *, subject=None):
        """``publish(obj, block=False)``."""
        self._put(obj, False, None, None if subject is None else _subject_bytes(subject))

    def publish_many(self, objs, bint block=True, timeout=None, *, subject=None):
        """Publish every item in order (batched), all with ``subject`` (as
        :meth:`publish`); returns how many."""
        return self._put_many(objs, block, timeout,
                              None if subject is None else _subject_bytes(subject))

    # ---- the subscriber table -----------------------------------------------

    @property
    def is_drop(self):
        """True for an ``overflow="drop"`` topic."""
        return bool(fq_is_drop(self._enter_quick()))

    @property
    def max_subscribers(self):
        """Subscriber entries the topic holds."""
        return fq_max_subs(self._enter_quick())

    def _subscribe(self, str name, int kind, int start, tuple patterns=None,
                   uint64_t filter_key=1):
        """A new Subscriber (a member of the group `name`, see fastq.h) that
        receives the messages whose subject matches one of patterns (bytes,
        checked; None: every message); filter_key (not 0) names that filter
        for the group's other members (fq_sub_filter)."""
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
                _raise_rc(rc, q, 0, err.decode(errors="replace"))
            with nogil:
                rc = fq_sub_filter(sp, filter_key)
            if rc != 0:
                fq_unsubscribe(sp)
                if rc == FQ_EINUSE:
                    raise ValueError(
                        f"group {name!r} has members with another subject filter: all the "
                        "members of a group share its filter (subscribe with the same "
                        "subjects, or use another group)")
                _raise_rc(rc, q, 0)
            sub = Subscriber.__new__(Subscriber)
            (<Subscriber>sub).patterns = patterns
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

    def _forget(self, str name):
        """Remove a durable subscription: True if it existed."""
        cdef fq_queue *q = self._enter()
        cdef int rc
        b = name.encode()
        cdef const char *cp = b
        try:
            with nogil:
                rc = fq_topic_forget(q, cp)
            if rc == FQ_EINUSE:
                _raise_rc(rc, q, 0, f"durable subscription {name!r} has a live subscriber: "
                          "close it first")
            return rc == FQ_OK
        finally:
            self._exit()

    def _subscribers(self):
        """Raw rows of the subscriber tables: (name, flags, pid, kind, alive,
        position, lag, got, group, lag_bytes, unacked, unacked_since_ns)."""
        cdef fq_queue *q = self._enter()
        cdef fq_sub_info info
        cdef uint32_t i
        rows = []
        try:
            for i in range(2 * fq_max_subs(q)):
                if fq_topic_info(q, i, &info):
                    rows.append((info.name.decode(errors="replace"), info.flags, info.pid,
                                 info.kind, bool(info.alive), info.position, info.lag,
                                 info.got, info.group, info.lag_bytes, info.unacked,
                                 info.unacked_since_ns))
            return rows
        finally:
            self._exit()


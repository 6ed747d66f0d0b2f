# Included by _core.pyx: a message received with acknowledgement.


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

    ``id`` names the message for idempotent handlers: a str,
    ``"<created_ns>.<position>"`` (both in hexadecimal: the segment's creation
    time in nanoseconds and ``position``); it is the same each time the
    message is redelivered, and no other message of the segment, nor of a
    segment created again under the same name, has it.  A topic's message
    has the same id in every subscription that receives it.

    ``attempt`` counts the deliveries of the message: 1 the first time, then
    one more each time it comes back, after ``nack()`` or after the process
    holding it died (kept in the segment, so every process sees the same
    count; for a queue it saturates at 256).
    """
    cdef QueueSegment seg
    cdef Subscriber sub      # set for a topic subscription's delivery
    cdef fq_claim c
    cdef readonly object value
    cdef readonly bint redelivered
    cdef readonly bint settled
    # the message's byte position in the segment's log: unique for the life
    # of the segment and the same when the message is redelivered (a record
    # is requeued in place); fastq.bridge derives the Nats-Msg-Id from it
    cdef readonly uint64_t position
    # 1 on the first delivery, + 1 on each redelivery (nack, or recovery
    # after the holder died): for a queue kept in the record's header
    cdef readonly unsigned attempt
    cdef uint64_t created_ns  # the segment's, for id
    cdef bytes _subject       # a topic message's subject, or None
    cdef unsigned epoch      # fq_epoch() when received: a forked child's copy is not its own
    cdef _Link link          # in its handle's list of unsettled deliveries (_Link)
    cdef object __weakref__

    def ack(self):
        """The message was processed: remove it from the queue."""
        self._settle(True)

    @property
    def subject(self):
        """The topic message's subject (a str), or None (none given, or a
        queue's message)."""
        return None if self._subject is None else self._subject.decode(errors="replace")

    @property
    def id(self):
        """The message's id: ``"<created_ns>.<position>"`` in hexadecimal,
        stable across redeliveries (see the class docstring)."""
        return f"{self.created_ns:x}.{self.position:x}"

    def nack(self, bint requeue=True, delay=None):
        """Give the message back (``requeue=True``: a later receive or get
        takes it, flagged redelivered, with ``attempt`` one more) or drop it
        (``requeue=False``).

        ``delay`` (seconds, queues only, at most one hour): the message
        becomes visible again only after the delay.  No process holds it
        meanwhile (the time is kept in the segment, with the message), so it
        comes back even if this process dies, and nothing waits in this
        process.  Other messages flow past it while it waits; once due, it
        is taken before the messages at the head, as every message given
        back is.  Like an unacknowledged delivery, it keeps its place in the
        ring: producers cannot reuse the space after it until it is taken, so
        a long delay can fill the queue.  It comes back no earlier than the
        delay, and typically within a few tens of milliseconds after it (a
        waiting consumer looks again at least every 0.2 s).
        """
        cdef uint64_t ms = 0
        if delay is not None:
            if not requeue:
                raise ValueError("'delay' needs requeue=True (a dropped message does not come back)")
            if self.sub is not None:
                raise ValueError("nack(delay=...) is for queue deliveries; a topic's message "
                                 "comes back at once")
            d = float(delay)
            if not (d >= 0.0) or d > FQ_MAX_DELAY_MS / 1000.0:
                raise ValueError(f"'delay' must be between 0 and {FQ_MAX_DELAY_MS // 1000} "
                                 f"seconds, not {delay!r}")
            ms = <uint64_t>(d * 1000.0 + 0.999999)
        self._settle(not requeue, ms)

    cdef int _settle(self, bint consume, uint64_t delay_ms=0) except -1:
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
        _link_del(&self.link)
        cdef QueueSegment seg = self.seg
        if consume:
            fq_get_end(seg.q, &self.c)
        elif delay_ms:
            fq_get_nack(seg.q, &self.c, delay_ms)
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

    def __dealloc__(self):
        _link_del(&self.link)  # a forked child's copy, or its nack failed

    def __reduce__(self):
        raise TypeError("a fastq.Delivery cannot be pickled: it is a claim of the process "
                        "that received it (send its value instead; ack or nack it here)")

    def __repr__(self):
        state = "settled" if self.settled else "unacked"
        return (f"<fastq.Delivery {state} attempt={self.attempt} "
                f"redelivered={self.redelivered} value={self.value!r:.60}>")




cdef class Deliveries(Delivery):
    """Messages received together with acknowledgement
    (Queue.receive_many()): ``values`` in order and their ``positions``
    (``value`` is the same list, ``position`` the first one's).  They are
    settled together: ``ack()`` removes them all, ``nack()`` gives them all
    back; if this process dies first, recovery gives each back on its own
    (``redelivered`` true, the same position).  A batch is one delivery
    against ``prefetch``."""
    cdef readonly list values
    cdef readonly list positions

    def __len__(self):
        return len(self.values) if self.values is not None else 0

    def __repr__(self):
        state = "settled" if self.settled else "unacked"
        return f"<fastq.Deliveries {state} of {len(self)} redelivered={self.redelivered}>"

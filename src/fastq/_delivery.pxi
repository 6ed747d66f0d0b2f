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
        cdef QueueSegment seg = self.seg
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

# Included by _core.pyx: the one table from the C core's return codes
# (fastq.h: FQ_OK, a positive FQ_E* condition, or -errno) to exceptions.


cdef int _raise_rc(int rc, fq_queue *q=NULL, uint64_t n=0, str msg=None,
                   str path=None) except -1:
    """Raise the exception for return code rc.  q, n: the segment and the
    size of the message of the operation that failed (for the messages
    written here); msg: the message of the call that failed (the C core's,
    from fq_create, fq_open*, fq_subscribe; or the caller's), path: the file
    it names."""
    import errno, os
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
    if rc == FQ_EBADSEG:
        raise SegmentError(msg)
    if rc == FQ_ENOSUB:
        raise SubscriberLimit(msg)
    if rc == FQ_EINUSE:
        raise RuntimeError(msg)
    if rc == FQ_EFORKED:
        raise RuntimeError("this subscription belongs to the process that subscribed; a "
                           "forked child cannot use it (pass it pickled: the child then "
                           "joins its group) or subscribe in the child")
    if rc == FQ_ELOST:
        raise RuntimeError("this subscription's entry was reclaimed by recovery (its "
                           "process was taken for dead); subscribe again")
    if rc == FQ_ENOSLOT:
        if msg is not None:
            raise OSError(msg)
        raise OSError(f"every one of the queue's {fq_max_slots(q)} process slots is taken "
                      "by a live process (create it with a larger max_processes)")
    if msg is None:
        raise OSError(-rc, os.strerror(-rc))
    if rc == -errno.EEXIST:
        raise FileExistsError(errno.EEXIST, msg, path)
    if rc == -errno.ENOENT:
        raise FileNotFoundError(errno.ENOENT, msg, path)
    if rc == -errno.EINVAL:
        raise ValueError(msg)
    if rc < 0:
        raise OSError(-rc, msg or os.strerror(-rc), path)
    raise OSError(msg)

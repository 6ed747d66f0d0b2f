# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True
"""Thin binding over the C core (csrc/).  Private: use fastq.Queue.

It converts arguments, runs the blocking loops (sleep with the GIL
released, check for signals after each sleep, run crash recovery when no
progress is made while a claim is in flight) and maps return codes to
exceptions.

One extension module, files by concern (included below): the C
declarations are in _core.pxd; _rc.pxi maps return codes to exceptions; _wait.pxi holds the waiting
policy (slices, strategies, the event-loop side of fastq._aio);
_segment.pxi is the mapped segment and the copies into and out of it;
_queue.pxi the queue consumer and receive(); _delivery.pxi a received
message; _topic.pxi publishing and the subscriber table; _members.pxi a
topic's group members and a subscription's pool of them.  The public
classes (fastq.Queue, fastq.Topic) subclass QueueSegment and TopicSegment.
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

from pickle import dumps as _pdumps, loads as _ploads
from time import monotonic as _monotonic
from time import monotonic_ns as _monotonic_ns
from weakref import ref as _weakref

from ._errors import Empty, Full, MessageTooLarge, SegmentError, ShutDown, SubscriberLimit

cdef extern from "Python.h":
    int PyBUF_READ

cdef size_t NOGIL_COPY = 64 * 1024     # copy with the GIL released above this
# receive(): deliveries one process may hold (a lane each, fq_layout.h)
MAX_PREFETCH = FQ_MAX_HELD
MAX_DELAY = FQ_MAX_DELAY_MS / 1000.0   # seconds: the longest nack(delay=)
MAX_SUBJECT = FQ_MAX_SUBJECT          # bytes of a topic message's subject
# Topic.subscribe(prefetch=): members one subscription may use (fastq.h)
SUB_MAX_PREFETCH = FQ_SUB_MAX_PREFETCH
# limits of the options, and the kinds and flags of topic groups (fastq.h,
# fq_layout.h): the Python API checks arguments against them
MIN_CAPACITY = FQ_MIN_CAPACITY
MAX_SLOTS = FQ_MAX_SLOTS
MAX_SUBS = FQ_MAX_SUBS
GROUP_NAME_MAX = FQ_GROUP_NAME - 1     # bytes, without the NUL
SUB_ANON, SUB_GROUP, SUB_DURABLE = FQ_SUB_ANON, FQ_SUB_GROUP, FQ_SUB_DURABLE
SUB_MUST_EXIST = FQ_SUB_MUST_EXIST
START_LATEST, START_EARLIEST = FQ_START_LATEST, FQ_START_EARLIEST
GRP_DURABLE, GRP_GROUP, GRP_ANON = FQ_GRP_DURABLE, FQ_GRP_GROUP, FQ_GRP_ANON
FLAG_TEMP = FQ_FLAG_TEMP               # a segment created temporary=True (fastq gc)
cdef size_t BATCH_MAX = 4096           # records per claim in put_many
# Bytes per batch claim (put_many, get_many): a claim is published or freed
# only as a whole, so a huge one stops the other side from overlapping with
# it; 1 MiB keeps both sides streaming (one 1 MiB message is one claim).
cdef uint64_t BATCH_BYTES = 1 << 20
cdef uint64_t NO_BYTE_LIMIT = (1ULL << 63) - 1  # no bound on a claim's bytes


cdef class Subscriber
cdef class SubscriberPool
cdef class QueueSegment
cdef class Segment


include "_rc.pxi"
include "_wait.pxi"
include "_segment.pxi"
include "_queue.pxi"
include "_delivery.pxi"
include "_topic.pxi"
include "_members.pxi"
include "_subjects.pxi"


# what a creation's temporary file is (fq_tmp_file, fastq.h)
TMP_NONE, TMP_CREATING, TMP_LEFTOVER = FQ_TMP_NONE, FQ_TMP_CREATING, FQ_TMP_LEFTOVER


def tmp_file(str path, bint remove=False):
    """What the file at path is, by the core's rule for the temporary files
    of creations (fq_tmp_file): TMP_NONE (not one: another name, or a
    segment of its own that only has such a name), TMP_CREATING (its
    creator may be at work) or TMP_LEFTOVER (a killed creator's; removed if
    remove).  OSError if it cannot be opened or removed."""
    b = path.encode()
    cdef const char *cp = b
    cdef int rc
    with nogil:
        rc = fq_tmp_file(cp, remove)
    if rc < 0:
        import os
        _raise_rc(rc, NULL, 0, os.strerror(-rc), path)
    return rc


def pid_alive(int pid, uint64_t start_time=0):
    """Whether process pid (with /proc start time, 0 = any) is alive."""
    return bool(fq_pid_alive(pid, start_time))



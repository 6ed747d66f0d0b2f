/*
 * fq_internal.h - the process-local handle and helpers shared by the core's
 * C files.  Nothing here is part of the segment layout (see fq_layout.h).
 */
#ifndef FQ_INTERNAL_H
#define FQ_INTERNAL_H

#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>
#include <sys/types.h>

#include "fastq.h"
#include "fq_layout.h"

struct fq_queue {
    int fd;                    /* the mapping's file; never holds a file lock,
                                * so its probes see every handle's locks */
    _Atomic int lock_fd;       /* the same file, opened again: holds this
                                * handle's locks; -1 after a fork, until needed */
    struct fq_queue *next, *prev; /* every open handle (closed in a forked child) */
    uint8_t *base;
    size_t map_size;
    fq_ctrl *ctrl;
    uint8_t *data;
    fq_slot *slots;
    uint64_t cap, mask, salt, max_msg;
    uint64_t rec_max;          /* largest record len: max_msg + prefix */
    uint32_t nslots;
    int topic, drop;           /* a topic segment; overflow="drop" */
    uint32_t prefix;           /* bytes before the payload: 16 in a topic */
    uint32_t nsubs;            /* entries in each topic table */
    fq_member *members;
    fq_group *groups;
    _Atomic int slot;          /* our slot, or -1 until first use */
    _Atomic unsigned epoch;    /* fork epoch the slot was taken in */
    _Atomic uint32_t lanes_free; /* bit l set: lane l is free */
    _Atomic uint64_t cached_release; /* producers' cache of ctrl->release */
    pthread_mutex_t mu;        /* attach and sleeper bookkeeping */
    int sleepers[2];           /* threads of ours asleep on data/space */
    int quiet_sleepers;        /* of them, asleep without a slice (quiet_mask) */
    int armed[2];              /* an event loop of ours awaits data/space (fq_arm) */
    int armed_quiet;           /* ... and its bit in quiet_mask is up */
    _Atomic uint32_t spin_ns;  /* adaptive spin budget before sleeping */
    /* requeue_seq << 24 | not-before: a scan at that requeue_seq found only
     * delayed records, the earliest visible at that not-before (fq_ring.c);
     * 0: no verdict */
    _Atomic uint64_t rq_skip;
};

#define FQ_SPIN_MAX_NS 20000u
#define FQ_SPIN_MIN_NS 1000u

/* segment.c */
/* Format a message into err (if given); returns rc. */
int fq_err(char *err, size_t errlen, int rc, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));
int fq_attach(fq_queue *q);
extern _Atomic unsigned fq_fork_epoch;

/* Liveness (see "File locks" in fq_layout.h).  Take (lock = 1) or drop the
 * file lock at offset off on this handle's lock descriptor: 0, -EAGAIN if
 * another description holds it, or -errno. */
int fq_file_lock(fq_queue *q, uint64_t off, int lock);
/* Is the owner of slot s, whose word the caller loaded as w, still there?
 * 0 only if the slot's lock is free and its word is still w afterwards: then
 * the verdict stands until recovery frees the slot.  seen (NULL, or one
 * entry per slot, zeroed) keeps verdicts for one operation, so that each
 * slot is probed at most once however many entries name it. */
int fq_slot_alive(fq_queue *q, uint32_t s, uint64_t w, signed char *seen);

/* crash points for fault-injection tests */
extern _Atomic int fq_crash_armed;
void fq_crash_check(const char *name);
#define FQ_CRASH_POINT(name)                                             \
    do {                                                                 \
        if (atomic_load_explicit(&fq_crash_armed, memory_order_relaxed)) \
            fq_crash_check(name);                                        \
    } while (0)

/* The record at pos.  The index is forced to 16-byte alignment, so even a
 * hostile position read from the segment cannot address past the ring. */
static inline fq_rec *fq_rec_at(const fq_queue *q, uint64_t pos)
{
    return (fq_rec *)(q->data + (pos & q->mask & ~(uint64_t)15));
}

static inline uint64_t fq_tag_of(const fq_queue *q, uint64_t pos)
{
    return fq_tag(q->salt, pos);
}

/* Is w a record word of position pos (in any state)? */
static inline int fq_match(const fq_queue *q, uint64_t pos, uint64_t w)
{
    return fq_word_matches(q->salt, pos, w);
}

/*
 * The span of the record at pos whose word is w, validated: 0 if the header
 * holds an impossible value (a corrupt or hostile segment).
 */
static inline uint64_t fq_span(const fq_queue *q, uint64_t pos, uint64_t w, uint32_t len)
{
    uint64_t idx = pos & q->mask, span;
    if ((w & 7) == FQ_REC_SKIP) {
        span = len;
        if (span < FQ_REC_HDR || (span & 15) || span > q->cap)
            return 0;
        return span;
    }
    if (len > q->rec_max)
        return 0;
    span = fq_rec_size(len);
    if (idx + span > q->cap)
        return 0;
    return span;
}

static inline void fq_cpu_relax(void)
{
#if defined(__x86_64__) || defined(__i386__)
    __builtin_ia32_pause();
#elif defined(__aarch64__)
    __asm__ __volatile__("yield" ::: "memory");
#endif
}

/* A full fence (store-load ordering).  On x86-64 a locked RMW on the stack
 * orders like mfence at a fraction of its cost (as Linux's smp_mb()). */
static inline void fq_fence(void)
{
#if defined(__x86_64__)
    __asm__ __volatile__("lock; orl $0, (%%rsp)" ::: "memory", "cc");
#else
    atomic_thread_fence(memory_order_seq_cst);
#endif
}

/* recover.c: the segment-wide lock (ctrl->recover_lock), also guarding the
 * topic tables; taken from a dead holder */
int fq_lock_try(fq_queue *q);
int fq_lock_wait(fq_queue *q); /* 0, or -errno: this handle cannot lock */
void fq_lock_drop(fq_queue *q);

/* topic.c */
uint64_t fq_topic_release(fq_queue *q);
int fq_topic_evict(fq_queue *q, uint64_t target);
int fq_topic_data_ready(fq_queue *q, uint64_t pos);
int fq_topic_space_ready(fq_queue *q, uint64_t need);
int fq_topic_reap(fq_queue *q);
int fq_topic_claim(fq_queue *q, uint64_t *t, uint64_t *cnt, uint64_t span, uint64_t n);
void fq_topic_tables_changed(fq_queue *q); /* before the lock is dropped */

int fq_lane_get(fq_queue *q); /* -1 if all lanes are busy */
void fq_lane_put(fq_queue *q, int lane);

/* wait.c: the wait primitive takes the readiness rule as a predicate */
typedef int (*fq_ready_fn)(fq_queue *q, uint64_t arg);
/* nothing is in flight that a dead process could leave stalled */
typedef int (*fq_quiet_fn)(fq_queue *q);
/* Wait until ready(q, arg) may hold: spin (strategy), then sleep up to
 * slice_ns, or up to timeout_ns while quiet(q) holds (NULL: never);
 * FQ_FOREVER: no limit.  Returns 1 if it saw ready(q, arg) hold. */
int fq_wait_pred(fq_queue *q, int what, fq_ready_fn ready, uint64_t arg, fq_quiet_fn quiet,
                 uint64_t slice_ns, uint64_t timeout_ns, int strategy);
int fq_spin_pred(fq_queue *q, fq_ready_fn ready, uint64_t arg, uint64_t ns);
/* Arm (on) or disarm side what of this process's slot for its bell: a
 * writer then rings it.  FQ_ARM_READY if ready(q, arg) holds after arming,
 * FQ_ARM_QUIET if quiet(q) holds (the caller needs no recovery slice). */
int fq_arm_pred(fq_queue *q, int what, fq_ready_fn ready, uint64_t arg, fq_quiet_fn quiet, int on);
/* After a claim (a seq_cst CAS of tail or head): wake quiet sleepers. */
void fq_wake_quiet(fq_queue *q);
void fq_sweep(fq_queue *q);
int fq_has_requeued(fq_queue *q);
int fq_drained(fq_queue *q, uint64_t h);

/* Add n to a statistics counter that only the caller writes (a lane's,
 * by the thread holding the lane; recovery's, under the segment lock): a
 * plain load and store, no locked add.  Relaxed: statistics order nothing;
 * readers (fq_inspect.c) only sum them. */
static inline void fq_stat_add(_Atomic uint64_t *counter, uint64_t n)
{
    atomic_store_explicit(counter, atomic_load_explicit(counter, memory_order_relaxed) + n,
                          memory_order_relaxed);
}

#endif

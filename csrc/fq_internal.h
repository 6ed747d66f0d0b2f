/*
 * fq_internal.h - the process-local handle and the prototypes the core's C
 * files share, per file in layer order.  Nothing here is part of the
 * segment layout (see fq_layout.h).
 *
 * Layers, read bottom-up; a file calls only into the files above it in this
 * list (tests/c/test_layering.py checks the objects' symbols for a cycle):
 *   fq_atomic.h   memory orders, fences, the spin hint; the memory-order policy
 *   fq_proc.c     process identity (fork epoch), pid liveness, error text,
 *                 crash and pause points
 *   fq_file.c     a segment's file while it is made: temporary files, the
 *                 creating lock, linking into place, leftovers' sweep
 *   fq_segment.c  create/open/validate, handles, slots and their liveness,
 *                 lanes, the segment lock
 *   fq_wait.c     waiting and waking, given a readiness predicate
 *   fq_topic.c    the topic discipline's publisher side: release as a
 *                 minimum, eviction, readiness (its protocol at its top;
 *                 fq_topic.h: what the three topic files share)
 *   fq_members.c  the member and group tables (subscribe, unsubscribe,
 *                 forget) and the repair of dead members (fq_topic_reap)
 *   fq_sub.c      a member's claims, give-backs, waits and status
 *   fq_put.c      the producer path (queue and topic) and its repair
 *   fq_get.c      the queue consumer and its repair
 *   fq_state.c    sizes, stats, shutdown; fq_wait/fq_arm with the
 *                 discipline's readiness rule
 *   fq_recover.c  the recovery orchestrator, and fq_create/fq_open that give
 *                 handles recovery as their way to free dead slots
 *   fq_inspect.c  counters summed and a consistency check, for operators'
 *                 tools (reads the segment; takes no slot and no lock)
 */
#ifndef FQ_INTERNAL_H
#define FQ_INTERNAL_H

#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>
#include <sys/types.h>

#include "fastq.h"
#include "fq_atomic.h"
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
    uint32_t sample_shift;     /* fq_sample_shift(cap): time-in-queue points */
    /* per lane and side (0 put, 1 get): no claim ending at or before it can
     * cover a sample point (fq_sample_due); written by the lane's holder */
    uint64_t sample_next[2][FQ_LANES];
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
    _Atomic uint32_t spin_floor; /* misses at the floor (no spin) since the last probe */
    _Atomic uint64_t spin_slept_ns; /* how long the last adaptive wait that slept took */
    /* frees the slots of dead processes when attaching finds none free (1 if
     * it repaired any): fq_recover, set by fq_create/fq_open_fd; NULL: wait */
    int (*reclaim)(fq_queue *q);
    /* requeue_seq << 24 | not-before: a scan at that requeue_seq found only
     * delayed records, the earliest visible at that not-before (fq_get.c);
     * 0: no verdict */
    _Atomic uint64_t rq_skip;
};

/* the adaptive spin (fq_wait.c): at most FQ_SPIN_MAX_NS; below FQ_SPIN_MIN_NS
 * none at all (the floor) */
#define FQ_SPIN_MAX_NS 20000u
#define FQ_SPIN_MIN_NS 1000u
/* misses at the floor between two full-budget probes, and how short the
 * last sleep must have been for a probe (fq_wait.c) */
#define FQ_SPIN_PROBE_EVERY 256u
#define FQ_SPIN_TRY_EVERY 8u /* ... and a probe of FQ_SPIN_MIN_NS */
#define FQ_SPIN_PROBE_NEAR_NS (10ull * FQ_SPIN_MAX_NS)

/* ---- fq_proc.c: process identity and liveness ---------------------------- */

/* Format a message into err (if given); returns rc. */
int fq_err(char *err, size_t errlen, int rc, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));
/* bumped in a forked child (fq_segment.c's atfork handler); fq_epoch() reads it */
extern _Atomic unsigned fq_fork_epoch;
/* liveness probes made: [0] of pids (/proc), [1] of slot locks (fq_test_probe_count) */
extern _Atomic uint64_t fq_probes[2];

/* crash points for fault-injection tests */
extern _Atomic int fq_crash_armed;
void fq_crash_check(const char *name);
#define FQ_CRASH_POINT(name)                                             \
    do {                                                                 \
        if (atomic_load_explicit(&fq_crash_armed, memory_order_relaxed)) \
            fq_crash_check(name);                                        \
    } while (0)

/* ---- fq_file.c: a segment's file while it is made ------------------------- */

struct stat;
/* the creating lock of a named temporary file: a request of type (F_WRLCK,
 * F_UNLCK) for fcntl cmd (F_OFD_SETLK, F_OFD_GETLK); the answer in *type */
int fq_creating_lock(int fd, int cmd, short *type);
/* remove the leftovers of killed creators of path (and, if same is given,
 * the other names of that very file that are leftovers) */
void fq_sweep_tmp(const char *path, const struct stat *same);
/* a new file for a segment at path: O_TMPFILE, else a named temporary file
 * (its name into tmp) under its creating lock; fd or -errno */
int fq_open_tmpfile(const char *path, unsigned mode, char *tmp, size_t tmplen, uint64_t salt,
                    char *err, size_t errlen);
/* give the finished file its name: 0, or -1 with errno (EEXIST: lost) */
int fq_link_into_place(int fd, const char *tmp, const char *path);

/* ---- fq_segment.c: the segment, its slots, lanes and lock ----------------- */

/* fq_create and fq_open_fd (flags: fq_open_flags') without recovery
 * (q->reclaim NULL) */
int fq_segment_create(const char *path, const fq_create_opts *o, fq_queue **out,
                      char *err, size_t errlen);
int fq_segment_open_fd(int fd, const char *path, unsigned flags, fq_queue **out, char *err,
                       size_t errlen);
int fq_attach(fq_queue *q);

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

int fq_lane_get(fq_queue *q); /* -1 if all lanes are busy */
void fq_lane_put(fq_queue *q, int lane);

/* Time in queue (fq_layout.h, "Time in queue"): note a sample point passed
 * now in this handle's slot, in its put ring (side 0: key = point + 1) or
 * its get ring (side 1: key = group << FQ_SAMPLE_GROUP_SHIFT | (point + 1)).
 * Called only at sample points (fq_sample_at). */
void fq_sample_note(fq_queue *q, int side, uint64_t key) __attribute__((cold));

/* The segment lock (ctrl->recover_lock), guarding recovery and the topic
 * tables; taken from a dead holder.  A topic drops it with fq_topic_unlock. */
int fq_lock_try(fq_queue *q);
int fq_lock_wait(fq_queue *q); /* 0, or -errno: this handle cannot lock */
void fq_lock_drop(fq_queue *q);

/* ---- the ring's records (inline, for every layer above) ------------------- */

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

/*
 * Has release passed pos since the caller read bytes of the ring at pos or
 * after it (a header, a length, an index, a copied payload: plain or relaxed
 * loads)?  Then those bytes may belong to a record written since, and what
 * was read is not to be trusted.  The acquire fence orders the caller's
 * reads before the load of release; it pairs with the release fence a
 * publisher makes after moving release and before writing into the evicted
 * bytes (fq_topic_evict), and with the release CAS of a sweep, which a
 * producer reads (acquire) before it reuses the bytes.  So if any byte read
 * was rewritten, release is seen past pos.
 */
static inline int fq_released_past(const fq_queue *q, uint64_t pos)
{
    atomic_thread_fence(memory_order_acquire);
    return atomic_load_explicit(&q->ctrl->release, SEQ) > pos;
}

/* The delivery meta word of a record (fq_layout.h, "Delivery meta": its
 * takes and not-before).  Plain (relaxed) accesses: the word's transitions
 * order them. */
static inline uint32_t fq_meta_load(fq_rec *r)
{
    return __atomic_load_n(&r->owner, __ATOMIC_RELAXED);
}

static inline void fq_meta_store(fq_rec *r, uint32_t m)
{
    __atomic_store_n(&r->owner, m, __ATOMIC_RELAXED);
}

/* ---- lanes and intents (inline, for the disciplines) ------------------------ */

/* this handle's intent in lane `lane` (consumer side if cons) */
static inline fq_intent *fq_my_intent(fq_queue *q, int lane, int cons)
{
    fq_lane *l = &q->slots[atomic_load_explicit(&q->slot, RLX)].lane[lane];
    return cons ? &l->cons : &l->prod;
}

/* Attach if needed and borrow a lane (*lane): 0, or the code to return
 * (FQ_ENOSLOT, FQ_EBUSY, or fq_attach's -errno: never a lane number). */
static inline int fq_enter(fq_queue *q, int *lane)
{
    int rc = fq_attach(q);
    if (rc)
        return rc;
    *lane = fq_lane_get(q);
    return *lane < 0 ? FQ_EBUSY : 0;
}

/* A put between its intent and its commit (a CLAIMING or WON lane of a slot
 * in use): what a dead producer could leave stalled.  Part of every quiet
 * rule (fq_state.c fq_quiet, fq_topic_in_flight): a producer announces its
 * intent, then rings the quiet sleepers (fq_wake_quiet), then claims; so a
 * waiter that raised its quiet bit and then found no intent here is rung
 * by any claim made after.  seq_cst loads: after the waiter's seq_cst RMW
 * of its quiet bit. */
static inline int fq_put_in_flight(fq_queue *q)
{
    for (uint32_t sl = 0; sl < q->nslots; sl++) {
        if (FQ_SLOT_KIND(atomic_load_explicit(&q->slots[sl].word, SEQ)) == FQ_SLOT_FREE)
            continue;
        for (unsigned l = 0; l < FQ_LANES; l++) {
            unsigned ph = atomic_load_explicit(&q->slots[sl].lane[l].prod.state, SEQ) & 3;
            if (ph == FQ_PH_CLAIMING || ph == FQ_PH_WON)
                return 1;
        }
    }
    return 0;
}

/* Announce a claim of [pos, end) holding n messages.  Release: a survivor
 * that sees CLAIMING (or the claim's CAS) sees pos, end and n. */
static inline void fq_intent_claim(fq_intent *in, uint64_t pos, uint64_t end, uint64_t n,
                                   uint64_t count)
{
    atomic_store_explicit(&in->pos, pos, RLX);
    atomic_store_explicit(&in->end, end, RLX);
    atomic_store_explicit(&in->n, n, RLX);
    atomic_store_explicit(&in->state, count << 2 | FQ_PH_CLAIMING, REL);
}

/* Before a consumer claim's intent: no receive() mark yet (fq_layout.h,
 * held).  One store to the line the claim writes anyway, by the lane's
 * only writer, before the intent's stores: a process killed at any point
 * leaves 0 or a mark of its current claim.  Relaxed: statistics.  A reader
 * (fq_held_read) that sees this claim's WON then sees the 0 on x86 (stores
 * become visible in order); a weakly ordered CPU may show it the previous
 * mark for an instant, counted only if that mark's position is this
 * claim's, as review 15's H1 was for a whole claim. */
static inline void fq_held_clear(fq_intent *in)
{
#ifndef FQ_NO_COUNTERS
    atomic_store_explicit(&in->held, 0, RLX);
#else
    (void)in;
#endif
}

/* Add n to a statistics counter that only the caller writes (a lane's,
 * by the thread holding the lane; recovery's, under the segment lock): a
 * plain load and store, no locked add.  Relaxed: statistics order nothing;
 * readers (fq_inspect.c) only sum them.  On x86-64 one unlocked add to
 * memory (the compiler does not fuse a relaxed load and store into it): its
 * load and its store of the aligned word are each single-copy atomic, so a
 * reader sees the old sum or the new one, as with the relaxed pair.
 *
 * FQ_NO_COUNTERS (a measuring build only, never shipped: what the counters
 * cost, README "Operations"): no statistics add, no time-in-queue sample, no
 * held mark (fq_get_mark_unacked). */
static inline void fq_stat_add(_Atomic uint64_t *counter, uint64_t n)
{
#if defined(FQ_NO_COUNTERS)
    (void)counter, (void)n;
#elif defined(__x86_64__)
    __asm__("addq %1, %0" : "+m"(*(uint64_t *)counter) : "er"(n));
#else
    atomic_store_explicit(counter, atomic_load_explicit(counter, RLX) + n, RLX);
#endif
}

/* Does the claim [a, b) cover a time-in-queue sample point (a multiple of
 * 2^sample_shift)?  Then it is the point at (b - 1) >> sample_shift: every
 * claim of a side covers each point once (fq_layout.h, "Time in queue").
 * (a - 1) wraps for a = 0, which covers point 0. */
static inline int fq_sample_at(fq_queue *q, uint64_t a, uint64_t b)
{
#ifdef FQ_NO_COUNTERS
    (void)q, (void)a, (void)b;
    return 0;
#else
    return (((a - 1) ^ (b - 1)) >> q->sample_shift) != 0;
#endif
}

/* The hot path's test before fq_sample_at: can the claim [a, b) of this
 * lane on this side cover a sample point?  One compare with the first point
 * after the lane's previous claim of the side (q->sample_next): the claims
 * of one lane and side come one after another in time, so their positions
 * grow (each won its CAS of tail or head after the one before), and a claim
 * ending at or before that point covers none.  Only a claim past it takes
 * the exact test, and moves the mark past its own end: once per point in
 * the lane's progress.  The caller then tests fq_sample_at. */
static inline int fq_sample_due(fq_queue *q, int lane, int side, uint64_t b)
{
#ifdef FQ_NO_COUNTERS
    (void)q, (void)lane, (void)side, (void)b;
    return 0;
#else
    if (__builtin_expect(b <= q->sample_next[side][lane], 1))
        return 0;
    q->sample_next[side][lane] = (((b - 1) >> q->sample_shift) + 1) << q->sample_shift;
    return 1;
#endif
}

/* shut down (ctrl->state), for the readiness rules */
static inline int fq_is_shut(fq_queue *q)
{
    return (atomic_load_explicit(&q->ctrl->state, memory_order_seq_cst) & FQ_STATE_SHUTDOWN) != 0;
}

/* ---- fq_wait.c: waiting, given the readiness rule as a predicate ----------- */

typedef int (*fq_ready_fn)(fq_queue *q, uint64_t arg);
/* nothing is in flight that a dead process could leave stalled */
typedef int (*fq_quiet_fn)(fq_queue *q);
/* Wait until ready(q, arg) may hold: spin (strategy), then sleep up to
 * slice_ns, or up to timeout_ns while quiet(q) holds (NULL: never);
 * FQ_FOREVER: no limit.  Returns 1 if it saw ready(q, arg) hold. */
int fq_wait_pred(fq_queue *q, int what, fq_ready_fn ready, uint64_t arg, fq_quiet_fn quiet,
                 uint64_t slice_ns, uint64_t timeout_ns, int strategy);
int fq_spin_pred(fq_queue *q, fq_ready_fn ready, uint64_t arg, uint64_t ns);
/* An adaptive wait slept and came back waited_ns after it began. */
void fq_spin_slept(fq_queue *q, uint64_t waited_ns);
/* Arm (on) or disarm side what of this process's slot for its bell: a
 * writer then rings it.  FQ_ARM_READY if ready(q, arg) holds after arming,
 * FQ_ARM_QUIET if quiet(q) holds (the caller needs no recovery slice). */
int fq_arm_pred(fq_queue *q, int what, fq_ready_fn ready, uint64_t arg, fq_quiet_fn quiet, int on);
/* Wake quiet sleepers: a producer or member after its intent's store and a
 * seq_cst fence, before its CAS; a queue consumer after its seq_cst CAS of
 * head. */
void fq_wake_quiet(fq_queue *q);

/* ---- fq_topic.c, fq_members.c, fq_sub.c: the topic discipline -------------- */

/* the producer side, for fq_put.c (the shared producer path) */
uint64_t fq_topic_release(fq_queue *q);
int fq_topic_evict(fq_queue *q, uint64_t target);
int fq_topic_space_ready(fq_queue *q, uint64_t need);
int fq_topic_claim(fq_queue *q, uint64_t *t, uint64_t *cnt, uint64_t span, uint64_t n);
/* readiness of a member reading at pos */
int fq_topic_data_ready(fq_queue *q, uint64_t pos);
/* fq_wait's quiet rules for a topic's subscribers and publishers */
int fq_topic_data_quiet(fq_queue *q);
int fq_topic_space_quiet(fq_queue *q);
/* repair, for recovery (under the segment lock): reap dead members
 * (fq_members.c) */
int fq_topic_reap(fq_queue *q);
/* drop the segment lock after the member or group tables may have changed */
void fq_topic_unlock(fq_queue *q);

/* ---- fq_put.c: the shared producer path and its repair -------------------- */

/* the producer's readiness rule (need: the payload bytes of one record,
 * fq_put_need for a batch): room, or shut down */
int fq_put_ready(fq_queue *q, uint64_t need);

/* recovery's view of one slot */
typedef struct {
    char dead;     /* a slot whose owner is gone (fq_slot_alive) */
    uint64_t word; /* its word then: it stays so until recovery frees it */
} fq_slot_view;
/* repair a dead producer lane: 1 once it is idle */
int fq_fix_prod(fq_queue *q, const fq_slot_view *v, uint32_t s, unsigned l);
/* record walks for the repairs (the queue consumer's too) */
int fq_header_at(fq_queue *q, uint64_t p, uint64_t *w);
uint64_t fq_stable_span(fq_queue *q, uint64_t x, uint64_t w);
int64_t fq_count_states(fq_queue *q, uint64_t from, uint64_t end, unsigned states,
                        uint32_t owner);

/* ---- fq_get.c: the queue consumer and its repair ---------------------------- */

/* move release over finished records (recovery calls it after repairs) */
void fq_sweep(fq_queue *q);
/* the queue consumer's readiness rule: a record to take, or shut down and drained */
int fq_get_ready(fq_queue *q, uint64_t unused);
/* repair of a dead consumer lane, and of the records dead consumers held */
void fq_fix_cons_count(fq_queue *q, uint32_t s, unsigned l);
int fq_holds_taken(fq_queue *q, fq_intent *in, uint32_t me);
int fq_requeue_orphans(fq_queue *q, const fq_slot_view *v);
/* Does this handle know that every requeued record is delayed right now?
 * Then the not-before units until the soonest is due, else 0 (fq_state.c
 * shortens a consumer's wait slice to it). */
uint32_t fq_rq_skipping(fq_queue *q);

/* ---- fq_state.c: sizes, stats, shutdown, and fq_wait/fq_arm (fastq.h) ------- */

/* ---- fq_recover.c: the orchestrator: fq_recover, fq_create, fq_open (fastq.h) */

/* ---- fq_inspect.c: fq_counts_read, fq_check (fastq.h) ---------------------- */

#endif

/*
 * fq_wait.c - waiting for data or space without a lock and without a
 * syscall on the fast path.
 *
 * Each side has a futex word in the segment (data_seq, space_seq) and a
 * bitmask of slots that have a thread asleep on it.
 *
 *   waiter: set our bit (seq_cst RMW; before every sleep); v = load(word);
 *           re-check the condition; futex_wait(word, v, slice); clear the
 *           bit when the process's last sleeper on it leaves.
 *   writer: publish (release); seq_cst fence; if any bit is set, take the
 *           bits (exchange with 0), bump the word and FUTEX_WAKE everyone.
 *           Taking them makes one syscall per sleep, not one per write
 *           until the woken sleepers run again.
 *
 * Either the writer's fence-then-load sees the waiter's bit, or the
 * waiter's RMW-then-re-check sees the published data: a wake-up is never
 * lost.  Loading v before the re-check matters: a bump between the re-check
 * and the futex call makes FUTEX_WAIT return EAGAIN at once.  A bitmask,
 * not a count, because a waiter killed in its sleep must not leave the
 * count raised forever: recovery clears a dead slot's bit.
 *
 * Before sleeping, a waiter spins briefly: a hand-off to a side running on
 * another core then costs ~0.1 us instead of a ~50 us futex round trip.
 * The spin adapts, per handle: it doubles (up to FQ_SPIN_MAX_NS) each time
 * spinning was enough and halves (down to FQ_SPIN_MIN_NS) each time the
 * waiter had to sleep anyway.  On a machine with fewer cores than busy
 * processes the other side is often not running, spinning only burns the
 * core it needs, and the spin shrinks to almost nothing within a few waits.
 * There is no spinning at all on a single-core machine.
 */
#define _GNU_SOURCE
#include <limits.h>
#include <linux/futex.h>
#include <sched.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#include "fq_internal.h"

static uint64_t fq_now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

static int fq_ncpu(void)
{
    static _Atomic int n;
    int v = atomic_load_explicit(&n, memory_order_relaxed);
    if (!v) {
        long c = sysconf(_SC_NPROCESSORS_ONLN);
        v = c > 0 ? (int)c : 1;
        atomic_store_explicit(&n, v, memory_order_relaxed);
    }
    return v;
}

static void fq_futex_wait(_Atomic uint32_t *word, uint32_t v, uint64_t ns)
{
    struct timespec ts = {(time_t)(ns / 1000000000ull), (long)(ns % 1000000000ull)};
    syscall(SYS_futex, (uint32_t *)word, FUTEX_WAIT, v, &ts, NULL, 0);
}

static void fq_futex_wake(_Atomic uint32_t *word)
{
    syscall(SYS_futex, (uint32_t *)word, FUTEX_WAKE, INT_MAX, NULL, NULL, 0);
}

/* Does the condition we wait for hold (or may it)? */
static int fq_ready(fq_queue *q, int what, uint64_t need)
{
    fq_ctrl *c = q->ctrl;
    int shut = (atomic_load_explicit(&c->state, memory_order_seq_cst) & FQ_STATE_SHUTDOWN) != 0;
    if (q->topic) /* need: the subscriber's position, or the put's bytes */
        return what == FQ_WAIT_DATA ? fq_topic_data_ready(q, need) || shut
                                    : shut || fq_topic_space_ready(q, need);
    if (what == FQ_WAIT_DATA) {
        /* a non-zero hint may be stale: look for an actual record */
        if (atomic_load_explicit(&c->requeued, memory_order_seq_cst) && fq_has_requeued(q))
            return 1;
        uint64_t h = atomic_load_explicit(&c->head, memory_order_seq_cst);
        fq_rec *r = fq_rec_at(q, h);
        uint64_t w = atomic_load_explicit(&r->word, memory_order_seq_cst);
        if (fq_match(q, h, w)) {
            unsigned st = w & 7;
            if (st == FQ_REC_COMMITTED || st == FQ_REC_SKIP || st == FQ_REC_ABANDONED)
                return 1;
        }
        /* shut down and drained: gets raise ShutDown (while a put is still
         * being copied, or a claim may still be given back, they wait) */
        return shut && fq_drained(q, h);
    }
    if (shut)
        return 1;
    uint64_t rel = atomic_load_explicit(&c->release, memory_order_seq_cst);
    uint64_t t = atomic_load_explicit(&c->tail, memory_order_seq_cst);
    need = fq_rec_size(need); /* need: the payload bytes of the put */
    if (need > q->cap / 2)
        need = q->cap / 2;
    /* a claim may need padding up to the end of the ring */
    uint64_t idx = t & q->mask;
    uint64_t span = idx + need > q->cap ? q->cap - idx + need : need;
    return t + span - rel <= q->cap;
}

void fq_wake(fq_queue *q, int what)
{
    fq_ctrl *c = q->ctrl;
    /* pairs with the waiter's RMW on the mask before its re-check */
    fq_fence();
    unsigned words = (q->nslots + 63) / 64;
    for (int side = 0; side < 2; side++) {
        if (what >= 0 && side != what)
            continue;
        _Atomic uint64_t *mask = side == FQ_WAIT_DATA ? c->data_mask : c->space_mask;
        _Atomic uint32_t *seq = side == FQ_WAIT_DATA ? &c->data_seq : &c->space_seq;
        /* Take the bits: one wake-up per sleep, not one per call until the
         * sleepers run again (with more processes than cores that can take
         * long).  A sleeper sets its bit again before every re-check. */
        int wake = 0;
        for (unsigned i = 0; i < words; i++)
            if (atomic_load_explicit(&mask[i], memory_order_relaxed) &&
                atomic_exchange_explicit(&mask[i], 0, memory_order_seq_cst))
                wake = 1;
        if (wake) {
            atomic_fetch_add_explicit(seq, 1, memory_order_seq_cst);
            fq_futex_wake(seq);
        }
    }
}

/* Spin up to ns (and the handle's adaptive budget); 1 if the condition holds. */
static int fq_spin_for(fq_queue *q, int what, uint64_t need, uint64_t ns)
{
    uint32_t budget = atomic_load_explicit(&q->spin_ns, memory_order_relaxed);
    if (ns > budget)
        ns = budget;
    uint64_t start = fq_now_ns();
    for (unsigned i = 0;; i++) {
        if (fq_ready(q, what, need)) {
            if (budget < FQ_SPIN_MAX_NS) /* spinning pays: allow more */
                atomic_store_explicit(&q->spin_ns, budget * 2 > FQ_SPIN_MAX_NS ? FQ_SPIN_MAX_NS
                                                                               : budget * 2,
                                      memory_order_relaxed);
            return 1;
        }
        fq_cpu_relax();
        if ((i & 15) == 15 && fq_now_ns() - start > ns)
            return 0;
    }
}

int fq_spin(fq_queue *q, int what, uint64_t need, uint64_t ns)
{
    if (fq_ncpu() < 2)
        return fq_ready(q, what, need);
    return fq_spin_for(q, what, need, ns);
}

void fq_wait(fq_queue *q, int what, uint64_t need, uint64_t timeout_ns, int spin)
{
    if (fq_attach(q) != 0) {
        /* no slot: no bit to set; poll gently */
        struct timespec ts = {0, 1000000};
        nanosleep(&ts, NULL);
        return;
    }
    uint64_t start = fq_now_ns();
    if (spin && fq_ncpu() > 1) {
        if (fq_spin_for(q, what, need, FQ_SPIN_MAX_NS))
            return;
        /* spinning did not pay: spin less next time */
        uint32_t b = atomic_load_explicit(&q->spin_ns, memory_order_relaxed);
        atomic_store_explicit(&q->spin_ns, b / 2 < FQ_SPIN_MIN_NS ? FQ_SPIN_MIN_NS : b / 2,
                              memory_order_relaxed);
    }
    uint64_t spent = fq_now_ns() - start;
    if (spent >= timeout_ns)
        return;
    int s = atomic_load(&q->slot);
    fq_ctrl *c = q->ctrl;
    _Atomic uint64_t *mask = (what == FQ_WAIT_DATA ? c->data_mask : c->space_mask) + s / 64;
    _Atomic uint32_t *seq = what == FQ_WAIT_DATA ? &c->data_seq : &c->space_seq;
    uint64_t bit = 1ull << (s & 63);
    pthread_mutex_lock(&q->mu);
    q->sleepers[what]++;
    /* every time, not only for the first sleeper: a waker takes the bits */
    atomic_fetch_or_explicit(mask, bit, memory_order_seq_cst);
    pthread_mutex_unlock(&q->mu);
    uint32_t v = atomic_load_explicit(seq, memory_order_seq_cst);
    if (!fq_ready(q, what, need))
        fq_futex_wait(seq, v, timeout_ns - spent);
    pthread_mutex_lock(&q->mu);
    if (--q->sleepers[what] == 0)
        atomic_fetch_and_explicit(mask, ~bit, memory_order_seq_cst);
    pthread_mutex_unlock(&q->mu);
}

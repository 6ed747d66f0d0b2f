/*
 * fq_recover.c - the recovery orchestrator: repairing what a process killed
 * mid-operation left behind, with the repairs of each discipline.
 *
 * Called by waiters that made no progress for a while (and when no slot is
 * free), by any process, at any time.  One process recovers at a time: it
 * holds the segment lock (the file lock FQ_LOCK_SEGMENT, which the kernel
 * drops when its holder dies or execs).  Every step is a CAS from a state
 * that says what comes next, so a recoverer killed midway is finished by the
 * next one.  The order: a view of every slot first (a dead verdict stands
 * until recovery frees the slot), then per dead slot its sleeper bits and
 * consumer counts, then the records dead readers held (queue: requeue;
 * topic: reap), then the producer lanes, then the slot itself; after the
 * lock is dropped, a sweep and a wake of every side.
 *
 * Recovery's counters (rec_gets, rec_puts, rec_slots: statistics) are each
 * added after the state change that settles what they count, and only when
 * this recoverer made it: a recoverer killed between the two leaves that one
 * uncounted (the next sees it settled); none is ever counted twice.
 *
 * What a dead process can leave, and what recovery does:
 *
 *  - A producer lane CLAIMING or WON: fq_fix_prod (fq_put.c) keeps the
 *    records it committed and replaces what it left unwritten.
 *  - A consumer lane (queues): fq_fix_cons_count and fq_requeue_orphans
 *    (fq_get.c) finish its DONE marks or put its records back; a lane is
 *    kept until its TAKEN record is back (fq_holds_taken).
 *  - A topic's dead members: fq_topic_reap (fq_members.c).
 *  - Sleeper bits in the wait masks: cleared.
 *  - The slot: freed once all its lanes are idle.
 *
 * Layer: the top of the core.  It calls down into every other file (the
 * segment lock, slot liveness, the topic's fq_topic_reap, the queue's
 * fq_sweep, fq_wake) and nothing calls into it but the binding, which runs it
 * from its waiting loops, and the handles themselves: fq_create and
 * fq_open_fd (here) give every handle fq_recover as q->reclaim, which
 * fq_attach calls when every slot is taken and an owner is dead.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "fq_internal.h"

int fq_recover(fq_queue *q)
{
    fq_ctrl *c = q->ctrl;
    if (!fq_lock_try(q))
        return 0;
    FQ_CRASH_POINT("recover_after_lock");
    fq_slot_view *v = calloc(q->nslots, sizeof *v);
    int repaired = 0;
    if (!v)
        goto out;
    for (uint32_t s = 0; s < q->nslots; s++) {
        uint64_t w = atomic_load_explicit(&q->slots[s].word, memory_order_acquire);
        v[s].word = w;
        v[s].dead = FQ_SLOT_KIND(w) != FQ_SLOT_FREE && !fq_slot_alive(q, s, w, NULL);
    }
    for (uint32_t s = 0; s < q->nslots; s++) {
        if (!v[s].dead)
            continue;
        uint64_t bit = 1ull << (s & 63);
        atomic_fetch_and(&c->data_mask[s / 64], ~bit);
        atomic_fetch_and(&c->space_mask[s / 64], ~bit);
        atomic_fetch_and(&c->quiet_mask[s / 64], ~bit);
        if (!q->topic)
            for (unsigned l = 0; l < FQ_LANES; l++) {
                _Atomic uint64_t *st = &q->slots[s].lane[l].cons.state;
                unsigned ph = atomic_load(st) & 3;
                fq_fix_cons_count(q, s, l);
                FQ_CRASH_POINT("recover_before_gets_count");
                /* counted after the RECOVERED store, by the recoverer that
                 * made it (the lock: no other changes a dead lane), as
                 * rec_puts and rec_slots are: one killed in between
                 * undercounts by one, none counts twice (review 15, R1) */
                if ((ph == FQ_PH_WON || ph == FQ_PH_CLAIMING) &&
                    (atomic_load(st) & 3) == FQ_PH_RECOVERED)
                    fq_stat_add(&c->rec_gets, 1);
            }
    }
    if (q->topic)
        repaired |= fq_topic_reap(q); /* a topic's readers are its members */
    else
        repaired |= fq_requeue_orphans(q, v);
    for (uint32_t s = 0; s < q->nslots; s++) {
        if (!v[s].dead)
            continue;
        int idle = 1;
        for (unsigned l = 0; l < FQ_LANES; l++) {
            unsigned ph = atomic_load(&q->slots[s].lane[l].prod.state) & 3;
            int fixed = fq_fix_prod(q, v, s, l);
            if (fixed && ph != FQ_PH_IDLE) /* counted once: idle from now on */
                fq_stat_add(&c->rec_puts, 1);
            idle &= fixed;
            fq_intent *ci = &q->slots[s].lane[l].cons;
            uint64_t st = atomic_load(&ci->state);
            if ((st & 3) == FQ_PH_RECOVERED && !fq_holds_taken(q, ci, s << 3 | l))
                atomic_store(&ci->state, st & ~(uint64_t)3);
            else if ((st & 3) != FQ_PH_IDLE)
                idle = 0;
        }
        repaired = 1;
        FQ_CRASH_POINT("recover_before_free");
        if (idle) {
            uint64_t w = v[s].word;
            if (atomic_compare_exchange_strong(&q->slots[s].word, &w,
                                               FQ_SLOT_WORD(FQ_SLOT_FREE, FQ_SLOT_GEN(w), 0)))
                fq_stat_add(&c->rec_slots, 1);
        }
    }
    free(v);
out:
    fq_topic_unlock(q);
    if (repaired) {
        if (!q->topic)
            fq_sweep(q);
        atomic_fetch_add(&c->data_seq, 1);
        atomic_fetch_add(&c->space_seq, 1);
        fq_wake(q, -1);
    }
    return repaired;
}

/* ---- handles that recover ---------------------------------------------- */

int fq_create(const char *path, const fq_create_opts *opts, fq_queue **out, char *err,
              size_t errlen)
{
    int rc = fq_segment_create(path, opts, out, err, errlen);
    if (rc == 0)
        (*out)->reclaim = fq_recover;
    return rc;
}

/* fq_open_fd with fq_open_flags' flags */
static int fq_open_fd_flags(int fd, const char *path, unsigned flags, fq_queue **out, char *err,
                            size_t errlen)
{
    int rc = fq_segment_open_fd(fd, path, flags, out, err, errlen);
    if (rc == 0)
        (*out)->reclaim = fq_recover;
    return rc;
}

int fq_open_fd(int fd, const char *path, fq_queue **out, char *err, size_t errlen)
{
    return fq_open_fd_flags(fd, path, 0, out, err, errlen);
}

int fq_open_flags(const char *path, unsigned flags, fq_queue **out, char *err, size_t errlen)
{
    int fd = open(path, O_RDWR | O_CLOEXEC);
    if (fd < 0)
        return fq_err(err, errlen, -errno, "cannot open %s: %s", path, strerror(errno));
    int rc = fq_open_fd_flags(fd, path, flags, out, err, errlen);
    close(fd);
    return rc;
}

int fq_open(const char *path, fq_queue **out, char *err, size_t errlen)
{
    return fq_open_flags(path, 0, out, err, errlen);
}

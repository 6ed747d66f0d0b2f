/*
 * fq_topic.h - what the three files of the topic discipline share:
 * fq_topic.c (publishers: release, eviction, readiness), fq_members.c (the
 * member and group tables, under the segment lock) and fq_sub.c (a
 * member's claims).  The protocol is stated at the top of fq_topic.c.
 * Small helpers are inline here: they sit on the subscriber's hot path.
 */
#ifndef FQ_TOPIC_H
#define FQ_TOPIC_H

#include "fq_internal.h"

struct fq_sub {
    fq_queue *q;
    uint32_t m, g;  /* our member entry and its group */
    unsigned epoch; /* fork epoch at subscribe: a forked child's copy is not ours */
    uint64_t word;  /* our member word: still ours? */
    int held;       /* a claim kept by fq_sub_hold, returned again next */
    fq_claim hold;
};

static inline uint64_t fq_rec_index(fq_rec *r)
{
    return ((const volatile uint64_t *)(r + 1))[0];
}

/* CAS of a 16-byte aligned pair of words (lo at p[0]): 1 if it was
 * (*lo, *hi) and is now (nlo, nhi); otherwise *lo, *hi get the current
 * values.  A full barrier (lock cmpxchg16b on x86-64), seq_cst like the
 * 8-byte CASes around it. */
static inline int fq_cas2(_Atomic uint64_t *p, uint64_t *lo, uint64_t *hi, uint64_t nlo, uint64_t nhi)
{
    unsigned __int128 *pair = (unsigned __int128 *)p;
    unsigned __int128 old = (unsigned __int128)*hi << 64 | *lo;
    unsigned __int128 nw = (unsigned __int128)nhi << 64 | nlo;
    unsigned __int128 got = __sync_val_compare_and_swap(pair, old, nw);
    if (got == old)
        return 1;
    *lo = (uint64_t)got;
    *hi = (uint64_t)(got >> 64);
    return 0;
}

/* ---- group heads ----------------------------------------------------- */

/*
 * A group's head is a pair (pos, by): the position its next claim starts at
 * and the member that moved it there (index + 1; 0: none), a 16-byte aligned
 * pair moved whole by fq_cas2, by a claim or a lapped member, always to a
 * position beyond the one it replaces (fq_subscribe stores a new group's
 * under the lock, before any member can read it).  Positions are full 64-bit
 * values: nothing is rebuilt, however far a group lags.
 */
typedef struct fq_head {
    uint64_t pos, by;
} fq_head;

/* The pair as one value the head held: pos, by, then pos again (seq_cst,
 * the order of fq_cas2's single store): since every move changes pos, an
 * unchanged pos brackets the load of by. */
static inline fq_head fq_head_read(fq_group *g)
{
    fq_head H;
    do {
        H.pos = atomic_load_explicit(&g->head, SEQ);
        H.by = atomic_load_explicit(&g->head_by, SEQ);
    } while (atomic_load_explicit(&g->head, SEQ) != H.pos);
    return H;
}

/* Move the head from *H to (pos, by); on failure *H is the current pair. */
static inline int fq_head_cas(fq_group *g, fq_head *H, uint64_t pos, uint64_t by)
{
    return fq_cas2(&g->head, &H->pos, &H->by, pos, by);
}

/* Under the lock, a group being made: set its head whatever it was. */
static inline void fq_head_store(fq_group *g, uint64_t pos)
{
    fq_head H = fq_head_read(g);
    while (!fq_head_cas(g, &H, pos, 0))
        ;
}

/* block topics: make every publisher's scan in progress fail its release
 * CAS (fq_topic_release), after a change it may have missed */
static inline void fq_bump_epoch(fq_queue *q)
{
    fq_ctrl *c = q->ctrl;
    uint64_t rel = atomic_load(&c->release), ep = atomic_load(&c->release_epoch);
    while (!q->drop && !fq_cas2(&c->release, &rel, &ep, rel, ep + 1))
        ;
}

static inline uint32_t fq_hwm(fq_queue *q)
{
    uint32_t h = atomic_load_explicit(&q->ctrl->subs_hwm, SEQ);
    return h < q->nsubs ? h : q->nsubs;
}

/* fq_topic.c: is a claim or a put in flight (a dead process may leave it)? */
int fq_topic_in_flight(fq_queue *q);

/* fq_members.c (the tables) */
int fq_member_dead(fq_queue *q, fq_member *e, signed char *seen);
int fq_group_has_members(fq_queue *q, uint32_t gi);

#endif

/*
 * fq_topic.c - topics: one ring, many readers, each group at its own pace.
 *
 * A topic segment is a queue segment whose ring is read by groups instead
 * of by one shared head (fq_layout.h: fq_group, fq_member).  Publishers use
 * the producer path of fq_put.c unchanged, except two things:
 *
 *   - tail and ctrl->published move together in one 16-byte CAS, so each
 *     record carries its message index in a 16-byte payload prefix: a
 *     subscriber counts exactly what it skipped, and its lag, by subtraction;
 *   - the space check: release is not moved by readers.  In overflow="block"
 *     a publisher that runs out of cached space computes it as the minimum
 *     of every group's head, every member's claim and every put in progress
 *     (fq_topic_release), and moves it with a 16-byte CAS of (release,
 *     epoch): a change a scan may have missed (a new group, an orphan taken
 *     over) bumps the epoch, and the stale scan's CAS fails;
 *     in overflow="drop" it evicts the oldest committed records itself by
 *     moving release over them (fq_topic_evict), whoever still reads them.
 *
 * Readers never write to records, so one record serves every group.
 *
 * A member reads by claiming from its group's head, like a queue consumer:
 *   1. H = head (pos h, last claimer); walk the committed records from h.
 *   2. Intent in its entry: pos h, end p, n, state seq|CLAIMING (seq_cst).
 *   3. CAS the head pair H -> (p, me) (16 bytes, seq_cst).  Then state WON.
 *   4. Copy; in a drop topic, check each copy afterwards: release still at
 *      or below the message's position (fq_sub_intact).
 *   5. State IDLE (release): the records may be reused from now on.
 * A publisher's scan loads tail, then every group head, then the table's
 * bound (subs_hwm) again, then every claim (all seq_cst): a claim whose CAS
 * it saw is visible to it, and a claim it did not see is at or above the
 * head it loaded.  Besides, every change of the tables made under the
 * segment lock bumps the epoch when the lock is dropped
 * (fq_topic_tables_changed), so a scan that began before it fails its CAS.
 *
 * Crash windows.  A member that dies with a claim WON leaves an ORPHAN:
 * recovery keeps the entry, claim and all, and the next member of the group
 * takes it (redelivered).  One that dies CLAIMING may or may not have won its
 * CAS: the head names the member that moved it last, and a member that
 * claims after another one still CLAIMING first helps it to WON (CAS on its
 * state); so a dead CLAIMING member won exactly when the head still names it
 * with its end (fq_topic_reap reads the head first, then the state).
 *
 * Joining.  A new group's head starts at release (which no publisher can
 * pass while the group is visible), the group is published, the epoch is
 * bumped, and only then does the head move to where it starts (tail, or
 * release read after the bump).  A publisher whose scan missed the group
 * began it before the bump: its CAS fails and it scans again.
 *
 * Orphans.  fq_take_orphan covers the orphan's claim with the taker's own
 * entry, bumps the epoch (a scan could otherwise read the taker's entry
 * before the cover and the orphan's after the free), then frees the orphan.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "fq_internal.h"


struct fq_sub {
    fq_queue *q;
    uint32_t m, g;  /* our member entry and its group */
    unsigned epoch; /* fork epoch at subscribe: a forked child's copy is not ours */
    uint64_t word;  /* our member word: still ours? */
    int held;       /* a claim kept by fq_sub_hold, returned again next */
    fq_claim hold;
};

static void fq_sub_account(fq_sub *s, fq_claim *c);

static inline uint64_t fq_rec_index(fq_rec *r)
{
    return ((const volatile uint64_t *)(r + 1))[0];
}

/* ---- publishers ------------------------------------------------------ */

/* CAS of a 16-byte aligned pair of words (lo at p[0]): 1 if it was
 * (*lo, *hi) and is now (nlo, nhi); otherwise *lo, *hi get the current
 * values.  A full barrier (lock cmpxchg16b on x86-64), seq_cst like the
 * 8-byte CASes around it. */
static int fq_cas2(_Atomic uint64_t *p, uint64_t *lo, uint64_t *hi, uint64_t nlo, uint64_t nhi)
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
static fq_head fq_head_read(fq_group *g)
{
    fq_head H;
    do {
        H.pos = atomic_load_explicit(&g->head, SEQ);
        H.by = atomic_load_explicit(&g->head_by, SEQ);
    } while (atomic_load_explicit(&g->head, SEQ) != H.pos);
    return H;
}

/* Move the head from *H to (pos, by); on failure *H is the current pair. */
static int fq_head_cas(fq_group *g, fq_head *H, uint64_t pos, uint64_t by)
{
    return fq_cas2(&g->head, &H->pos, &H->by, pos, by);
}

/* Under the lock, a group being made: set its head whatever it was. */
static void fq_head_store(fq_group *g, uint64_t pos)
{
    fq_head H = fq_head_read(g);
    while (!fq_head_cas(g, &H, pos, 0))
        ;
}

/* block topics: make every publisher's scan in progress fail its release
 * CAS (fq_topic_release), after a change it may have missed */
static void fq_bump_epoch(fq_queue *q)
{
    fq_ctrl *c = q->ctrl;
    uint64_t rel = atomic_load(&c->release), ep = atomic_load(&c->release_epoch);
    while (!q->drop && !fq_cas2(&c->release, &rel, &ep, rel, ep + 1))
        ;
}

/* The segment lock is being dropped (fq_lock_drop): whatever changed in the
 * member and group tables while it was held (a member joined or left, a
 * group was made or forgotten, an orphan taken, a dead member reaped), a
 * publisher's scan that began before may have missed it, and now fails its
 * release CAS.  One rule at one place, instead of a bump at each change site
 * (the sites that need one before they finish still bump there). */
static void fq_topic_tables_changed(fq_queue *q)
{
    if (q->topic)
        fq_bump_epoch(q);
}

/* Drop the segment lock after the tables may have changed (of a queue too:
 * recovery): publishers' release scans in progress must look again (the
 * seq_cst CAS of fq_bump_epoch, before the unlock). */
void fq_topic_unlock(fq_queue *q)
{
    fq_topic_tables_changed(q);
    fq_lock_drop(q);
}

/* tail and published move together.  On failure, *t and *cnt are the
 * current values. */
int fq_topic_claim(fq_queue *q, uint64_t *t, uint64_t *cnt, uint64_t span, uint64_t n)
{
    return fq_cas2(&q->ctrl->tail, t, cnt, *t + span, *cnt + n);
}

static inline uint32_t fq_hwm(fq_queue *q)
{
    uint32_t h = atomic_load_explicit(&q->ctrl->subs_hwm, SEQ);
    return h < q->nsubs ? h : q->nsubs;
}

/*
 * overflow="block": the oldest position any group still needs; moves
 * release up to it and returns release.  Loads tail first, then the group
 * heads, then the claims (see the top of this file).
 */
uint64_t fq_topic_release(fq_queue *q)
{
    fq_ctrl *c = q->ctrl;
    /* the epoch before the scan: a group published after our scan began
     * bumps it (fq_subscribe), and our CAS below then fails */
    uint64_t ep = atomic_load_explicit(&c->release_epoch, SEQ);
    uint64_t rel = atomic_load_explicit(&c->release, SEQ);
    for (;;) {
        uint64_t t0 = atomic_load_explicit(&c->tail, SEQ);
        uint64_t m = t0;
        uint32_t hwm = fq_hwm(q);
        FQ_CRASH_POINT("topic_release_after_hwm");
        for (uint32_t i = 0; i < hwm; i++) {
            fq_group *g = &q->groups[i];
            if ((atomic_load_explicit(&g->word, SEQ) & 0xff) != FQ_GRP_ACTIVE)
                continue;
            uint64_t h = atomic_load_explicit(&g->head, SEQ);
            if (h < m)
                m = h;
        }
        /* the bound again, after the heads: a member that joined a group
         * (subs_hwm stored before its entry, under the lock) and claimed by a
         * head CAS we saw above is below the bound we load now */
        hwm = fq_hwm(q);
        for (uint32_t i = 0; i < hwm; i++) {
            fq_member *e = &q->members[i];
            unsigned kind = FQ_SLOT_KIND(atomic_load_explicit(&e->word, SEQ));
            if (kind != FQ_MEM_ACTIVE && kind != FQ_MEM_ORPHAN)
                continue;
            if ((atomic_load_explicit(&e->state, SEQ) & 3) == FQ_PH_IDLE)
                continue;
            uint64_t p = atomic_load_explicit(&e->pos, SEQ);
            if (p < m)
                m = p;
        }
        /* nor past a record still being written: a group may start at tail
         * ("latest"), beyond puts in progress, and there may be no group at
         * all.  A put's intent is stored before its tail CAS, and stays until
         * it committed (or recovery repaired it). */
        for (uint32_t sl = 0; sl < q->nslots; sl++) {
            if (FQ_SLOT_KIND(atomic_load_explicit(&q->slots[sl].word, SEQ)) == FQ_SLOT_FREE)
                continue;
            for (unsigned l = 0; l < FQ_LANES; l++) {
                fq_intent *in = &q->slots[sl].lane[l].prod;
                if ((atomic_load_explicit(&in->state, SEQ) & 3) == FQ_PH_IDLE)
                    continue;
                uint64_t p = atomic_load_explicit(&in->pos, SEQ);
                if (p < m)
                    m = p;
            }
        }
        if (m + q->cap < t0) /* impossible (a corrupt head): hold at the ring's size */
            m = t0 - q->cap;
        if (m <= rel)
            return rel;
        /* a torn (rel, ep) read fails here too, and we look again */
        if (fq_cas2(&c->release, &rel, &ep, m, ep))
            return m;
        FQ_CRASH_POINT("topic_release_retry");
    }
}

/*
 * overflow="drop": move release to at least target by dropping the oldest
 * records, whoever reads them.  A record still being written cannot be
 * dropped: FQ_FULL (its publisher is copying, or recovery will abandon it).
 */
int fq_topic_evict(fq_queue *q, uint64_t target)
{
    fq_ctrl *c = q->ctrl;
    for (;;) {
        uint64_t rel = atomic_load_explicit(&c->release, SEQ);
        if (rel >= target)
            break;
        if (rel & 15)
            return FQ_ECORRUPT;
        fq_rec *r = fq_rec_at(q, rel);
        uint64_t w = atomic_load_explicit(&r->word, ACQ);
        if (!fq_match(q, rel, w)) {
            if (atomic_load_explicit(&c->release, SEQ) != rel)
                continue;
            return rel < atomic_load_explicit(&c->tail, SEQ) ? FQ_FULL : FQ_ECORRUPT;
        }
        unsigned st = w & 7;
        if (st == FQ_REC_WRITING)
            return FQ_FULL;
        uint64_t span = fq_span(q, rel, w, r->len);
        if (!span)
            return atomic_load_explicit(&c->release, SEQ) != rel ? FQ_FULL : FQ_ECORRUPT;
        /* seq_cst: a reader that copied bytes we overwrite afterwards sees
         * the new release in its check (fq_sub_intact) */
        atomic_compare_exchange_strong_explicit(&c->release, &rel, rel + span, SEQ, RLX);
    }
    /* order the eviction before our writes into the evicted bytes: pairs
     * with the acquire fence of a reader's fq_released_past */
    atomic_thread_fence(memory_order_release);
    return FQ_OK;
}

/* fq_wait's condition for a publisher (need: the payload bytes of one
 * record, fq_put_need for a batch: then the batch's exact ring bytes) */
int fq_topic_space_ready(fq_queue *q, uint64_t need)
{
    fq_ctrl *c = q->ctrl;
    uint64_t t = atomic_load_explicit(&c->tail, SEQ);
    if (q->drop) {
        /* evictable: the oldest record is finished (a claim without its
         * headers yet, or WRITING, is woken for by its commit or recovery) */
        uint64_t rel = atomic_load_explicit(&c->release, SEQ);
        fq_rec *r = fq_rec_at(q, rel);
        uint64_t w = atomic_load_explicit(&r->word, ACQ);
        if (rel == t || (rel & 15) || rel > t)
            return 1; /* empty, or corrupt: the put reports it */
        return fq_match(q, rel, w) && (w & 7) != FQ_REC_WRITING;
    }
    need = fq_rec_size(need + q->prefix);
    if (need > q->cap / 2)
        need = q->cap / 2;
    uint64_t idx = t & q->mask;
    uint64_t span = idx + need > q->cap ? q->cap - idx + need : need;
    return t + span - fq_topic_release(q) <= q->cap;
}

/* fq_wait's condition for a subscriber waiting at pos */
int fq_topic_data_ready(fq_queue *q, uint64_t pos)
{
    fq_ctrl *c = q->ctrl;
    if (q->drop && pos < atomic_load_explicit(&c->release, SEQ))
        return 1; /* lapped: move on */
    /* nothing claimed at pos yet: poll tail (one store per publish), not
     * the record the publisher is about to write (several stores) */
    if (atomic_load_explicit(&c->tail, SEQ) <= pos)
        return 0;
    uint64_t w = atomic_load_explicit(&fq_rec_at(q, pos)->word, SEQ);
    if (!fq_match(q, pos, w))
        return 0;
    unsigned st = w & 7;
    return st == FQ_REC_COMMITTED || st == FQ_REC_SKIP || st == FQ_REC_ABANDONED;
}

/* fq_wait's quiet rules for a topic (see fq_wait.c, "Sleeping without a
 * timer"): may a waiter sleep without a recovery slice?  Nothing is in
 * flight that a dead process could leave stalled: no put between its
 * intent and its commit (a killed publisher's region waits for recovery),
 * no member claim, CLAIMING or WON (a killed member's becomes an orphan for
 * its group and holds release back), no orphan.  A put claims tail and a
 * member claims its group's head with a seq_cst CAS, then calls
 * fq_wake_quiet: either it sees the sleeper's quiet bit, or these seq_cst
 * loads (after the sleeper's RMW of that bit) see its intent. */
static int fq_topic_in_flight(fq_queue *q)
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
    uint32_t hwm = fq_hwm(q);
    for (uint32_t i = 0; i < hwm; i++) {
        fq_member *e = &q->members[i];
        unsigned k = FQ_SLOT_KIND(atomic_load_explicit(&e->word, SEQ));
        if (k == FQ_MEM_ORPHAN)
            return 1;
        unsigned ph = atomic_load_explicit(&e->state, SEQ) & 3;
        if (k == FQ_MEM_ACTIVE && (ph == FQ_PH_CLAIMING || ph == FQ_PH_WON))
            return 1;
    }
    return 0;
}

/* A subscriber: nothing in flight.  (A member of its group killed without a
 * claim leaves nothing to take over: the group's head is where it was.) */
int fq_topic_data_quiet(fq_queue *q)
{
    return !fq_topic_in_flight(q);
}

/* A publisher waiting for room: nothing in flight, and, in a block topic,
 * no group that lags behind tail (and so may hold release back) can go
 * away when a process dies: a non-durable group is freed by recovery once
 * its last member is found dead, so only a durable one may lag (or one
 * still being made).  What moves release then wakes us: a member's claim
 * (fq_wake_quiet), fq_unsubscribe and fq_topic_forget (fq_wake). */
int fq_topic_space_quiet(fq_queue *q)
{
    if (fq_topic_in_flight(q))
        return 0;
    if (q->drop)
        return 1; /* a publisher evicts: it waits only for a put in flight */
    uint64_t t = atomic_load_explicit(&q->ctrl->tail, SEQ);
    uint32_t hwm = fq_hwm(q);
    for (uint32_t gi = 0; gi < hwm && gi < q->nsubs; gi++) {
        fq_group *g = &q->groups[gi];
        uint64_t gw = atomic_load_explicit(&g->word, SEQ);
        if ((gw & 0xff) != FQ_GRP_ACTIVE)
            continue;
        unsigned fl = (unsigned)(gw >> 8) & 0xff;
        if ((fl & FQ_GRP_INIT) || (!(fl & FQ_GRP_DURABLE) && fq_head_read(g).pos < t))
            return 0;
    }
    return 1;
}

/* ---- the tables (under the segment lock) ------------------------------ */

/* Has the owner of an ACTIVE member left (fq_layout.h: owner, slot)?  seen:
 * as in fq_slot_alive (a table operation probes each process once). */
static int fq_member_dead(fq_queue *q, fq_member *e, signed char *seen)
{
    uint32_t s = atomic_load(&e->slot);
    uint64_t owner = atomic_load(&e->owner);
    if (s >= q->nslots || atomic_load(&q->slots[s].word) != owner)
        return 1; /* its handle closed, or recovery freed its slot */
    return !fq_slot_alive(q, s, owner, seen);
}

static int fq_group_has_members(fq_queue *q, uint32_t gi)
{
    uint32_t hwm = fq_hwm(q);
    for (uint32_t i = 0; i < hwm; i++) {
        fq_member *e = &q->members[i];
        if (FQ_SLOT_KIND(atomic_load(&e->word)) == FQ_MEM_ACTIVE && atomic_load(&e->group) == gi)
            return 1;
    }
    return 0;
}

/* Free a non-durable group nobody belongs to, with its orphans. */
static int fq_group_gc(fq_queue *q, uint32_t gi)
{
    fq_group *g = &q->groups[gi];
    uint64_t gw = atomic_load(&g->word);
    if ((gw & 0xff) != FQ_GRP_ACTIVE)
        return 0;
    /* a group left half-made by a subscriber killed inside fq_subscribe
     * (under the lock, so whoever sees it now holds the lock after it) */
    int half_made = ((gw >> 8) & FQ_GRP_INIT) != 0;
    if (!half_made && (((gw >> 8) & FQ_GRP_DURABLE) || fq_group_has_members(q, gi)))
        return 0;
    uint32_t hwm = fq_hwm(q);
    for (uint32_t i = 0; i < hwm; i++) {
        fq_member *e = &q->members[i];
        uint64_t w = atomic_load(&e->word);
        if (FQ_SLOT_KIND(w) == FQ_MEM_ORPHAN && atomic_load(&e->group) == gi)
            atomic_store(&e->word, FQ_SLOT_WORD(FQ_MEM_FREE, FQ_SLOT_GEN(w), 0));
    }
    atomic_store(&g->word, FQ_GRP_FREE);
    return 1;
}

/* Leave member entry i (dead or closing): its claim, if it holds one, stays
 * as an orphan for the group. */
static void fq_member_leave(fq_queue *q, uint32_t i, int dead)
{
    fq_member *e = &q->members[i];
    uint64_t w = atomic_load(&e->word);
    uint32_t gi = atomic_load(&e->group);
    if (gi >= q->nsubs) {
        atomic_store(&e->word, FQ_SLOT_WORD(FQ_MEM_FREE, FQ_SLOT_GEN(w), 0));
        return;
    }
    fq_group *g = &q->groups[gi];
    /* the head before the state: see the top of this file */
    fq_head H = fq_head_read(g);
    uint64_t st = atomic_load(&e->state);
    if (dead && (st & 3) == FQ_PH_CLAIMING) {
        if (H.by == i + 1 && H.pos == atomic_load(&e->end))
            atomic_compare_exchange_strong(&e->state, &st, (st & ~(uint64_t)3) | FQ_PH_WON);
        st = atomic_load(&e->state);
        if ((st & 3) == FQ_PH_CLAIMING) /* it lost its CAS: nothing claimed */
            atomic_store(&e->state, st & ~(uint64_t)3);
        FQ_CRASH_POINT("topic_reap_claiming");
    }
    if ((atomic_load(&e->state) & 3) == FQ_PH_WON) {
        atomic_fetch_add(&g->orphans, 1); /* the hint first: too high costs a look */
        atomic_store(&e->word, FQ_SLOT_WORD(FQ_MEM_ORPHAN, FQ_SLOT_GEN(w), 0));
    } else {
        atomic_store(&e->word, FQ_SLOT_WORD(FQ_MEM_FREE, FQ_SLOT_GEN(w), 0));
    }
    fq_group_gc(q, gi);
}

/* Under the lock: members whose process died leave; empty groups go. */
int fq_topic_reap(fq_queue *q)
{
    int changed = 0;
    uint32_t hwm = fq_hwm(q);
    signed char seen[FQ_MAX_SLOTS];
    memset(seen, 0, q->nslots);
    for (uint32_t i = 0; i < hwm; i++) {
        fq_member *e = &q->members[i];
        uint64_t w = atomic_load(&e->word);
        if (FQ_SLOT_KIND(w) == FQ_MEM_ACTIVE && fq_member_dead(q, e, seen)) {
            fq_member_leave(q, i, 1);
            changed = 1;
        }
    }
    /* A taker killed in fq_take_orphan between covering an orphan's claim
     * and freeing it leaves two entries with the same claim: keep one.
     * (Claims of one group never overlap otherwise: each range of the head
     * is claimed once.) */
    for (uint32_t i = 0; i < hwm; i++) {
        fq_member *e = &q->members[i];
        uint64_t w = atomic_load(&e->word);
        if (FQ_SLOT_KIND(w) != FQ_MEM_ORPHAN)
            continue;
        uint32_t gi = atomic_load(&e->group);
        uint64_t pos = atomic_load(&e->pos), end = atomic_load(&e->end);
        for (uint32_t j = 0; j < hwm; j++) {
            fq_member *o = &q->members[j];
            unsigned k = FQ_SLOT_KIND(atomic_load(&o->word));
            /* only against another orphan: a live member's CLAIMING intent
             * for the same range may be about to lose its CAS */
            if (j == i || k != FQ_MEM_ORPHAN ||
                atomic_load(&o->group) != gi || (atomic_load(&o->state) & 3) != FQ_PH_WON ||
                atomic_load(&o->pos) != pos || atomic_load(&o->end) != end)
                continue;
            atomic_store(&e->word, FQ_SLOT_WORD(FQ_MEM_FREE, FQ_SLOT_GEN(w), 0));
            changed = 1;
            break;
        }
    }
    for (uint32_t gi = 0; gi < hwm; gi++)
        changed |= fq_group_gc(q, gi); /* e.g. a subscriber killed mid-subscribe */
    if (changed) {
        atomic_fetch_add(&q->ctrl->space_seq, 1);
        atomic_fetch_add(&q->ctrl->data_seq, 1);
        fq_wake(q, -1);
    }
    return changed;
}

/* tail and published, consistent: both move in one CAS and published only
 * grows, so an unchanged published brackets the load of tail */
static uint64_t fq_tail_pair(fq_queue *q, uint64_t *cnt)
{
    uint64_t c1, c2, t;
    do {
        c1 = atomic_load(&q->ctrl->published);
        t = atomic_load(&q->ctrl->tail);
        c2 = atomic_load(&q->ctrl->published);
    } while (c1 != c2);
    *cnt = c1;
    return t;
}

/* Is a live publisher's put writing the region at x, below tail t (its
 * header at x comes last)?  Its intent names x from before its tail CAS
 * until it committed; a dead publisher's region waits for recovery. */
static int fq_put_writing(fq_queue *q, uint64_t x, uint64_t t)
{
    for (uint32_t sl = 0; sl < q->nslots; sl++) {
        uint64_t w = atomic_load(&q->slots[sl].word);
        if (FQ_SLOT_KIND(w) == FQ_SLOT_FREE)
            continue;
        for (unsigned l = 0; l < FQ_LANES; l++) {
            fq_intent *in = &q->slots[sl].lane[l].prod;
            unsigned ph = atomic_load(&in->state) & 3;
            if ((ph == FQ_PH_CLAIMING || ph == FQ_PH_WON) && atomic_load(&in->pos) == x &&
                atomic_load(&in->end) > x && atomic_load(&in->end) <= t)
                return fq_slot_alive(q, sl, w, NULL);
        }
    }
    return 0;
}

/*
 * The index of the first message at or after pos (the count at tail if no
 * message is there yet), or UINT64_MAX if it cannot be known: release passed
 * pos meanwhile (the caller may look again from the new release), a region
 * without a header that no live publisher is writing (a killed one's, until
 * recovery) or one still being written after the wait below, or an
 * impossible record.  A WRITING or COMMITTED record must hold its whole
 * index prefix, as the read path requires (fq_sub_begin): fq_span then keeps
 * the prefix inside the ring.  The walk is bounded by the ring, not by a
 * count of records: any number of SKIP or ABANDONED records may come first.
 */
static uint64_t fq_first_index(fq_queue *q, uint64_t pos)
{
    fq_ctrl *c = q->ctrl;
    uint64_t start = pos;
    long wait_ns = 0;
    while (pos - start < q->cap) {
        uint64_t cnt, t = fq_tail_pair(q, &cnt);
        if (pos >= t)
            return pos == t ? cnt : UINT64_MAX;
        fq_rec *r = fq_rec_at(q, pos);
        uint64_t w = atomic_load_explicit(&r->word, ACQ);
        if (!fq_match(q, pos, w)) {
            /* below tail and no header: a live put between its tail CAS
             * and its header (its index is known once the header is
             * there): wait for it, with a bounded backoff (about 1 s in
             * all: its publisher may be stopped); else give up (overwritten:
             * release moved; a dead publisher's; a corrupt segment) */
            if (atomic_load(&c->release) > start || wait_ns >= 1000000000L ||
                !fq_put_writing(q, pos, t))
                return UINT64_MAX;
            FQ_CRASH_POINT("first_index_unwritten");
            long step = wait_ns < 1000 ? 1000 : wait_ns < 1000000 ? wait_ns : 1000000;
            struct timespec ts = {0, step};
            nanosleep(&ts, NULL);
            wait_ns += step;
            continue;
        }
        uint32_t len = r->len;
        uint64_t span = fq_span(q, pos, w, len);
        if (!span)
            return UINT64_MAX;
        unsigned st = w & 7;
        if (st == FQ_REC_WRITING || st == FQ_REC_COMMITTED) {
            if (len < q->prefix)
                return UINT64_MAX; /* no room for its index: a corrupt record */
            uint64_t idx = fq_rec_index(r);
            if (fq_released_past(q, start))
                return UINT64_MAX; /* overwritten meanwhile */
            return idx;
        }
        pos += span;
    }
    return UINT64_MAX; /* a lap from start: release moved past it */
}

int fq_subscribe(fq_queue *q, const char *name, int kind, int start, fq_sub **out, char *err,
                 size_t errlen)
{
    if (!q->topic)
        return fq_err(err, errlen, -EINVAL, "not a topic");
    int must_exist = (kind & FQ_SUB_MUST_EXIST) != 0;
    kind &= ~FQ_SUB_MUST_EXIST;
    uint32_t flags = kind == FQ_SUB_DURABLE ? FQ_GRP_DURABLE
                     : kind == FQ_SUB_GROUP ? FQ_GRP_GROUP
                                            : FQ_GRP_ANON;
    size_t nlen = strlen(name);
    if (nlen == 0 || nlen >= FQ_GROUP_NAME)
        return fq_err(err, errlen, -EINVAL, "a subscription name is 1 to %d bytes, not %zu",
                       FQ_GROUP_NAME - 1, nlen);
    int rc = fq_attach(q); /* a slot: we sleep on the segment's futex words */
    if (rc)
        return rc == FQ_ENOSLOT
                   ? fq_err(err, errlen, FQ_ENOSLOT,
                             "every one of the topic's %u process slots is taken by a live "
                             "process (create it with a larger max_processes)", q->nslots)
                   : rc;
    fq_sub *s = calloc(1, sizeof *s);
    if (!s)
        return -ENOMEM;
    fq_ctrl *c = q->ctrl;
    rc = fq_lock_wait(q);
    if (rc) {
        free(s);
        return fq_err(err, errlen, rc, "cannot lock the topic: %s", strerror(-rc));
    }
    FQ_CRASH_POINT("subscribe_after_lock");
    fq_topic_reap(q);
    uint32_t hwm = fq_hwm(q), gi = UINT32_MAX, mi = UINT32_MAX;
    for (uint32_t i = 0; i < hwm && gi == UINT32_MAX; i++) {
        fq_group *g = &q->groups[i];
        uint64_t gw = atomic_load(&g->word);
        if ((gw & 0xff) == FQ_GRP_ACTIVE && ((gw >> 8) & 0xff) == flags &&
            strncmp(g->name, name, FQ_GROUP_NAME) == 0)
            gi = i;
    }
    if (gi == UINT32_MAX && must_exist) {
        rc = fq_err(err, errlen, -ENOENT, "subscription group %s no longer exists", name);
        goto fail;
    }
    if (gi != UINT32_MAX && q->drop) {
        for (uint32_t i = 0; i < hwm; i++) {
            fq_member *e = &q->members[i];
            uint64_t w = atomic_load(&e->word);
            if (FQ_SLOT_KIND(w) == FQ_MEM_ACTIVE && atomic_load(&e->group) == gi) {
                rc = fq_err(err, errlen, FQ_EINUSE,
                             "subscription %s is attached (pid %d); a topic with "
                             "overflow=\"drop\" has one subscriber per name",
                             name, FQ_SLOT_PID(w));
                goto fail;
            }
        }
    }
    for (uint32_t i = 0; i < q->nsubs && mi == UINT32_MAX; i++)
        if (FQ_SLOT_KIND(atomic_load(&q->members[i].word)) == FQ_MEM_FREE)
            mi = i;
    uint32_t ng = gi;
    for (uint32_t i = 0; i < q->nsubs && ng == UINT32_MAX; i++)
        if ((atomic_load(&q->groups[i].word) & 0xff) == FQ_GRP_FREE)
            ng = i;
    if (mi == UINT32_MAX || ng == UINT32_MAX) {
        rc = fq_err(err, errlen, FQ_ENOSUB,
                     "the topic's %u subscriber entries are all taken (by live subscribers, "
                     "durable subscriptions or their unfinished messages); create the topic "
                     "with a larger max_subscribers", q->nsubs);
        goto fail;
    }
    uint32_t top = (mi > ng ? mi : ng) + 1;
    if (top > hwm) /* before either entry is used: scans must reach them */
        atomic_store(&c->subs_hwm, top);
    if (gi == UINT32_MAX) {
        gi = ng;
        fq_group *g = &q->groups[gi];
        memset(g->name, 0, sizeof g->name);
        memcpy(g->name, name, nlen);
        atomic_store(&g->next_idx, UINT64_MAX);
        atomic_store(&g->dropped, 0);
        atomic_store(&g->orphans, 0);
        atomic_store(&g->filter, 0); /* a freed entry's key is not ours */
        /* visible at release first: no publisher passes it while we look
         * for where to start (see the top of this file) */
        fq_head_store(g, atomic_load(&c->release));
        atomic_store(&g->word, FQ_GRP_ACTIVE | (uint64_t)(flags | FQ_GRP_INIT) << 8);
        FQ_CRASH_POINT("subscribe_group_visible");
        /* bump the epoch (block): a publisher whose scan missed the group
         * either moved release before this (we see it below) or fails its
         * CAS and scans again (it then sees the group at its first head) */
        fq_bump_epoch(q);
        uint64_t pos, idx;
        if (start == FQ_START_EARLIEST) {
            /* a drop topic's publishers may evict what we look at: look
             * again from the new release, or the first read could not
             * count what was lost before it (an unknown start counts
             * nothing).  Only a moving release makes us look again. */
            do {
                pos = atomic_load(&c->release);
                FQ_CRASH_POINT("subscribe_earliest_look");
                idx = fq_first_index(q, pos);
            } while (idx == UINT64_MAX && atomic_load(&c->release) != pos);
        } else {
            pos = fq_tail_pair(q, &idx);
        }
        atomic_store(&g->next_idx, idx);
        fq_head_store(g, pos);
        atomic_store(&g->word, FQ_GRP_ACTIVE | (uint64_t)flags << 8); /* made */
    }
    else {
        /* a group with no member left (durable: it outlives them): its key
         * was its last members'; the members joining now state theirs
         * (review 11, F3).  An orphan counts: its claim was filtered by
         * the old key. */
        int members = 0;
        for (uint32_t i = 0; i < hwm && !members; i++) {
            unsigned k = FQ_SLOT_KIND(atomic_load(&q->members[i].word));
            members = (k == FQ_MEM_ACTIVE || k == FQ_MEM_ORPHAN) &&
                      atomic_load(&q->members[i].group) == gi;
        }
        if (!members)
            atomic_store(&q->groups[gi].filter, 0);
    }
    fq_member *e = &q->members[mi];
    uint64_t ow = atomic_load(&e->word);
    int me = atomic_load(&q->slot); /* taken by fq_attach above */
    atomic_store(&e->owner, atomic_load(&q->slots[me].word));
    atomic_store(&e->slot, (uint32_t)me);
    atomic_store(&e->group, gi);
    atomic_store(&e->held, 0);
    atomic_store(&e->pos, 0);
    atomic_store(&e->end, 0);
    atomic_store(&e->n, 0);
    atomic_store(&e->state, atomic_load(&e->state) & ~(uint64_t)3);
    atomic_store(&e->got, 0);
    uint64_t w = FQ_SLOT_WORD(FQ_MEM_ACTIVE, FQ_SLOT_GEN(ow) + 1, getpid());
    atomic_store(&e->word, w);
    FQ_CRASH_POINT("subscribe_before_unlock");
    fq_topic_unlock(q);
    s->q = q;
    s->m = mi;
    s->g = gi;
    s->epoch = atomic_load(&fq_fork_epoch);
    s->word = w;
    *out = s;
    return FQ_OK;
fail:
    fq_topic_unlock(q);
    free(s);
    return rc;
}

void fq_unsubscribe(fq_sub *s)
{
    if (!s)
        return;
    fq_queue *q = s->q;
    if (atomic_load(&fq_fork_epoch) != s->epoch) { /* a forked child's copy */
        free(s);
        return;
    }
    if (fq_lock_wait(q) == 0) { /* else (cannot lock) left to recovery */
        fq_topic_reap(q); /* as everywhere the lock is taken: repair first */
        if (atomic_load(&q->members[s->m].word) == s->word)
            fq_member_leave(q, s->m, 0);
        fq_topic_unlock(q);
    }
    atomic_fetch_add(&q->ctrl->space_seq, 1);
    fq_wake(q, -1);
    free(s);
}

int fq_topic_forget(fq_queue *q, const char *name)
{
    if (!q->topic)
        return -EINVAL;
    int rc = fq_lock_wait(q);
    if (rc)
        return rc;
    fq_topic_reap(q);
    rc = -ENOENT;
    uint32_t hwm = fq_hwm(q);
    for (uint32_t gi = 0; gi < hwm; gi++) {
        fq_group *g = &q->groups[gi];
        uint64_t gw = atomic_load(&g->word);
        if ((gw & 0xff) != FQ_GRP_ACTIVE || ((gw >> 8) & 0xff) != FQ_GRP_DURABLE ||
            strncmp(g->name, name, FQ_GROUP_NAME) != 0)
            continue;
        if (fq_group_has_members(q, gi)) {
            rc = FQ_EINUSE;
            break;
        }
        /* as a non-durable group without members: it goes, orphans too */
        atomic_store(&g->word, FQ_GRP_ACTIVE | (uint64_t)FQ_GRP_GROUP << 8);
        fq_group_gc(q, gi);
        rc = FQ_OK;
        break;
    }
    fq_topic_unlock(q);
    if (rc == FQ_OK) {
        atomic_fetch_add(&q->ctrl->space_seq, 1);
        fq_wake(q, FQ_WAIT_SPACE);
    }
    return rc;
}

/* ---- reading --------------------------------------------------------- */

/* A member CLAIMING a claim that ends at end (the head names it): help it
 * to WON before moving the head past it (see the top of this file). */
static void fq_help(fq_queue *q, uint32_t mi, uint32_t gi, uint64_t end)
{
    if (mi >= q->nsubs)
        return;
    fq_member *o = &q->members[mi];
    uint64_t st = atomic_load_explicit(&o->state, SEQ);
    if ((st & 3) != FQ_PH_CLAIMING || atomic_load_explicit(&o->end, SEQ) != end)
        return;
    /* the entry may have been reused by a member of another group whose
     * claim happens to end there: only a member of our group claims from
     * our head (and a newcomer of our group claims past the head it names) */
    if (FQ_SLOT_KIND(atomic_load_explicit(&o->word, SEQ)) != FQ_MEM_ACTIVE ||
        atomic_load_explicit(&o->group, SEQ) != gi)
        return;
    if (atomic_load_explicit(&o->state, SEQ) != st)
        return;
    atomic_compare_exchange_strong_explicit(&o->state, &st, (st & ~(uint64_t)3) | FQ_PH_WON, SEQ,
                                            RLX);
}

static void fq_fill_claim(fq_queue *q, fq_claim *c, uint64_t pos, uint64_t end, uint64_t n,
                          uint64_t first_off, int redelivered, uint32_t attempt)
{
    c->attempt = attempt;
    c->pos = pos;
    c->end = end;
    c->n = n;
    c->cursor = pos + first_off;
    c->first_off = (uint32_t)first_off;
    c->lane = 0;
    c->taken = 0;
    c->redelivered = (uint32_t)redelivered;
    c->count = 0;
    c->idx = 0;
    c->msg_pos = 0;
    c->msg_idx = 0;
    c->kept = 0;
    c->count = 0;
}

/*
 * After shutdown, with the group's head at tail: is nothing left for the
 * group that could still come back?  A claim held by another member goes
 * back to the group if that member dies or closes (an orphan, taken by the
 * next member); claims of the caller's own process do not count (it holds
 * them itself).  0: report Empty and wait (recovery runs meanwhile).
 */
static int fq_group_drained(fq_sub *s)
{
    fq_queue *q = s->q;
    if (atomic_load(&q->groups[s->g].orphans))
        return 0;
    int32_t pid = (int32_t)getpid();
    uint32_t hwm = fq_hwm(q);
    for (uint32_t i = 0; i < hwm; i++) {
        fq_member *e = &q->members[i];
        uint64_t w = atomic_load(&e->word);
        unsigned kind = FQ_SLOT_KIND(w);
        if ((kind != FQ_MEM_ACTIVE && kind != FQ_MEM_ORPHAN) || atomic_load(&e->group) != s->g)
            continue;
        if (kind == FQ_MEM_ORPHAN ||
            ((atomic_load(&e->state) & 3) != FQ_PH_IDLE && FQ_SLOT_PID(w) != pid))
            return 0;
    }
    return 1;
}

/* Take over a claim a dead (or departed) member of our group left: FQ_OK,
 * FQ_EMPTY (none left), or -errno if this handle cannot take the segment lock
 * (then nothing is changed: the caller must not claim past the orphan). */
static int fq_take_orphan(fq_sub *s, fq_claim *c)
{
    fq_queue *q = s->q;
    fq_group *g = &q->groups[s->g];
    fq_member *me = &q->members[s->m];
    /* wait for the lock (its holders do short work): giving up would let
     * the caller claim past the orphan from the head, and count the
     * orphan's messages as lost (drop) or report ShutDown without them */
    int rc = fq_lock_wait(q);
    if (rc)
        return rc; /* not held: nothing to drop */
    /* the lock may have been taken from a holder killed mid-change (a taker
     * killed between covering an orphan and freeing it): repair first */
    fq_topic_reap(q);
    uint32_t hwm = fq_hwm(q);
    for (uint32_t i = 0; i < hwm; i++) {
        fq_member *e = &q->members[i];
        uint64_t w = atomic_load(&e->word);
        if (FQ_SLOT_KIND(w) != FQ_MEM_ORPHAN || atomic_load(&e->group) != s->g)
            continue;
        uint64_t pos = atomic_load(&e->pos), end = atomic_load(&e->end), n = atomic_load(&e->n);
        /* delivered once more than the orphan's count says, unless it was
         * given back already (a count only: saturating, whatever it holds) */
        uint32_t again = atomic_load(&e->again);
        if (again & FQ_AGAIN_COUNTED) /* a claim it held (nacked) counted itself */
            again &= ~FQ_AGAIN_COUNTED;
        else
            again += again < FQ_AGAIN_MAX;
        atomic_store(&me->again, again);
        /* cover the claim with ours before the orphan stops covering it */
        uint64_t seq = (atomic_load(&me->state) >> 2) + 1;
        atomic_store(&me->pos, pos);
        atomic_store(&me->end, end);
        atomic_store(&me->n, n);
        atomic_store(&me->state, seq << 2 | FQ_PH_WON);
        FQ_CRASH_POINT("take_orphan_covered");
        /* a publisher scanning the members in index order could see neither
         * entry cover the claim (ours before we covered, the orphan's after
         * it is freed): its scan began before this bump, so its CAS fails */
        fq_bump_epoch(q);
        atomic_store(&e->word, FQ_SLOT_WORD(FQ_MEM_FREE, FQ_SLOT_GEN(w), 0));
        uint64_t h = atomic_load(&g->orphans);
        while (h && !atomic_compare_exchange_weak(&g->orphans, &h, h - 1))
            ;
        fq_topic_unlock(q);
        fq_fill_claim(q, c, pos, end, n, 0, 1, again + 1);
        return FQ_OK;
    }
    atomic_store(&g->orphans, 0); /* a stale hint: nothing is left */
    fq_topic_unlock(q);
    return FQ_EMPTY;
}

int fq_sub_begin(fq_sub *s, size_t max_n, uint64_t max_bytes, fq_claim *c)
{
    fq_queue *q = s->q;
    fq_ctrl *ctl = q->ctrl;
    uint32_t state = atomic_load_explicit(&ctl->state, ACQ);
    if (state & FQ_STATE_IMMEDIATE)
        return FQ_SHUTDOWN;
    fq_member *me = &q->members[s->m];
    fq_group *g = &q->groups[s->g];
    if (atomic_load_explicit(&fq_fork_epoch, RLX) != s->epoch)
        return FQ_EFORKED; /* the entry belongs to the process we were forked from */
    if (atomic_load_explicit(&me->word, RLX) != s->word)
        return FQ_ELOST;
    if (s->held) {
        *c = s->hold;
        c->cursor = c->pos + c->first_off;
        c->redelivered = s->held == 2 || c->redelivered;
        c->kept = 0;
        c->count = 0;
        s->held = 0;
        atomic_store_explicit(&me->held, 0, RLX); /* in flight again */
        /* in flight: again counts the deliveries before this one */
        atomic_store_explicit(&me->again,
                              atomic_load_explicit(&me->again, RLX) & ~FQ_AGAIN_COUNTED, RLX);
        return FQ_OK;
    }
    if ((atomic_load_explicit(&me->state, RLX) & 3) != FQ_PH_IDLE)
        return -EBUSY; /* a claim is open: one at a time */
    if (max_n == 0)
        max_n = 1;
    if (atomic_load_explicit(&g->orphans, RLX)) {
        int rc = fq_take_orphan(s, c);
        if (rc != FQ_EMPTY)
            return rc; /* taken, or an error (never claim past an orphan) */
    }
    uint32_t myid = s->m + 1;
    /* a fresh claim: delivered for the first time (before it is claimed, so
     * that whoever takes it over from us reads this count) */
    atomic_store_explicit(&me->again, 0, RLX);
    for (;;) {
        fq_head H = fq_head_read(g);
        uint64_t h = H.pos;
        if (q->drop) {
            uint64_t rel = atomic_load_explicit(&ctl->release, ACQ);
            if (rel & 15)
                return FQ_ECORRUPT;
            if (h < rel) {
                /* lapped: go on from the oldest record retained (drops are
                 * counted from the message indices in fq_sub_end) */
                fq_head_cas(g, &H, rel, myid);
                continue;
            }
        }
        if (H.by && H.by != myid && H.by <= q->nsubs)
            fq_help(q, (uint32_t)(H.by - 1), s->g, h);
        uint64_t p = h, n = 0, bytes = 0, first_off = 0;
        int lapped = 0;
        while (n < max_n && p - h < q->cap) {
            fq_rec *r = fq_rec_at(q, p);
            uint64_t w = atomic_load_explicit(&r->word, ACQ);
            if (!fq_match(q, p, w))
                break; /* not written yet (or, if lapped, overwritten) */
            unsigned st = w & 7;
            if (st != FQ_REC_COMMITTED && st != FQ_REC_SKIP && st != FQ_REC_ABANDONED)
                break;
            uint32_t len = r->len;
            uint64_t span = fq_span(q, p, w, len);
            if (!span || (st == FQ_REC_COMMITTED && len < q->prefix)) {
                lapped = 1; /* overwritten under us, or a corrupt record */
                break;
            }
            if (st == FQ_REC_COMMITTED) {
                uint64_t plen = len - q->prefix;
                if (n && bytes + plen > max_bytes)
                    break;
                if (!n)
                    first_off = p - h;
                n++;
                bytes += plen;
            }
            p += span;
        }
        if (q->drop && p != h) {
            /* a record overwritten while we walked could have given us a
             * garbage length, and a head off the record boundaries: trust
             * the walk only if release is still at or below where it began */
            if (fq_released_past(q, h))
                continue;
        }
        if (p == h) {
            /* nothing: caught up, or h is no longer in the ring (lapped in a
             * drop topic; only a corrupt segment in a block topic) */
            uint64_t t = atomic_load_explicit(&ctl->tail, SEQ);
            uint64_t rel = atomic_load_explicit(&ctl->release, SEQ);
            if (atomic_load_explicit(&g->head, SEQ) != h)
                continue; /* another member moved it */
            if (h < rel && q->drop)
                continue; /* lapped: the drop check above moves us on */
            if (h < rel || h > t || lapped)
                return FQ_ECORRUPT; /* an impossible head or record */
            if ((state & FQ_STATE_SHUTDOWN) && t == h && fq_group_drained(s))
                return FQ_SHUTDOWN;
            return FQ_EMPTY;
        }
        uint64_t seq = (atomic_load_explicit(&me->state, RLX) >> 2) + 1;
        atomic_store_explicit(&me->pos, h, RLX);
        atomic_store_explicit(&me->end, p, RLX);
        atomic_store_explicit(&me->n, n, RLX);
        /* release, then the head CAS (seq_cst, so a release too): a
         * publisher or helper whose acquire load sees the new head sees
         * this claim */
        atomic_store_explicit(&me->state, seq << 2 | FQ_PH_CLAIMING, REL);
        FQ_CRASH_POINT("sub_after_intent");
        if (!fq_head_cas(g, &H, p, myid)) {
            atomic_store_explicit(&me->state, seq << 2 | FQ_PH_IDLE, REL);
            continue;
        }
        fq_wake_quiet(q); /* after the seq_cst claim: see fq_topic_in_flight */
        FQ_CRASH_POINT("sub_after_claim");
        /* a helper may have stored WON already: the same value */
        atomic_store_explicit(&me->state, seq << 2 | FQ_PH_WON, REL);
        /* time in queue, per group: a fresh claim's first delivery */
        if (n && fq_sample_at(q, h, p))
            fq_sample_note(q, 1, (uint64_t)(s->g + 1) << FQ_SAMPLE_GROUP_SHIFT |
                                     (((p - 1) >> q->sample_shift) + 1));
        if (n == 0) { /* padding or abandoned records only: done with it */
            if (q->drop) {
                fq_fill_claim(q, c, h, p, 0, 0, 0, 1);
                const void *d;
                uint64_t l;
                while (fq_sub_next(s, c, &d, &l))
                    ;
                fq_sub_account(s, c);
            }
            atomic_store_explicit(&me->state, seq << 2 | FQ_PH_IDLE, REL);
            if (!q->drop) /* the head moved: release may move with it */
                fq_wake(q, FQ_WAIT_SPACE);
            continue;
        }
        fq_fill_claim(q, c, h, p, n, first_off, 0, 1);
        return FQ_OK;
    }
}

/* A drop topic counts as dropped only what lapping lost: a message whose
 * publisher was killed (ABANDONED, its index still in its prefix) is noted
 * as seen, if it was not overwritten meanwhile.  (c->count: such records.) */
static void fq_sub_seen_abandoned(fq_sub *s, fq_claim *c, uint64_t p, fq_rec *r, int region)
{
    fq_queue *q = s->q;
    /* a record: its index; a region recovery replaced (SKIP): how many
     * messages the dead claim held, whose indices follow the previous ones */
    uint64_t v = region ? ((const volatile uint64_t *)(r + 1))[0] : fq_rec_index(r);
    if (fq_released_past(q, p))
        return; /* overwritten meanwhile: counted as lost with the rest */
    if (!region) {
        c->count++;
        c->idx = v; /* records come in index order */
        return;
    }
    if (v == 0 || v > r->len / (2 * FQ_REC_HDR))
        return; /* nothing, or an impossible count */
    if (!c->kept && !c->count) { /* the first of this claim: after the group's last */
        uint64_t next = atomic_load_explicit(&q->groups[s->g].next_idx, RLX);
        if (next == UINT64_MAX)
            return;
        c->idx = next - 1;
    }
    c->count += v;
    c->idx += v;
}

int fq_sub_next(fq_sub *s, fq_claim *c, const void **data, uint64_t *len)
{
    fq_queue *q = s->q;
    while (c->cursor < c->end) {
        uint64_t p = c->cursor;
        fq_rec *r = fq_rec_at(q, p);
        uint64_t w = atomic_load_explicit(&r->word, ACQ);
        uint32_t l = r->len;
        uint64_t span = fq_span(q, p, w, l);
        if (!span || !fq_match(q, p, w)) {
            /* overwritten (drop topic): what is still retained of the claim
             * starts at release, a record boundary; the rest was lost */
            uint64_t rel = atomic_load_explicit(&q->ctrl->release, SEQ);
            if (q->drop && p < rel && rel < c->end && !(rel & 15)) {
                c->cursor = rel;
                continue;
            }
            return 0;
        }
        c->cursor += span;
        if (q->drop && (w & 7) == FQ_REC_ABANDONED && l >= q->prefix)
            fq_sub_seen_abandoned(s, c, p, r, 0);
        if (q->drop && (w & 7) == FQ_REC_SKIP && r->owner == UINT32_MAX &&
            l >= 2 * FQ_REC_HDR && (p & q->mask) + 2 * FQ_REC_HDR <= q->cap)
            fq_sub_seen_abandoned(s, c, p, r, 1);
        if ((w & 7) == FQ_REC_COMMITTED && l >= q->prefix) {
            c->msg_pos = p;
            c->msg_idx = fq_rec_index(r);
            *data = (const uint8_t *)(r + 1) + q->prefix;
            *len = l - q->prefix;
            /* untrusted: within the payload and the bound, else no subject */
            uint64_t sl = ((const uint64_t *)(r + 1))[1];
            c->subject_len = sl <= FQ_MAX_SUBJECT && sl <= *len ? (uint32_t)sl : 0;
            return 1;
        }
    }
    return 0;
}

int fq_sub_intact(fq_sub *s, fq_claim *c)
{
    fq_queue *q = s->q;
    if (q->drop) {
        /* if our copy saw any byte written after an eviction, we see it */
        if (fq_released_past(q, c->msg_pos))
            return 0;
    }
    c->kept++;
    c->idx = c->msg_idx;
    return 1;
}

/* Account the messages of c returned so far (c->kept, the last c->idx). */
static void fq_sub_account(fq_sub *s, fq_claim *c)
{
    fq_queue *q = s->q;
    fq_group *g = &q->groups[s->g];
    if (!c->kept && !c->count)
        return;
    fq_member *me = &q->members[s->m];
    /* only we write our count */
    atomic_store_explicit(&me->got, atomic_load_explicit(&me->got, RLX) + c->kept, RLX);
    if (q->drop) {
        /* a drop topic's group has one member: what lies between our
         * previous message and our last one, and was not returned, was lost */
        uint64_t next = c->idx + 1;
        uint64_t cur = atomic_load_explicit(&g->next_idx, RLX);
        uint64_t seen = c->kept + c->count; /* returned, or abandoned by a dead publisher */
        if (cur != UINT64_MAX && next > cur && next - cur > seen)
            atomic_store_explicit(&g->dropped,
                                  atomic_load_explicit(&g->dropped, RLX) + next - cur - seen,
                                  RLX);
        if (cur == UINT64_MAX || next > cur)
            atomic_store_explicit(&g->next_idx, next, RLX);
    }
    c->kept = 0;
    c->count = 0;
}

void fq_sub_end(fq_sub *s, fq_claim *c)
{
    fq_queue *q = s->q;
    fq_member *me = &q->members[s->m];
    FQ_CRASH_POINT("sub_before_end");
    fq_sub_account(s, c);
    uint64_t st = atomic_load_explicit(&me->state, RLX);
    /* release: our copies are done before a publisher may reuse the bytes */
    atomic_store_explicit(&me->state, st & ~(uint64_t)3, REL);
    fq_wake(q, FQ_WAIT_SPACE);
}

void fq_sub_hold(fq_sub *s, fq_claim *c, uint64_t from, int redelivered)
{
    fq_queue *q = s->q;
    if (from > c->pos) {
        fq_sub_account(s, c); /* what lies before from was returned */
    } else { /* all of it given back: nothing was returned */
        c->kept = 0;
        c->count = 0;
    }
    if (from > c->pos && from <= c->end) {
        /* the messages before from are done: stop covering them */
        fq_member *me = &q->members[s->m];
        uint64_t n = 0;
        for (uint64_t x = from; x < c->end;) { /* what is left (for recovery's n) */
            fq_rec *r = fq_rec_at(q, x);
            uint64_t w = atomic_load_explicit(&r->word, ACQ);
            uint64_t span = fq_span(q, x, w, r->len);
            if (!span || !fq_match(q, x, w))
                break;
            n += (w & 7) == FQ_REC_COMMITTED;
            x += span;
        }
        atomic_store_explicit(&me->n, n, RLX);
        atomic_store_explicit(&me->pos, from, REL);
        c->pos = from;
        c->n = n;
        c->first_off = 0;
        fq_wake(q, FQ_WAIT_SPACE);
    }
    /* For a taker of our claim, again says how often what remains was
     * delivered, COUNTED: in one store, so that a kill on either side of it
     * leaves a count the taker reads right (again and held were two stores,
     * and a kill between them made the taker count one delivery too many;
     * review 11, F5).  The whole claim comes back: delivered once more; a
     * part: what remains was not delivered by this claim. */
    fq_member *mine = &q->members[s->m];
    if (from <= c->pos && c->attempt) {
        uint32_t a = c->attempt < FQ_AGAIN_MAX ? c->attempt : FQ_AGAIN_MAX;
        atomic_store_explicit(&mine->again, a | FQ_AGAIN_COUNTED, REL);
        c->attempt += c->attempt < FQ_AGAIN_MAX;
    } else {
        uint32_t a = atomic_load_explicit(&mine->again, RLX);
        atomic_store_explicit(&mine->again, a | FQ_AGAIN_COUNTED, REL);
    }
    s->held = 1 + (redelivered != 0);
    s->hold = *c;
    /* for lag: given back, to come again (relaxed: statistics only) */
    atomic_store_explicit(&mine->held, 1, RLX);
}

/* A member's readiness rule for fq_wait.c (gi: its group, s->g, ours since
 * fq_subscribe, not read from the segment): a claim another member left
 * to take over, a message at the group's head, or shut down.  Here, not in
 * the wait layer: it knows no discipline.  The orphans hint is part of the
 * rule, loaded after the sleeper bit like the rest (seq_cst): a member
 * that leaves a claim raises the hint (seq_cst RMW) before its fq_wake,
 * whose fence then loads the bits, so either that wake sees our bit or we
 * see the hint; a look at the hint before the wait alone would miss an
 * orphan left in between (a lost wake-up). */
static int fq_sub_ready(fq_queue *q, uint64_t gi)
{
    fq_group *g = &q->groups[gi];
    if (atomic_load_explicit(&g->orphans, SEQ))
        return 1;
    return fq_topic_data_ready(q, atomic_load_explicit(&g->head, SEQ)) ||
           (atomic_load_explicit(&q->ctrl->state, SEQ) & FQ_STATE_SHUTDOWN);
}

void fq_sub_wait(fq_sub *s, uint64_t timeout_ns, int spin)
{
    fq_queue *q = s->q;
    uint64_t t = atomic_load(&q->ctrl->tail);
    uint64_t h = atomic_load(&q->groups[s->g].head);
    if (atomic_load(&q->groups[s->g].orphans))
        return;
    if ((atomic_load(&q->ctrl->state) & FQ_STATE_SHUTDOWN) && h == t && !fq_group_drained(s)) {
        /* shut down, and a claim of another member may still come back:
         * fq_wait would return at once (shut down); poll gently instead */
        struct timespec ts = {0, timeout_ns < 2000000 ? (long)timeout_ns : 2000000};
        nanosleep(&ts, NULL);
        return;
    }
    fq_wait_pred(q, FQ_WAIT_DATA, fq_sub_ready, s->g, NULL, timeout_ns, timeout_ns,
                 spin ? FQ_STRATEGY_ADAPTIVE : FQ_STRATEGY_SLEEP);
}

int fq_sub_spin(fq_sub *s, uint64_t ns)
{
    return fq_spin_pred(s->q, fq_sub_ready, s->g, ns);
}

int fq_sub_wait_for(fq_sub *s, uint64_t slice_ns, uint64_t timeout_ns, int strategy)
{
    fq_queue *q = s->q;
    uint64_t h = atomic_load(&q->groups[s->g].head);
    if (atomic_load(&q->groups[s->g].orphans) ||
        ((atomic_load(&q->ctrl->state) & FQ_STATE_SHUTDOWN) && h == atomic_load(&q->ctrl->tail) &&
         !fq_group_drained(s))) {
        fq_sub_wait(s, slice_ns < timeout_ns ? slice_ns : timeout_ns, 0); /* its rules */
        return 0;
    }
    return fq_wait_pred(q, FQ_WAIT_DATA, fq_sub_ready, s->g, fq_topic_data_quiet, slice_ns,
                        timeout_ns, strategy);
}

int fq_sub_arm(fq_sub *s, int on)
{
    fq_queue *q = s->q;
    if (!on)
        return fq_arm_pred(q, FQ_WAIT_DATA, fq_sub_ready, s->g, NULL, 0);
    /* an orphan to take over counts as ready: fq_sub_ready looks after
     * the bit is up */
    return fq_arm_pred(q, FQ_WAIT_DATA, fq_sub_ready, s->g, fq_topic_data_quiet, 1);
}

/* ---- status ---------------------------------------------------------- */

/* The put that claimed the region at x and has no header there yet (its
 * header at x is written last), in progress or killed before recovery
 * repaired it: the end of the range its intent names, *k its messages; 0 if
 * no intent names [x, end <= t).  A won intent is preferred to one still in
 * its tail CAS (which may have lost it). */
static uint64_t fq_region_put(fq_queue *q, uint64_t x, uint64_t t, uint64_t *k)
{
    uint64_t found = 0;
    for (uint32_t sl = 0; sl < q->nslots; sl++) {
        if (FQ_SLOT_KIND(atomic_load(&q->slots[sl].word)) == FQ_SLOT_FREE)
            continue;
        for (unsigned l = 0; l < FQ_LANES; l++) {
            fq_intent *in = &q->slots[sl].lane[l].prod;
            uint64_t st = atomic_load(&in->state);
            if ((st & 3) == FQ_PH_IDLE)
                continue;
            uint64_t pos = atomic_load(&in->pos), end = atomic_load(&in->end);
            uint64_t n = atomic_load(&in->n);
            /* a message takes at least 32 bytes (header and index prefix) */
            if (pos != x || end <= x || end > t || end - x > q->cap ||
                n > (end - x) / (FQ_REC_HDR + q->prefix) || atomic_load(&in->state) != st)
                continue;
            if (!found || (st & 3) == FQ_PH_WON) {
                found = end;
                *k = n;
            }
            if ((st & 3) == FQ_PH_WON)
                return found;
        }
    }
    return found;
}

/*
 * Messages the group is still to deliver: those from its head on (a put in
 * progress counts, a killed publisher's abandoned ones do not), and those of
 * claims given back to it: by a member that died or closed holding them (an
 * orphan, for another member) or by nack (held for the member's next read).
 * Not those delivered and not yet acknowledged.
 */
static uint64_t fq_group_lag(fq_queue *q, fq_group *g)
{
    uint64_t t = atomic_load(&q->ctrl->tail);
    uint64_t h = atomic_load(&g->head);
    uint64_t rel = atomic_load(&q->ctrl->release);
    if (q->drop && h < rel)
        h = rel; /* lapped: what it lost is not to come */
    /* the claims given back come again: each orphan's messages once (a taker
     * killed mid-take leaves two entries with one claim until the next
     * reap), and each nacked one, unless a drop topic overwrote them */
    uint64_t n = 0;
    uint32_t gi = (uint32_t)(g - q->groups), hwm = fq_hwm(q);
    for (uint32_t i = 0; i < hwm; i++) {
        fq_member *e = &q->members[i];
        unsigned kind = FQ_SLOT_KIND(atomic_load(&e->word));
        if (atomic_load(&e->group) != gi || (atomic_load(&e->state) & 3) != FQ_PH_WON)
            continue;
        if (kind != FQ_MEM_ORPHAN && !(kind == FQ_MEM_ACTIVE && atomic_load(&e->held)))
            continue;
        uint64_t pos = atomic_load(&e->pos), end = atomic_load(&e->end);
        if (pos >= h || (q->drop && pos < rel))
            continue;
        int seen = 0;
        for (uint32_t j = 0; j < i && !seen && kind == FQ_MEM_ORPHAN; j++) {
            fq_member *o = &q->members[j];
            seen = FQ_SLOT_KIND(atomic_load(&o->word)) == FQ_MEM_ORPHAN &&
                   atomic_load(&o->group) == gi &&
                   (atomic_load(&o->state) & 3) == FQ_PH_WON && atomic_load(&o->pos) == pos &&
                   atomic_load(&o->end) == end;
        }
        uint64_t k = atomic_load(&e->n);
        if (!seen && k <= q->cap)
            n += k;
    }
    if (h >= t || t - h > q->cap)
        return n;
    /* then the messages from the head on, walking the records; a region
     * without headers yet is a put's, counted by the intent that names it */
    uint64_t x = h;
    int tries = 0;
    while (x < t) {
        fq_rec *r = fq_rec_at(q, x);
        uint64_t w = atomic_load_explicit(&r->word, ACQ);
        uint64_t span = fq_match(q, x, w) ? fq_span(q, x, w, r->len) : 0;
        if (!span) {
            uint64_t k = 0, end = fq_region_put(q, x, t, &k);
            if (end) {
                n += k;
                x = end;
                continue;
            }
            if (q->drop) { /* lapped while we walked: the rest starts at release */
                uint64_t rel2 = atomic_load(&q->ctrl->release);
                if (rel2 > x && rel2 <= t && !(rel2 & 15)) {
                    x = rel2;
                    continue;
                }
            }
            /* its headers appeared meanwhile (look again), or corrupt */
            if (++tries > 3)
                break;
            continue;
        }
        unsigned st = w & 7;
        n += st == FQ_REC_COMMITTED || st == FQ_REC_WRITING;
        x += span;
    }
    return n;
}

/*
 * Subjects.  A message's subject is stored ahead of its payload (its length
 * in the record's prefix, fq_layout.h) and matched by the reader before the
 * payload is deserialized (the binding).  A group has one filter, shared by
 * its members: its key (a digest of the patterns) is kept in the group; the
 * first member of a group sets it, a member of a group with other members
 * must bring the same one.
 */
int fq_sub_filter(fq_sub *s, uint64_t key)
{
    fq_queue *q = s->q;
    if (key == 0)
        return -EINVAL;
    int rc = fq_lock_wait(q);
    if (rc)
        return rc;
    fq_group *g = &q->groups[s->g];
    int others = 0;
    uint32_t hwm = fq_hwm(q);
    for (uint32_t i = 0; i < hwm && !others; i++) {
        fq_member *e = &q->members[i];
        unsigned k = FQ_SLOT_KIND(atomic_load(&e->word));
        others = i != s->m && (k == FQ_MEM_ACTIVE || k == FQ_MEM_ORPHAN) &&
                 atomic_load(&e->group) == s->g;
    }
    /* A member joins the group first and states its filter after (here):
     * another member may have joined and not stated its own yet, so 0 (no
     * filter stated: keys are never 0) agrees with any key; the later of
     * two members with different keys is refused, whichever it is. */
    uint64_t have = atomic_load(&g->filter);
    if (others && have != 0 && have != key)
        rc = FQ_EINUSE;
    else
        atomic_store(&g->filter, key);
    fq_topic_unlock(q);
    return rc;
}

uint64_t fq_sub_lag(fq_sub *s)
{
    return fq_group_lag(s->q, &s->q->groups[s->g]);
}

uint64_t fq_sub_dropped(fq_sub *s)
{
    return atomic_load(&s->q->groups[s->g].dropped);
}

uint32_t fq_sub_index(fq_sub *s)
{
    return s->m;
}

int fq_topic_info(fq_queue *q, uint32_t i, fq_sub_info *out)
{
    if (!q->topic || i >= 2 * q->nsubs)
        return 0;
    memset(out, 0, sizeof *out);
    uint32_t gi;
    if (i < q->nsubs) { /* a member */
        fq_member *e = &q->members[i];
        uint64_t w = atomic_load(&e->word);
        unsigned kind = FQ_SLOT_KIND(w);
        if (kind != FQ_MEM_ACTIVE)
            return 0; /* an orphan is a claim waiting for a member, not a subscriber */
        gi = atomic_load(&e->group);
        if (gi >= q->nsubs)
            return 0;
        out->kind = kind;
        out->pid = kind == FQ_MEM_ACTIVE ? FQ_SLOT_PID(w) : 0;
        out->alive = kind == FQ_MEM_ACTIVE && !fq_member_dead(q, e, NULL);
        out->got = atomic_load(&e->got);
        unsigned ph = atomic_load(&e->state) & 3;
        uint64_t n = atomic_load(&e->n);
        if (ph == FQ_PH_WON && n <= q->cap / FQ_REC_HDR) { /* untrusted: at most a ring */
            out->unacked = n;
            out->unacked_since_ns = atomic_load(&e->since_ns);
        }
    } else { /* a durable group nobody is attached to */
        gi = i - q->nsubs;
        uint64_t gw = atomic_load(&q->groups[gi].word);
        if ((gw & 0xff) != FQ_GRP_ACTIVE || !((gw >> 8) & FQ_GRP_DURABLE) ||
            ((gw >> 8) & FQ_GRP_INIT) || fq_group_has_members(q, gi))
            return 0;
        out->kind = FQ_MEM_FREE;
    }
    fq_group *g = &q->groups[gi];
    out->flags = (uint32_t)((atomic_load(&g->word) >> 8) & 0xff);
    memcpy(out->name, g->name, sizeof out->name);
    out->name[sizeof out->name - 1] = 0;
    out->position = atomic_load(&g->head);
    out->lag = fq_group_lag(q, g);
    out->group = gi;
    uint64_t t = atomic_load(&q->ctrl->tail);
    out->lag_bytes = t > out->position ? t - out->position : 0;
    return 1;
}

void fq_sub_mark_unacked(fq_sub *s)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    /* relaxed: statistics; only this member writes it */
    atomic_store_explicit(&s->q->members[s->m].since_ns,
                          (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec, RLX);
}

int fq_is_topic(fq_queue *q) { return q->topic; }
int fq_is_drop(fq_queue *q) { return q->drop; }
uint32_t fq_max_subs(fq_queue *q) { return q->nsubs; }

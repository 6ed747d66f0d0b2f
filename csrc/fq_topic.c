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
 * The discipline is three files: this one (the publishers' side: release,
 * eviction, readiness), fq_members.c (the member and group tables, joining,
 * leaving, reaping the dead) and fq_sub.c (a member's claims, steps 1-5
 * below, orphans, give-backs); fq_topic.h holds what they share (the
 * head pair, the epoch bump).  This comment is the protocol of all three.
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
#include "fq_topic.h"





/* ---- publishers ------------------------------------------------------ */




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
 * its group and holds release back), no orphan.  A publisher and a member
 * store their CLAIMING intent, then (seq_cst fence) call fq_wake_quiet,
 * then CAS tail or their group's head: either the wake sees the sleeper's
 * quiet bit, or these seq_cst loads (after the sleeper's RMW of that bit)
 * see the intent.  Killed before the wake, it claimed nothing; after it,
 * the sleeper was rung and sees the intent (review 17, W1). */
int fq_topic_in_flight(fq_queue *q)
{
    if (fq_put_in_flight(q))
        return 1;
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

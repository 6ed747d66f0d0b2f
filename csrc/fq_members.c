/*
 * fq_members.c - a topic's member and group tables: subscribe, unsubscribe,
 * forget, and the repair of dead members (fq_topic_reap).  Every change is
 * made under the segment lock and dropped with fq_topic_unlock, which bumps
 * the release epoch (fq_topic.c, "Joining" and "Orphans"; fq_layout.h,
 * fq_group and fq_member).  Publishers and members read the tables
 * lock-free: the order of the stores below is what they rely on.
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

/* ---- the tables (under the segment lock) ------------------------------ */

/* Has the owner of an ACTIVE member left (fq_layout.h: owner, slot)?  seen:
 * as in fq_slot_alive (a table operation probes each process once). */
int fq_member_dead(fq_queue *q, fq_member *e, signed char *seen)
{
    uint32_t s = atomic_load(&e->slot);
    uint64_t owner = atomic_load(&e->owner);
    if (s >= q->nslots || atomic_load(&q->slots[s].word) != owner)
        return 1; /* its handle closed, or recovery freed its slot */
    return !fq_slot_alive(q, s, owner, seen);
}

int fq_group_has_members(fq_queue *q, uint32_t gi)
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

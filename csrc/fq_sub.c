/*
 * fq_sub.c - a member's reading: claims from its group's head (the numbered
 * steps at the top of fq_topic.c), orphans taken over, give-backs
 * (fq_sub_hold), waiting with the member's readiness rule, and the status
 * a subscriber reports (lag, dropped, the table rows of fq_topic_info).
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

static void fq_sub_account(fq_sub *s, fq_claim *c);

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
        /* ring the quiet sleepers before the claim, not after it (review
         * 17, W1): the fence orders our intent before the loads of their
         * bits; see fq_topic_in_flight */
        atomic_thread_fence(memory_order_seq_cst);
        fq_wake_quiet(q);
        FQ_CRASH_POINT("sub_after_intent");
        if (!fq_head_cas(g, &H, p, myid)) {
            atomic_store_explicit(&me->state, seq << 2 | FQ_PH_IDLE, REL);
            continue;
        }
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
    /* the wall clock, which every process on the machine reads alike
     * (CLOCK_MONOTONIC is offset per time namespace: review 15 T1) */
    clock_gettime(CLOCK_REALTIME, &ts);
    /* relaxed: statistics; only this member writes it */
    atomic_store_explicit(&s->q->members[s->m].since_ns,
                          (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec, RLX);
}

int fq_is_topic(fq_queue *q) { return q->topic; }
int fq_is_drop(fq_queue *q) { return q->drop; }
uint32_t fq_max_subs(fq_queue *q) { return q->nsubs; }

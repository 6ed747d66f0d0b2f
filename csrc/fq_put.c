/*
 * fq_put.c - the producer path both disciplines share (a queue's put, a
 * topic's publish: claim, copy, commit) and its repair after a producer
 * died mid-put.  A topic differs only in how it finds space (fq_topic.c:
 * fq_topic_release, fq_topic_evict) and in claiming tail together with its
 * message count (fq_topic_claim).
 *
 * Producer (fq_put_begin / fq_put_commit):
 *   1. t = tail.  The batch needs [t, t + span): its records, preceded by a
 *      SKIP record up to the end of the ring if they would cross it.
 *      Space check against a cached release; re-read only when it looks full.
 *   2. Announce the intent (pos t, end, n, CLAIMING) in our lane, ring
 *      the quiet sleepers (fq_wake_quiet: they see the intent and sleep in
 *      slices, fq_wait.c), then CAS tail t -> t + span.  The intent lets a
 *      survivor find the region if we die before writing any header
 *      (repair, below).  A failed CAS withdraws it (IDLE) before step 1
 *      again.
 *   3. Won: phase WON; write the headers WRITING, the last record first and
 *      the record at t (first message, or the SKIP) last, each a release
 *      store: whoever sees a header at t sees every header of the batch.
 *   4. Copy payloads; store COMMITTED on each (release, pairs with the
 *      consumer's acquire load of the word); then count + n, IDLE in one
 *      store; then the wake rule (fq_wait.c).
 *
 *
 * Repair (fq_fix_prod, called by fq_recover for each lane of a dead slot,
 * under the segment lock):
 *
 *  - A producer lane CLAIMING or WON: it may have claimed [pos, end).
 *      * headers written (the one at pos is written last, so its presence
 *        means all are): its committed records stay; WRITING ones become
 *        ABANDONED (consumers skip them).
 *      * no header at pos, tail > pos: the region is replaced by one SKIP
 *        record.  If the lane is only CLAIMING, it may have lost its CAS
 *        (a stale intent): the region's true end is taken from the
 *        intents at pos, choosing the smallest end that is "witnessed"
 *        (equals tail, or carries a header, or starts another intent);
 *        no end inside the true region can be witnessed.  Any live intent
 *        at pos: wait for it.
 *    Its message count is fixed first (count + messages it committed) with
 *    phase RECOVERED, so the fix is applied once.
 *
 * The record walks of the repair (fq_header_at, fq_stable_span,
 * fq_count_states) serve the queue consumer's repair too (fq_get.c).
 */
#define _GNU_SOURCE
#include <errno.h>
#include <limits.h>
#include <stdlib.h>
#include <string.h>

#include "fq_internal.h"

/* ---- producer ---------------------------------------------------- */

int fq_put_begin(fq_queue *q, const uint64_t *lens, size_t n, fq_claim *c)
{
    if (n == 0)
        return -EINVAL;
    uint64_t total = 0;
    for (size_t i = 0; i < n; i++) {
        if (lens[i] > q->max_msg)
            return FQ_ETOOBIG;
        total += fq_rec_size(lens[i] + q->prefix);
    }
    if (total > q->cap / 2)
        return FQ_ETOOBIG; /* the caller splits batches */
    if (atomic_load_explicit(&q->ctrl->state, RLX) & FQ_STATE_SHUTDOWN)
        return FQ_SHUTDOWN;
    int lane, rc = fq_enter(q, &lane);
    if (rc)
        return rc;
    int slot = atomic_load_explicit(&q->slot, RLX);
    fq_intent *in = fq_my_intent(q, lane, 0);
    uint64_t count = atomic_load_explicit(&in->state, RLX) >> 2;
    fq_ctrl *ctl = q->ctrl;
    uint64_t t, span, pad, cnt = 0;
    int stale = 0;
    t = atomic_load_explicit(&ctl->tail, ACQ);
    if (q->topic)
        cnt = atomic_load_explicit(&ctl->published, ACQ);
    for (;;) {
        uint64_t idx = t & q->mask;
        pad = idx + total > q->cap ? q->cap - idx : 0;
        span = pad + total;
        uint64_t rel = atomic_load_explicit(&q->cached_release, ACQ);
        if (t + span - rel > q->cap) {
            /* acquire: pairs with the consumers' release CAS; the space
             * they freed is no longer read by them.  A topic computes it
             * from its subscribers, or (drop) evicts the oldest records. */
            if (!q->topic) {
                rel = atomic_load_explicit(&ctl->release, ACQ);
            } else if (!q->drop) {
                rel = fq_topic_release(q);
            } else {
                int erc = fq_topic_evict(q, t + span - q->cap);
                if (erc == FQ_ECORRUPT) {
                    atomic_store_explicit(&in->state, count << 2 | FQ_PH_IDLE, REL);
                    fq_lane_put(q, lane);
                    return FQ_ECORRUPT;
                }
                rel = atomic_load_explicit(&ctl->release, ACQ);
            }
            atomic_store_explicit(&q->cached_release, rel, REL);
            if (t + span - rel > q->cap || rel > t) {
                if (rel > t) {
                    /* our t is stale: retry once with a fresh one; release
                     * beyond a fresh tail is a corrupt segment */
                    uint64_t t2 = atomic_load_explicit(&ctl->tail, ACQ);
                    if (stale++ && t2 == t) {
                        atomic_store_explicit(&in->state, count << 2 | FQ_PH_IDLE, REL);
                        fq_lane_put(q, lane);
                        return FQ_ECORRUPT;
                    }
                    t = t2;
                    continue;
                }
                atomic_store_explicit(&in->state, count << 2 | FQ_PH_IDLE, REL);
                fq_lane_put(q, lane); /* counted once per put: fq_note_full */
                return FQ_FULL;
            }
        }
        fq_intent_claim(in, t, t + span, n, count);
        /* Ring the quiet sleepers before the CAS, not after it (review 17,
         * W1): killed between a CAS and its wake, a claimer left a waiter
         * asleep with no timer beside its claim.  Now a claim exists only
         * after this wake, and the woken waiter's quiet rule sees our
         * CLAIMING intent (fq_put_in_flight) and sleeps in slices.  The
         * fence orders the intent's release store before the loads of the
         * quiet bits: pairs with the waiter's seq_cst RMW of its bits
         * before its scan of the intents (fq_wait.c). */
        atomic_thread_fence(memory_order_seq_cst);
        fq_wake_quiet(q);
        FQ_CRASH_POINT("put_after_intent");
        /* seq_cst: pairs with fq_recover's load of tail before it looks for
         * the intents of a region without a header */
        if (q->topic) {
            if (fq_topic_claim(q, &t, &cnt, span, n))
                break;
        } else if (atomic_compare_exchange_weak_explicit(&ctl->tail, &t, t + span, SEQ, ACQ)) {
            break;
        }
        /* Lost the CAS: withdraw the intent before looking again.  A block
         * topic's release counts every CLAIMING intent (fq_topic_release),
         * ours too: left at the old tail it would hold the release we are
         * about to compute ourselves (a false FULL on an empty ring), and
         * another publisher may have gone to sleep on it.  So wake the
         * space side after the IDLE store (fq_wake's fence orders the store
         * before its load of the sleeper bits: pairs with the sleeper's RMW
         * of its bit before its re-check). */
        atomic_store_explicit(&in->state, count << 2 | FQ_PH_IDLE, REL);
        if (q->topic && !q->drop)
            fq_wake(q, FQ_WAIT_SPACE);
    }
    atomic_store_explicit(&in->state, count << 2 | FQ_PH_WON, RLX);
    FQ_CRASH_POINT("put_after_claim");
    uint32_t owner = (uint32_t)slot << 8 | (uint32_t)lane;
    uint64_t first = t + pad;
    uint32_t pre = q->prefix;
    /* headers, last record first; the one at t last (release each) */
    if (n == 1) {
        fq_rec *r = fq_rec_at(q, first);
        r->len = (uint32_t)lens[0] + pre;
        r->owner = owner;
        if (pre) {
            ((uint64_t *)(r + 1))[0] = cnt;
            ((uint64_t *)(r + 1))[1] = 0;
        }
        atomic_store_explicit(&r->word, fq_tag_of(q, first) | FQ_REC_WRITING, REL);
    } else {
        uint64_t p = first + total;
        for (size_t i = n; i-- > 0;) {
            p -= fq_rec_size(lens[i] + pre);
            fq_rec *r = fq_rec_at(q, p);
            r->len = (uint32_t)lens[i] + pre;
            r->owner = owner;
            if (pre) {
                ((uint64_t *)(r + 1))[0] = cnt + i;
                ((uint64_t *)(r + 1))[1] = 0;
            }
            atomic_store_explicit(&r->word, fq_tag_of(q, p) | FQ_REC_WRITING, REL);
        }
    }
    if (pad) {
        fq_rec *r = fq_rec_at(q, t);
        r->len = (uint32_t)pad;
        r->owner = owner;
        atomic_store_explicit(&r->word, fq_tag_of(q, t) | FQ_REC_SKIP, REL);
    }
    FQ_CRASH_POINT("put_after_headers");
    c->pos = t;
    c->end = t + span;
    c->n = n;
    c->cursor = first;
    c->lane = (uint32_t)lane;
    c->taken = 0;
    c->first_off = (uint32_t)pad;
    c->redelivered = 0;
    c->subject_len = 0;
    c->attempt = 1;
    c->count = count;
    c->lens = lens;
    c->given = 0;
    return FQ_OK;
}

/* The next record's payload buffer.  The records are found from the
 * caller's own lengths, never from the headers in the shared segment: a len
 * rewritten there could steer the buffer, and the caller's copy, past the
 * ring's end. */
void *fq_claim_buf(fq_queue *q, fq_claim *c)
{
    if (c->given >= c->n)
        return NULL; /* more buffers than records: a caller's bug */
    fq_rec *r = fq_rec_at(q, c->cursor);
    c->cursor += fq_rec_size(c->lens[c->given++] + q->prefix);
    return (uint8_t *)(r + 1) + q->prefix;
}

void fq_put_commit(fq_queue *q, fq_claim *c)
{
    FQ_CRASH_POINT("put_before_commit");
    /* time in queue: the commit's time, taken before COMMITTED (a consumer
     * cannot take the message before it) */
    if (fq_sample_due(q, (int)c->lane, 0, c->end) && fq_sample_at(q, c->pos, c->end))
        fq_sample_note(q, 0, ((c->end - 1) >> q->sample_shift) + 1);
    uint64_t p = c->pos + c->first_off, bytes = 0;
    /* a queue's records start with the caller's takes (c->attempt - 1,
     * fastq.h), no not-before; a topic keeps attempts per subscriber */
    uint32_t meta = 0;
    if (!q->topic && c->attempt > 1)
        meta = c->attempt - 1 < 0xff ? c->attempt - 1 : 0xff;
    for (uint64_t i = 0; i < c->n; i++) {
        fq_rec *r = fq_rec_at(q, p);
        fq_meta_store(r, meta); /* published by the COMMITTED store below */
        if (q->prefix)
            ((uint64_t *)(r + 1))[1] = c->subject_len; /* the caller's: checked by readers */
        /* release: pairs with the consumer's acquire load of the word; the
         * payload copied above is visible to whoever sees COMMITTED */
        atomic_store_explicit(&r->word, fq_tag_of(q, p) | FQ_REC_COMMITTED, REL);
        bytes += c->lens[i];
        p += fq_rec_size(c->lens[i] + q->prefix); /* our lengths, as fq_claim_buf */
        if (i == 0)
            FQ_CRASH_POINT("put_mid_commit");
    }
    FQ_CRASH_POINT("put_before_count");
    fq_intent *in = fq_my_intent(q, (int)c->lane, 0);
    fq_stat_add(&in->bytes, bytes);
    atomic_store_explicit(&in->state, (c->count + c->n) << 2 | FQ_PH_IDLE, REL);
    fq_lane_put(q, (int)c->lane);
    /* a topic's publishers may wait for this put too: a block topic's
     * release cannot pass a put in progress, a drop topic's eviction cannot
     * pass a record being written */
    fq_wake(q, q->topic ? -1 : FQ_WAIT_DATA);
}

void fq_note_full(fq_queue *q, uint64_t events, uint64_t blocked_ns)
{
    int lane;
    if (fq_enter(q, &lane))
        return; /* no lane free: not counted (statistics only) */
    fq_intent *in = fq_my_intent(q, lane, 0);
    fq_stat_add(&in->full, events);
    fq_stat_add(&in->blocked_ns, blocked_ns);
    fq_lane_put(q, lane);
}

int fq_put(fq_queue *q, const void *data, size_t len)
{
    fq_claim c;
    uint64_t l = len;
    int rc = fq_put_begin(q, &l, 1, &c);
    if (rc)
        return rc;
    memcpy(fq_claim_buf(q, &c), data, len);
    fq_put_commit(q, &c);
    return FQ_OK;
}

uint64_t fq_record_size(uint64_t len)
{
    return fq_rec_size(len);
}

uint64_t fq_put_need(fq_queue *q, const uint64_t *lens, size_t n)
{
    /* the ring bytes of the claim, as fq_put_begin counts them (each record
     * with its header, the topic's prefix and its padding) ... */
    uint64_t total = 0;
    for (size_t i = 0; i < n; i++)
        total += fq_rec_size(lens[i] + q->prefix);
    /* ... as the payload of one record that takes exactly as many: the
     * predicates (fq_put_ready, fq_topic_space_ready) add one header and
     * prefix back and round up, which leaves total (a multiple of 16) as it
     * is, and then add the padding to the ring's end as fq_put_begin does */
    return total - FQ_REC_HDR - q->prefix;
}

/* A producer's (need: the payload bytes of one record, fq_put_need for a
 * batch): room, or shut down. */
int fq_put_ready(fq_queue *q, uint64_t need)
{
    if (fq_is_shut(q))
        return 1;
    if (q->topic)
        return fq_topic_space_ready(q, need);
    fq_ctrl *c = q->ctrl;
    uint64_t rel = atomic_load_explicit(&c->release, memory_order_seq_cst);
    uint64_t t = atomic_load_explicit(&c->tail, memory_order_seq_cst);
    need = fq_rec_size(need);
    if (need > q->cap / 2)
        need = q->cap / 2;
    /* a claim may need padding up to the end of the ring */
    uint64_t idx = t & q->mask;
    uint64_t span = idx + need > q->cap ? q->cap - idx + need : need;
    return t + span - rel <= q->cap;
}

/* ---- repair of a dead producer ----------------------------------- */

int fq_header_at(fq_queue *q, uint64_t p, uint64_t *w)
{
    *w = atomic_load_explicit(&fq_rec_at(q, p)->word, memory_order_acquire);
    return fq_match(q, p, *w);
}

/*
 * Is position p still retained (release at or below it)?  Asked after the
 * caller loaded the word at p (acquire), before it writes at p or decides
 * from that word: a lap can happen between any two loads.  Once the record
 * at p is consumed and release passes it, a producer of the next lap may
 * write p + capacity at the same index; that producer loaded release past p
 * (acquire) before its release store of the word, so a caller that read
 * that word reads release past p here too.  The caller's acquire load of
 * the word orders this load after it.
 */
static int fq_retained(fq_queue *q, uint64_t p)
{
    return atomic_load(&q->ctrl->release) <= p;
}

/* Replace the header-less region [p, p + span) by one SKIP record.  n: the
 * messages the dead claim held; a topic's SKIP keeps it after its header
 * (owner UINT32_MAX says so), so that readers do not count those messages,
 * which were never published, as lost to lapping.  Writes nothing if p has
 * a header, or is no longer retained (its bytes may be the next lap's);
 * while p is retained and has no header, nobody else writes there (release
 * cannot pass a position without a header, and tail is past it). */
static void fq_abandon_region(fq_queue *q, uint64_t p, uint64_t span, uint64_t n)
{
    uint64_t w;
    if (fq_header_at(q, p, &w) || !fq_retained(q, p))
        return;
    fq_rec *r = fq_rec_at(q, p);
    /* (a SKIP may cross the end of the ring: then the count has no room) */
    if (q->topic && span >= 2 * FQ_REC_HDR && (p & q->mask) + 2 * FQ_REC_HDR <= q->cap)
        ((uint64_t *)(r + 1))[0] = n;
    r->len = (uint32_t)span;
    r->owner = UINT32_MAX;
    atomic_compare_exchange_strong(&r->word, &w, fq_tag_of(q, p) | FQ_REC_SKIP);
}

/* Is the region at p passable now: a header at p, or p released? */
static int fq_region_done(fq_queue *q, uint64_t p)
{
    uint64_t w;
    return fq_header_at(q, p, &w) || !fq_retained(q, p);
}

/* Is end e witnessed as a record boundary? (see the comment at the top) */
static int fq_witnessed(fq_queue *q, uint64_t e)
{
    uint64_t w;
    if (e == atomic_load(&q->ctrl->tail) || fq_header_at(q, e, &w))
        return 1;
    for (uint32_t s = 0; s < q->nslots; s++)
        for (unsigned l = 0; l < FQ_LANES; l++) {
            fq_intent *in = &q->slots[s].lane[l].prod;
            if ((atomic_load(&in->state) & 3) != FQ_PH_IDLE && atomic_load(&in->pos) == e)
                return 1;
        }
    return 0;
}

/* A region at p without a header: resolve it from the intents at p.
 * Returns 1 when p has a header afterwards (or was released meanwhile). */
static int fq_resolve_region(fq_queue *q, const fq_slot_view *v, uint64_t p)
{
    uint64_t *ends = malloc(2 * sizeof *ends * q->nslots * FQ_LANES);
    int ne = 0, ok = 0;
    if (!ends)
        return 0;
    uint64_t *ns = ends + q->nslots * FQ_LANES; /* the messages of each end's claim */
    for (uint32_t s = 0; s < q->nslots; s++)
        for (unsigned l = 0; l < FQ_LANES; l++) {
            fq_intent *in = &q->slots[s].lane[l].prod;
            unsigned ph = atomic_load(&in->state) & 3;
            if (ph == FQ_PH_IDLE || atomic_load(&in->pos) != p)
                continue;
            if (!v[s].dead)
                goto out; /* a live producer at p: it will write or retry */
            uint64_t e = atomic_load(&in->end);
            if (e <= p || e - p > q->cap || ((e - p) & 15))
                continue; /* impossible: ignore */
            if (ph != FQ_PH_CLAIMING) { /* it won: its end is the truth */
                fq_abandon_region(q, p, e - p, atomic_load(&in->n));
                ok = fq_region_done(q, p);
                goto out;
            }
            ns[ne] = atomic_load(&in->n);
            ends[ne++] = e;
        }
    for (;;) {
        int best = -1;
        for (int i = 0; i < ne; i++)
            if (ends[i] && (best < 0 || ends[i] < ends[best]))
                best = i;
        if (best < 0)
            break;
        if (fq_witnessed(q, ends[best])) {
            fq_abandon_region(q, p, ends[best] - p, ns[best]);
            break;
        }
        ends[best] = 0;
    }
    ok = fq_region_done(q, p);
out:
    free(ends);
    return ok;
}

/*
 * The span of the record at x whose word w was just loaded (acquire), or 0
 * if the record may have been reused meanwhile: a live sweep can pass a
 * finished record below the walk, and a producer then write a new length
 * before its new word; so once the length is read, release must still be
 * at or below x (acquire fence: pairs with the sweep's CAS and the
 * producer's acquire of release before it writes).
 */
uint64_t fq_stable_span(fq_queue *q, uint64_t x, uint64_t w)
{
    uint64_t span = fq_span(q, x, w, fq_rec_at(q, x)->len);
    return fq_released_past(q, x) ? 0 : span;
}

/* Count the records in [from, end) in the given states, owned by owner
 * (UINT32_MAX: any).  Returns -1 if the walk ran into an overwritten record. */
int64_t fq_count_states(fq_queue *q, uint64_t from, uint64_t end, unsigned states,
                        uint32_t owner)
{
    int64_t k = 0;
    for (uint64_t x = from; x < end;) {
        uint64_t w;
        if (!fq_header_at(q, x, &w))
            return -1;
        fq_rec *r = fq_rec_at(q, x);
        uint64_t span = fq_stable_span(q, x, w);
        if (!span)
            return -1;
        if ((states >> (w & 7) & 1) && (owner == UINT32_MAX || r->owner == owner))
            k++;
        x += span;
    }
    return k;
}

/* Repair one producer lane of a dead slot; 1 when it is idle afterwards. */
int fq_fix_prod(fq_queue *q, const fq_slot_view *v, uint32_t s, unsigned l)
{
    fq_intent *in = &q->slots[s].lane[l].prod;
    uint64_t st = atomic_load(&in->state), count = st >> 2, w;
    unsigned ph = st & 3;
    if (ph == FQ_PH_IDLE)
        return 1;
    uint64_t p = atomic_load(&in->pos), end = atomic_load(&in->end), n = atomic_load(&in->n);
    /* The lane's records are every WRITING record in [p, end): the tail CAS
     * gave that range to this lane alone, and a record of another lap does
     * not match its position's tag (fq_header_at).  Not the header's owner
     * field: the commit stores the delivery meta there just before COMMITTED,
     * so a producer killed between the two leaves a WRITING record whose
     * owner no longer names it (review 11, F4: the queue wedged for good). */
    fq_ctrl *c = q->ctrl;
    if (end <= p || end - p > q->cap) { /* impossible intent */
        atomic_store(&in->state, count << 2 | FQ_PH_IDLE);
        return 1;
    }
    if (ph == FQ_PH_CLAIMING) {
        /* CLAIMING never wrote a header (WON is stored first): it committed
         * nothing, and if it won, its region has no header */
        if (atomic_load(&c->tail) != p && atomic_load(&c->release) <= p) {
            FQ_CRASH_POINT("recover_region_checked");
            if (!fq_header_at(q, p, &w) && !fq_resolve_region(q, v, p))
                return 0;
        }
        atomic_store(&in->state, count << 2 | FQ_PH_IDLE);
        return 1;
    }
    for (int tries = 0; ph == FQ_PH_WON; tries++) {
        uint64_t rel = atomic_load(&c->release);
        FQ_CRASH_POINT("recover_count_checked");
        int64_t k;
        if (rel <= p && !fq_header_at(q, p, &w)) {
            /* no header written: nothing committed, if p is still retained
             * after the word was read (else it was consumed meanwhile, and
             * the word is another lap's: look again) */
            if (!fq_retained(q, p))
                continue;
            k = 0;
        } else if (rel >= end) {
            k = (int64_t)n;
        } else {
            int64_t wr = fq_count_states(q, rel > p ? rel : p, end, 1u << FQ_REC_WRITING,
                                          UINT32_MAX);
            if (wr < 0) {
                if (tries > 1000)
                    return 0;
                continue; /* release moved under us: again */
            }
            k = (int64_t)n - wr;
        }
        count += (uint64_t)k;
        atomic_store(&in->state, count << 2 | FQ_PH_RECOVERED);
        ph = FQ_PH_RECOVERED;
        FQ_CRASH_POINT("recover_after_count");
    }
    /* RECOVERED: count fixed; now make the region passable: a SKIP over it
     * if it has no header, else its WRITING records ABANDONED.  Again while
     * release moves under the walk (a record passed by release was not ours
     * to change any more; the ones after it still are). */
    for (uint64_t last = UINT64_MAX;;) {
        uint64_t rel = atomic_load(&c->release), x = rel > p ? rel : p;
        FQ_CRASH_POINT("recover_region_checked");
        if (rel >= end || rel == last)
            break; /* all released; or no progress: a corrupt segment */
        last = rel;
        if (rel <= p && !fq_header_at(q, p, &w)) {
            fq_abandon_region(q, p, end - p, n);
            if (fq_retained(q, p))
                break;
            continue; /* it had headers, and was consumed meanwhile */
        }
        while (x < end && fq_header_at(q, x, &w)) {
            fq_rec *r = fq_rec_at(q, x);
            uint64_t span = fq_stable_span(q, x, w); /* 0: released meanwhile */
            if (!span || span > end - x)
                break;
            /* the CAS on the exact word re-validates: a WRITING record is
             * never released, so one still WRITING was not reused */
            if ((w & 7) == FQ_REC_WRITING)
                atomic_compare_exchange_strong(&r->word, &w,
                                               fq_tag_of(q, x) | FQ_REC_ABANDONED);
            x += span;
        }
        /* a header that does not match: released meanwhile (again from the
         * new release), or a corrupt segment (stop) */
        if (x >= end || fq_retained(q, x))
            break;
    }
    atomic_store(&in->state, count << 2 | FQ_PH_IDLE);
    return 1;
}

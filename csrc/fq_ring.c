/*
 * fq_ring.c - the multi-producer, multi-consumer ring of variable-length
 * records: claim, copy, commit; claim, copy, free.
 *
 * Producer (fq_put_begin / fq_put_commit):
 *   1. t = tail.  The batch needs [t, t + span): its records, preceded by a
 *      SKIP record up to the end of the ring if they would cross it.
 *      Space check against a cached release; re-read only when it looks full.
 *   2. Announce the intent (pos t, end, n, CLAIMING) in our lane, then
 *      CAS tail t -> t + span.  The intent lets a survivor find the region
 *      if we die before writing any header (fq_recover.c).  A failed CAS
 *      withdraws it (IDLE) before step 1 again.
 *   3. Won: phase WON; write the headers WRITING, the last record first and
 *      the record at t (first message, or the SKIP) last, each a release
 *      store: whoever sees a header at t sees every header of the batch.
 *   4. Copy payloads; store COMMITTED on each (release, pairs with the
 *      consumer's acquire load of the word); then count + n, IDLE in one
 *      store; then the wake rule (fq_wait.c).
 *
 * Consumer (fq_get_begin / fq_get_end):
 *   1. h = head.  Walk records from h while they are COMMITTED (or SKIP /
 *      ABANDONED, which are carried along): [h, p) with n messages.
 *   2. Intent (h, p, n, CLAIMING); CAS head h -> p.  The records are ours.
 *   3. Copy out (the caller, through fq_claim_next).
 *   4. Free: if release == h, CAS release h -> p: we were the oldest claim.
 *      Otherwise an older claim is still being copied: mark our records DONE
 *      and sweep, so that whichever of us finishes last moves release over
 *      both (the DONE store and the CAS of release are both seq_cst, and each
 *      side re-reads the other's word after its own write, so at least one
 *      sees the other).  The DONE marks are all-or-nothing: the intent's n
 *      is flagged FQ_N_FREEING before the first one, and recovery finishes
 *      the marking for a consumer killed midway (a prefix DONE and the rest
 *      put back would return part of a batch the caller never got).
 *      Then count + n, IDLE; then the wake rule.
 *
 * A message leaves the queue at step 4 of the consumer, after it was
 * copied: a consumer that dies before then leaves its records claimed,
 * and recovery puts them back (REQUEUED).  Requeued records sit between
 * release and head; consumers take one at a time with a CAS on its word
 * (REQUEUED -> TAKEN) when the requeued hint is non-zero.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <limits.h>
#include <string.h>
#include <time.h>

#include "fq_internal.h"

#define ACQ memory_order_acquire
#define REL memory_order_release
#define RLX memory_order_relaxed
#define SEQ memory_order_seq_cst

static inline fq_intent *fq_my_intent(fq_queue *q, int lane, int cons)
{
    fq_lane *l = &q->slots[atomic_load_explicit(&q->slot, RLX)].lane[lane];
    return cons ? &l->cons : &l->prod;
}

/* Attach if needed and borrow a lane (*lane): 0, or the code to return
 * (FQ_ENOSLOT, FQ_EBUSY, or fq_attach's -errno: never a lane number). */
static int fq_enter(fq_queue *q, int *lane)
{
    int rc = fq_attach(q);
    if (rc)
        return rc;
    *lane = fq_lane_get(q);
    return *lane < 0 ? FQ_EBUSY : 0;
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

/* ---- delivery meta (fq_layout.h, "Delivery meta") ------------------------ */

/*
 * Delayed redelivery (fq_get_nack with a delay).  The not-before time lives
 * in the record itself, in the header's meta: the consumer giving the record
 * back writes it while its claim still covers the record, then CASes the
 * word to REQUEUED, which publishes it.  Nobody holds a delayed record: it is
 * an ordinary REQUEUED record that takers skip until its time, so the death
 * of the process that nacked it changes nothing, and if that process dies
 * before its CAS, recovery requeues the record with the not-before already
 * in it.  Any consumer may take it once the time has come; recovery does
 * not look at the time.
 *
 * FIFO: a delayed record keeps its place in the ring.  Later messages flow
 * past it while it waits (takers skip it; the head moves on); once visible it
 * is taken before the head's messages, as every requeued record is.  It pins
 * release meanwhile, as an unacknowledged delivery does: producers cannot
 * reuse the space past it, so a queue can fill during a long delay.
 *
 * While only delayed records are requeued, the requeued hint stays up, so
 * each get would walk release..head for nothing: a scan that found only
 * delayed records keeps its verdict in the handle (rq_skip) until the
 * soonest one's time, or until requeue_seq says a record was put back since.
 */

/* Now, in not-before units (CLOCK_REALTIME: the same in every process of
 * the machine, and still right after a reboot, unlike CLOCK_MONOTONIC). */
static uint32_t fq_nb_now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    uint64_t ms = (uint64_t)ts.tv_sec * 1000u + (uint64_t)ts.tv_nsec / 1000000u;
    return (uint32_t)(ms / FQ_NB_UNIT_MS) & FQ_NB_MASK;
}

/* Units until the not-before of meta m (read from the segment: untrusted),
 * or 0 if the record is visible now: no not-before, its time has come, or
 * it lies further ahead than any delay puts it. */
static uint32_t fq_nb_left(uint32_t m, uint32_t now)
{
    uint32_t nb = FQ_META_NB(m);
    if (!nb)
        return 0;
    uint32_t d = (nb - now) & FQ_NB_MASK;
    return d <= FQ_MAX_DELAY_MS / FQ_NB_UNIT_MS + 1 ? d : 0;
}

/* The meta word of a record.  Plain (relaxed) accesses: the word's
 * transitions order them (see fq_layout.h). */
static inline uint32_t fq_meta_load(fq_rec *r)
{
    return __atomic_load_n(&r->owner, __ATOMIC_RELAXED);
}

static inline void fq_meta_store(fq_rec *r, uint32_t m)
{
    __atomic_store_n(&r->owner, m, __ATOMIC_RELAXED);
}

/* Does this handle know that every requeued record is delayed right now?
 * Then the units until the soonest is due, else 0. */
static uint32_t fq_rq_skipping(fq_queue *q)
{
    uint64_t v = atomic_load_explicit(&q->rq_skip, RLX);
    if (!v)
        return 0;
    /* seq_cst: pairs with the bump after each put-back (fq_give_back,
     * fq_recover): a record put back since the verdict changes the seq */
    uint64_t seq = atomic_load_explicit(&q->ctrl->requeue_seq, SEQ);
    if ((v >> 24) != (seq & ((1ULL << 40) - 1)))
        return 0;
    return fq_nb_left((uint32_t)(v & FQ_NB_MASK) << 8, fq_nb_now());
}

/* ---- producer ---------------------------------------------------------- */

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
                fq_stat_add(&in->full, 1);
                fq_lane_put(q, lane);
                return FQ_FULL;
            }
        }
        fq_intent_claim(in, t, t + span, n, count);
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
    fq_wake_quiet(q); /* after the seq_cst claim: see fq_wait.c */
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
    uint64_t p = c->pos + c->first_off, bytes = 0;
    for (uint64_t i = 0; i < c->n; i++) {
        fq_rec *r = fq_rec_at(q, p);
        fq_meta_store(r, 0); /* no takes, no not-before (published below) */
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

/* ---- consumer ---------------------------------------------------------- */

/*
 * Move release forward over records that need nothing more (DONE, SKIP,
 * ABANDONED) up to head.  Safe to run from anywhere at any time.
 */
void fq_sweep(fq_queue *q)
{
    fq_ctrl *ctl = q->ctrl;
    for (int rounds = 0; rounds < 1 << 20; rounds++) {
        uint64_t rel = atomic_load_explicit(&ctl->release, SEQ);
        uint64_t hd = atomic_load_explicit(&ctl->head, SEQ);
        uint64_t p = rel;
        while (p < hd && p - rel < q->cap) {
            fq_rec *r = fq_rec_at(q, p);
            /* seq_cst: pairs with the DONE store + fence in fq_get_end */
            uint64_t w = atomic_load_explicit(&r->word, SEQ);
            if (!fq_match(q, p, w))
                break;
            unsigned st = w & 7;
            if (st != FQ_REC_DONE && st != FQ_REC_SKIP && st != FQ_REC_ABANDONED)
                break;
            uint64_t span = fq_span(q, p, w, r->len);
            if (!span)
                break; /* corrupt: leave it, the reader reports it */
            p += span;
        }
        if (p == rel || p > hd)
            return;
        atomic_compare_exchange_strong_explicit(&ctl->release, &rel, p, SEQ, RLX);
    }
}

/*
 * Is there a REQUEUED record between release and head?  Only looked at
 * when the requeued hint is non-zero.  The whole range, as
 * fq_take_requeued walks it: a bound here (it was 4096 records) hid a
 * record given back behind a larger claim, and its waiters slept their
 * whole slice each time.
 */
int fq_has_requeued(fq_queue *q)
{
    fq_ctrl *ctl = q->ctrl;
    if (fq_rq_skipping(q))
        return 0; /* only delayed ones, none due yet */
    uint32_t now = fq_nb_now();
    uint64_t rel = atomic_load_explicit(&ctl->release, SEQ);
    uint64_t hd = atomic_load_explicit(&ctl->head, SEQ);
    uint64_t p = rel;
    while (p < hd && p - rel < q->cap) {
        fq_rec *r = fq_rec_at(q, p);
        uint64_t w = atomic_load_explicit(&r->word, ACQ);
        if (!fq_match(q, p, w))
            return 1; /* moved under us: let the caller look */
        if ((w & 7) == FQ_REC_REQUEUED && !fq_nb_left(fq_meta_load(r), now))
            return 1;
        uint64_t span = fq_span(q, p, w, r->len);
        if (!span)
            return 0;
        p += span;
    }
    return 0;
}

/*
 * After shutdown, with head h at tail: is nothing left that a get could
 * still receive?  A record between release and head that is not finished
 * may still come back: given back by its consumer (abort), or by recovery
 * if its consumer died; a requeued one waits to be taken.  Records claimed
 * by this handle's own slot do not count: the caller holds them itself (and
 * would otherwise wait for itself).  1: drained, report ShutDown; 0: wait
 * (recovery runs while waiting).
 */
int fq_drained(fq_queue *q, uint64_t h)
{
    fq_ctrl *ctl = q->ctrl;
    int me = atomic_load_explicit(&q->slot, RLX);
    /* seq_cst: pairs with the consumers' release CAS and DONE stores, and
     * recovery's requeue CAS (each is seq_cst) */
    if (atomic_load(&ctl->tail) != h)
        return 0; /* head moved on, or a put is in progress */
    for (int tries = 0; tries < 64; tries++) {
        uint64_t rel = atomic_load(&ctl->release), p = rel;
        while (p < h && p - rel < q->cap) {
            fq_rec *r = fq_rec_at(q, p);
            uint64_t w = atomic_load(&r->word);
            if (!fq_match(q, p, w))
                break; /* released meanwhile: look again */
            uint64_t span = fq_span(q, p, w, r->len);
            if (!span)
                return 0; /* corrupt: the next get reports it */
            unsigned st = w & 7;
            if (st == FQ_REC_TAKEN) {
                if (me < 0 || fq_word_taker(w) >> 3 != (uint32_t)me)
                    return 0;
            } else if (st == FQ_REC_COMMITTED) {
                int mine = 0; /* claimed (it is below head): by one of our lanes? */
                for (unsigned l = 0; me >= 0 && l < FQ_LANES && !mine; l++) {
                    fq_intent *in = &q->slots[me].lane[l].cons;
                    mine = (atomic_load(&in->state) & 3) != FQ_PH_IDLE &&
                           atomic_load(&in->pos) <= p && p < atomic_load(&in->end);
                }
                if (!mine)
                    return 0;
            } else if (st != FQ_REC_DONE && st != FQ_REC_SKIP && st != FQ_REC_ABANDONED) {
                return 0; /* requeued (or impossible) */
            }
            p += span;
        }
        if (p >= h)
            return atomic_load(&ctl->tail) == h;
    }
    return 0;
}

/* Take one requeued record, if any lies between release and head. */
static int fq_take_requeued(fq_queue *q, int lane, fq_claim *c)
{
    fq_ctrl *ctl = q->ctrl;
    /* before the walk (seq_cst): pairs with the bump after a put-back, so a
     * record put back behind the walk changes it (see fq_rq_skipping) */
    uint64_t seq = atomic_load_explicit(&ctl->requeue_seq, SEQ);
    uint64_t hint = atomic_load_explicit(&ctl->requeued, SEQ);
    uint32_t now = fq_nb_now(), soonest = 0;
    uint64_t rel = atomic_load_explicit(&ctl->release, SEQ);
    uint64_t hd = atomic_load_explicit(&ctl->head, SEQ);
    if (rel == hd) {
        /* no record is claimed, so none is requeued: the hint is stale (a
         * taker died before decrementing it).  An ABA here can only make
         * the hint too low, and recovery raises it again. */
        atomic_compare_exchange_strong(&ctl->requeued, &hint, 0);
        return FQ_EMPTY;
    }
    fq_intent *in = fq_my_intent(q, lane, 1);
    uint64_t count = atomic_load_explicit(&in->state, RLX) >> 2;
    uint64_t p = rel;
    while (p < hd && p - rel < q->cap) {
        fq_rec *r = fq_rec_at(q, p);
        uint64_t w = atomic_load_explicit(&r->word, ACQ);
        if (!fq_match(q, p, w))
            return FQ_EMPTY; /* released under us: try again later */
        uint64_t span = fq_span(q, p, w, r->len);
        if (!span)
            return FQ_ECORRUPT;
        if ((w & 7) == FQ_REC_REQUEUED) {
            uint32_t left = fq_nb_left(fq_meta_load(r), now);
            if (left) { /* delayed: not before its time */
                if (!soonest || left < soonest)
                    soonest = left;
                p += span;
                continue;
            }
            fq_intent_claim(in, p, p + span, 1, count);
            /* seq_cst: recovery reads this word, then the intents */
            uint32_t me = (uint32_t)atomic_load_explicit(&q->slot, RLX) << 3 | (uint32_t)lane;
            if (atomic_compare_exchange_strong_explicit(
                    &r->word, &w, fq_taken_word(q->salt, p, me), SEQ, RLX)) {
                atomic_store_explicit(&in->state, count << 2 | FQ_PH_WON, RLX);
                fq_stat_add(&in->bytes, r->len);
                fq_stat_add(&in->redelivered, 1);
                /* ours alone now: count the take, clear the not-before.  Read
                 * again after the CAS: a REQUEUED word is the same each time,
                 * so the meta read before it may be an earlier put-back's */
                uint32_t m = fq_meta_load(r);
                uint32_t takes = FQ_META_TAKES(m) < 0xff ? FQ_META_TAKES(m) + 1 : 0xff;
                fq_meta_store(r, takes);
                uint64_t h = atomic_load(&ctl->requeued);
                while (h && !atomic_compare_exchange_weak(&ctl->requeued, &h, h - 1))
                    ;
                c->pos = c->cursor = p;
                c->end = p + span;
                c->n = 1;
                c->lane = (uint32_t)lane;
                c->taken = 1;
                c->first_off = 0;
                c->redelivered = 1;
                c->attempt = takes + 1;
                c->count = count;
                return FQ_OK;
            }
            atomic_store_explicit(&in->state, count << 2 | FQ_PH_IDLE, REL);
            continue; /* re-read this record */
        }
        p += span;
    }
    if (soonest) /* every requeued record is delayed: say so until the soonest is due */
        atomic_store_explicit(&q->rq_skip, seq << 24 | ((now + soonest) & FQ_NB_MASK), RLX);
    return FQ_EMPTY;
}

int fq_get_begin(fq_queue *q, size_t max_n, uint64_t max_bytes, fq_claim *c)
{
    fq_ctrl *ctl = q->ctrl;
    uint32_t state = atomic_load_explicit(&ctl->state, ACQ);
    if (state & FQ_STATE_IMMEDIATE)
        return FQ_SHUTDOWN;
    if (max_n == 0)
        max_n = 1;
    int strict = (max_bytes & FQ_BYTES_STRICT) != 0;
    max_bytes &= ~FQ_BYTES_STRICT;
    int lane, rc = fq_enter(q, &lane);
    if (rc)
        return rc;
    /* requeued records first (a strict byte bound skips them: one may be
     * larger than what is left of the bound) */
    if (!strict && atomic_load_explicit(&ctl->requeued, RLX) && !fq_rq_skipping(q)) {
        rc = fq_take_requeued(q, lane, c);
        if (rc != FQ_EMPTY) {
            if (rc != FQ_OK)
                fq_lane_put(q, lane);
            return rc;
        }
    }
    fq_intent *in = fq_my_intent(q, lane, 1);
    uint64_t count = atomic_load_explicit(&in->state, RLX) >> 2;
    for (;;) {
        uint64_t h = atomic_load_explicit(&ctl->head, ACQ);
        uint64_t p = h, n = 0, bytes = 0, first_off = 0;
        while (n < max_n && p - h < q->cap) {
            fq_rec *r = fq_rec_at(q, p);
            /* acquire: pairs with the producer's release of COMMITTED */
            uint64_t w = atomic_load_explicit(&r->word, ACQ);
            if (!fq_match(q, p, w))
                break; /* not yet written (or an older lap) */
            unsigned st = w & 7;
            if (st != FQ_REC_COMMITTED && st != FQ_REC_SKIP && st != FQ_REC_ABANDONED)
                break; /* WRITING: wait for it */
            uint32_t len = r->len;
            uint64_t span = fq_span(q, p, w, len);
            if (!span) {
                /* an impossible header: someone else may have claimed and
                 * moved past it already; otherwise the segment is corrupt */
                if (atomic_load_explicit(&ctl->head, ACQ) != h)
                    break;
                fq_lane_put(q, lane);
                return FQ_ECORRUPT;
            }
            if (st == FQ_REC_COMMITTED) {
                if ((n || strict) && bytes + len > max_bytes)
                    break;
                if (!n)
                    first_off = p - h;
                n++;
                bytes += len;
            }
            p += span;
        }
        if (p == h) {
            atomic_store_explicit(&in->state, count << 2 | FQ_PH_IDLE, REL);
            fq_lane_put(q, lane);
            if ((state & FQ_STATE_SHUTDOWN) && fq_drained(q, h))
                return FQ_SHUTDOWN;
            return FQ_EMPTY;
        }
        fq_intent_claim(in, h, p, n, count);
        FQ_CRASH_POINT("get_after_intent");
        /* seq_cst: recovery loads head first, then the intents */
        if (!atomic_compare_exchange_strong_explicit(&ctl->head, &h, p, SEQ, RLX))
            continue;
        fq_wake_quiet(q); /* after the seq_cst claim: see fq_wait.c */
        atomic_store_explicit(&in->state, count << 2 | FQ_PH_WON, RLX);
        fq_stat_add(&in->bytes, bytes);
        FQ_CRASH_POINT("get_after_claim");
        c->pos = h;
        c->end = p;
        c->n = n;
        /* Leading SKIP records may be swept and reused by producers as soon
         * as the head CAS is done: everything we touch starts at the first
         * message, which release cannot pass until we free it. */
        c->first_off = (uint32_t)first_off;
        c->cursor = h + first_off;
        c->lane = (uint32_t)lane;
        c->taken = 0;
        c->redelivered = 0;
        c->attempt = 1; /* the head passes a record once: its first delivery */
        c->count = count;
        if (n == 0) { /* only padding or abandoned records: free, go on */
            fq_get_end(q, c);
            lane = fq_lane_get(q);
            if (lane < 0)
                return FQ_EBUSY;
            in = fq_my_intent(q, lane, 1);
            count = atomic_load_explicit(&in->state, RLX) >> 2;
            continue;
        }
        return FQ_OK;
    }
}

int fq_claim_next(fq_queue *q, fq_claim *c, const void **data, uint64_t *len)
{
    while (c->cursor < c->end) {
        fq_rec *r = fq_rec_at(q, c->cursor);
        uint64_t w = atomic_load_explicit(&r->word, RLX);
        uint32_t l = r->len;
        uint64_t span = fq_span(q, c->cursor, w, l);
        if (!span || !fq_match(q, c->cursor, w))
            return 0; /* validated when claimed; cannot happen */
        uint64_t at = c->cursor;
        c->cursor += span;
        unsigned st = w & 7;
        if (st == FQ_REC_COMMITTED || st == FQ_REC_TAKEN) {
            c->msg_pos = at; /* the record's position: a requeued record keeps it */
            *data = r + 1;
            *len = l;
            return 1;
        }
    }
    return 0;
}

/* The position of the first message record at or after x, before end. */
static uint64_t fq_next_msg(fq_queue *q, uint64_t x, uint64_t end)
{
    while (x < end) {
        fq_rec *r = fq_rec_at(q, x);
        uint64_t w = atomic_load_explicit(&r->word, ACQ);
        unsigned st = w & 7;
        uint64_t span = fq_span(q, x, w, r->len);
        if (!span || !fq_match(q, x, w))
            return end;
        if (st == FQ_REC_COMMITTED || st == FQ_REC_TAKEN)
            return x;
        x += span;
    }
    return end;
}

/*
 * Mark the first `limit` messages of a claim DONE, in order.  The next
 * message is located before the current one is marked: once a record is
 * DONE, a sweep may pass it (and the padding after it) and a producer may
 * reuse those bytes; records from the first unmarked message on stay put.
 * The flag goes first: from the first mark on, the claim is consumed.
 */
static void fq_mark_done(fq_queue *q, fq_intent *in, uint64_t x, uint64_t end, uint64_t limit)
{
    /* before any DONE (in program order is enough: only recovery reads a
     * consumer's n, once this process is dead): recovery then finishes the
     * marks instead of putting the rest back */
    atomic_store_explicit(&in->n, limit | FQ_N_FREEING, RLX);
    FQ_CRASH_POINT("get_after_flag");
    x = fq_next_msg(q, x, end);
    for (uint64_t j = 0; j < limit && x < end; j++) {
        fq_rec *r = fq_rec_at(q, x);
        uint64_t w = atomic_load_explicit(&r->word, RLX);
        uint64_t span = fq_span(q, x, w, r->len);
        uint64_t y = j + 1 < limit ? fq_next_msg(q, x + span, end) : end;
        /* seq_cst: pairs with the sweeper's load (see fq_get_end) */
        atomic_store_explicit(&r->word, fq_tag_of(q, x) | FQ_REC_DONE, SEQ);
        FQ_CRASH_POINT("get_mid_done");
        x = y;
    }
}

void fq_get_end(fq_queue *q, fq_claim *c)
{
    fq_ctrl *ctl = q->ctrl;
    FQ_CRASH_POINT("get_before_free");
    fq_intent *in = fq_my_intent(q, (int)c->lane, 1);
    uint64_t h = c->pos, p = c->end, first = h + c->first_off;
    if (c->n == 0) {
        fq_sweep(q);
    } else if (c->taken) {
        fq_rec *r = fq_rec_at(q, h);
        atomic_store_explicit(&r->word, fq_tag_of(q, h) | FQ_REC_DONE, SEQ);
        fq_sweep(q);
    } else {
        /* Were we the oldest claim?  Then release is at our start, or past
         * our leading padding (a sweep may have passed it), never past our
         * first message. */
        uint64_t rel = atomic_load_explicit(&ctl->release, RLX);
        if (rel >= h && rel <= first &&
            atomic_compare_exchange_strong_explicit(&ctl->release, &rel, p, SEQ, RLX)) {
            /* sweep only if someone claimed after us (their DONE marks may
             * be waiting for us) */
            if (atomic_load_explicit(&ctl->head, SEQ) != p)
                fq_sweep(q);
        } else {
            fq_mark_done(q, in, first, p, c->n);
            fq_fence();
            fq_sweep(q);
        }
    }
    FQ_CRASH_POINT("get_before_count");
    atomic_store_explicit(&in->state, (c->count + c->n) << 2 | FQ_PH_IDLE, REL);
    fq_lane_put(q, (int)c->lane);
    /* After shutdown, a drain may be waiting for this claim to settle: then
     * wake the data side too.  The state is loaded after a full fence, so
     * after our release CAS / DONE marks and the IDLE store above are
     * visible (a plain load may be satisfied before an earlier store is, on
     * x86 from the store buffer too).  Pairs with fq_shutdown's seq_cst RMW
     * of the state and the drainer's seq_cst loads (state, then release and
     * the records, fq_drained): if our load misses the shutdown, our fence
     * comes before that RMW, which the drainer's loads follow, so they see
     * this claim settled; if it sees it, fq_wake(-1) pairs with the
     * drainer's bit as always. */
    fq_fence();
    fq_wake(q, atomic_load_explicit(&ctl->state, SEQ) & FQ_STATE_SHUTDOWN ? -1 : FQ_WAIT_SPACE);
}

/* Free the first keep messages of the claim, give the others back, each
 * with not-before nb (0: visible at once). */
static void fq_give_back(fq_queue *q, fq_claim *c, uint64_t keep, uint32_t nb)
{
    if (keep >= c->n) {
        fq_get_end(q, c);
        return;
    }
    fq_ctrl *ctl = q->ctrl;
    fq_intent *in = fq_my_intent(q, (int)c->lane, 1);
    uint32_t me = (uint32_t)atomic_load_explicit(&q->slot, RLX) << 3 | c->lane;
    uint64_t first = c->taken ? c->pos : c->pos + c->first_off, end = c->end;
    /* find the first message given back (nothing is DONE yet: every record
     * from the first message on is still in place) */
    uint64_t x = fq_next_msg(q, first, end);
    for (uint64_t j = 0; j < keep && x < end; j++) {
        fq_rec *r = fq_rec_at(q, x);
        x = fq_next_msg(q, x + fq_span(q, x, atomic_load_explicit(&r->word, RLX), r->len), end);
    }
    /* Shrink our intent to the kept messages, n first, then end: records we
     * give back must not stay covered by our live intent (recovery would
     * skip them if their taker died), and if we die from here on, recovery
     * must not count them as ours. */
    uint64_t keep_end = keep ? x : c->pos;
    /* the not-before first, while our intent still covers the records: if we
     * die from here on, recovery requeues them with it */
    for (uint64_t y = x; nb && y < end;) {
        fq_rec *r = fq_rec_at(q, y);
        uint64_t w = atomic_load_explicit(&r->word, RLX);
        if ((w & 7) == FQ_REC_COMMITTED || ((w & 7) == FQ_REC_TAKEN && fq_word_taker(w) == me))
            fq_meta_store(r, FQ_META_TAKES(fq_meta_load(r)) | nb << 8);
        y = fq_next_msg(q, y + fq_span(q, y, w, r->len), end);
    }
    if (nb)
        FQ_CRASH_POINT("nack_after_delay");
    atomic_store_explicit(&in->n, keep, REL);
    atomic_store_explicit(&in->end, keep_end, REL);
    /* give back, locating each next message before releasing the current
     * one (once REQUEUED it may be taken, freed and swept, and the padding
     * after it reused) */
    while (x < end) {
        fq_rec *r = fq_rec_at(q, x);
        uint64_t w = atomic_load_explicit(&r->word, RLX);
        uint64_t y = fq_next_msg(q, x + fq_span(q, x, w, r->len), end);
        /* the hint goes up first: a hint too high costs a scan, one too
         * low would hide the record */
        atomic_fetch_add(&ctl->requeued, 1);
        if ((w & 7) != FQ_REC_COMMITTED && !((w & 7) == FQ_REC_TAKEN && fq_word_taker(w) == me))
            atomic_fetch_sub(&ctl->requeued, 1); /* not ours (any more) */
        else if (!atomic_compare_exchange_strong(&r->word, &w, fq_tag_of(q, x) | FQ_REC_REQUEUED))
            atomic_fetch_sub(&ctl->requeued, 1); /* recovery put it back first */
        x = y;
    }
    /* seq_cst, after the CASes: pairs with a taker's load before its walk
     * (fq_take_requeued), whose verdict "only delayed" must not outlive them */
    atomic_fetch_add(&ctl->requeue_seq, 1);
    if (keep)
        fq_mark_done(q, in, first, keep_end, keep);
    fq_fence();
    fq_sweep(q);
    fq_stat_add(&in->nacked, c->n - keep);
    atomic_store_explicit(&in->state, (c->count + keep) << 2 | FQ_PH_IDLE, REL);
    fq_lane_put(q, (int)c->lane);
    fq_wake(q, -1);
}

void fq_get_end_partial(fq_queue *q, fq_claim *c, uint64_t keep)
{
    fq_give_back(q, c, keep, 0);
}

void fq_get_abort(fq_queue *q, fq_claim *c)
{
    fq_give_back(q, c, 0, 0);
}

void fq_get_nack(fq_queue *q, fq_claim *c, uint64_t delay_ms)
{
    uint32_t nb = 0;
    if (delay_ms) {
        if (delay_ms > FQ_MAX_DELAY_MS)
            delay_ms = FQ_MAX_DELAY_MS;
        /* rounded up, plus one unit: now is rounded down, and the record
         * must not come back before the delay */
        uint32_t units = (uint32_t)((delay_ms + FQ_NB_UNIT_MS - 1) / FQ_NB_UNIT_MS) + 1;
        nb = (fq_nb_now() + units) & FQ_NB_MASK;
        if (!nb)
            nb = 1; /* 0 says "none" */
    }
    fq_give_back(q, c, 0, nb);
}

/* ---- status ------------------------------------------------------------ */

uint64_t fq_qsize(fq_queue *q)
{
    int64_t put = 0, got = 0;
    for (uint32_t s = 0; s < q->nslots; s++) {
        for (unsigned l = 0; l < FQ_LANES; l++) {
            put += (int64_t)(atomic_load_explicit(&q->slots[s].lane[l].prod.state, ACQ) >> 2);
            got += (int64_t)(atomic_load_explicit(&q->slots[s].lane[l].cons.state, ACQ) >> 2);
        }
    }
    return put > got ? (uint64_t)(put - got) : 0;
}

/* A snapshot, lane by lane, with no ordering between the loads (like
 * fq_qsize: exact when no call is in flight); every n read from the segment
 * is bounded, and the sum by fq_qsize. */
uint64_t fq_unacked(fq_queue *q)
{
    uint64_t held = 0;
    for (uint32_t s = 0; s < q->nslots; s++) {
        for (unsigned l = 0; l < FQ_LANES; l++) {
            fq_intent *in = &q->slots[s].lane[l].cons;
            if ((atomic_load_explicit(&in->state, RLX) & 3) != FQ_PH_WON)
                continue;
            uint64_t n = atomic_load_explicit(&in->n, RLX) & ~FQ_N_FREEING;
            held += n < q->cap ? n : q->cap;
        }
    }
    uint64_t all = fq_qsize(q);
    return held < all ? held : all;
}

uint64_t fq_available(fq_queue *q)
{
    if (atomic_load(&q->ctrl->state) & FQ_STATE_IMMEDIATE)
        return 0; /* gets raise ShutDown at once: nothing can be taken */
    uint64_t all = fq_qsize(q), held = fq_unacked(q);
    return all - held; /* held <= all */
}

int fq_idle(fq_queue *q)
{
    fq_ctrl *c = q->ctrl;
    uint64_t rel = atomic_load(&c->release), hd = atomic_load(&c->head);
    return rel == hd && hd == atomic_load(&c->tail) && !atomic_load(&c->requeued);
}

int fq_full(fq_queue *q)
{
    uint64_t rel = atomic_load(&q->ctrl->release);
    uint64_t t = atomic_load(&q->ctrl->tail);
    return t + fq_rec_size(0) - rel > q->cap;
}

int fq_is_shutdown(fq_queue *q)
{
    return (atomic_load(&q->ctrl->state) & FQ_STATE_SHUTDOWN) != 0;
}

void fq_shutdown(fq_queue *q, int immediate)
{
    atomic_fetch_or(&q->ctrl->state,
                    FQ_STATE_SHUTDOWN | (immediate ? FQ_STATE_IMMEDIATE : 0));
    atomic_fetch_add(&q->ctrl->data_seq, 1);
    atomic_fetch_add(&q->ctrl->space_seq, 1);
    fq_wake(q, -1);
}

void fq_reset_shutdown(fq_queue *q)
{
    atomic_fetch_and(&q->ctrl->state, ~(FQ_STATE_SHUTDOWN | FQ_STATE_IMMEDIATE));
    /* waiters re-check the state: producers that saw the shutdown already
     * returned, nobody waits on the reset itself */
    atomic_fetch_add(&q->ctrl->data_seq, 1);
    atomic_fetch_add(&q->ctrl->space_seq, 1);
    fq_wake(q, -1);
}

void fq_stats(fq_queue *q, uint64_t out[8])
{
    fq_ctrl *c = q->ctrl;
    out[0] = atomic_load(&c->tail);
    out[1] = atomic_load(&c->head);
    out[2] = atomic_load(&c->release);
    out[3] = atomic_load(&c->requeued);
    out[4] = atomic_load(&c->state);
    out[5] = (uint64_t)atomic_load(&q->slot);
    out[6] = c->creator_pid;
    out[7] = c->created_ns;
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

/* ---- readiness rules (the predicates of fq_wait.c) ----------------------- */

static int fq_is_shut(fq_queue *q)
{
    return (atomic_load_explicit(&q->ctrl->state, memory_order_seq_cst) & FQ_STATE_SHUTDOWN) != 0;
}

/* A queue consumer's: a record to take, or shut down and drained. */
static int fq_get_ready(fq_queue *q, uint64_t unused)
{
    (void)unused;
    fq_ctrl *c = q->ctrl;
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
    return fq_is_shut(q) && fq_drained(q, h);
}

/* A producer's (need: the payload bytes of one record, fq_put_need for a
 * batch): room, or shut down. */
static int fq_put_ready(fq_queue *q, uint64_t need)
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

/* A topic subscriber's (pos: its group's head): a message, or shut down. */
static int fq_sub_ready(fq_queue *q, uint64_t pos)
{
    return fq_topic_data_ready(q, pos) || fq_is_shut(q);
}

/* The rule of side what of q (need: the put's bytes, or a group's head). */
static fq_ready_fn fq_rule(fq_queue *q, int what)
{
    if (what == FQ_WAIT_SPACE)
        return fq_put_ready;
    return q->topic ? fq_sub_ready : fq_get_ready;
}

/* Nothing in flight that a dead process could leave stalled: no claim of
 * tail or head open, nothing put back (queues; a topic is never quiet). */
static int fq_quiet(fq_queue *q)
{
    return fq_idle(q);
}

void fq_wait(fq_queue *q, int what, uint64_t need, uint64_t timeout_ns, int spin)
{
    fq_wait_pred(q, what, fq_rule(q, what), need, NULL, timeout_ns, timeout_ns,
                 spin ? FQ_STRATEGY_ADAPTIVE : FQ_STRATEGY_SLEEP);
}

int fq_wait_for(fq_queue *q, int what, uint64_t need, uint64_t slice_ns, uint64_t timeout_ns,
                int strategy)
{
    if (what == FQ_WAIT_DATA && !q->topic) {
        /* a delayed record falls due without a wake-up: look again then */
        uint64_t left = (uint64_t)fq_rq_skipping(q) * FQ_NB_UNIT_MS * 1000000u;
        if (left && left < slice_ns)
            slice_ns = left;
    }
    return fq_wait_pred(q, what, fq_rule(q, what), need, q->topic ? NULL : fq_quiet, slice_ns,
                        timeout_ns, strategy);
}

int fq_spin(fq_queue *q, int what, uint64_t need, uint64_t ns)
{
    return fq_spin_pred(q, fq_rule(q, what), need, ns);
}

int fq_arm(fq_queue *q, int what, uint64_t need, int on)
{
    return fq_arm_pred(q, what, fq_rule(q, what), need, q->topic ? NULL : fq_quiet, on);
}

/*
 * fq_get.c - the queue consumer (claim, copy, free), its readiness rule, and
 * its repair after a consumer died mid-get.
 *
 * Consumer (fq_get_begin / fq_get_end):
 *   1. h = head.  Walk records from h while they are COMMITTED (or SKIP /
 *      ABANDONED, which are carried along): [h, p) with n messages, all
 *      put with the first record's takes (fq_layout.h, delivery meta; a
 *      record put with another first attempt starts the next claim).
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
 * A claim the caller keeps across calls (receive(): an unacknowledged
 * delivery) is noted in its lane's held word with the time
 * (fq_get_mark_unacked, after step 2; statistics only, fq_layout.h).  Every
 * consumer claim clears that word before its intent (fq_held_clear), so a
 * word that is not 0 names a mark of the lane's current claim, whatever
 * ended the claim before it (ack, nack, a kill and recovery).
 *
 * A message leaves the queue at step 4 of the consumer, after it was
 * copied: a consumer that dies before then leaves its records claimed,
 * and recovery puts them back (REQUEUED).  Requeued records sit between
 * release and head; consumers take one at a time with a CAS on its word
 * (REQUEUED -> TAKEN) when the requeued hint is non-zero.
 *
 * Repair (fq_fix_cons_count, fq_requeue_orphans, fq_holds_taken: called by
 * fq_recover, under the segment lock):
 *
 *  - A consumer lane WON whose n says FQ_N_FREEING: it died marking its
 *    claim DONE (fq_get_end); the marking is finished, in order, so the
 *    claim is consumed whole, never in part.
 *  - A consumer lane CLAIMING or WON: the records it claimed and did not
 *    free.  Every COMMITTED record between release and head that no
 *    consumer's intent covers (except intents of slots seen dead) is put back
 *    (REQUEUED), whoever its owner was.  A TAKEN record names its taker in
 *    its word: it is put back if that taker's slot is dead, by a CAS on the
 *    exact word (a record given back and taken again by someone else has
 *    another word).  A dead lane is kept until its TAKEN record is back.
 *    Read order
 *    matters: head first (a claim of a record below it happened before, so
 *    its intent is visible), then the records' words (a TAKEN word was CAS'd
 *    after its taker's intent), then the intents, then release (a claim
 *    freed without DONE marks is below it).  The requeued hint goes up
 *    before each CAS (too high costs a scan; too low would hide a record),
 *    and is raised if requeued records are found while it reads zero.
 *    A record keeps its delivery meta (fq_layout.h): the takes so far, and
 *    the not-before a consumer that died while delaying it wrote first.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <limits.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "fq_internal.h"

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
 * the machine, and still right after a reboot, unlike CLOCK_MONOTONIC), and
 * in milliseconds (for the watermark below). */
typedef struct fq_nb_clock {
    uint32_t units; /* modulo 2^24, as in the records */
    uint64_t ms;
} fq_nb_clock;

static fq_nb_clock fq_nb_now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    fq_nb_clock now;
    now.ms = (uint64_t)ts.tv_sec * 1000u + (uint64_t)ts.tv_nsec / 1000000u;
    now.units = (uint32_t)(now.ms / FQ_NB_UNIT_MS) & FQ_NB_MASK;
    return now;
}

/*
 * The watermark's plausibility (review 13, W1).  A nack made while the wall
 * clock read X ahead raises nb_latest X ahead, and the CAS-max alone never
 * lowers it: once the clock is set right, the 24-bit rule alone would apply
 * (F2's wrap back for every record) for X.  An honest watermark is at most
 * FQ_MAX_DELAY_MS + 2 units past the clock of the nacker that raised it
 * (fq_get_nack: until <= ms + units*16 + 16, units <= MAX/16 + 1).  A taker
 * that finds one further ahead than its clock allows lowers it
 * (fq_nb_lower), off the hot path (only where now < nb_latest), in three
 * steps, each covering what the one before cannot:
 *
 *  1. Load W = nb_latest, THEN read a fresh clock F (never the walk's now: a
 *     stale one would lower a concurrent honest raise); if W > F + BOUND,
 *     BOUND = FQ_MAX_DELAY_MS + 3 units + S, S = one more hour (the slack:
 *     FQ_MAX_DELAY_MS again), CAS W -> L = F + BOUND (a failed CAS reloads W
 *     and reads the clock again).  The third unit absorbs a clock read (rdtsc)
 *     that runs ahead of the load before it.  Why L strands no honest
 *     nacker B (clock read c_B, until_B <= c_B + MAX + 2 units):
 *     - B raised nb_latest itself: before our load, its clock read came
 *       before F, so until_B < L; after our load and before our CAS, our CAS
 *       fails (the value only grows from W, except by a lowering to a value
 *       below W, and W itself returns only by a raise to exactly W: a nacker
 *       whose clock reads as far ahead, not an honest one); after our CAS,
 *       it stands above L.
 *     - B skipped its raise (it loaded a value >= until_B, here W): if
 *       c_B <= F + S + 1 unit, until_B <= L.  So B is above L only if it read
 *       its clock more than S + 1 unit after our F and loaded W before our
 *       CAS: we stalled more than S (an hour) between F and the CAS.
 *  2. Re-raise: after a lowering CAS, read the clock again (F2) and CAS-max
 *     nb_latest to F2 + BOUND.  Every nacker whose clock read came before F2
 *     (every B of step 1: its load came before our CAS) is then covered.
 *  3. The nacker's re-check (fq_get_nack): after its give-back's CAS to
 *     REQUEUED, it loads nb_latest (seq_cst) and CAS-maxes it back to its
 *     until if it is below.  If the lowerer dies between 1 and 2, a B whose
 *     re-check comes after the lowering CAS (in the seq_cst order) restores
 *     its own until.
 *
 * Residual window (early, the only one this lowering adds).  A record of an
 * honest nacker B comes out early only if all three hold:
 *  (i)   the lowerer stalls more than S (an hour) between its clock read F
 *        and its CAS, and B reads its clock (c_B) more than S + 1 unit after
 *        F and loads the watermark (finding it high: no raise) before that
 *        CAS;
 *  (ii)  the lowerer's re-raise has not landed when a taker looks: it was
 *        SIGKILLed between its CAS and its re-raise (or stalls there);
 *  (iii) B's re-check has not landed when that taker looks: it came before
 *        the CAS (B's whole nack, clock read to re-check, inside the
 *        lowerer's stall), or B stalls between its give-back and it.
 * Then nb_latest = L < until_B, and B's record can be taken up to
 * until_B - L <= (c_B - F) - S - 1 unit early: by at most how much the
 * lowerer's stall exceeded an hour, and never before L = F + 2 h + 48 ms
 * (two hours after the lowerer's clock read).  Compare F6 (review 11): a
 * clock stepped back by more than the delay left ends a delay early too.  A
 * watermark lowered this way is at most 2 h + 48 ms ahead of the lowerer's
 * clock, so after a wall clock is set right the wrap lateness (F2) lasts two
 * hours more at most, not X.
 *
 * The argument assumes one wall clock: every process attached reads the same
 * CLOCK_REALTIME, as on one Linux machine (time namespaces offset only
 * CLOCK_MONOTONIC and CLOCK_BOOTTIME, time_namespaces(7)).  A process that
 * fakes its own wall clock (an LD_PRELOAD faketime) more than an hour behind
 * finds an honest watermark implausible and lowers it, and the processes
 * with the right clock then end delays early, by up to its skew less an
 * hour (review 14, R3): the effect of a machine-wide step back of the clock
 * (F6), spread from one process.  Only takers and waiters lower; a count
 * (fq_delayed: qsize, the read-only tools) never writes (review 14, R1).
 */
#define FQ_NB_BOUND_MS ((uint64_t)FQ_MAX_DELAY_MS + 3u * FQ_NB_UNIT_MS + FQ_MAX_DELAY_MS)

/* nb_latest was loaded as w, further ahead of some clock than any honest
 * nack puts it: steps 1 and 2 above. */
static void fq_nb_lower(fq_queue *q, uint64_t w)
{
    _Atomic uint64_t *lat = &q->ctrl->nb_latest;
    for (;;) {
        uint64_t l = fq_nb_now().ms + FQ_NB_BOUND_MS; /* F: after the load of w */
        if (w <= l)
            return; /* plausible for this clock: honest, or lowered already */
        /* seq_cst: in one order with the nackers' raises, loads and re-checks */
        if (atomic_compare_exchange_strong_explicit(lat, &w, l, SEQ, SEQ))
            break;
        /* failed: w is the newer value; read the clock again after it */
    }
    uint64_t r = fq_nb_now().ms + FQ_NB_BOUND_MS; /* F2: after the CAS */
    uint64_t x = atomic_load_explicit(lat, SEQ);
    while (x < r && !atomic_compare_exchange_weak_explicit(lat, &x, r, SEQ, SEQ))
        ;
}

/* Units until the not-before of meta m (read from the segment: untrusted),
 * or 0 if the record is visible now: no not-before, its time has come, or
 * it lies further ahead than any delay puts it.  A not-before is 24 bits
 * and comes round every 74.6 h: one due long ago could read as ahead again.
 * So past the latest not-before ever given (ctrl->nb_latest, raised before
 * the record's meta is stored), every not-before is due.  A walk may pair a
 * fresh not-before with a stale watermark (a REQUEUED word is the same after
 * every give-back, so its acquire may read an earlier one); the taker's
 * check after its seq_cst CAS (fq_take_requeued) reads both current, so a
 * record is never delivered early (review 13).  A watermark further ahead
 * than any honest nack puts it (raised under a clock running ahead) is
 * lowered (fq_nb_lower, above) when lower is set: by takers and waiters,
 * never by a count (fq_delayed: qsize and the read-only tools change no byte
 * of the segment, review 14 R1); the verdict of this call still uses the
 * 24-bit rule, since now < the lowered value. */
static uint32_t fq_nb_left(fq_queue *q, uint32_t m, fq_nb_clock now, int lower)
{
    uint32_t nb = FQ_META_NB(m);
    if (!nb)
        return 0;
    uint64_t w = atomic_load_explicit(&q->ctrl->nb_latest, SEQ);
    if (now.ms >= w)
        return 0;
    if (lower && w - now.ms > FQ_NB_BOUND_MS) /* now may be stale: fq_nb_lower decides */
        fq_nb_lower(q, w);
    uint32_t d = (nb - now.units) & FQ_NB_MASK;
    return d <= FQ_MAX_DELAY_MS / FQ_NB_UNIT_MS + 1 ? d : 0;
}

/* Does this handle know that every requeued record is delayed right now?
 * Then the units until the soonest is due, else 0. */
uint32_t fq_rq_skipping(fq_queue *q)
{
    uint64_t v = atomic_load_explicit(&q->rq_skip, RLX);
    if (!v)
        return 0;
    /* seq_cst: pairs with the bump after each put-back (fq_give_back,
     * fq_requeue_orphans): a record put back since the verdict changes the seq */
    uint64_t seq = atomic_load_explicit(&q->ctrl->requeue_seq, SEQ);
    if ((v >> 24) != (seq & ((1ULL << 40) - 1)))
        return 0;
    return fq_nb_left(q, (uint32_t)(v & FQ_NB_MASK) << 8, fq_nb_now(), 1);
}

/* ---- consumer ---------------------------------------------------- */

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
static int fq_has_requeued(fq_queue *q)
{
    fq_ctrl *ctl = q->ctrl;
    if (fq_rq_skipping(q))
        return 0; /* only delayed ones, none due yet */
    fq_nb_clock now = fq_nb_now();
    uint64_t rel = atomic_load_explicit(&ctl->release, SEQ);
    uint64_t hd = atomic_load_explicit(&ctl->head, SEQ);
    uint64_t p = rel;
    while (p < hd && p - rel < q->cap) {
        fq_rec *r = fq_rec_at(q, p);
        uint64_t w = atomic_load_explicit(&r->word, ACQ);
        if (!fq_match(q, p, w))
            return 1; /* moved under us: let the caller look */
        if ((w & 7) == FQ_REC_REQUEUED && !fq_nb_left(q, fq_meta_load(r), now, 1))
            return 1;
        uint64_t span = fq_span(q, p, w, r->len);
        if (!span)
            return 0;
        p += span;
    }
    return 0;
}

/* Requeued records whose not-before lies ahead (given back by nack with a
 * delay): put and not yet finished, but no get can take them now.  Walked
 * only while the requeued hint is up; approximate while calls are in flight,
 * like every count of the segment. */
uint64_t fq_delayed(fq_queue *q)
{
    fq_ctrl *ctl = q->ctrl;
    if (!atomic_load_explicit(&ctl->requeued, SEQ))
        return 0;
    fq_nb_clock now = fq_nb_now();
    uint64_t rel = atomic_load_explicit(&ctl->release, SEQ);
    uint64_t hd = atomic_load_explicit(&ctl->head, SEQ);
    uint64_t p = rel, k = 0;
    while (p < hd && p - rel < q->cap) {
        fq_rec *r = fq_rec_at(q, p);
        uint64_t w = atomic_load_explicit(&r->word, ACQ);
        if (!fq_match(q, p, w))
            break; /* moved under us: what was seen so far */
        if ((w & 7) == FQ_REC_REQUEUED && fq_nb_left(q, fq_meta_load(r), now, 0))
            k++;
        uint64_t span = fq_span(q, p, w, r->len);
        if (!span)
            break;
        p += span;
    }
    return k;
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
static int fq_drained(fq_queue *q, uint64_t h)
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
    fq_nb_clock now = fq_nb_now();
    uint32_t soonest = 0;
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
            uint32_t left = fq_nb_left(q, fq_meta_load(r), now, 1);
            if (left) { /* delayed: not before its time */
                if (!soonest || left < soonest)
                    soonest = left;
                p += span;
                continue;
            }
            fq_held_clear(in);
            fq_intent_claim(in, p, p + span, 1, count);
            FQ_CRASH_POINT("take_before_cas");
            /* seq_cst: recovery reads this word, then the intents */
            uint32_t me = (uint32_t)atomic_load_explicit(&q->slot, RLX) << 3 | (uint32_t)lane;
            if (atomic_compare_exchange_strong_explicit(
                    &r->word, &w, fq_taken_word(q->salt, p, me), SEQ, RLX)) {
                /* A REQUEUED word is the same after every put-back, so the
                 * CAS also wins on a record taken and given back again with
                 * a delay since our look at its meta (ABA).  Look again: the
                 * CAS read the put-back's seq_cst CAS, after its not-before
                 * store.  Delayed: give it back untouched (meta, hint) and
                 * bump requeue_seq (a walk that saw it TAKEN meanwhile may
                 * hold a verdict "only delayed" that misses its time).
                 * Killed before the give-back: recovery requeues the TAKEN
                 * record of our dead slot, meta and not-before kept. */
                fq_nb_clock fresh = fq_nb_now();
                if (fq_nb_left(q, fq_meta_load(r), fresh, 1)) {
                    uint64_t tw = fq_taken_word(q->salt, p, me);
                    atomic_compare_exchange_strong(&r->word, &tw, fq_tag_of(q, p) | FQ_REC_REQUEUED);
                    atomic_fetch_add(&ctl->requeue_seq, 1);
                    atomic_store_explicit(&in->state, count << 2 | FQ_PH_IDLE, REL);
                    /* the rest of the walk with the fresh clock: with the
                     * old now this record (given back after it was read,
                     * its not-before more than the delay past it: "not
                     * trusted") would read as due again, and we would take
                     * and give it back until its time.  Read before the
                     * loads that follow, as now was.  A verdict stored at
                     * the end (soonest) mixes the two clocks, but our bump
                     * above has made its seq stale already. */
                    now = fresh;
                    continue; /* re-read this record: skipped as delayed */
                }
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
        atomic_store_explicit(&q->rq_skip, seq << 24 | ((now.units + soonest) & FQ_NB_MASK), RLX);
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
    int lane, rc = fq_enter(q, &lane);
    if (rc)
        return rc;
    /* requeued records first (unless every requeued record is delayed) */
    if (atomic_load_explicit(&ctl->requeued, RLX) && !fq_rq_skipping(q)) {
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
        uint32_t takes = 0; /* the claim's first record's (fastq.h, attempt) */
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
                if (n && bytes + len > max_bytes)
                    break;
                /* the producer's takes (0 unless put with a first attempt,
                 * fq_put_commit), published by the acquire above; a claim
                 * ends before a record whose takes differ, so that one
                 * attempt is true of all its records */
                uint32_t tk = FQ_META_TAKES(fq_meta_load(r));
                if (n && tk != takes)
                    break;
                if (!n) {
                    first_off = p - h;
                    takes = tk;
                }
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
        fq_held_clear(in);
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
        /* the head passes a record once: its first delivery here, after
         * the takes it was put with */
        c->attempt = takes + 1;
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
        /* time in queue: a fresh message's first delivery (fq_layout.h) */
        if (fq_sample_due(q, lane, 1, p) && fq_sample_at(q, h, p))
            fq_sample_note(q, 1, ((p - 1) >> q->sample_shift) + 1);
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

void fq_get_mark_unacked(fq_queue *q, const fq_claim *c)
{
#ifndef FQ_NO_COUNTERS
    /* CLOCK_REALTIME since the segment's creation (review 15, T1): the clock
     * every process reads alike, in any time namespace and after a reboot */
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    uint64_t now = (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
    uint64_t made = q->ctrl->created_ns;
    uint64_t ms = now > made ? (now - made) / 1000000u : 0;
    ms = ms < FQ_HELD_MS_MAX ? ms + 1 : FQ_HELD_MS_MAX; /* 1 + ms: never 0 */
    fq_intent *in = fq_my_intent(q, (int)c->lane, 1);
    /* relaxed: statistics; only the lane's holder writes it, and a reader
     * checks it against the intent's pos (fq_counts_read) */
    atomic_store_explicit(&in->held, FQ_HELD(ms, c->pos), RLX);
#else
    (void)q, (void)c;
#endif
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
            /* store-load: our DONE marks before the sweep's loads of release
             * and head; pairs with the release CAS and the head load of the
             * oldest claim's consumer (above): its sweep sees our marks, or
             * our sweep sees its release */
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
    /* store-load: our DONE and REQUEUED marks before the sweep's loads; pairs
     * with the oldest claim's release CAS and head load (fq_get_end) */
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

/* CAS-max of the watermark to until (seq_cst) */
static void fq_nb_raise(fq_queue *q, uint64_t until)
{
    uint64_t w = atomic_load_explicit(&q->ctrl->nb_latest, SEQ);
    while (w < until &&
           !atomic_compare_exchange_weak_explicit(&q->ctrl->nb_latest, &w, until, SEQ, SEQ))
        ;
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
        fq_nb_clock now = fq_nb_now();
        nb = (now.units + units) & FQ_NB_MASK;
        if (!nb)
            nb = 1; /* 0 says "none" */
        /* the watermark first (seq_cst), then the meta and the word (the
         * give-back): a taker that sees the word sees the watermark too
         * (fq_nb_left).  A CAS-max: a nack only raises it (a taker lowers
         * one no honest nack can have made, fq_nb_lower). */
        uint64_t until = (now.ms / FQ_NB_UNIT_MS + units + 1) * FQ_NB_UNIT_MS;
        fq_nb_raise(q, until);
        fq_give_back(q, c, 0, nb);
        /* the re-check (step 3 of the watermark's lowering, fq_nb_lower):
         * after our CAS to REQUEUED, a taker may have lowered the watermark
         * below our until (we had found it higher and raised nothing) and
         * died before its re-raise.  Raise it back. */
        fq_nb_raise(q, until); /* the re-check */
        return;
    }
    fq_give_back(q, c, 0, nb);
}

/* A queue consumer's: a record to take, shut down and drained, or shut
 * down immediately. */
int fq_get_ready(fq_queue *q, uint64_t unused)
{
    (void)unused;
    fq_ctrl *c = q->ctrl;
    /* shut down immediately: fq_get_begin raises ShutDown at once, whatever
     * is held or in flight (review 16, I1) */
    if (atomic_load_explicit(&c->state, memory_order_seq_cst) & FQ_STATE_IMMEDIATE)
        return 1;
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

/* ---- repair of a dead consumer ----------------------------------- */

/*
 * Finish marking DONE the claim [p, end) of a consumer killed while marking
 * it (fq_mark_done): each COMMITTED record by a CAS on its exact word, in
 * order.  Records below release may be reused meanwhile (a live sweep
 * passes our marks): a header that no longer matches means release moved,
 * so start again from it.  A COMMITTED record is never passed by a sweep,
 * so no mark can land on bytes that were reused.
 */
static void fq_finish_done(fq_queue *q, uint64_t p, uint64_t end)
{
    for (uint64_t last = UINT64_MAX;;) {
        uint64_t rel = atomic_load(&q->ctrl->release), x = rel > p ? rel : p, w;
        if (rel == last)
            return; /* no progress since the last try: a corrupt segment */
        last = rel;
        while (x < end && fq_header_at(q, x, &w)) {
            fq_rec *r = fq_rec_at(q, x);
            uint64_t span = fq_stable_span(q, x, w);
            if (!span || span > end - x)
                break;
            if ((w & 7) == FQ_REC_COMMITTED) {
                atomic_compare_exchange_strong(&r->word, &w, fq_tag_of(q, x) | FQ_REC_DONE);
                FQ_CRASH_POINT("recover_mid_done");
            }
            x += span;
        }
        /* a header that does not match (or a length that does not fit):
         * reused under us if release passed it meanwhile (start again from
         * there), else a corrupt segment (the requeue pass has the rest) */
        if (x >= end || !fq_released_past(q, x))
            return;
    }
}

/* Fix the message count of a dead consumer lane (phase RECOVERED after). */
void fq_fix_cons_count(fq_queue *q, uint32_t s, unsigned l)
{
    fq_intent *in = &q->slots[s].lane[l].cons;
    uint64_t st = atomic_load(&in->state), count = st >> 2;
    unsigned ph = st & 3;
    if (ph != FQ_PH_WON && ph != FQ_PH_CLAIMING)
        return;
    uint64_t p = atomic_load(&in->pos), end = atomic_load(&in->end), n = atomic_load(&in->n);
    int freeing = (n & FQ_N_FREEING) != 0;
    n &= ~FQ_N_FREEING;
    /* a claim ends at or below head: a (hostile) end past it would have us
     * count, or mark DONE, records nobody claimed (a DONE record at head is
     * never passed again) */
    uint64_t hd = atomic_load(&q->ctrl->head);
    if (end > hd)
        end = hd;
    if (ph == FQ_PH_WON && end > p && end - p <= q->cap) {
        if (freeing)
            fq_finish_done(q, p, end);
        /* again while release moves under the walk (it only moves forward,
         * and at end we are done); a walk failing where release stood
         * still is a corrupt segment: nothing counted */
        for (uint64_t last = UINT64_MAX;;) {
            uint64_t rel = atomic_load(&q->ctrl->release);
            if (rel >= end) {
                count += n;
                break;
            }
            if (rel == last)
                break;
            last = rel;
            unsigned notdone = 1u << FQ_REC_COMMITTED | 1u << FQ_REC_TAKEN |
                               1u << FQ_REC_REQUEUED;
            int64_t nd = fq_count_states(q, rel > p ? rel : p, end, notdone, UINT32_MAX);
            if (nd >= 0) {
                count += n > (uint64_t)nd ? n - (uint64_t)nd : 0;
                break;
            }
        }
    }
    atomic_store(&in->state, count << 2 | FQ_PH_RECOVERED);
}

/*
 * Does a dead lane's intent still cover a record it took (TAKEN)?  Then the
 * lane is kept (and its slot not freed) until a later pass puts the record
 * back: a TAKEN record is only put back under a dead cover, and a pass may
 * miss it (its walk stopped where release moved on, or a transient live
 * intent of a consumer that lost the take covered it).
 */
int fq_holds_taken(fq_queue *q, fq_intent *in, uint32_t me)
{
    uint64_t p = atomic_load(&in->pos), end = atomic_load(&in->end), w;
    if (end <= p || end - p > q->cap || !fq_header_at(q, p, &w) || (w & 7) != FQ_REC_TAKEN ||
        fq_word_taker(w) != me)
        return 0;
    return p + fq_span(q, p, w, fq_rec_at(q, p)->len) == end;
}

/* Put back every claimed, unfinished record that no live consumer covers. */
int fq_requeue_orphans(fq_queue *q, const fq_slot_view *v)
{
    fq_ctrl *c = q->ctrl;
    uint64_t hd = atomic_load(&c->head);
    uint64_t rel = atomic_load(&c->release);
    size_t cap = 256, nrec = 0, nreq = 0;
    uint64_t *pos = malloc(cap * sizeof *pos), *words = malloc(cap * sizeof *words);
    int changed = 0;
    if (!pos || !words)
        goto out;
    for (uint64_t x = rel; x < hd && x - rel < q->cap;) {
        uint64_t w;
        if (!fq_header_at(q, x, &w))
            break; /* released meanwhile: what is left is after it */
        fq_rec *r = fq_rec_at(q, x);
        uint64_t span = fq_span(q, x, w, r->len);
        if (!span)
            break;
        unsigned st = w & 7;
        nreq += st == FQ_REC_REQUEUED;
        if (st == FQ_REC_COMMITTED || st == FQ_REC_TAKEN) {
            if (nrec == cap) {
                cap *= 2;
                uint64_t *np = realloc(pos, cap * sizeof *pos);
                if (!np)
                    goto out;
                pos = np;
                np = realloc(words, cap * sizeof *words);
                if (!np)
                    goto out;
                words = np;
            }
            pos[nrec] = x;
            words[nrec++] = w;
        }
        x += span;
    }
    for (size_t i = 0; i < nrec; i++) {
        uint64_t x = pos[i], w = words[i];
        if ((w & 7) == FQ_REC_TAKEN) {
            /* the word names its taker: put it back only if that taker is
             * dead (a live one may be copying it; the exact word in the CAS
             * rules out a record given back and taken again meanwhile) */
            uint32_t s = fq_word_taker(w) >> 3;
            if (s >= q->nslots || !v[s].dead)
                continue;
        } else {
            int covered = 0;
            for (uint32_t s = 0; s < q->nslots && !covered; s++) {
                /* only a slot seen dead stops protecting its claims: a slot
                 * that was free when we looked may belong to a new process */
                if (v[s].dead)
                    continue;
                for (unsigned l = 0; l < FQ_LANES && !covered; l++) {
                    fq_intent *in = &q->slots[s].lane[l].cons;
                    if ((atomic_load(&in->state) & 3) == FQ_PH_IDLE)
                        continue;
                    covered = atomic_load(&in->pos) <= x && x < atomic_load(&in->end);
                }
            }
            if (covered)
                continue;
            /* after the intents: a claim freed by the direct release CAS,
             * whose owner went idle since, is below release */
            if (x < atomic_load(&c->release))
                continue;
        }
        atomic_fetch_add(&c->requeued, 1);
        if (atomic_compare_exchange_strong(&fq_rec_at(q, x)->word, &w,
                                           fq_tag_of(q, x) | FQ_REC_REQUEUED)) {
            changed = 1;
            FQ_CRASH_POINT("recover_mid_requeue");
        } else {
            atomic_fetch_sub(&c->requeued, 1);
        }
    }
    if (nreq) { /* heal a hint lost by a process killed mid-update */
        uint64_t zero = 0;
        if (atomic_compare_exchange_strong(&c->requeued, &zero, nreq))
            changed = 1;
    }
    /* seq_cst, after the CASes: a taker's verdict "every requeued record is
     * delayed" (fq_rq_skipping) must not outlive them */
    if (changed)
        atomic_fetch_add(&c->requeue_seq, 1);
out:
    free(pos);
    free(words);
    return changed;
}

/*
 * fq_recover.c - repairing what a process killed mid-operation left behind.
 *
 * Called by waiters that made no progress for a while (and when no slot is
 * free), by any process, at any time.  One process recovers at a time: it
 * holds the segment lock (the file lock FQ_LOCK_SEGMENT, which the kernel
 * drops when its holder dies or execs).  Every step is a CAS from a state that says what comes next, so a recoverer
 * killed midway is finished by the next one.
 *
 * What a dead process can leave, and what recovery does:
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
 *  - Sleeper bits in the wait masks: cleared.
 *  - The slot: freed once all its lanes are idle.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <pthread.h>
#include <stdlib.h>
#include <time.h>
#include <unistd.h>

#include "fq_internal.h"

static pthread_mutex_t fq_recover_mu = PTHREAD_MUTEX_INITIALIZER;

/* after fork, in the child: another thread may have held the mutex */
void fq_recover_atfork_child(void)
{
    pthread_mutex_init(&fq_recover_mu, NULL);
}

typedef struct {
    char dead;     /* a slot whose owner is gone (fq_slot_alive) */
    uint64_t word; /* its word then: it stays so until recovery frees it */
} fq_slot_view;

static int fq_header_at(fq_queue *q, uint64_t p, uint64_t *w)
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
static uint64_t fq_stable_span(fq_queue *q, uint64_t x, uint64_t w)
{
    uint64_t span = fq_span(q, x, w, fq_rec_at(q, x)->len);
    atomic_thread_fence(memory_order_acquire);
    return atomic_load(&q->ctrl->release) > x ? 0 : span;
}

/* Count the records in [from, end) in the given states, owned by owner
 * (UINT32_MAX: any).  Returns -1 if the walk ran into an overwritten record. */
static int64_t fq_count_states(fq_queue *q, uint64_t from, uint64_t end, unsigned states,
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
static int fq_fix_prod(fq_queue *q, const fq_slot_view *v, uint32_t s, unsigned l)
{
    fq_intent *in = &q->slots[s].lane[l].prod;
    uint64_t st = atomic_load(&in->state), count = st >> 2, w;
    unsigned ph = st & 3;
    if (ph == FQ_PH_IDLE)
        return 1;
    uint64_t p = atomic_load(&in->pos), end = atomic_load(&in->end), n = atomic_load(&in->n);
    uint32_t owner = s << 8 | l;
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
            int64_t wr = fq_count_states(q, rel > p ? rel : p, end, 1u << FQ_REC_WRITING, owner);
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
            uint32_t own = r->owner;
            uint64_t span = fq_stable_span(q, x, w); /* 0: released meanwhile */
            if (!span || span > end - x)
                break;
            /* the CAS on the exact word re-validates: a WRITING record is
             * never released, so one still WRITING was not reused */
            if ((w & 7) == FQ_REC_WRITING && own == owner)
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
        atomic_thread_fence(memory_order_acquire);
        if (x >= end || atomic_load(&q->ctrl->release) <= x)
            return;
    }
}

/* Fix the message count of a dead consumer lane (phase RECOVERED after). */
static void fq_fix_cons_count(fq_queue *q, uint32_t s, unsigned l)
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
static int fq_holds_taken(fq_queue *q, fq_intent *in, uint32_t me)
{
    uint64_t p = atomic_load(&in->pos), end = atomic_load(&in->end), w;
    if (end <= p || end - p > q->cap || !fq_header_at(q, p, &w) || (w & 7) != FQ_REC_TAKEN ||
        fq_word_taker(w) != me)
        return 0;
    return p + fq_span(q, p, w, fq_rec_at(q, p)->len) == end;
}

/* Put back every claimed, unfinished record that no live consumer covers. */
static int fq_requeue_orphans(fq_queue *q, const fq_slot_view *v)
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
     * delayed" (fq_ring.c, fq_rq_skipping) must not outlive them */
    if (changed)
        atomic_fetch_add(&c->requeue_seq, 1);
out:
    free(pos);
    free(words);
    return changed;
}

/* Take the segment lock if it is free (a dead or exec'd holder's is): 1 if
 * taken.  The process-wide mutex keeps this process's threads out of each
 * other's way (one process's handles of a segment are one holder to it).
 * Taking and dropping the file lock are system calls that order memory
 * like a mutex (the kernel's lock on the file's lock list): the tables one
 * holder changed are seen by the next. */
static int fq_lock_take(fq_queue *q) /* 1 taken, 0 busy, or -errno */
{
    if (pthread_mutex_trylock(&fq_recover_mu) != 0)
        return 0;
    int rc = fq_file_lock(q, FQ_LOCK_SEGMENT, 1);
    if (rc != 0) {
        pthread_mutex_unlock(&fq_recover_mu);
        return rc == -EAGAIN ? 0 : rc;
    }
    atomic_store(&q->ctrl->recover_lock, (uint64_t)(uint32_t)getpid() << 32);
    return 1;
}

int fq_lock_try(fq_queue *q)
{
    return fq_lock_take(q) > 0;
}

/* Take the lock, waiting for a live holder (bounded: holders do short work).
 * 0, or -errno if this handle cannot lock (a forked child that could not
 * open the file again: no /proc, or out of descriptors). */
int fq_lock_wait(fq_queue *q)
{
    int rc;
    while ((rc = fq_lock_take(q)) == 0) {
        struct timespec ts = {0, 50000};
        nanosleep(&ts, NULL);
    }
    return rc > 0 ? 0 : rc;
}

void fq_lock_drop(fq_queue *q)
{
    /* a topic's tables may have changed under the lock: publishers' release
     * scans in progress must look again (seq_cst CAS, before the unlock) */
    fq_topic_tables_changed(q);
    atomic_store(&q->ctrl->recover_lock, 0);
    fq_file_lock(q, FQ_LOCK_SEGMENT, 0);
    pthread_mutex_unlock(&fq_recover_mu);
}

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
                unsigned ph = atomic_load(&q->slots[s].lane[l].cons.state) & 3;
                if (ph == FQ_PH_WON || ph == FQ_PH_CLAIMING) /* always RECOVERED after */
                    fq_stat_add(&c->rec_gets, 1);
                fq_fix_cons_count(q, s, l);
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
    fq_lock_drop(q);
    if (repaired) {
        if (!q->topic)
            fq_sweep(q);
        atomic_fetch_add(&c->data_seq, 1);
        atomic_fetch_add(&c->space_seq, 1);
        fq_wake(q, -1);
    }
    return repaired;
}

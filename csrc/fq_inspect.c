/*
 * fq_inspect.c - reading a segment from outside, for operators: the
 * statistics kept in it, summed, and a consistency check.
 *
 * The counters (fq_layout.h) are kept where their writer writes anyway, so
 * that no cache line is written by every producer and consumer: each
 * lane's intent carries its own (bytes, full, redelivered, nacked, and the
 * message count in its state word), written only by the thread holding the
 * lane; recovery's live in the control block, written under the segment
 * lock.  A queue's unacknowledged deliveries are the consumer lanes whose
 * open claim is the one their held word names (fq_held_read).  A reader sums them: the sums are as of no single instant (a put
 * in progress may show in tail and not yet in puts), and never go down.
 * Nothing here takes a slot or a lock.
 *
 * Time in queue (fq_waits_read): the slots' put and get rings of sample
 * points (fq_layout.h, "Time in queue") are read with their seqlock, the
 * put samples sorted by point, and each get sample matched with the put
 * sample of its point: the wait of that message, from its commit to its
 * first delivery.  A get sample whose put sample was overwritten (its
 * producer went on for two capacities since) is left out, as is a wait
 * below zero (a file kept across a reboot: CLOCK_MONOTONIC started again).
 */
#define _GNU_SOURCE
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "fq_internal.h"

/* A queue consumer lane's unacknowledged delivery (fq_layout.h, held): its
 * claim is open (WON) at the position its holder noted.  A snapshot: the
 * claim may end between the loads (counted once more, as of a moment ago). */
static void fq_held_read(fq_intent *g, uint64_t created_ns, fq_counts *out)
{
    if ((atomic_load_explicit(&g->state, RLX) & 3) != FQ_PH_WON)
        return;
    uint64_t h = atomic_load_explicit(&g->held, RLX);
    if (!h || !FQ_HELD_MS(h) || !FQ_HELD_AT(h, atomic_load_explicit(&g->pos, RLX)))
        return;
    out->held++;
    /* CLOCK_REALTIME ns: 1 + ms since creation (fq_layout.h); created_ns is
     * read from the segment: a value that would wrap the sum gives no age
     * (review 17, G2) */
    if (FQ_HELD_MS(h) - 1 > (UINT64_MAX - created_ns) / 1000000u)
        return;
    uint64_t ns = created_ns + (FQ_HELD_MS(h) - 1) * 1000000u;
    if (!out->held_since_ns || ns < out->held_since_ns)
        out->held_since_ns = ns;
}

void fq_counts_read(fq_queue *q, fq_counts *out)
{
    fq_ctrl *c = q->ctrl;
    memset(out, 0, sizeof *out);
    for (uint32_t s = 0; s < q->nslots; s++) {
        fq_slot *sl = &q->slots[s];
        uint64_t w = atomic_load(&sl->word);
        if (FQ_SLOT_KIND(w) != FQ_SLOT_FREE) {
            if (fq_slot_alive(q, s, w, NULL))
                out->alive++;
            else
                out->dead++;
        }
        for (unsigned l = 0; l < FQ_LANES; l++) {
            fq_intent *p = &sl->lane[l].prod, *g = &sl->lane[l].cons;
            out->puts += atomic_load_explicit(&p->state, RLX) >> 2;
            out->put_bytes += atomic_load_explicit(&p->bytes, RLX);
            out->full += atomic_load_explicit(&p->full, RLX);
            out->blocked_ns += atomic_load_explicit(&p->blocked_ns, RLX);
            out->gets += atomic_load_explicit(&g->state, RLX) >> 2;
            out->get_bytes += atomic_load_explicit(&g->bytes, RLX);
            out->redelivered += atomic_load_explicit(&g->redelivered, RLX);
            out->nacked += atomic_load_explicit(&g->nacked, RLX);
            if (!q->topic)
                fq_held_read(g, c->created_ns, out);
        }
    }
    out->rec_slots = atomic_load(&c->rec_slots);
    out->rec_puts = atomic_load(&c->rec_puts);
    out->rec_gets = atomic_load(&c->rec_gets);
    out->tail = atomic_load(&c->tail);
    out->head = q->topic ? 0 : atomic_load(&c->head);
    out->release = atomic_load(&c->release);
    out->flags = c->flags;
}

/* Read ring entry e (seqlock of fq_layout.h): 1 with *key, *ns if whole. */
static int fq_sample_load(fq_sample *e, uint64_t *key, uint64_t *ns)
{
    /* acquire: pairs with the writer's release store of key */
    uint64_t k = atomic_load_explicit(&e->key, ACQ);
    *ns = atomic_load_explicit(&e->ns, RLX);
    /* pairs with the writer's release fence after it cleared key: if ns is
     * a newer writer's, the key loaded next is 0 or that writer's */
    atomic_thread_fence(ACQ);
    *key = k;
    return k && atomic_load_explicit(&e->key, RLX) == k;
}

static int fq_sample_cmp(const void *a, const void *b)
{
    uint64_t x = ((const uint64_t *)a)[0], y = ((const uint64_t *)b)[0];
    return x < y ? -1 : x > y;
}

size_t fq_waits_max(fq_queue *q)
{
    return (size_t)q->nslots * FQ_SAMPLES;
}

int64_t fq_waits_read(fq_queue *q, fq_wait_sample *out, size_t max)
{
    size_t np = 0, nout = 0, cap = fq_waits_max(q);
    uint64_t(*put)[2] = malloc(cap * sizeof *put);
    if (!put)
        return -ENOMEM;
    for (uint32_t s = 0; s < q->nslots; s++)
        for (unsigned i = 0; i < FQ_SAMPLES; i++)
            if (fq_sample_load(&q->slots[s].put_sample[i], &put[np][0], &put[np][1]))
                np++;
    qsort(put, np, sizeof *put, fq_sample_cmp);
    const uint64_t pmask = ((uint64_t)1 << FQ_SAMPLE_GROUP_SHIFT) - 1;
    for (uint32_t s = 0; s < q->nslots && nout < max; s++) {
        for (unsigned i = 0; i < FQ_SAMPLES && nout < max; i++) {
            uint64_t k[2], gns;
            if (!fq_sample_load(&q->slots[s].get_sample[i], &k[0], &gns))
                continue;
            uint64_t g = k[0] >> FQ_SAMPLE_GROUP_SHIFT;
            if (g > q->nsubs) /* untrusted: a group that cannot be */
                continue;
            k[0] &= pmask;
            uint64_t(*hit)[2] = bsearch(k, put, np, sizeof *put, fq_sample_cmp);
            if (!hit || (*hit)[1] > gns)
                continue;
            out[nout].group = (uint32_t)g;
            out[nout].reserved = 0;
            out[nout].wait_ns = gns - (*hit)[1];
            out[nout].at_ns = gns;
            nout++;
        }
    }
    free(put);
    return (int64_t)nout;
}

/* Is position p inside the claim of a put in progress (any slot's producer
 * lane, alive or dead, in phase CLAIMING or WON)?  Then the claim's end (the
 * largest, if several intents cover p: a CLAIMING one may be stale), else 0. */
static uint64_t fq_put_open_at(fq_queue *q, uint64_t p)
{
    uint64_t found = 0;
    for (uint32_t s = 0; s < q->nslots; s++) {
        if (FQ_SLOT_KIND(atomic_load(&q->slots[s].word)) == FQ_SLOT_FREE)
            continue;
        for (unsigned l = 0; l < FQ_LANES; l++) {
            fq_intent *in = &q->slots[s].lane[l].prod;
            unsigned ph = atomic_load(&in->state) & 3;
            uint64_t end = atomic_load(&in->end);
            if ((ph == FQ_PH_CLAIMING || ph == FQ_PH_WON) && atomic_load(&in->pos) <= p &&
                p < end && end > found)
                found = end;
        }
    }
    return found;
}

/*
 * Browse (fq_browse): a seqlock-style read.  Records are overwritten only
 * after release passed them (a producer reuses space below release only),
 * so a copy made while the record carried its position's tag, and after
 * which release had still not passed it (fq_released_past: an acquire
 * fence, then the load), is intact.  A record released under the walk
 * sends it to the new release.
 */
int fq_browse(fq_queue *q, uint64_t *pos, uint64_t *next, void *buf, uint64_t cap,
              uint64_t *len)
{
    if (q->topic)
        return -EINVAL;
    fq_ctrl *c = q->ctrl;
    for (int tries = 0; tries < 1 << 16; tries++) {
        uint64_t rel = atomic_load(&c->release), tl = atomic_load(&c->tail);
        uint64_t p = *pos > rel ? *pos : rel;
        if (p & 15)
            return FQ_ECORRUPT;
        int moved = 0;
        while (p < tl && p - rel < q->cap) {
            fq_rec *r = fq_rec_at(q, p);
            /* acquire: pairs with the producer's release store of the header */
            uint64_t w = atomic_load_explicit(&r->word, ACQ);
            uint32_t l = r->len;
            uint64_t span = fq_span(q, p, w, l);
            if (!fq_match(q, p, w) || !span) {
                if (fq_released_past(q, p)) {
                    moved = 1; /* released under us: go on from release */
                    break;
                }
                /* a put whose headers are not written yet: past it (an end
                 * that is not a record boundary shows no tag: the walk
                 * stops there) */
                uint64_t end = fq_put_open_at(q, p);
                if (end > p && !(end & 15) && end <= tl) {
                    p = end;
                    continue;
                }
                return FQ_EMPTY;
            }
            unsigned st = w & 7;
            if (st == FQ_REC_COMMITTED || st == FQ_REC_TAKEN || st == FQ_REC_REQUEUED) {
                memcpy(buf, r + 1, l < cap ? l : cap);
                if (fq_released_past(q, p)) {
                    moved = 1;
                    break;
                }
                *pos = p;
                *next = p + span;
                *len = l;
                return FQ_OK;
            }
            p += span;
        }
        if (!moved)
            return FQ_EMPTY;
    }
    return FQ_EMPTY; /* release kept passing the walk: the queue moves on faster than we read */
}

/* Record a problem: the first one's text goes to err. */
#define PROBLEM(...)                                       \
    do {                                                   \
        if (!bad++)                                        \
            fq_err(err, errlen, 0, __VA_ARGS__);           \
    } while (0)

int fq_check(fq_queue *q, char *err, size_t errlen)
{
    fq_ctrl *c = q->ctrl;
    int bad = 0;
    if (err && errlen)
        err[0] = 0;
    uint64_t rel = atomic_load(&c->release), hd = atomic_load(&c->head),
             tl = atomic_load(&c->tail);
    unsigned long long R = rel, H = hd, T = tl;
    if ((rel | hd | tl) & 15)
        PROBLEM("cursors not 16-byte aligned (release %llu, head %llu, tail %llu)", R, H, T);
    if (tl >= FQ_POS_MAX)
        PROBLEM("tail %llu is past the largest position", T);
    if (rel > tl || tl - rel > q->cap)
        PROBLEM("release %llu and tail %llu are not within one capacity (%llu)", R, T,
                (unsigned long long)q->cap);
    if (!q->topic && (hd < rel || hd > tl))
        PROBLEM("head %llu is not between release %llu and tail %llu", H, R, T);
    uint32_t hwm = atomic_load(&c->subs_hwm);
    if (q->topic && hwm > q->nsubs)
        PROBLEM("subscriber high-water mark %u exceeds the table (%u)", hwm, q->nsubs);
    if (bad)
        return bad;
    /* walk the records between release and tail: each must carry its
     * position's tag, a known state, a valid span, and head must fall on
     * a record boundary */
    int head_seen = q->topic || hd == rel;
    uint64_t p = rel;
    while (p < tl) {
        fq_rec *r = fq_rec_at(q, p);
        uint64_t w = atomic_load(&r->word);
        unsigned st = w & 7;
        if (!fq_match(q, p, w)) {
            if (fq_put_open_at(q, p))
                break; /* a put in progress: its headers are not written yet */
            PROBLEM("record at %llu does not carry its position's tag", (unsigned long long)p);
            return bad;
        }
        if (st == 0) {
            PROBLEM("record at %llu has state 0", (unsigned long long)p);
            return bad;
        }
        uint64_t span = fq_span(q, p, w, r->len);
        if (!span || span > tl - p) {
            PROBLEM("record at %llu has an impossible length %u", (unsigned long long)p, r->len);
            return bad;
        }
        if (!q->topic && p >= hd && (st == FQ_REC_DONE || st == FQ_REC_TAKEN ||
                                     st == FQ_REC_REQUEUED))
            PROBLEM("record at %llu past head %llu is %s", (unsigned long long)p, H,
                    st == FQ_REC_DONE ? "DONE" : st == FQ_REC_TAKEN ? "TAKEN" : "REQUEUED");
        p += span;
        if (p == hd)
            head_seen = 1;
    }
    if (!head_seen && hd <= p)
        PROBLEM("head %llu is not on a record boundary", H);
    if (q->topic) {
        uint64_t pub = atomic_load(&c->published);
        for (uint32_t i = 0; i < hwm && i < q->nsubs; i++) {
            fq_group *g = &q->groups[i];
            if ((atomic_load(&g->word) & 0xff) != FQ_GRP_ACTIVE)
                continue;
            uint64_t gh = atomic_load(&g->head), nx = atomic_load(&g->next_idx);
            if (gh > tl || (gh & 15))
                PROBLEM("group %u's head %llu is past tail %llu or unaligned", i,
                        (unsigned long long)gh, T);
            if (nx != UINT64_MAX && nx > pub)
                PROBLEM("group %u's next message %llu is past the %llu published", i,
                        (unsigned long long)nx, (unsigned long long)pub);
        }
    }
    return bad;
}

/* fq_test_hooks.c: white-box helpers of the fastq C core, for tests only (see
 * fq_test_hooks.h).  Built by tests/support/cbuild.py with csrc/ into a cffi module. */
#include <sched.h>
#include <string.h>
#include <time.h>

#include "fastq.h"
#include "fq_internal.h"
#include "fq_test_hooks.h"

uint64_t fqt_tag(fq_queue *q, uint64_t pos) { return fq_tag_of(q, pos); }
uint64_t fqt_rec_size(uint64_t len) { return fq_rec_size(len); }
uint64_t fqt_rec_word(fq_queue *q, uint64_t pos) { return atomic_load(&fq_rec_at(q, pos)->word); }
uint32_t fqt_rec_len(fq_queue *q, uint64_t pos) { return fq_rec_at(q, pos)->len; }
/* the record state at pos, or -1 if the word does not carry pos's tag */
int fqt_rec_state(fq_queue *q, uint64_t pos)
{
    uint64_t w = atomic_load(&fq_rec_at(q, pos)->word);
    if ((w & ~(uint64_t)7) != fq_tag_of(q, pos))
        return -1;
    return (int)(w & 7);
}
void *fqt_rec_data(fq_queue *q, uint64_t pos) { return fq_rec_at(q, pos) + 1; }
uint64_t fqt_data_offset(fq_queue *q) { return (uint64_t)(q->data - q->base); }
int fqt_my_slot(fq_queue *q) { return atomic_load(&q->slot); }
uint64_t fqt_nap(fq_queue *q, uint32_t s, int side) { return atomic_load(&q->slots[s].nap[side]); }
void fqt_wake(fq_queue *q, int what) { fq_wake(q, what); }
uint32_t fqt_spin_ns(fq_queue *q) { return atomic_load(&q->spin_ns); }
void fqt_spin_limits(uint64_t out[5])
{
    out[0] = FQ_SPIN_MIN_NS;
    out[1] = FQ_SPIN_MAX_NS;
    out[2] = FQ_SPIN_PROBE_EVERY;
    out[3] = FQ_SPIN_PROBE_NEAR_NS;
    out[4] = FQ_SPIN_TRY_EVERY;
}
void fqt_spin_slept(fq_queue *q, uint64_t waited_ns) { fq_spin_slept(q, waited_ns); }
uint64_t fqt_slot_word(fq_queue *q, uint32_t s) { return atomic_load(&q->slots[s].word); }
int fqt_slot_of_pid(fq_queue *q, int pid)
{
    for (uint32_t s = 0; s < q->nslots; s++) {
        uint64_t w = atomic_load(&q->slots[s].word);
        if (FQ_SLOT_KIND(w) != FQ_SLOT_FREE && FQ_SLOT_PID(w) == pid)
            return (int)s;
    }
    return -1;
}
static fq_intent *fqt_in(fq_queue *q, uint32_t s, uint32_t lane, int cons)
{
    fq_lane *l = &q->slots[s].lane[lane];
    return cons ? &l->cons : &l->prod;
}
/* field: 0 pos, 1 end, 2 n, 3 state */
uint64_t fqt_intent(fq_queue *q, uint32_t s, uint32_t lane, int cons, int field)
{
    fq_intent *in = fqt_in(q, s, lane, cons);
    switch (field) {
    case 0: return atomic_load(&in->pos);
    case 1: return atomic_load(&in->end);
    case 2: return atomic_load(&in->n);
    default: return atomic_load(&in->state);
    }
}
void fqt_set_intent_state(fq_queue *q, uint32_t s, uint32_t lane, int cons, uint64_t st)
{
    atomic_store(&fqt_in(q, s, lane, cons)->state, st);
}
/* field as in fqt_intent: 0 pos, 1 end, 2 n, 3 state */
void fqt_set_intent(fq_queue *q, uint32_t s, uint32_t lane, int cons, int field, uint64_t v)
{
    fq_intent *in = fqt_in(q, s, lane, cons);
    _Atomic uint64_t *f[] = {&in->pos, &in->end, &in->n, &in->state};
    atomic_store(f[field & 3], v);
}
/* messages got, summed over every consumer lane of every slot */
uint64_t fqt_cons_total(fq_queue *q)
{
    uint64_t got = 0;
    for (uint32_t s = 0; s < q->nslots; s++)
        for (unsigned l = 0; l < FQ_LANES; l++)
            got += atomic_load(&q->slots[s].lane[l].cons.state) >> 2;
    return got;
}

static uint64_t fqt_now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}
/* One message of the put and publish loops below: [id u32][seq u32][seq & 0xff ...]
 * of 16*[min16, max16] bytes (drawn from *seed), written into buf (cap bytes) and put,
 * spinning (sched_yield) while the ring is full.  1 when it is in; 0 when the loop
 * must return *ret: -1 (too big for buf), -2 - rc (fq_put failed with rc), or i (the
 * deadline passed). */
static int fqt_put_one(fq_queue *q, unsigned char *buf, size_t cap, uint32_t id, int64_t i,
                       uint32_t *seed, uint32_t min16, uint32_t max16, uint64_t deadline_ns,
                       int64_t *ret)
{
    *seed = *seed * 1103515245u + 12345u;
    size_t len = 16u * (min16 + (*seed >> 8) % (max16 - min16 + 1));
    if (len > cap) {
        *ret = -1;
        return 0;
    }
    memcpy(buf, &id, 4);
    uint32_t s32 = (uint32_t)i;
    memcpy(buf + 4, &s32, 4);
    memset(buf + 8, (int)(i & 0xff), len - 8);
    for (unsigned spins = 0;; spins++) {
        int rc = fq_put(q, buf, len);
        if (rc == FQ_OK)
            return 1;
        if (rc != FQ_FULL) {
            *ret = -2 - rc;
            return 0;
        }
        if ((spins & 255) == 255 && fqt_now() > deadline_ns) {
            *ret = i;
            return 0;
        }
        sched_yield();
    }
}

/* C-speed loops for threaded stress (the GIL is released for the whole call).
 * Producer: n messages [id u32][seq u32][seq & 0xff ...], 16*[min16, max16] bytes
 * (whole multiples of 16: the tail never sits 8 bytes before the end).  Returns
 * the number put; fewer if the deadline passed. */
int64_t fqt_put_loop(fq_queue *q, uint32_t id, int64_t n, uint32_t seed, uint32_t min16,
                     uint32_t max16, uint64_t deadline_ns)
{
    unsigned char buf[1 << 16];
    for (int64_t i = 0; i < n; i++) {
        int64_t ret;
        if (!fqt_put_one(q, buf, sizeof buf, id, i, &seed, min16, max16, deadline_ns, &ret))
            return ret;
    }
    return n;
}
/* Consumer: records id << 32 | seq of every message into out[]; checks payloads
 * and that each producer's messages come in order.  Stops once
 * every message put is got (*putall >= 0 is the number put, set once the producers
 * finished; *gotall counts the messages of every consumer), or at the deadline.  Returns the number of messages, or a
 * negative error: -1 out full, -2 claim count mismatch, -3 torn payload, -4 order,
 * -5 deadline, -6 unexpected return code.  On -2 and -3, diag holds the claim's pos,
 * end, first_off and the release cursor seen then. */
int64_t fqt_get_loop(fq_queue *q, size_t max_n, uint64_t *out, int64_t cap, int64_t *gotall,
                     int64_t *putall, uint64_t deadline_ns, uint64_t diag[4])
{
    int64_t k = 0;
    int64_t last[256];
    for (int i = 0; i < 256; i++)
        last[i] = -1;
    for (unsigned iter = 0;; iter++) {
        fq_claim c;
        int rc = fq_get_begin(q, max_n, (uint64_t)1 << 40, &c);
        if (rc == FQ_EMPTY) {
            int64_t want = __atomic_load_n(putall, __ATOMIC_ACQUIRE);
            if (want >= 0 && __atomic_load_n(gotall, __ATOMIC_ACQUIRE) >= want)
                return k;
            if ((iter & 255) == 255 && fqt_now() > deadline_ns)
                return -5;
            sched_yield();
            continue;
        }
        if (rc != FQ_OK)
            return -6;
        const void *d;
        uint64_t len, m = 0;
        while (fq_claim_next(q, &c, &d, &len)) {
            const unsigned char *b = d;
            uint32_t id, seq;
            diag[0] = c.pos;
            diag[1] = c.end;
            diag[2] = c.first_off;
            diag[3] = atomic_load(&q->ctrl->release);
            if (len < 16 || ++m > c.n)
                return -2;
            memcpy(&id, b, 4);
            memcpy(&seq, b + 4, 4);
            if (b[len - 1] != (seq & 0xff) || b[8] != (seq & 0xff) || id > 255)
                return -3;
            if ((int64_t)seq <= last[id])
                return -4;
            last[id] = seq;
            if (k == cap)
                return -1;
            out[k++] = (uint64_t)id << 32 | seq;
        }
        __atomic_fetch_add(gotall, (int64_t)m, __ATOMIC_ACQ_REL);
        if (m != c.n) {
            diag[0] = c.pos;
            diag[1] = c.end;
            diag[2] = c.first_off;
            diag[3] = atomic_load(&q->ctrl->release);
            return -2;
        }
        fq_get_end(q, &c);
    }
}

/* ---- topics (tests/c/test_topic_*.py) --------------------------------- */
/* member fields: 0 word, 1 owner (slot word), 2 group, 3 pos, 4 end, 5 n, 6 state, 7 got */
uint64_t fqt_member_field(fq_queue *q, uint32_t i, int field)
{
    fq_member *e = &q->members[i];
    switch (field) {
    case 0: return atomic_load(&e->word);
    case 1: return atomic_load(&e->owner);
    case 2: return atomic_load(&e->group);
    case 3: return atomic_load(&e->pos);
    case 4: return atomic_load(&e->end);
    case 5: return atomic_load(&e->n);
    case 6: return atomic_load(&e->state);
    default: return atomic_load(&e->got);
    }
}
/* group fields: 0 word, 1 head (a position), 2 next_idx, 3 dropped, 4 orphans,
 * 5 head_by (the member that moved the head: index + 1) */
uint64_t fqt_group_field(fq_queue *q, uint32_t i, int field)
{
    fq_group *g = &q->groups[i];
    switch (field) {
    case 0: return atomic_load(&g->word);
    case 1: return atomic_load(&g->head);
    case 2: return atomic_load(&g->next_idx);
    case 3: return atomic_load(&g->dropped);
    case 4: return atomic_load(&g->orphans);
    default: return atomic_load(&g->head_by);
    }
}
uint64_t fqt_published(fq_queue *q) { return atomic_load(&q->ctrl->published); }
uint64_t fqt_recover_lock(fq_queue *q) { return atomic_load(&q->ctrl->recover_lock); }

/* the not-before watermark (ms, CLOCK_REALTIME; fq_get.c fq_nb_lower) */
uint64_t fqt_nb_latest(fq_queue *q) { return atomic_load(&q->ctrl->nb_latest); }
void fqt_set_nb_latest(fq_queue *q, uint64_t v) { atomic_store(&q->ctrl->nb_latest, v); }

/* Publisher loop for topics: like fqt_put_loop (id 0), with a random pause of up to
 * `delay` spins after each message, and (progress non-NULL) never more than `lead`
 * messages ahead of *progress (a reader's next index): paced against a slow reader
 * that it still laps. */
int64_t fqt_pub_loop(fq_queue *q, int64_t n, uint32_t seed, uint32_t min16, uint32_t max16,
                     uint32_t delay, const int64_t *progress, int64_t lead,
                     uint64_t deadline_ns)
{
    static __thread unsigned char buf[1 << 16];
    uint32_t id = 0;
    for (int64_t i = 0; i < n; i++) {
        int64_t ret;
        if (!fqt_put_one(q, buf, sizeof buf, id, i, &seed, min16, max16, deadline_ns, &ret))
            return ret;
        if (delay) {
            seed = seed * 1103515245u + 12345u;
            uint32_t k = (seed >> 8) % (delay + 1);
            for (volatile uint32_t j = 0; j < k; j++)
                ;
        }
        for (unsigned spins = 0;
             progress && i + 1 - __atomic_load_n(progress, __ATOMIC_ACQUIRE) > lead; spins++) {
            if ((spins & 255) == 255 && fqt_now() > deadline_ns)
                return i + 1;
            sched_yield();
        }
    }
    return n;
}

/* Subscriber loop at C speed (the GIL is released for the whole call), reading
 * messages made by fqt_put_loop ([id u32][seq u32][seq & 0xff ...]).  Each message
 * is copied in two halves with a random pause of up to `delay` spins between them
 * (a drop topic's publisher may overwrite it meanwhile), then checked with
 * fq_sub_intact; an intact copy must be whole: its bytes all seq & 0xff and, with
 * flags & 2 (one publisher of id 0), seq == its message index.  Indices must grow.
 * flags & 1 (the only member of its group): after every fq_sub_end, received +
 * fq_sub_dropped == the last index received + 1 (the subscription started at
 * index 0).  flags & 4: after each claim of new messages (not redelivered), its end
 * (the group's new head, q being the subscription's handle) must be a record boundary:
 * a record of that position, or at or past tail, or released (-9 otherwise, after
 * waiting 200 ms for a header being written).  The indices received go to out[].  *gotall counts the messages of every
 * member of the group; the loop returns once *gotall + dropped >= total, or at the
 * deadline.  Returns the number received, or: -1 out full, -3 torn intact payload,
 * -4 index order, -5 deadline, -6 unexpected return code, -7 seq != index,
 * -8 drop accounting off, -9 a head inside a record.  progress (if not NULL): the
 * next index after the last one received, for fqt_pub_loop.  diag: last index, dropped, received, not intact,
 * claims, rc, 0, 0. */
int64_t fqt_sub_loop(fq_queue *q, fq_sub *s, size_t max_n, uint32_t flags, uint32_t delay,
                     uint32_t seed, uint64_t *out, int64_t cap, int64_t *gotall, int64_t total,
                     int64_t *progress, uint64_t deadline_ns, uint64_t diag[8])
{
    static __thread unsigned char buf[1 << 17];
    int64_t k = 0, bad = 0, claims = 0;
    uint64_t last = UINT64_MAX;
    for (int i = 0; i < 8; i++)
        diag[i] = 0;
#define FQT_DIAG(rcv)                                              \
    do {                                                           \
        diag[0] = last;                                            \
        diag[1] = fq_sub_dropped(s);                               \
        diag[2] = (uint64_t)k;                                     \
        diag[3] = (uint64_t)bad;                                   \
        diag[4] = (uint64_t)claims;                                \
        diag[5] = (uint64_t)(int64_t)(rcv);                        \
    } while (0)
    for (unsigned iter = 0;; iter++) {
        int64_t all = __atomic_load_n(gotall, __ATOMIC_ACQUIRE);
        if (all + (int64_t)fq_sub_dropped(s) >= total) {
            FQT_DIAG(0);
            return k;
        }
        fq_claim c;
        int rc = fq_sub_begin(s, max_n, (uint64_t)1 << 40, &c);
        if (rc == FQ_EMPTY) {
            if ((iter & 63) == 63 && fqt_now() > deadline_ns) {
                FQT_DIAG(rc);
                return -5;
            }
            sched_yield();
            continue;
        }
        if (rc != FQ_OK) {
            FQT_DIAG(rc);
            return -6;
        }
        claims++;
        if ((flags & 4) && !c.redelivered) {
            uint64_t e = c.end, t0 = fqt_now();
            for (;;) {
                uint64_t tl = atomic_load(&q->ctrl->tail);
                uint64_t w = atomic_load(&fq_rec_at(q, e)->word);
                uint64_t rl = atomic_load(&q->ctrl->release);
                if (e >= tl || e < rl || fq_match(q, e, w))
                    break;
                if (fqt_now() - t0 > 200000000ull) {
                    FQT_DIAG(0);
                    diag[6] = e;
                    diag[7] = rl;
                    return -9;
                }
                sched_yield();
            }
        }
        const void *d;
        uint64_t len;
        int64_t m = 0;
        while (fq_sub_next(s, &c, &d, &len)) {
            if (len > sizeof buf) {
                FQT_DIAG(0);
                return -3;
            }
            uint64_t half = len / 2;
            memcpy(buf, d, half);
            seed = seed * 1103515245u + 12345u;
            if (delay) {
                uint32_t spins = (seed >> 8) % (delay + 1);
                for (volatile uint32_t j = 0; j < spins; j++)
                    ;
            }
            memcpy(buf + half, (const unsigned char *)d + half, len - half);
            if (!fq_sub_intact(s, &c)) {
                bad++;
                continue;
            }
            uint32_t id, seq;
            if (len < 16) {
                FQT_DIAG(0);
                return -3;
            }
            memcpy(&id, buf, 4);
            memcpy(&seq, buf + 4, 4);
            for (uint64_t j = 8; j < len; j++)
                if (buf[j] != (unsigned char)(seq & 0xff)) {
                    FQT_DIAG(0);
                    diag[6] = c.msg_idx;
                    diag[7] = j;
                    return -3;
                }
            if ((flags & 2) && (id != 0 || seq != (uint32_t)c.msg_idx)) {
                FQT_DIAG(0);
                diag[6] = c.msg_idx;
                diag[7] = seq;
                return -7;
            }
            if (last != UINT64_MAX && c.msg_idx <= last) {
                FQT_DIAG(0);
                diag[6] = c.msg_idx;
                return -4;
            }
            last = c.msg_idx;
            if (k == cap) {
                FQT_DIAG(0);
                return -1;
            }
            out[k++] = c.msg_idx;
            m++;
        }
        fq_sub_end(s, &c);
        __atomic_fetch_add(gotall, m, __ATOMIC_ACQ_REL);
        if (progress && last != UINT64_MAX)
            __atomic_store_n(progress, (int64_t)last + 1, __ATOMIC_RELEASE);
        if ((flags & 1) && last != UINT64_MAX && (uint64_t)k + fq_sub_dropped(s) != last + 1) {
            FQT_DIAG(0);
            return -8;
        }
    }
#undef FQT_DIAG
}

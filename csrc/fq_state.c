/*
 * fq_state.c - what a handle asks of its segment, whatever its discipline:
 * sizes and statistics (snapshots, lane by lane, with no ordering between the
 * loads: exact when no call is in flight), shutdown, and the waiting calls
 * fq_wait/fq_wait_for/fq_spin/fq_arm, which pick the discipline's readiness
 * rule (fq_get_ready, fq_put_ready, fq_topic_data_ready) and its quiet rule
 * (fq_idle; fq_topic_data_quiet, fq_topic_space_quiet) and pass them to the
 * wait primitive (fq_wait.c).
 *
 * Shutdown is a bit of ctrl->state, set with a seq_cst RMW and followed by a
 * bump of both futex words and a wake of every sleeper: a waiter re-checks
 * the state in its readiness rule after raising its sleeper bit, so it
 * either sees the bit or is woken.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <limits.h>
#include <stdlib.h>
#include <string.h>

#include "fq_internal.h"

/* ---- status ------------------------------------------------------ */

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

/* ---- waiting, by the discipline's rule --------------------------- */

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
 * tail or head open, nothing put back, and no producer's intent (it rings
 * the quiet sleepers before it claims tail: a waiter that missed the ring
 * sees the intent here; review 17, W1); a topic's rules are fq_topic.c's. */
static int fq_quiet(fq_queue *q)
{
    return fq_idle(q) && !fq_put_in_flight(q);
}

static fq_quiet_fn fq_quiet_rule(fq_queue *q, int what)
{
    if (!q->topic)
        return fq_quiet;
    return what == FQ_WAIT_SPACE ? fq_topic_space_quiet : fq_topic_data_quiet;
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
    return fq_wait_pred(q, what, fq_rule(q, what), need, fq_quiet_rule(q, what), slice_ns,
                        timeout_ns, strategy);
}

int fq_spin(fq_queue *q, int what, uint64_t need, uint64_t ns)
{
    return fq_spin_pred(q, fq_rule(q, what), need, ns);
}

int fq_arm(fq_queue *q, int what, uint64_t need, int on)
{
    return fq_arm_pred(q, what, fq_rule(q, what), need, fq_quiet_rule(q, what), on);
}

int fq_ready(fq_queue *q, int what, uint64_t need)
{
    return fq_rule(q, what)(q, need);
}

int fq_arm_slice(fq_queue *q, int what, uint64_t need)
{
    /* no quiet bit: the caller sleeps in slices (a recovery timer) anyway */
    return fq_arm_pred(q, what, fq_rule(q, what), need, NULL, 1);
}

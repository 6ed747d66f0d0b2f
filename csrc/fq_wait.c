/*
 * fq_wait.c - waiting for a condition without a lock and without a syscall
 * on the fast path.  The wait layer knows no discipline: the caller passes
 * the readiness rule as a predicate (ready(q, arg): may the condition hold
 * now?), as ck's ck_ec_wait_pred does; the rules of the queue and the topic
 * live with them (fq_put.c, fq_get.c, fq_topic.c, fq_sub.c).
 *
 * Each side has a futex word in the segment (data_seq, space_seq) and a
 * bitmask of slots that have a waiter asleep on it.
 *
 *   waiter: v = load(word); set our bit (seq_cst RMW; before every sleep);
 *           re-check the condition; futex_wait(word, v, slice); clear the
 *           bit when the process's last sleeper on it leaves.
 *   writer: publish (release); seq_cst fence; if a slot whose bit is set
 *           has a sleep not yet woken (its nap, below), bump the word and
 *           FUTEX_WAKE everyone; ring the bell of each slot seen that has
 *           an awaiting task.  The writer only loads the bits.
 *
 * Either the writer's fence-then-load sees the waiter's bit, or the
 * waiter's RMW-then-re-check sees the published data: a wake-up is never
 * lost.  Loading v before the re-check matters: a bump between the re-check
 * and the futex call makes FUTEX_WAIT return EAGAIN at once.  A bitmask,
 * not a count, because a waiter killed in its sleep must not leave the
 * count raised forever: recovery clears a dead slot's bit.
 *
 * Only the owner of a bit clears it (when its process's last sleeper or
 * armed task on that side leaves), or recovery once the owner is dead;
 * never a writer.  So a bit is up from before its sleeper's re-check until
 * after that sleeper is back from FUTEX_WAIT, whatever happens to writers:
 * a writer killed between its load of the bits and its FUTEX_WAKE (or
 * stopped there for good) takes nothing with it, and the next writer's
 * fence-then-load sees the same bits and wakes.  (A writer that took the
 * bits, exchanging them with 0, and died before waking would leave the
 * sleepers asleep with no bit up for any later writer.)  Bells are rung
 * once per take by the owner (bell_rung), not once per writer.
 *
 * Waking each sleep once.  A bit up says "look at this slot", not "wake
 * it": between a wake-up and the woken sleeper's leaving (tens of us when
 * its process waits for a core; forever when it was killed asleep) every
 * writer would otherwise make a FUTEX_WAKE on nobody.  The slot's nap[side]
 * (fq_layout.h) says whether the sleep still needs one:
 *
 *   sleeper: under the handle's mutex: v = load(word); then
 *            store(nap, a new registration, SLEEPING); set the bit; then
 *            re-check and futex_wait(word, v).  The last sleeper of the
 *            handle on the side sets WOKEN as it leaves (under the mutex).
 *   writer:  publish; fence; load the bits, then each such slot's nap n;
 *            if n is SLEEPING: bump the word, FUTEX_WAKE, then
 *            CAS(nap, n, n | WOKEN).  If n is WOKEN: no syscall.
 *
 * Why no sleep is left asleep with WOKEN: a writer CASes only the value n
 * it loaded before its bump, and registration n was stored after its
 * sleeper loaded v, so v is a value from before the bump: that sleeper's
 * FUTEX_WAIT(v) returns EAGAIN or is woken by this FUTEX_WAKE.  A sleep
 * registered after that stores another value (registrations count up, 63
 * bits, never reset, across owners of the slot), so the CAS fails and the
 * next writer wakes it.  (The nap first held SLEEPING(v) itself; the
 * 32-bit word can come round while a writer is stopped before its CAS,
 * and a sleep registered at the same v was marked WOKEN: review of the
 * naps, D1.)  A writer that
 * loads nap before a sleeper's store is the Dekker case above (fence
 * against the sleeper's seq_cst store and RMW before its re-check: the
 * sleeper sees the data).  SIGKILL: a writer killed before its CAS leaves
 * SLEEPING (the next writer wakes once more); a sleeper killed asleep is
 * marked WOKEN by the first writer after its death, and every writer after
 * that skips it until recovery clears its bit.
 *
 * Sleeping without a timer.  A waiter must not sleep forever on a word that
 * a dead process was to bump: while a claim is in flight, it sleeps in
 * slices and the caller runs recovery between them.  When nothing is in
 * flight (the caller's quiet(q)), it sleeps without a slice, after setting
 * its bit in quiet_mask: a producer (or a topic's member) that claims
 * stores its CLAIMING intent, then a seq_cst fence, then calls
 * fq_wake_quiet(), then CASes tail (head), and either that load sees the
 * bit, or the waiter's quiet(q), loaded after its seq_cst RMW, sees the
 * intent; killed before the wake it claimed nothing, after it the waiter
 * was rung (review 17, W1: the wake came after the CAS, and a claimer
 * killed between the two left the waiter without a timer).  A whole claim
 * can still fit between the waiter's ready() and its quiet() (the ring
 * before the waiter's bits, the claimer's lane IDLE again by the scan), so
 * a waiter that finds nothing in flight looks at ready() once more before
 * it sleeps without a slice: quiet()'s scan read the IDLE the claimer
 * stored after its commit, so this ready() sees the commit (review 18,
 * S1: a claimer killed before its commit's wake left the waiter asleep).  A queue
 * consumer calls fq_wake_quiet() after its seq_cst CAS of head, and the
 * waiter's quiet(q) sees head moved (a consumer's claim matters only to a
 * quiet producer, and a producer waits for space only with records in the
 * ring: release != head).  fq_wake_quiet wakes only the slots whose quiet bit is
 * up (others sleep in slices; an event loop's task armed in slices is rung
 * by the publication alone).  The woken waiter finds a claim in flight and sleeps in
 * slices until it is finished.  quiet_mask, like the sides' masks, is only
 * loaded by writers (a claimer killed after taking it would leave a waiter
 * asleep without a slice beside a claim no one finishes).
 *
 * Bells: an event loop cannot sleep in FUTEX_WAIT.  A process with awaiting
 * tasks owns a doorbell, an abstract Unix datagram socket its loops watch
 * (fq_layout.h, "The bell of a slot"); fq_arm() puts the slot's bits up for
 * it as a sleeper would, and writers ring it instead of (besides) the futex.
 *
 * Before sleeping, a waiter spins briefly: a hand-off to a side running on
 * another core then costs ~0.1 us instead of a futex round trip.  The spin
 * adapts, per handle: it doubles (up to FQ_SPIN_MAX_NS) each time spinning
 * was enough and halves each time the waiter had to sleep anyway; below
 * FQ_SPIN_MIN_NS it stops (the floor: one look, then sleep).  On a machine
 * with fewer cores than busy processes the other side is often not running,
 * spinning only burns the core it needs, and the spin reaches the floor
 * within a few waits.  From the floor only a probe brings it back: every
 * FQ_SPIN_TRY_EVERY-th wait that missed there spins FQ_SPIN_MIN_NS (if that
 * pays, the budget doubles from there), every FQ_SPIN_PROBE_EVERY-th spins
 * FQ_SPIN_MAX_NS, and if that pays the budget is the max again (two sides
 * that both sleep never see a short spin pay, so doubling alone never left
 * a floor of 1 us, spun twice per wait for nothing: 4 us per ping-pong round
 * trip).  A waiter whose last sleep lasted FQ_SPIN_PROBE_NEAR_NS or more
 * (nothing came for a while) does not probe; nor does a spin whose caller
 * allows less than FQ_SPIN_MAX_NS (the binding's, with the GIL held).  A
 * wake soon after sleeping is no reason to spin more: it is also what a
 * peer that shares our core looks like (it runs once we sleep).  The budget
 * is a hint, per handle, relaxed (threads of a handle may race on it).
 * There is no spinning at all on a single-core machine.  The caller may
 * choose another strategy per call (FQ_STRATEGY_SPIN: spin until ready,
 * never sleep; FQ_STRATEGY_SLEEP: sleep at once).
 *
 * Memory order: seq_cst on the bits, the words and the predicates' loads
 * (the Dekker pairs above need store-load order); relaxed on the process's
 * own statistics.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <limits.h>
#include <linux/futex.h>
#include <sched.h>
#include <stddef.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#include "fq_internal.h"

static uint64_t fq_now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

static int fq_ncpu(void)
{
    static _Atomic int n;
    int v = atomic_load_explicit(&n, memory_order_relaxed);
    if (!v) {
        long c = sysconf(_SC_NPROCESSORS_ONLN);
        v = c > 0 ? (int)c : 1;
        atomic_store_explicit(&n, v, memory_order_relaxed);
    }
    return v;
}

/* statistics of this process (fq_wait_counts) */
static _Atomic uint64_t fq_nsleeps, fq_nwakes, fq_nbells;

/* ns == FQ_FOREVER: no timeout */
static void fq_futex_wait(_Atomic uint32_t *word, uint32_t v, uint64_t ns)
{
    struct timespec ts = {(time_t)(ns / 1000000000ull), (long)(ns % 1000000000ull)};
    atomic_fetch_add_explicit(&fq_nsleeps, 1, memory_order_relaxed);
    syscall(SYS_futex, (uint32_t *)word, FUTEX_WAIT, v, ns == FQ_FOREVER ? NULL : &ts, NULL, 0);
}

static void fq_futex_wake(_Atomic uint32_t *word)
{
    atomic_fetch_add_explicit(&fq_nwakes, 1, memory_order_relaxed);
    syscall(SYS_futex, (uint32_t *)word, FUTEX_WAKE, INT_MAX, NULL, NULL, 0);
}

void fq_wait_counts(uint64_t out[3])
{
    out[0] = atomic_load_explicit(&fq_nsleeps, memory_order_relaxed);
    out[1] = atomic_load_explicit(&fq_nwakes, memory_order_relaxed);
    out[2] = atomic_load_explicit(&fq_nbells, memory_order_relaxed);
}

/* Test hook: the OR of every word of data_mask, space_mask, quiet_mask. */
void fq_test_sleepers(fq_queue *q, uint64_t out[3])
{
    fq_ctrl *c = q->ctrl;
    out[0] = out[1] = out[2] = 0;
    for (unsigned i = 0; i < (q->nslots + 63) / 64; i++) {
        out[0] |= atomic_load(&c->data_mask[i]);
        out[1] |= atomic_load(&c->space_mask[i]);
        out[2] |= atomic_load(&c->quiet_mask[i]);
    }
}

/* ---- bells --------------------------------------------------------------- */

static _Atomic uint64_t fq_bell_name; /* this process's bell; 0: none */
static _Atomic int fq_bell_fd = -1;   /* for sending; any process may share it */

void fq_bell_set(uint64_t name)
{
    atomic_store(&fq_bell_name, name);
}

static int fq_bell_address(uint64_t name, struct sockaddr_un *a)
{
    memset(a, 0, sizeof *a);
    a->sun_family = AF_UNIX;
    /* abstract: sun_path[0] == 0, no file */
    int n = snprintf(a->sun_path + 1, sizeof a->sun_path - 1, "fastq-bell-%016llx",
                     (unsigned long long)name);
    return (int)offsetof(struct sockaddr_un, sun_path) + 1 + n;
}

static void fq_bell_send(uint64_t name)
{
    int fd = atomic_load(&fq_bell_fd);
    if (fd < 0) {
        int nfd = socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
        if (nfd < 0)
            return;
        int expect = -1;
        if (atomic_compare_exchange_strong(&fq_bell_fd, &expect, nfd))
            fd = nfd;
        else {
            close(nfd);
            fd = expect;
        }
    }
    struct sockaddr_un a;
    socklen_t len = (socklen_t)fq_bell_address(name, &a);
    atomic_fetch_add_explicit(&fq_nbells, 1, memory_order_relaxed);
    /* EAGAIN: its buffer is full, so it is woken anyway; ECONNREFUSED: the
     * owner closed its bell (it waits no more) */
    (void)sendto(fd, "", 1, MSG_DONTWAIT | MSG_NOSIGNAL, (struct sockaddr *)&a, len);
}

/* bell_sides: bit w, a task of the slot's owner awaits side w (its bell);
 * bit FQ_BELL_FUTEX << w, a thread of it sleeps on side w's futex word (a
 * writer that took only bits of slots without it skips FUTEX_WAKE) */
#define FQ_BELL_FUTEX 4u

/* The naps a writer saw SLEEPING, to mark WOKEN after its FUTEX_WAKE.
 * More than FQ_NAPS_MAX slots asleep at once: the rest stay SLEEPING and
 * cost the next writer one FUTEX_WAKE more, nothing else. */
#define FQ_NAPS_MAX 32
typedef struct fq_naps {
    int wake; /* some slot needs a FUTEX_WAKE */
    unsigned n;
    uint32_t slot[FQ_NAPS_MAX];
    uint64_t nap[FQ_NAPS_MAX];
} fq_naps;

/* The writer saw the bits `seen` (word i) of side: ring those slots'
 * bells that an awaiting task listens to, and note in *naps the slots
 * whose threads asleep on the futex still need a FUTEX_WAKE. */
static void fq_ring_bells(fq_queue *q, unsigned i, uint64_t seen, int side, fq_naps *naps)
{
    while (seen) {
        unsigned b = (unsigned)__builtin_ctzll(seen);
        seen &= seen - 1;
        uint32_t s = i * 64 + b;
        if (s >= q->nslots) {
            naps->wake = 1; /* cannot happen (the masks cover nslots): wake */
            return;
        }
        fq_slot *sl = &q->slots[s];
        uint32_t sides = atomic_load(&sl->bell_sides);
        /* without a bell bit the sides say nothing (an older owner's):
         * the nap decides */
        if (!(sides & (1u << side)) || (sides & (FQ_BELL_FUTEX << side))) {
            uint64_t nap = atomic_load_explicit(&sl->nap[side], memory_order_seq_cst);
            if (!(nap & FQ_NAP_WOKEN)) {
                naps->wake = 1;
                if (naps->n < FQ_NAPS_MAX) {
                    naps->slot[naps->n] = s;
                    naps->nap[naps->n++] = nap;
                }
            }
        }
        if (!(sides & (1u << side)))
            continue;
        uint64_t name = atomic_load(&sl->bell);
        /* a bell left by an earlier owner of the slot is not this one's */
        if (!name || atomic_load(&sl->bell_owner) != atomic_load(&sl->word))
            continue;
        /* one datagram until the owner takes the rung bits: it drains its
         * socket before it takes them (fq_bell_take), so a ring after that
         * sends.  The plain load first: the bits stay up while the task is
         * armed, so most writers find the bell rung already and skip the
         * RMW on the shared line (the RMW decides who sends). */
        if (!(atomic_load(&sl->bell_rung) & (1u << side)) &&
            !(atomic_fetch_or(&sl->bell_rung, 1u << side) & (1u << side)))
            fq_bell_send(name);
    }
}

/* ---- waking ------------------------------------------------------------- */

/* After fq_ring_bells over the bits seen: if a slot seen needs it, bump
 * side's word and FUTEX_WAKE, then mark the naps loaded before the bump
 * WOKEN (see "Waking each sleep once"). */
static void fq_wake_naps(fq_queue *q, int side, fq_naps *naps)
{
    if (!naps->wake)
        return;
    fq_ctrl *c = q->ctrl;
    _Atomic uint32_t *seq = side == FQ_WAIT_DATA ? &c->data_seq : &c->space_seq;
    atomic_fetch_add_explicit(seq, 1, memory_order_seq_cst);
    fq_futex_wake(seq);
    if (naps->n)
        FQ_CRASH_POINT("wake_before_nap_cas");
    /* only now, and only the values loaded before the bump */
    for (unsigned k = 0; k < naps->n; k++) {
        uint64_t n = naps->nap[k];
        atomic_compare_exchange_strong_explicit(&q->slots[naps->slot[k]].nap[side], &n,
                                                n | FQ_NAP_WOKEN, memory_order_seq_cst,
                                                memory_order_relaxed);
    }
}

void fq_wake(fq_queue *q, int what)
{
    fq_ctrl *c = q->ctrl;
    /* pairs with the waiter's RMW on the mask before its re-check */
    fq_fence();
    unsigned words = (q->nslots + 63) / 64;
    for (int side = 0; side < 2; side++) {
        if (what >= 0 && side != what)
            continue;
        _Atomic uint64_t *mask = side == FQ_WAIT_DATA ? c->data_mask : c->space_mask;
        /* Load the bits, never take them (see the top of this file: a
         * writer killed here must leave them up for the next one).  Ordered
         * after our publication by the fence above. */
        fq_naps naps;
        naps.wake = 0;
        naps.n = 0;
        for (unsigned i = 0; i < words; i++) {
            uint64_t seen = atomic_load_explicit(&mask[i], memory_order_seq_cst);
            if (seen)
                fq_ring_bells(q, i, seen, side, &naps);
        }
        fq_wake_naps(q, side, &naps);
    }
}

void fq_wake_quiet(fq_queue *q)
{
    fq_ctrl *c = q->ctrl;
    unsigned words = (q->nslots + 63) / 64;
    /* Our own slot's bit stays: a claim of this process can be left stalled
     * only if this process dies, and its sleepers with it.  (Taking it made
     * every get of an awaiting consumer ring its own bell: a datagram, an
     * extra loop wake-up and callback per message.) */
    int me = atomic_load(&q->slot);
    /* the caller's seq_cst fence after its intent (or its seq_cst CAS)
     * comes before these loads: pairs with the waiter's RMW on quiet_mask
     * before its quiet(q).  Loaded, not taken: only the owner clears its
     * bit (see the top of this file). */
    int any = 0;
    for (unsigned i = 0; i < words && !any; i++) {
        uint64_t own = me >= 0 && (unsigned)me / 64 == i ? 1ull << (me & 63) : 0;
        any = (atomic_load_explicit(&c->quiet_mask[i], memory_order_seq_cst) & ~own) != 0;
    }
    if (!any)
        return;
    /* Wake only the slots that sleep quietly (review 16, I3): every other
     * sleeper or armed task has a slice, and never relied on this wake (it
     * came only when some process slept quietly).  A task armed in slices
     * (fq_arm_slice) is thus rung by the publication alone.  A quiet
     * waiter raises its side bit and its quiet bit (seq_cst RMWs), then
     * runs quiet(q); we load both after our intent (fence) or our CAS.
     * If we see both, we wake it; if we miss either, our load came before
     * that RMW, so its quiet(q) sees our intent (claim) and it sleeps in
     * slices. */
    for (int side = 0; side < 2; side++) {
        _Atomic uint64_t *mask = side == FQ_WAIT_DATA ? c->data_mask : c->space_mask;
        fq_naps naps;
        naps.wake = 0;
        naps.n = 0;
        for (unsigned i = 0; i < words; i++) {
            uint64_t own = me >= 0 && (unsigned)me / 64 == i ? 1ull << (me & 63) : 0;
            uint64_t quiet = atomic_load_explicit(&c->quiet_mask[i], memory_order_seq_cst) & ~own;
            if (!quiet)
                continue;
            uint64_t seen = atomic_load_explicit(&mask[i], memory_order_seq_cst) & quiet;
            if (seen)
                fq_ring_bells(q, i, seen, side, &naps);
        }
        fq_wake_naps(q, side, &naps);
    }
}

void fq_interrupt(fq_queue *q)
{
    fq_ctrl *c = q->ctrl;
    /* bump whatever the bits say: a sleeper that loaded its word before
     * this sees FUTEX_WAIT return; one after it re-checks its caller's
     * state (the caller repeats this until its sleepers have left) */
    atomic_fetch_add_explicit(&c->data_seq, 1, memory_order_seq_cst);
    atomic_fetch_add_explicit(&c->space_seq, 1, memory_order_seq_cst);
    fq_futex_wake(&c->data_seq);
    fq_futex_wake(&c->space_seq);
}

/* ---- waiting ------------------------------------------------------------- */

/* ---- the adaptive spin budget (see "Before sleeping" at the top) ----------
 * Per handle, relaxed: several threads of a handle may race on it, and any
 * interleaving leaves a budget between the limits; it is a hint, not state. */

/* ns within the limits: below FQ_SPIN_MIN_NS, no spin at all (the floor) */
static uint32_t fq_spin_clamp(uint64_t ns)
{
    return ns < FQ_SPIN_MIN_NS ? 0 : ns > FQ_SPIN_MAX_NS ? FQ_SPIN_MAX_NS : (uint32_t)ns;
}

static void fq_spin_set(fq_queue *q, uint32_t ns)
{
    atomic_store_explicit(&q->spin_ns, ns, memory_order_relaxed);
    if (ns) /* off the floor: the count of misses there restarts */
        atomic_store_explicit(&q->spin_floor, 0, memory_order_relaxed);
}

/* The budget of the next adaptive spin, whose caller allows ns: the
 * handle's; at the floor, a probe (*probe) when the caller allows the full
 * spin (and reports a miss: fq_wait_pred, the event loops' spin), and only
 * while waits are short (the last sleep took less than
 * FQ_SPIN_PROBE_NEAR_NS: a consumer idle for long does not probe): every
 * FQ_SPIN_PROBE_EVERY-th miss there spins FQ_SPIN_MAX_NS (*probe 2), every
 * other FQ_SPIN_TRY_EVERY-th FQ_SPIN_MIN_NS (*probe 1). */
static uint64_t fq_spin_budget(fq_queue *q, uint64_t ns, int *probe)
{
    uint32_t budget = atomic_load_explicit(&q->spin_ns, memory_order_relaxed);
    *probe = 0;
    if (budget || ns < FQ_SPIN_MAX_NS)
        return ns > budget ? budget : ns;
    uint32_t n = atomic_load_explicit(&q->spin_floor, memory_order_relaxed);
    if (!n || n % FQ_SPIN_TRY_EVERY ||
        atomic_load_explicit(&q->spin_slept_ns, memory_order_relaxed) >= FQ_SPIN_PROBE_NEAR_NS)
        return 0;
    if (n < FQ_SPIN_PROBE_EVERY) {
        *probe = 1;
        return FQ_SPIN_MIN_NS;
    }
    atomic_store_explicit(&q->spin_floor, 0, memory_order_relaxed);
    *probe = 2;
    return FQ_SPIN_MAX_NS;
}

/* Spin up to ns (and, adaptive, the handle's budget); 1 if ready. */
static int fq_spin_for(fq_queue *q, fq_ready_fn ready, uint64_t arg, uint64_t ns, int adapt)
{
    int probe = 0;
    if (adapt)
        ns = fq_spin_budget(q, ns, &probe);
    if (!ns) /* one look, no pause */
        return ready(q, arg);
    uint64_t start = fq_now_ns();
    for (unsigned i = 0;; i++) {
        if (ready(q, arg)) {
            if (adapt) {
                /* spinning pays: allow more (a full probe: the max at once).
                 * At the floor without a probe the condition held at the
                 * first look, which says nothing about spinning */
                uint32_t b = atomic_load_explicit(&q->spin_ns, memory_order_relaxed);
                uint32_t to = probe == 2 ? FQ_SPIN_MAX_NS
                              : probe ? 2 * FQ_SPIN_MIN_NS
                              : b ? fq_spin_clamp(2ull * b) : 0;
                if (to != b)
                    fq_spin_set(q, to);
            }
            return 1;
        }
        fq_cpu_relax();
        if ((i & 15) == 15 && fq_now_ns() - start > ns)
            return 0;
    }
}

int fq_spin_pred(fq_queue *q, fq_ready_fn ready, uint64_t arg, uint64_t ns)
{
    if (fq_ncpu() < 2)
        return ready(q, arg);
    return fq_spin_for(q, ready, arg, ns, 1);
}

void fq_spin_missed(fq_queue *q)
{
    /* spinning did not pay: spin less next time (as fq_wait_pred does); at
     * the floor, count towards the next probe */
    uint32_t b = atomic_load_explicit(&q->spin_ns, memory_order_relaxed);
    if (b) {
        fq_spin_set(q, fq_spin_clamp(b / 2));
        return;
    }
    uint32_t n = atomic_load_explicit(&q->spin_floor, memory_order_relaxed);
    if (n < FQ_SPIN_PROBE_EVERY)
        atomic_store_explicit(&q->spin_floor, n + 1, memory_order_relaxed);
}

void fq_spin_slept(fq_queue *q, uint64_t waited_ns)
{
    /* the probe's gate (fq_spin_budget).  Not a reason to spin more: a wake
     * soon after the spin gave up is what a peer that shares our core
     * looks like (it could run only once we slept); growing the budget on
     * it made ping-pong on a loaded machine 3x slower (p50 31 us against 9,
     * both sides spinning and missing every time). */
    atomic_store_explicit(&q->spin_slept_ns, waited_ns, memory_order_relaxed);
}

/* Our bit of a mask, and the process's bookkeeping of who needs it up:
 * the bit may be cleared when no thread and no task of ours waits there. */
static void fq_bits_up(fq_queue *q, _Atomic uint64_t *masks)
{
    int s = atomic_load(&q->slot);
    /* pairs with the writer's fence before it loads the mask */
    atomic_fetch_or_explicit(&masks[s / 64], 1ull << (s & 63), memory_order_seq_cst);
}

static void fq_bits_down(fq_queue *q, _Atomic uint64_t *masks)
{
    int s = atomic_load(&q->slot);
    atomic_fetch_and_explicit(&masks[s / 64], ~(1ull << (s & 63)), memory_order_seq_cst);
}

static _Atomic uint64_t *fq_side_mask(fq_queue *q, int what)
{
    return what == FQ_WAIT_DATA ? q->ctrl->data_mask : q->ctrl->space_mask;
}

int fq_wait_pred(fq_queue *q, int what, fq_ready_fn ready, uint64_t arg, fq_quiet_fn quiet,
                 uint64_t slice_ns, uint64_t timeout_ns, int mode)
{
    if (fq_attach(q) != 0) {
        /* no slot: no bit to set; poll gently */
        struct timespec ts = {0, 1000000};
        nanosleep(&ts, NULL);
        return 0;
    }
    uint64_t start = fq_now_ns();
    if (slice_ns > timeout_ns)
        slice_ns = timeout_ns;
    if (mode == FQ_STRATEGY_SPIN) /* never sleep: spin through the slice */
        return fq_spin_for(q, ready, arg, slice_ns, 0);
    int adapt = mode == FQ_STRATEGY_ADAPTIVE && fq_ncpu() > 1;
    if (adapt) {
        if (fq_spin_for(q, ready, arg, FQ_SPIN_MAX_NS, 1))
            return 1;
        fq_spin_missed(q);
    }
    uint64_t spent = fq_now_ns() - start;
    if (spent >= timeout_ns)
        return 0;
    fq_ctrl *c = q->ctrl;
    _Atomic uint32_t *seq = what == FQ_WAIT_DATA ? &c->data_seq : &c->space_seq;
    fq_slot *sl = &q->slots[atomic_load(&q->slot)];
    pthread_mutex_lock(&q->mu);
    if (q->sleepers[what]++ == 0) /* before our bit goes up: see fq_ring_bells */
        atomic_fetch_or(&sl->bell_sides, FQ_BELL_FUTEX << what);
    /* v before our nap says SLEEPING (a new registration), both before the
     * re-check: see "Waking each sleep once".  Under the mutex, so that our
     * last sleeper leaving (it sets WOKEN) cannot land between our store
     * and our sleep, and registrations of the slot are one sequence (a
     * writer's CAS changes bit 0 only, so n & ~WOKEN is stable here). */
    uint32_t v = atomic_load_explicit(seq, memory_order_seq_cst);
    uint64_t n = atomic_load_explicit(&sl->nap[what], memory_order_relaxed);
    atomic_store_explicit(&sl->nap[what], FQ_NAP_NEXT(n), memory_order_seq_cst);
    /* every time (an RMW, seq_cst): it is also what orders our re-check
     * below after the bit, pairing with the writer's fence in fq_wake */
    fq_bits_up(q, fq_side_mask(q, what));
    int deep = 0;
    if (quiet && timeout_ns > slice_ns) {
        q->quiet_sleepers++;
        fq_bits_up(q, c->quiet_mask);
        deep = 1;
    }
    pthread_mutex_unlock(&q->mu);
    int ok = ready(q, arg);
    if (!ok) {
        /* quiet: nothing in flight, and a claim from now on wakes us */
        uint64_t ns = slice_ns;
        if (deep && quiet(q)) {
            /* ... but a whole put may have fitted between ready() and
             * quiet()'s scan of the lanes (its ring came before our bits,
             * its lane was IDLE again): look once more (review 18, S1) */
            ok = ready(q, arg);
            ns = timeout_ns;
        }
        if (!ok) {
            fq_futex_wait(seq, v, ns == FQ_FOREVER ? ns : ns - spent);
            if (adapt)
                fq_spin_slept(q, fq_now_ns() - start);
        }
    }
    pthread_mutex_lock(&q->mu);
    if (--q->sleepers[what] == 0) {
        /* no thread of ours sleeps on this side now: writers need not wake */
        atomic_fetch_or_explicit(&sl->nap[what], FQ_NAP_WOKEN, memory_order_seq_cst);
        if (!q->armed[what])
            fq_bits_down(q, fq_side_mask(q, what));
        atomic_fetch_and(&sl->bell_sides, ~(FQ_BELL_FUTEX << what));
    }
    if (deep && --q->quiet_sleepers == 0 && !q->armed_quiet)
        fq_bits_down(q, c->quiet_mask);
    pthread_mutex_unlock(&q->mu);
    return ok;
}

/* ---- awaiting (event loops) ---------------------------------------------- */

int fq_arm_pred(fq_queue *q, int what, fq_ready_fn ready, uint64_t arg, fq_quiet_fn quiet, int on)
{
    int rc = fq_attach(q);
    if (rc)
        return -rc;
    int s = atomic_load(&q->slot);
    fq_slot *sl = &q->slots[s];
    fq_ctrl *c = q->ctrl;
    uint64_t name = atomic_load(&fq_bell_name);
    pthread_mutex_lock(&q->mu);
    if (!on) {
        q->armed[what] = 0;
        atomic_fetch_and(&sl->bell_sides, ~(1u << what));
        if (!q->sleepers[what])
            fq_bits_down(q, fq_side_mask(q, what));
        if (!q->armed[0] && !q->armed[1] && q->armed_quiet) {
            q->armed_quiet = 0;
            if (!q->quiet_sleepers)
                fq_bits_down(q, c->quiet_mask);
        }
        pthread_mutex_unlock(&q->mu);
        return 0;
    }
    if (!name) {
        pthread_mutex_unlock(&q->mu);
        return -ENOTCONN;
    }
    if (!q->armed[what])
        /* a rung bit left from our last arming (a writer that saw our bit
         * just before we disarmed): with it set, no writer would send us a
         * datagram again.  Cleared before our bit goes up: a ring after
         * that sends, and a ring before it is for a write that the ready()
         * below sees. */
        atomic_fetch_and(&sl->bell_rung, ~(1u << what));
    q->armed[what] = 1;
    if (atomic_load(&sl->bell) != name)
        atomic_store(&sl->bell, name);
    /* the owner check of fq_ring_bells: our slot word, as we own it now */
    atomic_store(&sl->bell_owner, atomic_load(&sl->word));
    atomic_fetch_or(&sl->bell_sides, 1u << what);
    fq_bits_up(q, fq_side_mask(q, what));
    if (quiet) {
        q->armed_quiet = 1;
        fq_bits_up(q, c->quiet_mask);
    }
    pthread_mutex_unlock(&q->mu);
    /* after the bits are up (seq_cst): pairs with the writer's fence */
    if (ready(q, arg))
        return FQ_ARM_READY;
    if (quiet && quiet(q))
        /* look once more: a whole put may have fitted between the two
         * (review 18, S1; fq_wait_pred) */
        return ready(q, arg) ? FQ_ARM_READY : FQ_ARM_QUIET;
    return 0;
}

unsigned fq_bell_take(fq_queue *q)
{
    int s = atomic_load(&q->slot);
    if (s < 0)
        return 0;
    return atomic_exchange(&q->slots[s].bell_rung, 0);
}

/*
 * fq_atomic.h - the bottom layer: memory orders, fences and the CPU's spin
 * hint.  Everything above (fq_internal.h lists the layers) uses C11
 * <stdatomic.h> through these names.
 *
 * Memory-order policy.
 *
 *  - seq_cst is the default.  An atomic without an explicit order (the plain
 *    atomic_load/atomic_store/atomic_compare_exchange_strong of the slow
 *    paths: create, attach, recovery, the topic tables under the segment
 *    lock, waiting, statistics) is seq_cst.  Those paths run rarely, read
 *    many words written by several processes, and their arguments are
 *    easiest to check when every access is in the one total order; on
 *    x86-64 a seq_cst load costs what an acquire load costs, and an RMW is
 *    a locked instruction whatever its order.
 *  - The hot path (a put, a get, a publish, a receive, fq_sweep) names every
 *    order: RLX, ACQ, REL or SEQ below.  SEQ there is deliberate (a store
 *    that a later load of another word must not pass: the DONE marks and the
 *    release CAS, the record words the recovery reads) and its comment says
 *    which load it pairs with.  Weaker orders say what they need or why
 *    nothing is needed.
 *  - An explicit fence (atomic_thread_fence, fq_fence) names the operation
 *    it pairs with.  The one idiom that repeats, "read from the ring, then
 *    check that release did not pass what was read", is fq_released_past
 *    (fq_internal.h), with its one comment.
 *
 * Byte copies into and out of the ring are plain memcpy: a record's bytes
 * are published by the release store (or seq_cst CAS) of its word and read
 * after an acquire load of it; bytes that may be overwritten while read (a
 * drop topic) are re-validated with fq_released_past after the copy.
 */
#ifndef FQ_ATOMIC_H
#define FQ_ATOMIC_H

#include <stdatomic.h>

#define ACQ memory_order_acquire
#define REL memory_order_release
#define RLX memory_order_relaxed
#define SEQ memory_order_seq_cst


static inline void fq_cpu_relax(void)
{
#if defined(__x86_64__) || defined(__i386__)
    __builtin_ia32_pause();
#elif defined(__aarch64__)
    __asm__ __volatile__("yield" ::: "memory");
#endif
}

/* A full fence (store-load ordering).  On x86-64 a locked RMW on the stack
 * orders like mfence at a fraction of its cost (as Linux's smp_mb()).
 * Each caller says which store it orders before which load. */
static inline void fq_fence(void)
{
#if defined(__x86_64__)
    __asm__ __volatile__("lock; orl $0, (%%rsp)" ::: "memory", "cc");
#else
    atomic_thread_fence(memory_order_seq_cst);
#endif
}

#endif

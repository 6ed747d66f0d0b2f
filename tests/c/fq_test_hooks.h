/* fq_test_hooks.h: white-box helpers of the fastq C core, for tests only.
 *
 * Compiled with csrc/ into the cffi module of tests/support/cbuild.py (never into
 * fastq itself).  They read and poke the segment's internals (record words, intents,
 * slots, topic members and groups) and run put/get and publish/subscribe loops at C
 * speed for the threaded stress tests.  cbuild.py hands these declarations to cffi
 * as they stand here (comments and preprocessor lines dropped), so they stay plain C.
 */
#ifndef FQ_TEST_HOOKS_H
#define FQ_TEST_HOOKS_H

#include <stddef.h>
#include <stdint.h>

#include "fastq.h"

/* queues: records, slots, intents */
uint64_t fqt_tag(fq_queue *q, uint64_t pos);
uint64_t fqt_rec_size(uint64_t len);
uint64_t fqt_rec_word(fq_queue *q, uint64_t pos);
uint32_t fqt_rec_len(fq_queue *q, uint64_t pos);
int fqt_rec_state(fq_queue *q, uint64_t pos);
void *fqt_rec_data(fq_queue *q, uint64_t pos);
uint64_t fqt_data_offset(fq_queue *q);
int fqt_my_slot(fq_queue *q);
uint64_t fqt_nap(fq_queue *q, uint32_t s, int side);
void fqt_wake(fq_queue *q, int what);
/* the adaptive spin budget of the handle (q->spin_ns), and its limits {min, max,
 * misses at the floor between full probes, the longest last sleep that allows a
 * probe, misses at the floor between short probes};
 * fqt_spin_slept: as if an adaptive wait came back from its sleep after waited_ns */
uint32_t fqt_spin_ns(fq_queue *q);
void fqt_spin_limits(uint64_t out[5]);
void fqt_spin_slept(fq_queue *q, uint64_t waited_ns);
uint64_t fqt_slot_word(fq_queue *q, uint32_t s);
int fqt_slot_of_pid(fq_queue *q, int pid);
uint64_t fqt_intent(fq_queue *q, uint32_t s, uint32_t lane, int cons, int field);
void fqt_set_intent_state(fq_queue *q, uint32_t s, uint32_t lane, int cons, uint64_t st);
void fqt_set_intent(fq_queue *q, uint32_t s, uint32_t lane, int cons, int field, uint64_t v);
uint64_t fqt_cons_total(fq_queue *q);
uint64_t fqt_nb_latest(fq_queue *q);
void fqt_set_nb_latest(fq_queue *q, uint64_t v);
int64_t fqt_put_loop(fq_queue *q, uint32_t id, int64_t n, uint32_t seed, uint32_t min16,
                     uint32_t max16, uint64_t deadline_ns);
int64_t fqt_get_loop(fq_queue *q, size_t max_n, uint64_t *out, int64_t cap, int64_t *gotall,
                     int64_t *putall, uint64_t deadline_ns, uint64_t diag[4]);

/* topics */
uint64_t fqt_member_field(fq_queue *q, uint32_t i, int field);
uint64_t fqt_group_field(fq_queue *q, uint32_t i, int field);
uint64_t fqt_published(fq_queue *q);
uint64_t fqt_recover_lock(fq_queue *q);
int64_t fqt_pub_loop(fq_queue *q, int64_t n, uint32_t seed, uint32_t min16, uint32_t max16,
                     uint32_t delay, const int64_t *progress, int64_t lead,
                     uint64_t deadline_ns);
int64_t fqt_sub_loop(fq_queue *q, fq_sub *s, size_t max_n, uint32_t flags, uint32_t delay,
                     uint32_t seed, uint64_t *out, int64_t cap, int64_t *gotall, int64_t total,
                     int64_t *progress, uint64_t deadline_ns, uint64_t diag[8]);

#endif /* FQ_TEST_HOOKS_H */

# Declarations of the C core for the Cython binding: its API (csrc/fastq.h)
# and the limits and table flags of its layout (csrc/fq_layout.h), never
# its internals (fq_internal.h).
from libc.stdint cimport uint32_t, uint64_t

cdef extern from "fastq.h" nogil:
    enum:
        FQ_OK
        FQ_EMPTY
        FQ_FULL
        FQ_SHUTDOWN
        FQ_ETOOBIG
        FQ_ECORRUPT
        FQ_ENOSLOT
        FQ_EBADSEG
        FQ_EBUSY
        FQ_ENOSUB
        FQ_EINUSE
        FQ_EFORKED
        FQ_ELOST
        FQ_WAIT_DATA
        FQ_WAIT_SPACE
        FQ_STRATEGY_ADAPTIVE
        FQ_STRATEGY_SPIN
        FQ_STRATEGY_SLEEP
        FQ_ARM_READY
        FQ_ARM_QUIET
    enum:
        FQ_SUB_ANON
        FQ_SUB_GROUP
        FQ_SUB_DURABLE
        FQ_SUB_MUST_EXIST
        FQ_START_LATEST
        FQ_START_EARLIEST
        FQ_SUB_MAX_PREFETCH

    ctypedef struct fq_queue:
        pass

    ctypedef struct fq_claim:
        uint64_t pos, end, n, cursor
        uint32_t lane, taken, first_off, redelivered
        uint32_t attempt, subject_len
        uint64_t count
        uint64_t idx, msg_pos, msg_idx, kept

    ctypedef struct fq_create_opts:
        uint64_t capacity
        uint64_t max_message
        uint32_t max_slots
        uint32_t mode
        uint32_t topic
        uint32_t drop
        uint32_t max_subs
        uint32_t temporary

    int fq_create(const char *path, const fq_create_opts *opts, fq_queue **out,
                  char *err, size_t errlen)
    int fq_open(const char *path, fq_queue **out, char *err, size_t errlen)
    enum:
        FQ_OPEN_NOSWEEP
    int fq_open_flags(const char *path, unsigned flags, fq_queue **out, char *err, size_t errlen)
    int fq_open_fd(int fd, const char *path, fq_queue **out, char *err, size_t errlen)
    enum:
        FQ_TMP_NONE
        FQ_TMP_CREATING
        FQ_TMP_LEFTOVER
    int fq_tmp_file(const char *path, int remove)
    void fq_close(fq_queue *q)
    int fq_put_begin(fq_queue *q, const uint64_t *lens, size_t n, fq_claim *c)
    void *fq_claim_buf(fq_queue *q, fq_claim *c)
    void fq_put_commit(fq_queue *q, fq_claim *c)
    int fq_get_begin(fq_queue *q, size_t max_n, uint64_t max_bytes, fq_claim *c)
    int fq_claim_next(fq_queue *q, fq_claim *c, const void **data, uint64_t *len)
    void fq_get_end(fq_queue *q, fq_claim *c)
    void fq_get_abort(fq_queue *q, fq_claim *c)
    void fq_get_end_partial(fq_queue *q, fq_claim *c, uint64_t keep)
    void fq_get_nack(fq_queue *q, fq_claim *c, uint64_t delay_ms)
    void fq_wait(fq_queue *q, int what, uint64_t need, uint64_t timeout_ns, int spin)
    void fq_wake(fq_queue *q, int what)
    uint64_t fq_record_size(uint64_t len)
    uint64_t fq_put_need(fq_queue *q, const uint64_t *lens, size_t n)
    int fq_spin(fq_queue *q, int what, uint64_t need, uint64_t ns)
    void fq_spin_missed(fq_queue *q)
    uint64_t FQ_FOREVER
    int fq_wait_for(fq_queue *q, int what, uint64_t need, uint64_t slice_ns, uint64_t timeout_ns,
                    int strategy)
    void fq_bell_set(uint64_t name)
    int fq_arm(fq_queue *q, int what, uint64_t need, int on)
    int fq_arm_slice(fq_queue *q, int what, uint64_t need)
    int fq_ready(fq_queue *q, int what, uint64_t need)
    unsigned fq_bell_take(fq_queue *q)
    void fq_wait_counts(uint64_t out[3])
    void fq_interrupt(fq_queue *q)
    void fq_test_set_crash_point(const char *name, int countdown)
    void fq_test_sleepers(fq_queue *q, uint64_t out[3])
    uint64_t fq_qsize(fq_queue *q)
    uint64_t fq_unacked(fq_queue *q)
    uint64_t fq_available(fq_queue *q)
    uint64_t fq_delayed(fq_queue *q)
    int fq_full(fq_queue *q)
    uint64_t fq_capacity(fq_queue *q)
    uint64_t fq_max_message(fq_queue *q)
    uint64_t fq_capacity_for(uint64_t len, int topic)
    uint32_t fq_max_slots(fq_queue *q)
    int fq_is_shutdown(fq_queue *q)
    void fq_shutdown(fq_queue *q, int immediate)
    void fq_reset_shutdown(fq_queue *q)
    void fq_stats(fq_queue *q, uint64_t out[8])
    ctypedef struct fq_counts:
        uint64_t puts, put_bytes, full, blocked_ns, gets, get_bytes, redelivered, nacked
        uint64_t rec_slots, rec_puts, rec_gets, tail, head, release, held, held_since_ns
        uint32_t alive, dead, flags
    void fq_counts_read(fq_queue *q, fq_counts *out)
    void fq_get_mark_unacked(fq_queue *q, const fq_claim *c)
    void fq_note_full(fq_queue *q, uint64_t events, uint64_t blocked_ns)
    ctypedef struct fq_wait_sample:
        uint32_t group
        uint64_t wait_ns, at_ns
    size_t fq_waits_max(fq_queue *q)
    long long fq_waits_read(fq_queue *q, fq_wait_sample *out, size_t max) nogil
    int fq_check(fq_queue *q, char *err, size_t errlen)
    int fq_browse(fq_queue *q, uint64_t *pos, uint64_t *next, void *buf, uint64_t cap,
                  uint64_t *len)
    int fq_recover(fq_queue *q)
    int fq_flush(fq_queue *q)
    int fq_idle(fq_queue *q)
    int fq_fd(fq_queue *q)
    int fq_pid_alive(int pid, uint64_t start_time)
    unsigned fq_epoch()

    ctypedef struct fq_sub:
        pass
    ctypedef struct fq_sub_info:
        char name[64]
        uint32_t flags
        int pid
        uint32_t kind
        int alive
        uint64_t position
        uint64_t lag
        uint64_t got
        uint32_t group
        uint64_t lag_bytes
        uint64_t unacked
        uint64_t unacked_since_ns
    int fq_is_topic(fq_queue *q)
    int fq_is_drop(fq_queue *q)
    uint32_t fq_max_subs(fq_queue *q)
    int fq_subscribe(fq_queue *q, const char *name, int kind, int start, fq_sub **out,
                     char *err, size_t errlen)
    void fq_unsubscribe(fq_sub *s)
    int fq_sub_begin(fq_sub *s, size_t max_n, uint64_t max_bytes, fq_claim *c)
    int fq_sub_next(fq_sub *s, fq_claim *c, const void **data, uint64_t *len)
    void fq_claim_keep(fq_claim *c)
    int fq_sub_intact(fq_sub *s, fq_claim *c)
    void fq_sub_end(fq_sub *s, fq_claim *c)
    void fq_sub_hold(fq_sub *s, fq_claim *c, uint64_t frm, int redelivered)
    void fq_sub_wait(fq_sub *s, uint64_t timeout_ns, int spin)
    int fq_sub_spin(fq_sub *s, uint64_t ns)
    int fq_sub_wait_for(fq_sub *s, uint64_t slice_ns, uint64_t timeout_ns, int strategy)
    int fq_sub_arm(fq_sub *s, int on)
    uint64_t fq_sub_lag(fq_sub *s)
    uint64_t fq_sub_dropped(fq_sub *s)
    uint32_t fq_sub_index(fq_sub *s)
    int fq_topic_forget(fq_queue *q, const char *name)
    int fq_sub_filter(fq_sub *s, uint64_t key)
    void fq_sub_mark_unacked(fq_sub *s)
    int fq_topic_info(fq_queue *q, uint32_t i, fq_sub_info *out)


cdef extern from "fq_layout.h":
    # limits and the flags of a topic group (fq_sub_info.flags)
    enum:
        FQ_MAX_HELD
        FQ_MAX_DELAY_MS
        FQ_MAX_SUBJECT
        FQ_MIN_CAPACITY
        FQ_MAX_SLOTS
        FQ_MAX_SUBS
        FQ_GROUP_NAME
        FQ_GRP_DURABLE
        FQ_GRP_GROUP
        FQ_GRP_ANON
        FQ_FLAG_TEMP

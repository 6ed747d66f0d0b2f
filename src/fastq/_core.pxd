# Declarations of the C core (csrc/fastq.h) for the Cython binding.
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
        FQ_WAIT_DATA
        FQ_WAIT_SPACE
    uint64_t FQ_BYTES_STRICT

    ctypedef struct fq_queue:
        pass

    ctypedef struct fq_claim:
        uint64_t pos, end, n, cursor
        uint32_t lane, taken, first_off, redelivered
        uint64_t count

    ctypedef struct fq_create_opts:
        uint64_t capacity
        uint64_t max_message
        uint32_t max_slots
        uint32_t mode

    int fq_create(const char *path, const fq_create_opts *opts, fq_queue **out,
                  char *err, size_t errlen)
    int fq_open(const char *path, fq_queue **out, char *err, size_t errlen)
    void fq_close(fq_queue *q)
    int fq_put_begin(fq_queue *q, const uint64_t *lens, size_t n, fq_claim *c)
    void *fq_claim_buf(fq_queue *q, fq_claim *c)
    void fq_put_commit(fq_queue *q, fq_claim *c)
    int fq_get_begin(fq_queue *q, size_t max_n, uint64_t max_bytes, fq_claim *c)
    int fq_claim_next(fq_queue *q, fq_claim *c, const void **data, uint64_t *len)
    void fq_get_end(fq_queue *q, fq_claim *c)
    void fq_get_abort(fq_queue *q, fq_claim *c)
    void fq_get_end_partial(fq_queue *q, fq_claim *c, uint64_t keep)
    void fq_wait(fq_queue *q, int what, uint64_t need, uint64_t timeout_ns, int spin)
    int fq_spin(fq_queue *q, int what, uint64_t need, uint64_t ns)
    uint64_t fq_qsize(fq_queue *q)
    int fq_full(fq_queue *q)
    uint64_t fq_capacity(fq_queue *q)
    uint64_t fq_max_message(fq_queue *q)
    uint32_t fq_max_slots(fq_queue *q)
    int fq_is_shutdown(fq_queue *q)
    void fq_shutdown(fq_queue *q, int immediate)
    void fq_stats(fq_queue *q, uint64_t out[8])
    int fq_recover(fq_queue *q)
    int fq_flush(fq_queue *q)
    int fq_idle(fq_queue *q)
    int fq_fd(fq_queue *q)
    int fq_pid_alive(int pid, uint64_t start_time)

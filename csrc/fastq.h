/*
 * fastq.h - the C API of the fastq core, used by the Cython binding
 * (src/fastq/_core.pyx) and by the white-box tests (through cffi).
 *
 * A handle (fq_queue) is process-local: it maps a segment file and owns, on
 * first use, a slot in it.  One handle may be used by many threads at once:
 * each operation borrows one of the slot's FQ_LANES lanes.
 *
 * Producer:  fq_put_begin() claims space for n records and returns a claim;
 *            fq_claim_buf() gives each record's payload pointer to copy
 *            into; fq_put_commit() publishes them all.
 * Consumer:  fq_get_begin() claims up to max_n committed records;
 *            fq_claim_next() iterates their payloads (pointers into the
 *            ring, valid until fq_get_end()); fq_get_end() frees them.
 *
 * Return codes: FQ_OK, or a positive FQ_E* condition, or -errno.
 */
#ifndef FASTQ_H
#define FASTQ_H

#include <stddef.h>
#include <stdint.h>

enum {
    FQ_OK = 0,
    FQ_EMPTY = 1,     /* nothing to get now */
    FQ_FULL = 2,      /* no space now */
    FQ_SHUTDOWN = 3,  /* the queue was shut down */
    FQ_ETOOBIG = 4,   /* message larger than max_message */
    FQ_ECORRUPT = 5,  /* the segment holds an impossible value */
    FQ_ENOSLOT = 6,   /* every slot is taken by a live process */
    FQ_EBADSEG = 7,   /* the file is not a valid segment (see message) */
    FQ_EBUSY = 8,     /* every lane of this handle is in use: retry */
    FQ_ENOSUB = 9,    /* topic: every subscriber entry is taken */
    FQ_EINUSE = 10,   /* topic: a drop topic's durable name is attached */
    FQ_EFORKED = 11,  /* topic: a subscription used in a forked child */
    FQ_ELOST = 12,    /* topic: the subscription's entry was reclaimed */
};

enum { FQ_WAIT_DATA = 0, FQ_WAIT_SPACE = 1 };

typedef struct fq_queue fq_queue;

/* An operation in progress; lives on the caller's stack. */
typedef struct fq_claim {
    uint64_t pos, end; /* claimed range */
    uint64_t n;        /* messages in it */
    uint64_t cursor;   /* iteration position (consumer) */
    uint32_t lane;
    uint32_t taken;    /* 1: one requeued record taken (consumer) */
    uint32_t first_off; /* offset of the first message record from pos */
    uint32_t redelivered;
    uint64_t count;    /* the lane's message count before this operation */
    /* producer: fq_put_begin's lens (the caller keeps them valid until
     * fq_put_commit) and the buffers fq_claim_buf has handed out */
    const uint64_t *lens;
    uint64_t given;
    /* topics (subscriber claims) */
    uint64_t idx;      /* index of the last message found intact */
    uint64_t msg_pos;  /* position of the message fq_sub_next (fq_claim_next) returned */
    uint64_t msg_idx;  /* its index, as read before the copy */
    uint64_t kept;     /* messages found intact so far */
    uint32_t attempt;  /* consumer: the delivery's attempt, 1 the first time
                        * (a taken requeued record: its takes + 1; a claim
                        * from the head: its records' first attempt, the
                        * same for all of them).  Producer: the records'
                        * first attempt (fq_put_begin sets 1; the caller may
                        * raise it before fq_put_commit, as fastq.bridge does
                        * for a message delivered before elsewhere; queues
                        * only, at most 256: a topic ignores it) */
    uint32_t subject_len; /* topics: the first subject_len bytes of a payload
                           * are its subject (producer: set between
                           * fq_put_begin and fq_put_commit, for every record
                           * of the claim; fq_sub_next: the message's) */
} fq_claim;

typedef struct fq_create_opts {
    uint64_t capacity;    /* ring bytes, rounded up to a power of two */
    uint64_t max_message; /* 0: the largest that always fits (capacity/2-16) */
    uint32_t max_slots;   /* attached processes; 0: 64 */
    uint32_t mode;        /* file mode, e.g. 0600 */
    uint32_t topic;       /* 0: a queue; 1: a topic */
    uint32_t drop;        /* topic: publishers overwrite (overflow="drop") */
    uint32_t max_subs;    /* topic: subscriber entries; 0: 64 */
    uint32_t temporary;   /* 1: mark it temporary (FQ_FLAG_TEMP: `fastq gc`) */
} fq_create_opts;

/* Create a new segment at path; exclusive: fail with -EEXIST if present.
 * path NULL: an anonymous segment (a memfd, no name anywhere; fq_fd gives
 * its descriptor, to hand to other processes). */
int fq_create(const char *path, const fq_create_opts *opts, fq_queue **out,
              char *err, size_t errlen);
/* Open an existing segment; validates it (FQ_EBADSEG with a message). */
int fq_open(const char *path, fq_queue **out, char *err, size_t errlen);
/* fq_open with flags.  FQ_OPEN_NOSWEEP: leave a second name of the segment
 * that a killed creator left (fq_segment.c) where it is, which an open
 * otherwise removes: the operators' tools that only read (fastq ls, stat,
 * gc --dry-run) leave every name and every byte as they found them.  Like
 * every open, they still reserve the holes of a sparse segment file (a copy
 * made with cp --sparse): fallocate, so that touching the mapping can never
 * raise SIGBUS on a full filesystem; there such an open fails with ENOSPC
 * (review 14, R2). */
enum { FQ_OPEN_NOSWEEP = 1 };
int fq_open_flags(const char *path, unsigned flags, fq_queue **out, char *err, size_t errlen);
/* The same from a descriptor of the segment (the handle keeps a copy of
 * it; the caller keeps fd); path only names it in messages (may be NULL). */
int fq_open_fd(int fd, const char *path, fq_queue **out, char *err, size_t errlen);
/* A creation's temporary file: where the filesystem has no O_TMPFILE, a
 * creator builds the segment as <path>.tmp-<pid>-<16 hex digits> and links
 * it into place (fq_segment.c).  What the file at path is, by the rule the
 * core's own sweep of such files follows (fq_segment.c, fq_tmp_kind):
 * FQ_TMP_NONE, not a creation's temporary file (a name of another form, or
 * a segment of its own that only has such a name: renamed or linked there);
 * FQ_TMP_CREATING, one whose creator may be at work (its pid is there, or
 * its creating lock is held); FQ_TMP_LEFTOVER, one a killed creator left,
 * removed if remove (the probe and the removal are two steps: see
 * fq_sweep_tmp).  Or -errno (-ENOENT: no such file). */
enum { FQ_TMP_NONE = 0, FQ_TMP_CREATING = 1, FQ_TMP_LEFTOVER = 2 };
int fq_tmp_file(const char *path, int remove);
/* Release the slot (if any) and unmap.  The caller's contract: no other
 * call on q is in progress or starts (the handle, its two descriptors and
 * its mapping are gone; a call racing it could use a descriptor number the
 * process has reused).  The Python binding keeps it: it counts the calls in
 * flight on a handle and closes after the last one returns. */
void fq_close(fq_queue *q);

/* Producer */
/* lens[0..n-1]: payload bytes of each record; the claim keeps the pointer,
 * so lens must stay valid until fq_put_commit. */
int fq_put_begin(fq_queue *q, const uint64_t *lens, size_t n, fq_claim *c);
void *fq_claim_buf(fq_queue *q, fq_claim *c); /* next record's payload */
void fq_put_commit(fq_queue *q, fq_claim *c);
int fq_put(fq_queue *q, const void *data, size_t len); /* begin+copy+commit */

/* Consumer */
/* max_bytes bounds the claim's payload, except that its first message is
 * taken whatever its size.
 * After fq_shutdown: FQ_SHUTDOWN once nothing is left that could still come
 * back (claims of other handles, live or dead, may be given back; FQ_EMPTY
 * meanwhile: wait, and let recovery run). */
int fq_get_begin(fq_queue *q, size_t max_n, uint64_t max_bytes, fq_claim *c);
/* The claim's next message (0: none left); sets c->msg_pos to its record's
 * position (the one a requeued record keeps: fastq's message identity). */
int fq_claim_next(fq_queue *q, fq_claim *c, const void **data, uint64_t *len);
void fq_get_end(fq_queue *q, fq_claim *c);
void fq_get_abort(fq_queue *q, fq_claim *c); /* give the messages back */
/* Free the first `keep` messages of the claim, give the others back. */
void fq_get_end_partial(fq_queue *q, fq_claim *c, uint64_t keep);
/* Give the claim's messages back, visible again only after delay_ms (at
 * most FQ_MAX_DELAY_MS, fq_layout.h; 0: at once, as fq_get_abort).  The
 * delay is kept in the records: nobody holds them meanwhile (fq_get.c). */
void fq_get_nack(fq_queue *q, fq_claim *c, uint64_t delay_ms);

/* Waiting: returns when the condition may hold, after at most timeout_ns.
 * spin: spin and yield briefly before sleeping (the first wait of a call;
 * later slices of a long wait go straight to sleep). */
void fq_wait(fq_queue *q, int what, uint64_t need, uint64_t timeout_ns, int spin);
/* Wait strategies: spin adaptively then sleep; spin and never sleep; sleep
 * at once. */
enum { FQ_STRATEGY_ADAPTIVE = 0, FQ_STRATEGY_SPIN = 1, FQ_STRATEGY_SLEEP = 2 };
#define FQ_FOREVER UINT64_MAX
/* As fq_wait, with a strategy: sleeps up to slice_ns while a claim is in
 * flight (a dead process may have left it: the caller runs recovery between
 * slices), and up to timeout_ns (FQ_FOREVER: no limit) while nothing is (a
 * queue only; the next claim wakes it).  1 if the condition may hold. */
int fq_wait_for(fq_queue *q, int what, uint64_t need, uint64_t slice_ns, uint64_t timeout_ns,
                int strategy);
/* Awaiting from an event loop.  fq_bell_set names this process's bell (an
 * abstract Unix datagram socket "fastq-bell-%016llx" that its loops read;
 * 0: none).  fq_arm(on = 1) puts this process's bit of side what up for
 * it, as a sleeper's: writers ring the bell; FQ_ARM_READY if the condition
 * may hold already (do not sleep), FQ_ARM_QUIET if nothing is in flight (no
 * recovery timer needed), or -errno.  on = 0 when no task awaits there any
 * more.  fq_bell_take: the sides (bit what) rung for this handle since the
 * last call (after the socket was drained).  fq_arm_slice: fq_arm(on = 1)
 * for a task that sleeps with a recovery timer whatever is in flight: it
 * raises no quiet bit, so a writer's or reader's claim does not ring the
 * bell ahead of its publication (only the publication does), unless a task
 * or thread of this process sleeps quietly on this segment too (the quiet
 * bit is the slot's, and fq_wake_quiet rings the slots whose bit is up);
 * never FQ_ARM_QUIET. */
enum { FQ_ARM_READY = 1, FQ_ARM_QUIET = 2 };
void fq_bell_set(uint64_t name);
int fq_arm(fq_queue *q, int what, uint64_t need, int on);
int fq_arm_slice(fq_queue *q, int what, uint64_t need);
/* The readiness rule of side what (as fq_arm re-checks it): 1 if the
 * condition may hold now; no system call, no scan of the slots. */
int fq_ready(fq_queue *q, int what, uint64_t need);
unsigned fq_bell_take(fq_queue *q);
/* Wake every thread asleep on q (in any process): they re-check. */
void fq_interrupt(fq_queue *q);
/* This process's sleeps (FUTEX_WAIT calls), futex wakes and bells rung. */
void fq_wait_counts(uint64_t out[3]);
/* Spin (no syscall) for up to ns while the condition does not hold; 1 if it
 * may hold now.  For a caller that cannot cheaply release a lock (the GIL)
 * before a short wait. */
int fq_spin(fq_queue *q, int what, uint64_t need, uint64_t ns);
/* Wake this segment's sleepers on one side (FQ_WAIT_DATA, FQ_WAIT_SPACE;
 * -1: both), in every process: e.g. to make a thread of this process that
 * sleeps in fq_wait or fq_sub_wait look again at why it waits. */
void fq_wake(fq_queue *q, int what);
/* Ring bytes one record of len payload bytes takes in a queue (its header
 * and padding; a topic's records carry a prefix on top). */
uint64_t fq_record_size(uint64_t len);
/* The need to pass fq_wait(q, FQ_WAIT_SPACE, need, ...) for one claim of
 * the n >= 1 records of these payload lengths (as fq_put_begin takes them):
 * the payload of one record of q (a topic's: with its prefix) that takes
 * exactly the ring bytes of all of them. */
uint64_t fq_put_need(fq_queue *q, const uint64_t *lens, size_t n);
/* A spin of the caller's did not pay: halve the handle's adaptive budget
 * (and count the miss toward the next probe, fq_wait.c). */
void fq_spin_missed(fq_queue *q);

/* Status */
/* Messages put and not yet freed: what gets can take plus fq_unacked(). */
uint64_t fq_qsize(fq_queue *q);
/* Messages claimed by consumers and neither freed nor given back yet:
 * unacknowledged deliveries, gets in progress, and the claims of dead
 * consumers until recovery puts them back. */
uint64_t fq_unacked(fq_queue *q);
/* What gets can take now: fq_qsize() - fq_unacked(); 0 after an immediate
 * shutdown (gets raise ShutDown at once). */
uint64_t fq_available(fq_queue *q);
/* Messages given back with a delay (nack) whose time has not come: counted
 * by fq_available, takeable by no get yet (queues; 0 for topics). */
uint64_t fq_delayed(fq_queue *q);
int fq_full(fq_queue *q);
uint64_t fq_capacity(fq_queue *q);
uint64_t fq_max_message(fq_queue *q);
/* The smallest capacity whose default max_message takes a message of len
 * bytes (in a topic if topic), or 0 if none does. */
uint64_t fq_capacity_for(uint64_t len, int topic);
uint32_t fq_max_slots(fq_queue *q);
int fq_is_shutdown(fq_queue *q);
void fq_shutdown(fq_queue *q, int immediate);
/* Undo fq_shutdown for every process (a named segment keeps its state). */
void fq_reset_shutdown(fq_queue *q);
void fq_stats(fq_queue *q, uint64_t out[8]); /* tail, head, release, ... */

/* 1 if nothing is claimed, being written or held: release == head == tail
 * and no record was put back (nothing recovery could repair). */
int fq_idle(fq_queue *q);
/* The segment's file descriptor (for fstat). */
int fq_fd(fq_queue *q);
/* Write the whole segment to stable storage (msync); 0 or -errno. */
int fq_flush(fq_queue *q);

/* Recovery: repair what dead processes left; returns the number of slots
 * repaired, or 0.  Safe to call at any time from any process. */
int fq_recover(fq_queue *q);
/* Is the process pid (with /proc start time, 0 = unknown) alive?  A process
 * whose main thread exited while others run is.  By pid: slots and members
 * are not judged with it (fq_layout.h, "File locks"). */
int fq_pid_alive(int pid, uint64_t start_time);
/* This process's fork epoch: it changes in a child at fork(), so a value
 * kept with a claim tells whether the claim is this process's own. */
unsigned fq_epoch(void);

/*
 * Topics (fq_topic.c).  The publish side is the producer API above (a
 * topic segment's records carry their message index).  A subscription
 * (fq_sub) is a member of a group: its own anonymous one, a named group
 * (members split the messages) or a durable one (kept in the segment).
 */
typedef struct fq_sub fq_sub;
enum { FQ_SUB_ANON = 0, FQ_SUB_GROUP = 1, FQ_SUB_DURABLE = 2 };
#define FQ_SUB_MUST_EXIST 16 /* or-ed into kind: join an existing group only */
/* The most members one subscription of the binding may use at once (its
 * prefetch: each unacknowledged delivery holds a member, which holds one
 * claim); a topic's max_subs bounds it too. */
#define FQ_SUB_MAX_PREFETCH 64
enum { FQ_START_LATEST = 0, FQ_START_EARLIEST = 1 };

int fq_is_topic(fq_queue *q);
int fq_is_drop(fq_queue *q);
uint32_t fq_max_subs(fq_queue *q);
int fq_subscribe(fq_queue *q, const char *name, int kind, int start, fq_sub **out, char *err,
                 size_t errlen);
/* Remove the durable subscription name (its position and unfinished
 * messages): FQ_OK, -ENOENT, or FQ_EINUSE while a subscriber is attached. */
int fq_topic_forget(fq_queue *q, const char *name);
/* Leave: a claim still held is left for another member (redelivered). */
void fq_unsubscribe(fq_sub *s);
/* Claim up to max_n messages (max_bytes as fq_get_begin); FQ_EMPTY,
 * FQ_SHUTDOWN (shut down and drained), FQ_OK, or -errno (-EBUSY: a claim
 * is open; else the handle cannot take the segment lock to take over a
 * dead member's claim, and claims nothing past it).  A claim returned again
 * (c->redelivered: taken over from a dead member, or kept by fq_sub_hold)
 * is returned whole, whatever max_n: take what you need, fq_sub_hold the
 * rest from the next message's position (c->cursor). */
int fq_sub_begin(fq_sub *s, size_t max_n, uint64_t max_bytes, fq_claim *c);
/* The next message of the claim; sets c->msg_pos and c->msg_idx. */
int fq_sub_next(fq_sub *s, fq_claim *c, const void **data, uint64_t *len);
/* Count the message fq_sub_next returned last as returned (c->kept,
 * c->idx): what fq_sub_intact does to a message found intact.  For a
 * caller that knows it is (nothing overwrites a block topic's messages), or
 * that counts it consumed anyway (it could not be deserialized). */
#define fq_claim_keep(c) ((c)->kept++, (c)->idx = (c)->msg_idx)
/* After copying the message fq_sub_next returned: 1 if it is intact (a
 * drop topic's publisher may have overwritten it during the copy). */
int fq_sub_intact(fq_sub *s, fq_claim *c);
/* Finish the claim (its messages are consumed); accounts drops. */
void fq_sub_end(fq_sub *s, fq_claim *c);
/* Keep the claim from position from (a message's c->msg_pos; 0: all of it):
 * the next fq_sub_begin returns it again, flagged redelivered if asked.
 * The messages before from count as returned (c->kept, c->idx). */
void fq_sub_hold(fq_sub *s, fq_claim *c, uint64_t from, int redelivered);
/* Wait up to timeout_ns for data at the subscription's group head. */
void fq_sub_wait(fq_sub *s, uint64_t timeout_ns, int spin);
int fq_sub_spin(fq_sub *s, uint64_t ns);
/* fq_wait_for and fq_arm for data at the subscription's group head. */
int fq_sub_wait_for(fq_sub *s, uint64_t slice_ns, uint64_t timeout_ns, int strategy);
int fq_sub_arm(fq_sub *s, int on);
/* Messages published that the group is still to deliver (not taken yet, or
 * given back: an orphan's claim, a claim kept by fq_sub_hold; not a claim
 * open); drops (drop topics). */
uint64_t fq_sub_lag(fq_sub *s);
/* The subject filter of the subscription's group, by its key (the caller's
 * digest of its patterns, never 0): FQ_OK if the group has no other member
 * (ACTIVE or ORPHAN), and the key is the group's from now on, or if it has
 * that key already; FQ_EINUSE if another member uses another key; -errno
 * if the segment lock cannot be taken. */
int fq_sub_filter(fq_sub *s, uint64_t key);
uint64_t fq_sub_dropped(fq_sub *s);
uint32_t fq_sub_index(fq_sub *s);

typedef struct fq_sub_info {
    char name[64];
    uint32_t flags;    /* FQ_GRP_* flags of its group */
    int32_t pid;       /* 0: nobody attached (a durable group) */
    uint32_t kind;     /* FQ_MEM_* (FQ_MEM_FREE for a durable group alone) */
    int alive;
    uint64_t position; /* the group's head */
    uint64_t lag;
    uint64_t got;
    uint32_t group;    /* index of its group (time-in-queue samples name it) */
    uint32_t reserved;
    uint64_t lag_bytes; /* ring bytes from the group's head to tail */
    uint64_t unacked;  /* messages of the member's open claim (delivered,
                        * not yet finished or acknowledged) */
    uint64_t unacked_since_ns; /* CLOCK_MONOTONIC: when receive() kept that
                        * claim unacknowledged (0: not known) */
} fq_sub_info;
/* receive(): the open claim is now an unacknowledged delivery kept across
 * calls; note since when (fq_member.since_ns, for fq_topic_info). */
void fq_sub_mark_unacked(fq_sub *s);
/* Entry i of the subscriber listing (i < 2 * max_subs): 1 if filled. */
int fq_topic_info(fq_queue *q, uint32_t i, fq_sub_info *out);

/*
 * Statistics and inspection (fq_inspect.c), for operators' tools: counters
 * summed over every slot (each process writes only its own lanes), the
 * attached processes, and a consistency check.  Reading takes no slot.
 */
typedef struct fq_counts {
    uint64_t puts, put_bytes;   /* messages and payload bytes put */
    uint64_t full;              /* puts that found the ring full (once each) */
    uint64_t blocked_ns;        /* time those puts waited for space */
    uint64_t gets, get_bytes;   /* queue: messages finished, payload bytes delivered */
    uint64_t redelivered;       /* queue: messages delivered again */
    uint64_t nacked;            /* queue: messages given back */
    uint64_t rec_slots;         /* recovery: dead processes' slots freed */
    uint64_t rec_puts;          /* recovery: open put claims of dead processes */
    uint64_t rec_gets;          /* recovery: open get claims of dead processes */
    uint64_t tail, head, release; /* the cursors (head: queues) */
    uint64_t held;              /* queue: receive() deliveries not yet settled */
    uint64_t held_since_ns;     /* CLOCK_REALTIME when the oldest of them was
                                 * received (ms resolution; 0: none) */
    uint32_t alive, dead;       /* slots owned by live / dead processes */
    uint32_t flags;             /* FQ_FLAG_* */
    uint32_t reserved;
} fq_counts;
void fq_counts_read(fq_queue *q, fq_counts *out);
/* Queue: claim c (of fq_get_begin) is kept as an unacknowledged delivery
 * (receive()): noted, with the time, in its lane for fq_counts_read's held
 * and held_since_ns (statistics; until the claim ends). */
void fq_get_mark_unacked(fq_queue *q, const fq_claim *c);
/* events puts found the ring full (at least once each), then waited
 * blocked_ns in all for space (0: they did not wait): counted once per put
 * by the caller's wait loop, in one of this handle's producer lanes. */
void fq_note_full(fq_queue *q, uint64_t events, uint64_t blocked_ns);
/* Time in queue, sampled (fq_layout.h): the waits of the messages at the
 * sample points still in the slots' rings, from commit to first delivery.
 * group: 0 for a queue, g + 1 for topic group g; at_ns: when it was taken
 * (CLOCK_MONOTONIC).  Fills up to max entries (fq_waits_max(q) is every
 * one the rings can hold); returns how many, or -ENOMEM. */
typedef struct fq_wait_sample {
    uint32_t group;
    uint32_t reserved;
    uint64_t wait_ns;
    uint64_t at_ns;
} fq_wait_sample;
size_t fq_waits_max(fq_queue *q);
int64_t fq_waits_read(fq_queue *q, fq_wait_sample *out, size_t max);
/* Check the segment's cursors and every record between release and tail;
 * 0 if consistent, else the number of problems, the first described in
 * err.  Meant for a quiet segment: a concurrent put or get can move the
 * cursors under the walk (a problem then may be a race; check again). */
int fq_check(fq_queue *q, char *err, size_t errlen);

/*
 * Browse a queue without taking anything: the first message record at or
 * after *pos (or after release, if *pos is below it) that is not consumed
 * yet (COMMITTED, TAKEN by a consumer, or REQUEUED), before tail.  Its
 * payload is copied into buf (at most cap bytes; *len is the payload's
 * length, which may exceed cap), *pos is set to the record's position and
 * *next to the position after it.  FQ_OK: a message; FQ_EMPTY: none
 * left; FQ_ECORRUPT; -EINVAL: a topic.  The copy is validated after it was made (release had not passed
 * the record), so it is what was put; the walk is as of no single instant.
 */
int fq_browse(fq_queue *q, uint64_t *pos, uint64_t *next, void *buf, uint64_t cap,
              uint64_t *len);

/* Test hook: when set, the core calls _exit(9) at the named point. */
void fq_test_set_crash_point(const char *name, int countdown);
/* Test hook for races: the countdown-th time the calling process reaches the
 * named point (a crash point's name), it pauses, once: with notify_fd >= 0 it
 * writes one byte to notify_fd and blocks until it can read one byte from
 * resume_fd (or resume_fd reaches EOF); with notify_fd < 0 it stops itself
 * (SIGSTOP), the test sees it stopped (waitpid WUNTRACED), acts, then sends
 * SIGCONT.  An empty name disarms it. */
void fq_test_set_pause_point(const char *name, int countdown, int notify_fd, int resume_fd);
/* Test hook: the sleeper bits up (OR over slots) of data, space and quiet. */
void fq_test_sleepers(fq_queue *q, uint64_t out[3]);
/* Test hook: liveness probes made so far by this process; kind 0: reads of
 * /proc and kill() calls, kind 1: lock probes of the segment file. */
uint64_t fq_test_probe_count(int kind);

#endif

/*
 * fq_layout.h - the byte layout of a fastq segment file.
 *
 * A segment is one file, mapped MAP_SHARED by every process that uses it.
 * All integers are little-endian host order (the file is not portable
 * between architectures; the magic catches a mismatch of endianness).
 *
 *   offset       size        what
 *   0            1024        fq_ctrl: identity (line 0), cursors, wait words
 *   1024         S*2304      fq_slot[max_slots]: one per attached process
 *   sub_offset   M*128       topics only: fq_member[max_subs] (fq_members.c)
 *   group_offset M*128       topics only: fq_group[max_subs]
 *   data_offset  capacity    the ring: variable-length records
 *
 *   fq_ctrl (each group on its own 128-byte line, so that producers,
 *   consumers and sleepers do not false-share):
 *     0    magic u64          "FASTQSG1"
 *     8    version u32        FQ_VERSION
 *     12   kind u32           FQ_KIND_QUEUE or FQ_KIND_TOPIC
 *     16   capacity u64       ring bytes, a power of two, 4 KiB .. 2 GiB
 *     24   max_message u64    largest payload accepted
 *     32   file_size u64      must equal the file's size
 *     40   data_offset u64    page aligned
 *     48   slot_offset u64    = 1024
 *     56   max_slots u32      number of fq_slot entries
 *     60   lanes u32          FQ_LANES
 *     64   salt u64           random, mixed into every record tag
 *     72   created_ns u64     CLOCK_REALTIME at creation
 *     80   creator_pid u32
 *     84   flags u32          FQ_FLAG_DROP: a topic whose publishers overwrite;
 *                             FQ_FLAG_TEMP: created temporary (`fastq gc`)
 *     88   sub_offset u64     topics: the member table (0 for a queue)
 *     96   group_offset u64   topics: the group table (0 for a queue)
 *     104  max_subs u32       topics: entries in each table (0 for a queue)
 *     128  tail u64           producers' claim cursor (CAS)
 *     136  published u64      topics: messages ever claimed; tail and
 *                             published move together in one 16-byte CAS,
 *                             so every topic record knows its message index
 *     256  head u64           consumers' claim cursor (CAS)
 *     384  release u64        oldest position still in use (CAS)
 *     392  release_epoch u64  topics (block): bumped by each change of the
 *                             member and group tables; a publisher moves
 *                             release with a 16-byte CAS of (release, epoch),
 *                             so one whose scan may have missed a change
 *                             fails and scans again
 *     512  data_seq u32       futex word: bumped when data appears
 *     516  space_seq u32      futex word: bumped when space appears
 *     520  state u32          FQ_STATE_* bits (shutdown)
 *     524  subs_hwm u32       topics: table entries ever used (scan bound)
 *     528  recover_lock u64   pid << 32 of the process holding the segment
 *                             lock, or 0 (only says who: the lock itself is
 *                             the file lock FQ_LOCK_SEGMENT, below)
 *     536  requeued u64       hint: at least this many records were put back
 *                             (consumers look for them when non-zero)
 *     544  requeue_seq u64    bumped after every record put back (nack,
 *                             recovery): a consumer that found only delayed
 *                             records keeps that verdict while it is unchanged
 *     552  rec_slots u64      statistics (fq_inspect.c), written by recovery
 *     560  rec_puts u64       under the segment lock: dead slots freed, and
 *     568  rec_gets u64       the open put and get claims of dead lanes it
 *                             repaired
 *     640  data_mask[16]      bit s set: slot s has a thread asleep on data
 *     768  space_mask[16]     bit s set: slot s has a thread asleep on space
 *     896  quiet_mask[16]     bit s set: slot s has a waiter that sleeps without
 *                             a recovery slice because nothing was in flight;
 *                             the next claim of tail or head wakes it (fq_wait.c)
 *
 * File locks.  Liveness is not a record in the file: it is a byte-range
 * lock of an open file description (fcntl F_OFD_SETLK) on the segment
 * file, far past its end (no byte of the file is locked):
 *   FQ_LOCK_SEGMENT      held by the process running recovery or changing
 *                        the topic tables (the segment lock)
 *   FQ_LOCK_SLOT(s)      held while slot s is owned: taken before the slot
 *                        word says ACTIVE, released after it says FREE
 *   FQ_LOCK_CREATING     held by the creator of a named temporary file (no
 *                        O_TMPFILE) until it removes that name; never on a
 *                        handle's descriptors (fq_segment.c, fq_sweep_tmp)
 * The kernel drops these locks when the description is closed: when its
 * process exits or is killed, and at exec (the descriptor is O_CLOEXEC),
 * but not when only its main thread exits (the threads share it).  A
 * forked child closes its copy at once (fq_segment.c), so a child never
 * keeps its parent's locks.  So an owner is alive exactly while it can still
 * reach the segment; no pid, /proc entry or boot-relative time is trusted
 * (a file from before a reboot holds no lock), and another user's process,
 * or one hidden by hidepid, is judged like any other.
 *
 * Who writes what: the creator writes line 0 once, before the file is
 * linked into place (nobody can see a half-built header).  tail is moved
 * only by producers' CAS; head only by consumers' CAS; release by the
 * consumer that finishes the oldest claim, by sweeps and by recovery.  A
 * slot is written by the process that owns it, except that recovery,
 * holding the segment lock, may repair and free the slot of a dead process.
 *
 * Records.  Positions are 64-bit byte offsets that only grow; a record at
 * position p lives at data[p & (capacity-1)], starts 16-byte aligned (so a
 * padding record always has room for its 16-byte header) and never crosses
 * the end of the ring (a SKIP record pads to the end).
 *
 *   0  word  u64   fq_tag(p) | state       (state in the low 3 bits)
 *   8  len   u32   payload bytes; for SKIP: the whole span in bytes
 *   12 owner u32   while WRITING: producer slot << 8 | lane (for people and
 *                  fq_check; recovery does not trust it: a dead lane's
 *                  records are the WRITING ones in its intent's range, since
 *                  the commit stores the meta here just before COMMITTED);
 *                  from COMMITTED on: the delivery meta (below)
 *   16 payload, then padding to a multiple of 16
 *
 * Delivery meta (queues; the producer stores it before COMMITTED: 0, or
 * the takes of a message put with a first attempt, fq_claim.attempt):
 *   bits 0..7   takes: how many times the record was taken again after it
 *               was put back (saturates at 255), plus its producer's;
 *               a delivery's attempt is takes + 1.  Written by the taker of
 *               a REQUEUED record after its CAS to TAKEN won (it alone
 *               holds the record then); read by a head claim (each record's
 *               after its acquire load of COMMITTED).
 *   bits 8..31  not-before of a delayed record (fq_get_nack): CLOCK_REALTIME
 *               in FQ_NB_UNIT_MS units, modulo 2^24 (0: none).  Written by
 *               the consumer that gives the record back, before its CAS to
 *               REQUEUED (the CAS publishes it), while its claim still covers
 *               the record (so recovery, if it dies, requeues the record
 *               with it).  A taker skips a REQUEUED record whose not-before
 *               lies ahead, by at most FQ_MAX_DELAY_MS (a value further
 *               ahead is not trusted: the record is visible).
 *
 * In a topic, a message record's payload starts with a 16-byte prefix: the
 * message's index (u64: its rank among all messages ever published) and its
 * subject's length (u64, at most FQ_MAX_SUBJECT; 0: none): the payload after
 * the prefix begins with the subject's bytes, then the message; len counts
 * the prefix.  A reader trusts the subject length only if it is at most
 * FQ_MAX_SUBJECT and the payload's length (else: no subject).
 *
 * A reader trusts the record at p only if word's tag equals fq_tag(p):
 * bytes from an earlier lap carry an older position's tag, and the salt
 * makes the tag of a position unpredictable to a payload.
 */
#ifndef FQ_LAYOUT_H
#define FQ_LAYOUT_H

#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>

#define FQ_MAGIC 0x3147535154534146ULL /* "FASTQSG1" little-endian */
#define FQ_VERSION 13u
#define FQ_KIND_QUEUE 1u
#define FQ_KIND_TOPIC 2u
#define FQ_FLAG_DROP 1u
/* a temporary segment: `fastq gc` may remove it once no process is attached */
#define FQ_FLAG_TEMP 2u
#define FQ_TOPIC_PREFIX 16u
#define FQ_MAX_SUBJECT 255u /* bytes of a topic message's subject */
/* delivery meta (see "Delivery meta" above) */
#define FQ_META_TAKES(m) ((m) & 0xffu)
#define FQ_META_NB(m) ((m) >> 8)
#define FQ_NB_UNIT_MS 16u
#define FQ_NB_MASK 0xffffffu
/* One hour: far below the 74.5 hours (2^24 units) after which a not-before
 * wraps.  Longer delays are refused by the binding (ValueError) and clamped
 * here.  The wrap: past ctrl->nb_latest (the latest not-before ever given)
 * every not-before is due, so a record due long ago is not hidden again
 * (review 11, F2).  What it still allows: a record due but taken by nobody
 * for 73.5-74.5 hours while another record was delayed in the last hour
 * looks delayed again until nb_latest (late, never lost); after a nack made
 * under a wall clock running ahead, the same until a taker lowers nb_latest
 * to 2 h + 3 units past its clock (fq_get.c fq_nb_lower: at most two hours
 * after the clock is set right; review 13, W1).  Early: a clock stepped back
 * by more than the delay left (review 11, F6); and a lowerer stalled more
 * than an hour between its clock read and its CAS, a whole nack made inside
 * the stall, the lowerer killed between its CAS and its re-raise: that
 * record early by at most the stall's excess over an hour (fq_get.c). */
#define FQ_MAX_DELAY_MS 3600000u
_Static_assert((uint64_t)FQ_MAX_DELAY_MS / FQ_NB_UNIT_MS < (FQ_NB_MASK >> 1),
               "a delay is well inside half the not-before's wrap");
#define FQ_MAX_SUBS 4096u
#define FQ_LANES 8u
/* unacknowledged deliveries (queue claims kept open across calls) one
 * process may hold: a lane each, and one lane left for its other calls
 * (the binding enforces it: fq_put_begin/fq_get_begin would return
 * FQ_EBUSY while every lane is held) */
#define FQ_MAX_HELD (FQ_LANES - 1)
#define FQ_MAX_SLOTS 1024u
#define FQ_REC_HDR 16u
#define FQ_MIN_CAPACITY 4096u
#define FQ_MAX_CAPACITY (1ULL << 31) /* spans fit the 32-bit len field */
/* positions never reach 2^63 (at 10 GB/s that takes 29 years), so that
 * position arithmetic (p + span, p + capacity) never wraps: a segment whose
 * cursors are above it is refused at open */
#define FQ_POS_MAX (1ULL << 63)
/* file lock offsets (see "File locks" above): past any segment's end */
#define FQ_LOCK_SEGMENT (1ULL << 62)
#define FQ_LOCK_CREATING (FQ_LOCK_SEGMENT - 1)
#define FQ_LOCK_SLOT(s) (FQ_LOCK_SEGMENT + 1 + (uint64_t)(s))

/* record states (low 3 bits of the record word) */
enum {
    FQ_REC_WRITING = 1,   /* claimed, header written, payload being copied */
    FQ_REC_COMMITTED = 2, /* payload complete: may be claimed by a consumer */
    FQ_REC_DONE = 3,      /* consumed; waits for release to pass it */
    FQ_REC_REQUEUED = 4,  /* its consumer died before finishing: take again */
    FQ_REC_TAKEN = 5,     /* a requeued record taken by a consumer (named in
                           * the word: see fq_taken_word) */
    FQ_REC_ABANDONED = 6, /* its producer died before commit: no message */
    FQ_REC_SKIP = 7,      /* padding or an abandoned region; len = span */
};

/* control-block state bits */
#define FQ_STATE_SHUTDOWN 1u
#define FQ_STATE_IMMEDIATE 2u

typedef struct fq_ctrl {
    /* line 0: identity, immutable after creation */
    uint64_t magic;
    uint32_t version;
    uint32_t kind;
    uint64_t capacity;
    uint64_t max_message;
    uint64_t file_size;
    uint64_t data_offset;
    uint64_t slot_offset;
    uint32_t max_slots;
    uint32_t lanes;
    uint64_t salt;
    uint64_t created_ns;
    uint32_t creator_pid;
    uint32_t flags;
    uint64_t sub_offset;
    uint64_t group_offset;
    uint32_t max_subs;
    uint32_t reserved0;
    uint8_t pad0[128 - 112];
    /* lines 1-3: the three cursors */
    _Atomic uint64_t tail;
    _Atomic uint64_t published; /* 16-byte aligned pair with tail */
    uint8_t pad1[112];
    _Atomic uint64_t head;
    uint8_t pad2[120];
    _Atomic uint64_t release;
    _Atomic uint64_t release_epoch; /* 16-byte aligned pair with release */
    uint8_t pad3[112];
    /* line 4: futex words, shutdown, recovery */
    _Atomic uint32_t data_seq;
    _Atomic uint32_t space_seq;
    _Atomic uint32_t state;
    _Atomic uint32_t subs_hwm;
    _Atomic uint64_t recover_lock;
    _Atomic uint64_t requeued;
    _Atomic uint64_t requeue_seq;
    _Atomic uint64_t rec_slots;
    _Atomic uint64_t rec_puts;
    _Atomic uint64_t rec_gets;
    _Atomic uint64_t nb_latest; /* ms (CLOCK_REALTIME): the latest not-before
                                 * ever given (fq_get_nack); past it, every
                                 * record's 24-bit not-before is due.  Raised
                                 * by CAS-max; lowered only when no honest
                                 * nack can have made it (fq_nb_lower) */
    uint8_t pad4[128 - 72];
    /* lines 5-7: sleeper bitmasks, one bit per slot */
    _Atomic uint64_t data_mask[16];
    _Atomic uint64_t space_mask[16];
    _Atomic uint64_t quiet_mask[16];
} fq_ctrl;

/*
 * An intent: what one lane of a slot is doing right now, so that a
 * survivor can finish or undo it if the process dies.
 *   pos, end  the claimed range [pos, end) (producer: of tail; consumer: of
 *             head, or the one requeued record being taken)
 *   n         messages in the range; a consumer that has begun marking its
 *             claim DONE one record at a time adds FQ_N_FREEING (recovery
 *             then finishes the marking: the claim is consumed whole)
 *   state     count << 2 | phase.  count is the lane's running total of
 *             messages put (prod) or got (cons); phase is FQ_PH_*.  Both
 *             change in one store, so a survivor knows whether the last
 *             operation was counted.
 *   bytes, full, redelivered (cons) / blocked_ns (prod), nacked
 *             statistics (fq_inspect.c), written only by the thread that
 *             holds the lane, in the line it writes anyway: payload bytes
 *             put (prod) or delivered (cons); puts that found the ring full
 *             at least once, and the nanoseconds they waited for space
 *             (prod, fq_note_full: one add per put, after its wait);
 *             messages delivered again after a give-back or a dead
 *             consumer (cons); messages given back (cons).  Never reset: a
 *             slot's next owner adds to them, and readers sum every lane of
 *             every slot.
 *   held      (cons, where a producer's intent keeps full) a receive() kept
 *             the lane's claim as an unacknowledged delivery:
 *             FQ_HELD(ms, pos), 1 + the CLOCK_REALTIME milliseconds since
 *             the segment's created_ns when it was kept (the clock every
 *             process and boot shares), and the claim's position
 *             (fq_get_mark_unacked, by the lane's holder, after its claim
 *             won).  0 otherwise: every consumer claim stores 0 here before
 *             its intent (fq_held_clear), so a stale mark never outlives
 *             its claim (review 15, H1).  Statistics: a reader counts it
 *             while the intent is WON with that pos (recovery ends a dead
 *             holder's claim), as "unacked deliveries and the age of the
 *             oldest" (fq_inspect.c).
 */
enum { FQ_PH_IDLE = 0, FQ_PH_CLAIMING = 1, FQ_PH_WON = 2, FQ_PH_RECOVERED = 3 };
#define FQ_N_FREEING (1ull << 62)

typedef struct fq_intent {
    _Atomic uint64_t pos;
    _Atomic uint64_t end;
    _Atomic uint64_t n;
    _Atomic uint64_t state;
    _Atomic uint64_t bytes;
    union {
        _Atomic uint64_t full; /* prod */
        _Atomic uint64_t held; /* cons */
    };
    union {
        _Atomic uint64_t redelivered; /* cons */
        _Atomic uint64_t blocked_ns;  /* prod */
    };
    _Atomic uint64_t nacked;
} fq_intent;

/* fq_intent.held: kept at ms (1 + CLOCK_REALTIME milliseconds since
 * created_ns: 40 bits last 34 years), for the claim at pos (its 24 bits
 * above the alignment) */
#define FQ_HELD_MS_MAX ((1ull << 40) - 1)
#define FQ_HELD(ms, pos) ((uint64_t)(ms) << 24 | (((uint64_t)(pos) >> 4) & 0xffffffu))
#define FQ_HELD_MS(h) ((h) >> 24)
#define FQ_HELD_AT(h, pos) (((h) & 0xffffffu) == (((uint64_t)(pos) >> 4) & 0xffffffu))

typedef struct fq_lane {
    fq_intent prod;
    fq_intent cons;
} fq_lane;

/*
 * A slot: one attached handle.  word = pid (low 32) | gen (24) | kind (8):
 * FREE or ACTIVE (owned by a handle of pid, which holds the file lock
 * FQ_LOCK_SLOT(s); the pid is for people, not for liveness).  Taken by a
 * CAS from FREE after taking the lock; freed by its owner on close or by
 * recovery after the lock was dropped (the owner died or exec'd).  gen
 * grows with every owner, so an old owner's word never matches a new one.
 */
enum { FQ_SLOT_FREE = 0, FQ_SLOT_ACTIVE = 2 };
#define FQ_SLOT_WORD(kind, gen, pid) \
    (((uint64_t)(kind) << 56) | (((uint64_t)(gen) & 0xffffff) << 32) | (uint32_t)(pid))
#define FQ_SLOT_KIND(w) ((unsigned)((w) >> 56))
#define FQ_SLOT_GEN(w) ((uint32_t)(((w) >> 32) & 0xffffff))
#define FQ_SLOT_PID(w) ((int32_t)(uint32_t)(w))

/*
 * Time in queue, sampled (fq_inspect.c).  The position space is cut into
 * spans of 2^fq_sample_shift(capacity) bytes (capacity / 16, at least 4 KiB);
 * the position at the start of a span is a sample point.  Every position is
 * covered by exactly one producer claim and, in a queue, one head claim (in a
 * topic: one claim of each group), so the claims that cover a sample point
 * meet there: the producer whose commit covers it notes (point, now) in its
 * slot's put ring, the consumer whose claim of a fresh message covers it
 * notes (group, point, now) in its slot's get ring, and a reader matches
 * them: the wait of the message at that point, from its commit to its first
 * delivery.  The test on the hot path is one compare of the claim's end with
 * a mark the handle keeps per lane and side (fq_sample_due: the first point
 * after the lane's previous claim; handle memory, not the segment), then the
 * exact test of the claim's bounds only past it; the clock is read only at a
 * sample point (one claim in 16 per capacity moved).
 * A producer's ring holds FQ_SAMPLES points, two capacities' worth, so the
 * point a consumer takes is still there (a message waits less than one
 * capacity of later puts).
 *
 * fq_sample: key, then ns (CLOCK_MONOTONIC).  key 0: empty.  Put ring:
 * point + 1; get ring: (group + 1) << 50 | (point + 1), group 0 for a queue
 * (points stay below 2^49: positions below 2^63, spans of 2^12 or more).
 * Written by a thread of the slot's owner, entry seq % FQ_SAMPLES where
 * seq is taken by a relaxed fetch-add on sample_seq[side] (threads of one
 * process share the slot; sampled claims are rare): key 0, release fence,
 * ns, key (release).  A reader takes an entry only if it reads the same
 * non-zero key before and after ns (a seqlock: loads of key acquire, an
 * acquire fence before the second).  A writer killed anywhere leaves a key
 * of 0 (skipped) or a whole entry; recovery never touches them.
 */
#define FQ_SAMPLES 32
#define FQ_SAMPLE_GROUP_SHIFT 50
typedef struct fq_sample {
    _Atomic uint64_t key;
    _Atomic uint64_t ns;
} fq_sample;

static inline unsigned fq_sample_shift(uint64_t capacity)
{
    unsigned lg = 63u - (unsigned)__builtin_clzll(capacity | 1);
    return lg > 16 ? lg - 4 : 12;
}

/*
 * The bell of a slot (fq_wait.c): how a writer wakes the owner's event loop.
 * bell names the owner's doorbell socket (an abstract Unix datagram socket,
 * "fastq-bell-%016llx"), valid while bell_owner equals word; bell_sides has
 * bit w set while an awaiting task of the owner waits on side w, and bit
 * 2 + w while a thread of it sleeps on side w's futex word (a writer that
 * took only slots with a bell and without that bit skips FUTEX_WAKE); a writer
 * that takes the slot's bit of side w sets bit w of bell_rung and sends one
 * datagram if it was clear.  The owner drains its socket, then takes
 * bell_rung: the datagram only wakes, the bits say what for (a full socket
 * buffer loses a datagram, never a wake-up).
 *
 * nap[w] says whether the owner's threads asleep on side w's futex word
 * still need a FUTEX_WAKE (fq_wait.c, "Waking each sleep once"): a count
 * of registrations << 1 | FQ_NAP_WOKEN.  A sleeper, under the handle's
 * mutex, after it loaded its futex value and before its re-check, stores
 * the next registration (WOKEN clear: SLEEPING); a writer that saw
 * SLEEPING wakes, then CASes that value to value | FQ_NAP_WOKEN; a writer
 * that sees WOKEN makes no syscall.  The owner's last sleeper on side w
 * sets WOKEN as it leaves.  Never reset: a slot's next owner counts on.
 */
#define FQ_NAP_WOKEN 1ull
#define FQ_NAP_NEXT(n) (((n) & ~FQ_NAP_WOKEN) + 2)
typedef struct fq_slot {
    _Atomic uint64_t word;
    _Atomic uint64_t bell;
    _Atomic uint64_t bell_owner;
    _Atomic uint32_t bell_sides;
    _Atomic uint32_t bell_rung;
    _Atomic uint64_t nap[2];
    uint8_t pad[128 - 48];
    fq_lane lane[FQ_LANES];
    /* time in queue (see above): the next entry of each ring */
    _Atomic uint64_t sample_seq[2]; /* [0] put ring, [1] get ring */
    uint8_t pad2[128 - 16];
    fq_sample put_sample[FQ_SAMPLES];
    fq_sample get_sample[FQ_SAMPLES];
} fq_slot;

/*
 * Topics (fq_topic.c).  A group is a cursor shared by its members; every
 * subscription is a member of one group (a plain subscription: of its own
 * anonymous group).  Both tables are changed only under the segment lock;
 * the cursors and claims in them are read lock-free by publishers.
 *
 * fq_group (128 bytes):
 *   0   word      kind (FQ_GRP_FREE / FQ_GRP_ACTIVE) | flags << 8
 *   8   next_idx  index of the first message the group has not yet finished
 *                 (moves up only; UINT64_MAX: not known yet)
 *   16  head      the group's claim cursor (a position), and
 *   24  head_by   the member that moved it last (index + 1; 0: none): a
 *                 16-byte aligned pair, moved together by one 16-byte CAS
 *   32  dropped   overflow="drop": messages the group lost to lapping
 *   40  orphans   hint: claims left by dead members, waiting for a member
 *   48  filter    the key of its members' subject filter (0: not set;
 *                 fq_sub_filter, under the segment lock)
 *   64  name      NUL-terminated
 *
 * fq_member (128 bytes): one subscription.
 *   word        FQ_SLOT_WORD(kind, gen, pid): FREE, ACTIVE (owned by a
 *               handle of pid) or ORPHAN (its owner died or left holding a
 *               claim: the claim waits for another member)
 *   owner, slot the slot word and index of the owner's handle when it
 *               subscribed: the owner is alive while that slot still has
 *               that word and its lock is held
 *   group       index of its group
 *   pos,end,n   its claim [pos, end) of n messages, and
 *   state       seq << 2 | phase (FQ_PH_IDLE, CLAIMING, WON); seq counts
 *               claims, so that a CAS on state never succeeds on a newer one *   got         messages returned (statistics)
 *   held        (64) 1: its claim was given back (nack) and waits for the
 *               member's next read (only the member writes it; for lag)
 *   again       (68) the times its claim was delivered before (0: a fresh
 *               claim; when it takes over an orphan's claim: the orphan's
 *               + 1).  Given back by fq_sub_hold: FQ_AGAIN_COUNTED | the
 *               deliveries of what remains (the whole claim: + 1), in one
 *               store, so that a taker adds none.  The
 *               group's redelivery count of the claim lives here, with the
 *               claim; written by the member (or its taker, under the segment
 *               lock); a taker trusts it only as a count (saturating)
 *   since_ns    (72) CLOCK_REALTIME when the member's receive() kept its
 *               claim as an unacknowledged delivery (fq_sub_mark_unacked;
 *               written by the member only, statistics: read with the
 *               claim's phase WON as the age of the oldest unacked; a stale
 *               value after a kill is read only while a claim is open)
 */
enum { FQ_GRP_FREE = 0, FQ_GRP_ACTIVE = 1 };
/* flags; FQ_GRP_INIT: being made by fq_subscribe (its start not chosen yet):
 * only a subscriber killed inside fq_subscribe leaves one, and it is freed */
enum { FQ_GRP_DURABLE = 1, FQ_GRP_GROUP = 2, FQ_GRP_ANON = 4, FQ_GRP_INIT = 8 };
enum { FQ_MEM_FREE = 0, FQ_MEM_ACTIVE = 2, FQ_MEM_ORPHAN = 3 };
#define FQ_GROUP_NAME 64

typedef struct fq_group {
    _Atomic uint64_t word;
    _Atomic uint64_t next_idx;
    _Atomic uint64_t head;
    _Atomic uint64_t head_by; /* 16-byte aligned pair with head */
    _Atomic uint64_t dropped;
    _Atomic uint64_t orphans;
    _Atomic uint64_t filter;
    uint8_t pad[8];
    char name[FQ_GROUP_NAME];
} fq_group;

/* fq_member.again: how often the member's claim was delivered before (a
 * count); with FQ_AGAIN_COUNTED, given back by fq_sub_hold and counting
 * the deliveries of what remains (a taker adds none). */
#define FQ_AGAIN_COUNTED 0x80000000u
#define FQ_AGAIN_MAX 0x7ffffffeu

typedef struct fq_member {
    _Atomic uint64_t word;
    _Atomic uint64_t owner;
    _Atomic uint32_t group;
    _Atomic uint32_t slot;
    _Atomic uint64_t pos;
    _Atomic uint64_t end;
    _Atomic uint64_t n;
    _Atomic uint64_t state;
    _Atomic uint64_t got; /* messages returned (statistics) */
    _Atomic uint32_t held;
    _Atomic uint32_t again;
    _Atomic uint64_t since_ns;
    uint8_t pad[128 - 80];
} fq_member;

_Static_assert(sizeof(fq_group) == 128, "a group is 128 bytes");
_Static_assert(offsetof(fq_group, next_idx) == 8, "next_idx at 8");
_Static_assert(offsetof(fq_group, head) == 16, "head at 16, 16-byte aligned");
_Static_assert(offsetof(fq_group, head_by) == 24, "head_by pairs with head");
_Static_assert(offsetof(fq_group, dropped) == 32, "dropped at 32");
_Static_assert(offsetof(fq_group, orphans) == 40, "orphans at 40");
_Static_assert(offsetof(fq_group, filter) == 48, "filter at 48");
_Static_assert(offsetof(fq_group, name) == 64, "name at 64");
_Static_assert(sizeof(fq_member) == 128, "a member is 128 bytes");
_Static_assert(offsetof(fq_member, owner) == 8 && offsetof(fq_member, group) == 16 &&
                   offsetof(fq_member, slot) == 20 && offsetof(fq_member, pos) == 24 &&
                   offsetof(fq_member, state) == 48 && offsetof(fq_member, held) == 64 &&
                   offsetof(fq_member, again) == 68 && offsetof(fq_member, since_ns) == 72,
               "member offsets");

typedef struct fq_rec {
    _Atomic uint64_t word;
    uint32_t len;
    uint32_t owner;
} fq_rec;

_Static_assert(sizeof(fq_ctrl) == 1024, "fq_ctrl is 1024 bytes");
_Static_assert(offsetof(fq_ctrl, tail) == 128, "tail on line 1");
_Static_assert(offsetof(fq_ctrl, published) == 136, "published pairs with tail");
_Static_assert(offsetof(fq_ctrl, head) == 256, "head on line 2");
_Static_assert(offsetof(fq_ctrl, release) == 384, "release on line 3");
_Static_assert(offsetof(fq_ctrl, release_epoch) == 392, "epoch pairs with release");
_Static_assert(offsetof(fq_ctrl, data_seq) == 512, "wait words on line 4");
_Static_assert(offsetof(fq_ctrl, recover_lock) == 528, "recover_lock at 528");
_Static_assert(offsetof(fq_ctrl, requeued) == 536, "requeued at 536");
_Static_assert(offsetof(fq_ctrl, requeue_seq) == 544, "requeue_seq at 544");
_Static_assert(offsetof(fq_rec, owner) == 12, "owner (the delivery meta) at 12");
_Static_assert(offsetof(fq_ctrl, rec_slots) == 552 && offsetof(fq_ctrl, rec_puts) == 560 &&
                   offsetof(fq_ctrl, rec_gets) == 568,
               "recovery statistics at 552");
_Static_assert(offsetof(fq_ctrl, nb_latest) == 576, "nb_latest after the recovery statistics");
_Static_assert(offsetof(fq_ctrl, data_mask) == 640, "masks on line 5");
_Static_assert(offsetof(fq_ctrl, space_mask) == 768, "space mask at 768");
_Static_assert(offsetof(fq_ctrl, quiet_mask) == 896, "quiet mask at 896");
_Static_assert(offsetof(fq_slot, bell) == 8 && offsetof(fq_slot, bell_owner) == 16 &&
                   offsetof(fq_slot, bell_sides) == 24 && offsetof(fq_slot, bell_rung) == 28 &&
                   offsetof(fq_slot, nap) == 32,
               "bell and nap fields after the slot word");
_Static_assert(sizeof(fq_intent) == 64, "an intent is one cache line");
_Static_assert(offsetof(fq_intent, held) == offsetof(fq_intent, full), "held shares full's word");
_Static_assert(offsetof(fq_intent, bytes) == 32 && offsetof(fq_intent, nacked) == 56,
               "an intent's statistics share its line");
_Static_assert(sizeof(fq_slot) == 128 + FQ_LANES * 128 + 128 + 2 * FQ_SAMPLES * 16, "slot size");
_Static_assert(sizeof(fq_slot) == 2304, "slot size in the offset map");
_Static_assert(offsetof(fq_slot, put_sample) % 128 == 0, "sample rings on their own lines");
_Static_assert(sizeof(fq_rec) == FQ_REC_HDR, "record header is 16 bytes");
_Static_assert(ATOMIC_LLONG_LOCK_FREE == 2, "64-bit atomics must be lock-free");
_Static_assert(ATOMIC_INT_LOCK_FREE == 2, "32-bit atomics must be lock-free");
/* tail/published and release/release_epoch move as 16-byte pairs (topics):
 * the CAS must be native, lock-free across processes, never a fallback
 * lock local to one process */
#ifndef __GCC_HAVE_SYNC_COMPARE_AND_SWAP_16
#error "fastq needs a native 16-byte compare-and-swap (on x86-64: build with -mcx16)"
#endif

/* the tag of position p: a bijection of p (p is a multiple of 16) */
static inline uint64_t fq_tag(uint64_t salt, uint64_t pos)
{
    return (pos * 0x9E3779B97F4A7C15ULL) ^ salt; /* salt has low 3 bits clear */
}

/*
 * A TAKEN word names its taker, slot << 3 | lane, in bits 3..15 (the tag keeps
 * its other 48 bits), so that a record given back and taken again by another
 * consumer (TAKEN -> REQUEUED -> TAKEN) never looks the same to a CAS.
 */
#define FQ_TAKER_BITS 13
#define FQ_TAKER_MASK ((((uint64_t)1 << FQ_TAKER_BITS) - 1) << 3)
_Static_assert(FQ_MAX_SLOTS * FQ_LANES <= (1u << FQ_TAKER_BITS), "taker ids fit the word");

static inline uint64_t fq_taken_word(uint64_t salt, uint64_t pos, uint32_t taker)
{
    return (fq_tag(salt, pos) & ~FQ_TAKER_MASK) | ((uint64_t)taker << 3) | FQ_REC_TAKEN;
}

static inline uint32_t fq_word_taker(uint64_t w)
{
    return (uint32_t)((w & FQ_TAKER_MASK) >> 3);
}

/* Does word w carry the tag of position pos (any state)? */
static inline int fq_word_matches(uint64_t salt, uint64_t pos, uint64_t w)
{
    uint64_t d = (w ^ fq_tag(salt, pos)) & ~(uint64_t)7;
    if ((w & 7) == FQ_REC_TAKEN)
        d &= ~FQ_TAKER_MASK;
    return d == 0;
}

static inline uint64_t fq_rec_size(uint64_t len)
{
    return (FQ_REC_HDR + len + 15) & ~(uint64_t)15;
}

#endif

/*
 * fq_segment.c - creating, validating and mapping a segment file; slots
 * (one per attached process) and how a survivor tells that a slot's owner
 * died.
 *
 * Creation is race-free: the creator builds the whole file as an unnamed
 * O_TMPFILE in the same directory, then links it into place.  The link
 * fails with EEXIST if the name exists, so exactly one creator wins and
 * nobody ever sees a half-initialized segment; a creator killed before the
 * link leaves nothing (the kernel frees an unnamed file with its last fd).
 * Filesystems without O_TMPFILE get a uniquely named temporary file instead,
 * <path>.tmp-<pid>-<hex>, locked by its creator (FQ_LOCK_CREATING) until it
 * is removed: one that a killed creator left (before the link, or between
 * the link and the removal: a second name of the segment) is removed by
 * the next creator of that path on such a filesystem, or by the next
 * opener of the segment if it has two names (fq_sweep_tmp; not one that
 * opens it only to read, FQ_OPEN_NOSWEEP: the operators' tools), or by
 * `fastq gc` (fq_tmp_file); those files, their lock and their rule are in
 * fq_file.c.
 * An anonymous segment (path NULL) is a memfd: it has no name anywhere, so
 * it goes away with the last process that maps it or holds its fd, however
 * that process ends; children receive the fd.
 *
 * Liveness: a slot's owner holds a file lock on the segment file through a
 * description of its own (fq_layout.h, "File locks"); the owner is gone once
 * the kernel dropped that lock: at exit, kill or exec.  A probe is one
 * fcntl(F_OFD_GETLK) through the handle's mapping descriptor, which holds
 * no lock and so sees everyone's, ours included.  Every open handle is in a
 * list, so that a forked child closes its copies of the lock descriptors
 * (a copy would keep the parent's locks, and so the parent, alive).
 *
 * The segment lock (the file lock FQ_LOCK_SEGMENT, plus a process-wide
 * mutex) is held by one process at a time to run recovery or to change a
 * topic's tables; a dead holder's is free again (the kernel dropped it).
 *
 * Layer: under waiting and the disciplines, over fq_proc.c.  Attaching
 * when every slot is taken and one owner is dead needs that slot freed,
 * which only recovery (the top layer) can do: the handle carries it as
 * q->reclaim, set by whoever opened the handle (fq_recover.c's fq_create
 * and fq_open_fd), as the wait layer takes its readiness rule as a
 * predicate.  Nothing here calls up.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <sched.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/random.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "fq_internal.h"

static pthread_once_t fq_once = PTHREAD_ONCE_INIT;
static pthread_mutex_t fq_handles_mu = PTHREAD_MUTEX_INITIALIZER;
static fq_queue *fq_handles; /* every open handle, under fq_handles_mu */

static void fq_lock_atfork_child(void);

static void fq_atfork_prepare(void)
{
    pthread_mutex_lock(&fq_handles_mu);
}

static void fq_atfork_parent(void)
{
    pthread_mutex_unlock(&fq_handles_mu);
}

static void fq_atfork_child(void)
{
    /* The child owns no slot: it must take its own on first use, and must
     * not touch the parent's lanes (the parent may still be using them).
     * Handles notice the new epoch in fq_attach.  Its copies of the lock
     * descriptors share the parent's descriptions, and so their locks:
     * closed here (the parent's locks stay: it still has them open), and
     * reopened on first use (fq_lock_fd). */
    for (fq_queue *q = fq_handles; q; q = q->next) {
        int fd = atomic_exchange(&q->lock_fd, -1);
        if (fd >= 0)
            close(fd);
    }
    pthread_mutex_unlock(&fq_handles_mu); /* locked by this thread in prepare */
    atomic_fetch_add_explicit(&fq_fork_epoch, 1, memory_order_relaxed);
    fq_lock_atfork_child();
}

static void fq_init_once(void)
{
    pthread_atfork(fq_atfork_prepare, fq_atfork_parent, fq_atfork_child);
}

/* ---- liveness ---------------------------------------------------------- */

_Static_assert(sizeof(off_t) == 8, "the lock offsets (fq_layout.h) need a 64-bit off_t");

/* Open the segment file of fd again: a description of our own, whose
 * locks are ours alone.  Through /proc/self/fd (works for an unlinked
 * file), else through path if it still names the same file. */
static int fq_reopen(int fd, const char *path)
{
    char p[32] = "/proc/self/fd/", d[12];
    int n = 0, len = (int)strlen(p);
    unsigned v = (unsigned)fd;
    do
        d[n++] = (char)('0' + v % 10);
    while ((v /= 10) != 0);
    while (n)
        p[len++] = d[--n];
    p[len] = 0;
    int lfd = open(p, O_RDWR | O_CLOEXEC);
    if (lfd >= 0 || !path)
        return lfd >= 0 ? lfd : -errno;
    lfd = open(path, O_RDWR | O_CLOEXEC);
    if (lfd < 0)
        return -errno;
    struct stat a, b;
    if (fstat(fd, &a) != 0 || fstat(lfd, &b) != 0 || a.st_dev != b.st_dev ||
        a.st_ino != b.st_ino) {
        close(lfd);
        return -ESTALE;
    }
    return lfd;
}

/* The error of fq_handle_add's reopen, for segment `what`. */
static int fq_reopen_err(char *err, size_t errlen, int rc, const char *what)
{
    return fq_err(err, errlen, rc,
                  "cannot open %s again for its locks: %s (a process must be able to "
                  "open the segment file read-write itself: its owner and mode allow "
                  "this process's uid, and /proc is mounted)",
                  what, strerror(-rc));
}

/* The handle's lock descriptor, opened again after a fork: fd or -errno. */
static int fq_lock_fd(fq_queue *q)
{
    int fd = atomic_load(&q->lock_fd);
    if (fd >= 0)
        return fd;
    pthread_mutex_lock(&fq_handles_mu); /* against a concurrent fork */
    fd = atomic_load(&q->lock_fd);
    if (fd < 0) {
        fd = fq_reopen(q->fd, NULL);
        if (fd >= 0)
            atomic_store(&q->lock_fd, fd);
    }
    pthread_mutex_unlock(&fq_handles_mu);
    return fd;
}

int fq_file_lock(fq_queue *q, uint64_t off, int lock)
{
    int fd = fq_lock_fd(q);
    if (fd < 0)
        return fd;
    struct flock fl = {.l_type = lock ? F_WRLCK : F_UNLCK, .l_whence = SEEK_SET,
                       .l_start = (off_t)off, .l_len = 1};
    if (fcntl(fd, F_OFD_SETLK, &fl) == 0)
        return 0;
    return errno == EACCES ? -EAGAIN : -errno;
}

int fq_slot_alive(fq_queue *q, uint32_t s, uint64_t w, signed char *seen)
{
    if (s >= q->nslots)
        return 0;
    if (seen && seen[s])
        return seen[s] > 0;
    int alive = 1;
    if ((int)s != atomic_load(&q->slot) || atomic_load(&q->epoch) != fq_epoch()) {
        /* (our own slot is alive: we hold its lock) */
        struct flock fl = {.l_type = F_WRLCK, .l_whence = SEEK_SET,
                           .l_start = (off_t)FQ_LOCK_SLOT(s), .l_len = 1};
        atomic_fetch_add_explicit(&fq_probes[1], 1, memory_order_relaxed);
        /* The lock before the word: an owner takes the lock before its
         * word says ACTIVE and frees the word before it drops the lock, and
         * the kernel orders lock operations on the file (its lock context's
         * spinlock), so a free lock followed by an unchanged word means the
         * owner left without freeing it.  An error: cannot tell, never steal. */
        if (fcntl(q->fd, F_OFD_GETLK, &fl) == 0 && fl.l_type == F_UNLCK)
            alive = atomic_load(&q->slots[s].word) != w;
    }
    if (seen)
        seen[s] = alive ? 1 : -1;
    return alive;
}

/* ---- create / open ----------------------------------------------------- */

static uint64_t fq_layout_sub_offset(uint32_t slots)
{
    return sizeof(fq_ctrl) + (uint64_t)slots * sizeof(fq_slot); /* a multiple of 128 */
}

static uint64_t fq_layout_data_offset(uint32_t slots, uint32_t subs)
{
    uint64_t end = fq_layout_sub_offset(slots) + (uint64_t)subs * (sizeof(fq_member) + sizeof(fq_group));
    return (end + 4095) & ~(uint64_t)4095;
}

/* the largest payload that always fits (a topic's records carry a prefix) */
static uint64_t fq_max_msg_for(uint64_t cap, int topic)
{
    return cap / 2 - FQ_REC_HDR - (topic ? FQ_TOPIC_PREFIX : 0);
}

uint64_t fq_capacity_for(uint64_t len, int topic)
{
    uint64_t cap = FQ_MIN_CAPACITY;
    while (cap <= FQ_MAX_CAPACITY && fq_max_msg_for(cap, topic) < len)
        cap <<= 1;
    return cap <= FQ_MAX_CAPACITY ? cap : 0;
}

/* A handle without its lock descriptor yet (fq_handle_add opens it). */
static fq_queue *fq_handle_new(int fd, uint8_t *base, size_t size)
{
    fq_queue *q = calloc(1, sizeof *q);
    if (!q)
        return NULL;
    fq_ctrl *c = (fq_ctrl *)base;
    q->fd = fd;
    atomic_init(&q->lock_fd, -1);
    q->base = base;
    q->map_size = size;
    q->ctrl = c;
    q->cap = c->capacity;
    q->mask = c->capacity - 1;
    q->salt = c->salt;
    q->max_msg = c->max_message;
    q->nslots = c->max_slots;
    q->slots = (fq_slot *)(base + c->slot_offset);
    q->data = base + c->data_offset;
    q->topic = c->kind == FQ_KIND_TOPIC;
    q->drop = q->topic && (c->flags & FQ_FLAG_DROP);
    q->prefix = q->topic ? FQ_TOPIC_PREFIX : 0;
    q->sample_shift = fq_sample_shift(q->cap);
    q->rec_max = q->max_msg + q->prefix;
    q->nsubs = q->topic ? c->max_subs : 0;
    q->members = q->topic ? (fq_member *)(base + c->sub_offset) : NULL;
    q->groups = q->topic ? (fq_group *)(base + c->group_offset) : NULL;
    atomic_init(&q->slot, -1);
    /* only a fork changes the epoch: see fq_attach */
    atomic_init(&q->epoch, atomic_load(&fq_fork_epoch));
    atomic_init(&q->lanes_free, (1u << FQ_LANES) - 1);
    atomic_init(&q->cached_release, atomic_load(&c->release));
    pthread_mutex_init(&q->mu, NULL);
    atomic_init(&q->spin_ns, FQ_SPIN_MAX_NS);
    return q;
}

/* Open the handle's lock descriptor and put the handle into the list of open
 * handles (see fq_atfork_child), in one critical section against fork
 * (fq_atfork_prepare takes the same mutex): a child forked between the two
 * would keep a copy of the descriptor that no list names, and with it every
 * lock the parent takes through it (the parent would never be judged dead).
 * path as fq_reopen; 0 or -errno. */
static int fq_handle_add(fq_queue *q, const char *path)
{
    pthread_mutex_lock(&fq_handles_mu);
    int lfd = fq_reopen(q->fd, path);
    FQ_CRASH_POINT("handle_reopened");
    if (lfd < 0) {
        pthread_mutex_unlock(&fq_handles_mu);
        return lfd;
    }
    atomic_store(&q->lock_fd, lfd);
    q->prev = NULL;
    q->next = fq_handles;
    if (fq_handles)
        fq_handles->prev = q;
    fq_handles = q;
    pthread_mutex_unlock(&fq_handles_mu);
    return 0;
}

/* Out of the list, closing the lock descriptor in the same critical section
 * (as fq_handle_add: a child forked between the two would keep the locks). */
static void fq_handle_remove(fq_queue *q)
{
    pthread_mutex_lock(&fq_handles_mu);
    if (q->prev)
        q->prev->next = q->next;
    else
        fq_handles = q->next;
    if (q->next)
        q->next->prev = q->prev;
    FQ_CRASH_POINT("handle_removed");
    int lfd = atomic_exchange(&q->lock_fd, -1);
    if (lfd >= 0)
        close(lfd);
    pthread_mutex_unlock(&fq_handles_mu);
}

/* A handle that never joined the list (fq_handle_add failed). */
static void fq_handle_free(fq_queue *q)
{
    pthread_mutex_destroy(&q->mu);
    free(q);
}

int fq_segment_create(const char *path, const fq_create_opts *o, fq_queue **out,
                      char *err, size_t errlen)
{
    pthread_once(&fq_once, fq_init_once);
    uint64_t cap = FQ_MIN_CAPACITY;
    if (o->capacity > FQ_MAX_CAPACITY)
        return fq_err(err, errlen, -EINVAL, "capacity %llu is larger than the maximum %llu",
                      (unsigned long long)o->capacity, (unsigned long long)FQ_MAX_CAPACITY);
    while (cap < o->capacity)
        cap <<= 1;
    int topic = o->topic != 0;
    uint64_t max_msg = o->max_message ? o->max_message : fq_max_msg_for(cap, topic);
    if (max_msg > fq_max_msg_for(cap, topic))
        return fq_err(err, errlen, -EINVAL,
                      "max_message %llu does not fit a ring of %llu bytes (at most %llu)",
                      (unsigned long long)max_msg, (unsigned long long)cap,
                      (unsigned long long)fq_max_msg_for(cap, topic));
    uint32_t slots = o->max_slots ? o->max_slots : 64;
    if (slots > FQ_MAX_SLOTS)
        return fq_err(err, errlen, -EINVAL, "max_processes %u exceeds %u", slots, FQ_MAX_SLOTS);
    uint32_t subs = topic ? (o->max_subs ? o->max_subs : 64) : 0;
    if (subs > FQ_MAX_SUBS)
        return fq_err(err, errlen, -EINVAL, "max_subscribers %u exceeds %u", subs, FQ_MAX_SUBS);
    uint64_t data_off = fq_layout_data_offset(slots, subs);
    uint64_t size = data_off + cap;

    /* drawn first: a named temporary file carries it in its name (see
     * fq_sweep_tmp); record tags mix it in, their low 3 bits stay clear */
    uint64_t salt;
    if (getrandom(&salt, sizeof salt, 0) != sizeof salt)
        salt = ((uint64_t)time(NULL) ^ ((uint64_t)getpid() << 32)) * 0x9E3779B97F4A7C15ULL;
    salt &= ~(uint64_t)7;
    /* positions start at 0; the zero-filled ring holds no valid tag because
     * fq_tag(salt, p) == 0 only for one p, and that one is checked: */
    if (fq_tag(salt, 0) == 0)
        salt ^= 8;
    const char *what = path ? path : "an anonymous segment";
    char tmp[PATH_MAX];
    tmp[0] = 0; /* set: the file has a temporary name to unlink on failure */
    int fd, rc;
    if (!path) {
        /* sealable: its size is sealed below, so nobody can truncate it
         * under the processes that map it (SIGBUS) */
        fd = memfd_create("fastq", MFD_CLOEXEC | MFD_ALLOW_SEALING);
        if (fd < 0)
            return fq_err(err, errlen, -errno, "memfd_create: %s", strerror(errno));
    } else {
        fd = fq_open_tmpfile(path, o->mode & 07777, tmp, sizeof tmp, salt, err, errlen);
        if (fd < 0)
            return fd;
    }
    /* not a memfd: reachable only through its descriptors (a process's
     * /proc/<pid>/fd needs ptrace access to it), it keeps its default mode,
     * so that a process that inherits the fd under another uid, or after
     * dropping privileges, can open it again for its locks (fq_reopen) */
    if (path && fchmod(fd, o->mode & 07777) != 0) {
        rc = fq_err(err, errlen, -errno, "fchmod %s: %s", what, strerror(errno));
        goto fail;
    }
    /* Reserve every page now: a full /dev/shm fails here, not with SIGBUS
     * in the middle of a put. */
    rc = posix_fallocate(fd, 0, (off_t)size);
    if (rc != 0) {
        rc = fq_err(err, errlen, -rc,
                    "cannot reserve %llu bytes for %s: %s (is the filesystem full? "
                    "/dev/shm is small in containers)",
                    (unsigned long long)size, what, strerror(rc));
        goto fail;
    }
    FQ_CRASH_POINT("create_reserved");
    if (!path && fcntl(fd, F_ADD_SEALS, F_SEAL_SHRINK | F_SEAL_GROW | F_SEAL_SEAL) != 0) {
        rc = fq_err(err, errlen, -errno, "sealing %s: %s", what, strerror(errno));
        goto fail;
    }
    /* A named segment is prefaulted (MAP_POPULATE): no page faults on the
     * first lap of the ring.  An anonymous one is not: it is a pool's or a
     * pipeline's queue, created on the critical path of its start, and
     * faulting in 16 MiB (zeroing every page) cost more than the fallocate;
     * its forked users fault on their own anyway (fork copies no page table
     * entries of a shared file mapping).  Faulting lazily cannot raise
     * SIGBUS: the fallocate above put every page of the file in place (a
     * full tmpfs or memory cgroup failed it, with an error), so a first
     * touch maps a page that exists, it never allocates one. */
    uint8_t *base = mmap(NULL, size, PROT_READ | PROT_WRITE,
                         MAP_SHARED | (path ? MAP_POPULATE : 0), fd, 0);
    if (base == MAP_FAILED) {
        rc = fq_err(err, errlen, -errno, "mmap %s: %s", what, strerror(errno));
        goto fail;
    }
    fq_ctrl *c = (fq_ctrl *)base;
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    c->version = FQ_VERSION;
    c->kind = topic ? FQ_KIND_TOPIC : FQ_KIND_QUEUE;
    c->flags = (topic && o->drop ? FQ_FLAG_DROP : 0) | (o->temporary ? FQ_FLAG_TEMP : 0);
    c->max_subs = subs;
    c->sub_offset = topic ? fq_layout_sub_offset(slots) : 0;
    c->group_offset = topic ? c->sub_offset + (uint64_t)subs * sizeof(fq_member) : 0;
    c->capacity = cap;
    c->max_message = max_msg;
    c->file_size = size;
    c->data_offset = data_off;
    c->slot_offset = sizeof(fq_ctrl);
    c->max_slots = slots;
    c->lanes = FQ_LANES;
    c->salt = salt;
    c->created_ns = (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
    c->creator_pid = (uint32_t)getpid();
    /* the header before its magic, in the compiler's order too: pairs with
     * fq_sweep_tmp's read of a killed creator's file (a killed process stops
     * between two instructions; its stores all reach the shared page) */
    atomic_signal_fence(memory_order_release);
    c->magic = FQ_MAGIC; /* the link below publishes the whole file */
    /* the link publishes the complete file under its name, or fails */
    if (path && fq_link_into_place(fd, tmp, path) != 0) {
        rc = -errno;
        fq_err(err, errlen, rc, "cannot create %s: %s", path, strerror(errno));
        munmap(base, size);
        goto fail;
    }
    FQ_CRASH_POINT("create_linked");
    if (tmp[0]) {
        unlink(tmp);
        /* the mapping's descriptor holds no lock (fq_internal.h) */
        short type = F_UNLCK;
        fq_creating_lock(fd, F_OFD_SETLK, &type);
    }
    fq_queue *q = fq_handle_new(fd, base, size);
    if (!q) {
        munmap(base, size);
        close(fd);
        return fq_err(err, errlen, -ENOMEM, "out of memory");
    }
    rc = fq_handle_add(q, path);
    if (rc < 0) {
        fq_handle_free(q);
        munmap(base, size);
        close(fd);
        return fq_reopen_err(err, errlen, rc, what);
    }
    *out = q;
    return 0;
fail:
    close(fd);
    if (tmp[0])
        unlink(tmp);
    return rc;
}

int fq_segment_open_fd(int fd_in, const char *path, unsigned flags, fq_queue **out, char *err,
                       size_t errlen)
{
    pthread_once(&fq_once, fq_init_once);
    const char *file = path; /* NULL: only the descriptor reaches the file */
    if (!path)
        path = "an anonymous segment";
    /* the handle owns a copy: the caller keeps fd_in */
    int fd = fcntl(fd_in, F_DUPFD_CLOEXEC, 3);
    if (fd < 0)
        return fq_err(err, errlen, -errno, "cannot use the descriptor of %s: %s", path,
                      strerror(errno));
    struct stat st;
    int rc;
    fq_ctrl h;
    if (fstat(fd, &st) != 0) {
        rc = fq_err(err, errlen, -errno, "fstat %s: %s", path, strerror(errno));
        goto fail;
    }
    /* a second name: a creator killed between its link and the removal of
     * its temporary name (no O_TMPFILE); not by a reader (FQ_OPEN_NOSWEEP) */
    if (file && st.st_nlink > 1 && !(flags & FQ_OPEN_NOSWEEP))
        fq_sweep_tmp(file, &st);
    if ((uint64_t)st.st_size < sizeof h) {
        rc = fq_err(err, errlen, FQ_EBADSEG, "%s is %lld bytes, smaller than a segment header",
                    path, (long long)st.st_size);
        goto fail;
    }
    if (pread(fd, &h, sizeof h, 0) != (ssize_t)sizeof h) {
        rc = fq_err(err, errlen, FQ_EBADSEG, "cannot read the header of %s", path);
        goto fail;
    }
#define BAD(...)                                          \
    do {                                                  \
        rc = fq_err(err, errlen, FQ_EBADSEG, __VA_ARGS__); \
        goto fail;                                        \
    } while (0)
    if (h.magic != FQ_MAGIC)
        BAD("%s is not a fastq segment (bad magic 0x%016llx)", path,
            (unsigned long long)h.magic);
    if (h.version != FQ_VERSION)
        BAD("%s has layout version %u; this fastq reads version %u", path, h.version, FQ_VERSION);
    if (h.kind != FQ_KIND_QUEUE && h.kind != FQ_KIND_TOPIC)
        BAD("%s has kind %u, neither a queue nor a topic", path, h.kind);
    int topic = h.kind == FQ_KIND_TOPIC;
    uint32_t subs = topic ? h.max_subs : 0;
    if (topic ? (h.max_subs == 0 || h.max_subs > FQ_MAX_SUBS ||
                 (h.flags & ~(FQ_FLAG_DROP | FQ_FLAG_TEMP)))
              : (h.max_subs || (h.flags & ~FQ_FLAG_TEMP) || h.sub_offset || h.group_offset))
        BAD("%s: topic fields (max_subs %u, flags %u) are invalid", path, h.max_subs, h.flags);
    if (h.capacity < FQ_MIN_CAPACITY || h.capacity > FQ_MAX_CAPACITY ||
        (h.capacity & (h.capacity - 1)))
        BAD("%s: capacity %llu is not a power of two in [%u, %llu]", path,
            (unsigned long long)h.capacity, FQ_MIN_CAPACITY,
            (unsigned long long)FQ_MAX_CAPACITY);
    if (h.max_message == 0 || h.max_message > fq_max_msg_for(h.capacity, topic))
        BAD("%s: max_message %llu is invalid for capacity %llu", path,
            (unsigned long long)h.max_message, (unsigned long long)h.capacity);
    if (h.max_slots == 0 || h.max_slots > FQ_MAX_SLOTS || h.lanes != FQ_LANES)
        BAD("%s: slot table (%u slots, %u lanes) is invalid", path, h.max_slots, h.lanes);
    if (topic && (h.sub_offset != fq_layout_sub_offset(h.max_slots) ||
                  h.group_offset != h.sub_offset + (uint64_t)subs * sizeof(fq_member)))
        BAD("%s: topic table offsets (%llu, %llu) are inconsistent", path,
            (unsigned long long)h.sub_offset, (unsigned long long)h.group_offset);
    if (h.slot_offset != sizeof(fq_ctrl) || h.data_offset != fq_layout_data_offset(h.max_slots, subs))
        BAD("%s: slot/data offsets (%llu, %llu) are inconsistent", path,
            (unsigned long long)h.slot_offset, (unsigned long long)h.data_offset);
    if (h.file_size != h.data_offset + h.capacity)
        BAD("%s: header file size %llu does not match its layout (%llu)", path,
            (unsigned long long)h.file_size,
            (unsigned long long)(h.data_offset + h.capacity));
    if ((uint64_t)st.st_size != h.file_size)
        BAD("%s is %lld bytes but its header says %llu (truncated or extended?)", path,
            (long long)st.st_size, (unsigned long long)h.file_size);
    if (h.salt & 7)
        BAD("%s: salt is invalid", path);
    /* A file with holes (copied with cp --sparse, truncated and grown back)
     * would allocate its missing pages in the middle of a put, and a full
     * filesystem answers that with SIGBUS: reserve them now, as fq_create
     * does.  fallocate mode 0 only allocates the holes, never touches the
     * bytes that attached processes write.  Not posix_fallocate: where the
     * filesystem cannot fallocate, glibc emulates it by rewriting a byte
     * per block, which would race with those writers; such a filesystem
     * keeps the file as it is (and it is not prefaulted: populating a
     * sparse file would allocate all of it anyway, without a clean error). */
    /* An anonymous segment (a memfd whose size fq_create sealed, handed to
     * a spawned child by its descriptor) is not prefaulted, as in fq_create;
     * a named file never carries those seals. */
    int seals = fcntl(fd, F_GET_SEALS);
    int sized = F_SEAL_SHRINK | F_SEAL_GROW;
    int populate = seals >= 0 && (seals & sized) == sized ? 0 : MAP_POPULATE;
    if ((uint64_t)st.st_blocks * 512 < h.file_size) {
        int r;
        do
            r = fallocate(fd, 0, 0, (off_t)h.file_size);
        while (r != 0 && errno == EINTR);
        if (r != 0 && (errno == ENOSPC || errno == EDQUOT)) {
            rc = fq_err(err, errlen, -errno,
                        "cannot reserve the %llu bytes of %s, a sparse file: %s (is the "
                        "filesystem full? /dev/shm is small in containers)",
                        (unsigned long long)h.file_size, path, strerror(errno));
            goto fail;
        }
        if (r != 0)
            populate = 0;
    }
    uint8_t *base = mmap(NULL, h.file_size, PROT_READ | PROT_WRITE, MAP_SHARED | populate, fd, 0);
    if (base == MAP_FAILED) {
        rc = fq_err(err, errlen, -errno, "mmap %s: %s", path, strerror(errno));
        goto fail;
    }
    fq_ctrl *c = (fq_ctrl *)base;
    /* cursors: release <= head <= tail <= release + capacity, all aligned,
     * tail at most FQ_POS_MAX.
     * Loaded in this order, a live queue cannot fail the check. */
    uint64_t rel = atomic_load(&c->release), hd = atomic_load(&c->head),
             tl = atomic_load(&c->tail), rel2 = atomic_load(&c->release);
    if (topic)
        hd = rel; /* a topic has no shared head: its groups have theirs */
    /* tail is checked against release loaded after it: between the first
     * load of release and the load of tail, release may have moved and tail
     * passed the old release + capacity (a busy, full ring) */
    if ((rel | hd | tl) & 15 || rel > hd || hd > tl || rel2 < rel || tl > FQ_POS_MAX ||
        (rel2 <= tl && tl - rel2 > h.capacity)) {
        munmap(base, h.file_size);
        BAD("%s: cursors are inconsistent (release %llu, head %llu, tail %llu)", path,
            (unsigned long long)rel, (unsigned long long)hd, (unsigned long long)tl);
    }
#undef BAD
    fq_queue *q = fq_handle_new(fd, base, h.file_size);
    if (!q) {
        munmap(base, h.file_size);
        rc = fq_err(err, errlen, -ENOMEM, "out of memory");
        goto fail;
    }
    /* never trust the mapping for the values we index with: use the
     * validated copy */
    q->cap = h.capacity;
    q->mask = h.capacity - 1;
    q->salt = h.salt;
    q->max_msg = h.max_message;
    q->nslots = h.max_slots;
    q->slots = (fq_slot *)(base + h.slot_offset);
    q->data = base + h.data_offset;
    q->topic = topic;
    q->drop = topic && (h.flags & FQ_FLAG_DROP);
    q->prefix = topic ? FQ_TOPIC_PREFIX : 0;
    q->sample_shift = fq_sample_shift(q->cap);
    q->rec_max = q->max_msg + q->prefix;
    q->nsubs = subs;
    q->members = topic ? (fq_member *)(base + h.sub_offset) : NULL;
    q->groups = topic ? (fq_group *)(base + h.group_offset) : NULL;
    rc = fq_handle_add(q, file);
    if (rc < 0) {
        fq_handle_free(q);
        munmap(base, h.file_size);
        rc = fq_reopen_err(err, errlen, rc, path);
        goto fail;
    }
    *out = q;
    return 0;
fail:
    close(fd);
    return rc;
}

/* ---- slots ------------------------------------------------------------- */

static int fq_lanes_idle(fq_slot *s)
{
    for (unsigned l = 0; l < FQ_LANES; l++) {
        if ((atomic_load(&s->lane[l].prod.state) & 3) != FQ_PH_IDLE ||
            (atomic_load(&s->lane[l].cons.state) & 3) != FQ_PH_IDLE)
            return 0;
    }
    return 1;
}

/* Take a slot for this process, if we have none (or forked since). */
int fq_attach(fq_queue *q)
{
    unsigned ep = atomic_load_explicit(&fq_fork_epoch, memory_order_relaxed);
    if (atomic_load_explicit(&q->slot, memory_order_acquire) >= 0 &&
        atomic_load_explicit(&q->epoch, memory_order_relaxed) == ep)
        return 0;
    if (atomic_load_explicit(&q->epoch, memory_order_relaxed) != ep) {
        /* we are a forked child: the inherited slot, lanes and mutex state
         * are the parent's (another thread of the parent may have held the
         * mutex at the fork; the child has a single thread here) */
        pthread_mutex_init(&q->mu, NULL);
        atomic_store(&q->slot, -1);
        atomic_store(&q->lanes_free, (1u << FQ_LANES) - 1);
        q->sleepers[0] = q->sleepers[1] = 0;
        /* and the parent's armings: with armed[] inherited, the child's
         * first fq_arm_pred would skip clearing its new slot's bell_rung,
         * and a bit a previous owner left there would keep every writer
         * from ringing it (review 17, N1) */
        q->armed[0] = q->armed[1] = 0;
        q->armed_quiet = 0;
        q->quiet_sleepers = 0;
        atomic_store(&q->epoch, ep);
    }
    pthread_mutex_lock(&q->mu);
    if (atomic_load(&q->slot) >= 0) {
        pthread_mutex_unlock(&q->mu);
        return 0;
    }
    int pid = (int)getpid();
    for (int attempt = 0; attempt < 2000; attempt++) {
        for (uint32_t i = 0; i < q->nslots; i++) {
            fq_slot *s = &q->slots[i];
            uint64_t w = atomic_load(&s->word);
            if (FQ_SLOT_KIND(w) != FQ_SLOT_FREE)
                continue;
            /* the lock first: whoever sees the slot ACTIVE sees it held */
            int rc = fq_file_lock(q, FQ_LOCK_SLOT(i), 1);
            if (rc == -EAGAIN)
                continue; /* being taken by another handle, or just freed */
            if (rc) {
                pthread_mutex_unlock(&q->mu);
                return rc;
            }
            uint32_t gen = FQ_SLOT_GEN(w) + 1;
            if (!atomic_compare_exchange_strong(&s->word, &w,
                                                FQ_SLOT_WORD(FQ_SLOT_ACTIVE, gen, pid))) {
                fq_file_lock(q, FQ_LOCK_SLOT(i), 0);
                continue;
            }
            if (!fq_lanes_idle(s)) {
                /* a FREE slot never has busy lanes (a corrupt segment): left
                 * ACTIVE without its lock, it is a dead one's to recovery */
                fq_file_lock(q, FQ_LOCK_SLOT(i), 0);
                continue;
            }
            atomic_store_explicit(&q->slot, (int)i, memory_order_release);
            pthread_mutex_unlock(&q->mu);
            return 0;
        }
        pthread_mutex_unlock(&q->mu);
        /* every slot taken: by live processes (no slot), or some dead, which
         * recovery frees; it may be busy in another process: wait for it
         * (bounded: about 2 s) */
        int dead = 0;
        for (uint32_t i = 0; i < q->nslots && !dead; i++) {
            uint64_t w = atomic_load(&q->slots[i].word);
            dead = FQ_SLOT_KIND(w) != FQ_SLOT_FREE && !fq_slot_alive(q, i, w, NULL);
        }
        if (!dead)
            return FQ_ENOSLOT;
        if (!q->reclaim || !q->reclaim(q)) {
            struct timespec ts = {0, 1000000};
            nanosleep(&ts, NULL);
        }
        pthread_mutex_lock(&q->mu);
    }
    pthread_mutex_unlock(&q->mu);
    return FQ_ENOSLOT;
}

int fq_lane_get(fq_queue *q)
{
    for (;;) {
        uint32_t f = atomic_load_explicit(&q->lanes_free, memory_order_relaxed);
        if (!f)
            return -1; /* the caller waits without holding the GIL */
        int b = __builtin_ctz(f);
        if (atomic_compare_exchange_weak_explicit(&q->lanes_free, &f, f & ~(1u << b),
                                                  memory_order_acquire, memory_order_relaxed))
            return b;
    }
}

void fq_lane_put(fq_queue *q, int lane)
{
    atomic_fetch_or_explicit(&q->lanes_free, 1u << lane, memory_order_release);
}

/* ---- time in queue: the slot's sample rings (fq_layout.h) ----------------- */

void fq_sample_note(fq_queue *q, int side, uint64_t key)
{
    int s = atomic_load_explicit(&q->slot, RLX);
    if (s < 0)
        return;
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    fq_slot *sl = &q->slots[s];
    /* relaxed: only picks an entry; threads of this process share the ring */
    uint64_t i = atomic_fetch_add_explicit(&sl->sample_seq[side], 1, RLX) % FQ_SAMPLES;
    fq_sample *e = side ? &sl->get_sample[i] : &sl->put_sample[i];
    /* the seqlock of fq_layout.h: key 0 first, and the release fence orders
     * it before ns (pairs with the reader's acquire fence before its second
     * load of key); then the key, release (pairs with the reader's acquire
     * load of key before ns) */
    atomic_store_explicit(&e->key, 0, RLX);
    atomic_thread_fence(REL);
    atomic_store_explicit(&e->ns, (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec, RLX);
    atomic_store_explicit(&e->key, key, REL);
}

/* ---- the segment lock ---------------------------------------------------- */

static pthread_mutex_t fq_lock_mu = PTHREAD_MUTEX_INITIALIZER;

/* after fork, in the child: another thread may have held the mutex */
static void fq_lock_atfork_child(void)
{
    pthread_mutex_init(&fq_lock_mu, NULL);
}

/* Take the segment lock if it is free (a dead or exec'd holder's is): 1 if
 * taken.  The process-wide mutex keeps this process's threads out of each
 * other's way (one process's handles of a segment are one holder to it).
 * Taking and dropping the file lock are system calls that order memory
 * like a mutex (the kernel's lock on the file's lock list): the tables one
 * holder changed are seen by the next. */
static int fq_lock_take(fq_queue *q) /* 1 taken, 0 busy, or -errno */
{
    if (pthread_mutex_trylock(&fq_lock_mu) != 0)
        return 0;
    int rc = fq_file_lock(q, FQ_LOCK_SEGMENT, 1);
    if (rc != 0) {
        pthread_mutex_unlock(&fq_lock_mu);
        return rc == -EAGAIN ? 0 : rc;
    }
    atomic_store(&q->ctrl->recover_lock, (uint64_t)(uint32_t)getpid() << 32);
    return 1;
}

int fq_lock_try(fq_queue *q)
{
    return fq_lock_take(q) > 0;
}

/* Take the lock, waiting for a live holder (bounded: holders do short work).
 * 0, or -errno if this handle cannot lock (a forked child that could not
 * open the file again: no /proc, or out of descriptors). */
int fq_lock_wait(fq_queue *q)
{
    int rc;
    while ((rc = fq_lock_take(q)) == 0) {
        struct timespec ts = {0, 50000};
        nanosleep(&ts, NULL);
    }
    return rc > 0 ? 0 : rc;
}

void fq_lock_drop(fq_queue *q)
{
    /* (a topic's tables changed under the lock: fq_topic_unlock announces
     * that before it drops the lock) */
    atomic_store(&q->ctrl->recover_lock, 0);
    fq_file_lock(q, FQ_LOCK_SEGMENT, 0);
    pthread_mutex_unlock(&fq_lock_mu);
}

void fq_close(fq_queue *q)
{
    if (!q)
        return;
    unsigned ep = atomic_load(&fq_fork_epoch);
    int s = atomic_load(&q->slot);
    if (s >= 0 && atomic_load(&q->epoch) == ep) {
        fq_slot *sl = &q->slots[s];
        uint64_t w = atomic_load(&sl->word);
        if (FQ_SLOT_KIND(w) == FQ_SLOT_ACTIVE && FQ_SLOT_PID(w) == (int)getpid() &&
            fq_lanes_idle(sl)) {
            uint64_t mbit = 1ull << (s & 63);
            atomic_fetch_and(&q->ctrl->data_mask[s / 64], ~mbit);
            atomic_fetch_and(&q->ctrl->space_mask[s / 64], ~mbit);
            atomic_fetch_and(&q->ctrl->quiet_mask[s / 64], ~mbit);
            atomic_compare_exchange_strong(&sl->word, &w,
                                           FQ_SLOT_WORD(FQ_SLOT_FREE, FQ_SLOT_GEN(w), 0));
        }
    }
    /* after the slot is FREE: closing the lock descriptor drops its lock
     * (see fq_slot_alive) */
    fq_handle_remove(q);
    munmap(q->base, q->map_size);
    close(q->fd);
    free(q);
}

int fq_fd(fq_queue *q) { return q->fd; }

int fq_flush(fq_queue *q)
{
    return msync(q->base, q->map_size, MS_SYNC) == 0 ? 0 : -errno;
}

uint64_t fq_capacity(fq_queue *q) { return q->cap; }
uint64_t fq_max_message(fq_queue *q) { return q->max_msg; }
uint32_t fq_max_slots(fq_queue *q) { return q->nslots; }

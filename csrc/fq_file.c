/*
 * fq_file.c - a segment's file while it is made: the temporary file of a
 * creation on a filesystem without O_TMPFILE (<path>.tmp-<pid>-<hex>, held
 * by its creator's creating lock), linking the finished file into place,
 * and the one rule that tells a killed creator's leftover from anything
 * else (fq_tmp_kind), used by the sweep of a creator or opener
 * (fq_sweep_tmp) and by `fastq gc` (fq_tmp_file).  fq_segment.c's top
 * comment states the creation protocol this serves.
 *
 * Layer: over fq_proc.c (error text) alone; fq_segment.c calls it.
 */
#define _GNU_SOURCE
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "fq_internal.h"

/* path's directory into dir (PATH_MAX bytes); *base: its last component.
 * -ENAMETOOLONG, or 0. */
static int fq_dir_of(const char *path, char *dir, const char **base)
{
    const char *slash = strrchr(path, '/');
    size_t dlen = slash ? (size_t)(slash - path) : 1;
    if (dlen >= PATH_MAX)
        return -ENAMETOOLONG;
    if (!slash)
        memcpy(dir, ".", 2);
    else if (dlen == 0)
        memcpy(dir, "/", 2);
    else {
        memcpy(dir, path, dlen);
        dir[dlen] = 0;
    }
    *base = slash ? slash + 1 : path;
    return 0;
}

/* The creating lock of a named temporary file, as a request of type
 * (F_WRLCK, F_UNLCK) for fcntl cmd (F_OFD_SETLK, F_OFD_GETLK) on fd: 0 or
 * -1 with errno; a GETLK's answer in *type. */
int fq_creating_lock(int fd, int cmd, short *type)
{
    struct flock fl;
    memset(&fl, 0, sizeof fl);
    fl.l_type = *type;
    fl.l_whence = SEEK_SET;
    fl.l_start = (off_t)FQ_LOCK_CREATING;
    fl.l_len = 1;
    int rc = fcntl(fd, cmd, &fl);
    *type = fl.l_type;
    return rc;
}

/*
 * The temporary files of creations (no O_TMPFILE): a creator names its file
 * <base>.tmp-<pid>-<16 hex digits> (fq_open_tmpfile) and holds its creating
 * lock until it removes that name.  One that a creator killed before it
 * removed it is a leftover: whose creating lock is free and whose pid is
 * gone (kill: ESRCH).  Both: the lock goes with the creator's last
 * descriptor, but a creator takes it just after its O_EXCL open, and its pid
 * is there from before.  A pid reused since, or another user's (EPERM),
 * keeps the file: conservative.
 *
 * The name alone does not make a file a creation's temporary file: a
 * segment of its own may have been created, renamed or linked under such a
 * name.  So it is one only if it is a regular file (opened without following
 * a symlink) that is not a finished segment of its own: its header was
 * never completed (no magic: nobody can open it), or it is the temporary
 * file of the creation its name records: creator_pid and salt in its header
 * are the pid and hex of its name (fq_open_tmpfile names the file by its
 * salt, written before the magic).  A segment created, renamed or linked
 * under such a name has a salt drawn when it was created, which the name
 * cannot carry (except by 2^-61 chance, or by someone who read the header
 * to name it so).  Only compared: whatever the file holds.  Who looks:
 *   - an opener (same != NULL) only at the very file it opens (st_dev,
 *     st_ino of same), i.e. a second name of that segment;
 *   - a creator, before it creates path (same == NULL), at every file of
 *     its base name; fq_tmp_file (operators' tools: fastq gc, ls, rm) at
 *     the file it is given.
 * fq_tmp_kind decides; fq_sweep_tmp and fq_tmp_file remove by it.  Best
 * effort: whatever fails is left as it is.  Each name is unique (pid and 61
 * random bits), so the name probed is the name removed, but the probe and
 * the unlinkat are two steps (no unlink-if-inode): a file put under that
 * very name between them is removed.
 */

/* If the name n is <base>.tmp-<pid>-<16 hex digits> (base not empty): the
 * length of its base, its pid and hex; else 0. */
static size_t fq_tmp_name(const char *n, pid_t *pid, unsigned long long *hex)
{
    size_t len = strlen(n), i;
    if (len < 5 + 1 + 1 + 16 + 1 || n[len - 17] != '-' ||
        strspn(n + len - 16, "0123456789abcdef") != 16)
        return 0;
    for (i = len - 17; i > 0 && n[i - 1] >= '0' && n[i - 1] <= '9'; i--)
        ;
    if (i == len - 17 || len - 17 - i > 10 || i < 5 + 1 || strncmp(n + i - 5, ".tmp-", 5) != 0)
        return 0;
    errno = 0;
    long p = strtol(n + i, NULL, 10);
    if (errno || p <= 0 || p > INT_MAX)
        return 0;
    *pid = (pid_t)p;
    *hex = strtoull(n + len - 16, NULL, 16);
    return i - 5;
}

/* What the file n (named as fq_tmp_name accepts, with its pid and hex) of
 * the directory dfd is (FQ_TMP_NONE, FQ_TMP_CREATING, FQ_TMP_LEFTOVER), by
 * the rule above; or -errno if it cannot be opened. */
static int fq_tmp_kind(int dfd, const char *n, pid_t pid, unsigned long long hex,
                       const struct stat *same)
{
    int fd = openat(dfd, n, O_RDONLY | O_NOFOLLOW | O_NONBLOCK | O_CLOEXEC);
    if (fd < 0)
        return errno == ELOOP ? FQ_TMP_NONE : -errno; /* ELOOP: a symlink */
    struct stat st;
    int ours = fstat(fd, &st) == 0 && S_ISREG(st.st_mode);
    if (ours && same)
        ours = st.st_dev == same->st_dev && st.st_ino == same->st_ino;
    if (ours) {
        fq_ctrl h;
        memset(&h, 0, sizeof h); /* a short file: what it lacks reads as 0 */
        ours = pread(fd, &h, sizeof h, 0) >= 0 &&
               (h.magic != FQ_MAGIC || (h.creator_pid == (uint64_t)pid && h.salt == hex));
    }
    int kind = ours ? FQ_TMP_CREATING : FQ_TMP_NONE;
    short type = F_WRLCK;
    if (ours && kill(pid, 0) != 0 && errno == ESRCH &&
        fq_creating_lock(fd, F_OFD_GETLK, &type) == 0 && type == F_UNLCK)
        kind = FQ_TMP_LEFTOVER;
    close(fd);
    return kind;
}

/* Remove the leftovers of path's creations (see above); same: as
 * fq_tmp_kind's. */
void fq_sweep_tmp(const char *path, const struct stat *same)
{
    char dir[PATH_MAX];
    const char *base;
    if (fq_dir_of(path, dir, &base) != 0)
        return;
    size_t blen = strlen(base);
    DIR *d = opendir(dir);
    if (!d)
        return;
    struct dirent *de;
    while ((de = readdir(d)) != NULL) {
        const char *n = de->d_name;
        pid_t pid;
        unsigned long long hex;
        if (fq_tmp_name(n, &pid, &hex) != blen || strncmp(n, base, blen) != 0)
            continue;
        if (kill(pid, 0) == 0 || errno != ESRCH)
            continue; /* its creator (or a namesake) is there: not opened */
        if (fq_tmp_kind(dirfd(d), n, pid, hex, same) == FQ_TMP_LEFTOVER)
            unlinkat(dirfd(d), n, 0);
    }
    closedir(d);
}

int fq_tmp_file(const char *path, int remove)
{
    char dir[PATH_MAX];
    const char *base;
    pid_t pid;
    unsigned long long hex;
    int rc = fq_dir_of(path, dir, &base);
    if (rc != 0)
        return rc;
    if (!fq_tmp_name(base, &pid, &hex))
        return FQ_TMP_NONE;
    int dfd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (dfd < 0)
        return -errno;
    rc = fq_tmp_kind(dfd, base, pid, hex, NULL);
    if (rc == FQ_TMP_LEFTOVER && remove && unlinkat(dfd, base, 0) != 0)
        rc = -errno;
    close(dfd);
    return rc;
}

/* An unnamed file in path's directory (O_TMPFILE), or, where the filesystem
 * has none, a uniquely named one whose name is left in tmp (else tmp is "");
 * the fd, or a negative errno with err set.  A named one carries its
 * creating lock (FQ_LOCK_CREATING) on the fd, so that fq_sweep_tmp can
 * tell it from one a killed creator left; leftovers are swept first. */
int fq_open_tmpfile(const char *path, unsigned mode, char *tmp, size_t tmplen,
                           uint64_t salt, char *err, size_t errlen)
{
    char dir[PATH_MAX];
    const char *base;
    if (fq_dir_of(path, dir, &base) != 0)
        return fq_err(err, errlen, -ENAMETOOLONG, "path too long: %s", path);
    int fd = open(dir, O_TMPFILE | O_RDWR | O_CLOEXEC, mode);
    if (fd >= 0)
        return fd;
    if (errno != EOPNOTSUPP && errno != EISDIR && errno != EINVAL)
        return fq_err(err, errlen, -errno, "cannot create %s: %s", path, strerror(errno));
    fq_sweep_tmp(path, NULL);
    if (snprintf(tmp, tmplen, "%s.tmp-%d-%016llx", path, (int)getpid(),
                 (unsigned long long)salt) >= (int)tmplen) {
        tmp[0] = 0;
        return fq_err(err, errlen, -ENAMETOOLONG, "path too long: %s", path);
    }
    fd = open(tmp, O_RDWR | O_CREAT | O_EXCL | O_CLOEXEC, mode);
    if (fd < 0) {
        int e = errno;
        tmp[0] = 0;
        return fq_err(err, errlen, -e, "cannot create %s: %s", path, strerror(e));
    }
    short type = F_WRLCK;
    if (fq_creating_lock(fd, F_OFD_SETLK, &type) != 0) {
        int e = errno;
        unlink(tmp);
        close(fd);
        tmp[0] = 0;
        return fq_err(err, errlen, -e, "cannot lock %s: %s", path, strerror(e));
    }
    return fd;
}

/* Give the complete file fd (named tmp, or unnamed if tmp is "") the name
 * path; fails with errno EEXIST if path exists.  0 or -1 with errno. */
int fq_link_into_place(int fd, const char *tmp, const char *path)
{
    if (tmp[0])
        return link(tmp, path);
    char self[64];
    snprintf(self, sizeof self, "/proc/self/fd/%d", fd);
    if (linkat(AT_FDCWD, self, AT_FDCWD, path, AT_SYMLINK_FOLLOW) == 0)
        return 0;
    if (errno != ENOENT || access("/proc/self/fd", F_OK) == 0)
        return -1;
    /* no /proc: AT_EMPTY_PATH (needs CAP_DAC_READ_SEARCH) */
    return linkat(fd, "", AT_FDCWD, path, AT_EMPTY_PATH);
}

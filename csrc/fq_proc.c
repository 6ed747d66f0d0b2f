/*
 * fq_proc.c - process identity and liveness, the layer under the segment:
 * which process we are (the fork epoch, bumped in a forked child by the
 * segment's atfork handler), whether another process still lives when it
 * holds no slot (/proc, for the files of anonymous queues), the error text
 * of a failed call, and the crash and pause points of the fault-injection
 * tests.
 *
 * Protocol: nothing here touches a segment.  A pid is a hint only: a slot's
 * or a member's owner is judged by its file lock (fq_slot_alive in
 * fq_segment.c), never by its pid; fq_pid_alive checks a pid together with
 * its start time, so a reused pid is not taken for its predecessor.  The
 * fork epoch only grows; a handle whose epoch differs was inherited across
 * a fork and owns nothing until it attaches again.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "fq_internal.h"

/* ---- identity ------------------------------------------------------------ */

_Atomic unsigned fq_fork_epoch = 1;

unsigned fq_epoch(void)
{
    return atomic_load_explicit(&fq_fork_epoch, memory_order_relaxed);
}

int fq_err(char *err, size_t errlen, int rc, const char *fmt, ...)
{
    if (err && errlen) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(err, errlen, fmt, ap);
        va_end(ap);
    }
    return rc;
}

/* ---- liveness of a pid ---------------------------------------------------- */

_Atomic uint64_t fq_probes[2]; /* see fq_test_probe_count */

uint64_t fq_test_probe_count(int kind)
{
    return atomic_load(&fq_probes[kind != 0]);
}

/* The start of /proc/<pid>/<file>, NUL-terminated, in buf; 0 on success. */
static int fq_proc_read(int pid, const char *file, char *buf, size_t len)
{
    char path[64];
    snprintf(path, sizeof path, "/proc/%d/%s", pid, file);
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return -1;
    ssize_t n = read(fd, buf, len - 1);
    close(fd);
    if (n <= 0)
        return -1;
    buf[n] = 0;
    return 0;
}

/* Read the state of pid from /proc; 0 on success. */
static int fq_proc_stat(int pid, char *state, uint64_t *start)
{
    atomic_fetch_add_explicit(&fq_probes[0], 1, memory_order_relaxed);
    char buf[1024];
    if (fq_proc_read(pid, "stat", buf, sizeof buf) != 0)
        return -1;
    char *p = strrchr(buf, ')'); /* comm may contain spaces and ')' */
    if (!p || p[1] != ' ')
        return -1;
    p += 2;
    *state = *p;
    /* field 3 is state; starttime is field 22: skip 19 more fields */
    for (int f = 3; f < 22; f++) {
        p = strchr(p, ' ');
        if (!p)
            return -1;
        p++;
    }
    *start = strtoull(p, NULL, 10);
    return 0;
}

/* Threads of pid's thread group from /proc/<pid>/status; -1 if unknown. */
static long fq_proc_threads(int pid)
{
    char buf[4096];
    if (fq_proc_read(pid, "status", buf, sizeof buf) != 0)
        return -1;
    char *p = strstr(buf, "\nThreads:");
    return p ? strtol(p + 9, NULL, 10) : -1;
}

/* A pid-level check, for what has no slot (the files of anonymous queues):
 * not used to judge slots or members. */
int fq_pid_alive(int pid, uint64_t start_time)
{
    if (pid <= 0)
        return 0;
    atomic_fetch_add_explicit(&fq_probes[0], 1, memory_order_relaxed);
    if (kill(pid, 0) != 0 && errno == ESRCH)
        return 0;
    char st;
    uint64_t start;
    if (fq_proc_stat(pid, &st, &start) != 0)
        return kill(pid, 0) == 0 || errno == EPERM; /* no /proc: trust kill */
    if (st == 'X' || st == 'x')
        return 0;
    /* Z is the thread group leader's state: a leader whose thread exited
     * while others run is a zombie too; the group is dead only when it is
     * the last one */
    if (st == 'Z' && fq_proc_threads(pid) <= 1)
        return 0;
    if (start_time && start != start_time)
        return 0;
    return 1;
}

/* ---- crash and pause points (tests only) -------------------------------- */

_Atomic int fq_crash_armed = 0; /* a crash or a pause point is set */
static char fq_crash_name[64];
static _Atomic int fq_crash_countdown;
static char fq_pause_name[64];
static _Atomic int fq_pause_countdown;
static int fq_pause_fd[2] = {-1, -1}; /* notify, resume */

static void fq_test_arm(void)
{
    atomic_store(&fq_crash_armed, fq_crash_name[0] != 0 || fq_pause_name[0] != 0);
}

void fq_test_set_crash_point(const char *name, int countdown)
{
    snprintf(fq_crash_name, sizeof fq_crash_name, "%s", name ? name : "");
    atomic_store(&fq_crash_countdown, countdown);
    fq_test_arm();
}

void fq_test_set_pause_point(const char *name, int countdown, int notify_fd, int resume_fd)
{
    snprintf(fq_pause_name, sizeof fq_pause_name, "%s", name ? name : "");
    atomic_store(&fq_pause_countdown, countdown);
    fq_pause_fd[0] = notify_fd;
    fq_pause_fd[1] = resume_fd;
    fq_test_arm();
}

void fq_crash_check(const char *name)
{
    if (fq_crash_name[0] && strcmp(name, fq_crash_name) == 0 &&
        atomic_fetch_sub(&fq_crash_countdown, 1) <= 1)
        _exit(9);
    if (fq_pause_name[0] && strcmp(name, fq_pause_name) == 0 &&
        atomic_fetch_sub(&fq_pause_countdown, 1) == 1) {
        /* once: tell the test, then wait for its go (or for it to close) */
        char b = 'P';
        if (fq_pause_fd[0] < 0)
            raise(SIGSTOP);
        else if (write(fq_pause_fd[0], &b, 1) == 1)
            while (read(fq_pause_fd[1], &b, 1) < 0 && errno == EINTR)
                ;
    }
}

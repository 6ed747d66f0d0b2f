"""A process on a filesystem without O_TMPFILE (an LD_PRELOAD shim that fails
open(dir, O_TMPFILE) as such a filesystem does), creating a segment in a child
process that may be made to die at a crash point: the named temporary file
path of fq_segment.c (review 9, R4; review 10); or stopped (SIGSTOP) just before
it links its complete temporary file into place: a creation in progress
(FQ_SHIM_STOP_AT_LINK in its environment)."""

import os
import subprocess
import sys

import pytest

_NO_TMPFILE_SHIM = r"""
#define _GNU_SOURCE
#include <dlfcn.h>
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdarg.h>
#include <stdlib.h>
/* a filesystem without O_TMPFILE: open(dir, O_TMPFILE) fails as there */
static int shim(const char *name, const char *p, int flags, va_list ap)
{
    int (*real)(const char *, int, ...) = (int (*)(const char *, int, ...))dlsym(RTLD_NEXT, name);
    if ((flags & __O_TMPFILE) == __O_TMPFILE) {
        errno = EOPNOTSUPP;
        return -1;
    }
    return real(p, flags, va_arg(ap, int));
}
int open(const char *p, int flags, ...)
{ va_list ap; va_start(ap, flags); int r = shim("open", p, flags, ap); va_end(ap); return r; }
int open64(const char *p, int flags, ...)
{ va_list ap; va_start(ap, flags); int r = shim("open64", p, flags, ap); va_end(ap); return r; }
/* a creator that stops before its link, its temporary file complete */
int link(const char *from, const char *to)
{
    typedef int (*link_fn)(const char *, const char *);
    link_fn real = (link_fn)dlsym(RTLD_NEXT, "link");
    if (getenv("FQ_SHIM_STOP_AT_LINK"))
        raise(SIGSTOP);
    return real(from, to);
}
"""

_CREATE_KILLED = r"""
import sys
sys.path.insert(0, %r)
from support.cseg import create, lib
if sys.argv[2]:
    lib.fq_test_set_crash_point(sys.argv[2].encode(), 1)
rc, q, err = create(sys.argv[1])
sys.exit(3 if sys.argv[2] else rc)  # 3: not killed, the crash point was not reached
"""


def create_in_child(path, point, env):
    """fq_create(path) in a child process, made to die at the crash point (if
    given); its exit status (9: died there, as a crash point exits)"""
    support = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    r = subprocess.run([sys.executable, "-c", _CREATE_KILLED % support, str(path), point],
                       env=env, timeout=120)
    return r.returncode


def creator_stopped_at_link(path, env):
    """A child process (Popen) creating path on a filesystem without
    O_TMPFILE, stopped (SIGSTOP) once its temporary file is complete, just
    before it links it into place; SIGCONT lets it finish (exit status 0)."""
    support = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    p = subprocess.Popen([sys.executable, "-c", _CREATE_KILLED % support, str(path), ""],
                         env=dict(env, FQ_SHIM_STOP_AT_LINK="1"))
    _pid, status = os.waitpid(p.pid, os.WUNTRACED)
    assert os.WIFSTOPPED(status), "the creator ended before its link (status %d)" % status
    return p


@pytest.fixture
def no_tmpfile_env(tmp_path):
    """the environment of a process on a filesystem without O_TMPFILE"""
    cc = os.environ.get("CC", "cc")
    shim_c = tmp_path / "shim.c"
    shim_c.write_text(_NO_TMPFILE_SHIM)
    shim = tmp_path / "shim.so"
    subprocess.run([cc, "-shared", "-fPIC", "-o", str(shim), str(shim_c), "-ldl"], check=True)
    # after what is preloaded already (the sanitizers' runtimes must come first)
    pre = os.environ.get("LD_PRELOAD", "")
    return dict(os.environ, LD_PRELOAD=(pre + " " + str(shim)).strip())

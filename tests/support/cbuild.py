"""Build the fastq C core with cffi for white-box tests; ``load()`` returns (ffi, lib).

The C core (``csrc/*.c`` as listed in SOURCES) and the test hooks
(``tests/c/fq_test_hooks.c``) are compiled (API mode) into ``build/cffi-<hash>/``
under the repository, where the hash covers the C sources and headers, the hooks,
this file's declarations and the compiler flags.
A build whose hash matches is reused.

Extra compiler flags come from the environment variable ``FASTQ_CFFI_CFLAGS`` (for
example ``-fsanitize=address,undefined``); they are also passed to the linker, so a
sanitizer variant builds into its own cache directory.  (An ASan build loaded into a
plain python needs ``LD_PRELOAD=$(gcc -print-file-name=libasan.so)``.)

Besides the public API of ``fastq.h`` the module exposes the ``fqt_*`` helpers of
``tests/c/fq_test_hooks.h`` that read and poke the segment's internals (record words,
intents, slots, topic members) and loop at C speed, for tests only.
"""

import hashlib
import importlib.util
import os
import platform
import re
import shlex
import shutil
import sys
import threading

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
CSRC = os.path.join(REPO, "csrc")
# in layer order, bottom-up (csrc/fq_internal.h; tests/c/test_layering.py)
SOURCES = ["csrc/fq_proc.c", "csrc/fq_file.c", "csrc/fq_segment.c", "csrc/fq_wait.c", "csrc/fq_topic.c",
           "csrc/fq_members.c", "csrc/fq_sub.c", "csrc/fq_put.c", "csrc/fq_get.c",
           "csrc/fq_state.c", "csrc/fq_recover.c", "csrc/fq_inspect.c"]
HEADERS = ["csrc/fastq.h", "csrc/fq_atomic.h", "csrc/fq_layout.h", "csrc/fq_internal.h",
           "csrc/fq_topic.h"]
HOOKS = ["tests/c/fq_test_hooks.c", "tests/c/fq_test_hooks.h"]
#: what the module's own C file includes (cffi generates the rest)
PRELUDE = '#include "fastq.h"\n#include "fq_internal.h"\n#include "fq_test_hooks.h"\n'
BASE_CFLAGS = ["-std=gnu11", "-O1", "-g"] + (
    ["-mcx16"] if platform.machine() == "x86_64" else [])

CDEF = r"""
/* the public API comes from csrc/fastq.h itself, the test hooks from
   tests/c/fq_test_hooks.h (see plain_decls()); cffi reads these constants' values */
#define FQ_LANES ...
#define FQ_MAX_SLOTS ...
#define FQ_REC_HDR ...
#define FQ_MIN_CAPACITY ...
#define FQ_MAX_CAPACITY ...
#define FQ_REC_WRITING ...
#define FQ_REC_COMMITTED ...
#define FQ_REC_DONE ...
#define FQ_REC_REQUEUED ...
#define FQ_REC_TAKEN ...
#define FQ_REC_ABANDONED ...
#define FQ_REC_SKIP ...
#define FQ_PH_IDLE ...
#define FQ_PH_CLAIMING ...
#define FQ_PH_WON ...
#define FQ_PH_RECOVERED ...
#define FQ_SLOT_FREE ...
#define FQ_SLOT_ACTIVE ...
"""


def plain_decls(rel):
    """a header (path relative to the repository) without its comments and preprocessor
    lines: the declarations cffi needs, kept in step with the header (its enums, structs
    and prototypes are plain C)"""
    with open(os.path.join(REPO, rel)) as f:
        text = f.read()
    text = re.sub(r"/\*.*?\*/", " ", text, flags=re.S)
    text = re.sub(r"//[^\n]*", "", text)
    lines = [ln for ln in text.splitlines() if not ln.lstrip().startswith("#")]
    return "\n".join(lines)


_lock = threading.Lock()
_cache = {}


def _extra_flags():
    return shlex.split(os.environ.get("FASTQ_CFFI_CFLAGS", ""))


def _digest(extra):
    h = hashlib.sha256()
    for rel in SOURCES + HEADERS + HOOKS:
        with open(os.path.join(REPO, rel), "rb") as f:
            h.update(rel.encode() + b"\0" + f.read() + b"\0")
    h.update(CDEF.encode() + PRELUDE.encode())
    h.update("\0".join(BASE_CFLAGS + extra).encode())
    h.update(sys.version.encode())
    return h.hexdigest()[:16]


def _find_so(directory, modname):
    for name in sorted(os.listdir(directory)):
        if name.startswith(modname + ".") and name.endswith(".so"):
            return os.path.join(directory, name)
    return None


def _import(path, modname):
    spec = importlib.util.spec_from_file_location(modname, path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def build(verbose=False):
    """Compile (or reuse) the cffi module; returns the path of the .so."""
    import cffi

    extra = _extra_flags()
    digest = _digest(extra)
    modname = "_fastq_cffi_" + digest
    outdir = os.path.join(REPO, "build", "cffi-" + digest)
    if os.path.isdir(outdir):
        so = _find_so(outdir, modname)
        if so:
            return so, modname
    tmpdir = "%s.tmp-%d" % (outdir, os.getpid())
    shutil.rmtree(tmpdir, ignore_errors=True)
    os.makedirs(tmpdir)
    ffi = cffi.FFI()
    ffi.cdef(plain_decls("csrc/fastq.h"))
    ffi.cdef(CDEF)
    ffi.cdef(plain_decls("tests/c/fq_test_hooks.h"))
    ffi.set_source(
        modname,
        PRELUDE,
        sources=[os.path.join(REPO, s) for s in SOURCES + HOOKS[:1]],
        include_dirs=[CSRC, os.path.join(REPO, "tests", "c")],
        extra_compile_args=BASE_CFLAGS + extra,
        extra_link_args=extra,
    )
    try:
        ffi.compile(tmpdir=tmpdir, verbose=verbose)
    except BaseException:
        shutil.rmtree(tmpdir, ignore_errors=True)
        raise
    try:
        os.rename(tmpdir, outdir)  # atomic publish; loses to a concurrent builder
    except OSError:
        shutil.rmtree(tmpdir, ignore_errors=True)
    so = _find_so(outdir, modname)
    if not so:
        raise RuntimeError("cffi build of the fastq core produced no module in " + outdir)
    return so, modname


def load(verbose=False):
    """Return (ffi, lib) of the fastq C core, building it if needed."""
    with _lock:
        key = tuple(_extra_flags())
        if key not in _cache:
            so, modname = build(verbose)
            mod = sys.modules.get(modname) or _import(so, modname)
            _cache[key] = (mod.ffi, mod.lib)
        return _cache[key]


if __name__ == "__main__":
    ffi, lib = load(verbose=True)
    print("built:", build()[0])

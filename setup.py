"""Build of the fastq C core and its Cython binding (metadata: pyproject.toml)."""
import os
import platform

from Cython.Build import cythonize
from setuptools import Extension, setup

CFLAGS = ["-std=gnu11", "-O2", "-Wall", "-Wextra", "-Wno-unused-parameter",
          "-fvisibility=hidden"]
if platform.machine() in ("x86_64", "AMD64"):
    CFLAGS.append("-mcx16")  # topics: tail and message count move in one cmpxchg16b
if os.environ.get("FASTQ_SANITIZE"):  # e.g. "address,undefined"
    CFLAGS += ["-fsanitize=" + os.environ["FASTQ_SANITIZE"], "-fno-omit-frame-pointer", "-g"]

# in layer order, bottom-up (csrc/fq_internal.h; tests/c/test_layering.py)
SOURCES = ["csrc/fq_proc.c", "csrc/fq_file.c", "csrc/fq_segment.c", "csrc/fq_wait.c", "csrc/fq_topic.c",
           "csrc/fq_members.c", "csrc/fq_sub.c", "csrc/fq_put.c", "csrc/fq_get.c",
           "csrc/fq_state.c", "csrc/fq_recover.c", "csrc/fq_inspect.c"]

ext = Extension(
    "fastq._core",
    sources=["src/fastq/_core.pyx"] + SOURCES,
    include_dirs=["csrc"],
    extra_compile_args=CFLAGS,
    extra_link_args=(["-fsanitize=" + os.environ["FASTQ_SANITIZE"]]
                     if os.environ.get("FASTQ_SANITIZE") else []),
)

setup(ext_modules=cythonize([ext], compiler_directives={"language_level": "3"}))

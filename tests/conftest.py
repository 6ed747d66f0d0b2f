"""Shared fixtures and helpers for the fastq test-suite.

* ``fastq`` is imported from the source tree (``src/``) when its extension
  is built in place there, otherwise from the installed package.
* ``fastq_dir``: a per-test ``FASTQ_DIR`` (nothing is ever left in /dev/shm).
* ``procs``: register every process a test starts; leftovers are SIGKILLed.
* ``run_py`` / ``child_env`` (fixtures returning functions): run a Python snippet in a fresh interpreter that
  can import the same fastq, with a hard timeout.
"""
from __future__ import annotations

import sys
from pathlib import Path

import pytest

TESTS = Path(__file__).resolve().parent
SRC = TESTS.parent / "src"
# the shared toolkit (tests/support) is imported as ``support``
sys.path.insert(0, str(TESTS))

# A checkout whose extension is built in place (python setup.py build_ext
# --inplace) tests that build; otherwise the installed fastq is tested (CI).
# Preferring an installed copy would silently test a stale build.
if any((SRC / "fastq").glob("_core*.so")):
    sys.path.insert(0, str(SRC))
import fastq  # noqa: E402,F401

from support.procs import Procs, child_env as _child_env, run_py as _run_py  # noqa: E402


@pytest.fixture
def fastq_dir(tmp_path, monkeypatch):
    """A private FASTQ_DIR for this test."""
    d = tmp_path / "fastq_dir"
    d.mkdir()
    monkeypatch.setenv("FASTQ_DIR", str(d))
    yield d


@pytest.fixture
def procs():
    pr = Procs()
    try:
        yield pr
    finally:
        pr.kill_all()


@pytest.fixture
def child_env():
    """child_env(extra=None) -> environment for a child interpreter."""
    return _child_env


@pytest.fixture
def run_py():
    """run_py(code, timeout=30, env=None, check=True) -> CompletedProcess."""
    return _run_py

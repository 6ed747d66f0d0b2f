"""Shared fixtures and helpers for the fastq test-suite.

* ``fastq`` is imported from the source tree (``src/``) when its extension
  is built in place there, otherwise from the installed package.
* ``fastq_dir``: a per-test ``FASTQ_DIR`` (nothing is ever left in /dev/shm).
* ``procs``: register every process a test starts; leftovers are SIGKILLed.
* ``run_py`` / ``child_env`` (fixtures returning functions): run a Python snippet in a fresh interpreter that
  can import the same fastq, with a hard timeout.
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SRC = REPO / "src"

# A checkout whose extension is built in place (python setup.py build_ext
# --inplace) tests that build; otherwise the installed fastq is tested (CI).
# Preferring an installed copy would silently test a stale build.
if any((SRC / "fastq").glob("_core*.so")):
    sys.path.insert(0, str(SRC))
import fastq  # noqa: E402,F401

#: the directory that holds the fastq package used by this test run
FASTQ_PARENT = str(Path(fastq.__file__).resolve().parents[1])


def _child_env(extra: dict | None = None) -> dict:
    """os.environ plus a PYTHONPATH that imports the same fastq."""
    env = dict(os.environ)
    pp = env.get("PYTHONPATH", "")
    env["PYTHONPATH"] = FASTQ_PARENT + (os.pathsep + pp if pp else "")
    if extra:
        env.update({k: str(v) for k, v in extra.items()})
    return env


def _run_py(code: str, timeout: float = 30.0, env: dict | None = None,
           check: bool = True) -> subprocess.CompletedProcess:
    """Run ``code`` in a fresh interpreter; the child is killed after
    ``timeout`` seconds (subprocess.run kills it and raises TimeoutExpired)."""
    cp = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True,
                        text=True, timeout=timeout, env=_child_env(env))
    if check and cp.returncode != 0:
        raise AssertionError(f"child failed (rc={cp.returncode}):\nstdout:\n{cp.stdout}\n"
                             f"stderr:\n{cp.stderr}")
    return cp


@pytest.fixture
def fastq_dir(tmp_path, monkeypatch):
    """A private FASTQ_DIR for this test."""
    d = tmp_path / "fastq_dir"
    d.mkdir()
    monkeypatch.setenv("FASTQ_DIR", str(d))
    yield d


class _Procs:
    """Processes started by a test; kill() whatever is still alive."""

    def __init__(self):
        self.items = []

    def add(self, p):
        self.items.append(p)
        return p

    def kill_all(self):
        for p in self.items:
            try:
                if isinstance(p, subprocess.Popen):
                    if p.poll() is None:
                        p.kill()
                    p.wait(timeout=5)
                elif isinstance(p, int):  # a bare pid (os.fork)
                    try:
                        os.kill(p, signal.SIGKILL)
                    except ProcessLookupError:
                        pass
                    try:
                        os.waitpid(p, 0)
                    except ChildProcessError:
                        pass
                else:  # multiprocessing.Process
                    if p.is_alive():
                        p.kill()
                    p.join(timeout=5)
            except Exception:  # pragma: no cover - best effort cleanup
                pass


@pytest.fixture
def procs():
    pr = _Procs()
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

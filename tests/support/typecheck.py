"""Run mypy on a snippet that uses fastq (the typing tests of tests/api)."""
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

import fastq

#: the fastq package directory under test (its py.typed and _core.pyi)
PKG = Path(fastq.__file__).resolve().parent


def mypy(tmp_path, code):
    """mypy's verdict (a CompletedProcess) on ``code``; skips without mypy"""
    pytest.importorskip("mypy", reason="mypy is not installed (not installed at test time)")
    src = tmp_path / "snippet.py"
    src.write_text(textwrap.dedent(code))
    env = dict(os.environ)
    if "site-packages" not in PKG.parts:  # running from the source tree
        env["MYPYPATH"] = str(PKG.parent)
    cp = subprocess.run([sys.executable, "-m", "mypy", "--no-incremental", "--strict-optional",
                         "--cache-dir", str(tmp_path / ".mypy_cache"), "--follow-imports=silent",
                         "--no-error-summary", str(src)],
                        capture_output=True, text=True, timeout=300, env=env,
                        cwd=str(tmp_path))
    return cp


def assert_mypy_accepts(tmp_path, code):
    cp = mypy(tmp_path, code)
    assert cp.returncode == 0, cp.stdout + cp.stderr


def assert_mypy_rejects(tmp_path, code, lines):
    """mypy fails on code, with an error on each of the given lines of it"""
    cp = mypy(tmp_path, code)
    assert cp.returncode != 0
    for line in lines:
        assert f"snippet.py:{line}" in cp.stdout, cp.stdout

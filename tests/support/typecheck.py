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

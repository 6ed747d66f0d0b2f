"""Every program in examples/ runs to completion (in a fresh interpreter)."""
from __future__ import annotations

import subprocess
import sys

import pytest

from support import REPO

EXAMPLES = sorted((REPO / "examples").glob("*.py"))
SMALL = {"two_stage_pipeline.py": "20", "pool_instead_of_multiprocessing.py": "20000",
         "numpy_image_pipeline.py": "16", "order_service.py": "30"}


def test_every_example_is_listed():
    assert sorted(p.name for p in EXAMPLES) == sorted(SMALL)


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.name)
def test_example_runs(path, fastq_dir, child_env):
    if path.name == "numpy_image_pipeline.py":
        pytest.importorskip("numpy")
    cp = subprocess.run([sys.executable, str(path), SMALL[path.name]], capture_output=True,
                        text=True, timeout=120, env=child_env({"FASTQ_DIR": str(fastq_dir)}))
    assert cp.returncode == 0, cp.stderr
    assert cp.stdout.strip()
    assert list(fastq_dir.iterdir()) == []

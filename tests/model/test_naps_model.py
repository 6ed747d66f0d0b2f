"""Runs spin on tests/model/naps.pml (the sleeper/writer protocol of csrc/fq_wait.c
with its nap marks): each mutant must be caught (a counterexample in well under
a second), and, with FASTQ_SPIN_FULL=1, the protocol itself must pass (exhaustive:
about 50 s and 1.8 GB).  Skipped when spin or a C compiler is not installed
(`apt-get install -y spin`)."""
import os
import re
import shutil
import subprocess

import pytest

HERE = os.path.dirname(os.path.abspath(__file__))

pytestmark = pytest.mark.skipif(
    shutil.which("spin") is None or shutil.which("gcc") is None,
    reason="spin (the SPIN model checker) or gcc is not installed: apt-get install -y spin")


def _pan(tmp_path, *defines, memlim=3000):
    """errors pan reports on naps.pml built with the given -D flags, and its output"""
    shutil.copy(os.path.join(HERE, "naps.pml"), tmp_path / "naps.pml")
    subprocess.run(["spin", *defines, "-a", "naps.pml"], cwd=tmp_path, check=True,
                   capture_output=True)
    subprocess.run(["gcc", "-O2", "-w", "-DVECTORSZ=2048", "-DCOLLAPSE",
                    "-DMEMLIM=%d" % memlim, "-o", "pan", "pan.c"], cwd=tmp_path, check=True)
    out = subprocess.run(["./pan", "-m100000"], cwd=tmp_path, capture_output=True,
                         text=True).stdout
    assert "reached -DMEMLIM bound" not in out, "the search did not complete:\n" + out
    m = re.search(r"errors: (\d+)", out)
    assert m, out
    return int(m.group(1)), out


@pytest.mark.parametrize("mutant", [1, 2, 3])
def test_the_model_catches_a_mutant(tmp_path, mutant):
    """1: CAS of a reloaded nap; 2: v loaded after the nap's store; 3: OR, not CAS"""
    errors, out = _pan(tmp_path, "-DMUTANT=%d" % mutant)
    assert errors >= 1, "mutant %d not caught:\n%s" % (mutant, out)
    assert "assertion violated" in out, out


@pytest.mark.skipif(os.environ.get("FASTQ_SPIN_FULL") != "1",
                    reason="exhaustive run (~50 s, ~1.8 GB): set FASTQ_SPIN_FULL=1")
def test_the_protocol_loses_no_wake_up(tmp_path):
    errors, out = _pan(tmp_path)
    assert errors == 0, out

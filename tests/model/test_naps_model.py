"""Runs spin on tests/model/naps.pml (the sleeper/writer protocol of csrc/fq_wait.c
with its nap marks, the nap a count of registrations as since 86ba533): each
mutant must be caught (a counterexample in about a second each), and, with
FASTQ_SPIN_FULL=1, the protocol itself must pass (see tests/model/README.md for
its size).  Skipped when spin or a C compiler is not installed
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


def _pan(tmp_path, *defines, memlim=3000, bitstate=0):
    """errors pan reports on naps.pml built with the given -D flags, and its output
    (bitstate: a bitstate search with a 2^bitstate-bit array, not exhaustive)"""
    shutil.copy(os.path.join(HERE, "naps.pml"), tmp_path / "naps.pml")
    subprocess.run(["spin", *defines, "-a", "naps.pml"], cwd=tmp_path, check=True,
                   capture_output=True)
    search = ["-DBITSTATE"] if bitstate else ["-DCOLLAPSE", "-DMEMLIM=%d" % memlim]
    subprocess.run(["gcc", "-O2", "-w", "-DVECTORSZ=2048", *search, "-o", "pan", "pan.c"],
                   cwd=tmp_path, check=True)
    args = ["-w%d" % bitstate] if bitstate else []
    out = subprocess.run(["./pan", "-m100000", *args], cwd=tmp_path, capture_output=True,
                         text=True).stdout
    assert "reached -DMEMLIM bound" not in out, "the search did not complete:\n" + out
    m = re.search(r"errors: (\d+)", out)
    assert m, out
    return int(m.group(1)), out


@pytest.mark.parametrize("mutant", [1, 2, 3, 6, 7])
def test_the_model_catches_a_mutant(tmp_path, mutant):
    """1: CAS of a reloaded nap; 2: v loaded after the nap's store; 3: OR, not CAS;
    6: the old nap SLEEPING(v) with the word coming round (D1); 7: a registration
    count that restarts when the handle's last sleeper leaves"""
    errors, out = _pan(tmp_path, "-DMUTANT=%d" % mutant)
    assert errors >= 1, "mutant %d not caught:\n%s" % (mutant, out)
    assert "assertion violated" in out, out


def test_the_model_catches_the_registration_stored_before_v(tmp_path):
    """5: the registration stored before v is loaded (both under the mutex): the
    exhaustive search does not reach the trace within 3 GB; bitstate finds it
    (~20 s, 0.5 GB)"""
    errors, out = _pan(tmp_path, "-DMUTANT=5", bitstate=32)
    assert errors >= 1, "mutant 5 not caught:\n%s" % out
    assert "assertion violated" in out, out


@pytest.mark.skipif(os.environ.get("FASTQ_SPIN_FULL") != "1",
                    reason="long run (~105 s, ~1 GB): set FASTQ_SPIN_FULL=1")
def test_the_protocol_loses_no_wake_up(tmp_path):
    """bitstate (2^33 bits): an exhaustive search of the registration count does
    not fit in 6 GB (over 100 M states; tests/model/README.md)"""
    errors, out = _pan(tmp_path, bitstate=33)
    assert errors == 0, out

"""Run the real ``fastq`` console script in a subprocess.

The installed console script is used when it imports the fastq under test;
in a source checkout built in place (no console script installed) an
equivalent one is written once: the same two lines setuptools' entry point
runs (``from fastq.__main__ import main; sys.exit(main())``)."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile

from support.procs import child_env

_script = None


def fastq_script():
    """The path of a ``fastq`` console script that runs the fastq under test."""
    global _script
    if _script:
        return _script
    import fastq
    found = shutil.which("fastq")
    here = os.path.dirname(os.path.realpath(fastq.__file__))
    if found:
        cp = subprocess.run([found, "--version"], capture_output=True, text=True, env=child_env())
        probe = subprocess.run([sys.executable, "-c", "import fastq,os;print(os.path.dirname("
                                "os.path.realpath(fastq.__file__)))"], capture_output=True,
                               text=True, env=child_env())
        if cp.returncode == 0 and probe.stdout.strip() == here:
            _script = found
            return found
    d = tempfile.mkdtemp(prefix="fastq-cli-")
    path = os.path.join(d, "fastq")
    with open(path, "w") as f:
        f.write(f"#!{sys.executable}\nimport sys\nfrom fastq.__main__ import main\n"
                "sys.exit(main())\n")
    os.chmod(path, 0o755)
    _script = path
    return path


def fastq_cli(*args, env=None, timeout=60.0, check=None):
    """Run ``fastq ARGS``; returns the CompletedProcess (text).  check: the
    exit status expected (an AssertionError with the output otherwise)."""
    cp = subprocess.run([fastq_script(), *map(str, args)], capture_output=True, text=True,
                        timeout=timeout, env=child_env(env))
    if check is not None and cp.returncode != check:
        raise AssertionError(f"fastq {' '.join(map(str, args))}: rc={cp.returncode}, "
                             f"expected {check}\nstdout:\n{cp.stdout}\nstderr:\n{cp.stderr}")
    return cp


def fastq_json(*args, env=None):
    """Run ``fastq ARGS --json`` (expecting exit 0) and parse its output."""
    return json.loads(fastq_cli(*args, "--json", env=env, check=0).stdout)

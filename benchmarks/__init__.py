"""asv benchmark suite for fastq; ``asv run --python=same`` uses the current interpreter.

Which fastq is measured:

* in an environment asv builds itself (``-E virtualenv``, conda, ...), the one
  asv installed there, i.e. the commit under test;
* otherwise (``environment_type: existing`` / ``--python=same``, or outside
  asv) this checkout's ``src/`` as soon as its extension is built, even if an
  (older) fastq is installed in the interpreter; an installed fastq is used
  only when ``src/`` is not built.
"""

import glob
import importlib.util
import os
import sys

_SRC = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "src")


def _checkout_first():
    if os.environ.get("ASV_ENV_TYPE", "existing") != "existing":
        return False
    return bool(glob.glob(os.path.join(_SRC, "fastq", "_core*.so")))


if _checkout_first() or importlib.util.find_spec("fastq") is None:
    sys.path.insert(0, _SRC)

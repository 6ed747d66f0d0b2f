"""asv benchmark suite for fastq; ``asv run --python=same`` uses the current interpreter.

fastq is imported from the installed package if there is one, else from this
checkout's ``src/`` directory (asv's "existing" environment installs nothing).
"""

import importlib.util
import os
import sys

if importlib.util.find_spec("fastq") is None:
    sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "src"))

"""The test-suite's shared toolkit (uvloop keeps its ``_testbase.py`` the same way):
every helper more than one test file needs lives here, once.

* ``procs``: child processes (fork, reap, zombies, random SIGKILLs, a fresh interpreter:
  ``run_py``/``start_py``, the ``procs`` fixture's ``Procs``, the Ctrl-C check) and the
  anonymous segments a process holds;
* ``waiting``: bounded waits (``wait_for``, ``call_bounded``, ``in_thread``);
* ``messages``: messages that check themselves (``Framed``, ``Patterned``), test
  serializers' base (``Passthrough``, ``CheckOnLoad``), ``send_all``, size bands;
* ``chaos``: what the chaos, crash and durability harnesses share (the supervisor's
  ``Chaos`` state, workers' logs, the failure marker, ``CheckingSerializer``);
* ``api``: small helpers over fastq's public API (drain without waiting, ...);
* ``typecheck``: mypy on a snippet;
* ``cbuild``: the cffi build of csrc/ with the C test hooks (``tests/c/fq_test_hooks.c``);
  ``cseg``: what white-box tests of a queue and of a topic share (self-checking payloads,
  segment creation, ``Handle``, ``Claims``); ``cring`` and ``ctopic``: the queue's and the
  topic's wrappers and child processes; ``fuzz``: the hostile-segment fuzz runner;
* ``poolfuncs``: functions the pool and pipeline tests send to workers.

``tests/conftest.py`` puts ``tests/`` on ``sys.path``, so a test imports
``from support.procs import fork``; fixtures stay in conftest.py files (tests/ and
tests/c/).
"""
from pathlib import Path

#: the tests/ directory (on sys.path: child interpreters insert it to import support)
TESTS = Path(__file__).resolve().parents[1]
#: the repository root
REPO = TESTS.parent

"""The test-suite's shared toolkit (uvloop keeps its ``_testbase.py`` the same way):
every helper more than one test file needs lives here, once.

* ``support.procs``: child processes (fork, reap, zombies, a child interpreter,
  the ``procs`` fixture's killer) and the anonymous segments a process holds;
* ``support.cbuild``: the cffi build of csrc/ plus the C test hooks
  (``tests/c/fq_test_hooks.c``); ``support.cseg``: what white-box tests of a queue
  and of a topic share (payloads that check themselves, segment creation, a handle);
* ``support.poolfuncs``: functions the pool and pipeline tests send to workers.

``tests/conftest.py`` puts ``tests/`` on ``sys.path``, so a test imports
``from support.procs import fork``.
"""
from pathlib import Path

#: the tests/ directory (on sys.path: child interpreters insert it to import support)
TESTS = Path(__file__).resolve().parents[1]
#: the repository root
REPO = TESTS.parent

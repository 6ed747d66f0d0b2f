"""The C core is layered: no cycle in the dependency graph of csrc/*.c (issue 11).

Each C file is compiled on its own; the symbols its object leaves undefined
(``nm -u``) that another object of the core defines are its dependencies.  The
graph of files must be acyclic, so that the core reads bottom-up (atomics, process
identity, segment, waiting, the disciplines, recovery) and a lower layer never
calls up.  The test also checks that setup.py and the cffi builder list every C
file of csrc/ (a file they miss would fail to link only in one of the builds).
"""

import glob
import os
import shutil
import subprocess

import pytest

from support import cbuild

CSRC = os.path.join(cbuild.REPO, "csrc")

pytestmark = pytest.mark.skipif(not (shutil.which("gcc") and shutil.which("nm")),
                                reason="needs gcc and nm")


def c_files():
    return sorted(glob.glob(os.path.join(CSRC, "*.c")))


def symbols(obj, *flags):
    out = subprocess.run(["nm", *flags, obj], check=True, capture_output=True,
                         text=True).stdout
    return {line.split()[-1] for line in out.splitlines() if line.strip()}


@pytest.fixture(scope="module")
def graph(tmp_path_factory):
    """{file: set of files whose symbols it uses}, from the objects' symbol tables"""
    out = tmp_path_factory.mktemp("layering")
    defined, undefined = {}, {}
    for src in c_files():
        name = os.path.basename(src)
        obj = str(out / (name + ".o"))
        subprocess.run(["gcc", "-std=gnu11", "-O2", "-c", "-I", CSRC, src, "-o", obj]
                       + [f for f in cbuild.BASE_CFLAGS if f.startswith("-m")], check=True)
        defined[name] = symbols(obj, "--defined-only", "-g")
        undefined[name] = symbols(obj, "-u")
    owner = {}
    for name, syms in defined.items():
        for s in syms:
            assert s not in owner, "%s is defined in %s and %s" % (s, owner[s], name)
            owner[s] = name
    return {name: {owner[s] for s in undefined[name] if s in owner} - {name}
            for name in defined}


def find_cycle(graph):
    """a list of files [a, b, ..., a] that call each other round, or None"""
    state, stack = {}, []

    def visit(n):
        state[n] = 1
        stack.append(n)
        for m in sorted(graph[n]):
            if state.get(m) == 1:
                return stack[stack.index(m):] + [m]
            if m not in state:
                found = visit(m)
                if found:
                    return found
        stack.pop()
        state[n] = 2
        return None

    for n in sorted(graph):
        if n not in state:
            found = visit(n)
            if found:
                return found
    return None


def test_find_cycle_sees_a_cycle():
    # the checker itself can fail: a three-file cycle and a self-free chain
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": set()}) is None


def test_c_files_have_no_dependency_cycle(graph):
    cycle = find_cycle(graph)
    edges = "\n".join("  %s -> %s" % (n, ", ".join(sorted(d)) or "-")
                      for n, d in sorted(graph.items()))
    assert cycle is None, "cycle: %s\ngraph:\n%s" % (" -> ".join(cycle), edges)


def test_builds_list_every_c_file():
    files = {"csrc/" + os.path.basename(f) for f in c_files()}
    assert set(cbuild.SOURCES) == files
    with open(os.path.join(cbuild.REPO, "setup.py")) as f:
        setup = f.read()
    missing = [f for f in sorted(files) if '"%s"' % f not in setup]
    assert not missing, "setup.py does not build %s" % missing

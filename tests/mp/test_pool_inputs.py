"""fastq.Pool and pipeline inputs: a list, tuple or range is cut in slices (a
range's slice travels as a range), any other iterable is read item by item; the
results are the same, in order, across many batches and with a given chunksize."""
from __future__ import annotations


import pytest

import fastq

from support import poolfuncs as F

N = 30000


@pytest.mark.parametrize("make", [lambda: range(N), lambda: list(range(N)),
                                  lambda: tuple(range(N)), lambda: iter(range(N)),
                                  lambda: range(5, 3 * N + 5, 3)],
                         ids=["range", "list", "tuple", "iterator", "stepped-range"])
def test_every_kind_of_input_gives_the_same_results(fastq_dir, make):
    want = [x + 1 for x in make()]
    with fastq.Pool(2) as p:
        assert list(p.imap(F.inc, make())) == want
        assert p.map(F.inc, make(), chunksize=7) == want
        assert sorted(p.imap_unordered(F.inc, make())) == sorted(want)
    with fastq.pipeline(make(), fastq.Stage(F.twice, flat=True), F.inc) as pl:
        assert list(pl) == [v + 1 for x in make() for v in (x, -x)]


def test_starmap_over_a_list_of_tuples_and_an_empty_range(fastq_dir):
    pairs = [(i, 7) for i in range(5000)]
    with fastq.Pool(2) as p:
        assert p.starmap(divmod, pairs) == [divmod(i, 7) for i in range(5000)]
        assert p.map(F.inc, range(0)) == [] and list(p.imap(F.inc, ())) == []

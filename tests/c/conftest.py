"""Fixtures of the white-box tests of the C core (the helpers are in tests/support)."""

import pytest

from support.cring import Q


@pytest.fixture
def seg(tmp_path):
    """seg(**create options) -> a new queue segment (a ``Q``), closed after the test"""
    made = []

    def make(**kw):
        q = Q.create(tmp_path / ("q%d.seg" % len(made)), **kw)
        made.append(q)
        return q

    yield make
    for q in made:
        q.close()


@pytest.fixture
def path(tmp_path):
    """the path of a topic segment the test creates"""
    return tmp_path / "t.seg"

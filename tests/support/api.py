"""Small helpers over fastq's public API that tests/api and tests/mp share."""
import re

import fastq


def drain_nowait(s, max_messages=64):
    """everything s (a queue or a subscription) can get without waiting"""
    out = []
    while True:
        try:
            out += s.get_many(max_messages, block=False)
        except fastq.Empty:
            return out


def get_all_nowait(q):
    """q.get_nowait() until it raises Empty: the list of what it returned"""
    return get_all(q, None)


def get_all(q, timeout):
    """q.get(timeout=timeout) (timeout None: get_nowait()) until it raises Empty: the
    list of what it returned"""
    out = []
    while True:
        try:
            out.append(q.get_nowait() if timeout is None else q.get(timeout=timeout))
        except fastq.Empty:
            return out


def check_subscriber_limit(exc, limit):
    """a SubscriberLimit is a RuntimeError whose text names max_subscribers or the limit"""
    assert isinstance(exc, RuntimeError)
    text = str(exc)
    assert "max_subscribers" in text or re.search(r"\b%d\b" % limit, text), text

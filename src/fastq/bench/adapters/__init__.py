"""One adapter module per peer library; ``ADAPTERS`` lists every adapter a run may use.

To add a peer: a module here with an ``Adapter`` subclass (see ``base``), and its instances in ``ADAPTERS``."""

from __future__ import annotations

from .cloudtoid import CloudtoidAdapter
from .faster_fifo import FasterFifoAdapter
from .fastq import FastqAdapter, FastqTopicAdapter
from .iceoryx2 import Iceoryx2Adapter
from .mp import MpPipeAdapter, MpQueueAdapter
from .pyzmq import ZmqAdapter, ZmqPubSubAdapter
from .zeroq import ZeroqAdapter


ADAPTERS = [FastqAdapter(), FastqAdapter(poll=True), MpQueueAdapter(), MpPipeAdapter(),
            FasterFifoAdapter(), ZmqAdapter(), CloudtoidAdapter(), CloudtoidAdapter(poll=True),
            ZeroqAdapter(), ZeroqAdapter(poll=True),
            FastqTopicAdapter(), FastqTopicAdapter(poll=True), ZmqPubSubAdapter(), Iceoryx2Adapter(poll=True)]


def labels_of(adapters) -> list:
    """Table columns: one per label (a library's queue and topic adapters share its column)."""
    return list(dict.fromkeys(a.label for a in adapters))


def library_names() -> list:
    """Each library name once (a library may have several adapters)."""
    return list(dict.fromkeys(a.name for a in ADAPTERS))


def select_adapters(only=None) -> list:
    """Adapters named in ``only`` (keys like ``zeroq_poll``; a bare family name selects all its variants)."""
    if not only:
        return list(ADAPTERS)
    wanted = {w.strip().replace(" (poll)", "_poll").replace("-", "_") for w in only if w.strip()}
    if not wanted:
        raise SystemExit("no library named (known: " + ", ".join(library_names()) + ")")
    unknown = wanted - {a.name for a in ADAPTERS} - {a.key for a in ADAPTERS}
    if unknown:
        raise SystemExit(f"unknown libraries: {', '.join(sorted(unknown))}; "
                         f"known: {', '.join(library_names())}")
    return [a for a in ADAPTERS if a.name in wanted or a.key in wanted]

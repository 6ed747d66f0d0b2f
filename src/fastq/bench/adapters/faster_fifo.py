"""faster-fifo's Queue (raw bytes through identity loads/dumps, or its pickle path)."""

from __future__ import annotations

import functools

from .base import FOREVER, Adapter, Endpoint, _ident


class FasterFifoAdapter(Adapter):
    key, module, objects, batch, mpmc, views = "faster_fifo", "faster_fifo", True, True, True, True

    def open(self, ctx, wl, capacity):
        import faster_fifo
        codec = dict(loads=_ident, dumps=_ident) if wl.raw else {}
        return faster_fifo.Queue(max_size_bytes=capacity, **codec)

    def sender(self, q, wl):
        return Endpoint(put=functools.partial(q.put, timeout=FOREVER),
                        put_many=functools.partial(q.put_many, timeout=FOREVER))

    def receiver(self, q, wl):
        return Endpoint(get=functools.partial(q.get, timeout=FOREVER),
                        get_many=functools.partial(q.get_many, timeout=FOREVER, max_messages_to_get=1024))

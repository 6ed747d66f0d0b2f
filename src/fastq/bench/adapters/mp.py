"""The standard library: ``multiprocessing.Queue`` and a ``multiprocessing.Pipe``."""

from __future__ import annotations

from .base import Adapter, Endpoint


class MpQueueAdapter(Adapter):
    key, module, objects, mpmc = "mp_queue", "multiprocessing", True, True

    def open(self, ctx, wl, capacity):
        return ctx.Queue(maxsize=max(2, capacity // max(wl.size, 64)))

    def sender(self, q, wl):
        return Endpoint(put=q.put)

    def receiver(self, q, wl):
        return Endpoint(get=q.get)

    def close(self, q):
        q.close()


class MpPipeAdapter(Adapter):
    key, module, objects = "mp_pipe", "multiprocessing", True

    def open(self, ctx, wl, capacity):
        return ctx.Pipe(duplex=False)

    def sender(self, spec, wl):
        w = spec[1]
        return Endpoint(put=w.send_bytes if wl.raw else w.send)

    def receiver(self, spec, wl):
        r = spec[0]
        return Endpoint(get=r.recv_bytes if wl.raw else r.recv)

    def close(self, spec):
        for c in spec:
            c.close()

"""zeroq: a fixed-element-size shared-memory queue."""

from __future__ import annotations

import os

from .base import _PARENT_HANDLES, Adapter, Endpoint, _names, _poll_exc


class ZeroqAdapter(Adapter):
    key, module, mpmc = "zeroq", "zeroq", True

    def open(self, ctx, wl, capacity):
        import zeroq
        name = f"fqb{os.getpid()}n{next(_names)}"
        slots = 1 << max(1, (capacity // wl.size).bit_length() - 1)
        _PARENT_HANDLES[name] = zeroq.Queue(name, element_size=wl.size, capacity=slots)
        return name

    def _attach(self, name):
        import zeroq
        return zeroq, zeroq.Queue(name, create=False)

    def sender(self, name, wl):
        zeroq, q = self._attach(name)
        return Endpoint(put=_poll_exc(q.put_nowait, zeroq.Full) if self.poll else q.put)

    def receiver(self, name, wl):
        zeroq, q = self._attach(name)
        return Endpoint(get=_poll_exc(q.get_nowait, zeroq.Empty) if self.poll else q.get)

    def close(self, name):
        _PARENT_HANDLES.pop(name).close()

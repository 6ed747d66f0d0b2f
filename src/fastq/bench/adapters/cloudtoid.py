"""cloudtoid-interprocess: a shared-memory queue with a Publisher and Subscribers."""

from __future__ import annotations

import os
import tempfile

from .base import Adapter, Endpoint, _names, _poll_none, _retry_send


class CloudtoidAdapter(Adapter):
    key, module, mpmc = "cloudtoid", "cloudtoid_interprocess", True

    def open(self, ctx, wl, capacity):
        return f"fqb{os.getpid()}n{next(_names)}", capacity

    def sender(self, spec, wl):
        from cloudtoid_interprocess import Publisher
        p = Publisher(*spec)
        return Endpoint(put=_retry_send(p.try_send, backoff=not self.poll), close=p.close)

    def receiver(self, spec, wl):
        from cloudtoid_interprocess import Subscriber
        s = Subscriber(*spec)
        return Endpoint(get=_poll_none(s.try_receive) if self.poll else s.receive, close=s.close)

    def close(self, spec):
        base = os.path.join(tempfile.gettempdir(), ".cloudtoid", "interprocess", "v3")
        for path in (f"{base}/mmf/{spec[0]}.qu", f"{base}/readers/{spec[0]}", f"/dev/shm/sem.ct3ip.{spec[0]}"):
            try:
                os.unlink(path)
            except OSError:
                pass

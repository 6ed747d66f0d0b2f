"""fastq's own Queue and Topic."""

from __future__ import annotations

from .base import Adapter, Endpoint, _poll_exc


class _FastqBase(Adapter):
    """Skipped while the fastq class it measures (``needs``) is not built."""

    module, needs = "fastq", "Queue"

    def missing(self):
        why = super().missing()
        if why is None and not hasattr(__import__("fastq"), self.needs):
            why = f"fastq.{self.needs} is not built yet"
        return why


class FastqAdapter(_FastqBase):
    key, objects, batch, mpmc = "fastq", True, True, True

    def open(self, ctx, wl, capacity):
        import fastq
        return fastq.Queue(None, capacity, serializer="raw" if wl.raw else "pickle")

    def sender(self, q, wl):
        import fastq
        put = _poll_exc(q.put_nowait, fastq.Full) if self.poll else q.put
        return Endpoint(put=put, put_many=q.put_many, close=q.close)

    def receiver(self, q, wl):
        import fastq
        get = _poll_exc(q.get_nowait, fastq.Empty) if self.poll else q.get
        return Endpoint(get=get, get_many=q.get_many, close=q.close)

    def close(self, q):
        q.close()


class FastqTopicAdapter(_FastqBase):
    key, needs, topic, batch = "fastq", "Topic", True, True

    def open(self, ctx, wl, capacity):
        import fastq
        return fastq.Topic(None, capacity, serializer="raw")

    def sender(self, t, wl):
        import fastq
        put = _poll_exc(t.publish_nowait, fastq.Full) if self.poll else t.publish
        return Endpoint(put=put, put_many=t.publish_many, close=t.close)

    def receiver(self, t, wl):
        import fastq
        s = t.subscribe()                      # start="latest": everything published from now on

        def close():
            s.close()
            t.close()
        get = _poll_exc(s.get_nowait, fastq.Empty) if self.poll else s.get
        return Endpoint(get=get, get_many=s.get_many, close=close)

    def close(self, t):
        t.close()

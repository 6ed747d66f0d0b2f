"""pyzmq over ``ipc://``: PUSH/PULL for the queue workloads, XPUB/SUB for the topic ones."""

from __future__ import annotations

import functools
import os
import tempfile

from ..payloads import KiB
from . import base
from .base import Adapter, Endpoint, _fanout_depth


class ZmqAdapter(Adapter):
    key, module, objects = "zmq", "zmq", True

    def open(self, ctx, wl, capacity):
        fd, path = tempfile.mkstemp(prefix="fastq-bench-", suffix=".ipc")
        os.close(fd)
        os.unlink(path)
        return "ipc://" + path, max(16, capacity // wl.size)

    def _socket(self, spec, kind):
        import zmq
        zctx = zmq.Context()
        sock = zctx.socket(kind)
        sock.setsockopt(zmq.SNDHWM if kind == zmq.PUSH else zmq.RCVHWM, spec[1])

        def close():
            sock.close()
            zctx.term()
        return sock, close

    def sender(self, spec, wl):
        import zmq
        sock, close = self._socket(spec, zmq.PUSH)
        sock.connect(spec[0])
        return Endpoint(put=sock.send if wl.raw else sock.send_pyobj, close=close)

    def receiver(self, spec, wl):
        import zmq
        sock, close = self._socket(spec, zmq.PULL)
        sock.bind(spec[0])
        if not wl.raw:
            get = sock.recv_pyobj
        elif wl.size < 64 * KiB:
            get = sock.recv
        else:
            def get(recv=functools.partial(sock.recv, copy=False)):
                return recv().buffer
        return Endpoint(get=get, close=close)

    def close(self, spec):
        try:
            os.unlink(spec[0][len("ipc://"):])
        except OSError:
            pass


class ZmqPubSubAdapter(ZmqAdapter):
    """pyzmq over ``ipc://``: one XPUB (a PUB that reports subscriptions) and one SUB per subscriber.

    A plain PUB drops what a subscriber's pipe cannot take (at the high-water
    mark) and everything sent before a subscription reaches it; so the
    publisher sets ``XPUB_NODROP`` (send blocks at the high-water mark instead)
    and waits until every subscriber's subscription has arrived.
    """

    key, module, objects, topic = "zmq", "zmq", False, True

    def open(self, ctx, wl, capacity):
        return super().open(ctx, wl, capacity)[0], _fanout_depth(wl, capacity)

    def sender(self, spec, wl):
        import zmq
        zctx = zmq.Context()
        sock = zctx.socket(zmq.XPUB)
        sock.setsockopt(zmq.SNDHWM, spec[1])
        sock.setsockopt(zmq.XPUB_NODROP, 1)
        sock.setsockopt(zmq.XPUB_VERBOSE, 1)   # one subscription message per SUB, not per distinct topic
        sock.bind(spec[0])
        joined = 0
        while joined < wl.consumers:
            if not sock.poll(base.JOIN_TIMEOUT * 1000):
                sock.close(linger=0)
                zctx.term()
                raise TimeoutError(f"{joined} of {wl.consumers} subscribers joined within {base.JOIN_TIMEOUT:.0f} s")
            if sock.recv()[:1] == b"\x01":
                joined += 1

        def close():
            sock.close()                        # the default linger: term() waits until all is delivered
            zctx.term()
        return Endpoint(put=sock.send, close=close)

    def receiver(self, spec, wl):
        import zmq
        zctx = zmq.Context()
        sock = zctx.socket(zmq.SUB)
        sock.setsockopt(zmq.RCVHWM, spec[1])
        sock.setsockopt(zmq.LINGER, 0)
        sock.setsockopt(zmq.SUBSCRIBE, b"")
        sock.connect(spec[0])

        def close():
            sock.close()
            zctx.term()
        return Endpoint(get=sock.recv, close=close)

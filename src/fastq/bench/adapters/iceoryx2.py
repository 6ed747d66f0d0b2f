"""iceoryx2's Python publish/subscribe (topic workloads only)."""

from __future__ import annotations

import os
import time

from . import base
from .base import Adapter, Endpoint, _fanout_depth, _names


class Iceoryx2Adapter(Adapter):
    """iceoryx2's Python publish/subscribe with ``Slice[c_uint8]`` payloads of the message's length.

    The publisher loans a sample, copies the message in (``ctypes.memmove``) and
    sends it with ``RetryUntilDelivered`` back-pressure (safe overflow off, so
    nothing is dropped); a subscriber copies each sample out into ``bytes``
    (``ctypes.string_at``) and releases it.  Its Python subscriber has no
    blocking receive (that takes a separate event service and a WaitSet), so
    subscribers poll: hence the label "(poll)".
    """

    key, module, topic = "iceoryx2", "iceoryx2", True

    def missing(self):
        why = super().missing()
        if why is not None:
            return f"iceoryx2 is not installed ({why}); `pip install iceoryx2` to measure it"
        iox = __import__("iceoryx2")
        lacking = [n for n in ("Slice", "NodeBuilder", "BackpressureStrategy") if not hasattr(iox, n)]
        if lacking:
            return f"this iceoryx2 has no {', '.join(lacking)}: it cannot carry raw byte payloads"
        return None

    def open(self, ctx, wl, capacity):
        return f"fastq-bench/{os.getpid()}/{next(_names)}", _fanout_depth(wl, capacity), wl.consumers

    @staticmethod
    def _service(spec):
        """(iceoryx2, node, service) of ``spec``, opened or created (all ends ask for the same settings)."""
        import ctypes
        import iceoryx2 as iox
        iox.set_log_level(iox.LogLevel.Error)   # not "No config file was loaded" in every child
        name, depth, n_subs = spec
        node = iox.NodeBuilder.new().create(iox.ServiceType.Ipc)
        deadline = time.monotonic() + base.JOIN_TIMEOUT
        while True:
            try:
                svc = (node.service_builder(iox.ServiceName.new(name))
                       .publish_subscribe(iox.Slice[ctypes.c_uint8])
                       .max_publishers(1).max_subscribers(n_subs).subscriber_max_buffer_size(depth)
                       .history_size(0).enable_safe_overflow(False).open_or_create())
                return iox, node, svc
            except Exception:  # noqa: BLE001 - e.g. being created by another process right now
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.001)

    def sender(self, spec, wl):
        import ctypes
        iox, node, svc = self._service(spec)
        pub = (svc.publisher_builder().initial_max_slice_len(wl.size)
               .backpressure_strategy(iox.BackpressureStrategy.RetryUntilDelivered).create())
        deadline = time.monotonic() + base.JOIN_TIMEOUT
        while svc.dynamic_config.number_of_subscribers < wl.consumers:
            if time.monotonic() > deadline:
                raise TimeoutError(f"{svc.dynamic_config.number_of_subscribers} of {wl.consumers} "
                                   f"subscribers joined within {base.JOIN_TIMEOUT:.0f} s")
            time.sleep(0.001)
        pub.update_connections()
        loan, memmove = pub.loan_slice_uninit, ctypes.memmove
        keep = [node, svc, pub]

        def put(m):
            n = len(m)
            sample = loan(n)
            memmove(sample.payload_ptr, m, n)
            sample.assume_init().send()

        def close():
            pub.delete()
            keep.clear()
        return Endpoint(put=put, close=close)

    def receiver(self, spec, wl):
        import ctypes
        iox, node, svc = self._service(spec)
        sub = svc.subscriber_builder().buffer_size(spec[1]).create()
        recv, string_at = sub.receive, ctypes.string_at
        keep = [node, svc, sub]

        def get():
            while True:
                sample = recv()
                if sample is not None:
                    return string_at(sample.payload_ptr, sample.header.number_of_elements)

        def close():
            sub.delete()
            keep.clear()
        return Endpoint(get=get, close=close)

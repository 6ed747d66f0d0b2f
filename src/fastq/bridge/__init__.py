"""fastq.bridge: extend local queues and topics across machines through NATS JetStream.

:class:`Outbound` forwards a local :class:`fastq.Queue` (or a topic
:class:`fastq.Subscription`) to a JetStream subject; :class:`Inbound` feeds a
durable JetStream pull consumer into a local Queue or Topic.  Both are
at-least-once across the bridge:

* outbound, a local delivery is acked only after JetStream acknowledged its
  publish (from a queue, a batch of :meth:`fastq.Queue.receive_many` after
  all of its publishes).  Every publish carries
  ``Nats-Msg-Id: <segment>.<position>@<subject>``: the local segment's creation
  time (ns, hex) and the message's position (:attr:`fastq.Delivery.position`,
  :attr:`fastq.Deliveries.positions`), which a redelivered message keeps.  A bridge
  killed after JetStream stored a message but before the local ack gets the
  message again from the local queue, publishes it again under the same id, and
  the stream drops it as a duplicate (within the stream's duplicate window,
  default 2 minutes; after it, it is stored twice).
* inbound, a JetStream message is acked (double ack: the bridge waits for the
  server's confirmation, as ``ack_sync`` does) only after the local put
  returned.  A message committed locally whose ack was not confirmed is
  acked again by the next connection, and if it comes back meanwhile
  (``num_delivered`` > 1), while the same bridge runs, it is recognised by its
  stream sequence and only acked again; a bridge killed between a local put
  and its ack puts those messages (at most one fetch batch) again after its
  restart.  Into a queue, JetStream's delivery
  count (``num_delivered``) becomes the local message's first attempt: a
  message JetStream delivered twice is received with
  :attr:`fastq.Delivery.attempt` 2, then 3 after a local nack.  A topic keeps
  attempts per subscription, not per message: there a message starts at
  attempt 1 (the redelivery is counted in :attr:`BridgeStats.redelivered`
  either way).  Messages carry no headers across.

Payloads cross the bridge unchanged: open the local queue or topic with
``serializer="raw"`` in the bridge (the producers and consumers on either side
keep their own serializer, pickle by default).  The client is nats-py
(``pip install 'fastq-ipc[nats]'``, or ``[bridge]``: the same extra); each bridge runs an asyncio loop
(:meth:`Outbound.start`: in a thread of its own); local calls that need not
wait run on the loop, those that wait in a helper thread.
"""
from __future__ import annotations

# by concern: _base (what both directions share: BridgeStats, the loop and its
# reconnection), _outbound (Outbound), _inbound (Inbound)
from ._base import DEFAULT_SERVER, BridgeStats, ensure_stream  # noqa: F401 - DEFAULT_SERVER too
from ._inbound import Inbound
from ._outbound import QUEUE_INFLIGHT, Outbound  # noqa: F401 - QUEUE_INFLIGHT: fastq.bench

__all__ = ["Outbound", "Inbound", "BridgeStats", "ensure_stream"]

"""Message brokers between processes: one port, four adapters of the same shape.

* :mod:`tidings.brokers.port`: the :class:`~tidings.brokers.port.Broker` protocol, the
  :class:`~tidings.brokers.port.Topology` a bus is declared from, and the rules every adapter
  follows (confirmed publishing, acknowledgement after the handler, per-stream order);
* :mod:`tidings.brokers.memory` (no dependencies), :mod:`tidings.brokers.rabbitmq`
  (``tidings[rabbitmq]``), :mod:`tidings.brokers.nats` (``tidings[nats]``) and
  :mod:`tidings.brokers.redis` (``tidings[redis]``): import the one you use; importing one whose
  driver is missing raises :class:`~tidings.errors.ConfigurationError` naming the extra;
* :mod:`tidings.brokers.inbox`: idempotent consumers (inbox table, decode, verify, dedup);
* :mod:`tidings.brokers.wire`: the message format (headers and body);
* :mod:`tidings.brokers.worker`: running consumers (``tidings worker``);
* :mod:`tidings.brokers.urls`: :func:`~tidings.brokers.urls.broker_for`, a client chosen by URL
  (``amqp://``, ``nats://``, ``redis://``, ``memory:``).

Nothing here connects to anything at import time.
"""

from __future__ import annotations

from tidings.brokers.port import Broker, Consumer, Delivery, Handler, Topology, partition_of
from tidings.brokers.urls import broker_for

__all__ = ["Broker", "Consumer", "Delivery", "Handler", "Topology", "broker_for", "partition_of"]

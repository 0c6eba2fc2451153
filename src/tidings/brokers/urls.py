"""A broker client chosen by URL: how an application takes its broker from configuration.

``broker_for("amqp://guest:guest@rabbit/", ORDERS_BUS)`` gives a RabbitMQ client,
``nats://...`` a NATS JetStream one, ``redis://...`` a Redis Streams one, and ``memory:`` this
process's in-memory broker: the same application code on whichever broker a deployment names.
The adapter is imported only when its scheme is asked for, so a missing driver still says which
extra to install.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import urlsplit

from tidings.brokers.port import Broker, Topology
from tidings.errors import ConfigurationError

#: Each URL scheme, and the adapter it selects.
SCHEMES = {
    "amqp": "rabbitmq",
    "amqps": "rabbitmq",
    "nats": "nats",
    "tls": "nats",
    "redis": "redis",
    "rediss": "redis",
    "unix": "redis",
    "memory": "memory",
}


def broker_for(url: str, topology: Topology, **options: Any) -> Broker:
    """A new, not yet connected client for ``topology`` on the broker ``url`` names.

    ``amqp://`` and ``amqps://``: RabbitMQ; ``nats://`` and ``tls://``: NATS JetStream;
    ``redis://``, ``rediss://`` and ``unix://``: Redis Streams; ``memory:``: the in-memory
    broker's process-wide server. ``options`` go to the adapter's constructor (for example
    ``connection_name=``, or ``server=`` for the memory broker).
    """
    if not isinstance(url, str):
        raise ConfigurationError(f"a broker URL must be a string, got {type(url).__name__}")
    # The URL itself may hold a password: errors name only its scheme.
    scheme = urlsplit(url.strip()).scheme.lower()
    kind = SCHEMES.get(scheme)
    if kind is None:
        known = ", ".join(f"{name}:" for name in SCHEMES)
        shown = f"scheme {scheme!r}" if scheme else "no scheme"
        raise ConfigurationError(f"broker URL with {shown}: expected one of {known}")
    if kind == "rabbitmq":
        from tidings.brokers.rabbitmq import RabbitMQBroker

        return RabbitMQBroker(url, topology, **options)
    if kind == "nats":
        from tidings.brokers.nats import NatsBroker

        return NatsBroker(url, topology, **options)
    if kind == "redis":
        from tidings.brokers.redis import RedisBroker

        return RedisBroker(url, topology, **options)
    from tidings.brokers.memory import MemoryBroker

    return MemoryBroker(topology, **options)

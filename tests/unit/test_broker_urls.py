"""A broker client chosen by URL: the scheme picks the adapter; nothing connects."""

from __future__ import annotations

import pytest

from tidings.brokers import Topology, broker_for
from tidings.brokers.memory import MemoryBroker, MemoryBrokerServer
from tidings.brokers.nats import NatsBroker
from tidings.brokers.rabbitmq import RabbitMQBroker
from tidings.brokers.redis import RedisBroker
from tidings.errors import ConfigurationError

BUS = Topology(name="orders", groups=("billing",), partitions=2)


@pytest.mark.parametrize(
    ("url", "adapter"),
    [
        ("amqp://guest:guest@127.0.0.1:5672/", RabbitMQBroker),
        ("AMQPS://rabbit.example/", RabbitMQBroker),
        ("nats://127.0.0.1:4222", NatsBroker),
        ("tls://nats.example:4222", NatsBroker),
        ("redis://127.0.0.1:6379/0", RedisBroker),
        ("rediss://redis.example/0", RedisBroker),
        ("unix:///run/redis.sock", RedisBroker),
        ("memory:", MemoryBroker),
    ],
)
def test_the_scheme_picks_the_adapter(url: str, adapter: type) -> None:
    broker = broker_for(url, BUS)
    assert type(broker) is adapter
    assert broker.topology is BUS


def test_options_go_to_the_adapter() -> None:
    server = MemoryBrokerServer()
    memory = broker_for("memory:", BUS, server=server)
    assert isinstance(memory, MemoryBroker) and memory.server is server
    redis = broker_for("redis://127.0.0.1/0", BUS, key_prefix="shop")
    assert isinstance(redis, RedisBroker) and redis.key_prefix == "shop"


@pytest.mark.parametrize("url", ["kafka://broker:9092", "http://rabbit/", "127.0.0.1:5672", ""])
def test_an_unknown_scheme_is_refused_without_echoing_the_url(url: str) -> None:
    with pytest.raises(ConfigurationError, match="expected one of amqp:") as refused:
        broker_for(url.replace("//", "//user:s3cret@", 1), BUS)
    assert "s3cret" not in str(refused.value)


def test_a_url_that_is_not_a_string_is_refused() -> None:
    with pytest.raises(ConfigurationError, match="must be a string, got bytes"):
        broker_for(b"amqp://rabbit/", BUS)  # type: ignore[arg-type]

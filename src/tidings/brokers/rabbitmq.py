"""RabbitMQ adapter (aio-pika), with publisher confirms and acknowledgement after the handler.

Topology declared for a bus ``B`` with groups ``G``:

* a durable *direct* exchange ``B``;
* per group and partition ``i``: a durable classic queue ``B.G.p<i>`` bound with routing key
  ``p<i>``, with ``x-single-active-consumer``: every consumer of the group subscribes to every
  partition queue and the broker lets exactly one of them receive from each queue at a time,
  handing over when it disconnects. That is how per-stream order survives competing consumers
  without the consistent-hash exchange plugin (publishers route by ``partition_of(stream_id)``);
* per group: a durable queue ``B.G.dead`` for dead letters (published through the default
  exchange with the reason in ``tidings-dead-letter-*`` headers).

Publishing uses a confirm-mode channel with ``mandatory``: a message is done when the broker
acks it; a nack or an unroutable return raises :class:`PublishNotConfirmed`. All messages of one
``publish()`` call are in flight together.

Consuming uses one channel per partition queue with ``prefetch`` messages outstanding, handled in
order; consecutive messages already fetched are handed to a batch-capable handler (the inbox)
together and acknowledged with one ``basic.ack(multiple=True)`` after its single commit. A
failed message is retried in place, after a short pause, up to ``max_deliveries`` (a requeue
would race with the deliveries already on the wire and reorder the stream); if the consumer
dies meanwhile, everything it had not acknowledged goes back to the queue in its original
order (classic queues) for the next active consumer.

Scale-out caveat: the broker makes the *first* subscriber of a queue its active consumer, so
consumers subscribe to the partition queues starting at a random partition; several consumers
starting together then share the partitions, and a standby takes a partition over when its
active consumer goes away.

The connection is robust (aio-pika reconnects and re-subscribes); a publication whose confirm
was lost raises :class:`BrokerUnavailable` and must be retried.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from collections.abc import Iterator, Mapping, Sequence

from tidings.brokers.port import (
    Delivery,
    GroupCommit,
    Handler,
    Outcome,
    Settlement,
    Topology,
    partition_key,
    partition_of,
    retry_pause,
    run_handler,
)
from tidings.brokers.wire import encode_headers, normalize_headers
from tidings.core.messages import StoredEvent
from tidings.errors import (
    BrokerError,
    BrokerUnavailable,
    ConfigurationError,
    PublishNotConfirmed,
    TopologyError,
)

try:
    import aio_pika
    import aiormq
    from aio_pika.abc import AbstractIncomingMessage
except ImportError as missing:  # pragma: no cover - depends on the installed extras
    raise ConfigurationError(
        "the RabbitMQ adapter needs aio-pika: pip install 'tidings[rabbitmq]'"
    ) from missing

log = logging.getLogger("tidings.brokers.rabbitmq")


def _translate(error: BaseException, doing: str) -> BrokerError:
    """The one place where aio-pika / aiormq errors become tidings errors."""
    if isinstance(error, BrokerError):
        return error
    if isinstance(error, aiormq.exceptions.PublishError):
        return PublishNotConfirmed(f"RabbitMQ returned an unroutable message while {doing}")
    if isinstance(error, aiormq.exceptions.DeliveryError):
        return PublishNotConfirmed(f"RabbitMQ refused a message (nack) while {doing}")
    if isinstance(error, aiormq.exceptions.ChannelPreconditionFailed):
        return TopologyError(f"RabbitMQ rejected the topology while {doing}: {error}")
    if isinstance(error, aiormq.exceptions.ChannelNotFoundEntity):
        return TopologyError(f"missing exchange or queue while {doing} (declare() first): {error}")
    if isinstance(
        error,
        aiormq.exceptions.AMQPConnectionError
        | aiormq.exceptions.ChannelInvalidStateError
        | aiormq.exceptions.AMQPChannelError
        | ConnectionError
        | OSError
        | asyncio.TimeoutError,
    ):
        return BrokerUnavailable(f"RabbitMQ connection problem while {doing}: {error!r}")
    if isinstance(error, RuntimeError) and "closed" in str(error):
        # aio-pika's way of saying the (robust) connection is down or reconnecting.
        return BrokerUnavailable(f"RabbitMQ connection closed while {doing}: {error}")
    return BrokerError(f"RabbitMQ error while {doing}: {error!r}")


@contextlib.contextmanager
def _driver_errors(doing: str) -> Iterator[None]:
    try:
        yield
    except asyncio.CancelledError:
        raise
    except BrokerError:
        raise
    except Exception as exc:
        raise _translate(exc, doing) from exc


def partition_queue(topology: Topology, group: str, partition: int) -> str:
    return f"{topology.name}.{group}.p{partition}"


def dead_letter_queue(topology: Topology, group: str) -> str:
    return f"{topology.name}.{group}.dead"


class RabbitMQBroker:
    """The broker port on RabbitMQ (see the module docstring for the topology)."""

    def __init__(
        self,
        url: str,
        topology: Topology,
        *,
        confirm_timeout: float = 30.0,
        connection_name: str | None = None,
    ) -> None:
        self.url = url
        self.topology = topology
        self.confirm_timeout = confirm_timeout
        self.connection_name = connection_name or f"tidings:{topology.name}"
        self._connection: aio_pika.abc.AbstractRobustConnection | None = None
        self._publish_channel: aio_pika.abc.AbstractChannel | None = None
        self._exchange: aio_pika.abc.AbstractExchange | None = None
        self._consumers: list[_RabbitConsumer] = []

    # -- connection ------------------------------------------------------------------------

    async def connect(self) -> None:
        if self._connection is not None:
            return
        with _driver_errors(f"connecting to {_safe_url(self.url)}"):
            self._connection = await aio_pika.connect_robust(
                self.url, client_properties={"connection_name": self.connection_name}
            )

    @property
    def connection(self) -> aio_pika.abc.AbstractRobustConnection:
        if self._connection is None:
            raise BrokerUnavailable(
                f"RabbitMQ broker for bus {self.topology.name!r}: not connected"
            )
        return self._connection

    async def close(self) -> None:
        for consumer in list(self._consumers):
            await consumer.stop()
        self._consumers.clear()
        if self._connection is not None:
            connection, self._connection = self._connection, None
            self._publish_channel = self._exchange = None
            with contextlib.suppress(Exception):
                await connection.close()

    async def abort(self) -> None:
        """Close the connection without acknowledging anything in flight (a crashed process)."""
        for consumer in self._consumers:
            consumer.abandon()
        self._consumers.clear()
        if self._connection is not None:
            connection, self._connection = self._connection, None
            with contextlib.suppress(Exception):
                await connection.close()

    # -- topology --------------------------------------------------------------------------

    async def declare(self) -> None:
        topology = self.topology
        with _driver_errors(f"declaring bus {topology.name!r}"):
            channel = await self.connection.channel()
            try:
                exchange = await channel.declare_exchange(
                    topology.name, aio_pika.ExchangeType.DIRECT, durable=True
                )
                for group in topology.groups:
                    for partition in range(topology.partitions):
                        queue = await channel.declare_queue(
                            partition_queue(topology, group, partition),
                            durable=True,
                            # Classic queues: a rejected message goes back to its original place
                            # (quorum queues may requeue it at the back, which breaks order).
                            arguments={"x-queue-type": "classic", "x-single-active-consumer": True},
                        )
                        await queue.bind(exchange, routing_key=f"p{partition}")
                    await channel.declare_queue(
                        dead_letter_queue(topology, group),
                        durable=True,
                        arguments={"x-queue-type": "classic"},
                    )
            finally:
                with contextlib.suppress(Exception):
                    await channel.close()

    async def delete(self) -> None:
        """Delete the bus's exchange and queues (test cleanup, decommissioning)."""
        topology = self.topology
        with _driver_errors(f"deleting bus {topology.name!r}"):
            channel = await self.connection.channel()
            try:
                for group in topology.groups:
                    for partition in range(topology.partitions):
                        await channel.queue_delete(partition_queue(topology, group, partition))
                    await channel.queue_delete(dead_letter_queue(topology, group))
                await channel.exchange_delete(topology.name)
            finally:
                with contextlib.suppress(Exception):
                    await channel.close()

    # -- publishing ------------------------------------------------------------------------

    async def _publisher(self) -> aio_pika.abc.AbstractExchange:
        if (
            self._exchange is None
            or self._publish_channel is None
            or self._publish_channel.is_closed
        ):
            self._publish_channel = await self.connection.channel(
                publisher_confirms=True, on_return_raises=True
            )
            # A passive declare first: publishing to a missing exchange would close the channel
            # with the rest of the batch in flight, and the broker would then drop the whole
            # connection. This way an undeclared bus is one clean TopologyError.
            self._exchange = await self._publish_channel.get_exchange(
                self.topology.name, ensure=True
            )
        return self._exchange

    async def publish(self, messages: Sequence[StoredEvent]) -> None:
        if not messages:
            return
        topology = self.topology
        for message in messages:
            if len(message.payload) > topology.max_message_bytes:
                raise PublishNotConfirmed(
                    f"{message.describe()}: payload of {len(message.payload)} bytes exceeds the "
                    f"bus limit of {topology.max_message_bytes}"
                )
        with _driver_errors(f"publishing {len(messages)} message(s) to {topology.name!r}"):
            exchange = await self._publisher()
            confirmations = [
                exchange.publish(
                    aio_pika.Message(
                        message.payload,
                        headers=dict(encode_headers(message)),
                        delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
                        message_id=str(message.event_id),
                        content_type="application/json",
                    ),
                    routing_key=f"p{partition_of(partition_key(message), topology.partitions)}",
                    mandatory=True,
                    timeout=self.confirm_timeout,
                )
                for message in messages
            ]
            results = await asyncio.gather(*confirmations, return_exceptions=True)
            for result in results:
                if isinstance(result, BaseException):
                    raise result

    async def publish_raw(self, partition: int, headers: Mapping[str, str], body: bytes) -> None:
        with _driver_errors(f"publishing a raw message to {self.topology.name!r}"):
            exchange = await self._publisher()
            await exchange.publish(
                aio_pika.Message(
                    body, headers=dict(headers), delivery_mode=aio_pika.DeliveryMode.PERSISTENT
                ),
                routing_key=f"p{partition % self.topology.partitions}",
                mandatory=True,
                timeout=self.confirm_timeout,
            )

    # -- consuming -------------------------------------------------------------------------

    async def consume(self, group: str, handler: Handler) -> _RabbitConsumer:
        self.topology.require_group(group)
        consumer = _RabbitConsumer(self, group, handler)
        with _driver_errors(f"subscribing group {group!r} of bus {self.topology.name!r}"):
            await consumer.start()
        self._consumers.append(consumer)
        return consumer

    async def dead_letter(self, settlement: Settlement, delivery: Delivery, group: str) -> None:
        """Publish a dead letter (confirmed) to the group's dead-letter queue."""
        with _driver_errors(f"dead-lettering to {dead_letter_queue(self.topology, group)}"):
            channel = await self.connection.channel(publisher_confirms=True, on_return_raises=True)
            try:
                await channel.default_exchange.publish(
                    aio_pika.Message(
                        delivery.body,
                        headers=dict(settlement.dead_letter_headers),
                        delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
                    ),
                    routing_key=dead_letter_queue(self.topology, group),
                    mandatory=True,
                    timeout=self.confirm_timeout,
                )
            finally:
                with contextlib.suppress(Exception):
                    await channel.close()

    async def dead_letters(self, group: str, limit: int = 100) -> list[Delivery]:
        self.topology.require_group(group)
        found: list[Delivery] = []
        with _driver_errors(f"reading dead letters of group {group!r}"):
            channel = await self.connection.channel()
            try:
                queue = await channel.get_queue(dead_letter_queue(self.topology, group))
                # Fetched without ack; closing the channel puts them back, so this only peeks.
                while len(found) < limit:
                    message = await queue.get(no_ack=False, fail=False)
                    if message is None:
                        break
                    found.append(
                        Delivery(
                            body=message.body,
                            headers=normalize_headers(message.headers),
                            partition=-1,
                            attempt=1,
                            broker_id=str(message.delivery_tag),
                        )
                    )
            finally:
                with contextlib.suppress(Exception):
                    await channel.close()
        return found


class _PartitionSubscription:
    """One partition queue's channel, its local buffer, and the task handling it in order."""

    def __init__(self, consumer: _RabbitConsumer, partition: int) -> None:
        self.consumer = consumer
        self.partition = partition
        #: ``None`` is the stop signal, queued behind whatever was already fetched.
        self.buffer: asyncio.Queue[AbstractIncomingMessage | None] = asyncio.Queue()
        self.stopping = False
        self.channel: aio_pika.abc.AbstractChannel | None = None
        self.queue: aio_pika.abc.AbstractQueue | None = None
        self.consumer_tag: str | None = None
        self.task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        broker = self.consumer.broker
        self.channel = await broker.connection.channel()
        await self.channel.set_qos(prefetch_count=broker.topology.prefetch)
        # Declared (passively) through the robust channel so that aio-pika restores the queue
        # and this subscription after a reconnection.
        self.queue = await self.channel.declare_queue(
            partition_queue(broker.topology, self.consumer.group, self.partition), passive=True
        )
        self.consumer_tag = await self.queue.consume(self._received, no_ack=False)
        self.task = asyncio.create_task(self._serve())

    async def _received(self, message: AbstractIncomingMessage) -> None:
        if not self.stopping:
            self.buffer.put_nowait(message)

    async def _serve(self) -> None:
        consumer = self.consumer
        topology = consumer.broker.topology
        while True:
            first = await self.buffer.get()
            if first is None:
                return
            batch = [first]
            stopping = False
            if self.buffer.empty():
                # Deliveries read off the socket together reach the buffer one callback at a
                # time: let those already received land (no waiting for more to arrive).
                await asyncio.sleep(0)
            while len(batch) < topology.prefetch and not self.buffer.empty():
                item = self.buffer.get_nowait()
                if item is None:
                    stopping = True
                    break
                batch.append(item)
            deliveries = [consumer.delivery_of(m, self.partition) for m in batch]
            if await consumer.batches.run(deliveries):
                await self._settle(batch[-1], multiple=True)
            else:
                for message in batch:
                    await self._handle_one(message)
            if stopping:
                return

    async def _handle_one(self, message: AbstractIncomingMessage) -> None:
        consumer = self.consumer
        settlement = await consumer.handle(message, self.partition)
        while settlement.outcome is Outcome.RETRY:
            # Retried in place, while the messages behind it wait in this channel: a requeue
            # would race with deliveries already on the wire and could reorder the stream.
            # Should this process die meanwhile, the broker redelivers it unacked, in order.
            await asyncio.sleep(retry_pause(consumer.failures.get(_key(message), 1)))
            settlement = await consumer.handle(message, self.partition)
        if settlement.outcome is Outcome.DEAD_LETTER:
            try:
                await consumer.broker.dead_letter(
                    settlement, consumer.delivery_of(message, self.partition), consumer.group
                )
            except BrokerError as exc:
                log.warning("could not dead-letter a message, leaving it unacked: %r", exc)
                return
        await self._settle(message, multiple=False)

    async def _settle(self, message: AbstractIncomingMessage, *, multiple: bool) -> None:
        try:
            await message.ack(multiple=multiple)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            # The channel broke (connection drop): the broker redelivers whatever was not
            # acked, and the inbox makes the repeat harmless.
            log.warning(
                "could not acknowledge on %s: %r",
                partition_queue(self.consumer.broker.topology, self.consumer.group, self.partition),
                exc,
            )

    async def stop(self) -> None:
        self.stopping = True
        if self.queue is not None and self.consumer_tag is not None:
            with contextlib.suppress(Exception):
                await self.queue.cancel(self.consumer_tag)
        self.buffer.put_nowait(None)
        if self.task is not None:
            await asyncio.gather(self.task, return_exceptions=True)
        if self.channel is not None:
            with contextlib.suppress(Exception):
                await self.channel.close()  # whatever was fetched but not handled is requeued

    def abandon(self) -> None:
        self.stopping = True
        if self.task is not None:
            self.task.cancel()


class _RabbitConsumer:
    def __init__(self, broker: RabbitMQBroker, group: str, handler: Handler) -> None:
        self.broker = broker
        self.group = group
        self.handler = handler
        self.batches = GroupCommit(handler, broker.topology, group)
        self.partitions = [
            _PartitionSubscription(self, partition)
            for partition in range(broker.topology.partitions)
        ]
        #: Handler failures per message id, for ``max_deliveries``.
        self.failures: dict[str, int] = {}

    async def start(self) -> None:
        # A random starting partition spreads the active consumers of a group that start
        # together (see the module docstring).
        offset = random.randrange(len(self.partitions))
        for subscription in self.partitions[offset:] + self.partitions[:offset]:
            await subscription.start()

    def delivery_of(self, message: AbstractIncomingMessage, partition: int) -> Delivery:
        key = _key(message)
        return Delivery(
            body=message.body,
            headers=normalize_headers(message.headers),
            partition=partition,
            attempt=self.failures.get(key, 0) + 1,
            broker_id=str(message.delivery_tag),
        )

    async def handle(self, message: AbstractIncomingMessage, partition: int) -> Settlement:
        key = _key(message)
        delivery = self.delivery_of(message, partition)
        settlement = await run_handler(self.handler, delivery, self.broker.topology, self.group)
        if settlement.outcome is Outcome.RETRY:
            self.failures[key] = delivery.attempt
        else:
            self.failures.pop(key, None)
        return settlement

    async def stop(self) -> None:
        """Stop receiving; let handlers in flight finish and ack; requeue what was fetched."""
        await asyncio.gather(*(subscription.stop() for subscription in self.partitions))
        if self in self.broker._consumers:
            self.broker._consumers.remove(self)

    def abandon(self) -> None:
        """Stop handling without acking anything (the connection is about to be dropped)."""
        for subscription in self.partitions:
            subscription.abandon()


def _key(message: AbstractIncomingMessage) -> str:
    return message.message_id or str(message.delivery_tag)


def _safe_url(url: str) -> str:
    """The URL without its password, for error messages."""
    if "@" not in url:
        return url
    scheme, _, rest = url.partition("://")
    credentials, _, host = rest.rpartition("@")
    user = credentials.split(":", 1)[0]
    return f"{scheme}://{user}:***@{host}"

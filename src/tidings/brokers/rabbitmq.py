"""RabbitMQ adapter (aio-pika), with publisher confirms and acknowledgement after the handler.

Topology declared for a bus ``B`` with groups ``G``:

* a durable *direct* exchange ``B``;
* per group and partition ``i``: a durable classic queue ``B.G.p<i>`` bound with routing key
  ``p<i>`` (publishers route by ``partition_of(stream_id)``; no consistent-hash plugin needed);
* per group: a durable queue ``B.G.dead`` for dead letters (published through the default
  exchange with the reason in ``tidings-dead-letter-*`` headers), and a durable queue
  ``B.G.members`` that every consumer of the group consumes, so that its consumer count is the
  number of live consumers (it only ever carries short-lived requests to share, see below).

Publishing uses a confirm-mode channel with ``mandatory``: a message is done when the broker
acks it; a nack or an unroutable return raises :class:`PublishNotConfirmed`. All messages of one
``publish()`` call are in flight together.

Competing consumers: a consumer serves a partition through an *exclusive* consumer on its queue
(the broker refuses a second one, so a partition has one consumer at a time, which keeps
per-stream order). Every ``rebalance_interval`` (a third of ``redelivery_after``) a consumer
reads the members count ``N``. The members cannot be ranked, so each aims at the rounded-up
:func:`~tidings.brokers.port.fair_share` ``ceil(P/N)`` and insists on ``floor(P/N)``:

* above ``ceil(P/N)``, it stops taking messages from the extra partitions, handles and acks
  those already received, and closes their channel: the broker requeues the rest at the head
  of the queue and frees it in one step, for another member to take;
* below it, it takes queues that nobody consumes (a passive declare says so); one above its
  minimum leaves a free queue for one interval first, to whoever needs it more;
* below ``floor(P/N)`` with every queue taken, it publishes a request (expiring after one
  interval) to the members queue; the member that receives it gives a partition up, as above,
  if it has more than its minimum (otherwise the request is dropped and asked again).

When a consumer dies its connection closes, with the same effect on all its partitions (and its
membership).

Consuming uses one channel per partition queue with ``prefetch`` messages outstanding, handled in
order; consecutive messages already fetched are handed to a batch-capable handler (the inbox)
together and acknowledged with one ``basic.ack(multiple=True)`` after its single commit. A
failed message is retried in place, after a short pause, up to ``max_deliveries`` (a requeue
would race with the deliveries already on the wire and reorder the stream); if the consumer
dies meanwhile, everything it had not acknowledged goes back to the queue in its original
order (classic queues) for the next consumer.

Earlier versions declared the partition queues with ``x-single-active-consumer``, which cannot
be changed on a live queue and makes RabbitMQ refuse exclusive consumers. ``declare()`` accepts
such a queue (with a warning) and consumers then fall back to a plain consumer on it, the
broker's single active consumer keeping the order; fair sharing on it needs the queue drained
and deleted (it is declared anew without the argument).

The connection is robust (aio-pika reconnects and re-subscribes); a publication whose confirm
was lost raises :class:`BrokerUnavailable` and must be retried.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Iterator, Mapping, Sequence
from typing import Any, cast

from tidings.brokers.port import (
    Delivery,
    GroupCommit,
    Handler,
    Outcome,
    Settlement,
    Topology,
    fair_share,
    partition_key,
    partition_of,
    rebalance_interval,
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
    from aiormq.abc import DeliveredMessage
except ImportError as missing:  # pragma: no cover - depends on the installed extras
    raise ConfigurationError(
        "the RabbitMQ adapter needs aio-pika: pip install 'tidings[rabbitmq]'"
    ) from missing

log = logging.getLogger("tidings.brokers.rabbitmq")

#: AMQP delivery mode of a message the broker writes to disk.
PERSISTENT = 2


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


def members_queue(topology: Topology, group: str) -> str:
    return f"{topology.name}.{group}.members"


#: Classic queues: a rejected message goes back to its original place (quorum queues may
#: requeue it at the back, which breaks order).
_PARTITION_ARGUMENTS: dict[str, Any] = {"x-queue-type": "classic"}
#: What earlier versions declared; RabbitMQ refuses exclusive consumers on such a queue.
_LEGACY_PARTITION_ARGUMENTS: dict[str, Any] = {
    "x-queue-type": "classic",
    "x-single-active-consumer": True,
}
#: The members queue only carries short-lived requests to share (see the module docstring).
_MEMBERS_ARGUMENTS: dict[str, Any] = {"x-queue-type": "classic"}


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
        self._routing_keys = [f"p{i}" for i in range(topology.partitions)]

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
            # A plain channel: a refused declare closes it, and a robust one would reopen itself.
            channel: aio_pika.abc.AbstractChannel = await aio_pika.Channel(
                self.connection, publisher_confirms=False
            )
            try:
                exchange = await channel.declare_exchange(
                    topology.name, aio_pika.ExchangeType.DIRECT, durable=True
                )
                for group in topology.groups:
                    for partition in range(topology.partitions):
                        channel, queue = await self._declare_partition_queue(
                            channel, partition_queue(topology, group, partition)
                        )
                        await queue.bind(exchange, routing_key=f"p{partition}")
                    await channel.declare_queue(
                        dead_letter_queue(topology, group),
                        durable=True,
                        arguments={"x-queue-type": "classic"},
                    )
                    await channel.declare_queue(
                        members_queue(topology, group), durable=True, arguments=_MEMBERS_ARGUMENTS
                    )
            finally:
                with contextlib.suppress(Exception):
                    await channel.close()

    async def _declare_partition_queue(
        self, channel: aio_pika.abc.AbstractChannel, name: str
    ) -> tuple[aio_pika.abc.AbstractChannel, aio_pika.abc.AbstractQueue]:
        """Declare a partition queue; accept one an earlier version declared (see the module
        docstring). Returns the channel to go on with (a refused declare closes it)."""
        try:
            queue = await channel.declare_queue(name, durable=True, arguments=_PARTITION_ARGUMENTS)
            return channel, queue
        except aiormq.exceptions.ChannelPreconditionFailed:
            pass  # exists with other arguments: probably the earlier ones
        channel = await aio_pika.Channel(self.connection, publisher_confirms=False)
        queue = await channel.declare_queue(
            name, durable=True, arguments=_LEGACY_PARTITION_ARGUMENTS
        )
        log.warning(
            "queue %s was declared with x-single-active-consumer by an earlier version: "
            "consumers fall back to it there (order holds, but consumers starting later may "
            "stay idle); drain and delete the queue to get fair sharing",
            name,
        )
        return channel, queue

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
                    await channel.queue_delete(members_queue(topology, group))
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
            await self._publisher()
            assert self._publish_channel is not None
            # aio-pika's Exchange.publish only forwards to this channel's basic_publish, which
            # by default also waits, per message, until its frames are written out; the
            # confirmation awaited below covers that, so the messages skip that round. One
            # deadline for the batch (they are all sent at once) instead of a timer each.
            channel = cast(aiormq.Channel, await self._publish_channel.get_underlay_channel())
            routing_keys = self._routing_keys
            confirmations = [
                channel.basic_publish(
                    message.payload,
                    exchange=topology.name,
                    routing_key=routing_keys[
                        partition_of(partition_key(message), topology.partitions)
                    ],
                    properties=_properties(message),
                    mandatory=True,
                    wait=False,
                )
                for message in messages
            ]
            async with asyncio.timeout(self.confirm_timeout):
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
        self.buffer: asyncio.Queue[DeliveredMessage | None] = asyncio.Queue()
        self.stopping = False
        self.channel: aio_pika.abc.AbstractChannel | None = None
        self.consumer_tag: str | None = None
        self.task: asyncio.Task[None] | None = None

    async def start(self, *, legacy: bool = False) -> bool:
        """Become the partition's only consumer; False if another consumer holds it.

        ``legacy``: nobody was consuming the queue a moment ago, so a refusal may mean it is a
        single-active-consumer queue from an earlier version, which refuses every exclusive
        consumer: then a plain consumer, the broker's single active consumer keeping the queue
        to one (and should another consumer have taken the queue meanwhile, exclusively, this
        one is refused too).
        """
        # Exclusive: the broker refuses it while another consumer is on the queue, and nobody
        # else gets on while we are, so the partition has one consumer at a time.
        if await self._subscribe(exclusive=True):
            return True
        return legacy and await self._subscribe(exclusive=False)

    async def _subscribe(self, *, exclusive: bool) -> bool:
        broker = self.consumer.broker
        # A plain channel, not a robust one: after a reconnection the partition must be won
        # again (someone else may hold it by then), which the rebalance loop does, instead of
        # aio-pika restoring the subscription behind our back.
        self.channel = await aio_pika.Channel(broker.connection, publisher_confirms=False)
        try:
            await self.channel.set_qos(prefetch_count=broker.topology.prefetch)
            queue = await self.channel.declare_queue(
                partition_queue(broker.topology, self.consumer.group, self.partition),
                passive=True,
            )
            # Straight on aiormq's channel: aio-pika's consumer would wrap every delivery in an
            # IncomingMessage and run our callback in one more task (about 6% of the broker
            # benchmark's CPU), for nothing this buffer needs.
            underlay = cast(aiormq.Channel, await self.channel.get_underlay_channel())
            consume_ok = await underlay.basic_consume(
                queue.name, self._received, no_ack=False, exclusive=exclusive
            )
            self.consumer_tag = consume_ok.consumer_tag
        except BaseException as exc:
            with contextlib.suppress(Exception):
                await self.channel.close()
            if isinstance(exc, aiormq.exceptions.ChannelAccessRefused):
                return False
            raise
        self.task = asyncio.create_task(self._serve())
        return True

    @property
    def broken(self) -> bool:
        """The channel is gone (connection lost): the broker requeued what we had not acked."""
        return self.channel is None or self.channel.is_closed

    @property
    def done(self) -> bool:
        return self.task is None or self.task.done()

    async def _received(self, message: DeliveredMessage) -> None:
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

    async def _handle_one(self, message: DeliveredMessage) -> None:
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

    async def _settle(self, message: DeliveredMessage, *, multiple: bool) -> None:
        try:
            await message.channel.basic_ack(_tag(message), multiple=multiple)
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
        """Handle what is already here, then close the channel.

        No basic.cancel first: that would let another consumer onto the queue while the
        messages we received but will not handle are still ours, and it would get their
        successors first. Closing the channel requeues them (in order) and frees the queue in
        one step.
        """
        self.stopping = True
        self.buffer.put_nowait(None)
        if self.task is not None:
            await asyncio.gather(self.task, return_exceptions=True)
        if self.channel is not None:
            with contextlib.suppress(Exception):
                await self.channel.close()

    def drop(self) -> None:
        """The channel broke: forget what was fetched (the broker requeued it); finish the
        message in hand (its ack will fail, the inbox absorbs the redelivery)."""
        self.stopping = True
        while not self.buffer.empty():
            self.buffer.get_nowait()
        self.buffer.put_nowait(None)

    def abandon(self) -> None:
        self.stopping = True
        if self.task is not None:
            self.task.cancel()


class _RabbitConsumer:
    """Serves its share of the group's partitions (see the module docstring)."""

    def __init__(self, broker: RabbitMQBroker, group: str, handler: Handler) -> None:
        self.broker = broker
        self.group = group
        self.handler = handler
        self.batches = GroupCommit(handler, broker.topology, group)
        #: The partitions held (or being given up: those are ``stopping``).
        self.partitions: dict[int, _PartitionSubscription] = {}
        #: Handler failures per message id, for ``max_deliveries``.
        self.failures: dict[str, int] = {}
        self._members_channel: aio_pika.abc.AbstractChannel | None = None
        self._members: aio_pika.abc.AbstractQueue | None = None
        self._probe: aio_pika.abc.AbstractChannel | None = None
        self._releases: set[asyncio.Task[None]] = set()
        #: Members counted at the last rebalance.
        self._members_count = 1
        #: Partitions found free at the last rebalance.
        self._seen_free: set[int] = set()
        self._rebalancing: asyncio.Task[None] | None = None
        self._stopping = False

    async def start(self) -> None:
        topology = self.broker.topology
        # Membership: every consumer of the group consumes the (message-less) members queue,
        # whose consumer count is then the number of live consumers. A robust channel, so
        # aio-pika subscribes it again after a reconnection.
        self._members_channel = await self.broker.connection.channel()
        self._members = await self._members_channel.declare_queue(
            members_queue(topology, self.group), durable=True, arguments=_MEMBERS_ARGUMENTS
        )
        await self._members.consume(self._asked_to_share, no_ack=True)
        await self._rebalance()
        self._rebalancing = asyncio.create_task(self._keep_balance())

    @property
    def owned(self) -> list[int]:
        """The partitions this consumer serves (not counting those it is giving up)."""
        return sorted(p for p, s in self.partitions.items() if not s.stopping)

    async def _keep_balance(self) -> None:
        while not self._stopping:
            await asyncio.sleep(rebalance_interval(self.broker.topology))
            try:
                await self._rebalance()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning("rebalancing group %s failed: %r", self.group, exc)

    async def _rebalance(self) -> None:
        """Take free partitions up to our share; give up (gracefully) what is beyond it."""
        for partition, subscription in list(self.partitions.items()):
            if subscription.done:
                self.partitions.pop(partition)
                if subscription.channel is not None:
                    with contextlib.suppress(Exception):
                        await subscription.channel.close()
            elif subscription.broken and not subscription.stopping:
                subscription.drop()
        if self._stopping or self._members is None:
            return
        declared = await self._members.declare()
        members = self._members_count = declared.consumer_count or 1
        partitions = self.broker.topology.partitions
        share, floor = fair_share(partitions, members), partitions // members
        serving = self.owned
        if len(serving) > share:
            for partition in serving[share:]:
                self._release(partition)
            return
        if len(serving) == share:
            self._seen_free.clear()
            return
        probe = await self._probe_channel()
        free: set[int] = set()
        for partition in range(partitions):
            if len(self.owned) >= share or self._stopping:
                break
            if partition in self.partitions:
                continue
            name = partition_queue(self.broker.topology, self.group, partition)
            queue = await probe.declare_queue(name, passive=True)
            if queue.declaration_result.consumer_count:
                continue  # another consumer holds it
            free.add(partition)
            if len(self.owned) >= floor and partition not in self._seen_free:
                # We have our minimum: a consumer below its own gets one interval to take it
                # first (it was probably given up for that one).
                continue
            subscription = _PartitionSubscription(self, partition)
            if await subscription.start(legacy=True):
                self.partitions[partition] = subscription
        self._seen_free = free
        if len(self.owned) < floor and not free and not self._stopping:
            # Everything is held, mostly by members with more than their minimum (each aims
            # at the rounded-up share): ask one of them, through the members queue, to give
            # a partition up. The request expires with the interval; we ask again if needed.
            await probe.default_exchange.publish(
                aio_pika.Message(b"", expiration=rebalance_interval(self.broker.topology)),
                routing_key=members_queue(self.broker.topology, self.group),
            )

    async def _asked_to_share(self, message: AbstractIncomingMessage) -> None:
        """A member below its minimum asks for a partition: give one up if we have extra."""
        if self._stopping:
            return
        serving = self.owned
        if len(serving) > self.broker.topology.partitions // self._members_count:
            self._release(serving[-1])

    def _release(self, partition: int) -> None:
        """Give a partition up gracefully (in the background: it finishes what it has)."""
        release = asyncio.create_task(self.partitions[partition].stop())
        self._releases.add(release)
        release.add_done_callback(self._releases.discard)

    async def _probe_channel(self) -> aio_pika.abc.AbstractChannel:
        """A plain channel for passive declares (who is consuming which partition queue)."""
        if self._probe is None or self._probe.is_closed:
            self._probe = await aio_pika.Channel(self.broker.connection, publisher_confirms=False)
        return self._probe

    def delivery_of(self, message: DeliveredMessage, partition: int) -> Delivery:
        key = _key(message)
        # Positional (body, headers, partition, attempt, broker_id): one per message consumed.
        return Delivery(
            message.body,
            normalize_headers(message.header.properties.headers),
            partition,
            self.failures.get(key, 0) + 1,
            str(message.delivery_tag),
        )

    async def handle(self, message: DeliveredMessage, partition: int) -> Settlement:
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
        self._stopping = True
        if self._rebalancing is not None:
            self._rebalancing.cancel()
            await asyncio.gather(self._rebalancing, return_exceptions=True)
        await asyncio.gather(
            *(subscription.stop() for subscription in self.partitions.values()),
            *self._releases,
            return_exceptions=True,
        )
        self.partitions.clear()
        for channel in (self._members_channel, self._probe):
            if channel is not None:
                with contextlib.suppress(Exception):
                    await channel.close()
        if self in self.broker._consumers:
            self.broker._consumers.remove(self)

    def abandon(self) -> None:
        """Stop handling without acking anything (the connection is about to be dropped)."""
        self._stopping = True
        if self._rebalancing is not None:
            self._rebalancing.cancel()
        for release in self._releases:
            release.cancel()
        for subscription in self.partitions.values():
            subscription.abandon()


def _properties(message: StoredEvent) -> aiormq.spec.Basic.Properties:
    headers: dict[str, Any] = encode_headers(message)
    return aiormq.spec.Basic.Properties(
        headers=headers,
        delivery_mode=PERSISTENT,
        message_id=str(message.event_id),
        content_type="application/json",
    )


def _key(message: DeliveredMessage) -> str:
    return message.header.properties.message_id or str(message.delivery_tag)


def _tag(message: DeliveredMessage) -> int:
    """The delivery tag (a delivery from a consumer always has one)."""
    tag = message.delivery_tag
    assert tag is not None, "a consumed message has a delivery tag"
    return tag


def _safe_url(url: str) -> str:
    """The URL without its password, for error messages."""
    if "@" not in url:
        return url
    scheme, _, rest = url.partition("://")
    credentials, _, host = rest.rpartition("@")
    user = credentials.split(":", 1)[0]
    return f"{scheme}://{user}:***@{host}"

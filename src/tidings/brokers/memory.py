"""An in-memory broker: a real implementation of the port, for tests and single-process apps.

A :class:`MemoryBrokerServer` plays the broker server; every :class:`MemoryBroker` is a client
connection to it, so tests can run several competing consumers, kill one (``sever()``), and
watch its unacknowledged message go to another, exactly as with a real broker.

Ordering: each consumer group has one queue per partition. A partition is owned by one consumer
at a time and its messages are handled one after another. The consumers of a group share the
partitions fairly (:func:`~tidings.brokers.port.fair_share`, ranked by arrival): when one joins,
the others give up their extra partitions as soon as the message in hand is done; when one
stops or its connection is severed, the others take its partitions over at once. A message
stays at the head of its partition until it is acknowledged, so a crash, a handler failure or
a handover redelivers it before anything behind it.

Threads: publishers and consumers may run in different event loops of different threads, as
the relay's :class:`~tidings.brokers.publisher.BlockingBusPublisher` (a loop of its own) and a
worker do in one process. The server's state is guarded by one lock, and a consumer is woken,
and asked to rebalance, in its own loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import threading
from collections import deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from tidings.brokers.port import (
    Delivery,
    GroupCommit,
    Handler,
    Outcome,
    Topology,
    cancel_tasks,
    fair_share,
    partition_key,
    partition_of,
    retry_pause,
    run_handler,
)
from tidings.brokers.wire import encode_headers
from tidings.core.messages import StoredEvent
from tidings.errors import BrokerUnavailable, PublishNotConfirmed, TopologyError

_ids = itertools.count(1)


@dataclass(slots=True)
class _Message:
    body: bytes
    headers: dict[str, str]
    broker_id: str
    deliveries: int = 0


@dataclass(slots=True)
class _Partition:
    queue: deque[_Message] = field(default_factory=deque)
    owner: _MemoryConsumer | None = None
    #: The owner's wake-up, made in its loop when it takes the partition (an asyncio.Event
    #: belongs to the loop that first waits on it).
    changed: asyncio.Event = field(default_factory=asyncio.Event)
    loop: asyncio.AbstractEventLoop | None = None

    def wake(self) -> None:
        """Wake the owner's task, from any thread or loop (the queue or its share changed)."""
        loop, changed = self.loop, self.changed
        if loop is None:
            return  # no owner: whoever takes the partition looks at the queue first
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if running is loop:
            changed.set()
            return
        # Set in the owner's loop, after whatever it is doing now: it cannot miss it between
        # looking at an empty queue and waiting.
        with contextlib.suppress(RuntimeError):  # its loop closed: nobody is waiting
            loop.call_soon_threadsafe(changed.set)


@dataclass(slots=True)
class _Group:
    partitions: list[_Partition]
    dead: list[Delivery] = field(default_factory=list)
    consumers: list[_MemoryConsumer] = field(default_factory=list)


class MemoryBrokerServer:
    """The shared state of every in-memory connection: buses, groups, partitions."""

    def __init__(self) -> None:
        self._buses: dict[str, tuple[Topology, dict[str, _Group]]] = {}
        #: Guards queues, owners and members: clients may run in different threads.
        self.lock = threading.RLock()

    def declare(self, topology: Topology) -> None:
        with self.lock:
            self._declare(topology)

    def _declare(self, topology: Topology) -> None:
        existing = self._buses.get(topology.name)
        if existing is None:
            groups = {g: _new_group(topology) for g in topology.groups}
            self._buses[topology.name] = (topology, groups)
            return
        declared, groups = existing
        if declared.partitions != topology.partitions:
            raise TopologyError(
                f"bus {topology.name!r} exists with {declared.partitions} partitions, "
                f"not {topology.partitions}; partitions cannot change on a live bus"
            )
        for group in topology.groups:
            groups.setdefault(group, _new_group(topology))

    def group(self, bus: str, group: str) -> _Group:
        try:
            return self._buses[bus][1][group]
        except KeyError:
            raise TopologyError(
                f"group {group!r} of bus {bus!r} is not declared; call declare() first"
            ) from None

    def publish(self, bus: str, partition: int, headers: dict[str, str], body: bytes) -> None:
        try:
            _, groups = self._buses[bus]
        except KeyError:
            raise PublishNotConfirmed(
                f"bus {bus!r} is not declared; call declare() before publishing"
            ) from None
        for group in groups.values():
            target = group.partitions[partition]
            with self.lock:
                target.queue.append(_Message(body, headers, str(next(_ids))))
            target.wake()

    def depth(self, bus: str, group: str) -> int:
        """Messages waiting or in flight in a group (for tests and benchmarks)."""
        return sum(len(p.queue) for p in self.group(bus, group).partitions)

    def delete(self, bus: str) -> None:
        with self.lock:
            self._buses.pop(bus, None)


def _rebalance(group: _Group) -> None:
    """Share the group's partitions among its consumers again (one joined, left or gave up)."""
    for consumer in list(group.consumers):
        consumer.request_rebalance()


def _new_group(topology: Topology) -> _Group:
    return _Group([_Partition() for _ in range(topology.partitions)])


def _remove_head(partition: _Partition, message: _Message) -> None:
    """Acknowledge ``message``: drop it if it is still the partition's head (server lock held)."""
    if partition.queue and partition.queue[0] is message:
        partition.queue.popleft()


def _forget_gone(group: _Group) -> None:
    """Drop consumers whose event loop has closed without stopping them (an ``asyncio.run``
    that returned with its consumer running): nothing will serve their partitions again, as a
    real broker forgets a closed connection's consumers (server lock held)."""
    for consumer in [c for c in group.consumers if c.gone]:
        group.consumers.remove(consumer)
        for partition in group.partitions:
            if partition.owner is consumer:
                _disown(partition)


def _disown(partition: _Partition) -> None:
    """Free ``partition`` for its next owner (server lock held)."""
    partition.owner = None
    partition.loop = None


class _MemoryConsumer:
    def __init__(
        self, broker: MemoryBroker, group_name: str, group: _Group, handler: Handler
    ) -> None:
        self._broker = broker
        self._group_name = group_name
        self._group = group
        self._handler = handler
        self._batches = GroupCommit(handler, broker.topology, group_name)
        self._lock = broker.server.lock
        self._tasks: dict[int, asyncio.Task[None]] = {}
        #: Partitions beyond our share, handed over once the message in hand is done.
        self._releasing: set[int] = set()
        self._stopping = False
        self._loop = asyncio.get_running_loop()

    def start(self) -> None:
        with self._lock:
            _forget_gone(self._group)
            self._group.consumers.append(self)
        _rebalance(self._group)

    @property
    def gone(self) -> bool:
        """Its event loop has closed: it serves nothing any more."""
        return self._loop.is_closed()

    def request_rebalance(self) -> None:
        """:meth:`rebalance` in this consumer's own loop (its tasks live there)."""
        try:
            here = asyncio.get_running_loop() is self._loop
        except RuntimeError:
            here = False
        if here:
            self.rebalance()
        else:
            with contextlib.suppress(RuntimeError):  # its loop closed: it is gone
                self._loop.call_soon_threadsafe(self.rebalance)

    def rebalance(self) -> None:
        """Take free partitions up to our share; give up (gracefully) what is beyond it."""
        with self._lock:
            if self._stopping or self not in self._group.consumers:
                return
            partitions = self._group.partitions
            share = fair_share(
                len(partitions), len(self._group.consumers), self._group.consumers.index(self)
            )
            serving = sorted(set(self._tasks) - self._releasing)
            if len(serving) > share:
                for index in serving[share:]:
                    # Its task lets the message in hand finish, then gives the partition up.
                    self._releasing.add(index)
                    partitions[index].wake()
                return
            for index, partition in enumerate(partitions):
                if len(serving) >= share:
                    return
                if partition.owner is None:
                    partition.owner = self
                    partition.changed = asyncio.Event()
                    partition.loop = self._loop
                    self._tasks[index] = asyncio.create_task(self._serve(index, partition))
                    serving.append(index)

    @property
    def owned(self) -> list[int]:
        """The partitions this consumer serves (not counting those it is giving up)."""
        return sorted(set(self._tasks) - self._releasing)

    async def _serve(self, index: int, partition: _Partition) -> None:
        topology = self._broker.topology
        while not self._stopping and index not in self._releasing:
            if not partition.queue:
                partition.changed.clear()
                await partition.changed.wait()
                continue
            # Even one message goes to the group commit, as on the real brokers.
            with self._lock:
                batch = list(itertools.islice(partition.queue, topology.prefetch))
            deliveries = [
                Delivery(m.body, dict(m.headers), index, m.deliveries + 1, m.broker_id)
                for m in batch
            ]
            if await self._batches.run(deliveries):
                with self._lock:
                    for message in batch:
                        message.deliveries += 1
                        _remove_head(partition, message)
                continue
            if not partition.queue:
                continue  # emptied while the batch was tried, as the popleft checks allow for
            # The message stays at the head while it is handled: if this consumer dies or the
            # handler fails, it is the next one delivered from this partition.
            message = partition.queue[0]
            message.deliveries += 1
            delivery = Delivery(
                body=message.body,
                headers=dict(message.headers),
                partition=index,
                attempt=message.deliveries,
                broker_id=message.broker_id,
            )
            settlement = await run_handler(self._handler, delivery, topology, self._group_name)
            if settlement.outcome is Outcome.RETRY:
                await asyncio.sleep(retry_pause(message.deliveries))
                continue
            if settlement.outcome is Outcome.DEAD_LETTER:
                self._group.dead.append(
                    Delivery(
                        body=message.body,
                        headers=settlement.dead_letter_headers,
                        partition=index,
                        attempt=message.deliveries,
                        broker_id=message.broker_id,
                    )
                )
            with self._lock:
                _remove_head(partition, message)

        if index in self._releasing and not self._stopping:
            # Given up for a fairer share: whatever was not acked stays at the head of the
            # partition for its next owner.
            with self._lock:
                self._releasing.discard(index)
                del self._tasks[index]
                _disown(partition)
            _rebalance(self._group)

    async def _release(self, graceful: bool) -> None:
        self._stopping = True
        if graceful:
            for partition in self._group.partitions:
                if partition.owner is self:
                    partition.wake()  # wake idle loops so they see _stopping
            await asyncio.gather(*self._tasks.values(), return_exceptions=True)
        else:
            await cancel_tasks(list(self._tasks.values()))
        with self._lock:
            for partition in self._group.partitions:
                if partition.owner is self:
                    _disown(partition)
            self._releasing.clear()
            if self in self._group.consumers:
                self._group.consumers.remove(self)
        _rebalance(self._group)

    async def stop(self) -> None:
        await self._release(graceful=True)

    def resume(self) -> None:
        """Subscribe again after a severed connection (what a reconnecting client does)."""
        self._stopping = False
        self._tasks = {}
        self.start()

    async def sever(self) -> None:
        await self._release(graceful=False)


class MemoryBroker:
    """A client connection to a :class:`MemoryBrokerServer` (one server per process by default)."""

    def __init__(self, topology: Topology, server: MemoryBrokerServer | None = None) -> None:
        self.topology = topology
        self.server = server if server is not None else default_server
        self._connected = False
        self._consumers: list[_MemoryConsumer] = []

    async def connect(self) -> None:
        self._connected = True

    async def close(self) -> None:
        for consumer in list(self._consumers):
            await consumer.stop()
        self._consumers.clear()
        self._connected = False

    async def sever(self) -> None:
        """Drop the connection abruptly: handlers in flight are cancelled, nothing is acked."""
        for consumer in list(self._consumers):
            await consumer.sever()
        self._consumers.clear()
        self._connected = False

    async def drop_connection(self) -> None:
        """A network drop followed by automatic reconnection: handlers in flight are cancelled
        (nothing is acked), then every consumer subscribes again."""
        for consumer in list(self._consumers):
            await consumer.sever()
            consumer.resume()

    def _require_connection(self) -> None:
        if not self._connected:
            raise BrokerUnavailable(f"memory broker for bus {self.topology.name!r}: not connected")

    async def declare(self) -> None:
        self._require_connection()
        self.server.declare(self.topology)

    async def publish(self, messages: Sequence[StoredEvent]) -> None:
        self._require_connection()
        limit = self.topology.max_message_bytes
        for message in messages:
            if len(message.payload) > limit:
                raise PublishNotConfirmed(
                    f"{message.describe()}: payload of {len(message.payload)} bytes exceeds the "
                    f"bus limit of {limit}"
                )
        for message in messages:
            partition = partition_of(partition_key(message), self.topology.partitions)
            self.server.publish(
                self.topology.name, partition, encode_headers(message), message.payload
            )
        # Yield like a network round trip would, so publishers never starve consumers.
        await asyncio.sleep(0)

    async def publish_raw(self, partition: int, headers: Mapping[str, str], body: bytes) -> None:
        self._require_connection()
        self.server.publish(
            self.topology.name, partition % self.topology.partitions, dict(headers), body
        )
        await asyncio.sleep(0)

    async def consume(self, group: str, handler: Handler) -> _MemoryConsumer:
        self._require_connection()
        self.topology.require_group(group)
        consumer = _MemoryConsumer(
            self, group, self.server.group(self.topology.name, group), handler
        )
        self._consumers.append(consumer)
        consumer.start()
        return consumer

    async def dead_letters(self, group: str, limit: int = 100) -> list[Delivery]:
        self._require_connection()
        return list(self.server.group(self.topology.name, group).dead[:limit])

    async def delete(self) -> None:
        """Remove the bus and everything in it (test cleanup)."""
        self.server.delete(self.topology.name)


#: The server :class:`MemoryBroker` connects to unless given another one.
default_server = MemoryBrokerServer()

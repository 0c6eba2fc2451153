"""GroupCommit: batches of several partitions handed in during a commit go together in the next."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

import pytest

from tidings.brokers.port import Delivery, GroupCommit, Topology


def delivery(partition: int, n: int) -> Delivery:
    return Delivery(body=f"{partition}:{n}".encode(), headers={}, partition=partition, attempt=1)


class Recorder:
    """A batch handler noting each handle_batch call; fails any batch holding ``poison``."""

    def __init__(self, poison: bytes = b"") -> None:
        self.poison = poison
        self.calls: list[list[bytes]] = []
        self.committed: list[bytes] = []
        self.gate = asyncio.Event()
        self.gate.set()

    async def __call__(self, delivery: Delivery) -> None:
        raise AssertionError("GroupCommit only calls handle_batch")

    async def handle_batch(self, deliveries: Sequence[Delivery]) -> None:
        bodies = [d.body for d in deliveries]
        self.calls.append(bodies)
        await self.gate.wait()
        if self.poison in bodies:
            raise RuntimeError("poison")
        self.committed.extend(bodies)


TOPOLOGY = Topology(name="group-commit", groups=("g",))


async def test_an_idle_consumer_commits_at_once_even_a_single_message() -> None:
    handler = Recorder()
    group = GroupCommit(handler, TOPOLOGY, "g")
    assert await group.run([delivery(0, 1)])
    assert handler.calls == [[b"0:1"]]


async def test_batches_arriving_during_a_commit_join_the_next_one() -> None:
    handler = Recorder()
    group = GroupCommit(handler, TOPOLOGY, "g")
    handler.gate.clear()
    first = asyncio.create_task(group.run([delivery(0, 1)]))
    await asyncio.sleep(0.01)  # the first commit is in progress
    others = [asyncio.create_task(group.run([delivery(p, 1), delivery(p, 2)])) for p in (1, 2)]
    await asyncio.sleep(0.01)
    handler.gate.set()
    assert await first
    assert all(await asyncio.gather(*others))
    assert handler.calls == [[b"0:1"], [b"1:1", b"1:2", b"2:1", b"2:2"]]


async def test_a_failing_combined_batch_is_retried_per_partition() -> None:
    handler = Recorder(poison=b"2:1")
    group = GroupCommit(handler, TOPOLOGY, "g")
    handler.gate.clear()
    first = asyncio.create_task(group.run([delivery(0, 1)]))
    await asyncio.sleep(0.01)
    healthy = asyncio.create_task(group.run([delivery(1, 1), delivery(1, 2)]))
    poisoned = asyncio.create_task(group.run([delivery(2, 1), delivery(2, 2)]))
    await asyncio.sleep(0.01)
    handler.gate.set()
    assert await first
    assert await healthy  # committed on its own
    assert not await poisoned  # its adapter goes one by one
    assert handler.committed == [b"0:1", b"1:1", b"1:2"]


async def test_a_cancelled_leader_hands_over_and_nothing_hangs() -> None:
    handler = Recorder()
    group = GroupCommit(handler, TOPOLOGY, "g")
    handler.gate.clear()
    leader = asyncio.create_task(group.run([delivery(0, 1)]))
    await asyncio.sleep(0.01)
    follower = asyncio.create_task(group.run([delivery(1, 1)]))
    await asyncio.sleep(0.01)
    leader.cancel()  # a consumer killed mid-commit
    await asyncio.gather(leader, return_exceptions=True)
    handler.gate.set()
    # The follower's batch was not committed with the leader's: it is handled by itself.
    assert await asyncio.wait_for(follower, 5)
    assert await asyncio.wait_for(group.run([delivery(0, 2)]), 5)
    assert handler.committed == [b"1:1", b"0:2"]


class Preparing(Recorder):
    """A recorder that also prepares batches, noting what was prepared before which call."""

    def __init__(self) -> None:
        super().__init__()
        self.prepared: list[list[bytes]] = []

    def prepare_batch(self, deliveries: Sequence[Delivery]) -> None:
        self.prepared.append([d.body for d in deliveries])


async def behind_a_commit(group: GroupCommit, handler: Recorder) -> list[asyncio.Task[bool]]:
    """Partition 0's batch with its commit held open, and partitions 1 and 2's waiting for it
    (release them with ``handler.gate.set()``)."""
    handler.gate.clear()
    first = asyncio.create_task(group.run([delivery(0, 1)]))
    await asyncio.sleep(0.01)
    others = [asyncio.create_task(group.run([delivery(p, 1)])) for p in (1, 2)]
    await asyncio.sleep(0.01)
    return [first, *others]


async def test_batches_are_prepared_as_they_arrive_while_a_commit_is_in_progress() -> None:
    handler = Preparing()
    group = GroupCommit(handler, TOPOLOGY, "g")
    batches = await behind_a_commit(group, handler)
    # Still committing the first: the others are prepared already, waiting for their turn (the
    # first did not wait: nothing to overlap, so not prepared).
    assert handler.calls == [[b"0:1"]]
    assert handler.prepared == [[b"1:1"], [b"2:1"]]
    handler.gate.set()
    assert all(await asyncio.gather(*batches))
    assert handler.calls == [[b"0:1"], [b"1:1", b"2:1"]]


async def test_a_prepare_batch_that_raises_is_logged_and_not_called_again(
    caplog: pytest.LogCaptureFixture,
) -> None:
    class Broken(Preparing):
        def prepare_batch(self, deliveries: Sequence[Delivery]) -> None:
            super().prepare_batch(deliveries)
            raise ValueError("prepared wrong")

    handler = Broken()
    group = GroupCommit(handler, TOPOLOGY, "g")
    batches = await behind_a_commit(group, handler)
    handler.gate.set()
    assert all(await asyncio.gather(*batches))
    assert sorted(handler.committed) == [b"0:1", b"1:1", b"2:1"]  # handled all the same
    assert handler.prepared == [[b"1:1"]]
    assert "prepare_batch failed for group g" in caplog.text

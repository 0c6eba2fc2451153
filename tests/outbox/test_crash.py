"""Crash tests: real processes, killed with SIGKILL at random moments."""

from __future__ import annotations

import random
import signal
import subprocess
import sys
import time
from collections import Counter, defaultdict
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import Engine, func, select

from tidings.outbox import Relay, outbox_table
from tidings.outbox import tables as outbox_tables
from tidings.outbox.subscribers import reader_engine

from .app import Account, effects, make_config, wait_for
from .conftest import Store

HERE = Path(__file__).resolve().parent


def spawn(
    store: Store, script: str, *args: str, env: dict[str, str] | None = None
) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, str(HERE / script), *args],
        env={**store.env, **(env or {})},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )


@pytest.fixture
def reader(store: Store) -> Iterator[Engine]:
    """Polls without taking SQLite's write lock (tidings' engines begin IMMEDIATE)."""
    engine = reader_engine(store.engine)
    yield engine
    if engine.pool is not store.engine.pool:  # its own engine (SQLite), not a view of ours
        engine.dispose()


def lease_renewed_since(reader: Engine, moment: float) -> bool:
    leases = outbox_tables.leases
    with reader.connect() as conn:
        expiries = conn.execute(
            select(leases.c.expires_at).where(leases.c.owner == "crashy")
        ).scalars()
        return any(expiry > moment for expiry in expiries)


def outbox_count(reader: Engine) -> int:
    with reader.connect() as conn:
        return int(conn.execute(select(func.count()).select_from(outbox_table)).scalar_one())


def kill(process: subprocess.Popen[bytes]) -> None:
    process.send_signal(signal.SIGKILL)
    process.wait(30)


def test_relay_killed_30_times_while_a_writer_commits(store: Store, reader: Engine) -> None:
    rng = random.Random(20260)
    total = 500
    # About 15 s of writing, while the relay (20 ms per event) is killed and restarted.
    writer = spawn(store, "child_writer.py", "steady", "0", str(total), "0.05")
    kills = 0
    try:
        while kills < 30:
            spawned = time.time()
            relay = spawn(
                store, "child_relay.py", "crashy", env={"OUTBOX_TEST_HANDLER_DELAY": "0.02"}
            )
            # Kill it at a random moment of its work, not while it is still importing.
            wait_for(
                lambda p=relay, t=spawned: lease_renewed_since(reader, t) or p.poll() is not None,
                seconds=60,
            )
            time.sleep(rng.uniform(0.0, 0.4))
            assert relay.poll() is None, relay.stderr.read() if relay.stderr else ""
            kill(relay)
            kills += 1
        assert writer.wait(120) == 0, writer.stderr.read() if writer.stderr else ""
    finally:
        if writer.poll() is None:
            kill(writer)
    Relay(make_config(store.engine), node="crashy").run_until_idle()

    handled = effects(store.engine)
    assert sorted(e.seq for e in handled) == list(range(total))  # each once, none missing
    versions: dict[str, list[int]] = defaultdict(list)
    for effect in handled:
        versions[effect.stream_id].append(effect.stream_version)
    for stream_versions in versions.values():
        assert stream_versions == list(range(1, len(stream_versions) + 1))


def test_writer_killed_mid_transaction_delivers_nothing_half_written(
    store: Store, reader: Engine
) -> None:
    rng = random.Random(7)
    for run in range(8):
        before = outbox_count(reader)
        writer = spawn(store, "child_writer.py", "batches", str(run * 100_000))
        # Once it is committing, kill it at a random moment (most land mid-transaction: it
        # pauses inside each one, after writing its outbox rows).
        wait_for(
            lambda p=writer, n=before: outbox_count(reader) > n or p.poll() is not None, seconds=60
        )
        time.sleep(rng.uniform(0.0, 0.5))
        assert writer.poll() is None, writer.stderr.read() if writer.stderr else ""
        kill(writer)
    Relay(make_config(store.engine), node="after").run_until_idle()

    with store.engine.connect() as conn:
        written = conn.execute(select(outbox_table.c.payload)).all()
        balances = dict(conn.execute(select(Account.id, Account.balance)).all())
    handled = effects(store.engine)
    per_transaction = Counter(e.seq for e in handled)
    assert per_transaction, "no transaction committed at all"
    assert set(per_transaction.values()) == {5}  # whole transactions only
    assert len(written) == len(handled)
    # Every committed deposit was delivered, and nothing that was not committed.
    assert sum(balances.values()) == len(handled)
    assert sorted(balances) == [f"acc-{n}" for n in range(5)]

"""Child process: commits deposits continuously (tests/outbox/test_crash.py).

``steady START COUNT MAX_PAUSE``: one deposit per transaction, seq START..START+COUNT-1, over
8 accounts, pausing up to MAX_PAUSE seconds between them.
``batches START``: transactions of five deposits (one per account, all with the same seq), each
pausing inside the transaction after its outbox rows are written, until killed.
"""

from __future__ import annotations

import random
import sys
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from app import Account, deposit, engine_from_env, make_config
from sqlalchemy import event, text

from tidings import CommitBatch


class PauseBeforeCommit:
    """Runs a sleep in SQL after the outbox insert: a kill then lands mid-transaction."""

    def __init__(self, dialect: str) -> None:
        self.sql = "SELECT pg_sleep(:s)" if dialect == "postgresql" else "SELECT sleep_s(:s)"

    def statements(self, batch: CommitBatch) -> Iterable[tuple[Any, Any]]:
        return [(text(self.sql), {"s": random.uniform(0.0, 0.05)})]

    def translate(self, error: Any) -> None:
        return None


def main() -> None:
    engine = engine_from_env()
    if engine.dialect.name == "sqlite":

        @event.listens_for(engine, "connect")
        def add_sleep(dbapi_connection: Any, _record: Any) -> None:
            dbapi_connection.create_function("sleep_s", 1, lambda s: time.sleep(s) or 0)

    config = make_config(engine)
    mode, start = sys.argv[1], int(sys.argv[2])
    if mode == "steady":
        for seq in range(start, start + int(sys.argv[3])):
            deposit(config, f"acc-{seq % 8}", 1, seq)
            time.sleep(random.uniform(0.0, float(sys.argv[4])))
        return
    config.extra_participants = [PauseBeforeCommit(engine.dialect.name)]
    seq = start
    while True:
        with config.unit_of_work() as uow:
            for n in range(5):
                account = uow.get(Account, f"acc-{n}")
                if account is None:
                    account = uow.add(Account(id=f"acc-{n}", balance=0, version=0))
                account.deposit(1, seq)
            uow.commit()
        seq += 1


if __name__ == "__main__":
    main()

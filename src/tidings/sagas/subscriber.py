"""Running sagas under the relay, with their commands sent through the outbox.

:func:`register_saga` makes a saga one after-commit subscriber (named ``saga.<name>``) of every
event type it routes. The relay delivers each event in a transaction that also moves the
subscriber's checkpoint; the saga's state, its dedup record and its commands are written in that
same transaction, so they commit together or not at all.

:class:`OutboxCommands` is the command sink: each command becomes an outbox row (stream
``saga:<name>:<key>``, so one instance's commands keep their order), caused by the event the saga
handled. Command handlers are ordinary after-commit subscribers of the command types: they get
retries, dead letters and replay like any other subscriber.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import Engine, Table, event, insert
from sqlalchemy.orm import Session

from tidings.core.codec import Codec, default_codec
from tidings.core.dispatch import HandlerContext, Handlers, Timing
from tidings.core.envelope import Envelope, system_clock
from tidings.core.events import spec_of
from tidings.core.ids import uuid7
from tidings.errors import ConfigurationError
from tidings.outbox import tables as outbox_tables
from tidings.outbox.participant import PostCommitNotifier
from tidings.sagas.definition import Saga
from tidings.sagas.sql import CommandSink, SqlSagaStore


class OutboxCommands:
    """A :class:`~tidings.sagas.sql.CommandSink` writing commands as outbox rows."""

    def __init__(
        self,
        *,
        table: Table = outbox_tables.outbox,
        codec: Codec | None = None,
        producer: str | None = None,
        clock: Callable[[], datetime] = system_clock,
    ) -> None:
        self.table = table
        self.codec = codec or default_codec
        self.producer = producer
        self.clock = clock

    def send(
        self,
        session: Session,
        commands: Sequence[object],
        *,
        saga: str,
        key: str,
        cause: Envelope[Any] | None,
    ) -> None:
        now = self.clock()
        rows = []
        for command in commands:
            spec = spec_of(type(command))
            command_id = uuid7()
            envelope: Envelope[Any] = Envelope(
                event=command,
                event_id=command_id,
                event_type=spec.name,
                event_version=spec.version,
                occurred_at=now,
                stream_id=f"saga:{saga}:{key}",
                stream_version=None,
                correlation_id=cause.correlation_id if cause is not None else command_id,
                causation_id=cause.event_id if cause is not None else None,
                producer=self.producer or (cause.producer if cause is not None else None),
            )
            row = outbox_tables.row_from_envelope(envelope, self.codec)
            row["recorded_at"] = now
            rows.append(row)
        if not rows:
            return
        session.execute(insert(self.table), rows)
        bind = session.get_bind()
        if bind.dialect.name == "postgresql":
            # Relays LISTEN for new outbox rows. As for the outbox participant, the NOTIFY goes
            # out after the commit, from the engine's notifier thread: a notifying transaction
            # would take PostgreSQL's cluster-wide notification lock while it commits. If the
            # transaction rolls back, the listener never runs (or a later commit of the same
            # session sends a spurious hint, which costs a relay one empty read).
            engine = bind if isinstance(bind, Engine) else bind.engine
            notifier = PostCommitNotifier.for_engine(engine)
            table = self.table
            event.listen(session, "after_commit", lambda _: notifier.notify_log(table), once=True)


def register_saga(
    handlers: Handlers,
    saga_cls: type[Saga[Any]],
    *,
    sink: CommandSink | None = None,
    clock: Callable[[], datetime] = system_clock,
    name: str | None = None,
) -> str:
    """Subscribe ``saga_cls`` to every event type it routes; returns the subscriber name."""
    subscriber = name or f"saga.{saga_cls.name}"
    store = SqlSagaStore(sink if sink is not None else OutboxCommands(), codec=None)

    def handle(event: object, ctx: HandlerContext) -> None:
        session = getattr(ctx.uow, "session", None)
        if not isinstance(session, Session):
            raise ConfigurationError(
                f"saga {saga_cls.name} needs a SQL unit of work (the relay's); got {ctx.uow!r}"
            )
        store.handle_event(session, saga_cls, ctx.envelope, now=clock())

    handle.__qualname__ = f"saga[{saga_cls.name}]"
    routed = [t for t, route in saga_cls.routes.items() if not route.is_timeout]
    if not routed:
        raise ConfigurationError(f"saga {saga_cls.name} routes no events")
    for message_type in routed:
        handlers.add(message_type, handle, when=Timing.AFTER_COMMIT, name=subscriber)
    return subscriber

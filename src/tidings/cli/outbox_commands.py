"""``tidings db init``, ``tidings relay``, ``tidings dlq ...``, ``tidings status``.

``--url`` is a SQLAlchemy URL (``sqlite:///app.db``, ``postgresql+psycopg://...``), also read
from ``TIDINGS_DATABASE_URL``. ``--app module:attr`` names the application's wiring: a
:class:`tidings.outbox.RelayConfig`, a :class:`tidings.Handlers` (default configuration), or a
callable taking the engine and returning a ``RelayConfig``.
"""

from __future__ import annotations

import logging
import sys
from datetime import UTC, datetime
from typing import Any

import click
from sqlalchemy import MetaData, Table, create_engine
from sqlalchemy.engine import Engine, make_url
from sqlalchemy.exc import ArgumentError, SQLAlchemyError

from tidings.cli.apps import resolve
from tidings.cli.main import apply_gc_tuning, emit, gc_tuning_option
from tidings.cli.signals import StopSignals
from tidings.core.dispatch import Handlers
from tidings.errors import ConfigurationError, TidingsError
from tidings.outbox import (
    DeadLetterError,
    DeadLetters,
    Relay,
    RelayConfig,
    status,
)
from tidings.outbox.deadletters import describe_many
from tidings.persistence.sqlite import sqlite_engine

url_option = click.option(
    "--url",
    envvar="TIDINGS_DATABASE_URL",
    required=True,
    help="SQLAlchemy database URL (or TIDINGS_DATABASE_URL).",
)
app_option = click.option(
    "--app",
    "app_spec",
    metavar="MODULE:ATTR",
    help="The application's RelayConfig, Handlers, or a callable(engine) -> RelayConfig.",
)
json_option = click.option("--json", "as_json", is_flag=True, help="Print JSON.")


def engine_for(url: str) -> Engine:
    """An engine for ``url``; SQLite files get tidings' WAL / BEGIN IMMEDIATE configuration."""
    try:
        parsed = make_url(url)
    except ArgumentError as exc:
        raise click.BadParameter(
            f"not a database URL: {url!r} ({exc})", param_hint="--url"
        ) from exc
    if parsed.get_backend_name() == "sqlite":
        if not parsed.database or parsed.database == ":memory:":
            raise click.BadParameter(
                "an in-memory SQLite database cannot be shared with a relay; give a file path",
                param_hint="--url",
            )
        return sqlite_engine(parsed.database)
    try:
        return create_engine(url)
    except (ArgumentError, ImportError) as exc:
        raise click.BadParameter(f"cannot use {url!r}: {exc}", param_hint="--url") from exc


def load_app(spec: str | None, engine: Engine) -> RelayConfig:
    if not spec:
        raise click.UsageError("this command needs the application: pass --app module:attr")
    target = resolve(spec)
    if isinstance(target, RelayConfig):
        return target
    if isinstance(target, Handlers):
        return RelayConfig(engine, target)
    if callable(target):
        built = target(engine)
        if isinstance(built, RelayConfig):
            return built
        raise click.BadParameter(
            f"{spec} returned {type(built).__name__}, not a RelayConfig", param_hint="--app"
        )
    raise click.BadParameter(
        f"{spec} is a {type(target).__name__}; expected a RelayConfig, a Handlers, or a "
        "callable(engine) -> RelayConfig",
        param_hint="--app",
    )


def _fail(message: str) -> None:
    click.echo(f"error: {message}", err=True)
    sys.exit(1)


log_option = click.option(
    "--log",
    "log_name",
    default="tidings_outbox",
    show_default=True,
    help="The followed log table (e.g. tidings_events when the event store is the outbox).",
)


# -- db --------------------------------------------------------------------------------------


@click.group()
def db() -> None:
    """Database tables of tidings."""


@db.command("init")
@url_option
@click.option(
    "--only",
    default=None,
    help="Comma-separated table sets (outbox, eventstore, sagas, inbox, keys); default: all.",
)
def db_init(url: str, only: str | None) -> None:
    """Create tidings' tables (idempotent): outbox and relay, event store, sagas, inbox, keys."""
    from tidings.persistence.setup import create_tables as create_table_sets

    parts = [part.strip() for part in only.split(",") if part.strip()] if only else None
    engine = engine_for(url)
    try:
        created = create_table_sets(engine, parts)
    except ConfigurationError as exc:
        raise click.BadParameter(str(exc), param_hint="--only") from exc
    except SQLAlchemyError as exc:
        _fail(f"could not create the tables: {exc}")
    finally:
        engine.dispose()
    click.echo(f"tidings tables are ready: {', '.join(created)}")


# -- relay -----------------------------------------------------------------------------------


@click.command("relay")
@url_option
@app_option
@click.option("--node", default=None, help="Name of this relay process (default: random).")
@click.option("--once", is_flag=True, help="Deliver what is due, then exit.")
@click.option("--log-level", default="INFO", show_default=True)
@gc_tuning_option
def relay_command(
    url: str, app_spec: str | None, node: str | None, once: bool, log_level: str, gc_tuning: bool
) -> None:
    """Deliver committed events to after-commit subscribers until interrupted."""
    logging.basicConfig(
        level=log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    engine = engine_for(url)
    config = load_app(app_spec, engine)
    relay = Relay(config, node=node)
    if once:
        relay.run_until_idle()
        relay.leases.release_all()
        waiting = len(relay.follower.pending)
        click.echo(
            "nothing left to deliver"
            + (f" ({waiting} partition(s) wait for a delayed retry)" if waiting else "")
        )
        return

    # The relay runs in a thread of its own while this one waits for SIGTERM or SIGINT: a
    # signal handler must take no lock (see tidings.cli.signals), and stopping a relay does.
    signals = StopSignals()
    signals.install()
    tuned = apply_gc_tuning(gc_tuning)
    click.echo(f"relay {relay.node} following {config.log.name}{tuned}", err=True)
    signals.wait(relay.start())
    relay.stop(timeout=None)  # lets it finish its step and give its leases back


# -- dlq -------------------------------------------------------------------------------------


def _when(value: str | None, name: str) -> datetime | None:
    if value is None:
        return None
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        raise click.BadParameter(f"not an ISO date/time: {value!r}", param_hint=name) from None
    return parsed.replace(tzinfo=UTC) if parsed.tzinfo is None else parsed


@click.group()
def dlq() -> None:
    """Inspect, replay and discard dead letters."""


@dlq.command("list")
@url_option
@click.option("--subscriber", default=None)
@click.option("--event-type", default=None)
@click.option("--stream", default=None)
@click.option("--since", default=None, help="ISO time: dead-lettered at or after.")
@click.option("--until", default=None, help="ISO time: dead-lettered before.")
@click.option("--held", is_flag=True, help="List messages held behind a failed one instead.")
@log_option
@json_option
def dlq_list(
    url: str,
    subscriber: str | None,
    event_type: str | None,
    stream: str | None,
    since: str | None,
    until: str | None,
    held: bool,
    log_name: str,
    as_json: bool,
) -> None:
    """List dead letters (failed ones by default)."""
    letters = DeadLetters(engine_for(url), log_name).find(
        subscriber=subscriber,
        event_type=event_type,
        stream=stream,
        since=_when(since, "--since"),
        until=_when(until, "--until"),
        status="held" if held else "failed",
    )
    emit([letter.summary() for letter in letters], as_json, describe_many(letters))


@dlq.command("show")
@url_option
@click.argument("letter_id", type=int)
@log_option
@json_option
def dlq_show(url: str, letter_id: int, log_name: str, as_json: bool) -> None:
    """Show one dead letter whole: metadata, headers, payload, error and traceback."""
    try:
        letter = DeadLetters(engine_for(url), log_name).get(letter_id)
    except DeadLetterError as exc:
        _fail(str(exc))
        return
    detail = letter.detail()
    human = "\n".join(
        f"{key}: {value}" for key, value in detail.items() if key not in ("traceback",)
    )
    emit(detail, as_json, f"{human}\n\n{detail['traceback'] or ''}")


@dlq.command("replay")
@url_option
@app_option
@click.argument("letter_ids", type=int, nargs=-1, required=True)
@json_option
def dlq_replay(url: str, app_spec: str | None, letter_ids: tuple[int, ...], as_json: bool) -> None:
    """Deliver dead letters again, exactly as stored, to the subscriber they failed for."""
    engine = engine_for(url)
    config = load_app(app_spec, engine)
    store = DeadLetters(engine, config.log)
    results: list[dict[str, Any]] = []
    failed = False
    for letter_id in letter_ids:
        try:
            released = store.replay(config, letter_id)
            results.append({"id": letter_id, "replayed": True, "released": list(released)})
        except (DeadLetterError, TidingsError) as exc:
            failed = True
            results.append({"id": letter_id, "replayed": False, "error": str(exc)})
    human = "\n".join(
        f"{r['id']}: replayed" + (f", released {r['released']}" if r.get("released") else "")
        if r["replayed"]
        else f"{r['id']}: FAILED: {r['error']}"
        for r in results
    )
    emit(results, as_json, human)
    if failed:
        sys.exit(1)


@dlq.command("discard")
@url_option
@app_option
@click.argument("letter_ids", type=int, nargs=-1, required=True)
@json_option
def dlq_discard(url: str, app_spec: str | None, letter_ids: tuple[int, ...], as_json: bool) -> None:
    """Delete dead letters (messages parked behind them are then delivered: needs --app)."""
    engine = engine_for(url)
    config = load_app(app_spec, engine) if app_spec else None
    store = DeadLetters(engine, config.log if config else "tidings_outbox")
    results: list[dict[str, Any]] = []
    failed = False
    for letter_id in letter_ids:
        try:
            released = store.discard(letter_id, config)
            results.append({"id": letter_id, "discarded": True, "released": list(released)})
        except (DeadLetterError, TidingsError) as exc:
            failed = True
            results.append({"id": letter_id, "discarded": False, "error": str(exc)})
    human = "\n".join(
        f"{r['id']}: discarded" if r["discarded"] else f"{r['id']}: FAILED: {r['error']}"
        for r in results
    )
    emit(results, as_json, human)
    if failed:
        sys.exit(1)


# -- status ----------------------------------------------------------------------------------


@click.command("status")
@url_option
@log_option
@json_option
def status_command(url: str, log_name: str, as_json: bool) -> None:
    """Outbox backlog, oldest undelivered age, per-subscriber lag, dead-letter counts."""
    engine = engine_for(url)
    try:
        # Reflected: any followed log (the outbox, an event store's events table) will do.
        log = Table(log_name, MetaData(), autoload_with=engine)
        report = status(engine, log)
    except SQLAlchemyError as exc:
        _fail(f"cannot read the outbox tables (did you run `tidings db init`?): {exc}")
        return
    age = report["oldest_undelivered_age_seconds"]
    lines = [
        f"log {report['log']}: backlog {report['backlog']}, oldest undelivered "
        + (f"{age:.1f}s ago" if age is not None else "-"),
        f"dead letters: {report['dead_letters']} failed, {report['held']} held",
    ]
    for sub in report["subscribers"]:
        lines.append(
            f"  {sub['subscriber']:<40} lag {sub['lag']!s:>8}  checkpoint {sub['checkpoint']}  "
            f"dead letters {sub['dead_letters']}  held {sub['held']}"
        )
        for retry in sub["retrying"]:
            due = retry["due_in_seconds"]
            lines.append(
                f"    partition {retry['partition']}: retrying {retry['event_id']}, attempt "
                f"{retry['next_attempt']} " + (f"in {due:.1f}s" if due > 0 else "due now")
            )
    emit(report, as_json, "\n".join(lines))


COMMANDS: list[click.Command] = [db, relay_command, dlq, status_command]

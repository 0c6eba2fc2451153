"""``tidings events ...`` and ``tidings projections ...``: query the event log, run projections.

``events read`` is the catch-up query clients use: everything after a checkpoint, filtered by
stream, type or stream prefix, one page at a time (the last line, or ``next`` in JSON, is the
checkpoint to pass to ``--from`` next time). ``projections`` needs ``--app module:attr`` naming a
:class:`tidings.eventsourcing.Projections` (or a function returning one).
"""

from __future__ import annotations

import base64
import json
import sys
from datetime import datetime
from typing import Any

import click
from sqlalchemy import Engine, create_engine, make_url

from tidings.cli.apps import resolve
from tidings.errors import TidingsError
from tidings.eventsourcing.projections import Progress, Projections
from tidings.eventsourcing.records import LogEntry
from tidings.eventsourcing.store import EventStore
from tidings.eventsourcing.tables import DEFAULT_PREFIX, EventStoreSchema
from tidings.persistence.log import Checkpoint
from tidings.persistence.sqlite import sqlite_engine


def open_engine(url: str) -> Engine:
    """An engine for ``url``; SQLite files get tidings' settings, bare ``postgresql://`` psycopg."""
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite":
        if not parsed.database or parsed.database == ":memory:":
            raise click.BadParameter(
                "an in-memory SQLite database holds no events", param_hint="--url"
            )
        return sqlite_engine(parsed.database)
    if parsed.drivername == "postgresql":
        parsed = parsed.set(drivername="postgresql+psycopg")
    return create_engine(parsed)


def _payload(entry: LogEntry) -> Any:
    raw = entry.event.payload
    try:
        return json.loads(raw)
    except ValueError:
        return {"base64": base64.b64encode(raw).decode()}


def entry_json(entry: LogEntry) -> dict[str, Any]:
    stored = entry.event
    return {
        "checkpoint": str(entry.checkpoint),
        **{key: _plain(value) for key, value in stored.metadata().items()},
        "headers": stored.headers,
        "payload": _payload(entry),
    }


def _plain(value: Any) -> Any:
    if value is None or isinstance(value, (int, str)):
        return value
    if isinstance(value, datetime):
        return value.isoformat()
    return str(value)


def entry_line(entry: LogEntry) -> str:
    stored = entry.event
    payload = stored.payload.decode("utf-8", "replace")
    if len(payload) > 80:
        payload = payload[:77] + "..."
    return (
        f"{entry.checkpoint!s:>12}  {stored.occurred_at:%Y-%m-%d %H:%M:%S}  "
        f"{stored.stream_id}@{stored.stream_version}  {stored.event_type} v{stored.event_version}  "
        f"{payload}"
    )


def _fail(exc: Exception) -> None:
    raise click.ClickException(str(exc)) from exc


url_option = click.option(
    "--url",
    envvar="TIDINGS_URL",
    required=True,
    help="Database URL (sqlite:///file.db, postgresql://...). Env: TIDINGS_URL.",
)
prefix_option = click.option(
    "--table-prefix", default=DEFAULT_PREFIX, show_default=True, help="Event store table prefix."
)


@click.group()
def events() -> None:
    """Read the event store's log and streams."""


@events.command("read")
@url_option
@prefix_option
@click.option("--stream", "stream_id", default=None, help="Only this stream.")
@click.option("--from", "start", default="0.0", help="Read after this checkpoint (tx.position).")
@click.option("--type", "types", multiple=True, help="Only this event type (repeatable).")
@click.option("--prefix", "stream_prefix", default=None, help="Only streams starting with this.")
@click.option("--limit", default=100, show_default=True, type=click.IntRange(min=1))
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def read_command(
    url: str,
    table_prefix: str,
    stream_id: str | None,
    start: str,
    types: tuple[str, ...],
    stream_prefix: str | None,
    limit: int,
    as_json: bool,
) -> None:
    """Committed events after a checkpoint, in log order (one page)."""
    try:
        checkpoint = Checkpoint.parse(start)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--from") from exc
    store = EventStore(open_engine(url), schema=EventStoreSchema(prefix=table_prefix))
    try:
        page = store.read_log(
            checkpoint,
            limit=limit,
            types=list(types) or None,
            stream_prefix=stream_prefix,
            stream_id=stream_id,
        )
    except TidingsError as exc:
        _fail(exc)
    finally:
        store.engine.dispose()
    if as_json:
        click.echo(
            json.dumps({"events": [entry_json(e) for e in page.entries], "next": str(page.next)})
        )
        return
    for entry in page.entries:
        click.echo(entry_line(entry))
    click.echo(f"next: --from {page.next}", err=True)


@events.command("stream")
@click.argument("stream_id")
@url_option
@prefix_option
@click.option("--from-version", type=click.IntRange(min=1), default=None)
@click.option("--backward", is_flag=True, help="Newest first.")
@click.option("--limit", type=click.IntRange(min=1), default=None)
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def stream_command(
    stream_id: str,
    url: str,
    table_prefix: str,
    from_version: int | None,
    backward: bool,
    limit: int | None,
    as_json: bool,
) -> None:
    """The events of one stream, in version order."""
    store = EventStore(open_engine(url), schema=EventStoreSchema(prefix=table_prefix))
    try:
        entries = store.read_stream(
            stream_id, from_version=from_version, backward=backward, limit=limit
        )
    except TidingsError as exc:
        _fail(exc)
    finally:
        store.engine.dispose()
    if as_json:
        click.echo(json.dumps([entry_json(e) for e in entries]))
        return
    for entry in entries:
        click.echo(entry_line(entry))


def load_app(spec: str) -> Projections:
    """Resolve ``module:attr`` to a :class:`Projections` (calling it if it is a factory)."""
    found = resolve(spec)
    if not isinstance(found, Projections) and callable(found):
        try:
            found = found()
        except Exception as exc:
            raise click.BadParameter(
                f"calling {spec!r} failed: {type(exc).__name__}: {exc}", param_hint="--app"
            ) from exc
    if not isinstance(found, Projections):
        raise click.BadParameter(
            f"{spec!r} is a {type(found).__name__}, not tidings.eventsourcing.Projections",
            param_hint="--app",
        )
    return found


app_option = click.option(
    "--app", "app_spec", required=True, help="module:attr of a Projections object."
)


@click.group()
def projections() -> None:
    """List, inspect and rebuild projections."""


@projections.command("list")
@app_option
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def list_command(app_spec: str, as_json: bool) -> None:
    """Every projection with its generation, checkpoint and lag."""
    app = load_app(app_spec)
    try:
        statuses = [app.runner(name).status() for name in app.names()]
    except TidingsError as exc:
        _fail(exc)
    if as_json:
        click.echo(json.dumps([s.as_dict() for s in statuses]))
        return
    for s in statuses:
        click.echo(
            f"{s.name:<24} generation {s.generation}  at {s.checkpoint}  "
            f"done {s.events_done}  behind {s.behind}"
        )


@projections.command("status")
@click.argument("name")
@app_option
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def status_command(name: str, app_spec: str, as_json: bool) -> None:
    """One projection's generation, checkpoint, events done and lag."""
    app = load_app(app_spec)
    try:
        status = app.runner(name).status()
    except TidingsError as exc:
        _fail(exc)
    if as_json:
        click.echo(json.dumps(status.as_dict()))
        return
    for key, value in status.as_dict().items():
        click.echo(f"{key:>12}: {value}")


class _Bar:
    """A click progress bar opened on the first report, once the total is known."""

    def __init__(self) -> None:
        self.bar: Any = None
        self.shown = 0
        self.last: Progress | None = None

    def __call__(self, report: Progress) -> None:
        self.last = report
        if not sys.stderr.isatty():
            # No terminal to redraw a bar on (CI logs, pipes): one line per report instead.
            click.echo(
                f"rebuilding: {report.done}/{report.total} events, {self._describe()}", err=True
            )
            return
        if self.bar is None:
            self.bar = click.progressbar(
                length=max(report.total, 1),
                label="rebuilding",
                show_eta=True,
                show_pos=True,
                file=sys.stderr,
                item_show_func=lambda _: self._describe(),
            )
            self.bar.__enter__()
        self.bar.update(max(report.done - self.shown, 0), current_item=report)
        self.shown = report.done

    def _describe(self) -> str:
        if self.last is None:
            return ""
        eta = f"{self.last.eta:.1f}s" if self.last.eta is not None else "?"
        return f"{self.last.rate:,.0f} events/s, ETA {eta}"

    def close(self) -> None:
        if self.bar is not None:
            self.bar.__exit__(None, None, None)


@projections.command("rebuild")
@click.argument("name")
@app_option
@click.option("--keep-old", is_flag=True, help="Keep the previous generation's tables.")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON summary at the end.")
def rebuild_command(name: str, app_spec: str, keep_old: bool, as_json: bool) -> None:
    """Rebuild into fresh tables from the start of the log; readers switch when caught up."""
    app = load_app(app_spec)
    bar = _Bar()
    try:
        runner = app.runner(name)
        done = runner.rebuild(bar, keep_old=keep_old)
        status = runner.status()
    except TidingsError as exc:
        _fail(exc)
    finally:
        bar.close()
    elapsed = bar.last.elapsed if bar.last is not None else 0.0
    summary = {
        **status.as_dict(),
        "rebuilt_events": done,
        "seconds": round(elapsed, 3),
        "rate": round(done / elapsed, 1) if elapsed > 0 else None,
    }
    if as_json:
        click.echo(json.dumps(summary))
    else:
        click.echo(
            f"rebuilt {name}: {done} events, now generation {status.generation} "
            f"at {status.checkpoint}"
        )


COMMANDS: list[click.Command] = [events, projections]

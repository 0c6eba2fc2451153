"""``tidings worker`` and ``tidings schema export``: brokers and integration events.

Both take ``--app module:attr``, the application object:

* for ``worker``: a :class:`tidings.brokers.worker.Worker` (or a function returning one, which
  is where the application reads its settings);
* for ``schema export``: anything with ``translators`` (a ``Worker``), a
  :class:`~tidings.integration.translator.Translator`, a list of them, or a function returning
  one of those.
"""

from __future__ import annotations

import asyncio
import json
import signal
from pathlib import Path
from typing import Any

import click

from tidings.cli.apps import resolve
from tidings.cli.main import apply_gc_tuning, emit, gc_tuning_option


def load_app(spec: str) -> Any:
    """Resolve ``module:attr`` (calling it if it is a factory function)."""
    target = resolve(spec)
    if callable(target) and not isinstance(target, type) and not hasattr(target, "translators"):
        from tidings.integration.translator import Translator

        if not isinstance(target, Translator):
            target = target()
    return target


@click.command()
@click.option("--app", "app_spec", required=True, help="module:attr of the Worker to run.")
@gc_tuning_option
def worker(app_spec: str, gc_tuning: bool) -> None:
    """Run the application's broker consumers until SIGINT or SIGTERM."""
    from tidings.brokers.worker import Worker

    app = load_app(app_spec)
    if not isinstance(app, Worker):
        raise click.BadParameter(
            f"{app_spec} is a {type(app).__name__}, not a tidings.brokers.worker.Worker",
            param_hint="--app",
        )
    # Once the application is loaded (its modules, engines and handlers are the start-up heap).
    asyncio.run(_run_worker(app, apply_gc_tuning(gc_tuning)))


async def _run_worker(app: Any, tuned: str) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    click.echo(f"tidings worker: {len(app.subscriptions)} subscription(s){tuned}; Ctrl-C to stop")
    await app.run(stop)
    click.echo("tidings worker: stopped")


def _translators(app: Any) -> list[Any]:
    from tidings.integration.translator import Translator

    if isinstance(app, Translator):
        return [app]
    if hasattr(app, "translators"):
        return list(app.translators)
    if isinstance(app, list | tuple) and all(isinstance(t, Translator) for t in app):
        return list(app)
    raise click.BadParameter(
        f"{type(app).__name__} has no translators: pass a Worker, a Translator or a list of them",
        param_hint="--app",
    )


@click.group()
def schema() -> None:
    """Contracts of the public integration events."""


@schema.command("export")
@click.option("--app", "app_spec", required=True, help="module:attr with the translators.")
@click.option(
    "--out",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="Directory to write the JSON Schema files and asyncapi.json into.",
)
@click.option("--title", default="tidings integration events", help="AsyncAPI document title.")
@click.option("--json", "as_json", is_flag=True, help="Print every document as one JSON object.")
def export(app_spec: str, out: Path | None, title: str, as_json: bool) -> None:
    """Write a JSON Schema per public event version and an AsyncAPI document for the buses."""
    from tidings.integration.schema import export_documents

    if out is None and not as_json:
        raise click.UsageError("give --out DIR, or --json to print the documents")
    translators = _translators(load_app(app_spec))
    documents = export_documents(translators, title=title)
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
        for name, document in documents.items():
            (out / name).write_text(json.dumps(document, indent=2, sort_keys=True) + "\n")
    emit(
        documents,
        as_json,
        "\n".join(f"wrote {out / name}" for name in documents) if out is not None else "",
    )


COMMANDS: list[click.Command] = [worker, schema]

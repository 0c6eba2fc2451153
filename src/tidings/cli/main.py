"""``tidings``: the operator's command line.

Every command has ``--help``; commands whose output is data accept ``--json``. Configuration is
read here and passed down: nothing in the library reads the environment on its own.
"""

from __future__ import annotations

import json
import sys
from typing import Any

import click

import tidings
from tidings.interpreter import tune_collector


def emit(data: Any, as_json: bool, human: str) -> None:
    """Print ``data`` as JSON for scripts, or the human-readable text."""
    if as_json:
        click.echo(json.dumps(data, indent=2, default=str))
    else:
        click.echo(human)


#: For the long-running commands (``relay``, ``worker``): see :mod:`tidings.interpreter`.
gc_tuning_option = click.option(
    "--gc-tuning/--no-gc-tuning",
    default=True,
    show_default=True,
    help="Once started, freeze the start-up heap and raise the young GC threshold.",
)


def apply_gc_tuning(gc_tuning: bool) -> str:
    """Apply ``--gc-tuning`` (call it once the application is loaded); what to add to the
    command's start-up line: ``"; garbage collector tuned: ..."``, or nothing."""
    return f"; {tune_collector().describe()}" if gc_tuning else ""


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(tidings.__version__, prog_name="tidings")
def cli() -> None:
    """tidings: domain events delivered with nothing lost and nothing applied twice."""


@cli.command()
@click.option(
    "--database",
    type=click.Path(dir_okay=False),
    default=None,
    help="SQLite file to use (default: a fresh temporary file).",
)
@click.option("--json", "as_json", is_flag=True, help="Print the timeline as JSON.")
def demo(database: str | None, as_json: bool) -> None:
    """Run the demo scenario on the embedded SQLite default and print its timeline."""
    from tidings._demo import run_demo

    ok = run_demo(database, as_json=as_json)
    if not ok:
        sys.exit(1)


def _register_command_groups() -> None:
    """Attach the command groups that live in their own modules (one family each)."""
    import importlib

    for module_name in _COMMAND_MODULES:
        module = importlib.import_module(module_name)
        for command in module.COMMANDS:
            cli.add_command(command)


#: Modules that export ``COMMANDS: list[click.Command]``; each feature adds its own line.
_COMMAND_MODULES: list[str] = [
    "tidings.cli.outbox_commands",
    "tidings.cli.events_commands",
    "tidings.cli.broker_commands",
    "tidings.cli.bus_commands",
]


def main() -> None:
    _register_command_groups()
    cli(prog_name="tidings")


if __name__ == "__main__":
    main()

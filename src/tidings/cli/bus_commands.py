"""``tidings bus dead-letters``: what a consumer group refused, read from the broker itself.

Messages a consumer could not take (unsigned, forged, tampered, undecodable, or failing past
``max_deliveries``) go to the group's dead-letter destination with the reason in their headers.
This lists them without removing them (RabbitMQ's are fetched unacknowledged and put back;
NATS's and Redis's are read in place), for operators and, with ``--json``, for scripts.
"""

from __future__ import annotations

import asyncio
import base64
from typing import Any
from urllib.parse import urlsplit

import click

from tidings.cli.main import emit


@click.group()
def bus() -> None:
    """Inspect a bus on its broker."""


@bus.command("dead-letters")
@click.option(
    "--broker",
    "url",
    required=True,
    envvar="TIDINGS_BROKER_URL",
    help="Broker URL: amqp://, nats://, redis:// (or $TIDINGS_BROKER_URL).",
)
@click.option("--bus", "bus_name", required=True, help="The bus (topology) name.")
@click.option("--group", required=True, help="The consumer group whose dead letters to list.")
@click.option("--limit", type=click.IntRange(1, 10_000), default=100, show_default=True)
@click.option(
    "--redis-key-prefix",
    default=None,
    help="Redis only: the key prefix the bus was declared under (default: tidings).",
)
@click.option("--json", "as_json", is_flag=True, help="Print them as JSON (bodies in base64).")
def dead_letters(
    url: str, bus_name: str, group: str, limit: int, redis_key_prefix: str | None, as_json: bool
) -> None:
    """List a consumer group's dead letters, oldest first, with why each was refused."""
    from tidings.errors import BrokerError, ConfigurationError

    options = {"key_prefix": redis_key_prefix} if redis_key_prefix is not None else {}
    try:
        letters = asyncio.run(_read(url, bus_name, group, limit, options))
    except (BrokerError, ConfigurationError) as exc:
        raise click.ClickException(str(exc)) from None
    human = "\n".join(_line(letter) for letter in letters) or "no dead letters"
    emit(
        {"bus": bus_name, "group": group, "count": len(letters), "dead_letters": letters},
        as_json,
        human,
    )


async def _read(
    url: str, bus_name: str, group: str, limit: int, options: dict[str, Any]
) -> list[dict[str, Any]]:
    from tidings.brokers.port import (
        DEAD_LETTER_AT,
        DEAD_LETTER_ATTEMPTS,
        DEAD_LETTER_REASON,
        Topology,
    )
    from tidings.brokers.urls import SCHEMES, broker_for
    from tidings.brokers.wire import HEADERS
    from tidings.errors import ConfigurationError

    if options and SCHEMES.get(urlsplit(url).scheme.lower()) != "redis":
        raise ConfigurationError("--redis-key-prefix is for a redis:// broker only")
    # Where dead letters live depends on the bus's and the group's names only: the partition
    # count given here changes nothing, and nothing is declared.
    broker = broker_for(url, Topology(name=bus_name, groups=(group,)), **options)
    await broker.connect()
    try:
        found = await broker.dead_letters(group, limit)
    finally:
        await broker.close()
    return [
        {
            "broker_id": letter.broker_id,
            "event_type": letter.headers.get(HEADERS["event_type"]),
            "event_id": letter.headers.get(HEADERS["event_id"]),
            "stream_id": letter.headers.get(HEADERS["stream_id"]),
            "reason": letter.headers.get(DEAD_LETTER_REASON),
            "attempts": letter.headers.get(DEAD_LETTER_ATTEMPTS),
            "dead_lettered_at": letter.headers.get(DEAD_LETTER_AT),
            "headers": dict(letter.headers),
            "body_bytes": len(letter.body),
            "body_base64": base64.b64encode(letter.body).decode("ascii"),
        }
        for letter in found
    ]


def _line(letter: dict[str, Any]) -> str:
    what = letter["event_type"] or "(no event type)"
    if letter["event_id"]:
        what += f" {letter['event_id']}"
    when = letter["dead_lettered_at"] or "?"
    head = f"{letter['broker_id']}  {when}  {what}  {letter['body_bytes']} bytes"
    return f"{head}\n    {letter['reason'] or '(no reason given)'}"


COMMANDS: list[click.Command] = [bus]

"""JetStream publish acknowledgements, gathered per batch on one reply subscription.

A JetStream ``PubAck`` is only a reply to the reply subject a message was published with. nats-py's
``publish_async`` spends, for every message, a future, a semaphore wait wrapped in ``wait_for``
(a task and a timer), a random token and a JSON-decoded ``PubAck`` object: at relay rates that
was most of the publishing thread's CPU per message. :class:`PublishAcks` does the same work
with less: one wildcard subscription on a private inbox per connection, whose messages the
client hands over as it reads them, reply subjects numbered ``<inbox>.<n>``, a batch written as
one block of commands (``Client.publish_many``), and one future per *batch*, resolved when the
last of its acknowledgements has arrived or failed by the first refusal. Every message still
waits for its own acknowledgement.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import msgspec

from tidings.errors import PublishNotConfirmed

if TYPE_CHECKING:
    from tidings.brokers.nats_client import Client, HeaderBlock

#: The status JetStream answers with when no stream listens on the subject.
NO_RESPONDERS = "503"


class _Batch:
    """The acknowledgements one ``publish()`` call still waits for."""

    __slots__ = ("done", "waiting")

    def __init__(self, waiting: int) -> None:
        self.waiting = waiting
        self.done: asyncio.Future[None] = asyncio.get_running_loop().create_future()


class PublishAcks:
    """Publishes batches on the adapter's nats-py client (:mod:`~tidings.brokers.nats_client`)
    and waits until JetStream acknowledged each message."""

    def __init__(self, client: Client, confirm_timeout: float) -> None:
        self._client = client
        self.confirm_timeout = confirm_timeout
        self._prefix: str | None = None
        self._next = 0
        #: Reply subject -> the batch waiting for that acknowledgement.
        self._waiting: dict[str, _Batch] = {}

    async def _reply_prefix(self) -> str:
        if self._prefix is None:
            inbox = self._client.new_inbox()
            # nats-py subscribes again by itself after a reconnection. Each acknowledgement is
            # handed over as the client reads it.
            await self._client.subscribe_direct(f"{inbox}.*", self._received)
            self._prefix = f"{inbox}."
        return self._prefix

    async def publish(self, outgoing: Sequence[tuple[str, bytes, HeaderBlock]]) -> None:
        """Send ``(subject, payload, headers)`` messages; return once all are acknowledged.

        Raises :class:`PublishNotConfirmed` at the first refusal, :class:`TimeoutError` when an
        acknowledgement does not come within ``confirm_timeout`` (a lost connection, a stalled
        server).
        """
        if not outgoing:
            return
        prefix = await self._reply_prefix()
        batch = _Batch(len(outgoing))
        replies: list[str] = []
        try:
            sending = []
            for subject, payload, headers in outgoing:
                self._next += 1
                reply = f"{prefix}{self._next}"
                self._waiting[reply] = batch
                replies.append(reply)
                sending.append((subject, reply, payload, headers))
            await self._client.publish_many(sending)  # the batch in one write
            await asyncio.wait_for(batch.done, self.confirm_timeout)
        finally:
            waiting = self._waiting
            for reply in replies:
                waiting.pop(reply, None)

    def _received(self, message: Any) -> None:
        batch = self._waiting.pop(message.subject, None)
        if batch is None or batch.done.done():
            return  # a batch that already failed or gave up
        refusal = refusal_of(message.data, message.headers)
        if refusal is not None:
            batch.done.set_exception(PublishNotConfirmed(refusal))
            return
        batch.waiting -= 1
        if batch.waiting == 0:
            batch.done.set_result(None)


def refusal_of(data: bytes, headers: dict[str, str] | None) -> str | None:
    """Why a reply to a publication is not an acknowledgement, or None if it is one.

    An acknowledgement is ``{"stream": ..., "seq": ...}``; a refusal carries an ``error`` object,
    or is an empty status message (503: no stream on the subject).
    """
    if not data:
        status = (headers or {}).get("Status", "")
        if status == NO_RESPONDERS:
            return "no JetStream stream took the message"
        return f"JetStream replied with status {status or '(none)'} instead of an acknowledgement"
    if b'"error"' not in data and b'"stream"' in data:
        return None  # the common case, read without decoding
    try:
        reply = msgspec.json.decode(data)
    except msgspec.DecodeError:
        return f"JetStream replied with something unreadable: {data[:200]!r}"
    error = reply.get("error") if isinstance(reply, dict) else None
    if error is None and isinstance(reply, dict) and "stream" in reply:
        return None
    if isinstance(error, dict):
        return f"JetStream error {error.get('code')}: {error.get('description', '')}"
    return f"JetStream replied with something else than an acknowledgement: {data[:200]!r}"

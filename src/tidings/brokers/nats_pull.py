"""JetStream pull requests for one durable consumer, answered on a subscription of its own.

nats-py's ``PullSubscription.fetch`` takes each message of a batch with ``next_msg``, which makes a
task, a ``wait_for`` timer and a random UUID per message: in ``bench/brokers.py`` that was about
an eighth of the NATS consumer's CPU per event. :class:`Puller` makes the same requests on the
JetStream API (``$JS.API.CONSUMER.MSG.NEXT.<stream>.<consumer>``, replies to a private inbox) and
collects the answers in a callback, which costs a list append per message, called as the
adapter's client (:class:`~tidings.brokers.nats_client.Client`) reads each answer
(``subscribe_direct``), without nats-py's queue between them.

A fetch asks for whatever the consumer has *now* (``no_wait``: the server sends up to ``batch``
messages, then a status saying there are no more). Only when that brings nothing does it wait, up
to ``wait`` seconds, for the next single message, so a quiet partition is answered at once
instead of after the batch fills; the following fetch then takes everything that came meanwhile.

JetStream's answers are told apart by their reply subject: a delivery carries ``$JS.ACK...``
(which acknowledging needs), a status (404 no messages, 408 request expired, 409 refused) carries
none. A header named ``Status`` on a published message therefore cannot end a request early.

Deliveries come in the consumer's order (JetStream numbers them 1, 2, 3, ...) and stay in that
order, including answers to a request that was given up, which the next fetch returns first.
The caller checks the numbers (a gap is a delivery lost in transit); when it hands later ones
back to wait for a lost one, it calls :meth:`Puller.restart`, which answers on a new inbox from
then on.
"""

from __future__ import annotations

import asyncio
from typing import Any

import msgspec

from tidings.errors import BrokerError

#: Statuses that end a pull request normally: nothing (more) to deliver, the request expired.
_NORMAL_END = frozenset({"404", "408"})
#: An idle heartbeat (only sent when asked for): not the end of anything.
_HEARTBEAT = "100"
#: Added to a lingering request's expiry when waiting for its last answer: the server's status
#: saying it expired must have time to arrive before the fetch gives up on it.
REPLY_MARGIN = 0.5


class Puller:
    """Fetches batches from the durable consumer ``durable`` of ``stream`` (see the module doc)."""

    def __init__(self, client: Any, stream: str, durable: str, batch: int) -> None:
        self._client = client
        self.batch = batch
        self._next_subject = f"$JS.API.CONSUMER.MSG.NEXT.{stream}.{durable}"
        self._no_wait = msgspec.json.encode({"batch": batch, "no_wait": True})
        self._inbox = ""
        self._subscription: Any = None
        #: Deliveries received and not yet fetched (a late answer to an abandoned request too).
        self._received: list[Any] = []
        #: The request in flight: how many deliveries it may still bring, and its end.
        self._expecting = 0
        self._ended: asyncio.Future[None] | None = None
        #: The last refusal (a 409 status ...) since a fetch last returned.
        self._refused: str | None = None

    async def start(self) -> None:
        if self._subscription is None:
            self._inbox = self._client.new_inbox()
            # nats-py subscribes again by itself after a reconnection.
            self._subscription = await self._client.subscribe_direct(self._inbox, self._arrived)

    async def stop(self) -> None:
        subscription, self._subscription = self._subscription, None
        if subscription is not None:
            await subscription.unsubscribe()

    async def restart(self) -> list[Any]:
        """Answer on a new inbox from now on; return what was received and not fetched.

        A request sent while the connection was down goes out when it comes back, so one may
        still be open at the server after the fetch that sent it gave up. Whatever it brings to
        the old inbox is dropped (JetStream redelivers it after ``ack_wait``), so that no
        delivery made before the restart is taken for one made after it.
        """
        received, self._received = self._received, []
        self._end()
        await self.stop()
        await self.start()
        return received

    async def fetch(self, wait: float) -> list[Any]:
        """The deliveries available now (up to ``batch``); if none, the first to come within
        ``wait`` seconds; an empty list if nothing came (or the server did not answer).
        Raises :class:`BrokerError` when nothing came and the server refused a request."""
        if not self._received:
            answered = await self._request(self._no_wait, self.batch, wait)
            if answered and not self._received:
                lingering = msgspec.json.encode({"batch": 1, "expires": int(wait * 1e9)})
                await self._request(lingering, 1, wait + REPLY_MARGIN)
        taken, self._received = self._received, []
        if not taken and self._refused is not None:
            # Asking again at once would be refused again (a deleted consumer, say): the caller
            # logs this and waits before the next fetch.
            refused, self._refused = self._refused, None
            raise BrokerError(f"{self._next_subject}: pull request refused: {refused}")
        return taken

    async def _request(self, body: bytes, expecting: int, wait: float) -> bool:
        """Send one pull request; return once it ended, or False if no answer came in time
        (no such consumer, or the connection is down: the caller asks again later)."""
        ended = asyncio.get_running_loop().create_future()
        self._expecting, self._ended = expecting, ended
        try:
            await self._client.publish(self._next_subject, body, reply=self._inbox)
            await asyncio.wait_for(ended, wait)
        except TimeoutError:
            return False
        finally:
            self._ended = None
        return True

    def _arrived(self, message: Any) -> None:
        if message.reply:
            self._received.append(message)
            self._expecting -= 1
            if self._expecting <= 0:
                self._end()
            return
        status = (message.headers or {}).get("Status", "")
        if status == _HEARTBEAT:
            return
        if status not in _NORMAL_END:
            description = (message.headers or {}).get("Description", "")
            self._refused = f"{status} {description}".strip()
        self._end()

    def _end(self) -> None:
        if self._ended is not None and not self._ended.done():
            self._ended.set_result(None)

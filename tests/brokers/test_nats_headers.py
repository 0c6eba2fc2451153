"""NATS: the adapter's client writes and reads headers as nats-py does, and really uses both.

The adapter's nats-py client (:mod:`tidings.brokers.nats_client`) reads message headers with
:func:`~tidings.brokers.nats_client.parse_header_lines` and sends blocks made by
:func:`~tidings.brokers.nats_client.header_block`, through two private hooks of nats-py. These
tests pin both halves: the results are nats-py's own, byte for byte, on ordinary and hostile
headers, and the pinned nats-py still goes through the hooks (if an upgrade renames one, this
test says so).
"""

from __future__ import annotations

from typing import Any

import pytest

pytest.importorskip("nats")

import nats.errors
from nats.aio.client import Client as NatsPyClient
from nats.aio.msg import Msg

from tidings.brokers.nats_client import (
    Client,
    HeaderBlock,
    JetStreamNumbers,
    TextHeaders,
    header_block,
    jetstream_numbers,
    parse_header_lines,
)

BLOCKS = [
    b"tidings-event-id: 6f1c\r\ntidings-stream-id: order-7\r\ntraceparent: 00-ab-cd-01\r\n\r\n",
    b"Name:Value\r\nTabbed:\tvalue\t\r\n",  # no space after the colon, tabs around the value
    b"Colon-In-Value: a:b:c\r\nEmpty:\r\n",
    b"caf\xc3\xa9: named in UTF-8\r\nok: yes\r\n",  # a non-ASCII name is skipped
    b"\xff\xfe: bad bytes in a name\r\nok: yes\r\n",
    b"has space: inside the name\r\nok: yes\r\n",  # inner whitespace: skipped
    b"value: bad \xff bytes\r\n",  # replaced, not raised
    b"value: \xe2\x82\r\nnext: after a truncated sequence\r\n",
    b"no colon at all\r\n\r\n\r\nx: 1",
    b"dup: first\r\ndup: second\r\n",
    b"  padded  :  both sides  \r\n",
    b"nbsp: kept\xc2\xa0\r\nfs: \x1ckept\r\n",  # only ASCII whitespace is stripped
    b"",
]

HEADERS = [
    {"tidings-event-id": "6f1c", "tidings-stream-id": "order-7", "Nats-Msg-Id": "6f1c"},
    {"  padded ": "  both sides\t", "x": ""},  # stripped, as nats-py does
    {"": "an empty name is left out", "   ": "so is a blank one", "ok": "yes"},
    {"multi-line": "one\r\ntwo\nthree\rfour", "unicode": "caf\u00e9 \u2603"},
    {"tidings-event-type": "orders.Placed", "traceparent": "00-" + "a" * 32 + "-" + "b" * 16},
    {},
]


@pytest.mark.parametrize("block", BLOCKS)
def test_reads_a_header_block_as_nats_py_does(block: bytes) -> None:
    parsed = parse_header_lines(block)
    assert parsed == NatsPyClient._parse_header_lines(block)
    # Marked as text, so the adapter takes the dict as it is (no second pass over it).
    assert type(parsed) is TextHeaders
    assert all(type(k) is str and type(v) is str for k, v in parsed.items())


async def test_the_adapters_client_parses_headers_with_it(monkeypatch: pytest.MonkeyPatch) -> None:
    assert "_parse_header_lines" in vars(NatsPyClient), "nats-py no longer has the hook we override"
    assert Client._parse_header_lines is parse_header_lines
    seen: list[bytes] = []

    def spy(raw: bytes) -> dict[str, str]:
        seen.append(raw)
        return parse_header_lines(raw)

    monkeypatch.setattr(Client, "_parse_header_lines", staticmethod(spy))
    block = b"NATS/1.0\r\ntidings-event-type: orders.Placed\r\nbad name: x\r\n\r\n"
    assert await Client()._process_headers(block) == {"tidings-event-type": "orders.Placed"}
    assert seen == [b"tidings-event-type: orders.Placed\r\nbad name: x\r\n\r\n"]


async def sent_by(client: Client, headers: Any) -> list[bytes]:
    """The protocol commands one publication with ``headers`` hands to the connection."""
    sent: list[bytes] = []

    async def capture(command: bytes, priority: bool = False) -> None:
        sent.append(command)

    client._send_command = capture  # type: ignore[method-assign]
    await client._send_publish("orders.p.3", "_INBOX.x.1", b"{}", 2, headers)
    return sent


@pytest.mark.parametrize("headers", HEADERS)
async def test_writes_the_command_nats_py_writes(headers: dict[str, str]) -> None:
    assert "_send_publish" in vars(NatsPyClient), "nats-py no longer has the hook we override"
    ours, theirs = Client(), Client()
    assert await sent_by(ours, header_block(headers)) == await sent_by(theirs, headers)
    assert ours.stats["out_msgs"] == theirs.stats["out_msgs"] == 1
    assert ours.stats["out_bytes"] == theirs.stats["out_bytes"] == 2


@pytest.mark.parametrize("name", ["has space", "colon:", "caf\u00e9", "new\nline", "a\tb"])
def test_refuses_a_header_name_nats_py_refuses(name: str) -> None:
    with pytest.raises(nats.errors.BadHeaderError):
        header_block({"ok": "1", name: "value"})


def test_a_refused_name_is_refused_every_time() -> None:
    # A name that failed once is not remembered as checked.
    for _ in range(2):
        with pytest.raises(nats.errors.BadHeaderError):
            header_block({"bad name": "x"})


async def test_a_plain_dict_still_goes_through_nats_py() -> None:
    sent = await sent_by(Client(), {"a": "1"})
    assert sent == [b"HPUB orders.p.3 _INBOX.x.1 18 20\r\nNATS/1.0\r\na: 1\r\n\r\n{}\r\n"]
    assert isinstance(header_block({"a": "1"}), HeaderBlock)


def test_a_delivery_takes_text_headers_as_they_are_and_normalizes_others() -> None:
    from types import SimpleNamespace

    from tidings.brokers.nats import _delivery

    numbers = JetStreamNumbers(delivered=2, stream=41, consumer=7)
    text = parse_header_lines(b"a: 1\r\n")
    ours = _delivery(SimpleNamespace(data=b"x", headers=text), numbers, 3)
    assert ours.headers is text  # no copy made
    # nats-py's own reading (fast_mail_parser installed) or anything else: made str -> str.
    other = SimpleNamespace(data=None, headers={b"a": b"1", "n": 5})
    theirs = _delivery(other, numbers, 3)
    assert theirs.headers == {"a": "1", "n": "5"} and theirs.body == b""
    assert (theirs.partition, theirs.attempt, theirs.broker_id) == (3, 2, "41")
    assert _delivery(SimpleNamespace(data=b"", headers=None), numbers, 0).headers == {}


@pytest.mark.parametrize(
    "reply",
    [
        "$JS.ACK.orders.g-0.3.1041.77.1765072531246028000.12",
        "$JS.ACK.hub.ACCHASH.orders.g-0.3.1041.77.1765072531246028000.12.r4nd0m",
        "$JS.ACK.hub.ACCHASH.orders.g-0.1.5.5.1765072531246028000.0",  # 11 tokens
    ],
)
def test_jetstream_numbers_read_what_nats_py_metadata_reads(reply: str) -> None:
    metadata = Msg(_client=None, reply=reply).metadata  # type: ignore[arg-type]
    numbers = jetstream_numbers(reply)
    assert numbers == (
        metadata.num_delivered,
        metadata.sequence.stream,
        metadata.sequence.consumer,
    )


@pytest.mark.parametrize(
    "reply", ["", "_INBOX.x.1", "$JS.ACK.orders", "$JS.NAK.a.b.1.2.3.4.5", "JS.ACK.a.b.1.2.3.4.5"]
)
def test_jetstream_numbers_refuse_what_nats_py_metadata_refuses(reply: str) -> None:
    with pytest.raises(nats.errors.NotJSMessageError):
        Msg(_client=None, reply=reply).metadata  # type: ignore[arg-type]  # noqa: B018
    with pytest.raises(nats.errors.NotJSMessageError):
        jetstream_numbers(reply)


async def test_publish_many_writes_what_publish_writes_for_each_in_one_block() -> None:
    messages = [
        (f"orders.p.{n}", f"_INBOX.x.{n}", b"{}" * n, header_block({"n": str(n)}))
        for n in range(1, 4)
    ]
    one_by_one: list[bytes] = []
    theirs = Client()
    for subject, reply, payload, headers in messages:
        theirs._send_command = capture_into(one_by_one)  # type: ignore[method-assign]
        # As a client knows them once connected (this one never connects: it buffers).
        theirs._max_payload = theirs._max_pending_size = 1 << 20
        await theirs.publish(subject, payload, reply=reply, headers=headers)
    blocks: list[bytes] = []
    ours = Client()
    ours._send_command = capture_into(blocks)  # type: ignore[method-assign]
    ours._max_payload = ours._max_pending_size = 1 << 20
    await ours.publish_many(messages)
    assert blocks == [b"".join(one_by_one)]
    assert ours.stats["out_msgs"] == theirs.stats["out_msgs"] == 3
    assert ours.stats["out_bytes"] == theirs.stats["out_bytes"] == 12


@pytest.mark.parametrize(
    ("subject", "reply", "payload", "error"),
    [
        ("", "_INBOX.x.1", b"{}", nats.errors.BadSubjectError),
        ("orders.p 1", "_INBOX.x.1", b"{}", nats.errors.BadSubjectError),
        ("orders.p.1", "_INBOX.x.1\r\nPUB evil 0", b"{}", nats.errors.BadSubjectError),
        ("orders.p.1", "_INBOX.x.1", b"x" * 101, nats.errors.MaxPayloadError),
    ],
)
async def test_publish_many_sends_nothing_when_one_message_is_refused(
    subject: str, reply: str, payload: bytes, error: type[Exception]
) -> None:
    sent: list[bytes] = []
    client = Client()
    client._send_command = capture_into(sent)  # type: ignore[method-assign]
    client._max_payload, client._max_pending_size = 100, 1 << 20
    fine = ("orders.p.0", "_INBOX.x.0", b"{}", header_block({"n": "0"}))
    with pytest.raises(error):
        await client.publish_many([fine, (subject, reply, payload, header_block({"n": "1"}))])
    assert sent == [] and client.stats["out_msgs"] == 0


def capture_into(sent: list[bytes]) -> Any:
    async def capture(command: bytes, priority: bool = False) -> None:
        sent.append(command)

    return capture

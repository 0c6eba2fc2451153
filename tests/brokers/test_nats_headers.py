"""NATS: the adapter's header parser reads what nats-py's reads, and the client really uses it.

The adapter's nats-py client parses message headers with
:func:`tidings.brokers.nats.parse_header_lines` (a faster reading of the same format) through a
private hook of nats-py. These tests pin both halves: the result is nats-py's own on ordinary and
hostile header blocks, and the pinned nats-py still calls the hook (if an upgrade renames it,
the adapter keeps working at the old speed, and this test says so).
"""

from __future__ import annotations

import pytest

pytest.importorskip("nats")

from nats.aio.client import Client

from tidings.brokers.nats import _Client, parse_header_lines

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


@pytest.mark.parametrize("block", BLOCKS)
def test_reads_a_header_block_as_nats_py_does(block: bytes) -> None:
    assert parse_header_lines(block) == Client._parse_header_lines(block)


async def test_the_adapters_client_parses_headers_with_it(monkeypatch: pytest.MonkeyPatch) -> None:
    assert "_parse_header_lines" in vars(Client), "nats-py no longer has the hook we override"
    assert _Client._parse_header_lines is parse_header_lines
    seen: list[bytes] = []

    def spy(raw: bytes) -> dict[str, str]:
        seen.append(raw)
        return parse_header_lines(raw)

    monkeypatch.setattr(_Client, "_parse_header_lines", staticmethod(spy))
    block = b"NATS/1.0\r\ntidings-event-type: orders.Placed\r\nbad name: x\r\n\r\n"
    assert await _Client()._process_headers(block) == {"tidings-event-type": "orders.Placed"}
    assert seen == [b"tidings-event-type: orders.Placed\r\nbad name: x\r\n\r\n"]

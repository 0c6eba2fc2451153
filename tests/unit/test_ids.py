"""Ids: the random bits behind UUIDv7 (from os.urandom, in blocks, never handed out twice), and
the fast forms of the standard library's UUID construction, text and parsing."""

from __future__ import annotations

import os
import pickle
import threading
import uuid

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tidings.core import ids
from tidings.core.ids import (
    name_uuid,
    parse_uuid,
    random_bytes,
    uuid7,
    uuid_from_int,
    uuid_text,
)


def test_random_bytes_gives_the_length_asked_for() -> None:
    assert [len(random_bytes(n)) for n in (1, 8, 12, 500, 4096, 10_000)] == [
        1,
        8,
        12,
        500,
        4096,
        10_000,
    ]


def test_a_negative_count_is_an_error() -> None:
    with pytest.raises(ValueError, match="negative"):
        random_bytes(-1)


def test_no_bytes_are_handed_out_twice_across_blocks() -> None:
    chunks = [random_bytes(8) for _ in range(3000)]  # several 4 KiB blocks
    assert len(set(chunks)) == len(chunks)


def test_ids_call_the_operating_system_once_per_block_not_once_per_id(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Each os.urandom call releases the GIL; per id, that cost a wait for it under load.
    calls: list[int] = []
    real = os.urandom

    def counting(count: int) -> bytes:
        calls.append(count)
        return real(count)

    monkeypatch.setattr(ids.os, "urandom", counting)
    made = {uuid7() for _ in range(2000)}
    assert len(made) == 2000
    assert 1 <= len(calls) <= 2000 * 8 // 4096 + 1


def test_ids_made_by_concurrent_threads_are_all_distinct() -> None:
    made: list[list[object]] = [[] for _ in range(4)]

    def make(into: list[object]) -> None:
        into.extend(uuid7() for _ in range(5000))

    threads = [threading.Thread(target=make, args=(into,)) for into in made]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    every = [value for into in made for value in into]
    assert len(set(every)) == len(every) == 20_000


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
def test_a_forked_child_does_not_repeat_its_parents_bytes() -> None:
    random_bytes(8)  # the parent holds a partly used block
    reader, writer = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: send what it would hand out next, and leave at once
        try:
            os.write(writer, random_bytes(8))
        finally:
            os._exit(0)
    os.close(writer)
    child = os.read(reader, 8)
    os.close(reader)
    os.waitpid(pid, 0)
    assert len(child) == 8
    assert child != random_bytes(8)


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
def test_a_child_forked_while_the_lock_was_held_still_makes_ids() -> None:
    import select
    import signal

    reader, writer = os.pipe()
    with ids._lock:  # as if another thread were making an id at the moment of the fork
        pid = os.fork()
        if pid == 0:
            try:
                uuid7()
                os.write(writer, b"ok")
            finally:
                os._exit(0)
    os.close(writer)
    ready, _, _ = select.select([reader], [], [], 10)
    if not ready:
        os.kill(pid, signal.SIGKILL)
    answer = os.read(reader, 2) if ready else b""
    os.close(reader)
    os.waitpid(pid, 0)
    assert answer == b"ok", "the child deadlocked on the lock it inherited"


@given(namespace=st.uuids(), name=st.text(max_size=200))
def test_name_uuid_is_the_standard_uuid5(namespace: uuid.UUID, name: str) -> None:
    # Derived integration event ids travel between services: the value must be uuid5's exactly.
    assert name_uuid(namespace, name) == uuid.uuid5(namespace, name)
    assert name_uuid(namespace, name).version == 5


@given(value=st.integers(min_value=0, max_value=2**128 - 1))
def test_uuid_from_int_is_the_standard_construction(value: int) -> None:
    made, standard = uuid_from_int(value), uuid.UUID(int=value)
    assert type(made) is uuid.UUID
    assert made == standard and hash(made) == hash(standard)
    assert (made.bytes, made.is_safe, repr(made)) == (
        standard.bytes,
        standard.is_safe,
        repr(standard),
    )
    assert pickle.loads(pickle.dumps(made)) == standard
    with pytest.raises(TypeError):
        made.int = 0  # type: ignore[misc]  # as immutable as any UUID


@given(value=st.uuids())
def test_uuid_text_is_str(value: uuid.UUID) -> None:
    assert uuid_text(value) == str(value)


@given(value=st.uuids())
def test_parse_uuid_reads_what_str_writes_and_32_hex_digits(value: uuid.UUID) -> None:
    for text in (str(value), str(value).upper(), value.hex):
        parsed = parse_uuid(text)
        assert parsed == value and type(parsed) is uuid.UUID


@pytest.mark.parametrize(
    "text",
    [
        "{12345678-1234-5678-1234-567812345678}",
        "urn:uuid:12345678-1234-5678-1234-567812345678",
        # uuid.UUID() reads these two as 02345678-... and 01234567-...: int() takes a leading
        # space and an underscore between digits.
        " 2345678-1234-5678-1234-567812345678",
        "1234567_-1234-5678-1234-567812345678",
        "12345678-1234-5678-1234-5678123456789",
        "12345678-1234-5678-1234-56781234567g",
        "",
    ],
)
def test_parse_uuid_refuses_anything_else(text: str) -> None:
    with pytest.raises(ValueError, match="not a UUID"):
        parse_uuid(text)


def test_parse_uuid_takes_text_only() -> None:
    with pytest.raises(ValueError, match="as text, not bytes"):
        parse_uuid(b"12345678123456781234567812345678")  # type: ignore[arg-type]

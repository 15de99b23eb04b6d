"""Cutting TCP/TLS byte streams into SIP messages: RFC 3261 18.3 framing and RFC 5626 pings."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from warmtransfer.sip.framing import PING, FramingError, StreamFramer
from warmtransfer.sip.message import ParseLimits, parse_message


def message(body: bytes = b"", *, length: str | None = None, compact: bool = False) -> bytes:
    name = "l" if compact else "Content-Length"
    declared = str(len(body)) if length is None else length
    head = (
        "OPTIONS sip:wt@127.0.0.1 SIP/2.0\r\n"
        "Via: SIP/2.0/TCP 127.0.0.1:5070;branch=z9hG4bK-1\r\n"
        "From: <sip:a@127.0.0.1>;tag=1\r\nTo: <sip:wt@127.0.0.1>\r\n"
        "Call-ID: frame-1\r\nCSeq: 1 OPTIONS\r\n"
        f"{name}: {declared}\r\n\r\n"
    )
    return head.encode() + body


def test_messages_split_anywhere_come_out_whole_and_in_order() -> None:
    first, second = message(b"v=0\r\n"), message(b"")
    stream = first + second
    for cut in range(1, len(stream)):
        framer = StreamFramer()
        out = framer.feed(stream[:cut]) + framer.feed(stream[cut:])
        assert out == [first, second], cut
        assert framer.pending == 0


@given(st.lists(st.integers(min_value=1, max_value=40), min_size=1, max_size=30))
def test_any_chunking_gives_the_same_messages(sizes: list[int]) -> None:
    stream = message(b"hello") + b"\r\n\r\n" + message(b"a" * 100, compact=True)
    framer = StreamFramer()
    out: list[object] = []
    position = 0
    for size in sizes:
        out += framer.feed(stream[position : position + size])
        position += size
    out += framer.feed(stream[position:])
    assert out == [message(b"hello"), PING, message(b"a" * 100, compact=True)]
    assert parse_message(out[2]).body == b"a" * 100  # type: ignore[arg-type]


def test_double_crlf_is_a_ping_and_a_single_crlf_is_dropped() -> None:
    framer = StreamFramer()
    assert framer.feed(b"\r\n\r\n") == [PING]
    assert framer.feed(b"\r\n") == []  # maybe half a ping: kept
    assert framer.feed(message()) == [message()]  # it was a pong before a message
    assert framer.pending == 0


def test_a_message_without_content_length_cannot_be_framed() -> None:
    data = message().replace(b"Content-Length: 0\r\n", b"")
    with pytest.raises(FramingError, match="must carry Content-Length"):
        StreamFramer().feed(data)


@pytest.mark.parametrize("value", ["-1", "ten", "99999999999"])
def test_a_content_length_that_is_not_a_number_is_refused(value: str) -> None:
    with pytest.raises(FramingError, match="not a non-negative number"):
        StreamFramer().feed(message(length=value))


def test_two_different_content_lengths_are_refused() -> None:
    data = message().replace(b"\r\n\r\n", b"\r\nl: 5\r\n\r\n")
    with pytest.raises(FramingError, match="different values"):
        StreamFramer().feed(data)


def test_an_announced_body_over_the_limit_is_refused_before_it_arrives() -> None:
    framer = StreamFramer(ParseLimits(max_body=100))
    with pytest.raises(FramingError, match="over the 100 byte limit"):
        framer.feed(message(length="101"))


def test_a_header_section_that_never_ends_is_refused_at_the_message_cap() -> None:
    framer = StreamFramer(ParseLimits(max_message=2000))
    framer.feed(b"OPTIONS sip:wt@127.0.0.1 SIP/2.0\r\n")
    filler = b"X-Filler: " + b"x" * 50 + b"\r\n"
    for _ in range((2000 - 34) // len(filler)):
        assert framer.feed(filler) == []  # under the cap: waits for the rest
    with pytest.raises(FramingError, match="no end of the header section"):
        framer.feed(filler)


def test_a_message_is_not_delivered_until_its_body_is_complete() -> None:
    framer = StreamFramer()
    data = message(b"0123456789")
    assert framer.feed(data[:-1]) == []
    assert framer.feed(data[-1:]) == [data]

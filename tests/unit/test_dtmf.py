from __future__ import annotations

import re

import pytest
from hypothesis import given
from hypothesis import strategies as st

from warmtransfer.media.dtmf import (
    DIGITS,
    DtmfReceiver,
    Pause,
    ToneEvent,
    decode_event,
    digit_to_event,
    encode_event,
    event_to_digit,
    parse_digit_string,
    tone_packets,
)


def test_event_codes_follow_rfc_4733() -> None:
    assert [digit_to_event(d) for d in "0123456789"] == list(range(10))
    assert digit_to_event("*") == 10
    assert digit_to_event("#") == 11
    assert [digit_to_event(d) for d in "ABCD"] == [12, 13, 14, 15]
    assert digit_to_event("d") == 15
    assert [event_to_digit(code) for code in range(16)] == list(DIGITS)


@pytest.mark.parametrize("digit", ["", "E", "x", "12", "w", " "])
def test_digit_to_event_rejects_non_keys(digit: str) -> None:
    with pytest.raises(ValueError, match="not a DTMF key"):
        digit_to_event(digit)


@pytest.mark.parametrize("code", [-1, 16, 255])
def test_event_to_digit_rejects_non_keys(code: int) -> None:
    with pytest.raises(ValueError, match="not a DTMF key"):
        event_to_digit(code)


def test_encode_event_wire_format() -> None:
    # RFC 4733 figure 1: event | E R volume | duration
    assert encode_event(ToneEvent(event=11, end=True, volume=10, duration=800)) == bytes(
        [11, 0x80 | 10, 0x03, 0x20]
    )
    assert encode_event(ToneEvent(event=0, end=False, volume=63, duration=0)) == b"\x00\x3f\x00\x00"


def test_decode_ignores_reserved_bit_and_trailing_bytes() -> None:
    assert decode_event(bytes([5, 0x80 | 0x40 | 7, 0x01, 0x40]) + b"xx") == ToneEvent(
        event=5, end=True, volume=7, duration=320
    )


@pytest.mark.parametrize("payload", [b"", b"\x01", b"\x01\x02\x03"])
def test_decode_rejects_short_payloads(payload: bytes) -> None:
    with pytest.raises(ValueError, match="4 bytes"):
        decode_event(payload)


@given(st.integers(0, 255), st.booleans(), st.integers(0, 63), st.integers(0, 0xFFFF))
def test_event_round_trip(event: int, end: bool, volume: int, duration: int) -> None:
    ev = ToneEvent(event, end, volume, duration)
    payload = encode_event(ev)
    assert len(payload) == 4
    assert decode_event(payload) == ev


@pytest.mark.parametrize(
    ("event", "volume", "duration"), [(256, 0, 0), (0, 64, 0), (0, 0, 65536), (-1, 0, 0)]
)
def test_tone_event_rejects_out_of_range_fields(event: int, volume: int, duration: int) -> None:
    with pytest.raises(ValueError, match="must be"):
        ToneEvent(event, False, volume, duration)


def test_tone_packets_default_shape() -> None:
    packets = tone_packets("5")
    events = [decode_event(payload) for payload, _ in packets]
    assert [marker for _, marker in packets] == [True] + [False] * 8
    assert [ev.duration for ev in events] == [160, 320, 480, 640, 800, 960, 960, 960, 960]
    assert [ev.end for ev in events] == [False] * 6 + [True] * 3
    assert {ev.event for ev in events} == {5}
    assert {ev.volume for ev in events} == {10}
    assert packets[-1][0] == packets[-2][0] == packets[-3][0]


def test_tone_packets_other_rate_and_packet_time() -> None:
    packets = tone_packets("#", duration_ms=100, volume=3, packet_ms=10, rate=16000)
    events = [decode_event(payload) for payload, _ in packets]
    assert len(packets) == 10 + 3
    assert [ev.duration for ev in events[:3]] == [160, 320, 480]
    assert events[-1] == ToneEvent(event=11, end=True, volume=3, duration=1600)


def test_tone_packets_round_a_partial_packet_up() -> None:
    assert len(tone_packets("1", duration_ms=50)) == 3 + 3
    assert len(tone_packets("1", duration_ms=1)) == 1 + 3


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"digit": "x"}, "not a DTMF key"),
        ({"digit": "1", "duration_ms": 0}, "positive"),
        ({"digit": "1", "packet_ms": 0}, "positive"),
        ({"digit": "1", "duration_ms": 9000}, "16-bit"),
        ({"digit": "1", "volume": 64}, "volume"),
    ],
)
def test_tone_packets_rejects_bad_arguments(kwargs: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        tone_packets(**kwargs)  # type: ignore[arg-type]


def test_receiver_reports_each_press_once() -> None:
    receiver = DtmfReceiver()
    heard = [receiver.feed(8000, payload) for payload, _ in tone_packets("7")]
    assert heard == ["7"] + [None] * 8


def test_receiver_reports_repeated_key_with_new_timestamp() -> None:
    receiver = DtmfReceiver()
    heard = []
    for timestamp in (1000, 3000, 5000):
        heard += [receiver.feed(timestamp, payload) for payload, _ in tone_packets("1")]
    assert [digit for digit in heard if digit] == ["1", "1", "1"]


def test_receiver_sequence_of_keys() -> None:
    receiver = DtmfReceiver()
    digits = []
    for index, key in enumerate("1234*#"):
        for payload, _ in tone_packets(key):
            digit = receiver.feed(index * 4000, payload)
            if digit:
                digits.append(digit)
    assert "".join(digits) == "1234*#"


def test_receiver_end_only_event_yields_once() -> None:
    # The start and middle packets were lost; only the three end packets arrive.
    receiver = DtmfReceiver()
    end = tone_packets("9")[-1][0]
    assert [receiver.feed(123, end) for _ in range(3)] == ["9", None, None]


def test_receiver_ignores_late_end_retransmission_of_previous_key() -> None:
    receiver = DtmfReceiver()
    first = tone_packets("1")
    second = tone_packets("2")
    assert receiver.feed(100, first[0][0]) == "1"
    assert receiver.feed(900, second[0][0]) == "2"
    assert receiver.feed(100, first[-1][0]) is None  # reordered end of "1"
    assert receiver.feed(900, second[-1][0]) is None


def test_receiver_survives_wrapped_timestamps() -> None:
    receiver = DtmfReceiver()
    assert receiver.feed(2**32 - 80, tone_packets("3")[0][0]) == "3"
    assert receiver.feed(1000, tone_packets("3")[0][0]) == "3"


@pytest.mark.parametrize("payload", [b"", b"\x01\x02", bytes([16, 10, 0, 160]), b"\xff" * 4])
def test_receiver_ignores_garbage_and_non_key_events(payload: bytes) -> None:
    receiver = DtmfReceiver()
    assert receiver.feed(0, payload) is None
    assert receiver.feed(0, tone_packets("4")[0][0]) == "4"


@given(st.lists(st.tuples(st.integers(0, 2**32 - 1), st.binary(max_size=8))))
def test_receiver_never_raises(feed: list[tuple[int, bytes]]) -> None:
    receiver = DtmfReceiver()
    for timestamp, payload in feed:
        digit = receiver.feed(timestamp, payload)
        assert digit is None or digit in DIGITS


def test_parse_digit_string() -> None:
    assert parse_digit_string("1234w#") == ["1", "2", "3", "4", Pause(0.5), "#"]
    assert parse_digit_string("9,,*ab") == ["9", Pause(0.5), Pause(0.5), "*", "A", "B"]
    assert parse_digit_string("12 34") == ["1", "2", "3", "4"]
    assert parse_digit_string("W0") == [Pause(0.5), "0"]
    assert parse_digit_string("") == []


@pytest.mark.parametrize(("text", "bad"), [("12x4", "'x'"), ("+15551234", "'+'"), ("1-2", "'-'")])
def test_parse_digit_string_names_the_bad_character(text: str, bad: str) -> None:
    with pytest.raises(ValueError, match=re.escape(f"bad character {bad}")):
        parse_digit_string(text)

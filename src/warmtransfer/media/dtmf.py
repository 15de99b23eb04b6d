"""DTMF keys as RFC 4733 telephone-events: how a target presses 1 to accept, and how we dial
extensions and PINs after a trunk answers.

Why events and not tones: G.711 carries in-band tones, but every SIP peer we meet negotiates
telephone-event, and events survive codecs, jitter and packet loss that garble tones. One key
press is a run of packets sharing one RTP timestamp, their duration field growing, then an end
packet sent three times for loss. A receiver must report the key once, whichever of those
packets arrives first, and never again for its continuations or retransmitted ends.
"""

from __future__ import annotations

import math
import struct
from collections import deque
from dataclasses import dataclass

__all__ = [
    "DIGITS",
    "INFO_DTMF_TYPES",
    "DtmfReceiver",
    "Pause",
    "ToneEvent",
    "decode_event",
    "digit_to_event",
    "encode_event",
    "event_to_digit",
    "parse_digit_string",
    "parse_info_dtmf",
    "tone_packets",
]

DIGITS = "0123456789*#ABCD"
"""The DTMF keys, indexed by their RFC 4733 event code (0..15)."""

END_REPEATS = 3
"""How many times the end packet is sent (RFC 4733 section 2.5.1.4)."""

_EVENT = struct.Struct("!BBH")


def digit_to_event(digit: str) -> int:
    """The event code of a DTMF key ("0"-"9", "*", "#", "A"-"D"; letters in any case)."""
    code = DIGITS.find(digit.upper()) if len(digit) == 1 else -1
    if code < 0:
        raise ValueError(f"not a DTMF key: {digit!r} (keys are {DIGITS})")
    return code


def event_to_digit(code: int) -> str:
    """The DTMF key of an event code 0..15."""
    if not 0 <= code < len(DIGITS):
        raise ValueError(f"telephone-event {code} is not a DTMF key (keys are events 0..15)")
    return DIGITS[code]


@dataclass(frozen=True)
class ToneEvent:
    """One telephone-event payload. `volume` is the level in -dBm0 (0..63, lower is louder);
    `duration` is in RTP timestamp units since the event's timestamp."""

    event: int
    end: bool
    volume: int
    duration: int

    def __post_init__(self) -> None:
        if not 0 <= self.event <= 0xFF:
            raise ValueError(f"event code must be 0..255, not {self.event}")
        if not 0 <= self.volume <= 0x3F:
            raise ValueError(f"volume must be 0..63 (-dBm0), not {self.volume}")
        if not 0 <= self.duration <= 0xFFFF:
            raise ValueError(f"duration must be 0..65535 timestamp units, not {self.duration}")


def encode_event(ev: ToneEvent) -> bytes:
    """The 4-byte telephone-event payload."""
    return _EVENT.pack(ev.event, (0x80 if ev.end else 0) | ev.volume, ev.duration)


def decode_event(payload: bytes) -> ToneEvent:
    """Parse a telephone-event payload (extra bytes, e.g. redundancy, are ignored)."""
    if len(payload) < _EVENT.size:
        raise ValueError(f"telephone-event payload is 4 bytes, got {len(payload)}")
    event, flags, duration = _EVENT.unpack_from(payload)
    return ToneEvent(event=event, end=bool(flags & 0x80), volume=flags & 0x3F, duration=duration)


class DtmfReceiver:
    """Turns a stream of telephone-event packets into digits, once each.

    An event is identified by its RTP timestamp and code. The last few are remembered, so a
    retransmitted end packet that arrives after the next key has started is still recognised.
    """

    _MEMORY = 8

    def __init__(self) -> None:
        self._seen: deque[tuple[int, int]] = deque(maxlen=self._MEMORY)

    def feed(self, timestamp: int, payload: bytes) -> str | None:
        """The key, on the first packet seen of a new event; None for everything else."""
        try:
            ev = decode_event(payload)
        except ValueError:
            return None
        if ev.event >= len(DIGITS):  # flash-hook and other non-key events
            return None
        key = (timestamp, ev.event)
        if key in self._seen:
            return None
        self._seen.append(key)
        return DIGITS[ev.event]


def tone_packets(
    digit: str,
    duration_ms: int = 120,
    volume: int = 10,
    packet_ms: int = 20,
    rate: int = 8000,
) -> list[tuple[bytes, bool]]:
    """The telephone-event payloads for one key press, one per `packet_ms` tick: (payload, marker).

    All share one RTP timestamp, which the caller sets. The marker is on the first packet only;
    durations grow by one packet's worth of timestamp units (160 at 20 ms, 8 kHz); then the end
    packet, with the final duration and the E bit, is repeated three times. A duration that is
    not a whole number of packets is rounded up to one.
    """
    event = digit_to_event(digit)
    if duration_ms <= 0 or packet_ms <= 0 or rate <= 0:
        raise ValueError("duration, packet time and rate must be positive")
    step = rate * packet_ms // 1000
    count = math.ceil(duration_ms / packet_ms)
    if step <= 0 or count * step > 0xFFFF:
        raise ValueError(
            f"a {duration_ms} ms key press at {rate} Hz does not fit the 16-bit duration field"
        )
    packets = [
        (encode_event(ToneEvent(event, False, volume, step * (i + 1))), i == 0)
        for i in range(count)
    ]
    end = encode_event(ToneEvent(event, True, volume, step * count))
    packets.extend((end, False) for _ in range(END_REPEATS))
    return packets


@dataclass(frozen=True)
class Pause:
    """A wait inside a digit string, between keys."""

    seconds: float


PAUSE_SECONDS = 0.5
_PAUSE_CHARS = frozenset("wW,")


def parse_digit_string(text: str) -> list[str | Pause]:
    """Parse keys to send, e.g. "1234w#": "w" and "," wait half a second each.

    Keys A-D may be lower case; spaces are ignored so long strings can be grouped.
    """
    result: list[str | Pause] = []
    for index, char in enumerate(text):
        if char in _PAUSE_CHARS:
            result.append(Pause(PAUSE_SECONDS))
        elif char.isspace():
            continue
        elif char in DIGITS or char in "abcd":
            result.append(char.upper())
        else:
            raise ValueError(
                f"bad character {char!r} at position {index} in digit string {text!r}: "
                f"use {DIGITS} and 'w' or ',' for a {PAUSE_SECONDS} s pause"
            )
    return result


INFO_DTMF_TYPES = ("application/dtmf-relay", "application/dtmf")
"""The SIP INFO bodies that carry a key press (Cisco's dtmf-relay and the bare form)."""


def _info_key(signal: str) -> str:
    """A key as INFO bodies spell it: the character itself, or (some gateways) the event code."""
    signal = signal.strip()
    if len(signal) == 1 and signal.upper() in DIGITS:
        return signal.upper()
    if signal.isdigit():
        return event_to_digit(int(signal))  # "10" is *, "11" is #; 16+ raises ValueError
    raise ValueError(f"not a DTMF key: {signal[:20]!r}")


def parse_info_dtmf(media_type: str, body: bytes) -> str:
    """The key in a SIP INFO body of one of `INFO_DTMF_TYPES` (`media_type` lower case, no
    parameters); ValueError if the body names no key.

    Many PBXs and carriers send keys this way instead of RFC 4733 events. application/dtmf-relay
    is "Signal=1\r\nDuration=160" (lines in any order, names in any case); application/dtmf is
    the key alone. Only the key matters: a missing or odd Duration is tolerated, because a
    press with a garbled duration is still a press and the consult only needs the key.
    """
    try:
        text = body.decode("ascii")
    except UnicodeDecodeError as exc:
        raise ValueError("DTMF INFO body is not ASCII") from exc
    if media_type == "application/dtmf":
        return _info_key(text)
    if media_type != "application/dtmf-relay":
        raise ValueError(f"{media_type!r} is not a DTMF INFO type")
    signals = []
    for line in text.splitlines():
        name, sep, value = line.partition("=")
        if sep and name.strip().lower() == "signal":
            signals.append(value)
    if len(signals) != 1:
        raise ValueError(f"dtmf-relay body needs exactly one Signal line, found {len(signals)}")
    return _info_key(signals[0])

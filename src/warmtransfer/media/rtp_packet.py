"""RTP packets (RFC 3550): parse what peers send, build what we send.

Two ways in on purpose. `RtpPacket` is the complete, validated model: peers put CSRCs, header
extensions and padding on the wire and a parser that ignores them reads the wrong payload, so
`parse` handles all three and refuses anything malformed with `RtpError` (the receive loop drops
the datagram and counts it). `build_rtp` is the send path: our own packets never carry CSRCs,
extensions or padding, and one `struct.pack` per 20 ms frame is all that costs.

`is_rtcp` tells RTCP from RTP when both share one port (RFC 5761 rtcp-mux): RTCP packet types
200-204 occupy the second byte where RTP keeps marker + payload type, and RFC 5761 reserves
payload types 64-95 so the two never collide.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

__all__ = ["RtpError", "RtpPacket", "build_rtp", "is_rtcp"]

RTP_VERSION = 2
HEADER_SIZE = 12

_HEADER = struct.Struct("!BBHII")
_EXTENSION_HEADER = struct.Struct("!HH")
_MAX_CSRCS = 15


class RtpError(ValueError):
    """A datagram that is not a well-formed RTP packet, or a field out of range."""


def _check_range(name: str, value: int, bits: int) -> None:
    if not 0 <= value < 1 << bits:
        raise RtpError(f"RTP {name} must fit in {bits} bits (0..{(1 << bits) - 1}), not {value}")


@dataclass(frozen=True, slots=True)
class RtpPacket:
    """One RTP packet. `extension` is the raw header extension, including its 4-byte
    profile + length header, or None when the X bit is clear."""

    payload_type: int
    sequence: int
    timestamp: int
    ssrc: int
    payload: bytes
    marker: bool = False
    csrcs: tuple[int, ...] = ()
    extension: bytes | None = None

    def __post_init__(self) -> None:
        _check_range("payload type", self.payload_type, 7)
        _check_range("sequence number", self.sequence, 16)
        _check_range("timestamp", self.timestamp, 32)
        _check_range("SSRC", self.ssrc, 32)
        if len(self.csrcs) > _MAX_CSRCS:
            raise RtpError(f"an RTP packet carries at most 15 CSRCs, not {len(self.csrcs)}")
        for csrc in self.csrcs:
            _check_range("CSRC", csrc, 32)
        if self.extension is not None:
            _check_extension(self.extension)

    @classmethod
    def parse(cls, data: bytes) -> RtpPacket:
        """Parse one datagram; `RtpError` if it is not a valid RTP packet."""
        size = len(data)
        if size < HEADER_SIZE:
            raise RtpError(f"RTP packet too short: {size} bytes, the fixed header is 12")
        first, second, sequence, timestamp, ssrc = _HEADER.unpack_from(data)
        version = first >> 6
        if version != RTP_VERSION:
            raise RtpError(f"RTP version must be 2, not {version}")
        end = size
        if first & 0x20:  # padding: the last byte counts the padding bytes, itself included
            padding = data[-1]
            if padding == 0:
                raise RtpError("RTP padding bit set but the padding count is 0")
            end -= padding
        offset = HEADER_SIZE
        csrc_count = first & 0x0F
        if csrc_count:
            csrc_end = offset + 4 * csrc_count
            if csrc_end > end:
                raise RtpError(f"RTP packet too short for its {csrc_count} CSRCs")
            csrcs = struct.unpack_from(f"!{csrc_count}I", data, offset)
            offset = csrc_end
        else:
            csrcs = ()
        extension = None
        if first & 0x10:
            if offset + 4 > end:
                raise RtpError("RTP packet too short for its header extension")
            _, words = _EXTENSION_HEADER.unpack_from(data, offset)
            extension_end = offset + 4 + 4 * words
            if extension_end > end:
                raise RtpError(f"RTP header extension of {words} words overruns the packet")
            extension = bytes(data[offset:extension_end])
            offset = extension_end
        if offset > end:
            raise RtpError(f"RTP padding of {size - end} bytes overlaps the header")
        return cls(
            payload_type=second & 0x7F,
            sequence=sequence,
            timestamp=timestamp,
            ssrc=ssrc,
            payload=bytes(data[offset:end]),
            marker=bool(second & 0x80),
            csrcs=csrcs,
            extension=extension,
        )

    def to_bytes(self) -> bytes:
        """Serialise without padding (RFC 3550 padding is only needed by encryption)."""
        first = (RTP_VERSION << 6) | len(self.csrcs)
        if self.extension is not None:
            first |= 0x10
        second = (0x80 if self.marker else 0) | self.payload_type
        parts = [_HEADER.pack(first, second, self.sequence, self.timestamp, self.ssrc)]
        if self.csrcs:
            parts.append(struct.pack(f"!{len(self.csrcs)}I", *self.csrcs))
        if self.extension is not None:
            parts.append(self.extension)
        parts.append(self.payload)
        return b"".join(parts)


def _check_extension(extension: bytes) -> None:
    if len(extension) < 4 or len(extension) % 4:
        raise RtpError(
            f"an RTP header extension is a 4-byte header plus 32-bit words, "
            f"not {len(extension)} bytes"
        )
    _, words = _EXTENSION_HEADER.unpack_from(extension)
    if 4 + 4 * words != len(extension):
        raise RtpError(
            f"RTP header extension says {words} words but carries {len(extension) - 4} bytes"
        )


def build_rtp(
    payload_type: int,
    sequence: int,
    timestamp: int,
    ssrc: int,
    payload: bytes,
    marker: bool = False,
) -> bytes:
    """Build a plain RTP packet (no CSRCs, extension or padding): the per-frame send path.

    `sequence` and `timestamp` wrap modulo 2**16 and 2**32, so a sender can just keep counting.
    """
    if not 0 <= payload_type <= 0x7F:
        raise RtpError(f"RTP payload type must be 0..127, not {payload_type}")
    try:
        header = _HEADER.pack(
            0x80,
            (0x80 | payload_type) if marker else payload_type,
            sequence & 0xFFFF,
            timestamp & 0xFFFFFFFF,
            ssrc,
        )
    except struct.error as exc:
        raise RtpError(f"RTP SSRC must fit in 32 bits, not {ssrc}") from exc
    return header + payload


def is_rtcp(data: bytes) -> bool:
    """Whether a datagram on a multiplexed RTP/RTCP port is RTCP (RFC 5761 section 4)."""
    return len(data) >= 2 and 64 <= (data[1] & 0x7F) <= 95

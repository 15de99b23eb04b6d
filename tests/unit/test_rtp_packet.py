from __future__ import annotations

import struct

import pytest
from hypothesis import given
from hypothesis import strategies as st

from warmtransfer.media.rtp_packet import RtpError, RtpPacket, build_rtp, is_rtcp

# A PCMU packet as a phone sends it: V=2, marker, PT 0, seq 0x1234, ts 0xDEADBEEF, SSRC 0x01020304.
PHONE_PACKET = bytes.fromhex("80801234deadbeef01020304") + b"\xff" * 160


def test_parse_plain_packet() -> None:
    packet = RtpPacket.parse(PHONE_PACKET)
    assert packet == RtpPacket(
        payload_type=0,
        sequence=0x1234,
        timestamp=0xDEADBEEF,
        ssrc=0x01020304,
        payload=b"\xff" * 160,
        marker=True,
    )
    assert packet.to_bytes() == PHONE_PACKET


def test_build_rtp_wire_format() -> None:
    assert build_rtp(0, 0x1234, 0xDEADBEEF, 0x01020304, b"\xff" * 160, marker=True) == PHONE_PACKET
    assert build_rtp(8, 1, 2, 3, b"x")[:2] == b"\x80\x08"


def test_build_rtp_wraps_sequence_and_timestamp() -> None:
    packet = RtpPacket.parse(build_rtp(0, 65536 + 5, 2**32 + 160, 7, b""))
    assert (packet.sequence, packet.timestamp) == (5, 160)


@pytest.mark.parametrize("payload_type", [-1, 128, 255])
def test_build_rtp_rejects_bad_payload_type(payload_type: int) -> None:
    with pytest.raises(RtpError, match="payload type"):
        build_rtp(payload_type, 0, 0, 0, b"")


@pytest.mark.parametrize("ssrc", [-1, 2**32])
def test_build_rtp_rejects_bad_ssrc(ssrc: int) -> None:
    with pytest.raises(RtpError, match="SSRC"):
        build_rtp(0, 0, 0, ssrc, b"")


def test_parse_csrcs_extension_and_padding() -> None:
    extension = struct.pack("!HH", 0xBEDE, 2) + b"\x10\xaa\x00\x00" + b"\x22\x01\x02\x03"
    data = (
        bytes([0x80 | 0x20 | 0x10 | 2, 101])
        + struct.pack("!HII", 7, 8000, 42)
        + struct.pack("!II", 1111, 2222)
        + extension
        + b"\x01\x00\x00\x00"  # telephone-event payload
        + b"\x00\x00\x03"  # 3 bytes of padding, the last one counting them
    )
    packet = RtpPacket.parse(data)
    assert packet.payload_type == 101
    assert not packet.marker
    assert packet.csrcs == (1111, 2222)
    assert packet.extension == extension
    assert packet.payload == b"\x01\x00\x00\x00"
    # Re-serialised without the padding, otherwise identical.
    unpadded = bytes([data[0] & ~0x20]) + data[1:-3]
    assert packet.to_bytes() == unpadded
    assert RtpPacket.parse(packet.to_bytes()) == packet


def test_padding_only_packet_has_empty_payload() -> None:
    data = bytes([0xA0, 0]) + bytes(10) + b"\x00\x00\x00\x04"
    assert RtpPacket.parse(data).payload == b""


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"", "too short"),
        (PHONE_PACKET[:11], "too short"),
        (bytes([0x40]) + PHONE_PACKET[1:], "version must be 2"),
        (bytes([0x00]) + PHONE_PACKET[1:], "version must be 2"),
        (bytes([0xA0]) + PHONE_PACKET[1:-1] + b"\x00", "padding count is 0"),
        (bytes([0xA0]) + PHONE_PACKET[1:-1] + b"\xc8", "padding"),  # 200 > 160 payload bytes
        (bytes([0xA0]) + PHONE_PACKET[1:12] + b"\x0e" * 13, "padding"),  # eats into header
        (bytes([0x83]) + PHONE_PACKET[1:12] + b"\x00" * 8, "CSRCs"),
        (bytes([0x90]) + PHONE_PACKET[1:12] + b"\xbe\xde", "extension"),
        (bytes([0x90]) + PHONE_PACKET[1:12] + b"\xbe\xde\x00\x05" + bytes(8), "overruns"),
    ],
)
def test_parse_rejects_malformed(data: bytes, message: str) -> None:
    with pytest.raises(RtpError, match=message):
        RtpPacket.parse(data)


def test_rtp_error_is_a_value_error() -> None:
    assert issubclass(RtpError, ValueError)


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("payload_type", 128),
        ("sequence", 65536),
        ("sequence", -1),
        ("timestamp", 2**32),
        ("ssrc", -5),
        ("csrcs", tuple(range(16))),
        ("csrcs", (2**32,)),
        ("extension", b"\xbe\xde\x00"),
        ("extension", b"\xbe\xde\x00\x02\x00\x00\x00\x00"),
    ],
)
def test_constructor_rejects_out_of_range_fields(field: str, value: object) -> None:
    fields: dict[str, object] = {
        "payload_type": 0,
        "sequence": 0,
        "timestamp": 0,
        "ssrc": 0,
        "payload": b"",
    }
    fields[field] = value
    with pytest.raises(RtpError):
        RtpPacket(**fields)  # type: ignore[arg-type]


def test_packet_is_immutable() -> None:
    packet = RtpPacket.parse(PHONE_PACKET)
    with pytest.raises(AttributeError):
        packet.sequence = 1  # type: ignore[misc]


words = st.integers(0, 2**32 - 1)


@st.composite
def packets(draw: st.DrawFn) -> RtpPacket:
    extension = None
    if draw(st.booleans()):
        body = draw(st.binary(max_size=12).map(lambda b: b + bytes(-len(b) % 4)))
        extension = struct.pack("!HH", draw(st.integers(0, 0xFFFF)), len(body) // 4) + body
    return RtpPacket(
        payload_type=draw(st.integers(0, 127)),
        sequence=draw(st.integers(0, 0xFFFF)),
        timestamp=draw(words),
        ssrc=draw(words),
        payload=draw(st.binary(max_size=200)),
        marker=draw(st.booleans()),
        csrcs=tuple(draw(st.lists(words, max_size=15))),
        extension=extension,
    )


@given(packets())
def test_round_trip(packet: RtpPacket) -> None:
    data = packet.to_bytes()
    assert RtpPacket.parse(data) == packet
    assert not is_rtcp(data) or 64 <= packet.payload_type <= 95


@given(packets(), st.integers(1, 255))
def test_padding_is_stripped(packet: RtpPacket, padding: int) -> None:
    data = packet.to_bytes()
    padded = bytes([data[0] | 0x20]) + data[1:] + bytes(padding - 1) + bytes([padding])
    assert RtpPacket.parse(padded) == packet


@given(
    st.integers(0, 127),
    st.integers(0, 0xFFFF),
    words,
    words,
    st.binary(max_size=200),
    st.booleans(),
)
def test_build_rtp_agrees_with_the_full_model(
    payload_type: int, sequence: int, timestamp: int, ssrc: int, payload: bytes, marker: bool
) -> None:
    data = build_rtp(payload_type, sequence, timestamp, ssrc, payload, marker)
    assert data == RtpPacket(payload_type, sequence, timestamp, ssrc, payload, marker).to_bytes()


@given(st.binary(max_size=64))
def test_parse_never_raises_anything_but_rtp_error(data: bytes) -> None:
    try:
        packet = RtpPacket.parse(data)
    except RtpError:
        return
    assert len(packet.payload) <= len(data) - 12


@pytest.mark.parametrize("packet_type", [192, 200, 201, 202, 203, 204, 205, 206, 207, 223])
def test_rtcp_packet_types_are_rtcp(packet_type: int) -> None:
    assert is_rtcp(bytes([0x80, packet_type, 0, 6]) + bytes(24))


@pytest.mark.parametrize("second_byte", [0x00, 0x08, 0x80, 0x88, 101, 0x80 | 101, 96, 127, 63])
def test_rtp_payload_types_are_not_rtcp(second_byte: int) -> None:
    assert not is_rtcp(bytes([0x80, second_byte]) + bytes(10))


def test_too_short_is_not_rtcp() -> None:
    assert not is_rtcp(b"")
    assert not is_rtcp(b"\x80")

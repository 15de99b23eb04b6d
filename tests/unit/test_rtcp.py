"""RTCP packets and reception statistics (RFC 3550), sans-IO: byte layouts written out by hand
from the RFC's figures, round trips, the parser's robustness on any bytes, A.3 loss and A.8
jitter on synthetic arrival sequences whose answers are known in closed form."""

from __future__ import annotations

import contextlib
import struct

import pytest
from hypothesis import given
from hypothesis import strategies as st

from warmtransfer.media.rtcp import (
    Bye,
    ReceiverReport,
    ReceptionStats,
    ReportBlock,
    RtcpError,
    RtcpPacket,
    SdesChunk,
    SenderReport,
    SourceDescription,
    build_compound,
    ntp_middle,
    ntp_timestamp,
    parse_compound,
    round_trip,
)

BLOCK = ReportBlock(
    0x11223344, fraction_lost=64, cumulative_lost=5, highest_seq=0x1_0013, jitter=40
)


def block_bytes(ssrc: int, fraction: int, lost: int, highest: int, jitter: int) -> bytes:
    return struct.pack("!IIIIII", ssrc, (fraction << 24) | (lost & 0xFFFFFF), highest, jitter, 0, 0)


# -- byte layouts (RFC 3550 6.4.1, 6.4.2, 6.5, 6.6) -------------------------------------------


def test_sender_report_layout() -> None:
    sr = SenderReport(0xAABBCCDD, 0x0102030405060708, 160_000, 50, 8000, (BLOCK,))
    expected = (
        bytes([0x81, 200]) + struct.pack("!H", 12)  # V=2, RC=1; 13 words minus one
        + struct.pack("!IQIII", 0xAABBCCDD, 0x0102030405060708, 160_000, 50, 8000)
        + block_bytes(0x11223344, 64, 5, 0x1_0013, 40)
    )  # fmt: skip
    sdes = bytes([0x81, 202, 0, 3]) + struct.pack("!I", 0xAABBCCDD) + b"\x01\x02ab" + b"\x00" * 4
    assert build_compound([sr, SourceDescription.cname_of(0xAABBCCDD, "ab")]) == expected + sdes
    assert parse_compound(expected + sdes) == [sr, SourceDescription.cname_of(0xAABBCCDD, "ab")]


def test_receiver_report_with_negative_cumulative_loss_and_bye_with_reason() -> None:
    block = ReportBlock(7, 0, -2, 99, 0)  # two duplicates, no loss: lost is signed 24 bits
    data = build_compound([ReceiverReport(0x01020304, (block,)), Bye((0x01020304,), "done")])
    assert data[:8] == bytes([0x81, 201, 0, 7]) + struct.pack("!I", 0x01020304)
    assert data[12:16] == b"\x00\xff\xff\xfe"  # fraction 0, lost -2 in two's complement
    bye_bytes = bytes([0x81, 203, 0, 3]) + struct.pack("!I", 0x01020304) + b"\x04done\x00\x00\x00"
    assert data[32:] == bye_bytes  # 9 bytes of body, zero-filled to 32 bits
    rr, bye = parse_compound(data)
    assert rr == ReceiverReport(0x01020304, (block,))
    assert bye == Bye((0x01020304,), "done")


def test_sdes_chunk_of_exactly_aligned_items_still_ends_with_a_null_word() -> None:
    sdes = SourceDescription.cname_of(1, "ab@c")  # 4 bytes of items + 2 of type and length
    data = build_compound([ReceiverReport(1), sdes])
    assert data[8:] == bytes([0x81, 202, 0, 3]) + struct.pack("!I", 1) + b"\x01\x04ab@c\x00\x00"
    sdes_empty = SourceDescription((SdesChunk(2, ()),))
    data = build_compound([ReceiverReport(1), sdes_empty])
    assert data[8:] == bytes([0x81, 202, 0, 2]) + struct.pack("!I", 2) + b"\x00" * 4
    assert parse_compound(data)[1] == sdes_empty


def test_round_trip_of_every_packet_type_with_many_blocks_and_chunks() -> None:
    blocks = tuple(ReportBlock(i, i, -i, i * 1000, i * 7, i << 16, i) for i in range(31))
    packets: list[RtcpPacket] = [
        SenderReport(1, ntp_timestamp(1_700_000_000.25), 0xFFFFFFFF, 0, 0xFFFFFFFF, blocks),
        ReceiverReport(2, blocks[:3]),
        SourceDescription(
            (SdesChunk(1, ((1, b"x" * 255), (2, b"name"), (8, b"\xff"))), SdesChunk(9, ()))
        ),
        Bye((1, 2, 3)),
    ]
    parsed = parse_compound(build_compound(packets))
    assert parsed == packets
    sdes = parsed[2]
    assert isinstance(sdes, SourceDescription)
    assert sdes.chunks[0].cname == "x" * 255 and sdes.chunks[1].cname is None


def test_unknown_packet_types_are_skipped_by_their_length() -> None:
    app = bytes([0x80, 204, 0, 2]) + struct.pack("!I", 5) + b"name"  # RFC 3550 6.7 APP
    fb = bytes([0x81, 205, 0, 2]) + struct.pack("!II", 5, 6)  # RFC 4585 generic NACK header
    data = build_compound([ReceiverReport(5)]) + app + fb + build_compound([ReceiverReport(6)])
    assert parse_compound(data) == [ReceiverReport(5), ReceiverReport(6)]


def test_padding_on_the_last_packet_is_honoured() -> None:
    bye = bytes([0xA1, 203, 0, 2]) + struct.pack("!I", 5) + b"\x00\x00\x00\x04"
    assert parse_compound(build_compound([ReceiverReport(5)]) + bye)[1] == Bye((5,))


@pytest.mark.parametrize(
    ("data", "rule"),
    [
        (b"\x81\xc9", "too short"),
        (bytes([0x81, 202, 0, 0]), "must start with an SR or RR"),
        (bytes([0x40, 201, 0, 1]) + bytes(4), "version must be 2"),
        (bytes([0x80, 201, 0, 2]) + bytes(4), "overruns"),
        (bytes([0x81, 201, 0, 1]) + bytes(4), "report blocks"),
        (bytes([0x80, 200, 0, 1]) + bytes(4), "sender info"),
        (build_compound([ReceiverReport(1)]) + b"\x80\xca", "stray bytes"),
        (build_compound([ReceiverReport(1)]) + bytes([0x81, 202, 0, 1]) + bytes(4), "null"),
        (build_compound([ReceiverReport(1)]) + bytes([0xA0, 203, 0, 1, 0, 0, 0, 9]), "padding"),
        (build_compound([ReceiverReport(1)]) + bytes([0x82, 203, 0, 1]) + bytes(4), "BYE"),
    ],
)
def test_malformed_compound_packets_are_refused_saying_why(data: bytes, rule: str) -> None:
    with pytest.raises(RtcpError, match=rule):
        parse_compound(data)


def test_fields_out_of_range_are_refused_when_building() -> None:
    with pytest.raises(RtcpError, match="24 signed bits"):
        ReportBlock(1, 0, 1 << 23, 0, 0)
    with pytest.raises(RtcpError, match="fraction lost"):
        ReportBlock(1, 256, 0, 0, 0)
    with pytest.raises(RtcpError, match="SR or RR"):
        build_compound([Bye((1,))])


@given(st.binary(max_size=200))
def test_parse_raises_only_rtcp_error_on_any_bytes(data: bytes) -> None:
    with contextlib.suppress(RtcpError):
        parse_compound(data)


@given(st.binary(max_size=120), st.integers(0, 255), st.integers(0, 3))
def test_parse_raises_only_rtcp_error_on_plausible_headers(
    tail: bytes, kind: int, count: int
) -> None:
    """Random bytes rarely look like RTCP at all; these start with a valid RR and a header
    whose type and count are real, so the per-type parsers see the garbage."""
    header = bytes([0x80 | count, kind]) + struct.pack("!H", len(tail) // 4)
    with contextlib.suppress(RtcpError):
        parse_compound(build_compound([ReceiverReport(1)]) + header + tail)


# -- time -------------------------------------------------------------------------------------


def test_round_trip_from_lsr_and_dlsr_as_rfc_3550_figure_2() -> None:
    """RFC 3550 6.4.1, figure 2: A = 0xb710:8000, LSR = 0xb705:2000, DLSR = 0x0005:4000,
    round trip 6.125 s."""
    arrival = 0xB7108000 << 16
    block = ReportBlock(1, 0, 0, 0, 0, lsr=0xB7052000, dlsr=0x00054000)
    assert round_trip(arrival, block) == 6.125
    assert round_trip(arrival, ReportBlock(1, 0, 0, 0, 0)) is None  # no SR of ours yet
    overstated = ReportBlock(1, 0, 0, 0, 0, lsr=0xB7108000, dlsr=1)
    assert round_trip(arrival, overstated) == 0.0


def test_ntp_time_of_the_unix_epoch_and_its_middle_bits() -> None:
    assert ntp_timestamp(0.0) == 2_208_988_800 << 32
    assert ntp_middle(ntp_timestamp(0.5)) == ((2_208_988_800 & 0xFFFF) << 16) | 0x8000


# -- reception statistics ---------------------------------------------------------------------


def feed(stats: ReceptionStats, seqs: list[int], start: int = 0) -> None:
    """Packets every 20 ms, on time: their timestamps follow their sequence numbers."""
    for seq in seqs:
        stats.update(seq & 0xFFFF, (seq * 160) & 0xFFFFFFFF, (seq - start) * 0.020)


def test_loss_fraction_and_cumulative_loss_with_a_known_gap() -> None:
    stats = ReceptionStats()
    feed(stats, [*range(10), *range(15, 20)])  # 10..14 lost
    block = stats.report_block(0x1234)
    assert (block.fraction_lost, block.cumulative_lost, block.highest_seq) == (64, 5, 19)
    feed(stats, [20, 21, 24, 25, 26, 27, 28, 29])  # 22 and 23 lost: 2 of 10 this interval
    block = stats.report_block(0x1234)
    assert (block.fraction_lost, block.cumulative_lost) == (2 * 256 // 10, 7)
    block = stats.report_block(0x1234)  # nothing arrived since: no loss this interval
    assert (block.fraction_lost, block.cumulative_lost) == (0, 7)


def test_reordering_is_not_loss_and_duplicates_make_cumulative_loss_negative() -> None:
    stats = ReceptionStats()
    feed(stats, [1, 3, 2, 4])
    assert stats.cumulative_lost == 0 and stats.report_block(1).fraction_lost == 0
    feed(stats, [4, 4])
    assert stats.cumulative_lost == -2 and stats.duplicates == 2
    assert stats.report_block(1).cumulative_lost == -2


def test_sequence_wrap_extends_the_highest_sequence_number() -> None:
    stats = ReceptionStats()
    feed(stats, list(range(65530, 65536 + 6)))
    assert stats.highest_seq == 65536 + 5
    assert stats.cumulative_lost == 0 and stats.expected == 12


def test_a_big_jump_is_a_restart_once_the_next_packet_confirms_it() -> None:
    stats = ReceptionStats()
    feed(stats, [1, 2, 3])
    stats.update(40_000, 0, 1.0)  # a lone stray: not counted, no loss invented
    assert stats.received == 3 and stats.expected == 3
    feed(stats, [4])
    assert stats.cumulative_lost == 0
    stats.update(50_000, 0, 2.0)
    stats.update(50_001, 160, 2.02)  # two in a row: the sender restarted there, and A.1
    # counts from the confirming packet on ("pretend this was the first packet")
    assert stats.expected == 1 and stats.received == 1 and stats.highest_seq == 50_001
    feed(stats, [50_003])
    assert stats.cumulative_lost == 1


def test_jitter_is_zero_for_packets_arriving_exactly_on_their_timestamps() -> None:
    stats = ReceptionStats()
    feed(stats, list(range(100)))
    assert stats.jitter == pytest.approx(0.0, abs=1e-12)  # float arrival times: not exactly 0
    assert stats.report_block(1).jitter == 0


def test_jitter_follows_rfc_3550_a8_on_alternating_5ms_delay() -> None:
    """Every other packet 5 ms late: each transit differs from the last by 40 timestamp units,
    so J(n) = 40 (1 - (15/16)^(n-1)), converging on 5 ms."""
    stats = ReceptionStats()
    for i in range(3):
        stats.update(i, i * 160, i * 0.020 + (0.005 if i % 2 else 0.0))
    assert stats.report_block(1).jitter == 4  # 40/16 + (40 - 2.5)/16 = 4.84 units
    assert stats.jitter == pytest.approx((40 / 16 + (40 - 40 / 16) / 16) / 8000)
    for i in range(3, 300):
        stats.update(i, i * 160, i * 0.020 + (0.005 if i % 2 else 0.0))
    assert stats.jitter == pytest.approx(0.005, rel=1e-6)
    assert stats.report_block(1).jitter == 39  # 40 units minus (15/16)^299, truncated


def test_jitter_survives_the_timestamp_wrap() -> None:
    stats = ReceptionStats()
    base = 0xFFFFFFFF - 3 * 160
    for i in range(10):
        stats.update(i, (base + i * 160) & 0xFFFFFFFF, i * 0.020)
    assert stats.jitter == pytest.approx(0.0, abs=1e-9)


def test_telephone_events_count_in_sequence_but_not_in_jitter() -> None:
    stats = ReceptionStats()
    stats.update(1, 160, 0.02)
    for seq in (2, 3, 4):
        assert stats.count(seq)  # an RFC 4733 event repeats its start timestamp
    stats.update(5, 800, 0.10)
    assert stats.jitter == 0.0 and stats.cumulative_lost == 0 and stats.received == 5

"""RTCP (RFC 3550 section 6), sans-IO: build and parse compound packets, reception statistics.

Why we speak RTCP at all: carriers and PBXs use it to tell a live call from a dead one (some
hang up a call whose RTCP stopped), and it is the only way to learn how *our* audio arrives at
the far end (loss, jitter, round-trip time) — the numbers behind "the caller says it sounds bad".

What is here, all pure (bytes and times in, values out):
- `SenderReport`, `ReceiverReport` (with `ReportBlock`s), `SourceDescription` (CNAME and any
  other items, kept raw), `Bye`; `build_compound` / `parse_compound` for the compound packets
  RFC 3550 6.1 requires (SR or RR first). Other packet types (APP, RFC 4585 feedback, XR) are
  skipped whole by their length word, as a receiver must.
- `parse_compound` raises nothing but `RtcpError`, whatever the bytes (a hypothesis test holds
  it to that): a malformed compound packet is dropped as a whole, as RFC 3550 A.2 validates.
- `ReceptionStats`: the receiver side of one source, fed (seq, rtp_ts, arrival): sequence
  extension and restarts per A.1 (without A.1's probation: the session has already validated
  payload type and source), expected / lost / fraction lost per A.3, interarrival jitter per A.8;
  `report_block` turns it into the block an SR/RR carries.
- NTP time helpers and `round_trip` from an echoed LSR/DLSR (RFC 3550 6.4.1).
"""

from __future__ import annotations

import struct
from collections.abc import Iterable
from dataclasses import dataclass

__all__ = [
    "Bye",
    "ReceiverReport",
    "ReceptionStats",
    "ReportBlock",
    "RtcpError",
    "RtcpPacket",
    "SdesChunk",
    "SenderReport",
    "SourceDescription",
    "build_compound",
    "ntp_middle",
    "ntp_timestamp",
    "parse_compound",
    "round_trip",
]

SR, RR, SDES, BYE = 200, 201, 202, 203
CNAME = 1

_HEADER = struct.Struct("!BBH")
_SR_INFO = struct.Struct("!IQIII")  # sender SSRC, NTP timestamp, RTP timestamp, packets, octets
_BLOCK = struct.Struct("!IIIIII")  # SSRC, fraction<<24 | lost, ext. highest seq, jitter, LSR, DLSR
_SSRC = struct.Struct("!I")
_NTP_EPOCH_OFFSET = 2_208_988_800  # seconds from 1900-01-01 (NTP) to 1970-01-01 (Unix)
_MAX_DROPOUT = 3000  # A.1: a forward jump this big is a restarted (or broken) stream
_MAX_MISORDER = 100  # A.1: further behind than this is a restarted stream, not reordering
_SEQ_MOD = 1 << 16


class RtcpError(ValueError):
    """Bytes that are not a valid RTCP compound packet, or a field out of range."""


def _check(name: str, value: int, bits: int) -> None:
    if not 0 <= value < 1 << bits:
        raise RtcpError(f"RTCP {name} must fit in {bits} bits, not {value}")


@dataclass(frozen=True, slots=True)
class ReportBlock:
    """What one receiver says about one source (RFC 3550 6.4.1). `fraction_lost` is the 8-bit
    fixed-point fraction of the last interval (256 = all); `cumulative_lost` is signed (late
    duplicates can make it negative); `jitter` is in RTP timestamp units; `lsr` is the middle 32
    bits of the NTP time of the last SR received from that source, `dlsr` the delay since, in
    1/65536 s (both 0 before any SR)."""

    ssrc: int
    fraction_lost: int
    cumulative_lost: int
    highest_seq: int
    jitter: int
    lsr: int = 0
    dlsr: int = 0

    def __post_init__(self) -> None:
        _check("report block SSRC", self.ssrc, 32)
        _check("fraction lost", self.fraction_lost, 8)
        if not -(1 << 23) <= self.cumulative_lost < 1 << 23:
            raise RtcpError(
                f"RTCP cumulative lost must fit in 24 signed bits, not {self.cumulative_lost}"
            )
        _check("extended highest sequence number", self.highest_seq, 32)
        _check("jitter", self.jitter, 32)
        _check("LSR", self.lsr, 32)
        _check("DLSR", self.dlsr, 32)

    def _pack(self) -> bytes:
        lost = (self.fraction_lost << 24) | (self.cumulative_lost & 0xFFFFFF)
        return _BLOCK.pack(self.ssrc, lost, self.highest_seq, self.jitter, self.lsr, self.dlsr)

    @classmethod
    def _unpack(cls, data: bytes, offset: int) -> ReportBlock:
        ssrc, lost, highest, jitter, lsr, dlsr = _BLOCK.unpack_from(data, offset)
        cumulative = lost & 0xFFFFFF
        if cumulative & 0x800000:
            cumulative -= 1 << 24
        return cls(ssrc, lost >> 24, cumulative, highest, jitter, lsr, dlsr)


@dataclass(frozen=True, slots=True)
class SenderReport:
    """SR: a source that sent RTP since its last report. `ntp` is the full 64-bit NTP time of
    sending; `rtp_timestamp` the RTP clock at that same instant (lip sync, drift)."""

    ssrc: int
    ntp: int
    rtp_timestamp: int
    packet_count: int
    octet_count: int
    reports: tuple[ReportBlock, ...] = ()

    def __post_init__(self) -> None:
        _check("SSRC", self.ssrc, 32)
        _check("NTP timestamp", self.ntp, 64)
        _check("RTP timestamp", self.rtp_timestamp, 32)
        _check("packet count", self.packet_count, 32)
        _check("octet count", self.octet_count, 32)
        if len(self.reports) > 31:
            raise RtcpError(f"an SR carries at most 31 report blocks, not {len(self.reports)}")


@dataclass(frozen=True, slots=True)
class ReceiverReport:
    """RR: a participant that sent no RTP since its last report (or has nothing to report)."""

    ssrc: int
    reports: tuple[ReportBlock, ...] = ()

    def __post_init__(self) -> None:
        _check("SSRC", self.ssrc, 32)
        if len(self.reports) > 31:
            raise RtcpError(f"an RR carries at most 31 report blocks, not {len(self.reports)}")


@dataclass(frozen=True, slots=True)
class SdesChunk:
    """One source's description: (item type, value) pairs, as sent (values need not be UTF-8)."""

    ssrc: int
    items: tuple[tuple[int, bytes], ...]

    @property
    def cname(self) -> str | None:
        for kind, value in self.items:
            if kind == CNAME:
                return value.decode("utf-8", "replace")
        return None


@dataclass(frozen=True, slots=True)
class SourceDescription:
    chunks: tuple[SdesChunk, ...]

    def __post_init__(self) -> None:
        if len(self.chunks) > 31:
            raise RtcpError(f"an SDES carries at most 31 chunks, not {len(self.chunks)}")
        for chunk in self.chunks:
            _check("SSRC", chunk.ssrc, 32)
            for kind, value in chunk.items:
                if not 1 <= kind <= 255 or len(value) > 255:
                    raise RtcpError(
                        f"SDES item type must be 1..255 and its value at most "
                        f"255 bytes, not type {kind} of {len(value)} bytes"
                    )

    @classmethod
    def cname_of(cls, ssrc: int, cname: str) -> SourceDescription:
        return cls((SdesChunk(ssrc, ((CNAME, cname.encode()),)),))


@dataclass(frozen=True, slots=True)
class Bye:
    """BYE: these sources leave the session (the call ended), with an optional reason."""

    ssrcs: tuple[int, ...]
    reason: str | None = None

    def __post_init__(self) -> None:
        if len(self.ssrcs) > 31:
            raise RtcpError(f"a BYE names at most 31 sources, not {len(self.ssrcs)}")
        for ssrc in self.ssrcs:
            _check("SSRC", ssrc, 32)
        if self.reason is not None and len(self.reason.encode()) > 255:
            raise RtcpError("a BYE reason is at most 255 bytes")


RtcpPacket = SenderReport | ReceiverReport | SourceDescription | Bye


# -- building -------------------------------------------------------------------------------


def _packet(count: int, kind: int, body: bytes) -> bytes:
    """Header plus body, zero-padded to 32 bits (SDES and BYE end on their own null/length
    rules, so plain zero fill is what RFC 3550 asks; the P bit is only for encryption)."""
    body += b"\x00" * (-len(body) % 4)
    return _HEADER.pack(0x80 | count, kind, len(body) // 4) + body


def _build(packet: RtcpPacket) -> bytes:
    if isinstance(packet, SenderReport):
        body = _SR_INFO.pack(
            packet.ssrc, packet.ntp, packet.rtp_timestamp, packet.packet_count, packet.octet_count
        ) + b"".join(block._pack() for block in packet.reports)
        return _packet(len(packet.reports), SR, body)
    if isinstance(packet, ReceiverReport):
        body = _SSRC.pack(packet.ssrc) + b"".join(block._pack() for block in packet.reports)
        return _packet(len(packet.reports), RR, body)
    if isinstance(packet, SourceDescription):
        parts = []
        for chunk in packet.chunks:
            items = b"".join(bytes((kind, len(value))) + value for kind, value in chunk.items)
            items += b"\x00" * (4 - (4 + len(items)) % 4)  # a null item ends it, then pad to 32
            parts.append(_SSRC.pack(chunk.ssrc) + items)
        return _packet(len(packet.chunks), SDES, b"".join(parts))
    body = b"".join(_SSRC.pack(ssrc) for ssrc in packet.ssrcs)
    if packet.reason is not None:
        reason = packet.reason.encode()
        body += bytes((len(reason),)) + reason
    return _packet(len(packet.ssrcs), BYE, body)


def build_compound(packets: Iterable[RtcpPacket]) -> bytes:
    """One datagram of RTCP packets. RFC 3550 6.1: it starts with an SR or RR (and should carry
    an SDES CNAME); the first check is enforced here because receivers drop anything else."""
    packets = list(packets)
    if not packets or not isinstance(packets[0], SenderReport | ReceiverReport):
        raise RtcpError("a compound RTCP packet must start with an SR or RR")
    return b"".join(_build(packet) for packet in packets)


# -- parsing --------------------------------------------------------------------------------


def parse_compound(data: bytes) -> list[RtcpPacket]:
    """Every SR, RR, SDES and BYE in one datagram, in order; other types are skipped.

    Validated as RFC 3550 A.2 does: version 2 throughout, the first packet an SR or RR without
    padding, lengths adding up exactly to the datagram. Anything else raises `RtcpError`."""
    size = len(data)
    if size < 4:
        raise RtcpError(f"RTCP packet too short: {size} bytes")
    if data[1] not in (SR, RR) or data[0] & 0x20:
        raise RtcpError(f"a compound RTCP packet must start with an SR or RR, not {data[1]}")
    packets: list[RtcpPacket] = []
    offset = 0
    while offset < size:
        if size - offset < 4:
            raise RtcpError(f"{size - offset} stray bytes after the last RTCP packet")
        first, kind, words = _HEADER.unpack_from(data, offset)
        if first >> 6 != 2:
            raise RtcpError(f"RTCP version must be 2, not {first >> 6}")
        end = offset + 4 + 4 * words
        if end > size:
            raise RtcpError(f"RTCP packet of {4 + 4 * words} bytes overruns the datagram")
        body_end = end
        if first & 0x20:
            padding = data[end - 1] if end > offset + 4 else 0
            if padding == 0 or padding > end - offset - 4:
                raise RtcpError(f"RTCP padding count {padding} is not within the packet")
            body_end -= padding
        count = first & 0x1F
        body = bytes(data[offset + 4 : body_end])
        if kind == SR:
            packets.append(_parse_sr(count, body))
        elif kind == RR:
            packets.append(_parse_rr(count, body))
        elif kind == SDES:
            packets.append(_parse_sdes(count, body))
        elif kind == BYE:
            packets.append(_parse_bye(count, body))
        offset = end
    return packets


def _blocks(count: int, body: bytes, offset: int, what: str) -> tuple[ReportBlock, ...]:
    if len(body) < offset + 24 * count:
        raise RtcpError(f"RTCP {what} too short for its {count} report blocks")
    return tuple(ReportBlock._unpack(body, offset + 24 * i) for i in range(count))


def _parse_sr(count: int, body: bytes) -> SenderReport:
    if len(body) < 24:
        raise RtcpError(f"RTCP SR too short: {len(body)} bytes of sender info, needs 24")
    ssrc, ntp, rtp_ts, packets, octets = _SR_INFO.unpack_from(body)
    return SenderReport(ssrc, ntp, rtp_ts, packets, octets, _blocks(count, body, 24, "SR"))


def _parse_rr(count: int, body: bytes) -> ReceiverReport:
    if len(body) < 4:
        raise RtcpError("RTCP RR too short for its SSRC")
    (ssrc,) = _SSRC.unpack_from(body)
    return ReceiverReport(ssrc, _blocks(count, body, 4, "RR"))


def _parse_sdes(count: int, body: bytes) -> SourceDescription:
    chunks = []
    offset = 0
    for _ in range(count):
        if len(body) < offset + 4:
            raise RtcpError("RTCP SDES too short for its chunks")
        (ssrc,) = _SSRC.unpack_from(body, offset)
        offset += 4
        items = []
        while True:
            if offset >= len(body):
                raise RtcpError("RTCP SDES chunk without its terminating null item")
            kind = body[offset]
            if kind == 0:
                offset += 4 - offset % 4  # the null item, then padding to the next 32 bits
                break
            if offset + 2 > len(body) or offset + 2 + body[offset + 1] > len(body):
                raise RtcpError(f"RTCP SDES item of type {kind} overruns its packet")
            length = body[offset + 1]
            items.append((kind, body[offset + 2 : offset + 2 + length]))
            offset += 2 + length
        chunks.append(SdesChunk(ssrc, tuple(items)))
    return SourceDescription(tuple(chunks))


def _parse_bye(count: int, body: bytes) -> Bye:
    if len(body) < 4 * count:
        raise RtcpError(f"RTCP BYE too short for its {count} sources")
    ssrcs = struct.unpack_from(f"!{count}I", body)
    reason = None
    offset = 4 * count
    if offset < len(body) and body[offset]:
        length = body[offset]
        if offset + 1 + length > len(body):
            raise RtcpError("RTCP BYE reason overruns its packet")
        reason = body[offset + 1 : offset + 1 + length].decode("utf-8", "replace")
    return Bye(tuple(ssrcs), reason)


# -- time -----------------------------------------------------------------------------------


def ntp_timestamp(unix_time: float) -> int:
    """64-bit NTP timestamp (seconds since 1900 in 32.32 fixed point) of a `time.time()`."""
    return round((unix_time + _NTP_EPOCH_OFFSET) * (1 << 32)) & 0xFFFFFFFFFFFFFFFF


def ntp_middle(ntp: int) -> int:
    """The middle 32 bits (16.16 seconds) that LSR echoes and round trips are computed in."""
    return (ntp >> 16) & 0xFFFFFFFF


def round_trip(arrival_ntp: int, block: ReportBlock) -> float | None:
    """RFC 3550 6.4.1: round trip = A - LSR - DLSR, where A is when the report arrived (our
    clock) and LSR our own SR's time, echoed: only our clock is involved, so the two ends'
    clocks need not agree. None before the peer received any SR of ours (LSR 0)."""
    if block.lsr == 0:
        return None
    delta = (ntp_middle(arrival_ntp) - block.lsr - block.dlsr) & 0xFFFFFFFF
    if delta >= 1 << 31:
        return 0.0  # a peer that over-states its delay (rounding): not a negative round trip
    return delta / 65536


# -- reception statistics -------------------------------------------------------------------


class ReceptionStats:
    """RFC 3550 receiver statistics of one source (A.1 sequence, A.3 loss, A.8 jitter).

    Pure and cheap: `update` runs for every audio packet a session receives, so it is a handful
    of integer and float operations and no allocation. `count` is `update` for packets whose
    timestamp says nothing about arrival timing (RFC 4733 events repeat their start timestamp
    for a whole key press; feeding that to the jitter estimate would invent jitter)."""

    __slots__ = (
        "_bad_seq",
        "_base_seq",
        "_cycles",
        "_expected_prior",
        "_jitter",
        "_max_seq",
        "_received_prior",
        "_transit",
        "clock_rate",
        "duplicates",
        "received",
    )

    def __init__(self, clock_rate: int = 8000) -> None:
        self.clock_rate = clock_rate
        self.received = 0  # packets counted, duplicates included (A.3)
        self.duplicates = 0  # repeats of the newest packet (a retransmitting middlebox)
        self._base_seq: int | None = None
        self._max_seq = 0
        self._cycles = 0  # sequence wraps, times 2**16
        self._bad_seq = -1  # after a big jump: the next number that confirms a restart
        self._transit: float | None = None
        self._jitter = 0.0  # in timestamp units, as A.8 keeps it (before rounding)
        self._expected_prior = 0
        self._received_prior = 0

    def update(self, seq: int, rtp_ts: int, arrival: float) -> None:
        """One packet: sequence accounting, then the A.8 jitter estimate from its transit."""
        max_seq = self._max_seq
        if 0 < (seq - max_seq) & 0xFFFF < _MAX_DROPOUT and self._base_seq is not None:
            if seq < max_seq:  # the in-order case, inlined: this runs for every packet
                self._cycles += _SEQ_MOD
            self._max_seq = seq
            self.received += 1
        elif not self.count(seq):
            return
        transit = arrival * self.clock_rate - rtp_ts
        last = self._transit
        self._transit = transit
        if last is not None:
            d = transit - last
            if d < 0:
                d = -d
            if d >= 2147483648.0:  # the 32-bit timestamp wrapped between the two
                d = abs(d - 4294967296.0)
            self._jitter += (d - self._jitter) * 0.0625  # J += (|D| - J) / 16

    def count(self, seq: int) -> bool:
        """Sequence accounting only (A.1 update_seq); False if the packet was not counted (a
        big jump, until the next packet confirms the stream restarted there)."""
        if self._base_seq is None:
            self._restart(seq)
            self.received = 1
            return True
        ahead = (seq - self._max_seq) & 0xFFFF
        if ahead < _MAX_DROPOUT:
            if ahead == 0:
                self.duplicates += 1
            elif seq < self._max_seq:
                self._cycles += _SEQ_MOD
            self._max_seq = seq
        elif ahead <= _SEQ_MOD - _MAX_MISORDER:
            if seq != self._bad_seq:
                self._bad_seq = (seq + 1) & 0xFFFF
                return False
            self._restart(seq)  # two in a row from the new place: the sender restarted
            self.received = 0
        # else: a reordered or duplicate older packet, counted as received
        self.received += 1
        return True

    def _restart(self, seq: int) -> None:
        self._base_seq = self._max_seq = seq
        self._bad_seq = -1
        self._cycles = 0
        self._expected_prior = self._received_prior = 0
        self._transit = None

    @property
    def highest_seq(self) -> int:
        """The extended highest sequence number received (cycles << 16 | max)."""
        return self._cycles + self._max_seq

    @property
    def expected(self) -> int:
        if self._base_seq is None:
            return 0
        return self.highest_seq - self._base_seq + 1

    @property
    def cumulative_lost(self) -> int:
        """Expected minus received (A.3): negative when duplicates outnumber losses."""
        return self.expected - self.received

    @property
    def jitter(self) -> float:
        """Interarrival jitter in seconds."""
        return self._jitter / self.clock_rate

    def report_block(self, ssrc: int, lsr: int = 0, dlsr: int = 0) -> ReportBlock:
        """The report block for this source, and the start of a new reporting interval: the
        fraction lost covers only what was expected since the previous call (A.3)."""
        expected = self.expected
        expected_interval = expected - self._expected_prior
        received_interval = self.received - self._received_prior
        self._expected_prior = expected
        self._received_prior = self.received
        lost_interval = expected_interval - received_interval
        fraction = 0
        if expected_interval > 0 and lost_interval > 0:
            fraction = min(255, (lost_interval << 8) // expected_interval)
        cumulative = max(-(1 << 23), min((1 << 23) - 1, self.cumulative_lost))
        return ReportBlock(
            ssrc,
            fraction,
            cumulative,
            self.highest_seq & 0xFFFFFFFF,
            min(int(self._jitter), 0xFFFFFFFF),
            lsr & 0xFFFFFFFF,
            min(dlsr, 0xFFFFFFFF),
        )

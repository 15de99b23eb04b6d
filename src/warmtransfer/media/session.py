"""One RTP stream (RFC 3550) of one call leg: send paced audio and DTMF, receive audio and keys.

What arrives is routed, cheapest first: to the other leg of a bridge as raw payload (no decode
when both legs use the same codec), and only when someone listens (an AI ear, a recorder) is it
decoded to PCM. What is sent comes from the shared pacing clock: the current playback, else
silence, except while bridged, when the other leg's packets are forwarded as they arrive.

Symmetric RTP (RFC 4961, "latching"): by default the session sends to where the peer's packets
come from, not only to what its SDP said. A phone behind NAT writes its private address in the
SDP; its packets arrive from the NAT's public one, which is the only address that reaches it.
The first valid RTP packet latches the source; later packets from any other address are dropped
and counted (`stats.wrong_source`), which also defeats RTP injection by a third party. The peer
may move (NAT rebinding) only by sending the latched SSRC after its old address fell silent.

Decoded audio (listeners, recorder) goes through a small jitter buffer (`jitter.py`) so it is in
order and gap-concealed; the bridge's pass-through does not, it forwards on arrival.

RTCP (RFC 3550; packets and statistics in `rtcp.py`). Every `rtcp_interval` (5 s, RFC 3550's
minimum, randomised 0.5-1.5x per 6.2 so that sessions started together do not report in step)
the session sends a compound SR (if it sent RTP since its last report) or RR, with an SDES CNAME,
and a BYE when it closes. Reports from the peer fill `stats.remote_*` and `stats.round_trip`.
Transport, and its limits:
- `open` binds the RTP socket on an even port and a second socket on the odd port above it
  (RFC 3550 11), retrying a few random ports, since peers that read our SDP's `m=` port send
  their RTCP to port + 1 (we write no `a=rtcp`). If no such pair is found, the session has only
  its RTP socket: it still sends RTCP (from the RTP port) and hears RTCP that arrives there, but
  a peer sending to port + 1 goes unheard; media are unaffected.
- RTCP is sent to where the peer's RTCP comes from once some arrived (symmetric, as RTP), else
  to the peer's RTP port + 1; with `rtcp_mux` (the peer offered `a=rtcp-mux`, RFC 5761) it goes
  to the RTP address from the RTP socket. Our offers carry `a=rtcp-mux` and the call turns it
  on when the answer agrees (`sip/sdp.py`); the odd socket, bound before the answer came, stays
  open and idle. We do not honour an `a=rtcp:` port (RFC 3605) the peer wrote.
- RTCP arriving on the RTP socket is always taken (`is_rtcp` tells it apart), from the latched
  RTP source only once one is latched; on the RTCP socket, the first sender is latched.
- One reporting source and one remote source (a phone call): no RTCP bandwidth sharing among
  many members, no report for CSRCs, no SRTCP.
Cost: per received audio packet, `ReceptionStats.update` (sequence extension and A.8 jitter),
which replaces the loss counting done before; everything else runs on the RTCP timer or when an
RTCP datagram arrives, never in the 20 ms paths.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import random
import struct
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

from warmtransfer.media.audio import AudioClip
from warmtransfer.media.clock import PacingClock
from warmtransfer.media.dtmf import DtmfReceiver, Pause, parse_digit_string, tone_packets
from warmtransfer.media.g711 import decoder, encoder, silence_payload
from warmtransfer.media.jitter import JitterBuffer
from warmtransfer.media.player import FRAME, Playback
from warmtransfer.media.recorder import Recorder
from warmtransfer.media.rtcp import (
    Bye,
    ReceiverReport,
    ReceptionStats,
    ReportBlock,
    RtcpError,
    RtcpPacket,
    SenderReport,
    SourceDescription,
    build_compound,
    ntp_middle,
    ntp_timestamp,
    parse_compound,
    round_trip,
)
from warmtransfer.media.rtp_packet import build_rtp, is_rtcp

log = logging.getLogger(__name__)

Address = tuple[str, int]
AudioSink = Callable[[NDArray[np.int16]], None]
_HEADER = struct.Struct("!BBHII")
_RELATCH_AFTER = 1.0  # s of silence from the latched source before its SSRC may move address
RTCP_INTERVAL = 5.0  # s between reports: RFC 3550 6.2's minimum, fine for one call's two members
_PORT_PAIR_TRIES = 8  # random ports tried for an even RTP port with a free odd neighbour


@dataclass(frozen=True)
class MediaFormat:
    """What offer/answer agreed for this stream."""

    codec: str  # "PCMU" or "PCMA"
    payload_type: int
    dtmf_payload_type: int | None


class MediaClosed(ConnectionError):
    """The session was closed (the call ended) while something was still being sent."""


#: Seconds within which the same key by the other signalling (RFC 4733 vs SIP INFO) is a copy.
DUPLICATE_KEY_WINDOW = 0.3


@dataclass(frozen=True)
class KeyPress:
    digit: str
    at: float  # loop time the first packet of the event arrived


class RtpStats:
    """Counters of one session. `lost` is RFC 3550's expected - received of the peer's stream,
    except that a repeat of the newest packet does not offset a loss (never below 0). The
    `remote_*` fields and `round_trip` are what the peer's RTCP reports say about our stream
    (None until a report about it came)."""

    def __init__(self, reception: ReceptionStats | None = None) -> None:
        self.reception = ReceptionStats() if reception is None else reception
        self.sent = 0
        self.received = 0
        self.forwarded = 0
        self.first_sent_at: float | None = None
        self.first_received_at: float | None = None
        self.first_forwarded_at: float | None = None
        self.last_received_at: float | None = None
        self.wrong_source = 0  # RTP dropped because it came from another address than latched
        self.relatched = 0  # times the latched source moved (NAT rebinding)
        self.reports_sent = 0  # RTCP compound packets sent
        self.reports_received = 0  # SRs and RRs received from the peer
        self.remote_sent: int | None = None  # the peer's packet count, from its last SR
        self.remote_octets: int | None = None  # the peer's payload octet count, likewise
        self.remote_loss: float | None = None  # fraction of ours the peer lost, last interval
        self.remote_lost: int | None = None  # ours the peer lost, cumulative
        self.remote_jitter: float | None = None  # s, interarrival jitter the peer measures
        self.round_trip: float | None = None  # s, from the peer's echo of our last SR
        self.remote_bye = False  # the peer sent an RTCP BYE

    @property
    def lost(self) -> int:
        reception = self.reception
        return max(0, reception.cumulative_lost + reception.duplicates)


class RtpSession(asyncio.DatagramProtocol):
    """`symmetric`: latch the remote address to the peer's packets (see the module docstring);
    off only for peers known to send from one address and receive on another. `jitter_window`:
    how long decoded audio waits for a reordered packet before its gap is concealed.
    `rtcp_interval`: mean seconds between RTCP reports (shorter only in tests; RFC 3550 asks
    for at least 5). `rtcp_mux`: the peer offered `a=rtcp-mux`, send RTCP on the RTP port."""

    def __init__(
        self,
        clock: PacingClock,
        name: str = "",
        *,
        symmetric: bool = True,
        jitter_window: float = 0.060,
        rtcp_interval: float = RTCP_INTERVAL,
        rtcp_mux: bool = False,
    ) -> None:
        self.clock = clock
        self.name = name
        self.symmetric = symmetric
        self.transport: asyncio.DatagramTransport | None = None
        self.local: Address = ("0.0.0.0", 0)
        self.remote: Address | None = None
        self.format: MediaFormat | None = None
        self.stats = RtpStats()
        self.keys: asyncio.Queue[KeyPress] = asyncio.Queue()
        self._last_key: tuple[str, str, float] | None = None  # (digit, how, loop time)
        self.recorder: Recorder | None = None
        self.forward_to: RtpSession | None = None
        self._ssrc = random.getrandbits(32)
        self._seq = random.getrandbits(16)
        self._ts = random.getrandbits(32)
        self._marker = True
        self._playback: Playback | None = None
        self._tones: list[tuple[bytes, bool]] = []
        self._tone_ts = 0
        self._tone_done: asyncio.Future[None] | None = None
        self._dialling = asyncio.Lock()  # one digit string at a time: they share _tones
        self._silence = b""
        self._encode: Callable[[NDArray[np.int16]], bytes] | None = None
        self._decode: Callable[[bytes], NDArray[np.int16]] | None = None
        self._sinks: list[AudioSink] = []
        self._dtmf = DtmfReceiver()
        self._last_seq: int | None = None
        self._sdp_remote: Address | None = None
        self._source: Address | None = None  # the latched address, as received
        self._source_ssrc: int | None = None
        self.jitter = JitterBuffer(b"", window=jitter_window)
        self._loop = asyncio.get_running_loop()
        self._closed = self._loop.create_future()
        self.closed_callback: Callable[[RtpSession], None] | None = None
        self.rtcp_interval = rtcp_interval
        self.rtcp_mux = rtcp_mux
        self._reception = self.stats.reception
        self._rtcp_transport: asyncio.DatagramTransport | None = None
        self._rtcp_source: Address | None = None  # where the peer's RTCP comes from
        self._rtcp_timer: asyncio.TimerHandle | None = None
        self._sent_at_report = 0  # stats.sent when the last report went out
        self._ts_base = self._ts  # octets sent = timestamp advance, for G.711 (see _report)
        self._last_sr: tuple[int, float] | None = None  # peer's last SR: (NTP middle, our time)
        self.cname = f"{self._ssrc:08x}@warmtransfer"

    @classmethod
    async def open(
        cls,
        host: str,
        clock: PacingClock,
        name: str = "",
        *,
        symmetric: bool = True,
        jitter_window: float = 0.060,
        rtcp_interval: float = RTCP_INTERVAL,
        rtcp_mux: bool = False,
    ) -> RtpSession:
        """Bind the session's sockets on `host`: RTP on an even port, RTCP on the odd one above
        (unless `rtcp_mux`); see the module docstring for what happens if no pair is free."""
        loop = asyncio.get_running_loop()

        def session() -> RtpSession:
            return cls(
                clock,
                name,
                symmetric=symmetric,
                jitter_window=jitter_window,
                rtcp_interval=rtcp_interval,
                rtcp_mux=rtcp_mux,
            )

        for attempt in range(1 if rtcp_mux else _PORT_PAIR_TRIES):
            transport, protocol = await loop.create_datagram_endpoint(session, local_addr=(host, 0))
            if rtcp_mux:
                break
            port = protocol.local[1]
            if port % 2 == 0:
                try:
                    protocol._rtcp_transport, _ = await loop.create_datagram_endpoint(
                        functools.partial(_RtcpSocket, protocol), local_addr=(host, port + 1)
                    )
                except OSError:
                    pass
                else:
                    break
            if attempt < _PORT_PAIR_TRIES - 1:
                transport.close()
        else:
            log.warning("RTP %s: no free RTP/RTCP port pair, RTCP on the RTP port only", name)
        return protocol

    @property
    def latched(self) -> Address | None:
        """The address the peer's RTP is accepted from (and sent to), once its first packet came."""
        return None if self._source is None else self._source[:2]

    # -- asyncio protocol -------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.local = transport.get_extra_info("sockname")[:2]

    def connection_lost(self, exc: Exception | None) -> None:
        self.close()  # also when the socket died under us: leave the clock, end what was sent
        if not self._closed.done():
            self._closed.set_result(None)
        if self.closed_callback is not None:
            self.closed_callback(self)

    def datagram_received(self, data: bytes, addr: Address) -> None:
        fmt = self.format
        if len(data) < 12 or fmt is None:
            return
        if is_rtcp(data):
            if self._source is None or addr == self._source:
                self._rtcp_received(data, addr, muxed=True)
            return
        first, second, seq, timestamp, ssrc = _HEADER.unpack_from(data)
        if first >> 6 != 2:
            return
        header = 12 + 4 * (first & 0x0F)
        if first & 0x10:
            if len(data) < header + 4:
                return
            header += 4 + 4 * int.from_bytes(data[header + 2 : header + 4], "big")
        end = len(data)
        if first & 0x20:
            if data[-1] == 0:
                return  # padding bit set with a zero count: malformed
            end -= data[-1]
        if end <= header:
            return  # CSRCs, extension or padding overrun the packet, or no payload at all
        payload_type = second & 0x7F
        is_event = payload_type == fmt.dtmf_payload_type
        if not is_event and payload_type != fmt.payload_type:
            return
        now = self._loop.time()
        if addr != self._source and not self._accept_source(addr, ssrc, now):
            return
        payload = data[header:end]
        stats = self.stats
        stats.last_received_at = now
        decoding = bool(self._sinks) or self.recorder is not None
        if is_event:
            # Events share the sender's sequence space (they count towards loss), but their
            # timestamp is the key press's start, useless for jitter.
            self._reception.count(seq)
            digit = self._dtmf.feed(timestamp, payload)
            if digit is not None:
                self.key_pressed(digit, now, "rfc4733")
            if decoding:
                self.jitter.push(seq, timestamp, None, now)  # its slot is not a lost frame
            return
        self._reception.update(seq, timestamp, now)
        stats.received += 1
        if stats.first_received_at is None:
            stats.first_received_at = now
        if self.forward_to is not None:
            self.forward_to.forward(payload, fmt.codec, bool(second & 0x80), now)
        if decoding:
            self.jitter.push(seq, timestamp, payload, now)
            self._deliver(now)

    def _accept_source(self, addr: Address, ssrc: int, now: float) -> bool:
        """Whether RTP from `addr` (not the latched source) is taken; latches it if it may be.

        Off the per-packet path: only the first packet, and packets from a wrong address, come
        here (the caller compares `addr` with the latched one first)."""
        if not self.symmetric:
            self._source_ssrc = ssrc  # the source reported on in RTCP
            return True
        if self._source is not None:
            last = self.stats.last_received_at
            moved = ssrc == self._source_ssrc and (last is None or now - last >= _RELATCH_AFTER)
            if not moved:
                self.stats.wrong_source += 1
                return False
            self.stats.relatched += 1
        self._source, self._source_ssrc = addr, ssrc
        remote = addr[:2]
        if remote != self.remote:
            log.info("RTP %s: latched to %s (the SDP said %s)", self.name, remote, self.remote)
        self.remote = remote
        return True

    def _deliver(self, now: float) -> None:
        """Decoded frames that the jitter buffer has ready, in order, to recorder and sinks."""
        decode = self._decode
        assert decode is not None
        jitter = self.jitter
        while (frame := jitter.pop(now)) is not None:
            pcm = decode(frame.payload)
            if self.recorder is not None:
                self.recorder.received(pcm, now)
            for sink in list(self._sinks):
                sink(pcm)

    def _is_closed(self) -> bool:
        return self.transport is None or self.transport.is_closing()

    # -- setup ------------------------------------------------------------------------------

    def start(self, remote: Address, fmt: MediaFormat) -> None:
        """Start sending to `remote` with the negotiated format (called after offer/answer)."""
        self.remote = remote
        self._sdp_remote = remote
        self.format = fmt
        self._encode = encoder(fmt.codec)
        self._decode = decoder(fmt.codec)
        self._silence = silence_payload(fmt.codec, FRAME)
        self.jitter.silence = self._silence
        self.clock.add(self)
        if self._rtcp_timer is None and not self._is_closed():
            # RFC 3550 6.2: the first report after half the interval, the rest at the full one.
            self._schedule_report(self.rtcp_interval / 2)

    def update_remote(self, remote: Address) -> None:
        """A new SDP address (re-INVITE). The same address again (a hold, a session refresh)
        keeps the latched one, which is where a peer behind NAT really is; a new one is used
        and the next packet from the peer latches again."""
        if remote == self._sdp_remote and self._source is not None:
            return
        self._sdp_remote = remote
        self.remote = remote
        self._source = None
        self._rtcp_source = None

    def close(self) -> None:
        self.clock.remove(self)
        if self._rtcp_timer is not None:
            self._rtcp_timer.cancel()
            self._rtcp_timer = None
            self._send_report(bye=True)  # only a session that started reporting says goodbye
        self._tones = []
        if self._tone_done is not None and not self._tone_done.done():
            self._tone_done.set_exception(MediaClosed(f"RTP session {self.name} closed"))
        if self._playback is not None:
            self._playback.stop()
            self._playback = None
        self.forward_to = None
        self._sinks.clear()
        self.jitter.reset()
        if self._rtcp_transport is not None:
            self._rtcp_transport.close()
        if self.transport is not None:
            self.transport.close()

    async def wait_closed(self) -> None:
        await self._closed

    # -- sending ----------------------------------------------------------------------------

    def play(
        self,
        clip: AudioClip,
        *,
        loop: bool = False,
        volume: float = 1.0,
        appendable: bool = False,
    ) -> Playback:
        """Start playing `clip` now, replacing whatever was playing (`appendable`: see Playback)."""
        if self.format is None:
            raise RuntimeError(f"RTP session {self.name} has no negotiated format yet")
        self.stop_playback()
        playback = Playback(
            clip, self.format.codec, loop=loop, volume=volume, appendable=appendable
        )
        if self._is_closed():
            playback.stop()  # nothing will ever pace it out: done now rather than never
            return playback
        self._playback = playback
        self._marker = True
        if self.forward_to is None and not self._tones:
            # The first frame goes out now rather than on the next tick: the listener hears
            # the start up to 20 ms sooner, and the receiver re-times on the marker bit.
            now = asyncio.get_running_loop().time()
            payload = playback.next_payload(now)
            if payload is not None and self.transport is not None and self.remote is not None:
                self._send_audio(payload, now)
        return playback

    def stop_playback(self) -> None:
        if self._playback is not None:
            self._playback.stop()
            self._playback = None

    @property
    def playing(self) -> bool:
        return self._playback is not None and not self._playback.done.done()

    async def send_digits(self, digits: str) -> None:
        """Send RFC 4733 events, one after the other, honouring `w`/`,` pauses."""
        fmt = self.format
        if fmt is None or fmt.dtmf_payload_type is None:
            raise RuntimeError(
                f"the peer of {self.name or 'this leg'} did not offer telephone-event"
            )
        items = parse_digit_string(digits)
        async with self._dialling:
            for item in items:
                if self._is_closed():
                    raise MediaClosed(f"RTP session {self.name} closed")
                if isinstance(item, Pause):
                    await asyncio.sleep(item.seconds)  # part of the dial string, not sync
                    continue
                done = asyncio.get_running_loop().create_future()
                self._tones = [*tone_packets(item), (b"", False)]
                self._tone_done = done
                self._tone_ts = self._ts
                await done
                await asyncio.sleep(0.06)  # inter-digit gap, as dialling hardware does

    def on_tick(self, now: float) -> None:
        if self.jitter.pending:  # frames held behind a gap whose wait is over
            self._deliver(now)
        if self.remote is None or self.format is None or self._is_closed():
            return
        if self._tones:
            tone, marker = self._tones.pop(0)
            if tone:
                assert self.format.dtmf_payload_type is not None
                self._send(self.format.dtmf_payload_type, tone, marker, self._tone_ts, now)
                self._ts = (self._ts + FRAME) & 0xFFFFFFFF  # the media clock runs on in a tone
                return
            # The key press is over; this tick carries audio again (one packet every tick).
            if self._tone_done is not None and not self._tone_done.done():
                self._tone_done.set_result(None)
        if self.forward_to is not None:
            return
        payload = None
        if self._playback is not None:
            payload = self._playback.next_payload(now)
            if payload is None:
                self._playback = None
        self._send_audio(self._silence if payload is None else payload, now)

    def forward(self, payload: bytes, codec: str, marker: bool, now: float) -> None:
        """A bridged packet from the other leg: pass it through, transcoding only if needed."""
        if self.format is None or self._is_closed():
            return
        if codec != self.format.codec:
            assert self._encode is not None
            payload = self._encode(decoder(codec)(payload))
        stats = self.stats
        stats.forwarded += 1
        if stats.first_forwarded_at is None:
            stats.first_forwarded_at = now
        self._marker = self._marker or marker
        self._send_audio(payload, now)

    def _send_audio(self, payload: bytes, now: float) -> None:
        assert self.format is not None
        marker, self._marker = self._marker, False
        self._send(self.format.payload_type, payload, marker, self._ts, now)
        self._ts = (self._ts + len(payload)) & 0xFFFFFFFF
        if self.recorder is not None:
            assert self._decode is not None
            self.recorder.sent(self._decode(payload), now)

    def _send(self, pt: int, payload: bytes, marker: bool, ts: int, now: float) -> None:
        assert self.transport is not None
        assert self.remote is not None
        self.transport.sendto(
            build_rtp(pt, self._seq, ts, self._ssrc, payload, marker), self.remote
        )
        self._seq = (self._seq + 1) & 0xFFFF
        stats = self.stats
        stats.sent += 1
        if stats.first_sent_at is None:
            stats.first_sent_at = now

    # -- receiving --------------------------------------------------------------------------

    @contextlib.contextmanager
    def listening(self, sink: AudioSink) -> Iterator[None]:
        """Decoded 8 kHz PCM frames go to `sink` while inside the block, in sequence order
        (through the jitter buffer: a reordered packet waits up to `jitter_window`)."""
        if not self._sinks and self.recorder is None:
            self.jitter.reset()  # nobody was listening: what it held is stale
        self._sinks.append(sink)
        try:
            yield
        finally:
            with contextlib.suppress(ValueError):
                self._sinks.remove(sink)

    def key_pressed(self, digit: str, at: float, how: str) -> bool:
        """Queue a key the peer pressed, `how` it came ("rfc4733", "info"); False if dropped.

        Some phones and PBXs send every key twice, as an RFC 4733 event and as a SIP INFO. The
        same digit by the other way within `DUPLICATE_KEY_WINDOW` is that second copy, not a
        second press (a person cannot press twice that fast, and one phone uses one way for
        its presses); counted twice, "1" would read as "11" and an account number would be
        wrong."""
        last = self._last_key
        if (
            last is not None
            and last[0] == digit
            and last[1] != how
            and at - last[2] <= DUPLICATE_KEY_WINDOW
        ):
            self._last_key = None  # a third copy would be a new press
            return False
        self._last_key = (digit, how, at)
        self.keys.put_nowait(KeyPress(digit, at))
        return True

    def clear_keys(self) -> None:
        while not self.keys.empty():
            self.keys.get_nowait()

    # -- RTCP -------------------------------------------------------------------------------

    def _schedule_report(self, interval: float) -> None:
        delay = interval * random.uniform(0.5, 1.5)
        self._rtcp_timer = asyncio.get_running_loop().call_later(delay, self._report_due)

    def _report_due(self) -> None:
        self._rtcp_timer = None
        if self._is_closed():
            return
        self._schedule_report(self.rtcp_interval)
        try:
            self._send_report()
        except Exception:  # a report is never worth losing the call's media timer over
            log.exception("RTP %s: RTCP report failed", self.name)

    def report(self, *, bye: bool = False) -> bytes:
        """The compound packet we would send now: SR or RR with a block about the peer's
        stream if it sent any, SDES CNAME, and BYE if `bye`. Starts a new loss interval."""
        blocks: tuple[ReportBlock, ...] = ()
        if self._source_ssrc is not None and self._reception.received:
            lsr = dlsr = 0
            if self._last_sr is not None:
                lsr, at = self._last_sr
                dlsr = round((asyncio.get_running_loop().time() - at) * 65536)
            blocks = (self._reception.report_block(self._source_ssrc, lsr, dlsr),)
        packets: list[RtcpPacket] = []
        if self.stats.sent > self._sent_at_report:
            self._sent_at_report = self.stats.sent
            # G.711 carries one octet per sample, so the timestamp advance is the payload
            # octets sent (exact for audio; a DTMF packet counts 160 instead of its 4).
            packets.append(
                SenderReport(
                    self._ssrc,
                    ntp_timestamp(time.time()),
                    self._ts,
                    self.stats.sent & 0xFFFFFFFF,
                    (self._ts - self._ts_base) & 0xFFFFFFFF,
                    blocks,
                )
            )
        else:
            packets.append(ReceiverReport(self._ssrc, blocks))
        packets.append(SourceDescription.cname_of(self._ssrc, self.cname))
        if bye:
            packets.append(Bye((self._ssrc,)))
        return build_compound(packets)

    def _send_report(self, *, bye: bool = False) -> None:
        if self.remote is None or self._is_closed():
            return
        data = self.report(bye=bye)
        assert self.transport is not None
        if self.rtcp_mux:
            self.transport.sendto(data, self.remote)
        else:
            host, port = self.remote
            to = self._rtcp_source or (host, port + 1)
            (self._rtcp_transport or self.transport).sendto(data, to)
        self.stats.reports_sent += 1

    def _rtcp_received(self, data: bytes, addr: Address, *, muxed: bool) -> None:
        """An RTCP datagram from the peer: take what its reports say about our stream."""
        if not muxed:
            if self._rtcp_source is None:
                self._rtcp_source = addr
            elif addr != self._rtcp_source and self.symmetric:
                self.stats.wrong_source += 1
                return
        try:
            packets = parse_compound(data)
        except RtcpError as exc:
            log.debug("RTP %s: dropped RTCP from %s: %s", self.name, addr, exc)
            return
        stats = self.stats
        arrival = ntp_timestamp(time.time())
        for packet in packets:
            if isinstance(packet, SenderReport | ReceiverReport):
                stats.reports_received += 1
                if isinstance(packet, SenderReport):
                    stats.remote_sent = packet.packet_count
                    stats.remote_octets = packet.octet_count
                    now = asyncio.get_running_loop().time()
                    self._last_sr = (ntp_middle(packet.ntp), now)
                for block in packet.reports:
                    if block.ssrc != self._ssrc:
                        continue  # about someone else (a conference mixer's other members)
                    stats.remote_loss = block.fraction_lost / 256
                    stats.remote_lost = block.cumulative_lost
                    stats.remote_jitter = block.jitter / 8000  # G.711's RTP clock
                    rtt = round_trip(arrival, block)
                    if rtt is not None:
                        stats.round_trip = rtt
            elif isinstance(packet, Bye):
                stats.remote_bye = True


class _RtcpSocket(asyncio.DatagramProtocol):
    """The odd-port RTCP socket of a session: hands datagrams to it, nothing else."""

    def __init__(self, session: RtpSession) -> None:
        self.session = session

    def datagram_received(self, data: bytes, addr: Address) -> None:
        self.session._rtcp_received(data, addr, muxed=False)

"""RtpSession over real UDP sockets on 127.0.0.1: pacing, playback, receiving, DTMF, close.

Sessions talk to each other or to raw asyncio datagram endpoints (`Peer`) that record what
arrives (with the arrival time) and inject crafted packets. Nothing under test is mocked.
Synchronisation is on queues, futures and the pacing clock's own ticks, always under an
`asyncio.timeout` deadline; timing assertions use tolerant bounds (a loaded 2-core machine).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import random
import struct
from collections.abc import AsyncIterator, Callable
from itertools import pairwise
from typing import cast

import numpy as np
import pytest
from numpy.typing import NDArray

from warmtransfer.media.audio import AudioClip
from warmtransfer.media.clock import PacingClock
from warmtransfer.media.dtmf import decode_event
from warmtransfer.media.g711 import ulaw_decode, ulaw_encode
from warmtransfer.media.rtp_packet import RtpPacket
from warmtransfer.media.session import MediaClosed, MediaFormat, RtpSession

PCMU = MediaFormat("PCMU", 0, 101)
PCMA = MediaFormat("PCMA", 8, 101)
NO_DTMF = MediaFormat("PCMU", 0, None)
DEADLINE = 5.0
ULAW_SILENCE = b"\xff" * 160
ALAW_SILENCE = b"\xd5" * 160

Address = tuple[str, int]


# -- helpers ------------------------------------------------------------------------------------


class Peer(asyncio.DatagramProtocol):
    """A raw UDP endpoint: records each datagram with its arrival time; sends crafted ones."""

    def __init__(self) -> None:
        self.transport: asyncio.DatagramTransport | None = None
        self.datagrams: asyncio.Queue[tuple[float, bytes]] = asyncio.Queue()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.DatagramTransport, transport)

    def datagram_received(self, data: bytes, addr: Address) -> None:
        self.datagrams.put_nowait((asyncio.get_running_loop().time(), data))

    @property
    def address(self) -> Address:
        assert self.transport is not None
        host, port = self.transport.get_extra_info("sockname")[:2]
        return host, port

    def send(self, data: bytes, to: RtpSession) -> None:
        assert self.transport is not None
        self.transport.sendto(data, to.local)

    async def next(self, deadline: float = DEADLINE) -> tuple[float, RtpPacket]:
        async with asyncio.timeout(deadline):
            at, data = await self.datagrams.get()
        return at, RtpPacket.parse(data)

    async def collect(
        self, count: int, deadline: float = DEADLINE
    ) -> list[tuple[float, RtpPacket]]:
        async with asyncio.timeout(deadline):
            return [await self.next() for _ in range(count)]

    async def until(
        self, wanted: Callable[[RtpPacket], bool], deadline: float = DEADLINE
    ) -> tuple[float, RtpPacket]:
        """Skip packets until one matches (e.g. the marker that starts a playback)."""
        async with asyncio.timeout(deadline):
            while True:
                at, packet = await self.next()
                if wanted(packet):
                    return at, packet


class Net:
    """Opens sessions and peers on 127.0.0.1 and closes every one of them at the end."""

    def __init__(self, clock: PacingClock) -> None:
        self.clock = clock
        self.sessions: list[RtpSession] = []
        self.peers: list[Peer] = []
        self.stack = contextlib.ExitStack()

    async def session(self, name: str = "") -> RtpSession:
        session = await RtpSession.open("127.0.0.1", self.clock, name=name)
        self.sessions.append(session)
        return session

    async def peer(self) -> Peer:
        loop = asyncio.get_running_loop()
        _, peer = await loop.create_datagram_endpoint(Peer, local_addr=("127.0.0.1", 0))
        self.peers.append(peer)
        return peer

    async def pair(self, fmt: MediaFormat = PCMU) -> tuple[RtpSession, RtpSession]:
        a, b = await self.session("a"), await self.session("b")
        a.start(b.local, fmt)
        b.start(a.local, fmt)
        return a, b

    async def aclose(self) -> None:
        self.stack.close()
        for session in self.sessions:
            session.close()
        async with asyncio.timeout(DEADLINE):
            for session in self.sessions:
                await session.wait_closed()
        for peer in self.peers:
            if peer.transport is not None:
                peer.transport.close()


class TickProbe:
    """A stream on the pacing clock that counts its ticks: waiting for N ticks observes real
    time through the clock under test, and `snapshot` runs inside each tick (after the streams
    added before the probe have sent their packet for that tick)."""

    def __init__(
        self, clock: PacingClock, snapshot: Callable[[], tuple[int, ...]] | None = None
    ) -> None:
        self.clock = clock
        self.ticks = 0
        self.snapshots: list[tuple[int, ...]] = []
        self._snapshot = snapshot
        self._waiters: list[tuple[int, asyncio.Future[None]]] = []
        clock.add(self)

    def on_tick(self, now: float) -> None:
        self.ticks += 1
        if self._snapshot is not None:
            self.snapshots.append(self._snapshot())
        for target, waiter in list(self._waiters):
            if self.ticks >= target and not waiter.done():
                waiter.set_result(None)

    async def wait(self, ticks: int, deadline: float = DEADLINE) -> None:
        waiter = asyncio.get_running_loop().create_future()
        self._waiters.append((self.ticks + ticks, waiter))
        async with asyncio.timeout(deadline):
            await waiter

    def remove(self) -> None:
        self.clock.remove(self)


class Frames:
    """A listening sink that queues decoded frames."""

    def __init__(self) -> None:
        self.queue: asyncio.Queue[NDArray[np.int16]] = asyncio.Queue()

    def __call__(self, pcm: NDArray[np.int16]) -> None:
        self.queue.put_nowait(pcm)

    async def get(self, deadline: float = DEADLINE) -> NDArray[np.int16]:
        async with asyncio.timeout(deadline):
            return await self.queue.get()

    def pending(self) -> int:
        return self.queue.qsize()


def sine(freq: float, seconds: float, rate: int = 8000, amplitude: float = 8000.0) -> AudioClip:
    t = np.arange(round(seconds * rate)) / rate
    return AudioClip((amplitude * np.sin(2 * np.pi * freq * t)).astype(np.int16), rate)


def noise(seconds: float, seed: int = 1, amplitude: int = 6000) -> AudioClip:
    rng = np.random.default_rng(seed)
    samples = rng.integers(-amplitude, amplitude, round(seconds * 8000), dtype=np.int16)
    return AudioClip(samples, 8000)


def snr_db(reference: NDArray[np.int16], decoded: NDArray[np.int16]) -> float:
    ref = reference.astype(np.float64)
    err = decoded.astype(np.float64) - ref
    return float(10 * np.log10(np.dot(ref, ref) / max(np.dot(err, err), 1e-9)))


def rms(samples: NDArray[np.int16]) -> float:
    x = samples.astype(np.float64)
    return float(np.sqrt(np.dot(x, x) / len(x)))


def dominant_hz(samples: NDArray[np.int16], rate: int = 8000) -> float:
    spectrum = np.abs(np.fft.rfft(samples.astype(np.float64) * np.hanning(len(samples))))
    return float(np.fft.rfftfreq(len(samples), 1 / rate)[int(np.argmax(spectrum))])


def max_burst(times: list[float], within: float = 0.005) -> int:
    """The most packets that arrived back to back (each less than `within` after the last)."""
    best = run = 1
    for previous, current in pairwise(times):
        run = run + 1 if current - previous < within else 1
        best = max(best, run)
    return best


def rtp(
    seq: int,
    payload: bytes = ULAW_SILENCE,
    pt: int = 0,
    ts: int | None = None,
    ssrc: int = 0x1234,
    marker: bool = False,
) -> bytes:
    timestamp = (seq * 160 if ts is None else ts) & 0xFFFFFFFF
    return RtpPacket(pt, seq & 0xFFFF, timestamp, ssrc, payload, marker).to_bytes()


@pytest.fixture
async def clock() -> PacingClock:
    return PacingClock()


@pytest.fixture
async def net(clock: PacingClock) -> AsyncIterator[Net]:
    net = Net(clock)
    try:
        yield net
    finally:
        await net.aclose()


async def receiving(net: Net, fmt: MediaFormat = PCMU) -> tuple[RtpSession, Peer, Frames]:
    """A session whose far end is a raw peer, with a sink that stays for the whole test."""
    session, peer = await net.session("rx"), await net.peer()
    session.start(peer.address, fmt)
    frames = Frames()
    net.stack.enter_context(session.listening(frames))  # for the whole test
    return session, peer, frames


# -- pacing -------------------------------------------------------------------------------------


async def test_one_packet_per_20ms_tick_with_contiguous_sequence_and_timestamps(net: Net) -> None:
    peer = await net.peer()
    session = await net.session("a")
    session.start(peer.address, PCMU)

    packets = await peer.collect(51)

    times = [at for at, _ in packets]
    mean = (times[-1] - times[0]) / 50
    assert 0.018 <= mean <= 0.022, f"mean interval {mean * 1000:.1f} ms"
    assert max_burst(times) <= 3
    rtps = [p for _, p in packets]
    assert all((b.sequence - a.sequence) & 0xFFFF == 1 for a, b in pairwise(rtps))
    assert all((b.timestamp - a.timestamp) & 0xFFFFFFFF == 160 for a, b in pairwise(rtps))
    assert len({p.ssrc for p in rtps}) == 1
    assert {p.payload_type for p in rtps} == {0}
    # idle: digital silence, the marker only on the very first packet of the stream
    assert all(p.payload == ULAW_SILENCE for p in rtps)
    assert rtps[0].marker and not any(p.marker for p in rtps[1:])
    assert session.stats.sent >= 51 and session.stats.first_sent_at is not None


async def test_idle_pcma_session_sends_alaw_silence(net: Net) -> None:
    peer = await net.peer()
    session = await net.session()
    session.start(peer.address, PCMA)
    packets = [p for _, p in await peer.collect(5)]
    assert all(p.payload == ALAW_SILENCE and p.payload_type == 8 for p in packets)


async def test_one_clock_timer_serves_every_session(net: Net, clock: PacingClock) -> None:
    peer = await net.peer()
    sessions = [await net.session(name) for name in "abc"]
    assert not clock.running and len(clock) == 0
    for session in sessions:
        session.start(peer.address, PCMU)
    assert clock.running and len(clock) == 3

    def snapshot() -> tuple[int, ...]:
        return (clock.lateness.ticks, *(s.stats.sent for s in sessions))

    probe = TickProbe(clock, snapshot)
    assert len(clock) == 4
    await probe.wait(26)
    first, last = probe.snapshots[0], probe.snapshots[25]
    # 25 clock ticks, and each session sent exactly one packet per tick: one timer for all
    assert [b - a for a, b in zip(first, last, strict=True)] == [25, 25, 25, 25]
    ssrcs = {p.ssrc for _, p in await peer.collect(9)}
    assert len(ssrcs) == 3

    probe.remove()
    for left, session in zip((2, 1, 0), sessions, strict=True):
        session.close()
        assert len(clock) == left
        assert clock.running == (left > 0)

    # observe real time on another clock: the stopped one does not tick any more
    ticks = clock.lateness.ticks
    other = PacingClock()
    other_probe = TickProbe(other)
    await other_probe.wait(5)
    other_probe.remove()
    assert clock.lateness.ticks == ticks


async def test_lateness_is_recorded_per_tick(net: Net, clock: PacingClock) -> None:
    peer = await net.peer()
    session = await net.session()
    session.start(peer.address, PCMU)
    probe = TickProbe(clock)
    await probe.wait(20)
    lateness = clock.lateness
    assert lateness.ticks >= 20 and len(lateness.samples) == lateness.ticks
    assert all(late >= 0.0 for late in lateness.samples)
    assert lateness.worst == max(lateness.samples)
    assert lateness.percentile(50) < 0.020


async def test_one_packet_per_tick_even_while_sending_digits(net: Net, clock: PacingClock) -> None:
    peer = await net.peer()
    session = await net.session()
    session.start(peer.address, PCMU)
    probe = TickProbe(clock, lambda: (session.stats.sent,))
    await probe.wait(2)
    async with asyncio.timeout(DEADLINE):
        await session.send_digits("12")
    await probe.wait(2)
    sent = [s for (s,) in probe.snapshots]
    assert len(sent) > 25
    assert [b - a for a, b in pairwise(sent)] == [1] * (len(sent) - 1)


# -- playback -----------------------------------------------------------------------------------


async def _playing_session(net: Net, fmt: MediaFormat = PCMU) -> tuple[RtpSession, Peer]:
    peer = await net.peer()
    session = await net.session("player")
    session.start(peer.address, fmt)
    await peer.next()  # the stream is up (its first packet carries the marker)
    return session, peer


def _is_marked(packet: RtpPacket) -> bool:
    return packet.marker


async def test_play_sends_the_clip_and_done_resolves_at_its_end(net: Net) -> None:
    session, peer = await _playing_session(net)
    clip = sine(440, 0.5)
    loop = asyncio.get_running_loop()
    sent_before = session.stats.sent
    started = loop.time()

    playback = session.play(clip)

    assert session.playing
    assert playback.first_sent_at is not None  # the first frame goes out at once
    assert started <= playback.first_sent_at <= started + 0.005
    assert playback.duration == pytest.approx(0.5)
    _, first = await peer.until(_is_marked)
    rest = await peer.collect(24)
    packets = [first] + [p for _, p in rest]
    decoded = ulaw_decode(b"".join(p.payload for p in packets))
    assert len(decoded) == len(clip.samples)
    assert snr_db(clip.samples, decoded) > 30  # G.711 µ-law is about 38 dB on a sine
    assert not any(p.marker for p in packets[1:])
    assert all((b.sequence - a.sequence) & 0xFFFF == 1 for a, b in pairwise(packets))

    async with asyncio.timeout(DEADLINE):
        await playback.done
    elapsed = loop.time() - started
    assert session.stats.sent - sent_before >= 25
    assert 0.46 <= elapsed <= 0.5 + 0.5  # not before its 25 frames were paced out
    assert not session.playing
    _, after = await peer.next()
    assert after.payload == ULAW_SILENCE  # silence again after the end


async def test_loop_repeats_the_clip(net: Net) -> None:
    session, peer = await _playing_session(net)
    clip = noise(0.1)  # 5 frames
    playback = session.play(clip, loop=True)
    _, first = await peer.until(_is_marked)
    packets = [first] + [p for _, p in await peer.collect(14)]
    payloads = [p.payload for p in packets]
    assert payloads[:5] == payloads[5:10] == payloads[10:15]
    assert len(set(payloads[:5])) == 5
    assert not playback.done.done() and session.playing
    session.stop_playback()
    async with asyncio.timeout(DEADLINE):
        await playback.done


async def test_stop_playback_takes_effect_on_the_next_tick(net: Net) -> None:
    session, peer = await _playing_session(net)
    sent_before = session.stats.sent
    playback = session.play(noise(2.0))
    _, first = await peer.until(_is_marked)
    await peer.collect(2)
    sent_at_stop = session.stats.sent

    session.stop_playback()

    async with asyncio.timeout(DEADLINE):
        await playback.done
    assert playback.stopped and not session.playing
    # packets sent before the stop are the clip, everything after is silence
    first_silent = (first.sequence + sent_at_stop - sent_before) & 0xFFFF
    packets = [first]
    while packets[-1].sequence != (first_silent + 2) & 0xFFFF:
        packets.append((await peer.next())[1])
    for packet in packets:
        behind = (first_silent - packet.sequence) & 0xFFFF
        if 0 < behind < 1000:
            assert packet.payload != ULAW_SILENCE
        else:
            assert packet.payload == ULAW_SILENCE


async def test_volume_scales_the_level_and_clips_without_wrapping(net: Net) -> None:
    clip = sine(500, 0.2, amplitude=10000)
    levels = {}
    for volume in (1.0, 0.5, 3.0):
        session, peer = await _playing_session(net)
        session.play(clip, volume=volume)
        _, first = await peer.until(_is_marked)
        packets = [first] + [p for _, p in await peer.collect(9)]
        decoded = ulaw_decode(b"".join(p.payload for p in packets))
        levels[volume] = rms(decoded)
        if volume == 3.0:  # 30000 peak: clipped to full scale, never wrapped to the other sign
            loud = np.abs(clip.samples.astype(np.int32)) > 2000
            assert np.all(np.sign(decoded[loud]) == np.sign(clip.samples[loud]))
            assert int(np.abs(decoded.astype(np.int32)).max()) > 28000
    assert levels[0.5] / levels[1.0] == pytest.approx(0.5, rel=0.05)
    assert levels[3.0] > 2.5 * levels[1.0]


async def test_a_22050_hz_clip_is_resampled_to_8_khz(net: Net) -> None:
    session, peer = await _playing_session(net)
    clip = sine(440, 0.5, rate=22050)
    playback = session.play(clip)
    assert playback.duration == pytest.approx(0.5, abs=0.02)
    _, first = await peer.until(_is_marked)
    packets = [first] + [p for _, p in await peer.collect(24)]
    decoded = ulaw_decode(b"".join(p.payload for p in packets))
    assert dominant_hz(decoded) == pytest.approx(440, abs=10)
    assert rms(decoded[400:-400]) == pytest.approx(8000 / np.sqrt(2), rel=0.1)
    async with asyncio.timeout(DEADLINE):
        await playback.done


async def test_each_playback_starts_with_a_marker(net: Net) -> None:
    session, peer = await _playing_session(net)
    first = session.play(noise(1.0, seed=2))
    _, start1 = await peer.until(_is_marked)
    second = session.play(noise(1.0, seed=3))  # replaces the first one
    async with asyncio.timeout(DEADLINE):
        await first.done
    _, start2 = await peer.until(_is_marked)
    assert start1.payload == ulaw_encode(noise(1.0, seed=2).samples[:160])
    assert start2.payload == ulaw_encode(noise(1.0, seed=3).samples[:160])
    assert second.first_sent_at is not None


async def test_play_before_start_is_refused(net: Net) -> None:
    session = await net.session()
    with pytest.raises(RuntimeError, match="no negotiated format"):
        session.play(noise(0.1))


# -- receiving ----------------------------------------------------------------------------------


async def test_audio_reaches_a_sink_only_inside_listening(net: Net) -> None:
    session, peer, outer = await receiving(net)
    inner = Frames()
    payload1, payload2 = (
        ulaw_encode(noise(0.02, seed=4).samples),
        ulaw_encode(noise(0.02, 5).samples),
    )
    with session.listening(inner):
        peer.send(rtp(1, payload1), session)
        got = await inner.get()
        assert np.array_equal(got, ulaw_decode(payload1))
        assert np.array_equal(await outer.get(), got)
    peer.send(rtp(2, payload2), session)
    assert np.array_equal(await outer.get(), ulaw_decode(payload2))
    assert inner.pending() == 0
    assert session.stats.received == 2 and session.stats.first_received_at is not None


async def test_a_sink_is_removed_when_its_block_raises(net: Net) -> None:
    session, peer, outer = await receiving(net)
    sink = Frames()
    with pytest.raises(KeyError), session.listening(sink):
        raise KeyError("boom")
    peer.send(rtp(1), session)
    await outer.get()
    assert sink.pending() == 0


async def test_wrong_payload_type_and_rtcp_are_ignored(net: Net) -> None:
    session, peer, frames = await receiving(net)
    good = ulaw_encode(sine(300, 0.02).samples)
    peer.send(rtp(1, b"\x00" * 160, pt=8), session)  # PCMA: not what was negotiated
    peer.send(rtp(2, b"\x00" * 160, pt=18), session)
    sender_report = struct.pack("!BBHIIIIII", 0x80, 200, 6, 0x1234, 0, 0, 0, 0, 0)
    receiver_report = struct.pack("!BBHI", 0x80, 201, 1, 0x1234)
    peer.send(sender_report, session)
    peer.send(receiver_report, session)
    peer.send(rtp(3, good), session)
    assert np.array_equal(await frames.get(), ulaw_decode(good))
    assert frames.pending() == 0
    assert session.stats.received == 1 and session.stats.lost == 0


async def _send_sequence(peer: Peer, session: RtpSession, frames: Frames, seqs: list[int]) -> None:
    """Send, then take frames until every packet arrived and the jitter buffer let all out (it
    drops late duplicates and conceals gaps, so frames and packets need not pair up)."""
    target = session.stats.received + len(seqs)
    for seq in seqs:
        peer.send(rtp(seq), session)
    async with asyncio.timeout(DEADLINE):
        while session.stats.received < target or session.jitter.pending:
            await frames.get()


async def test_loss_is_counted_from_sequence_gaps(net: Net) -> None:
    session, peer, frames = await receiving(net)
    await _send_sequence(peer, session, frames, [100, 101, 105, 106, 108])
    assert session.stats.lost == 4
    assert session.stats.received == 5


async def test_sequence_wrap_around_is_not_loss(net: Net) -> None:
    session, peer, frames = await receiving(net)
    await _send_sequence(peer, session, frames, [65533, 65534, 65535, 0, 1, 2])
    assert session.stats.lost == 0
    await _send_sequence(peer, session, frames, [65535 + 0, 3])  # a stale one, then in order
    assert session.stats.lost == 0


async def test_loss_across_the_wrap_is_counted(net: Net) -> None:
    session, peer, frames = await receiving(net)
    await _send_sequence(peer, session, frames, [65534, 65535, 2])
    assert session.stats.lost == 2


async def test_reordered_packets_are_not_counted_as_lost(net: Net) -> None:
    session, peer, frames = await receiving(net)
    await _send_sequence(peer, session, frames, [10, 12, 11, 13, 14])
    assert session.stats.lost == 0
    await _send_sequence(peer, session, frames, [14, 16])  # a duplicate, then a real gap
    assert session.stats.lost == 1


async def test_telephone_events_share_the_sequence_space(net: Net) -> None:
    session, peer, frames = await receiving(net)
    peer.send(rtp(1), session)
    for seq in (2, 3, 4):
        event = struct.pack("!BBH", 1, 0x80 | 10, 480)
        peer.send(rtp(seq, event, pt=101, ts=160), session)
    peer.send(rtp(5), session)
    await frames.get()
    await frames.get()
    async with asyncio.timeout(DEADLINE):
        key = await session.keys.get()
    assert key.digit == "1"
    assert session.stats.lost == 0


async def test_padding_csrcs_and_header_extension_are_stripped(net: Net) -> None:
    session, peer, frames = await receiving(net)
    payload = ulaw_encode(noise(0.02, seed=6).samples)
    header = struct.pack("!BBHII", 0x80 | 0x20 | 0x10 | 2, 0, 7, 1120, 0x1234)
    csrcs = struct.pack("!II", 11, 22)
    extension = struct.pack("!HH", 0xBEDE, 2) + b"\x10\xaa\x00\x00" + b"\x21\xbb\xcc\x00"
    padding = b"\x00\x00\x00\x04"
    peer.send(header + csrcs + extension + payload + padding, session)
    only_padding = struct.pack("!BBHII", 0x80 | 0x20, 0, 8, 1280, 0x1234) + payload + b"\x00\x02"
    peer.send(only_padding, session)
    only_extension = struct.pack("!BBHII", 0x90, 0, 9, 1440, 0x1234) + b"\x00\x01\x00\x00"
    peer.send(only_extension + payload, session)
    for _ in range(3):
        got = await frames.get()
        assert len(got) == 160 and np.array_equal(got, ulaw_decode(payload))
    assert session.stats.lost == 0


async def test_garbage_never_raises_and_the_session_keeps_working(
    net: Net, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING)
    session, peer, frames = await receiving(net)
    rng = random.Random(20240601)
    garbage = [b"", b"\x80", b"\x80\x00", b"\x80" * 11, b"\x00" * 12, b"\xff" * 40]
    garbage += [
        struct.pack("!BBHII", 0x80 | 0x20, 0, 1, 0, 1) + b"\x00\xff",  # padding > packet
        struct.pack("!BBHII", 0x80 | 0x20, 0, 1, 0, 1) + b"\x00\x00",  # padding count 0
        struct.pack("!BBHII", 0x90, 0, 1, 0, 1) + b"\x00\x01",  # truncated extension header
        struct.pack("!BBHII", 0x90, 0, 1, 0, 1) + b"\x00\x01\xff\xff" + b"\x00" * 8,  # overrun
        struct.pack("!BBHII", 0x8F, 0, 1, 0, 1) + b"\x00" * 8,  # 15 CSRCs in 8 bytes
        struct.pack("!BBHII", 0x80, 101, 1, 0, 1) + b"\x01",  # short telephone-event
        struct.pack("!BBHII", 0x80, 101, 1, 0, 1) + b"\x63\x80\x00\xa0",  # event 99
    ]
    for _ in range(300):
        noise_bytes = bytearray(rng.randbytes(rng.randrange(0, 200)))
        if noise_bytes and rng.random() < 0.7:
            noise_bytes[0] = 0x80 | (noise_bytes[0] & 0x3F)  # version 2, random P/X/CC bits
        if len(noise_bytes) > 1 and rng.random() < 0.5:
            noise_bytes[1] = (noise_bytes[1] & 0x80) | rng.choice((0, 101))
        garbage.append(bytes(noise_bytes))
    # in batches, each followed by a good packet that must come through: a burst of hundreds
    # of datagrams would overflow the socket's receive buffer and prove nothing
    for batch, index in enumerate(range(0, len(garbage), 25)):
        for data in garbage[index : index + 25]:
            peer.send(data, session)
        good = ulaw_encode(sine(1000 + batch, 0.02).samples)
        peer.send(rtp(1 + batch, good, ssrc=0x9999), session)  # new: not a duplicate
        async with asyncio.timeout(DEADLINE):
            while not np.array_equal(await frames.get(), ulaw_decode(good)):
                pass
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert errors == []
    assert session.transport is not None and not session.transport.is_closing()


async def test_malformed_packets_are_dropped_not_delivered(net: Net) -> None:
    session, peer, frames = await receiving(net)
    base = struct.pack("!BBHII", 0x80 | 0x20, 0, 1, 0, 1)
    peer.send(base + b"\x01" * 20 + b"\xff", session)  # padding longer than the packet
    overrun = struct.pack("!BBHII", 0x90, 0, 2, 0, 1) + b"\x00\x01\x00\x40" + b"\x01" * 20
    peer.send(overrun, session)
    peer.send(struct.pack("!BBHII", 0x80, 0, 3, 0, 1), session)  # header, no payload
    good = ulaw_encode(sine(700, 0.02).samples)
    peer.send(rtp(4, good), session)
    assert np.array_equal(await frames.get(), ulaw_decode(good))
    assert frames.pending() == 0
    assert session.stats.received == 1


# -- DTMF ---------------------------------------------------------------------------------------


async def test_send_digits_arrive_as_key_presses_in_order(net: Net) -> None:
    a, b = await net.pair()
    frames = Frames()
    with b.listening(frames):
        async with asyncio.timeout(DEADLINE):
            await a.send_digits("1#")
            keys = [await b.keys.get(), await b.keys.get()]
            # later audio arrives after every event packet (loopback keeps order)
            for _ in range(3):
                await frames.get()
    assert [k.digit for k in keys] == ["1", "#"]
    assert keys[0].at < keys[1].at
    assert b.keys.empty()  # the continuation and the three end packets add nothing
    assert b.stats.lost == 0


async def test_event_packets_use_the_telephone_event_payload_type(net: Net) -> None:
    peer = await net.peer()
    session = await net.session()
    session.start(peer.address, PCMU)
    await peer.next()
    sending = asyncio.create_task(session.send_digits("5"))
    _, first = await peer.until(lambda p: p.payload_type == 101)
    events = [first]
    while len(events) < 9:
        events.append((await peer.next())[1])
    after = (await peer.next())[1]
    async with asyncio.timeout(DEADLINE):
        await sending
    assert {p.payload_type for p in events} == {101}
    assert len({p.timestamp for p in events}) == 1
    assert [p.marker for p in events] == [True] + [False] * 8
    decoded = [decode_event(p.payload) for p in events]
    assert {e.event for e in decoded} == {5}
    assert [e.end for e in decoded] == [False] * 6 + [True] * 3
    assert [e.duration for e in decoded] == [160, 320, 480, 640, 800, 960, 960, 960, 960]
    assert all((y.sequence - x.sequence) & 0xFFFF == 1 for x, y in pairwise(events))
    # the media clock ran on during the key press; audio resumes where it left off
    assert after.payload_type == 0
    assert (after.sequence - events[-1].sequence) & 0xFFFF == 1
    assert (after.timestamp - first.timestamp) & 0xFFFFFFFF == 9 * 160


async def test_a_pause_delays_the_next_digit_by_half_a_second(net: Net) -> None:
    a, b = await net.pair()
    async with asyncio.timeout(DEADLINE):
        await a.send_digits("12w3")
        keys = [await b.keys.get() for _ in range(3)]
    assert [k.digit for k in keys] == ["1", "2", "3"]
    plain = keys[1].at - keys[0].at
    paused = keys[2].at - keys[1].at
    assert 0.4 <= paused - plain <= 0.7, f"{plain=:.3f} {paused=:.3f}"


async def test_send_digits_raises_media_closed_when_closed_mid_digit(net: Net) -> None:
    a, b = await net.pair()
    sending = asyncio.create_task(a.send_digits("123"))
    async with asyncio.timeout(DEADLINE):
        key = await b.keys.get()  # the first event packet of "1": the key is being pressed
    assert key.digit == "1"
    a.close()
    async with asyncio.timeout(2.0):
        with pytest.raises(MediaClosed):
            await sending


async def test_overlapping_send_digits_calls_are_sent_one_after_the_other(net: Net) -> None:
    a, b = await net.pair()
    async with asyncio.timeout(DEADLINE):
        await asyncio.gather(a.send_digits("12"), a.send_digits("34"))
        keys = [(await b.keys.get()).digit for _ in range(4)]
    assert keys == ["1", "2", "3", "4"]


async def test_overlapping_send_digits_calls_both_raise_on_close(net: Net) -> None:
    a, b = await net.pair()
    first = asyncio.create_task(a.send_digits("1"))
    second = asyncio.create_task(a.send_digits("2"))
    async with asyncio.timeout(DEADLINE):
        await b.keys.get()
    a.close()
    async with asyncio.timeout(2.0):
        results = await asyncio.gather(first, second, return_exceptions=True)
    assert [type(r) for r in results] == [MediaClosed, MediaClosed]


async def test_send_digits_on_a_closed_session_raises_media_closed(net: Net) -> None:
    a, _ = await net.pair()
    a.close()
    async with asyncio.timeout(DEADLINE):
        await a.wait_closed()
        with pytest.raises(MediaClosed):
            await a.send_digits("1")


async def test_send_digits_without_telephone_event_is_a_clear_error(net: Net) -> None:
    peer = await net.peer()
    session = await net.session("target")
    with pytest.raises(RuntimeError, match="telephone-event"):
        await session.send_digits("1")  # no format negotiated yet
    session.start(peer.address, NO_DTMF)
    with pytest.raises(RuntimeError, match="did not offer telephone-event"):
        await session.send_digits("1")


async def test_clear_keys_empties_the_queue(net: Net) -> None:
    a, b = await net.pair()
    frames = Frames()
    with b.listening(frames):
        async with asyncio.timeout(DEADLINE):
            await a.send_digits("98")
            for _ in range(3):  # audio sent after the digits arrives after their packets
                await frames.get()
    assert b.keys.qsize() == 2
    b.clear_keys()
    assert b.keys.empty()


# -- close --------------------------------------------------------------------------------------


def _socket_link(session: RtpSession) -> tuple[int, str]:
    assert session.transport is not None
    fd = session.transport.get_extra_info("socket").fileno()
    return fd, os.readlink(f"/proc/self/fd/{fd}")


async def test_close_releases_the_socket_the_clock_and_pending_playback(
    net: Net, clock: PacingClock
) -> None:
    peer = await net.peer()
    session = await net.session("leg")
    closed: list[RtpSession] = []
    session.closed_callback = closed.append
    session.start(peer.address, PCMU)
    playback = session.play(noise(5.0), loop=True)
    fd, link = _socket_link(session)
    assert link.startswith("socket:[")
    assert len(clock) == 1 and clock.running

    session.close()

    assert len(clock) == 0 and not clock.running
    async with asyncio.timeout(DEADLINE):
        await session.wait_closed()
        await playback.done
    assert not session.playing
    try:
        now = os.readlink(f"/proc/self/fd/{fd}")
    except FileNotFoundError:
        now = None
    assert now != link  # the descriptor is gone (or reused by something else)
    assert closed == [session]
    session.close()  # closing twice is harmless


async def test_a_socket_dying_underneath_releases_like_close(net: Net, clock: PacingClock) -> None:
    a, b = await net.pair()
    playback = a.play(noise(5.0))
    sending = asyncio.create_task(a.send_digits("123"))
    async with asyncio.timeout(DEADLINE):
        await b.keys.get()
    assert a.transport is not None
    a.transport.abort()  # not a.close(): the transport goes away on its own
    async with asyncio.timeout(DEADLINE):
        await a.wait_closed()
        await playback.done
        with pytest.raises(MediaClosed):
            await sending
    assert len(clock) == 1  # only b is left on the clock


async def test_play_after_close_does_not_hang_or_send(net: Net) -> None:
    peer = await net.peer()
    session = await net.session()
    session.start(peer.address, PCMU)
    session.close()
    async with asyncio.timeout(DEADLINE):
        await session.wait_closed()
    sent = session.stats.sent
    playback = session.play(noise(1.0))
    async with asyncio.timeout(1.0):
        await playback.done
    assert session.stats.sent == sent


async def test_closing_one_session_leaves_the_others_on_the_clock(
    net: Net, clock: PacingClock
) -> None:
    a, b = await net.pair()
    a.close()
    assert len(clock) == 1 and clock.running
    async with asyncio.timeout(DEADLINE):
        await a.wait_closed()
    probe = TickProbe(clock, lambda: (b.stats.sent,))
    await probe.wait(5)
    probe.remove()
    sent = [s for (s,) in probe.snapshots]
    assert sent[-1] - sent[0] == len(sent) - 1


async def test_pcma_round_trip_between_two_sessions(net: Net) -> None:
    a, b = await net.pair(PCMA)
    clip = sine(600, 0.2)
    frames = Frames()
    with b.listening(frames):
        playback = a.play(clip)
        async with asyncio.timeout(DEADLINE):
            while True:  # skip the silence before the clip
                got = await frames.get()
                if np.abs(got).max() > 100:  # A-law silence decodes to +-8
                    break
            received = [got] + [await frames.get() for _ in range(9)]
            await playback.done
    decoded = np.concatenate(received)
    assert snr_db(clip.samples, decoded) > 30

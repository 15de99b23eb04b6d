"""MediaBridge between two real RtpSessions on 127.0.0.1.

Each leg's far end is a raw UDP peer: `caller` talks to leg `a`, `target` to leg `b`. With the
bridge started, what a far end sends to its leg must come out of the other leg to the other far
end: byte for byte with one codec, transcoded (and still the same sound) across PCMU/PCMA.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from itertools import pairwise
from typing import cast

import numpy as np
import pytest
from numpy.typing import NDArray

from warmtransfer.media.audio import AudioClip
from warmtransfer.media.bridge import MediaBridge
from warmtransfer.media.clock import PacingClock
from warmtransfer.media.g711 import alaw_decode, alaw_encode, ulaw_decode, ulaw_encode
from warmtransfer.media.rtp_packet import RtpPacket
from warmtransfer.media.session import MediaFormat, RtpSession

PCMU = MediaFormat("PCMU", 0, 101)
PCMA = MediaFormat("PCMA", 8, 101)
DEADLINE = 5.0
SILENCE = {0: b"\xff" * 160, 8: b"\xd5" * 160}

Address = tuple[str, int]


class Peer(asyncio.DatagramProtocol):
    """A far end: records the RTP packets it gets, sends crafted ones to its leg."""

    def __init__(self) -> None:
        self.transport: asyncio.DatagramTransport | None = None
        self.packets: asyncio.Queue[RtpPacket] = asyncio.Queue()
        self.seq = 5000

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.DatagramTransport, transport)

    def datagram_received(self, data: bytes, addr: Address) -> None:
        self.packets.put_nowait(RtpPacket.parse(data))

    @property
    def address(self) -> Address:
        assert self.transport is not None
        host, port = self.transport.get_extra_info("sockname")[:2]
        return host, port

    def send(self, payload: bytes, to: RtpSession, pt: int = 0, marker: bool = False) -> None:
        assert self.transport is not None
        self.seq += 1
        packet = RtpPacket(pt, self.seq & 0xFFFF, self.seq * 160, 0xCAFE, payload, marker)
        self.transport.sendto(packet.to_bytes(), to.local)

    async def audio(self, count: int, pt: int = 0) -> list[RtpPacket]:
        """The next `count` packets that are not paced silence."""
        found: list[RtpPacket] = []
        async with asyncio.timeout(DEADLINE):
            while len(found) < count:
                packet = await self.packets.get()
                if packet.payload != SILENCE.get(packet.payload_type):
                    found.append(packet)
        return found

    def drain(self) -> list[RtpPacket]:
        drained = []
        while not self.packets.empty():
            drained.append(self.packets.get_nowait())
        return drained


class Legs:
    def __init__(self, clock: PacingClock) -> None:
        self.clock = clock
        self.a: RtpSession
        self.b: RtpSession
        self.caller: Peer
        self.target: Peer

    async def open(self, fmt_a: MediaFormat, fmt_b: MediaFormat) -> None:
        loop = asyncio.get_running_loop()
        self.a = await RtpSession.open("127.0.0.1", self.clock, "caller-leg")
        self.b = await RtpSession.open("127.0.0.1", self.clock, "target-leg")
        _, self.caller = await loop.create_datagram_endpoint(Peer, local_addr=("127.0.0.1", 0))
        _, self.target = await loop.create_datagram_endpoint(Peer, local_addr=("127.0.0.1", 0))
        self.a.start(self.caller.address, fmt_a)
        self.b.start(self.target.address, fmt_b)
        async with asyncio.timeout(DEADLINE):  # both legs are up and pacing
            await self.caller.packets.get()
            await self.target.packets.get()

    async def close(self) -> None:
        for session in (self.a, self.b):
            session.close()
        async with asyncio.timeout(DEADLINE):
            for session in (self.a, self.b):
                await session.wait_closed()
        for peer in (self.caller, self.target):
            assert peer.transport is not None
            peer.transport.close()


OpenLegs = Callable[[MediaFormat, MediaFormat], Awaitable[Legs]]


@pytest.fixture
async def legs() -> AsyncIterator[OpenLegs]:
    opened: list[Legs] = []

    async def make(fmt_a: MediaFormat, fmt_b: MediaFormat) -> Legs:
        made = Legs(PacingClock())
        opened.append(made)
        await made.open(fmt_a, fmt_b)
        return made

    yield make
    for made in opened:
        await made.close()


class TickProbe:
    """A stream on the legs' clock: waits for N ticks, snapshots counters inside each tick."""

    def __init__(self, clock: PacingClock, snapshot: Callable[[], tuple[int, ...]]) -> None:
        self.clock = clock
        self.snapshot = snapshot
        self.snapshots: list[tuple[int, ...]] = []
        self._waiter: tuple[int, asyncio.Future[None]] | None = None
        clock.add(self)

    def on_tick(self, now: float) -> None:
        self.snapshots.append(self.snapshot())
        waiter = self._waiter
        if waiter is not None and len(self.snapshots) >= waiter[0] and not waiter[1].done():
            waiter[1].set_result(None)

    async def ticks(self, count: int) -> list[tuple[int, ...]]:
        """The snapshots of the next `count` ticks."""
        start = len(self.snapshots)
        waiter = asyncio.get_running_loop().create_future()
        self._waiter = (start + count, waiter)
        async with asyncio.timeout(DEADLINE):
            await waiter
        return self.snapshots[start : start + count]

    def remove(self) -> None:
        self.clock.remove(self)


def sine(freq: float, samples: int, amplitude: float = 8000.0) -> NDArray[np.int16]:
    t = np.arange(samples) / 8000
    return (amplitude * np.sin(2 * np.pi * freq * t)).astype(np.int16)


def snr_db(reference: NDArray[np.int16], decoded: NDArray[np.int16]) -> float:
    ref = reference.astype(np.float64)
    err = decoded.astype(np.float64) - ref
    return float(10 * np.log10(np.dot(ref, ref) / max(np.dot(err, err), 1e-9)))


def random_payloads(count: int, seed: int) -> list[bytes]:
    """Arbitrary G.711 bytes, including codes a decode/encode round trip would change
    (0x7F, "negative zero", comes back as 0xFF): only a true pass-through keeps them."""
    rng = np.random.default_rng(seed)
    payloads = [rng.integers(0, 256, 160, dtype=np.uint8).tobytes() for _ in range(count)]
    payloads[0] = b"\x7f" * 80 + payloads[0][80:]
    return payloads


# -- forwarding ---------------------------------------------------------------------------------


async def test_same_codec_is_passed_through_unchanged_both_ways(
    legs: OpenLegs,
) -> None:
    leg = await legs(PCMU, PCMU)
    bridge = MediaBridge(leg.a, leg.b)
    assert bridge.passthrough and not bridge.active
    bridge.start()
    assert bridge.active

    to_target = random_payloads(10, seed=1)
    for i, payload in enumerate(to_target):
        leg.caller.send(payload, leg.a, marker=i == 0)
    out = await leg.target.audio(10)
    assert [p.payload for p in out] == to_target
    assert {p.payload_type for p in out} == {0}
    assert out[0].marker  # the talk spurt's marker is carried over

    to_caller = random_payloads(10, seed=2)
    for payload in to_caller:
        leg.target.send(payload, leg.b)
    back = await leg.caller.audio(10)
    assert [p.payload for p in back] == to_caller

    assert leg.b.stats.forwarded == 10 and leg.a.stats.forwarded == 10
    assert leg.a.stats.received == 10 and leg.b.stats.received == 10
    assert leg.b.stats.first_forwarded_at is not None
    assert leg.a.stats.first_forwarded_at is not None
    assert leg.b.stats.first_forwarded_at <= leg.a.stats.first_forwarded_at


async def test_forwarded_packets_continue_the_leg_own_stream(
    legs: OpenLegs,
) -> None:
    leg = await legs(PCMU, PCMU)
    async with asyncio.timeout(DEADLINE):  # paced silence before the bridge, in order
        packets = [await leg.target.packets.get(), *leg.target.drain()]
    bridge = MediaBridge(leg.a, leg.b)
    bridge.start()
    payloads = random_payloads(5, seed=3)
    for payload in payloads:
        leg.caller.send(payload, leg.a)
    async with asyncio.timeout(DEADLINE):
        while packets[-1].payload != payloads[-1]:
            packets.append(await leg.target.packets.get())
    # one SSRC (the leg's own), sequence numbers and timestamps running on without a jump
    assert len({p.ssrc for p in packets}) == 1 and packets[0].ssrc != 0xCAFE
    assert all((y.sequence - x.sequence) & 0xFFFF == 1 for x, y in pairwise(packets))
    assert all((y.timestamp - x.timestamp) & 0xFFFFFFFF == 160 for x, y in pairwise(packets))
    assert [p.payload for p in packets[-5:]] == payloads


async def test_different_codecs_are_transcoded_to_the_same_sound(
    legs: OpenLegs,
) -> None:
    leg = await legs(PCMU, PCMA)
    bridge = MediaBridge(leg.a, leg.b)
    assert not bridge.passthrough
    bridge.start()

    signal = sine(440, 1600)
    for i in range(10):
        leg.caller.send(ulaw_encode(signal[i * 160 : (i + 1) * 160]), leg.a)
    out = await leg.target.audio(10)
    assert {p.payload_type for p in out} == {8}
    assert snr_db(signal, alaw_decode(b"".join(p.payload for p in out))) > 30

    for i in range(10):
        leg.target.send(alaw_encode(signal[i * 160 : (i + 1) * 160]), leg.b, pt=8)
    back = await leg.caller.audio(10)
    assert {p.payload_type for p in back} == {0}
    assert snr_db(signal, ulaw_decode(b"".join(p.payload for p in back))) > 30
    assert leg.b.stats.forwarded == 10 and leg.a.stats.forwarded == 10


# -- pacing -------------------------------------------------------------------------------------


async def test_bridged_legs_stop_pacing_and_stop_restores_it(
    legs: OpenLegs,
) -> None:
    leg = await legs(PCMU, PCMU)
    probe = TickProbe(leg.clock, lambda: (leg.a.stats.sent, leg.b.stats.sent))
    bridge = MediaBridge(leg.a, leg.b)

    bridge.start()
    quiet = await probe.ticks(10)
    assert quiet[0] == quiet[-1]  # no paced silence: the far ends pace what gets forwarded
    assert len(leg.clock) == 3  # the legs stay on the clock (for digits, and for after)

    bridge.stop()
    assert not bridge.active and leg.a.forward_to is None and leg.b.forward_to is None
    paced = await probe.ticks(10)
    assert paced[-1][0] - paced[0][0] == 9 and paced[-1][1] - paced[0][1] == 9
    probe.remove()
    # and what arrives now is no longer forwarded
    leg.caller.send(random_payloads(1, seed=4)[0], leg.a)
    async with asyncio.timeout(DEADLINE):
        while leg.a.stats.received == 0:
            await leg.target.packets.get()  # real time passing, packet by packet
    assert leg.b.stats.forwarded == 0


async def test_start_stops_what_the_legs_were_playing(
    legs: OpenLegs,
) -> None:
    leg = await legs(PCMU, PCMU)
    music = AudioClip(sine(300, 80_000), 8000)
    hold = leg.a.play(music, loop=True)
    prompt = leg.b.play(music)
    MediaBridge(leg.a, leg.b).start()
    async with asyncio.timeout(DEADLINE):
        await hold.done
        await prompt.done
    assert not leg.a.playing and not leg.b.playing


async def test_stop_leaves_other_bridges_alone(legs: OpenLegs) -> None:
    leg = await legs(PCMU, PCMU)
    third = await RtpSession.open("127.0.0.1", leg.clock, "third")
    try:
        third.start(leg.caller.address, PCMU)
        old = MediaBridge(leg.a, leg.b)
        old.start()
        moved = MediaBridge(leg.a, third)  # a is joined to someone else now
        moved.start()
        old.stop()  # the old bridge's stop must not undo the new one
        assert leg.a.forward_to is third and third.forward_to is leg.a
        assert leg.b.forward_to is None
        moved.stop()

        again = MediaBridge(leg.b, leg.a)  # the same two legs, bridged anew
        again.start()
        old.stop()  # a late, second stop of the old bridge
        assert leg.a.forward_to is leg.b and leg.b.forward_to is leg.a
        again.stop()
        again.stop()
        assert leg.a.forward_to is None and leg.b.forward_to is None
    finally:
        third.close()
        async with asyncio.timeout(DEADLINE):
            await third.wait_closed()


async def test_a_closed_leg_is_not_written_to(
    legs: OpenLegs, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING)
    leg = await legs(PCMU, PCMU)
    MediaBridge(leg.a, leg.b).start()
    leg.b.close()
    async with asyncio.timeout(DEADLINE):
        await leg.b.wait_closed()
    frames: asyncio.Queue[NDArray[np.int16]] = asyncio.Queue()
    with leg.a.listening(frames.put_nowait):
        for payload in random_payloads(3, seed=5):
            leg.caller.send(payload, leg.a)
        async with asyncio.timeout(DEADLINE):
            for _ in range(3):
                await frames.get()  # a received them (and tried to forward them)
    assert leg.b.stats.forwarded == 0
    assert [r for r in caplog.records if r.levelno >= logging.ERROR] == []

"""Symmetric RTP (RFC 4961 latching) and the receive jitter buffer, over real UDP sockets.

A peer behind NAT writes one address in its SDP and sends from another; a third party may try to
inject packets. Peers are raw datagram endpoints (`Peer` from test_media_session). Waiting is on
queues and the pacing clock's ticks, under deadlines; nothing is mocked.
"""

from __future__ import annotations

import asyncio
import struct
from collections.abc import AsyncIterator

import pytest

from tests.unit.test_media_session import (
    DEADLINE,
    PCMU,
    Frames,
    Net,
    Peer,
    TickProbe,
    noise,
    rtp,
)
from warmtransfer.media import session as session_module
from warmtransfer.media.clock import PacingClock
from warmtransfer.media.g711 import ulaw_decode, ulaw_encode
from warmtransfer.media.rtp_packet import RtpPacket
from warmtransfer.media.session import RtpSession


@pytest.fixture
async def clock() -> PacingClock:
    return PacingClock()


@pytest.fixture
async def net(clock: PacingClock) -> AsyncIterator[Net]:
    network = Net(clock)
    try:
        yield network
    finally:
        await network.aclose()


def frame(seed: int) -> bytes:
    """A distinct 20 ms µ-law payload, recognisable after decoding."""
    return ulaw_encode(noise(0.02, seed=seed).samples)


async def ours_at(peer: Peer, session: RtpSession) -> RtpPacket:
    """The next packet of `session`'s stream that reaches `peer`."""
    while True:
        _, packet = await peer.next()
        if packet.ssrc == session._ssrc:
            return packet


def pcm(seed: int) -> bytes:
    """What a listener hears of `frame(seed)` (decoded samples, as bytes to compare)."""
    return ulaw_decode(frame(seed)).tobytes()


async def frames_until(frames: Frames, wanted: bytes) -> list[bytes]:
    """Every frame heard (decoded, as bytes) up to and including `wanted`, a `pcm(seed)`."""
    seen = []
    async with asyncio.timeout(DEADLINE):
        while True:
            got = (await frames.get()).tobytes()
            seen.append(got)
            if got == wanted:
                return seen


async def natted(net: Net, **options: bool) -> tuple[RtpSession, Peer, Peer, Frames]:
    """A session whose SDP peer (`said`) is not where the far end sends from (`real`)."""
    session = await RtpSession.open("127.0.0.1", net.clock, "nat", **options)
    net.sessions.append(session)
    said, real = await net.peer(), await net.peer()
    session.start(said.address, PCMU)
    frames = Frames()
    net.stack.enter_context(session.listening(frames))
    return session, said, real, frames


async def test_our_audio_goes_where_the_peer_sends_from_not_where_its_sdp_said(net: Net) -> None:
    session, said, real, frames = await natted(net)
    await ours_at(said, session)  # before any packet from the peer: the SDP address
    assert session.latched is None

    real.send(rtp(1, frame(1)), session)
    assert await frames_until(frames, pcm(1)) == [pcm(1)]
    assert session.latched == real.address
    assert session.remote == real.address
    packet = await ours_at(real, session)  # the NAT'd peer now hears us
    assert packet.payload_type == 0
    assert session.stats.wrong_source == 0


async def test_a_third_party_cannot_inject_after_latching(net: Net) -> None:
    session, _, real, frames = await natted(net)
    injector = await net.peer()
    real.send(rtp(1, frame(1)), session)
    await frames_until(frames, pcm(1))

    for seq in range(2, 6):  # plausible packets: right payload type, next sequence numbers
        injector.send(rtp(seq, frame(100 + seq), ssrc=0x1234), session)
    injected = {pcm(100 + seq) for seq in range(2, 6)}
    real.send(rtp(2, frame(2)), session)
    heard = await frames_until(frames, pcm(2))
    assert not injected & set(heard)
    assert session.stats.wrong_source == 4
    assert session.stats.received == 2 and session.stats.lost == 0  # stats untouched by them
    assert session.latched == real.address
    # nor can it press keys
    event = struct.pack("!BBH", 1, 0x80 | 10, 480)
    injector.send(rtp(3, event, pt=101, ts=999), session)
    real.send(rtp(3, frame(3)), session)
    await frames_until(frames, pcm(3))
    assert session.keys.empty() and session.stats.wrong_source == 5


async def test_with_symmetric_off_the_sdp_address_stays_and_any_source_is_heard(
    net: Net,
) -> None:
    session, said, real, frames = await natted(net, symmetric=False)
    other = await net.peer()
    real.send(rtp(1, frame(1)), session)
    other.send(rtp(2, frame(2)), session)
    await frames_until(frames, pcm(2))
    assert session.latched is None and session.remote == said.address
    assert session.stats.wrong_source == 0


async def test_the_latched_ssrc_may_move_address_only_after_falling_silent(
    net: Net, clock: PacingClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(session_module, "_RELATCH_AFTER", 0.1)
    session, _, real, frames = await natted(net)
    rebound = await net.peer()  # the same phone, after its NAT binding changed
    real.send(rtp(1, frame(1), ssrc=0x77), session)
    await frames_until(frames, pcm(1))
    rebound.send(rtp(2, frame(2), ssrc=0x77), session)  # too soon: could be a spoofer
    real.send(rtp(3, frame(3), ssrc=0x77), session)
    assert pcm(2) not in await frames_until(frames, pcm(3))
    assert session.latched == real.address and session.stats.wrong_source == 1

    probe = TickProbe(clock)
    await probe.wait(8)  # > 0.1 s of silence from the latched address, seen on the clock
    probe.remove()
    rebound.send(rtp(4, frame(4), ssrc=0x99), session)  # another SSRC: still refused
    rebound.send(rtp(5, frame(5), ssrc=0x77), session)
    assert pcm(4) not in await frames_until(frames, pcm(5))
    assert session.latched == rebound.address and session.stats.relatched == 1
    await ours_at(rebound, session)


async def test_a_reinvite_keeps_the_latch_unless_the_sdp_address_changes(net: Net) -> None:
    session, said, real, frames = await natted(net)
    real.send(rtp(1, frame(1)), session)
    await frames_until(frames, pcm(1))
    session.update_remote(said.address)  # a hold or refresh with the same (private) address
    assert session.remote == real.address and session.latched == real.address

    moved = await net.peer()
    session.update_remote(moved.address)  # the peer really moved: send there, latch again
    assert session.remote == moved.address and session.latched is None
    await ours_at(moved, session)
    moved.send(rtp(2, frame(2)), session)
    await frames_until(frames, pcm(2))
    assert session.latched == moved.address


# -- the jitter buffer behind listeners ------------------------------------------------------------


async def test_a_listener_hears_reordered_packets_in_sequence_order(net: Net) -> None:
    session, _, real, frames = await natted(net)
    order = [1, 3, 2, 5, 4, 6]
    for seq in order:
        real.send(rtp(seq, frame(seq)), session)
    heard = await frames_until(frames, pcm(6))
    assert heard == [pcm(seq) for seq in range(1, 7)]
    assert session.jitter.concealed == 0 and session.stats.lost == 0


async def test_a_listener_gets_a_concealed_frame_for_a_lost_packet(net: Net) -> None:
    session, _, real, frames = await natted(net)
    for seq in (1, 2, 4):
        real.send(rtp(seq, frame(seq)), session)
    heard = await frames_until(frames, pcm(4))  # released by a clock tick after the window
    assert heard == [pcm(1), pcm(2), pcm(2), pcm(4)]  # 3 was the previous, repeated
    assert session.jitter.concealed == 1


async def test_the_bridge_still_forwards_on_arrival_out_of_order(net: Net) -> None:
    a, b = await net.pair()
    peer = await net.peer()
    c = await net.session("c")
    c.start(peer.address, PCMU)
    a.forward_to = c  # a's far end is b; what b sends is passed to c's peer as it arrives
    frames = Frames()
    net.stack.enter_context(a.listening(frames))
    order = [10, 12, 11]
    for seq in order:
        b.transport.sendto(rtp(seq, frame(seq), ssrc=0x55), a.local)  # type: ignore[union-attr]
    forwarded = []
    async with asyncio.timeout(DEADLINE):
        while len(forwarded) < 3:
            packet = await ours_at(peer, c)
            if packet.payload in {frame(s) for s in order}:
                forwarded.append(packet.payload)
    assert forwarded == [frame(s) for s in order]  # as they came, not reordered
    heard = await frames_until(frames, pcm(12))
    assert heard[-3:] == [pcm(10), pcm(11), pcm(12)]  # while the listener gets them sorted

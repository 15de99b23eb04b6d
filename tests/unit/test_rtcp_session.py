"""RTCP of RtpSession over real UDP sockets on 127.0.0.1: reports between two sessions, the
receiver report a session sends about a stream with known gaps, BYE on close, rtcp-mux.

Report intervals are shortened through the constructor (`rtcp_interval`); waiting is on queues
and pacing-clock ticks under deadlines, never on sleeps. Nothing is mocked.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Callable
from typing import cast

import pytest

from tests.unit.test_media_session import DEADLINE, PCMU, Net, Peer, TickProbe, rtp
from warmtransfer.media.clock import PacingClock
from warmtransfer.media.rtcp import (
    Bye,
    ReceiverReport,
    RtcpPacket,
    SenderReport,
    SourceDescription,
    build_compound,
    ntp_timestamp,
    parse_compound,
)
from warmtransfer.media.session import RtpSession

Address = tuple[str, int]
FAST = 0.2  # s between reports in these tests (RFC 3550 says 5 in real calls)


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


async def session(
    net: Net, name: str, *, rtcp_interval: float = FAST, rtcp_mux: bool = False
) -> RtpSession:
    opened = await RtpSession.open(
        "127.0.0.1", net.clock, name, rtcp_interval=rtcp_interval, rtcp_mux=rtcp_mux
    )
    net.sessions.append(opened)
    return opened


async def until(clock: PacingClock, done: Callable[[], bool]) -> None:
    """Wait, tick by tick of the pacing clock, until `done()` holds (under the deadline)."""
    probe = TickProbe(clock)
    try:
        async with asyncio.timeout(DEADLINE):
            while not done():
                await probe.wait(1)
    finally:
        probe.remove()


async def peer_pair(net: Net) -> tuple[Peer, Peer]:
    """Raw endpoints on an even port and the odd one above it, as a real phone binds them."""
    loop = asyncio.get_running_loop()
    for _ in range(20):
        rtp_peer = await net.peer()
        port = rtp_peer.address[1]
        if port % 2 == 0:
            with contextlib.suppress(OSError):
                _, rtcp_peer = await loop.create_datagram_endpoint(
                    Peer, local_addr=("127.0.0.1", port + 1)
                )
                net.peers.append(rtcp_peer)
                return rtp_peer, rtcp_peer
    pytest.fail("no free even/odd port pair on 127.0.0.1")


async def next_rtcp(peer: Peer) -> list[RtcpPacket]:
    async with asyncio.timeout(DEADLINE):
        _, data = await peer.datagrams.get()
    return parse_compound(data)


class Relay(asyncio.DatagramProtocol):
    """A symmetric relay between `a` (a fixed address) and whoever else sends to it; from `a`
    it drops the packets `drop` picks (loss on the way to the other side)."""

    def __init__(self, a: Address, drop: Callable[[int], bool] = lambda n: False) -> None:
        self.a, self.b = a, cast(Address | None, None)
        self.drop = drop
        self.from_a = 0
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.DatagramTransport, transport)

    def datagram_received(self, data: bytes, addr: Address) -> None:
        assert self.transport is not None
        if addr == self.a:
            self.from_a += 1
            if self.b is not None and not self.drop(self.from_a):
                self.transport.sendto(data, self.b)
        else:
            self.transport.sendto(data, self.a)


# -- tests ------------------------------------------------------------------------------------


async def test_sessions_bind_rtp_on_an_even_port_and_rtcp_on_the_odd_one_above(net: Net) -> None:
    a = await session(net, "a")
    assert a.local[1] % 2 == 0
    assert a._rtcp_transport is not None
    assert a._rtcp_transport.get_extra_info("sockname")[1] == a.local[1] + 1
    muxed = await session(net, "m", rtcp_mux=True)
    assert muxed._rtcp_transport is None


async def test_two_sessions_learn_each_others_counts_loss_and_round_trip(
    net: Net, clock: PacingClock
) -> None:
    a, b = await session(net, "a"), await session(net, "b")
    a.start(b.local, PCMU)
    b.start(a.local, PCMU)
    await until(
        clock,
        lambda: (
            a.stats.round_trip is not None
            and b.stats.round_trip is not None
            and b.stats.reports_received >= 2
        ),
    )
    assert b.stats.remote_sent is not None and 0 < b.stats.remote_sent <= a.stats.sent
    assert b.stats.remote_octets == 160 * b.stats.remote_sent  # silence frames of 160 bytes
    assert a.stats.remote_loss == 0.0 and a.stats.remote_lost == 0
    assert b.stats.remote_jitter is not None and b.stats.remote_jitter < 0.1
    for rtt in (a.stats.round_trip, b.stats.round_trip):
        assert rtt is not None and 0 <= rtt < 1.0  # loopback, on a busy machine
    assert a.stats.wrong_source == 0 and b.stats.wrong_source == 0


async def test_loss_on_the_way_shows_in_the_senders_remote_loss(
    net: Net, clock: PacingClock
) -> None:
    """A -> relay -> B, the relay dropping every fourth RTP packet of A's; B reports back."""
    loop = asyncio.get_running_loop()
    a, b = await session(net, "a"), await session(net, "b")
    rtcp_a = (a.local[0], a.local[1] + 1)
    relays = []
    for _ in range(20):  # the relay too needs an even port with a free odd neighbour
        rtp_t, rtp_relay = await loop.create_datagram_endpoint(
            lambda: Relay(a.local, drop=lambda n: n % 4 == 0), local_addr=("127.0.0.1", 0)
        )
        port = rtp_t.get_extra_info("sockname")[1]
        if port % 2 == 0:
            with contextlib.suppress(OSError):
                rtcp_t, rtcp_relay = await loop.create_datagram_endpoint(
                    lambda: Relay(rtcp_a), local_addr=("127.0.0.1", port + 1)
                )
                relays = [(rtp_t, rtp_relay), (rtcp_t, rtcp_relay)]
                break
        rtp_t.close()
    assert relays, "no free even/odd port pair for the relay"
    try:
        relays[0][1].b = b.local
        relays[1][1].b = (b.local[0], b.local[1] + 1)
        a.start(("127.0.0.1", port), PCMU)
        b.start(("127.0.0.1", port), PCMU)  # B latches to the relay too: symmetric RTP
        await until(clock, lambda: a.stats.remote_lost is not None and a.stats.remote_lost >= 5)
        assert a.stats.remote_loss is not None and 0.1 < a.stats.remote_loss < 0.4
        assert b.stats.lost >= 5
        assert b.stats.remote_sent is not None and 0 < b.stats.remote_sent <= a.stats.sent
        assert b.stats.received < a.stats.sent
    finally:
        for transport, _ in relays:
            transport.close()


async def test_receiver_report_carries_fraction_and_cumulative_loss_of_a_gapped_stream(
    net: Net, clock: PacingClock
) -> None:
    rtp_peer, rtcp_peer = await peer_pair(net)
    b = await session(net, "b", rtcp_interval=0.4)
    b.start(rtp_peer.address, PCMU)
    for seq in [*range(10), *range(15, 20)]:  # 10..14 lost: 5 of 20
        rtp_peer.send(rtp(seq, ssrc=0x1234), b)  # all sent before the first report is due
    await until(clock, lambda: b.stats.received == 15)

    packets = await next_rtcp(rtcp_peer)  # B sends RTP, so it is an SR, with a CNAME
    report, sdes = packets
    assert isinstance(report, SenderReport) and report.ssrc == b._ssrc
    assert isinstance(sdes, SourceDescription) and sdes.chunks[0].cname == b.cname
    (block,) = report.reports
    assert (block.ssrc, block.fraction_lost, block.cumulative_lost) == (0x1234, 64, 5)
    assert block.highest_seq == 19 and block.lsr == 0  # we sent B no SR

    our_sr = ntp_timestamp(time.time())
    for seq in [20, 21, 24, 25, 26, 27, 28, 29]:  # 2 of 10 lost in the next interval
        rtp_peer.send(rtp(seq, ssrc=0x1234), b)
    # Then our SR, to B's RTP port from its latched source (taken, rtcp-mux style); one socket
    # and loopback keep the burst in order, well before B's next report is due.
    rtp_peer.send(build_compound([SenderReport(0x1234, our_sr, 0, 23, 23 * 160)]), b)
    await until(clock, lambda: b.stats.received == 23 and b.stats.remote_sent == 23)
    (report, _) = await next_rtcp(rtcp_peer)
    assert isinstance(report, SenderReport)
    (block,) = report.reports
    assert (block.fraction_lost, block.cumulative_lost) == (2 * 256 // 10, 7)
    assert b.stats.reports_received == 1
    assert block.lsr == (our_sr >> 16) & 0xFFFFFFFF  # B echoes our SR for our round trip


async def test_rtcp_on_the_rtcp_port_is_heard_and_latches_where_reports_go(
    net: Net, clock: PacingClock
) -> None:
    rtp_peer, elsewhere = await net.peer(), await net.peer()
    b = await session(net, "b")
    b.start(rtp_peer.address, PCMU)
    assert b._rtcp_transport is not None
    report = build_compound([ReceiverReport(0x99), SourceDescription.cname_of(0x99, "x")])
    elsewhere.transport.sendto(report, (b.local[0], b.local[1] + 1))  # type: ignore[union-attr]
    await until(clock, lambda: b.stats.reports_received == 1)
    packets = await next_rtcp(elsewhere)  # B's next report goes where the peer's came from
    assert isinstance(packets[0], SenderReport | ReceiverReport)


async def test_close_sends_a_bye_and_a_bye_received_is_noted(net: Net, clock: PacingClock) -> None:
    rtp_peer, rtcp_peer = await peer_pair(net)
    b = await session(net, "b", rtcp_interval=60.0)  # no timed report during the test
    b.start(rtp_peer.address, PCMU)
    rtp_peer.send(build_compound([ReceiverReport(0x1234), Bye((0x1234,), "gone")]), b)
    await until(clock, lambda: b.stats.remote_bye)
    b.close()
    packets = await next_rtcp(rtcp_peer)
    assert [type(p) for p in packets] == [SenderReport, SourceDescription, Bye]
    assert packets[-1] == Bye((b._ssrc,))
    await b.wait_closed()


async def test_with_rtcp_mux_reports_go_to_the_rtp_address(net: Net, clock: PacingClock) -> None:
    peer = await net.peer()
    b = await session(net, "b", rtcp_mux=True)
    b.start(peer.address, PCMU)
    async with asyncio.timeout(DEADLINE):
        while True:
            _, data = await peer.datagrams.get()
            if data[1] in (200, 201):
                break
    assert isinstance(parse_compound(data)[0], SenderReport)


async def test_malformed_or_injected_rtcp_changes_nothing(net: Net, clock: PacingClock) -> None:
    peer, injector = await net.peer(), await net.peer()
    b = await session(net, "b")
    b.start(peer.address, PCMU)
    peer.send(b"\x81\xc9\x00\x07" + b"\x00" * 8, b)  # says 32 bytes, carries 12
    peer.send(rtp(1), b)
    await until(clock, lambda: b.stats.received == 1)
    injector.send(build_compound([SenderReport(0x1234, 0, 0, 999, 0)]), b)  # not the latched
    peer.send(rtp(2), b)
    await until(clock, lambda: b.stats.received == 2)
    assert b.stats.reports_received == 0 and b.stats.remote_sent is None

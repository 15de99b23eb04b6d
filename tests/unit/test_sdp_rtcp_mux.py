"""RTP/RTCP multiplexing (RFC 5761): a=rtcp-mux in offer and answer, and where RTCP then goes.

The SDP part is pure. The call part runs the user agent against `Wire` over loopback, with the
wire's media on a port pair of its own, so that where our RTCP lands (the RTP port, or the one
above it) is observed, not assumed. Our RTCP BYE goes out when the call's media closes, which
makes the hang-up the moment to look; every wait has a deadline.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import replace

import pytest

from tests.peers.ports import free_media_port
from tests.unit.sip_wire import HOST, Wire, new_branch, new_call_id, sdp
from tests.unit.test_useragent import within
from warmtransfer.media.rtp_packet import is_rtcp
from warmtransfer.sip.message import make_response
from warmtransfer.sip.sdp import (
    SessionDescription,
    build_answer,
    build_offer,
    build_reoffer,
    next_version,
    parse_answer,
    with_rtcp_mux,
)
from warmtransfer.sip.useragent import UserAgent


def muxed(text: str) -> str:
    return text + "a=rtcp-mux\r\n"


# -- SDP --------------------------------------------------------------------------------------


def test_rtcp_mux_is_read_as_a_media_attribute() -> None:
    offer = SessionDescription.parse(muxed(sdp(4000)))
    assert offer.audio is not None and offer.audio.rtcp_mux
    plain = SessionDescription.parse(sdp(4000))
    assert plain.audio is not None and not plain.audio.rtcp_mux
    # Session level means nothing in RFC 5761: it does not make the stream multiplexed.
    session_level = sdp(4000).replace("t=0 0\r\n", "t=0 0\r\na=rtcp-mux\r\n")
    parsed = SessionDescription.parse(session_level)
    assert parsed.audio is not None and not parsed.audio.rtcp_mux


def test_our_offer_carries_rtcp_mux_once() -> None:
    offer = build_offer("192.0.2.1", 40000, session_id=1, rtcp_mux=True)
    assert offer.to_bytes().count(b"a=rtcp-mux\r\n") == 1
    assert b"a=rtcp-mux" not in build_offer("192.0.2.1", 40000, session_id=1).to_bytes()
    added = with_rtcp_mux(build_offer("192.0.2.1", 40000, session_id=1))
    assert added == offer
    assert with_rtcp_mux(added) == added  # idempotent


def test_the_answer_multiplexes_only_when_offered() -> None:
    answer, negotiated = build_answer(
        SessionDescription.parse(muxed(sdp(4000))), "192.0.2.1", 30000
    )
    assert answer.audio is not None and answer.audio.rtcp_mux and negotiated.rtcp_mux
    assert answer.to_bytes().count(b"a=rtcp-mux") == 1
    answer, negotiated = build_answer(SessionDescription.parse(sdp(4000)), "192.0.2.1", 30000)
    assert answer.audio is not None and not answer.audio.rtcp_mux
    assert not negotiated.rtcp_mux and b"rtcp-mux" not in answer.to_bytes()


@pytest.mark.parametrize(
    ("we_offer", "they_answer", "agreed"),
    [(True, True, True), (True, False, False), (False, True, False), (False, False, False)],
)
def test_multiplexing_needs_both_sides(we_offer: bool, they_answer: bool, agreed: bool) -> None:
    offer = build_offer("192.0.2.1", 40000, rtcp_mux=we_offer)
    answer_text = sdp(5000, formats="0")
    answer = SessionDescription.parse(muxed(answer_text) if they_answer else answer_text)
    assert parse_answer(offer, answer).rtcp_mux is agreed


def test_a_hold_reoffer_keeps_session_codec_and_rtcp_mux() -> None:
    ours = build_offer("192.0.2.1", 40000, session_id=77, version=3, rtcp_mux=True)
    agreed = parse_answer(ours, SessionDescription.parse(muxed(sdp(5000, formats="8 101"))))
    reoffer = next_version(ours, build_reoffer(ours, agreed, direction="sendonly"))
    assert (reoffer.session_id, reoffer.session_version) == (77, 4)
    audio = reoffer.audio
    assert audio is not None
    assert audio.direction == "sendonly" and audio.rtcp_mux and audio.port == 40000
    assert audio.formats == (8, 101)  # the agreed codec only: nothing to switch to
    # Nothing changed: the version stays, which tells the peer the SDP is the same.
    assert next_version(reoffer, reoffer) == reoffer
    resumed = next_version(reoffer, build_reoffer(reoffer, agreed, direction="sendrecv"))
    assert resumed.session_version == 5 and resumed.audio is not None
    assert resumed.audio.direction == "sendrecv"


def test_answer_direction_while_we_hold() -> None:
    sendrecv = SessionDescription.parse(sdp(4000))
    answer, negotiated = build_answer(sendrecv, "192.0.2.1", 30000, direction="sendonly")
    assert answer.audio is not None and answer.audio.direction == "sendonly"
    assert negotiated.local_direction == "sendonly"
    both_hold = SessionDescription.parse(sdp(4000, direction="sendonly"))
    answer, _ = build_answer(both_hold, "192.0.2.1", 30000, direction="sendonly")
    assert answer.audio is not None and answer.audio.direction == "inactive"
    with pytest.raises(ValueError, match="direction"):
        build_answer(sendrecv, "192.0.2.1", 30000, direction="hold")


def test_next_version_keeps_the_whole_origin_line() -> None:
    previous = build_offer("192.0.2.1", 40000, session_id=5, version=9)
    other = replace(build_offer("192.0.2.7", 40002, session_id=6), origin_user="x")
    again = next_version(previous, other)
    assert (again.origin_user, again.session_id, again.session_version) == ("-", 5, 10)
    assert again.origin_address == "192.0.2.1" and again.connection == "192.0.2.7"
    # Only the o= line differed: once it is the session's again, nothing changed.
    same = replace(previous, origin_user="x", session_id=6, session_version=1)
    assert next_version(previous, same) == previous


# -- the call applies it ----------------------------------------------------------------------


class _Socket(asyncio.DatagramProtocol):
    def __init__(self) -> None:
        self.datagrams: asyncio.Queue[bytes] = asyncio.Queue()

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        self.datagrams.put_nowait(data)


class MediaPair:
    """The wire's media: an RTP socket on an even port and an RTCP socket on the odd one."""

    def __init__(self, port: int, transports: list[asyncio.DatagramTransport]) -> None:
        self.port = port
        self.transports = transports
        self.rtp: _Socket = transports[0].get_protocol()  # type: ignore[assignment]
        self.rtcp: _Socket = transports[1].get_protocol()  # type: ignore[assignment]

    async def next_rtcp(self, socket: _Socket, timeout: float = 3.0) -> bytes:
        async with asyncio.timeout(timeout):
            while not is_rtcp(data := await socket.datagrams.get()):
                pass
        return data


@pytest.fixture
async def media_pair() -> AsyncIterator[MediaPair]:
    loop = asyncio.get_running_loop()
    port = free_media_port()
    transports = []
    for each in (port, port + 1):
        transport, _ = await loop.create_datagram_endpoint(_Socket, local_addr=(HOST, each))
        transports.append(transport)
    try:
        yield MediaPair(port, transports)
    finally:
        for transport in transports:
            transport.close()


@pytest.mark.parametrize("answer_mux", [True, False])
async def test_outbound_call_offers_rtcp_mux_and_rtcp_follows_the_answer(
    ua: UserAgent, wire: Wire, media_pair: MediaPair, answer_mux: bool
) -> None:
    task = asyncio.create_task(ua.call(wire.uri))
    invite = await wire.request_of("INVITE")
    offer = SessionDescription.parse(invite.body)
    assert offer.audio is not None and offer.audio.rtcp_mux
    answer = sdp(media_pair.port, formats="0 101")
    wire.reply(invite, 200, to_tag="mux", body=muxed(answer) if answer_mux else answer)
    call = await within(task)
    assert call.negotiated is not None and call.negotiated.rtcp_mux is answer_mux
    assert call.media.rtcp_mux is answer_mux
    hangup = asyncio.create_task(call.hangup())
    bye = await wire.request_of("BYE")
    wire.send(make_response(bye, 200), (bye.vias[0].host, bye.vias[0].port or 5060))
    await within(hangup)
    # Our RTCP BYE leaves as the media closes: on the RTP port when multiplexed, else above it.
    arrived_on = media_pair.rtp if answer_mux else media_pair.rtcp
    report = await media_pair.next_rtcp(arrived_on)
    assert report[1] in (200, 201)  # a compound packet starts with an SR or an RR


@pytest.mark.parametrize("offer_mux", [True, False])
async def test_inbound_call_answers_rtcp_mux_only_when_offered(
    ua: UserAgent, wire: Wire, offer_mux: bool
) -> None:
    call_id = new_call_id()
    body = muxed(sdp(wire.media_port)) if offer_mux else sdp(wire.media_port)
    wire.send(wire.invite(ua.address, call_id=call_id, branch=new_branch(), body=body), ua.address)
    call = await within(ua.next_call())
    await call.answer()
    ok = await wire.response(200, "INVITE", call_id=call_id)
    assert (b"a=rtcp-mux\r\n" in ok.body) is offer_mux
    assert call.media.rtcp_mux is offer_mux
    assert ok.to.tag is not None
    wire.send(wire.request("ACK", ua.address, call_id=call_id, to_tag=ok.to.tag), ua.address)
    bye = wire.request("BYE", ua.address, call_id=call_id, cseq=2, to_tag=ok.to.tag)
    wire.send(bye, ua.address)
    await wire.response(200, "BYE", call_id=call_id)

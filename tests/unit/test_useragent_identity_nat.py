"""What a carrier or PBX sees of us: P-Asserted-Identity, Diversion and a NAT's public address.

Real UDP sockets on 127.0.0.1 and `Wire`, a raw SIP peer that records what arrives; nothing of
the code under test is mocked. The advertised address is a documentation address (RFC 5737):
no socket binds it, so a test can tell "advertised" from "bound" on the wire.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable
from typing import TypeVar

import pytest

from tests.unit.conftest import started_ua
from tests.unit.sip_wire import Wire, new_branch, new_call_id, sdp
from warmtransfer.backends.sip import SipDialer
from warmtransfer.sip.call import CallFailed
from warmtransfer.sip.message import SipRequest, make_response
from warmtransfer.sip.sdp import SessionDescription
from warmtransfer.sip.uri import NameAddr
from warmtransfer.sip.useragent import UserAgent
from warmtransfer.transfer.outcome import DialFailed
from warmtransfer.transfer.target import Target

T = TypeVar("T")
DEADLINE = 3.0
PUBLIC = "203.0.113.7"


async def within(awaitable: Awaitable[T], seconds: float = DEADLINE) -> T:
    async with asyncio.timeout(seconds):
        return await awaitable


@pytest.fixture
async def natted() -> AsyncIterator[UserAgent]:
    async with started_ua(advertised_host=PUBLIC) as agent:
        yield agent


def nothing_sent(ua: UserAgent) -> bool:
    return not [e for e in ua.trace if e.direction == "out"]


async def invite_for(
    ua: UserAgent, wire: Wire, **kwargs: str | None
) -> tuple[SipRequest, asyncio.Task[object]]:
    """Start a call to the wire and return the INVITE as it arrived (the call still rings)."""
    task: asyncio.Task[object] = asyncio.create_task(ua.call(wire.uri, **kwargs))  # type: ignore[arg-type]
    invite = await wire.request_of("INVITE")
    return invite, task


async def refuse(wire: Wire, invite: SipRequest, task: asyncio.Task[object]) -> None:
    wire.reply(invite, 486, to_tag="busy")
    with pytest.raises(CallFailed):
        await within(task)


# -- P-Asserted-Identity and Diversion ------------------------------------------------------------


@pytest.mark.parametrize(
    ("given", "uri"),
    [
        ("+15550100", "sip:+15550100@127.0.0.1"),
        ("tel:+15550100", "tel:+15550100"),
        ("sip:agent@carrier.example.com;user=phone", "sip:agent@carrier.example.com;user=phone"),
    ],
)
async def test_the_invite_carries_well_formed_pai_and_diversion(
    ua: UserAgent, wire: Wire, given: str, uri: str
) -> None:
    invite, task = await invite_for(
        ua, wire, asserted_identity=given, diversion=given, display="Support"
    )
    pai = invite.headers.get_all("P-Asserted-Identity")
    assert len(pai) == 1
    asserted = NameAddr.parse(pai[0])  # a name-addr a carrier can parse
    assert str(asserted.uri) == uri and asserted.display_name == "Support"
    diversion = invite.headers.get_all("Diversion")
    assert len(diversion) == 1
    diverted = NameAddr.parse(diversion[0])
    assert str(diverted.uri) == uri and diverted.param("reason") == "unconditional"
    await refuse(wire, invite, task)


async def test_without_them_no_pai_or_diversion_is_sent(ua: UserAgent, wire: Wire) -> None:
    invite, task = await invite_for(ua, wire, caller_id="+15550100")
    assert "P-Asserted-Identity" not in invite.headers
    assert "Diversion" not in invite.headers
    await refuse(wire, invite, task)


@pytest.mark.parametrize("field", ["asserted_identity", "diversion"])
@pytest.mark.parametrize(
    "value",
    [
        "+15550100\r\nEvil: 1",
        "sip:a@example.com\r\nEvil: 1",
        "sip:a@example.com>;x=<sip:b@example.com",
        'sip:a@example.com"',
        "sip:a@example.com?Evil=1",
        "sip:a@exa mple.com",
        "alice",
        "+1-555-0100",
        "١٢٣",
        "1" * 40,
        "sip:",
    ],
)
async def test_an_injection_or_malformed_identity_is_refused_before_sending(
    ua: UserAgent, wire: Wire, field: str, value: str
) -> None:
    with pytest.raises(ValueError, match=r"asserted identity|diversion"):
        await within(ua.call(wire.uri, **{field: value}))  # type: ignore[arg-type]
    assert nothing_sent(ua)
    assert ua.calls == {}
    assert not ua._media  # no media socket was opened for a call that cannot be placed


@pytest.mark.parametrize("field", ["asserted_identity", "diversion"])
@pytest.mark.parametrize(
    "value", ["+15550100\r\nEvil: 1", "sip:a@b.com?Evil=1", "sip:a@b.com>", "alice", "+1 555"]
)
def test_target_refuses_an_identity_that_is_not_a_number_or_uri(field: str, value: str) -> None:
    with pytest.raises(ValueError, match="identity"):
        Target(uri="sip:human@127.0.0.1", **{field: value})  # type: ignore[arg-type]


async def test_the_sip_dialer_presents_the_targets_identities(ua: UserAgent, wire: Wire) -> None:
    target = Target(
        uri=wire.uri, caller_id="+15550199", asserted_identity="+15550100", diversion="+15550111"
    )
    dialer = SipDialer(ua)
    dial = asyncio.create_task(dialer.dial(target, on_ringing=lambda status: None))
    invite = await wire.request_of("INVITE")
    assert invite.from_.uri.user == "+15550199"
    assert NameAddr.parse(invite.headers.get("P-Asserted-Identity") or "").uri.user == "+15550100"
    assert NameAddr.parse(invite.headers.get("Diversion") or "").uri.user == "+15550111"
    wire.reply(invite, 486, to_tag="busy")
    with pytest.raises(DialFailed):
        await within(dial)


# -- NAT: the advertised address --------------------------------------------------------------


def test_an_advertised_host_must_be_an_ip_address() -> None:
    with pytest.raises(ValueError, match="advertised host"):
        UserAgent("127.0.0.1", advertised_host="pbx.example.com\r\nEvil: 1")


async def test_outbound_invite_advertises_the_public_address_and_the_call_works(
    natted: UserAgent, wire: Wire
) -> None:
    task = asyncio.create_task(natted.call(wire.uri))
    invite = await wire.request_of("INVITE")
    via = invite.vias[0]
    assert (via.host, via.port) == (PUBLIC, natted.port)
    assert via.has_param("rport")
    contact = NameAddr.parse(invite.headers.get("Contact") or "")
    assert (contact.uri.host, contact.uri.port) == (PUBLIC, natted.port)
    offer = SessionDescription.parse(invite.body)
    assert offer.connection == PUBLIC and offer.origin_address == PUBLIC
    assert (
        offer.audio is not None and offer.audio.port == natted.calls[invite.call_id].media.local[1]
    )
    assert "127.0.0.1" not in invite.body.decode()
    # The sockets stay bound to the private host: the wire answers the source address it saw
    # (as an rport-honouring peer would), not the advertised one, and the call comes up.
    sock_host, sock_port = natted.address
    assert sock_host == "127.0.0.1"
    assert natted.calls[invite.call_id].media.local[0] == "127.0.0.1"
    answer = make_response(
        invite,
        200,
        to_tag="up",
        body=sdp(wire.media_port, formats="0 101").encode(),
        content_type="application/sdp",
        extra=[("Contact", wire.contact)],
    )
    wire.send(answer, (sock_host, sock_port))
    call = await within(task)
    assert call.is_up
    ack = await wire.request_of("ACK")
    assert ack.vias[0].host == PUBLIC
    bye = asyncio.create_task(call.hangup())
    request = await wire.request_of("BYE")
    assert request.vias[0].host == PUBLIC
    wire.send(make_response(request, 200), (sock_host, sock_port))
    await within(bye)


async def test_inbound_answer_advertises_the_public_address(natted: UserAgent, wire: Wire) -> None:
    call_id = new_call_id()
    wire.send(wire.invite(natted.address, call_id=call_id, branch=new_branch()), natted.address)
    call = await within(natted.next_call())
    await call.answer()
    ok = await wire.response(200, "INVITE", call_id=call_id)
    contact = NameAddr.parse(ok.headers.get("Contact") or "")
    assert contact.uri.host == PUBLIC
    answer = SessionDescription.parse(ok.body)
    assert answer.connection == PUBLIC and answer.origin_address == PUBLIC
    # The response went back to where the INVITE came from, whatever we advertise (rport).
    assert ok.vias[0].param("rport") == str(wire.port) and ok.vias[0].param("received")
    wire.send(
        wire.request("ACK", natted.address, call_id=call_id, to_tag=ok.to.tag), natted.address
    )
    bye = asyncio.create_task(call.hangup())
    request = await wire.request_of("BYE")
    assert request.vias[0].host == PUBLIC
    wire.send(make_response(request, 200), natted.address)
    await within(bye)


async def test_without_an_advertised_host_the_bound_host_is_named(
    ua: UserAgent, wire: Wire
) -> None:
    invite, task = await invite_for(ua, wire)
    assert invite.vias[0].host == "127.0.0.1"
    assert SessionDescription.parse(invite.body).connection == "127.0.0.1"
    await refuse(wire, invite, task)

"""Digest authentication, registration and the inbound policy of the user agent, over real
UDP sockets on 127.0.0.1 (see test_useragent.py for the style: no mocks, no sleeps).

The far end is `Wire` (hand-written SIP) whose challenges come from our own `DigestVerifier`,
so every credential the user agent sends is checked by real digest arithmetic, not by shape.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

import pytest

from tests.unit.conftest import started_ua
from tests.unit.sip_wire import Wire, new_branch, new_call_id
from tests.unit.test_useragent import answer_sdp, sent_requests, within
from warmtransfer.sip.call import CallFailed
from warmtransfer.sip.digest import (
    Credentials,
    DigestVerifier,
    Verdict,
    authorize,
    choose,
    parse_authorization,
)
from warmtransfer.sip.message import SipRequest, make_response
from warmtransfer.sip.useragent import InboundPolicy, UserAgent

ALICE = Credentials("alice", "s3cret")
REALM = "carrier.test"


@pytest.fixture
async def ua() -> AsyncIterator[UserAgent]:
    async with started_ua(credentials=ALICE) as agent:
        yield agent


@pytest.fixture
def carrier() -> DigestVerifier:
    """The wire's side of digest: it challenges and checks what the user agent answers."""
    return DigestVerifier(REALM, [ALICE])


def challenge(wire: Wire, request: SipRequest, carrier: DigestVerifier, status: int, **kw: bool):
    header = "WWW-Authenticate" if status == 401 else "Proxy-Authenticate"
    response = make_response(
        request,
        status,
        to_tag="chal",
        extra=[(header, str(c)) for c in carrier.challenges(time.time(), **kw)],
    )
    via = request.vias[0]
    wire.send(response, (via.host, via.port or 5060))


def verdict(request: SipRequest, carrier: DigestVerifier, header: str) -> Verdict:
    value = request.headers.get(header)
    assert value is not None, f"no {header} in the retried {request.method}"
    return carrier.verify(parse_authorization(value), request.method, time.time())


# -- outbound: INVITE, BYE, never a loop -------------------------------------------------------


async def test_invite_challenged_with_407_is_resent_once_with_credentials(
    ua: UserAgent, wire: Wire, carrier: DigestVerifier
) -> None:
    task = asyncio.create_task(ua.call(wire.uri, ring_timeout=5))
    first = await wire.request_of("INVITE")
    challenge(wire, first, carrier, 407)
    ack = await wire.request_of("ACK")  # the challenge is ACKed in its own transaction
    assert ack.vias[0].branch == first.vias[0].branch and ack.cseq == (1, "ACK")

    second = await wire.request_of("INVITE")
    assert second.call_id == first.call_id and second.from_.tag == first.from_.tag
    assert second.cseq == (2, "INVITE")
    assert second.vias[0].branch != first.vias[0].branch
    assert second.body == first.body  # the same offer
    assert verdict(second, carrier, "Proxy-Authorization") is Verdict.OK
    assert "Authorization" not in second.headers
    assert parse_authorization(second.headers.get("Proxy-Authorization") or "").algorithm == (
        "SHA-256"
    )

    wire.reply(second, 200, to_tag="ans", body=answer_sdp(wire))
    call = await within(task)
    assert call.is_up and call.invite is not None
    ack2 = await wire.request_of("ACK", where=lambda r: r.cseq[0] == 2)
    assert ack2.to.tag == "ans"

    hangup = asyncio.create_task(call.hangup())
    bye = await wire.request_of("BYE")
    assert bye.cseq == (3, "BYE")  # the dialog counts on from the authenticated INVITE
    challenge(wire, bye, carrier, 401)  # a BYE is challenged too (carriers do this)
    bye2 = await wire.request_of("BYE", where=lambda r: r.cseq[0] == 4)
    assert verdict(bye2, carrier, "Authorization") is Verdict.OK
    wire.reply(bye2, 200)
    await within(hangup)


async def test_wrong_credentials_fail_after_exactly_one_retry(
    ua: UserAgent, wire: Wire, carrier: DigestVerifier
) -> None:
    task = asyncio.create_task(ua.call(wire.uri, ring_timeout=5))
    first = await wire.request_of("INVITE")
    challenge(wire, first, carrier, 401)
    second = await wire.request_of("INVITE", where=lambda r: r.cseq[0] == 2)
    challenge(wire, second, carrier, 401)  # a fresh nonce, not stale: the password is wrong
    with pytest.raises(CallFailed) as failed:
        await within(task)
    assert failed.value.status == 401
    await wire.request_of("ACK", where=lambda r: r.cseq[0] == 2)
    # One OPTIONS round trip later, still exactly two INVITEs: no third attempt is on its way.
    options = wire.request("OPTIONS", ua.address, call_id=new_call_id())
    wire.send(options, ua.address)
    await wire.response(200, "OPTIONS")
    assert len(wire.requests("INVITE")) == 2
    assert ua.calls == {}


async def test_a_stale_nonce_gets_one_more_try(
    ua: UserAgent, wire: Wire, carrier: DigestVerifier
) -> None:
    task = asyncio.create_task(ua.call(wire.uri, ring_timeout=5))
    first = await wire.request_of("INVITE")
    challenge(wire, first, carrier, 401)
    second = await wire.request_of("INVITE", where=lambda r: r.cseq[0] == 2)
    challenge(wire, second, carrier, 401, stale=True)
    third = await wire.request_of("INVITE", where=lambda r: r.cseq[0] == 3)
    assert verdict(third, carrier, "Authorization") is Verdict.OK
    challenge(wire, third, carrier, 401, stale=True)  # stale again: that is a loop, stop
    with pytest.raises(CallFailed) as failed:
        await within(task)
    assert failed.value.status == 401
    assert len(sent_requests(ua, "INVITE")) == 3


async def test_without_credentials_a_challenge_is_the_final_answer(wire: Wire) -> None:
    carrier = DigestVerifier(REALM, [ALICE])
    async with UserAgent("127.0.0.1", user="wt") as plain:
        task = asyncio.create_task(plain.call(wire.uri, ring_timeout=5))
        invite = await wire.request_of("INVITE")
        challenge(wire, invite, carrier, 407)
        with pytest.raises(CallFailed) as failed:
            await within(task)
        assert failed.value.status == 407
        assert len(sent_requests(plain, "INVITE")) == 1


async def test_an_unanswerable_challenge_fails_with_its_status(ua: UserAgent, wire: Wire) -> None:
    task = asyncio.create_task(ua.call(wire.uri, ring_timeout=5))
    invite = await wire.request_of("INVITE")
    response = make_response(
        invite,
        401,
        to_tag="x",
        extra=[("WWW-Authenticate", 'Digest realm="r", nonce="n", qop="auth-int"')],
    )
    wire.send(response, ua.address)
    with pytest.raises(CallFailed) as failed:
        await within(task)
    assert failed.value.status == 401
    assert len(sent_requests(ua, "INVITE")) == 1


# -- REGISTER ----------------------------------------------------------------------------------


async def test_register_authenticates_refreshes_and_unregisters_on_close(
    wire: Wire, carrier: DigestVerifier
) -> None:
    agent = await UserAgent("127.0.0.1", user="wt", credentials=ALICE).start()
    try:
        registering = asyncio.create_task(agent.register(f"sip:127.0.0.1:{wire.port}", expires=60))
        first = await wire.request_of("REGISTER")
        assert str(first.uri) == f"sip:127.0.0.1:{wire.port}"
        assert str(first.to.uri) == f"sip:wt@127.0.0.1:{wire.port}"
        assert first.headers.get("Expires") == "60"
        challenge(wire, first, carrier, 401)
        second = await wire.request_of("REGISTER", where=lambda r: r.cseq[0] == 2)
        assert second.call_id == first.call_id and second.from_.tag == first.from_.tag
        assert verdict(second, carrier, "Authorization") is Verdict.OK
        assert not agent.registered
        # The registrar grants 1 s (of the 60 asked): the refresh comes at about 0.8 s.
        ok = make_response(
            second, 200, to_tag="reg", extra=[("Contact", f"{agent.contact()};expires=1")]
        )
        wire.send(ok, agent.address)
        registration = await within(registering)
        granted_at = asyncio.get_running_loop().time()
        assert agent.registered and registration.expires == 1

        refresh = await wire.request_of("REGISTER", where=lambda r: r.cseq[0] == 3)
        waited = asyncio.get_running_loop().time() - granted_at
        assert 0.6 < waited < 1.0, waited
        assert refresh.call_id == first.call_id and refresh.headers.get("Expires") == "60"
        wire.reply(refresh, 200)  # no Contact expires: the Expires header (60) is the grant
        bye_bye = asyncio.create_task(agent.close())
        removal = await wire.request_of("REGISTER", where=lambda r: r.cseq[0] == 4)
        assert removal.headers.get("Expires") == "0" and removal.call_id == first.call_id
        wire.reply(removal, 200)
        await within(bye_bye)
        assert not agent.registered
        assert agent._tasks == set()  # the refresh task went with the user agent
    finally:
        await agent.close()


async def test_register_with_a_wrong_password_fails_401_after_one_retry(
    wire: Wire, carrier: DigestVerifier
) -> None:
    async with UserAgent("127.0.0.1", user="wt", credentials=Credentials("wt", "bad")) as agent:
        registering = asyncio.create_task(agent.register(f"sip:127.0.0.1:{wire.port}"))
        first = await wire.request_of("REGISTER")
        challenge(wire, first, carrier, 401)
        second = await wire.request_of("REGISTER", where=lambda r: r.cseq[0] == 2)
        assert verdict(second, carrier, "Authorization") is Verdict.INVALID
        challenge(wire, second, carrier, 401)
        with pytest.raises(CallFailed) as failed:
            await within(registering)
        assert failed.value.status == 401
        assert not agent.registered
        assert len(sent_requests(agent, "REGISTER")) == 2
    # Never registered: close sends no unREGISTER.
    assert len(sent_requests(agent, "REGISTER")) == 2


# -- inbound policy ----------------------------------------------------------------------------


async def test_requests_from_other_addresses_get_403(wire: Wire) -> None:
    policy = InboundPolicy(allow_ips=["10.0.0.0/8", "192.0.2.1"])
    async with UserAgent("127.0.0.1", user="wt", inbound=policy) as agent:
        call_id = new_call_id()
        wire.send(wire.invite(agent.address, call_id=call_id, branch=new_branch()), agent.address)
        refused = await wire.response(403, "INVITE", call_id=call_id)
        assert refused.to.tag
        wire.send(wire.request("OPTIONS", agent.address, call_id=new_call_id()), agent.address)
        await wire.response(403, "OPTIONS")
        assert agent.incoming.empty() and agent.calls == {}
        assert agent._server == {}  # refused statelessly: nothing kept per request


async def test_allowed_address_gets_through(wire: Wire) -> None:
    policy = InboundPolicy(allow_ips=["127.0.0.0/8"])
    async with UserAgent("127.0.0.1", user="wt", inbound=policy) as agent:
        call_id = new_call_id()
        wire.send(wire.invite(agent.address, call_id=call_id, branch=new_branch()), agent.address)
        call = await within(agent.next_call())
        assert call.call_id == call_id
        await call.reject(486)
        await wire.response(486, "INVITE", call_id=call_id)


def test_inbound_policy_rejects_bad_networks() -> None:
    with pytest.raises(ValueError, match="does not appear to be an IPv4 or IPv6"):
        InboundPolicy(allow_ips=["not-an-ip"])
    with pytest.raises(TypeError, match="not one string"):
        InboundPolicy(allow_ips="127.0.0.1")
    assert not InboundPolicy(allow_ips=[]).allows("127.0.0.1")
    assert InboundPolicy().allows("203.0.113.9")


async def test_inbound_invite_is_challenged_and_the_retry_verified(wire: Wire) -> None:
    policy = InboundPolicy(credentials=Credentials("trunk", "pw"), realm="wt.test")
    async with UserAgent("127.0.0.1", user="wt", inbound=policy) as agent:
        call_id, branch = new_call_id(), new_branch()
        wire.send(wire.invite(agent.address, call_id=call_id, branch=branch), agent.address)
        unauthorized = await wire.response(401, "INVITE", call_id=call_id)
        offered = unauthorized.headers.get_all("WWW-Authenticate")
        assert [v.split("algorithm=")[1].split(",")[0] for v in offered] == ["SHA-256", "MD5"]
        assert agent._server == {} and agent.incoming.empty()
        wire.send(
            wire.request(
                "ACK", agent.address, call_id=call_id, branch=branch, to_tag=unauthorized.to.tag
            ),
            agent.address,
        )

        def answered(password: str, cseq: int, *, call_id: str = call_id) -> tuple[str, str]:
            chosen = choose(offered)
            uri = f"sip:wt@{agent.address[0]}:{agent.address[1]}"
            auth = authorize(chosen, Credentials("trunk", password), "INVITE", uri)
            b = new_branch()
            text = wire.invite(
                agent.address,
                call_id=call_id,
                branch=b,
                cseq=cseq,
                extra=[f"Authorization: {auth}"],
            )
            return text, b

        wrong, _ = answered("nope", 2)
        wire.send(wrong, agent.address)
        await wire.response(401, "INVITE", call_id=call_id, cseq=2)

        right, right_branch = answered("pw", 3)
        wire.send(right, agent.address)
        call = await within(agent.next_call())
        assert call.call_id == call_id and call.invite.cseq == (3, "INVITE")
        await wire.response(100, "INVITE", call_id=call_id, cseq=3)
        await call.reject(603)

        # The very same Authorization again (a captured INVITE replayed as a new call): refused.
        replay_id = new_call_id()
        replay = right.replace(call_id, replay_id).replace(right_branch, new_branch())
        wire.send(replay, agent.address)
        await wire.response(401, "INVITE", call_id=replay_id)
        assert agent.incoming.empty()


async def test_ua_to_ua_digest_both_sides(wire: Wire) -> None:
    """Our client answering our server: a call between two user agents, challenged once."""
    policy = InboundPolicy(credentials=ALICE, realm=REALM)
    async with (
        UserAgent("127.0.0.1", user="human", inbound=policy) as callee,
        UserAgent("127.0.0.1", user="wt", credentials=ALICE) as caller,
    ):
        task = asyncio.create_task(caller.call(callee.uri, ring_timeout=5))
        incoming = await within(callee.next_call())
        await incoming.answer()
        call = await within(task)
        assert call.is_up
        invites = sent_requests(caller, "INVITE")
        assert [i.cseq[0] for i in invites] == [1, 2]
        assert "Authorization" in invites[1].headers
        await call.hangup()
        await within(incoming.ended.wait())

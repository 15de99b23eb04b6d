"""RFC 4028 session timers in the user agent, over real UDP sockets on 127.0.0.1.

The peer is `Wire`, a raw socket speaking hand-written SIP. Intervals are 2 s (the RFC minimum
is 90 s; `SessionTimerConfig(floor=1)` exists for exactly this), so a refresh is due after 1 s
and a session without refreshes is given up after 2 - 2/3 s. Waiting is on a queue or an event
with a deadline; "the call is still up after 0.8 s" is a deadline that must pass, not a sleep.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from tests.unit.conftest import started_ua
from tests.unit.sip_wire import Wire, new_branch, new_call_id, sdp
from tests.unit.test_useragent import answer_sdp, media_closed, within
from warmtransfer.sip.call import CallFailed, CallState, EndReason, IncomingCall, OutgoingCall
from warmtransfer.sip.message import SipRequest, make_response
from warmtransfer.sip.session_timer import SessionTimerConfig
from warmtransfer.sip.useragent import UserAgent

SHORT = SessionTimerConfig(interval=2, min_se=1, floor=1)  # for tests only: RFC says >= 90


@pytest.fixture
async def ua() -> AsyncIterator[UserAgent]:
    async with started_ua(session_timer=SHORT) as agent:
        yield agent


def reply(
    wire: Wire, request: SipRequest, status: int, *extra: tuple[str, str], body: str = ""
) -> None:
    """Answer a request of the user agent with extra headers (Wire.reply takes none)."""
    headers = [("Contact", wire.contact), *extra] if status < 300 else list(extra)
    response = make_response(
        request,
        status,
        to_tag="st" if request.to.tag is None else None,
        body=body.encode(),
        content_type="application/sdp" if body else None,
        extra=headers,
    )
    via = request.vias[0]
    wire.send(response, (via.host, via.port or 5060))


async def outbound(ua: UserAgent, wire: Wire, *extra: tuple[str, str]) -> OutgoingCall:
    task = asyncio.create_task(ua.call(wire.uri))
    invite = await wire.request_of("INVITE")
    reply(wire, invite, 200, *extra, body=answer_sdp(wire))
    call = await within(task)
    await wire.request_of("ACK")
    return call


async def still_up(call: IncomingCall | OutgoingCall, seconds: float) -> None:
    with pytest.raises(TimeoutError):
        await within(call.ended.wait(), seconds)
    assert call.is_up


async def hang_up(call: IncomingCall | OutgoingCall, wire: Wire) -> None:
    """Our BYE, answered by the wire (an unanswered BYE would take 64*T1 to give up)."""
    task = asyncio.create_task(call.hangup())
    bye = await wire.request_of("BYE", where=lambda r: r.call_id == call.call_id)
    reply(wire, bye, 200)
    await within(task)
    assert call.end_reason is EndReason.LOCAL_BYE


async def test_our_invite_asks_for_a_session_timer(ua: UserAgent, wire: Wire) -> None:
    task = asyncio.create_task(ua.call(wire.uri))
    invite = await wire.request_of("INVITE")
    assert invite.headers.get("Supported") == "timer"
    assert invite.headers.get("Session-Expires") == "2"
    assert invite.headers.get("Min-SE") == "1"
    reply(wire, invite, 486)
    with pytest.raises(Exception, match="486"):
        await within(task)


async def test_a_422_to_our_invite_is_retried_once_with_the_peers_min_se(
    ua: UserAgent, wire: Wire
) -> None:
    task = asyncio.create_task(ua.call(wire.uri))
    first = await wire.request_of("INVITE")
    reply(wire, first, 422, ("Min-SE", "5"))
    await wire.request_of("ACK", where=lambda r: r.vias[0].branch == first.vias[0].branch)
    second = await wire.request_of("INVITE", where=lambda r: r.cseq[0] == 2)
    assert (second.call_id, second.from_.tag) == (first.call_id, first.from_.tag)  # same call
    assert second.vias[0].branch != first.vias[0].branch  # a new transaction
    assert second.headers.get("Session-Expires") == "5"
    assert second.headers.get("Min-SE") == "5"
    reply(wire, second, 200, ("Session-Expires", "5;refresher=uas"), body=answer_sdp(wire))
    call = await within(task)
    assert call.is_up and call.session is not None and call.session.agreement.interval == 5
    await hang_up(call, wire)


@pytest.mark.parametrize("min_se", [None, "2"])  # none named, or no more than we asked for
async def test_a_422_that_names_nothing_larger_ends_the_call_without_a_loop(
    ua: UserAgent, wire: Wire, min_se: str | None
) -> None:
    task = asyncio.create_task(ua.call(wire.uri))
    invite = await wire.request_of("INVITE")
    reply(wire, invite, 422, *([("Min-SE", min_se)] if min_se else []))
    with pytest.raises(CallFailed) as failed:
        await within(task)
    assert failed.value.status == 422
    assert len(wire.requests("INVITE")) == 1


async def test_a_second_422_is_final(ua: UserAgent, wire: Wire) -> None:
    task = asyncio.create_task(ua.call(wire.uri))
    reply(wire, await wire.request_of("INVITE"), 422, ("Min-SE", "5"))
    second = await wire.request_of("INVITE", where=lambda r: r.cseq[0] == 2)
    reply(wire, second, 422, ("Min-SE", "50"))
    with pytest.raises(CallFailed) as failed:
        await within(task)
    assert failed.value.status == 422
    assert len(wire.requests("INVITE")) == 2


async def test_as_refresher_we_send_update_at_half_the_interval(ua: UserAgent, wire: Wire) -> None:
    call = await outbound(
        ua,
        wire,
        ("Session-Expires", "2;refresher=uac"),
        ("Require", "timer"),
        ("Allow", "INVITE, ACK, BYE, CANCEL, UPDATE"),
    )
    assert call.answered_at is not None
    loop = asyncio.get_running_loop()
    for n in (1, 2):
        update = await wire.request_of("UPDATE", timeout=3.0)
        # Half of 2 s after the answer (or after the last refresh), not sooner.
        assert loop.time() - call.answered_at >= n * 1.0 - 0.05
        assert update.headers.get("Session-Expires") == "2;refresher=uac"
        assert update.body == b""
        reply(wire, update, 200, ("Session-Expires", "2;refresher=uac"), ("Require", "timer"))
    assert call.is_up and call.session is not None and call.session.refreshes >= 1
    await hang_up(call, wire)


async def test_without_update_we_refresh_with_a_reinvite_and_ack_its_2xx(
    ua: UserAgent, wire: Wire
) -> None:
    call = await outbound(
        ua, wire, ("Session-Expires", "2;refresher=uac"), ("Allow", "INVITE, ACK, BYE")
    )
    reinvite = await wire.request_of("INVITE", timeout=3.0)
    assert reinvite.to.tag == "st" and reinvite.cseq == (2, "INVITE")
    assert reinvite.body == call.invite.body  # our current SDP, unchanged
    assert reinvite.headers.get("Session-Expires") == "2;refresher=uac"
    reply(wire, reinvite, 200, ("Session-Expires", "2;refresher=uac"), body=answer_sdp(wire))
    ack = await wire.request_of("ACK", where=lambda r: r.cseq[0] == 2)
    assert ack.cseq == (2, "ACK")
    await still_up(call, 0.5)  # refreshed: the old expiry (1.33 s after the answer) passes
    assert call.session is not None and call.session.refreshes == 1
    await hang_up(call, wire)


async def test_a_481_to_our_refresh_ends_the_call_as_expired(ua: UserAgent, wire: Wire) -> None:
    call = await outbound(
        ua, wire, ("Session-Expires", "2;refresher=uac"), ("Allow", "INVITE, ACK, BYE, UPDATE")
    )
    update = await wire.request_of("UPDATE", timeout=3.0)
    reply(wire, update, 481)
    await within(call.ended.wait())
    assert call.end_reason is EndReason.SESSION_EXPIRED and call.end_status == 481
    assert media_closed(call)
    assert wire.requests("BYE") == []  # the peer said the dialog is gone: nobody to BYE


async def inbound(ua: UserAgent, wire: Wire, *extra: str) -> tuple[IncomingCall, str, str]:
    call_id = new_call_id()
    wire.send(
        wire.invite(ua.address, call_id=call_id, branch=new_branch(), extra=extra), ua.address
    )
    call = await within(ua.next_call())
    await call.answer()
    ok = await wire.response(200, "INVITE", call_id=call_id)
    assert ok.to.tag is not None
    wire.send(wire.request("ACK", ua.address, call_id=call_id, to_tag=ok.to.tag), ua.address)
    await within(call.acked.wait())
    return call, call_id, ok.to.tag


async def test_peer_refreshes_keep_the_call_up_and_silence_ends_it_expired(
    ua: UserAgent, wire: Wire
) -> None:
    call, call_id, tag = await inbound(
        ua, wire, "Supported: timer", "Session-Expires: 2;refresher=uac", "Min-SE: 1"
    )
    ok = wire.responses(200, "INVITE")[0]
    assert ok.headers.get("Session-Expires") == "2;refresher=uac"
    assert ok.headers.get("Require") == "timer"

    # An UPDATE at 0.8 s and a re-INVITE at 1.6 s: each restarts the 1.33 s to the expiry.
    await still_up(call, 0.8)
    update = wire.request(
        "UPDATE", ua.address, call_id=call_id, cseq=2, to_tag=tag,
        extra=["Supported: timer", "Session-Expires: 2;refresher=uac"],
    )  # fmt: skip
    wire.send(update, ua.address)
    answer = await wire.response(200, "UPDATE", call_id=call_id)
    assert answer.headers.get("Session-Expires") == "2;refresher=uac"
    await still_up(call, 0.8)
    reinvite = wire.invite(
        ua.address, call_id=call_id, branch=new_branch(), cseq=3, to_tag=tag,
        extra=["Supported: timer", "Session-Expires: 2;refresher=uac"],
    )  # fmt: skip
    wire.send(reinvite, ua.address)
    answer = await wire.response(200, "INVITE", call_id=call_id, cseq=3)
    assert answer.headers.get("Session-Expires") == "2;refresher=uac" and answer.body
    wire.send(wire.request("ACK", ua.address, call_id=call_id, cseq=3, to_tag=tag), ua.address)
    await still_up(call, 0.8)
    assert call.session is not None and call.session.refreshes == 2

    # Then silence: we give up 2 - 2/3 s after the last refresh, with a BYE.
    refreshed_at = call.session.refreshed_at
    bye = await wire.request_of("BYE", timeout=3.0)
    reply(wire, bye, 200)
    await within(call.ended.wait())
    assert call.end_reason is EndReason.SESSION_EXPIRED
    assert call.ended_at is not None and call.ended_at - refreshed_at >= 2 - 2 / 3 - 0.05
    assert media_closed(call)


async def test_we_refresh_for_a_caller_that_knows_no_timers(ua: UserAgent, wire: Wire) -> None:
    """A proxy put Session-Expires on an INVITE from a phone without timer support: we are the
    only side that can refresh, and we say so without a Require it would not understand."""
    call, _, _ = await inbound(ua, wire, "Session-Expires: 2", "Allow: INVITE, ACK, BYE, UPDATE")
    ok = wire.responses(200, "INVITE")[0]
    assert ok.headers.get("Session-Expires") == "2;refresher=uas"
    assert ok.headers.get("Require") is None
    update = await wire.request_of("UPDATE", timeout=3.0)
    assert update.headers.get("Session-Expires") == "2;refresher=uac"
    reply(wire, update, 200)
    await still_up(call, 0.5)
    await hang_up(call, wire)


async def test_an_interval_below_our_min_se_gets_422_and_no_call(wire: Wire) -> None:
    config = SessionTimerConfig(interval=5, min_se=3, floor=1)
    async with UserAgent("127.0.0.1", user="wt", session_timer=config) as ua:
        call_id = new_call_id()
        extra = ["Supported: timer", "Session-Expires: 2", "Min-SE: 1"]
        wire.send(
            wire.invite(ua.address, call_id=call_id, branch=new_branch(), extra=extra),
            ua.address,
        )
        refused = await wire.response(422, "INVITE", call_id=call_id)
        assert refused.headers.get("Min-SE") == "3"
        assert ua.calls == {} and ua.incoming.empty()


async def test_no_session_timer_task_or_handle_survives_close(wire: Wire) -> None:
    tasks_before = asyncio.all_tasks()
    ua = await UserAgent("127.0.0.1", user="wt", session_timer=SHORT).start()
    call = await outbound(ua, wire, ("Session-Expires", "2;refresher=uac"), ("Allow", "UPDATE"))
    handle = call._session_handle
    assert handle is not None and call.session is not None
    close = asyncio.create_task(ua.close())
    bye = await wire.request_of("BYE")
    reply(wire, bye, 200)
    await within(close)
    assert handle.cancelled() and call._session_handle is None
    assert call.state is CallState.ENDED
    assert asyncio.all_tasks() - tasks_before == set()
    assert ua._timers == {} and ua._tasks == set()


async def test_session_timers_can_be_turned_off(wire: Wire) -> None:
    async with UserAgent("127.0.0.1", user="wt", session_timer=None) as ua:
        task = asyncio.create_task(ua.call(wire.uri))
        invite = await wire.request_of("INVITE")
        assert invite.headers.get("Session-Expires") is None
        reply(wire, invite, 200, ("Session-Expires", "2;refresher=uac"), body=sdp(wire.media_port))
        call = await within(task)
        assert call.session is None
        await still_up(call, 1.5)  # no refresh due, no expiry
        assert wire.requests("UPDATE") == [] and wire.requests("INVITE") == [invite]
        await hang_up(call, wire)

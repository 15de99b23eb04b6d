"""The asyncio SIP user agent over real UDP sockets on 127.0.0.1.

Two kinds of peer: a second `UserAgent`, or `Wire`, a raw socket that speaks hand-written SIP
and records every datagram it gets back. Nothing of the code under test is mocked; the only
knob turned is the RFC 3261 timer T1 (the transaction module reads it when a timer is armed),
so that "retransmit until 64*T1" takes a second instead of half a minute. Every wait is on an
event or a queue with a deadline.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Awaitable
from dataclasses import dataclass
from typing import TypeVar

import pytest

from tests.unit.sip_wire import Wire, new_branch, new_call_id, sdp
from warmtransfer.media.clock import PacingClock
from warmtransfer.sip import transaction
from warmtransfer.sip.call import (
    Call,
    CallFailed,
    CallState,
    EndReason,
    IncomingCall,
    OutgoingCall,
)
from warmtransfer.sip.message import SipMessage, SipRequest, SipResponse, parse_message
from warmtransfer.sip.sanitize import HeaderNameError
from warmtransfer.sip.useragent import UserAgent

T = TypeVar("T")
DEADLINE = 3.0


async def within(awaitable: Awaitable[T], seconds: float = DEADLINE) -> T:
    async with asyncio.timeout(seconds):
        return await awaitable


async def nothing_more(wire: Wire, status: int, method: str, seconds: float) -> None:
    """No more `status` responses to `method` within `seconds` (a deadline, not a sleep)."""
    with pytest.raises(TimeoutError):
        await wire.response(status, method, timeout=seconds)


def sent(ua: UserAgent) -> list[tuple[float, SipMessage]]:
    """What the user agent put on the wire, parsed, with its loop time."""
    return [(e.at, parse_message(e.data)) for e in ua.trace if e.direction == "out"]


def sent_requests(ua: UserAgent, method: str) -> list[SipRequest]:
    return [m for _, m in sent(ua) if isinstance(m, SipRequest) and m.method == method]


def media_closed(call: Call) -> bool:
    transport = call.media.transport
    return transport is None or transport.is_closing()


@pytest.fixture
def fast_t1(monkeypatch: pytest.MonkeyPatch) -> float:
    t1 = 0.04
    monkeypatch.setattr(transaction, "T1", t1)
    return t1


@dataclass
class Inbound:
    """A call from the wire to the user agent, answered (and ACKed unless told otherwise)."""

    call: IncomingCall
    call_id: str
    branch: str
    invite: str
    ok: SipResponse

    @property
    def tag(self) -> str:
        tag = self.ok.to.tag
        assert tag is not None
        return tag


async def inbound_call(ua: UserAgent, wire: Wire, *, ack: bool = True) -> Inbound:
    call_id, branch = new_call_id(), new_branch()
    invite = wire.invite(ua.address, call_id=call_id, branch=branch)
    wire.send(invite, ua.address)
    call = await within(ua.next_call())
    await call.answer()
    ok = await wire.response(200, "INVITE", call_id=call_id)
    inbound = Inbound(call, call_id, branch, invite, ok)
    if ack:
        wire.send(wire.request("ACK", ua.address, call_id=call_id, to_tag=inbound.tag), ua.address)
        await within(call.acked.wait())
    return inbound


async def bye_from_wire(ua: UserAgent, wire: Wire, inbound: Inbound, cseq: int) -> None:
    bye = wire.request("BYE", ua.address, call_id=inbound.call_id, cseq=cseq, to_tag=inbound.tag)
    wire.send(bye, ua.address)
    await wire.response(200, "BYE", call_id=inbound.call_id)
    await within(inbound.call.ended.wait())
    assert inbound.call.end_reason is EndReason.REMOTE_BYE


def answer_sdp(wire: Wire) -> str:
    return sdp(wire.media_port, formats="0 101")


# -- inbound INVITE: retransmission, 200 OK reliability, CANCEL -----------------------------------


async def test_retransmitted_invite_is_one_call_answered_with_last_provisional(
    ua: UserAgent, wire: Wire
) -> None:
    call_id, branch = new_call_id(), new_branch()
    invite = wire.invite(ua.address, call_id=call_id, branch=branch)
    for _ in range(3):
        wire.send(invite, ua.address)
    call = await within(ua.next_call())
    for _ in range(3):  # one 100 for the INVITE, the same 100 again for each retransmission
        await wire.response(100, "INVITE", call_id=call_id)

    await call.ring()
    await wire.response(180, "INVITE", call_id=call_id)
    wire.send(invite, ua.address)
    wire.send(invite, ua.address)
    repeats = [await wire.response(180, "INVITE", call_id=call_id) for _ in range(2)]
    assert all(r.to.tag == call.local_tag for r in repeats)

    await call.answer()
    ok = await wire.response(200, "INVITE", call_id=call_id)
    wire.send(invite, ua.address)  # still retransmitted after the answer: absorbed
    options = wire.request("OPTIONS", ua.address, call_id=new_call_id())
    wire.send(options, ua.address)
    await wire.response(200, "OPTIONS")  # the UA has read the retransmission by now

    assert len(wire.responses(100, "INVITE")) == 3  # no new server transaction started
    assert ua.incoming.empty()
    assert list(ua.calls.values()) == [call] and call.is_up

    wire.send(wire.request("ACK", ua.address, call_id=call_id, to_tag=ok.to.tag), ua.address)
    await within(call.acked.wait())
    await bye_from_wire(ua, wire, Inbound(call, call_id, branch, invite, ok), cseq=2)
    assert ua.calls == {}


async def test_ok_is_retransmitted_doubling_until_the_ack(
    ua: UserAgent, wire: Wire, fast_t1: float
) -> None:
    inbound = await inbound_call(ua, wire, ack=False)
    await wire.response(200, "INVITE", call_id=inbound.call_id)
    await wire.response(200, "INVITE", call_id=inbound.call_id)

    oks = [at for at, m in sent(ua) if isinstance(m, SipResponse) and m.status == 200]
    oks = oks[:3]  # the 200 OK and its first two retransmissions
    first, second = oks[1] - oks[0], oks[2] - oks[1]
    assert first >= fast_t1 * 0.99
    assert second >= 2 * fast_t1 * 0.99
    assert 1.4 < second / first < 2.6  # T1, then 2*T1

    ack = wire.request("ACK", ua.address, call_id=inbound.call_id, to_tag=inbound.tag)
    wire.send(ack, ua.address)
    await within(inbound.call.acked.wait())
    count = len(wire.responses(200, "INVITE"))
    await nothing_more(wire, 200, "INVITE", 8 * fast_t1)
    assert len(wire.responses(200, "INVITE")) == count
    assert inbound.call.is_up
    await bye_from_wire(ua, wire, inbound, cseq=2)


async def test_ok_without_ack_gives_up_after_64_t1_and_hangs_up(
    ua: UserAgent, wire: Wire, monkeypatch: pytest.MonkeyPatch
) -> None:
    t1 = 0.02
    monkeypatch.setattr(transaction, "T1", t1)
    inbound = await inbound_call(ua, wire, ack=False)
    answered_at = inbound.call.answered_at
    assert answered_at is not None

    bye = await wire.request_of("BYE", timeout=64 * t1 + DEADLINE)
    wire.reply(bye, 200)
    await within(inbound.call.ended.wait())
    assert inbound.call.end_reason is EndReason.LOCAL_BYE
    assert bye.call_id == inbound.call_id and bye.from_.tag == inbound.tag

    bye_at = next(at for at, m in sent(ua) if isinstance(m, SipRequest) and m.method == "BYE")
    assert bye_at - answered_at >= 64 * t1 * 0.99
    oks = [at for at, m in sent(ua) if isinstance(m, SipResponse) and m.status == 200]
    assert len(oks) >= 6  # 0, T1, 3T1, 7T1, 15T1, 31T1 (63T1 may race the give-up at 64T1)
    assert max(oks) < bye_at  # retransmission stopped when the UA gave up
    assert media_closed(inbound.call)


async def test_cancel_of_a_ringing_inbound_call(ua: UserAgent, wire: Wire, fast_t1: float) -> None:
    call_id, branch = new_call_id(), new_branch()
    wire.send(wire.invite(ua.address, call_id=call_id, branch=branch), ua.address)
    call = await within(ua.next_call())
    await call.ring()
    await wire.response(180, "INVITE", call_id=call_id)

    wire.send(wire.request("CANCEL", ua.address, call_id=call_id, branch=branch), ua.address)
    await wire.response(200, "CANCEL", call_id=call_id)
    terminated = await wire.response(487, "INVITE", call_id=call_id)
    await within(call.ended.wait())
    assert call.end_reason is EndReason.CANCELLED and call.end_status == 487
    assert terminated.to.tag == call.local_tag
    assert media_closed(call)

    await wire.response(487, "INVITE", call_id=call_id)  # timer G: repeated until the ACK
    ack = wire.request("ACK", ua.address, call_id=call_id, branch=branch, to_tag=call.local_tag)
    wire.send(ack, ua.address)
    count = len(wire.responses(487, "INVITE"))
    await nothing_more(wire, 487, "INVITE", 8 * fast_t1)
    assert len(wire.responses(487, "INVITE")) == count
    assert ua.calls == {}


async def test_cancel_that_overtakes_call_setup_still_ends_the_invite(
    ua: UserAgent, wire: Wire
) -> None:
    # INVITE and CANCEL in the same breath: the CANCEL may arrive while the user agent is still
    # opening the call's media socket, before the call exists.
    call_id, branch = new_call_id(), new_branch()
    wire.send(wire.invite(ua.address, call_id=call_id, branch=branch), ua.address)
    wire.send(wire.request("CANCEL", ua.address, call_id=call_id, branch=branch), ua.address)
    await wire.response(200, "CANCEL", call_id=call_id)
    await wire.response(487, "INVITE", call_id=call_id)
    # Whatever reached the application is over; nothing is left ringing.
    options = wire.request("OPTIONS", ua.address, call_id=new_call_id())
    wire.send(options, ua.address)
    await wire.response(200, "OPTIONS")
    while not ua.incoming.empty():
        offered = ua.incoming.get_nowait()
        assert offered.state is CallState.ENDED
    assert ua.calls == {}


# -- outbound calls --------------------------------------------------------------------------------


async def test_outbound_busy_raises_486_and_acks_with_the_invite_branch(
    ua: UserAgent, wire: Wire
) -> None:
    task = asyncio.create_task(ua.call(wire.uri, ring_timeout=5))
    invite = await wire.request_of("INVITE")
    wire.reply(invite, 100)
    busy = wire.reply(invite, 486, to_tag="busy1")
    with pytest.raises(CallFailed) as failed:
        await within(task)
    assert failed.value.status == 486 and not failed.value.cancelled

    ack = await wire.request_of("ACK")
    assert ack.vias[0].branch == invite.vias[0].branch
    assert ack.cseq == (1, "ACK") and ack.call_id == invite.call_id
    assert ack.to.tag == "busy1" and str(ack.uri) == str(invite.uri)

    wire.send(busy, ua.address)
    again = await wire.request_of("ACK")  # a retransmitted 486 is ACKed again, not re-delivered
    assert again.vias[0].branch == invite.vias[0].branch
    assert ua.calls == {}


async def test_ring_timeout_sends_cancel_after_the_180(ua: UserAgent, wire: Wire) -> None:
    ringing: list[int] = []
    task = asyncio.create_task(ua.call(wire.uri, ring_timeout=0.3, on_ringing=ringing.append))
    invite = await wire.request_of("INVITE")
    wire.reply(invite, 180, to_tag="ring1")

    cancel = await wire.request_of("CANCEL")
    assert ringing == [180]
    assert cancel.vias[0].branch == invite.vias[0].branch
    assert cancel.cseq == (1, "CANCEL") and cancel.call_id == invite.call_id
    assert str(cancel.uri) == str(invite.uri) and cancel.from_.tag == invite.from_.tag
    wire.reply(cancel, 200)
    wire.reply(invite, 487, to_tag="ring1")

    with pytest.raises(CallFailed) as failed:
        await within(task)
    assert failed.value.cancelled and failed.value.status == 487
    ack = await wire.request_of("ACK")
    assert ack.vias[0].branch == invite.vias[0].branch
    assert ua.calls == {}


async def test_cancelling_the_dial_task_sends_cancel_before_cancelled_error(
    ua: UserAgent, wire: Wire
) -> None:
    rung = asyncio.Event()
    task = asyncio.create_task(ua.call(wire.uri, on_ringing=lambda _: rung.set()))
    invite = await wire.request_of("INVITE")
    wire.reply(invite, 180, to_tag="ring2")
    await within(rung.wait())
    (call,) = ua.calls.values()
    assert isinstance(call, OutgoingCall) and call.state is CallState.RINGING

    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert [c.cseq for c in sent_requests(ua, "CANCEL")] == [(1, "CANCEL")]  # already sent

    cancel = await wire.request_of("CANCEL")
    wire.reply(cancel, 200)
    wire.reply(invite, 487, to_tag="ring2")
    await within(call.ended.wait())
    assert call.end_reason is EndReason.CANCELLED and call.end_status == 487
    assert media_closed(call)
    await wire.request_of("ACK")


async def test_cancelled_dial_is_released_when_the_peer_never_answers_the_cancel(
    ua: UserAgent, wire: Wire, fast_t1: float
) -> None:
    # RFC 3261 9.1: 64*T1 after the CANCEL without a final response, the INVITE is over.
    rung = asyncio.Event()
    task = asyncio.create_task(ua.call(wire.uri, on_ringing=lambda _: rung.set()))
    invite = await wire.request_of("INVITE")
    wire.reply(invite, 180, to_tag="mute")
    await within(rung.wait())
    (call,) = ua.calls.values()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    cancel = await wire.request_of("CANCEL")
    wire.reply(cancel, 200)  # ... and never a final response to the INVITE

    await within(call.ended.wait(), 64 * fast_t1 + DEADLINE)
    assert call.end_reason is EndReason.CANCELLED
    assert media_closed(call)
    assert ua.calls == {}
    assert not [key for key in ua._client if key[1] == "INVITE"]


async def test_provisional_after_the_ring_timeout_gave_up_is_cancelled(
    ua: UserAgent, wire: Wire
) -> None:
    # The peer is silent until after the ring timeout: a CANCEL may only follow a provisional
    # response (RFC 3261 9.1), so it must go out when the late 180 comes, not never.
    task = asyncio.create_task(ua.call(wire.uri, ring_timeout=0.2))
    invite = await wire.request_of("INVITE")
    with pytest.raises(CallFailed) as failed:
        await within(task, 8.0)
    assert failed.value.cancelled
    assert sent_requests(ua, "CANCEL") == []

    wire.reply(invite, 180, to_tag="late")
    cancel = await wire.request_of("CANCEL")
    assert cancel.vias[0].branch == invite.vias[0].branch
    wire.reply(cancel, 200)
    wire.reply(invite, 487, to_tag="late")
    await wire.request_of("ACK")


@pytest.mark.parametrize("how", ["ring_timeout", "task_cancelled"])
async def test_ok_crossing_our_cancel_is_acked_then_byed(
    ua: UserAgent, wire: Wire, how: str
) -> None:
    rung = asyncio.Event()
    task = asyncio.create_task(
        ua.call(
            wire.uri,
            ring_timeout=0.3 if how == "ring_timeout" else None,
            on_ringing=lambda _: rung.set(),
        )
    )
    invite = await wire.request_of("INVITE")
    wire.reply(invite, 180, to_tag="cross")
    await within(rung.wait())
    (call,) = ua.calls.values()
    if how == "task_cancelled":
        task.cancel()
    cancel = await wire.request_of("CANCEL")
    wire.reply(invite, 200, to_tag="cross", body=answer_sdp(wire))  # sent before the CANCEL came
    wire.reply(cancel, 200)

    if how == "ring_timeout":
        with pytest.raises(CallFailed) as failed:
            await within(task, 6.0)
        assert failed.value.cancelled
    else:
        with pytest.raises(asyncio.CancelledError):
            await task

    ack = await wire.request_of("ACK")
    bye = await wire.request_of("BYE")
    wire.reply(bye, 200)
    assert ack.cseq == (1, "ACK") and ack.to.tag == "cross"
    assert ack.vias[0].branch != invite.vias[0].branch  # the ACK of a 2xx is its own transaction
    assert bye.cseq == (2, "BYE") and bye.to.tag == "cross" and bye.call_id == invite.call_id
    methods = [m.method for m in sent_requests(ua, "ACK") + sent_requests(ua, "BYE")]
    assert methods == ["ACK", "BYE"]
    order = [m.method for _, m in sent(ua) if isinstance(m, SipRequest)]
    assert order.index("ACK") < order.index("BYE")
    await within(call.ended.wait())
    assert media_closed(call)
    assert ua.calls == {}


async def test_outbound_call_answered_by_a_raw_peer(ua: UserAgent, wire: Wire) -> None:
    task = asyncio.create_task(ua.call(wire.uri))
    invite = await wire.request_of("INVITE")
    wire.reply(invite, 100)
    wire.reply(invite, 180, to_tag="up")
    ok = wire.reply(invite, 200, to_tag="up", body=answer_sdp(wire))
    call = await within(task)
    assert call.is_up and call.negotiated is not None
    assert call.negotiated.codec.name == "PCMU" and call.negotiated.dtmf_payload_type == 101
    ack = await wire.request_of("ACK")
    assert str(ack.uri) == f"sip:human@127.0.0.1:{wire.port}"  # to the Contact of the 200
    wire.send(ok, ua.address)  # our ACK was "lost": the 200 comes again and is ACKed again
    again = await wire.request_of("ACK")
    assert again.cseq == ack.cseq == (1, "ACK")

    # The wire is the callee here: its tag ("up") goes in From, the user agent's in To.
    bye = wire.request(
        "BYE", ua.address, call_id=invite.call_id, from_tag="up", to_tag=invite.from_.tag
    )
    wire.send(bye, ua.address)
    await wire.response(200, "BYE", call_id=invite.call_id)
    await within(call.ended.wait())
    assert call.end_reason is EndReason.REMOTE_BYE
    assert media_closed(call)


# -- in-dialog and out-of-dialog requests ----------------------------------------------------------


@pytest.mark.parametrize("who_hangs_up", ["caller", "callee"])
async def test_bye_either_way_ends_both_calls_and_closes_media(
    ua: UserAgent, peer: UserAgent, who_hangs_up: str
) -> None:
    dial = asyncio.create_task(peer.call(ua.uri, display="Human"))
    inbound = await within(ua.next_call())
    await inbound.ring()
    await inbound.answer()
    outbound = await within(dial)
    await within(inbound.acked.wait())
    assert inbound.is_up and outbound.is_up
    assert inbound.caller.display_name == "Human"

    local: Call = outbound if who_hangs_up == "caller" else inbound
    remote: Call = inbound if who_hangs_up == "caller" else outbound
    await within(local.hangup())
    await within(remote.ended.wait())
    assert local.end_reason is EndReason.LOCAL_BYE
    assert remote.end_reason is EndReason.REMOTE_BYE
    for call in (inbound, outbound):
        await within(call.media.wait_closed())
        assert call.state is CallState.ENDED
    assert ua.calls == {} and peer.calls == {}


async def test_bye_for_an_unknown_dialog_gets_481(ua: UserAgent, wire: Wire) -> None:
    bye = wire.request("BYE", ua.address, call_id=new_call_id(), cseq=2, to_tag="nobody")
    wire.send(bye, ua.address)
    assert (await wire.response(481, "BYE")).reason


async def test_bye_with_a_wrong_tag_gets_481_and_the_call_stays_up(
    ua: UserAgent, wire: Wire
) -> None:
    inbound = await inbound_call(ua, wire)
    wrong = wire.request("BYE", ua.address, call_id=inbound.call_id, cseq=2, to_tag="not-ours")
    wire.send(wrong, ua.address)
    await wire.response(481, "BYE", call_id=inbound.call_id)
    assert inbound.call.is_up
    await bye_from_wire(ua, wire, inbound, cseq=3)


async def test_options_outside_a_dialog_gets_200_with_allow(ua: UserAgent, wire: Wire) -> None:
    wire.send(wire.request("OPTIONS", ua.address, call_id=new_call_id()), ua.address)
    ok = await wire.response(200, "OPTIONS")
    allowed = {method.strip() for method in ok.headers.get_all("Allow")}
    assert {"INVITE", "ACK", "CANCEL", "BYE", "OPTIONS", "INFO"} <= allowed


async def test_options_while_refusing_calls_gets_the_refusal(ua: UserAgent, wire: Wire) -> None:
    """RFC 3261 11.2: OPTIONS is answered as an INVITE would be, so a proxy's pings see a
    draining server as unavailable (and take it out of its set) before it sends a call."""
    ua.refusing_calls = (503, "Service Unavailable", 30)
    wire.send(wire.request("OPTIONS", ua.address, call_id=new_call_id()), ua.address)
    refused = await wire.response(503, "OPTIONS")
    assert refused.headers.get("Retry-After") == "30"
    ua.refusing_calls = None
    wire.send(wire.request("OPTIONS", ua.address, call_id=new_call_id()), ua.address)
    await wire.response(200, "OPTIONS")


@pytest.mark.parametrize("method", ["FOOBAR", "SUBSCRIBE", "BY", "E"])
async def test_an_unknown_method_gets_501(ua: UserAgent, wire: Wire, method: str) -> None:
    wire.send(wire.request(method, ua.address, call_id=new_call_id()), ua.address)
    await wire.response(501, method)


async def test_a_notify_for_no_subscription_gets_481(ua: UserAgent, wire: Wire) -> None:
    """RFC 6665 4.1.3: a NOTIFY that matches no subscription of ours is refused with 481."""
    wire.send(wire.request("NOTIFY", ua.address, call_id=new_call_id()), ua.address)
    await wire.response(481, "NOTIFY")


async def test_a_refer_outside_a_dialog_is_not_allowed(ua: UserAgent, wire: Wire) -> None:
    """We take REFER only inside a call (and only if the application says so): 405 here."""
    wire.send(wire.request("REFER", ua.address, call_id=new_call_id()), ua.address)
    response = await wire.response(405, "REFER")
    assert "REFER" in {m.strip() for m in response.headers.get_all("Allow")}


async def test_info_in_a_dialog_gets_200_and_a_lower_cseq_gets_500(
    ua: UserAgent, wire: Wire
) -> None:
    inbound = await inbound_call(ua, wire)
    info = wire.request("INFO", ua.address, call_id=inbound.call_id, cseq=5, to_tag=inbound.tag)
    wire.send(info, ua.address)
    await wire.response(200, "INFO", cseq=5)
    stale = wire.request("INFO", ua.address, call_id=inbound.call_id, cseq=3, to_tag=inbound.tag)
    wire.send(stale, ua.address)
    await wire.response(500, "INFO", cseq=3)
    assert inbound.call.is_up
    await bye_from_wire(ua, wire, inbound, cseq=6)


async def test_reinvite_to_hold_is_answered_with_sdp_and_the_call_stays_up(
    ua: UserAgent, wire: Wire
) -> None:
    inbound = await inbound_call(ua, wire)
    hold = wire.invite(
        ua.address,
        call_id=inbound.call_id,
        branch=new_branch(),
        cseq=2,
        to_tag=inbound.tag,
        body=sdp(wire.media_port, direction="sendonly"),
    )
    wire.send(hold, ua.address)
    ok = await wire.response(200, "INVITE", call_id=inbound.call_id, cseq=2)
    assert ok.content_type == "application/sdp"
    assert b"a=recvonly" in ok.body and ok.to.tag == inbound.tag
    wire.send(
        wire.request("ACK", ua.address, call_id=inbound.call_id, cseq=2, to_tag=inbound.tag),
        ua.address,
    )
    assert inbound.call.is_up and inbound.call.negotiated is not None
    assert inbound.call.negotiated.on_hold
    assert not media_closed(inbound.call)
    await bye_from_wire(ua, wire, inbound, cseq=3)


async def test_offer_without_a_common_codec_is_rejected_488(ua: UserAgent, wire: Wire) -> None:
    call_id, branch = new_call_id(), new_branch()
    offer = sdp(wire.media_port, formats="9")  # G.722 only
    wire.send(wire.invite(ua.address, call_id=call_id, branch=branch, body=offer), ua.address)
    call = await within(ua.next_call())
    with pytest.raises(CallFailed) as failed:
        await call.answer()
    assert failed.value.status == 488
    rejected = await wire.response(488, "INVITE", call_id=call_id)
    assert rejected.to.tag == call.local_tag
    assert call.end_reason is EndReason.REJECTED and call.end_status == 488
    assert media_closed(call)
    wire.send(
        wire.request("ACK", ua.address, call_id=call_id, branch=branch, to_tag=call.local_tag),
        ua.address,
    )
    assert ua.calls == {}


async def test_reject_needs_a_final_error_status(ua: UserAgent, wire: Wire) -> None:
    call_id = new_call_id()
    wire.send(wire.invite(ua.address, call_id=call_id, branch=new_branch()), ua.address)
    call = await within(ua.next_call())
    with pytest.raises(ValueError, match="300"):
        await call.reject(180)
    assert call.state is CallState.OFFERED
    await call.reject(603)
    await wire.response(603, "INVITE", call_id=call_id)
    assert call.end_reason is EndReason.REJECTED and call.end_status == 603


# -- malformed input -------------------------------------------------------------------------------


def truncated_invite(wire: Wire, ua: UserAgent, call_id: str) -> bytes:
    """A complete header section whose body is cut short of its Content-Length."""
    text = wire.invite(ua.address, call_id=call_id, branch=new_branch()).encode()
    return text[: len(text) - 40]


async def test_malformed_datagrams_never_disturb_a_call(
    ua: UserAgent, wire: Wire, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="warmtransfer")
    inbound = await inbound_call(ua, wire)
    invite = wire.invite(ua.address, call_id=new_call_id(), branch=new_branch()).encode()
    huge = invite.replace(b"Max-Forwards: 70", b"X-Big: " + b"a" * 20000)
    garbage = [
        b"\x00\xff\xfe" * 50,
        os.urandom(512),
        b"INVITE",
        b"SIP/2.0 200 OK\r\n\r\n",
        invite[: len(invite) // 2],
        truncated_invite(wire, ua, new_call_id()),
        huge,
        b"\xc3\x28" + invite,
        invite.replace(b"CSeq: 1 INVITE", b"CSeq: x INVITE"),
        b"\r\n\r\n",
    ]
    for data in garbage:
        wire.send(data, ua.address)
    # The user agent has read all of it once it answers what comes next on the same socket.
    wire.send(wire.request("OPTIONS", ua.address, call_id=new_call_id()), ua.address)
    await wire.response(200, "OPTIONS")

    udp = ua._transports._udp
    assert udp is not None and not udp.is_closing()
    assert inbound.call.is_up and list(ua.calls.values()) == [inbound.call]
    assert ua.incoming.empty()
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]
    await bye_from_wire(ua, wire, inbound, cseq=2)


async def test_a_malformed_request_that_can_be_answered_gets_400(ua: UserAgent, wire: Wire) -> None:
    call_id = new_call_id()
    wire.send(truncated_invite(wire, ua, call_id), ua.address)
    bad = await wire.response(400, "INVITE", call_id=call_id)
    assert bad.to.tag  # a final response carries a To tag
    assert "Content-Length" in (bad.headers.get("Warning") or "")

    huge_id = new_call_id()
    huge = wire.request("OPTIONS", ua.address, call_id=huge_id, extra=["X-Big: " + "a" * 20000])
    wire.send(huge, ua.address)
    await wire.response(400, "OPTIONS", call_id=huge_id)

    # Never a response to a malformed ACK, to a response, or to what is not SIP at all.
    ack_id = new_call_id()  # CSeq twice: malformed, but every header needed for a reply is there
    ack = wire.request("ACK", ua.address, call_id=ack_id, extra=["CSeq: 1 ACK"])
    wire.send(ack, ua.address)
    wire.send(b"SIP/2.0 200 OK\r\nVia: SIP/2.0/UDP 127.0.0.1:9;branch=z9hG4bKx\r\n\r\n", ua.address)
    wire.send(b"\x80\x00" + os.urandom(200), ua.address)
    wire.send(wire.request("OPTIONS", ua.address, call_id=new_call_id()), ua.address)
    await wire.response(200, "OPTIONS")
    assert len(wire.responses(400, "INVITE")) + len(wire.responses(400, "OPTIONS")) == 2
    assert not [r for r in wire.log if r.message.call_id == ack_id]
    assert ua.calls == {} and ua.incoming.empty()


# -- what reaches the wire from the application ----------------------------------------------------


async def test_header_injection_puts_no_header_on_the_wire(ua: UserAgent, wire: Wire) -> None:
    task = asyncio.create_task(
        ua.call(
            wire.uri,
            headers={"X-Summary": "a\r\nEvil: 1", "X-Note": "tab\there\x00nul"},
            display='Bob"\r\nX: y',
            caller_id="+15550100",
        )
    )
    invite = await wire.request_of("INVITE")
    names = {name.lower() for name, _ in invite.headers.items()}
    assert "evil" not in names and "x" not in names
    summary = invite.headers.get("X-Summary")
    assert summary is not None and summary.startswith("a") and "Evil: 1" in summary
    assert "\r" not in summary and "\n" not in summary
    assert invite.headers.get("X-Note") == "tab here nul"
    assert invite.from_.display_name is not None
    assert '"' not in invite.from_.display_name and "\n" not in invite.from_.display_name
    assert invite.from_.uri.user == "+15550100"
    raw = wire.requests("INVITE")[0]
    assert raw.body.startswith(b"v=0")  # nothing was smuggled into the body either
    wire.reply(invite, 603, to_tag="no")
    with pytest.raises(CallFailed):
        await within(task)


@pytest.mark.parametrize(
    "name", ["X Bad", "X-Evil\r\nVia", "X:Y", "", "X-Evil\n", "X-É", "X-" + "a" * 80]
)
async def test_a_header_name_that_is_not_a_token_raises_before_sending(
    ua: UserAgent, wire: Wire, name: str
) -> None:
    with pytest.raises(HeaderNameError):
        await within(ua.call(wire.uri, headers={name: "v"}))
    assert not [e for e in ua.trace if e.direction == "out"]
    assert ua.calls == {}


@pytest.mark.parametrize(
    "caller_id",
    [
        "alice",
        "alice smith",
        "123\r\nEvil: 1",
        "<sip:x@example.com>",
        "+1-555-0100",
        "١٢٣",
        "1" * 40,
    ],
)
async def test_a_caller_id_that_is_neither_uri_nor_number_raises_before_sending(
    ua: UserAgent, wire: Wire, caller_id: str
) -> None:
    with pytest.raises(ValueError, match="caller ID"):
        await within(ua.call(wire.uri, caller_id=caller_id))
    assert not [e for e in ua.trace if e.direction == "out"]
    assert ua.calls == {}


@pytest.mark.parametrize("caller_id", ["+15550100", "sip:agent@example.com", "tel:+15550100"])
async def test_a_number_or_uri_caller_id_is_the_from(
    ua: UserAgent, wire: Wire, caller_id: str
) -> None:
    task = asyncio.create_task(ua.call(wire.uri, caller_id=caller_id))
    invite = await wire.request_of("INVITE")
    assert caller_id.removeprefix("sip:").removeprefix("tel:").split("@")[0] == (
        invite.from_.uri.user
    )
    wire.reply(invite, 486, to_tag="b")
    with pytest.raises(CallFailed):
        await within(task)


# -- resources -------------------------------------------------------------------------------------


def open_fds() -> set[str]:
    return set(os.listdir("/proc/self/fd"))


async def test_close_releases_every_socket_and_task_whatever_state_the_calls_are_in() -> None:
    fds_before = open_fds()
    tasks_before = asyncio.all_tasks()
    ua = await UserAgent("127.0.0.1", user="wt").start()
    peer = await UserAgent("127.0.0.1", user="human").start()
    wire = await Wire.open()
    calls: list[IncomingCall | OutgoingCall] = []

    # Inbound, offered: the application took it and did nothing.
    offered_id = new_call_id()
    wire.send(wire.invite(ua.address, call_id=offered_id, branch=new_branch()), ua.address)
    await wire.response(100, "INVITE", call_id=offered_id)
    calls.append(await within(ua.next_call()))
    # Inbound from a user agent, ringing.
    ringing_dial = asyncio.create_task(peer.call(ua.uri))
    ringing = await within(ua.next_call())
    await ringing.ring()
    calls.append(ringing)
    # Inbound, answered but never ACKed (200 OK being retransmitted).
    calls.append((await inbound_call(ua, wire, ack=False)).call)
    # Inbound, rejected, 486 being retransmitted for want of an ACK.
    rejected_id = new_call_id()
    wire.send(wire.invite(ua.address, call_id=rejected_id, branch=new_branch()), ua.address)
    rejected = await within(ua.next_call())
    await rejected.reject(486)
    await wire.response(486, "INVITE", call_id=rejected_id)
    # Inbound from a user agent, answered and confirmed.
    answered_dial = asyncio.create_task(peer.call(ua.uri))
    answered = await within(ua.next_call())
    await answered.answer()
    calls.append(answered)
    far_end = await within(answered_dial)
    # Outbound to a user agent, answered.
    dial_peer = asyncio.create_task(ua.call(peer.uri))
    peer_side = await within(peer.next_call())
    await peer_side.answer()
    calls.append(await within(dial_peer))
    # Outbound to the wire, dialling: the wire never answers.
    seen: set[str] = set()
    dialing_task = asyncio.create_task(ua.call(wire.uri))
    seen.add((await wire.request_of("INVITE")).call_id)
    # Outbound to the wire, ringing.
    ringing_task = asyncio.create_task(ua.call(wire.uri))
    invite = await wire.request_of("INVITE", where=lambda r: r.call_id not in seen)
    seen.add(invite.call_id)
    wire.reply(invite, 180, to_tag="r")
    # Outbound to the wire, answered, and being hung up: the wire never answers the BYE.
    answered_task = asyncio.create_task(ua.call(wire.uri))
    invite = await wire.request_of("INVITE", where=lambda r: r.call_id not in seen)
    wire.reply(invite, 200, to_tag="a", body=answer_sdp(wire))
    hanging_up = await within(answered_task)
    calls.append(hanging_up)
    hangup_task = asyncio.create_task(hanging_up.hangup())
    await wire.request_of("BYE", where=lambda r: r.call_id == invite.call_id)
    # Inbound, never taken from the queue (or still being set up when close() comes).
    queued_id = new_call_id()
    wire.send(wire.invite(ua.address, call_id=queued_id, branch=new_branch()), ua.address)
    await wire.response(100, "INVITE", call_id=queued_id)

    await within(ua.close(), 6.0)
    await within(peer.close(), 6.0)
    wire.close()
    outcomes = await within(
        asyncio.gather(
            ringing_dial, dialing_task, ringing_task, hangup_task, return_exceptions=True
        ),
        2.0,
    )
    assert isinstance(outcomes[0], CallFailed)  # the peer's call we never answered
    assert isinstance(outcomes[1], CallFailed) and isinstance(outcomes[2], CallFailed)
    assert outcomes[3] is None
    while not ua.incoming.empty():
        calls.append(ua.incoming.get_nowait())
    for call in [*calls, far_end, peer_side]:
        assert call.ended.is_set(), call
        await within(call.media.wait_closed())
    await within(wire.wait_closed())

    assert asyncio.all_tasks() - tasks_before == set()
    assert open_fds() == fds_before
    assert ua.calls == {} and ua._media == set() and ua._timers == {}


async def test_the_clock_given_is_the_clock_used_even_when_idle() -> None:
    """An idle PacingClock has len 0 and so is falsy: `clock or PacingClock()` lost it."""
    clock = PacingClock()
    ua = UserAgent("127.0.0.1", 0, clock=clock)
    assert ua.clock is clock

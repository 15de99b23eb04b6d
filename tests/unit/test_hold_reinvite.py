"""Our own hold (RFC 6337): re-INVITEs with a=sendonly and a=sendrecv, over real UDP sockets.

The peer is `Wire`, a raw socket speaking hand-written SIP, so every byte of the offer we send
is read as sent. Waiting is on a queue or an event with a deadline; "no second INVITE while the
first is outstanding" is a deadline that must pass, not a sleep.
"""

from __future__ import annotations

import asyncio
import random
from pathlib import Path

import pytest

from tests.unit.conftest import started_ua
from tests.unit.sip_wire import Wire, new_branch, sdp
from tests.unit.test_session_timer_ua import hang_up, outbound, reply
from tests.unit.test_useragent import answer_sdp, bye_from_wire, inbound_call, within
from warmtransfer.backends.sip import SipBridge, SipCallerLeg, SipTargetLeg
from warmtransfer.sip import call as call_module
from warmtransfer.sip.call import CallFailed, CallState, OutgoingCall, glare_delay
from warmtransfer.sip.message import SipRequest
from warmtransfer.sip.sdp import SessionDescription
from warmtransfer.sip.session_timer import SessionTimerConfig
from warmtransfer.sip.useragent import UserAgent
from warmtransfer.transfer.plan import HoldAudio, TransferPlan
from warmtransfer.transfer.target import Target


def audio_of(body: bytes) -> tuple[SessionDescription, str, tuple[int, ...]]:
    description = SessionDescription.parse(body)
    audio = description.audio
    assert audio is not None
    return description, audio.direction, audio.formats


@pytest.fixture
def quick_glare(monkeypatch: pytest.MonkeyPatch) -> list[bool]:
    """RFC 3261's 0-4 s back-off after a 491, made 20 ms; records who asked (Call-ID owner?)."""
    asked: list[bool] = []

    def delay(owns_call_id: bool) -> float:
        asked.append(owns_call_id)
        return 0.02

    monkeypatch.setattr(call_module, "glare_delay", delay)
    return asked


async def test_hold_and_unhold_send_sendonly_then_sendrecv_in_the_same_session(
    ua: UserAgent, wire: Wire
) -> None:
    call = await outbound(ua, wire)
    original, _, _ = audio_of(call.invite.body)

    hold = asyncio.create_task(call.hold())
    reinvite = await wire.request_of("INVITE", where=lambda r: r.cseq[0] == 2)
    offered, direction, formats = audio_of(reinvite.body)
    assert direction == "sendonly"
    assert formats == (0, 101)  # the agreed codec and events only, not the original list
    assert offered.session_id == original.session_id
    assert offered.session_version == original.session_version + 1
    assert reinvite.to.tag == "st" and reinvite.headers.get("Contact") == ua.contact()
    # The peer answers recvonly and moves its media: we follow the answer.
    moved = wire.media_port + 2
    reply(wire, reinvite, 200, body=sdp(moved, formats="0 101", direction="recvonly"))
    await within(hold)
    ack = await wire.request_of("ACK", where=lambda r: r.cseq[0] == 2)
    assert ack.cseq == (2, "ACK")
    assert call.holding and call.is_up
    assert call.media.remote == ("127.0.0.1", moved)
    assert call.negotiated is not None and call.negotiated.local_direction == "sendonly"
    assert call.local_sdp == reinvite.body  # what a session refresh would send now

    await within(call.hold())  # already held: nothing is sent
    unhold = asyncio.create_task(call.unhold())
    resume = await wire.request_of("INVITE", where=lambda r: r.cseq[0] == 3)
    resumed, direction, _ = audio_of(resume.body)
    assert direction == "sendrecv"
    assert (resumed.session_id, resumed.session_version) == (
        original.session_id,
        original.session_version + 2,
    )
    reply(wire, resume, 200, body=answer_sdp(wire))
    await within(unhold)
    await wire.request_of("ACK", where=lambda r: r.cseq[0] == 3)
    assert not call.holding and call.media.remote == ("127.0.0.1", wire.media_port)
    assert len(wire.requests("INVITE")) == 3  # the call, the hold, the resume: no more
    await hang_up(call, wire)


async def test_a_refused_hold_raises_and_leaves_the_call_as_it_was(
    ua: UserAgent, wire: Wire
) -> None:
    call = await outbound(ua, wire)
    before = call.local_sdp
    hold = asyncio.create_task(call.hold())
    reinvite = await wire.request_of("INVITE", where=lambda r: r.cseq[0] == 2)
    reply(wire, reinvite, 488)
    with pytest.raises(CallFailed) as failed:
        await within(hold)
    assert failed.value.status == 488
    # The transaction ACKs the 488 itself, on the INVITE's branch (RFC 3261 17.1.1.3).
    ack = await wire.request_of("ACK", where=lambda r: r.cseq[0] == 2)
    assert ack.vias[0].branch == reinvite.vias[0].branch
    assert call.is_up and not call.holding and call.local_sdp == before

    # The refused offer never took effect: the next one has the same version again.
    again = asyncio.create_task(call.hold())
    retry = await wire.request_of("INVITE", where=lambda r: r.cseq[0] == 3)
    assert retry.body == reinvite.body
    reply(wire, retry, 200, body=sdp(wire.media_port, formats="0 101", direction="recvonly"))
    await within(again)
    assert call.holding
    await hang_up(call, wire)


async def test_a_481_to_our_hold_means_the_call_is_gone(ua: UserAgent, wire: Wire) -> None:
    """RFC 3261 14.1: the peer has no such dialog. The call ends at once (no BYE: there is
    nobody to send it to), rather than staying "up" with nobody on the other end."""
    call = await outbound(ua, wire)
    hold = asyncio.create_task(call.hold())
    reinvite = await wire.request_of("INVITE", where=lambda r: r.cseq[0] == 2)
    reply(wire, reinvite, 481)
    with pytest.raises(CallFailed, match="the call is gone") as failed:
        await within(hold)
    assert failed.value.status == 481
    assert not call.is_up and call.ended.is_set()
    assert call.end_status == 481
    assert not wire.requests("BYE")


async def test_a_408_to_our_hold_ends_the_call_with_a_bye(ua: UserAgent, wire: Wire) -> None:
    call = await outbound(ua, wire)
    hold = asyncio.create_task(call.hold())
    reinvite = await wire.request_of("INVITE", where=lambda r: r.cseq[0] == 2)
    reply(wire, reinvite, 408)
    bye = await wire.request_of("BYE", where=lambda r: r.call_id == call.call_id)
    reply(wire, bye, 200)
    with pytest.raises(CallFailed) as failed:
        await within(hold)
    assert failed.value.status == 408
    await within(call.ended.wait())
    assert not call.is_up and call.end_status == 408


async def test_a_491_is_retried_after_the_glare_delay(
    ua: UserAgent, wire: Wire, quick_glare: list[bool]
) -> None:
    inbound = await inbound_call(ua, wire)
    call = inbound.call
    hold = asyncio.create_task(call.hold())
    first = await wire.request_of("INVITE", where=lambda r: r.call_id == inbound.call_id)
    # We answered this call, so our first re-INVITE is CSeq 1 of our side of the dialog.
    assert first.cseq == (1, "INVITE") and first.from_.tag == inbound.tag
    wire.reply(first, 491)
    second = await wire.request_of("INVITE", where=lambda r: r.cseq[0] == 2)
    assert second.body == first.body and second.vias[0].branch != first.vias[0].branch
    assert quick_glare == [False]  # the caller chose the Call-ID: our wait is the 0-2 s one
    wire.reply(second, 200, body=sdp(wire.media_port, direction="recvonly"))
    await within(hold)
    assert call.holding
    await wire.request_of("ACK", where=lambda r: r.cseq[0] == 2)  # the 2xx's, ours to send
    assert [r.cseq[0] for r in wire.requests("ACK")] == [1, 2]  # the 491's ACK came first
    await bye_from_wire(ua, wire, inbound, cseq=2)


async def test_after_a_491_our_retry_counts_on_from_the_peers_offer(
    ua: UserAgent, wire: Wire, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The peer's own re-INVITE (it holds us) is answered while we wait after its 491; our
    retry is then built from that answer, so its o= version is one above it, never equal."""
    monkeypatch.setattr(call_module, "glare_delay", lambda owns_call_id: 0.5)
    inbound = await inbound_call(ua, wire)
    answered_version = audio_of(inbound.ok.body)[0].session_version
    hold = asyncio.create_task(inbound.call.hold())
    first = await wire.request_of("INVITE", where=lambda r: r.call_id == inbound.call_id)
    assert audio_of(first.body)[0].session_version == answered_version + 1
    wire.reply(first, 491)
    theirs = wire.invite(
        ua.address, call_id=inbound.call_id, branch=new_branch(), cseq=2, to_tag=inbound.tag,
        body=sdp(wire.media_port, direction="sendonly"),
    )  # fmt: skip
    wire.send(theirs, ua.address)
    ok = await wire.response(200, "INVITE", call_id=inbound.call_id, cseq=2)
    ours_then, direction, _ = audio_of(ok.body)
    assert direction == "recvonly" and ours_then.session_version == answered_version + 1
    wire.send(
        wire.request("ACK", ua.address, call_id=inbound.call_id, cseq=2, to_tag=inbound.tag),
        ua.address,
    )
    second = await wire.request_of("INVITE", where=lambda r: r.cseq[0] == 2)
    retried, direction, _ = audio_of(second.body)
    assert direction == "sendonly" and retried.session_version == answered_version + 2
    wire.reply(second, 200, body=sdp(wire.media_port, direction="inactive"))
    await within(hold)
    assert inbound.call.holding
    await bye_from_wire(ua, wire, inbound, cseq=3)


async def test_three_491s_give_up_with_491(
    ua: UserAgent, wire: Wire, quick_glare: list[bool]
) -> None:
    call = await outbound(ua, wire)
    hold = asyncio.create_task(call.hold())
    for cseq in (2, 3, 4):
        reinvite = await wire.request_of("INVITE", where=lambda r, n=cseq: r.cseq[0] == n)
        reply(wire, reinvite, 491)
    with pytest.raises(CallFailed) as failed:
        await within(hold)
    assert failed.value.status == 491 and not call.holding and call.is_up
    assert quick_glare == [True, True]  # we placed the call: the 2.1-4 s wait, twice
    await hang_up(call, wire)


def test_the_glare_delay_is_rfc_3261_14_1s() -> None:
    random.seed(3261)
    owner = [glare_delay(True) for _ in range(500)]
    other = [glare_delay(False) for _ in range(500)]
    assert min(owner) >= 2.1 and max(owner) <= 4.0
    assert min(other) >= 0.0 and max(other) <= 2.0
    assert all(abs(d * 100 - round(d * 100)) < 1e-9 for d in owner + other)  # 10 ms units
    assert max(other) - min(other) > 1.5  # spread over the range, not one value


async def test_a_peer_reinvite_crossing_ours_gets_491(ua: UserAgent, wire: Wire) -> None:
    inbound = await inbound_call(ua, wire)
    call = inbound.call
    hold = asyncio.create_task(call.hold())
    ours = await wire.request_of("INVITE", where=lambda r: r.call_id == inbound.call_id)
    theirs = wire.invite(
        ua.address, call_id=inbound.call_id, branch=new_branch(), cseq=2, to_tag=inbound.tag
    )
    wire.send(theirs, ua.address)
    await wire.response(491, "INVITE", call_id=inbound.call_id, cseq=2)
    update = wire.request(
        "UPDATE", ua.address, call_id=inbound.call_id, cseq=3, to_tag=inbound.tag,
        body=sdp(wire.media_port),
    )  # fmt: skip
    wire.send(update, ua.address)
    await wire.response(491, "UPDATE", call_id=inbound.call_id, cseq=3)
    wire.reply(ours, 200, body=sdp(wire.media_port, direction="recvonly"))
    await within(hold)
    assert call.holding

    # Once ours is answered, the peer's offer is taken again; while we hold, we answer sendonly.
    later = wire.invite(
        ua.address, call_id=inbound.call_id, branch=new_branch(), cseq=4, to_tag=inbound.tag
    )
    wire.send(later, ua.address)
    ok = await wire.response(200, "INVITE", call_id=inbound.call_id, cseq=4)
    answered, direction, _ = audio_of(ok.body)
    assert direction == "sendonly"
    held, _, _ = audio_of(call.local_sdp)
    assert answered.session_id == audio_of(inbound.ok.body)[0].session_id == held.session_id
    await bye_from_wire(ua, wire, inbound, cseq=5)


async def test_a_session_refresh_waits_for_our_hold_reinvite(wire: Wire) -> None:
    """We refresh by re-INVITE (no UPDATE), every 2 s of a 4 s interval. A hold sent at once and
    answered only after the refresh fell due holds the refresh back: never two INVITEs of ours
    at once (RFC 3261 14.1). The refresh then carries the held SDP, not the old one."""
    timers = SessionTimerConfig(interval=4, min_se=1, floor=1)  # for tests only: RFC says >= 90
    async with started_ua(session_timer=timers) as ua:
        call = await outbound(ua, wire, ("Session-Expires", "4;refresher=uac"), ("Allow", "INVITE"))
        assert call.session is not None and call.answered_at is not None
        hold = asyncio.create_task(call.hold())
        reinvite = await wire.request_of("INVITE", where=lambda r: r.cseq[0] == 2)
        loop = asyncio.get_running_loop()
        due = call.answered_at + 2.0
        with pytest.raises(TimeoutError):  # a deadline that must pass: no second INVITE
            await wire.request_of(  # (the hold's own retransmissions are the same INVITE)
                "INVITE", where=lambda r: r.cseq[0] != 2, timeout=due + 0.3 - loop.time()
            )
        assert call.session.refreshing  # the refresh fell due and waits for the hold
        reply(wire, reinvite, 200, body=sdp(wire.media_port, formats="0 101", direction="recvonly"))
        await within(hold)
        refresh = await wire.request_of("INVITE", where=lambda r: r.cseq[0] == 3)
        assert refresh.body == reinvite.body  # still on hold
        assert refresh.headers.get("Session-Expires") == "4;refresher=uac"
        ack = [r for r in wire.log if isinstance(r.message, SipRequest) and r.message.cseq[0] == 2]
        assert ack and ack[-1].message.method == "ACK"  # the hold was over before the refresh
        reply(wire, refresh, 200, body=sdp(wire.media_port, formats="0 101", direction="recvonly"))
        await wire.request_of("ACK", where=lambda r: r.cseq[0] == 3)
        assert call.holding and call.is_up
        await hang_up(call, wire)


async def test_hold_needs_a_call_that_is_up(ua: UserAgent, wire: Wire) -> None:
    call = await outbound(ua, wire)
    await hang_up(call, wire)
    with pytest.raises(CallFailed, match="cannot hold a call that is ended"):
        await call.hold()
    assert call.state is CallState.ENDED


# -- the caller leg and the plan ------------------------------------------------------------------


async def caller_leg(ua: UserAgent, wire: Wire) -> tuple[SipCallerLeg, OutgoingCall]:
    call = await outbound(ua, wire)
    return SipCallerLeg(call), call


async def test_the_caller_leg_tells_the_phone_only_when_the_plan_asks(
    ua: UserAgent, wire: Wire
) -> None:
    leg, call = await caller_leg(ua, wire)
    await leg.hold(HoldAudio())
    assert leg.media.playing  # music at once either way
    await leg.unhold()
    with pytest.raises(TimeoutError):  # nothing is sent to the phone by default
        await wire.request_of("INVITE", where=lambda r: r.cseq[0] >= 2, timeout=0.3)

    await leg.hold(HoldAudio(reinvite=True))
    assert leg.media.playing  # not held back by the re-INVITE
    hold = await wire.request_of("INVITE", where=lambda r: r.cseq[0] == 2)
    assert audio_of(hold.body)[1] == "sendonly"
    reply(wire, hold, 200, body=sdp(wire.media_port, formats="0 101", direction="recvonly"))
    await leg.unhold()  # sent after the hold's answer: the call's INVITE lock keeps the order
    resume = await wire.request_of("INVITE", where=lambda r: r.cseq[0] == 3)
    assert audio_of(resume.body)[1] == "sendrecv"
    reply(wire, resume, 200, body=answer_sdp(wire))
    await wire.request_of("ACK", where=lambda r: r.cseq[0] == 3)
    assert not call.holding and leg.ai_connected
    await hang_up(call, wire)


async def test_a_trunk_refusing_the_hold_costs_nothing_but_the_display(
    ua: UserAgent, wire: Wire, caplog: pytest.LogCaptureFixture
) -> None:
    leg, call = await caller_leg(ua, wire)
    await leg.hold(HoldAudio(reinvite=True))  # returns: the re-INVITE runs in the background
    hold = await wire.request_of("INVITE", where=lambda r: r.cseq[0] == 2)
    reply(wire, hold, 488)
    await wire.request_of("ACK", where=lambda r: r.cseq[0] == 2)
    assert leg.held and leg.media.playing and not call.holding and call.is_up
    await leg.unhold()  # the phone was never held: no resume is sent
    with pytest.raises(TimeoutError):
        await wire.request_of("INVITE", where=lambda r: r.cseq[0] >= 3, timeout=0.3)
    assert "hold re-INVITE failed: 488" in caplog.text
    await hang_up(call, wire)


async def test_joining_the_human_takes_the_phone_off_hold(ua: UserAgent, wire: Wire) -> None:
    leg, call = await caller_leg(ua, wire)
    await leg.hold(HoldAudio(reinvite=True))
    hold = await wire.request_of("INVITE", where=lambda r: r.cseq[0] == 2)
    reply(wire, hold, 200, body=sdp(wire.media_port, formats="0 101", direction="recvonly"))
    await wire.request_of("ACK", where=lambda r: r.cseq[0] == 2)
    assert call.holding
    # The bridge joins caller and human; a phone still held would send the human no audio.
    human_wire = await Wire.open()
    spawned: list[asyncio.Task[None]] = []
    try:
        task = asyncio.create_task(ua.call(human_wire.uri))
        invite = await human_wire.request_of("INVITE")
        human_wire.reply(invite, 200, to_tag="h", body=answer_sdp(human_wire))
        human = SipTargetLeg(await within(task), Target(uri=human_wire.uri))
        bridge = SipBridge(lambda coro: spawned.append(asyncio.ensure_future(coro)))
        await bridge.connect(leg, human)
        resume = await wire.request_of("INVITE", where=lambda r: r.cseq[0] == 3)
        assert audio_of(resume.body)[1] == "sendrecv"
        reply(wire, resume, 200, body=answer_sdp(wire))
        await wire.request_of("ACK", where=lambda r: r.cseq[0] == 3)
        assert not call.holding and leg.bridged
        await hang_up(call, wire)  # the bridge then ends the human's call
        bye = await human_wire.request_of("BYE")
        human_wire.reply(bye, 200)
        await within(asyncio.gather(*spawned))
        assert human.hung_up
    finally:
        human_wire.close()
        await human_wire.wait_closed()


def test_the_plan_asks_for_a_hold_reinvite_only_when_told(tmp_path: Path) -> None:
    assert HoldAudio().reinvite is False
    path = tmp_path / "plan.toml"
    path.write_text("[[targets]]\nuri = 'sip:a@b'\n[hold_audio]\nreinvite = true\n")
    assert TransferPlan.from_file(path).hold_audio.reinvite is True


async def test_a_retransmitted_2xx_to_our_reinvite_gets_its_own_ack_again(
    ua: UserAgent, wire: Wire
) -> None:
    """Our ACK of the hold's 200 was lost: the peer's 200 comes again, and the ACK resent is
    the one for the re-INVITE (CSeq 2), not the call's first ACK."""
    call = await outbound(ua, wire)
    hold = asyncio.create_task(call.hold())
    reinvite = await wire.request_of("INVITE", where=lambda r: r.cseq[0] == 2)
    reply(wire, reinvite, 200, body=sdp(wire.media_port, formats="0 101", direction="recvonly"))
    await within(hold)
    first = await wire.request_of("ACK", where=lambda r: r.cseq[0] == 2)
    reply(wire, reinvite, 200, body=sdp(wire.media_port, formats="0 101", direction="recvonly"))
    again = await wire.request_of("ACK", where=lambda r: r.cseq[0] == 2)
    assert again.vias[0].branch == first.vias[0].branch  # the same ACK, sent again
    assert not [ack for ack in wire.requests("ACK") if ack.cseq[0] == 1][1:]  # not the old one
    assert call.holding and call.is_up
    await hang_up(call, wire)

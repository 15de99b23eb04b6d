"""Warm transfers over real SIP/RTP on loopback, against peers we did not write.

baresip plays the caller and the human (real RTP, real RFC 4733 keys, recordings of what each
heard); sipp plays humans who are busy, decline, never answer or hang up mid-briefing, and a
caller. Every test ends with the engine closed and its sockets and tasks back to baseline (the
`running` fixture checks that).
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from tests.audio_checks import level, load, tone_fraction, window
from tests.e2e.conftest import BRIEFING, CALLER_TONE, HUMAN_TONE, Running
from tests.peers.baresip import BaresipPeer
from tests.peers.ports import free_port_pair
from tests.peers.sipp import SippPeer
from warmtransfer.backends.sip import SipCallerLeg
from warmtransfer.transfer.outcome import Completed, Failed, Reason, TransferOutcome
from warmtransfer.transfer.plan import TransferPlan
from warmtransfer.transfer.states import State
from warmtransfer.transfer.target import AllowList, DestinationNotAllowed, Target

pytestmark = pytest.mark.peers


def plan_for(
    uri: str, *, ring_timeout: float = 15.0, consult_timeout: float = 30.0
) -> TransferPlan:
    return TransferPlan(
        target=Target(uri=uri, ring_timeout=ring_timeout),
        allow=AllowList(patterns=("sip:human@127.0.0.1:*",)),
        consult_timeout=consult_timeout,
    )


async def answer_and_transfer(
    running: Running, plan: TransferPlan
) -> tuple[SipCallerLeg, TransferOutcome]:
    """The engine side: answer the caller, put them on hold, transfer."""
    engine = running.engine
    call = await engine.next_call()
    await call.ring()
    await call.answer()
    leg = engine.caller_leg(call)
    outcome = await engine.warm_transfer(leg, plan, BRIEFING, on_event=running.on_event)
    return leg, outcome


async def test_baresip_caller_to_baresip_human_accept_by_key(
    running: Running, tmp_path: Path, caller_wav: Path, human_wav: Path, need_baresip: None
) -> None:
    async with (
        BaresipPeer.start(
            tmp_path, name="caller", user="caller", audio_wav=caller_wav, sip_port=free_port_pair()
        ) as caller,
        BaresipPeer.start(
            tmp_path,
            name="human",
            user="human",
            audio_wav=human_wav,
            auto_answer=True,
            answer_delay=0.5,
            sip_port=free_port_pair(),
        ) as human,
    ):
        engine_side = asyncio.ensure_future(answer_and_transfer(running, plan_for(human.uri)))
        await caller.dial(running.engine.uri)
        await caller.wait_event("CALL_ESTABLISHED")
        await human.wait_event("CALL_ESTABLISHED", timeout=15)
        async with asyncio.timeout(10):
            await running.reached(State.CONSULTING).wait()
        # Let the human hear three seconds of the briefing, then accept with a key.
        await human.wait_recorded(3.0)
        await human.send_dtmf("1")
        async with asyncio.timeout(10):
            leg, outcome = await engine_side
        assert isinstance(outcome, Completed), outcome
        assert outcome.target.uri == human.uri
        assert not leg.ai_connected  # the AI has left the call
        # Caller and human now hear each other: let four seconds of bridged audio flow.
        await human.wait_recorded(9.0)
        await caller.hangup()
        closed = await human.wait_event("CALL_CLOSED", timeout=10)
        assert "peer" in str(closed.get("param", ""))  # the engine sent the human a BYE
        caller_heard = await caller.received_wav()
        human_heard = await human.received_wav()
    assert caller_heard is not None and human_heard is not None

    # Times on each peer's recording: the caller's starts when it answered the engine, the
    # human's when the engine's call to it was answered.
    answered = running.at(State.CONSULTING)
    hold_start = running.at(State.HOLDING)
    bridged = running.at(State.COMPLETED)
    call_start = leg.call.answered_at
    assert call_start is not None
    caller_audio = load(caller_heard)
    human_audio = load(human_heard)

    on_hold = window(caller_audio, hold_start - call_start + 0.3, bridged - call_start - 0.3)
    assert level(on_hold) > -40, "the caller heard no hold music"
    assert tone_fraction(on_hold, HUMAN_TONE) < 0.05, "the caller heard the human before accept"
    after = window(caller_audio, bridged - call_start + 0.5, bridged - call_start + 3.5)
    assert tone_fraction(after, HUMAN_TONE) > 0.5, "the caller did not hear the human"

    briefing = window(human_audio, 0.3, bridged - answered - 0.3)
    assert level(briefing) > -40, "the human heard no briefing"
    assert tone_fraction(briefing, CALLER_TONE) < 0.05, "the human heard the caller before accept"
    bridged_part = window(human_audio, bridged - answered + 0.5, bridged - answered + 3.5)
    assert tone_fraction(bridged_part, CALLER_TONE) > 0.5, "the human did not hear the caller"


async def test_human_declines_by_key_and_caller_is_back_with_the_ai(
    running: Running, tmp_path: Path, caller_wav: Path, human_wav: Path, need_baresip: None
) -> None:
    async with (
        BaresipPeer.start(
            tmp_path, name="caller", user="caller", audio_wav=caller_wav, sip_port=free_port_pair()
        ) as caller,
        BaresipPeer.start(
            tmp_path,
            name="human",
            user="human",
            audio_wav=human_wav,
            auto_answer=True,
            sip_port=free_port_pair(),
        ) as human,
    ):
        engine_side = asyncio.ensure_future(answer_and_transfer(running, plan_for(human.uri)))
        await caller.dial(running.engine.uri)
        await human.wait_event("CALL_ESTABLISHED", timeout=15)
        await human.wait_recorded(1.0)
        await human.send_dtmf("2")
        async with asyncio.timeout(10):
            leg, outcome = await engine_side
        assert isinstance(outcome, Failed)
        assert outcome.reason is Reason.DECLINED
        assert leg.ai_connected and not leg.held  # back with the AI, no hold music
        assert not leg.media.playing
        await human.wait_event("CALL_CLOSED", timeout=10)  # the human's leg was ended
        await caller.hangup()
        await caller.wait_event("CALL_CLOSED", timeout=10)


@pytest.mark.parametrize(
    ("scenario", "reason", "status"),
    [("uas_busy", Reason.BUSY, 486), ("uas_decline", Reason.DECLINED, 603)],
)
async def test_rejected_dial_is_typed_with_sip_status(
    running: Running,
    tmp_path: Path,
    caller_wav: Path,
    scenario: str,
    reason: Reason,
    status: int,
    need_baresip: None,
    need_sipp: None,
) -> None:
    async with (
        SippPeer.uas(tmp_path, scenario, port=free_port_pair()) as human,
        BaresipPeer.start(
            tmp_path, name="caller", user="caller", audio_wav=caller_wav, sip_port=free_port_pair()
        ) as caller,
    ):
        engine_side = asyncio.ensure_future(answer_and_transfer(running, plan_for(human.uri)))
        await caller.dial(running.engine.uri)
        async with asyncio.timeout(15):
            leg, outcome = await engine_side
        assert isinstance(outcome, Failed)
        assert (outcome.reason, outcome.sip_status) == (reason, status)
        assert outcome.attempts[0].sip_status == status
        assert leg.ai_connected
        assert await human.wait(timeout=10) == 0, human.messages()
        assert human.received_requests()[:2] == ["INVITE", "ACK"]  # our ACK to their error
        await caller.hangup()


async def test_no_answer_cancels_the_invite(
    running: Running, tmp_path: Path, caller_wav: Path, need_baresip: None, need_sipp: None
) -> None:
    async with (
        SippPeer.uas(tmp_path, "uas_no_answer", port=free_port_pair()) as human,
        BaresipPeer.start(
            tmp_path, name="caller", user="caller", audio_wav=caller_wav, sip_port=free_port_pair()
        ) as caller,
    ):
        plan = plan_for(human.uri, ring_timeout=2.0)
        engine_side = asyncio.ensure_future(answer_and_transfer(running, plan))
        await caller.dial(running.engine.uri)
        async with asyncio.timeout(15):
            leg, outcome = await engine_side
        assert isinstance(outcome, Failed)
        assert outcome.reason is Reason.NO_ANSWER
        assert leg.ai_connected
        assert await human.wait(timeout=10) == 0, human.messages()
        assert "CANCEL" in human.received_requests()
        await caller.hangup()


async def test_human_hangs_up_during_briefing(
    running: Running, tmp_path: Path, caller_wav: Path, need_baresip: None, need_sipp: None
) -> None:
    async with (
        SippPeer.uas(tmp_path, "uas_answer_hangup", port=free_port_pair()) as human,
        BaresipPeer.start(
            tmp_path, name="caller", user="caller", audio_wav=caller_wav, sip_port=free_port_pair()
        ) as caller,
    ):
        engine_side = asyncio.ensure_future(answer_and_transfer(running, plan_for(human.uri)))
        await caller.dial(running.engine.uri)
        async with asyncio.timeout(20):
            leg, outcome = await engine_side
        assert isinstance(outcome, Failed)
        assert outcome.reason is Reason.TARGET_HUNG_UP
        assert leg.ai_connected
        assert await human.wait(timeout=10) == 0, human.messages()
        await caller.hangup()


async def test_caller_hangs_up_while_human_rings(
    running: Running, tmp_path: Path, caller_wav: Path, need_baresip: None, need_sipp: None
) -> None:
    async with (
        SippPeer.uas(tmp_path, "uas_no_answer", port=free_port_pair()) as human,
        BaresipPeer.start(
            tmp_path, name="caller", user="caller", audio_wav=caller_wav, sip_port=free_port_pair()
        ) as caller,
    ):
        engine_side = asyncio.ensure_future(answer_and_transfer(running, plan_for(human.uri)))
        await caller.dial(running.engine.uri)
        async with asyncio.timeout(10):
            await running.reached(State.RINGING).wait()
        await caller.hangup()
        async with asyncio.timeout(10):
            _, outcome = await engine_side
        assert isinstance(outcome, Failed)
        assert outcome.reason is Reason.CALLER_HUNG_UP
        assert running.events[-1].state is State.ABANDONED
        assert await human.wait(timeout=10) == 0, human.messages()
        assert "CANCEL" in human.received_requests()  # nothing left ringing


async def test_sipp_caller_transfers_to_sipp_human_accepting_by_key(
    running: Running, tmp_path: Path, need_sipp: None
) -> None:
    async with (
        SippPeer.uas(tmp_path, "uas_answer_dtmf", port=free_port_pair()) as human,
        SippPeer.uac(
            tmp_path,
            "uac_call",
            f"127.0.0.1:{running.engine.ua.port}",
            service="warmtransfer",
            port=free_port_pair(),
            variables={"bye_after_ms": 12000},
        ) as caller,
    ):
        async with asyncio.timeout(20):
            _, outcome = await answer_and_transfer(running, plan_for(human.uri))
        assert isinstance(outcome, Completed), outcome
        assert await caller.wait(timeout=20) == 0, caller.messages()
        assert await human.wait(timeout=10) == 0, human.messages()  # got our BYE
        human_leg = running.engine.dialer.legs[-1]
        assert human_leg.media.stats.forwarded > 0  # the caller's audio reached the human


async def test_destination_outside_the_allow_list_is_never_dialled(
    running: Running, tmp_path: Path, caller_wav: Path, need_baresip: None
) -> None:
    plan = TransferPlan(
        target=Target(uri="sip:+19005551234@premium.example.net"),
        allow=AllowList(patterns=("sip:*@pbx.example.com",)),
    )
    async with BaresipPeer.start(
        tmp_path, name="caller", user="caller", audio_wav=caller_wav, sip_port=free_port_pair()
    ) as caller:
        engine_side = asyncio.ensure_future(answer_and_transfer(running, plan))
        await caller.dial(running.engine.uri)
        with pytest.raises(DestinationNotAllowed, match=r"premium\.example\.net"):
            async with asyncio.timeout(10):
                await engine_side
        sent = [e.data.split(b" ", 1)[0] for e in running.engine.ua.trace if e.direction == "out"]
        assert b"INVITE" not in sent
        await caller.hangup()

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
from tests.e2e.conftest import (
    CALLER_TONE,
    HUMAN_TONE,
    Running,
    answer_and_transfer,
    baresip_caller,
    baresip_human,
    call_in,
    finish,
    plan_for,
    sipp_caller,
)
from tests.peers.ports import free_port_pair
from tests.peers.sipp import SippPeer
from warmtransfer.transfer.outcome import Completed, Failed, Reason
from warmtransfer.transfer.plan import TransferPlan
from warmtransfer.transfer.states import Answered, Ringing, State
from warmtransfer.transfer.target import AllowList, DestinationNotAllowed, Target

pytestmark = pytest.mark.peers


async def test_baresip_caller_to_baresip_human_accept_by_key(
    running: Running, tmp_path: Path, caller_wav: Path, human_wav: Path, need_baresip: None
) -> None:
    async with (
        baresip_caller(tmp_path, caller_wav) as caller,
        baresip_human(tmp_path, human_wav, answer_delay=0.5) as human,
    ):
        engine_side = await call_in(running, caller, plan_for(human.uri))
        await caller.wait_event("CALL_ESTABLISHED")
        await human.wait_event("CALL_ESTABLISHED", timeout=15)
        async with asyncio.timeout(10):
            await running.happened(Answered).wait()
        # Let the human hear three seconds of the briefing, then accept with a key.
        await human.wait_recorded(3.0)
        await human.send_dtmf("1")
        leg, outcome = await finish(engine_side)
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
    assert caller_heard is not None
    assert human_heard is not None

    # Times on each peer's recording: the caller's starts when it answered the engine, the
    # human's when the engine's call to it was answered.
    answered = running.when(Answered)
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
        baresip_caller(tmp_path, caller_wav) as caller,
        baresip_human(tmp_path, human_wav) as human,
    ):
        engine_side = await call_in(running, caller, plan_for(human.uri))
        await human.wait_event("CALL_ESTABLISHED", timeout=15)
        await human.wait_recorded(1.0)
        await human.send_dtmf("2")
        leg, outcome = await finish(engine_side)
        assert isinstance(outcome, Failed)
        assert outcome.reason is Reason.DECLINED
        assert leg.ai_connected
        assert not leg.held  # back with the AI, no hold music
        assert not leg.media.playing
        await human.wait_event("CALL_CLOSED", timeout=10)  # the human's leg was ended
        await caller.hangup()
        await caller.wait_event("CALL_CLOSED", timeout=10)


@pytest.mark.parametrize(
    ("scenario", "ring_timeout", "reason", "status", "seen"),
    [
        ("uas_busy", 15.0, Reason.BUSY, 486, "ACK"),  # we ACK their error response
        ("uas_decline", 15.0, Reason.DECLINED, 603, "ACK"),
        ("uas_no_answer", 2.0, Reason.NO_ANSWER, None, "CANCEL"),  # ring timeout: CANCEL
        ("uas_answer_hangup", 15.0, Reason.TARGET_HUNG_UP, None, "ACK"),  # bye mid-briefing
    ],
)
async def test_failed_attempt_is_typed_and_caller_is_back_with_the_ai(
    running: Running,
    tmp_path: Path,
    caller_wav: Path,
    scenario: str,
    ring_timeout: float,
    reason: Reason,
    status: int | None,
    seen: str,
    need_baresip: None,
    need_sipp: None,
) -> None:
    async with (
        SippPeer.uas(tmp_path, scenario, port=free_port_pair()) as human,
        baresip_caller(tmp_path, caller_wav) as caller,
    ):
        plan = plan_for(human.uri, ring_timeout=ring_timeout)
        leg, outcome = await finish(await call_in(running, caller, plan), timeout=20)
        assert isinstance(outcome, Failed)
        assert (outcome.reason, outcome.sip_status) == (reason, status)
        assert outcome.attempts[0].reason is reason
        assert leg.ai_connected
        assert await human.wait(timeout=10) == 0, human.messages()
        assert seen in human.received_requests()
        await caller.hangup()


async def test_caller_hangs_up_while_human_rings(
    running: Running, tmp_path: Path, caller_wav: Path, need_baresip: None, need_sipp: None
) -> None:
    async with (
        SippPeer.uas(tmp_path, "uas_no_answer", port=free_port_pair()) as human,
        baresip_caller(tmp_path, caller_wav) as caller,
    ):
        engine_side = await call_in(running, caller, plan_for(human.uri))
        async with asyncio.timeout(10):
            await running.happened(Ringing).wait()
        await caller.hangup()
        _, outcome = await finish(engine_side)
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
        sipp_caller(tmp_path, running, 12000) as caller,
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
        targets=(Target(uri="sip:+19005551234@premium.example.net"),),
        allow=AllowList(patterns=("sip:*@pbx.example.com",)),
    )
    async with baresip_caller(tmp_path, caller_wav) as caller:
        engine_side = await call_in(running, caller, plan)
        with pytest.raises(DestinationNotAllowed, match=r"premium\.example\.net"):
            await finish(engine_side)
        sent = [e.data.split(b" ", 1)[0] for e in running.engine.ua.trace if e.direction == "out"]
        assert b"INVITE" not in sent
        await caller.hangup()

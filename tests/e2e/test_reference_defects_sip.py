"""The reference system's known defects (research/reference-system.md), each impossible here,
proved over real SIP with baresip and sipp. The LiveKit-specific ones are tested with the
LiveKit backend; the leak checks run after every test in the `running` fixture.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import numpy as np
import pytest
from numpy.typing import NDArray

from tests.audio_checks import level, load, window
from tests.e2e.conftest import (
    BRIEFING,
    Running,
    baresip_caller,
    baresip_human,
    call_in,
    finish,
    plan_for,
)
from tests.peers.ports import free_port_pair
from tests.peers.sipp import SippPeer
from warmtransfer.transfer.outcome import Failed, Reason
from warmtransfer.transfer.states import Answered, CallerHungUp, State

pytestmark = pytest.mark.peers


async def test_consult_has_a_deadline(
    running: Running, tmp_path: Path, caller_wav: Path, need_baresip: None, need_sipp: None
) -> None:
    """Reference: no deadline on the consult phase, a caller could be held indefinitely."""
    async with (
        SippPeer.uas(tmp_path, "uas_answer_silent", port=free_port_pair()) as human,
        baresip_caller(tmp_path, caller_wav) as caller,
    ):
        plan = plan_for(human.uri, consult_timeout=3.0)
        leg, outcome = await finish(await call_in(running, caller, plan), timeout=20)
        assert isinstance(outcome, Failed)
        assert outcome.reason is Reason.CONSULT_TIMEOUT
        consulting = running.when(Answered)
        assert 2.9 < outcome.ended - consulting < 4.5
        assert leg.ai_connected
        assert await human.wait(timeout=10) == 0, human.messages()  # it got our BYE
        await caller.hangup()


async def test_caller_hangs_up_during_briefing_ends_the_humans_leg(
    running: Running, tmp_path: Path, caller_wav: Path, human_wav: Path, need_baresip: None
) -> None:
    """Reference: the human was briefed, then moved into an empty room."""
    async with (
        baresip_caller(tmp_path, caller_wav) as caller,
        baresip_human(tmp_path, human_wav) as human,
    ):
        engine_side = await call_in(running, caller, plan_for(human.uri))
        await human.wait_event("CALL_ESTABLISHED", timeout=15)
        await human.wait_recorded(1.0)
        await caller.hangup()
        _, outcome = await finish(engine_side)
        assert isinstance(outcome, Failed)
        assert outcome.reason is Reason.CALLER_HUNG_UP
        assert running.events[-1].state is State.ABANDONED
        closed = await human.wait_event("CALL_CLOSED", timeout=10)
        assert "peer" in str(closed.get("param", ""))  # the engine hung up on the human
        heard = await human.received_wav()
    assert heard is not None
    # After the caller left, the human heard the notice (about 3 s of speech), then the BYE.
    answered = running.when(Answered)
    left = next(e.at for e in running.events if isinstance(e.event, CallerHungUp)) - answered
    audio = load(heard)
    assert level(window(audio, left + 0.3, left + 2.0)) > -40, "no notice after the caller left"
    assert len(audio) / 8000 - left < 8.0, "the human was kept on the line too long"


async def test_post_dial_digits_go_to_the_humans_leg(
    running: Running, tmp_path: Path, caller_wav: Path, human_wav: Path, need_baresip: None
) -> None:
    """Reference: DTMF sent inside the task went to the caller's leg instead."""
    async with (
        baresip_caller(tmp_path, caller_wav) as caller,
        baresip_human(tmp_path, human_wav) as human,
    ):
        engine_side = await call_in(running, caller, plan_for(human.uri, dtmf="4w2"))
        first = await human.wait_event("CALL_DTMF_START", timeout=15)
        second = await human.wait_event("CALL_DTMF_START", timeout=5)
        assert (first["param"], second["param"]) == ("4", "2")
        await human.send_dtmf("2")
        _, outcome = await finish(engine_side)
        assert isinstance(outcome, Failed)
        assert outcome.reason is Reason.DECLINED
        await caller.hangup()
        await caller.wait_event("CALL_CLOSED", timeout=10)
        assert "CALL_DTMF_START" not in caller.event_types()


async def test_held_caller_is_not_heard_by_the_ai(
    running: Running, tmp_path: Path, caller_wav: Path, human_wav: Path, need_baresip: None
) -> None:
    """Reference: held-caller speech reached the AI, which then completed the transfer early."""
    heard: list[tuple[float, NDArray[np.int16]]] = []
    async with (
        baresip_caller(tmp_path, caller_wav) as caller,
        baresip_human(tmp_path, human_wav) as human,
    ):
        engine = running.engine
        await caller.dial(engine.uri)
        call = await engine.next_call()
        await call.answer()
        leg = engine.caller_leg(call)
        loop = asyncio.get_running_loop()
        with leg.ai_listening(lambda frame: heard.append((loop.time(), frame))):
            await caller.wait_event("CALL_RTPESTAB", timeout=10)
            before_hold = len(heard)
            transfer = engine.transfer(
                leg, plan_for(human.uri), BRIEFING, on_event=running.on_event
            )
            outcome_task = asyncio.ensure_future(transfer.run())
            await human.wait_event("CALL_ESTABLISHED", timeout=15)
            await human.wait_recorded(2.0)  # the caller talks on hold meanwhile
            await human.send_dtmf("2")
            outcome = await finish(outcome_task)
            resumed = loop.time()
            # The caller's recording grows in real time: two more seconds of it means two
            # more seconds of the caller's own audio have been offered to the AI's ear.
            await caller.wait_recorded(2.0 + (resumed - (leg.call.answered_at or resumed)))
        await caller.hangup()
    assert isinstance(outcome, Failed)
    assert before_hold > 0, "the AI heard nothing before the hold: the test proves nothing"
    hold_start = running.at(State.HOLDING)
    during = [t for t, _ in heard if hold_start + 0.05 < t < resumed - 0.05]
    assert during == [], f"{len(during)} frames of the held caller reached the AI"
    assert any(t > resumed for t, _ in heard), "the AI did not hear the caller again after"

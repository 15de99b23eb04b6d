"""What happens to the caller when nobody takes the call, per the plan's `on_failure`."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.audio_checks import level, load, tone_fraction, window
from tests.e2e.conftest import (
    HUMAN_TONE,
    Running,
    baresip_caller,
    baresip_human,
    call_in,
    finish,
)
from tests.peers.ports import free_port_pair
from tests.peers.sipp import SippPeer
from warmtransfer.transfer.outcome import Completed, Failed, Reason
from warmtransfer.transfer.plan import Fallback, MessageAndHangup, TransferPlan
from warmtransfer.transfer.states import State
from warmtransfer.transfer.target import AllowList, Target

pytestmark = pytest.mark.peers

ALLOW = AllowList(patterns=("sip:human@127.0.0.1:*",))


async def test_message_then_hang_up(
    running: Running, tmp_path: Path, caller_wav: Path, need_baresip: None, need_sipp: None
) -> None:
    async with (
        SippPeer.uas(tmp_path, "uas_busy", port=free_port_pair()) as busy,
        baresip_caller(tmp_path, caller_wav) as caller,
    ):
        plan = TransferPlan(
            targets=(Target(uri=busy.uri),),
            allow=ALLOW,
            on_failure=MessageAndHangup(message="Our team is busy. We will call you back soon."),
        )
        leg, outcome = await finish(await call_in(running, caller, plan), timeout=30)
        assert isinstance(outcome, Failed)
        assert (outcome.reason, outcome.sip_status, outcome.dismissed) == (Reason.BUSY, 486, True)
        assert running.events[-1].state is State.DISMISSED
        closed = await caller.wait_event("CALL_CLOSED", timeout=10)
        assert "peer" in str(closed.get("param", ""))  # the engine hung up on the caller
        heard = await caller.received_wav()
    assert heard is not None
    call_start = leg.call.answered_at
    assert call_start is not None
    message_from = running.at(State.RECOVERING) - call_start
    assert level(window(load(heard), message_from + 0.2, message_from + 2.0)) > -40


async def test_fallback_target_is_bridged_without_a_consult(
    running: Running,
    tmp_path: Path,
    caller_wav: Path,
    human_wav: Path,
    need_baresip: None,
    need_sipp: None,
) -> None:
    async with (
        SippPeer.uas(tmp_path, "uas_busy", port=free_port_pair()) as busy,
        baresip_human(tmp_path, human_wav) as queue,
        baresip_caller(tmp_path, caller_wav) as caller,
    ):
        plan = TransferPlan(
            targets=(Target(uri=busy.uri),),
            allow=ALLOW,
            on_failure=Fallback(target=Target(uri=queue.uri)),
        )
        leg, outcome = await finish(await call_in(running, caller, plan), timeout=30)
        assert isinstance(outcome, Completed), outcome
        assert outcome.fallback
        assert outcome.target.uri == queue.uri
        assert [a.reason for a in outcome.attempts][:1] == [Reason.BUSY]
        await caller.wait_recorded(3.0 + (running.events[-1].at - (leg.call.answered_at or 0)))
        await caller.hangup()
        heard = await caller.received_wav()
        await queue.wait_event("CALL_CLOSED", timeout=10)
    assert heard is not None
    bridged = running.events[-1].at - (leg.call.answered_at or 0)
    assert tone_fraction(window(load(heard), bridged + 0.5, bridged + 2.5), HUMAN_TONE) > 0.5

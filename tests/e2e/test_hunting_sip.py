"""Hunting over several humans over real SIP: sequential, simultaneous, and retry rounds."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.e2e.conftest import Running, baresip_caller, baresip_human, call_in, finish
from tests.peers.baresip import BaresipPeer
from tests.peers.ports import free_port_pair
from tests.peers.sipp import SippPeer
from warmtransfer.transfer.outcome import Completed, Failed, Reason
from warmtransfer.transfer.plan import Hunting, TransferPlan
from warmtransfer.transfer.target import AllowList, Target

pytestmark = pytest.mark.peers

ALLOW = AllowList(patterns=("sip:human@127.0.0.1:*",))


async def test_sequential_first_busy_second_accepts(
    running: Running,
    tmp_path: Path,
    caller_wav: Path,
    human_wav: Path,
    need_baresip: None,
    need_sipp: None,
) -> None:
    async with (
        SippPeer.uas(tmp_path, "uas_busy", port=free_port_pair()) as busy,
        baresip_human(tmp_path, human_wav) as human,
        baresip_caller(tmp_path, caller_wav) as caller,
    ):
        plan = TransferPlan(targets=(Target(uri=busy.uri), Target(uri=human.uri)), allow=ALLOW)
        engine_side = await call_in(running, caller, plan)
        await human.wait_event("CALL_ESTABLISHED", timeout=15)
        await human.wait_recorded(1.0)
        await human.send_dtmf("1")
        _, outcome = await finish(engine_side)
        assert isinstance(outcome, Completed), outcome
        assert outcome.target.uri == human.uri
        first, second = outcome.attempts
        assert (first.target.uri, first.reason, first.sip_status) == (busy.uri, Reason.BUSY, 486)
        assert second.answered is not None
        assert await busy.wait(timeout=10) == 0, busy.messages()
        await caller.hangup()
        await human.wait_event("CALL_CLOSED", timeout=10)


async def test_simultaneous_ringing_cancels_the_loser(
    running: Running,
    tmp_path: Path,
    caller_wav: Path,
    human_wav: Path,
    need_baresip: None,
    need_sipp: None,
) -> None:
    async with (
        SippPeer.uas(tmp_path, "uas_no_answer", port=free_port_pair()) as loser,
        baresip_human(tmp_path, human_wav, answer_delay=0.5) as human,
        baresip_caller(tmp_path, caller_wav) as caller,
    ):
        plan = TransferPlan(
            targets=(Target(uri=loser.uri), Target(uri=human.uri)),
            hunting=Hunting(mode="simultaneous"),
            allow=ALLOW,
        )
        engine_side = await call_in(running, caller, plan)
        await human.wait_event("CALL_ESTABLISHED", timeout=15)
        await human.wait_recorded(1.0)
        await human.send_dtmf("1")
        _, outcome = await finish(engine_side)
        assert isinstance(outcome, Completed), outcome
        assert outcome.target.uri == human.uri
        assert await loser.wait(timeout=10) == 0, loser.messages()
        assert "CANCEL" in loser.received_requests()  # the loser stopped ringing at once
        await caller.hangup()


async def test_no_answer_is_retried_in_the_next_round(
    running: Running, tmp_path: Path, caller_wav: Path, human_wav: Path, need_baresip: None
) -> None:
    async with (
        BaresipPeer.start(
            tmp_path, name="human", user="human", audio_wav=human_wav, sip_port=free_port_pair()
        ) as human,
        baresip_caller(tmp_path, caller_wav) as caller,
    ):
        plan = TransferPlan(
            targets=(Target(uri=human.uri, ring_timeout=2.0),),
            hunting=Hunting(rounds=2, round_delay=0.5),
            allow=ALLOW,
        )
        engine_side = await call_in(running, caller, plan)
        await human.wait_event("CALL_INCOMING", timeout=15)  # round 1: let it ring out
        await human.wait_event("CALL_CLOSED", timeout=10)
        await human.wait_event("CALL_INCOMING", timeout=15)  # round 2: pick up
        await human.answer()
        await human.wait_event("CALL_ESTABLISHED", timeout=10)
        await human.wait_recorded(1.0)
        await human.send_dtmf("1")
        _, outcome = await finish(engine_side)
        assert isinstance(outcome, Completed), outcome
        assert [a.reason for a in outcome.attempts][:1] == [Reason.NO_ANSWER]
        assert len(outcome.attempts) == 2
        await caller.hangup()


async def test_every_target_failing_gives_the_caller_back_with_a_typed_reason(
    running: Running, tmp_path: Path, caller_wav: Path, need_baresip: None, need_sipp: None
) -> None:
    async with (
        SippPeer.uas(tmp_path, "uas_busy", port=free_port_pair()) as busy,
        SippPeer.uas(tmp_path, "uas_decline", port=free_port_pair()) as declines,
        baresip_caller(tmp_path, caller_wav) as caller,
    ):
        plan = TransferPlan(
            targets=(Target(uri=busy.uri), Target(uri=declines.uri)),
            hunting=Hunting(mode="simultaneous"),
            allow=ALLOW,
        )
        leg, outcome = await finish(await call_in(running, caller, plan))
        assert isinstance(outcome, Failed)
        assert outcome.reason is Reason.DECLINED  # a human said no: the most telling reason
        assert {a.sip_status for a in outcome.attempts} == {486, 603}
        assert leg.ai_connected
        for peer in (busy, declines):
            assert await peer.wait(timeout=10) == 0, peer.messages()
        await caller.hangup()

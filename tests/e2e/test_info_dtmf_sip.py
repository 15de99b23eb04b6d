"""A warm transfer whose human accepts with a key sent as SIP INFO, not as an RFC 4733 event.

Many PBXs and carriers relay keys that way (application/dtmf-relay). sipp plays the human
(`uas_answer_info_dtmf.xml`: it answers, plays audio, then sends INFO "Signal=1" and expects our
200) and a caller who dials the engine; the transfer must complete on that key alone.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from tests.e2e.conftest import Running, answer_and_transfer, plan_for, sipp_caller
from tests.peers.ports import free_port_pair
from tests.peers.sipp import SippPeer
from warmtransfer.backends.sip import SipTargetLeg
from warmtransfer.transfer.outcome import Completed

pytestmark = pytest.mark.peers


async def test_sipp_human_accepting_by_sip_info_completes_the_transfer(
    running: Running, tmp_path: Path, need_sipp: None
) -> None:
    async with (
        SippPeer.uas(tmp_path, "uas_answer_info_dtmf", port=free_port_pair()) as human,
        sipp_caller(tmp_path, running, 12000) as caller,
    ):
        async with asyncio.timeout(20):
            _, outcome = await answer_and_transfer(running, plan_for(human.uri))
        assert isinstance(outcome, Completed), outcome
        human_leg = running.engine.dialer.legs[-1]
        assert isinstance(human_leg, SipTargetLeg)
        assert [press.digit for press in human_leg.keys_seen] == ["1"]
        assert await caller.wait(timeout=20) == 0, caller.messages()
        assert await human.wait(timeout=10) == 0, human.messages()  # 200 to its INFO, our BYE
        assert "INFO" in human.sent_requests()
        assert 200 in human.received_responses()
        assert human_leg.media.stats.forwarded > 0  # the caller's audio reached the human

"""REFER (RFC 3515) and our own hold re-INVITE (RFC 6337) against sipp, a stack we did not write.

- A PBX (`uas_refer_notify.xml`) takes a call we hand it by REFER and reports 100 then 200 in
  NOTIFYs; another (`uas_refer_reject.xml`) declines the REFER with 603.
- A caller (`uac_refer.xml`) asks us by REFER to call a human: we dial through the allow-list
  and relay the human's answer (busy) in the final NOTIFY.
- A phone (`uas_hold_by_us.xml`) checks our hold and resume offers (a=sendonly, a=sendrecv) with
  regex actions, and a warm transfer whose plan asks for it holds the caller's phone the same
  way and takes it off hold when the caller is joined with the human.

Waits are on sipp's exit and on the engine's events, each with a deadline; never a sleep.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Awaitable
from pathlib import Path

import pytest

from tests.e2e.conftest import BRIEFING, Running, plan_for
from tests.peers.ports import free_port_pair
from tests.peers.sipp import SippPeer
from warmtransfer.sip.call import CallFailed, EndReason, ReferRequest
from warmtransfer.sip.message import parse_message
from warmtransfer.sip.sdp import SessionDescription
from warmtransfer.sip.useragent import UserAgent
from warmtransfer.transfer.outcome import Completed
from warmtransfer.transfer.plan import HoldAudio
from warmtransfer.transfer.target import AllowList

pytestmark = pytest.mark.peers

QUEUE = "sip:queue@127.0.0.1:5999"  # where we hand the call; the PBX never dials it


def logged(peer: SippPeer) -> str:
    """What the scenario's <log> actions wrote (sipp -trace_logs)."""
    path = peer.dir / "logs.log"
    return path.read_text(errors="replace") if path.exists() else ""


def origin(line: str) -> tuple[int, int]:
    """Session id and version of a logged `o=` line."""
    match = re.search(r"o=\S+ (\d+) (\d+) ", line)
    assert match is not None, line
    return int(match.group(1)), int(match.group(2))


async def test_we_hand_a_call_to_a_pbx_by_refer(tmp_path: Path, need_sipp: None) -> None:
    async with (
        SippPeer.uas(tmp_path, "uas_refer_notify", port=free_port_pair()) as pbx,
        UserAgent("127.0.0.1", user="wt") as ua,
    ):
        async with asyncio.timeout(15):
            call = await ua.call(pbx.uri)
            assert await call.refer(QUEUE) == 200
            assert call.is_up
            await call.hangup()
        assert call.end_reason is EndReason.LOCAL_BYE
        await pbx.expect_success(timeout=10)
    assert pbx.received_requests() == ["INVITE", "ACK", "REFER", "BYE"]
    assert pbx.sent_responses() == [200, 202, 200]
    assert pbx.received_responses() == [200, 200]  # we answered both NOTIFYs
    assert f"REFER to {QUEUE}" in logged(pbx)


async def test_a_pbx_declining_our_refer_leaves_the_call_up(
    tmp_path: Path, need_sipp: None
) -> None:
    async with (
        SippPeer.uas(tmp_path, "uas_refer_reject", port=free_port_pair()) as pbx,
        UserAgent("127.0.0.1", user="wt") as ua,
    ):
        async with asyncio.timeout(15):
            call = await ua.call(pbx.uri)
            with pytest.raises(CallFailed) as refused:
                await call.refer(QUEUE)
            assert refused.value.status == 603
            assert call.is_up
            await call.hangup()
        await pbx.expect_success(timeout=10)
    assert pbx.received_requests() == ["INVITE", "ACK", "REFER", "BYE"]


async def test_a_caller_refers_us_to_a_busy_human_and_hears_486(
    tmp_path: Path, need_sipp: None
) -> None:
    allow = AllowList(patterns=("sip:human@127.0.0.1:*",))
    async with (
        SippPeer.uas(tmp_path, "uas_busy", port=free_port_pair()) as human,
        UserAgent("127.0.0.1", user="wt") as ua,
    ):
        refers: list[ReferRequest] = []

        async def dial(uri: str) -> int:
            await ua.call(uri)  # raises CallFailed(486): the failure goes in the final NOTIFY
            return 200

        def on_refer(refer: ReferRequest) -> Awaitable[int] | None:
            refers.append(refer)
            target = str(refer.target)
            return dial(target) if allow.allows(target) else None

        async with SippPeer.uac(
            tmp_path,
            "uac_refer",
            f"127.0.0.1:{ua.port}",
            service="wt",
            port=free_port_pair(),
            variables={"refer_target": human.uri},
        ) as pbx:
            async with asyncio.timeout(15):
                call = await ua.next_call()
                call.on_refer = on_refer
                await call.answer()
            await pbx.expect_success(timeout=15)
        await human.expect_success(timeout=10)
    assert [str(refer.target) for refer in refers] == [human.uri]
    assert "final sipfrag: SIP/2.0 486 Busy Here" in logged(pbx)
    assert pbx.sent_requests() == ["INVITE", "ACK", "REFER", "BYE"]
    assert pbx.received_requests() == ["NOTIFY", "NOTIFY"]
    assert human.received_requests() == ["INVITE", "ACK"]  # we ACKed its 486
    assert call.end_reason is EndReason.REMOTE_BYE


async def test_we_hold_and_resume_a_sipp_phone(tmp_path: Path, need_sipp: None) -> None:
    async with (
        SippPeer.uas(tmp_path, "uas_hold_by_us", port=free_port_pair()) as phone,
        UserAgent("127.0.0.1", user="wt") as ua,
    ):
        async with asyncio.timeout(15):
            call = await ua.call(phone.uri)
            await call.hold()
            assert call.holding and call.negotiated is not None
            assert call.negotiated.local_direction == "sendonly"
            await call.unhold()
            assert not call.holding and call.negotiated.local_direction == "sendrecv"
            await call.hangup()
        await phone.expect_success(timeout=10)
    assert phone.received_requests() == ["INVITE", "ACK", "INVITE", "ACK", "INVITE", "ACK", "BYE"]
    lines = {line.split(" ", 1)[0]: line for line in logged(phone).splitlines() if " o=" in line}
    session, version = origin(lines["call"])
    assert origin(lines["hold"]) == (session, version + 1)  # same session, next version
    assert origin(lines["resume"]) == (session, version + 2)
    first = SessionDescription.parse(call.invite.body)
    assert first.audio is not None and first.audio.rtcp_mux  # our offers ask for RFC 5761


async def test_a_plan_with_hold_reinvite_holds_the_callers_phone_until_joined(
    running: Running, tmp_path: Path, need_sipp: None
) -> None:
    """The caller here is a phone the engine called (an outbound campaign); the plan asks for
    the hold to be signalled. The phone checks sendonly when held and sendrecv when the engine
    joins it with the human, who accepts with a key (`uas_answer_dtmf.xml`)."""
    engine = running.engine
    resumed = asyncio.Event()

    def on_message(direction: str, data: bytes, addr: object, at: float) -> None:
        """Set once we ACK the phone's answer to the third INVITE of the call: the resume."""
        if direction == "out" and data.startswith(b"ACK "):
            ack = parse_message(data)
            if ack.cseq == (3, "ACK"):
                resumed.set()

    engine.ua.trace_hooks.append(on_message)
    async with (
        SippPeer.uas(tmp_path, "uas_hold_by_us", port=free_port_pair()) as phone,
        SippPeer.uas(tmp_path, "uas_answer_dtmf", port=free_port_pair()) as human,
    ):
        plan = plan_for(human.uri).model_copy(update={"hold_audio": HoldAudio(reinvite=True)})
        async with asyncio.timeout(30):
            call = await engine.ua.call(phone.uri)
            leg = engine.caller_leg(call)
            outcome = await engine.warm_transfer(leg, plan, BRIEFING, on_event=running.on_event)
            assert isinstance(outcome, Completed), outcome
            await resumed.wait()  # the bridge took the phone off hold
            assert leg.bridged and call.is_up and not call.holding
            await leg.hangup()  # the bridge then ends the human's call too
        await phone.expect_success(timeout=10)
        await human.expect_success(timeout=10)
    assert phone.received_requests() == ["INVITE", "ACK", "INVITE", "ACK", "INVITE", "ACK", "BYE"]
    assert "hold o=" in logged(phone) and "resume o=" in logged(phone)

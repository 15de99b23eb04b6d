"""WarmTransferTask over the rooms backend, against the fake LiveKit server and fake rooms.

Each reference defect (research/reference-system.md) has its regression test here, named after
it; every test also checks that the consult space was released.
"""

from __future__ import annotations

import asyncio

import pytest

from tests.livekit.conftest import Rig
from tests.livekit.fakes import BUSY, UNIMPLEMENTED
from warmtransfer.livekit.consult import CONSULT_TOOLS
from warmtransfer.livekit.task import TransferFailedError, WarmTransferTask
from warmtransfer.transfer.outcome import Completed, Failed, Reason
from warmtransfer.transfer.plan import TransferPlan
from warmtransfer.transfer.target import AllowList, DestinationNotAllowed, Target

NUMBER = "+15105550123"


def start(rig: Rig, task: WarmTransferTask) -> asyncio.Task[object]:
    return asyncio.ensure_future(task.run_transfer(rig.backend()))


def consult_room_released(rig: Rig) -> None:
    """Every consult link disconnected, every consult room created was deleted."""
    created = [r.name for r in rig.server.requests("CreateRoom")]
    deleted = [r.room for r in rig.server.requests("DeleteRoom")]
    assert set(created) <= set(deleted)
    assert all(link.closes >= 1 for link in rig.connector.links)
    assert rig.caller.closes == 1  # the hold audio player was closed
    assert not rig.caller.hold_playing


async def test_fake_livekit_server_accept_by_key_moves_human_and_releases(rig: Rig) -> None:
    task = WarmTransferTask(NUMBER, sip_number="+15550000000", dtmf="12")
    running = start(rig, task)
    session = await rig.starter.started.get()
    room = session.link.view.name
    rig.world.dtmf(room, session.human, "1")
    outcome = await running
    assert isinstance(outcome, Completed)
    assert rig.server.content_types == {"application/protobuf"}
    assert rig.server.methods() == [
        "CreateRoom",
        "CreateSIPParticipant",
        "MoveParticipant",
        "DeleteRoom",
    ]
    (dial,) = rig.server.requests("CreateSIPParticipant")
    assert dial.sip_call_to == NUMBER and dial.sip_trunk_id == "ST_test"
    assert dial.wait_until_answered and dial.sip_number == "+15550000000"
    assert dial.room_name == room and dial.participant_identity == session.human
    assert dial.ringing_timeout.ToSeconds() == 30
    assert dial.dtmf == ""  # digits go through the human's leg after answer, not the caller's
    assert session.link.dtmf_sent == ["1", "2"]
    (move,) = rig.server.requests("MoveParticipant")
    assert (move.room, move.identity, move.destination_room) == (room, session.human, "call-1")
    assert session.closed
    assert rig.caller.io_log == [False]  # held, then handed over: the AI stays out
    assert task.bridge is not None and task.bridge.joined == [session.human]
    consult_room_released(rig)
    await task.bridge.aclose()


@pytest.mark.parametrize("rings", [True, False])
async def test_fake_livekit_server_ringing_is_reported_from_the_call_status(
    rig: Rig, rings: bool
) -> None:
    """LiveKit passes ringing on only as the SIP participant's ``sip.callStatus``: it becomes a
    180 in the attempt and in the events, before the answer; a call answered without ringing
    reports none."""
    rig.server.ring_first = rings
    task = WarmTransferTask(NUMBER)
    running = start(rig, task)
    session = await rig.starter.started.get()
    rig.world.dtmf(session.link.view.name, session.human, "1")
    outcome = await running
    assert isinstance(outcome, Completed)
    (attempt,) = outcome.attempts
    assert attempt.answered is not None
    if rings:
        assert attempt.ringing is not None and attempt.ringing <= attempt.answered
    else:
        assert attempt.ringing is None
    assert task.bridge is not None
    await task.bridge.aclose()


async def test_fake_livekit_server_on_enter_returns_reference_result_shape(rig: Rig) -> None:
    from livekit.agents.beta.workflows.warm_transfer import WarmTransferResult

    task = WarmTransferTask(NUMBER, backend=rig.backend())
    running = asyncio.ensure_future(task.on_enter())
    session = await rig.starter.started.get()
    await session.agent.connect_to_caller()  # type: ignore[attr-defined]
    await running
    assert task.done()
    result = task._AgentTask__fut.result()  # type: ignore[attr-defined]
    assert result == WarmTransferResult(human_agent_identity=session.human)


async def test_fake_livekit_server_busy_is_typed_and_releases_room(rig: Rig) -> None:
    rig.server.fail["CreateSIPParticipant"] = BUSY
    task = WarmTransferTask(NUMBER, backend=rig.backend())
    await task.on_enter()
    with pytest.raises(TransferFailedError) as caught:
        task._AgentTask__fut.result()  # type: ignore[attr-defined]
    error = caught.value
    assert error.reason is Reason.BUSY and error.sip_status == 486
    assert error.outcome.sip_reason == "Busy Here"
    assert "busy" in str(error) and "486" in str(error)
    assert "MoveParticipant" not in rig.server.methods()
    assert rig.starter.sessions == []  # no consult session was ever started
    assert rig.caller.io_log == [False, True]  # caller back with the AI
    consult_room_released(rig)


async def test_fake_livekit_server_allow_list_refuses_before_any_call(rig: Rig) -> None:
    plan = TransferPlan(
        targets=(Target(uri="sip:alice@pbx.example.com"),),
        allow=AllowList(patterns=("sip:*@pbx.example.com",)),
    )
    with pytest.raises(DestinationNotAllowed):
        WarmTransferTask("+19005550100", plan=plan, backend=rig.backend())
    assert rig.server.calls == []
    # The default plan allows exactly sip_call_to, nothing the model could make up.
    assert WarmTransferTask(NUMBER).plan.allow.allows(f"tel:{NUMBER}")
    assert not WarmTransferTask(NUMBER).plan.allow.allows("tel:+19005550100")


async def test_fake_livekit_server_decline_by_tool_closes_session_and_room(rig: Rig) -> None:
    task = WarmTransferTask(NUMBER)
    running = start(rig, task)
    session = await rig.starter.started.get()
    await session.agent.decline_transfer("in a meeting")  # type: ignore[attr-defined]
    outcome = await running
    assert isinstance(outcome, Failed) and outcome.reason is Reason.DECLINED
    assert session.closed
    assert rig.world.members.get(session.link.view.name) is None
    consult_room_released(rig)


async def test_fake_livekit_server_caller_hangup_while_ringing_cancels_dial(rig: Rig) -> None:
    rig.server.gates["CreateSIPParticipant"] = asyncio.Event()  # rings until released
    task = WarmTransferTask(NUMBER)
    running = start(rig, task)
    await rig.server.called("CreateSIPParticipant").wait()
    rig.world.leave("call-1", "sip-caller")
    outcome = await running
    assert isinstance(outcome, Failed) and outcome.reason is Reason.CALLER_HUNG_UP
    assert rig.starter.sessions == []  # nobody briefed for an empty room
    assert "MoveParticipant" not in rig.server.methods()
    consult_room_released(rig)
    rig.server.gates["CreateSIPParticipant"].set()


async def test_fake_livekit_server_caller_hangup_during_briefing_notifies(rig: Rig) -> None:
    task = WarmTransferTask(NUMBER)
    running = start(rig, task)
    briefing = await rig.starter.started.get()
    rig.world.leave("call-1", "sip-caller")
    outcome = await running
    assert isinstance(outcome, Failed) and outcome.reason is Reason.CALLER_HUNG_UP
    assert briefing.closed
    notice = rig.starter.sessions[-1]
    assert notice is not briefing and notice.said and "hung up" in notice.said[0]
    assert "MoveParticipant" not in rig.server.methods()
    consult_room_released(rig)


async def test_fake_livekit_server_failed_move_keeps_hangup_watch(rig: Rig) -> None:
    rig.server.fail["MoveParticipant"] = UNIMPLEMENTED
    task = WarmTransferTask(NUMBER)
    running = start(rig, task)
    session = await rig.starter.started.get()
    rig.world.dtmf(session.link.view.name, session.human, "1")
    outcome = await running
    assert isinstance(outcome, Failed) and outcome.reason is Reason.BRIDGE_FAILED
    assert rig.caller.io_log == [False, True]
    consult_room_released(rig)


async def test_fake_livekit_server_leg_after_failed_move_sees_hangup(rig: Rig) -> None:
    """At the port level: after a failed move, the human's hang-up is still seen."""
    from warmtransfer.livekit.rooms import RoomBridge, RoomCallerLeg, RoomDialer, SipOrigin
    from warmtransfer.transfer.outcome import BridgeFailed

    rig.server.fail["MoveParticipant"] = UNIMPLEMENTED
    dialer = RoomDialer(rig.api, rig.connector, rig.caller.view, SipOrigin(trunk_id="ST"))
    leg = await dialer.dial(Target(uri=f"tel:{NUMBER}"), lambda _s: None)
    caller = RoomCallerLeg(rig.caller, rig.api)
    with pytest.raises(BridgeFailed):
        await RoomBridge(rig.api).connect(caller, leg)
    assert not leg.hung_up
    rig.world.leave(leg.space.room_name, leg.identity, "SOME_NEW_REASON")
    await asyncio.wait_for(leg.wait_hangup(), 5)
    assert leg.hung_up
    await leg.hangup()
    assert leg.space.released


async def test_fake_livekit_server_consult_deadline_ends_transfer(rig: Rig) -> None:
    plan = TransferPlan(
        targets=(Target(uri=f"tel:{NUMBER}"),),
        allow=AllowList(patterns=("tel:*",)),
        consult_timeout=0.2,
    )
    task = WarmTransferTask(plan=plan)
    outcome = await start(rig, task)
    assert isinstance(outcome, Failed) and outcome.reason is Reason.CONSULT_TIMEOUT
    assert rig.starter.sessions[0].closed
    consult_room_released(rig)


@pytest.mark.parametrize("reason", ["DUPLICATE_IDENTITY", "SIGNAL_CLOSE", "SOMETHING_NEW"])
async def test_fake_livekit_server_any_disconnect_reason_ends_task(rig: Rig, reason: str) -> None:
    task = WarmTransferTask(NUMBER)
    running = start(rig, task)
    session = await rig.starter.started.get()
    rig.world.leave(session.link.view.name, session.human, reason)
    outcome = await running
    assert isinstance(outcome, Failed) and outcome.reason is Reason.TARGET_HUNG_UP
    consult_room_released(rig)


async def test_fake_livekit_server_hunts_next_target_with_unique_identities(rig: Rig) -> None:
    rig.server.fail["CreateSIPParticipant"] = BUSY
    plan = TransferPlan(
        targets=(Target(uri="tel:+15550001"), Target(uri="tel:+15550002")),
        allow=AllowList(patterns=("tel:+1555*",)),
    )
    outcome = await start(rig, WarmTransferTask(plan=plan))
    assert isinstance(outcome, Failed) and outcome.reason is Reason.BUSY
    dials = rig.server.requests("CreateSIPParticipant")
    assert [d.sip_call_to for d in dials] == ["+15550001", "+15550002"]
    assert len({d.participant_identity for d in dials}) == 2
    assert len({d.room_name for d in dials}) == 2
    consult_room_released(rig)


async def test_fake_room_held_caller_cannot_trigger_consult_tools(rig: Rig) -> None:
    task = WarmTransferTask(NUMBER)
    assert not {tool.id for tool in task.tools} & set(CONSULT_TOOLS)
    running = start(rig, task)
    session = await rig.starter.started.get()
    assert rig.caller.ai_io is False and rig.caller.hold_playing  # held: the AI hears nothing
    assert session.human != rig.caller.caller_identity  # the consult hears only the human
    rig.world.dtmf("call-1", "sip-caller", "1")  # the caller's "1" is not the human's accept
    rig.world.dtmf(session.link.view.name, session.human, "2")
    outcome = await running
    assert isinstance(outcome, Failed) and outcome.reason is Reason.DECLINED

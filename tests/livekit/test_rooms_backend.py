"""The rooms ports on their own: same-room merge, the real adapters' construction, the lazy
package, and a run against a real LiveKit server when one is configured."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys

import pytest

from tests.livekit.conftest import Rig
from warmtransfer.livekit.task import WarmTransferTask
from warmtransfer.transfer.outcome import Completed

NUMBER = "+15105550123"


async def test_fake_livekit_server_same_room_keeps_caller_and_human_apart(rig: Rig) -> None:
    task = WarmTransferTask(NUMBER, merge="same_room")
    running = asyncio.ensure_future(task.run_transfer(rig.backend()))
    session = await rig.starter.started.get()
    human = session.human
    assert task.dialer is not None
    space = task.dialer.spaces[0]
    await space.settle()
    (dial,) = rig.server.requests("CreateSIPParticipant")
    assert dial.room_name == "call-1"  # dialled into the caller's own room
    human_tracks = set(rig.world.members["call-1"][human])
    caller_tracks = set(rig.world.members["call-1"]["sip-caller"])
    hold_tracks = set(rig.world.members["call-1"]["agent"])
    off = {
        (u.identity, sid)
        for u in rig.server.requests("UpdateSubscriptions")
        if not u.subscribe
        for sid in u.track_sids
    }
    assert {("sip-caller", sid) for sid in human_tracks} <= off
    assert {(human, sid) for sid in caller_tracks | hold_tracks} <= off
    rig.world.dtmf("call-1", human, "1")
    outcome = await running
    assert isinstance(outcome, Completed)
    on = {
        (u.identity, sid)
        for u in rig.server.requests("UpdateSubscriptions")
        if u.subscribe
        for sid in u.track_sids
    }
    assert {("sip-caller", sid) for sid in human_tracks} <= on
    assert {(human, sid) for sid in caller_tracks} <= on
    methods = rig.server.methods()
    assert "MoveParticipant" not in methods and "CreateRoom" not in methods
    assert "DeleteRoom" not in methods  # the caller's room lives on with caller and human
    assert human in rig.world.members["call-1"]
    assert all(link.closes == 1 for link in rig.connector.links)  # consult agent left
    assert task.bridge is not None
    await task.bridge.aclose()


async def test_fake_livekit_server_same_room_decline_removes_only_the_human(rig: Rig) -> None:
    task = WarmTransferTask(NUMBER, merge="same_room")
    running = asyncio.ensure_future(task.run_transfer(rig.backend()))
    session = await rig.starter.started.get()
    rig.world.dtmf("call-1", session.human, "2")
    await running
    (removed,) = rig.server.requests("RemoveParticipant")
    assert (removed.room, removed.identity) == ("call-1", session.human)
    assert "DeleteRoom" not in rig.server.methods()
    assert "sip-caller" in rig.world.members["call-1"]


async def test_real_adapters_construct_and_mint_tokens() -> None:
    """The real adapters without a server: construction, token grants, view wiring."""
    from livekit import api as lkapi
    from livekit import rtc

    from warmtransfer.livekit.rtc_adapters import RtcConnector, RtcRoomLink, feed_view
    from warmtransfer.livekit.view import RoomView

    connector = RtcConnector("ws://127.0.0.1:7880", "key", "secret-secret-secret-secret-0123")
    token = connector.token("call-1-consult-x", "consult-agent-x")
    claims = lkapi.TokenVerifier("key", "secret-secret-secret-secret-0123").verify(token)
    assert claims.identity == "consult-agent-x"
    assert claims.video is not None and claims.video.room == "call-1-consult-x"
    room = rtc.Room()
    view = RoomView("call-1", "agent")
    feed_view(room, view)
    link = RtcRoomLink(room, view)
    assert link.view is view and not view.has_left("nobody")


def test_importing_warmtransfer_livekit_does_not_import_livekit() -> None:
    code = (
        "import sys, warmtransfer, warmtransfer.livekit\n"
        "bad = sorted(m for m in sys.modules if m == 'livekit' or m.startswith('livekit.'))\n"
        "assert not bad, bad\n"
        "assert 'WarmTransferTask' in warmtransfer.livekit.__all__\n"
        "print('ok')\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stderr


_SERVER = all(os.environ.get(k) for k in ("LIVEKIT_URL", "LIVEKIT_API_KEY", "LIVEKIT_API_SECRET"))


@pytest.mark.livekit_server
@pytest.mark.skipif(not _SERVER, reason="needs LIVEKIT_URL, LIVEKIT_API_KEY, LIVEKIT_API_SECRET")
async def test_livekit_server_consult_room_is_created_and_deleted() -> None:
    """Against a real server: a consult space opens (room created, agent connected) and is
    released (disconnected, room deleted) without a SIP trunk being needed."""
    from livekit import api as lkapi

    from warmtransfer.livekit.rooms import ConsultSpace
    from warmtransfer.livekit.rtc_adapters import RtcConnector
    from warmtransfer.livekit.view import RoomView

    url = os.environ["LIVEKIT_URL"]
    async with lkapi.LiveKitAPI() as api:
        space = ConsultSpace(
            api=api,
            mode="move",
            room_name="warmtransfer-test-consult",
            human="human-test",
            agent_identity="consult-agent-test",
            caller_view=RoomView("warmtransfer-test-call", "agent"),
        )
        link = await space.open(RtcConnector(url))
        rooms = await api.room.list_rooms(lkapi.ListRoomsRequest(names=[space.room_name]))
        assert [r.name for r in rooms.rooms] == [space.room_name]
        await space.release()
        assert link.view.closed_reason is not None
        rooms = await api.room.list_rooms(lkapi.ListRoomsRequest(names=[space.room_name]))
        assert not rooms.rooms

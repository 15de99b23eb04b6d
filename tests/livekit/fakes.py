"""Offline stand-ins for LiveKit: a local Twirp server speaking what livekit-api's clients send
(protobuf bodies, ``Content-Type: application/protobuf``, JSON errors), and fakes of the rtc
ports (`RoomLink`, `RoomConnector`, `CallerRoom`, `SessionStarter`).

The fakes are honest in the way that matters: they keep their state in the production
`RoomView` (the real adapters feed the same class from rtc events), and the server's effects on
rooms (a dialled human joins, a moved human changes rooms, a deleted room disconnects everyone
in it) are applied to those views as the real server applies them.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web
from google.protobuf.message import Message
from livekit import api as lkapi
from livekit.agents import Agent

from warmtransfer.consult.ports import AudioSink
from warmtransfer.livekit.rooms import CALL_STATUS
from warmtransfer.livekit.view import RoomView
from warmtransfer.media.audio import AudioClip
from warmtransfer.transfer.plan import HoldAudio

_METHODS: dict[str, tuple[type[Message], type[Message]]] = {
    "livekit.RoomService/CreateRoom": (lkapi.CreateRoomRequest, lkapi.Room),
    "livekit.RoomService/DeleteRoom": (lkapi.DeleteRoomRequest, lkapi.DeleteRoomResponse),
    "livekit.RoomService/MoveParticipant": (
        lkapi.MoveParticipantRequest,
        lkapi.MoveParticipantResponse,
    ),
    "livekit.RoomService/UpdateSubscriptions": (
        lkapi.UpdateSubscriptionsRequest,
        lkapi.UpdateSubscriptionsResponse,
    ),
    "livekit.RoomService/RemoveParticipant": (
        lkapi.RoomParticipantIdentity,
        lkapi.RemoveParticipantResponse,
    ),
    "livekit.SIP/CreateSIPParticipant": (
        lkapi.CreateSIPParticipantRequest,
        lkapi.SIPParticipantInfo,
    ),
}


@dataclass
class Failure:
    status: int
    code: str
    msg: str
    meta: dict[str, str] = field(default_factory=dict)


BUSY = Failure(503, "unavailable", "busy", {"sip_status_code": "486", "sip_status": "Busy Here"})
UNIMPLEMENTED = Failure(501, "unimplemented", "MoveParticipant is a LiveKit Cloud feature")


class World:
    """The rooms on the fake server: who is in which room, publishing what, and our views."""

    def __init__(self) -> None:
        self.members: dict[str, dict[str, list[str]]] = {}
        self.views: dict[str, list[RoomView]] = {}
        self._sids = itertools.count(1)

    def attach(self, view: RoomView) -> None:
        self.views.setdefault(view.name, []).append(view)
        for identity, sids in self.members.get(view.name, {}).items():
            if identity == view.own_identity:
                continue
            view.joined(identity)
            for sid in sids:
                view.published(identity, sid)

    def _views(self, room: str, skip: str = "") -> list[RoomView]:
        return [
            v
            for v in self.views.get(room, [])
            if v.closed_reason is None and v.own_identity != skip
        ]

    def join(self, room: str, identity: str, *, publish: bool = True) -> str | None:
        self.members.setdefault(room, {})[identity] = []
        for view in self._views(room, identity):
            view.joined(identity)
        return self.publish(room, identity) if publish else None

    def publish(self, room: str, identity: str) -> str:
        sid = f"TR_{identity}_{next(self._sids)}"
        self.members[room][identity].append(sid)
        for view in self._views(room, identity):
            view.published(identity, sid)
        return sid

    def leave(self, room: str, identity: str, reason: str = "CLIENT_INITIATED") -> None:
        self.members.get(room, {}).pop(identity, None)
        for view in self._views(room, identity):
            view.left(identity, reason)

    def attributes(self, room: str, identity: str, **attributes: str) -> None:
        for view in self._views(room, identity):
            view.attributes(identity, attributes)

    def dtmf(self, room: str, identity: str, digit: str) -> None:
        for view in self._views(room, identity):
            view.dtmf(identity, digit)

    def delete(self, room: str) -> None:
        self.members.pop(room, None)
        for view in self._views(room):
            view.closed("ROOM_DELETED")


class FakeLiveKitServer:
    """Records every Twirp call; can fail a method, or hold its answer until released."""

    def __init__(self, world: World) -> None:
        self.world = world
        self.calls: list[tuple[str, Any]] = []
        self.fail: dict[str, Failure] = {}
        self.gates: dict[str, asyncio.Event] = {}
        self.content_types: set[str] = set()
        self.received: dict[str, asyncio.Event] = {}
        self.answer_dials = True  # a dialled human joins the room (publishing audio)
        # As LiveKit SIP does: the dialled participant is in the room while it rings, with
        # sip.callStatus "ringing", and leaves if the call fails.
        self.ring_first = True
        self.url = ""
        self._runner: web.AppRunner | None = None

    def called(self, method: str) -> asyncio.Event:
        """Set once `method` has been received (the request, before any gate or failure)."""
        return self.received.setdefault(method, asyncio.Event())

    def methods(self) -> list[str]:
        return [name.split("/")[-1] for name, _ in self.calls]

    def requests(self, method: str) -> list[Any]:
        return [msg for name, msg in self.calls if name.endswith("/" + method)]

    async def start(self) -> None:
        app = web.Application()
        app.router.add_post("/twirp/{method:.+}", self._handle)
        self._runner = web.AppRunner(app)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        self.url = f"http://127.0.0.1:{port}"

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    async def _handle(self, request: web.Request) -> web.Response:
        method = request.match_info["method"]
        self.content_types.add(request.headers.get("Content-Type", ""))
        if method not in _METHODS:
            return web.json_response({"code": "bad_route", "msg": method}, status=404)
        req_cls, resp_cls = _METHODS[method]
        message = req_cls.FromString(await request.read())
        self.calls.append((method, message))
        name = method.split("/")[-1]
        self.called(name).set()
        ringing = name == "CreateSIPParticipant" and self.ring_first
        if ringing:
            self.world.join(message.room_name, message.participant_identity, publish=False)
            self.world.attributes(
                message.room_name, message.participant_identity, **{CALL_STATUS: "ringing"}
            )
        gate = self.gates.get(name)
        if gate is not None:
            await gate.wait()
        failure = self.fail.get(name)
        if failure is not None:
            if ringing:
                self.world.leave(message.room_name, message.participant_identity)
            body = {"code": failure.code, "msg": failure.msg, "meta": failure.meta}
            return web.json_response(body, status=failure.status)
        self._apply(name, message)
        response = resp_cls()
        if isinstance(response, lkapi.SIPParticipantInfo):
            response.participant_identity = message.participant_identity
            response.room_name = message.room_name
        return web.Response(body=response.SerializeToString(), content_type="application/protobuf")

    def _apply(self, name: str, message: Any) -> None:
        world = self.world
        if name == "CreateSIPParticipant" and self.answer_dials:
            world.join(message.room_name, message.participant_identity)
            world.attributes(
                message.room_name, message.participant_identity, **{CALL_STATUS: "active"}
            )
        elif name == "MoveParticipant":
            sids = world.members.get(message.room, {}).get(message.identity, [])
            world.leave(message.room, message.identity, "MIGRATION")
            world.join(message.destination_room, message.identity, publish=False)
            for _ in sids or [None]:
                world.publish(message.destination_room, message.identity)
        elif name == "DeleteRoom":
            world.delete(message.room)
        elif name == "RemoveParticipant":
            world.leave(message.room, message.identity, "PARTICIPANT_REMOVED")


class FakeRoomLink:
    """`RoomLink` over the world: plays are recorded and return at once."""

    def __init__(self, world: World, room: str, identity: str) -> None:
        self._view = RoomView(room, identity)
        self.world = world
        self.played: list[AudioClip] = []
        self.dtmf_sent: list[str] = []
        self.closes = 0
        world.attach(self._view)

    @property
    def view(self) -> RoomView:
        return self._view

    async def play(self, clip: AudioClip) -> None:
        self.played.append(clip)

    def stop_playback(self) -> None:
        pass

    @contextlib.contextmanager
    def listening(self, identity: str, sink: AudioSink) -> Iterator[None]:
        yield

    async def send_dtmf(self, digit: str) -> None:
        self.dtmf_sent.append(digit)

    async def aclose(self) -> None:
        self.closes += 1
        if self._view.closed_reason is None:
            self.world.leave(self._view.name, self._view.own_identity)
        self._view.closed("CLIENT_INITIATED")


class FakeConnector:
    def __init__(self, world: World) -> None:
        self.world = world
        self.links: list[FakeRoomLink] = []

    async def connect(self, room_name: str, identity: str) -> FakeRoomLink:
        link = FakeRoomLink(self.world, room_name, identity)
        self.world.members.setdefault(room_name, {})[identity] = []
        for view in self.world._views(room_name, identity):
            view.joined(identity)
        self.links.append(link)
        return link


class FakeCallerRoom:
    """`CallerRoom`: the AI session's I/O switch, hold audio and speech, as flags and lists."""

    def __init__(self, world: World, room: str = "call-1", caller: str = "sip-caller") -> None:
        self.world = world
        world.join(room, caller)
        world.join(room, "agent")  # our main agent, publishing the AI's voice / hold music
        self._view = RoomView(room, "agent")
        world.attach(self._view)
        self._caller = caller
        self.ai_io = True
        self.io_log: list[bool] = []
        self.hold_playing = False
        self.hold_log: list[str] = []
        self.said: list[str] = []
        self.closes = 0

    @property
    def view(self) -> RoomView:
        return self._view

    @property
    def caller_identity(self) -> str:
        return self._caller

    def set_ai_io(self, enabled: bool) -> None:
        self.ai_io = enabled
        self.io_log.append(enabled)

    async def start_hold_audio(self, audio: HoldAudio) -> None:
        self.hold_playing = True
        self.hold_log.append("start")

    async def stop_hold_audio(self) -> None:
        if self.hold_playing:
            self.hold_log.append("stop")
        self.hold_playing = False

    async def say(self, text: str) -> None:
        self.said.append(text)

    async def aclose(self) -> None:
        await self.stop_hold_audio()
        self.closes += 1


@dataclass
class Started:
    agent: Agent
    link: Any
    human: str
    said: list[str] = field(default_factory=list)
    closed: bool = False

    async def say(self, text: str) -> None:
        self.said.append(text)


class FakeSessionStarter:
    """`SessionStarter`: records each consult session and whether it was shut down."""

    def __init__(self) -> None:
        self.sessions: list[Started] = []
        self.started: asyncio.Queue[Started] = asyncio.Queue()

    @contextlib.asynccontextmanager
    async def __call__(self, link: Any, agent: Agent, human_identity: str) -> AsyncIterator[Any]:
        started = Started(agent, link, human_identity)
        self.sessions.append(started)
        self.started.put_nowait(started)
        try:
            yield started
        finally:
            started.closed = True

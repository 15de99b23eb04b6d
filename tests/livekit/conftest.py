"""Fixtures for the rooms backend: a fake LiveKit server, its world of rooms, and a backend."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass

import pytest
from livekit import api as lkapi

from tests.livekit.fakes import (
    FakeCallerRoom,
    FakeConnector,
    FakeLiveKitServer,
    FakeSessionStarter,
    World,
)
from warmtransfer.livekit.task import RoomsBackend


@dataclass
class Rig:
    world: World
    server: FakeLiveKitServer
    api: lkapi.LiveKitAPI
    caller: FakeCallerRoom
    connector: FakeConnector
    starter: FakeSessionStarter

    def backend(self) -> RoomsBackend:
        return RoomsBackend(
            api=self.api,
            caller_room=self.caller,
            connector=self.connector,
            start_session=self.starter,
        )


@pytest.fixture
async def rig(monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[Rig]:
    monkeypatch.setenv("LIVEKIT_SIP_OUTBOUND_TRUNK", "ST_test")
    world = World()
    server = FakeLiveKitServer(world)
    await server.start()
    api = lkapi.LiveKitAPI(server.url, "devkey", "devsecret-devsecret-devsecret-0123")
    try:
        yield Rig(
            world, server, api, FakeCallerRoom(world), FakeConnector(world), FakeSessionStarter()
        )
    finally:
        await api.aclose()
        await server.stop()

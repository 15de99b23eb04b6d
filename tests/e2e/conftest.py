"""Fixtures for end-to-end tests: the engine on loopback, with the real piper voice."""

from __future__ import annotations

import asyncio
import os
import shutil
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.peers.baresip import write_tone_wav
from tests.peers.ports import free_port_pair
from warmtransfer.consult.ports import Briefing
from warmtransfer.engine import Engine
from warmtransfer.speech.tts import PiperTTS
from warmtransfer.transfer.events import TransferEvent
from warmtransfer.transfer.states import State

CALLER_TONE = 1230.0  # what the caller's microphone sends: absent from the hold music
HUMAN_TONE = 1950.0  # what the human's microphone sends

BRIEFING = Briefing(summary="The caller was charged twice for order 4417 and wants a refund.")


def _require(tool: str) -> None:
    """In CI a missing peer is a failure, not a skip: a green run must mean the test ran."""
    if shutil.which(tool) is None:
        if os.environ.get("CI") or os.environ.get("WARMTRANSFER_REQUIRE_PEERS"):
            pytest.fail(f"{tool} is not installed (see README: the test command installs it)")
        pytest.skip(f"{tool} is not installed")


@pytest.fixture
def need_baresip() -> None:
    _require("baresip")


@pytest.fixture
def need_sipp() -> None:
    _require("sipp")


@pytest.fixture(scope="session")
def tts() -> PiperTTS:
    return PiperTTS()


def open_fds() -> dict[str, str]:
    fds = {}
    for fd in os.listdir("/proc/self/fd"):
        try:
            fds[fd] = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            continue
    return fds


@dataclass
class Running:
    engine: Engine
    events: list[TransferEvent] = field(default_factory=list)
    states: dict[State, asyncio.Event] = field(default_factory=dict)

    def on_event(self, event: TransferEvent) -> None:
        self.events.append(event)
        self.reached(event.state).set()

    def reached(self, state: State) -> asyncio.Event:
        return self.states.setdefault(state, asyncio.Event())

    def at(self, state: State) -> float:
        return next(e.at for e in self.events if e.state is state)


@pytest.fixture
async def running(tts: PiperTTS) -> AsyncIterator[Running]:
    """An engine on a free loopback port; on the way out, proves nothing was left behind."""
    await tts.warm_up()
    fds_before = open_fds()
    tasks_before = len(asyncio.all_tasks())
    engine = Engine(port=free_port_pair(), tts=tts)
    await engine.start()
    try:
        yield Running(engine)
    finally:
        await engine.close()
    assert len(asyncio.all_tasks()) <= tasks_before, asyncio.all_tasks()
    left = {fd: what for fd, what in open_fds().items() if fds_before.get(fd) != what}
    assert not left, f"the engine left sockets or files open: {left}"


@pytest.fixture
def caller_wav(tmp_path: Path) -> Path:
    return write_tone_wav(tmp_path / "caller.wav", freq=CALLER_TONE, seconds=60.0, amplitude=0.3)


@pytest.fixture
def human_wav(tmp_path: Path) -> Path:
    return write_tone_wav(tmp_path / "human.wav", freq=HUMAN_TONE, seconds=60.0, amplitude=0.3)

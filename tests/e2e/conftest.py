"""Fixtures for end-to-end tests: the engine on loopback, with the real piper voice."""

from __future__ import annotations

import asyncio
import os
import shutil
from collections.abc import AsyncIterator
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import pytest

from tests.peers.baresip import BaresipPeer, write_tone_wav
from tests.peers.ports import free_port_pair
from tests.peers.sipp import SippPeer
from warmtransfer.backends.sip import SipCallerLeg
from warmtransfer.consult.ports import Briefing
from warmtransfer.engine import Engine
from warmtransfer.sip.call import IncomingCall
from warmtransfer.speech.tts import PiperTTS
from warmtransfer.transfer.events import TransferEvent
from warmtransfer.transfer.outcome import TransferOutcome
from warmtransfer.transfer.plan import TransferPlan
from warmtransfer.transfer.states import Event, State
from warmtransfer.transfer.target import AllowList, Target

T = TypeVar("T")

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


@pytest.fixture
def need_kamailio() -> None:
    _require("kamailio")


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

    seen: dict[type[Event], asyncio.Event] = field(default_factory=dict)

    def on_event(self, event: TransferEvent) -> None:
        self.events.append(event)
        self.reached(event.state).set()
        self.happened(type(event.event)).set()

    def reached(self, state: State) -> asyncio.Event:
        return self.states.setdefault(state, asyncio.Event())

    def happened(self, kind: type[Event]) -> asyncio.Event:
        """Set once the first event of this kind (e.g. Answered, of any attempt) has happened."""
        return self.seen.setdefault(kind, asyncio.Event())

    def at(self, state: State) -> float:
        return next(e.at for e in self.events if e.state is state)

    def when(self, kind: type[Event]) -> float:
        return next(e.at for e in self.events if isinstance(e.event, kind))


@pytest.fixture
def engine_options() -> dict[str, Any]:
    """Extra Engine arguments; a test module overrides this fixture to change them.

    The humans of these tests send pure tones (to tell who hears whom) and sipp's recorded
    speech: an answer detector would rightly take a steady tone for a voicemail beep and 7 s
    of speech for a greeting. So they are off here and on in test_speech_sip.py, whose humans
    speak like people."""
    return {"spoken_answers": False, "answer_detection": False}


@pytest.fixture
async def running(tts: PiperTTS, engine_options: dict[str, Any]) -> AsyncIterator[Running]:
    """An engine on a free loopback port; on the way out, proves nothing was left behind."""
    await tts.warm_up()
    fds_before = open_fds()
    tasks_before = len(asyncio.all_tasks())
    engine = Engine(port=free_port_pair(), tts=tts, **engine_options)
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


@asynccontextmanager
async def baresip_caller(
    workdir: Path, wav: Path, *, password: str | None = None
) -> AsyncIterator[BaresipPeer]:
    """A baresip phone that calls the engine; its microphone plays `wav` (the caller's tone).
    `password`: answers a proxy's digest challenge as user "caller"."""
    async with BaresipPeer.start(
        workdir,
        name="caller",
        user="caller",
        audio_wav=wav,
        sip_port=free_port_pair(),
        extra_account_params=f";auth_pass={password}" if password else "",
    ) as caller:
        yield caller


@asynccontextmanager
async def baresip_human(
    workdir: Path, wav: Path, answer_delay: float = 0.0
) -> AsyncIterator[BaresipPeer]:
    """A baresip phone that answers by itself, as the human agent; it sends `wav` (a tone)."""
    async with BaresipPeer.start(
        workdir,
        name="human",
        user="human",
        audio_wav=wav,
        auto_answer=True,
        answer_delay=answer_delay,
        sip_port=free_port_pair(),
    ) as human:
        yield human


def sipp_caller(
    workdir: Path,
    running: Running,
    bye_after_ms: int = 12000,
    scenario: str = "uac_call",
    **options: Any,
) -> AbstractAsyncContextManager[SippPeer]:
    """A sipp caller (uac_call.xml) that dials the engine and hangs up after `bye_after_ms`."""
    return SippPeer.uac(
        workdir,
        scenario,
        f"127.0.0.1:{running.engine.ua.port}",
        service="warmtransfer",
        port=free_port_pair(),
        variables={"bye_after_ms": bye_after_ms},
        **options,
    )


def plan_for(
    uri: str, *, ring_timeout: float = 15.0, consult_timeout: float = 30.0, dtmf: str = ""
) -> TransferPlan:
    return TransferPlan(
        targets=(Target(uri=uri, ring_timeout=ring_timeout, dtmf=dtmf),),
        allow=AllowList(patterns=("sip:human@127.0.0.1:*",)),
        consult_timeout=consult_timeout,
    )


async def answer_and_transfer(
    running: Running, plan: TransferPlan
) -> tuple[SipCallerLeg, TransferOutcome]:
    """The engine side: answer the caller, put them on hold, transfer."""
    engine = running.engine
    call = await engine.next_call()
    await call.ring()
    await call.answer()
    leg = engine.caller_leg(call)
    outcome = await engine.warm_transfer(leg, plan, BRIEFING, on_event=running.on_event)
    return leg, outcome


async def call_in(
    running: Running, caller: BaresipPeer, plan: TransferPlan, uri: str | None = None
) -> asyncio.Future[tuple[SipCallerLeg, TransferOutcome]]:
    """The caller dials the engine (at `uri`, default its UDP URI), which answers and starts
    the transfer; await the result."""
    engine_side = asyncio.ensure_future(answer_and_transfer(running, plan))
    await caller.dial(uri or running.engine.uri)
    return engine_side


async def answered_from(engine: Engine, caller: BaresipPeer) -> SipCallerLeg:
    """`caller` dials the engine, which rings and answers; the caller's leg, once baresip
    reports the call established."""

    async def answer() -> IncomingCall:
        call = await engine.next_call()
        await call.ring()
        await call.answer()
        return call

    answering = asyncio.ensure_future(answer())
    await caller.dial(engine.uri)
    async with asyncio.timeout(10):
        call = await answering
    await caller.wait_event("CALL_ESTABLISHED")
    return engine.caller_leg(call)


async def finish(engine_side: asyncio.Future[T], timeout: float = 15.0) -> T:
    """Await the engine's side of the call, with a deadline so a bug fails instead of hanging."""
    async with asyncio.timeout(timeout):
        return await engine_side

"""The same `WarmTransferTask` on warmtransfer's embedded SIP engine, end to end: a baresip caller
calls the engine, a livekit `Agent` runs on the call (`run_agent_on_call`, no LiveKit server,
offline piper through the adapter, a scripted fake LLM), the caller asks for a human (a user
turn given to the session), the model calls `transfer_to_human`, and the task dials a real
human over SIP.

- accept: a baresip human answers, hears the briefing, presses 1; caller and human are bridged,
  the agent's session closes (the agent has left), and nothing is left running.
- busy: a sipp human answers 486; the tool gets `TransferFailedError` (busy, SIP 486), the model
  reads it as the tool's error, and the agent speaks to the caller again.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from livekit.agents.voice import AgentSession

from tests.e2e.conftest import (
    HUMAN_TONE,
    answered_from,
    baresip_caller,
    baresip_human,
    need_baresip,
    need_sipp,
    open_fds,
)
from tests.livekit.agents import CallTool, Receptionist, ScriptedLLM
from tests.peers.baresip import SAMPLE_RATE, BaresipPeer, write_tone_wav
from tests.peers.ports import free_port_pair
from tests.peers.sipp import SippPeer
from warmtransfer.backends.sip import SipCallerLeg
from warmtransfer.engine import Engine
from warmtransfer.livekit.plugins import TtsAdapter
from warmtransfer.livekit.sip_io import AudioInputFromLeg, AudioOutputToLeg, run_agent_on_call
from warmtransfer.livekit.task import WarmTransferTask
from warmtransfer.speech.tts import PiperTTS
from warmtransfer.transfer.events import TransferEvent
from warmtransfer.transfer.outcome import Completed, Failed, Reason
from warmtransfer.transfer.states import Answered, State

__all__ = ["need_baresip", "need_sipp"]  # fixtures, imported for this module's tests

pytestmark = pytest.mark.peers

ASK = "I would like to talk to a person, please."
SORRY = "Sorry, nobody can take your call right now."


@pytest.fixture(scope="module")
def piper() -> PiperTTS:
    return PiperTTS()


@pytest.fixture
async def baseline(piper: PiperTTS) -> AsyncIterator[None]:
    """Nothing of the engine, the session or the transfer outlives the test (piper is loaded
    first: onnxruntime keeps its own files open for the life of the process)."""
    await piper.warm_up()
    fds_before = open_fds()
    tasks_before = asyncio.all_tasks()
    yield
    left = {t for t in asyncio.all_tasks() - tasks_before if not t.done()}
    left.discard(asyncio.current_task())  # type: ignore[arg-type]  # this teardown itself
    assert not left, left
    leaked = {fd: what for fd, what in open_fds().items() if fds_before.get(fd) != what}
    assert not leaked, f"sockets or files left open: {leaked}"


@dataclass
class OnCall:
    engine: Engine
    leg: SipCallerLeg
    session: AgentSession[Any]
    agent: Receptionist
    fake_llm: ScriptedLLM
    events: list[TransferEvent] = field(default_factory=list)
    closed: asyncio.Event = field(default_factory=asyncio.Event)
    answered: asyncio.Event = field(default_factory=asyncio.Event)

    def on_event(self, event: TransferEvent) -> None:
        self.events.append(event)
        if isinstance(event.event, Answered):
            self.answered.set()

    @property
    def output(self) -> AudioOutputToLeg:
        output = self.session.output.audio
        assert isinstance(output, AudioOutputToLeg)
        return output


@asynccontextmanager
async def agent_on_engine(
    tmp_path: Path, piper: PiperTTS, human_uri: str, replies: list[CallTool | str]
) -> AsyncIterator[tuple[OnCall, BaresipPeer]]:
    """An engine, a baresip caller on it, and the receptionist agent on that call."""
    await piper.warm_up()
    mic = write_tone_wav(tmp_path / "silence.wav", seconds=60.0, amplitude=0.0)
    engine = Engine(port=free_port_pair(), tts=piper, spoken_answers=False, answer_detection=False)
    await engine.start()
    try:
        async with baresip_caller(tmp_path, mic) as caller:
            leg = await answered_from(engine, caller)
            fake_llm = ScriptedLLM(list(replies))
            on_call = OnCall(engine, leg, None, None, fake_llm)  # type: ignore[arg-type]
            agent = Receptionist(human_uri, on_event=on_call.on_event)
            session = await run_agent_on_call(
                engine, leg, agent, stt=None, tts=TtsAdapter(piper), llm=fake_llm
            )
            session.on("close", lambda _ev: on_call.closed.set())
            on_call.session, on_call.agent = session, agent
            yield on_call, caller
    finally:
        await engine.close()


async def test_fake_llm_agent_on_sip_call_transfers_to_baresip_human(
    tmp_path: Path, need_baresip: None, piper: PiperTTS, baseline: None
) -> None:
    human_wav = write_tone_wav(tmp_path / "human.wav", freq=HUMAN_TONE, seconds=60.0)
    async with (
        baresip_human(tmp_path, human_wav) as human,
        agent_on_engine(
            tmp_path, piper, human.uri, [CallTool("transfer_to_human"), "Goodbye."]
        ) as (on_call, caller),
    ):
        leg, session = on_call.leg, on_call.session
        audio_in = session.input.audio
        assert isinstance(audio_in, AudioInputFromLeg) and audio_in.listening
        session.generate_reply(user_input=ASK)  # the caller's first turn, as the STT gives it

        async with asyncio.timeout(15):
            await on_call.answered.wait()
        # held while the human is briefed: the agent neither hears nor speaks on the call
        assert leg.held and not leg.ai_connected and leg.hold_playback is not None
        assert on_call.output.playback_log == []
        await human.wait_recorded(3.0)  # the human has heard the start of the briefing
        await human.send_dtmf("1")

        async with asyncio.timeout(15):
            await on_call.closed.wait()  # the agent left the call once it was handed over
        agent = on_call.agent
        assert [r.human_agent_identity for r in agent.results] == [human.uri]
        assert agent.failures == []
        (task,) = agent.tasks
        assert isinstance(task.outcome, Completed) and task.outcome.target.uri == human.uri
        assert on_call.events[-1].state is State.COMPLETED
        # the model chose no destination: the default plan allows exactly the app's target
        assert task.plan.allow.allows(human.uri)
        assert not task.plan.allow.allows("sip:someone-else@127.0.0.1")
        # the model was asked once with the caller's turn, and answered with the tool call
        first = on_call.fake_llm.requests[0]
        assert [m.text_content for m in first.messages() if m.role == "user"] == [ASK]
        assert audio_in.closed and not leg.ai_connected
        assert leg.bridged and not leg.held and not leg.hung_up

        (bridged,) = on_call.engine.bridge.active
        assert bridged.caller is leg and bridged.target.target.uri == human.uri
        forwarded = bridged.target.media.stats.forwarded
        await human.wait_recorded(human_seconds(human) + 1.0)  # a second of bridged audio
        assert bridged.target.media.stats.forwarded > forwarded  # the caller reaches the human
        assert on_call.engine.transfers == {}

        await caller.hangup()
        closed = await human.wait_event("CALL_CLOSED", timeout=10)
        assert "peer" in str(closed.get("param", ""))  # the engine hung the human up too
        async with asyncio.timeout(10):
            await bridged.ended.wait()


def human_seconds(human: BaresipPeer) -> float:
    """Seconds the human's recording holds so far."""
    wavs = human.received_wavs()  # still being written: its size, not its header, counts
    return max(0, wavs[-1].stat().st_size - 44) / 2 / SAMPLE_RATE if wavs else 0.0


async def test_fake_llm_agent_on_sip_call_busy_human_and_agent_speaks_again(
    tmp_path: Path, need_baresip: None, need_sipp: None, piper: PiperTTS, baseline: None
) -> None:
    async with (
        SippPeer.uas(tmp_path, "uas_busy", port=free_port_pair()) as human,
        agent_on_engine(tmp_path, piper, human.uri, [CallTool("transfer_to_human"), SORRY]) as (
            on_call,
            caller,
        ),
    ):
        leg, session = on_call.leg, on_call.session
        spoke = asyncio.Event()

        def item_added(event: Any) -> None:
            item = event.item
            if item.type == "message" and item.role == "assistant":
                spoke.set()

        session.on("conversation_item_added", item_added)  # once played out (or cut)
        async with asyncio.timeout(20):
            result = await session.run(user_input=ASK)
        # livekit's run ends when the task's on_enter does: with the tool call and the handoff
        result.expect.next_event().is_function_call(name="transfer_to_human")
        result.expect.next_event().is_agent_handoff(new_agent_type=WarmTransferTask)
        result.expect.no_more_events()
        async with asyncio.timeout(20):
            await spoke.wait()  # the model read the failure and answered the caller

        # what the model saw next was the tool's error, in the session's history too
        (seen,) = on_call.fake_llm.tool_outputs(1)
        assert seen.is_error and "busy" in seen.output and "486" in seen.output
        outputs = [i for i in session.history.items if i.type == "function_call_output"]
        assert [(o.is_error, o.output) for o in outputs] == [(True, seen.output)]
        assert session.current_agent is on_call.agent  # the task handed the call back
        (failure,) = on_call.agent.failures
        assert failure.reason is Reason.BUSY and failure.sip_status == 486
        assert isinstance(failure.outcome, Failed)
        assert on_call.agent.results == []
        # what the model saw next was the tool's error
        (seen,) = on_call.fake_llm.tool_outputs(1)
        assert seen.is_error and "486" in seen.output
        # back with the agent: it spoke to the caller, who heard all of it
        assert leg.ai_connected and not leg.held
        assert len(on_call.output.playback_log) == 1
        position, interrupted = on_call.output.playback_log[0]
        assert not interrupted and position > 1.0
        assert not on_call.closed.is_set()
        assert await human.wait(timeout=10) == 0, human.messages()
        assert "ACK" in human.received_requests()  # our ACK of their 486

        await caller.hangup()
        async with asyncio.timeout(10):
            await on_call.closed.wait()  # the hang-up closes the session

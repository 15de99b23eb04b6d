"""A livekit-agents `Agent` on a real SIP call answered by warmtransfer: no LiveKit server, no
room. A baresip phone calls the engine; the agent (offline piper and pocketsphinx through the
adapters, a scripted fake in place of the paid LLM) greets it; the caller hangs up and the
session closes by itself, leaving no task, socket or file behind."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from livekit.agents.voice import Agent, AgentSession

from tests.e2e.conftest import answered_from, baresip_caller, need_baresip, open_fds
from tests.livekit.agents import ScriptedLLM
from tests.peers.baresip import read_wav_samples, write_tone_wav
from tests.peers.ports import free_port_pair
from warmtransfer.engine import Engine
from warmtransfer.livekit.plugins import SttAdapter, TtsAdapter, VadAdapter
from warmtransfer.livekit.sip_io import AudioOutputToLeg, run_agent_on_call
from warmtransfer.media.levels import rms_dbfs
from warmtransfer.speech.stt import PocketsphinxSTT
from warmtransfer.speech.tts import PiperTTS

__all__ = ["need_baresip"]  # a fixture, imported for this module's tests

pytestmark = pytest.mark.peers

GREETING = "Hello, how can I help?"


class Greeter(Agent):
    def __init__(self) -> None:
        super().__init__(instructions="You answer phone calls for a shop. Greet the caller.")

    async def on_enter(self) -> None:
        self.session.generate_reply()


@pytest.fixture(scope="module")
def piper() -> PiperTTS:
    return PiperTTS()


@pytest.fixture
def pocketsphinx() -> Iterator[PocketsphinxSTT]:
    engine = PocketsphinxSTT()
    yield engine
    engine.close()


def speech_seconds(path: Path) -> float:
    """How much of a recording is sound (20 ms windows above -40 dBFS)."""
    rate, samples = read_wav_samples(path)
    audio = np.asarray(samples, dtype=np.int16)
    size = rate // 50
    windows = [audio[i : i + size] for i in range(0, len(audio) - size + 1, size)]
    return sum(rms_dbfs(w) > -40.0 for w in windows) * 0.020


async def test_fake_llm_agent_greets_a_sip_caller_and_closes_on_hang_up(
    tmp_path: Path, need_baresip: None, piper: PiperTTS, pocketsphinx: PocketsphinxSTT
) -> None:
    await piper.warm_up()
    # the caller says nothing: the agent speaks first, and nothing it hears starts a turn
    mic = write_tone_wav(tmp_path / "silence.wav", seconds=30.0, amplitude=0.0)
    fds_before = open_fds()
    tasks_before = asyncio.all_tasks()
    engine = Engine(port=free_port_pair(), tts=piper, spoken_answers=False, answer_detection=False)
    await engine.start()
    fake_llm = ScriptedLLM([GREETING])
    try:
        async with baresip_caller(tmp_path, mic) as caller:
            leg = await answered_from(engine, caller)

            session: AgentSession[Any] = await run_agent_on_call(
                engine,
                leg,
                Greeter(),
                stt=SttAdapter(pocketsphinx),
                tts=TtsAdapter(piper),
                llm=fake_llm,
            )
            # no local model: our webrtcvad and VAD turn detection, not silero and the EOT model
            assert session.turn_detection == "vad"
            assert isinstance(session.vad, VadAdapter)
            closed = asyncio.Event()
            session.on("close", lambda _ev: closed.set())
            output = session.output.audio
            assert isinstance(output, AudioOutputToLeg)
            said: list[str | None] = []
            spoke = asyncio.Event()

            def item_added(event: Any) -> None:
                item = event.item
                if item.type == "message" and item.role == "assistant":
                    said.append(item.text_content)
                    spoke.set()

            # the reply enters the history once it has played out (or been cut)
            session.on("conversation_item_added", item_added)
            async with asyncio.timeout(20):
                await spoke.wait()
            assert said == [GREETING]
            assert len(fake_llm.requests) == 1
            assert len(output.playback_log) == 1
            position, interrupted = output.playback_log[0]
            assert not interrupted
            assert 0.8 < position < 3.0, position  # piper says the greeting in ~1.5 s

            await caller.wait_recorded(position + 0.5)
            await caller.hangup()
            async with asyncio.timeout(10):
                await closed.wait()
            wav = await caller.received_wav()
            assert wav is not None
            heard = speech_seconds(wav)
            # the caller heard the greeting: most of it is sound on their line
            assert heard > 0.6 * position, (heard, position)
            assert not leg.media.playing
    finally:
        await engine.close()
    # the session ended with the call: nothing of it, or of the engine, is left running
    left = {t for t in asyncio.all_tasks() - tasks_before if not t.done()}
    assert not left, left
    leaked = {fd: what for fd, what in open_fds().items() if fds_before.get(fd) != what}
    assert not leaked, f"sockets or files left open: {leaked}"

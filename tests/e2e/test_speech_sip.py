"""Who answers, heard over real SIP/RTP: baresip plays people and machines whose words were
spoken by piper, and the engine decides by listening (pocketsphinx, webrtcvad) while it speaks.

A person who says "Hello?" and then "Yes" is joined to the caller; a voicemail greeting or a
phone tree is never joined, the caller is back with the AI, and the reason is voicemail.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
from numpy.typing import NDArray

from tests.audio_checks import level, load, window
from tests.e2e.conftest import Running, baresip_caller, call_in, finish, plan_for
from tests.peers.baresip import BaresipPeer
from tests.peers.ports import free_port_pair
from warmtransfer.media.wav import write_wav
from warmtransfer.speech.tts import PiperTTS
from warmtransfer.transfer.outcome import Completed, Failed, Reason
from warmtransfer.transfer.states import Accepted

pytestmark = pytest.mark.peers

RATE = 8000
MESSAGE = "This is the virtual assistant. A caller needs help with billing; we will call back."


@pytest.fixture
def engine_options() -> dict[str, Any]:
    return {"spoken_answers": True, "answer_detection": True, "voicemail_message": MESSAGE}


async def voice(tts: PiperTTS, path: Path, *parts: str | float) -> Path:
    """A microphone WAV: text spoken by piper, numbers are seconds of silence, floats of
    (seconds, hz) tuples are not needed: a beep is written as the string "beep"."""
    audio: list[NDArray[np.int16]] = []
    for part in parts:
        if isinstance(part, float):
            audio.append(np.zeros(int(part * RATE), dtype=np.int16))
        elif part == "beep":
            t = np.arange(int(0.5 * RATE)) / RATE
            audio.append((0.3 * 32767 * np.sin(2 * np.pi * 1000 * t)).astype(np.int16))
        else:
            audio.append(np.asarray((await tts.synthesize(part)).samples))
    write_wav(path, np.concatenate(audio), RATE)
    return path


def target(workdir: Path, wav: Path) -> Any:
    return BaresipPeer.start(
        workdir,
        name="target",
        user="human",
        audio_wav=wav,
        auto_answer=True,
        sip_port=free_port_pair(),
        pad_audio_to=30.0,
    )


async def test_a_person_who_says_yes_is_joined_to_the_caller(
    running: Running, tmp_path: Path, tts: PiperTTS, caller_wav: Path, need_baresip: None
) -> None:
    mic = await voice(tts, tmp_path / "person.wav", 0.5, "Hello?", 4.0, "Yes.", 1.0)
    async with baresip_caller(tmp_path, caller_wav) as caller, target(tmp_path, mic) as human:
        engine_side = await call_in(running, caller, plan_for(human.uri))
        leg, outcome = await finish(engine_side, timeout=30)
        assert isinstance(outcome, Completed), outcome
        accepted = next(e.event for e in running.events if isinstance(e.event, Accepted))
        assert accepted.via == "said 'yes'"  # not a key: nobody pressed one
        assert not leg.ai_connected
        await caller.hangup()
        await human.wait_event("CALL_CLOSED", timeout=10)


@pytest.mark.parametrize(
    ("greeting", "why"),
    [
        (("Hi, you've reached Sam. I can't take your call. Please leave a message.",), "voicemail"),
        (("Welcome to the main menu. For billing, press one.",), "phone_tree"),
    ],
)
async def test_a_machine_is_never_joined_and_the_caller_is_back_with_the_ai(
    running: Running,
    tmp_path: Path,
    tts: PiperTTS,
    caller_wav: Path,
    greeting: tuple[str, ...],
    why: str,
    need_baresip: None,
) -> None:
    mic = await voice(tts, tmp_path / "machine.wav", 0.3, *greeting, 0.3, "beep", 8.0)
    async with baresip_caller(tmp_path, caller_wav) as caller, target(tmp_path, mic) as human:
        engine_side = await call_in(running, caller, plan_for(human.uri))
        leg, outcome = await finish(engine_side, timeout=40)
        assert isinstance(outcome, Failed), outcome
        assert outcome.reason is Reason.VOICEMAIL
        assert why in outcome.attempts[-1].detail, outcome.attempts[-1]
        assert leg.ai_connected and not leg.held  # back with the AI at once
        await human.wait_event("CALL_CLOSED", timeout=10)  # the machine's leg was ended
        heard = await human.received_wav()
        await caller.hangup()
    assert heard is not None
    audio = load(heard)
    if why == "voicemail":  # our message was left after the beep
        greeting_end = (0.3 * RATE + len((await tts.synthesize(greeting[0])).samples)) / RATE
        after_beep = window(audio, greeting_end + 0.9, len(audio) / RATE)
        assert level(after_beep) > -40, "no message was left after the beep"

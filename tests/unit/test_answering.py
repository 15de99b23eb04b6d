"""Who answered: a person, a voicemail greeting or a phone tree, from real synthesised speech.

Greetings are spoken by piper (deterministic, so each run hears the same audio) and heard by
the real recognisers: webrtcvad for the shape of the speech, pocketsphinx for the words. Audio
is fed as the phone leg would deliver it, 20 ms frames at 8 kHz.
"""

from __future__ import annotations

import asyncio

import numpy as np
import pytest
from numpy.typing import NDArray

from tests.unit.memory_ports import MemoryTargetLeg
from warmtransfer.speech.answering import (
    MACHINE_PHRASES,
    AnswerDetector,
    AnswerKind,
    BeepDetector,
)
from warmtransfer.speech.stt import DEFAULT_PHRASES, KeywordSpotter
from warmtransfer.speech.tts import PiperTTS

RATE = 8000


@pytest.fixture(scope="module")
def tts() -> PiperTTS:
    return PiperTTS()


@pytest.fixture(scope="module")
def spotter() -> KeywordSpotter:
    return KeywordSpotter({**DEFAULT_PHRASES, **MACHINE_PHRASES})


def tone(freq: float, seconds: float, level: float = 0.25) -> NDArray[np.int16]:
    t = np.arange(int(seconds * RATE)) / RATE
    return (level * 32767 * np.sin(2 * np.pi * freq * t)).astype(np.int16)


def silence(seconds: float) -> NDArray[np.int16]:
    return np.zeros(int(seconds * RATE), dtype=np.int16)


async def spoken(tts: PiperTTS, text: str) -> NDArray[np.int16]:
    return np.asarray((await tts.synthesize(text)).samples)


async def verdict_for(
    spotter: KeywordSpotter | None, audio: NDArray[np.int16], **options: float
) -> tuple[AnswerKind, float, str]:
    detector = AnswerDetector(spotter, **options)
    session = detector.session()
    if spotter is None:
        for start in range(0, len(audio), 160):
            found = session.feed(audio[start : start + 160], [])
            if found:
                return found.kind, found.at, found.why
        settled = session.settle()
        return settled.kind, settled.at, settled.why
    async with spotter.listen() as words:
        for start in range(0, len(audio), 160):
            frame = audio[start : start + 160]
            found = session.feed(frame, await words.feed(frame))
            if found:
                return found.kind, found.at, found.why
    settled = session.settle()
    return settled.kind, settled.at, settled.why


# -- the beep -----------------------------------------------------------------------------------


@pytest.mark.parametrize("freq", [440.0, 1000.0, 1400.0])
def test_a_steady_tone_is_a_beep_once_it_lasted_long_enough(freq: float) -> None:
    beep = BeepDetector()
    assert beep.feed(tone(freq, 0.1)) is None  # too short so far
    found = beep.feed(tone(freq, 0.3)[800:])
    assert found is not None and 0.15 <= found <= 0.2
    assert beep.frequency is not None and abs(beep.frequency - freq) <= 50


async def test_speech_silence_and_noise_are_not_beeps(tts: PiperTTS) -> None:
    noise = (np.random.default_rng(7).normal(0, 2000, RATE * 2)).astype(np.int16)
    for audio in (await spoken(tts, "Hello, this is Sam."), silence(2), noise):
        assert BeepDetector().feed(audio) is None
    assert BeepDetector().feed(tone(1000, 1.0, level=0.002)) is None  # under -40 dBFS


# -- greetings ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "greeting",
    ["Hello?", "Support, this is Sam.", "Hi, this is Dana speaking."],
)
async def test_a_person_says_a_short_greeting_and_waits(
    tts: PiperTTS, spotter: KeywordSpotter, greeting: str
) -> None:
    audio = np.concatenate([silence(0.3), await spoken(tts, greeting), silence(3)])
    kind, at, why = await verdict_for(spotter, audio)
    assert kind is AnswerKind.HUMAN, why
    assert at < 0.3 + len(await spoken(tts, greeting)) / RATE + 1.5  # soon after they stop


@pytest.mark.parametrize(
    ("greeting", "kind"),
    [
        (
            "Hi, you've reached Sam. I can't take your call right now. "
            "Please leave a message after the tone.",
            AnswerKind.VOICEMAIL,
        ),
        (
            "The person you are calling is not available. Please record your message.",
            AnswerKind.VOICEMAIL,
        ),
        (
            "Welcome to the main menu. Please stay on the line for the next agent.",
            AnswerKind.PHONE_TREE,
        ),
    ],
)
async def test_machines_are_recognised_by_words_or_by_talking_on(
    tts: PiperTTS, spotter: KeywordSpotter, greeting: str, kind: AnswerKind
) -> None:
    audio = np.concatenate([await spoken(tts, greeting), silence(2)])
    found, at, why = await verdict_for(spotter, audio)
    assert found is kind, why
    assert at <= 3.0  # decided before the greeting is over


async def test_without_words_a_long_greeting_is_still_a_machine(tts: PiperTTS) -> None:
    greeting = "Hey, it's Chris. I'm away from my desk right now, but I will call you back soon."
    kind, at, why = await verdict_for(
        None, np.concatenate([await spoken(tts, greeting), silence(1)])
    )
    assert kind is AnswerKind.VOICEMAIL and "talked" in why
    assert 2.5 <= at <= 3.0


async def test_a_greeting_ending_in_a_beep_is_voicemail_even_if_short(tts: PiperTTS) -> None:
    audio = np.concatenate([await spoken(tts, "Leave it."), silence(0.2), tone(1000, 0.4)])
    kind, _, why = await verdict_for(None, audio)
    assert kind is AnswerKind.VOICEMAIL and why == "a beep"


async def test_silence_is_unknown_when_the_budget_is_spent() -> None:
    kind, at, why = await verdict_for(None, silence(5), budget=3.0)
    assert kind is AnswerKind.UNKNOWN and why == "nothing said"
    assert at == pytest.approx(3.0, abs=0.05)


def test_detector_settings_must_be_positive() -> None:
    with pytest.raises(ValueError, match="positive"):
        AnswerDetector(budget=0)


async def test_classify_listens_to_the_leg_and_stops_listening(
    tts: PiperTTS, spotter: KeywordSpotter
) -> None:
    leg = MemoryTargetLeg()
    task = asyncio.ensure_future(AnswerDetector(spotter).classify(leg))
    async with asyncio.timeout(5):
        await leg.listened.wait()
    leg.say(np.concatenate([await spoken(tts, "Hello?"), silence(2)]))
    async with asyncio.timeout(10):
        verdict = await task
    assert verdict.kind is AnswerKind.HUMAN
    assert leg.sinks == []  # unsubscribed: nothing keeps listening after the verdict

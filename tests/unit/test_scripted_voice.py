"""The scripted consultant hearing the human: spoken answers, and machines that answer.

Real piper speech heard by real pocketsphinx and webrtcvad, through an in-memory leg that
delivers it in 20 ms frames as an RTP leg would. The human's lines are spoken only after the
consultant is listening (`leg.listened`), so nothing depends on timing.
"""

from __future__ import annotations

import asyncio
import logging

import numpy as np
import pytest
from numpy.typing import NDArray

from tests.unit.memory_ports import MemoryTargetLeg
from tests.unit.test_answering import silence, spoken, tone
from warmtransfer.consult.ports import Briefing, Decision, Verdict
from warmtransfer.consult.scripted import ScriptedConsultant
from warmtransfer.speech.answering import MACHINE_PHRASES, AnswerDetector
from warmtransfer.speech.stt import DEFAULT_PHRASES, KeywordSpotter, SpotterSession
from warmtransfer.speech.tts import PiperTTS

BRIEFING = Briefing(summary="Jane was charged twice. She wants a refund.")
MESSAGE = "This is the virtual assistant. A caller needs you; we will try you again later."


@pytest.fixture(scope="module")
def tts() -> PiperTTS:
    return PiperTTS()


@pytest.fixture(scope="module")
def spotter() -> KeywordSpotter:
    return KeywordSpotter({**DEFAULT_PHRASES, **MACHINE_PHRASES})


def consultant(tts: PiperTTS, spotter: KeywordSpotter, **options: str) -> ScriptedConsultant:
    return ScriptedConsultant(
        tts, spotter=spotter, answer_detector=AnswerDetector(spotter), **options
    )


async def run(who: ScriptedConsultant, leg: MemoryTargetLeg, *lines: NDArray[np.int16]) -> Decision:
    task = asyncio.ensure_future(who.consult(leg, await who.prepare(BRIEFING)))
    async with asyncio.timeout(5):
        await leg.listened.wait()
    for line in lines:
        leg.say(line)
    async with asyncio.timeout(20):
        return await task


async def test_a_person_who_says_yes_accepts(tts: PiperTTS, spotter: KeywordSpotter) -> None:
    leg = MemoryTargetLeg()
    hello = np.concatenate([await spoken(tts, "Hello?"), silence(1.5)])
    yes = np.concatenate([await spoken(tts, "Yes."), silence(1.0)])
    decision = await run(consultant(tts, spotter), leg, hello, yes)
    assert decision.verdict is Verdict.ACCEPT and decision.via == "said 'yes'"
    assert leg.sinks == []  # stopped listening


async def test_a_person_who_says_no_declines(tts: PiperTTS, spotter: KeywordSpotter) -> None:
    leg = MemoryTargetLeg()
    hello = np.concatenate([await spoken(tts, "Support, this is Sam."), silence(1.5)])
    no = np.concatenate([await spoken(tts, "No."), silence(1.0)])
    decision = await run(consultant(tts, spotter), leg, hello, no)
    assert decision.verdict is Verdict.DECLINE and decision.via == "said 'no'"


async def test_repeat_said_replays_the_briefing(tts: PiperTTS, spotter: KeywordSpotter) -> None:
    leg = MemoryTargetLeg()
    who = consultant(tts, spotter)
    hello = np.concatenate([await spoken(tts, "Hello?"), silence(1.5)])
    repeat = np.concatenate([await spoken(tts, "Repeat."), silence(1.0)])
    task = asyncio.ensure_future(who.consult(leg, await who.prepare(BRIEFING)))
    async with asyncio.timeout(5):
        await leg.listened.wait()
    leg.say(hello)
    leg.say(repeat)
    openings = 0
    async with asyncio.timeout(10):
        while openings < 2:  # the opening clip played a second time
            await leg.playing.wait()
            leg.playing.clear()
            openings = sum(1 for clip in leg.played if clip is leg.played[0])
    leg.press("1")
    async with asyncio.timeout(5):
        decision = await task
    assert decision.verdict is Verdict.ACCEPT and decision.via == "key 1"


async def test_a_greeting_that_says_no_is_voicemail_not_a_decline(
    tts: PiperTTS, spotter: KeywordSpotter
) -> None:
    greeting = await spoken(
        tts, "No one is available to take your call. Please leave a message after the tone."
    )
    decision = await run(consultant(tts, spotter), MemoryTargetLeg(), greeting, silence(1))
    assert decision.verdict is Verdict.VOICEMAIL, decision
    assert decision.reason == "voicemail" and "answer detection" in decision.via


async def test_a_phone_tree_is_never_accepted(tts: PiperTTS, spotter: KeywordSpotter) -> None:
    greeting = await spoken(tts, "Welcome to the main menu. For sales, press one.")
    decision = await run(consultant(tts, spotter), MemoryTargetLeg(), greeting, silence(1))
    assert decision.verdict is Verdict.VOICEMAIL and decision.reason == "phone_tree"


async def test_a_message_is_left_after_the_beep(tts: PiperTTS, spotter: KeywordSpotter) -> None:
    leg = MemoryTargetLeg()
    who = consultant(tts, spotter, voicemail_message=MESSAGE)
    greeting = await spoken(tts, "Hi, you've reached Sam. Please leave a message after the tone.")
    decision = await run(who, leg, greeting, silence(0.3), tone(1000, 0.5), silence(3))
    assert decision.verdict is Verdict.VOICEMAIL and decision.via.endswith("message left")
    assert leg.played[-1] is await tts.synthesize(MESSAGE)  # the last thing played


async def test_without_a_beep_the_message_waits_for_the_greeting_to_end(
    tts: PiperTTS, spotter: KeywordSpotter
) -> None:
    leg = MemoryTargetLeg()
    who = consultant(tts, spotter, voicemail_message=MESSAGE)
    greeting = await spoken(
        tts, "Hey, it's Chris. I'm away from my desk right now. I will call you back soon."
    )
    task = asyncio.ensure_future(who.consult(leg, await who.prepare(BRIEFING)))
    async with asyncio.timeout(5):
        await leg.listened.wait()
    leg.say(greeting)  # all of it: the verdict comes mid-greeting, then the quiet is missing
    with pytest.raises(TimeoutError):  # a deadline that must pass: no message into the talk
        await asyncio.wait_for(asyncio.shield(task), 3.0)
    assert not task.done()
    leg.say(silence(1.5))  # the greeting is over: now the message
    async with asyncio.timeout(10):
        decision = await task
    assert decision.via.endswith("message left")
    assert leg.played[-1] is await tts.synthesize(MESSAGE)


class _BrokenSpotter(KeywordSpotter):
    def listen(self) -> SpotterSession:
        raise RuntimeError("decoder exploded")


async def test_a_broken_recogniser_leaves_the_keys_working(
    tts: PiperTTS, caplog: pytest.LogCaptureFixture
) -> None:
    broken = _BrokenSpotter(DEFAULT_PHRASES)
    who = ScriptedConsultant(tts, spotter=broken, answer_detector=AnswerDetector(broken))
    leg = MemoryTargetLeg(keys=["1"])
    with caplog.at_level(logging.ERROR):
        async with asyncio.timeout(10):
            decision = await who.consult(leg, await who.prepare(BRIEFING))
    assert "keys only" in caplog.text
    assert decision.verdict is Verdict.ACCEPT and decision.via == "key 1"

"""The scripted consultant with the real piper voice, on an in-memory human leg."""

from __future__ import annotations

import asyncio

import pytest

from tests.unit.memory_ports import MemoryTargetLeg
from warmtransfer.consult.ports import Briefing, LegGone, Verdict
from warmtransfer.consult.scripted import ScriptedConsultant, ScriptedPrepared, sentences
from warmtransfer.media.levels import rms_dbfs
from warmtransfer.speech.tts import PiperTTS

BRIEFING = Briefing(summary="Jane was charged twice. She wants a refund.")


@pytest.fixture(scope="module")
def tts() -> PiperTTS:
    return PiperTTS()


def test_sentences_split_on_end_punctuation() -> None:
    assert sentences("One. Two? Three!  Four") == ["One.", "Two?", "Three!", "Four"]


async def test_prepare_renders_the_opening_and_keeps_the_rest_as_text(tts: PiperTTS) -> None:
    consultant = ScriptedConsultant(tts)
    prepared = await consultant.prepare(BRIEFING)
    assert isinstance(prepared, ScriptedPrepared)
    assert prepared.opening.rate == 8000
    assert rms_dbfs(prepared.opening.samples) > -40  # real speech
    assert prepared.rest[:2] == ("Jane was charged twice.", "She wants a refund.")
    assert prepared.rest[-1].startswith("Press 9")


async def test_briefing_is_spoken_in_order_then_key_1_accepts(tts: PiperTTS) -> None:
    consultant = ScriptedConsultant(tts)
    prepared = await consultant.prepare(BRIEFING)
    leg = MemoryTargetLeg()
    task = asyncio.ensure_future(consultant.consult(leg, prepared))
    async with asyncio.timeout(30):
        while len(leg.played) < 1 + len(prepared.rest):  # every sentence is spoken
            await leg.playing.wait()
            leg.playing.clear()
    assert leg.played[0] is prepared.opening
    assert all(rms_dbfs(clip.samples) > -40 for clip in leg.played)
    leg.press("1")
    async with asyncio.timeout(5):
        decision = await task
    assert decision.verdict is Verdict.ACCEPT
    assert decision.via == "key 1"


async def test_key_pressed_mid_briefing_stops_it_and_counts(tts: PiperTTS) -> None:
    consultant = ScriptedConsultant(tts)
    prepared = await consultant.prepare(BRIEFING)
    leg = MemoryTargetLeg(play_blocks=True, on_play=lambda leg: leg.press("2"))
    async with asyncio.timeout(10):
        decision = await consultant.consult(leg, prepared)
    assert decision.verdict is Verdict.DECLINE
    assert len(leg.played) == 1  # the key came during the opening: nothing more was played


async def test_key_9_repeats_the_briefing_and_other_keys_are_ignored(tts: PiperTTS) -> None:
    consultant = ScriptedConsultant(tts)
    prepared = await consultant.prepare(BRIEFING)

    def press_during_first_play(leg: MemoryTargetLeg) -> None:
        if len(leg.played) == 1:
            leg.press("5")
            leg.press("9")

    leg = MemoryTargetLeg(play_blocks=True, on_play=press_during_first_play)
    task = asyncio.ensure_future(consultant.consult(leg, prepared))
    async with asyncio.timeout(10):
        while sum(clip is prepared.opening for clip in leg.played) < 2:
            await leg.playing.wait()
            leg.playing.clear()
    leg.press("1")
    async with asyncio.timeout(5):
        assert (await task).verdict is Verdict.ACCEPT


async def test_human_hanging_up_ends_the_consult_with_leg_gone(tts: PiperTTS) -> None:
    consultant = ScriptedConsultant(tts)
    prepared = await consultant.prepare(BRIEFING)
    leg = MemoryTargetLeg(play_blocks=True)
    task = asyncio.ensure_future(consultant.consult(leg, prepared))
    async with asyncio.timeout(5):
        await leg.playing.wait()
    leg.remote_hangup()
    with pytest.raises(LegGone):
        async with asyncio.timeout(5):
            await task


async def test_consult_rejects_what_another_consultant_prepared(tts: PiperTTS) -> None:
    with pytest.raises(TypeError, match="prepare"):
        await ScriptedConsultant(tts).consult(MemoryTargetLeg(), object())


async def test_caller_left_notice_is_fixed_text_and_not_the_briefing(tts: PiperTTS) -> None:
    consultant = ScriptedConsultant(tts)
    await consultant.warm_up()
    leg = MemoryTargetLeg()
    await consultant.notify_caller_left(leg)
    again = MemoryTargetLeg()
    await consultant.notify_caller_left(again)
    notice = leg.played[-1]
    assert again.played[-1] is notice  # rendered once, identical every time (deterministic)
    prepared = await consultant.prepare(BRIEFING)
    assert notice is not prepared.opening
    assert len(notice.samples) != len(prepared.opening.samples)

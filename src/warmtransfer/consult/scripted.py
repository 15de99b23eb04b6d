"""The scripted consultant: the AI speaks first the moment the human answers, and the human
decides with a key. Deterministic by design: a key press cannot be misheard or talked around,
which is what a contact centre wants from a transfer it may be audited on.

The briefing is spoken sentence by sentence. The opening sentence is fixed text, rendered in
`prepare` (and cached by the TTS, so after the first transfer it costs nothing): the human hears
it the moment they answer. Each following sentence is rendered while the one before it plays,
so the first word never waits for the whole briefing to be synthesised (piper needs ~2.7 s for
a 15 s briefing on this machine, longer than many humans take to answer).
"""

from __future__ import annotations

import asyncio
import contextlib
import re
from dataclasses import dataclass

from warmtransfer.consult.ports import Briefing, ConsultLeg, Decision, Verdict
from warmtransfer.media.audio import AudioClip
from warmtransfer.speech.tts import TextToSpeech

_SENTENCE_END = re.compile(r"(?<=[.!?])\s+")


def sentences(text: str) -> list[str]:
    return [part.strip() for part in _SENTENCE_END.split(text) if part.strip()]


@dataclass(frozen=True)
class ScriptedPrepared:
    opening: AudioClip
    rest: tuple[str, ...]

    @property
    def text(self) -> str:
        return " ".join(self.rest)


class ScriptedConsultant:
    def __init__(
        self,
        tts: TextToSpeech,
        *,
        intro: str = "Hello, this is the virtual assistant with a call transfer.",
        instructions: str = (
            "Press 1 to take the call, or 2 to decline. Press 9 to hear this again."
        ),
        caller_left: str = "The caller has hung up, so there is no call to take. Goodbye.",
        accept_key: str = "1",
        decline_key: str = "2",
        repeat_key: str = "9",
    ) -> None:
        self.tts = tts
        self.intro = intro
        self.instructions = instructions
        self.caller_left = caller_left
        self.accept_key = accept_key
        self.decline_key = decline_key
        self.repeat_key = repeat_key

    def script(self, briefing: Briefing) -> str:
        return " ".join(part for part in (self.intro, briefing.summary, self.instructions) if part)

    async def warm_up(self) -> None:
        """Render the fixed texts now, so even the first transfer speaks them at once."""
        await self.tts.synthesize(self.intro)
        await self.tts.synthesize(self.caller_left)

    async def notify_caller_left(self, leg: ConsultLeg) -> None:
        """Tell the human the caller is gone: fixed text, never the briefing again.

        The driver calls this only after the consult (and with it the briefing) has stopped.
        """
        await leg.play(await self.tts.synthesize(self.caller_left))

    async def prepare(self, briefing: Briefing) -> ScriptedPrepared:
        rest = sentences(" ".join(p for p in (briefing.summary, self.instructions) if p))
        return ScriptedPrepared(await self.tts.synthesize(self.intro), tuple(rest))

    async def consult(self, leg: ConsultLeg, prepared: object) -> Decision:
        if not isinstance(prepared, ScriptedPrepared):
            raise TypeError("ScriptedConsultant.consult needs what its own prepare() returned")
        speaking = asyncio.ensure_future(self._speak(leg, prepared))
        try:
            while True:
                key = await leg.next_key()
                if key == self.accept_key:
                    return Decision(Verdict.ACCEPT, via=f"key {key}")
                if key == self.decline_key:
                    return Decision(Verdict.DECLINE, via=f"key {key}", reason="declined by key")
                if key == self.repeat_key:
                    await _stop(leg, speaking)
                    speaking = asyncio.ensure_future(self._speak(leg, prepared))
        finally:
            await _stop(leg, speaking)

    async def _speak(self, leg: ConsultLeg, prepared: ScriptedPrepared) -> None:
        """Play the opening, rendering each next sentence while the current one plays."""
        upcoming = [asyncio.ensure_future(self.tts.synthesize(text)) for text in prepared.rest[:1]]
        try:
            await leg.play(prepared.opening)
            for index in range(len(prepared.rest)):
                if index + 1 < len(prepared.rest):
                    upcoming.append(
                        asyncio.ensure_future(self.tts.synthesize(prepared.rest[index + 1]))
                    )
                await leg.play(await upcoming[index])
        finally:
            for task in upcoming:
                task.cancel()
            await asyncio.gather(*upcoming, return_exceptions=True)


async def _stop(leg: ConsultLeg, task: asyncio.Future[None]) -> None:
    """Stop speaking at once (a key was pressed) and wait for the speaking task to wind down."""
    leg.stop_playback()
    if not task.done():
        task.cancel()
    with contextlib.suppress(asyncio.CancelledError, Exception):
        await task

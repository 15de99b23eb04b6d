"""The scripted consultant: the AI speaks first the moment the human answers, and the human
decides with a key. Deterministic by design: a key press cannot be misheard or talked around,
which is what a contact centre wants from a transfer it may be audited on.

The briefing is rendered to audio in `prepare`, while the target is still ringing, so the first
word plays as soon as the call is answered instead of after a text-to-speech round.
"""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass

from warmtransfer.consult.ports import Briefing, ConsultLeg, Decision, Verdict
from warmtransfer.media.audio import AudioClip
from warmtransfer.speech.tts import TextToSpeech


@dataclass(frozen=True)
class ScriptedPrepared:
    text: str
    clip: AudioClip


class ScriptedConsultant:
    def __init__(
        self,
        tts: TextToSpeech,
        *,
        intro: str = "Hello, this is the virtual assistant with a call transfer.",
        instructions: str = "Press 1 to take the call, or 2 to decline. Press 9 to hear this again.",
        accept_key: str = "1",
        decline_key: str = "2",
        repeat_key: str = "9",
    ) -> None:
        self.tts = tts
        self.intro = intro
        self.instructions = instructions
        self.accept_key = accept_key
        self.decline_key = decline_key
        self.repeat_key = repeat_key

    def script(self, briefing: Briefing) -> str:
        return " ".join(part for part in (self.intro, briefing.summary, self.instructions) if part)

    async def prepare(self, briefing: Briefing) -> ScriptedPrepared:
        text = self.script(briefing)
        return ScriptedPrepared(text, await self.tts.synthesize(text))

    async def consult(self, leg: ConsultLeg, prepared: object) -> Decision:
        if not isinstance(prepared, ScriptedPrepared):
            raise TypeError("ScriptedConsultant.consult needs what its own prepare() returned")
        playing = asyncio.ensure_future(leg.play(prepared.clip))
        try:
            while True:
                key = await leg.next_key()
                if key == self.accept_key:
                    return Decision(Verdict.ACCEPT, via=f"key {key}")
                if key == self.decline_key:
                    return Decision(Verdict.DECLINE, via=f"key {key}", reason="declined by key")
                if key == self.repeat_key:
                    leg.stop_playback()
                    await _finish(playing)
                    playing = asyncio.ensure_future(leg.play(prepared.clip))
        finally:
            leg.stop_playback()
            await _finish(playing)


async def _finish(task: asyncio.Future[None]) -> None:
    """Let a stopped playback wind down (it ends at once) without leaking its task."""
    if not task.done():
        task.cancel()
    with contextlib.suppress(asyncio.CancelledError, Exception):
        await task

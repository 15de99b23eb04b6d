"""The scripted consultant: the AI speaks first the moment the human answers, and the human
decides with a key or a word. Deterministic by design: the same answer always means the same
thing and nothing can be talked around, which is what a contact centre wants from a transfer it
may be audited on.

The briefing is spoken sentence by sentence. The opening sentence is fixed text, rendered in
`prepare` (and cached by the TTS, so after the first transfer it costs nothing): the human hears
it the moment they answer. Each following sentence is rendered while the one before it plays,
so the first word never waits for the whole briefing to be synthesised (piper needs ~2.7 s for
a 15 s briefing on this machine, longer than many humans take to answer).

While it speaks, it listens (`Ears`), when given a `spotter` and/or an `answer_detector`:
- Answer detection runs on the first seconds of the human's audio. A voicemail greeting or a
  phone tree ends the consult at once (verdict VOICEMAIL, never bridged); with
  `voicemail_message` set, that text is left after the greeting's beep (or its end) first.
- Spoken answers ("yes", "no", "repeat", as the spotter's phrases map them) count like keys,
  but only once the answer is known to be a person (or silence): a greeting saying "no one is
  available" must not decline the call. Keys count at once, always.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

from warmtransfer.consult.ports import Briefing, ConsultLeg, Decision, LegGone, Verdict
from warmtransfer.media.audio import PHONE_RATE, AudioClip
from warmtransfer.speech.answering import AnswerDetector, AnswerKind, AnswerVerdict, BeepDetector
from warmtransfer.speech.stt import KeywordSpotter, Spotted, SpotterSession
from warmtransfer.speech.tts import TextToSpeech
from warmtransfer.speech.vad import SpeechEnded, SpeechStarted, VoiceActivityDetector

log = logging.getLogger(__name__)

INTRO = "Hello, this is the virtual assistant with a call transfer."
INSTRUCTIONS = (
    "Press 1 or say yes to take the call, or press 2 or say no to decline. "
    "Press 9 or say repeat to hear this again."
)
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+")
GREETING_WAIT = 30.0  # the longest we wait for a voicemail greeting to end before speaking
GREETING_OVER_SILENCE = 1.0  # quiet after a greeting (with no beep) that means "record now"


def sentences(text: str) -> list[str]:
    return [part.strip() for part in _SENTENCE_END.split(text) if part.strip()]


@dataclass(frozen=True)
class ScriptedPrepared:
    opening: AudioClip
    rest: tuple[str, ...]

    @property
    def text(self) -> str:
        return " ".join(self.rest)


@dataclass(frozen=True)
class Heard:
    """Something the human did: a key, a word, how they answered, or a greeting ending."""

    kind: str  # "key", "said", "answer", "greeting_over", "gone"
    value: str = ""
    verdict: AnswerVerdict | None = None


class ScriptedConsultant:
    def __init__(
        self,
        tts: TextToSpeech,
        *,
        intro: str = INTRO,
        instructions: str = INSTRUCTIONS,
        caller_left: str = "The caller has hung up, so there is no call to take. Goodbye.",
        caller_cancelled: str = "The caller no longer wants to wait. Goodbye.",
        accept_key: str = "1",
        decline_key: str = "2",
        repeat_key: str = "9",
        spotter: KeywordSpotter | None = None,
        answer_detector: AnswerDetector | None = None,
        voicemail_message: str | None = None,
    ) -> None:
        """`spotter`: hears spoken answers; its phrases' meanings "accept", "decline" and
        "repeat" act like the keys (speech.stt.DEFAULT_PHRASES plus, for answer detection,
        speech.answering.MACHINE_PHRASES). `answer_detector`: recognises voicemail and phone
        trees (share the spotter with it: one decoder per call). `voicemail_message`: left on a
        voicemail after its beep; None leaves nothing."""
        self.tts = tts
        self.intro = intro
        self.instructions = instructions
        self.caller_left = caller_left
        self.caller_cancelled = caller_cancelled
        self.accept_key = accept_key
        self.decline_key = decline_key
        self.repeat_key = repeat_key
        self.spotter = spotter
        self.answer_detector = answer_detector
        self.voicemail_message = voicemail_message

    def script(self, briefing: Briefing) -> str:
        return " ".join(part for part in (self.intro, briefing.summary, self.instructions) if part)

    async def warm_up(self) -> None:
        """Render the fixed texts now, so even the first transfer speaks them at once."""
        await self.tts.synthesize(self.intro)
        await self.tts.synthesize(self.caller_left)
        await self.tts.synthesize(self.caller_cancelled)
        if self.voicemail_message:
            await self.tts.synthesize(self.voicemail_message)
        if self.spotter is not None:
            await self.spotter.warm_up()  # a decoder ready for the first call

    async def notify_caller_left(self, leg: ConsultLeg) -> None:
        """Tell the human the caller is gone: fixed text, never the briefing again.

        The driver calls this only after the consult (and with it the briefing) has stopped.
        """
        await leg.play(await self.tts.synthesize(self.caller_left))

    async def notify_caller_cancelled(self, leg: ConsultLeg) -> None:
        """Tell the human the caller stopped waiting (pressed * or chose to leave a message):
        fixed text, like the caller-left notice."""
        await leg.play(await self.tts.synthesize(self.caller_cancelled))

    async def prepare(self, briefing: Briefing) -> ScriptedPrepared:
        rest = sentences(" ".join(p for p in (briefing.summary, self.instructions) if p))
        return ScriptedPrepared(await self.tts.synthesize(self.intro), tuple(rest))

    async def consult(self, leg: ConsultLeg, prepared: object) -> Decision:
        if not isinstance(prepared, ScriptedPrepared):
            raise TypeError("ScriptedConsultant.consult needs what its own prepare() returned")
        heard: asyncio.Queue[Heard] = asyncio.Queue()
        ears = Ears(leg, heard, self.spotter, self.answer_detector)
        speaking = asyncio.ensure_future(self._speak(leg, prepared))
        # Neither helper raises (each reports through `heard`), so plain tasks, awaited below
        # on every exit, are enough; a TaskGroup would wrap LegGone in an ExceptionGroup.
        helpers = [
            asyncio.ensure_future(read_keys(leg, heard)),
            asyncio.ensure_future(ears.run()),
        ]
        try:
            return await self._decide(leg, prepared, heard, ears, speaking)
        finally:
            for task in helpers:
                task.cancel()
            await asyncio.gather(*helpers, return_exceptions=True)
            await stop_speaking(leg, speaking)

    async def _decide(
        self,
        leg: ConsultLeg,
        prepared: ScriptedPrepared,
        heard: asyncio.Queue[Heard],
        ears: Ears,
        speaking: asyncio.Future[None],
    ) -> Decision:
        while True:
            item = await heard.get()
            if item.kind == "gone":
                raise LegGone(item.value)
            if item.kind == "answer" and item.verdict is not None:
                if item.verdict.kind.is_machine:
                    await stop_speaking(leg, speaking)
                    return await self.on_machine(leg, item.verdict, heard)
                continue
            if item.kind == "said" and not ears.person:
                continue  # maybe a greeting's words: wait until we know who answered
            meaning = self.meaning_of(item)
            via = f"key {item.value}" if item.kind == "key" else f"said {item.value!r}"
            if meaning == "accept":
                return Decision(Verdict.ACCEPT, via=via)
            if meaning == "decline":
                return Decision(Verdict.DECLINE, via=via, reason=f"declined ({via})")
            if meaning == "repeat":
                await stop_speaking(leg, speaking)
                speaking = asyncio.ensure_future(self._speak(leg, prepared))

    def meaning_of(self, item: Heard) -> str | None:
        if item.kind == "said":
            return self._said.get(item.value)
        if item.kind == "key":
            return {
                self.accept_key: "accept",
                self.decline_key: "decline",
                self.repeat_key: "repeat",
            }.get(item.value)
        return None

    @property
    def _said(self) -> dict[str, str]:
        return dict(self.spotter.phrases) if self.spotter is not None else {}

    async def on_machine(
        self, leg: ConsultLeg, verdict: AnswerVerdict, heard: asyncio.Queue[Heard]
    ) -> Decision:
        """A machine answered: leave the message on a voicemail if asked, then report it."""
        via = f"answer detection: {verdict.kind}, {verdict.why}"
        if verdict.kind is AnswerKind.VOICEMAIL and self.voicemail_message:
            message = await self.tts.synthesize(self.voicemail_message)
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(GREETING_WAIT):
                    while (await heard.get()).kind != "greeting_over":
                        pass
            await leg.play(message)
            via += "; message left"
        return Decision(Verdict.VOICEMAIL, via=via, reason=str(verdict.kind))

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


async def read_keys(leg: ConsultLeg, heard: asyncio.Queue[Heard]) -> None:
    try:
        while True:
            heard.put_nowait(Heard("key", await leg.next_key()))
    except LegGone as exc:
        heard.put_nowait(Heard("gone", str(exc)))


class Ears:
    """The consult's listening: spoken answers, answer detection, and the end of a greeting.

    One task reads the human's frames; the spotter's session (one decoder) serves both the
    answers and the detector's machine phrases. `person` turns true once the detector has heard
    a person (or silence), or at once when there is no detector.
    """

    def __init__(
        self,
        leg: ConsultLeg,
        heard: asyncio.Queue[Heard],
        spotter: KeywordSpotter | None,
        detector: AnswerDetector | None,
    ) -> None:
        self.leg = leg
        self.heard = heard
        self.spotter = spotter
        self.answer = detector.session() if detector is not None else None
        self.person = detector is None
        self._greeting_over = False
        self._vad: VoiceActivityDetector | None = None
        self._beep: BeepDetector | None = None
        self._quiet_since: float | None = None
        self._seconds = 0.0

    async def run(self) -> None:
        """Listen until cancelled. A failing recogniser costs the spoken answers and answer
        detection of this call, never the consult: keys still decide."""
        try:
            await self._listen()
        except Exception:
            log.exception("listening to the human failed; keys only from now on")
            self.person = True

    async def _listen(self) -> None:
        if self.spotter is None and self.answer is None:
            return
        frames: asyncio.Queue[NDArray[np.int16]] = asyncio.Queue()
        async with contextlib.AsyncExitStack() as stack:
            session: SpotterSession | None = None
            if self.spotter is not None:
                session = await stack.enter_async_context(self.spotter.listen())
            stack.enter_context(self.leg.listening(frames.put_nowait))
            while True:
                frame = await frames.get()
                hits = await session.feed(frame) if session is not None else []
                self._seconds += len(frame) / PHONE_RATE
                for hit in hits:
                    self.heard.put_nowait(Heard("said", hit.phrase))
                self._judge(frame, hits)

    def _judge(self, frame: NDArray[np.int16], hits: list[Spotted]) -> None:
        answer = self.answer
        if answer is not None and answer.verdict is None:
            verdict = answer.feed(frame, hits)
            if verdict is not None:
                log.info("answered by: %s (%s, at %.2f s)", verdict.kind, verdict.why, verdict.at)
                self.person = not verdict.kind.is_machine
                self.heard.put_nowait(Heard("answer", verdict.kind, verdict))
                if verdict.kind is AnswerKind.VOICEMAIL:
                    self._vad = VoiceActivityDetector(hangover_ms=300)
                    self._beep = answer.beep
                    if verdict.beep_at is not None:
                        self._over()
            return
        if self._vad is None or self._beep is None or self._greeting_over:
            return
        if self._beep.feed(frame) is not None:
            self._over()
            return
        for event in self._vad.feed(frame):
            if isinstance(event, SpeechStarted):
                self._quiet_since = None
            elif isinstance(event, SpeechEnded):
                self._quiet_since = self._seconds
        if not self._vad.speaking and self._quiet_since is None:
            self._quiet_since = self._seconds
        if (
            self._quiet_since is not None
            and self._seconds - self._quiet_since >= GREETING_OVER_SILENCE
        ):
            self._over()

    def _over(self) -> None:
        self._greeting_over = True
        self.heard.put_nowait(Heard("greeting_over"))


async def stop_speaking(leg: ConsultLeg, task: asyncio.Future[None]) -> None:
    """Stop speaking at once (a key was pressed) and wait for the speaking task to wind down."""
    leg.stop_playback()
    if not task.done():
        task.cancel()
    with contextlib.suppress(asyncio.CancelledError, Exception):
        await task

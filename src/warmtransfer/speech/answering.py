"""Who answered: a person, a voicemail greeting, or a phone tree. Decided from the first seconds
of the target's audio, while the AI already speaks its opening line.

A machine must never be bridged to a caller, and a transfer that reached one should fail fast
(reason voicemail) so the next target can be tried. Carriers' answering-machine detection works
on the shape of the greeting, and so does this, with three kinds of evidence, first found wins:
- Words. A keyword spotter (pocketsphinx, offline) listens for what machines say and people do
  not: "leave a message", "after the tone", "not available" (voicemail); "press one", "your call
  is important", "main menu" (phone tree). Each phrase is a few hundred ms of audio after it is
  said, so this is usually the fastest evidence.
- A beep: a steady pure tone (one strong spectral peak, 300-3400 Hz, at least `beep_ms`) is the
  end of a voicemail greeting. Speech is never that pure: voiced sounds have harmonics.
- The shape of the first speech (voice activity): a person says a short "Hello?" (or "Support,
  this is Sam") and waits for an answer; a greeting talks on for seconds without a real pause.
  First speech longer than `greeting_max` is a machine; first speech that ends and is followed
  by `human_silence` of quiet is a person.
Whatever is undecided when `budget` seconds of audio have been heard is settled then: speech still
going on is a machine, some speech is a person, none at all is UNKNOWN (silence: a person who
waits for us to speak, or a dead line). Times are seconds of audio heard, not wall-clock time.

Measured on greetings spoken by piper and sent over RTP (tests/unit/test_answering.py): a person
is recognised 0.6-0.9 s after they stop talking, a voicemail greeting by its words or after
`greeting_max` of talk, whichever is first.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import Protocol

import numpy as np
from numpy.typing import NDArray

from warmtransfer.media.audio import PHONE_RATE
from warmtransfer.media.session import AudioSink
from warmtransfer.speech.stt import KeywordSpotter, Spotted, SpotterSession
from warmtransfer.speech.vad import SpeechEnded, SpeechStarted, VoiceActivityDetector

__all__ = [
    "MACHINE_PHRASES",
    "AnswerDetector",
    "AnswerKind",
    "AnswerVerdict",
    "BeepDetector",
    "Listening",
]


class AnswerKind(StrEnum):
    HUMAN = "human"
    VOICEMAIL = "voicemail"
    PHONE_TREE = "phone_tree"
    UNKNOWN = "unknown"  # nothing heard within the budget

    @property
    def is_machine(self) -> bool:
        return self in (AnswerKind.VOICEMAIL, AnswerKind.PHONE_TREE)


MACHINE_PHRASES: Mapping[str, str] = {
    "leave a message": AnswerKind.VOICEMAIL,
    "leave your message": AnswerKind.VOICEMAIL,
    "after the tone": AnswerKind.VOICEMAIL,
    "after the beep": AnswerKind.VOICEMAIL,
    "not available": AnswerKind.VOICEMAIL,
    "voicemail": AnswerKind.VOICEMAIL,
    "record your message": AnswerKind.VOICEMAIL,
    "press one": AnswerKind.PHONE_TREE,
    "press two": AnswerKind.PHONE_TREE,
    "your call is important": AnswerKind.PHONE_TREE,
    "main menu": AnswerKind.PHONE_TREE,
    "please stay on the line": AnswerKind.PHONE_TREE,
    "all of our agents": AnswerKind.PHONE_TREE,
}
"""Phrase -> what says it. Spoken by machines, rarely by a person picking up a call."""


@dataclass(frozen=True)
class AnswerVerdict:
    kind: AnswerKind
    at: float  # seconds of the target's audio heard when it was decided
    why: str  # for logs, events and the handoff record: what gave it away
    phrase: str | None = None
    beep_at: float | None = None  # where a beep ended, if one was heard (leave a message then)


class Listening(Protocol):
    """Where the audio comes from: a consult leg (`ConsultLeg.listening`)."""

    def listening(self, sink: AudioSink) -> contextlib.AbstractContextManager[None]: ...


class BeepDetector:
    """Finds a steady pure tone: the beep that ends a voicemail greeting.

    Per 20 ms frame: the share of the phone band's energy within one FFT bin (±50 Hz) of the
    strongest peak. A sine is over 0.9; a vowel, whose energy is spread over its harmonics, is
    under 0.6 (measured on piper speech). `beep_ms` of frames in a row, above `min_dbfs`, with
    the peak at the same frequency (±1 bin), is a beep.
    """

    def __init__(
        self,
        *,
        beep_ms: int = 160,
        purity: float = 0.8,
        min_dbfs: float = -40.0,
        rate: int = PHONE_RATE,
    ) -> None:
        self.frame = rate // 50
        self.rate = rate
        self.needed = max(1, beep_ms // 20)
        self.purity = purity
        self.min_power = (32768.0**2) * 10 ** (min_dbfs / 10)
        freqs = np.fft.rfftfreq(self.frame, 1 / rate)
        self.band = (freqs >= 300) & (freqs <= 3400)
        self.window = np.hanning(self.frame)
        self._buffer = np.zeros(0, dtype=np.int16)
        self._run = 0
        self._peak: int | None = None
        self._seconds = 0.0
        self.frequency: float | None = None

    def feed(self, samples: NDArray[np.int16]) -> float | None:
        """Take audio; return the time (seconds fed) at which a beep is complete, or None."""
        self._buffer = np.concatenate((self._buffer, samples))
        found: float | None = None
        while len(self._buffer) >= self.frame:
            chunk, self._buffer = self._buffer[: self.frame], self._buffer[self.frame :]
            self._seconds += self.frame / self.rate
            if self._tonal(chunk):
                self._run += 1
                if self._run >= self.needed and found is None:
                    found = self._seconds
            else:
                self._run = 0
                self._peak = None
        return found

    def _tonal(self, chunk: NDArray[np.int16]) -> bool:
        x = chunk.astype(np.float64)
        if float(np.dot(x, x)) / len(x) < self.min_power:
            return False
        spectrum = np.abs(np.fft.rfft(x * self.window)) ** 2
        band = np.where(self.band, spectrum, 0.0)
        total = float(band.sum())
        if total <= 0.0:
            return False
        peak = int(np.argmax(band))
        near = float(band[max(0, peak - 1) : peak + 2].sum())
        if near / total < self.purity:
            return False
        if self._peak is not None and abs(peak - self._peak) > 1:
            self._run = 0
        self._peak = peak
        self.frequency = peak * self.rate / self.frame
        return True


class AnswerDetector:
    """Classifies how a call was answered; one detector serves any number of calls.

    `spotter`: a KeywordSpotter whose phrases include MACHINE_PHRASES (meanings "voicemail" and
    "phone_tree"; other meanings are ignored here, so one spotter can also hear "yes"/"no").
    None uses voice activity and the beep only.
    """

    def __init__(
        self,
        spotter: KeywordSpotter | None = None,
        *,
        budget: float = 4.0,
        greeting_max: float = 2.6,
        human_silence: float = 0.7,
        beep_ms: int = 160,
    ) -> None:
        if budget <= 0 or greeting_max <= 0 or human_silence <= 0:
            raise ValueError("answer detection times must be positive")
        self.spotter = spotter
        self.budget = budget
        self.greeting_max = greeting_max
        self.human_silence = human_silence
        self.beep_ms = beep_ms

    def session(self) -> AnswerSession:
        return AnswerSession(self)

    async def classify(
        self, leg: Listening, spotting: SpotterSession | None = None
    ) -> AnswerVerdict:
        """Listen to `leg` until a verdict (at most `budget` seconds of audio, or that long in
        wall-clock time if the leg sends nothing at all). `spotting`: a session the caller
        already runs on this leg (to share one decoder); otherwise one is opened here."""
        frames: asyncio.Queue[NDArray[np.int16]] = asyncio.Queue()
        session = self.session()
        async with contextlib.AsyncExitStack() as stack:
            if spotting is None and self.spotter is not None:
                spotting = await stack.enter_async_context(self.spotter.listen())
            stack.enter_context(leg.listening(frames.put_nowait))
            loop = asyncio.get_running_loop()
            deadline = loop.time() + self.budget + 1.0  # audio time, plus a margin for RTP
            while True:
                try:
                    async with asyncio.timeout_at(deadline):
                        frame = await frames.get()
                except TimeoutError:
                    return session.settle()
                hits = await spotting.feed(frame) if spotting is not None else []
                verdict = session.feed(frame, hits)
                if verdict is not None:
                    return verdict


class AnswerSession:
    """The evidence about one answered call, fed frame by frame (sans-IO)."""

    def __init__(self, detector: AnswerDetector) -> None:
        self.detector = detector
        # A pause under half a second is inside a greeting (between its sentences), not a
        # person waiting for us to speak.
        self.vad = VoiceActivityDetector(hangover_ms=500)
        self.beep = BeepDetector(beep_ms=detector.beep_ms)
        self.seconds = 0.0
        self.first_speech: tuple[float, float | None] | None = None  # (start, end)
        self.verdict: AnswerVerdict | None = None

    def feed(self, frame: NDArray[np.int16], hits: list[Spotted]) -> AnswerVerdict | None:
        if self.verdict is not None:
            return self.verdict
        self.seconds += len(frame) / PHONE_RATE
        for hit in hits:
            if hit.meaning in (AnswerKind.VOICEMAIL, AnswerKind.PHONE_TREE):
                kind = AnswerKind(hit.meaning)
                return self._decide(kind, f"said {hit.phrase!r}", phrase=hit.phrase)
        beep = self.beep.feed(frame)
        if beep is not None:
            return self._decide(AnswerKind.VOICEMAIL, "a beep", beep_at=beep)
        for event in self.vad.feed(frame):
            if isinstance(event, SpeechStarted) and self.first_speech is None:
                self.first_speech = (event.at_seconds, None)
            elif (
                isinstance(event, SpeechEnded)
                and self.first_speech is not None
                and self.first_speech[1] is None
            ):
                self.first_speech = (self.first_speech[0], event.at_seconds)
        return self._judge()

    def _judge(self) -> AnswerVerdict | None:
        detector = self.detector
        if self.first_speech is not None:
            start, end = self.first_speech
            talking = (end if end is not None else self.seconds) - start
            if talking > detector.greeting_max:
                return self._decide(
                    AnswerKind.VOICEMAIL, f"talked {talking:.1f} s without waiting for us"
                )
            if end is not None and self.seconds - end >= detector.human_silence:
                return self._decide(
                    AnswerKind.HUMAN, f"said {end - start:.1f} s, then waited for us"
                )
        if self.seconds >= detector.budget:
            return self.settle()
        return None

    def settle(self) -> AnswerVerdict:
        """The verdict with what has been heard so far (the budget is spent)."""
        if self.verdict is not None:
            return self.verdict
        if self.first_speech is None:
            return self._decide(AnswerKind.UNKNOWN, "nothing said")
        start, end = self.first_speech
        if end is None and self.seconds - start > self.detector.greeting_max:
            return self._decide(AnswerKind.VOICEMAIL, "still talking at the end of the budget")
        return self._decide(AnswerKind.HUMAN, "spoke briefly")

    def _decide(
        self,
        kind: AnswerKind,
        why: str,
        *,
        phrase: str | None = None,
        beep_at: float | None = None,
    ) -> AnswerVerdict:
        self.verdict = AnswerVerdict(kind, round(self.seconds, 3), why, phrase, beep_at)
        return self.verdict

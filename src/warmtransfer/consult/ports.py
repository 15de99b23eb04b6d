"""What a consultant needs from the human's leg, and what it answers.

These protocols live in the consult layer (below transfer) so that a consultant can be written
and tested without the transfer driver, and so every backend's target leg can serve it.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Protocol

import numpy as np
from numpy.typing import NDArray

from warmtransfer.media.audio import AudioClip

AudioSink = Callable[[NDArray[np.int16]], None]


class LegGone(Exception):
    """The leg ended (the far end hung up) while something was being done on it."""


class Verdict(StrEnum):
    ACCEPT = "accept"
    DECLINE = "decline"
    VOICEMAIL = "voicemail"


@dataclass(frozen=True)
class Decision:
    verdict: Verdict
    via: str = ""  # how it was decided: "key 1", "speech yes", "llm tool"
    reason: str | None = None


class ConsultLeg(Protocol):
    """The target's leg as a consultant sees it: speak to the human, hear their keys."""

    async def play(self, clip: AudioClip) -> None:
        """Play to the end, or return early if stopped; raise LegGone if the human hangs up."""
        ...

    def stop_playback(self) -> None:
        """Stop what is playing at once (barge-in, a key pressed mid-briefing)."""
        ...

    async def next_key(self) -> str:
        """The next DTMF digit the human presses; raise LegGone if the human hangs up."""
        ...

    def listening(self, sink: AudioSink) -> AbstractContextManager[None]:
        """Inside the block, what the human says reaches `sink` as it arrives: 8 kHz 16-bit
        PCM frames (20 ms on a phone leg), in order, with nothing of our own playback mixed in.
        How speech answers, barge-in and answer detection hear the human."""
        ...


@dataclass(frozen=True)
class Turn:
    """One turn of the caller's conversation with the AI."""

    speaker: str  # "caller" or "agent"
    text: str


@dataclass(frozen=True)
class Briefing:
    """What the human is told: a short summary plus the conversation it came from."""

    summary: str
    caller: str | None = None
    transcript: tuple[Turn, ...] = ()
    facts: dict[str, str] = field(default_factory=dict)


class Consultant(Protocol):
    """Briefs a human and gets their decision.

    `prepare` runs while the target rings so the briefing is ready the moment they answer;
    `consult` runs once they answer. The driver enforces the consult deadline by cancelling
    `consult`, so a consultant need not keep its own.
    """

    async def prepare(self, briefing: Briefing) -> object: ...

    async def consult(self, leg: ConsultLeg, prepared: object) -> Decision: ...

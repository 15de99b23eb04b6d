"""The pieces of a conversation with the caller that every agent needs, whatever its script:
hearing one turn (until the caller pauses), reading keys up to the pound key, and saying why a
transfer failed in words a caller understands.

They live here, not in one agent, because the demo's agent, the service's built-in scripted
agent and `CallSession` (the API of Python agents) all use them, and a fix to how a turn ends
or how a failure is worded must reach all three.
"""

from __future__ import annotations

import asyncio
import contextlib

import numpy as np
from numpy.typing import NDArray

from warmtransfer.backends.sip import SipCallerLeg, until_ended
from warmtransfer.media.audio import PHONE_RATE, AudioClip
from warmtransfer.media.levels import EndOfSpeech
from warmtransfer.transfer.outcome import Failed, Reason, TransferOutcome

__all__ = ["FAILURE_WORDS", "failure_words", "read_digits", "record_turn"]

FAILURE_WORDS = {
    Reason.DECLINED: "they could not take the call just now",
    Reason.BUSY: "the line was busy",
    Reason.NO_ANSWER: "nobody answered",
    Reason.TARGET_HUNG_UP: "they had to hang up",
    Reason.CONSULT_TIMEOUT: "they did not pick up the transfer in time",
    Reason.VOICEMAIL: "I reached a voicemail",
    Reason.CANCELLED_BY_CALLER: "you asked to stop waiting",
}
"""Why a transfer failed, as the AI tells the caller (the rest: "something went wrong")."""

UNKNOWN_FAILURE = "something went wrong on the line"


def failure_words(outcome: TransferOutcome) -> str | None:
    """Why `outcome` failed, to say to the caller; None when there is nothing to explain (it
    completed, the caller left, or a message was taken: those have their own words)."""
    if not isinstance(outcome, Failed) or outcome.reason in (
        Reason.CALLER_HUNG_UP,
        Reason.MESSAGE_LEFT,
    ):
        return None
    return FAILURE_WORDS.get(outcome.reason, UNKNOWN_FAILURE)


async def record_turn(
    leg: SipCallerLeg, timeout: float = 20.0, *, silence_ms: int = 700
) -> AudioClip | None:
    """The caller's next turn: their audio from now until they pause after speaking.

    At `timeout` the turn ends anyway, with what was heard (a caller who talks on is still
    heard); None if nothing at all arrived. Raises `LegGone` the moment the caller hangs up:
    nobody is left to answer, and an agent must not wait out `timeout` to learn it. Frames are
    copied because the media layer reuses its buffers."""
    done = asyncio.Event()
    detector = EndOfSpeech(silence_ms=silence_ms)
    frames: list[NDArray[np.int16]] = []

    def sink(frame: NDArray[np.int16]) -> None:
        frames.append(frame.copy())
        if detector.feed(frame):
            done.set()

    with leg.ai_listening(sink), contextlib.suppress(TimeoutError):
        async with asyncio.timeout(timeout):
            await until_ended(leg.call, done.wait())
    if not frames:
        return None
    return AudioClip(np.concatenate(frames), PHONE_RATE)


async def read_digits(leg: SipCallerLeg, timeout: float = 20.0, *, end: str = "#") -> str:
    """Keys up to `end` (not included), as IVRs take an account number. Raises TimeoutError
    when the caller has not finished by `timeout`: a half-typed number is not a number."""
    digits = ""
    async with asyncio.timeout(timeout):
        while (key := await leg.agent_key()) != end:
            digits += key
    return digits

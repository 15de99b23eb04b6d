"""The service's built-in agent (``[agent] entrypoint = "scripted"``): a small IVR in front of
humans, enough to put a real phone line on warm transfers without writing an agent.

    greeting + menu --(0, or "agent" / "representative" / "person")--> hold, warm transfer
         ^   |--(1, or silence)--> menu again (at most MENU_TRIES times, then goodbye)
         |   '--(any other key)--> "not an option", menu again
         '--- transfer failed: the caller hears why, and gets the menu again

The caller may answer over the menu (barge-in): a key or a spotted word cuts the prompt short,
as callers who know the menu expect. Speech is keyword-spotted (pocketsphinx), not transcribed:
three words are reliable on 8 kHz phone audio, free transcription is not. The briefing tells the
human how the caller asked for a person and who is calling (from caller ID).
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass

from warmtransfer.consult.ports import Turn
from warmtransfer.server.conversation import failure_words
from warmtransfer.server.session import CallSession
from warmtransfer.speech.stt import KeywordSpotter
from warmtransfer.transfer.outcome import Failed, Reason

__all__ = ["AGENT_PHRASES", "ScriptedAgent"]

log = logging.getLogger("warmtransfer.agent")

AGENT_PHRASES = {"agent": "agent", "representative": "agent", "person": "agent"}
"""What a caller says to ask for a human (keyword spotting)."""

GREETING = "Thank you for calling."
MENU = "To speak with a person, press 0 or say agent. To hear this menu again, press 1."
NOT_AN_OPTION = "Sorry, that is not an option."
HOLD_NOTICE = "Please hold while I connect you with a person."
MESSAGE_TAKEN = "Thank you, your message is recorded. We will call you back. Goodbye."
GOODBYE = "Thank you for calling. Goodbye."
MENU_TRIES = 3
"""How many times the menu is offered with no choice (silence) before the call is ended."""
TURN_TIMEOUT = 10.0


@dataclass(frozen=True)
class _Choice:
    key: str | None = None  # a key pressed
    said: str | None = None  # a phrase spotted


class ScriptedAgent:
    """Callable per call (`await agent(session)`); one spotter shared by every call (it pools
    its decoders), made, warmed and closed by the service."""

    def __init__(self, spotter: KeywordSpotter | None = None) -> None:
        self.spotter = spotter or KeywordSpotter(AGENT_PHRASES)

    async def warm_up(self) -> None:
        await self.spotter.warm_up()

    def close(self) -> None:
        self.spotter.close()

    async def __call__(self, session: CallSession) -> None:
        await session.say(GREETING)
        unanswered = 0
        while unanswered < MENU_TRIES:
            choice = await self._ask(session, MENU)
            if choice is None or choice.key == "1":
                unanswered += choice is None
                continue
            if choice.key is not None and choice.key != "0":
                await session.say(NOT_AN_OPTION)
                continue
            asked = f"pressed {choice.key}" if choice.key else f"said '{choice.said}'"
            log.info("call %s: caller %s, transferring", session.call_id, asked)
            await session.say(HOLD_NOTICE)
            outcome = await session.warm_transfer(
                facts={"request": f"asked for a person ({asked})"}
            )
            log.info("call %s: transfer outcome %s", session.call_id, _name(outcome))
            if outcome.ok or (
                isinstance(outcome, Failed) and outcome.reason is Reason.CALLER_HUNG_UP
            ):
                return
            if isinstance(outcome, Failed) and outcome.reason is Reason.MESSAGE_LEFT:
                await session.say(MESSAGE_TAKEN)
                await session.hangup()
                return
            why = failure_words(outcome) or "something went wrong on the line"
            await session.say(f"I'm sorry, I could not connect you: {why}.")
            unanswered = 0
        await session.say(GOODBYE)
        await session.hangup()

    async def _ask(self, session: CallSession, prompt: str) -> _Choice | None:
        """Play `prompt` and take the first key or spotted word (during it or up to
        TURN_TIMEOUT after it); None if the caller did neither."""
        speaking = asyncio.ensure_future(session.say(prompt))
        key = asyncio.ensure_future(session.next_key())
        said = asyncio.ensure_future(self._spot(session))
        try:
            done, _ = await asyncio.wait({speaking, key, said}, return_when=asyncio.FIRST_COMPLETED)
            if not done & {key, said}:
                speaking.result()  # raises LegGone if the caller hung up during the prompt
                done, _ = await asyncio.wait(
                    {key, said}, timeout=TURN_TIMEOUT, return_when=asyncio.FIRST_COMPLETED
                )
            if key in done:
                return _Choice(key=key.result())
            if said in done:
                return _Choice(said=said.result())
            return None
        finally:
            if not speaking.done():
                session.stop_speaking()  # barge-in: the caller answered over the prompt
            for task in (speaking, key, said):
                task.cancel()
            await asyncio.gather(speaking, key, said, return_exceptions=True)

    async def _spot(self, session: CallSession) -> str:
        """Spot the agent words in the caller's turns, turn after turn, until one is heard."""
        while True:
            clip = await session.hear(timeout=TURN_TIMEOUT)
            if clip is None:
                continue
            hits = await self.spotter.spot(clip)
            if hits:
                session.transcript.append(Turn("caller", hits[0].phrase))
                return hits[0].phrase


def _name(outcome: object) -> str:
    reason = getattr(outcome, "reason", None)
    return str(getattr(reason, "value", reason)) if reason is not None else "completed"

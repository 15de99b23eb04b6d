"""The demo's scripted AI agent: greets, hears the caller's request, puts them on hold and runs
the warm transfer; on failure it takes the caller back and says what happened.

It has no speech recognition (that arrives with the speech layer): it waits for the caller's
turn to end and takes the words of that turn from the scenario, so the briefing the human hears
is built from the real conversation text.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import numpy as np
from numpy.typing import NDArray

from warmtransfer.backends.sip import SipCallerLeg
from warmtransfer.consult.ports import Briefing, Turn
from warmtransfer.engine import Engine
from warmtransfer.media.levels import EndOfSpeech
from warmtransfer.transfer.events import TransferEvent
from warmtransfer.transfer.outcome import Failed, Reason, TransferOutcome
from warmtransfer.transfer.plan import TransferPlan

GREETING = "Thanks for calling Acme Outfitters. This is the virtual assistant. How can I help?"
HOLD_NOTICE = "I'm sorry about that. Let me get you a person from our billing team. Please hold."

FAILURE_WORDS = {
    Reason.DECLINED: "they could not take the call just now",
    Reason.BUSY: "the line was busy",
    Reason.NO_ANSWER: "nobody answered",
    Reason.TARGET_HUNG_UP: "they had to hang up",
    Reason.CONSULT_TIMEOUT: "they did not pick up the transfer in time",
}


class ScriptedAgent:
    def __init__(
        self,
        engine: Engine,
        plan: TransferPlan,
        caller_words: str,
        narrate: Callable[[str, str], None],
        on_event: Callable[[TransferEvent], None] | None = None,
    ) -> None:
        self.engine = engine
        self.plan = plan
        self.caller_words = caller_words
        self.narrate = narrate
        self.on_event = on_event
        self.transcript: list[Turn] = []
        self.outcome: TransferOutcome | None = None

    async def speak(self, leg: SipCallerLeg, text: str) -> None:
        self.narrate("ai", f'says "{text}"')
        self.transcript.append(Turn("agent", text))
        await leg.say(await self.engine.tts.synthesize(text))

    async def hear_turn(self, leg: SipCallerLeg, timeout: float = 20.0) -> str:
        done = asyncio.Event()
        detector = EndOfSpeech(silence_ms=700)

        def sink(frame: NDArray[np.int16]) -> None:
            if detector.feed(frame):
                done.set()

        with leg.ai_listening(sink):
            async with asyncio.timeout(timeout):
                await done.wait()
        self.transcript.append(Turn("caller", self.caller_words))
        self.narrate("ai", "heard the caller's request")
        return self.caller_words

    def briefing(self) -> Briefing:
        return Briefing(
            summary=(
                "The caller, Jane Doe, was charged twice for order 4 4 1 7, "
                "and would like a refund of the second charge."
            ),
            caller="Jane Doe",
            transcript=tuple(self.transcript),
            facts={"order": "4417", "intent": "refund double charge"},
        )

    async def handle(self, leg: SipCallerLeg) -> TransferOutcome:
        await self.speak(leg, GREETING)
        await self.hear_turn(leg)
        await self.speak(leg, HOLD_NOTICE)
        self.narrate("ai", "starts the warm transfer")
        outcome = await self.engine.warm_transfer(
            leg, self.plan, self.briefing(), on_event=self.on_event
        )
        self.outcome = outcome
        if isinstance(outcome, Failed) and outcome.reason is not Reason.CALLER_HUNG_UP:
            why = FAILURE_WORDS.get(outcome.reason, "something went wrong on the line")
            await self.speak(
                leg,
                f"I'm back. I'm sorry, I couldn't connect you to billing: {why}. "
                "I can take a message, or help you with something else.",
            )
        elif outcome.ok:
            self.narrate("ai", "has left the call")
        return outcome

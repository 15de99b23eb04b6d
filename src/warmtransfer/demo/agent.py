"""The demo's scripted AI agent: greets, listens to the caller, asks for the account number,
puts them on hold and runs the warm transfer; on failure it takes the caller back and says why.

It hears the caller with the offline speech layer, and the demo prints what it heard, so what
the human is told can be traced to the caller's words:
- pocketsphinx transcribes each caller turn into the transcript (on 8 kHz phone audio its free
  transcription is rough; the transcript goes into the handoff record as heard);
- a keyword spotter on the same audio picks out what the call is about ("charged twice",
  "refund", "cancel"...): reliable on phone audio, and the intent the briefing leads with;
- the account number is keyed in (DTMF), the name comes from caller ID. The whisper rests on
  these facts and does not quote the rough transcript (`ExtractiveSummarizer(quote_caller=0)`).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from warmtransfer.backends.sip import SipCallerLeg
from warmtransfer.consult.briefing import SummarizedBriefing, build_briefing
from warmtransfer.consult.ports import Turn
from warmtransfer.consult.summary import ExtractiveSummarizer
from warmtransfer.engine import Engine
from warmtransfer.server.conversation import failure_words, read_digits, record_turn
from warmtransfer.speech.stt import KeywordSpotter, PocketsphinxSTT
from warmtransfer.transfer.events import TransferEvent
from warmtransfer.transfer.outcome import Failed, Reason, TransferOutcome
from warmtransfer.transfer.plan import TransferPlan

GREETING = (
    "Thanks for calling Acme Outfitters. This is the virtual assistant. "
    "In a few words, how can I help?"
)
ASK_ACCOUNT = "I can help with that. Please key in your account number, then press the pound key."
HOLD_NOTICE = "Thank you. Let me get you a person from our billing team. Please hold."

INTENTS = {
    "charged twice": "a double charge",
    "double charge": "a double charge",
    "refund": "a refund",
    "cancel": "a cancellation",
    "password": "a password reset",
    "internet": "an internet problem",
}
"""What the caller may say -> what the call is about (keyword spotting on the caller's turn)."""


def intent_of(meanings: list[str]) -> str:
    """Each meaning once, in the order said: "a double charge and a refund"."""
    unique = list(dict.fromkeys(meanings))
    if len(unique) <= 1:
        return unique[0] if unique else ""
    return ", ".join(unique[:-1]) + " and " + unique[-1]


class ScriptedAgent:
    def __init__(
        self,
        engine: Engine,
        plan: TransferPlan,
        narrate: Callable[[str, str], None],
        on_event: Callable[[TransferEvent], None] | None = None,
        stt: PocketsphinxSTT | None = None,
        spotter: KeywordSpotter | None = None,
    ) -> None:
        self.engine = engine
        self.plan = plan
        self.narrate = narrate
        self.on_event = on_event
        self.stt = stt or PocketsphinxSTT()
        self.spotter = spotter or KeywordSpotter(INTENTS)
        self.transcript: list[Turn] = []
        self.facts: dict[str, str] = {}
        self.briefing: SummarizedBriefing | None = None
        self.outcome: TransferOutcome | None = None

    async def warm_up(self) -> None:
        await self.stt.warm_up()
        await self.spotter.warm_up()

    def close(self) -> None:
        self.stt.close()
        self.spotter.close()

    async def speak(self, leg: SipCallerLeg, text: str) -> None:
        self.narrate("ai", f'says "{text}"')
        self.transcript.append(Turn("agent", text))
        await leg.say(await self.engine.tts.synthesize(text))

    async def hear_turn(self, leg: SipCallerLeg, timeout: float = 20.0) -> str:
        """Record the caller's turn until they pause, then transcribe it and spot its topics."""
        clip = await record_turn(leg, timeout)
        if clip is None:
            raise TimeoutError(f"the caller sent no audio in {timeout} s")
        text, hits = await asyncio.gather(self.stt.transcribe(clip), self.spotter.spot(clip))
        self.transcript.append(Turn("caller", text))
        self.narrate("ai", f'heard (pocketsphinx): "{text}"')
        intent = intent_of([hit.meaning for hit in hits])
        if intent:
            self.facts["intent"] = intent
            self.narrate("ai", f"understood: the call is about {intent}")
        return text

    async def read_digits(self, leg: SipCallerLeg, timeout: float = 20.0) -> str:
        """Keys up to the pound key (the account number), as IVRs take it."""
        digits = await read_digits(leg, timeout)
        self.transcript.append(Turn("caller", f"(keyed in {digits})"))
        self.narrate("ai", f"read the keys: {digits}#")
        return digits

    async def handle(self, leg: SipCallerLeg) -> TransferOutcome:
        caller_name = leg.call.invite.from_.display_name if hasattr(leg.call, "invite") else None
        if caller_name:
            self.facts["name"] = caller_name
        await self.speak(leg, GREETING)
        await self.hear_turn(leg)
        await self.speak(leg, ASK_ACCOUNT)
        account = await self.read_digits(leg)
        if account:
            self.facts["account"] = account
        await self.speak(leg, HOLD_NOTICE)
        self.briefing = await build_briefing(
            self.transcript,
            self.facts,
            caller_name,
            ExtractiveSummarizer(quote_caller=0),
        )
        self.narrate("ai", f'briefing for the human: "{self.briefing.summary}"')
        self.narrate("ai", "starts the warm transfer")
        outcome = await self.engine.warm_transfer(
            leg, self.plan, self.briefing, on_event=self.on_event
        )
        self.outcome = outcome
        if isinstance(outcome, Failed) and outcome.reason is Reason.MESSAGE_LEFT:
            await self.speak(leg, "Thank you, your message is recorded. We will call you back.")
        elif (why := failure_words(outcome)) is not None:
            await self.speak(
                leg,
                f"I'm back. I'm sorry, I couldn't connect you to billing: {why}. "
                "I can take a message, or help you with something else.",
            )
        elif outcome.ok:
            self.narrate("ai", "has left the call")
        return outcome

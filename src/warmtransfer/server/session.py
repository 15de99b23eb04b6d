"""`CallSession`: one inbound call as an AI agent sees it in the service.

An agent (the built-in scripted one, or an application's ``module:function`` named in
``[agent] entrypoint``) gets one `CallSession` per call and talks to the caller through it:

    async def handle_call(call: CallSession) -> None:
        await call.say("Hello, how can I help?")
        heard = await call.listen(timeout=15)
        outcome = await call.warm_transfer("support", facts={"topic": heard})
        if not outcome.ok:
            await call.say("Sorry, nobody could take your call.")

The session hides the SIP objects (an agent does not need them, and they change) and keeps what
a warm transfer needs without the agent collecting it: everything said both ways goes into the
transcript the briefing is built from, the plans come from the config by name, the transfer is
recorded in the records store when there is one, and each transfer event reaches the service's
listeners (webhooks, metrics). `leg` and `engine` stay reachable for an agent that needs more.

What the agent may count on: `say`, `listen` and the key methods raise `LegGone` once the
caller has hung up (so a script ends by itself), and `say` while the caller is on hold or after
the hand-over raises it too (the AI is not on the call then).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING

from warmtransfer.backends.sip import SipCallerLeg
from warmtransfer.consult.briefing import build_briefing
from warmtransfer.consult.handoff import HandoffRecord
from warmtransfer.consult.ports import Briefing, Turn
from warmtransfer.consult.summary import ExtractiveSummarizer, Summarizer
from warmtransfer.server.conversation import read_digits, record_turn
from warmtransfer.server.logs import log_context
from warmtransfer.sip.call import Call
from warmtransfer.speech.stt import SpeechToText
from warmtransfer.transfer.events import TransferEvent
from warmtransfer.transfer.outcome import Failed, TransferOutcome
from warmtransfer.transfer.plan import TransferPlan

if TYPE_CHECKING:
    from warmtransfer.engine import Engine
    from warmtransfer.media.audio import AudioClip
    from warmtransfer.server.recording import RecordedCall

__all__ = ["CallSession", "CallerInfo", "UnknownPlan"]

log = logging.getLogger("warmtransfer.session")


FinishHook = Callable[["CallSession", str, TransferOutcome, HandoffRecord], None]
"""Called when a transfer of the session ends: (session, transfer_id, outcome, record)."""


class UnknownPlan(LookupError):
    """`warm_transfer` was given a plan name the config does not define."""


@dataclass(frozen=True)
class CallerInfo:
    """Who is calling, as the INVITE says (From): nothing here is verified by us."""

    call_id: str
    uri: str
    name: str | None
    number: str | None  # the user part of the URI: a phone number on most trunks

    @classmethod
    def of(cls, call: Call) -> CallerInfo:
        party = getattr(call, "caller", None)
        if party is None:
            return cls(call.call_id, "", None, None)
        return cls(call.call_id, str(party.uri), party.display_name or None, party.uri.user)


class CallSession:
    """One call, for one agent: speak, listen, read keys, transfer, hang up."""

    def __init__(
        self,
        engine: Engine,
        call: Call,
        *,
        plans: Mapping[str, TransferPlan] | None = None,
        default_plan: str | None = None,
        summarizer: Summarizer | None = None,
        stt: SpeechToText | None = None,
        recorded: RecordedCall | None = None,
        on_event: Callable[[CallSession, TransferEvent], None] | None = None,
        on_finish: FinishHook | None = None,
    ) -> None:
        """`plans` (by name) and `default_plan` come from the config; `stt` writes down what
        `listen` hears (None: `listen` is not available, the agent must use keys); `recorded`
        records the transfers; `on_event` sees every transfer event of this call, `on_finish`
        each transfer's outcome and final handoff record (webhooks)."""
        self.engine = engine
        self.call = call
        self.leg: SipCallerLeg = engine.caller_leg(call)
        self.caller = CallerInfo.of(call)
        self.plans: dict[str, TransferPlan] = dict(plans or {})
        self.default_plan = default_plan
        self.summarizer: Summarizer = summarizer or ExtractiveSummarizer()
        self.stt = stt
        self.recorded = recorded
        self.on_event = on_event
        self.on_finish = on_finish
        self.transcript: list[Turn] = []
        self.facts: dict[str, str] = {}
        self.outcomes: list[TransferOutcome] = []
        #: Every transfer this session started, from the moment it is made (the HTTP API asks
        #: which call an agent's transfer belongs to).
        self.transfer_ids: set[str] = set()
        self.briefing: Briefing | None = None
        # Set while no transfer runs: the service waits on it before it ends an agent whose
        # caller hung up, so a transfer reports its own outcome (caller hung up) first.
        self.idle = asyncio.Event()
        self.idle.set()

    # -- state --------------------------------------------------------------------------------

    @property
    def call_id(self) -> str:
        return self.call.call_id

    @property
    def ended(self) -> bool:
        """The caller's call is over (they or we hung up)."""
        return self.call.ended.is_set()

    @property
    def transferred(self) -> bool:
        """The caller talks to a human now: the AI is off the call for good."""
        return self.leg.bridged

    # -- talking ------------------------------------------------------------------------------

    # While a transfer this agent did not start (one started through the HTTP API) holds the
    # caller, the agent is paused: `say`, `hear`, `listen` and `next_key` wait until the caller
    # is back (the transfer failed: the agent carries on where it was) or raise LegGone if the
    # caller was handed over or hung up. A hold that begins while the agent speaks cuts it off.

    async def say(self, text: str) -> None:
        """Speak `text` to the caller; returns when it has been played (or cut off by a hold).
        It joins the transcript the briefing is made from."""
        clip = await self.engine.tts.synthesize(text)
        await self.leg.wait_with_ai()
        self.transcript.append(Turn("agent", text))
        await self.leg.say(clip)

    def stop_speaking(self) -> None:
        """Cut what is being said short (the caller pressed a key or spoke over it)."""
        self.leg.stop_playback()

    async def hear(self, timeout: float = 20.0, *, silence_ms: int = 700) -> AudioClip | None:
        """The caller's next turn as audio (until they pause, at most `timeout`), for an agent
        with its own speech recognition; None when nothing arrived."""
        await self.leg.wait_with_ai()
        return await record_turn(self.leg, timeout, silence_ms=silence_ms)

    async def listen(self, timeout: float = 20.0, *, silence_ms: int = 700) -> str:
        """What the caller says next, written down ("" when they said nothing before
        `timeout`). The turn joins the transcript."""
        if self.stt is None:
            raise RuntimeError("this service has no speech-to-text: use keys instead")
        clip = await self.hear(timeout, silence_ms=silence_ms)
        text = "" if clip is None else await self.stt.transcribe(clip)
        if text:
            self.transcript.append(Turn("caller", text))
        return text

    async def next_key(self, timeout: float | None = None) -> str | None:
        """The next key the caller presses (keys pressed earlier are queued, none is lost);
        None if none came within `timeout`."""
        if timeout is None:
            return await self.leg.agent_key()
        try:
            async with asyncio.timeout(timeout):
                return await self.leg.agent_key()
        except TimeoutError:
            return None

    async def keys(self, timeout: float = 20.0, *, end: str = "#") -> str:
        """Keys up to `end` (an account number and #). Raises TimeoutError if not finished."""
        digits = await read_digits(self.leg, timeout, end=end)
        self.transcript.append(Turn("caller", f"(keyed in {digits})"))
        return digits

    # -- the transfer -------------------------------------------------------------------------

    def plan(self, plan: str | TransferPlan | None = None) -> TransferPlan:
        """The plan a name stands for (None: the service's default plan)."""
        if isinstance(plan, TransferPlan):
            return plan
        name = plan if plan is not None else self.default_plan
        if name is None:
            raise UnknownPlan("no plan named and the config has no plans: add a [plans.NAME]")
        try:
            return self.plans[name]
        except KeyError:
            known = ", ".join(self.plans) or "none"
            raise UnknownPlan(f"no plan {name!r} in the config (plans: {known})") from None

    async def warm_transfer(
        self,
        plan: str | TransferPlan | None = None,
        *,
        facts: Mapping[str, str] | None = None,
        briefing: Briefing | None = None,
    ) -> TransferOutcome:
        """Put the caller on hold, brief a human of `plan` and hand the call over.

        The briefing is built from the transcript and `facts` (added to `self.facts`) unless
        `briefing` is given. Returns the outcome: on a failure the caller is back with the
        agent, who should say so."""
        chosen = self.plan(plan)
        self.facts.update(facts or {})
        # One transfer per call: one the API started first is waited out (and if it handed the
        # caller over, there is nothing left to transfer: LegGone).
        async with self.leg.transfer_lock:
            await self.leg.wait_with_ai()
            if briefing is None:
                briefing = await build_briefing(
                    self.transcript,
                    self.facts,
                    self.caller.name or self.caller.number,
                    self.summarizer,
                )
            self.briefing = briefing
            self.idle.clear()
            try:
                outcome, transfer_id = await self._run_transfer(chosen, briefing)
            finally:
                self.idle.set()
        self.outcomes.append(outcome)
        if self.on_finish is not None and transfer_id is not None:
            if self.recorded is not None:
                record = self.recorded.handoff(briefing, outcome)
            else:
                record = HandoffRecord.from_briefing(briefing, attempts=outcome.attempts)
            if isinstance(outcome, Failed) and outcome.recorded_message is not None:
                record = record.with_recorded_message(outcome.recorded_message)
            self.on_finish(self, transfer_id, outcome, record)
        return outcome

    async def _run_transfer(
        self, plan: TransferPlan, briefing: Briefing
    ) -> tuple[TransferOutcome, str | None]:
        """Run one transfer (recorded when there is a store), its log lines under its id."""
        from warmtransfer.engine import Engine

        if self.recorded is not None:
            transfer = self.recorded.transfer(self.leg, plan, briefing, on_event=self._event)
            self.transfer_ids.add(transfer.transfer_id)
            with log_context(call_id=self.call_id, transfer_id=transfer.transfer_id):
                _started(transfer.transfer_id, plan)
                outcome = await self.recorded.run(transfer, briefing)
                _ended(transfer.transfer_id, outcome)
                return outcome, transfer.transfer_id
        if not isinstance(self.engine, Engine):  # an engine of an embedding app, or a test's
            seen: list[str] = []

            def first_id(event: TransferEvent) -> None:
                if not seen:
                    seen.append(event.transfer_id)
                self._event(event)

            outcome = await self.engine.warm_transfer(self.leg, plan, briefing, on_event=first_id)
            return outcome, (seen[0] if seen else None)
        transfer = self.engine.transfer(self.leg, plan, briefing, on_event=self._event)
        self.transfer_ids.add(transfer.transfer_id)
        with log_context(call_id=self.call_id, transfer_id=transfer.transfer_id):
            _started(transfer.transfer_id, plan)
            try:
                outcome = await transfer.run()
            finally:
                self.engine.transfers.pop(transfer.transfer_id, None)
            _ended(transfer.transfer_id, outcome)
            return outcome, transfer.transfer_id

    def _event(self, event: TransferEvent) -> None:
        self.transfer_ids.add(event.transfer_id)
        if self.on_event is not None:
            self.on_event(self, event)

    async def hangup(self) -> None:
        """End the call (BYE). Idempotent."""
        await self.call.hangup()


def _started(transfer_id: str, plan: TransferPlan) -> None:
    targets = ", ".join(target.uri for target in plan.targets)
    log.info("transfer %s started: %s", transfer_id, targets)


def _ended(transfer_id: str, outcome: TransferOutcome) -> None:
    log.info("transfer %s ended: %s", transfer_id, outcome.reason.value)

"""The consult on LiveKit: an agent session briefs the human in the consult space, and the human
decides by talking to it (its tools) or by key (1 accept, 2 decline: deterministic, and it works
when the LLM misunderstands).

Why the consult tools live on a separate agent, in a separate session linked to the human's
participant only: in the reference the task itself (running on the *caller's* session) carried
``connect_to_caller``, so a held caller's speech could trigger it. Here the caller's session has
no consult tool at all, and the consult session hears only the human.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from typing import Any

from livekit.agents import Agent, function_tool

from warmtransfer.consult.ports import Briefing, ConsultLeg, Decision, LegGone, Verdict
from warmtransfer.livekit.ports import SessionStarter
from warmtransfer.transfer.ports import CallerLeftNotifier

CONSULT_TOOLS = ("connect_to_caller", "decline_transfer", "voicemail_detected")

CALLER_LEFT_NOTICE = "Sorry, the caller has hung up, so there is no call to take. Goodbye."


class ConsultAgent(Agent):
    """The consult persona with its three decision tools; each resolves `decided` once."""

    def __init__(self, *, instructions: str, decided: asyncio.Future[Decision], **kw: Any) -> None:
        super().__init__(instructions=instructions, **kw)
        self.decided = decided

    def decide(self, decision: Decision) -> None:
        if not self.decided.done():
            self.decided.set_result(decision)

    async def on_enter(self) -> None:
        # The AI speaks first when the human answers (the reference waited for the human).
        self.session.generate_reply(
            instructions="Greet the human agent and summarise the caller's situation."
        )

    @function_tool
    async def connect_to_caller(self) -> None:
        """Called when the human agent wants to connect to the caller."""
        self.decide(Decision(Verdict.ACCEPT, via="llm tool connect_to_caller"))

    @function_tool
    async def decline_transfer(self, reason: str) -> None:
        """Called when the human agent declines to take the call.

        Args:
            reason: A short explanation of why the human agent declined
        """
        self.decide(Decision(Verdict.DECLINE, via="llm tool decline_transfer", reason=reason))

    @function_tool
    async def voicemail_detected(self) -> None:
        """Called when the call reached voicemail, after hearing the voicemail greeting."""
        self.decide(Decision(Verdict.VOICEMAIL, via="llm tool voicemail_detected"))


class SessionConsultant(CallerLeftNotifier):
    """A `Consultant` running `ConsultAgent` through a `SessionStarter` (the real one starts an
    `AgentSession` in the room; tests pass a fake). The session is shut down on every exit of
    `consult`: a decision, the human's hang-up, the deadline, the caller leaving."""

    def __init__(
        self,
        start: SessionStarter,
        *,
        instructions: Callable[[Briefing], str],
        agent_options: dict[str, Any] | None = None,
        accept_key: str | None = "1",
        decline_key: str | None = "2",
        caller_left_notice: str = CALLER_LEFT_NOTICE,
    ) -> None:
        self.start = start
        self.instructions = instructions
        self.agent_options = agent_options or {}
        self.accept_key = accept_key
        self.decline_key = decline_key
        self.caller_left_notice = caller_left_notice
        self.agents: list[ConsultAgent] = []

    async def prepare(self, briefing: Briefing) -> object:
        return self.instructions(briefing)

    async def consult(self, leg: ConsultLeg, prepared: object) -> Decision:
        from warmtransfer.livekit.rooms import RoomTargetLeg

        if not isinstance(leg, RoomTargetLeg):
            raise TypeError("SessionConsultant consults only over the rooms backend's legs")
        decided: asyncio.Future[Decision] = asyncio.get_running_loop().create_future()
        agent = ConsultAgent(instructions=str(prepared), decided=decided, **self.agent_options)
        self.agents.append(agent)
        async with self.start(leg.link, agent, leg.identity):
            keys = asyncio.ensure_future(self._keys(leg, agent))
            try:
                return await decided
            finally:
                keys.cancel()
                await asyncio.gather(keys, return_exceptions=True)

    async def _keys(self, leg: ConsultLeg, agent: ConsultAgent) -> None:
        with contextlib.suppress(LegGone):
            while not agent.decided.done():
                key = await leg.next_key()
                if key == self.accept_key:
                    agent.decide(Decision(Verdict.ACCEPT, via=f"key {key}"))
                elif key == self.decline_key:
                    agent.decide(
                        Decision(Verdict.DECLINE, via=f"key {key}", reason=f"declined (key {key})")
                    )

    async def notify_caller_left(self, leg: ConsultLeg) -> None:
        """Tell the human the caller has gone, in a fresh session (the briefing's was closed,
        so the notice cannot repeat or resume the interrupted briefing)."""
        from warmtransfer.livekit.rooms import RoomTargetLeg

        if not isinstance(leg, RoomTargetLeg) or leg.hung_up:
            return
        agent = Agent(instructions="Say only what you are asked to say.")
        async with self.start(leg.link, agent, leg.identity) as session:
            await session.say(self.caller_left_notice)

"""One transfer per call, whoever starts it: the agent (`CallSession.warm_transfer`) or the
HTTP API (`EngineServiceApi.start_transfer`). Both share the call's one caller leg and its
transfer lock, so an API transfer is refused (409) while the agent's is still building its
briefing, and an agent that asks while the API's runs waits for it (paused: it does not speak
over the hold), then carries on. A real engine and caller; the human is a raw SIP wire that
answers 486 when the test says so."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass

import pytest

from tests.unit.conftest import started_ua
from tests.unit.sip_wire import Wire
from tests.unit.test_http_api import NeverConsulted, StandInTTS
from warmtransfer.consult.ports import Briefing, Turn
from warmtransfer.consult.summary import ExtractiveSummarizer, Summary
from warmtransfer.engine import Engine
from warmtransfer.server.service_api import EngineServiceApi, TransferConflict
from warmtransfer.server.session import CallSession
from warmtransfer.sip.call import Call, IncomingCall
from warmtransfer.transfer.outcome import Reason
from warmtransfer.transfer.plan import TransferPlan
from warmtransfer.transfer.target import AllowList, Target

DEADLINE = 10.0


class GatedSummarizer(ExtractiveSummarizer):
    """Takes as long as the test wants (an LLM summarizer taking its time)."""

    def __init__(self) -> None:
        super().__init__()
        self.entered = asyncio.Event()
        self.gate = asyncio.Event()

    async def summarize_detailed(
        self, transcript: Sequence[Turn], facts: Mapping[str, str]
    ) -> Summary:
        self.entered.set()
        await self.gate.wait()
        return await super().summarize_detailed(transcript, facts)


@dataclass
class Line:
    engine: Engine
    call: IncomingCall
    caller: Call  # the caller's side of `call` (their phone)
    wire: Wire
    plan: TransferPlan
    session: CallSession
    api: EngineServiceApi
    summarizer: GatedSummarizer


@asynccontextmanager
async def line() -> AsyncIterator[Line]:
    wire = await Wire.open()
    engine = await Engine(port=0, tts=StandInTTS(), consultant=NeverConsulted()).start()
    try:
        async with started_ua(user="caller") as phone:
            async with asyncio.timeout(DEADLINE):
                dialling = asyncio.create_task(phone.call(engine.uri))
                call = await engine.next_call()
                await call.answer()
                caller = await dialling
            allow = AllowList(patterns=(f"sip:*@127.0.0.1:{wire.port}",))
            human = Target(uri=f"sip:human@127.0.0.1:{wire.port}")
            plan = TransferPlan(targets=(human,), allow=allow)
            summarizer = GatedSummarizer()
            session = CallSession(
                engine, call, plans={"p": plan}, default_plan="p", summarizer=summarizer
            )
            yield Line(
                engine,
                call,
                caller,
                wire,
                plan,
                session,
                EngineServiceApi(engine, allow),
                summarizer,
            )
    finally:
        await engine.close()
        wire.close()


async def test_the_api_is_refused_while_the_agents_transfer_builds_its_briefing() -> None:
    async with line() as ln:
        agent = asyncio.create_task(ln.session.warm_transfer())
        async with asyncio.timeout(DEADLINE):
            await ln.summarizer.entered.wait()  # the agent's transfer, before its hold
        with pytest.raises(TransferConflict, match="already in a transfer"):
            await ln.api.start_transfer(ln.call.call_id, ln.plan, Briefing(summary="API"))
        ln.summarizer.gate.set()
        invite = await ln.wire.request_of("INVITE")
        ln.wire.reply(invite, 486, to_tag="busy")
        async with asyncio.timeout(DEADLINE):
            outcome = await agent
        assert outcome.reason is Reason.BUSY
        assert len(ln.wire.requests("INVITE")) == 1  # one human dialled, never two


async def test_an_agent_waits_out_the_api_transfer_then_carries_on() -> None:
    async with line() as ln:
        ln.summarizer.gate.set()
        info = await ln.api.start_transfer(ln.call.call_id, ln.plan, Briefing(summary="API"))
        first = await ln.wire.request_of("INVITE")  # the API's transfer: the caller is held
        speaking = asyncio.create_task(ln.session.say("Are you still there?"))
        agent = asyncio.create_task(ln.session.warm_transfer())
        # Paused while the API's transfer runs: neither finishes (a deadline, not a sleep: had
        # either gone on, it would be done well within it).
        done, _ = await asyncio.wait({speaking, agent}, timeout=0.5)
        assert not done
        assert ln.session.transcript == []  # nothing said over the hold
        ln.wire.reply(first, 486, to_tag="busy1")
        async with asyncio.timeout(DEADLINE):
            assert (await ln.api.wait(info.transfer_id)).reason is Reason.BUSY
            # The caller is back: the agent's own transfer goes ahead (and its hold keeps the
            # agent's words waiting again, until that one ends too).
            second = await ln.wire.request_of("INVITE", where=lambda r: r.call_id != first.call_id)
        ln.wire.reply(second, 486, to_tag="busy2")
        async with asyncio.timeout(DEADLINE):
            assert (await agent).reason is Reason.BUSY
            await speaking
        assert [t.text for t in ln.session.transcript] == ["Are you still there?"]


async def test_one_leg_per_call_and_ended_calls_are_let_go() -> None:
    """Everyone asking for a call's leg gets the same one (so a hold by one is seen by all);
    once the call has ended the engine no longer keeps it (a service runs for months)."""
    async with line() as ln:
        assert ln.engine.caller_leg(ln.call) is ln.session.leg
        await ln.caller.hangup()
        async with asyncio.timeout(DEADLINE):
            await ln.call.ended.wait()
        async with started_ua(user="second") as phone:
            async with asyncio.timeout(DEADLINE):
                dialling = asyncio.create_task(phone.call(ln.engine.uri))
                second = await ln.engine.next_call()
                await second.answer()
                await dialling
            leg = ln.engine.caller_leg(second)
            assert dict(ln.engine.caller_legs) == {second: leg}  # the first call's leg is gone

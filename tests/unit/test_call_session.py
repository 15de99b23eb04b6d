"""`CallSession` (the API of agents) with a fake engine, and `[agent] entrypoint` agents run by
the service: what an agent says and keys in reaches the briefing, plans are found by name, and
an application's function written to a file gets its session."""

from __future__ import annotations

import asyncio
import contextlib
import sys
from collections.abc import Iterator
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any

import pytest

from warmtransfer.config.model import Config
from warmtransfer.consult.ports import Briefing
from warmtransfer.server.service import Service, _call_agent
from warmtransfer.server.session import CallSession, UnknownPlan
from warmtransfer.sip.uri import NameAddr, SipUri
from warmtransfer.transfer.plan import TransferPlan

PLANS: dict[str, Any] = {
    "front": {"targets": [{"uri": "sip:alice@127.0.0.1:5070"}]},
    "back": {"targets": [{"uri": "sip:bob@127.0.0.1:5070"}]},
}


def config(**agent: str) -> Config:
    return Config.model_validate(
        {"allow": {"patterns": ["sip:*@127.0.0.1:*"]}, "plans": PLANS, "agent": agent}
    )


class FakeCall:
    def __init__(self) -> None:
        self.call_id = "abc@host"
        self.caller = NameAddr(SipUri.parse("sip:+14155550100@carrier.example"), "Maria Lopez")
        self.ended = asyncio.Event()
        self.hung_up = 0

    async def hangup(self) -> None:
        self.hung_up += 1
        self.ended.set()


class FakeLeg:
    def __init__(self) -> None:
        self.said: list[str] = []
        self.keys: asyncio.Queue[str] = asyncio.Queue()
        self.bridged = False
        self.transfer_lock = asyncio.Lock()

    async def say(self, clip: str) -> None:
        self.said.append(clip)

    async def next_key(self) -> str:
        return await self.keys.get()

    agent_key = next_key

    async def wait_with_ai(self) -> None:
        """Never held here (the pause on a hold is tested over SIP, test_serve_http.py)."""


class FakeTTS:
    async def synthesize(self, text: str) -> str:
        return f"<audio {text}>"


class FakeEngine:
    def __init__(self) -> None:
        self.tts = FakeTTS()
        self.leg = FakeLeg()
        self.transfers: list[tuple[TransferPlan, Briefing]] = []

    def caller_leg(self, call: Any) -> FakeLeg:
        return self.leg

    async def warm_transfer(
        self, leg: Any, plan: TransferPlan, briefing: Briefing, *, on_event: Any = None
    ) -> str:
        self.transfers.append((plan, briefing))
        return "outcome"


def session(engine: FakeEngine, call: FakeCall | None = None) -> CallSession:
    cfg = config()
    return CallSession(
        engine,  # type: ignore[arg-type]
        call or FakeCall(),  # type: ignore[arg-type]
        plans=cfg.effective_plans,
        default_plan="front",
    )


async def test_said_and_keyed_reach_the_briefing_of_the_named_plan() -> None:
    engine = FakeEngine()
    call = session(engine)
    assert call.caller.name == "Maria Lopez" and call.caller.number == "+14155550100"
    await call.say("Please key in your account number.")
    assert engine.leg.said == ["<audio Please key in your account number.>"]
    for key in "4471#":
        engine.leg.keys.put_nowait(key)
    assert await call.keys(timeout=1) == "4471"
    outcome: object = await call.warm_transfer("back", facts={"topic": "a refund"})
    assert outcome == "outcome"
    ((plan, briefing),) = engine.transfers
    assert plan.targets[0].uri == "sip:bob@127.0.0.1:5070"
    assert plan.allow.patterns == ("sip:*@127.0.0.1:*",)  # the global allow-list applies
    assert briefing.facts == {"topic": "a refund"}
    assert [t.text for t in briefing.transcript] == [
        "Please key in your account number.",
        "(keyed in 4471)",
    ]
    assert call.idle.is_set() and list[object](call.outcomes) == ["outcome"]


async def test_default_plan_unknown_plan_and_key_timeout() -> None:
    engine = FakeEngine()
    call = session(engine)
    await call.warm_transfer()
    assert engine.transfers[0][0].targets[0].uri == "sip:alice@127.0.0.1:5070"
    with pytest.raises(UnknownPlan, match=r"no plan 'sales'.*front, back"):
        await call.warm_transfer("sales")
    assert await call.next_key(timeout=0.05) is None
    with pytest.raises(RuntimeError, match="no speech-to-text"):
        await call.listen(timeout=0.05)


async def test_an_entrypoint_agent_gets_its_session(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "myagent_for_test.py").write_text(
        "async def handle_call(call):\n"
        "    await call.say(f'Hello {call.caller.name}')\n"
        "    call.facts['seen'] = 'yes'\n"
        "    return await call.warm_transfer('back')\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    service = Service(config(entrypoint="myagent_for_test:handle_call"), handle_signals=False)
    async with AsyncExitStack() as stack:
        agent = await service._make_agent(stack)
    engine = FakeEngine()
    call = session(engine)
    await _call_agent(agent, call)
    assert engine.leg.said == ["<audio Hello Maria Lopez>"]
    assert engine.transfers[0][1].facts == {"seen": "yes"}
    sys.modules.pop("myagent_for_test", None)


async def test_a_service_refuses_to_start_a_scripted_agent_without_plans() -> None:
    bare = Config.model_validate({})
    service = Service(bare, handle_signals=False)
    async with AsyncExitStack() as stack:
        with pytest.raises(ValueError, match=r"needs a plan"):
            await service._make_agent(stack)


async def test_hear_ends_at_once_when_the_caller_hangs_up(monkeypatch: pytest.MonkeyPatch) -> None:
    """Over SIP: an agent waiting for the caller's next turn learns they hung up (LegGone) when
    they do, not when its timeout runs out."""
    from tests.unit.test_one_transfer_per_call import DEADLINE, line
    from warmtransfer.consult.ports import LegGone

    async with line() as ln:
        listening = asyncio.Event()
        gate = ln.session.leg.ai_listening

        @contextlib.contextmanager
        def noticed(sink: Any) -> Iterator[None]:
            with gate(sink):
                listening.set()
                yield

        monkeypatch.setattr(ln.session.leg, "ai_listening", noticed)
        hearing = asyncio.create_task(ln.session.hear(timeout=DEADLINE * 10))
        async with asyncio.timeout(DEADLINE):
            await listening.wait()
        await ln.caller.hangup()
        async with asyncio.timeout(DEADLINE):
            with pytest.raises(LegGone):
                await hearing

"""The pieces `serve` adds: ``[agent] plan``, ``[service] drain_timeout``, and the 503 with
Retry-After that `IncomingCall.reject(headers=...)` sends while the service drains."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from tests.unit.sip_wire import Wire, new_branch, new_call_id
from warmtransfer.config import ConfigError, load_config
from warmtransfer.server.service import Service, refuse
from warmtransfer.sip.call import EndReason
from warmtransfer.sip.useragent import UserAgent

BASE = """\
[sip]
listen = [{ transport = "udp", port = 0 }]

[allow]
patterns = ["sip:*@pbx.example.com"]

[[plans.support.targets]]
uri = "sip:alice@pbx.example.com"

[[plans.billing.targets]]
uri = "sip:bob@pbx.example.com"
"""


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "warmtransfer.toml"
    path.write_text(text, encoding="utf-8")
    return path


def test_agent_plan_chooses_the_scripted_agents_plan(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, BASE + '\n[agent]\nplan = "billing"\n'))
    assert config.agent.plan == "billing"
    assert Service(config, handle_signals=False).default_plan == "billing"


def test_without_agent_plan_the_first_plan_is_used(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, BASE))
    assert config.agent.plan is None
    assert Service(config, handle_signals=False).default_plan == "support"


def test_agent_plan_must_name_a_plan(tmp_path: Path) -> None:
    text = BASE + '\n[agent]\nplan = "sales"\n'
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    (problem,) = caught.value.problems
    message = str(problem)
    assert "agent.plan" in message and "'sales'" in message
    assert "support, billing" in message


def test_drain_timeout_from_the_config_unless_given(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, BASE + "\n[service]\ndrain_timeout = 7.5\n"))
    assert config.service.drain_timeout == 7.5
    assert Service(config, handle_signals=False).drain_timeout == 7.5
    assert Service(config, drain_timeout=2, handle_signals=False).drain_timeout == 2
    assert load_config(write(tmp_path, BASE)).service.drain_timeout == 30


def test_drain_timeout_may_not_be_negative(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"service\.drain_timeout"):
        load_config(write(tmp_path, BASE + "\n[service]\ndrain_timeout = -1\n"))


async def test_refuse_sends_503_with_retry_after(ua: UserAgent, wire: Wire) -> None:
    call_id = new_call_id()
    wire.send(wire.invite(ua.address, call_id=call_id, branch=new_branch()), ua.address)
    async with asyncio.timeout(5):
        call = await ua.next_call()
    await refuse(call)
    response = await wire.response(503, "INVITE", call_id=call_id)
    assert response.headers.get("Retry-After") == "30"
    assert call.end_reason is EndReason.REJECTED and call.end_status == 503

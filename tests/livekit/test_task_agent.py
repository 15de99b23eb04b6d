"""`WarmTransferTask` as an app's agent uses it, tested with livekit-agents' own helpers:
`AgentSession.run` and `RunResult.expect`, `mock_tools`, `testing.fake_job_context`, and a
scripted fake LLM that calls the receptionist's `transfer_to_human` tool.

What the model reads after the tool is the point: the result when the transfer completes, the
`TransferFailedError` (a `ToolError`, with the reason and the SIP status) when it fails.

livekit-agents 1.8.9's `RunResult` ends when an awaited `AgentTask`'s `on_enter` returns, which
for this task is when the transfer has ended: the run holds the tool call and the handoff to the
task; the tool's output and the model's next reply come after it, and are checked in the fake
LLM's next request and the session's history.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import pytest
from livekit.agents import testing
from livekit.agents.voice import AgentSession
from livekit.agents.voice.run_result import mock_tools

from tests.livekit.agents import CallTool, Receptionist, ScriptedLLM
from tests.livekit.conftest import Rig
from tests.livekit.fakes import BUSY
from warmtransfer.livekit.task import TransferFailedError, WarmTransferTask
from warmtransfer.transfer.outcome import Failed, Reason

NUMBER = "+15105550123"
ASK = "Can I talk to a person?"
THANKS = "You are connected now. Goodbye."
SORRY = "Sorry, nobody is free right now. Can I help you myself?"


@asynccontextmanager
async def text_session(agent: Receptionist, fake_llm: ScriptedLLM) -> AsyncIterator[Replies]:
    """A text-only session (no room, no audio) running `agent`, and the replies it gives."""
    async with AgentSession[Any](llm=fake_llm) as session:
        replies = Replies(session)
        await session.start(agent)
        yield replies


class Replies:
    """The assistant's messages as they enter the session's history."""

    def __init__(self, session: AgentSession[Any]) -> None:
        self.session = session
        self.said: list[str | None] = []
        self._new = asyncio.Event()
        session.on("conversation_item_added", self._added)

    def _added(self, event: Any) -> None:
        item = event.item
        if item.type == "message" and item.role == "assistant":
            self.said.append(item.text_content)
            self._new.set()

    async def next(self, timeout: float = 10.0) -> str | None:
        async with asyncio.timeout(timeout):
            while not self.said:
                self._new.clear()
                await self._new.wait()
        return self.said.pop(0)

    def tool_outputs(self) -> list[tuple[bool, str]]:
        return [
            (item.is_error, item.output)
            for item in self.session.history.items
            if item.type == "function_call_output"
        ]


async def test_fake_llm_mock_tools_failed_transfer_is_a_tool_error_the_model_reads() -> None:
    """An app tests its own handling of a failed transfer with no backend at all: the mocked
    tool raises the task's `TransferFailedError`, and the whole turn is in the run."""
    failed = Failed(Reason.BUSY, (), 0.0, 1.0, sip_status=486, sip_reason="Busy Here")

    async def busy() -> str:
        raise TransferFailedError(failed)

    fake_llm = ScriptedLLM([CallTool("transfer_to_human"), SORRY])
    agent = Receptionist(NUMBER)
    async with text_session(agent, fake_llm) as replies:
        with mock_tools(Receptionist, {"transfer_to_human": busy}):
            result = await replies.session.run(user_input=ASK)
        result.expect.next_event().is_function_call(name="transfer_to_human")
        output = result.expect.next_event().is_function_call_output().event().item
        assert output.is_error
        assert output.output == "warm transfer failed: busy (SIP 486 Busy Here)"
        result.expect.next_event().is_message(role="assistant")
        result.expect.no_more_events()
        assert await replies.next() == SORRY
    # the model's second request carried the error, which it answered from
    (seen,) = fake_llm.tool_outputs(1)
    assert (seen.is_error, seen.output) == (True, output.output)
    assert agent.tasks == []  # mocked: no task was ever built


async def test_fake_llm_fake_livekit_server_transfer_completes_and_model_reads_result(
    rig: Rig,
) -> None:
    fake_llm = ScriptedLLM([CallTool("transfer_to_human"), THANKS])
    agent = Receptionist(NUMBER, backend=rig.backend())
    async with text_session(agent, fake_llm) as replies:
        run = replies.session.run(user_input=ASK)
        consult = await asyncio.wait_for(rig.starter.started.get(), 10)
        rig.world.dtmf(consult.link.view.name, consult.human, "1")  # the human accepts
        result = await asyncio.wait_for(run, 10)
        result.expect.next_event().is_function_call(name="transfer_to_human")
        result.expect.next_event().is_agent_handoff(new_agent_type=WarmTransferTask)
        result.expect.no_more_events()
        assert await replies.next() == THANKS
        assert replies.session.current_agent is agent  # the task handed the session back

        expected = f"Connected to {consult.human}."
        assert replies.tool_outputs() == [(False, expected)]
        (seen,) = fake_llm.tool_outputs(1)
        assert (seen.is_error, seen.output) == (False, expected)
        assert [r.human_agent_identity for r in agent.results] == [consult.human]
        assert rig.server.methods() == [
            "CreateRoom",
            "CreateSIPParticipant",
            "MoveParticipant",
            "DeleteRoom",
        ]
        (dial,) = rig.server.requests("CreateSIPParticipant")
        assert dial.sip_call_to == NUMBER  # the app's number: the model chose nothing
        assert rig.caller.io_log == [False]  # held, then handed over: the AI stays out
        (task,) = agent.tasks
        assert task.bridge is not None
        await task.bridge.aclose()


async def test_fake_llm_fake_livekit_server_busy_is_what_the_model_reads(rig: Rig) -> None:
    rig.server.fail["CreateSIPParticipant"] = BUSY
    fake_llm = ScriptedLLM([CallTool("transfer_to_human"), SORRY])
    agent = Receptionist(NUMBER, backend=rig.backend())
    async with text_session(agent, fake_llm) as replies:
        result = await asyncio.wait_for(replies.session.run(user_input=ASK), 10)
        result.expect.contains_function_call(name="transfer_to_human")
        result.expect.contains_agent_handoff(new_agent_type=WarmTransferTask)
        assert await replies.next() == SORRY  # the agent talks to the caller again

        (failure,) = agent.failures
        assert failure.reason is Reason.BUSY and failure.sip_status == 486
        (seen,) = fake_llm.tool_outputs(1)
        assert seen.is_error and seen.output == str(failure)
        assert "busy" in seen.output and "486" in seen.output
        assert replies.tool_outputs() == [(True, seen.output)]
        assert rig.caller.io_log == [False, True]  # held, then back with the AI
        assert "MoveParticipant" not in rig.server.methods()


@pytest.mark.parametrize("trunk", ["ST_test", None])
async def test_fake_llm_fake_job_context_without_a_call_fails_as_tool_error(
    rig: Rig, monkeypatch: pytest.MonkeyPatch, trunk: str | None
) -> None:
    """Not on a SIP call and no backend given: the task builds the rooms backend from the job.
    In a fake job whose session has no room (and, second case, no outbound trunk) it cannot:
    the model reads why, and no LiveKit API was called."""
    if trunk is None:
        monkeypatch.delenv("LIVEKIT_SIP_OUTBOUND_TRUNK")
    assert os.environ.get("LIVEKIT_SIP_OUTBOUND_TRUNK") == trunk
    fake_llm = ScriptedLLM([CallTool("transfer_to_human"), SORRY])
    agent = Receptionist(NUMBER)  # the constructor no longer needs a trunk: SIP mode has none
    with testing.fake_job_context(job_id="job-under-test") as job:
        async with text_session(agent, fake_llm) as replies:
            assert job.job.id == "job-under-test"
            await asyncio.wait_for(replies.session.run(user_input=ASK), 10)
            assert await replies.next() == SORRY
    (seen,) = fake_llm.tool_outputs(1)
    assert seen.is_error and seen.output.startswith("warm transfer could not start:")
    why = "LIVEKIT_SIP_OUTBOUND_TRUNK" if trunk is None else "not started with a room"
    assert why in seen.output
    assert agent.failures == [] and agent.results == []  # a plain ToolError, no outcome
    assert rig.server.calls == []

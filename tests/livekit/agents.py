"""A scripted fake LLM that can call tools, and a receptionist agent whose `transfer_to_human`
tool awaits `WarmTransferTask`: what an app on LiveKit writes, for the agent-level tests."""

from __future__ import annotations

import itertools
import json
import uuid
from dataclasses import dataclass, field
from typing import Any

from livekit.agents import APIConnectOptions, RunContext, llm
from livekit.agents.llm import function_tool
from livekit.agents.types import DEFAULT_API_CONNECT_OPTIONS, NOT_GIVEN, NotGivenOr
from livekit.agents.voice import Agent

from warmtransfer.livekit.task import TransferFailedError, WarmTransferResult, WarmTransferTask


@dataclass(frozen=True)
class CallTool:
    """A scripted reply that calls a tool instead of speaking."""

    name: str
    arguments: dict[str, Any] = field(default_factory=dict)


Reply = str | CallTool

_call_ids = itertools.count(1)


class ScriptedLLM(llm.LLM[Any]):
    """The paid LLM's stand-in: each request gets the next scripted reply (text, or a tool call)
    and is kept, so a test can read what the model was shown (e.g. a tool's output)."""

    def __init__(self, replies: list[Reply]) -> None:
        super().__init__()
        self.replies = list(replies)
        self.requests: list[llm.ChatContext] = []

    def chat(
        self,
        *,
        chat_ctx: llm.ChatContext,
        tools: list[llm.Tool] | None = None,
        conn_options: APIConnectOptions = DEFAULT_API_CONNECT_OPTIONS,
        parallel_tool_calls: NotGivenOr[bool] = NOT_GIVEN,
        tool_choice: NotGivenOr[llm.ToolChoice] = NOT_GIVEN,
        extra_kwargs: NotGivenOr[dict[str, Any]] = NOT_GIVEN,
    ) -> llm.LLMStream:
        self.requests.append(chat_ctx.copy())
        reply = self.replies.pop(0) if self.replies else "Sorry?"
        return _ScriptedStream(
            self, reply, chat_ctx=chat_ctx, tools=tools or [], conn_options=conn_options
        )

    def tool_outputs(self, request: int) -> list[llm.FunctionCallOutput]:
        """The tool outputs the model was shown in request number `request`."""
        return [
            item
            for item in self.requests[request].items
            if isinstance(item, llm.FunctionCallOutput)
        ]


class _ScriptedStream(llm.LLMStream):
    def __init__(self, owner: ScriptedLLM, reply: Reply, **kwargs: Any) -> None:
        super().__init__(owner, **kwargs)
        self._reply = reply

    async def _run(self) -> None:
        reply = self._reply
        if isinstance(reply, CallTool):
            delta = llm.ChoiceDelta(
                role="assistant",
                tool_calls=[
                    llm.FunctionToolCall(
                        name=reply.name,
                        arguments=json.dumps(reply.arguments),
                        call_id=f"call_{next(_call_ids)}",
                    )
                ],
            )
        else:
            delta = llm.ChoiceDelta(role="assistant", content=reply)
        self._event_ch.send_nowait(llm.ChatChunk(id=uuid.uuid4().hex, delta=delta))


class Receptionist(Agent):
    """The app's agent: `transfer_to_human` warm-transfers to the number the app configured
    (never one the model chose). It keeps what the task returned or raised, and re-raises a
    failure so the model reads it as a tool error."""

    def __init__(self, human: str, **task_options: Any) -> None:
        super().__init__(instructions="You are a receptionist. Offer a human if asked.")
        self.human = human
        self.task_options = task_options
        self.tasks: list[WarmTransferTask] = []
        self.results: list[WarmTransferResult] = []
        self.failures: list[TransferFailedError] = []

    @function_tool
    async def transfer_to_human(self, context: RunContext) -> str:
        """Transfer the caller to a human agent."""
        task = WarmTransferTask(self.human, chat_ctx=self.chat_ctx, **self.task_options)
        self.tasks.append(task)
        try:
            result = await task
        except TransferFailedError as exc:
            self.failures.append(exc)
            raise
        self.results.append(result)
        return f"Connected to {result.human_agent_identity}."

"""`ChatClient`'s streaming against a local fake chat-completions server.

The fake stands in for a paid LLM service only (every test says fake_llm); it is a real HTTP
server on loopback, so what is tested is real httpx reading real server-sent events: deltas
put back together, a server that ignores `stream`, a stream cut off, one that only ever sends
keep-alives (the overall deadline ends it), an answer over its size limit, an error mid-stream.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import logging
import time

import pytest

from tests.unit.test_fake_llm_consultant import SSE_HEAD, event, send, text_events, tool_events
from tests.unit.test_fake_llm_summarizer import FakeChatServer, Seen, response_bytes
from warmtransfer.consult.chat import ChatClient, ChatError, ChatFailure, ChatReply, ToolCall

API_KEY = "sk-test-chat-do-not-log"
MESSAGES = [{"role": "user", "content": "Hello?"}]
TOOLS = [{"type": "function", "function": {"name": "connect_to_caller", "parameters": {}}}]


async def streamed(client: ChatClient, **options: float) -> tuple[ChatReply, list[str]]:
    pieces: list[str] = []
    async with asyncio.timeout(10):
        reply = await client.stream(MESSAGES, pieces.append, tools=TOOLS, **options)
    return reply, pieces


async def failure(client: ChatClient, **options: float) -> ChatError:
    with pytest.raises(ChatError) as caught:
        await streamed(client, **options)
    return caught.value


async def test_fake_llm_chat_stream_puts_text_and_tool_call_pieces_together() -> None:
    async def reply(_: FakeChatServer, __: Seen, writer: asyncio.StreamWriter) -> None:
        second = {"index": 1, "id": "call_2", "function": {"name": "decline_transfer"}}
        await send(writer, SSE_HEAD, b": keep-alive\n\n", b"event: message\n")
        await send(writer, *text_events("Hello there."), event({"role": "assistant"}))
        await send(writer, *tool_events("connect_to_caller", '{"why": "the human said yes"}'))
        await send(writer, event({"tool_calls": [second]}))
        await send(writer, event({"tool_calls": [{"index": 1, "function": {"arguments": "{}"}}]}))
        await send(writer, event({}, "tool_calls"), b"data: [DONE]\n\n")

    async with FakeChatServer(reply) as server:
        answer, pieces = await streamed(ChatClient(server.base_url, API_KEY, "m"))
    assert pieces == ["Hello", " there."]  # handed out as they came
    assert answer == ChatReply(
        "Hello there.",
        (
            ToolCall("connect_to_caller", '{"why": "the human said yes"}', "call_1"),
            ToolCall("decline_transfer", "{}", "call_2"),
        ),
        "tool_calls",
    )
    body = server.requests[0].body
    assert body["stream"] is True and body["tools"] == TOOLS and body["messages"] == MESSAGES
    assert server.requests[0].headers["accept"] == "text/event-stream"


async def test_fake_llm_chat_stream_takes_a_server_that_answers_in_one_piece() -> None:
    message = {
        "role": "assistant",
        "content": "Connecting you.",
        "tool_calls": [
            {"id": "c", "type": "function", "function": {"name": "connect_to_caller"}},
        ],
    }
    body = json.dumps({"choices": [{"index": 0, "message": message}]}).encode()

    async def reply(_: FakeChatServer, __: Seen, writer: asyncio.StreamWriter) -> None:
        await send(writer, response_bytes(200, body))

    async with FakeChatServer(reply) as server:
        answer, pieces = await streamed(ChatClient(server.base_url, API_KEY, "m"))
    assert pieces == ["Connecting you."]
    assert answer.text == "Connecting you."
    assert answer.tool_calls == (ToolCall("connect_to_caller", "", "c"),)


async def test_fake_llm_chat_credentials_in_the_base_url_reach_the_server_not_the_logs(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """``https://user:password@gateway/v1`` is how some gateways take a credential: it is sent
    as basic auth, as httpx would, but httpx logs each request's URL, so it never sees it."""
    caplog.set_level(logging.DEBUG)
    secret = "gateway-password-do-not-log"
    body = json.dumps({"choices": [{"index": 0, "message": {"content": "Yes."}}]}).encode()

    async def reply(_: FakeChatServer, __: Seen, writer: asyncio.StreamWriter) -> None:
        await send(writer, response_bytes(200, body))

    async with FakeChatServer(reply) as server:
        url = server.base_url.replace("http://", f"http://team:{secret}@")
        client = ChatClient(url, API_KEY, "m")
        answer, _ = await streamed(client)
    assert answer.text == "Yes."
    expected = base64.b64encode(f"team:{secret}".encode()).decode()
    assert server.requests[0].headers["authorization"] == f"Basic {expected}"
    assert client.base_url == server.base_url and secret not in repr(client)
    assert "chat/completions" in caplog.text and secret not in caplog.text
    with pytest.raises(ValueError, match="must not carry a query"):
        ChatClient(f"{server.base_url}?key={secret}", API_KEY, "m")


async def test_fake_llm_chat_stream_that_finished_without_done_is_accepted() -> None:
    async def reply(_: FakeChatServer, __: Seen, writer: asyncio.StreamWriter) -> None:
        await send(writer, SSE_HEAD, *text_events("Yes."), event({}, "stop"))

    async with FakeChatServer(reply) as server:
        answer, _ = await streamed(ChatClient(server.base_url, API_KEY, "m"))
    assert answer == ChatReply("Yes.", (), "stop")


@pytest.mark.parametrize(
    ("events", "detail"),
    [
        (text_events("Her account"), "the stream ended before the answer did"),
        ([b'data: {"error": {"message": "overloaded"}}\n\n'], "reported an error mid-stream"),
        ([b'data: {"choices": "no"}\n\n'], "an event without choices"),
        ([event({"content": 42})], "a field that should be text is not"),
        ([event({"tool_calls": [{"index": "0"}]})], "a malformed tool call"),
    ],
    ids=["cut-off", "error-event", "no-choices", "not-text", "bad-tool-call"],
)
async def test_fake_llm_chat_malformed_stream_is_a_bad_response(
    events: list[bytes], detail: str
) -> None:
    async def reply(_: FakeChatServer, __: Seen, writer: asyncio.StreamWriter) -> None:
        await send(writer, SSE_HEAD, *events)

    async with FakeChatServer(reply) as server:
        error = await failure(ChatClient(server.base_url, API_KEY, "m"))
    assert error.failure is ChatFailure.BAD_RESPONSE
    assert detail in error.detail


async def test_fake_llm_chat_over_long_answer_is_a_bad_response() -> None:
    async def reply(_: FakeChatServer, __: Seen, writer: asyncio.StreamWriter) -> None:
        await send(writer, SSE_HEAD, *text_events("word " * 40), event({}, "stop"))

    async with FakeChatServer(reply) as server:
        error = await failure(ChatClient(server.base_url, API_KEY, "m", max_text_chars=50))
    assert error.failure is ChatFailure.BAD_RESPONSE and "50 characters" in error.detail


async def test_fake_llm_chat_keep_alives_alone_hit_the_overall_deadline() -> None:
    async def keep_alive(server: FakeChatServer, _: Seen, writer: asyncio.StreamWriter) -> None:
        """Headers at once, then a comment every 20 ms until released: each read is quick,
        so only an overall deadline ends it (the 20 ms is the fake's pacing, not the test's
        synchronisation: the test waits on the client's answer)."""
        await send(writer, SSE_HEAD)
        while not server.release.is_set():
            await send(writer, b": keep-alive\n\n")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(server.release.wait(), 0.02)

    async with FakeChatServer(keep_alive) as server:
        started = time.monotonic()
        error = await failure(ChatClient(server.base_url, API_KEY, "m"), timeout=0.4)
        elapsed = time.monotonic() - started
        assert not server.release.is_set()
    assert error.failure is ChatFailure.TIMEOUT and error.detail == "no answer within 0.4 s"
    assert elapsed < 2.0


async def test_fake_llm_chat_http_error_says_only_the_status() -> None:
    async def reply(_: FakeChatServer, __: Seen, writer: asyncio.StreamWriter) -> None:
        body = json.dumps({"error": {"message": f"bad key {API_KEY}"}}).encode()
        await send(writer, response_bytes(429, body))

    async with FakeChatServer(reply) as server:
        client = ChatClient(server.base_url, API_KEY, "m")
        error = await failure(client)
    assert error.failure is ChatFailure.HTTP_ERROR and error.detail == "HTTP 429"
    assert API_KEY not in str(error) and API_KEY not in repr(client)

"""One client for OpenAI-compatible chat completions, shared by the LLM whisper writer
(`llm_summary`) and the LLM-driven consult (`llm`).

A language model is a remote service in the middle of a phone call: slow at times, down at
times, and answering whatever it likes. So every call here has the same guarantees, whichever
feature makes it:

- One overall deadline covers connecting, sending and reading the whole answer, streamed or
  not. httpx's own timeouts apply to each network operation, so a server that trickles its
  answer a byte at a time would never trip them; `asyncio.timeout` does.
- Every failure comes out as one exception type, `ChatError`, with a `ChatFailure` kind and a
  short detail (an HTTP status, an exception's type name) that never holds a secret or a server's
  echo of the request, so callers can fall back and log why without leaking anything.
- The API key goes in the Authorization header only: not in `repr`, errors or logs.
- Answers are bounded (`max_text_chars`, `max_argument_chars`): a model that rambles is cut off
  as a bad answer instead of filling memory or a human's ear.

Streaming (`stream`) reads the server-sent events of `"stream": true`: `data:` lines with JSON
chunks, `[DONE]` at the end; text deltas are handed to a callback as they come (so speech can
start on the first sentence), and tool-call deltas, which arrive in pieces keyed by `index`, are
put together. A server that ignores `stream` and sends one JSON answer is accepted too.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

import httpx

from warmtransfer.base_url import QUERY_PROBLEM, BaseUrl

__all__ = ["ChatClient", "ChatError", "ChatFailure", "ChatReply", "ToolCall"]

log = logging.getLogger(__name__)

Message = Mapping[str, Any]

MAX_TEXT_CHARS = 8_000
MAX_ARGUMENT_CHARS = 64_000
_MAX_LINE_CHARS = 256_000  # one SSE line; a longer one is not a chat-completions chunk


class ChatFailure(StrEnum):
    """Why a chat call gave no usable answer (the values match `summary.FallbackReason`)."""

    TIMEOUT = "timeout"
    HTTP_ERROR = "http_error"
    TRANSPORT_ERROR = "transport_error"
    BAD_RESPONSE = "bad_response"
    ERROR = "error"


class ChatError(Exception):
    """A chat call failed; `detail` is safe to log (no key, no server text)."""

    def __init__(self, failure: ChatFailure, detail: str) -> None:
        super().__init__(f"{failure.value}: {detail}")
        self.failure = failure
        self.detail = detail


@dataclass(frozen=True)
class ToolCall:
    """A function the model asked for. `arguments` is the model's raw JSON text: untrusted."""

    name: str
    arguments: str = ""
    id: str = ""


@dataclass(frozen=True)
class ChatReply:
    """What the model answered: text (possibly empty) and the tools it called, in order."""

    text: str
    tool_calls: tuple[ToolCall, ...] = ()
    finish_reason: str | None = None


@dataclass
class _PartialCall:
    id: str = ""
    name: str = ""
    arguments: str = ""


class _Reply:
    """A reply being put together from streamed deltas, with the size limits enforced."""

    def __init__(self, max_text: int, max_arguments: int) -> None:
        self.max_text = max_text
        self.max_arguments = max_arguments
        self.text: list[str] = []
        self.text_chars = 0
        self.calls: dict[int, _PartialCall] = {}
        self.finish_reason: str | None = None

    def add_text(self, text: str) -> None:
        self.text_chars += len(text)
        if self.text_chars > self.max_text:
            raise ChatError(ChatFailure.BAD_RESPONSE, f"more than {self.max_text} characters")
        self.text.append(text)

    def add_call(self, delta: object, position: int) -> None:
        if not isinstance(delta, dict):
            raise ChatError(ChatFailure.BAD_RESPONSE, "a tool call that is not an object")
        index = delta.get("index", position)
        function = delta.get("function") or {}
        if not isinstance(index, int) or not isinstance(function, dict):
            raise ChatError(ChatFailure.BAD_RESPONSE, "a malformed tool call")
        call = self.calls.setdefault(index, _PartialCall())
        call.id += _text(delta.get("id"))
        call.name += _text(function.get("name"))
        arguments = function.get("arguments")
        # a complete (non-streamed) answer may give the arguments as an object
        call.arguments += json.dumps(arguments) if isinstance(arguments, dict) else _text(arguments)
        if len(call.arguments) > self.max_arguments or len(call.name) > 200:
            raise ChatError(ChatFailure.BAD_RESPONSE, "an over-long tool call")

    def result(self) -> ChatReply:
        calls = tuple(
            ToolCall(call.name, call.arguments, call.id) for _, call in sorted(self.calls.items())
        )
        return ChatReply("".join(self.text), calls, self.finish_reason)


def _text(value: object) -> str:
    if value is None:
        return ""
    if not isinstance(value, str):
        raise ChatError(ChatFailure.BAD_RESPONSE, "a field that should be text is not")
    return value


class ChatClient:
    """An OpenAI-compatible chat-completions endpoint: `{base_url}/chat/completions`.

    `base_url` is the API root, e.g. "https://api.openai.com/v1". `timeout` is the default
    overall deadline of one call. Pass a shared `client` to reuse connections (its owner closes
    it); without one, `connection()` opens a client for a block of calls and each call made
    without a client opens and closes its own. `temperature` None leaves it out of the request,
    for models that accept only their default.
    """

    def __init__(
        self,
        base_url: str,
        api_key: str,
        model: str,
        *,
        timeout: float = 3.0,
        temperature: float | None = 0.0,
        client: httpx.AsyncClient | None = None,
        max_text_chars: int = MAX_TEXT_CHARS,
        max_argument_chars: int = MAX_ARGUMENT_CHARS,
    ) -> None:
        if timeout <= 0:
            raise ValueError(f"timeout must be positive, not {timeout}")
        self._base = BaseUrl.split(base_url)
        if self._base.has_query:
            raise ValueError(QUERY_PROBLEM)
        self.base_url = self._base.url  # without user:password@, which is sent as basic auth
        self.model = model
        self.timeout = timeout
        self.temperature = temperature
        self.max_text_chars = max_text_chars
        self.max_argument_chars = max_argument_chars
        self._api_key = api_key
        self._client = client

    def __repr__(self) -> str:
        return (
            f"ChatClient(base_url={self.base_url!r}, model={self.model!r}, "
            f"timeout={self.timeout!r})"
        )

    @property
    def url(self) -> str:
        return f"{self.base_url}/chat/completions"

    @contextlib.asynccontextmanager
    async def connection(self) -> AsyncIterator[httpx.AsyncClient]:
        """A client for several calls (a conversation's turns share its connections): the
        shared one if given, else one of its own, closed when the block ends."""
        if self._client is not None:
            yield self._client
            return
        async with httpx.AsyncClient(timeout=self.timeout) as client:
            yield client

    def payload(
        self,
        messages: Sequence[Message],
        *,
        tools: Sequence[Mapping[str, Any]] = (),
        stream: bool = False,
    ) -> dict[str, Any]:
        """The request body."""
        body: dict[str, Any] = {"model": self.model, "messages": list(messages)}
        if self.temperature is not None:
            body["temperature"] = self.temperature
        if tools:
            body["tools"] = list(tools)
            body["tool_choice"] = "auto"
        if stream:
            body["stream"] = True
        return body

    async def complete(
        self,
        messages: Sequence[Message],
        *,
        tools: Sequence[Mapping[str, Any]] = (),
        timeout: float | None = None,
        client: httpx.AsyncClient | None = None,
    ) -> ChatReply:
        """One answer, not streamed; `ChatError` for anything but a well-formed answer."""
        return await self._call(messages, tools, None, timeout, client)

    async def stream(
        self,
        messages: Sequence[Message],
        on_text: Callable[[str], None],
        *,
        tools: Sequence[Mapping[str, Any]] = (),
        timeout: float | None = None,
        client: httpx.AsyncClient | None = None,
    ) -> ChatReply:
        """One streamed answer: `on_text` gets each piece of text as it arrives (it must not
        block), the whole reply is returned at the end; `ChatError` as for `complete`. Text
        already handed out stays handed out when the call fails later."""
        return await self._call(messages, tools, on_text, timeout, client)

    async def _call(
        self,
        messages: Sequence[Message],
        tools: Sequence[Mapping[str, Any]],
        on_text: Callable[[str], None] | None,
        timeout: float | None,
        client: httpx.AsyncClient | None,
    ) -> ChatReply:
        seconds = self.timeout if timeout is None else timeout
        body = self.payload(messages, tools=tools, stream=on_text is not None)
        reply = _Reply(self.max_text_chars, self.max_argument_chars)
        try:
            async with asyncio.timeout(seconds):
                await self._request(body, reply, on_text, seconds, client)
        except ChatError:
            raise
        except (TimeoutError, httpx.TimeoutException) as exc:
            raise ChatError(ChatFailure.TIMEOUT, f"no answer within {seconds:g} s") from exc
        except httpx.HTTPStatusError as exc:
            raise ChatError(ChatFailure.HTTP_ERROR, f"HTTP {exc.response.status_code}") from exc
        except httpx.HTTPError as exc:
            raise ChatError(ChatFailure.TRANSPORT_ERROR, type(exc).__name__) from exc
        except Exception as exc:  # whatever else goes wrong is the caller's to fall back on
            raise ChatError(ChatFailure.ERROR, type(exc).__name__) from exc
        return reply.result()

    async def _request(
        self,
        body: dict[str, Any],
        reply: _Reply,
        on_text: Callable[[str], None] | None,
        seconds: float,
        client: httpx.AsyncClient | None,
    ) -> None:
        headers = {"Authorization": f"Bearer {self._api_key}"}
        if on_text is not None:
            headers["Accept"] = "text/event-stream"
        async with contextlib.AsyncExitStack() as stack:
            if client is None:
                client = await stack.enter_async_context(self.connection())
            response = await stack.enter_async_context(
                client.stream(
                    "POST",
                    self.url,
                    json=body,
                    headers=headers,
                    timeout=seconds,
                    auth=self._base.request_auth,
                )
            )
            if response.status_code >= 400:
                await response.aread()  # so the connection can be reused
                response.raise_for_status()
            kind = response.headers.get("content-type", "").split(";")[0].strip().lower()
            if on_text is not None and kind == "text/event-stream":
                await _read_events(response, reply, on_text)
                return
            _read_answer(await response.aread(), reply)
            if on_text is not None and reply.text:
                on_text("".join(reply.text))


def _read_answer(raw: bytes, reply: _Reply) -> None:
    """A whole (non-streamed) chat completion into `reply`."""
    try:
        message = json.loads(raw)["choices"][0]["message"]
        if not isinstance(message, dict):
            raise TypeError
    except (ValueError, LookupError, TypeError) as exc:
        raise ChatError(ChatFailure.BAD_RESPONSE, "not a chat-completions answer") from exc
    content = message.get("content")
    if content is not None and not isinstance(content, str):
        raise ChatError(ChatFailure.BAD_RESPONSE, "the message content is not text")
    if content:
        reply.add_text(content)
    calls = message.get("tool_calls") or []
    if not isinstance(calls, list):
        raise ChatError(ChatFailure.BAD_RESPONSE, "tool_calls is not a list")
    for position, call in enumerate(calls):
        reply.add_call(call, position)


async def _read_events(
    response: httpx.Response, reply: _Reply, on_text: Callable[[str], None]
) -> None:
    """Server-sent events of a streamed completion into `reply`, text to `on_text` as it comes.

    Only `data:` lines matter (comments and `event:` lines are skipped); the stream must end
    with `[DONE]`, or at least have said how it finished (`finish_reason`), or it was cut off.
    """
    async for line in response.aiter_lines():
        if len(line) > _MAX_LINE_CHARS:
            raise ChatError(ChatFailure.BAD_RESPONSE, "an over-long event")
        if not line.startswith("data:"):
            continue
        data = line[5:].strip()
        if data == "[DONE]":
            return
        if not data:
            continue
        try:
            chunk = json.loads(data)
        except ValueError as exc:
            raise ChatError(ChatFailure.BAD_RESPONSE, "an event that is not JSON") from exc
        text = _read_chunk(chunk, reply)
        if text:
            on_text(text)
    if reply.finish_reason is None:
        raise ChatError(ChatFailure.BAD_RESPONSE, "the stream ended before the answer did")


def _read_chunk(chunk: object, reply: _Reply) -> str:
    """One streamed chunk into `reply`; the text it added."""
    if not isinstance(chunk, dict):
        raise ChatError(ChatFailure.BAD_RESPONSE, "an event that is not an object")
    if "error" in chunk:
        raise ChatError(ChatFailure.BAD_RESPONSE, "the server reported an error mid-stream")
    choices = chunk.get("choices")
    if not isinstance(choices, list):
        raise ChatError(ChatFailure.BAD_RESPONSE, "an event without choices")
    if not choices:
        return ""  # a usage-only chunk
    choice = choices[0]
    if not isinstance(choice, dict):
        raise ChatError(ChatFailure.BAD_RESPONSE, "a choice that is not an object")
    delta = choice.get("delta") or {}
    if not isinstance(delta, dict):
        raise ChatError(ChatFailure.BAD_RESPONSE, "a delta that is not an object")
    text = _text(delta.get("content"))
    if text:
        reply.add_text(text)
    calls = delta.get("tool_calls") or []
    if not isinstance(calls, list):
        raise ChatError(ChatFailure.BAD_RESPONSE, "tool_calls is not a list")
    for position, call in enumerate(calls):
        reply.add_call(call, position)
    finish = choice.get("finish_reason")
    if finish is not None:
        reply.finish_reason = _text(finish)
    return text

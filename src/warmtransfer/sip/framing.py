"""Cutting a TCP or TLS byte stream into SIP messages (RFC 3261 18.3), sans-IO.

On a stream, Content-Length is the only thing that says where a message ends, so it is
mandatory there and a message without it cannot be told from the next one: the framer refuses
it and the connection must close (nothing after it can be trusted to start a message). The caps
are the parser's own (`ParseLimits`), checked before the bytes are kept, so a peer that never
ends its header section or announces a huge body costs at most one message of memory.

Keep-alives (RFC 5626 3.5.1): a double CRLF between messages is a ping that wants a single CRLF
back; a single CRLF is a pong and is dropped.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from warmtransfer.sip.message import DEFAULT_LIMITS, ParseLimits

__all__ = ["FramingError", "Ping", "StreamFramer"]

_HEAD_END = re.compile(rb"\r?\n\r?\n")
_LENGTH = re.compile(rb"^(?:content-length|l)[ \t]*:[ \t]*([^\r\n]*?)[ \t]*\r?$", re.I | re.M)


class FramingError(ValueError):
    """The stream cannot be cut into messages any more; the connection must be closed."""


@dataclass(frozen=True)
class Ping:
    """A CRLFCRLF keep-alive: answer it with one CRLF."""


PING = Ping()


class StreamFramer:
    def __init__(self, limits: ParseLimits = DEFAULT_LIMITS) -> None:
        self.limits = limits
        self._buffer = bytearray()

    @property
    def pending(self) -> int:
        """Bytes received that do not make a whole message yet."""
        return len(self._buffer)

    def feed(self, data: bytes) -> list[bytes | Ping]:
        """Take bytes from the stream; return the whole messages (and pings) they complete."""
        self._buffer += data
        out: list[bytes | Ping] = []
        while True:
            item = self._next()
            if item is None:
                return out
            out.append(item)

    def _next(self) -> bytes | Ping | None:
        buffer = self._buffer
        while buffer.startswith(b"\r\n"):
            if buffer.startswith(b"\r\n\r\n"):
                del buffer[:4]
                return PING
            if len(buffer) < 4 and b"\r\n\r\n".startswith(bytes(buffer)):
                return None  # maybe the start of a ping: wait for the rest
            del buffer[:2]  # a pong, or a stray CRLF before a start line (RFC 3261 7.5)
        if not buffer:
            return None
        end = _HEAD_END.search(buffer)
        if end is None:
            if len(buffer) > self.limits.max_message:
                raise FramingError(
                    f"no end of the header section in {len(buffer)} bytes "
                    f"(limit {self.limits.max_message})"
                )
            return None
        head = bytes(buffer[: end.start()])
        lengths = _LENGTH.findall(head)
        if not lengths:
            raise FramingError("a message on a stream transport must carry Content-Length")
        if len(set(lengths)) > 1:
            raise FramingError("Content-Length appears with different values")
        declared = lengths[0]
        if not declared.isdigit() or len(declared) > 10:
            raise FramingError(f"Content-Length {declared[:20]!r} is not a non-negative number")
        length = int(declared)
        if length > self.limits.max_body:
            raise FramingError(
                f"Content-Length {length} is over the {self.limits.max_body} byte limit"
            )
        total = end.end() + length
        if total > self.limits.max_message:
            raise FramingError(f"message of {total} bytes is over {self.limits.max_message}")
        if len(buffer) < total:
            return None
        message = bytes(buffer[:total])
        del buffer[:total]
        return message

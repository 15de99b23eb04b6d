"""Structured logs: one JSON object per line, each naming the call and the transfer it is about.

Why JSON lines: a service runs many calls at once, and its log lines interleave; a reader (or a
log pipeline) must be able to pick out one call's story without parsing free text. So every
line carries `call_id` and `transfer_id` (null when the line is about neither).

Why contextvars: the ids are set once, by whoever runs a call or a transfer, with
`log_context(call_id=..., transfer_id=...)`, and every line logged under it carries them, down
through every function and every task created inside the block (asyncio copies the context into
a new task), without threading ids through signatures that know nothing about logging.

    install_json_logging(level="INFO")
    with log_context(call_id=call.call_id):
        ...
        with log_context(transfer_id=transfer.transfer_id):
            await transfer.run()

For people at a terminal (`serve --log-format text`), `install_text_logging` writes plain lines
instead, with every control character of a line escaped (``\n`` as the two characters ``\n``):
a log line quotes what callers and API clients sent (a Call-ID, a URL-decoded path), and a
newline in it would otherwise forge a line of its own. A traceback keeps its lines, each
indented, so none of them can pass for a record either. (JSON lines need none of this: JSON
escapes them.)
"""

from __future__ import annotations

import contextlib
import json
import logging
import re
import sys
from collections.abc import Iterator
from contextvars import ContextVar
from datetime import UTC, datetime
from typing import IO, Any

__all__ = [
    "TEXT_FORMAT",
    "JsonFormatter",
    "TextFormatter",
    "current_ids",
    "escape_controls",
    "install_json_logging",
    "install_text_logging",
    "log_context",
]

TEXT_FORMAT = "%(asctime)s %(name)s %(message)s"

# C0 and C1 controls, DEL, and the Unicode line and paragraph separators: what can end a line.
_CONTROLS = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029]")

_call_id: ContextVar[str | None] = ContextVar("warmtransfer_call_id", default=None)
_transfer_id: ContextVar[str | None] = ContextVar("warmtransfer_transfer_id", default=None)

#: Attributes every LogRecord has; anything else passed with `extra=` is written as a field.
_STANDARD = frozenset(
    logging.LogRecord("", 0, "", 0, "", None, None).__dict__.keys()
    | {"message", "asctime", "taskName"}
)


@contextlib.contextmanager
def log_context(*, call_id: str | None = None, transfer_id: str | None = None) -> Iterator[None]:
    """Every line logged inside the block (and in tasks created inside it) carries these ids.
    An id left as None keeps the enclosing block's, so a transfer's block nests in its call's."""
    tokens = []
    if call_id is not None:
        tokens.append((_call_id, _call_id.set(call_id)))
    if transfer_id is not None:
        tokens.append((_transfer_id, _transfer_id.set(transfer_id)))
    try:
        yield
    finally:
        for var, token in reversed(tokens):
            var.reset(token)


def current_ids() -> tuple[str | None, str | None]:
    """(call_id, transfer_id) of the current context."""
    return _call_id.get(), _transfer_id.get()


class JsonFormatter(logging.Formatter):
    """One JSON object per record, on one line: time (UTC, ISO 8601), level, logger, message,
    call_id, transfer_id, then any `extra=` fields, then the exception's traceback if any.

    A record may name its own ids (``extra={"call_id": ...}``) when it is logged outside the
    call's context (e.g. by a callback of the SIP stack); those win over the context's."""

    def format(self, record: logging.LogRecord) -> str:
        call_id, transfer_id = current_ids()
        line: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
            "call_id": call_id,
            "transfer_id": transfer_id,
        }
        for key, value in record.__dict__.items():
            if key not in _STANDARD and not key.startswith("_"):
                line[key] = value
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        if record.stack_info:
            line["stack"] = self.formatStack(record.stack_info)
        # default=str: a value json cannot write (a Path, an enum) must not lose the line.
        return json.dumps(line, default=str, ensure_ascii=False)


def escape_controls(text: str) -> str:
    """`text` with each control character written as its escape (``\n``, ``\x1b``, ``\u2028``):
    one line, whatever it quotes."""
    return _CONTROLS.sub(lambda found: found.group().encode("unicode_escape").decode(), text)


class TextFormatter(logging.Formatter):
    """Plain lines (`TEXT_FORMAT` by default) in which a record's text cannot start a new line;
    a traceback or a stack follows on lines of its own, each indented."""

    def __init__(self, fmt: str | None = TEXT_FORMAT) -> None:
        super().__init__(fmt)

    def format(self, record: logging.LogRecord) -> str:
        # As logging.Formatter.format, but the traceback is made here, never taken from
        # `record.exc_text`: another handler may have cached it there unindented.
        record.message = record.getMessage()
        if self.usesTime():
            record.asctime = self.formatTime(record, self.datefmt)
        parts = [escape_controls(self.formatMessage(record))]
        if record.exc_info:
            parts.append(_indented(self.formatException(record.exc_info)))
        elif record.exc_text:
            parts.append(_indented(record.exc_text))
        if record.stack_info:
            parts.append(_indented(self.formatStack(record.stack_info)))
        return "\n".join(parts)


def _indented(text: str) -> str:
    return "\n".join("    " + escape_controls(line) for line in text.splitlines())


def install_text_logging(
    level: int | str = logging.INFO, stream: IO[str] | None = None
) -> logging.Handler:
    """As `install_json_logging`, with `TextFormatter` lines for people at a terminal."""
    return _install(TextFormatter(), level, stream)


def install_json_logging(
    level: int | str = logging.INFO, stream: IO[str] | None = None
) -> logging.Handler:
    """Send the root logger's records to `stream` (stderr) as JSON lines; returns the handler
    (remove it from the root logger to undo). Existing handlers are left alone."""
    return _install(JsonFormatter(), level, stream)


def _install(
    formatter: logging.Formatter, level: int | str, stream: IO[str] | None
) -> logging.Handler:
    handler = logging.StreamHandler(stream if stream is not None else sys.stderr)
    handler.setFormatter(formatter)
    root = logging.getLogger()
    root.addHandler(handler)
    root.setLevel(level)
    return handler

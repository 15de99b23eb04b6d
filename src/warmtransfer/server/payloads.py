"""Transfer events and outcomes as plain JSON data, one shape for the HTTP API and webhooks.

Why one module: a receiver of webhooks and a client polling the API read the same event, and
must not have to learn two spellings of it. Times are Unix seconds: the engine's clock is the
event loop's monotonic clock, which means nothing outside the process, so each payload is
converted with the offset taken when it is made.
"""

from __future__ import annotations

import dataclasses
import enum
import time
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from warmtransfer.transfer.events import TransferEvent
from warmtransfer.transfer.outcome import Attempt, Completed, TransferOutcome
from warmtransfer.transfer.states import AttemptEvent

__all__ = ["event_payload", "outcome_payload", "plain", "wall_clock"]


def wall_clock(monotonic: float, now_monotonic: float) -> float:
    """Unix time of `monotonic`, a moment on the clock whose present reading is `now_monotonic`."""
    return round(time.time() - (now_monotonic - monotonic), 6)


def plain(value: object) -> Any:
    """A JSON-ready copy of an event's or an outcome's field."""
    if isinstance(value, BaseModel):
        return value.model_dump(mode="json")
    if isinstance(value, enum.Enum):
        return value.value
    if isinstance(value, Path):
        return str(value)
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, list | tuple):
        return [plain(item) for item in value]
    if isinstance(value, dict):
        return {str(k): plain(v) for k, v in value.items()}
    return value


def event_payload(event: TransferEvent, now_monotonic: float) -> dict[str, Any]:
    """One move of a transfer: its name, the states around it, the attempt it is about (or
    null) and the event's own fields (`target`, `reason`, `sip_status`...)."""
    moved = event.event
    fields = {
        f.name: plain(getattr(moved, f.name))
        for f in dataclasses.fields(moved)
        if f.name not in ("at", "attempt")
    }
    return {
        "transfer_id": event.transfer_id,
        "event": moved.name,
        "previous": event.previous.value,
        "state": event.state.value,
        "at": wall_clock(event.at, now_monotonic),
        "attempt": moved.attempt if isinstance(moved, AttemptEvent) else None,
        "fields": fields,
    }


def _attempt(attempt: Attempt, now_monotonic: float) -> dict[str, Any]:
    data: dict[str, Any] = plain(attempt)
    for key in ("started", "ringing", "answered", "ended"):
        moment = getattr(attempt, key)
        data[key] = None if moment is None else wall_clock(moment, now_monotonic)
    return data


def outcome_payload(outcome: TransferOutcome, now_monotonic: float) -> dict[str, Any]:
    """How a transfer ended: ok, reason, the SIP status when there is one, and the attempts."""
    data: dict[str, Any] = {
        "ok": outcome.ok,
        "reason": outcome.reason.value,
        "started": wall_clock(outcome.started, now_monotonic),
        "ended": wall_clock(outcome.ended, now_monotonic),
        "attempts": [_attempt(a, now_monotonic) for a in outcome.attempts],
    }
    if isinstance(outcome, Completed):
        data.update(target=plain(outcome.target), winner=outcome.winner, fallback=outcome.fallback)
    else:
        data.update(
            sip_status=outcome.sip_status,
            sip_reason=outcome.sip_reason,
            detail=outcome.detail,
            dismissed=outcome.dismissed,
            recorded_message=plain(outcome.recorded_message),
        )
    return data

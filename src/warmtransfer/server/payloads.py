"""Transfer events and outcomes as plain JSON data, one shape for the HTTP API and webhooks.

Why one module: a receiver of webhooks and a client polling the API read the same event, and
must not have to learn two spellings of it. Times are Unix seconds: the engine's clock is the
event loop's monotonic clock, which means nothing outside the process, so each payload is
converted with the offset taken when it is made.

The API reads a transfer from memory while it is recent and from the records store after, and
the store keeps its own columns (see `records`); `stored_event_payload` and
`stored_outcome_payload` turn a stored row into the very shape `event_payload` and
`outcome_payload` give, so a client never sees the answer change shape as a transfer ages. A
target is always ``{"uri", "display_name"}`` (who was dialled; the plan has the rest, and its
post-dial digits or extra headers have no business in a log or a webhook).
"""

from __future__ import annotations

import dataclasses
import enum
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel

from warmtransfer.transfer.events import TransferEvent
from warmtransfer.transfer.outcome import Attempt, Completed, TransferOutcome
from warmtransfer.transfer.states import AttemptEvent
from warmtransfer.transfer.target import Target

if TYPE_CHECKING:
    from warmtransfer.server.records import EventRecord, TransferRecord

__all__ = [
    "event_payload",
    "outcome_payload",
    "plain",
    "stored_event_payload",
    "stored_outcome_payload",
    "target_payload",
    "wall_clock",
]


def wall_clock(monotonic: float, now_monotonic: float) -> float:
    """Unix time of `monotonic`, a moment on the clock whose present reading is `now_monotonic`."""
    return round(time.time() - (now_monotonic - monotonic), 6)


def target_payload(uri: str, display_name: str | None) -> dict[str, Any]:
    """Who was dialled, as every payload (and the records store) names a target."""
    return {"uri": uri, "display_name": display_name}


def plain(value: object) -> Any:
    """A JSON-ready copy of an event's or an outcome's field."""
    if isinstance(value, Target):
        return target_payload(value.uri, value.display_name)
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


#: The keys of a completed outcome's and of a failed one's own facts: every outcome payload has
#: all of them (null where they do not apply), so its shape does not depend on how it ended.
_COMPLETED_KEYS = ("target", "winner", "fallback")
_FAILED_KEYS = ("sip_status", "sip_reason", "detail", "dismissed", "recorded_message")


def outcome_payload(outcome: TransferOutcome, now_monotonic: float) -> dict[str, Any]:
    """How a transfer ended: ok, reason, the SIP status when there is one, and the attempts."""
    data: dict[str, Any] = {
        "ok": outcome.ok,
        "reason": outcome.reason.value,
        "started": wall_clock(outcome.started, now_monotonic),
        "ended": wall_clock(outcome.ended, now_monotonic),
        "attempts": [_attempt(a, now_monotonic) for a in outcome.attempts],
        **dict.fromkeys(_COMPLETED_KEYS + _FAILED_KEYS),
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


# -- from the records store ---------------------------------------------------------------------


def stored_event_payload(transfer_id: str, event: EventRecord) -> dict[str, Any]:
    """A stored event (`records.EventRecord`, its time already Unix) as `event_payload`."""
    return {
        "transfer_id": transfer_id,
        "event": event.name,
        "previous": event.previous,
        "state": event.state,
        "at": event.at,
        "attempt": event.attempt,
        "fields": event.fields,
    }


def _stored_attempt(attempt: dict[str, Any]) -> dict[str, Any]:
    """The store keeps an attempt's target as `target` (its URI) and `target_name`."""
    data = {key: value for key, value in attempt.items() if key != "target_name"}
    data["target"] = target_payload(attempt["target"], attempt.get("target_name"))
    return data


def stored_outcome_payload(record: TransferRecord) -> dict[str, Any] | None:
    """A stored transfer's outcome (None while it is incomplete) as `outcome_payload`."""
    stored = record.outcome
    if stored is None:
        return None
    data: dict[str, Any] = {
        "ok": stored["ok"],
        "reason": stored["reason"],
        "started": stored["started"],
        "ended": stored["ended"],
        "attempts": [_stored_attempt(a) for a in record.attempts],
        **{key: stored.get(key) for key in _COMPLETED_KEYS + _FAILED_KEYS},
    }
    if stored.get("target") is not None:
        data["target"] = target_payload(stored["target"], stored.get("target_name"))
    return data

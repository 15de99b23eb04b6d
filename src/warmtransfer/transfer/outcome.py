"""Outcomes are values, not strings.

An app must be able to tell busy from no-answer from declined from voicemail (the reference
system reports all of them as one message string), and keep the SIP status for its logs.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from warmtransfer.transfer.target import Target


class Reason(StrEnum):
    COMPLETED = "completed"
    BUSY = "busy"
    NO_ANSWER = "no_answer"
    DECLINED = "declined"
    VOICEMAIL = "voicemail"
    REJECTED = "rejected"
    UNREACHABLE = "unreachable"
    TARGET_HUNG_UP = "target_hung_up"
    CALLER_HUNG_UP = "caller_hung_up"
    CONSULT_TIMEOUT = "consult_timeout"
    TRANSFER_TIMEOUT = "transfer_timeout"
    CANCELLED = "cancelled"
    BRIDGE_FAILED = "bridge_failed"
    ERROR = "error"


class DialFailed(Exception):
    """A dial attempt ended without an answered leg. Raised by every backend's dialer."""

    def __init__(
        self,
        reason: Reason,
        sip_status: int | None = None,
        sip_reason: str | None = None,
        detail: str = "",
    ) -> None:
        self.reason = reason
        self.sip_status = sip_status
        self.sip_reason = sip_reason
        self.detail = detail
        status = f" ({sip_status} {sip_reason or ''})".rstrip() if sip_status else ""
        super().__init__(f"dial failed: {reason.value}{status}{': ' + detail if detail else ''}")


class BridgeFailed(Exception):
    """Caller and human could not be joined; the caller goes back to the AI."""


@dataclass(frozen=True)
class Attempt:
    """One dial of one target, with monotonic timestamps (seconds, `time.monotonic`)."""

    target: Target
    started: float
    ringing: float | None = None
    answered: float | None = None
    ended: float | None = None
    reason: Reason | None = None
    sip_status: int | None = None
    sip_reason: str | None = None


@dataclass(frozen=True)
class Completed:
    """The human accepted and is joined to the caller; the AI has left the call."""

    target: Target
    attempts: tuple[Attempt, ...]
    started: float
    ended: float
    reason: Reason = Reason.COMPLETED

    @property
    def ok(self) -> bool:
        return True


@dataclass(frozen=True)
class Failed:
    """No human took the call. Unless `reason` is CALLER_HUNG_UP the caller is back with the AI."""

    reason: Reason
    attempts: tuple[Attempt, ...]
    started: float
    ended: float
    sip_status: int | None = None
    sip_reason: str | None = None
    detail: str = ""

    @property
    def ok(self) -> bool:
        return False


TransferOutcome = Completed | Failed

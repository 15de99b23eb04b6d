"""Outcomes are values, not strings.

An app must be able to tell busy from no-answer from declined from voicemail (the reference
system reports all of them as one message string), and keep the SIP status for its logs.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path

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
    CANCELLED = "cancelled"  # by the app
    CANCELLED_BY_CALLER = "cancelled_by_caller"  # the caller pressed the cancel key while held
    MESSAGE_LEFT = "message_left"  # the caller chose to leave a message instead of waiting
    BRIDGE_FAILED = "bridge_failed"
    ERROR = "error"


def reason_for_status(status: int | None, *, ring_timeout: bool = False) -> Reason:
    """Map a final SIP response to a failure reason an app can act on; one table for every
    backend. `ring_timeout`: the attempt was given up for ringing too long (our CANCEL, or a
    408 that a backend knows to mean that)."""
    if ring_timeout:
        return Reason.NO_ANSWER
    if status is None:
        return Reason.UNREACHABLE
    if status in (486, 600):
        return Reason.BUSY
    if status == 603:
        return Reason.DECLINED
    if status in (480, 487):
        return Reason.NO_ANSWER
    if status in (404, 408, 410, 484, 502, 503, 504, 604):
        return Reason.UNREACHABLE
    return Reason.REJECTED


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
    """One dial of one target, with monotonic timestamps (seconds, `time.monotonic`).

    Its position in the outcome's `attempts` is the `attempt` index that its events carry.
    `reason` is how this attempt ended: COMPLETED for the one that was bridged, CANCELLED for
    one ended because another target accepted first, or the transfer's reason for one that the
    end of the transfer cut short (e.g. CALLER_HUNG_UP while it rang).
    """

    target: Target
    started: float
    ringing: float | None = None
    answered: float | None = None
    ended: float | None = None
    reason: Reason | None = None
    sip_status: int | None = None
    sip_reason: str | None = None
    detail: str = ""
    round: int = 1  # 1-based round of the hunt; the fallback's is the round it followed
    fallback: bool = False  # the plan's on_failure fallback target, bridged without a consult


@dataclass(frozen=True)
class Completed:
    """The human accepted and is joined to the caller; the AI has left the call."""

    target: Target
    attempts: tuple[Attempt, ...]
    started: float
    ended: float
    reason: Reason = Reason.COMPLETED
    winner: int = 0  # index in `attempts` of the attempt that was bridged
    fallback: bool = False  # the winner is the plan's fallback target (no consult)

    @property
    def ok(self) -> bool:
        return True


@dataclass(frozen=True)
class Failed:
    """No human took the call. The caller is back with the AI, unless `reason` is CALLER_HUNG_UP
    (the caller has gone) or `dismissed` is true (the plan's on_failure played its message to
    the caller and hung up).

    `recorded_message` is the WAV file (8 kHz mono 16-bit) of the message the caller left
    instead of waiting (the plan's `caller_keys.message_key`), else None. Attach it whenever it
    is set, whatever the reason: MESSAGE_LEFT when the caller ended the message with the key or
    by staying silent and is back with the AI (or was dismissed), but CALLER_HUNG_UP when they
    ended it by hanging up, which keeps the promise above that CALLER_HUNG_UP means "gone".
    """

    reason: Reason
    attempts: tuple[Attempt, ...]
    started: float
    ended: float
    sip_status: int | None = None
    sip_reason: str | None = None
    detail: str = ""
    dismissed: bool = False
    recorded_message: Path | None = None

    @property
    def ok(self) -> bool:
        return False


TransferOutcome = Completed | Failed


# How informative each reason of a failed attempt is, most first. A human's own act (declined,
# whether by key during the consult or by rejecting the ringing call, SIP 603; hung up) says more
# than a machine (voicemail), which says more than silence (no decision in time); among the
# rest, a busy line says more than one that rang out, which says more than a refusal by the
# network or no route at all.
_REACHED_ORDER = (
    Reason.DECLINED,
    Reason.TARGET_HUNG_UP,
    Reason.VOICEMAIL,
    Reason.CONSULT_TIMEOUT,
)
_UNREACHED_ORDER = (Reason.BUSY, Reason.NO_ANSWER, Reason.REJECTED, Reason.UNREACHABLE)


def most_informative(attempts: Sequence[Attempt]) -> Attempt:
    """The attempt whose reason (and SIP status) speaks for a hunt in which every attempt failed.

    1. If a human (or their voicemail) was reached, in any round: the attempt with the first
       reason in DECLINED > TARGET_HUNG_UP > VOICEMAIL > CONSULT_TIMEOUT. A human who said no in
       round 1 is not dialled again (declined is never retried), so only this rule reports it.
    2. Otherwise, among the attempts of the last round (the latest news of every target still
       being retried): the first reason in BUSY > NO_ANSWER > REJECTED > UNREACHABLE.
    Ties go to the most recent attempt; a reason outside these lists ranks last.
    """
    if not attempts:
        raise ValueError("a hunt with no attempt has no reason")
    reached = [a for a in attempts if a.reason in _REACHED_ORDER]
    if reached:
        pool, order = reached, _REACHED_ORDER
    else:
        last_round = max(a.round for a in attempts)
        pool, order = [a for a in attempts if a.round == last_round], _UNREACHED_ORDER

    def rank(item: tuple[int, Attempt]) -> tuple[int, int]:
        index, attempt = item
        position = order.index(attempt.reason) if attempt.reason in order else len(order)
        return position, -index

    return min(enumerate(pool), key=rank)[1]

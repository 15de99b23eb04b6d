"""How a transfer's end becomes its outcome: the ending events, read as reasons.

The driver decides *when* a transfer ends (first event wins); these pure functions say *what*
that end means for the app: which reason, which SIP status, which detail, and which attempt.
Pure, so every rule about what an app is told can be read in one place, without the tasks.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from warmtransfer.transfer.attempts import RunningAttempt
from warmtransfer.transfer.outcome import (
    Completed,
    Failed,
    Reason,
    TransferOutcome,
    most_informative,
)
from warmtransfer.transfer.states import (
    AttemptFailed,
    BridgeBroke,
    Bridged,
    CallerCancelled,
    CallerHungUp,
    Cancelled,
    ConsultTimedOut,
    Declined,
    Event,
    HuntExhausted,
    MessageRequested,
    PortFailed,
    State,
    TargetHungUp,
    TransferTimedOut,
    VoicemailDetected,
)

#: Events that interrupt a transfer from outside its flow; everything else is the flow's own.
INTERRUPTS = (
    CallerHungUp,
    CallerCancelled,
    MessageRequested,
    Cancelled,
    TransferTimedOut,
    PortFailed,
)


def describe_end(event: Event) -> tuple[Reason, int | None, str | None, str]:
    """The outcome fields (reason, SIP status, SIP reason, detail) an ending event stands for."""
    match event:
        case Bridged():
            return Reason.COMPLETED, None, None, ""
        case HuntExhausted(reason=reason, sip_status=status, sip_reason=text, detail=detail):
            return reason, status, text, detail
        case AttemptFailed(reason=reason, sip_status=status, sip_reason=text, detail=detail):
            return reason, status, text, detail
        case Declined(reason=text):
            return Reason.DECLINED, None, None, text or ""
        case VoicemailDetected(via=via):
            return Reason.VOICEMAIL, None, None, via
        case TargetHungUp():
            return Reason.TARGET_HUNG_UP, None, None, ""
        case ConsultTimedOut(timeout=timeout):
            return Reason.CONSULT_TIMEOUT, None, None, f"no decision within {timeout:g} s"
        case BridgeBroke(detail=detail):
            return Reason.BRIDGE_FAILED, None, None, detail
        case CallerHungUp(detail=detail):
            return Reason.CALLER_HUNG_UP, None, None, detail
        case CallerCancelled(key=key):
            return Reason.CANCELLED_BY_CALLER, None, None, f"the caller pressed {key} while held"
        case MessageRequested(key=key):
            return Reason.MESSAGE_LEFT, None, None, f"the caller pressed {key} to leave a message"
        case Cancelled(detail=detail):
            return Reason.CANCELLED, None, None, detail
        case TransferTimedOut(timeout=timeout):
            return Reason.TRANSFER_TIMEOUT, None, None, f"transfer not done within {timeout:g} s"
        case PortFailed(detail=detail):
            return Reason.ERROR, None, None, detail
    raise ValueError(f"{event.name} does not end a transfer")


def hunt_exhausted(attempts: Sequence[RunningAttempt], at: float) -> HuntExhausted:
    """The end of a hunt in which every attempt failed: it stands for the most informative
    attempt (a busy beats a no-answer, see `most_informative`), whose index it carries."""
    hunt = [attempt.frozen(Reason.ERROR) for attempt in attempts]
    best = most_informative(hunt)
    return HuntExhausted(
        at=at,
        reason=best.reason or Reason.ERROR,
        attempt=next(i for i, attempt in enumerate(hunt) if attempt is best),
        sip_status=best.sip_status,
        sip_reason=best.sip_reason,
        detail=best.detail,
    )


def build_outcome(
    *,
    state: State,
    final: Event,
    hunt_end: Event,
    end: Event,
    attempts: Sequence[RunningAttempt],
    winner: RunningAttempt | None,
    started: float,
    message_error: str | None,
    recorded_message: Path | None = None,
    record_error: str | None = None,
) -> TransferOutcome:
    """The outcome of a transfer that reached terminal `state` on `final`. `hunt_end` ended the
    hunt and `end` the last phase (the fallback's, if there was one; else the same event).
    `recorded_message` is the caller's message, if they left one; `record_error` says why the
    message they asked to leave could not be recorded."""
    hunt_reason = describe_end(hunt_end)[0]
    fallback_reason = describe_end(end)[0]
    frozen = tuple(a.frozen(fallback_reason if a.fallback else hunt_reason) for a in attempts)
    if state is State.COMPLETED:
        assert winner is not None
        return Completed(
            target=frozen[winner.index].target,
            attempts=frozen,
            started=started,
            ended=final.at,
            winner=winner.index,
            fallback=frozen[winner.index].fallback,
        )
    # The hunt's failure is the reason, unless the fallback phase was interrupted (caller,
    # app, deadline, port): then that is why the caller is where they are.
    why = end if isinstance(end, INTERRUPTS) else hunt_end
    reason, sip_status, sip_reason, detail = describe_end(why)
    if why is not end:  # the fallback failed on its own: say how, in the detail
        fallback = frozen[-1]
        how = f"fallback {fallback.target.label}: {fallback.reason}"
        detail = f"{detail}; {how}" if detail else how
    if message_error is not None:
        detail = f"{detail}; failure message not played: {message_error}"
    if record_error is not None:
        # The caller asked to leave a message and none was recorded: not MESSAGE_LEFT.
        detail = f"{detail}; message not recorded: {record_error}"
        reason = Reason.ERROR
    if state is State.ABANDONED and isinstance(why, MessageRequested):
        # Hanging up is how many callers end a message: they are gone (CALLER_HUNG_UP, as
        # Failed promises), and the message, if any was recorded, is in `recorded_message`.
        detail = (
            "the caller left a message and hung up"
            if recorded_message is not None
            else "the caller asked to leave a message and hung up before the tone"
        )
        reason, sip_status, sip_reason = Reason.CALLER_HUNG_UP, None, None
    elif state is State.ABANDONED and not isinstance(why, CallerHungUp):
        # The caller left while being given back: they are not with the AI, so the reason
        # must say so (Failed's promise); what the transfer had failed on goes in the detail.
        detail = f"caller hung up while recovering from {reason.value}" + (
            f": {detail}" if detail else ""
        )
        reason, sip_status, sip_reason = Reason.CALLER_HUNG_UP, None, None
    elif isinstance(final, PortFailed) and final is not why:
        # Giving the caller back failed: the app must not assume the AI has them.
        was = reason.value + (f": {detail}" if detail else "")
        detail = f"{final.detail} (while recovering from {was})"
        reason = Reason.ERROR
    return Failed(
        reason,
        frozen,
        started,
        final.at,
        sip_status,
        sip_reason,
        detail,
        dismissed=state is State.DISMISSED,
        recorded_message=recorded_message,
    )

"""Warm transfer: the state machine, its driver, and the contract backends implement.

    outcome = await warm_transfer(plan=..., caller=..., dialer=..., bridge=...,
                                  consultant=..., briefing=...)

This package knows nothing about SIP or LiveKit; backends implement `ports`.
"""

from warmtransfer.transfer.driver import WarmTransfer, warm_transfer
from warmtransfer.transfer.events import TransferEvent
from warmtransfer.transfer.outcome import (
    Attempt,
    BridgeFailed,
    Completed,
    DialFailed,
    Failed,
    Reason,
    TransferOutcome,
    most_informative,
)
from warmtransfer.transfer.plan import (
    CallerKeys,
    Fallback,
    HoldAudio,
    Hunting,
    MessageAndHangup,
    OnFailure,
    PlanFileError,
    ReturnToAgent,
    TransferPlan,
)
from warmtransfer.transfer.ports import (
    Bridge,
    CallerCancelledNotifier,
    CallerLeftNotifier,
    CallerLeg,
    Dialer,
    TargetLeg,
)
from warmtransfer.transfer.states import (
    TRANSITIONS,
    AttemptEvent,
    Event,
    IllegalTransition,
    State,
    TransferStateMachine,
    is_terminal,
)
from warmtransfer.transfer.target import AllowList, DestinationNotAllowed, Target

__all__ = [
    "TRANSITIONS",
    "AllowList",
    "Attempt",
    "AttemptEvent",
    "Bridge",
    "BridgeFailed",
    "CallerCancelledNotifier",
    "CallerKeys",
    "CallerLeftNotifier",
    "CallerLeg",
    "Completed",
    "DestinationNotAllowed",
    "DialFailed",
    "Dialer",
    "Event",
    "Failed",
    "Fallback",
    "HoldAudio",
    "Hunting",
    "IllegalTransition",
    "MessageAndHangup",
    "OnFailure",
    "PlanFileError",
    "Reason",
    "ReturnToAgent",
    "State",
    "Target",
    "TargetLeg",
    "TransferEvent",
    "TransferOutcome",
    "TransferPlan",
    "TransferStateMachine",
    "WarmTransfer",
    "is_terminal",
    "most_informative",
    "warm_transfer",
]

"""warmtransfer: warm transfers of phone calls from an AI voice agent to a human, over SIP.

The names an app needs are importable from here; they load on first use, so `import
warmtransfer` stays cheap (no numpy, no SIP stack, no speech model until asked for).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

_EXPORTS = {
    "Engine": "warmtransfer.engine",
    "TransferPlan": "warmtransfer.transfer.plan",
    "HoldAudio": "warmtransfer.transfer.plan",
    "Hunting": "warmtransfer.transfer.plan",
    "Fallback": "warmtransfer.transfer.plan",
    "MessageAndHangup": "warmtransfer.transfer.plan",
    "ReturnToAgent": "warmtransfer.transfer.plan",
    "PlanFileError": "warmtransfer.transfer.plan",
    "Attempt": "warmtransfer.transfer.outcome",
    "Target": "warmtransfer.transfer.target",
    "AllowList": "warmtransfer.transfer.target",
    "DestinationNotAllowed": "warmtransfer.transfer.target",
    "Briefing": "warmtransfer.consult.ports",
    "Turn": "warmtransfer.consult.ports",
    "Completed": "warmtransfer.transfer.outcome",
    "Failed": "warmtransfer.transfer.outcome",
    "Reason": "warmtransfer.transfer.outcome",
    "TransferOutcome": "warmtransfer.transfer.outcome",
    "TransferEvent": "warmtransfer.transfer.events",
    "State": "warmtransfer.transfer.states",
    "WarmTransfer": "warmtransfer.transfer.driver",
}

__all__ = [
    "AllowList",
    "Attempt",
    "Briefing",
    "Completed",
    "DestinationNotAllowed",
    "Engine",
    "Failed",
    "Fallback",
    "HoldAudio",
    "Hunting",
    "MessageAndHangup",
    "PlanFileError",
    "Reason",
    "ReturnToAgent",
    "State",
    "Target",
    "TransferEvent",
    "TransferOutcome",
    "TransferPlan",
    "Turn",
    "WarmTransfer",
    "__version__",
]

if TYPE_CHECKING:
    from warmtransfer.consult.ports import Briefing, Turn
    from warmtransfer.engine import Engine
    from warmtransfer.transfer.driver import WarmTransfer
    from warmtransfer.transfer.events import TransferEvent
    from warmtransfer.transfer.outcome import Attempt, Completed, Failed, Reason, TransferOutcome
    from warmtransfer.transfer.plan import (
        Fallback,
        HoldAudio,
        Hunting,
        MessageAndHangup,
        PlanFileError,
        ReturnToAgent,
        TransferPlan,
    )
    from warmtransfer.transfer.states import State
    from warmtransfer.transfer.target import AllowList, DestinationNotAllowed, Target


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'warmtransfer' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value

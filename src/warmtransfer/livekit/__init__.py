"""warmtransfer on LiveKit: the rooms backend (`WarmTransferTask`, a drop-in for livekit-agents'
own) and livekit-agents sessions over warmtransfer's SIP legs (`sip_io`, `plugins`).

Every name loads on first use (PEP 562): ``import warmtransfer.livekit`` imports nothing of
LiveKit, so an app on the embedded SIP backend never pays the ~2 s and ~120 MB that
``import livekit.agents`` costs, and never needs livekit-agents installed.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

_EXPORTS = {
    # the rooms backend (this package's task.py, rooms.py, consult.py, view.py)
    "WarmTransferTask": "warmtransfer.livekit.task",
    "WarmTransferResult": "warmtransfer.livekit.task",
    "TransferFailedError": "warmtransfer.livekit.task",
    "default_plan": "warmtransfer.livekit.task",
    "RoomsBackend": "warmtransfer.livekit.task",
    "SipBackend": "warmtransfer.livekit.sip_io",
    "MergeMode": "warmtransfer.livekit.rooms",
    "RoomCallerLeg": "warmtransfer.livekit.rooms",
    "RoomDialer": "warmtransfer.livekit.rooms",
    "RoomTargetLeg": "warmtransfer.livekit.rooms",
    "RoomBridge": "warmtransfer.livekit.rooms",
    "SipOrigin": "warmtransfer.livekit.rooms",
    "SessionConsultant": "warmtransfer.livekit.consult",
    "RoomView": "warmtransfer.livekit.view",
    # livekit-agents sessions over warmtransfer SIP legs (another module's names)
    "AudioInputFromLeg": "warmtransfer.livekit.sip_io",
    "AudioOutputToLeg": "warmtransfer.livekit.sip_io",
    "SttAdapter": "warmtransfer.livekit.plugins",
    "TtsAdapter": "warmtransfer.livekit.plugins",
}

__all__ = [
    "AudioInputFromLeg",
    "AudioOutputToLeg",
    "MergeMode",
    "RoomBridge",
    "RoomCallerLeg",
    "RoomDialer",
    "RoomTargetLeg",
    "RoomView",
    "RoomsBackend",
    "SessionConsultant",
    "SipBackend",
    "SipOrigin",
    "SttAdapter",
    "TransferFailedError",
    "TtsAdapter",
    "WarmTransferResult",
    "WarmTransferTask",
    "default_plan",
]

if TYPE_CHECKING:
    from warmtransfer.livekit.consult import SessionConsultant
    from warmtransfer.livekit.rooms import (
        MergeMode,
        RoomBridge,
        RoomCallerLeg,
        RoomDialer,
        RoomTargetLeg,
        SipOrigin,
    )
    from warmtransfer.livekit.sip_io import SipBackend
    from warmtransfer.livekit.task import (
        RoomsBackend,
        TransferFailedError,
        WarmTransferResult,
        WarmTransferTask,
        default_plan,
    )
    from warmtransfer.livekit.view import RoomView


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'warmtransfer.livekit' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value

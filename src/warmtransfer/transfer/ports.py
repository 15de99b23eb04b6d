"""The ports the transfer driver talks to. Each backend (embedded SIP, LiveKit) implements them.

Contract every implementation keeps, because the driver's guarantees rest on it:
- cancellation is honoured at every await: a cancelled `dial` cancels the attempt (SIP CANCEL, or
  BYE if the answer crossed) before it re-raises; nothing keeps ringing;
- `hangup` and `unhold` are idempotent and never raise because the far end is already gone;
- `wait_hangup` returns (never raises) once the leg has ended, at once if it already has.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

from warmtransfer.consult.ports import ConsultLeg
from warmtransfer.transfer.plan import HoldAudio
from warmtransfer.transfer.target import Target


class CallerLeg(Protocol):
    """The caller's leg, which the AI agent is talking to."""

    async def hold(self, audio: HoldAudio) -> None:
        """Stop the AI hearing the caller and start hold audio. Returns once it is playing."""
        ...

    async def unhold(self) -> None:
        """Stop hold audio and give the caller back to the AI."""
        ...

    async def wait_hangup(self) -> None: ...

    @property
    def hung_up(self) -> bool: ...


class TargetLeg(ConsultLeg, Protocol):
    """An answered leg to a human."""

    async def send_digits(self, digits: str) -> None:
        """Post-dial digits (RFC 4733) to the human's leg; `w` or `,` pauses 0.5 s."""
        ...

    async def wait_hangup(self) -> None: ...

    @property
    def hung_up(self) -> bool: ...

    async def hangup(self) -> None: ...


class Dialer(Protocol):
    async def dial(self, target: Target, on_ringing: Callable[[int], None]) -> TargetLeg:
        """Ring the target until answer; raise `DialFailed` with a typed reason otherwise.

        `on_ringing` gets the SIP status of the provisional response (180 or 183).
        """
        ...


class Bridge(Protocol):
    async def connect(self, caller: CallerLeg, target: TargetLeg) -> None:
        """Join caller and human and take the AI out; raise `BridgeFailed` if it cannot.

        It also stops the caller's hold audio: after a successful connect the driver never calls
        `unhold` (that would give the caller back to the AI).
        After it returns, the bridge owns both legs: when either side hangs up it ends the other.
        """
        ...

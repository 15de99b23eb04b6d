"""The ports the transfer driver talks to. Each backend (embedded SIP, LiveKit) implements them.

Contract every implementation keeps, because the driver's guarantees rest on it:
- cancellation is honoured at every await: a cancelled `dial` cancels the attempt (SIP CANCEL, or
  BYE if the answer crossed) before it re-raises; nothing keeps ringing;
- `hangup`, `unhold` and `play_message` are idempotent or harmless on a leg that has ended, and
  never raise because the far end is already gone (`play_message` just returns);
- `wait_hangup` returns (never raises) once the leg has ended, at once if it already has.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol, runtime_checkable

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

    async def play_message(self, text: str) -> None:
        """Stop hold audio and speak `text` to the caller (the backend renders it); return once
        it has been spoken. The AI still does not hear the caller. Used by the plan's
        ``message_and_hangup`` failure action, which hangs up right after."""
        ...

    async def hangup(self) -> None:
        """End the caller's call (the transfer gave up on them, by the plan's choice)."""
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

        Called concurrently, once per target, when a plan hunts in simultaneous mode.

        `on_ringing` gets the SIP status of the provisional response (180 or 183).
        """
        ...


class Bridge(Protocol):
    async def connect(self, caller: CallerLeg, target: TargetLeg) -> None:
        """Join caller and human and take the AI out; raise `BridgeFailed` if it cannot.

        It also stops the caller's hold audio: after a successful connect the driver never calls
        `unhold` (that would give the caller back to the AI). A connect that is cancelled (the
        caller, the app or the deadline ended the transfer meanwhile) leaves the legs unjoined.
        After it returns, the bridge owns both legs: when either side hangs up it ends the other.
        """
        ...


@runtime_checkable
class CallerLeftNotifier(Protocol):
    """Optional consultant capability: tell the human the caller has gone before hanging up.

    The driver calls it (bounded by NOTICE_TIMEOUT) for every answered human when the caller
    hangs up, after that human's consult has been cancelled and awaited.
    """

    async def notify_caller_left(self, leg: ConsultLeg) -> None: ...

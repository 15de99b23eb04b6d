"""The ports the transfer driver talks to. Each backend (embedded SIP, LiveKit) implements them.

Contract every implementation keeps, because the driver's guarantees rest on it:
- cancellation is honoured at every await: a cancelled `dial` cancels the attempt (SIP CANCEL, or
  BYE if the answer crossed) before it re-raises; nothing keeps ringing;
- `hangup`, `unhold` and `play_message` are idempotent or harmless on a leg that has ended, and
  never raise because the far end is already gone (`play_message` just returns);
- `wait_hangup` returns (never raises) once the leg has ended, at once if it already has;
- the AI never hears a held caller: not during a progress prompt, not while a message is being
  recorded (the recording taps the caller's audio, it does not reconnect the AI).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
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
        """Stop hold audio (a progress prompt included) and give the caller back to the AI."""
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

    async def next_key(self) -> str:
        """The next DTMF key the caller presses; raise `LegGone` once the caller has hung up.

        The driver reads keys only while the caller is held. Keys pressed before `hold` are
        not returned, and `unhold` discards those the transfer did not read, so no key meant
        for the hold reaches the AI (and none meant for the AI ends a transfer)."""
        ...

    async def announce(self, text: str) -> None:
        """A progress prompt while held: pause the hold audio, speak `text` (the backend renders
        it, and may cache the clip), resume the hold audio; return once spoken.

        Does nothing if the caller is not held (unheld, bridged or gone). A prompt is part of
        the hold audio: `unhold`, `play_message`, `record_message` and the bridge's `connect`
        stop it at once, as they stop the music. Cancelled, it stops the prompt and resumes the
        music only if the caller is still held and nothing else took over the hold audio
        meanwhile: the driver cancels it, without waiting, when a human accepts or the caller
        stops waiting, so neither the bridge nor the caller waits for a prompt."""
        ...

    async def record_message(
        self,
        path: Path,
        *,
        prompt: str,
        max_seconds: float,
        stop_key: str,
        silence_seconds: float,
    ) -> Path | None:
        """Stop the hold audio, speak `prompt`, play a tone, then record what the caller says to
        the WAV file `path` (8 kHz mono 16-bit; parent directories are created) until they press
        `stop_key`, stay silent for `silence_seconds`, reach `max_seconds` or hang up. Return
        `path`, or None if the caller had gone before the tone (nothing was recorded). The AI
        does not hear the caller meanwhile, and the caller stays held afterwards (silent) until
        the driver unholds or hangs up. Keys pressed before the tone do not end the message."""
        ...


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


@runtime_checkable
class CallerCancelledNotifier(Protocol):
    """Optional consultant capability: tell the human the caller stopped waiting (pressed the
    plan's cancel key, or chose to leave a message) before hanging up, with a short fixed
    notice such as "The caller no longer wants to wait. Goodbye."

    Called like `notify_caller_left` (after the consult was cancelled and awaited, bounded by
    NOTICE_TIMEOUT). A consultant without it but with `notify_caller_left` gets that notice
    instead: the human learns the same thing that matters (there is no call to take) rather
    than being hung up on in silence.
    """

    async def notify_caller_cancelled(self, leg: ConsultLeg) -> None: ...

"""The warm-transfer state machine: every state, every event, every legal move, in one table.

Rules (read these before touching the table; tests and the generated diagram are built from it)
=====================================================================================================

Rule 1: everything that decides where a transfer may go next lives here, in `TRANSITIONS`. The
driver never sets a state by hand: it hands each event to `TransferStateMachine.handle`, and a move
that is not in the table raises `IllegalTransition`, which names the state and the event. So the
table is the whole truth about the protocol, and the diagram in docs/state-diagram.md (generated
from it by `diagram.py`) cannot drift from the code.

Rule 2: this file knows nothing about SIP, LiveKit, tasks or timers. Events are small immutable
records of something that happened, each stamped with `at`, a monotonic time in seconds.

Rule 3: a transfer runs forward through

    IDLE -Start-> HOLDING -DialStarted-> DIALING -Ringing-> RINGING -Answered-> CONSULTING
         -Accepted-> BRIDGING -Bridged-> COMPLETED

  HoldStarted (HOLDING), a repeated Ringing (a 183 after a 180, RINGING) and Briefed (CONSULTING)
  record progress without changing state. Answered is legal straight from DIALING, because a
  target may answer without any provisional response.

Rule 4: a failure never ends a transfer directly: it moves it to RECOVERING, where the driver
hangs up the target leg and gives the caller back to the AI; only `Recovered` (the caller is back
with the AI) reaches FAILED. This is what makes "the caller is back with the AI" a fact the state
records, not a hope. Failures, by the state they may happen in:

  DIALING, RINGING   AttemptFailed (busy, no answer, rejected, unreachable: from the dialer)
  CONSULTING         Declined, VoicemailDetected, TargetHungUp, ConsultTimedOut
  BRIDGING           BridgeBroke, TargetHungUp

Rule 5: some events may come at any moment, so they are legal in every state where they can:
  - CallerHungUp, from every non-terminal state (RECOVERING included) -> ABANDONED. A caller who
    has gone is never put back with the AI, so ABANDONED skips RECOVERING.
  - Cancelled (the app) and TransferTimedOut (the whole transfer's deadline), from every
    non-terminal state except RECOVERING -> RECOVERING. Once recovering, the caller is already on
    the way back to the AI: there is nothing left to cancel or to time out.
  - PortFailed (a port raised something unexpected), from every state where a port is at work
    (HOLDING to BRIDGING) -> RECOVERING, and from RECOVERING -> FAILED (giving the caller back
    itself failed; the outcome says so).

Rule 6: COMPLETED, FAILED and ABANDONED are terminal: they accept no event at all.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum
from types import MappingProxyType

from warmtransfer.transfer.outcome import Reason
from warmtransfer.transfer.target import Target


class State(StrEnum):
    IDLE = "idle"
    HOLDING = "holding"
    DIALING = "dialing"
    RINGING = "ringing"
    CONSULTING = "consulting"
    BRIDGING = "bridging"
    COMPLETED = "completed"
    RECOVERING = "recovering"
    FAILED = "failed"
    ABANDONED = "abandoned"


TERMINAL_STATES = frozenset({State.COMPLETED, State.FAILED, State.ABANDONED})


def is_terminal(state: State) -> bool:
    """True once the transfer is over: no event is accepted any more."""
    return state in TERMINAL_STATES


# ---------------------------------------------------------------------------------------------
# Events. Keyword-only, so a timeline reads the same in code, logs and tests.
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class Event:
    """Something that happened to a transfer, at `at` (monotonic seconds)."""

    at: float

    @property
    def name(self) -> str:
        return type(self).__name__


@dataclass(frozen=True, kw_only=True)
class Start(Event):
    """The driver starts the transfer: the caller is being put on hold."""


@dataclass(frozen=True, kw_only=True)
class HoldStarted(Event):
    """Hold audio is playing and the AI no longer hears the caller."""


@dataclass(frozen=True, kw_only=True)
class DialStarted(Event):
    target: Target


@dataclass(frozen=True, kw_only=True)
class Ringing(Event):
    sip_status: int  # 180 or 183


@dataclass(frozen=True, kw_only=True)
class Answered(Event):
    """The target picked up; the consult (briefing and decision) begins."""


@dataclass(frozen=True, kw_only=True)
class Briefed(Event):
    """The briefing was spoken to the end (optional; a consultant may not report it)."""


@dataclass(frozen=True, kw_only=True)
class Accepted(Event):
    via: str = ""  # "key 1", "speech yes", "llm tool"


@dataclass(frozen=True, kw_only=True)
class Declined(Event):
    reason: str | None = None
    via: str = ""


@dataclass(frozen=True, kw_only=True)
class VoicemailDetected(Event):
    via: str = ""


@dataclass(frozen=True, kw_only=True)
class AttemptFailed(Event):
    """The dial ended without an answer (busy, no answer, rejected, unreachable)."""

    reason: Reason
    sip_status: int | None = None
    sip_reason: str | None = None
    detail: str = ""


@dataclass(frozen=True, kw_only=True)
class TargetHungUp(Event):
    """The human's leg ended before the bridge took it over."""


@dataclass(frozen=True, kw_only=True)
class ConsultTimedOut(Event):
    timeout: float  # the consult deadline that passed, seconds


@dataclass(frozen=True, kw_only=True)
class Bridged(Event):
    """Caller and human are joined; the AI has left the call."""


@dataclass(frozen=True, kw_only=True)
class BridgeBroke(Event):
    """The bridge could not join caller and human (not named BridgeFailed: that is the port's
    exception in outcome.py)."""

    detail: str = ""


@dataclass(frozen=True, kw_only=True)
class CallerHungUp(Event):
    detail: str = ""


@dataclass(frozen=True, kw_only=True)
class Cancelled(Event):
    detail: str = ""  # "cancelled by the app", "run() was cancelled"


@dataclass(frozen=True, kw_only=True)
class Recovered(Event):
    """The caller is back with the AI (hold stopped, the AI hears the caller again)."""


@dataclass(frozen=True, kw_only=True)
class TransferTimedOut(Event):
    timeout: float  # the whole transfer's deadline that passed, seconds


@dataclass(frozen=True, kw_only=True)
class PortFailed(Event):
    """A port raised something it should not have; `port` names the call, e.g. "caller.hold"."""

    port: str
    detail: str = ""


#: Every event type, in the order of a transfer's life (the diagram and tests use this order).
EVENT_TYPES: tuple[type[Event], ...] = (
    Start,
    HoldStarted,
    DialStarted,
    Ringing,
    Answered,
    Briefed,
    Accepted,
    Declined,
    VoicemailDetected,
    AttemptFailed,
    TargetHungUp,
    ConsultTimedOut,
    Bridged,
    BridgeBroke,
    CallerHungUp,
    Cancelled,
    TransferTimedOut,
    PortFailed,
    Recovered,
)


# ---------------------------------------------------------------------------------------------
# The table
# ---------------------------------------------------------------------------------------------

S = State

_FORWARD: dict[tuple[State, type[Event]], State] = {
    (S.IDLE, Start): S.HOLDING,
    (S.HOLDING, HoldStarted): S.HOLDING,
    (S.HOLDING, DialStarted): S.DIALING,
    (S.DIALING, Ringing): S.RINGING,
    (S.DIALING, Answered): S.CONSULTING,  # answered with no 180/183 first
    (S.RINGING, Ringing): S.RINGING,  # 183 after 180, or a repeated 180
    (S.RINGING, Answered): S.CONSULTING,
    (S.CONSULTING, Briefed): S.CONSULTING,
    (S.CONSULTING, Accepted): S.BRIDGING,
    (S.BRIDGING, Bridged): S.COMPLETED,
}

# Rule 4: failures by state, all to RECOVERING.
_FAILURES: dict[tuple[State, type[Event]], State] = {
    (S.DIALING, AttemptFailed): S.RECOVERING,
    (S.RINGING, AttemptFailed): S.RECOVERING,
    (S.CONSULTING, Declined): S.RECOVERING,
    (S.CONSULTING, VoicemailDetected): S.RECOVERING,
    (S.CONSULTING, TargetHungUp): S.RECOVERING,
    (S.CONSULTING, ConsultTimedOut): S.RECOVERING,
    (S.BRIDGING, BridgeBroke): S.RECOVERING,
    (S.BRIDGING, TargetHungUp): S.RECOVERING,
    (S.RECOVERING, Recovered): S.FAILED,
}

# Rule 5: events that may come at any moment.
_ACTIVE = (S.HOLDING, S.DIALING, S.RINGING, S.CONSULTING, S.BRIDGING)
_ANYTIME: dict[tuple[State, type[Event]], State] = {
    **{(state, CallerHungUp): S.ABANDONED for state in (S.IDLE, *_ACTIVE, S.RECOVERING)},
    **{(state, Cancelled): S.RECOVERING for state in (S.IDLE, *_ACTIVE)},
    **{(state, TransferTimedOut): S.RECOVERING for state in (S.IDLE, *_ACTIVE)},
    **{(state, PortFailed): S.RECOVERING for state in _ACTIVE},
    (S.RECOVERING, PortFailed): S.FAILED,
}

TRANSITIONS: Mapping[tuple[State, type[Event]], State] = MappingProxyType(
    {**_FORWARD, **_FAILURES, **_ANYTIME}
)

del S


class IllegalTransition(Exception):
    """An event came in a state where the table does not allow it. Always a bug in a driver."""

    def __init__(self, state: State, event: Event | type[Event]) -> None:
        self.state = state
        self.event_type = event if isinstance(event, type) else type(event)
        rule = (
            " (a terminal state accepts no event)"
            if is_terminal(state)
            else f"; allowed: {', '.join(t.__name__ for t in allowed_events(state))}"
        )
        super().__init__(
            f"event {self.event_type.__name__} is not allowed in state {state.name}{rule}"
        )


def allowed_events(state: State) -> tuple[type[Event], ...]:
    """The event types `state` accepts, in `EVENT_TYPES` order."""
    return tuple(t for t in EVENT_TYPES if (state, t) in TRANSITIONS)


@dataclass(frozen=True)
class Transition:
    """One move the machine made: `before` -event-> `after`."""

    before: State
    event: Event
    after: State


class TransferStateMachine:
    """Holds one transfer's state and refuses every move the table does not list."""

    def __init__(self) -> None:
        self._state = State.IDLE
        self._history: list[Transition] = []

    @property
    def state(self) -> State:
        return self._state

    @property
    def history(self) -> tuple[Transition, ...]:
        return tuple(self._history)

    def allows(self, event_type: type[Event]) -> bool:
        return (self._state, event_type) in TRANSITIONS

    def handle(self, event: Event) -> State:
        """Apply `event`; return the new state, or raise `IllegalTransition` (state unchanged)."""
        try:
            after = TRANSITIONS[(self._state, type(event))]
        except KeyError:
            raise IllegalTransition(self._state, event) from None
        self._history.append(Transition(self._state, event, after))
        self._state = after
        return after

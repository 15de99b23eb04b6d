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

Rule 3: two levels, one table. The *transfer's* state says what is being done for the caller;
the *attempts* (one dial of one target) say how each human is doing. Attempt events carry
`attempt`, the index of that attempt in the outcome's `attempts`: DialStarted, Ringing,
Answered, Accepted, Declined, VoicemailDetected, AttemptFailed, TargetHungUp, ConsultTimedOut.
Several attempts may be alive at once (simultaneous hunting), so the transfer's state cannot
be "ringing" or "consulting": those are facts about one attempt, and they live in its events.

Rule 4: a transfer runs forward through

    IDLE -Start-> HOLDING -HoldStarted-> HUNTING -Accepted-> BRIDGING -Bridged-> COMPLETED

  HUNTING means: the caller is on hold while the hunt runs. Attempts are dialled, ring, are
  answered, and fail (busy, no answer, declined, voicemail, hung up, consult deadline), all
  recorded as moves from HUNTING to HUNTING; between two targets (sequential) or during the
  delay between rounds no attempt is alive, and the transfer is still HUNTING. The first
  `Accepted` (a human said yes) leaves HUNTING: at that instant every other attempt is ended,
  and a second Accepted is illegal, so two humans can never be bridged to one caller.
  `HuntExhausted` (every target of every round failed) leaves it for RECOVERING.

  Each attempt's own events come in this order: DialStarted, Ringing*, then either
  AttemptFailed (the dial ended without answer), or Answered followed by one of Accepted,
  Declined, VoicemailDetected, TargetHungUp, ConsultTimedOut. An attempt that another's Accepted
  or the end of the transfer cut short has no ending event of its own: the outcome's attempt
  record says how it ended (CANCELLED, CALLER_HUNG_UP, ...).

Rule 5: a failure never ends a transfer directly: it moves it to RECOVERING, where the driver
ends every attempt still alive and carries out the plan's `on_failure`:
  - return to the AI: `Recovered` (hold stopped, the AI hears the caller again) -> FAILED;
  - play a message and hang up: `Dismissed` -> DISMISSED;
  - hand the caller to the fallback target: `DialStarted` -> FALLBACK, at most once per transfer.
    FALLBACK is a one-target hunt without a consult: `Answered` goes straight to BRIDGING; a
    failed dial goes back to RECOVERING, and from there the caller returns to the AI.
  So where the caller ends is a fact the state records, not a hope. Failures by state:

  HUNTING    HuntExhausted
  FALLBACK   AttemptFailed
  BRIDGING   BridgeBroke, TargetHungUp (the human who accepted, or the fallback, hung up)

  The caller may also end the wait (Rule 6: CallerCancelled, MessageRequested). Then the
  caller's choice, not on_failure, says where they go: after CallerCancelled, back to the AI
  (`Recovered`), given back by the driver the moment the key is read; after MessageRequested,
  the driver records the caller's message while in RECOVERING, then carries out on_failure,
  except that a fallback target is never dialled (the caller chose a message over waiting).

Rule 6: some events may come at any moment, so they are legal in every state where they can:
  - CallerHungUp, from every non-terminal state (RECOVERING included) -> ABANDONED. A caller who
    has gone is never put back with the AI, so ABANDONED skips RECOVERING.
  - Cancelled (the app) and TransferTimedOut (the whole transfer's deadline), from every
    non-terminal state except RECOVERING -> RECOVERING. Once recovering, the caller is already on
    the way out of the transfer: there is nothing left to cancel or to time out.
  - PortFailed (a port raised something unexpected), from every state where a port is at work
    (HOLDING, HUNTING, FALLBACK, BRIDGING) -> RECOVERING, and from RECOVERING -> FAILED (giving
    the caller back, or hanging up on them, itself failed; the outcome says so).
  - CallerCancelled (the caller pressed the plan's cancel key: stop waiting) and
    MessageRequested (the message key: leave a message instead), from HUNTING and FALLBACK
    -> RECOVERING: the states in which the caller hears hold audio and the driver reads their
    keys. Not from HOLDING (keys are read once the hold audio plays; hold discards earlier
    ones), and not from BRIDGING: once a human has accepted, the caller is being joined to
    them, and a key pressed then cannot take the human's "yes" back (the driver stops reading
    keys at that instant, and the table would refuse the event anyway).

Rule 7: COMPLETED (bridged to a human), FAILED (back with the AI), DISMISSED and ABANDONED (gone)
are terminal: they accept no event at all.
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
    HUNTING = "hunting"
    FALLBACK = "fallback"
    BRIDGING = "bridging"
    COMPLETED = "completed"
    RECOVERING = "recovering"
    FAILED = "failed"
    DISMISSED = "dismissed"
    ABANDONED = "abandoned"


TERMINAL_STATES = frozenset({State.COMPLETED, State.FAILED, State.DISMISSED, State.ABANDONED})


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
class AttemptEvent(Event):
    """Something that happened to one attempt: `attempt` indexes the outcome's `attempts`."""

    attempt: int


@dataclass(frozen=True, kw_only=True)
class Start(Event):
    """The driver starts the transfer: the caller is being put on hold."""


@dataclass(frozen=True, kw_only=True)
class HoldStarted(Event):
    """Hold audio is playing and the AI no longer hears the caller: the hunt begins."""


@dataclass(frozen=True, kw_only=True)
class DialStarted(AttemptEvent):
    """An attempt begins: `target` is dialled, in `round` (1-based) of the hunt, or as the plan's
    fallback."""

    target: Target
    round: int = 1
    fallback: bool = False


@dataclass(frozen=True, kw_only=True)
class Ringing(AttemptEvent):
    sip_status: int  # 180 or 183


@dataclass(frozen=True, kw_only=True)
class Answered(AttemptEvent):
    """The target picked up: their consult (briefing and decision) begins, or, for the
    fallback, the bridge."""


@dataclass(frozen=True, kw_only=True)
class Accepted(AttemptEvent):
    via: str = ""  # "key 1", "speech yes", "llm tool"


@dataclass(frozen=True, kw_only=True)
class Declined(AttemptEvent):
    reason: str | None = None
    via: str = ""


@dataclass(frozen=True, kw_only=True)
class VoicemailDetected(AttemptEvent):
    via: str = ""


@dataclass(frozen=True, kw_only=True)
class AttemptFailed(AttemptEvent):
    """The dial ended without an answer (busy, no answer, rejected, unreachable)."""

    reason: Reason
    sip_status: int | None = None
    sip_reason: str | None = None
    detail: str = ""


@dataclass(frozen=True, kw_only=True)
class TargetHungUp(AttemptEvent):
    """The human's leg ended before the bridge took it over."""


@dataclass(frozen=True, kw_only=True)
class ConsultTimedOut(AttemptEvent):
    timeout: float  # the consult deadline that passed, seconds


@dataclass(frozen=True, kw_only=True)
class HuntExhausted(Event):
    """Every attempt of every round failed. `reason` and `sip_status` are the most informative
    of the attempts' (see `outcome.most_informative`); `attempt` is the one they come from."""

    reason: Reason
    attempt: int
    sip_status: int | None = None
    sip_reason: str | None = None
    detail: str = ""


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
class CallerCancelled(Event):
    """The held caller pressed the plan's cancel key: they no longer want to wait."""

    key: str = "*"


@dataclass(frozen=True, kw_only=True)
class MessageRequested(Event):
    """The held caller pressed the plan's message key: they leave a message instead of waiting
    (recorded while RECOVERING; its file is the outcome's `recorded_message`)."""

    key: str = "#"


@dataclass(frozen=True, kw_only=True)
class Cancelled(Event):
    detail: str = ""  # "cancelled by the app", "run() was cancelled"


@dataclass(frozen=True, kw_only=True)
class TransferTimedOut(Event):
    timeout: float  # the whole transfer's deadline that passed, seconds


@dataclass(frozen=True, kw_only=True)
class PortFailed(Event):
    """A port raised something it should not have; `port` names the call, e.g. "caller.hold"."""

    port: str
    detail: str = ""


@dataclass(frozen=True, kw_only=True)
class Recovered(Event):
    """The caller is back with the AI (hold stopped, the AI hears the caller again)."""


@dataclass(frozen=True, kw_only=True)
class Dismissed(Event):
    """The plan's failure message was spoken to the caller, and the caller's call was ended."""

    message: str


#: Every event type, in the order of a transfer's life (the diagram and tests use this order).
EVENT_TYPES: tuple[type[Event], ...] = (
    Start,
    HoldStarted,
    DialStarted,
    Ringing,
    Answered,
    Accepted,
    Declined,
    VoicemailDetected,
    AttemptFailed,
    TargetHungUp,
    ConsultTimedOut,
    HuntExhausted,
    Bridged,
    BridgeBroke,
    CallerHungUp,
    CallerCancelled,
    MessageRequested,
    Cancelled,
    TransferTimedOut,
    PortFailed,
    Recovered,
    Dismissed,
)

#: The events of one attempt (Rule 3).
ATTEMPT_EVENT_TYPES: tuple[type[AttemptEvent], ...] = tuple(
    t for t in EVENT_TYPES if issubclass(t, AttemptEvent)
)


# ---------------------------------------------------------------------------------------------
# The table
# ---------------------------------------------------------------------------------------------

S = State

# Rule 4: forward, and the hunt's own progress (attempts come and go; the caller stays held).
_FORWARD: dict[tuple[State, type[Event]], State] = {
    (S.IDLE, Start): S.HOLDING,
    (S.HOLDING, HoldStarted): S.HUNTING,
    (S.HUNTING, DialStarted): S.HUNTING,
    (S.HUNTING, Ringing): S.HUNTING,
    (S.HUNTING, Answered): S.HUNTING,
    (S.HUNTING, Declined): S.HUNTING,
    (S.HUNTING, VoicemailDetected): S.HUNTING,
    (S.HUNTING, AttemptFailed): S.HUNTING,
    (S.HUNTING, TargetHungUp): S.HUNTING,
    (S.HUNTING, ConsultTimedOut): S.HUNTING,
    (S.HUNTING, Accepted): S.BRIDGING,
    (S.BRIDGING, Bridged): S.COMPLETED,
}

# Rule 5: failures, all to RECOVERING, and the plan's on_failure from there.
_FAILURES: dict[tuple[State, type[Event]], State] = {
    (S.HUNTING, HuntExhausted): S.RECOVERING,
    (S.BRIDGING, BridgeBroke): S.RECOVERING,
    (S.BRIDGING, TargetHungUp): S.RECOVERING,
    (S.RECOVERING, Recovered): S.FAILED,
    (S.RECOVERING, Dismissed): S.DISMISSED,
    (S.RECOVERING, DialStarted): S.FALLBACK,
    (S.FALLBACK, Ringing): S.FALLBACK,
    (S.FALLBACK, Answered): S.BRIDGING,
    (S.FALLBACK, AttemptFailed): S.RECOVERING,
}

# Rule 6: events that may come at any moment.
_ACTIVE = (S.HOLDING, S.HUNTING, S.FALLBACK, S.BRIDGING)
_ANYTIME: dict[tuple[State, type[Event]], State] = {
    **{(state, CallerHungUp): S.ABANDONED for state in (S.IDLE, *_ACTIVE, S.RECOVERING)},
    **{(state, Cancelled): S.RECOVERING for state in (S.IDLE, *_ACTIVE)},
    **{(state, TransferTimedOut): S.RECOVERING for state in (S.IDLE, *_ACTIVE)},
    **{(state, PortFailed): S.RECOVERING for state in _ACTIVE},
    (S.RECOVERING, PortFailed): S.FAILED,
    **{(state, CallerCancelled): S.RECOVERING for state in (S.HUNTING, S.FALLBACK)},
    **{(state, MessageRequested): S.RECOVERING for state in (S.HUNTING, S.FALLBACK)},
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

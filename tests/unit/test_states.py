"""The transition table: every legal move works, every other one is refused by name."""

from __future__ import annotations

import itertools
from dataclasses import FrozenInstanceError, fields

import pytest

from warmtransfer.transfer.outcome import Reason
from warmtransfer.transfer.states import (
    ATTEMPT_EVENT_TYPES,
    EVENT_TYPES,
    TERMINAL_STATES,
    TRANSITIONS,
    Accepted,
    Answered,
    AttemptEvent,
    AttemptFailed,
    BridgeBroke,
    Bridged,
    CallerHungUp,
    Cancelled,
    ConsultTimedOut,
    Declined,
    DialStarted,
    Dismissed,
    Event,
    HoldStarted,
    HuntExhausted,
    IllegalTransition,
    PortFailed,
    Recovered,
    Ringing,
    Start,
    State,
    TargetHungUp,
    TransferStateMachine,
    TransferTimedOut,
    VoicemailDetected,
    allowed_events,
    is_terminal,
)
from warmtransfer.transfer.target import Target

TARGET = Target(uri="sip:alice@pbx.example.com")


def make(event_type: type[Event], at: float = 1.0) -> Event:
    """An instance of any event type, with plausible data."""
    data: dict[str, object] = {"at": at}
    for field in fields(event_type):
        if field.name == "target":
            data["target"] = TARGET
        elif field.name == "sip_status":
            data["sip_status"] = 180
        elif field.name == "reason" and event_type in (AttemptFailed, HuntExhausted):
            data["reason"] = Reason.BUSY
        elif field.name == "attempt":
            data["attempt"] = 0
        elif field.name == "message":
            data["message"] = "We are closed."
        elif field.name == "timeout":
            data["timeout"] = 5.0
        elif field.name == "port":
            data["port"] = "caller.hold"
    return event_type(**data)  # type: ignore[arg-type]


# How to reach each state from IDLE through legal moves (the machine has no setter, on purpose).
PATH_TO: dict[State, list[type[Event]]] = {
    State.IDLE: [],
    State.HOLDING: [Start],
    State.HUNTING: [Start, HoldStarted, DialStarted, Ringing],
    State.BRIDGING: [Start, HoldStarted, DialStarted, Ringing, Answered, Accepted],
    State.COMPLETED: [Start, HoldStarted, DialStarted, Answered, Accepted, Bridged],
    State.RECOVERING: [Start, HoldStarted, DialStarted, AttemptFailed, HuntExhausted],
    State.FALLBACK: [Start, HoldStarted, DialStarted, AttemptFailed, HuntExhausted, DialStarted],
    State.FAILED: [Start, HoldStarted, DialStarted, AttemptFailed, HuntExhausted, Recovered],
    State.DISMISSED: [Start, HoldStarted, HuntExhausted, Dismissed],
    State.ABANDONED: [Start, CallerHungUp],
}


def machine_in(state: State) -> TransferStateMachine:
    machine = TransferStateMachine()
    for step, event_type in enumerate(PATH_TO[state]):
        machine.handle(make(event_type, at=float(step)))
    assert machine.state is state
    return machine


def test_every_state_is_reachable_from_idle() -> None:
    assert set(PATH_TO) == set(State)
    for state in State:
        assert machine_in(state).state is state


def _table_order(key: tuple[State, type[Event]]) -> tuple[int, str]:
    return list(State).index(key[0]), key[1].__name__


LEGAL = sorted(TRANSITIONS, key=_table_order)


@pytest.mark.parametrize(
    ("state", "event_type"),
    LEGAL,
    ids=lambda value: value.name if isinstance(value, State) else value.__name__,
)
def test_every_legal_move(state: State, event_type: type[Event]) -> None:
    machine = machine_in(state)
    before = len(machine.history)
    event = make(event_type, at=100.0)
    after = machine.handle(event)
    assert after is TRANSITIONS[(state, event_type)]
    assert machine.state is after
    assert len(machine.history) == before + 1
    last = machine.history[-1]
    assert (last.before, last.event, last.after) == (state, event, after)


ILLEGAL = [
    (state, event_type)
    for state, event_type in itertools.product(State, EVENT_TYPES)
    if (state, event_type) not in TRANSITIONS
]


@pytest.mark.parametrize(
    ("state", "event_type"),
    ILLEGAL,
    ids=lambda value: value.name if isinstance(value, State) else value.__name__,
)
def test_every_illegal_move_is_refused_by_name(state: State, event_type: type[Event]) -> None:
    machine = machine_in(state)
    history = machine.history
    with pytest.raises(IllegalTransition) as info:
        machine.handle(make(event_type))
    message = str(info.value)
    assert f"event {event_type.__name__} is not allowed in state {state.name}" in message
    assert info.value.state is state
    assert info.value.event_type is event_type
    # A refused event changes nothing.
    assert machine.state is state
    assert machine.history == history


def test_illegal_count_is_the_complement_of_the_table() -> None:
    assert len(ILLEGAL) + len(TRANSITIONS) == len(State) * len(EVENT_TYPES)
    assert all(key[1] in EVENT_TYPES for key in TRANSITIONS)


def test_example_message_from_the_rules() -> None:
    with pytest.raises(IllegalTransition, match="event Answered is not allowed in state HOLDING"):
        machine_in(State.HOLDING).handle(Answered(at=1.0, attempt=0))


@pytest.mark.parametrize("state", sorted(TERMINAL_STATES))
def test_terminal_states_accept_nothing(state: State) -> None:
    assert is_terminal(state)
    assert allowed_events(state) == ()
    machine = machine_in(state)
    for event_type in EVENT_TYPES:
        with pytest.raises(IllegalTransition, match="terminal state accepts no event"):
            machine.handle(make(event_type))
    assert machine.state is state


def test_terminal_states_are_the_callers_three_places() -> None:
    """Bridged to a human, back with the AI, or gone (left, or hung up on by the plan)."""
    assert {s for s in State if is_terminal(s)} == {
        State.COMPLETED,
        State.FAILED,
        State.DISMISSED,
        State.ABANDONED,
    }


@pytest.mark.parametrize("state", [s for s in State if not is_terminal(s)])
def test_caller_hang_up_is_legal_in_every_live_state(state: State) -> None:
    assert TRANSITIONS[(state, CallerHungUp)] is State.ABANDONED


@pytest.mark.parametrize("event_type", [Cancelled, TransferTimedOut])
def test_cancel_and_deadline_recover_from_every_live_state_but_recovering(
    event_type: type[Event],
) -> None:
    for state in State:
        expected = None if is_terminal(state) or state is State.RECOVERING else State.RECOVERING
        assert TRANSITIONS.get((state, event_type)) is expected, state


def test_failures_reach_failed_only_through_recovering() -> None:
    into_failed = {key for key, after in TRANSITIONS.items() if after is State.FAILED}
    assert into_failed == {(State.RECOVERING, Recovered), (State.RECOVERING, PortFailed)}
    into_dismissed = {key for key, after in TRANSITIONS.items() if after is State.DISMISSED}
    assert into_dismissed == {(State.RECOVERING, Dismissed)}
    for state in (State.HOLDING, State.HUNTING, State.FALLBACK, State.BRIDGING):
        assert TRANSITIONS[(state, PortFailed)] is State.RECOVERING
    assert TRANSITIONS[(State.HUNTING, HuntExhausted)] is State.RECOVERING
    assert TRANSITIONS[(State.FALLBACK, AttemptFailed)] is State.RECOVERING
    assert TRANSITIONS[(State.BRIDGING, TargetHungUp)] is State.RECOVERING
    assert TRANSITIONS[(State.BRIDGING, BridgeBroke)] is State.RECOVERING
    assert TRANSITIONS[(State.RECOVERING, CallerHungUp)] is State.ABANDONED


def test_attempt_events_are_recorded_while_hunting() -> None:
    """Rule 4: attempts come and go while the caller stays held; only Accepted leaves."""
    for event_type in ATTEMPT_EVENT_TYPES:
        expected = State.BRIDGING if event_type is Accepted else State.HUNTING
        assert TRANSITIONS[(State.HUNTING, event_type)] is expected, event_type
    assert all(
        TRANSITIONS.get((state, t)) is None
        for state in (State.IDLE, State.HOLDING, State.COMPLETED, State.FAILED)
        for t in ATTEMPT_EVENT_TYPES
    )


def test_a_second_accept_is_illegal() -> None:
    """Two humans saying yes: the table lets only the first one through."""
    machine = machine_in(State.HUNTING)
    machine.handle(Accepted(at=5.0, attempt=0))
    with pytest.raises(IllegalTransition, match="event Accepted is not allowed in state BRIDGING"):
        machine.handle(Accepted(at=5.0, attempt=1))


def test_the_fallback_is_bridged_without_a_consult() -> None:
    machine = machine_in(State.FALLBACK)
    assert not machine.allows(Accepted)
    assert machine.handle(Ringing(at=9.0, attempt=1, sip_status=180)) is State.FALLBACK
    assert machine.handle(Answered(at=9.5, attempt=1)) is State.BRIDGING
    assert machine.handle(Bridged(at=10.0)) is State.COMPLETED

    machine = machine_in(State.FALLBACK)
    assert machine.handle(make(AttemptFailed)) is State.RECOVERING
    assert machine.handle(make(Recovered)) is State.FAILED


def test_the_happy_path_in_order() -> None:
    machine = TransferStateMachine()
    path = [
        Start(at=0.0),
        HoldStarted(at=0.1),
        DialStarted(at=0.2, attempt=0, target=TARGET),
        Ringing(at=0.3, attempt=0, sip_status=180),
        Answered(at=1.0, attempt=0),
        Accepted(at=2.0, attempt=0, via="key 1"),
        Bridged(at=2.1),
    ]
    states = [machine.handle(event) for event in path]
    assert states == [
        State.HOLDING,
        State.HUNTING,
        State.HUNTING,
        State.HUNTING,
        State.HUNTING,
        State.BRIDGING,
        State.COMPLETED,
    ]
    assert [step.event for step in machine.history] == path


def test_history_is_a_snapshot() -> None:
    machine = machine_in(State.HUNTING)
    snapshot = machine.history
    machine.handle(Ringing(at=9.0, attempt=0, sip_status=180))
    assert len(snapshot) == 4
    assert len(machine.history) == 5


def test_events_are_immutable_and_keyword_only() -> None:
    event = AttemptFailed(
        at=1.0, attempt=0, reason=Reason.BUSY, sip_status=486, sip_reason="Busy Here"
    )
    with pytest.raises(FrozenInstanceError):
        event.at = 2.0  # type: ignore[misc]
    with pytest.raises(TypeError):
        Ringing(1.0, 0, 180)  # type: ignore[call-arg]
    assert event.name == "AttemptFailed"


def test_attempt_events_name_their_attempt() -> None:
    assert set(ATTEMPT_EVENT_TYPES) == {
        DialStarted,
        Ringing,
        Answered,
        Accepted,
        Declined,
        VoicemailDetected,
        AttemptFailed,
        TargetHungUp,
        ConsultTimedOut,
    }
    for event_type in ATTEMPT_EVENT_TYPES:
        assert issubclass(event_type, AttemptEvent)
        assert "attempt" in {f.name for f in fields(event_type)}

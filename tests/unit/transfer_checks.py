"""The invariants every transfer must keep, on every path: shared by the hunting tests and the
property-based test.

`check_transfer` asserts, after `run()` has returned:
- the timeline is a legal path of the table, in time order, ending in a terminal state;
- each attempt's own events follow Rule 4 of states.py, and the outcome's attempt records
  agree with them;
- nothing is left behind: no dial pending, every answered leg bridged or hung up by us, no
  playback running and nothing waiting on a leg, no event iterator open;
- the caller is in exactly one place, the one the final state names: bridged to a human
  (COMPLETED), back with the AI (FAILED), or gone (ABANDONED: left; DISMISSED: heard the
  plan's message and was hung up).
Tasks and timers are checked by `no_leaks`, around the whole scenario.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
from collections.abc import AsyncIterator

from tests.unit.memory_ports import DialRecord, MemoryBridge, MemoryCaller, MemoryDialer
from warmtransfer.transfer import (
    TRANSITIONS,
    Completed,
    Failed,
    Reason,
    State,
    TransferOutcome,
    WarmTransfer,
    is_terminal,
)
from warmtransfer.transfer.states import AttemptEvent, DialStarted


def live_timers(loop: asyncio.AbstractEventLoop) -> list[asyncio.TimerHandle]:
    """Timers (deadlines, sleeps) still scheduled and not cancelled. Reads the loop's private
    heap: there is no public way to list timers, and a leaked deadline is exactly the bug."""
    scheduled: list[asyncio.TimerHandle] = getattr(loop, "_scheduled", [])
    return [handle for handle in scheduled if not handle.cancelled()]


@contextlib.asynccontextmanager
async def no_leaks(deadline: float = 3.0) -> AsyncIterator[None]:
    """A deadline for the scenario, then: no task and no timer outlived it."""
    baseline = asyncio.all_tasks()
    loop = asyncio.get_running_loop()
    async with asyncio.timeout(deadline):
        yield
    assert asyncio.all_tasks() == baseline, "a task outlived the transfer"
    assert live_timers(loop) == [], "a timer outlived the transfer"


def dials_of(outcome: TransferOutcome, dialer: MemoryDialer) -> dict[int, DialRecord]:
    """Which dial each attempt made. Dials are made in the order attempts are announced; only
    an attempt cut short in the very step it was announced made none."""
    dials = iter(dialer.dials)
    found: dict[int, DialRecord] = {}
    pending = next(dials, None)
    for index, attempt in enumerate(outcome.attempts):
        if pending is not None and pending.target == attempt.target:
            found[index] = pending
            pending = next(dials, None)
    assert pending is None, "a dial no attempt accounts for"
    return found


# One attempt's events, by name (Rule 4 of states.py). A hunt attempt may stop anywhere (cut
# short by another's Accepted or by the end of the transfer); so may the fallback.
_HUNT_ATTEMPT = re.compile(
    r"DialStarted( Ringing)*( AttemptFailed| Answered"
    r"( Accepted( TargetHungUp)?| Declined| VoicemailDetected| TargetHungUp| ConsultTimedOut)?)?"
)
_FALLBACK_ATTEMPT = re.compile(r"DialStarted( Ringing)*( AttemptFailed| Answered( TargetHungUp)?)?")


def check_transfer(
    transfer: WarmTransfer,
    outcome: TransferOutcome,
    caller: MemoryCaller,
    dialer: MemoryDialer,
    bridge: MemoryBridge,
) -> State:
    """Assert every invariant above; return the final state."""
    timeline = transfer.timeline
    state = State.IDLE
    for event in timeline:
        assert event.previous is state
        assert TRANSITIONS[(state, type(event.event))] is event.state
        assert event.at == event.event.at
        state = event.state
    assert [e.at for e in timeline] == sorted(e.at for e in timeline)
    assert is_terminal(state)
    assert transfer.state is state
    assert transfer.outcome is outcome

    # Each attempt: its events in order, and a record that agrees with them.
    per_attempt: dict[int, list[str]] = {}
    for event in timeline:
        if isinstance(event.event, AttemptEvent):
            per_attempt.setdefault(event.event.attempt, []).append(event.event.name)
    assert sorted(per_attempt) == list(range(len(outcome.attempts)))
    dials = dials_of(outcome, dialer)
    for index, names in per_attempt.items():
        record = outcome.attempts[index]
        started = next(
            e.event
            for e in timeline
            if isinstance(e.event, DialStarted) and e.event.attempt == index
        )
        assert started.fallback is record.fallback
        assert started.target == record.target
        if index not in dials:  # announced, then cut short before its dial was made
            assert names == ["DialStarted"]
            assert record.reason in (Reason.CANCELLED, Reason.CALLER_HUNG_UP)
        grammar = _FALLBACK_ATTEMPT if record.fallback else _HUNT_ATTEMPT
        assert grammar.fullmatch(" ".join(names)), (index, names)
        assert (record.answered is not None) is ("Answered" in names)
        assert record.reason is not None
        assert record.ended is not None
        stamps = [record.started, record.ringing, record.answered, record.ended]
        present = [t for t in stamps if t is not None]
        assert present == sorted(present)

    # Nothing left behind.
    assert not dialer.pending
    for leg in dialer.legs:
        assert leg.bridged or leg.hung_up_by_us
        assert leg.plays_active == 0
        assert leg.waiters == 0
    assert transfer._stream.closed

    # The caller is in exactly one place, and the outcome says which.
    bridged = state is State.COMPLETED
    with_ai = state is State.FAILED
    gone = state in (State.ABANDONED, State.DISMISSED)
    assert [bridged, with_ai, gone].count(True) == 1
    if bridged:
        assert isinstance(outcome, Completed)
        winner = dials[outcome.winner].leg
        assert winner is not None
        assert bridge.connected == [(caller, winner)]
        assert caller.bridged_to is winner
        assert [leg for leg in dialer.legs if leg.bridged] == [winner]
        assert outcome.attempts[outcome.winner].reason is Reason.COMPLETED
        assert outcome.fallback is outcome.attempts[outcome.winner].fallback
        assert caller.unhold_calls == 0
        assert not caller.hung_up_by_us
    else:
        assert isinstance(outcome, Failed)
        assert bridge.connected == []
        assert caller.bridged_to is None
        assert not any(leg.bridged for leg in dialer.legs)
        assert Reason.COMPLETED not in {a.reason for a in outcome.attempts}
    if with_ai:
        assert isinstance(outcome, Failed)
        assert outcome.reason not in (Reason.COMPLETED, Reason.CALLER_HUNG_UP)
        assert not outcome.dismissed
        # back with the AI (the caller may hang up on the AI later: not the transfer's concern)
        assert not caller.held and caller.bridged_to is None
        assert caller.unhold_calls == (1 if caller.hold_calls else 0)
        assert caller.hangup_calls == 0
    if gone:
        assert isinstance(outcome, Failed)
        assert caller.hung_up
        assert caller.unhold_calls == 0
        assert not caller.hold_playing
    if state is State.ABANDONED:
        assert isinstance(outcome, Failed)
        assert outcome.reason is Reason.CALLER_HUNG_UP
        assert not caller.hung_up_by_us
    if state is State.DISMISSED:
        assert isinstance(outcome, Failed)
        assert outcome.dismissed
        assert caller.hung_up_by_us
        assert len(caller.messages) == 1
        assert outcome.reason not in (Reason.CANCELLED, Reason.ERROR, Reason.CALLER_HUNG_UP)
    else:
        assert not caller.hung_up_by_us
    return state

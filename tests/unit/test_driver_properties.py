"""Random transfer scripts, and the invariants that must hold on every one of them.

A script says how the dial ends, what the human does, whether the bridge works, and after which
event (if any) the caller hangs up or the app cancels. The caller's hang-up and the app's cancel
are done from the event callback, so they land exactly between two steps of the driver while
its tasks are mid-flight: the places where the reference system leaked or hung.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from tests.unit.memory_ports import (
    KeyConsultant,
    MemoryBridge,
    MemoryCaller,
    MemoryDialer,
    MemoryTargetLeg,
)
from warmtransfer.consult.ports import Briefing
from warmtransfer.transfer import (
    TRANSITIONS,
    AllowList,
    BridgeFailed,
    Completed,
    DialFailed,
    Failed,
    Reason,
    State,
    Target,
    TransferEvent,
    TransferPlan,
    WarmTransfer,
    is_terminal,
)

DIAL_FAILURES = {
    "busy": (Reason.BUSY, 486),
    "no_answer": (Reason.NO_ANSWER, 480),
    "unreachable": (Reason.UNREACHABLE, 503),
}
CONSULT_ENDS = {
    "accept": Reason.COMPLETED,
    "decline": Reason.DECLINED,
    "voicemail": Reason.VOICEMAIL,
    "key never": Reason.CONSULT_TIMEOUT,
    "target hangs up": Reason.TARGET_HUNG_UP,
    "target hangs up in briefing": Reason.TARGET_HUNG_UP,
}
KEYS = {"accept": "1", "decline": "2", "voicemail": "3"}


@dataclass(frozen=True)
class Script:
    dial: str  # "answer", "never", "rejected" or a key of DIAL_FAILURES
    rejected_status: int
    ringing: tuple[int, ...]
    dtmf: str
    consult: str  # a key of CONSULT_ENDS
    bridge_fails: bool
    caller_hangs_up_after: int | None  # after that many events (0: before run); None: never
    app_cancels_after: int | None

    def natural_reason(self) -> Reason:
        """How the transfer ends when neither the caller nor the app interrupts it."""
        if self.dial == "never":
            return Reason.NO_ANSWER
        if self.dial == "rejected":
            return Reason.REJECTED
        if self.dial in DIAL_FAILURES:
            return DIAL_FAILURES[self.dial][0]
        if self.consult == "accept" and self.bridge_fails:
            return Reason.BRIDGE_FAILED
        return CONSULT_ENDS[self.consult]


scripts = st.builds(
    Script,
    dial=st.sampled_from(["answer", "answer", "never", "rejected", *DIAL_FAILURES]),
    rejected_status=st.integers(400, 699),
    ringing=st.lists(st.sampled_from([180, 183]), max_size=3).map(tuple),
    dtmf=st.sampled_from(["", "12#"]),
    consult=st.sampled_from(list(CONSULT_ENDS)),
    bridge_fails=st.booleans(),
    caller_hangs_up_after=st.none() | st.integers(0, 9),
    app_cancels_after=st.none() | st.none() | st.integers(1, 9),
)


@dataclass
class Run:
    transfer: WarmTransfer
    caller: MemoryCaller
    dialer: MemoryDialer
    bridge: MemoryBridge
    outcome: Completed | Failed
    tasks_left: set[asyncio.Task[Any]]


async def play(script: Script) -> Run:
    baseline = asyncio.all_tasks()
    caller = MemoryCaller()
    leg = MemoryTargetLeg(
        keys=KEYS.get(script.consult, ""),
        on_key_request=(lambda leg: leg.remote_hangup())
        if script.consult == "target hangs up"
        else None,
        on_play=(lambda leg: leg.remote_hangup())
        if script.consult == "target hangs up in briefing"
        else None,
    )
    failure: DialFailed | None = None
    if script.dial == "rejected":
        failure = DialFailed(Reason.REJECTED, script.rejected_status, "Rejected")
    elif script.dial in DIAL_FAILURES:
        reason, status = DIAL_FAILURES[script.dial]
        failure = DialFailed(reason, status)
    dialer = MemoryDialer(
        answer=leg if script.dial == "answer" else None,
        fail=failure,
        ringing=script.ringing,
    )
    bridge = MemoryBridge(fail=BridgeFailed("no media path") if script.bridge_fails else None)
    # Deadlines are real time: tight only where the script means them to pass, so a loaded
    # machine cannot turn an answered script into a timeout.
    plan = TransferPlan(
        target=Target(
            uri="sip:alice@pbx.example.com",
            dtmf=script.dtmf,
            ring_timeout=0.02 if script.dial == "never" else 30.0,
        ),
        allow=AllowList(patterns=("sip:*@pbx.example.com",)),
        consult_timeout=0.02 if script.consult == "key never" else 30.0,
    )
    seen: list[TransferEvent] = []
    transfer: WarmTransfer | None = None

    def on_event(event: TransferEvent) -> None:
        seen.append(event)
        if script.caller_hangs_up_after == len(seen):
            caller.hang_up()
        if script.app_cancels_after == len(seen):
            assert transfer is not None
            transfer.cancel()

    transfer = WarmTransfer(
        plan=plan,
        caller=caller,
        dialer=dialer,
        bridge=bridge,
        consultant=KeyConsultant(),
        briefing=Briefing(summary="refund for order 1234"),
        on_event=on_event,
    )
    if script.caller_hangs_up_after == 0:
        caller.hang_up()
    async with asyncio.timeout(2.0):
        outcome = await transfer.run()
    left = asyncio.all_tasks() - baseline
    return Run(transfer, caller, dialer, bridge, outcome, left)


@settings(max_examples=200, deadline=None)
@given(script=scripts)
def test_every_script_ends_cleanly(script: Script) -> None:
    run = asyncio.run(play(script))
    transfer, caller, outcome = run.transfer, run.caller, run.outcome

    # run() returns a typed outcome, and leaves no task behind.
    assert isinstance(outcome, Completed | Failed)
    assert run.tasks_left == set()

    # The history is a legal path of the table, from IDLE to a terminal state.
    state = State.IDLE
    for event in transfer.timeline:
        assert event.previous is state
        assert TRANSITIONS[(state, type(event.event))] is event.state
        state = event.state
    assert is_terminal(state)
    assert state is transfer.state

    # No leg left up, no dial left pending.
    assert not run.dialer.pending
    for leg in run.dialer.legs:
        assert leg.bridged or leg.hung_up_by_us

    # The caller ends in exactly one place, and the outcome says which.
    held = bool(caller.hold_calls)
    bridged = state is State.COMPLETED
    with_ai = state is State.FAILED
    gone = state is State.ABANDONED
    assert [bridged, with_ai, gone].count(True) == 1
    if bridged:
        assert isinstance(outcome, Completed)
        assert caller.bridged_to is run.dialer.legs[0]
        assert caller.unhold_calls == 0
        assert run.bridge.connected == [(caller, run.dialer.legs[0])]
    if with_ai:
        assert isinstance(outcome, Failed)
        assert outcome.reason not in (Reason.COMPLETED, Reason.CALLER_HUNG_UP)
        assert caller.bridged_to is None
        assert not caller.held
        assert caller.unhold_calls == (1 if held else 0)
    if gone:
        assert isinstance(outcome, Failed)
        assert outcome.reason is Reason.CALLER_HUNG_UP
        assert caller.hung_up
        assert caller.bridged_to is None
        assert caller.unhold_calls == 0

    # The reason is the script's, unless the caller or the app interrupted it.
    possible = {script.natural_reason()}
    if script.caller_hangs_up_after is not None:
        possible.add(Reason.CALLER_HUNG_UP)
    if script.app_cancels_after is not None:
        possible.add(Reason.CANCELLED)
    assert outcome.reason in possible
    if script.caller_hangs_up_after == 0:
        assert gone
        assert caller.hold_calls == []
    if script.dial != "answer":
        assert run.dialer.legs == []
        assert run.bridge.connected == []

    # Attempts: one per dial, with ordered timestamps.
    assert len(outcome.attempts) == len(run.dialer.targets)
    for attempt in outcome.attempts:
        stamps = [attempt.started, attempt.ringing, attempt.answered, attempt.ended]
        present = [t for t in stamps if t is not None]
        assert present == sorted(present)
        assert attempt.ended is not None
        assert attempt.reason is not None

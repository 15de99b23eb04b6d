"""The driver against in-memory ports: one test per behaviour, each path checked for leaks.

Every scenario runs inside `no_leaks()`: a deadline (a bug fails fast instead of hanging) and,
at the end, the check that no task outlives the transfer. Scenarios move step by step on the
ports' events (`dialer.ringing_started`, `leg.key_requested`, ...); the only real waiting is in
the tests of deadlines, which use deadlines of a few tens of milliseconds.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass, field

import pytest
from pydantic import ValidationError

from tests.unit.memory_ports import (
    KeyConsultant,
    MemoryBridge,
    MemoryCaller,
    MemoryDialer,
    MemoryTargetLeg,
    NotifyingConsultant,
    StallingConsultant,
)
from tests.unit.transfer_checks import no_leaks
from warmtransfer.consult.ports import Briefing, ConsultLeg
from warmtransfer.transfer import (
    TRANSITIONS,
    AllowList,
    BridgeFailed,
    Completed,
    DestinationNotAllowed,
    DialFailed,
    Failed,
    HoldAudio,
    Reason,
    State,
    Target,
    TransferEvent,
    TransferOutcome,
    TransferPlan,
    WarmTransfer,
    is_terminal,
    warm_transfer,
)
from warmtransfer.transfer.ports import TargetLeg
from warmtransfer.transfer.states import (
    Accepted,
    Answered,
    AttemptFailed,
    CallerHungUp,
    Cancelled,
    Declined,
    HuntExhausted,
    PortFailed,
    Ringing,
)

S = State
ALLOW = AllowList(patterns=("sip:*@pbx.example.com",))
BRIEFING = Briefing(summary="Bob wants a refund for order 1234", caller="Bob")
HOLD = HoldAudio(volume=0.5)


def make_plan(
    *,
    dtmf: str = "12w3",
    ring_timeout: float = 30.0,
    consult_timeout: float = 60.0,
    allow: AllowList = ALLOW,
    transfer_timeout: float | None = None,
) -> TransferPlan:
    target = Target(
        uri="sip:alice@pbx.example.com",
        display_name="Alice",
        dtmf=dtmf,
        ring_timeout=ring_timeout,
    )
    return TransferPlan(
        targets=(target,),
        allow=allow,
        hold_audio=HOLD,
        consult_timeout=consult_timeout,
        transfer_timeout=transfer_timeout,
    )


@dataclass
class Harness:
    """One transfer wired to memory ports, plus an Event per state the transfer has reached."""

    caller: MemoryCaller = field(default_factory=MemoryCaller)
    leg: MemoryTargetLeg = field(default_factory=MemoryTargetLeg)
    dialer: MemoryDialer | None = None
    bridge: MemoryBridge = field(default_factory=MemoryBridge)
    consultant: KeyConsultant = field(default_factory=KeyConsultant)
    plan: TransferPlan = field(default_factory=make_plan)
    on_event: Callable[[TransferEvent], None] | None = None
    seen: list[TransferEvent] = field(default_factory=list)
    reached: dict[State, asyncio.Event] = field(default_factory=dict)
    answered: asyncio.Event = field(default_factory=asyncio.Event)

    def __post_init__(self) -> None:
        if self.dialer is None:
            self.dialer = MemoryDialer(answer=self.leg)
        self.reached = {state: asyncio.Event() for state in State}
        self.transfer = WarmTransfer(
            plan=self.plan,
            caller=self.caller,
            dialer=self.dialer,
            bridge=self.bridge,
            consultant=self.consultant,
            briefing=BRIEFING,
            transfer_id="t-1",
            on_event=self._record,
        )

    @property
    def dial(self) -> MemoryDialer:
        assert self.dialer is not None
        return self.dialer

    def _record(self, event: TransferEvent) -> None:
        self.seen.append(event)
        self.reached[event.state].set()
        if isinstance(event.event, Answered):
            self.answered.set()
        if self.on_event is not None:
            self.on_event(event)

    def start(self) -> asyncio.Task[TransferOutcome]:
        return asyncio.create_task(self.transfer.run())

    def states(self) -> list[State]:
        return [event.state for event in self.transfer.timeline]

    def names(self) -> list[str]:
        return [event.event.name for event in self.transfer.timeline]


def assert_legal_timeline(h: Harness) -> None:
    """Every event is a move of the table, in order, stamped in order, ending terminal."""
    timeline = h.transfer.timeline
    previous = S.IDLE
    for event in timeline:
        assert event.transfer_id == "t-1"
        assert event.previous is previous
        assert TRANSITIONS[(previous, type(event.event))] is event.state
        assert event.at == event.event.at
        previous = event.state
    assert [e.at for e in timeline] == sorted(e.at for e in timeline)
    assert is_terminal(previous)
    assert h.transfer.state is previous
    assert h.seen == timeline  # the callback saw exactly the timeline


def assert_released(h: Harness) -> None:
    """No dial pending; every answered leg either bridged or hung up by us, with no playback
    running and nothing waiting on it; no event iterator left open."""
    assert not h.dial.pending
    for leg in h.dial.legs:
        assert leg.bridged or leg.hung_up_by_us
        assert leg.plays_active == 0
        assert leg.waiters == 0
    assert h.transfer._stream.closed
    assert not h.caller.hold_playing or h.caller.bridged_to is not None


def assert_back_with_ai(h: Harness, outcome: TransferOutcome, reason: Reason) -> Failed:
    assert isinstance(outcome, Failed)
    assert outcome.reason is reason
    assert not outcome.ok
    assert h.transfer.state is S.FAILED
    assert h.states()[-2:] == [S.RECOVERING, S.FAILED]
    assert h.caller.with_ai
    assert h.caller.unhold_calls == 1
    assert h.bridge.connected == []
    assert_released(h)
    assert_legal_timeline(h)
    return outcome


def assert_abandoned(h: Harness, outcome: TransferOutcome) -> Failed:
    assert isinstance(outcome, Failed)
    assert outcome.reason is Reason.CALLER_HUNG_UP
    assert h.transfer.state is S.ABANDONED
    assert h.caller.unhold_calls == 0, "a caller who has gone is never unheld"
    assert_released(h)
    assert_legal_timeline(h)
    return outcome


# -- 1. the allow-list comes first ----------------------------------------------------------


async def test_destination_not_allowed_before_anything() -> None:
    async with no_leaks():
        h = Harness(plan=make_plan(allow=AllowList(patterns=("sip:*@other.example.com",))))
        with pytest.raises(DestinationNotAllowed, match="not in the allow-list"):
            await h.transfer.run()
        assert h.caller.hold_calls == []
        assert h.dial.targets == []
        assert h.consultant.briefings == []
        assert h.transfer.state is S.IDLE
        assert h.transfer.timeline == []
        assert [event async for event in h.transfer.events()] == []


async def test_empty_allow_list_allows_nothing() -> None:
    async with no_leaks():
        h = Harness(plan=make_plan(allow=AllowList()))
        with pytest.raises(DestinationNotAllowed):
            await h.transfer.run()
        assert h.caller.hold_calls == []
        assert h.dial.targets == []


# -- 2-3. the happy path --------------------------------------------------------------------


async def test_completed_transfer_step_by_step() -> None:
    order: list[list[str]] = []
    answer = asyncio.Event()
    leg = MemoryTargetLeg(on_play=lambda leg: order.append(list(leg.digits_sent)))
    dialer = MemoryDialer(answer=leg, answer_gate=answer)
    async with no_leaks():
        h = Harness(leg=leg, dialer=dialer)
        task = h.start()
        await dialer.ringing_started.wait()
        # The briefing is rendered while the target rings, not after the answer.
        await h.consultant.prepare_done.wait()
        assert h.transfer.state is S.HUNTING
        assert h.names()[-1] == "Ringing"
        assert h.caller.held
        assert h.caller.hold_calls == [HOLD]
        assert h.consultant.briefings == [BRIEFING]
        answer.set()
        await leg.key_requested.wait()
        assert h.names()[-1] == "Answered"
        leg.press("1")
        outcome = await task

    assert isinstance(outcome, Completed)
    assert outcome.ok
    assert outcome.reason is Reason.COMPLETED
    assert outcome.target == h.plan.targets[0]
    assert outcome.winner == 0
    assert not outcome.fallback
    assert h.states() == [
        S.HOLDING,
        S.HUNTING,
        S.HUNTING,
        S.HUNTING,
        S.HUNTING,
        S.BRIDGING,
        S.COMPLETED,
    ]
    assert h.names() == [
        "Start",
        "HoldStarted",
        "DialStarted",
        "Ringing",
        "Answered",
        "Accepted",
        "Bridged",
    ]
    accepted = h.transfer.timeline[5].event
    assert isinstance(accepted, Accepted)
    assert accepted.via == "key 1"
    assert order == [["12w3"]], "post-dial digits go to the target, before the briefing"
    assert leg.played == [h.consultant.clip]
    assert h.bridge.connected == [(h.caller, leg)]
    assert h.caller.unhold_calls == 0
    assert leg.hangup_calls == 0, "the bridge owns the target leg now"
    assert h.caller.bridged_to is leg
    (attempt,) = outcome.attempts
    assert attempt.target == h.plan.targets[0]
    assert attempt.reason is Reason.COMPLETED
    assert attempt.ringing is not None
    assert attempt.answered is not None
    assert attempt.ended is not None
    assert outcome.started <= attempt.started <= attempt.ringing <= attempt.answered
    assert attempt.answered <= attempt.ended == outcome.ended
    assert h.transfer.outcome is outcome
    assert_released(h)
    assert_legal_timeline(h)


async def test_answer_without_ringing_and_repeated_ringing() -> None:
    async with no_leaks():
        leg = MemoryTargetLeg(keys="1")
        h = Harness(leg=leg, dialer=MemoryDialer(answer=leg, ringing=()))
        outcome = await h.transfer.run()
    assert isinstance(outcome, Completed)
    assert h.names()[2:4] == ["DialStarted", "Answered"]
    assert outcome.attempts[0].ringing is None

    async with no_leaks():
        leg = MemoryTargetLeg(keys="1")
        h = Harness(leg=leg, dialer=MemoryDialer(answer=leg, ringing=(180, 183)))
        outcome = await h.transfer.run()
    assert isinstance(outcome, Completed)
    assert h.names()[2:5] == ["DialStarted", "Ringing", "Ringing"]
    statuses = [e.event.sip_status for e in h.transfer.timeline if isinstance(e.event, Ringing)]
    assert statuses == [180, 183]


async def test_no_digits_when_the_target_has_none() -> None:
    async with no_leaks():
        leg = MemoryTargetLeg(keys="1")
        h = Harness(leg=leg, plan=make_plan(dtmf=""))
        outcome = await h.transfer.run()
    assert isinstance(outcome, Completed)
    assert leg.digits_sent == []


async def test_warm_transfer_convenience() -> None:
    async with no_leaks():
        leg = MemoryTargetLeg(keys="1")
        caller = MemoryCaller()
        bridge = MemoryBridge()
        outcome = await warm_transfer(
            plan=make_plan(),
            caller=caller,
            dialer=MemoryDialer(answer=leg),
            bridge=bridge,
            consultant=KeyConsultant(),
            briefing=BRIEFING,
        )
    assert isinstance(outcome, Completed)
    assert bridge.connected == [(caller, leg)]


# -- 2. dial failures -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("reason", "status", "text"),
    [
        (Reason.BUSY, 486, "Busy Here"),
        (Reason.NO_ANSWER, 480, "Temporarily Unavailable"),
        (Reason.REJECTED, 603, "Decline"),
        (Reason.REJECTED, 404, "Not Found"),
        (Reason.UNREACHABLE, 503, "Service Unavailable"),
    ],
)
async def test_dial_failure_is_typed_and_gives_the_caller_back(
    reason: Reason, status: int, text: str
) -> None:
    failure = DialFailed(reason, status, text, detail="from the trunk")
    async with no_leaks():
        h = Harness(
            dialer=MemoryDialer(fail=failure),
            consultant=KeyConsultant(prepare_gate=asyncio.Event()),  # still rendering
        )
        outcome = await h.transfer.run()
    failed = assert_back_with_ai(h, outcome, reason)
    assert (failed.sip_status, failed.sip_reason, failed.detail) == (status, text, "from the trunk")
    assert h.consultant.prepare_cancelled, "the briefing being prepared is cancelled too"
    (attempt,) = failed.attempts
    assert (attempt.reason, attempt.sip_status, attempt.sip_reason) == (reason, status, text)
    assert attempt.answered is None
    assert attempt.ringing is not None
    assert attempt.ended is not None
    assert attempt.started <= attempt.ended <= failed.ended
    assert isinstance(h.transfer.timeline[-3].event, AttemptFailed)
    exhausted = h.transfer.timeline[-2].event
    assert isinstance(exhausted, HuntExhausted)
    assert (exhausted.reason, exhausted.sip_status, exhausted.attempt) == (reason, status, 0)
    assert h.dial.legs == []


async def test_ring_timeout_cancels_the_dial() -> None:
    async with no_leaks():
        h = Harness(dialer=MemoryDialer(), plan=make_plan(ring_timeout=0.05))
        outcome = await h.transfer.run()
    failed = assert_back_with_ai(h, outcome, Reason.NO_ANSWER)
    assert h.dial.cancelled, "a dial past its ring timeout is cancelled, not left ringing"
    assert "ring_timeout" in failed.detail
    assert failed.attempts[0].reason is Reason.NO_ANSWER


# -- 3. the consult's endings ------------------------------------------------------------------


async def test_declined_with_reason() -> None:
    async with no_leaks():
        h = Harness()
        task = h.start()
        await h.leg.key_requested.wait()
        h.leg.press("2")
        outcome = await task
    failed = assert_back_with_ai(h, outcome, Reason.DECLINED)
    assert failed.detail == KeyConsultant.DECLINE_REASON
    assert h.leg.hung_up_by_us
    declined = h.transfer.timeline[-3].event
    assert isinstance(declined, Declined)
    assert declined.via == "key 2"
    (attempt,) = failed.attempts
    assert attempt.reason is Reason.DECLINED
    assert attempt.answered is not None


async def test_voicemail() -> None:
    async with no_leaks():
        h = Harness(leg=MemoryTargetLeg(keys="93"))  # an ignored key, then the verdict
        outcome = await h.transfer.run()
    assert_back_with_ai(h, outcome, Reason.VOICEMAIL)
    assert h.leg.hung_up_by_us


@pytest.mark.parametrize("stuck_on", ["no key", "briefing not ready"])
async def test_consult_deadline(stuck_on: str) -> None:
    consultant = KeyConsultant(prepare_gate=asyncio.Event() if stuck_on != "no key" else None)
    async with no_leaks():
        h = Harness(consultant=consultant, plan=make_plan(consult_timeout=0.05))
        outcome = await h.transfer.run()
    failed = assert_back_with_ai(h, outcome, Reason.CONSULT_TIMEOUT)
    assert h.leg.hung_up_by_us
    assert "0.05" in failed.detail


async def test_target_hangs_up_while_deciding_without_waiting_for_the_deadline() -> None:
    async with no_leaks(deadline=2.0):  # the consult deadline is 60 s
        h = Harness()
        task = h.start()
        await h.leg.key_requested.wait()
        h.leg.remote_hangup()
        outcome = await task
    assert_back_with_ai(h, outcome, Reason.TARGET_HUNG_UP)


async def test_target_hangs_up_during_the_briefing() -> None:
    async with no_leaks(deadline=2.0):
        h = Harness(leg=MemoryTargetLeg(play_blocks=True))
        task = h.start()
        await h.leg.playing.wait()
        h.leg.remote_hangup()
        outcome = await task
    assert_back_with_ai(h, outcome, Reason.TARGET_HUNG_UP)


async def test_target_hangs_up_while_the_consultant_looks_elsewhere() -> None:
    """The consultant never touches the leg: the driver's own watch must notice."""
    async with no_leaks(deadline=2.0):
        h = Harness(consultant=StallingConsultant())
        task = h.start()
        await h.consultant.consult_started.wait()
        h.leg.remote_hangup()
        outcome = await task
    assert_back_with_ai(h, outcome, Reason.TARGET_HUNG_UP)


async def test_bridge_failure_hangs_up_the_target_and_gives_the_caller_back() -> None:
    async with no_leaks():
        h = Harness(
            leg=MemoryTargetLeg(keys="1"), bridge=MemoryBridge(fail=BridgeFailed("no path"))
        )
        outcome = await h.transfer.run()
    failed = assert_back_with_ai(h, outcome, Reason.BRIDGE_FAILED)
    assert failed.detail == "no path"
    assert h.leg.hung_up_by_us
    assert h.states()[-3:] == [S.BRIDGING, S.RECOVERING, S.FAILED]


async def test_target_hangs_up_while_bridging() -> None:
    bridge = MemoryBridge(gate=asyncio.Event())
    async with no_leaks():
        h = Harness(leg=MemoryTargetLeg(keys="1"), bridge=bridge)
        task = h.start()
        await bridge.started.wait()
        h.leg.remote_hangup()
        outcome = await task
    assert_back_with_ai(h, outcome, Reason.TARGET_HUNG_UP)
    assert bridge.cancelled
    assert h.states()[-3:] == [S.BRIDGING, S.RECOVERING, S.FAILED]


# -- 5. the caller hangs up, at any moment ----------------------------------------------------

MOMENTS = ["holding", "dialing", "ringing", "preparing", "briefing", "deciding", "bridging"]


@pytest.mark.parametrize("moment", MOMENTS)
async def test_caller_hangs_up_at_any_moment(moment: str) -> None:
    never = asyncio.Event()
    leg = MemoryTargetLeg(
        play_blocks=moment == "briefing", keys="1" if moment == "bridging" else ""
    )
    h = Harness(
        caller=MemoryCaller(hold_gate=never if moment == "holding" else None),
        leg=leg,
        dialer=MemoryDialer(
            answer=leg,
            ring_gate=never if moment == "dialing" else None,
            answer_gate=never if moment == "ringing" else None,
        ),
        consultant=KeyConsultant(prepare_gate=never if moment == "preparing" else None),
        bridge=MemoryBridge(gate=never if moment == "bridging" else None),
    )
    waits: dict[str, Callable[[], object]] = {
        "holding": h.caller.hold_started.wait,
        "dialing": h.dial.started.wait,
        "ringing": h.dial.ringing_started.wait,
        "preparing": h.answered.wait,
        "briefing": leg.playing.wait,
        "deciding": leg.key_requested.wait,
        "bridging": h.bridge.started.wait,
    }
    expected_state = {
        "holding": S.HOLDING,
        "dialing": S.HUNTING,
        "ringing": S.HUNTING,
        "preparing": S.HUNTING,
        "briefing": S.HUNTING,
        "deciding": S.HUNTING,
        "bridging": S.BRIDGING,
    }[moment]
    answered = moment in ("preparing", "briefing", "deciding", "bridging")

    async with no_leaks():
        task = h.start()
        await waits[moment]()  # type: ignore[misc]
        assert h.transfer.state is expected_state
        h.caller.hang_up()
        outcome = await task

    failed = assert_abandoned(h, outcome)
    last = h.transfer.timeline[-1]
    assert isinstance(last.event, CallerHungUp)
    assert last.previous is expected_state
    assert h.bridge.connected == []
    assert h.dial.cancelled is (moment in ("dialing", "ringing")), "a pending dial is cancelled"
    assert leg.hung_up_by_us is answered, "an answered target leg is hung up"
    if moment == "preparing":
        assert h.consultant.prepare_cancelled
    (attempt,) = failed.attempts if moment != "holding" else (None,)
    if attempt is not None:
        assert attempt.reason is Reason.CALLER_HUNG_UP
        assert (attempt.answered is not None) is answered
    else:
        assert failed.attempts == ()
        assert h.dial.targets == []


async def test_caller_already_gone() -> None:
    async with no_leaks():
        h = Harness()
        h.caller.hang_up()
        outcome = await h.transfer.run()
    assert_abandoned(h, outcome)
    assert h.caller.hold_calls == []
    assert h.dial.targets == []
    assert h.states() == [S.ABANDONED]


async def test_caller_hangs_up_while_being_given_back() -> None:
    gate = asyncio.Event()
    async with no_leaks():
        h = Harness(caller=MemoryCaller(unhold_gate=gate))
        task = h.start()
        await h.leg.key_requested.wait()
        h.leg.press("2")
        await h.caller.unhold_started.wait()
        h.caller.hang_up()
        gate.set()
        outcome = await task
    assert isinstance(outcome, Failed)
    assert outcome.reason is Reason.CALLER_HUNG_UP
    assert "declined" in outcome.detail
    assert h.states()[-2:] == [S.RECOVERING, S.ABANDONED]
    assert outcome.attempts[0].reason is Reason.DECLINED
    assert_released(h)
    assert_legal_timeline(h)


async def test_caller_gone_when_the_transfer_fails_is_not_unheld() -> None:
    caller = MemoryCaller()

    def hang_up_on_decline(event: TransferEvent) -> None:
        if isinstance(event.event, HuntExhausted):  # the transfer has just failed
            caller.hang_up()

    async with no_leaks():
        h = Harness(caller=caller, leg=MemoryTargetLeg(keys="2"), on_event=hang_up_on_decline)
        outcome = await h.transfer.run()
    failed = assert_abandoned(h, outcome)
    assert h.states()[-2:] == [S.RECOVERING, S.ABANDONED]
    assert "declined" in failed.detail
    assert h.leg.hung_up_by_us


async def test_the_human_can_be_told_the_caller_left() -> None:
    consultant = NotifyingConsultant()
    told_while_up: list[bool] = []

    async def notify(leg: ConsultLeg) -> None:
        assert isinstance(leg, MemoryTargetLeg)
        told_while_up.append(not leg.hung_up)
        consultant.notified.append(leg)

    consultant.notify_caller_left = notify  # type: ignore[method-assign]
    async with no_leaks():
        h = Harness(consultant=consultant)
        task = h.start()
        await h.leg.key_requested.wait()
        h.caller.hang_up()
        outcome = await task
    assert_abandoned(h, outcome)
    assert consultant.notified == [h.leg]
    assert told_while_up == [True], "the notice comes before the hang-up"


async def test_no_notice_when_nobody_answered() -> None:
    consultant = NotifyingConsultant()
    async with no_leaks():
        h = Harness(consultant=consultant, dialer=MemoryDialer())
        task = h.start()
        await h.dial.ringing_started.wait()
        h.caller.hang_up()
        outcome = await task
    assert_abandoned(h, outcome)
    assert consultant.notified == []


# -- cancellation and deadlines ---------------------------------------------------------------


async def test_cancel_while_ringing() -> None:
    async with no_leaks():
        h = Harness(dialer=MemoryDialer())
        task = h.start()
        await h.dial.ringing_started.wait()
        h.transfer.cancel()
        outcome = await task
    failed = assert_back_with_ai(h, outcome, Reason.CANCELLED)
    assert h.dial.cancelled
    assert failed.detail == "cancelled by the app"


async def test_cancel_before_run() -> None:
    async with no_leaks():
        h = Harness()
        h.transfer.cancel()
        outcome = await h.transfer.run()
    assert isinstance(outcome, Failed)
    assert outcome.reason is Reason.CANCELLED
    assert h.caller.hold_calls == []
    assert h.caller.unhold_calls == 0
    assert h.dial.targets == []
    assert h.states() == [S.RECOVERING, S.FAILED]
    assert_legal_timeline(h)


async def test_cancel_from_a_callback_on_answer_stops_before_the_consult() -> None:
    h_ref: list[Harness] = []

    def on_event(event: TransferEvent) -> None:
        if isinstance(event.event, Answered):
            h_ref[0].transfer.cancel()

    async with no_leaks():
        h = Harness(on_event=on_event)
        h_ref.append(h)
        outcome = await h.transfer.run()
    assert_back_with_ai(h, outcome, Reason.CANCELLED)
    assert not h.consultant.consult_started.is_set()
    assert h.leg.digits_sent == []
    assert h.leg.hung_up_by_us


async def test_cancel_after_the_end_does_nothing() -> None:
    async with no_leaks():
        h = Harness(leg=MemoryTargetLeg(keys="1"))
        outcome = await h.transfer.run()
        h.transfer.cancel()
    assert isinstance(outcome, Completed)
    assert h.transfer.state is S.COMPLETED
    assert_legal_timeline(h)


async def test_cancel_after_the_caller_left_stays_abandoned() -> None:
    async with no_leaks():
        h = Harness(dialer=MemoryDialer())
        task = h.start()
        await h.dial.ringing_started.wait()
        h.caller.hang_up()
        await h.reached[S.ABANDONED].wait()
        h.transfer.cancel()
        outcome = await task
    assert_abandoned(h, outcome)


@pytest.mark.parametrize("moment", ["ringing", "deciding"])
async def test_cancelling_run_itself_cleans_up_then_reraises(moment: str) -> None:
    async with no_leaks():
        h = Harness(dialer=MemoryDialer() if moment == "ringing" else None)
        task = h.start()
        if moment == "ringing":
            await h.dial.ringing_started.wait()
        else:
            await h.leg.key_requested.wait()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
    assert h.caller.with_ai
    assert h.caller.unhold_calls == 1
    assert_released(h)
    assert h.dial.cancelled is (moment == "ringing")
    assert h.leg.hung_up_by_us is (moment == "deciding")
    last = h.transfer.timeline[-2].event
    assert isinstance(last, Cancelled)
    assert last.detail == "run() was cancelled"
    assert h.transfer.state is S.FAILED
    assert h.transfer.outcome is None
    assert_legal_timeline(h)


async def test_transfer_deadline_while_holding() -> None:
    async with no_leaks():
        h = Harness(
            caller=MemoryCaller(hold_gate=asyncio.Event()), plan=make_plan(transfer_timeout=0.05)
        )
        outcome = await h.transfer.run()
    assert_back_with_ai(h, outcome, Reason.TRANSFER_TIMEOUT)
    assert h.dial.targets == []


async def test_transfer_deadline_while_bridging() -> None:
    bridge = MemoryBridge(gate=asyncio.Event())
    async with no_leaks():
        h = Harness(
            leg=MemoryTargetLeg(keys="1"), bridge=bridge, plan=make_plan(transfer_timeout=0.05)
        )
        outcome = await h.transfer.run()
    assert_back_with_ai(h, outcome, Reason.TRANSFER_TIMEOUT)
    assert bridge.cancelled
    assert h.leg.hung_up_by_us


def test_transfer_timeout_must_be_positive() -> None:
    with pytest.raises(ValidationError, match="transfer_timeout"):
        make_plan(transfer_timeout=-1.0)


# -- 9. unexpected exceptions from ports ------------------------------------------------------

BOOM = RuntimeError("boom")


def _broken(where: str) -> Harness:
    leg = MemoryTargetLeg(keys="1", errors={"send_digits": BOOM} if where == "digits" else None)
    dialer = MemoryDialer(
        answer=leg,
        fail=BOOM if where == "dial" else None,
        answer_gate=asyncio.Event() if where == "prepare" else None,
    )
    return Harness(
        caller=MemoryCaller(
            hold_error=BOOM if where == "hold" else None,
            wait_hangup_error=BOOM if where == "caller watch" else None,
        ),
        leg=leg,
        dialer=dialer,
        consultant=KeyConsultant(
            # the briefing fails while the target rings
            prepare_gate=dialer.ringing_started if where == "prepare" else None,
            prepare_error=BOOM if where == "prepare" else None,
            consult_error=BOOM if where == "consult" else None,
        ),
        bridge=MemoryBridge(fail=BOOM if where == "bridge" else None),
    )


@pytest.mark.parametrize(
    ("where", "port"),
    [
        ("hold", "caller.hold"),
        ("caller watch", "caller.wait_hangup"),
        ("dial", "dialer.dial"),
        ("prepare", "consultant.prepare"),
        ("digits", "target.send_digits"),
        ("consult", "consultant.consult"),
        ("bridge", "bridge.connect"),
    ],
)
async def test_a_port_raising_ends_in_error_with_cleanup(where: str, port: str) -> None:
    async with no_leaks():
        h = _broken(where)
        outcome = await h.transfer.run()
    failed = assert_back_with_ai(h, outcome, Reason.ERROR)
    assert repr(BOOM) in failed.detail
    assert port in failed.detail
    ended_on = h.transfer.timeline[-2].event
    assert isinstance(ended_on, PortFailed)
    assert ended_on.port == port
    if where == "prepare":
        assert h.dial.cancelled, "a failed briefing stops the ringing at once"


async def test_unhold_raising_is_reported_not_raised() -> None:
    async with no_leaks():
        h = Harness(caller=MemoryCaller(unhold_error=BOOM), leg=MemoryTargetLeg(keys="2"))
        outcome = await h.transfer.run()
    assert isinstance(outcome, Failed)
    assert outcome.reason is Reason.ERROR
    assert "caller.unhold" in outcome.detail
    assert "declined" in outcome.detail
    assert h.states()[-2:] == [S.RECOVERING, S.FAILED]
    assert h.leg.hung_up_by_us
    assert_legal_timeline(h)


async def test_target_hangup_raising_does_not_stop_the_caller_coming_back() -> None:
    async with no_leaks():
        h = Harness(leg=MemoryTargetLeg(keys="2", errors={"hangup": BOOM}))
        outcome = await h.transfer.run()
    assert_back_with_ai(h, outcome, Reason.DECLINED)


# -- misc API -----------------------------------------------------------------------------------


async def test_run_runs_once() -> None:
    async with no_leaks():
        h = Harness(leg=MemoryTargetLeg(keys="1"))
        await h.transfer.run()
        with pytest.raises(RuntimeError, match="runs once"):
            await h.transfer.run()


async def test_events_iterator_and_callbacks(caplog: pytest.LogCaptureFixture) -> None:
    calls: list[TransferEvent] = []

    def broken_callback(event: TransferEvent) -> None:
        calls.append(event)
        raise ValueError("app bug")

    async with no_leaks():
        h = Harness(leg=MemoryTargetLeg(keys="1"), on_event=broken_callback)
        early = h.transfer.events()
        collected: list[TransferEvent] = []

        async def follow() -> None:
            async for event in early:
                collected.append(event)

        with caplog.at_level(logging.ERROR, logger="warmtransfer.transfer"):
            async with asyncio.TaskGroup() as group:
                group.create_task(follow())
                outcome = await h.transfer.run()
        late = [event async for event in h.transfer.events()]

    assert isinstance(outcome, Completed), "a raising callback never breaks the transfer"
    timeline = h.transfer.timeline
    assert collected == timeline == late == calls
    assert [r for r in caplog.records if "callback" in r.getMessage()], "callback errors logged"


async def test_late_provisional_response_is_ignored() -> None:
    """A backend that reports 180 after the answer must not break the transfer."""
    leg = MemoryTargetLeg()
    ringing: list[Callable[[int], None]] = []

    class LateDialer(MemoryDialer):
        async def dial(self, target: Target, on_ringing: Callable[[int], None]) -> TargetLeg:
            ringing.append(on_ringing)
            return await super().dial(target, on_ringing)

    async with no_leaks():
        h = Harness(leg=leg, dialer=LateDialer(answer=leg))
        task = h.start()
        await leg.key_requested.wait()
        ringing[0](180)
        leg.press("1")
        outcome = await task
        ringing[0](180)  # and after the end
    assert isinstance(outcome, Completed)
    assert sum(isinstance(e.event, Ringing) for e in h.transfer.timeline) == 1
    assert_legal_timeline(h)


async def test_timestamps_come_from_the_injected_clock() -> None:
    ticks = iter(range(1000))
    async with no_leaks():
        leg = MemoryTargetLeg(keys="1")
        transfer = WarmTransfer(
            plan=make_plan(),
            caller=MemoryCaller(),
            dialer=MemoryDialer(answer=leg),
            bridge=MemoryBridge(),
            consultant=KeyConsultant(),
            briefing=BRIEFING,
            clock=lambda: float(next(ticks)),
        )
        outcome = await transfer.run()
    stamps = [event.at for event in transfer.timeline]
    assert stamps == sorted(set(stamps)), "strictly increasing"
    assert outcome.started == stamps[0]
    assert outcome.ended == stamps[-1]
    assert len(transfer.transfer_id) == 12

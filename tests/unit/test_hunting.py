"""Hunting, failure policies and the races of the transfer core, against in-memory ports.

Every scenario runs inside `no_leaks()` (no task, no timer outlives it) and ends with
`check_transfer` (legal timeline, attempt records, no leg/dial/playback/waiter/iterator left,
the caller in exactly one place). Scenarios move on the ports' events and gates, never on
sleeps; the only real waiting is in the tests of deadlines, of a few tens of milliseconds.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from typing import Any

import pytest

from tests.unit.memory_ports import (
    DialScript,
    KeyConsultant,
    MemoryBridge,
    MemoryCaller,
    MemoryDialer,
    MemoryTargetLeg,
    NotifyingConsultant,
    SameMomentConsultant,
)
from tests.unit.transfer_checks import check_transfer, no_leaks
from warmtransfer.consult.ports import Briefing, ConsultLeg
from warmtransfer.transfer import (
    AllowList,
    Attempt,
    BridgeFailed,
    Completed,
    DestinationNotAllowed,
    DialFailed,
    Failed,
    Reason,
    State,
    Target,
    TransferEvent,
    TransferOutcome,
    TransferPlan,
    WarmTransfer,
)
from warmtransfer.transfer.outcome import most_informative
from warmtransfer.transfer.plan import (
    Fallback,
    Hunting,
    MessageAndHangup,
    ReturnToAgent,
)
from warmtransfer.transfer.states import Accepted, AttemptEvent, DialStarted, HuntExhausted

S = State
ALLOW = AllowList(patterns=("sip:*@pbx.example.com",))
ALICE = Target(uri="sip:alice@pbx.example.com", display_name="Alice")
BOB = Target(uri="sip:bob@pbx.example.com", display_name="Bob")
CAROL = Target(uri="sip:carol@pbx.example.com", display_name="Carol")
QUEUE = Target(uri="sip:queue@pbx.example.com", display_name="Queue", dtmf="9")
BRIEFING = Briefing(summary="Bob wants a refund for order 1234", caller="Bob")
CLOSED = "Sorry, nobody can take your call now. Please call back after nine."

BUSY = DialFailed(Reason.BUSY, 486, "Busy Here")
NOT_FOUND = DialFailed(Reason.REJECTED, 404, "Not Found")


def ringing_forever() -> DialScript:
    return DialScript()


def answers(leg: MemoryTargetLeg, **kwargs: Any) -> DialScript:
    return DialScript(answer=leg, **kwargs)


def fails(error: Exception) -> DialScript:
    return DialScript(fail=error)


def make_plan(
    *targets: Target,
    mode: str = "sequential",
    rounds: int = 1,
    round_delay: float = 0.0,
    retry_on: frozenset[Reason] | None = None,
    on_failure: ReturnToAgent | MessageAndHangup | Fallback | None = None,
    consult_timeout: float = 30.0,
    transfer_timeout: float | None = None,
) -> TransferPlan:
    hunting: dict[str, Any] = {"mode": mode, "rounds": rounds, "round_delay": round_delay}
    if retry_on is not None:
        hunting["retry_on"] = retry_on
    return TransferPlan(
        targets=targets,
        hunting=Hunting.model_validate(hunting),
        allow=ALLOW,
        consult_timeout=consult_timeout,
        transfer_timeout=transfer_timeout,
        on_failure=on_failure or ReturnToAgent(),
    )


class Run:
    """One transfer over scripted targets, with a waitable Event per event name (and attempt)."""

    def __init__(
        self,
        plan: TransferPlan,
        routes: dict[str, DialScript | Sequence[DialScript]],
        *,
        consultant: KeyConsultant | None = None,
        caller: MemoryCaller | None = None,
        bridge: MemoryBridge | None = None,
        on_event: Callable[[TransferEvent], None] | None = None,
    ) -> None:
        self.plan = plan
        self.dialer = MemoryDialer(routes=routes)
        self.consultant = consultant or KeyConsultant()
        self.caller = caller or MemoryCaller()
        self.bridge = bridge or MemoryBridge()
        self.on_event = on_event
        self._seen: dict[tuple[str, int | None], asyncio.Event] = {}
        self.transfer = WarmTransfer(
            plan=plan,
            caller=self.caller,
            dialer=self.dialer,
            bridge=self.bridge,
            consultant=self.consultant,
            briefing=BRIEFING,
            on_event=self._record,
            clock=asyncio.get_running_loop().time,
        )

    def _record(self, event: TransferEvent) -> None:
        attempt = event.event.attempt if isinstance(event.event, AttemptEvent) else None
        self.seen(event.event.name).set()
        if attempt is not None:
            self.seen(event.event.name, attempt).set()
        if self.on_event is not None:
            self.on_event(event)

    def seen(self, name: str, attempt: int | None = None) -> asyncio.Event:
        return self._seen.setdefault((name, attempt), asyncio.Event())

    def start(self) -> asyncio.Task[TransferOutcome]:
        return asyncio.create_task(self.transfer.run())

    async def finish(self, task: asyncio.Task[TransferOutcome] | None = None) -> TransferOutcome:
        outcome = await (task if task is not None else self.transfer.run())
        self.final = check_transfer(self.transfer, outcome, self.caller, self.dialer, self.bridge)
        return outcome

    def names(self, attempt: int | None = None) -> list[str]:
        return [
            e.event.name
            for e in self.transfer.timeline
            if attempt is None or (isinstance(e.event, AttemptEvent) and e.event.attempt == attempt)
        ]

    def reasons(self, outcome: TransferOutcome) -> list[Reason | None]:
        return [attempt.reason for attempt in outcome.attempts]


# -- sequential hunting -----------------------------------------------------------------------


async def test_sequential_moves_on_after_busy() -> None:
    bob = MemoryTargetLeg(keys="1")
    async with no_leaks():
        run = Run(make_plan(ALICE, BOB), {ALICE.uri: fails(BUSY), BOB.uri: answers(bob)})
        outcome = await run.finish()
    assert isinstance(outcome, Completed)
    assert (outcome.winner, outcome.target, outcome.fallback) == (1, BOB, False)
    assert run.reasons(outcome) == [Reason.BUSY, Reason.COMPLETED]
    assert outcome.attempts[0].sip_status == 486
    assert run.names(0) == ["DialStarted", "Ringing", "AttemptFailed"]
    assert run.names(1) == ["DialStarted", "Ringing", "Answered", "Accepted"]
    # Bob is dialled only once Alice's attempt has ended.
    names = run.names()
    assert names.index("AttemptFailed") < len(names) - names[::-1].index("DialStarted") - 1


async def test_sequential_hangs_up_a_declined_human_before_dialling_the_next() -> None:
    alice = MemoryTargetLeg(keys="2")
    bob = MemoryTargetLeg(keys="1")
    alice_up_when_bob_dialled: list[bool] = []

    def on_event(event: TransferEvent) -> None:
        if isinstance(event.event, DialStarted) and event.event.attempt == 1:
            alice_up_when_bob_dialled.append(not alice.hung_up)

    async with no_leaks():
        run = Run(
            make_plan(ALICE, BOB),
            {ALICE.uri: answers(alice), BOB.uri: answers(bob)},
            on_event=on_event,
        )
        outcome = await run.finish()
    assert isinstance(outcome, Completed)
    assert run.reasons(outcome) == [Reason.DECLINED, Reason.COMPLETED]
    assert alice_up_when_bob_dialled == [False]
    assert alice.hung_up_by_us


async def test_rounds_retry_only_the_retryable_failures() -> None:
    """Busy Alice is retried; Bob who declined and Carol (404) are not."""
    alice = MemoryTargetLeg(keys="1")
    bob = MemoryTargetLeg(keys="2")
    async with no_leaks():
        run = Run(
            make_plan(ALICE, BOB, CAROL, rounds=2),
            {
                ALICE.uri: [fails(BUSY), answers(alice)],
                BOB.uri: answers(bob),
                CAROL.uri: fails(NOT_FOUND),
            },
        )
        outcome = await run.finish()
    assert isinstance(outcome, Completed)
    assert [a.target for a in outcome.attempts] == [ALICE, BOB, CAROL, ALICE]
    assert [a.round for a in outcome.attempts] == [1, 1, 1, 2]
    assert run.reasons(outcome) == [
        Reason.BUSY,
        Reason.DECLINED,
        Reason.REJECTED,
        Reason.COMPLETED,
    ]
    assert outcome.winner == 3
    rounds = [e.event.round for e in run.transfer.timeline if isinstance(e.event, DialStarted)]
    assert rounds == [1, 1, 1, 2]


async def test_retry_on_is_the_plans_choice() -> None:
    async with no_leaks():
        run = Run(make_plan(CAROL, rounds=2), {CAROL.uri: fails(NOT_FOUND)})
        outcome = await run.finish()
    assert len(outcome.attempts) == 1, "404 is not retried by default"

    async with no_leaks():
        run = Run(
            make_plan(CAROL, rounds=2, retry_on=frozenset({Reason.REJECTED})),
            {CAROL.uri: [fails(NOT_FOUND), fails(NOT_FOUND)]},
        )
        outcome = await run.finish()
    assert len(outcome.attempts) == 2
    assert outcome.reason is Reason.REJECTED


async def test_the_hunt_ends_early_when_nobody_is_left_to_retry() -> None:
    alice = MemoryTargetLeg(keys="2")
    async with no_leaks():
        run = Run(make_plan(ALICE, rounds=3, round_delay=60), {ALICE.uri: answers(alice)})
        outcome = await run.finish()  # no 60 s wait: a human who declined is never retried
    assert isinstance(outcome, Failed)
    assert outcome.reason is Reason.DECLINED
    assert len(outcome.attempts) == 1
    assert run.final is S.FAILED


async def test_round_delay_is_waited_between_rounds() -> None:
    async with no_leaks():
        run = Run(make_plan(ALICE, rounds=2, round_delay=0.05), {ALICE.uri: [fails(BUSY)] * 2})
        outcome = await run.finish()
    first, second = outcome.attempts
    assert second.started - first.ended >= 0.05  # type: ignore[operator]
    assert outcome.reason is Reason.BUSY


# -- the overall reason when every attempt failed ----------------------------------------------


def _attempt(reason: Reason, *, answered: bool = False, round: int = 1) -> Attempt:
    return Attempt(
        target=ALICE,
        started=0.0,
        answered=1.0 if answered else None,
        ended=2.0,
        reason=reason,
        round=round,
    )


@pytest.mark.parametrize(
    ("attempts", "expected"),
    [
        # anyone reached beats any other dial failure; a human's act beats a machine
        ([(Reason.BUSY, False, 1), (Reason.DECLINED, True, 1)], 1),
        ([(Reason.VOICEMAIL, True, 1), (Reason.TARGET_HUNG_UP, True, 1)], 1),
        ([(Reason.CONSULT_TIMEOUT, True, 1), (Reason.VOICEMAIL, True, 1)], 1),
        ([(Reason.DECLINED, True, 1), (Reason.BUSY, False, 2)], 0),
        # a human rejecting the ringing call (SIP 603) declined too
        ([(Reason.BUSY, False, 1), (Reason.DECLINED, False, 1)], 1),
        ([(Reason.DECLINED, False, 1), (Reason.VOICEMAIL, True, 1)], 0),
        # nobody answered: the last round speaks; busy > no answer > rejected > unreachable
        ([(Reason.NO_ANSWER, False, 1), (Reason.BUSY, False, 1)], 1),
        ([(Reason.UNREACHABLE, False, 1), (Reason.REJECTED, False, 1)], 1),
        ([(Reason.BUSY, False, 1), (Reason.NO_ANSWER, False, 2)], 1),
        # ties go to the most recent
        ([(Reason.BUSY, False, 1), (Reason.BUSY, False, 1)], 1),
    ],
)
def test_most_informative(attempts: list[tuple[Reason, bool, int]], expected: int) -> None:
    made = [_attempt(reason, answered=answered, round=r) for reason, answered, r in attempts]
    assert most_informative(made) is made[expected]


def test_most_informative_needs_an_attempt() -> None:
    with pytest.raises(ValueError, match="no attempt"):
        most_informative([])


def _script(how: str) -> DialScript:
    """A fresh script (legs are single-use) for a way an attempt fails."""
    if how == "declines":
        return answers(MemoryTargetLeg(keys="2"))
    if how == "voicemail":
        return answers(MemoryTargetLeg(keys="3"))
    if how == "hangs up":
        return answers(MemoryTargetLeg(on_key_request=MemoryTargetLeg.remote_hangup))
    return fails({"busy": BUSY, "404": NOT_FOUND}[how])


@pytest.mark.parametrize("mode", ["sequential", "simultaneous"])
@pytest.mark.parametrize(
    ("alice", "bob", "reason", "status"),
    [
        ("declines", "busy", Reason.DECLINED, None),
        ("busy", "404", Reason.BUSY, 486),
        ("voicemail", "hangs up", Reason.TARGET_HUNG_UP, None),
    ],
)
async def test_the_outcome_reason_of_a_failed_hunt(
    mode: str, alice: str, bob: str, reason: Reason, status: int | None
) -> None:
    async with no_leaks():
        run = Run(
            make_plan(ALICE, BOB, mode=mode),
            {ALICE.uri: _script(alice), BOB.uri: _script(bob)},
        )
        outcome = await run.finish()
    assert isinstance(outcome, Failed)
    assert (outcome.reason, outcome.sip_status) == (reason, status)
    exhausted = run.transfer.timeline[-2].event
    assert isinstance(exhausted, HuntExhausted)
    assert outcome.attempts[exhausted.attempt].reason is reason


# -- simultaneous hunting -----------------------------------------------------------------------


async def test_simultaneous_first_accept_wins_and_every_other_attempt_ends_at_once() -> None:
    """Alice rings, Bob accepts, Carol is mid-briefing: at Bob's yes, Alice's dial is cancelled
    and Carol is hung up, before and whatever the bridge does."""
    bob = MemoryTargetLeg()
    carol = MemoryTargetLeg(play_blocks=True)
    gate = asyncio.Event()
    async with no_leaks():
        run = Run(
            make_plan(ALICE, BOB, CAROL, mode="simultaneous"),
            {ALICE.uri: ringing_forever(), BOB.uri: answers(bob), CAROL.uri: answers(carol)},
            bridge=MemoryBridge(gate=gate),
        )
        task = run.start()
        await bob.key_requested.wait()
        await carol.playing.wait()
        await run.dialer.to(ALICE.uri)[0].ringing_started.wait()
        assert [run.transfer.state, len(run.dialer.dials)] == [S.HUNTING, 3]
        bob.press("1")
        await run.bridge.started.wait()
        await run.dialer.to(ALICE.uri)[0].ended.wait()
        assert run.dialer.to(ALICE.uri)[0].cancelled, "nothing left ringing"
        while not carol.hung_up_by_us:
            await carol._changes.wait()
        assert not bob.hung_up and run.transfer.state is S.BRIDGING
        gate.set()
        outcome = await run.finish(task)
    assert isinstance(outcome, Completed)
    assert outcome.winner == 1
    assert run.reasons(outcome) == [Reason.CANCELLED, Reason.COMPLETED, Reason.CANCELLED]
    assert outcome.attempts[0].detail == "another target accepted first"
    assert run.names().count("Accepted") == 1


async def test_simultaneous_dials_every_target_at_once() -> None:
    async with no_leaks():
        run = Run(
            make_plan(ALICE, BOB, CAROL, mode="simultaneous"),
            {t.uri: ringing_forever() for t in (ALICE, BOB, CAROL)},
        )
        task = run.start()
        for target in (ALICE, BOB, CAROL):
            await run.dialer.started_for(target.uri).wait()
        assert run.dialer.pending
        run.transfer.cancel()
        outcome = await run.finish(task)
    assert outcome.reason is Reason.CANCELLED
    assert all(dial.cancelled for dial in run.dialer.dials)
    assert run.reasons(outcome) == [Reason.CANCELLED] * 3


async def test_simultaneous_one_decline_does_not_end_the_hunt() -> None:
    alice = MemoryTargetLeg(keys="2")
    bob = MemoryTargetLeg(keys="1")
    bob_answers = asyncio.Event()
    async with no_leaks():
        run = Run(
            make_plan(ALICE, BOB, mode="simultaneous"),
            {ALICE.uri: answers(alice), BOB.uri: answers(bob, answer_gate=bob_answers)},
        )
        task = run.start()
        await run.seen("Declined", 0).wait()
        await run.dialer.to(ALICE.uri)[0].ended.wait()
        assert run.transfer.state is S.HUNTING
        bob_answers.set()
        outcome = await run.finish(task)
    assert isinstance(outcome, Completed)
    assert run.reasons(outcome) == [Reason.DECLINED, Reason.COMPLETED]
    assert alice.hung_up_by_us


async def test_simultaneous_each_human_is_briefed_in_parallel() -> None:
    alice = MemoryTargetLeg(keys="")
    bob = MemoryTargetLeg(keys="")
    async with no_leaks():
        run = Run(
            make_plan(ALICE, BOB, mode="simultaneous"),
            {ALICE.uri: answers(alice), BOB.uri: answers(bob)},
        )
        task = run.start()
        await alice.key_requested.wait()
        await bob.key_requested.wait()
        assert alice.played == bob.played == [run.consultant.clip]
        bob.press("2")
        await run.seen("Declined", 1).wait()
        alice.press("1")
        outcome = await run.finish(task)
    assert isinstance(outcome, Completed)
    assert outcome.winner == 0


async def test_two_humans_pressing_accept_in_the_same_iteration_make_one_bridge() -> None:
    alice = MemoryTargetLeg()
    bob = MemoryTargetLeg()
    async with no_leaks():
        run = Run(
            make_plan(ALICE, BOB, mode="simultaneous"),
            {ALICE.uri: answers(alice), BOB.uri: answers(bob)},
        )
        task = run.start()
        await alice.key_requested.wait()
        await bob.key_requested.wait()
        alice.press("1")  # both keys land before the loop runs again
        bob.press("1")
        outcome = await run.finish(task)
    assert isinstance(outcome, Completed)
    assert len(run.bridge.connected) == 1
    assert run.names().count("Accepted") == 1
    loser = 1 - outcome.winner
    assert outcome.attempts[loser].reason is Reason.CANCELLED
    assert (alice, bob)[loser].hung_up_by_us


async def test_three_humans_answering_and_accepting_at_the_same_moment_make_one_bridge() -> None:
    """All three answer in one iteration (one gate), are briefed in parallel, and all three
    consults return "accept" in one iteration."""
    go = asyncio.Event()
    answer = asyncio.Event()
    consultant = SameMomentConsultant(go)
    consultant.expected = 3
    legs = [MemoryTargetLeg(), MemoryTargetLeg(), MemoryTargetLeg()]
    async with no_leaks():
        run = Run(
            make_plan(ALICE, BOB, CAROL, mode="simultaneous"),
            {
                t.uri: answers(leg, answer_gate=answer)
                for t, leg in zip((ALICE, BOB, CAROL), legs, strict=True)
            },
            consultant=consultant,
        )
        task = run.start()
        for index in range(3):
            await run.seen("Ringing", index).wait()
        answer.set()
        await consultant.all_waiting.wait()
        assert run.names().count("Answered") == 3
        go.set()  # three consults return "accept" in one iteration
        outcome = await run.finish(task)
    assert isinstance(outcome, Completed)
    assert len(run.bridge.connected) == 1
    accepted = [e.event for e in run.transfer.timeline if isinstance(e.event, Accepted)]
    assert [a.attempt for a in accepted] == [outcome.winner]
    assert sorted(run.reasons(outcome), key=str) == sorted(
        [Reason.COMPLETED, Reason.CANCELLED, Reason.CANCELLED], key=str
    )
    assert sum(leg.hung_up_by_us for leg in legs) == 2


# -- the caller hangs up ------------------------------------------------------------------------


async def test_caller_hangs_up_while_targets_ring_cancels_every_dial() -> None:
    async with no_leaks():
        run = Run(
            make_plan(ALICE, BOB, mode="simultaneous"),
            {ALICE.uri: ringing_forever(), BOB.uri: ringing_forever()},
        )
        task = run.start()
        await run.seen("Ringing", 1).wait()
        run.caller.hang_up()
        outcome = await run.finish(task)
    assert run.final is S.ABANDONED
    assert [d.cancelled for d in run.dialer.dials] == [True, True]
    assert run.reasons(outcome) == [Reason.CALLER_HUNG_UP] * 2


@pytest.mark.parametrize("mode", ["sequential", "simultaneous"])
async def test_caller_hangs_up_mid_briefing_the_human_hears_the_notice_last(mode: str) -> None:
    """The briefing is stopped and awaited first; then the fixed notice; then the hang-up."""
    consultant = NotifyingConsultant()
    alice = MemoryTargetLeg(play_blocks=True)
    briefing_stopped_when_told: list[bool] = []
    notify = consultant.notify_caller_left

    async def checking_notify(leg: ConsultLeg) -> None:
        assert isinstance(leg, MemoryTargetLeg)
        briefing_stopped_when_told.append(leg.plays_active == 0 and leg.waiters == 0)
        leg.finish_playback()  # the notice plays to its end (the leg blocks every playback)
        await notify(leg)

    consultant.notify_caller_left = checking_notify  # type: ignore[method-assign]
    targets = (ALICE, BOB) if mode == "simultaneous" else (ALICE,)
    routes: dict[str, DialScript | Sequence[DialScript]] = {ALICE.uri: answers(alice)}
    if mode == "simultaneous":
        routes[BOB.uri] = ringing_forever()
    async with no_leaks():
        run = Run(make_plan(*targets, mode=mode), routes, consultant=consultant)
        task = run.start()
        await alice.playing.wait()
        run.caller.hang_up()
        outcome = await run.finish(task)
    assert run.final is S.ABANDONED
    assert outcome.reason is Reason.CALLER_HUNG_UP
    assert alice.played == [consultant.clip, NotifyingConsultant.NOTICE], "notice last, once"
    assert briefing_stopped_when_told == [True]
    assert consultant.up_when_told == [True]
    assert alice.hung_up_by_us
    if mode == "simultaneous":
        assert run.dialer.to(BOB.uri)[0].cancelled


async def test_caller_hangs_up_while_bridging() -> None:
    consultant = NotifyingConsultant()
    alice = MemoryTargetLeg(keys="1")
    async with no_leaks():
        run = Run(
            make_plan(ALICE, BOB, mode="simultaneous"),
            {ALICE.uri: answers(alice), BOB.uri: ringing_forever()},
            consultant=consultant,
            bridge=MemoryBridge(gate=asyncio.Event()),
        )
        task = run.start()
        await run.bridge.started.wait()
        run.caller.hang_up()
        await run.finish(task)
    assert run.final is S.ABANDONED
    assert run.bridge.cancelled
    assert consultant.notified == [alice]
    assert alice.hung_up_by_us


async def test_the_human_hangs_up_during_the_briefing_and_the_hunt_goes_on() -> None:
    alice = MemoryTargetLeg(play_blocks=True)
    bob = MemoryTargetLeg(keys="1")
    bob_answers = asyncio.Event()
    async with no_leaks():
        run = Run(
            make_plan(ALICE, BOB, mode="simultaneous"),
            {ALICE.uri: answers(alice), BOB.uri: answers(bob, answer_gate=bob_answers)},
        )
        task = run.start()
        await alice.playing.wait()
        alice.remote_hangup()
        await run.seen("TargetHungUp", 0).wait()
        bob_answers.set()
        outcome = await run.finish(task)
    assert isinstance(outcome, Completed)
    assert run.reasons(outcome) == [Reason.TARGET_HUNG_UP, Reason.COMPLETED]


# -- the app cancels, at each state ---------------------------------------------------------------

CANCEL_AT = ["holding", "ringing", "consulting", "bridging", "fallback", "recovering"]


@pytest.mark.parametrize("moment", CANCEL_AT)
async def test_the_app_cancels_at_each_state(moment: str) -> None:
    never = asyncio.Event()
    alice = MemoryTargetLeg()
    queue_leg = MemoryTargetLeg()
    caller = MemoryCaller(
        hold_gate=never if moment == "holding" else None,
        unhold_gate=asyncio.Event() if moment == "recovering" else None,
    )
    alice_script = {
        "holding": answers(alice),
        "ringing": ringing_forever(),
        "consulting": answers(alice),
        "bridging": answers(MemoryTargetLeg(keys="1")),
        "fallback": fails(BUSY),
        "recovering": fails(BUSY),
    }[moment]
    on_failure = Fallback(target=QUEUE) if moment == "fallback" else None
    run = Run(
        make_plan(ALICE, on_failure=on_failure),
        {ALICE.uri: alice_script, QUEUE.uri: answers(queue_leg, answer_gate=never)},
        caller=caller,
        bridge=MemoryBridge(gate=never if moment == "bridging" else None),
    )
    reached: dict[str, Callable[[], Any]] = {
        "holding": caller.hold_started.wait,
        "ringing": run.seen("Ringing", 0).wait,
        "consulting": alice.key_requested.wait,
        "bridging": run.bridge.started.wait,
        "fallback": run.seen("Ringing", 1).wait,
        "recovering": caller.unhold_started.wait,
    }
    state = {
        "holding": S.HOLDING,
        "ringing": S.HUNTING,
        "consulting": S.HUNTING,
        "bridging": S.BRIDGING,
        "fallback": S.FALLBACK,
        "recovering": S.RECOVERING,
    }[moment]
    async with no_leaks():
        task = run.start()
        await reached[moment]()
        assert run.transfer.state is state
        run.transfer.cancel()
        if caller.unhold_gate is not None:
            caller.unhold_gate.set()
        outcome = await run.finish(task)
    assert run.final is S.FAILED, "a cancel gives the caller back to the AI"
    if moment == "recovering":
        assert outcome.reason is Reason.BUSY, "already failing: the cancel changes nothing"
    else:
        assert outcome.reason is Reason.CANCELLED
        assert run.names()[-2] == "Cancelled"
    if moment == "bridging":
        assert run.bridge.cancelled
    if moment == "fallback":
        assert run.dialer.to(QUEUE.uri)[0].cancelled


async def test_a_cancel_while_failing_skips_the_message_and_the_fallback() -> None:
    def cancel_on_failure(event: TransferEvent) -> None:
        if isinstance(event.event, HuntExhausted):
            run.transfer.cancel()

    async with no_leaks():
        run = Run(
            make_plan(ALICE, on_failure=MessageAndHangup(message=CLOSED)),
            {ALICE.uri: fails(BUSY)},
            on_event=cancel_on_failure,
        )
        await run.finish()
    assert run.final is S.FAILED
    assert run.caller.messages == []


# -- the bridge fails -----------------------------------------------------------------------------


async def test_bridge_failure_gives_the_caller_back_and_leaves_no_human_dangling() -> None:
    """The human's leg is hung up by us at once, so their later hang-up can no longer hold the
    caller (the reference's detached listener kept the caller on hold forever)."""
    alice = MemoryTargetLeg(keys="1")
    async with no_leaks():
        run = Run(
            make_plan(ALICE),
            {ALICE.uri: answers(alice)},
            bridge=MemoryBridge(fail=BridgeFailed("no media path")),
        )
        outcome = await run.finish()
    assert run.final is S.FAILED
    assert isinstance(outcome, Failed)
    assert (outcome.reason, outcome.detail) == (Reason.BRIDGE_FAILED, "no media path")
    assert outcome.attempts[0].reason is Reason.BRIDGE_FAILED
    assert alice.hung_up_by_us
    alice.remote_hangup()  # later: changes nothing, raises nothing
    assert run.transfer.state is S.FAILED
    assert run.caller.with_ai


async def test_the_human_hanging_up_while_the_bridge_is_being_made_is_seen() -> None:
    alice = MemoryTargetLeg(keys="1")
    bridge = MemoryBridge(gate=asyncio.Event(), fail=BridgeFailed("too late"))
    async with no_leaks():
        run = Run(make_plan(ALICE), {ALICE.uri: answers(alice)}, bridge=bridge)
        task = run.start()
        await bridge.started.wait()
        alice.remote_hangup()
        outcome = await run.finish(task)
    assert outcome.reason is Reason.TARGET_HUNG_UP
    assert outcome.attempts[0].reason is Reason.TARGET_HUNG_UP
    assert bridge.cancelled
    assert run.names()[-2:] == ["TargetHungUp", "Recovered"]
    assert run.transfer.timeline[-2].previous is S.BRIDGING


# -- on_failure: fallback, message and hang-up ---------------------------------------------------


async def test_fallback_is_bridged_directly_without_a_consult() -> None:
    queue_leg = MemoryTargetLeg()
    async with no_leaks():
        run = Run(
            make_plan(ALICE, on_failure=Fallback(target=QUEUE)),
            {ALICE.uri: fails(BUSY), QUEUE.uri: answers(queue_leg)},
        )
        outcome = await run.finish()
    assert isinstance(outcome, Completed)
    assert (outcome.fallback, outcome.winner, outcome.target) == (True, 1, QUEUE)
    assert run.names()[-5:] == ["HuntExhausted", "DialStarted", "Ringing", "Answered", "Bridged"]
    assert [e.state for e in run.transfer.timeline][-5:] == [
        S.RECOVERING,
        S.FALLBACK,
        S.FALLBACK,
        S.BRIDGING,
        S.COMPLETED,
    ]
    assert queue_leg.played == [], "no briefing for the fallback"
    assert queue_leg.digits_sent == ["9"]
    assert outcome.attempts[1].fallback


async def test_a_failed_fallback_gives_the_caller_back_with_the_hunts_reason() -> None:
    async with no_leaks():
        run = Run(
            make_plan(ALICE, on_failure=Fallback(target=QUEUE)),
            {ALICE.uri: answers(MemoryTargetLeg(keys="2")), QUEUE.uri: fails(BUSY)},
        )
        outcome = await run.finish()
    assert run.final is S.FAILED
    assert isinstance(outcome, Failed)
    assert outcome.reason is Reason.DECLINED
    assert "fallback Queue: busy" in outcome.detail
    assert run.reasons(outcome) == [Reason.DECLINED, Reason.BUSY]


async def test_caller_hangs_up_while_the_fallback_rings() -> None:
    async with no_leaks():
        run = Run(
            make_plan(ALICE, on_failure=Fallback(target=QUEUE)),
            {ALICE.uri: fails(BUSY), QUEUE.uri: ringing_forever()},
        )
        task = run.start()
        await run.seen("Ringing", 1).wait()
        run.caller.hang_up()
        outcome = await run.finish(task)
    assert run.final is S.ABANDONED
    assert run.dialer.to(QUEUE.uri)[0].cancelled
    assert run.reasons(outcome) == [Reason.BUSY, Reason.CALLER_HUNG_UP]


async def test_no_fallback_once_the_transfer_deadline_has_passed() -> None:
    async with no_leaks():
        run = Run(
            make_plan(ALICE, on_failure=Fallback(target=QUEUE), transfer_timeout=0.05),
            {ALICE.uri: ringing_forever()},
        )
        outcome = await run.finish()
    assert outcome.reason is Reason.TRANSFER_TIMEOUT
    assert run.dialer.to(QUEUE.uri) == []
    assert run.final is S.FAILED


async def test_the_fallback_must_pass_the_allow_list_before_anything() -> None:
    plan = make_plan(ALICE, on_failure=Fallback(target=Target(uri="tel:+19005550100")))
    async with no_leaks():
        run = Run(plan, {})
        with pytest.raises(DestinationNotAllowed, match=r"on_failure\.target 'tel:\+1900"):
            await run.transfer.run()
    assert run.caller.hold_calls == []
    assert run.dialer.dials == []
    assert run.transfer.timeline == []


async def test_message_and_hangup() -> None:
    async with no_leaks():
        run = Run(
            make_plan(ALICE, BOB, on_failure=MessageAndHangup(message=CLOSED)),
            {ALICE.uri: fails(BUSY), BOB.uri: fails(BUSY)},
        )
        outcome = await run.finish()
    assert run.final is S.DISMISSED
    assert isinstance(outcome, Failed)
    assert (outcome.reason, outcome.dismissed) == (Reason.BUSY, True)
    assert run.caller.messages == [CLOSED]
    assert run.names()[-2:] == ["HuntExhausted", "Dismissed"]


async def test_caller_hangs_up_during_the_failure_message() -> None:
    gate = asyncio.Event()
    async with no_leaks():
        run = Run(
            make_plan(ALICE, on_failure=MessageAndHangup(message=CLOSED)),
            {ALICE.uri: fails(BUSY)},
            caller=MemoryCaller(message_gate=gate),
        )
        task = run.start()
        await run.caller.message_started.wait()
        run.caller.hang_up()
        gate.set()
        outcome = await run.finish(task)
    assert run.final is S.ABANDONED
    assert isinstance(outcome, Failed)
    assert outcome.reason is Reason.CALLER_HUNG_UP
    assert "busy" in outcome.detail


async def test_a_message_that_cannot_be_played_gives_the_caller_back_to_the_ai() -> None:
    async with no_leaks():
        run = Run(
            make_plan(ALICE, on_failure=MessageAndHangup(message=CLOSED)),
            {ALICE.uri: fails(BUSY)},
            caller=MemoryCaller(message_error=RuntimeError("no tts")),
        )
        outcome = await run.finish()
    assert run.final is S.FAILED
    assert isinstance(outcome, Failed)
    assert outcome.reason is Reason.BUSY
    assert "failure message not played" in outcome.detail


async def test_hanging_up_the_caller_failing_is_an_error_not_a_dismissal() -> None:
    async with no_leaks():
        h = Run(
            make_plan(ALICE, on_failure=MessageAndHangup(message=CLOSED)),
            {ALICE.uri: fails(BUSY)},
            caller=MemoryCaller(hangup_error=RuntimeError("stuck")),
        )
        outcome = await h.transfer.run()
    assert isinstance(outcome, Failed)
    assert outcome.reason is Reason.ERROR
    assert "caller.hangup" in outcome.detail
    assert h.transfer.state is S.FAILED


async def test_no_message_when_the_app_cancels() -> None:
    async with no_leaks():
        run = Run(
            make_plan(ALICE, on_failure=MessageAndHangup(message=CLOSED)),
            {ALICE.uri: ringing_forever()},
        )
        task = run.start()
        await run.seen("Ringing", 0).wait()
        run.transfer.cancel()
        outcome = await run.finish(task)
    assert outcome.reason is Reason.CANCELLED
    assert run.caller.messages == []
    assert run.final is S.FAILED


# -- the overall deadline -------------------------------------------------------------------------


async def test_the_caller_is_never_held_longer_than_the_transfer_timeout() -> None:
    legs = [MemoryTargetLeg(keys="2"), MemoryTargetLeg()]
    async with no_leaks():
        run = Run(
            make_plan(ALICE, BOB, rounds=2, transfer_timeout=0.1),
            {ALICE.uri: answers(legs[0]), BOB.uri: answers(legs[1])},
        )
        outcome = await run.finish()
    assert outcome.reason is Reason.TRANSFER_TIMEOUT
    assert outcome.ended - outcome.started < 0.1 + 0.5
    assert run.caller.with_ai


async def test_attempt_events_reach_the_iterator_with_their_index() -> None:
    async with no_leaks():
        run = Run(
            make_plan(ALICE, BOB, mode="simultaneous"),
            {ALICE.uri: fails(BUSY), BOB.uri: answers(MemoryTargetLeg(keys="1"))},
        )
        events = run.transfer.events()
        collected = []

        async def follow() -> None:
            async for event in events:
                collected.append(event)

        async with asyncio.TaskGroup() as group:
            group.create_task(follow())
            await run.finish()
    assert collected == run.transfer.timeline
    indexed = {
        (e.event.name, e.event.attempt) for e in collected if isinstance(e.event, AttemptEvent)
    }
    assert ("AttemptFailed", 0) in indexed
    assert ("Accepted", 1) in indexed

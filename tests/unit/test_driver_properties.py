"""Random plans and random scripts, and the invariants that must hold on every one of them.

A plan has 1-3 targets, sequential or simultaneous hunting, 1-2 rounds, and any failure policy
(back to the AI, message and hang-up, fallback). Each target has its own script per round:
what its dial does (busy, no answer, rejected, unreachable, answered) and, once answered, what
the human does (accept, decline, voicemail, no decision, hang up while deciding or mid-briefing).
The bridge may fail; the caller may hang up, and the app may cancel, after any number of events:
both are done from the event callback, so they land exactly between two steps of the driver
while its tasks are mid-flight, which is where the reference system leaked or hung.

Every run must pass `check_transfer` (a legal timeline; no leg, dial, playback, waiter or
iterator left; the caller in exactly one place), leave no task or timer behind, and agree with
the plan: the outcome's and each attempt's reasons follow from the scripts, at most one human is
bridged, sequential hunting never has two attempts alive, only retryable targets are retried.

Run more examples once with WARMTRANSFER_PROPERTY_EXAMPLES=5000.
"""

from __future__ import annotations

import asyncio
import itertools
import os
from dataclasses import dataclass

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.unit.memory_ports import (
    DialScript,
    KeyConsultant,
    MemoryBridge,
    MemoryCaller,
    MemoryDialer,
    MemoryTargetLeg,
    NotifyingConsultant,
)
from tests.unit.transfer_checks import check_transfer, live_timers
from warmtransfer.consult.ports import Briefing
from warmtransfer.transfer import (
    AllowList,
    BridgeFailed,
    Completed,
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
from warmtransfer.transfer.plan import Fallback, Hunting, MessageAndHangup, ReturnToAgent
from warmtransfer.transfer.states import Accepted, HuntExhausted

EXAMPLES = int(os.environ.get("WARMTRANSFER_PROPERTY_EXAMPLES", "300"))

# Deadlines are real time: tight only where a script means them to pass.
RING_TIMEOUT = 0.01
CONSULT_TIMEOUT = 0.03

DIAL_FAILURES = {
    "busy": DialFailed(Reason.BUSY, 486, "Busy Here"),
    "rejected": DialFailed(Reason.REJECTED, 403, "Forbidden"),
    "unreachable": DialFailed(Reason.UNREACHABLE, 503, "Service Unavailable"),
}
HUMAN = {  # what an answered human does -> the attempt's reason if nothing cuts it short
    "accept": Reason.COMPLETED,
    "decline": Reason.DECLINED,
    "voicemail": Reason.VOICEMAIL,
    "no decision": Reason.CONSULT_TIMEOUT,
    "hangs up": Reason.TARGET_HUNG_UP,
    "hangs up in briefing": Reason.TARGET_HUNG_UP,
}
KEYS = {"accept": "1", "decline": "2", "voicemail": "3"}
SCRIPTS = ["no_answer", *DIAL_FAILURES, *HUMAN]
CUT_SHORT = {Reason.CANCELLED, Reason.CALLER_HUNG_UP}
URIS = ("sip:alice@pbx.example.com", "sip:bob@pbx.example.com", "sip:carol@pbx.example.com")
FALLBACK_URI = "sip:queue@pbx.example.com"
MESSAGE = "Nobody can take your call now; please call back later."


@dataclass(frozen=True)
class Scenario:
    targets: int
    mode: str
    rounds: int
    round_delay: float
    scripts: tuple[tuple[str, ...], ...]  # per target, per round
    on_failure: str  # "return", "message" or "fallback"
    fallback_script: str  # "answer", "busy" or "no_answer"
    bridge_fails: bool
    notify: bool  # the consultant tells humans the caller left
    caller_hangs_up_after: int | None  # after that many events (0: before run); None: never
    app_cancels_after: int | None

    def script(self, target: int, round_number: int) -> str:
        return self.scripts[target][round_number - 1]

    @property
    def every_script(self) -> list[str]:
        return [script for per_target in self.scripts for script in per_target]


@st.composite
def scenarios(draw: st.DrawFn) -> Scenario:
    targets = draw(st.integers(1, 3))
    rounds = draw(st.integers(1, 2))
    return Scenario(
        targets=targets,
        mode=draw(st.sampled_from(["sequential", "simultaneous"])),
        rounds=rounds,
        round_delay=draw(st.sampled_from([0.0, 0.005])),
        scripts=tuple(
            tuple(draw(st.sampled_from(SCRIPTS)) for _ in range(rounds)) for _ in range(targets)
        ),
        on_failure=draw(st.sampled_from(["return", "message", "fallback"])),
        fallback_script=draw(st.sampled_from(["answer", "busy", "no_answer"])),
        bridge_fails=draw(st.booleans()),
        notify=draw(st.booleans()),
        caller_hangs_up_after=draw(st.none() | st.integers(0, 16)),
        app_cancels_after=draw(st.none() | st.none() | st.integers(1, 16)),
    )


def dial_script(script: str) -> DialScript:
    if script == "no_answer":
        return DialScript()
    if script in DIAL_FAILURES:
        return DialScript(fail=DIAL_FAILURES[script])
    leg = MemoryTargetLeg(
        keys=KEYS.get(script, ""),
        on_key_request=MemoryTargetLeg.remote_hangup if script == "hangs up" else None,
        on_play=MemoryTargetLeg.remote_hangup if script == "hangs up in briefing" else None,
    )
    # Some humans answer with no provisional response first, as a phone may.
    ringing = () if script in ("voicemail", "hangs up") else (180,)
    return DialScript(answer=leg, ringing=ringing)


@dataclass
class Played:
    transfer: WarmTransfer
    outcome: TransferOutcome
    caller: MemoryCaller
    dialer: MemoryDialer
    bridge: MemoryBridge
    tasks_left: int
    timers_left: int


async def play(scenario: Scenario) -> Played:
    baseline = asyncio.all_tasks()
    loop = asyncio.get_running_loop()
    caller = MemoryCaller()
    routes: dict[str, list[DialScript]] = {
        URIS[t]: [dial_script(scenario.script(t, r)) for r in range(1, scenario.rounds + 1)]
        for t in range(scenario.targets)
    }
    fallback = scenario.fallback_script
    routes[FALLBACK_URI] = [
        DialScript(answer=MemoryTargetLeg()) if fallback == "answer" else dial_script(fallback)
    ]
    dialer = MemoryDialer(routes=routes)
    bridge = MemoryBridge(fail=BridgeFailed("no media path") if scenario.bridge_fails else None)
    never_answers = {t for t in range(scenario.targets) if "no_answer" in scenario.scripts[t]}
    on_failure: ReturnToAgent | MessageAndHangup | Fallback = ReturnToAgent()
    if scenario.on_failure == "message":
        on_failure = MessageAndHangup(message=MESSAGE)
    elif scenario.on_failure == "fallback":
        ring = RING_TIMEOUT if fallback == "no_answer" else 30.0
        on_failure = Fallback(target=Target(uri=FALLBACK_URI, ring_timeout=ring))
    plan = TransferPlan(
        targets=tuple(
            Target(uri=URIS[t], ring_timeout=RING_TIMEOUT if t in never_answers else 30.0)
            for t in range(scenario.targets)
        ),
        hunting=Hunting(
            mode=scenario.mode,  # type: ignore[arg-type]
            rounds=scenario.rounds,
            round_delay=scenario.round_delay,
        ),
        allow=AllowList(patterns=("sip:*@pbx.example.com",)),
        consult_timeout=CONSULT_TIMEOUT if "no decision" in scenario.every_script else 30.0,
        on_failure=on_failure,
    )
    seen: list[TransferEvent] = []
    transfer: WarmTransfer | None = None

    def on_event(event: TransferEvent) -> None:
        seen.append(event)
        if scenario.caller_hangs_up_after == len(seen):
            caller.hang_up()
        if scenario.app_cancels_after == len(seen):
            assert transfer is not None
            transfer.cancel()

    consultant = NotifyingConsultant() if scenario.notify else KeyConsultant()
    transfer = WarmTransfer(
        plan=plan,
        caller=caller,
        dialer=dialer,
        bridge=bridge,
        consultant=consultant,
        briefing=Briefing(summary="refund for order 1234"),
        on_event=on_event,
        clock=loop.time,
    )
    if scenario.caller_hangs_up_after == 0:
        caller.hang_up()
    async with asyncio.timeout(5.0):
        outcome = await transfer.run()
    tasks_left = len(asyncio.all_tasks() - baseline)
    return Played(transfer, outcome, caller, dialer, bridge, tasks_left, len(live_timers(loop)))


def allowed_reasons(scenario: Scenario, script: str, short_consult: bool) -> set[Reason]:
    """What an attempt following `script` may end with."""
    allowed = set(CUT_SHORT)
    if script == "no_answer":
        allowed.add(Reason.NO_ANSWER)
    elif script in DIAL_FAILURES:
        allowed.add(DIAL_FAILURES[script].reason)
    else:
        allowed.add(HUMAN[script])
        if script == "accept" and scenario.bridge_fails:
            allowed.add(Reason.BRIDGE_FAILED)
        if short_consult:  # one consult deadline for all: a slow step may hit it
            allowed.add(Reason.CONSULT_TIMEOUT)
    return allowed


@settings(
    max_examples=EXAMPLES,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
@given(scenario=scenarios())
def test_every_scenario_ends_cleanly(scenario: Scenario) -> None:
    played = asyncio.run(play(scenario))
    transfer, outcome, caller, dialer = (
        played.transfer,
        played.outcome,
        played.caller,
        played.dialer,
    )
    assert played.tasks_left == 0, "a task outlived the transfer"
    assert played.timers_left == 0, "a timer outlived the transfer"
    state = check_transfer(transfer, outcome, caller, dialer, played.bridge)

    interrupted = scenario.caller_hangs_up_after is not None or (
        scenario.app_cancels_after is not None
    )
    timeline = transfer.timeline
    hunt = [a for a in outcome.attempts if not a.fallback]
    fallback = [a for a in outcome.attempts if a.fallback]
    short_consult = transfer.plan.consult_timeout < 1

    # Each attempt ended as its script says, or was cut short.
    for attempt in hunt:
        script = scenario.script(URIS.index(attempt.target.uri), attempt.round)
        assert attempt.reason in allowed_reasons(scenario, script, short_consult), (
            script,
            attempt,
        )
    for attempt in fallback:
        assert scenario.on_failure == "fallback"
        expected = {
            "answer": {Reason.COMPLETED, Reason.BRIDGE_FAILED},
            "busy": {Reason.BUSY},
            "no_answer": {Reason.NO_ANSWER},
        }[scenario.fallback_script]
        assert attempt.reason in expected | CUT_SHORT
    assert len(fallback) <= 1

    # One human at most, and only one who accepted (or the fallback).
    accepted = [e.event.attempt for e in timeline if isinstance(e.event, Accepted)]
    assert len(accepted) <= 1
    assert len(played.bridge.connected) <= 1
    if isinstance(outcome, Completed):
        winner = outcome.attempts[outcome.winner]
        if winner.fallback:
            assert scenario.fallback_script == "answer"
        else:
            assert accepted == [outcome.winner]
            assert scenario.script(URIS.index(winner.target.uri), winner.round) == "accept"
        assert not scenario.bridge_fails

    # Sequential hunting never has two attempts alive; simultaneous dials a round at once.
    if scenario.mode == "sequential":
        for before, after in itertools.pairwise(hunt):
            assert before.ended is not None
            assert after.started >= before.ended
    # Round 2 retries only targets whose round-1 attempt failed for a retryable reason.
    retry_on = transfer.plan.hunting.retry_on
    round_one = {a.target.uri: a.reason for a in hunt if a.round == 1}
    for attempt in hunt:
        if attempt.round == 2:
            assert round_one[attempt.target.uri] in retry_on

    # The outcome's reason follows from the attempts when nothing interrupted the hunt.
    exhausted = [e.event for e in timeline if isinstance(e.event, HuntExhausted)]
    if exhausted:
        best = most_informative(hunt)
        assert exhausted[0].reason is best.reason
        assert hunt[exhausted[0].attempt] == best
    if isinstance(outcome, Failed) and not interrupted:
        assert outcome.reason not in CUT_SHORT
        if exhausted:
            assert outcome.reason is exhausted[0].reason
        else:
            assert outcome.reason is Reason.BRIDGE_FAILED or (
                short_consult and outcome.reason is Reason.CONSULT_TIMEOUT
            )
    if scenario.caller_hangs_up_after == 0:
        assert state is State.ABANDONED
        assert caller.hold_calls == []
        assert outcome.attempts == ()

    # The failure policy.
    if state is State.DISMISSED:
        assert scenario.on_failure == "message"
        assert caller.messages == [MESSAGE]
    else:
        assert caller.messages in ([], [MESSAGE])
    if scenario.on_failure == "message" and state is State.FAILED:
        assert outcome.reason in (Reason.CANCELLED, Reason.ERROR) or (
            scenario.app_cancels_after is not None
        )
    if fallback:
        assert (
            exhausted
            or any(a.reason is Reason.BRIDGE_FAILED for a in hunt)
            or any(a.reason is Reason.TARGET_HUNG_UP for a in hunt)
        )

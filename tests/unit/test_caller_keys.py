"""The held caller's side: progress prompts, `*` to stop waiting, `#` to leave a message.

Against in-memory ports, every scenario inside `no_leaks()` (no task, no timer outlives it) and
checked by `check_transfer` (legal timeline, attempts, legs, the caller in exactly one place),
plus the caller's own leaks: no key waiter, no recording, no prompt still playing. Scenarios move
on the ports' events (`ringing_started`, `key_requested`, `recording_started`, prompts seen),
never on sleeps; the prompt and silence intervals are a few tens of milliseconds.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import tempfile
import wave
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from numpy.typing import NDArray
from pydantic import ValidationError

from tests.unit.memory_ports import (
    DialScript,
    KeyConsultant,
    MemoryBridge,
    MemoryCaller,
    MemoryDialer,
    MemoryTargetLeg,
    NotifyingConsultant,
)
from tests.unit.transfer_checks import check_transfer, no_leaks
from warmtransfer.consult.ports import Briefing, ConsultLeg
from warmtransfer.media.audio import AudioClip
from warmtransfer.transfer import (
    AllowList,
    Completed,
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
)
from warmtransfer.transfer.plan import (
    DEFAULT_MESSAGES_DIR,
    CallerKeys,
    Fallback,
    MessageAndHangup,
    OnFailure,
    PlanFileError,
    ReturnToAgent,
)
from warmtransfer.transfer.ports import CallerCancelledNotifier
from warmtransfer.transfer.states import (
    TRANSITIONS,
    Bridged,
    CallerCancelled,
    DialStarted,
    HoldStarted,
    MessageRequested,
)

S = State
ALLOW = AllowList(patterns=("sip:*@pbx.example.com",))
ALICE = Target(uri="sip:alice@pbx.example.com", display_name="Alice")
QUEUE = Target(uri="sip:queue@pbx.example.com", display_name="Queue")
BRIEFING = Briefing(summary="Bob wants a refund for order 1234", caller="Bob")
BUSY = DialFailed(Reason.BUSY, 486, "Busy Here")
CLOSED = "Sorry, nobody can take your call now. Goodbye."
NO_PROMPTS = HoldAudio(progress_every=None)


def tone(freq: float = 440.0, seconds: float = 0.2) -> NDArray[np.int16]:
    t = np.arange(int(seconds * 8000)) / 8000
    return np.round(8000 * np.sin(2 * np.pi * freq * t)).astype(np.int16)


def make_plan(
    *,
    keys: CallerKeys | None = None,
    hold: HoldAudio = NO_PROMPTS,
    on_failure: OnFailure | None = None,
) -> TransferPlan:
    return TransferPlan(
        targets=(ALICE,),
        allow=ALLOW,
        hold_audio=hold,
        caller_keys=keys or CallerKeys(),
        on_failure=on_failure or ReturnToAgent(),
    )


def message_keys(messages_dir: Path, **options: Any) -> CallerKeys:
    return CallerKeys(can_leave_message=True, messages_dir=messages_dir, **options)


class CancelNoticeConsultant(KeyConsultant):
    """Has the caller-cancelled hook: records the legs it told (and whether each was still up
    and the caller already back with the AI then); `gate` holds the notice."""

    NOTICE = AudioClip.silence(0.3)

    def __init__(self, caller: MemoryCaller, gate: asyncio.Event | None = None) -> None:
        super().__init__()
        self.caller = caller
        self.gate = gate
        self.told: list[ConsultLeg] = []
        self.up_when_told: list[bool] = []
        self.caller_with_ai_when_told: list[bool] = []
        self.telling = asyncio.Event()

    async def notify_caller_cancelled(self, leg: ConsultLeg) -> None:
        assert isinstance(leg, MemoryTargetLeg)
        self.told.append(leg)
        self.up_when_told.append(not leg.hung_up)
        self.caller_with_ai_when_told.append(self.caller.with_ai)
        self.telling.set()
        if self.gate is not None:
            await self.gate.wait()
        await leg.play(self.NOTICE)


class Run:
    """One transfer over scripted ports, with an Event per event name seen."""

    def __init__(
        self,
        plan: TransferPlan,
        *,
        dialer: MemoryDialer | None = None,
        caller: MemoryCaller | None = None,
        consultant: KeyConsultant | None = None,
        bridge: MemoryBridge | None = None,
        on_event: Callable[[TransferEvent], None] | None = None,
    ) -> None:
        self.caller = caller or MemoryCaller()
        self.dialer = dialer or MemoryDialer()
        self.bridge = bridge or MemoryBridge()
        self.consultant = consultant or KeyConsultant()
        self.on_event = on_event
        self._seen: dict[str, asyncio.Event] = {}
        self.transfer = WarmTransfer(
            plan=plan,
            caller=self.caller,
            dialer=self.dialer,
            bridge=self.bridge,
            consultant=self.consultant,
            briefing=BRIEFING,
            transfer_id="t-keys",
            on_event=self._record,
            clock=asyncio.get_running_loop().time,
        )

    def _record(self, event: TransferEvent) -> None:
        self.seen(event.event.name).set()
        if self.on_event is not None:
            self.on_event(event)

    def seen(self, name: str) -> asyncio.Event:
        return self._seen.setdefault(name, asyncio.Event())

    def start(self) -> asyncio.Task[TransferOutcome]:
        return asyncio.create_task(self.transfer.run())

    async def finish(self, task: asyncio.Task[TransferOutcome]) -> TransferOutcome:
        outcome = await task
        self.final = check_transfer(self.transfer, outcome, self.caller, self.dialer, self.bridge)
        caller = self.caller
        assert caller.waiters == 0, "something still waits on the caller's keys"
        assert not caller.recording
        assert not caller.prompt_playing
        assert all(prompt.holding for prompt in caller.prompts), "a prompt for a caller not held"
        return outcome

    def names(self) -> list[str]:
        return [e.event.name for e in self.transfer.timeline]

    def at(self, name: str) -> float:
        return next(e.at for e in self.transfer.timeline if e.event.name == name)


# -- `*`: the caller stops waiting ------------------------------------------------------------


async def test_star_while_ringing_cancels_the_dial_and_gives_the_caller_back() -> None:
    async with no_leaks():
        run = Run(make_plan())
        task = run.start()
        await run.dialer.ringing_started.wait()
        run.caller.press("*")
        outcome = await run.finish(task)
    assert run.final is S.FAILED
    assert isinstance(outcome, Failed)
    assert outcome.reason is Reason.CANCELLED_BY_CALLER
    assert outcome.reason.value == "cancelled_by_caller"
    assert "*" in outcome.detail
    assert outcome.recorded_message is None
    assert run.dialer.dials[0].cancelled, "the ringing target's call was not cancelled"
    assert outcome.attempts[0].reason is Reason.CANCELLED_BY_CALLER
    assert run.names()[-2:] == ["CallerCancelled", "Recovered"]
    assert run.caller.with_ai and run.caller.unhold_calls == 1
    assert run.caller.keys_read == ["*"]


async def test_star_while_briefing_tells_the_human_and_the_caller_does_not_wait_for_it() -> None:
    leg = MemoryTargetLeg()
    caller = MemoryCaller()
    gate = asyncio.Event()
    consultant = CancelNoticeConsultant(caller, gate)
    assert isinstance(consultant, CallerCancelledNotifier)
    async with no_leaks():
        run = Run(
            make_plan(), dialer=MemoryDialer(answer=leg), caller=caller, consultant=consultant
        )
        task = run.start()
        await leg.key_requested.wait()  # briefed, deciding
        caller.press("*")
        await consultant.telling.wait()
        # The human is being told; the caller is already back with the AI, and the transfer
        # has not ended yet (it ends once the human has heard the notice and is hung up).
        assert caller.with_ai
        assert run.transfer.state is S.RECOVERING
        assert not leg.hung_up
        gate.set()
        outcome = await run.finish(task)
    assert isinstance(outcome, Failed)
    assert outcome.reason is Reason.CANCELLED_BY_CALLER
    assert consultant.told == [leg]
    assert consultant.up_when_told == [True], "the notice comes before the hang-up"
    assert consultant.caller_with_ai_when_told == [True]
    assert leg.played[-1] is CancelNoticeConsultant.NOTICE
    assert leg.hung_up_by_us
    assert outcome.attempts[0].reason is Reason.CANCELLED_BY_CALLER
    assert outcome.attempts[0].answered is not None


async def test_cancelling_run_while_the_human_is_told_lets_the_notice_finish() -> None:
    leg = MemoryTargetLeg()
    caller = MemoryCaller()
    gate = asyncio.Event()
    consultant = CancelNoticeConsultant(caller, gate)
    async with no_leaks():
        dialer = MemoryDialer(answer=leg)
        run = Run(make_plan(), dialer=dialer, caller=caller, consultant=consultant)
        task = run.start()
        await leg.key_requested.wait()
        caller.press("*")
        await consultant.telling.wait()
        task.cancel()  # the app gives up on run() while the human is being told
        gate.set()
        with pytest.raises(asyncio.CancelledError):
            await task
    assert run.transfer.state is S.FAILED
    assert leg.played[-1] is CancelNoticeConsultant.NOTICE, "the notice was cut short"
    assert leg.hung_up_by_us and leg.plays_active == 0 and leg.waiters == 0
    assert caller.with_ai and caller.unhold_calls == 1 and caller.waiters == 0


async def test_a_key_pressed_before_the_hold_is_not_the_transfers() -> None:
    leg = MemoryTargetLeg()
    async with no_leaks():
        run = Run(make_plan(), dialer=MemoryDialer(answer=leg))
        run.caller.press("*")  # meant for the AI, before the transfer began
        task = run.start()
        await leg.key_requested.wait()
        leg.press("1")
        outcome = await run.finish(task)
    assert isinstance(outcome, Completed)
    assert run.caller.keys_discarded == ["*"] and run.caller.keys_read == []


async def test_a_consultant_without_the_hook_gives_its_caller_left_notice() -> None:
    leg = MemoryTargetLeg()
    consultant = NotifyingConsultant()
    async with no_leaks():
        run = Run(make_plan(), dialer=MemoryDialer(answer=leg), consultant=consultant)
        task = run.start()
        await leg.key_requested.wait()
        run.caller.press("*")
        outcome = await run.finish(task)
    assert isinstance(outcome, Failed) and outcome.reason is Reason.CANCELLED_BY_CALLER
    assert consultant.notified == [leg]
    assert consultant.up_when_told == [True]
    assert leg.hung_up_by_us


async def test_star_after_accept_is_impossible() -> None:
    leg = MemoryTargetLeg()
    gate = asyncio.Event()
    bridge = MemoryBridge(gate=gate)
    async with no_leaks():
        run = Run(make_plan(), dialer=MemoryDialer(answer=leg), bridge=bridge)
        task = run.start()
        await leg.key_requested.wait()
        leg.press("1")
        await bridge.started.wait()  # BRIDGING: the human said yes
        assert run.transfer.state is S.BRIDGING
        run.caller.press("*")
        run.caller.press("#")
        gate.set()
        outcome = await run.finish(task)
    assert isinstance(outcome, Completed)
    assert "CallerCancelled" not in run.names()
    assert run.caller.keys_read == [], "the transfer read the caller's keys after accept"
    assert (S.BRIDGING, CallerCancelled) not in TRANSITIONS
    assert (S.BRIDGING, MessageRequested) not in TRANSITIONS


async def test_star_while_the_fallback_rings_cancels_it() -> None:
    hold = HoldAudio(progress_every=0.02)
    dialer = MemoryDialer(routes={ALICE.uri: DialScript(fail=BUSY), QUEUE.uri: DialScript()})
    async with no_leaks():
        run = Run(make_plan(hold=hold, on_failure=Fallback(target=QUEUE)), dialer=dialer)
        task = run.start()
        await dialer.started_for(QUEUE.uri).wait()
        await dialer.ringing_started.wait()
        # Prompts go on while the fallback rings: the caller is still on hold.
        before = len(run.caller.prompts)
        await run.caller.wait_prompts(before + 1)
        assert run.transfer.state is S.FALLBACK
        run.caller.press("*")
        outcome = await run.finish(task)
    assert isinstance(outcome, Failed)
    assert outcome.reason is Reason.CANCELLED_BY_CALLER
    assert dialer.to(QUEUE.uri)[0].cancelled
    assert [a.reason for a in outcome.attempts] == [Reason.BUSY, Reason.CANCELLED_BY_CALLER]
    assert run.names()[-2:] == ["CallerCancelled", "Recovered"]


# -- `#`: the caller leaves a message -----------------------------------------------------------


def read_message(path: Path) -> NDArray[np.int16]:
    with wave.open(str(path)) as w:
        assert (w.getframerate(), w.getnchannels(), w.getsampwidth()) == (8000, 1, 2)
        return np.frombuffer(w.readframes(w.getnframes()), dtype=np.int16)


async def test_pound_records_a_message_until_pound_and_puts_it_in_the_outcome(
    tmp_path: Path,
) -> None:
    said = tone()
    async with no_leaks():
        run = Run(make_plan(keys=message_keys(tmp_path / "messages")))
        task = run.start()
        await run.dialer.ringing_started.wait()
        run.caller.press("#")
        await run.caller.recording_started.wait()
        assert run.dialer.dials[0].cancelled, "the hunt goes on while the caller records"
        assert run.caller.held, "the AI must not hear the caller while they record"
        run.caller.say(said)
        run.caller.press("#")
        outcome = await run.finish(task)
    assert run.final is S.FAILED
    assert isinstance(outcome, Failed)
    assert outcome.reason is Reason.MESSAGE_LEFT
    assert outcome.reason.value == "message_left"
    path = outcome.recorded_message
    assert path is not None and path.parent == tmp_path / "messages"
    assert path.name.startswith("message-t-keys-") and path.suffix == ".wav"
    assert np.array_equal(read_message(path), said)
    assert run.caller.message_ended_by == "key"
    [call] = run.caller.record_calls
    assert call.path == path
    assert call.prompt == "Please leave your message after the tone, then press pound or hang up."
    assert (call.stop_key, call.max_seconds, call.silence_seconds) == ("#", 60.0, 5.0)
    assert run.names()[-2:] == ["MessageRequested", "Recovered"]
    assert outcome.attempts[0].reason is Reason.MESSAGE_LEFT
    assert run.caller.with_ai


async def test_message_ends_on_silence(tmp_path: Path) -> None:
    keys = message_keys(tmp_path, message_silence_seconds=0.05)
    async with no_leaks():
        run = Run(make_plan(keys=keys))
        task = run.start()
        await run.dialer.ringing_started.wait()
        run.caller.press("#")
        await run.caller.recording_started.wait()
        run.caller.say(tone(seconds=0.1))
        outcome = await run.finish(task)
    assert isinstance(outcome, Failed) and outcome.reason is Reason.MESSAGE_LEFT
    assert run.caller.message_ended_by == "silence"
    assert outcome.recorded_message is not None
    assert len(read_message(outcome.recorded_message)) == 800


async def test_message_ends_at_its_maximum_length(tmp_path: Path) -> None:
    keys = message_keys(tmp_path, message_max_seconds=0.05)
    async with no_leaks():
        run = Run(make_plan(keys=keys))
        task = run.start()
        await run.dialer.ringing_started.wait()
        run.caller.press("#")
        outcome = await run.finish(task)
    assert isinstance(outcome, Failed) and outcome.reason is Reason.MESSAGE_LEFT
    assert run.caller.message_ended_by == "max"


async def test_hanging_up_ends_the_message_and_keeps_it(tmp_path: Path) -> None:
    said = tone()
    async with no_leaks():
        run = Run(make_plan(keys=message_keys(tmp_path)))
        task = run.start()
        await run.dialer.ringing_started.wait()
        run.caller.press("#")
        await run.caller.recording_started.wait()
        run.caller.say(said)
        run.caller.hang_up()
        outcome = await run.finish(task)
    assert run.final is S.ABANDONED
    assert isinstance(outcome, Failed)
    assert outcome.reason is Reason.CALLER_HUNG_UP  # the caller is gone, as Failed promises
    assert outcome.detail == "the caller left a message and hung up"
    assert outcome.recorded_message is not None
    assert np.array_equal(read_message(outcome.recorded_message), said)
    assert run.caller.message_ended_by == "hang-up"


async def test_hanging_up_before_the_tone_records_nothing(tmp_path: Path) -> None:
    gate = asyncio.Event()
    caller = MemoryCaller(record_gate=gate)
    async with no_leaks():
        run = Run(make_plan(keys=message_keys(tmp_path)), caller=caller)
        task = run.start()
        await run.dialer.ringing_started.wait()
        caller.press("#")
        await run.seen("MessageRequested").wait()
        caller.hang_up()
        gate.set()
        outcome = await run.finish(task)
    assert run.final is S.ABANDONED
    assert isinstance(outcome, Failed) and outcome.reason is Reason.CALLER_HUNG_UP
    assert outcome.recorded_message is None
    assert "before the tone" in outcome.detail
    assert not any(tmp_path.iterdir())  # noqa: ASYNC240  (a test's own temporary directory)


async def test_pound_while_briefing_tells_the_human(tmp_path: Path) -> None:
    leg = MemoryTargetLeg()
    caller = MemoryCaller()
    consultant = CancelNoticeConsultant(caller)
    async with no_leaks():
        run = Run(
            make_plan(keys=message_keys(tmp_path)),
            dialer=MemoryDialer(answer=leg),
            caller=caller,
            consultant=consultant,
        )
        task = run.start()
        await leg.key_requested.wait()
        caller.press("#")
        await caller.recording_started.wait()
        caller.press("#")
        outcome = await run.finish(task)
    assert isinstance(outcome, Failed) and outcome.reason is Reason.MESSAGE_LEFT
    assert consultant.told == [leg] and consultant.up_when_told == [True]
    assert leg.hung_up_by_us


async def test_after_the_message_the_plans_message_and_hangup_applies(tmp_path: Path) -> None:
    plan = make_plan(keys=message_keys(tmp_path), on_failure=MessageAndHangup(message=CLOSED))
    async with no_leaks():
        run = Run(plan)
        task = run.start()
        await run.dialer.ringing_started.wait()
        run.caller.press("#")
        await run.caller.recording_started.wait()
        run.caller.press("#")
        outcome = await run.finish(task)
    assert run.final is S.DISMISSED
    assert isinstance(outcome, Failed)
    assert outcome.reason is Reason.MESSAGE_LEFT and outcome.dismissed
    assert outcome.recorded_message is not None
    assert run.caller.messages == [CLOSED]


async def test_after_the_message_no_fallback_is_dialled(tmp_path: Path) -> None:
    plan = make_plan(keys=message_keys(tmp_path), on_failure=Fallback(target=QUEUE))
    dialer = MemoryDialer(routes={ALICE.uri: DialScript()})
    async with no_leaks():
        run = Run(plan, dialer=dialer)
        task = run.start()
        await dialer.ringing_started.wait()
        run.caller.press("#")
        await run.caller.recording_started.wait()
        run.caller.press("#")
        outcome = await run.finish(task)
    assert isinstance(outcome, Failed) and outcome.reason is Reason.MESSAGE_LEFT
    assert dialer.to(QUEUE.uri) == []
    assert run.caller.with_ai


async def test_star_gives_the_caller_back_even_with_message_and_hangup() -> None:
    plan = make_plan(on_failure=MessageAndHangup(message=CLOSED))
    async with no_leaks():
        run = Run(plan)
        task = run.start()
        await run.dialer.ringing_started.wait()
        run.caller.press("*")
        outcome = await run.finish(task)
    assert run.final is S.FAILED
    assert isinstance(outcome, Failed) and outcome.reason is Reason.CANCELLED_BY_CALLER
    assert run.caller.messages == []


async def test_a_recording_that_fails_gives_the_caller_back_with_error(tmp_path: Path) -> None:
    caller = MemoryCaller(record_error=OSError("disk full"))
    plan = make_plan(keys=message_keys(tmp_path), on_failure=MessageAndHangup(message=CLOSED))
    async with no_leaks():
        run = Run(plan, caller=caller)
        task = run.start()
        await run.dialer.ringing_started.wait()
        caller.press("#")
        outcome = await run.finish(task)
    assert run.final is S.FAILED
    assert isinstance(outcome, Failed)
    assert outcome.reason is Reason.ERROR
    assert "disk full" in outcome.detail
    assert outcome.recorded_message is None
    assert caller.messages == [], "a broken recording is no reason to hang up on the caller"
    assert caller.with_ai


async def test_cancelling_run_while_recording_cleans_up(tmp_path: Path) -> None:
    async with no_leaks():
        run = Run(make_plan(keys=message_keys(tmp_path)))
        task = run.start()
        await run.dialer.ringing_started.wait()
        run.caller.press("#")
        await run.caller.recording_started.wait()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
    assert run.transfer.state is S.FAILED
    assert run.caller.with_ai and not run.caller.recording
    assert run.caller.waiters == 0


# -- other keys, and keys turned off ------------------------------------------------------------


async def test_other_keys_are_ignored() -> None:
    leg = MemoryTargetLeg()
    async with no_leaks():
        run = Run(make_plan(), dialer=MemoryDialer(answer=leg))
        task = run.start()
        await leg.key_requested.wait()
        for key in "5#0A":  # "#" too: leaving a message is off by default
            run.caller.press(key)
        await run.caller.wait_keys_read(4)
        leg.press("1")
        outcome = await run.finish(task)
    assert isinstance(outcome, Completed)
    assert run.caller.keys_read == ["5", "#", "0", "A"]
    assert not {"CallerCancelled", "MessageRequested"} & set(run.names())


async def test_keys_turned_off_are_never_read_and_never_reach_the_ai() -> None:
    gate = asyncio.Event()
    keys = CallerKeys(can_cancel=False, can_leave_message=False)
    dialer = MemoryDialer(fail=BUSY, answer_gate=gate)
    async with no_leaks():
        run = Run(make_plan(keys=keys), dialer=dialer)
        task = run.start()
        await dialer.ringing_started.wait()
        run.caller.press("*")
        run.caller.press("#")
        gate.set()
        outcome = await run.finish(task)
    assert isinstance(outcome, Failed) and outcome.reason is Reason.BUSY
    assert run.caller.keys_read == []
    assert run.caller.keys_discarded == ["*", "#"], "unhold must drop the keys pressed on hold"


async def test_cancel_off_message_on(tmp_path: Path) -> None:
    keys = message_keys(tmp_path, can_cancel=False)
    async with no_leaks():
        run = Run(make_plan(keys=keys))
        task = run.start()
        await run.dialer.ringing_started.wait()
        run.caller.press("*")
        await run.caller.wait_keys_read(1)
        assert run.transfer.state is S.HUNTING, "* must do nothing when cancelling is off"
        run.caller.press("#")
        await run.caller.recording_started.wait()
        run.caller.press("#")
        outcome = await run.finish(task)
    assert isinstance(outcome, Failed) and outcome.reason is Reason.MESSAGE_LEFT


async def test_keys_are_configurable(tmp_path: Path) -> None:
    keys = message_keys(tmp_path, cancel_key="#", message_key="9")
    async with no_leaks():
        run = Run(make_plan(keys=keys))
        task = run.start()
        await run.dialer.ringing_started.wait()
        run.caller.press("*")
        run.caller.press("9")
        await run.caller.recording_started.wait()
        run.caller.press("9")
        outcome = await run.finish(task)
    assert isinstance(outcome, Failed) and outcome.reason is Reason.MESSAGE_LEFT
    assert run.caller.record_calls[0].stop_key == "9"
    assert "then press 9 or hang up" in run.caller.record_calls[0].prompt
    assert "MessageRequested" in run.names()


# -- progress prompts ---------------------------------------------------------------------------


async def test_progress_prompts_come_at_the_interval_while_held() -> None:
    every = 0.03
    async with no_leaks():
        run = Run(make_plan(hold=HoldAudio(progress_every=every)))
        task = run.start()
        await run.caller.wait_prompts(3)
        run.transfer.cancel()
        outcome = await run.finish(task)
    assert isinstance(outcome, Failed) and outcome.reason is Reason.CANCELLED
    held = run.at("HoldStarted")
    prompts = run.caller.prompts
    for number, prompt in enumerate(prompts[:3], start=1):
        assert prompt.at >= held + number * every - 0.001, (number, prompt.at - held)
        assert prompt.text == "Thanks for holding, I'm still connecting you."
    # One prompt per beat at most: a late wake-up skips a beat, it never doubles one.
    beats = [int((prompt.at - held) / every + 0.01) for prompt in prompts]
    assert all(earlier < later for earlier, later in itertools.pairwise(beats)), beats


async def test_no_progress_prompt_when_turned_off() -> None:
    leg = MemoryTargetLeg()
    async with no_leaks():
        run = Run(make_plan(hold=NO_PROMPTS), dialer=MemoryDialer(answer=leg))
        task = run.start()
        await leg.key_requested.wait()
        leg.press("1")
        outcome = await run.finish(task)
    assert isinstance(outcome, Completed)
    assert run.caller.prompts == []


async def test_accept_mid_prompt_bridges_at_once_and_stops_the_prompt() -> None:
    leg = MemoryTargetLeg()
    caller = MemoryCaller(announce_gate=asyncio.Event())  # a prompt that never ends by itself
    prompt_playing_at_bridge: list[bool] = []

    def on_event(event: TransferEvent) -> None:
        if isinstance(event.event, Bridged):
            prompt_playing_at_bridge.append(caller.announcing)

    async with no_leaks():
        run = Run(
            make_plan(hold=HoldAudio(progress_every=0.01)),
            dialer=MemoryDialer(answer=leg),
            caller=caller,
            on_event=on_event,
        )
        task = run.start()
        await leg.key_requested.wait()
        await caller.wait_prompts(1)
        assert caller.announcing
        leg.press("1")
        outcome = await run.finish(task)
    assert isinstance(outcome, Completed)
    assert prompt_playing_at_bridge == [True], "the bridge waited for the prompt"
    assert caller.prompts_cancelled == 1
    assert not caller.announcing
    assert len(caller.prompts) == 1


async def test_star_mid_prompt_stops_it_and_no_prompt_follows() -> None:
    caller = MemoryCaller(announce_gate=asyncio.Event())
    async with no_leaks():
        run = Run(make_plan(hold=HoldAudio(progress_every=0.01)), caller=caller)
        task = run.start()
        await caller.wait_prompts(1)
        caller.press("*")
        outcome = await run.finish(task)
    assert isinstance(outcome, Failed) and outcome.reason is Reason.CANCELLED_BY_CALLER
    assert caller.prompts_cancelled == 1
    assert len(caller.prompts) == 1
    assert caller.with_ai


async def test_a_failing_prompt_does_not_fail_the_transfer(
    caplog: pytest.LogCaptureFixture,
) -> None:
    leg = MemoryTargetLeg()
    caller = MemoryCaller(announce_error=RuntimeError("no text-to-speech"))
    async with no_leaks():
        run = Run(
            make_plan(hold=HoldAudio(progress_every=0.01)),
            dialer=MemoryDialer(answer=leg),
            caller=caller,
        )
        with caplog.at_level(logging.WARNING, logger="warmtransfer.transfer"):
            task = run.start()
            await caller.wait_prompts(1)
            await leg.key_requested.wait()
            leg.press("1")
            outcome = await run.finish(task)
    assert isinstance(outcome, Completed)
    assert "no more progress prompts" in caplog.text


async def test_prompt_timing_goes_on_from_the_hold_into_the_fallback() -> None:
    """The interval counts from the start of the hold, not from each phase."""
    every = 0.03
    dialer = MemoryDialer(routes={ALICE.uri: DialScript(fail=BUSY), QUEUE.uri: DialScript()})
    fallback_at: list[float] = []

    def on_event(event: TransferEvent) -> None:
        if isinstance(event.event, DialStarted) and event.event.fallback:
            fallback_at.append(event.at)

    async with no_leaks():
        run = Run(
            make_plan(hold=HoldAudio(progress_every=every), on_failure=Fallback(target=QUEUE)),
            dialer=dialer,
            on_event=on_event,
        )
        task = run.start()
        await dialer.ringing_started.wait()
        await dialer.started_for(QUEUE.uri).wait()
        await run.caller.wait_prompts(2)
        run.transfer.cancel()
        outcome = await run.finish(task)
    assert isinstance(outcome, Failed) and outcome.reason is Reason.CANCELLED
    held = run.at("HoldStarted")
    for prompt in run.caller.prompts:
        beats = (prompt.at - held) / every
        assert beats >= 1 - 0.05
    assert fallback_at and any(p.at > fallback_at[0] for p in run.caller.prompts)


# -- the plan's options -----------------------------------------------------------------------


def test_defaults() -> None:
    keys = CallerKeys()
    assert (keys.can_cancel, keys.cancel_key) == (True, "*")
    assert (keys.can_leave_message, keys.message_key) == (False, "#")
    assert keys.message_max_seconds == 60.0
    assert keys.effective_messages_dir == DEFAULT_MESSAGES_DIR
    assert DEFAULT_MESSAGES_DIR.parent == Path(tempfile.gettempdir())
    assert HoldAudio().progress_every == 30.0
    assert keys.action("*") == "cancel" and keys.action("#") is None


@pytest.mark.parametrize("key", ["", "**", "x", "1 ", "E", "#1"])
def test_a_key_must_be_one_dtmf_key(key: str) -> None:
    with pytest.raises(ValidationError, match="not one DTMF key"):
        CallerKeys(cancel_key=key)
    with pytest.raises(ValidationError, match="not one DTMF key"):
        CallerKeys(message_key=key)


def test_one_key_cannot_do_both() -> None:
    with pytest.raises(ValidationError, match="both '#'"):
        CallerKeys(can_leave_message=True, cancel_key="#")
    # With messages off, "#" may cancel (the message key does nothing then).
    keys = CallerKeys(cancel_key="#")
    assert keys.action("#") == "cancel"


def test_prompt_names_the_key() -> None:
    assert "press star" in CallerKeys(message_key="*", cancel_key="0").effective_message_prompt
    assert CallerKeys(message_prompt="Speak now.").effective_message_prompt == "Speak now."


@pytest.mark.parametrize(
    "options",
    [{"progress_every": 0}, {"progress_every": -1}, {"progress_text": ""}],
)
def test_bad_progress_options(options: dict[str, Any]) -> None:
    with pytest.raises(ValidationError):
        HoldAudio(**options)


@pytest.mark.parametrize(
    "options",
    [{"message_max_seconds": 0}, {"message_silence_seconds": 0}, {"colour": "blue"}],
)
def test_bad_message_options(options: dict[str, Any]) -> None:
    with pytest.raises(ValidationError):
        CallerKeys(**options)


def test_plan_file_messages_dir_is_relative_to_the_file(tmp_path: Path) -> None:
    path = tmp_path / "plan.toml"
    path.write_text(
        '[[targets]]\nuri = "sip:alice@pbx.example.com"\n\n'
        "[hold_audio]\nprogress_every = 20\n\n"
        '[caller_keys]\ncan_leave_message = true\nmessages_dir = "messages"\n',
        encoding="utf-8",
    )
    plan = TransferPlan.from_file(path)
    assert plan.caller_keys.effective_messages_dir == tmp_path / "messages"
    assert plan.hold_audio.progress_every == 20
    path.write_text(
        '[[targets]]\nuri = "sip:alice@pbx.example.com"\n\n'
        '[caller_keys]\ncan_leave_message = true\ncancel_key = "#"\n',
        encoding="utf-8",
    )
    with pytest.raises(PlanFileError, match="caller_keys"):
        TransferPlan.from_file(path)


def test_the_table_reads_keys_only_while_hunting_or_falling_back() -> None:
    for event in (CallerCancelled, MessageRequested):
        allowed = {state for (state, kind) in TRANSITIONS if kind is event}
        assert allowed == {S.HUNTING, S.FALLBACK}
        assert all(TRANSITIONS[(state, event)] is S.RECOVERING for state in allowed)
    assert (S.HOLDING, HoldStarted) in TRANSITIONS  # keys are read once HoldStarted fired

"""In-memory implementations of the transfer ports, for driver tests only.

Timing is driven by events, never by sleeps: each port exposes asyncio.Events that say where it
is (`dialer.ringing_started`, `leg.key_requested`, ...) and gates a test opens when it wants the
scenario to move on (`ring_gate`, `answer_gate`, `leg.finish_playback()`, ...). Each port also
records what was done to it, so a test can assert what the caller and the human went through.

They keep the port contracts the driver relies on (ports.py): a cancelled dial records the
cancellation and re-raises; `hangup` and `unhold` are idempotent; `wait_hangup` returns once the
leg has ended. `_conforms` below lets mypy check them against the Protocols.

They also count what could leak (a dial still pending, a playback still running, a waiter still
subscribed to a leg, a caller still on hold), so a test can prove that nothing is left behind.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from numpy.typing import NDArray

from warmtransfer.consult.ports import Briefing, Consultant, ConsultLeg, Decision, LegGone, Verdict
from warmtransfer.media.audio import PHONE_RATE, AudioClip
from warmtransfer.media.wav import write_wav
from warmtransfer.transfer.plan import HoldAudio
from warmtransfer.transfer.ports import Bridge, CallerLeg, Dialer, TargetLeg
from warmtransfer.transfer.target import Target


class _Changes:
    """Wake every waiter when something changes; no tasks, nothing left behind on cancel."""

    def __init__(self) -> None:
        self._waiters: set[asyncio.Future[None]] = set()

    async def wait(self) -> None:
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.add(waiter)
        try:
            await waiter
        finally:
            self._waiters.discard(waiter)

    def notify(self) -> None:
        for waiter in self._waiters:
            if not waiter.done():
                waiter.set_result(None)

    @property
    def waiting(self) -> int:
        return len(self._waiters)


async def _forever() -> None:
    await asyncio.Event().wait()


@dataclass(frozen=True)
class Prompt:
    """One `announce` call: its text, the loop time, and whether the caller was held then (not
    unheld, bridged or gone): a prompt for a caller who is not is the bug to catch."""

    text: str
    at: float
    holding: bool


@dataclass(frozen=True)
class RecordCall:
    """One `record_message` call, with its arguments."""

    path: Path
    prompt: str
    max_seconds: float
    stop_key: str
    silence_seconds: float


class MemoryCaller:
    """The caller's leg. `hang_up()` is the caller hanging up; `press(key)` a key they press
    (read by `next_key`); `say(samples)` what they say (heard only by a recording).

    `announce_gate` holds each progress prompt until opened (a prompt being spoken);
    `record_gate` holds `record_message` in its prompt, before the tone. A message ends as on
    a phone: the stop key, `silence_seconds` without `say`, `max_seconds`, or a hang-up; the
    WAV it writes holds what was said (8 kHz)."""

    def __init__(
        self,
        *,
        hold_gate: asyncio.Event | None = None,
        unhold_gate: asyncio.Event | None = None,
        hold_error: Exception | None = None,
        unhold_error: Exception | None = None,
        wait_hangup_error: Exception | None = None,
        message_gate: asyncio.Event | None = None,
        message_error: Exception | None = None,
        hangup_error: Exception | None = None,
        announce_gate: asyncio.Event | None = None,
        announce_error: Exception | None = None,
        record_gate: asyncio.Event | None = None,
        record_error: Exception | None = None,
    ) -> None:
        self.hold_gate = hold_gate
        self.unhold_gate = unhold_gate
        self.hold_error = hold_error
        self.unhold_error = unhold_error
        self.wait_hangup_error = wait_hangup_error
        self.message_gate = message_gate
        self.message_error = message_error
        self.hangup_error = hangup_error
        self.announce_gate = announce_gate
        self.announce_error = announce_error
        self.record_gate = record_gate
        self.record_error = record_error
        self.prompts: list[Prompt] = []
        self.prompts_cancelled = 0
        self.announcing = False
        self.record_calls: list[RecordCall] = []
        self.recording = False
        self.recording_started = asyncio.Event()
        self.message_ended_by: str | None = None  # "key", "silence", "max", "hang-up"
        self.keys_read: list[str] = []
        self.keys_discarded: list[str] = []
        self._keys: deque[str] = deque()
        self._changes = _Changes()
        self._said: list[NDArray[np.int16]] = []
        self._last_said = 0.0
        self.hold_calls: list[HoldAudio] = []
        self.unhold_calls = 0
        self.messages: list[str] = []
        self.hangup_calls = 0
        self.held = False
        self.bridged_to: TargetLeg | None = None
        self.hold_started = asyncio.Event()
        self.unhold_started = asyncio.Event()
        self.message_started = asyncio.Event()
        self._gone = asyncio.Event()
        self._hung_up_by_us = False

    async def hold(self, audio: HoldAudio) -> None:
        self.hold_calls.append(audio)
        self.hold_started.set()
        if self.hold_error is not None:
            raise self.hold_error
        self._discard_keys()  # keys pressed for the AI are not the transfer's
        self.held = True  # the music starts at once; hold() returns once it is "playing"
        if self.hold_gate is not None:
            await self.hold_gate.wait()

    async def unhold(self) -> None:
        self.unhold_calls += 1
        self.unhold_started.set()
        self.announcing = False  # a prompt is hold audio: it stops with the music
        if self.unhold_gate is not None:
            await self.unhold_gate.wait()
        if self.unhold_error is not None:
            raise self.unhold_error
        self._discard_keys()  # keys pressed on hold never reach the AI
        self.held = False

    async def play_message(self, text: str) -> None:
        self.messages.append(text)
        self.held = False  # the message replaces the hold music
        self.announcing = False
        self.message_started.set()
        if self.message_gate is not None:
            await self.message_gate.wait()
        if self.message_error is not None:
            raise self.message_error

    async def hangup(self) -> None:
        self.hangup_calls += 1
        if self.hangup_error is not None:
            raise self.hangup_error
        if not self.hung_up:
            self._hung_up_by_us = True
        self.held = False
        self._gone.set()
        self._changes.notify()

    async def wait_hangup(self) -> None:
        if self.wait_hangup_error is not None:
            raise self.wait_hangup_error
        await self._gone.wait()

    @property
    def hung_up(self) -> bool:
        return self._gone.is_set()

    @property
    def hung_up_by_us(self) -> bool:
        """We ended the caller's call (message_and_hangup), not the caller."""
        return self._hung_up_by_us

    def hang_up(self) -> None:
        """The caller hangs up."""
        self._gone.set()
        self._changes.notify()

    def press(self, key: str) -> None:
        """The caller presses a key."""
        self._keys.append(key)
        self._changes.notify()

    def say(self, samples: NDArray[np.int16]) -> None:
        """The caller speaks: only a recording hears it (the AI never hears a held caller)."""
        if self.recording:
            self._said.append(samples.copy())
            self._last_said = asyncio.get_running_loop().time()
            self._changes.notify()

    @property
    def waiters(self) -> int:
        """Coroutines still waiting on the caller's keys or recording: each would be a leak."""
        return self._changes.waiting

    @property
    def prompt_playing(self) -> bool:
        """A progress prompt still going to a caller who is held: a leaked prompt."""
        return self.announcing and self.held and not self.hung_up

    def _discard_keys(self) -> None:
        self.keys_discarded.extend(self._keys)
        self._keys.clear()

    async def next_key(self) -> str:
        while True:
            if self._keys:
                key = self._keys.popleft()
                self.keys_read.append(key)
                self._changes.notify()
                return key
            if self.hung_up:
                raise LegGone("the caller hung up")
            await self._changes.wait()

    async def announce(self, text: str) -> None:
        holding = self.held and self.bridged_to is None and not self.hung_up
        self.prompts.append(Prompt(text, asyncio.get_running_loop().time(), holding))
        self._changes.notify()
        if not holding:
            return
        if self.announce_error is not None:
            raise self.announce_error
        self.announcing = True
        try:
            if self.announce_gate is not None:
                await self.announce_gate.wait()
        except asyncio.CancelledError:
            self.prompts_cancelled += 1
            raise
        finally:
            self.announcing = False

    async def wait_prompts(self, count: int) -> None:
        """Until `count` progress prompts have started."""
        while len(self.prompts) < count:
            await self._changes.wait()

    async def wait_keys_read(self, count: int) -> None:
        """Until the transfer has read `count` of the caller's keys."""
        while len(self.keys_read) < count:
            await self._changes.wait()

    async def record_message(
        self,
        path: Path,
        *,
        prompt: str,
        max_seconds: float,
        stop_key: str,
        silence_seconds: float,
    ) -> Path | None:
        self.record_calls.append(RecordCall(path, prompt, max_seconds, stop_key, silence_seconds))
        self.announcing = False  # the prompt and the recording replace the hold audio
        if self.record_error is not None:
            raise self.record_error
        if self.record_gate is not None and not self.hung_up:
            await self.record_gate.wait()  # the prompt, before the tone
        if self.hung_up:
            return None
        self._discard_keys()  # keys pressed during the prompt do not end the message
        loop = asyncio.get_running_loop()
        self._said, self._last_said = [], loop.time()
        self.message_ended_by = None
        deadline = loop.time() + max_seconds
        self.recording = True
        self.recording_started.set()
        try:
            while True:
                while self._keys:
                    if self._keys.popleft() == stop_key:
                        self.message_ended_by = "key"
                if self.message_ended_by is not None:
                    break
                if self.hung_up:
                    self.message_ended_by = "hang-up"
                    break
                now = loop.time()
                if now >= deadline:
                    self.message_ended_by = "max"
                    break
                if now >= self._last_said + silence_seconds:
                    self.message_ended_by = "silence"
                    break
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(
                        min(deadline, self._last_said + silence_seconds) - now
                    ):
                        await self._changes.wait()
        finally:
            self.recording = False
        samples = np.concatenate(self._said) if self._said else np.zeros(0, dtype=np.int16)
        write_wav(path, samples, PHONE_RATE)
        return path

    @property
    def with_ai(self) -> bool:
        """Back with the AI: not held, not bridged, still there."""
        return not self.held and self.bridged_to is None and not self.hung_up

    @property
    def hold_playing(self) -> bool:
        """Hold music still going to a caller who is still there: a leaked player."""
        return self.held and not self.hung_up


class MemoryTargetLeg:
    """An answered leg to a human. The test presses keys, hangs up, and lets playback finish."""

    def __init__(
        self,
        *,
        keys: Iterable[str] = (),
        play_blocks: bool = False,
        errors: dict[str, Exception] | None = None,
        on_key_request: Callable[[MemoryTargetLeg], None] | None = None,
        on_play: Callable[[MemoryTargetLeg], None] | None = None,
    ) -> None:
        self.play_blocks = play_blocks
        self.errors = dict(errors or {})
        self.on_key_request = on_key_request
        self.on_play = on_play
        self.played: list[AudioClip] = []
        self.sinks: list[Callable[[NDArray[np.int16]], None]] = []
        self.listened = asyncio.Event()  # someone subscribed to the human's audio
        self.plays_active = 0
        self.digits_sent: list[str] = []
        self.hangup_calls = 0
        self.hung_up_by_far_end = False
        self.bridged = False
        self.playing = asyncio.Event()
        self.key_requested = asyncio.Event()
        self._keys: deque[str] = deque(keys)
        self._gone = asyncio.Event()
        self._changes = _Changes()
        self._stops = 0
        self._playback_done = False

    # -- what the test does -----------------------------------------------------------------

    def press(self, key: str) -> None:
        self._keys.append(key)
        self._changes.notify()

    def remote_hangup(self) -> None:
        """The human hangs up."""
        self.hung_up_by_far_end = True
        self._end()

    def finish_playback(self) -> None:
        self._playback_done = True
        self._changes.notify()

    @property
    def hung_up_by_us(self) -> bool:
        return self.hangup_calls > 0

    # -- ConsultLeg / TargetLeg ------------------------------------------------------------------

    async def play(self, clip: AudioClip) -> None:
        self._maybe_fail("play")
        self.played.append(clip)
        self.playing.set()
        if self.on_play is not None:
            self.on_play(self)
        stops = self._stops
        self.plays_active += 1
        try:
            while self.play_blocks and not self._playback_done and stops == self._stops:
                if self.hung_up:
                    raise LegGone("the target hung up during playback")
                await self._changes.wait()
        finally:
            self.plays_active -= 1
        if self.hung_up:
            raise LegGone("the target hung up during playback")

    @property
    def waiters(self) -> int:
        """Coroutines still waiting on this leg (a key, a playback): each would be a leak."""
        return self._changes.waiting

    def stop_playback(self) -> None:
        self._stops += 1
        self._changes.notify()

    async def next_key(self) -> str:
        self._maybe_fail("next_key")
        self.key_requested.set()
        if self.on_key_request is not None:
            self.on_key_request(self)
        while True:
            if self._keys:
                return self._keys.popleft()
            if self.hung_up:
                raise LegGone("the target hung up")
            await self._changes.wait()

    def say(self, samples: NDArray[np.int16], frame: int = 160) -> None:
        """The human speaks: `samples` (8 kHz) reach whoever listens, in 20 ms frames."""
        for start in range(0, len(samples), frame):
            for sink in list(self.sinks):
                sink(samples[start : start + frame])

    @contextlib.contextmanager
    def listening(self, sink: Callable[[NDArray[np.int16]], None]) -> Iterator[None]:
        self.sinks.append(sink)
        self.listened.set()
        try:
            yield
        finally:
            self.sinks.remove(sink)

    async def send_digits(self, digits: str) -> None:
        self._maybe_fail("send_digits")
        self.digits_sent.append(digits)

    async def wait_hangup(self) -> None:
        await self._gone.wait()

    @property
    def hung_up(self) -> bool:
        return self._gone.is_set()

    async def hangup(self) -> None:
        self.hangup_calls += 1
        self._maybe_fail("hangup")
        self._end()

    def _end(self) -> None:
        self._gone.set()
        self._changes.notify()

    def _maybe_fail(self, method: str) -> None:
        if self.hung_up and method in ("play", "next_key", "send_digits"):
            raise LegGone(f"{method} on a leg that has ended")
        error = self.errors.get(method)
        if error is not None:
            raise error


@dataclass
class DialScript:
    """How one dial of one target goes: answered with `answer`, failed with `fail`, or (neither)
    ringing until cancelled. `ring_gate` holds it before its provisional responses,
    `answer_gate` before its final one; None to go straight on."""

    answer: MemoryTargetLeg | None = None
    fail: Exception | None = None
    ringing: Sequence[int] = (180,)
    ring_gate: asyncio.Event | None = None
    answer_gate: asyncio.Event | None = None


@dataclass
class DialRecord:
    """One call of `dial`, as the test sees it."""

    target: Target
    script: DialScript
    pending: bool = True
    cancelled: bool = False
    leg: MemoryTargetLeg | None = None
    ringing_started: asyncio.Event = field(default_factory=asyncio.Event)
    ended: asyncio.Event = field(default_factory=asyncio.Event)


class MemoryDialer:
    """Scripted dials. With `routes`, each target URI has its own scripts, one per dial, in
    order (a target dialled in two rounds needs two); without, every dial follows the one script
    given by the other arguments."""

    def __init__(
        self,
        *,
        answer: MemoryTargetLeg | None = None,
        fail: Exception | None = None,
        ringing: Sequence[int] = (180,),
        ring_gate: asyncio.Event | None = None,
        answer_gate: asyncio.Event | None = None,
        routes: Mapping[str, DialScript | Sequence[DialScript]] | None = None,
    ) -> None:
        self.default = DialScript(answer, fail, tuple(ringing), ring_gate, answer_gate)
        self.routes: dict[str, deque[DialScript]] | None = None
        if routes is not None:
            self.routes = {
                uri: deque([scripts] if isinstance(scripts, DialScript) else scripts)
                for uri, scripts in routes.items()
            }
        self.dials: list[DialRecord] = []
        self.started = asyncio.Event()
        self.ringing_started = asyncio.Event()
        self._started_for: dict[str, asyncio.Event] = {}

    # -- what the test reads -----------------------------------------------------------------

    @property
    def targets(self) -> list[Target]:
        return [dial.target for dial in self.dials]

    @property
    def legs(self) -> list[MemoryTargetLeg]:
        return [dial.leg for dial in self.dials if dial.leg is not None]

    @property
    def pending(self) -> bool:
        return any(dial.pending for dial in self.dials)

    @property
    def cancelled(self) -> bool:
        return any(dial.cancelled for dial in self.dials)

    def to(self, uri: str) -> list[DialRecord]:
        return [dial for dial in self.dials if dial.target.uri == uri]

    def started_for(self, uri: str) -> asyncio.Event:
        return self._started_for.setdefault(uri, asyncio.Event())

    # -- Dialer ------------------------------------------------------------------------------

    def _script(self, target: Target) -> DialScript:
        if self.routes is None:
            return self.default
        scripts = self.routes.get(target.uri)
        assert scripts, f"the test did not script a dial to {target.uri}"
        return scripts.popleft()

    async def dial(self, target: Target, on_ringing: Callable[[int], None]) -> TargetLeg:
        script = self._script(target)
        record = DialRecord(target, script)
        self.dials.append(record)
        self.started.set()
        self.started_for(target.uri).set()
        try:
            if script.ring_gate is not None:
                await script.ring_gate.wait()
            for status in script.ringing:
                on_ringing(status)
            if script.ringing:
                record.ringing_started.set()
                self.ringing_started.set()
            if script.answer_gate is not None:
                await script.answer_gate.wait()
            if script.fail is not None:
                raise script.fail
            if script.answer is None:
                await _forever()
            assert script.answer is not None
            # No await between answering and returning: an answer cannot cross a cancel here.
            record.leg = script.answer
            return script.answer
        except asyncio.CancelledError:
            record.cancelled = True  # a real dialer sends CANCEL here
            raise
        finally:
            record.pending = False
            record.ended.set()


class MemoryBridge:
    """Joins the legs by marking them; `fail` makes it raise instead, `gate` makes it take time."""

    def __init__(self, *, fail: Exception | None = None, gate: asyncio.Event | None = None) -> None:
        self.fail = fail
        self.gate = gate
        self.connected: list[tuple[CallerLeg, TargetLeg]] = []
        self.started = asyncio.Event()
        self.cancelled = False

    async def connect(self, caller: CallerLeg, target: TargetLeg) -> None:
        self.started.set()
        try:
            if self.gate is not None:
                await self.gate.wait()
        except asyncio.CancelledError:
            self.cancelled = True
            raise
        if self.fail is not None:
            raise self.fail
        self.connected.append((caller, target))
        if isinstance(caller, MemoryCaller):
            caller.bridged_to = target
            caller.held = False
        if isinstance(target, MemoryTargetLeg):
            target.bridged = True


class KeyConsultant:
    """Plays the prepared briefing, then waits for a key: 1 accepts, 2 declines, 3 = voicemail."""

    DECLINE_REASON = "pressed 2: with another customer"

    def __init__(
        self,
        *,
        prepare_gate: asyncio.Event | None = None,
        prepare_error: Exception | None = None,
        consult_error: Exception | None = None,
    ) -> None:
        self.prepare_gate = prepare_gate
        self.prepare_error = prepare_error
        self.consult_error = consult_error
        self.briefings: list[Briefing] = []
        self.clip = AudioClip.silence(0.5)
        self.prepare_started = asyncio.Event()
        self.prepare_done = asyncio.Event()
        self.prepare_cancelled = False
        self.consult_started = asyncio.Event()
        self.briefed = asyncio.Event()

    async def prepare(self, briefing: Briefing) -> object:
        self.briefings.append(briefing)
        self.prepare_started.set()
        try:
            if self.prepare_gate is not None:
                await self.prepare_gate.wait()
        except asyncio.CancelledError:
            self.prepare_cancelled = True
            raise
        if self.prepare_error is not None:
            raise self.prepare_error
        self.prepare_done.set()
        return self.clip

    async def consult(self, leg: ConsultLeg, prepared: object) -> Decision:
        self.consult_started.set()
        if self.consult_error is not None:
            raise self.consult_error
        assert prepared is self.clip, "consult must get what prepare returned"
        await leg.play(self.clip)
        self.briefed.set()
        while True:
            key = await leg.next_key()
            if key == "1":
                return Decision(Verdict.ACCEPT, via="key 1")
            if key == "2":
                return Decision(Verdict.DECLINE, via="key 2", reason=self.DECLINE_REASON)
            if key == "3":
                return Decision(Verdict.VOICEMAIL, via="key 3")


class StallingConsultant(KeyConsultant):
    """Never touches the leg once consulting (an LLM thinking): only the driver can notice a
    hang-up or a deadline."""

    async def consult(self, leg: ConsultLeg, prepared: object) -> Decision:
        self.consult_started.set()
        await _forever()
        raise AssertionError("unreachable")


class NotifyingConsultant(KeyConsultant):
    """Has the optional caller-left hook: plays NOTICE on the leg, and records the legs it told
    (and whether each was still up then)."""

    NOTICE = AudioClip.silence(0.25)

    def __init__(self) -> None:
        super().__init__()
        self.notified: list[ConsultLeg] = []
        self.up_when_told: list[bool] = []

    async def notify_caller_left(self, leg: ConsultLeg) -> None:
        self.notified.append(leg)
        if isinstance(leg, MemoryTargetLeg):
            self.up_when_told.append(not leg.hung_up)
        await leg.play(self.NOTICE)


class SameMomentConsultant(KeyConsultant):
    """Every human accepts the moment `go` is set: all their consults return in the same
    event-loop iteration (the race of two humans saying yes at once)."""

    def __init__(self, go: asyncio.Event) -> None:
        super().__init__()
        self.go = go
        self.waiting = 0
        self.all_waiting = asyncio.Event()
        self.expected = 2

    async def consult(self, leg: ConsultLeg, prepared: object) -> Decision:
        self.consult_started.set()
        self.waiting += 1
        if self.waiting >= self.expected:
            self.all_waiting.set()
        await self.go.wait()
        return Decision(Verdict.ACCEPT, via="same moment")


def _conforms() -> None:
    """Never called: lets mypy check the memory ports against the Protocols."""
    _caller: CallerLeg = MemoryCaller()
    _leg: TargetLeg = MemoryTargetLeg()
    _dialer: Dialer = MemoryDialer()
    _bridge: Bridge = MemoryBridge()
    _consultant: Consultant = KeyConsultant()
    _stalling: Consultant = StallingConsultant()

"""In-memory implementations of the transfer ports, for driver tests only.

Timing is driven by events, never by sleeps: each port exposes asyncio.Events that say where it
is (`dialer.ringing_started`, `leg.key_requested`, ...) and gates a test opens when it wants the
scenario to move on (`ring_gate`, `answer_gate`, `leg.finish_playback()`, ...). Each port also
records what was done to it, so a test can assert what the caller and the human went through.

They keep the port contracts the driver relies on (ports.py): a cancelled dial records the
cancellation and re-raises; `hangup` and `unhold` are idempotent; `wait_hangup` returns once the
leg has ended. `_conforms` below lets mypy check them against the Protocols.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable, Iterable, Sequence

from warmtransfer.consult.ports import Briefing, Consultant, ConsultLeg, Decision, LegGone, Verdict
from warmtransfer.media.audio import AudioClip
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


async def _forever() -> None:
    await asyncio.Event().wait()


class MemoryCaller:
    """The caller's leg. `hang_up()` is the caller hanging up."""

    def __init__(
        self,
        *,
        hold_gate: asyncio.Event | None = None,
        unhold_gate: asyncio.Event | None = None,
        hold_error: Exception | None = None,
        unhold_error: Exception | None = None,
        wait_hangup_error: Exception | None = None,
    ) -> None:
        self.hold_gate = hold_gate
        self.unhold_gate = unhold_gate
        self.hold_error = hold_error
        self.unhold_error = unhold_error
        self.wait_hangup_error = wait_hangup_error
        self.hold_calls: list[HoldAudio] = []
        self.unhold_calls = 0
        self.held = False
        self.bridged_to: TargetLeg | None = None
        self.hold_started = asyncio.Event()
        self.unhold_started = asyncio.Event()
        self._gone = asyncio.Event()

    async def hold(self, audio: HoldAudio) -> None:
        self.hold_calls.append(audio)
        self.hold_started.set()
        if self.hold_error is not None:
            raise self.hold_error
        self.held = True  # the music starts at once; hold() returns once it is "playing"
        if self.hold_gate is not None:
            await self.hold_gate.wait()

    async def unhold(self) -> None:
        self.unhold_calls += 1
        self.unhold_started.set()
        if self.unhold_gate is not None:
            await self.unhold_gate.wait()
        if self.unhold_error is not None:
            raise self.unhold_error
        self.held = False

    async def wait_hangup(self) -> None:
        if self.wait_hangup_error is not None:
            raise self.wait_hangup_error
        await self._gone.wait()

    @property
    def hung_up(self) -> bool:
        return self._gone.is_set()

    def hang_up(self) -> None:
        self._gone.set()

    @property
    def with_ai(self) -> bool:
        """Back with the AI: not held, not bridged, still there."""
        return not self.held and self.bridged_to is None and not self.hung_up


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
        while self.play_blocks and not self._playback_done and stops == self._stops:
            if self.hung_up:
                raise LegGone("the target hung up during playback")
            await self._changes.wait()
        if self.hung_up:
            raise LegGone("the target hung up during playback")

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


class MemoryDialer:
    """Scripted dial: answer with `answer`, raise `fail`, or (neither) ring until cancelled.

    `ring_gate` holds the dial before its provisional responses, `answer_gate` before the final
    one; each is None to go straight on.
    """

    def __init__(
        self,
        *,
        answer: MemoryTargetLeg | None = None,
        fail: Exception | None = None,
        ringing: Sequence[int] = (180,),
        ring_gate: asyncio.Event | None = None,
        answer_gate: asyncio.Event | None = None,
    ) -> None:
        self.answer = answer
        self.fail = fail
        self.ringing = tuple(ringing)
        self.ring_gate = ring_gate
        self.answer_gate = answer_gate
        self.targets: list[Target] = []
        self.legs: list[MemoryTargetLeg] = []
        self.pending = False
        self.cancelled = False
        self.started = asyncio.Event()
        self.ringing_started = asyncio.Event()

    async def dial(self, target: Target, on_ringing: Callable[[int], None]) -> TargetLeg:
        self.targets.append(target)
        self.pending = True
        self.started.set()
        try:
            if self.ring_gate is not None:
                await self.ring_gate.wait()
            for status in self.ringing:
                on_ringing(status)
            if self.ringing:
                self.ringing_started.set()
            if self.answer_gate is not None:
                await self.answer_gate.wait()
            if self.fail is not None:
                raise self.fail
            if self.answer is None:
                await _forever()
            assert self.answer is not None
            # No await between answering and returning: an answer cannot cross a cancel here.
            self.legs.append(self.answer)
            return self.answer
        except asyncio.CancelledError:
            self.cancelled = True  # a real dialer sends CANCEL here
            raise
        finally:
            self.pending = False


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
    """Has the optional caller-left hook; records the legs it was asked to tell."""

    def __init__(self) -> None:
        super().__init__()
        self.notified: list[ConsultLeg] = []

    async def notify_caller_left(self, leg: ConsultLeg) -> None:
        self.notified.append(leg)


def _conforms() -> None:
    """Never called: lets mypy check the memory ports against the Protocols."""
    _caller: CallerLeg = MemoryCaller()
    _leg: TargetLeg = MemoryTargetLeg()
    _dialer: Dialer = MemoryDialer()
    _bridge: Bridge = MemoryBridge()
    _consultant: Consultant = KeyConsultant()
    _stalling: Consultant = StallingConsultant()

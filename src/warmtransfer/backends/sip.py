"""The embedded SIP backend of the transfer ports: caller leg, dialer, target leg and bridge on
top of warmtransfer's own SIP user agent and RTP sessions.

The caller leg is also the AI agent's handle on the call (speak, listen, keys), because hold has
to take the call away from the AI in one place: while held, what the caller says is not passed
to the AI and the AI cannot talk over the hold music (reference defect: held-caller speech
reached the AI, which then completed the transfer early).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections.abc import Callable, Coroutine, Iterator
from contextlib import AbstractContextManager
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from warmtransfer.consult.ports import AudioSink, LegGone
from warmtransfer.media.audio import PHONE_RATE, AudioClip
from warmtransfer.media.bridge import MediaBridge
from warmtransfer.media.hold_music import hold_music
from warmtransfer.media.levels import rms_dbfs
from warmtransfer.media.player import FRAME, Playback
from warmtransfer.media.session import KeyPress, RtpSession
from warmtransfer.media.wav import read_wav, write_wav
from warmtransfer.sip.call import Call, CallFailed, OutgoingCall
from warmtransfer.sip.useragent import UserAgent
from warmtransfer.speech.tts import TextToSpeech
from warmtransfer.transfer.outcome import BridgeFailed, DialFailed, Reason, reason_for_status
from warmtransfer.transfer.plan import HoldAudio
from warmtransfer.transfer.ports import CallerLeg, TargetLeg
from warmtransfer.transfer.target import Target

log = logging.getLogger(__name__)


@lru_cache(maxsize=8)
def _hold_clip(source: str | None) -> AudioClip:
    return hold_music() if source is None else read_wav(source)


#: What counts as sound in a caller's message (about the level of quiet speech on a phone line;
#: the same threshold as `levels.active_spans`): below it, the caller is silent.
_SOUND_DBFS = -45.0


def _private_file(path: Path) -> None:
    """Create `path` readable by this user only, in a directory created likewise if new: a
    caller's voice is personal data, and the default place for messages is in the system's
    shared temporary directory."""
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    os.close(os.open(path, os.O_CREAT | os.O_WRONLY | os.O_TRUNC, 0o600))


@lru_cache(maxsize=1)
def _tone() -> AudioClip:
    """The "record after the tone" beep: 1 kHz for 0.4 s at -12 dBFS, with 10 ms ramps so it
    does not click."""
    seconds, ramp = 0.4, 80
    t = np.arange(int(seconds * PHONE_RATE)) / PHONE_RATE
    wave = 0.25 * np.sin(2 * np.pi * 1000.0 * t)
    envelope = np.ones_like(wave)
    envelope[:ramp] = np.linspace(0.0, 1.0, ramp)
    envelope[-ramp:] = np.linspace(1.0, 0.0, ramp)
    samples = np.round(wave * envelope * 32767).astype(np.int16)
    samples.setflags(write=False)
    return AudioClip(samples, PHONE_RATE)


async def until_ended(call: Call, awaitable: asyncio.Future[Any] | Coroutine[Any, Any, Any]) -> Any:
    """Await `awaitable`, but raise LegGone the moment the call ends."""
    work = asyncio.ensure_future(awaitable)
    ended = asyncio.ensure_future(call.ended.wait())
    try:
        await asyncio.wait({work, ended}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        ended.cancel()
        if not work.done():
            work.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await work
    if work.done() and not work.cancelled():
        return work.result()
    raise LegGone(f"call {call.call_id} ended")


class _MediaLeg:
    """Playback and keys on one call's media, shared by the caller and target legs."""

    def __init__(self, call: Call) -> None:
        self.call = call
        self.media: RtpSession = call.media
        self.playback: Playback | None = None
        self.keys_seen: list[KeyPress] = []

    @property
    def hung_up(self) -> bool:
        return self.call.ended.is_set()

    async def wait_hangup(self) -> None:
        await self.call.ended.wait()

    async def _play(self, clip: AudioClip, *, loop: bool = False, volume: float = 1.0) -> Playback:
        if self.hung_up:
            raise LegGone(f"call {self.call.call_id} has ended")
        self.playback = self.media.play(clip, loop=loop, volume=volume)
        return self.playback

    async def play(self, clip: AudioClip) -> None:
        playback = await self._play(clip)
        await until_ended(self.call, asyncio.shield(playback.done))

    def stop_playback(self) -> None:
        self.media.stop_playback()

    async def next_key(self) -> str:
        press: KeyPress = await until_ended(self.call, self.media.keys.get())
        self.keys_seen.append(press)
        return press.digit

    def listening(self, sink: AudioSink) -> AbstractContextManager[None]:
        return self.media.listening(sink)


class SipCallerLeg(_MediaLeg):
    """The caller's call, as both the AI agent and the transfer use it."""

    def __init__(self, call: Call, tts: TextToSpeech | None = None) -> None:
        super().__init__(call)
        self.tts = tts
        self.held = False
        self.bridged = False
        self.hold_playback: Playback | None = None
        self.hold_started_at: float | None = None
        self._last_hold: Playback | None = None
        self._phone_held = False  # this hold asked the caller's phone too (HoldAudio.reinvite)
        self._music: AudioClip | None = None  # the hold music loop (None: a silent hold)
        self._music_volume = 1.0
        self._music_from = 0  # where in the loop the current music playback began (samples)
        self._music_since = 0.0  # loop time it began
        self.prompts: list[Playback] = []  # the progress prompts played (for timelines)
        self.message_started = asyncio.Event()  # the caller's message is being recorded
        self.message_started_at: float | None = None  # loop time, just after the tone
        # Not held (set) / held (cleared): what an agent waits on while a transfer it did not
        # start (one started through the HTTP API) has the caller.
        self._not_held = asyncio.Event()
        self._not_held.set()
        self._held_now = asyncio.Event()
        #: Held by whoever runs a transfer on this call (its agent, or the HTTP API), from
        #: before its first await to its end: one transfer per call, never two hunting at once.
        self.transfer_lock = asyncio.Lock()

    # -- for the AI agent -------------------------------------------------------------------

    @property
    def ai_connected(self) -> bool:
        """The AI may speak and hear only when the caller is neither held nor handed over."""
        return not (self.held or self.bridged or self.hung_up)

    async def say(self, clip: AudioClip) -> None:
        """The AI speaks; returns when done. Refused while held or after the hand-over."""
        if not self.ai_connected:
            raise LegGone("the caller is not with the AI (held, transferred or gone)")
        await self.play(clip)

    async def wait_with_ai(self) -> None:
        """Until the caller is with the AI: at once if they are, else when a hold ends. Raises
        LegGone if they never will be again (handed over to a human, or gone)."""
        while True:
            if self.bridged or self.hung_up:
                raise LegGone("the caller is not with the AI any more (transferred or gone)")
            if not self.held:
                return
            await until_ended(self.call, self._not_held.wait())

    async def agent_key(self) -> str:
        """The caller's next key, for the AI. A key pressed while held is the transfer's (its
        * and # ), never the AI's: this waits out any hold, and gives up its place in the queue
        the moment a hold begins rather than take a key meant for the transfer."""
        while True:
            await self.wait_with_ai()
            key = asyncio.ensure_future(self.next_key())
            held = asyncio.ensure_future(self._held_now.wait())
            try:
                await asyncio.wait({key, held}, return_when=asyncio.FIRST_COMPLETED)
            finally:
                held.cancel()
                if not key.done():
                    key.cancel()
                    with contextlib.suppress(asyncio.CancelledError):
                        await key
            if key.done() and not key.cancelled():
                return key.result()

    def _set_held(self, held: bool) -> None:
        self.held = held
        if held:
            self._not_held.clear()
            self._held_now.set()
        else:
            self._held_now.clear()
            self._not_held.set()

    @contextlib.contextmanager
    def ai_listening(self, sink: Callable[[NDArray[np.int16]], None]) -> Iterator[None]:
        """The AI hears the caller through this gate, closed while held or handed over."""

        def gated(frame: NDArray[np.int16]) -> None:
            if self.ai_connected:
                sink(frame)

        with self.media.listening(gated):
            yield

    # -- for the transfer (CallerLeg port) --------------------------------------------------

    async def hold(self, audio: HoldAudio) -> None:
        self._set_held(True)
        self.media.stop_playback()
        self.media.clear_keys()
        loop = asyncio.get_running_loop()
        self.hold_started_at = loop.time()
        if audio.reinvite and not self._phone_held:
            self._phone_held = True
            self._tell_phone(hold=True)
        self._music = None
        if audio.silence:
            return
        self._music = _hold_clip(str(audio.source) if audio.source else None)
        self._music_volume = audio.volume
        if self.hung_up:
            raise LegGone(f"call {self.call.call_id} has ended")
        self._start_music(0)
        self._last_hold = self.hold_playback

    @property
    def _holding(self) -> bool:
        return self.held and not self.bridged and not self.hung_up

    def _start_music(self, position: int) -> None:
        """Loop the hold music from `position` (samples into the clip): a progress prompt
        pauses it, and it resumes where it paused, so a caller hears the whole loop even when
        prompts come more often than it repeats."""
        assert self._music is not None
        clip = self._music
        if position:
            clip = AudioClip(np.roll(clip.samples, -position), clip.rate)
        self.hold_playback = self.media.play(clip, loop=True, volume=self._music_volume)
        self._music_from = position
        self._music_since = asyncio.get_running_loop().time()

    def _pause_music(self) -> int | None:
        """Stop the hold music; return where it was (samples into the clip), None if there is
        no music (a silent hold). The player sends one frame at once, then one per tick."""
        playback, self.hold_playback = self.hold_playback, None
        if self._music is None or playback is None:
            return None
        playback.stop()
        started = playback.first_sent_at or self._music_since
        frames = 1 + int((asyncio.get_running_loop().time() - started) / 0.020)
        return (self._music_from + frames * FRAME) % max(1, len(self._music.samples))

    @property
    def hold_playback_first_sent(self) -> float | None:
        """When the first hold-music packet went out (loop time), for latency figures."""
        return self._last_hold.first_sent_at if self._last_hold is not None else None

    async def unhold(self) -> None:
        if self.hold_playback is not None:  # the music, or a progress prompt
            self.hold_playback.stop()
            self.hold_playback = None
        self.media.stop_playback()
        self.media.clear_keys()  # keys pressed on hold are the transfer's, never the AI's
        self._set_held(False)
        self.release_phone_hold()

    def release_phone_hold(self) -> None:
        """Take the caller's phone off hold if `hold` put it on hold (back to the AI, or joined
        with the human: either way the caller must send audio again)."""
        if self._phone_held:
            self._phone_held = False
            self._tell_phone(hold=False)

    def _tell_phone(self, *, hold: bool) -> None:
        """The re-INVITE runs in the background, owned by the user agent: the caller hears
        music (or the AI) at once whatever a slow trunk does, and a refusal costs only the
        phone's "on hold" display, so it is logged, never raised. The call's INVITE lock keeps
        a hold and the resume that follows it in order."""

        async def signal() -> None:
            try:
                await (self.call.hold() if hold else self.call.unhold())
            except CallFailed as exc:
                if self.hung_up:  # the caller left: nobody to tell, nothing went wrong
                    return
                what = "hold" if hold else "resume"
                log.warning("call %s: %s re-INVITE failed: %s", self.call.call_id, what, exc)

        self.call.ua.spawn(signal())

    async def play_message(self, text: str) -> None:
        """A fixed message from the transfer itself (e.g. before hanging up on failure)."""
        if self.tts is None:
            raise RuntimeError("this caller leg has no text-to-speech to speak a message with")
        if self.hold_playback is not None:
            self.hold_playback.stop()
            self.hold_playback = None
        clip = await self.tts.synthesize(text)
        with contextlib.suppress(LegGone):  # the caller hung up meanwhile: nobody to tell
            await self.play(clip)

    async def announce(self, text: str) -> None:
        """A progress prompt: the music pauses, `text` is spoken (the TTS caches the clip), the
        music resumes where it paused. While it plays the prompt is the hold audio
        (`hold_playback`), so unhold and the bridge stop it as they stop the music."""
        if not self._holding:
            return
        if self.tts is None:
            raise RuntimeError("this caller leg has no text-to-speech to speak a prompt with")
        clip = await self.tts.synthesize(text)
        if not self._holding:
            return  # given back, joined or gone while the prompt was rendered
        position = self._pause_music()
        prompt = self.media.play(clip)
        self.hold_playback = prompt
        self.prompts.append(prompt)
        try:
            await until_ended(self.call, asyncio.shield(prompt.done))
        except LegGone:
            pass
        finally:
            if self.hold_playback is prompt:  # nothing took over the hold audio meanwhile
                prompt.stop()
                self.hold_playback = None
                if self._holding and position is not None:
                    self._start_music(position)

    async def record_message(
        self,
        path: Path,
        *,
        prompt: str,
        max_seconds: float,
        stop_key: str,
        silence_seconds: float,
    ) -> Path | None:
        """The caller's message, from their audio as it arrives (a tap on the media: the AI's
        gate stays closed, and what we send, such as the tone, is not in it)."""
        if self.hung_up:
            return None
        if self.tts is None:
            raise RuntimeError("this caller leg has no text-to-speech to speak a prompt with")
        if self.hold_playback is not None:
            self.hold_playback.stop()
            self.hold_playback = None
        self.media.stop_playback()
        try:
            await self.play(await self.tts.synthesize(prompt))
            await self.play(_tone())
        except LegGone:
            return None
        self.media.clear_keys()  # a key pressed during the prompt does not end the message
        loop = asyncio.get_running_loop()
        frames: list[NDArray[np.int16]] = []
        last_sound = self.message_started_at = loop.time()
        self.message_started.set()

        def sink(frame: NDArray[np.int16]) -> None:
            nonlocal last_sound
            frames.append(frame.copy())
            if rms_dbfs(frame) >= _SOUND_DBFS:
                last_sound = loop.time()

        async def stop_key_pressed() -> None:
            while await self.next_key() != stop_key:
                pass

        # Silence is measured in time, not frames, so that a phone which stops sending RTP when
        # quiet counts as silent; the timer re-arms itself until the quiet has lasted.
        silent = asyncio.Event()
        timer: asyncio.TimerHandle

        def check_silence() -> None:
            nonlocal timer
            left = last_sound + silence_seconds - loop.time()
            if left <= 0:
                silent.set()
            else:
                timer = loop.call_later(left, check_silence)

        timer = loop.call_later(silence_seconds, check_silence)
        with self.media.listening(sink):
            ends = [
                asyncio.ensure_future(stop_key_pressed()),
                asyncio.ensure_future(silent.wait()),
                asyncio.ensure_future(self.call.ended.wait()),
            ]
            try:
                await asyncio.wait(ends, timeout=max_seconds, return_when=asyncio.FIRST_COMPLETED)
            finally:
                timer.cancel()
                for end in ends:
                    end.cancel()
                await asyncio.wait(ends)
                for end in ends:  # LegGone from next_key on a hang-up: the hang-up ends it
                    if not end.cancelled():
                        end.exception()
        samples = np.concatenate(frames) if frames else np.zeros(0, dtype=np.int16)
        _private_file(path)
        write_wav(path, samples, PHONE_RATE)
        return path

    async def hangup(self) -> None:
        await self.call.hangup()


class SipTargetLeg(_MediaLeg):
    def __init__(self, call: OutgoingCall, target: Target) -> None:
        super().__init__(call)
        self.target = target
        self.first_playback: Playback | None = None

    async def play(self, clip: AudioClip) -> None:
        playback = await self._play(clip)
        if self.first_playback is None:
            self.first_playback = playback
        await until_ended(self.call, asyncio.shield(playback.done))

    async def send_digits(self, digits: str) -> None:
        if digits:
            await until_ended(self.call, self.media.send_digits(digits))

    async def hangup(self) -> None:
        await self.call.hangup()


class SipDialer:
    def __init__(self, ua: UserAgent) -> None:
        self.ua = ua
        self.legs: list[SipTargetLeg] = []
        self.on_leg: Callable[[SipTargetLeg], None] | None = None

    async def dial(self, target: Target, on_ringing: Callable[[int], None]) -> SipTargetLeg:
        if target.uri.startswith("tel:"):
            raise DialFailed(
                Reason.UNREACHABLE, detail="tel: targets need a SIP trunk; none is set"
            )
        try:
            call = await self.ua.call(
                target.uri,
                caller_id=target.caller_id,
                asserted_identity=target.asserted_identity,
                diversion=target.diversion,
                headers=target.headers,
                on_ringing=on_ringing,  # the ring deadline is the driver's: it cancels us
            )
        except CallFailed as exc:
            raise DialFailed(
                reason_for_status(exc.status, ring_timeout=exc.cancelled),
                exc.status,
                exc.reason,
            ) from exc
        except OSError as exc:
            raise DialFailed(Reason.UNREACHABLE, detail=str(exc)) from exc
        leg = SipTargetLeg(call, target)
        self.legs.append(leg)
        if self.on_leg is not None:
            self.on_leg(leg)
        return leg


@dataclass
class BridgedCall:
    """Caller and human joined; lives until either hangs up, then ends the other."""

    caller: SipCallerLeg
    target: SipTargetLeg
    media: MediaBridge
    connected_at: float
    ended: asyncio.Event

    async def run(self) -> None:
        waits = [asyncio.ensure_future(leg.call.ended.wait()) for leg in (self.caller, self.target)]
        try:
            await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for wait in waits:
                wait.cancel()
            self.media.stop()
            await asyncio.gather(
                self.caller.call.hangup(), self.target.call.hangup(), return_exceptions=True
            )
            self.ended.set()


class SipBridge:
    def __init__(self, spawn: Callable[[Coroutine[Any, Any, Any]], None]) -> None:
        self._spawn = spawn
        self.active: list[BridgedCall] = []

    async def connect(self, caller: CallerLeg, target: TargetLeg) -> None:
        if not isinstance(caller, SipCallerLeg) or not isinstance(target, SipTargetLeg):
            raise BridgeFailed("the SIP bridge joins only legs of the SIP backend")
        if caller.hung_up or target.hung_up:
            raise BridgeFailed("a leg ended before it could be joined")
        if caller.hold_playback is not None:
            caller.hold_playback.stop()
            caller.hold_playback = None
        media = MediaBridge(caller.media, target.media)
        media.start()
        caller.bridged = True
        caller._set_held(False)  # wakes an agent waiting out the hold: it learns it is over
        caller.release_phone_hold()
        bridged = BridgedCall(
            caller, target, media, asyncio.get_running_loop().time(), asyncio.Event()
        )
        self.active.append(bridged)
        self._spawn(self._watch(bridged))

    async def _watch(self, bridged: BridgedCall) -> None:
        try:
            await bridged.run()
        finally:
            with contextlib.suppress(ValueError):
                self.active.remove(bridged)

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
from collections.abc import Callable, Coroutine, Iterator
from contextlib import AbstractContextManager
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import numpy as np
from numpy.typing import NDArray

from warmtransfer.consult.ports import AudioSink, LegGone
from warmtransfer.media.audio import AudioClip
from warmtransfer.media.bridge import MediaBridge
from warmtransfer.media.hold_music import hold_music
from warmtransfer.media.player import Playback
from warmtransfer.media.session import KeyPress, RtpSession
from warmtransfer.media.wav import read_wav
from warmtransfer.sip.call import Call, CallFailed, OutgoingCall
from warmtransfer.sip.useragent import UserAgent
from warmtransfer.speech.tts import TextToSpeech
from warmtransfer.transfer.outcome import BridgeFailed, DialFailed, Reason
from warmtransfer.transfer.plan import HoldAudio
from warmtransfer.transfer.ports import CallerLeg, TargetLeg
from warmtransfer.transfer.target import Target

log = logging.getLogger(__name__)


def reason_for_status(status: int | None, *, ring_timeout: bool = False) -> Reason:
    """Map a final SIP response to a failure reason an app can act on."""
    if ring_timeout:
        return Reason.NO_ANSWER
    if status is None:
        return Reason.UNREACHABLE
    if status in (486, 600):
        return Reason.BUSY
    if status == 603:
        return Reason.DECLINED
    if status in (480, 487):
        return Reason.NO_ANSWER
    if status in (404, 408, 410, 484, 502, 503, 504, 604):
        return Reason.UNREACHABLE
    return Reason.REJECTED


@lru_cache(maxsize=8)
def _hold_clip(source: str | None) -> AudioClip:
    return hold_music() if source is None else read_wav(source)


async def _until_ended(
    call: Call, awaitable: asyncio.Future[Any] | Coroutine[Any, Any, Any]
) -> Any:
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
        await _until_ended(self.call, asyncio.shield(playback.done))

    def stop_playback(self) -> None:
        self.media.stop_playback()

    async def next_key(self) -> str:
        press: KeyPress = await _until_ended(self.call, self.media.keys.get())
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
        self.held = True
        self.media.stop_playback()
        self.media.clear_keys()
        loop = asyncio.get_running_loop()
        self.hold_started_at = loop.time()
        if audio.reinvite and not self._phone_held:
            self._phone_held = True
            self._tell_phone(hold=True)
        if audio.silence:
            return
        clip = _hold_clip(str(audio.source) if audio.source else None)
        self.hold_playback = await self._play(clip, loop=True, volume=audio.volume)
        self._last_hold = self.hold_playback

    @property
    def hold_playback_first_sent(self) -> float | None:
        """When the first hold-music packet went out (loop time), for latency figures."""
        return self._last_hold.first_sent_at if self._last_hold is not None else None

    async def unhold(self) -> None:
        if self.hold_playback is not None:
            self.hold_playback.stop()
            self.hold_playback = None
        self.media.stop_playback()
        self.held = False
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
        await _until_ended(self.call, asyncio.shield(playback.done))

    async def send_digits(self, digits: str) -> None:
        if digits:
            await _until_ended(self.call, self.media.send_digits(digits))

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
        caller.held = False
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

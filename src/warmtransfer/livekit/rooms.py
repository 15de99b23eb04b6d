"""The LiveKit rooms backend of the transfer ports: caller leg, dialer, target leg and bridge.

How a transfer runs on LiveKit:

1. Hold: the AI session's audio input/output and transcription are disabled (the held caller
   cannot reach the AI, so cannot talk it into anything) and hold audio plays into the caller's
   room.
2. Each attempt gets its own consult space and a participant identity unique to the attempt
   (``human-<id>``), so several targets can ring at once and nothing clashes with a previous
   transfer in the same room. The human is dialled with ``CreateSIPParticipant`` and
   ``wait_until_answered``; a SIP failure becomes `DialFailed` with a `Reason` and the SIP
   status and phrase that LiveKit reports (``SipCallError``).
3. The consult agent session briefs the human there (`consult.py`); keys are the human's SIP
   DTMF in that room, and post-dial digits are published into that room, so they reach the
   human's leg, never the caller's.
4. Merge, in one of two modes (`MergeMode`):

   - ``move`` (LiveKit Cloud): the consult space is a room of its own
     (``<caller room>-consult-<id>``, created with ``CreateRoom``). On accept the human is moved
     into the caller's room with ``MoveParticipant``. Needs a server that implements
     MoveParticipant (LiveKit Cloud; the open-source server answers "unimplemented").
   - ``same_room`` (self-hosted): the human is dialled straight into the caller's room and the
     consult agent joins it under a second identity; ``UpdateSubscriptions`` keeps the caller
     and the human apart (each is unsubscribed from the other's tracks and from the consult
     agent's; the human from the hold audio) until the human accepts, when the caller and human
     are subscribed to each other. Needs only the standard RoomService API (any server). The
     server subscribes a new track before we can unsubscribe it, so the first few tens of
     milliseconds of a newly published track may be heard across: acceptable for hold music
     and a greeting, documented in ``docs/livekit.md``.

5. Release: every exit of an attempt (declined, failed dial, cancelled while ringing, caller
   gone, merged) disconnects our consult connection and deletes the consult room (``move``) or
   removes the human's participant (``same_room``). The driver's attempt scope calls
   `RoomTargetLeg.hangup` unless the bridge took the leg; the dialer releases the space itself
   when no leg came out of the dial.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import uuid
from collections.abc import Callable, Coroutine
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from typing import Any, Literal

import aiohttp
from livekit import api as lkapi

from warmtransfer.consult.ports import AudioSink, LegGone
from warmtransfer.livekit.ports import CallerRoom, RoomConnector, RoomLink
from warmtransfer.livekit.view import RoomChange, RoomView
from warmtransfer.media.audio import AudioClip
from warmtransfer.transfer.outcome import BridgeFailed, DialFailed, Reason, reason_for_status
from warmtransfer.transfer.plan import HoldAudio
from warmtransfer.transfer.ports import CallerLeg, TargetLeg
from warmtransfer.transfer.target import Target

log = logging.getLogger(__name__)

MergeMode = Literal["move", "same_room"]

#: A pause in post-dial digits (``w`` or ``,``), as in the reference and RFC 4733 dialling.
DIGIT_PAUSE = 0.5

_PLAIN_NUMBER = re.compile(r"^\+?[0-9*#]+$")


#: The participant attribute in which LiveKit SIP keeps a call's progress.
CALL_STATUS = "sip.callStatus"


def dial_failure(exc: BaseException) -> DialFailed:
    """What a failed ``CreateSIPParticipant`` means for the transfer."""
    if isinstance(exc, lkapi.SipCallError):
        status = exc.sip_status_code
        return DialFailed(
            # LiveKit reports a target that rang out as 408
            reason_for_status(status, ring_timeout=status == 408),
            status,
            exc.sip_status,
            detail=exc.message,
        )
    if isinstance(exc, lkapi.ServerError):
        # No SIP status: the request itself was refused (trunk unknown, permission, quota).
        return DialFailed(Reason.REJECTED, detail=f"LiveKit refused the dial: {exc}")
    return DialFailed(Reason.UNREACHABLE, detail=f"LiveKit API unreachable: {exc!r}")


def sip_call_to(uri: str) -> str:
    """A target URI as LiveKit's ``sip_call_to`` takes it: a tel: URI becomes its number, a SIP
    URI is passed whole (LiveKit dials its user part through the trunk)."""
    return uri[4:] if uri.startswith("tel:") else uri


def target_uri(sip_call_to: str) -> str:
    """The inverse, for the reference's ``sip_call_to``: a number is a tel: URI."""
    if sip_call_to.startswith(("sip:", "sips:", "tel:")):
        return sip_call_to
    if _PLAIN_NUMBER.match(sip_call_to):
        return f"tel:{sip_call_to}"
    return f"sip:{sip_call_to}"


@dataclass(frozen=True)
class SipOrigin:
    """How calls leave LiveKit: an outbound trunk id or an inline trunk, and the caller ID."""

    trunk_id: str | None = None
    connection: lkapi.SIPOutboundConfig | None = None
    number: str | None = None


# -- the caller ------------------------------------------------------------------------------


class RoomCallerLeg(CallerLeg):
    """The caller in their room; the AI hears and speaks to them only when not held."""

    def __init__(self, room: CallerRoom, api: lkapi.LiveKitAPI) -> None:
        self.room = room
        self.api = api
        self.held = False
        self.bridged = False
        self._audio: HoldAudio | None = None
        self._generation = 0  # bumped by everything that takes over the hold audio

    @property
    def identity(self) -> str:
        return self.room.caller_identity

    @property
    def hung_up(self) -> bool:
        return self.room.view.has_left(self.identity)

    async def wait_hangup(self) -> None:
        await self.room.view.wait_left(self.identity)

    @property
    def _holding(self) -> bool:
        return self.held and not self.bridged and not self.hung_up

    async def hold(self, audio: HoldAudio) -> None:
        self.held = True
        self._generation += 1
        self._audio = audio
        self.room.set_ai_io(False)  # first: from now on the AI hears nothing of the caller
        self.room.view.clear_dtmf(self.identity)
        if not audio.silence and not self.hung_up:
            await self.room.start_hold_audio(audio)

    async def unhold(self) -> None:
        self._generation += 1
        await self.room.stop_hold_audio()
        self.room.view.clear_dtmf(self.identity)  # keys pressed on hold are never the AI's
        self.held = False
        if not self.bridged:
            self.room.set_ai_io(True)

    async def end_hold_for_bridge(self) -> None:
        """The human is joined: hold audio stops, the AI stays out (its I/O stays disabled)."""
        self._generation += 1
        await self.room.stop_hold_audio()
        self.bridged = True
        self.held = False

    async def play_message(self, text: str) -> None:
        self._generation += 1
        await self.room.stop_hold_audio()
        if not self.hung_up:
            await self.room.say(text)

    async def announce(self, text: str) -> None:
        if not self._holding or self._audio is None:
            return
        self._generation += 1
        mine = self._generation
        await self.room.stop_hold_audio()
        try:
            await self.room.say(text)
        finally:
            if self._holding and self._generation == mine and not self._audio.silence:
                await self.room.start_hold_audio(self._audio)

    async def next_key(self) -> str:
        return await self.room.view.next_dtmf(self.identity)

    async def record_message(
        self,
        path: Any,
        *,
        prompt: str,
        max_seconds: float,
        stop_key: str,
        silence_seconds: float,
    ) -> Any:
        raise NotImplementedError(
            "the LiveKit rooms backend does not record messages (plans with "
            "caller_keys.can_leave_message are refused by WarmTransferTask)"
        )

    async def hangup(self) -> None:
        if self.hung_up:
            return
        with contextlib.suppress(lkapi.ServerError, aiohttp.ClientError):
            await self.api.room.remove_participant(
                lkapi.RoomParticipantIdentity(room=self.room.view.name, identity=self.identity)
            )


# -- the consult space and the human's leg ------------------------------------------------------


@dataclass
class ConsultSpace:
    """Where one attempt's human is briefed, and everything to release when it ends."""

    api: lkapi.LiveKitAPI
    mode: MergeMode
    room_name: str
    human: str
    agent_identity: str
    caller_view: RoomView
    link: RoomLink | None = None
    created_room: bool = False
    dialled: bool = False
    merged: bool = False
    released: bool = False
    _stop_isolating: Callable[[], None] | None = None
    _tasks: set[asyncio.Task[None]] = field(default_factory=set)

    async def open(self, connector: RoomConnector) -> RoomLink:
        if self.mode == "move":
            await self.api.room.create_room(
                lkapi.CreateRoomRequest(name=self.room_name, empty_timeout=60)
            )
            self.created_room = True
        self.link = await connector.connect(self.room_name, self.agent_identity)
        if self.mode == "same_room":
            self._stop_isolating = self.link.view.subscribe(self._isolate_new_track)
            for identity in self.link.view.identities():
                for sid in self.link.view.tracks(identity):
                    self._isolate_new_track(RoomChange("published", identity, sid))
        return self.link

    # same_room: keep caller and human apart until the merge
    def _isolate_new_track(self, change: RoomChange) -> None:
        if change.kind != "published" or self.merged or self.link is None:
            return
        view = self.link.view
        if change.identity in (self.human, self.agent_identity):
            # the human's voice and the consult agent's: nobody but the human and us hears them
            listeners = [
                p
                for p in view.identities()
                if p not in (self.human, self.agent_identity, self.caller_view.own_identity)
            ]
        else:
            # anything else (the caller, the hold music): not for the human's ears
            listeners = [self.human] if view.present(self.human) else []
        for listener in listeners:
            self._spawn(self._unsubscribe(listener, [change.value]))
        if change.identity == self.human:
            # the human's own subscriptions to what was published before they joined
            others = [
                sid
                for p in view.identities()
                if p not in (self.human, self.agent_identity)
                for sid in view.tracks(p)
            ]
            if others:
                self._spawn(self._unsubscribe(self.human, others))

    async def _unsubscribe(self, identity: str, sids: list[str]) -> None:
        await self._subscriptions(identity, sids, subscribe=False)

    async def _subscriptions(self, identity: str, sids: list[str], *, subscribe: bool) -> None:
        try:
            await self.api.room.update_subscriptions(
                lkapi.UpdateSubscriptionsRequest(
                    room=self.room_name, identity=identity, track_sids=sids, subscribe=subscribe
                )
            )
        except (lkapi.ServerError, aiohttp.ClientError) as exc:
            log.warning("UpdateSubscriptions %s %s failed: %s", identity, sids, exc)

    def _spawn(self, work: Coroutine[Any, Any, None]) -> None:
        task = asyncio.ensure_future(work)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def settle(self) -> None:
        """Wait for subscription updates in flight (the tests and the merge need them done)."""
        while self._tasks:
            await asyncio.gather(*list(self._tasks), return_exceptions=True)

    async def join(self, caller: str) -> None:
        """same_room merge: caller and human hear each other; nothing else changes."""
        self.merged = True
        if self._stop_isolating is not None:
            self._stop_isolating()
        await self.settle()
        assert self.link is not None
        view = self.link.view
        await self._subscriptions(caller, list(view.tracks(self.human)), subscribe=True)
        await self._subscriptions(self.human, list(view.tracks(caller)), subscribe=True)

    async def release(self, *, keep_human: bool = False) -> None:
        """Disconnect, delete the consult room or remove the human; idempotent, never raises
        (it runs on every exit, cancellation included)."""
        if self.released:
            return
        self.released = True
        if self._stop_isolating is not None:
            self._stop_isolating()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*list(self._tasks), return_exceptions=True)
        if self.link is not None:
            try:
                await self.link.aclose()
            except Exception:
                log.exception("disconnecting from %s failed", self.room_name)
        try:
            if self.mode == "move" and self.created_room:
                await self.api.room.delete_room(lkapi.DeleteRoomRequest(room=self.room_name))
            elif self.mode == "same_room" and self.dialled and not keep_human:
                await self.api.room.remove_participant(
                    lkapi.RoomParticipantIdentity(room=self.room_name, identity=self.human)
                )
        except (lkapi.ServerError, aiohttp.ClientError, TimeoutError) as exc:
            log.warning("releasing consult space %s: %s", self.room_name, exc)


class RoomTargetLeg(TargetLeg):
    """The human's SIP participant, first in the consult space, after a move in the caller's.

    While a move is in flight, the human leaving the consult room is the move, not a hang-up;
    after a failed move the consult room is watched again (reference defect: the close listener
    was detached before the move and never re-attached, so a later hang-up was never seen)."""

    def __init__(self, space: ConsultSpace, link: RoomLink, target: Target) -> None:
        self.space = space
        self.link = link
        self.target = target
        self.identity = space.human
        self.moving = False
        self.moved = False
        self._hung_up_by_us = False

    @property
    def hung_up(self) -> bool:
        if self._hung_up_by_us:
            return True
        if self.moved:
            return self.space.caller_view.has_left(self.identity)
        if self.moving:
            return False
        return self.link.view.has_left(self.identity)

    async def wait_hangup(self) -> None:
        while not self.hung_up:
            waits = [
                asyncio.ensure_future(self.link.view.wait_for(lambda: self.hung_up)),
                asyncio.ensure_future(self.space.caller_view.wait_for(lambda: self.hung_up)),
            ]
            try:
                await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
            finally:
                for wait in waits:
                    wait.cancel()
                await asyncio.gather(*waits, return_exceptions=True)

    async def _until_gone(self, work: Coroutine[Any, Any, Any]) -> Any:
        task = asyncio.ensure_future(work)
        gone = asyncio.ensure_future(self.wait_hangup())
        try:
            await asyncio.wait({task, gone}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            gone.cancel()
            if not task.done():
                task.cancel()
            await asyncio.gather(task, gone, return_exceptions=True)
        if task.done() and not task.cancelled():
            return task.result()
        raise LegGone(f"{self.identity} hung up")

    async def play(self, clip: AudioClip) -> None:
        if self.hung_up:
            raise LegGone(f"{self.identity} hung up")
        await self._until_gone(self.link.play(clip))

    def stop_playback(self) -> None:
        self.link.stop_playback()

    async def next_key(self) -> str:
        return await self.link.view.next_dtmf(self.identity)

    def listening(self, sink: AudioSink) -> AbstractContextManager[None]:
        return self.link.listening(self.identity, sink)

    async def send_digits(self, digits: str) -> None:
        """Into the consult space, where only the human's SIP leg is (reference defect: DTMF
        went to the caller)."""
        for digit in digits:
            if self.hung_up:
                raise LegGone(f"{self.identity} hung up")
            if digit in "w,":
                await asyncio.sleep(DIGIT_PAUSE)  # a pause is part of the dial string
            else:
                await self.link.send_dtmf(digit)

    async def hangup(self) -> None:
        self._hung_up_by_us = True
        await self.space.release()


# -- the dialer ---------------------------------------------------------------------------------


class RoomDialer:
    """One consult space and one unique identity per attempt; released on every failure."""

    def __init__(
        self,
        api: lkapi.LiveKitAPI,
        connector: RoomConnector,
        caller_view: RoomView,
        origin: SipOrigin,
        mode: MergeMode = "move",
    ) -> None:
        self.api = api
        self.connector = connector
        self.caller_view = caller_view
        self.origin = origin
        self.mode = mode
        self.spaces: list[ConsultSpace] = []

    def _space(self) -> ConsultSpace:
        suffix = uuid.uuid4().hex[:10]
        caller_room = self.caller_view.name
        room = f"{caller_room}-consult-{suffix}" if self.mode == "move" else caller_room
        space = ConsultSpace(
            api=self.api,
            mode=self.mode,
            room_name=room,
            human=f"human-{suffix}",
            agent_identity=f"consult-agent-{suffix}",
            caller_view=self.caller_view,
        )
        self.spaces.append(space)
        return space

    def request(self, target: Target, space: ConsultSpace) -> lkapi.CreateSIPParticipantRequest:
        request = lkapi.CreateSIPParticipantRequest(
            sip_call_to=sip_call_to(target.uri),
            room_name=space.room_name,
            participant_identity=space.human,
            participant_name=target.display_name or "",
            wait_until_answered=True,
            sip_number=target.caller_id or self.origin.number or "",
            headers=dict(target.headers),
        )
        if self.origin.trunk_id:
            request.sip_trunk_id = self.origin.trunk_id
        if self.origin.connection is not None:
            request.trunk.CopyFrom(self.origin.connection)
        # LiveKit gives up ringing on its own too; the driver's deadline still rules (it
        # cancels us first, and the release below ends the call).
        request.ringing_timeout.FromNanoseconds(int(target.ring_timeout * 1e9))
        return request

    async def dial(self, target: Target, on_ringing: Callable[[int], None]) -> RoomTargetLeg:
        space = self._space()
        stop_watching: Callable[[], None] | None = None
        try:
            link = await space.open(self.connector)
            stop_watching = watch_ringing(link.view, space.human, on_ringing)
            space.dialled = True
            await self.api.sip.create_sip_participant(self.request(target, space))
            leg = RoomTargetLeg(space, link, target)
            if link.view.has_left(space.human):
                raise DialFailed(Reason.TARGET_HUNG_UP, detail="hung up as soon as answered")
            return leg
        except BaseException as exc:
            # Cancelled (ring deadline, another target won, caller gone) or failed: nothing of
            # this attempt may outlive it. Deleting the room ends a call still ringing in it.
            await space.release()
            if isinstance(exc, DialFailed | asyncio.CancelledError):
                raise
            if isinstance(exc, lkapi.ServerError | aiohttp.ClientError | TimeoutError):
                raise dial_failure(exc) from exc
            raise
        finally:
            if stop_watching is not None:
                stop_watching()


def watch_ringing(
    view: RoomView, human: str, on_ringing: Callable[[int], None]
) -> Callable[[], None]:
    """Report ringing once, as a 180, when LiveKit marks the human's call ``ringing``.

    ``CreateSIPParticipant`` with ``wait_until_answered`` returns only at the answer, but the SIP
    participant is in the room while it dials, and its ``sip.callStatus`` attribute follows the
    call (dialing, ringing, active): that is the only provisional response LiveKit passes on.
    LiveKit does not say whether it was a 180 or a 183, so ringing is reported as 180."""
    rang = False

    def on_change(change: RoomChange) -> None:
        nonlocal rang
        if rang or change.identity != human or change.kind not in ("joined", "attributes"):
            return
        if view.attribute(human, CALL_STATUS) == "ringing":
            rang = True
            on_ringing(180)

    return view.subscribe(on_change)


# -- the bridge ---------------------------------------------------------------------------------


class RoomBridge:
    """Joins caller and human (`move` or `same_room`), then owns both: when either leaves, the
    caller's room is deleted, which ends the other's call too."""

    def __init__(self, api: lkapi.LiveKitAPI, mode: MergeMode = "move") -> None:
        self.api = api
        self.mode = mode
        self._tasks: set[asyncio.Task[None]] = set()
        self._stops: list[Callable[[], None]] = []
        self.joined: list[str] = []  # identities of the humans joined to their caller

    async def connect(self, caller: CallerLeg, target: TargetLeg) -> None:
        if not isinstance(caller, RoomCallerLeg) or not isinstance(target, RoomTargetLeg):
            raise BridgeFailed("the rooms bridge joins only legs of the rooms backend")
        if caller.hung_up or target.hung_up:
            raise BridgeFailed("a leg ended before it could be joined")
        space = target.space
        if self.mode == "move":
            target.moving = True
            try:
                await self.api.room.move_participant(
                    lkapi.MoveParticipantRequest(
                        room=space.room_name,
                        identity=target.identity,
                        destination_room=caller.room.view.name,
                    )
                )
            except (lkapi.ServerError, aiohttp.ClientError, TimeoutError) as exc:
                target.moving = False  # the consult room is watched again
                raise BridgeFailed(f"MoveParticipant failed: {exc}") from exc
            except BaseException:
                target.moving = False
                raise
            target.moved, target.moving = True, False
        else:
            await space.join(caller.identity)
            target.moved = True
        await caller.end_hold_for_bridge()
        await space.release(keep_human=True)
        self.joined.append(target.identity)
        self._own(caller, target)

    def _own(self, caller: RoomCallerLeg, target: RoomTargetLeg) -> None:
        view = caller.room.view

        def on_change(change: RoomChange) -> None:
            if change.kind in ("left", "closed") and change.identity in (
                "",
                caller.identity,
                target.identity,
            ):
                stop()
                self._spawn(self._end_call(view.name))

        stop = view.subscribe(on_change)
        self._stops.append(stop)

    async def _end_call(self, room: str) -> None:
        with contextlib.suppress(lkapi.ServerError, aiohttp.ClientError, TimeoutError):
            await self.api.room.delete_room(lkapi.DeleteRoomRequest(room=room))

    def _spawn(self, work: Coroutine[Any, Any, None]) -> None:
        task = asyncio.ensure_future(work)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def aclose(self) -> None:
        """Stop watching bridged calls and wait for any room deletion in flight (the task
        registers this on the job's shutdown)."""
        for stop in self._stops:
            stop()
        self._stops.clear()
        while self._tasks:
            await asyncio.gather(*list(self._tasks), return_exceptions=True)

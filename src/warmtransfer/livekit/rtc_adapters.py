"""The real adapters of `ports.py`: `rtc.Room` connections, audio tracks, the AI session's I/O,
background hold audio and the consult `AgentSession`. They need a LiveKit server; offline tests
cover them by construction and type only, and the ``livekit_server`` test runs them for real.

Each adapter keeps what it learns in a `RoomView` (fed from rtc events), the same class the
tests' fakes feed by hand, so the transfer logic sees one model of a room either way.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import AsyncIterator, Iterator
from typing import Any

import numpy as np
from livekit import api as lkapi
from livekit import rtc
from livekit.agents import Agent, AgentSession, room_io
from livekit.agents.voice.background_audio import (
    AudioConfig,
    BackgroundAudioPlayer,
    BuiltinAudioClip,
    PlayHandle,
)

from warmtransfer.consult.ports import AudioSink
from warmtransfer.livekit.ports import ConsultSession, RoomLink
from warmtransfer.livekit.view import RoomView
from warmtransfer.media.audio import PHONE_RATE, AudioClip
from warmtransfer.transfer.plan import HoldAudio

FRAME_SAMPLES = PHONE_RATE // 50  # 20 ms

#: Audio streams being closed after a `listening` block (kept referenced until closed).
_closing: set[asyncio.Task[None]] = set()


def _reason(reason: Any) -> str:
    try:
        return str(rtc.DisconnectReason.Name(reason))
    except (ValueError, TypeError):
        return str(reason)


def feed_view(room: rtc.Room, view: RoomView) -> None:
    """Keep `view` in step with `room` (present participants first, then every event)."""
    for participant in room.remote_participants.values():
        view.joined(participant.identity)
        view.attributes(participant.identity, participant.attributes)
        for sid in participant.track_publications:
            view.published(participant.identity, sid)

    def on_joined(participant: rtc.RemoteParticipant) -> None:
        view.joined(participant.identity)
        view.attributes(participant.identity, participant.attributes)

    def on_attributes(_changed: dict[str, str], participant: rtc.Participant) -> None:
        if participant.identity != view.own_identity:
            view.attributes(participant.identity, participant.attributes)

    def on_left(participant: rtc.RemoteParticipant) -> None:
        view.left(participant.identity, _reason(participant.disconnect_reason))

    def on_published(publication: rtc.RemoteTrackPublication, p: rtc.RemoteParticipant) -> None:
        view.published(p.identity, publication.sid)

    def on_unpublished(publication: rtc.RemoteTrackPublication, p: rtc.RemoteParticipant) -> None:
        view.unpublished(p.identity, publication.sid)

    def on_dtmf(event: rtc.SipDTMF) -> None:
        if event.participant is not None:
            view.dtmf(event.participant.identity, event.digit)

    def on_disconnected(reason: Any) -> None:
        view.closed(_reason(reason))

    room.on("participant_connected", on_joined)
    room.on("participant_disconnected", on_left)
    room.on("participant_attributes_changed", on_attributes)
    room.on("track_published", on_published)
    room.on("track_unpublished", on_unpublished)
    room.on("sip_dtmf_received", on_dtmf)
    room.on("disconnected", on_disconnected)


_DTMF_CODES = {**{str(d): d for d in range(10)}, "*": 10, "#": 11, "A": 12, "B": 13, "C": 14}
_DTMF_CODES["D"] = 15


class RtcRoomLink(RoomLink):
    """Our connection to a room over `rtc.Room`, with one audio track for our own voice."""

    def __init__(self, room: rtc.Room, view: RoomView) -> None:
        self.room = room
        self._view = view
        self._source: rtc.AudioSource | None = None
        self._stopped = asyncio.Event()

    @property
    def view(self) -> RoomView:
        return self._view

    async def _ensure_track(self) -> rtc.AudioSource:
        if self._source is None:
            self._source = rtc.AudioSource(PHONE_RATE, 1)
            track = rtc.LocalAudioTrack.create_audio_track("warmtransfer", self._source)
            await self.room.local_participant.publish_track(track)
        return self._source

    async def play(self, clip: AudioClip) -> None:
        source = await self._ensure_track()
        self._stopped.clear()
        samples = clip.samples
        if clip.rate != PHONE_RATE:
            import soxr  # the consult link speaks at phone rate, as the SIP legs do

            samples = soxr.resample(samples, clip.rate, PHONE_RATE).astype(np.int16)
        for start in range(0, len(samples), FRAME_SAMPLES):
            if self._stopped.is_set():
                source.clear_queue()
                return
            chunk = np.ascontiguousarray(samples[start : start + FRAME_SAMPLES], dtype=np.int16)
            frame = rtc.AudioFrame(chunk.tobytes(), PHONE_RATE, 1, len(chunk))
            await source.capture_frame(frame)  # paced by the source's buffer
        await source.wait_for_playout()

    def stop_playback(self) -> None:
        self._stopped.set()
        if self._source is not None:
            self._source.clear_queue()

    @contextlib.contextmanager
    def listening(self, identity: str, sink: AudioSink) -> Iterator[None]:
        participant = self.room.remote_participants.get(identity)
        if participant is None:
            yield
            return
        stream = rtc.AudioStream.from_participant(
            participant=participant,
            track_source=rtc.TrackSource.SOURCE_MICROPHONE,
            sample_rate=PHONE_RATE,
            num_channels=1,
            frame_size_ms=20,
        )

        async def pump() -> None:
            async for event in stream:
                sink(np.frombuffer(event.frame.data, dtype=np.int16).copy())

        task = asyncio.ensure_future(pump())
        try:
            yield
        finally:
            task.cancel()
            closing = asyncio.ensure_future(stream.aclose())  # a sync exit cannot await it
            _closing.add(closing)
            closing.add_done_callback(_closing.discard)

    async def send_dtmf(self, digit: str) -> None:
        await self.room.local_participant.publish_dtmf(code=_DTMF_CODES[digit], digit=digit)

    async def aclose(self) -> None:
        if self._source is not None:
            await self._source.aclose()
            self._source = None
        if self.room.isconnected():
            await self.room.disconnect()
        self._view.closed("CLIENT_INITIATED")


class RtcConnector:
    """Connects our agent to rooms with its own access tokens (LIVEKIT_API_KEY/SECRET)."""

    def __init__(self, url: str, api_key: str | None = None, api_secret: str | None = None) -> None:
        self.url = url
        self.api_key = api_key or os.environ.get("LIVEKIT_API_KEY", "")
        self.api_secret = api_secret or os.environ.get("LIVEKIT_API_SECRET", "")

    def token(self, room_name: str, identity: str) -> str:
        grants = lkapi.VideoGrants(
            room_join=True, room=room_name, can_publish=True, can_subscribe=True
        )
        return (
            lkapi.AccessToken(self.api_key, self.api_secret)
            .with_identity(identity)
            .with_kind("agent")
            .with_grants(grants)
            .to_jwt()
        )

    async def connect(self, room_name: str, identity: str) -> RtcRoomLink:
        room = rtc.Room()
        view = RoomView(room_name, identity)
        feed_view(room, view)
        await room.connect(self.url, self.token(room_name, identity))
        for participant in room.remote_participants.values():
            view.joined(participant.identity)
            for sid in participant.track_publications:
                view.published(participant.identity, sid)
        return RtcRoomLink(room, view)


class AgentCallerRoom:
    """The caller's room as the AI's `AgentSession` sees it (the job's room)."""

    def __init__(
        self,
        session: AgentSession[Any],
        room: rtc.Room,
        *,
        caller_identity: str,
        hold_audio: Any = None,
    ) -> None:
        self.session = session
        self.room = room
        self._caller_identity = caller_identity
        self._view = RoomView(room.name, room.local_participant.identity)
        feed_view(room, self._view)
        self._hold_audio = hold_audio  # the reference's AudioSource | AudioConfig | list
        self._player: BackgroundAudioPlayer | None = None
        self._handle: PlayHandle | None = None
        self._saved: dict[str, bool] = {}

    @property
    def view(self) -> RoomView:
        return self._view

    @property
    def caller_identity(self) -> str:
        return self._caller_identity

    def set_ai_io(self, enabled: bool) -> None:
        inp, out = self.session.input, self.session.output
        if not self._saved:
            self._saved = {
                "audio_in": inp.audio_enabled,
                "audio_out": out.audio_enabled,
                "text_out": out.transcription_enabled,
            }
        if inp.audio:
            inp.set_audio_enabled(enabled and self._saved["audio_in"])
        if out.audio:
            out.set_audio_enabled(enabled and self._saved["audio_out"])
        if out.transcription:
            out.set_transcription_enabled(enabled and self._saved["text_out"])

    async def start_hold_audio(self, audio: HoldAudio) -> None:
        if self._handle is not None:
            return
        config: Any = self._hold_audio
        if audio.source is not None:
            config = AudioConfig(str(audio.source), volume=audio.volume)
        elif config is None:
            config = AudioConfig(BuiltinAudioClip.HOLD_MUSIC, volume=audio.volume)
        if self._player is None:
            self._player = BackgroundAudioPlayer()
            await self._player.start(room=self.room)
        self._handle = self._player.play(config, loop=True)

    async def stop_hold_audio(self) -> None:
        handle, self._handle = self._handle, None
        if handle is not None:
            handle.stop()

    async def say(self, text: str) -> None:
        out = self.session.output
        was = out.audio_enabled
        if out.audio:
            out.set_audio_enabled(True)
        try:
            await self.session.say(text, allow_interruptions=False, add_to_chat_ctx=False)
        finally:
            if out.audio:
                out.set_audio_enabled(was)

    async def aclose(self) -> None:
        """Close the hold audio player (reference defect: it was never closed)."""
        await self.stop_hold_audio()
        player, self._player = self._player, None
        if player is not None:
            await player.aclose()


class _SessionSay(ConsultSession):
    def __init__(self, session: AgentSession[Any]) -> None:
        self.session = session

    async def say(self, text: str) -> None:
        await self.session.say(text, allow_interruptions=False)


class ConsultSessionFactory:
    """Starts the consult `AgentSession` with the task's (or the caller session's) models."""

    def __init__(self, **models: Any) -> None:
        self.models = models

    @contextlib.asynccontextmanager
    async def __call__(
        self, link: RoomLink, agent: Agent, human_identity: str
    ) -> AsyncIterator[ConsultSession]:
        if not isinstance(link, RtcRoomLink):
            raise TypeError("the consult session runs only on an rtc room link")
        session: AgentSession[Any] = AgentSession(**self.models)
        try:
            await session.start(
                agent=agent,
                room=link.room,
                room_options=room_io.RoomOptions(
                    participant_identity=human_identity,
                    close_on_disconnect=False,
                    delete_room_on_close=False,
                ),
                record=False,
            )
            yield _SessionSay(session)
        finally:
            await session.aclose()

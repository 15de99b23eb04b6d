"""The small ports between the rooms backend and LiveKit's realtime side (rtc rooms, tracks,
agent sessions). The server API (rooms, SIP, subscriptions) is *not* behind a port: it is
livekit-api's own `LiveKitAPI`, which the tests point at a local fake Twirp server.

Why these ports exist: connecting to a room, publishing audio and running an `AgentSession` in
a room need a real LiveKit server, which tests cannot have; everything else (when to dial, what
to release, when a leg has ended, how failures are typed) is this package's logic and must be
tested. Real adapters are in `rtc_adapters.py`; every one keeps its state in a `RoomView`, the
same class the tests' fakes use.
"""

from __future__ import annotations

from contextlib import AbstractAsyncContextManager, AbstractContextManager
from typing import TYPE_CHECKING, Protocol

from warmtransfer.consult.ports import AudioSink
from warmtransfer.media.audio import AudioClip
from warmtransfer.transfer.plan import HoldAudio

if TYPE_CHECKING:
    from livekit.agents import Agent

    from warmtransfer.livekit.view import RoomView


class RoomLink(Protocol):
    """Our own connection to one room (the consult room, or in same-room mode a second
    connection to the caller's room), under a participant identity unique to the attempt."""

    @property
    def view(self) -> RoomView: ...

    async def play(self, clip: AudioClip) -> None:
        """Publish `clip` into the room; return when played or stopped."""
        ...

    def stop_playback(self) -> None: ...

    def listening(self, identity: str, sink: AudioSink) -> AbstractContextManager[None]:
        """Inside the block, the audio `identity` publishes reaches `sink` (8 kHz frames)."""
        ...

    async def send_dtmf(self, digit: str) -> None:
        """One SIP DTMF digit into this room (to the human's SIP leg, never the caller's)."""
        ...

    async def aclose(self) -> None:
        """Disconnect; idempotent. Sets `view.closed`."""
        ...


class RoomConnector(Protocol):
    async def connect(self, room_name: str, identity: str) -> RoomLink: ...


class ConsultSession(Protocol):
    """A running agent session briefing the human."""

    async def say(self, text: str) -> None: ...


class SessionStarter(Protocol):
    """Starts the consult agent session in a room, linked to the human's participant; the
    session is shut down (drained of nothing, closed) when the context exits, on every path."""

    def __call__(
        self, link: RoomLink, agent: Agent, human_identity: str
    ) -> AbstractAsyncContextManager[ConsultSession]: ...


class CallerRoom(Protocol):
    """The caller's room as the transfer needs it: the AI agent's session I/O, hold audio, the
    caller's presence and keys. `view` is the caller's room as our main agent sees it."""

    @property
    def view(self) -> RoomView: ...

    @property
    def caller_identity(self) -> str: ...

    def set_ai_io(self, enabled: bool) -> None:
        """Disable (held) or restore the AI session's audio input/output and transcription."""
        ...

    async def start_hold_audio(self, audio: HoldAudio) -> None: ...

    async def stop_hold_audio(self) -> None: ...

    async def say(self, text: str) -> None:
        """The AI's voice to the caller (progress prompt, failure message); the caller's input
        stays disabled meanwhile."""
        ...

    async def aclose(self) -> None:
        """Release what the caller side acquired (the hold audio player); idempotent."""
        ...

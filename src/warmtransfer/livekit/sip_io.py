"""livekit-agents sessions on warmtransfer's own SIP calls: no LiveKit server, no room.

An `AgentSession` talks to the world through an `AudioInput` (frames it hears) and an
`AudioOutput` (frames it says). Here both are a SIP caller leg, so a user's livekit `Agent` runs
on calls the embedded engine answered, and the engine can still put the caller on hold and
warm-transfer them: the adapters go through the leg's AI gate (`SipCallerLeg.ai_listening`,
`ai_connected`), so while the caller is held or handed over the agent neither hears them nor
talks over the hold music, exactly as for any other AI on the leg.

- `AudioInputFromLeg` yields the caller's audio as `rtc.AudioFrame`s: 20 ms of 8 kHz mono int16
  per RTP packet, resampled with a soxr stream (no clicks at frame edges) if another rate is
  asked for.
- `AudioOutputToLeg` plays what the session says. Frames come faster than real time; the first
  ones of a segment start playing at once, and the rest are appended to the same open playback
  (`RtpSession.play(appendable=True)`) as they come, so a segment is heard without gaps however the
  TTS streams it (if the TTS falls behind real time, the caller hears silence until it catches
  up, as on any phone call). A session counts on `on_playback_started`
  and exactly one `on_playback_finished` per segment (else `wait_for_playout()` hangs), so every
  way a segment can end reports once: played out after `flush()`, cut by `clear_buffer()`
  (barge-in), or cut by the call (hold, hand-over, hang-up stops the leg's playback).
- `run_agent_on_call` / `agent_on_call` start a session on a call with these IOs and no room,
  with the cheap webrtcvad `VadAdapter` and VAD turn detection unless told otherwise (livekit's
  defaults load silero and a turn-detector model, ~250 MB), and close it when the caller hangs
  up, leaving nothing running.
- `SipBackend`: what `WarmTransferTask` needs to run on such a call (the engine, the caller's
  `SipCallerLeg`, the consultant). `run_agent_on_call` registers one for its session, so the
  task an agent awaits there transfers over SIP with no argument changed; `sip_backend(session)`
  finds it. When a transfer completes the caller is with the human: the backend's `hand_over`
  closes the session (the agent has left the call), as a hang-up does.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import weakref
from collections import deque
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from livekit import rtc
from livekit.agents import llm as lk_llm
from livekit.agents import stt as lk_stt
from livekit.agents import tts as lk_tts
from livekit.agents import vad as lk_vad
from livekit.agents.voice import Agent, AgentSession
from livekit.agents.voice.io import AudioInput, AudioOutput, AudioOutputCapabilities
from numpy.typing import NDArray

from warmtransfer.backends.sip import SipCallerLeg
from warmtransfer.consult.ports import Consultant
from warmtransfer.engine import Engine
from warmtransfer.livekit.plugins import VadAdapter, frame_samples
from warmtransfer.media.audio import PHONE_RATE, AudioClip
from warmtransfer.media.player import Playback
from warmtransfer.sip.call import Call
from warmtransfer.speech.pcm import StreamResampler

__all__ = [
    "AudioInputFromLeg",
    "AudioOutputToLeg",
    "SipBackend",
    "agent_on_call",
    "run_agent_on_call",
    "sip_backend",
]


class AudioInputFromLeg(AudioInput):
    """What the caller says, as the session hears it: frames at `sample_rate` (default the
    phone's 8 kHz), only while the leg's AI gate is open (not held, not handed over).

    It listens while attached to a session. At most `max_queued` seconds wait for a session
    that stopped reading (the oldest go first: an agent must hear what is said now); `close()`
    ends the iteration."""

    def __init__(
        self,
        leg: SipCallerLeg,
        *,
        sample_rate: int = PHONE_RATE,
        max_queued: float = 5.0,
        label: str = "warmtransfer.caller",
    ) -> None:
        if sample_rate <= 0:
            raise ValueError(f"sample rate must be positive, not {sample_rate}")
        super().__init__(label=label)
        self.leg = leg
        self.sample_rate = sample_rate
        self._frames: asyncio.Queue[rtc.AudioFrame | None] = asyncio.Queue()
        self._max_frames = max(1, round(max_queued * 50))  # 20 ms RTP frames
        self._gate: contextlib.ExitStack | None = None
        self._resampler = StreamResampler(sample_rate) if sample_rate != PHONE_RATE else None
        self.closed = False

    @property
    def listening(self) -> bool:
        return self._gate is not None

    def on_attached(self) -> None:
        if self.closed or self._gate is not None:
            return
        gate = contextlib.ExitStack()
        gate.enter_context(self.leg.ai_listening(self._hear))
        self._gate = gate

    def on_detached(self) -> None:
        gate, self._gate = self._gate, None
        if gate is not None:
            gate.close()

    def close(self) -> None:
        """Stop listening; the session's reading loop ends after the frames already queued."""
        if self.closed:
            return
        self.closed = True
        self.on_detached()
        self._frames.put_nowait(None)

    def _hear(self, samples: NDArray[np.int16]) -> None:
        if self._resampler is not None:
            samples = self._resampler.feed(samples, PHONE_RATE)
            if not len(samples):
                return
        frame = rtc.AudioFrame(samples.tobytes(), self.sample_rate, 1, len(samples))
        while self._frames.qsize() >= self._max_frames:
            self._frames.get_nowait()
        self._frames.put_nowait(frame)

    async def __anext__(self) -> rtc.AudioFrame:
        if self.closed and self._frames.empty():
            raise StopAsyncIteration
        frame = await self._frames.get()
        if frame is None:
            raise StopAsyncIteration
        return frame


@dataclass(eq=False)
class _Segment:
    """One segment of agent speech (from its first frame to `flush()`), as it plays out."""

    resampler: StreamResampler = field(default_factory=lambda: StreamResampler(PHONE_RATE))
    pending: list[NDArray[np.int16]] = field(default_factory=list)  # captured before it plays
    playback: Playback | None = None  # an open playback while frames still come
    flushed: bool = False
    finished: bool = False


class AudioOutputToLeg(AudioOutput):
    """The session's speech, played on the caller's leg as it comes (8 kHz mono; the session
    resamples its TTS output to `sample_rate` before it gets here).

    `playback_log` keeps every finished event `(playback_position, interrupted)` in order, for
    whoever wants to see what the caller actually heard."""

    def __init__(self, leg: SipCallerLeg, *, label: str = "warmtransfer.caller") -> None:
        super().__init__(
            label=label,
            capabilities=AudioOutputCapabilities(pause=False),
            sample_rate=PHONE_RATE,
        )
        self.leg = leg
        self._segments: deque[_Segment] = deque()  # oldest plays; the newest may be capturing
        self.playback_log: list[tuple[float, bool]] = []

    # -- AudioOutput ------------------------------------------------------------------------

    async def capture_frame(self, frame: rtc.AudioFrame) -> None:
        await super().capture_frame(frame)
        segment = self._capturing()
        if segment is None:
            segment = _Segment()
            self._segments.append(segment)
        if segment.finished:
            return  # cleared or cut before its flush: the rest of it is never played
        samples = segment.resampler.feed(frame_samples(frame), frame.sample_rate)
        if len(samples):
            self._queue(segment, samples)
        self._pump()

    def flush(self) -> None:
        super().flush()
        segment = self._capturing()
        if segment is None:
            return  # nothing was captured since the last flush: no segment to end
        segment.flushed = True
        tail = segment.resampler.flush()
        if not segment.finished:
            if len(tail):
                self._queue(segment, tail)
            if segment.playback is not None:
                segment.playback.close()  # ends once what it holds has played
        self._pump()

    def clear_buffer(self) -> None:
        """Stop at once (barge-in): every segment not yet finished ends as interrupted."""
        for segment in list(self._segments):
            if not segment.finished:
                position = self._position(segment)
                if segment.playback is not None:
                    segment.playback.stop()  # the leg sends silence from its next tick
                self._finish(segment, position, interrupted=True)
        self._pump()

    # -- playing ----------------------------------------------------------------------------

    def _capturing(self) -> _Segment | None:
        if self._segments and not self._segments[-1].flushed:
            return self._segments[-1]
        return None

    @staticmethod
    def _queue(segment: _Segment, samples: NDArray[np.int16]) -> None:
        if segment.playback is not None:
            segment.playback.append(samples)  # no gap: it joins the clip already playing
        else:
            segment.pending.append(samples)

    def _pump(self) -> None:
        """Move the oldest segment on: start it playing, or report it finished."""
        while self._segments:
            segment = self._segments[0]
            if segment.finished:
                if not segment.flushed:
                    return  # still capturing (its frames are dropped) until its flush
                self._segments.popleft()
                continue
            if segment.playback is not None:
                return  # its end moves it on
            if segment.pending:
                if not self.leg.ai_connected:  # held, handed over or gone: the agent is mute
                    self._finish(segment, 0.0, interrupted=True)
                    continue
                self._play(segment)
                return
            if not segment.flushed:
                return  # waiting for its first frames
            self._finish(segment, 0.0, interrupted=False)  # flushed with nothing in it

    def _play(self, segment: _Segment) -> None:
        """One open playback per segment: frames that come while it plays are appended to it,
        so the caller hears the segment without a gap wherever the TTS fell behind."""
        samples = np.concatenate(segment.pending)
        segment.pending = []
        playback = self.leg.media.play(AudioClip(samples, PHONE_RATE), appendable=True)
        segment.playback = playback
        if segment.flushed:
            playback.close()
        self.on_playback_started(created_at=time.time())
        playback.done.add_done_callback(lambda _: self._clip_ended(segment, playback))

    def _clip_ended(self, segment: _Segment, playback: Playback) -> None:
        if segment.finished or segment.playback is not playback:
            return  # cleared already
        # Stopped by someone else (a hold, the bridge, the hang-up, another clip): cut short.
        self._finish(segment, playback.sent_seconds, interrupted=playback.stopped)
        self._pump()

    @staticmethod
    def _position(segment: _Segment) -> float:
        """Seconds of the segment the caller has heard so far."""
        return 0.0 if segment.playback is None else segment.playback.sent_seconds

    def _finish(self, segment: _Segment, position: float, *, interrupted: bool) -> None:
        segment.finished = True
        segment.pending = []
        segment.playback = None
        self.playback_log.append((position, interrupted))
        self.on_playback_finished(playback_position=position, interrupted=interrupted)


# -- sessions on calls ------------------------------------------------------------------------


@dataclass
class SipBackend:
    """What `WarmTransferTask` runs on when its agent is on a call of the embedded engine: the
    engine's dialer and bridge, this call's caller leg, and the consultant (default: the
    engine's). `hand_over` is called once the caller and the human are joined."""

    engine: Engine
    caller: SipCallerLeg
    consultant: Consultant | None = None
    hand_over: Callable[[], None] | None = None


#: The SIP backend of each session started by `run_agent_on_call` / `agent_on_call`.
_BACKENDS: weakref.WeakKeyDictionary[AgentSession[Any], SipBackend] = weakref.WeakKeyDictionary()


def sip_backend(session: AgentSession[Any]) -> SipBackend | None:
    """The SIP backend of a session running on an engine's call, None for any other session."""
    return _BACKENDS.get(session)


def _session(
    stt: lk_stt.STT[Any] | None,
    tts: lk_tts.TTS[Any] | None,
    llm: lk_llm.LLM[Any] | None,
    vad: lk_vad.VAD | None,
    options: dict[str, Any],
) -> AgentSession[Any]:
    """A session that loads no local model: our VAD unless one is given, VAD turn detection
    and VAD interruption unless `turn_handling` says otherwise, no false-interruption resume
    (it needs a pausable output)."""
    options = dict(options)
    options.setdefault(
        "turn_handling",
        {
            "turn_detection": "vad",
            "interruption": {"mode": "vad", "resume_false_interruption": False},
        },
    )
    for name, model in (("stt", stt), ("tts", tts), ("llm", llm)):
        if model is not None:
            options[name] = model
    options["vad"] = vad if vad is not None else VadAdapter()
    session: AgentSession[Any] = AgentSession(**options)
    return session


class AgentOnCall:
    """A livekit session wired to one caller leg, and what it takes to close it cleanly."""

    def __init__(
        self,
        leg: SipCallerLeg,
        session: AgentSession[Any],
        engine: Engine | None = None,
        consultant: Consultant | None = None,
    ) -> None:
        self.leg = leg
        self.session = session
        self.audio_input = AudioInputFromLeg(leg)
        self.audio_output = AudioOutputToLeg(leg)
        self._session_closed = asyncio.Event()
        self._handed_over = asyncio.Event()
        self._closed = False
        if engine is not None:
            _BACKENDS[session] = SipBackend(engine, leg, consultant, self.hand_over)

    @property
    def handed_over(self) -> bool:
        """A transfer joined the caller with a human: the agent has left (or is leaving)."""
        return self._handed_over.is_set()

    def hand_over(self) -> None:
        """The caller is with a human now: the watcher closes the session."""
        self._handed_over.set()

    async def start(self, agent: Agent) -> None:
        self.session.on("close", self._on_session_close)
        self.session.input.audio = self.audio_input
        self.session.output.audio = self.audio_output
        try:
            await self.session.start(agent, record=False)  # no room: see the module docstring
        except BaseException:
            await self.close()
            raise

    def _on_session_close(self, _event: object) -> None:
        self._session_closed.set()

    async def watch(self) -> None:
        """Until the caller hangs up, is handed over to a human, or the session closes by
        itself; then close it."""
        waits = [
            asyncio.ensure_future(self.leg.wait_hangup()),
            asyncio.ensure_future(self._session_closed.wait()),
            asyncio.ensure_future(self._handed_over.wait()),
        ]
        try:
            await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for wait in waits:
                wait.cancel()
            await asyncio.gather(*waits, return_exceptions=True)
            await self.close()

    async def close(self) -> None:
        """Stop hearing and speaking on the leg, then close the session (idempotent). The call
        itself is left as it is: hanging up or transferring it is the app's decision."""
        if self._closed:
            return
        self._closed = True
        self.audio_input.close()
        self.audio_output.clear_buffer()
        try:
            await self.session.aclose()
        finally:
            self.session.off("close", self._on_session_close)
            _BACKENDS.pop(self.session, None)


async def _start(
    engine: Engine,
    call: Call | SipCallerLeg,
    agent: Agent,
    stt: lk_stt.STT[Any] | None,
    tts: lk_tts.TTS[Any] | None,
    llm: lk_llm.LLM[Any] | None,
    vad: lk_vad.VAD | None,
    consultant: Consultant | None,
    options: dict[str, Any],
) -> AgentOnCall:
    leg = call if isinstance(call, SipCallerLeg) else engine.caller_leg(call)
    running = AgentOnCall(leg, _session(stt, tts, llm, vad, options), engine, consultant)
    await running.start(agent)
    return running


async def run_agent_on_call(
    engine: Engine,
    call: Call | SipCallerLeg,
    agent: Agent,
    *,
    stt: lk_stt.STT[Any] | None,
    tts: lk_tts.TTS[Any] | None,
    llm: lk_llm.LLM[Any] | None,
    vad: lk_vad.VAD | None = None,
    consultant: Consultant | None = None,
    **session_options: Any,
) -> AgentSession[Any]:
    """Run `agent` on an answered call; the session closes itself when the caller hangs up.

    `call` may be the `Call` or its `SipCallerLeg`: the engine has one leg per call
    (`engine.caller_leg`), so a hold by any transfer on it mutes this agent. The hang-up
    watcher is one of the engine's tasks: `engine.close()` also closes the session.
    `session_options` go to `AgentSession` (e.g. `turn_handling`, `userdata`).

    A `WarmTransferTask` the agent awaits runs on this call's SIP ports (`SipBackend`): the
    engine dials and bridges, `consultant` (default: the engine's) briefs the human. Once a
    transfer has joined the caller and the human, the session closes: the agent has left."""
    running = await _start(engine, call, agent, stt, tts, llm, vad, consultant, session_options)
    engine.spawn(running.watch())
    return running.session


@contextlib.asynccontextmanager
async def agent_on_call(
    engine: Engine,
    call: Call | SipCallerLeg,
    agent: Agent,
    *,
    stt: lk_stt.STT[Any] | None,
    tts: lk_tts.TTS[Any] | None,
    llm: lk_llm.LLM[Any] | None,
    vad: lk_vad.VAD | None = None,
    consultant: Consultant | None = None,
    **session_options: Any,
) -> AsyncIterator[AgentOnCall]:
    """`run_agent_on_call` as a scope: the session is closed when the caller hangs up, is handed
    over to a human, or the block exits, whichever is first; its watcher has ended when the
    block is left."""
    running = await _start(engine, call, agent, stt, tts, llm, vad, consultant, session_options)
    watcher = asyncio.ensure_future(running.watch())
    try:
        yield running
    finally:
        watcher.cancel()
        await asyncio.gather(watcher, return_exceptions=True)
        await running.close()

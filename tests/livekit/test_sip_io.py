"""The livekit AudioInput/AudioOutput over a real SIP call: two warmtransfer user agents on
loopback, real RTP between them; the phone's side listens to what the caller leg plays."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field

import numpy as np
import pytest
from livekit import rtc
from livekit.agents.voice.io import PlaybackFinishedEvent
from numpy.typing import NDArray

from tests.calls import answered_call
from warmtransfer.backends.sip import SipCallerLeg
from warmtransfer.livekit.sip_io import AudioInputFromLeg, AudioOutputToLeg
from warmtransfer.media.audio import AudioClip
from warmtransfer.media.levels import rms_dbfs
from warmtransfer.sip.call import Call
from warmtransfer.transfer.plan import HoldAudio

LOUD = -30.0  # dBFS: a 20 ms frame of the test tone is far above, silence far below


def tone(seconds: float, rate: int = 8000, freq: float = 700.0) -> AudioClip:
    t = np.arange(round(seconds * rate)) / rate
    return AudioClip(np.round(0.3 * 32767 * np.sin(2 * np.pi * freq * t)).astype(np.int16), rate)


def frames_of(clip: AudioClip, seconds: float = 0.2) -> list[rtc.AudioFrame]:
    size = round(clip.rate * seconds)
    return [
        rtc.AudioFrame(
            clip.samples[i : i + size].tobytes(), clip.rate, 1, len(clip.samples[i : i + size])
        )
        for i in range(0, len(clip.samples), size)
    ]


@dataclass
class Ear:
    """What the phone hears, frame by frame; waits for a number of loud or quiet frames."""

    frames: list[NDArray[np.int16]] = field(default_factory=list)
    changed: asyncio.Event = field(default_factory=asyncio.Event)

    def __call__(self, frame: NDArray[np.int16]) -> None:
        self.frames.append(frame.copy())
        self.changed.set()

    def loud(self, since: int = 0) -> int:
        return sum(rms_dbfs(f) > LOUD for f in self.frames[since:])

    async def until(self, check: Callable[[], bool], timeout: float = 5.0) -> None:
        async with asyncio.timeout(timeout):
            while not check():
                self.changed.clear()
                await self.changed.wait()


@dataclass
class Line:
    leg: SipCallerLeg
    phone: Call
    ear: Ear


@pytest.fixture
async def line() -> AsyncIterator[Line]:
    async with answered_call() as (incoming, phone):
        ear = Ear()
        with phone.media.listening(ear):
            yield Line(SipCallerLeg(incoming), phone, ear)


def recorded(out: AudioOutputToLeg) -> tuple[list[float], list[PlaybackFinishedEvent]]:
    started: list[float] = []
    finished: list[PlaybackFinishedEvent] = []
    out.on("playback_started", lambda ev: started.append(ev.created_at))
    out.on("playback_finished", finished.append)
    return started, finished


async def say(out: AudioOutputToLeg, clip: AudioClip) -> None:
    for frame in frames_of(clip):
        await out.capture_frame(frame)
    out.flush()


async def playout(out: AudioOutputToLeg) -> PlaybackFinishedEvent:
    async with asyncio.timeout(10):
        return await out.wait_for_playout()


async def test_a_segment_plays_on_the_leg_and_finishes_once(line: Line) -> None:
    out = AudioOutputToLeg(line.leg)
    started, finished = recorded(out)
    await say(out, tone(0.6))
    assert len(started) == 1  # the first frame is playing already
    event = await playout(out)
    assert not event.interrupted
    assert abs(event.playback_position - 0.6) < 0.03, event.playback_position
    await line.ear.until(lambda: line.ear.loud() >= 28)
    assert len(started) == 1
    assert len(finished) == 1
    assert out.playback_log == [(event.playback_position, False)]


async def test_a_segment_at_another_rate_is_resampled_to_the_phone(line: Line) -> None:
    out = AudioOutputToLeg(line.leg)
    _, finished = recorded(out)
    await say(out, tone(0.4, rate=24000))
    event = await playout(out)
    assert abs(event.playback_position - 0.4) < 0.03
    await line.ear.until(lambda: line.ear.loud() >= 18)
    assert len(finished) == 1


async def test_segments_in_a_row_each_finish_once_in_order(line: Line) -> None:
    out = AudioOutputToLeg(line.leg)
    started, finished = recorded(out)
    await say(out, tone(0.3))
    await say(out, tone(0.5, freq=900.0))
    await playout(out)
    assert len(started) == 2
    assert [round(e.playback_position, 1) for e in finished] == [0.3, 0.5]
    assert not any(e.interrupted for e in finished)


async def test_a_segment_streamed_in_pieces_is_heard_without_a_gap(line: Line) -> None:
    """The TTS sends a segment in pieces: the first starts playing, the rest arrive while it
    plays. The phone hears one unbroken tone (before, each piece was its own clip and a tick
    of silence fell between them)."""
    out = AudioOutputToLeg(line.leg)
    started, finished = recorded(out)
    frames = frames_of(tone(1.2), seconds=0.1)
    await out.capture_frame(frames[0])
    await out.capture_frame(frames[1])
    await line.ear.until(lambda: line.ear.loud() >= 3)  # playing, 140 ms of it still to go
    for frame in frames[2:]:
        await out.capture_frame(frame)
    out.flush()
    event = await playout(out)
    assert not event.interrupted
    assert abs(event.playback_position - 1.2) < 0.03, event.playback_position
    assert len(started) == 1 and len(finished) == 1
    await line.ear.until(lambda: line.ear.loud() >= 58)
    loud = [rms_dbfs(f) > LOUD for f in line.ear.frames]
    first, last = loud.index(True), len(loud) - 1 - loud[::-1].index(True)
    assert all(loud[first : last + 1]), [i for i in range(first, last + 1) if not loud[i]]


async def test_clear_buffer_stops_at_once_and_reports_interrupted(line: Line) -> None:
    out = AudioOutputToLeg(line.leg)
    _, finished = recorded(out)
    await say(out, tone(3.0))
    await line.ear.until(lambda: line.ear.loud() >= 10)
    out.clear_buffer()
    cleared_at = len(line.ear.frames)
    event = await playout(out)
    assert event.interrupted
    assert 0.15 < event.playback_position < 1.5, event.playback_position
    # the phone hears silence from the next tick on (a packet or two may be in flight)
    await line.ear.until(lambda: len(line.ear.frames) >= cleared_at + 15)
    assert line.ear.loud(since=cleared_at + 3) == 0
    out.flush()  # a flush after the clear does not end the segment a second time
    out.clear_buffer()
    assert len(finished) == 1


async def test_clear_buffer_before_the_flush_drops_the_rest_of_the_segment(line: Line) -> None:
    """As livekit does when a reply is cancelled while its audio is still coming."""
    out = AudioOutputToLeg(line.leg)
    _, finished = recorded(out)
    frames = frames_of(tone(2.0))
    await out.capture_frame(frames[0])
    out.clear_buffer()
    for frame in frames[1:]:
        await out.capture_frame(frame)
    out.flush()
    event = await playout(out)
    assert event.interrupted
    assert event.playback_position <= 0.2
    assert len(finished) == 1
    assert not line.leg.media.playing


async def test_hold_cuts_the_agent_off_and_mutes_it(line: Line) -> None:
    out = AudioOutputToLeg(line.leg)
    _, finished = recorded(out)
    await say(out, tone(3.0))
    await line.ear.until(lambda: line.ear.loud() >= 5)
    await line.leg.hold(HoldAudio(silence=True, reinvite=False))
    event = await playout(out)
    assert event.interrupted
    assert event.playback_position < 1.5
    held_at = len(line.ear.frames)
    # while held the agent cannot speak: its next segment ends at once, unheard
    await say(out, tone(1.0))
    event = await playout(out)
    assert event.interrupted
    assert event.playback_position == 0.0
    assert not line.leg.media.playing
    await line.ear.until(lambda: len(line.ear.frames) >= held_at + 15)
    assert line.ear.loud(since=held_at + 3) == 0
    assert len(finished) == 2


async def test_hang_up_ends_the_segment_playing(line: Line) -> None:
    out = AudioOutputToLeg(line.leg)
    await say(out, tone(3.0))
    await line.ear.until(lambda: line.ear.loud() >= 5)
    await line.phone.hangup()
    event = await playout(out)
    assert event.interrupted
    assert out.playback_log == [(event.playback_position, True)]


@pytest.mark.parametrize("rate", [8000, 16000])
async def test_input_gives_the_caller_audio_as_frames(line: Line, rate: int) -> None:
    audio_in = AudioInputFromLeg(line.leg, sample_rate=rate)
    audio_in.on_attached()
    assert audio_in.listening
    line.phone.media.play(tone(1.0))
    loud = 0
    async with asyncio.timeout(5):
        async for frame in audio_in:
            assert frame.sample_rate == rate
            assert frame.num_channels == 1
            if rms_dbfs(np.frombuffer(frame.data, dtype=np.int16)) > LOUD:
                loud += 1
            if loud >= 10:
                break
    audio_in.close()
    assert not audio_in.listening
    rest = [frame async for frame in audio_in]  # close ends the iteration
    assert len(rest) < 60


async def test_input_hears_nothing_while_the_caller_is_held(line: Line) -> None:
    audio_in = AudioInputFromLeg(line.leg)
    audio_in.on_attached()
    await line.leg.hold(HoldAudio(silence=True, reinvite=False))
    tap = Ear()  # after the input's sink: when it has heard a frame, so has the input
    with line.leg.media.listening(tap):
        line.phone.media.play(tone(1.0))
        await tap.until(lambda: tap.loud() >= 15)
    audio_in.close()
    heard = [frame async for frame in audio_in]
    assert heard == []
    # and the gate opens again with the hold
    await line.leg.unhold()
    audio_in = AudioInputFromLeg(line.leg)
    audio_in.on_attached()
    line.phone.media.play(tone(1.0))
    async with asyncio.timeout(5):
        frame = await anext(audio_in)
    assert frame.samples_per_channel == 160
    audio_in.close()


async def test_detached_input_stops_listening(line: Line) -> None:
    audio_in = AudioInputFromLeg(line.leg)
    audio_in.on_attached()
    audio_in.on_detached()
    assert not audio_in.listening
    tap = Ear()
    with line.leg.media.listening(tap):
        line.phone.media.play(tone(0.5))
        await tap.until(lambda: tap.loud() >= 10)
    audio_in.close()
    assert [frame async for frame in audio_in] == []

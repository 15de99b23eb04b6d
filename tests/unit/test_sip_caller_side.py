"""The SIP caller leg's side of a hold: progress prompts, keys, and the caller's message.

The caller's media is a real RtpSession on loopback, paired with a second session playing the
caller's phone (it hears what we send, sends audio and RFC 4733 keys); only the SIP call around
it is a stand-in, since none of this touches signalling. Synchronisation is on decoded frames
arriving (the pacing clock's real ticks) and on the leg's events, always under a deadline.
"""

from __future__ import annotations

import asyncio
import wave
from collections.abc import AsyncIterator
from pathlib import Path
from typing import cast

import numpy as np
import pytest
from numpy.typing import NDArray

from tests.unit.test_media_session import PCMU, Frames, Net, dominant_hz, sine
from warmtransfer.backends.sip import SipCallerLeg
from warmtransfer.media.audio import AudioClip
from warmtransfer.media.clock import PacingClock
from warmtransfer.media.session import KeyPress, RtpSession
from warmtransfer.media.wav import write_wav
from warmtransfer.sip.call import Call
from warmtransfer.transfer.plan import HoldAudio

RATE = 8000
DEADLINE = 5.0
PROMPT = sine(700.0, 0.3)  # what the stand-in text-to-speech says, whatever the text


class StandInCall:
    """What SipCallerLeg uses of a call: its media, whether it ended, and hanging it up."""

    def __init__(self, media: RtpSession) -> None:
        self.media = media
        self.ended = asyncio.Event()
        self.call_id = "call-1"

    async def hangup(self) -> None:
        self.ended.set()


class StandInTTS:
    """Says PROMPT for any text; counts the texts it was asked for."""

    def __init__(self) -> None:
        self.texts: list[str] = []
        self.asked = asyncio.Event()  # set in the step that goes on to play the clip

    async def synthesize(self, text: str, rate: int = RATE) -> AudioClip:
        self.texts.append(text)
        self.asked.set()
        return PROMPT


@pytest.fixture
async def net() -> AsyncIterator[Net]:
    net = Net(PacingClock())
    try:
        yield net
    finally:
        await net.aclose()


async def held_leg(
    net: Net, audio: HoldAudio | None = None
) -> tuple[SipCallerLeg, RtpSession, StandInTTS, Frames]:
    """A caller leg (on hold when `audio` is given) and the caller's phone, which hears it."""
    ours, phone = await net.pair(PCMU)
    tts = StandInTTS()
    leg = SipCallerLeg(cast(Call, StandInCall(ours)), tts)
    heard = Frames()
    net.stack.enter_context(phone.listening(heard))
    if audio is not None:
        await leg.hold(audio)
    return leg, phone, tts, heard


async def collect(frames: Frames, seconds: float) -> NDArray[np.int16]:
    chunks = [await frames.get() for _ in range(round(seconds * RATE / 160))]
    return np.concatenate(chunks)


def best_offset(haystack: NDArray[np.int16], needle: NDArray[np.int16]) -> int:
    """Where `needle` correlates best with `haystack` (a sample offset)."""
    h, n = haystack.astype(np.float64), needle.astype(np.float64)
    size = len(h) + len(n)
    corr = np.fft.irfft(np.fft.rfft(h, size) * np.conj(np.fft.rfft(n, size)), size)
    return int(np.argmax(corr[: len(h) - len(n) + 1]))


async def test_unhold_drops_the_keys_pressed_on_hold(net: Net) -> None:
    leg, _, _, _ = await held_leg(net, HoldAudio())
    leg.media.keys.put_nowait(KeyPress("5", 0.0))
    leg.media.keys.put_nowait(KeyPress("#", 0.0))
    await leg.unhold()
    assert leg.media.keys.empty(), "keys pressed on hold would reach the AI"


async def test_a_key_is_read_from_the_callers_phone(net: Net) -> None:
    leg, phone, _, _ = await held_leg(net, HoldAudio())
    await phone.send_digits("*")
    async with asyncio.timeout(DEADLINE):
        assert await leg.next_key() == "*"


async def test_no_prompt_for_a_caller_not_held(net: Net) -> None:
    leg, _, tts, _ = await held_leg(net)
    await leg.announce("Still connecting you.")
    assert tts.texts == [] and leg.prompts == []


async def test_a_prompt_pauses_the_music_and_it_resumes_where_it_paused(
    net: Net, tmp_path: Path
) -> None:
    rng = np.random.default_rng(7)
    music = rng.integers(-6000, 6000, 4 * RATE, dtype=np.int16)  # no two places alike
    source = tmp_path / "music.wav"
    write_wav(source, music, RATE)
    leg, _, tts, heard = await held_leg(net, HoldAudio(source=source, volume=1.0))
    before = await collect(heard, 0.5)
    await leg.announce("Still connecting you.")
    assert tts.texts == ["Still connecting you."]
    assert leg.hold_playback is not None and leg.hold_playback is not leg.prompts[0]
    during_and_after = await collect(heard, 1.0)
    heard_all = np.concatenate([before, during_and_after])
    # The prompt is there, after the music the caller had heard.
    prompt_at = best_offset(heard_all, PROMPT.samples)
    assert prompt_at >= len(before) - 160
    assert abs(dominant_hz(heard_all[prompt_at : prompt_at + len(PROMPT.samples)]) - 700) < 20
    # Then the music again, from where it was when the prompt began, not from its start.
    resumed = heard_all[prompt_at + len(PROMPT.samples) + 160 :][: RATE // 4]
    paused_at = best_offset(music, heard_all[prompt_at - RATE // 4 : prompt_at]) + RATE // 4
    resumed_at = best_offset(np.concatenate([music, music]), resumed) - 160
    assert abs(resumed_at - paused_at) <= 480, (resumed_at, paused_at)
    assert paused_at > RATE // 4  # not the start of the loop, which would also match "resumed"


async def test_a_cancelled_prompt_stops_and_the_music_comes_back_only_if_held(net: Net) -> None:
    leg, _, tts, _ = await held_leg(net, HoldAudio())
    prompting = asyncio.ensure_future(leg.announce("Still connecting you."))
    async with asyncio.timeout(DEADLINE):
        await tts.asked.wait()
    prompt = leg.prompts[0]
    assert leg.hold_playback is prompt and leg.media.playing
    prompting.cancel()
    with pytest.raises(asyncio.CancelledError):
        await prompting
    assert prompt.stopped
    assert leg.hold_playback is not None and leg.hold_playback is not prompt  # the music
    assert leg.media.playing

    tts.asked.clear()
    prompting = asyncio.ensure_future(leg.announce("Still connecting you."))
    async with asyncio.timeout(DEADLINE):
        await tts.asked.wait()
    assert len(leg.prompts) == 2
    await leg.unhold()  # the caller is given back mid-prompt: the prompt stops with the hold
    assert leg.prompts[1].stopped and not leg.media.playing
    prompting.cancel()
    with pytest.raises(asyncio.CancelledError):
        await prompting
    assert leg.hold_playback is None and not leg.media.playing, "music after unhold"


async def test_the_message_is_the_callers_audio_until_the_stop_key(
    net: Net, tmp_path: Path
) -> None:
    leg, phone, tts, _ = await held_leg(net, HoldAudio())
    ai_heard: list[NDArray[np.int16]] = []
    path = tmp_path / "messages" / "m.wav"
    with leg.ai_listening(ai_heard.append):
        recording = asyncio.ensure_future(
            leg.record_message(
                path, prompt="Leave a message.", max_seconds=10, stop_key="#", silence_seconds=5
            )
        )
        async with asyncio.timeout(DEADLINE):
            await leg.message_started.wait()
        assert leg.held and not leg.ai_connected
        playing = phone.play(sine(1230.0, 0.6))
        async with asyncio.timeout(DEADLINE):
            await playing.done
        await phone.send_digits("#")
        async with asyncio.timeout(DEADLINE):
            assert await recording == path
    assert tts.texts == ["Leave a message."]
    assert ai_heard == [], "the AI heard the caller while they recorded"
    assert path.stat().st_mode & 0o077 == 0, "a caller's message readable by other users"
    assert path.parent.stat().st_mode & 0o077 == 0
    with wave.open(str(path)) as w:
        assert (w.getframerate(), w.getnchannels(), w.getsampwidth()) == (8000, 1, 2)
        message = np.frombuffer(w.readframes(w.getnframes()), dtype=np.int16)
    loud = message[np.abs(message) > 2000]
    assert len(loud) > 0.3 * RATE, "the caller's tone is not in the message"
    assert abs(dominant_hz(message) - 1230) < 20
    # The caller heard the prompt and then the tone, not the hold music, before recording.
    assert leg.hold_playback is None


async def test_the_message_ends_after_silence(net: Net, tmp_path: Path) -> None:
    leg, _, _, _ = await held_leg(net, HoldAudio())
    path = tmp_path / "m.wav"
    async with asyncio.timeout(DEADLINE):
        result = await leg.record_message(
            path, prompt="Leave a message.", max_seconds=10, stop_key="#", silence_seconds=0.3
        )
    assert result == path
    assert leg.message_started_at is not None
    with wave.open(str(path)) as w:
        assert 0.2 < w.getnframes() / RATE < 2.0  # the phone's silence, until it was enough


async def test_no_message_from_a_caller_who_has_gone(net: Net, tmp_path: Path) -> None:
    leg, _, _, _ = await held_leg(net, HoldAudio())
    await leg.hangup()
    path = tmp_path / "m.wav"
    assert (
        await leg.record_message(
            path, prompt="Leave a message.", max_seconds=10, stop_key="#", silence_seconds=5
        )
        is None
    )
    assert not path.exists()

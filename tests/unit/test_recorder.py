"""Recorder: audio placed on the call's timeline, two channels, stereo 8 kHz WAV.

The placement rules are tested on the Recorder directly (times are just numbers there); then a
recording made by a real RtpSession on 127.0.0.1 is checked end to end, down to the WAV file.
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

from warmtransfer.media.audio import AudioClip
from warmtransfer.media.clock import PacingClock
from warmtransfer.media.recorder import Recorder
from warmtransfer.media.session import MediaFormat, RtpSession
from warmtransfer.media.wav import read_wav

PCMU = MediaFormat("PCMU", 0, 101)
DEADLINE = 5.0
START = 1000.0  # a loop time; recorders only care about differences


def frame(value: int, samples: int = 160) -> NDArray[np.int16]:
    return np.full(samples, value, dtype=np.int16)


def ramp(count: int, seed: int = 0) -> list[NDArray[np.int16]]:
    """`count` distinct 20 ms frames."""
    rng = np.random.default_rng(seed)
    return [rng.integers(-8000, 8000, 160, dtype=np.int16) for _ in range(count)]


# -- placement ----------------------------------------------------------------------------------


def test_frames_on_time_are_contiguous() -> None:
    recorder = Recorder(START)
    frames = ramp(50)
    for i, pcm in enumerate(frames):
        recorder.received(pcm, START + i * 0.020)
    out = recorder.samples()
    assert out.shape == (50 * 160, 2) and out.dtype == np.int16
    assert np.array_equal(out[:, 0], np.concatenate(frames))
    assert not out[:, 1].any()  # nothing was sent


def test_a_gap_becomes_silence_of_the_right_length() -> None:
    recorder = Recorder(START)
    recorder.received(frame(1000), START)
    recorder.received(frame(2000), START + 0.5)  # nothing for 480 ms
    recorder.received(frame(3000), START + 0.52)
    rx = recorder.samples()[:, 0]
    assert len(rx) == 4000 + 320
    assert (rx[:160] == 1000).all()
    assert not rx[160:4000].any()
    assert (rx[4000:4160] == 2000).all() and (rx[4160:] == 3000).all()


def test_audio_that_starts_late_is_placed_at_its_time() -> None:
    recorder = Recorder(START)
    recorder.sent(frame(500), START + 1.25)
    tx = recorder.samples()[:, 1]
    assert len(tx) == 10_000 + 160
    assert not tx[:10_000].any() and (tx[10_000:] == 500).all()


def test_jitter_under_60_ms_creates_no_gaps() -> None:
    rng = np.random.default_rng(7)
    recorder = Recorder(START)
    frames = ramp(100, seed=1)
    jitter = rng.uniform(-0.050, 0.050, len(frames))  # up to 50 ms late or early
    jitter[10], jitter[11] = 0.055, -0.05  # and one late by 55 ms next to an early one
    for i, pcm in enumerate(frames):
        recorder.received(pcm, START + i * 0.020 + jitter[i])
    rx = recorder.samples()[:, 0]
    assert np.array_equal(rx, np.concatenate(frames))  # in order, nothing inserted


def test_a_late_burst_after_a_real_gap_keeps_the_timeline() -> None:
    recorder = Recorder(START)
    recorder.received(frame(1), START)
    # 200 ms of nothing, then three frames at once (a burst after a stall)
    for i in range(3):
        recorder.received(frame(2 + i), START + 0.200)
    rx = recorder.samples()[:, 0]
    assert len(rx) == 1600 + 3 * 160
    assert not rx[160:1600].any() and (rx[1600:1760] == 2).all()


def test_audio_before_the_start_goes_at_the_start() -> None:
    recorder = Recorder(START)
    recorder.received(frame(9), START - 0.5)
    assert len(recorder.samples()) == 160


def test_two_channels_are_independent_and_padded_to_the_longer() -> None:
    recorder = Recorder(START)
    recorder.received(frame(100), START)
    for i in range(5):
        recorder.sent(frame(-200), START + i * 0.020)
    out = recorder.samples()
    assert out.shape == (800, 2)
    assert (out[:160, 0] == 100).all() and not out[160:, 0].any()
    assert (out[:, 1] == -200).all()


def test_an_empty_recorder_has_no_samples() -> None:
    assert Recorder(START).samples().shape == (0, 2)


def test_save_writes_a_stereo_8_khz_wav_and_stops_recording(tmp_path: Path) -> None:
    recorder = Recorder(START)
    rx, tx = ramp(10, seed=2), ramp(10, seed=3)
    for i in range(10):
        recorder.received(rx[i], START + i * 0.020)
        recorder.sent(tx[i], START + i * 0.020)
    path = recorder.save(tmp_path / "calls" / "leg.wav")
    assert path == tmp_path / "calls" / "leg.wav"
    recorder.received(frame(1), START + 0.2)  # after save(): ignored
    assert recorder.closed and len(recorder.samples()) == 1600

    with wave.open(str(path)) as w:
        assert (w.getnchannels(), w.getsampwidth(), w.getframerate()) == (2, 2, 8000)
        data = np.frombuffer(w.readframes(w.getnframes()), dtype="<i2").reshape(-1, 2)
    assert np.array_equal(data[:, 0], np.concatenate(rx))
    assert np.array_equal(data[:, 1], np.concatenate(tx))
    mono = read_wav(path)  # the project's reader averages the channels
    assert mono.rate == 8000 and len(mono.samples) == 1600
    expected = (data[:, 0].astype(np.int32) + data[:, 1]) / 2
    assert np.abs(mono.samples - expected).max() <= 1


# -- a real session records both directions -----------------------------------------------------


@pytest.fixture
async def sessions() -> AsyncIterator[tuple[RtpSession, RtpSession]]:
    clock = PacingClock()
    a = await RtpSession.open("127.0.0.1", clock, "a")
    b = await RtpSession.open("127.0.0.1", clock, "b")
    a.start(b.local, PCMU)
    b.start(a.local, PCMU)
    try:
        yield a, b
    finally:
        a.close()
        b.close()
        async with asyncio.timeout(DEADLINE):
            await a.wait_closed()
            await b.wait_closed()


def tone(freq: float, seconds: float, amplitude: float = 8000.0) -> AudioClip:
    t = np.arange(round(seconds * 8000)) / 8000
    return AudioClip((amplitude * np.sin(2 * np.pi * freq * t)).astype(np.int16), 8000)


def active(samples: NDArray[np.int16]) -> NDArray[np.bool_]:
    """Which 20 ms windows carry sound."""
    windows = samples[: len(samples) // 160 * 160].reshape(-1, 160).astype(np.float64)
    return cast(NDArray[np.bool_], np.sqrt((windows**2).mean(axis=1)) > 300)


async def test_a_session_records_what_it_received_and_sent_on_the_timeline(
    sessions: tuple[RtpSession, RtpSession], tmp_path: Path
) -> None:
    a, b = sessions
    loop = asyncio.get_running_loop()
    recorder = a.recorder = Recorder(loop.time())
    heard, said = tone(440, 0.4), tone(1000, 0.3)
    frames: asyncio.Queue[NDArray[np.int16]] = asyncio.Queue()
    with a.listening(frames.put_nowait):
        async with asyncio.timeout(DEADLINE):
            # a speaks first; b answers once a has finished
            spoke = a.play(said)
            await spoke.done
            answer = b.play(heard)
            await answer.done
            # b's last frames have reached a once three more of its packets have
            while not frames.empty():
                frames.get_nowait()
            for _ in range(3):
                await frames.get()
    a.recorder = None
    path = recorder.save(tmp_path / "a.wav")

    with wave.open(str(path)) as w:
        assert (w.getnchannels(), w.getframerate()) == (2, 8000)
        data = np.frombuffer(w.readframes(w.getnframes()), dtype="<i2").reshape(-1, 2)
    rx, tx = data[:, 0], data[:, 1]
    rx_on, tx_on = np.flatnonzero(active(rx)), np.flatnonzero(active(tx))
    # what a said is in the sent channel, 15 windows long, where it was said
    assert spoke.first_sent_at is not None
    assert 14 <= len(tx_on) <= 16
    assert abs(tx_on[0] * 0.020 - (spoke.first_sent_at - recorder.start)) <= 0.040
    # what b said is in the received channel, 20 windows long, after a had finished
    assert answer.first_sent_at is not None
    assert 19 <= len(rx_on) <= 21
    assert abs(rx_on[0] * 0.020 - (answer.first_sent_at - recorder.start)) <= 0.060
    assert rx_on[0] > tx_on[-1]
    assert not active(tx)[rx_on].any()  # a was silent while b spoke
    # and the content survived (G.711 round trip, aligned on the first active sample)
    start = int(np.flatnonzero(np.abs(rx) > 300)[0])
    segment = rx[start : start + 2400].astype(np.float64)
    reference = heard.samples[:3200].astype(np.float64)
    best = max(
        np.corrcoef(segment, reference[shift : shift + 2400])[0, 1] for shift in range(0, 40)
    )
    assert best > 0.95

"""Voice activity with webrtcvad on piper's voice at 8 kHz (fixtures in tests/fixtures/speech)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from warmtransfer.media.audio import PHONE_RATE, AudioClip
from warmtransfer.media.wav import read_wav
from warmtransfer.speech.vad import (
    Segment,
    SpeechEnded,
    SpeechStarted,
    VadEvent,
    VoiceActivityDetector,
    speech_segments,
)

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "speech"
FRAME = PHONE_RATE // 50
CLICK = np.full(160, 8000)


def fixture(stem: str, rate: int = PHONE_RATE) -> AudioClip:
    return read_wav(FIXTURES / f"{stem}.wav", rate)


def padded(clip: AudioClip, before: float = 1.0, after: float = 1.0) -> AudioClip:
    lead = np.zeros(round(before * clip.rate), dtype=np.int16)
    tail = np.zeros(round(after * clip.rate), dtype=np.int16)
    return AudioClip(np.concatenate([lead, clip.samples, tail]), clip.rate)


def noise(dbfs: float, seconds: float = 3.0, seed: int = 11) -> AudioClip:
    rms = 32768 * 10 ** (dbfs / 20)
    samples = np.random.default_rng(seed).normal(0, rms, round(seconds * PHONE_RATE))
    return AudioClip(np.clip(samples, -32768, 32767).astype(np.int16), PHONE_RATE)


@pytest.mark.parametrize(
    "stem",
    ["yes", "no", "repeat", "yes_take_it", "take_the_call", "hello", "hello_support", "unrelated"],
)
def test_speech_is_found_where_it_is(stem: str) -> None:
    clip = fixture(stem)
    segments = speech_segments(padded(clip))
    assert segments, stem
    # piper leaves up to 50 ms of quiet at each end; frames are 20 ms
    assert segments[0].start == pytest.approx(1.0, abs=0.1)
    assert segments[-1].end == pytest.approx(1.0 + clip.duration, abs=0.15)
    spoken = sum(s.duration for s in segments)
    assert spoken >= 0.75 * clip.duration


@pytest.mark.parametrize(
    ("name", "clip"),
    [
        ("digital silence", AudioClip.silence(3.0)),
        ("line noise -60 dBFS", noise(-60)),
        ("line noise -45 dBFS", noise(-45)),
        ("a 20 ms click", AudioClip(np.r_[np.zeros(8000), CLICK].astype(np.int16), PHONE_RATE)),
    ],
)
def test_no_speech_in_silence_or_low_noise(name: str, clip: AudioClip) -> None:
    assert speech_segments(clip) == [], name


def test_a_voicemail_greeting_is_one_long_run_and_hello_a_short_one() -> None:
    greeting = fixture("voicemail")
    [long] = speech_segments(padded(greeting))
    [short] = speech_segments(padded(fixture("hello")))
    assert long.duration >= 0.95 * greeting.duration > 6.0
    assert short.duration < 0.6
    # the same with a shorter hangover splits the greeting at its sentence pauses
    assert len(speech_segments(padded(greeting), hangover_ms=60)) > 1


def test_streaming_events_come_with_the_times_they_happened() -> None:
    hello, support = fixture("hello"), fixture("hello_support")
    stream = np.concatenate(
        [
            AudioClip.silence(0.5).samples,
            hello.samples,
            AudioClip.silence(1.5).samples,
            support.samples,
            AudioClip.silence(1.0).samples,
        ]
    )
    detector = VoiceActivityDetector(hangover_ms=400)
    events: list[tuple[float, VadEvent]] = []
    for start in range(0, len(stream), FRAME):
        for event in detector.feed(stream[start : start + FRAME]):
            events.append((detector.seconds, event))
    assert detector.finish() == []
    kinds = [type(event) for _, event in events]
    assert kinds == [SpeechStarted, SpeechEnded, SpeechStarted, SpeechEnded]
    (_, hello_on), (_, hello_off), (_, support_on), (_, support_off) = events
    second = 0.5 + hello.duration + 1.5
    assert hello_on.at_seconds == pytest.approx(0.5, abs=0.1)
    assert isinstance(hello_off, SpeechEnded)
    assert hello_off.started_at == hello_on.at_seconds
    assert hello_off.at_seconds == pytest.approx(0.5 + hello.duration, abs=0.12)
    assert support_on.at_seconds == pytest.approx(second, abs=0.1)
    assert isinstance(support_off, SpeechEnded)
    assert support_off.at_seconds == pytest.approx(second + support.duration, abs=0.15)
    # a start is known min_speech_ms after it happened, an end hangover_ms after
    (started_known, _), (ended_known, _) = events[0], events[1]
    assert 0.1 <= started_known - hello_on.at_seconds <= 0.16
    assert 0.4 <= ended_known - hello_off.at_seconds <= 0.46
    assert detector.segments == [
        Segment(hello_on.at_seconds, hello_off.at_seconds),
        Segment(support_on.at_seconds, support_off.at_seconds),
    ]


def test_what_answer_detection_and_barge_in_read() -> None:
    detector = VoiceActivityDetector()
    assert (detector.speaking, detector.first_speech_at) == (False, None)
    detector.feed(AudioClip.silence(0.8).samples)
    greeting = fixture("voicemail").samples
    lengths = []
    for start in range(0, 3 * PHONE_RATE, FRAME):  # the first 3 s of the greeting
        detector.feed(greeting[start : start + FRAME])
        lengths.append(detector.current_speech_seconds)
    assert detector.speaking
    assert detector.first_speech_at == pytest.approx(0.8, abs=0.1)
    assert detector.current_speech_seconds == pytest.approx(3.0 - 0.05, abs=0.15)
    assert lengths == sorted(lengths)  # grows while the greeting goes on
    assert detector.longest_speech_seconds == detector.current_speech_seconds
    assert detector.segments == []  # still under way
    [ended] = detector.finish()
    assert isinstance(ended, SpeechEnded)
    assert not detector.speaking
    assert detector.total_speech_seconds == pytest.approx(ended.duration)
    detector.reset()
    assert (detector.seconds, detector.total_speech_seconds) == (0.0, 0.0)


def test_total_and_longest_over_several_runs() -> None:
    detector = VoiceActivityDetector()
    for stem in ("yes", "repeat", "no"):
        detector.feed(padded(fixture(stem), before=0.5, after=0.5).samples)
    detector.finish()
    durations = [s.duration for s in detector.segments]
    assert len(durations) == 3
    assert detector.total_speech_seconds == pytest.approx(sum(durations))
    assert detector.longest_speech_seconds == max(durations) == durations[1]  # "repeat..."


@pytest.mark.parametrize("rate", [11025, 16000, 22050, 44100, 48000])
def test_any_rate_gives_the_same_segments(rate: int) -> None:
    reference = speech_segments(padded(fixture("hello_support")))
    segments = speech_segments(padded(fixture("hello_support", rate)))
    assert len(segments) == len(reference)
    for ours, theirs in zip(segments, reference, strict=True):
        assert ours.start == pytest.approx(theirs.start, abs=0.06)
        assert ours.end == pytest.approx(theirs.end, abs=0.1)


def test_frame_sizes_and_arbitrary_chunks() -> None:
    clip = padded(fixture("repeat"))
    reference = speech_segments(clip)
    for frame_ms in (10, 30):
        [segment] = speech_segments(clip, frame_ms=frame_ms)
        assert segment.start == pytest.approx(reference[0].start, abs=0.06)
    detector = VoiceActivityDetector()
    rng = np.random.default_rng(3)
    start = 0
    while start < len(clip.samples):  # odd-sized pieces, as a jitter buffer might hand them
        size = int(rng.integers(1, 700))
        detector.feed(clip.samples[start : start + size].astype("<i2").tobytes())
        start += size
    detector.finish()
    assert detector.segments == reference


def test_bad_input_and_settings_are_refused() -> None:
    detector = VoiceActivityDetector()
    with pytest.raises(TypeError, match="int16"):
        detector.feed(np.zeros(160, dtype=np.float64))
    with pytest.raises(ValueError, match="mono"):
        detector.feed(np.zeros((160, 2), dtype=np.int16))
    with pytest.raises(ValueError, match="even number of bytes"):
        detector.feed(b"\x00" * 161)
    with pytest.raises(ValueError, match="positive"):
        detector.feed(np.zeros(160, dtype=np.int16), -8000)
    with pytest.raises(ValueError, match="aggressiveness"):
        VoiceActivityDetector(aggressiveness=4)
    with pytest.raises(ValueError, match="10, 20 or 30 ms"):
        VoiceActivityDetector(frame_ms=25)
    with pytest.raises(ValueError, match="at least one frame"):
        VoiceActivityDetector(hangover_ms=5)

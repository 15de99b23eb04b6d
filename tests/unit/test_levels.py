from __future__ import annotations

import numpy as np
import pytest
from numpy.typing import NDArray

from warmtransfer.media.levels import EndOfSpeech, active_seconds, active_spans, rms_dbfs

RATE = 8000


def tone(seconds: float, dbfs: float = -20.0, rate: int = RATE) -> NDArray[np.int16]:
    """A 440 Hz sine whose RMS is `dbfs`."""
    t = np.arange(round(seconds * rate)) / rate
    amplitude = 32768 * 10 ** (dbfs / 20) * np.sqrt(2)
    samples: NDArray[np.int16] = np.rint(amplitude * np.sin(2 * np.pi * 440 * t)).astype(np.int16)
    return samples


def silence(seconds: float, rate: int = RATE) -> NDArray[np.int16]:
    return np.zeros(round(seconds * rate), dtype=np.int16)


def join(*parts: NDArray[np.int16]) -> NDArray[np.int16]:
    return np.concatenate(parts)


def test_rms_dbfs_reference_levels() -> None:
    square = np.tile(np.array([32767, -32768], dtype=np.int16), 80)
    assert rms_dbfs(square) == pytest.approx(0.0, abs=0.001)
    full_sine = np.rint(32767 * np.sin(2 * np.pi * np.arange(8000) / 80)).astype(np.int16)
    assert rms_dbfs(full_sine) == pytest.approx(-3.01, abs=0.01)
    assert rms_dbfs(tone(1.0, -37.5)) == pytest.approx(-37.5, abs=0.05)


def test_rms_dbfs_of_silence_is_a_finite_floor() -> None:
    assert rms_dbfs(silence(0.02)) == -120.0
    assert rms_dbfs(np.zeros(0, dtype=np.int16)) == -120.0
    lone = np.zeros(10**7, dtype=np.int16)
    lone[0] = 1
    assert rms_dbfs(lone) == -120.0  # would be about -160, floored
    assert rms_dbfs(np.ones(160, dtype=np.int16)) == pytest.approx(-90.3, abs=0.1)


def test_rms_dbfs_does_not_overflow_int16() -> None:
    assert rms_dbfs(np.full(160, -32768, dtype=np.int16)) == pytest.approx(0.0, abs=1e-9)


def test_active_spans_merges_short_gaps() -> None:
    audio = join(silence(0.5), tone(0.5), silence(0.2), tone(0.3), silence(1.0))
    assert active_spans(audio, RATE) == [pytest.approx((0.5, 1.5))]


def test_active_spans_splits_long_gaps() -> None:
    audio = join(silence(0.5), tone(0.5), silence(0.2), tone(0.3), silence(1.0))
    spans = active_spans(audio, RATE, min_gap_ms=100)
    assert spans == [pytest.approx((0.5, 1.0)), pytest.approx((1.2, 1.5))]


def test_active_spans_respects_threshold_and_window() -> None:
    audio = join(tone(0.4, -50.0), silence(0.4), tone(0.4, -30.0))
    assert active_spans(audio, RATE) == [pytest.approx((0.8, 1.2))]
    assert active_spans(audio, RATE, threshold_dbfs=-60.0, min_gap_ms=500) == [
        pytest.approx((0.0, 1.2))
    ]
    coarse = active_spans(join(silence(0.25), tone(0.5)), RATE, window_ms=100)
    assert coarse == [pytest.approx((0.2, 0.75))]  # window edges, clipped to the audio's end


def test_active_spans_edge_cases() -> None:
    assert active_spans(silence(2.0), RATE) == []
    assert active_spans(np.zeros(0, dtype=np.int16), RATE) == []
    assert active_spans(tone(0.105), RATE) == [pytest.approx((0.0, 0.105))]
    assert active_spans(tone(1.0, rate=16000), 16000) == [pytest.approx((0.0, 1.0))]
    with pytest.raises(ValueError, match="positive"):
        active_spans(tone(0.1), 0)


def test_active_seconds() -> None:
    audio = join(silence(1.0), tone(0.5), silence(1.0), tone(0.25))
    assert active_seconds(audio, RATE, 0.0, 3.0) == pytest.approx(0.75)
    assert active_seconds(audio, RATE, 0.0, 1.0) == 0.0
    assert active_seconds(audio, RATE, 1.2, 1.4) == pytest.approx(0.2)
    assert active_seconds(audio, RATE, 2.6, 10.0) == pytest.approx(0.15)
    assert active_seconds(audio, RATE, 2.0, 1.0) == 0.0
    assert active_seconds(audio, RATE, 0.0, 3.0, threshold_dbfs=-10.0) == 0.0


def frames(audio: NDArray[np.int16], size: int = 160) -> list[NDArray[np.int16]]:
    return [audio[i : i + size] for i in range(0, len(audio), size)]


def ends_at(detector: EndOfSpeech, audio: NDArray[np.int16]) -> list[float]:
    """The times (s, at the end of the frame) at which the detector reported an end."""
    return [(index + 1) * 0.02 for index, frame in enumerate(frames(audio)) if detector.feed(frame)]


def test_end_of_speech_fires_once_after_the_silence() -> None:
    audio = join(silence(0.5), tone(1.0), silence(2.0))
    assert ends_at(EndOfSpeech(), audio) == [pytest.approx(1.5 + 0.7)]


def test_end_of_speech_tracks_speaking() -> None:
    detector = EndOfSpeech()
    states = []
    for frame in frames(join(silence(0.2), tone(0.5), silence(1.0))):
        detector.feed(frame)
        states.append(detector.speaking)
    first_true = states.index(True)
    assert first_true == 10 + 9  # after 200 ms of sound
    assert all(states[first_true : 10 + 25 + 34])  # through the pause, until the end is seen
    assert not any(states[10 + 25 + 35 :])


def test_end_of_speech_ignores_short_blips() -> None:
    audio = join(tone(0.1), silence(1.0), tone(0.06), silence(1.0))
    detector = EndOfSpeech()
    assert ends_at(detector, audio) == []
    assert not detector.speaking


def test_pauses_inside_an_utterance_do_not_end_it() -> None:
    audio = join(tone(0.4), silence(0.5), tone(0.4), silence(1.0))
    assert ends_at(EndOfSpeech(), audio) == [pytest.approx(1.3 + 0.7)]


def test_end_of_speech_resets_for_the_next_utterance() -> None:
    audio = join(tone(0.3), silence(0.8), tone(0.3), silence(0.8))
    assert ends_at(EndOfSpeech(), audio) == [pytest.approx(1.0), pytest.approx(2.1)]


def test_end_of_speech_parameters() -> None:
    audio = join(tone(0.3, -45.0), silence(1.0))
    assert ends_at(EndOfSpeech(), audio) == []  # below the default -40 dBFS threshold
    quiet_ok = EndOfSpeech(threshold_dbfs=-50.0, silence_ms=300, min_speech_ms=100)
    assert ends_at(quiet_ok, audio) == [pytest.approx(0.6)]
    wideband = EndOfSpeech(rate=16000)
    fired = [
        wideband.feed(f) for f in frames(join(tone(0.5, rate=16000), silence(1.0, 16000)), 320)
    ]
    assert fired.count(True) == 1
    assert fired.index(True) == 25 + 34


def test_end_of_speech_reset_forgets() -> None:
    detector = EndOfSpeech()
    for frame in frames(tone(0.5)):
        detector.feed(frame)
    assert detector.speaking
    detector.reset()
    assert not detector.speaking
    assert ends_at(detector, silence(1.0)) == []

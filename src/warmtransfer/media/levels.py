"""Signal levels: is there sound here, and has someone stopped talking?

Tests use the offline helpers to check that audio is present in the right windows (the caller
heard hold music, the target heard the briefing, nobody heard the other side too early). The
demo's simulated people use `EndOfSpeech` to take their turn when the other side goes quiet.
Energy in dBFS against a threshold is all these jobs need: the audio is our own synthetic speech
and music over a clean line, not a noisy room, so a trained voice-activity model would add
weight and latency without changing an answer. Everything is vectorised per 20 ms window.
"""

from __future__ import annotations

import math

import numpy as np
from numpy.typing import NDArray

from warmtransfer.media.audio import PHONE_RATE

__all__ = ["SILENCE_DBFS", "EndOfSpeech", "active_seconds", "active_spans", "rms_dbfs"]

SILENCE_DBFS = -120.0
"""The level reported for digital silence (and the floor for anything quieter)."""

_FULL_SCALE = 32768.0


def rms_dbfs(samples: NDArray[np.int16]) -> float:
    """RMS level in dB relative to full scale (a full-scale square wave is 0 dBFS)."""
    if len(samples) == 0:
        return SILENCE_DBFS
    x = samples.astype(np.float64)
    mean_square = float(np.dot(x, x)) / len(x)
    if mean_square == 0.0:
        return SILENCE_DBFS
    return max(SILENCE_DBFS, 10.0 * math.log10(mean_square / _FULL_SCALE**2))


def _window_levels(samples: NDArray[np.int16], size: int) -> NDArray[np.float64]:
    """dBFS of each consecutive `size`-sample window (the last one may be shorter)."""
    count = -(-len(samples) // size)
    padded = np.zeros(count * size, dtype=np.float64)
    padded[: len(samples)] = samples
    windows = padded.reshape(count, size)
    lengths = np.full(count, size, dtype=np.float64)
    if count:
        lengths[-1] = len(samples) - (count - 1) * size
    mean_square = np.einsum("ij,ij->i", windows, windows) / lengths
    with np.errstate(divide="ignore"):
        levels = 10.0 * np.log10(mean_square / _FULL_SCALE**2)
    floored: NDArray[np.float64] = np.maximum(levels, SILENCE_DBFS)
    return floored


def _window_size(rate: int, window_ms: int) -> int:
    if rate <= 0 or window_ms <= 0:
        raise ValueError(f"rate and window must be positive, not {rate} Hz, {window_ms} ms")
    return max(1, rate * window_ms // 1000)


def active_spans(
    samples: NDArray[np.int16],
    rate: int,
    *,
    window_ms: int = 20,
    threshold_dbfs: float = -45.0,
    min_gap_ms: int = 300,
) -> list[tuple[float, float]]:
    """(start_s, end_s) of each stretch of sound; gaps shorter than `min_gap_ms` are bridged."""
    size = _window_size(rate, window_ms)
    active = _window_levels(samples, size) >= threshold_dbfs
    if not active.any():
        return []
    edges = np.diff(active.astype(np.int8), prepend=0, append=0)
    starts = np.flatnonzero(edges == 1)
    ends = np.flatnonzero(edges == -1)
    spans: list[tuple[float, float]] = []
    min_gap = min_gap_ms / 1000.0
    total = len(samples) / rate
    for start_window, end_window in zip(starts.tolist(), ends.tolist(), strict=True):
        start = start_window * size / rate
        end = min(end_window * size / rate, total)
        if spans and start - spans[-1][1] < min_gap:
            spans[-1] = (spans[-1][0], end)
        else:
            spans.append((start, end))
    return spans


def active_seconds(
    samples: NDArray[np.int16],
    rate: int,
    start_s: float,
    end_s: float,
    threshold_dbfs: float = -45.0,
) -> float:
    """How many seconds of [start_s, end_s) lie in 20 ms windows above the threshold."""
    size = _window_size(rate, 20)
    begin = max(0, round(start_s * rate))
    stop = min(len(samples), round(end_s * rate))
    if stop <= begin:
        return 0.0
    part = samples[begin:stop]
    active = _window_levels(part, size) >= threshold_dbfs
    sizes = np.full(len(active), size)
    sizes[-1] = len(part) - (len(active) - 1) * size
    return float(sizes[active].sum()) / rate


class EndOfSpeech:
    """Streaming: feed 20 ms frames; tells when someone has spoken and then been quiet for
    `silence_ms`.

    An utterance needs `min_speech_ms` of sound (pauses shorter than `silence_ms` inside it do
    not end it); shorter blips such as a click or a cough are forgotten after `silence_ms`.
    """

    def __init__(
        self,
        rate: int = PHONE_RATE,
        threshold_dbfs: float = -40.0,
        silence_ms: int = 700,
        min_speech_ms: int = 200,
    ) -> None:
        if rate <= 0:
            raise ValueError(f"sample rate must be positive, not {rate}")
        self._threshold = threshold_dbfs
        # Counted in samples, not float seconds, so 10 x 20 ms is exactly 200 ms.
        self._silence_needed = silence_ms * rate / 1000
        self._speech_needed = min_speech_ms * rate / 1000
        self._speech = 0  # samples of sound in the current utterance
        self._quiet = 0  # samples of silence since the last sound

    @property
    def speaking(self) -> bool:
        """Whether an utterance long enough to count is in progress (its end not yet seen)."""
        return self._speech >= self._speech_needed

    def feed(self, frame: NDArray[np.int16]) -> bool:
        """True once, on the frame that completes the silence after an utterance."""
        if rms_dbfs(frame) >= self._threshold:
            self._speech += len(frame)
            self._quiet = 0
            return False
        self._quiet += len(frame)
        if self._quiet < self._silence_needed:
            return False
        ended = self.speaking
        self._speech = 0
        return ended

    def reset(self) -> None:
        """Forget any utterance in progress."""
        self._speech = 0
        self._quiet = 0

"""Measurements on recordings, for tests that assert what each side of a call heard."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from numpy.typing import NDArray

from warmtransfer.media.levels import rms_dbfs
from warmtransfer.media.wav import read_wav

RATE = 8000


def load(path: Path, channel: int | None = None) -> NDArray[np.int16]:
    """A recording at 8 kHz; `channel` picks one channel of our stereo leg recordings."""
    if channel is None:
        return read_wav(path, RATE).samples
    import wave

    with wave.open(str(path)) as w:
        data = np.frombuffer(w.readframes(w.getnframes()), dtype=np.int16)
        return data.reshape(-1, w.getnchannels())[:, channel].copy()


def window(samples: NDArray[np.int16], start: float, end: float) -> NDArray[np.int16]:
    return samples[max(0, int(start * RATE)) : max(0, int(end * RATE))]


def level(samples: NDArray[np.int16]) -> float:
    return rms_dbfs(samples) if len(samples) else -120.0


def tone_fraction(samples: NDArray[np.int16], freq: float, width: float = 25.0) -> float:
    """Share of the energy within `width` Hz of `freq` (0..1): near 1 for a pure tone."""
    if len(samples) < 256:
        return 0.0
    x = samples.astype(np.float64) * np.hanning(len(samples))
    spectrum = np.abs(np.fft.rfft(x)) ** 2
    freqs = np.fft.rfftfreq(len(x), 1 / RATE)
    total = spectrum.sum()
    if total == 0:
        return 0.0
    band = spectrum[(freqs > freq - width) & (freqs < freq + width)].sum()
    return float(band / total)

"""The default hold music: generated here, so there is no file to ship and no licence to check.

A 14-second loop: a soft pad on a I-vi-IV-V progression in C major with a plucked arpeggio over
it, at a calm 68 beats per minute. The choices come from where it is heard:

- A phone line passes roughly 300-3400 Hz and G.711 turns loud, bright or clipped audio harsh.
  Every partial is therefore kept inside that band (no bass notes, no harmonic above 3400 Hz),
  the level is -20 dBFS RMS with headroom to spare, and notes have smooth envelopes.
- The player loops it for as long as the caller waits. Notes are rendered onto a circular
  timeline (a tail running past the end continues at the start), so the loop is continuous by
  construction, and the last bar thins out so the seam also falls where the music breathes.
- It is computed once per sample rate (about 20 ms) and cached; the samples are read-only so
  no caller can change what the next caller hears.
"""

from __future__ import annotations

import functools
import math

import numpy as np
from numpy.typing import NDArray

from warmtransfer.media.audio import PHONE_RATE, AudioClip

__all__ = ["hold_music"]

BAR_SECONDS = 3.5  # four beats at about 68.6 bpm
STEPS_PER_BAR = 8  # arpeggio eighth notes
TARGET_RMS_DBFS = -20.0
BAND_TOP_HZ = 3400.0

# (pad voicing, arpeggio notes) per bar, MIDI note numbers; nothing below E4 (330 Hz).
_PROGRESSION: tuple[tuple[tuple[int, ...], tuple[int, ...]], ...] = (
    ((64, 67, 72), (72, 76, 79, 84)),  # C
    ((64, 69, 72), (69, 72, 76, 81)),  # Am
    ((65, 69, 72), (69, 72, 77, 81)),  # F
    ((67, 71, 74), (71, 74, 79, 83)),  # G
)
# Index into each bar's arpeggio notes per eighth; None rests (the last bar breathes).
_PATTERN = (0, 1, 2, 3, 2, 1, 2, 1)
_LAST_PATTERN = (0, 1, 2, 3, 2, 1, None, None)

_PAD_PARTIALS = ((1.0, 1.0), (2.0, 0.12))  # (harmonic, amplitude)
_PLUCK_PARTIALS = ((1.0, 1.0), (2.0, 0.3), (3.0, 0.08))
_PAD_DETUNE = 1.003  # a second voice slightly sharp: slow beating, a warmer pad
_PAD_LEVEL = 0.22
_PLUCK_LEVEL = 0.5
_PAD_ATTACK = 0.8
_PAD_RELEASE = 0.9
_PLUCK_ATTACK = 0.012
_PLUCK_DECAY = 0.35  # time constant, seconds
_PLUCK_LENGTH = 1.6


def _hz(note: int) -> float:
    return 440.0 * math.pow(2.0, (note - 69) / 12)


def _tone(
    freq: float,
    seconds: NDArray[np.float64],
    partials: tuple[tuple[float, float], ...],
    rate: int,
) -> NDArray[np.float64]:
    """Sum of sine partials, dropping any above the phone band or the Nyquist frequency."""
    top = min(BAND_TOP_HZ, 0.45 * rate)
    out = np.zeros_like(seconds)
    for harmonic, amplitude in partials:
        if harmonic * freq < top:
            out += amplitude * np.sin(2 * np.pi * harmonic * freq * seconds)
    return out


def _add_circular(track: NDArray[np.float64], start: int, sound: NDArray[np.float64]) -> None:
    """Mix `sound` into `track` at `start`, wrapping past the end back to the beginning."""
    index = (start + np.arange(len(sound))) % len(track)
    np.add.at(track, index, sound)


def _pad(freq: float, hold: float, rate: int) -> NDArray[np.float64]:
    """A pad note: slow raised-cosine attack, held, slow raised-cosine release."""
    t = np.arange(round((hold + _PAD_RELEASE) * rate)) / rate
    attack = np.clip(t / _PAD_ATTACK, 0.0, 1.0)
    release = np.clip((hold + _PAD_RELEASE - t) / _PAD_RELEASE, 0.0, 1.0)
    envelope = (0.5 - 0.5 * np.cos(np.pi * attack)) * (0.5 - 0.5 * np.cos(np.pi * release))
    voices = _tone(freq, t, _PAD_PARTIALS, rate) + _tone(freq * _PAD_DETUNE, t, _PAD_PARTIALS, rate)
    return 0.5 * envelope * voices


def _pluck(freq: float, rate: int) -> NDArray[np.float64]:
    """An arpeggio note: quick smooth attack, exponential decay, faded to zero at its end."""
    t = np.arange(round(_PLUCK_LENGTH * rate)) / rate
    attack = 0.5 - 0.5 * np.cos(np.pi * np.clip(t / _PLUCK_ATTACK, 0.0, 1.0))
    tail = np.clip((_PLUCK_LENGTH - t) / 0.2, 0.0, 1.0)
    envelope = attack * np.exp(-t / _PLUCK_DECAY) * tail
    return envelope * _tone(freq, t, _PLUCK_PARTIALS, rate)


@functools.lru_cache(maxsize=4)
def hold_music(rate: int = PHONE_RATE) -> AudioClip:
    """The hold-music loop at `rate` (the same read-only clip on every call)."""
    if rate <= 0:
        raise ValueError(f"sample rate must be positive, not {rate}")
    bars = len(_PROGRESSION)
    track = np.zeros(round(bars * BAR_SECONDS * rate))
    step = BAR_SECONDS / STEPS_PER_BAR
    for bar, (voicing, arpeggio) in enumerate(_PROGRESSION):
        last = bar == bars - 1
        bar_start = bar * BAR_SECONDS
        # The pads cross-fade into the next bar; the last one lets go early for the seam.
        hold = BAR_SECONDS - (1.1 if last else 0.0)
        for note in voicing:
            _add_circular(track, round(bar_start * rate), _PAD_LEVEL * _pad(_hz(note), hold, rate))
        for eighth, index in enumerate(_LAST_PATTERN if last else _PATTERN):
            if index is not None:
                start = round((bar_start + eighth * step) * rate)
                _add_circular(track, start, _PLUCK_LEVEL * _pluck(_hz(arpeggio[index]), rate))
    rms = float(np.sqrt(np.mean(track**2)))
    track *= 32768.0 * 10 ** (TARGET_RMS_DBFS / 20) / rms
    samples = np.clip(np.rint(track), -32768, 32767).astype(np.int16)
    samples.flags.writeable = False
    return AudioClip(samples, rate)

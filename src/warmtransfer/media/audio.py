"""The one audio value that crosses layers: 16-bit mono PCM with its sample rate.

Speech renders clips, consult hands them to a leg, telephony plays them; all agree on this type so
no layer has to guess a sample rate (phone legs are 8 kHz, piper speaks at 22.05 kHz).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

PHONE_RATE = 8000

Samples = NDArray[np.int16]


@dataclass(frozen=True, eq=False)
class AudioClip:
    samples: Samples
    rate: int

    def __post_init__(self) -> None:
        if self.samples.dtype != np.int16 or self.samples.ndim != 1:
            raise ValueError("an AudioClip holds 1-D int16 samples")
        if self.rate <= 0:
            raise ValueError(f"sample rate must be positive, not {self.rate}")

    @property
    def duration(self) -> float:
        return len(self.samples) / self.rate

    @classmethod
    def silence(cls, seconds: float, rate: int = PHONE_RATE) -> AudioClip:
        return cls(np.zeros(round(seconds * rate), dtype=np.int16), rate)

"""Per-leg recording: what the far end sent us (channel 0) and what we sent them (channel 1).

Audio is placed by arrival/send time, not just appended, so a recording's timeline matches the
call's: silence where nothing arrived, which is what tests check ("non-silent in the right
windows") and what a reviewer listening to a transfer wants to hear.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from numpy.typing import NDArray

from warmtransfer.media.audio import PHONE_RATE
from warmtransfer.media.wav import write_wav

_SLACK = 480  # samples of jitter tolerated before a gap is filled with silence (60 ms)


class _Track:
    def __init__(self) -> None:
        self.chunks: list[NDArray[np.int16]] = []
        self.length = 0

    def put(self, position: int, pcm: NDArray[np.int16]) -> None:
        if position > self.length + _SLACK:
            gap = position - self.length
            self.chunks.append(np.zeros(gap, dtype=np.int16))
            self.length += gap
        self.chunks.append(pcm)
        self.length += len(pcm)

    def samples(self, length: int) -> NDArray[np.int16]:
        data = np.concatenate(self.chunks) if self.chunks else np.zeros(0, dtype=np.int16)
        out = np.zeros(length, dtype=np.int16)
        out[: min(length, len(data))] = data[:length]
        return out


class Recorder:
    """Records one leg from `start` (a loop/monotonic time) on, in two channels."""

    def __init__(self, start: float, rate: int = PHONE_RATE) -> None:
        self.start = start
        self.rate = rate
        self._received = _Track()
        self._sent = _Track()
        self.closed = False

    def _position(self, at: float) -> int:
        return max(0, int((at - self.start) * self.rate))

    def received(self, pcm: NDArray[np.int16], at: float) -> None:
        if not self.closed:
            self._received.put(self._position(at), pcm)

    def sent(self, pcm: NDArray[np.int16], at: float) -> None:
        if not self.closed:
            self._sent.put(self._position(at), pcm)

    def samples(self) -> NDArray[np.int16]:
        """(frames, 2) int16: column 0 received, column 1 sent."""
        length = max(self._received.length, self._sent.length)
        return np.stack([self._received.samples(length), self._sent.samples(length)], axis=1)

    def save(self, path: str | Path) -> Path:
        self.closed = True
        out = Path(path)
        write_wav(out, self.samples(), self.rate)
        return out

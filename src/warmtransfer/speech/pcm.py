"""Incoming audio for the listening side of speech: frames off a leg, at whatever rate it runs.

Two small things every streaming detector here needs, so they live in one place:

- Frames arrive as int16 numpy arrays or raw little-endian bytes (what a media session or a
  recorder holds). Anything else (floats, stereo, odd byte counts) is refused with a message
  saying what is accepted, rather than being silently reinterpreted as noise.
- The detectors want a fixed rate (pocketsphinx 16 kHz, webrtcvad 8/16/32/48 kHz) while a leg
  delivers 20 ms frames at its codec's rate. Resampling each frame on its own with
  `media.wav.resample` (one-shot soxr) restarts the filter at every frame edge, which adds a
  click every 20 ms; a soxr stream keeps the filter state between frames, so frame-by-frame
  output equals whole-clip output.
"""

from __future__ import annotations

import numpy as np
import soxr
from numpy.typing import NDArray

__all__ = ["Frame", "StreamResampler", "as_samples"]

Frame = NDArray[np.int16] | bytes | bytearray | memoryview
"""16-bit mono PCM: an int16 array, or little-endian bytes."""


def as_samples(frame: Frame) -> NDArray[np.int16]:
    """A frame as 1-D int16 samples; a clear error for anything that is not 16-bit mono PCM."""
    if isinstance(frame, bytes | bytearray | memoryview):
        data = bytes(frame)
        if len(data) % 2:
            raise ValueError(
                f"16-bit PCM has an even number of bytes, not {len(data)}; "
                "pass little-endian int16 mono samples"
            )
        return np.frombuffer(data, dtype="<i2").astype(np.int16, copy=False)
    if not isinstance(frame, np.ndarray):
        raise TypeError(f"expected int16 samples or PCM bytes, not {type(frame).__name__}")
    if frame.dtype != np.int16:
        raise TypeError(
            f"expected 16-bit PCM (int16) samples, not {frame.dtype}; "
            "convert float audio with np.clip(x * 32768, -32768, 32767).astype(np.int16)"
        )
    if frame.ndim != 1:
        raise ValueError(f"expected mono (1-D) samples, not an array of shape {frame.shape}")
    return frame


class StreamResampler:
    """Frame-by-frame resampling to one output rate, the input rate taken from each frame.

    A change of input rate mid-stream (a re-INVITE to another codec) flushes the old filter
    and starts a new one, so no audio is lost or mixed across rates.
    """

    def __init__(self, out_rate: int) -> None:
        if out_rate <= 0:
            raise ValueError(f"sample rate must be positive, not {out_rate}")
        self.out_rate = out_rate
        self._in_rate: int | None = None
        self._stream: soxr.ResampleStream | None = None

    def feed(self, samples: NDArray[np.int16], rate: int) -> NDArray[np.int16]:
        """Resampled output for this frame (soxr may hold back a few ms until the next)."""
        if rate <= 0:
            raise ValueError(f"sample rate must be positive, not {rate}")
        flushed = np.zeros(0, dtype=np.int16)
        if rate != self._in_rate:
            flushed = self.flush()
            self._in_rate = rate
            if rate != self.out_rate:
                self._stream = soxr.ResampleStream(rate, self.out_rate, 1, dtype="int16")
        if self._stream is None:
            out = samples
        else:
            out = np.asarray(self._stream.resample_chunk(samples), dtype=np.int16)
        return np.concatenate([flushed, out]) if len(flushed) else out

    def flush(self) -> NDArray[np.int16]:
        """What the filter still holds, at the end of a stream; the next frame starts afresh."""
        stream, self._stream, self._in_rate = self._stream, None, None
        if stream is None:
            return np.zeros(0, dtype=np.int16)
        tail = stream.resample_chunk(np.zeros(0, dtype=np.int16), last=True)
        return np.asarray(tail, dtype=np.int16)

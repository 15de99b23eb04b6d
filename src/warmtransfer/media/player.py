"""Playback of a clip into an RTP stream: hold music (looped), prompts, speech.

The clip is encoded once when playback starts, so each 20 ms tick only slices bytes: a held
caller costs a slice and a send, not a G.711 encode. `stop()` takes effect on the next tick.
"""

from __future__ import annotations

import asyncio
import weakref

import numpy as np

from warmtransfer.media.audio import PHONE_RATE, AudioClip
from warmtransfer.media.g711 import encoder
from warmtransfer.media.wav import resample

FRAME = 160  # samples per 20 ms at 8 kHz; G.711 is one byte per sample


_encoded: weakref.WeakKeyDictionary[AudioClip, dict[tuple[str, float], bytes]] = (
    weakref.WeakKeyDictionary()
)


def encode_clip(clip: AudioClip, codec: str, volume: float = 1.0) -> bytes:
    """The clip as a G.711 payload stream, whole frames, cached per clip (hold music repeats)."""
    per_clip = _encoded.setdefault(clip, {})
    key = (codec, volume)
    if key not in per_clip:
        samples = (
            clip.samples
            if clip.rate == PHONE_RATE
            else resample(clip.samples, clip.rate, PHONE_RATE)
        )
        if volume != 1.0:
            samples = np.clip(samples.astype(np.float32) * volume, -32768, 32767).astype(np.int16)
        pad = (-len(samples)) % FRAME
        if pad:
            samples = np.concatenate([samples, np.zeros(pad, dtype=np.int16)])
        per_clip[key] = encoder(codec)(samples)
    return per_clip[key]


class Playback:
    """One clip being played on one stream. `done` resolves when it ends or is stopped."""

    def __init__(self, clip: AudioClip, codec: str, *, loop: bool = False, volume: float = 1.0):
        self._payload = encode_clip(clip, codec, volume)
        self._pos = 0
        self.loop = loop
        self.done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.first_sent_at: float | None = None
        self.stopped = False

    @property
    def duration(self) -> float:
        return len(self._payload) / PHONE_RATE

    def next_payload(self, now: float) -> bytes | None:
        """The next 20 ms of encoded audio, or None once finished."""
        if self.stopped:
            return None
        if self._pos >= len(self._payload):
            if not self.loop or not self._payload:
                self._finish()
                return None
            self._pos = 0
        chunk = self._payload[self._pos : self._pos + FRAME]
        self._pos += FRAME
        if self.first_sent_at is None:
            self.first_sent_at = now
        return chunk

    def stop(self) -> None:
        self.stopped = True
        self._finish()

    def _finish(self) -> None:
        if not self.done.done():
            self.done.set_result(None)

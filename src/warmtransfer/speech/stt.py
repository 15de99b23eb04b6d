"""Speech-to-text: what the target says after the briefing ("yes", "no", "repeat that").

Offline by default, with pocketsphinx 5 and the en-us model it ships. Two ways to listen:

- `PocketsphinxSTT` transcribes a whole clip with the n-gram model. On clean 16 kHz speech it is
  exact; on 8 kHz phone audio it is poor, so nothing decides a transfer on its free text.
- `KeywordSpotter` listens for a short list of phrases with pocketsphinx's keyphrase (KWS) search,
  each phrase with its own threshold; that is what decides accept / decline / repeat. A JSGF
  grammar was tried first and was worse: it forces every sound onto some phrase, so noise and
  unrelated speech come out as "yes" or "no", where KWS only fires above a threshold.

Facts measured on this machine that shaped the code (piper's voice at 8 kHz, G.711 round trip,
levels 0/-10/-20 dB, white noise at -60/-50 dBFS, hold music, tones; see the tests):

- pocketsphinx fails with samprate=8000 and this model, so phone audio is upsampled to 16 kHz
  (soxr). Upsampled audio has nothing above 4 kHz and its cepstral mean is far from the model's
  starting estimate (40,3,-1,0...) from which live CMN adapts, so each utterance began with the
  wrong normalisation: "yes please" was missed at every threshold, and "take the call" fired
  only at 1e-15 or looser, where "thanks for calling" fires it too on a noisy line. Starting CMN
  at the mean of phone-band speech (`PHONE_CMN`, from about a minute of upsampled 8 kHz speech)
  fixed both: now 1e-1 catches it.
- Live CMN adapts across utterances, so results depended on what the decoder heard before. Every
  session restarts from the same CMN: a clip gives the same hits whatever came before it.
- KWS reports a phrase about 100 ms (`kws_delay`, 10 frames) after it ends, so an utterance
  needs audio after it: `finish()` pads 0.5 s of silence. On a live leg the line's audio does.
- Thresholds: with the CMN fix, most phrases are best at the strictest useful value (1e-1; above
  that pocketsphinx behaves the same). `DEFAULT_THRESHOLDS` came from per-phrase sweeps. Over 238
  answers (34 sentences x 7 line conditions) they heard 112/112 accepts, 67/70 declines and 42/56
  repeats (quiet lines lose "repeat" first); nothing but an accept ever fired an accept; the
  false hits were 11 "no"s inside a voicemail greeting or a quiet "Hello, support", none on
  music, tones, noise or silence. "accept", "yeah", "yep" and "what" were unreliable and are
  not in the defaults.
- "no" (two phones) fires on music and tones: on the project's hold music about every 10 s, on
  sine melodies and chords too. Those hits all have a near-constant spectrum: the median spectral
  flux (300-3400 Hz, 32 ms frames) of the hit was at most 0.14 for every music/tone hit and at
  least 0.44 for every true hit (188 hits), so hits under `MIN_FLUX` (0.25) are dropped.
  It is a heuristic, not a music detector: audio across a chord change scores like speech, so a
  hit spanning one could pass; and speech mistaken for a phrase is not caught by it at all.
- pocketsphinx ends the process (exit(1) from C) on a corrupt model file instead of raising, so
  each model is first loaded in a child process (`_probe`); a bad one becomes an error here.
- A short answer costs 20-50 ms of CPU; `process_raw` blocks, so decoding runs in 20 ms chunks in
  one worker thread per engine (as piper does in tts.py), never on the event loop.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import dataclasses
import importlib.util
import os
import re
import subprocess
import sys
import tempfile
import threading
from collections import deque
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Protocol, TypeVar

import numpy as np
from numpy.typing import NDArray

from warmtransfer.media.audio import PHONE_RATE, AudioClip
from warmtransfer.media.wav import resample
from warmtransfer.speech.pcm import Frame, StreamResampler, as_samples
from warmtransfer.speech.tts import SpeechProviderError

if TYPE_CHECKING:
    from pocketsphinx import Decoder

__all__ = [
    "DEFAULT_PHRASES",
    "DEFAULT_THRESHOLDS",
    "KeywordSpotter",
    "PocketsphinxModel",
    "PocketsphinxSTT",
    "SpeechToText",
    "Spotted",
    "SpotterSession",
]

DECODER_RATE = 16000
"""The one rate the en-us model decodes; everything else is resampled to it."""

CHUNK_SAMPLES = DECODER_RATE // 50  # 20 ms
SAMPLES_PER_FRAME = DECODER_RATE // 100  # pocketsphinx computes 100 feature frames a second
END_PADDING_SECONDS = 0.5

PHONE_CMN = "48.5,30.9,-32.8,38.4,-20.2,-2.0,12.0,-27.2,14.5,-7.2,3.4,8.1,-16.6"
"""Cepstral mean of 8 kHz speech upsampled to 16 kHz: where live CMN starts for phone audio."""

DEFAULT_PHRASES: Mapping[str, str] = {
    "yes": "accept",
    "yes please": "accept",
    "take the call": "accept",
    "no": "decline",
    "no thank you": "decline",
    "repeat": "repeat",
}
"""Phrase -> meaning for a target's answer to "will you take the call?"."""

DEFAULT_THRESHOLDS: Mapping[str, float] = {
    "yes": 1e-1,
    "yes please": 1e-5,
    "take the call": 1e-1,
    "no": 1e-1,
    "no thank you": 1e-10,
    "repeat": 1e-2,
}
"""Measured thresholds; a phrase not listed gets `fallback_threshold(phones)`."""

MIN_FLUX = 0.25
"""Hits whose spectrum hardly changes (music, tones) are dropped; see the module docstring."""

_HISTORY_SECONDS = 5.0  # audio kept to measure a hit's spectrum (longer than any phrase)
_FLUX_FRAME = 512  # 32 ms at 16 kHz
_FLUX_BAND = slice(10, 110)  # FFT bins of 31.25 Hz: 312-3437 Hz, the phone band
_FLUX_QUIET = 1e-3  # frames 30 dB under the hit's loudest are not judged

_PROVIDER = "pocketsphinx"
_SEARCH = "phrases"
_LOG_LEVEL = "FATAL"  # pocketsphinx logs every load at INFO to stderr; failures raise anyway
_T = TypeVar("_T")


def fallback_threshold(phones: int) -> float:
    """A starting threshold for a phrase nobody measured: looser the longer it is.

    It gives the measured values of the short phrases ("no", "yes": 1e-1; "repeat": 1e-2). Long
    phrases vary more ("take the call" 1e-1, "no thank you" 1e-10): tune those on recordings.
    """
    return float(10.0 ** -max(1, phones - 3))


def spectral_flux(samples: NDArray[np.int16]) -> float | None:
    """Median change of the phone-band spectrum between 32 ms frames of 16 kHz audio.

    Speech moves (formants, pitch) and scores 0.4-1.0; a held note or tone stays put and scores
    under 0.15. None when there are too few audible frames to judge.
    """
    hop = _FLUX_FRAME // 2
    if len(samples) < _FLUX_FRAME + 2 * hop:
        return None
    frames = np.lib.stride_tricks.sliding_window_view(samples.astype(np.float64), _FLUX_FRAME)
    frames = frames[::hop] * np.hanning(_FLUX_FRAME)
    power = np.abs(np.fft.rfft(frames, axis=1)[:, _FLUX_BAND]) ** 2
    energy = power.sum(axis=1)
    if energy.max() <= 0.0:
        return None
    power = power[energy >= energy.max() * _FLUX_QUIET]
    if len(power) < 3:
        return None
    shape = power / power.sum(axis=1, keepdims=True)
    return float(np.median(np.abs(np.diff(shape, axis=0)).sum(axis=1)))


class SpeechToText(Protocol):
    """Anything that can write down what was said in a clip."""

    async def transcribe(self, clip: AudioClip) -> str: ...


@dataclass(frozen=True)
class PocketsphinxModel:
    """Where pocketsphinx's model files are; by default the en-us model the wheel ships."""

    acoustic: Path
    dictionary: Path
    language_model: Path

    @classmethod
    def default(cls) -> PocketsphinxModel:
        if importlib.util.find_spec("pocketsphinx") is None:
            raise SpeechProviderError(
                f"{_PROVIDER}: the pocketsphinx package is not installed; "
                "run `pip install pocketsphinx` (it ships the en-us model)"
            )
        from pocketsphinx import get_model_path

        root = Path(get_model_path()) / "en-us"
        return cls(root / "en-us", root / "cmudict-en-us.dict", root / "en-us.lm.bin")

    def check(self, *, language_model: bool = True) -> None:
        """Raise SpeechProviderError naming the first missing file."""
        if not (self.acoustic / "mdef").is_file():
            raise SpeechProviderError(
                f"{_PROVIDER}: no acoustic model at {self.acoustic} (no mdef file there); "
                "run `pip install pocketsphinx` for the en-us model or set acoustic= to a "
                "pocketsphinx acoustic model directory"
            )
        if not self.dictionary.is_file():
            raise SpeechProviderError(
                f"{_PROVIDER}: pronunciation dictionary not found at {self.dictionary}; "
                "set dictionary= to a pocketsphinx .dict file"
            )
        if language_model and not self.language_model.is_file():
            raise SpeechProviderError(
                f"{_PROVIDER}: language model not found at {self.language_model}; "
                "set language_model= to a pocketsphinx .lm.bin or ARPA file"
            )


_PROBE = """
import sys
from pocketsphinx import Decoder
hmm, dictionary, lm = sys.argv[1:4]
Decoder(hmm=hmm, dict=dictionary, lm=lm or None, samprate=16000, loglevel="ERROR")
"""
_probed: set[tuple[Path, Path, Path | None]] = set()
_probe_lock = threading.Lock()


def _probe(model: PocketsphinxModel, *, language_model: bool) -> None:
    """Load the model once in a child process before this process loads it.

    pocketsphinx does not raise on a corrupt model file: its C code logs FATAL and calls exit(),
    which would end the whole engine and every call in it. A child process takes that hit
    instead (0.2-0.5 s, once per model per process) and its last words become the error.
    """
    key = (model.acoustic, model.dictionary, model.language_model if language_model else None)
    with _probe_lock:
        if key in _probed:
            return
        lm = str(model.language_model) if language_model else ""
        command = [sys.executable, "-c", _PROBE, str(model.acoustic), str(model.dictionary), lm]
        try:
            probe = subprocess.run(command, capture_output=True, text=True, timeout=60)
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise SpeechProviderError(f"{_PROVIDER}: cannot test-load the model: {exc}") from exc
        if probe.returncode != 0:
            lines = [line.strip() for line in probe.stderr.splitlines() if line.strip()]
            reason = lines[-1] if lines else f"exit status {probe.returncode}"
            raise SpeechProviderError(
                f"{_PROVIDER}: cannot load the model (acoustic {model.acoustic}, dictionary "
                f"{model.dictionary}): {reason}; reinstall pocketsphinx (`pip install "
                "--force-reinstall pocketsphinx`) or point to a complete model"
            )
        _probed.add(key)


def _decoder(model: PocketsphinxModel, **search: str | None) -> Decoder:
    """A decoder for one search (runs in a worker thread: loading takes 0.1-0.5 s)."""
    from pocketsphinx import Decoder

    try:
        return Decoder(
            hmm=str(model.acoustic),
            dict=str(model.dictionary),
            samprate=DECODER_RATE,
            loglevel=_LOG_LEVEL,
            **search,
        )
    except (RuntimeError, ValueError) as exc:
        raise SpeechProviderError(
            f"{_PROVIDER}: cannot load the model (acoustic {model.acoustic}, dictionary "
            f"{model.dictionary}): {exc}; reinstall pocketsphinx or point to a complete model"
        ) from exc


def _phrase_dictionary(full: Path, words: set[str]) -> Path:
    """A pronunciation dictionary with only `words` (and their alternates, ``word(2)``), taken
    from `full`, in a temporary file the caller deletes. A word `full` lacks is left out, and
    the lookup that follows names it."""
    handle, name = tempfile.mkstemp(prefix="warmtransfer-kws-", suffix=".dict")
    with os.fdopen(handle, "w", encoding="utf-8") as out, full.open(encoding="utf-8") as source:
        for line in source:
            head = line.split(maxsplit=1)[0] if line.strip() else ""
            if head.split("(", 1)[0] in words:
                out.write(line)
    return Path(name)


def _to_decoder_rate(clip: AudioClip) -> NDArray[np.int16]:
    """16 kHz, 0.5 s of silence after, and a +-1 LSB dither.

    Without dither the n-gram search hears words in digital silence ("dog" in a second of
    zeros: the log energy of a zero frame is degenerate). pocketsphinx's own `dither` draws new
    noise each time, so one clip gave different words on each run; this one is seeded.
    """
    samples = resample(clip.samples, clip.rate, DECODER_RATE)
    padding = np.zeros(round(END_PADDING_SECONDS * DECODER_RATE), dtype=np.int16)
    audio = np.concatenate([samples, padding]).astype(np.int32)
    audio += np.random.default_rng(0).integers(-1, 2, len(audio), dtype=np.int32)
    return np.clip(audio, -32768, 32767).astype(np.int16)


class PocketsphinxSTT:
    """Offline free transcription with pocketsphinx's n-gram model (good on clean wideband)."""

    def __init__(self, model: PocketsphinxModel | None = None) -> None:
        self._model_override = model
        self._decoder: Decoder | None = None
        self._load_lock = threading.Lock()
        self._worker = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="pocketsphinx")

    @property
    def loaded(self) -> bool:
        return self._decoder is not None

    def _model(self) -> PocketsphinxModel:
        return self._model_override or PocketsphinxModel.default()

    def check(self) -> None:
        """Raise SpeechProviderError if pocketsphinx or a model file is missing (loads nothing)."""
        self._model().check()

    def _load(self) -> Decoder:
        with self._load_lock:
            if self._decoder is None:
                model = self._model()
                model.check()
                _probe(model, language_model=True)
                self._decoder = _decoder(model, lm=str(model.language_model))
            return self._decoder

    def _transcribe(self, clip: AudioClip) -> str:
        """Decode a whole clip (runs in the worker thread)."""
        decoder = self._load()
        samples = _to_decoder_rate(clip)
        try:
            decoder.start_utt()
            try:
                # the whole clip at once: CMN from the whole utterance, not adapted live
                decoder.process_raw(samples.tobytes(), full_utt=True)
            finally:
                decoder.end_utt()
        except RuntimeError as exc:
            raise SpeechProviderError(f"{_PROVIDER}: decoding failed: {exc}") from exc
        hypothesis = decoder.hyp()
        return "" if hypothesis is None else " ".join(hypothesis.hypstr.split())

    async def warm_up(self) -> None:
        """Load the model now, off the event loop, instead of on the first request."""
        await asyncio.get_running_loop().run_in_executor(self._worker, self._load)

    async def transcribe(self, clip: AudioClip) -> str:
        """The words heard in `clip` (any rate), lower case; "" for silence."""
        if len(clip.samples) == 0:
            return ""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._worker, self._transcribe, clip)

    def close(self) -> None:
        """Stop the worker thread once queued work is done (the engine cannot be used after)."""
        self._worker.shutdown(wait=False)


@dataclass(frozen=True)
class Spotted:
    """A phrase heard, what it means, and when it began (seconds of audio into the session)."""

    phrase: str
    meaning: str
    at_seconds: float


def normalize_phrase(phrase: str) -> str:
    """Lower case, words only (apostrophes kept: the dictionary has "i'll"), single spaces."""
    return " ".join(re.sub(r"[^a-z' ]+", " ", phrase.lower()).split())


class KeywordSpotter:
    """Listens for a few phrases in streams of phone audio, one decoder per live session.

    Decoders are pooled: a session borrows one (loading it off the loop if none is idle, 0.25 s)
    and gives it back when it ends, so concurrent transfers each listen with their own decoder
    while all of them share one worker thread.
    """

    def __init__(
        self,
        phrases: Mapping[str, str] = DEFAULT_PHRASES,
        thresholds: Mapping[str, float] | None = None,
        *,
        min_flux: float = MIN_FLUX,
        model: PocketsphinxModel | None = None,
    ) -> None:
        if not phrases:
            raise ValueError("a keyword spotter needs at least one phrase")
        self._meanings: dict[str, str] = {}
        for phrase, meaning in phrases.items():
            key = normalize_phrase(phrase)
            if not key:
                raise ValueError(f"phrase {phrase!r} has no words")
            self._meanings[key] = meaning
        given = {normalize_phrase(p): t for p, t in (thresholds or {}).items()}
        unknown = sorted(set(given) - set(self._meanings))
        if unknown:
            raise ValueError(f"thresholds given for phrases that are not spotted: {unknown}")
        for phrase, threshold in given.items():
            if not 0.0 < threshold <= 1.0:
                raise ValueError(f"threshold for {phrase!r} must be in (0, 1], not {threshold}")
        if min_flux < 0.0:
            raise ValueError(f"min_flux must not be negative, not {min_flux}")
        self.min_flux = min_flux
        self._given = given
        self._thresholds: dict[str, float] | None = None
        self._model_override = model
        self._idle: list[Decoder] = []
        self._wide_cmn = ""
        self._load_lock = threading.Lock()
        self._dictionary: Path | None = None  # the phrases' words, written at the first load
        self._worker = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="kws")

    def _words(self) -> set[str]:
        return {word for phrase in self._meanings for word in phrase.split()}

    @property
    def phrases(self) -> Mapping[str, str]:
        """Phrase -> meaning, phrases normalised."""
        return dict(self._meanings)

    @property
    def thresholds(self) -> Mapping[str, float] | None:
        """Phrase -> threshold in use; None until the first decoder is loaded (the fallback
        threshold depends on the phrase's pronunciation)."""
        return None if self._thresholds is None else dict(self._thresholds)

    def _model(self) -> PocketsphinxModel:
        return self._model_override or PocketsphinxModel.default()

    def check(self) -> None:
        """Raise SpeechProviderError if pocketsphinx or a model file is missing (loads nothing)."""
        self._model().check(language_model=False)

    def _thresholds_for(self, lookup: Decoder) -> dict[str, float]:
        """Every phrase's threshold; ValueError for a word the dictionary cannot pronounce."""
        thresholds: dict[str, float] = {}
        for phrase in self._meanings:
            phones = 0
            for word in phrase.split():
                pronunciation = lookup.lookup_word(word)
                if pronunciation is None:
                    raise ValueError(
                        f"{_PROVIDER}: {word!r} (in phrase {phrase!r}) is not in the "
                        f"pronunciation dictionary {self._model().dictionary}; use another word"
                    )
                phones += len(pronunciation.split())
            measured = DEFAULT_THRESHOLDS.get(phrase, fallback_threshold(phones))
            thresholds[phrase] = self._given.get(phrase, measured)
        return thresholds

    @contextlib.contextmanager
    def _keyword_file(self, thresholds: Mapping[str, float]) -> Iterator[str]:
        """pocketsphinx reads per-phrase thresholds only from a file: `phrase /1e-N/` a line."""
        handle, name = tempfile.mkstemp(prefix="warmtransfer-kws-", suffix=".list")
        try:
            with os.fdopen(handle, "w", encoding="utf-8") as out:
                for phrase, threshold in thresholds.items():
                    out.write(f"{phrase} /{threshold:.0e}/\n")
            yield name
        finally:
            os.unlink(name)

    def _new_decoder(self) -> Decoder:
        """Load one more decoder for the phrases (runs in the worker thread)."""
        with self._load_lock:
            model = self._model()
            model.check(language_model=False)
            _probe(model, language_model=False)
            # No n-gram model (0.2 s to load for nothing), and a dictionary of the phrases'
            # words only: the full one costs 27 MB per decoder, one decoder per call listened
            # to at once. With it loaded each phrase's length is known before its threshold is
            # written down.
            if self._dictionary is None:
                self._dictionary = _phrase_dictionary(model.dictionary, self._words())
            decoder = _decoder(dataclasses.replace(model, dictionary=self._dictionary), lm=None)
            if not self._wide_cmn:
                self._wide_cmn = decoder.get_cmn()  # the model's own starting estimate
            if self._thresholds is None:
                self._thresholds = self._thresholds_for(decoder)
            with self._keyword_file(self._thresholds) as path:
                try:
                    decoder.add_kws(_SEARCH, path)
                    decoder.activate_search(_SEARCH)
                except (RuntimeError, KeyError) as exc:
                    raise SpeechProviderError(
                        f"{_PROVIDER}: cannot set up keyword search for {list(self._meanings)}: "
                        f"{exc}"
                    ) from exc
            return decoder

    async def _run(self, call: Callable[[], _T]) -> _T:
        return await asyncio.get_running_loop().run_in_executor(self._worker, call)

    async def warm_up(self) -> None:
        """Load one decoder now, off the event loop, so the first session starts at once."""
        if not self._idle:
            self._idle.append(await self._run(self._new_decoder))

    async def _borrow(self) -> Decoder:
        if self._idle:
            return self._idle.pop()
        return await self._run(self._new_decoder)

    def _give_back(self, decoder: Decoder) -> None:
        self._idle.append(decoder)

    def listen(self) -> SpotterSession:
        """A new streaming session: `async with spotter.listen() as session: ...`."""
        return SpotterSession(self)

    async def spot(self, clip: AudioClip) -> list[Spotted]:
        """Every phrase heard in a whole clip (any rate), as a fresh session would hear it."""
        async with self.listen() as session:
            await session.feed(clip.samples, clip.rate)
            await session.finish()
            return session.hits

    def close(self) -> None:
        """Stop the worker thread once queued work is done (the spotter cannot be used after)."""
        self._worker.shutdown(wait=False)
        if self._dictionary is not None:
            self._dictionary.unlink(missing_ok=True)


class SpotterSession:
    """One stream of audio listened to from its start; times are seconds of audio fed.

    Feed frames as they arrive (any size, any rate: they are resampled to 16 kHz and decoded in
    20 ms chunks in the spotter's worker thread); each `feed` returns the phrases it completed.
    After a hit the decoder starts a new utterance, so a phrase is reported once and the next
    one can follow. `finish` ends the stream with 0.5 s of silence so that a phrase said last is
    reported too. Leaving the `async with` block gives the decoder back to the spotter.
    """

    def __init__(self, spotter: KeywordSpotter) -> None:
        self._spotter = spotter
        self._decoder: Decoder | None = None
        self._resampler = StreamResampler(DECODER_RATE)
        self._fed = 0  # samples at 16 kHz given to the decoder
        self._utterance_start = 0  # where the current utterance began, in those samples
        self._pending = np.zeros(0, dtype=np.int16)  # under one 20 ms chunk, kept for later
        self._history: deque[NDArray[np.int16]] = deque()  # the last few seconds decoded
        self._history_start = 0
        self._in_utterance = False
        self._phone_band: bool | None = None
        self._hits: list[Spotted] = []
        self._seconds = 0.0
        self._finished = False
        self._broken = False

    @property
    def hits(self) -> list[Spotted]:
        """Every phrase heard so far, in order."""
        return list(self._hits)

    @property
    def seconds(self) -> float:
        """How much audio has been fed, in seconds."""
        return self._seconds

    async def __aenter__(self) -> SpotterSession:
        if self._decoder is not None:
            raise RuntimeError("a spotter session is entered once")
        self._decoder = await self._spotter._borrow()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        decoder, self._decoder = self._decoder, None
        if decoder is None:
            return
        # queued behind any feed still running in the worker: the decoder goes back to the
        # pool only once it is idle (even if this task is cancelled meanwhile), and a decoder
        # that failed is dropped rather than reused
        done = asyncio.get_running_loop().run_in_executor(
            self._spotter._worker, self._end_utterance, decoder
        )

        def give_back(ended: asyncio.Future[None]) -> None:
            if not ended.cancelled() and ended.exception() is None and not self._broken:
                self._spotter._give_back(decoder)

        done.add_done_callback(give_back)
        with contextlib.suppress(Exception):  # a decoder that cannot end is simply dropped
            await asyncio.shield(done)

    def _ready(self) -> Decoder:
        if self._decoder is None:
            raise RuntimeError("use the session inside `async with spotter.listen() as session`")
        if self._finished:
            raise RuntimeError("this session is finished; start a new one to listen again")
        return self._decoder

    async def feed(self, frame: Frame, rate: int = PHONE_RATE) -> list[Spotted]:
        """Decode one frame of 16-bit mono PCM at `rate`; the phrases it completed."""
        decoder = self._ready()
        samples = as_samples(frame)
        if rate <= 0:
            raise ValueError(f"sample rate must be positive, not {rate}")
        self._seconds += len(samples) / rate
        return await self._spotter._run(lambda: self._feed(decoder, samples, rate))

    async def finish(self) -> list[Spotted]:
        """End the stream with 0.5 s of silence, so that a phrase said last is reported too."""
        decoder = self._ready()
        self._finished = True
        return await self._spotter._run(lambda: self._finish(decoder))

    # -- the rest runs in the spotter's worker thread --

    def _start(self, decoder: Decoder, rate: int) -> None:
        if self._phone_band is None:
            # every session starts from the same normalisation: results do not depend on what
            # the decoder heard before (see the module docstring)
            self._phone_band = rate <= PHONE_RATE
            decoder.set_cmn(PHONE_CMN if self._phone_band else self._spotter._wide_cmn)
        decoder.start_utt()
        self._in_utterance = True
        self._utterance_start = self._fed

    def _feed(self, decoder: Decoder, samples: NDArray[np.int16], rate: int) -> list[Spotted]:
        if not self._in_utterance:
            self._start(decoder, rate)
        return self._decode(decoder, self._resampler.feed(samples, rate))

    def _finish(self, decoder: Decoder) -> list[Spotted]:
        if not self._in_utterance:
            self._start(decoder, PHONE_RATE)
        padding = np.zeros(round(END_PADDING_SECONDS * DECODER_RATE), dtype=np.int16)
        return self._decode(decoder, np.concatenate([self._resampler.flush(), padding]), True)

    def _decode(
        self, decoder: Decoder, audio: NDArray[np.int16], flush: bool = False
    ) -> list[Spotted]:
        if len(self._pending):
            audio = np.concatenate([self._pending, audio])
        whole = len(audio) if flush else len(audio) - len(audio) % CHUNK_SAMPLES
        self._pending = audio[whole:]
        hits: list[Spotted] = []
        try:
            for start in range(0, whole, CHUNK_SAMPLES):
                chunk = audio[start : start + CHUNK_SAMPLES]
                decoder.process_raw(chunk.tobytes())
                self._remember(chunk)
                if decoder.hyp() is not None:
                    hits.extend(self._collect(decoder))
        except RuntimeError as exc:
            self._broken = True
            raise SpeechProviderError(f"{_PROVIDER}: keyword decoding failed: {exc}") from exc
        self._hits.extend(hits)
        return hits

    def _remember(self, chunk: NDArray[np.int16]) -> None:
        self._history.append(chunk)
        self._fed += len(chunk)
        while self._fed - self._history_start - len(self._history[0]) > (
            _HISTORY_SECONDS * DECODER_RATE
        ):
            self._history_start += len(self._history.popleft())

    def _audio(self, start: int, end: int) -> NDArray[np.int16]:
        """Decoded audio between two sample positions (as far as the history reaches)."""
        if not self._history:
            return np.zeros(0, dtype=np.int16)
        kept = np.concatenate(self._history)
        return kept[max(0, start - self._history_start) : max(0, end - self._history_start)]

    def _collect(self, decoder: Decoder) -> list[Spotted]:
        """The phrases in the current hypothesis; then a fresh utterance for the next one."""
        hits = []
        for segment in decoder.seg():
            phrase = normalize_phrase(segment.word)
            meaning = self._spotter._meanings.get(phrase)
            if meaning is None:
                continue
            start = self._utterance_start + segment.start_frame * SAMPLES_PER_FRAME
            end = self._utterance_start + (segment.end_frame + 1) * SAMPLES_PER_FRAME
            flux = spectral_flux(self._audio(start, end))
            if flux is not None and flux < self._spotter.min_flux:
                continue  # a held note or a tone, not speech
            hits.append(Spotted(phrase, meaning, round(start / DECODER_RATE, 2)))
        decoder.end_utt()
        decoder.start_utt()
        self._utterance_start = self._fed
        return hits

    def _end_utterance(self, decoder: Decoder) -> None:
        if self._in_utterance:
            self._in_utterance = False
            decoder.end_utt()

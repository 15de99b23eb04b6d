"""warmtransfer's offline speech providers as livekit-agents plugins.

A livekit `AgentSession` takes its speech-to-text, text-to-speech and voice activity detector as
livekit plugin objects. The engine already has offline providers (piper, pocketsphinx, webrtcvad)
that run with no account and no network; these adapters let the same objects serve a livekit
agent, so an agent on a warmtransfer call needs nothing beyond what the engine already loads:

- `SttAdapter` wraps any `SpeechToText` (`transcribe(clip) -> str`). It is non-streaming: the
  session cuts the caller's speech into utterances with a VAD and hands each one over whole,
  which is also how pocketsphinx decodes best (CMN over the whole utterance).
- `TtsAdapter` wraps any `TextToSpeech` (`synthesize(text, rate) -> AudioClip`). It is
  non-streaming too: piper renders a sentence at once, and livekit's sentence tokenizer feeds
  it one sentence at a time. Asking the provider for the adapter's own rate means one soxr
  resample inside the provider and none in livekit; the default is the phone rate, so nothing is
  resampled again on the way to an 8 kHz leg.
- `VadAdapter` is webrtcvad with the smoothing of `speech.vad.VoiceActivityDetector`: a livekit
  session with a non-streaming STT needs a VAD to find utterances, and the default one
  (livekit's bundled silero, loaded with the turn detector) costs ~250 MB; this costs nothing.

Provider failures (`SpeechProviderError`: no model, no API key) are raised as non-retryable
`APIError`s, because retrying cannot install a model; livekit reports them as session errors.
"""

from __future__ import annotations

import time
import uuid
from collections import deque
from dataclasses import dataclass
from typing import Literal

import numpy as np
from livekit import rtc
from livekit.agents import APIError, stt, tts, utils, vad
from livekit.agents.language import LanguageCode
from livekit.agents.types import (
    DEFAULT_API_CONNECT_OPTIONS,
    NOT_GIVEN,
    APIConnectOptions,
    NotGivenOr,
)
from numpy.typing import NDArray

from warmtransfer.media.audio import PHONE_RATE, AudioClip
from warmtransfer.speech.stt import SpeechToText
from warmtransfer.speech.tts import SpeechProviderError, TextToSpeech
from warmtransfer.speech.vad import SpeechEnded, SpeechStarted, VoiceActivityDetector

__all__ = ["SttAdapter", "TtsAdapter", "VadAdapter", "frame_samples"]


def frame_samples(frame: rtc.AudioFrame) -> NDArray[np.int16]:
    """A livekit frame's audio as 1-D int16 mono samples (channels averaged)."""
    data = np.frombuffer(frame.data, dtype=np.int16)
    if frame.num_channels <= 1:
        return np.array(data, dtype=np.int16)
    channels = data.reshape(-1, frame.num_channels).astype(np.int32)
    mixed: NDArray[np.int16] = (channels.sum(axis=1) // frame.num_channels).astype(np.int16)
    return mixed


def _provider_error(exc: Exception) -> APIError:
    return APIError(str(exc), retryable=not isinstance(exc, SpeechProviderError))


class SttAdapter(stt.STT[Literal["metrics_collected", "error"]]):
    """A warmtransfer `SpeechToText` (e.g. `PocketsphinxSTT`) as a livekit STT (batch only)."""

    def __init__(self, speech_to_text: SpeechToText, *, language: str = "en") -> None:
        super().__init__(
            capabilities=stt.STTCapabilities(
                streaming=False, interim_results=False, offline_recognize=True
            )
        )
        self.speech_to_text = speech_to_text
        self._language = language

    @property
    def model(self) -> str:
        return type(self.speech_to_text).__name__

    @property
    def provider(self) -> str:
        return "warmtransfer"

    async def _recognize_impl(
        self,
        buffer: utils.AudioBuffer,
        *,
        language: NotGivenOr[str] = NOT_GIVEN,
        conn_options: APIConnectOptions,
    ) -> stt.SpeechEvent:
        frame = rtc.combine_audio_frames(buffer)
        clip = AudioClip(frame_samples(frame), frame.sample_rate)
        try:
            text = await self.speech_to_text.transcribe(clip)
        except (SpeechProviderError, OSError, RuntimeError) as exc:
            raise _provider_error(exc) from exc
        spoken = language if isinstance(language, str) else self._language
        return stt.SpeechEvent(
            type=stt.SpeechEventType.FINAL_TRANSCRIPT,
            request_id=uuid.uuid4().hex[:12],
            alternatives=[
                stt.SpeechData(
                    language=LanguageCode(spoken),
                    text=text,
                    start_time=0.0,
                    end_time=clip.duration,
                    confidence=1.0 if text else 0.0,
                )
            ],
        )


class TtsAdapter(tts.TTS[Literal["metrics_collected", "error"]]):
    """A warmtransfer `TextToSpeech` (e.g. `PiperTTS`) as a livekit TTS (non-streaming), mono
    at `sample_rate`."""

    def __init__(self, text_to_speech: TextToSpeech, *, sample_rate: int = PHONE_RATE) -> None:
        if sample_rate <= 0:
            raise ValueError(f"sample rate must be positive, not {sample_rate}")
        super().__init__(
            capabilities=tts.TTSCapabilities(streaming=False),
            sample_rate=sample_rate,
            num_channels=1,
        )
        self.text_to_speech = text_to_speech

    @property
    def model(self) -> str:
        return type(self.text_to_speech).__name__

    @property
    def provider(self) -> str:
        return "warmtransfer"

    def synthesize(
        self, text: str, *, conn_options: APIConnectOptions = DEFAULT_API_CONNECT_OPTIONS
    ) -> tts.ChunkedStream:
        return _ClipStream(tts=self, input_text=text, conn_options=conn_options)


class _ClipStream(tts.ChunkedStream):
    """One sentence: the whole clip, cut by livekit's emitter into 200 ms frames."""

    _tts: TtsAdapter

    async def _run(self, output_emitter: tts.AudioEmitter) -> None:
        adapter = self._tts
        try:
            clip = await adapter.text_to_speech.synthesize(self.input_text, adapter.sample_rate)
        except (SpeechProviderError, OSError, RuntimeError) as exc:
            raise _provider_error(exc) from exc
        output_emitter.initialize(
            request_id=uuid.uuid4().hex[:12],
            sample_rate=clip.rate,
            num_channels=1,
            mime_type="audio/pcm",
        )
        if len(clip.samples):
            output_emitter.push(clip.samples.tobytes())
        output_emitter.flush()


@dataclass(frozen=True)
class _VadOptions:
    aggressiveness: int
    min_speech_ms: int
    hangover_ms: int
    prefix_padding: float
    max_buffered_speech: float


class VadAdapter(vad.VAD):
    """webrtcvad, smoothed as `VoiceActivityDetector` does, as a livekit VAD.

    `hangover_ms` is the silence that ends an utterance (livekit's endpointing delay comes on
    top); `prefix_padding` seconds of audio before the detected start go with the utterance, so
    the STT hears the first syllable."""

    def __init__(
        self,
        *,
        aggressiveness: int = 2,
        min_speech_ms: int = 150,
        hangover_ms: int = 500,
        prefix_padding: float = 0.3,
        max_buffered_speech: float = 30.0,
    ) -> None:
        VoiceActivityDetector(  # fail here, not in the stream's task, on a bad option
            aggressiveness=aggressiveness, min_speech_ms=min_speech_ms, hangover_ms=hangover_ms
        )
        super().__init__(capabilities=vad.VADCapabilities(update_interval=0.02))
        self.options = _VadOptions(
            aggressiveness, min_speech_ms, hangover_ms, prefix_padding, max_buffered_speech
        )

    @property
    def model(self) -> str:
        return "webrtcvad"

    @property
    def provider(self) -> str:
        return "warmtransfer"

    def stream(self) -> vad.VADStream:
        return _VadStream(self, self.options)


class _VadStream(vad.VADStream):
    def __init__(self, adapter: VadAdapter, options: _VadOptions) -> None:
        self._options = options
        super().__init__(adapter)

    async def _main_task(self) -> None:
        opts = self._options
        detector = VoiceActivityDetector(
            aggressiveness=opts.aggressiveness,
            min_speech_ms=opts.min_speech_ms,
            hangover_ms=opts.hangover_ms,
        )
        prefix: deque[rtc.AudioFrame] = deque()
        speech: deque[rtc.AudioFrame] = deque()
        speech_start: float | None = None  # stream seconds, while speaking
        last_end = 0.0  # stream seconds where the last speech ended
        samples_index = 0

        def handle(events: list[SpeechStarted | SpeechEnded]) -> None:
            nonlocal speech_start, last_end, speech
            for event in events:
                if isinstance(event, SpeechStarted):
                    speech_start = event.at_seconds
                    speech = deque([*prefix, *speech])
                    prefix.clear()
                    self._send(vad.VADEventType.START_OF_SPEECH, samples_index, list(speech))
                else:
                    speech_start, last_end = None, event.at_seconds
                    self._send(
                        vad.VADEventType.END_OF_SPEECH,
                        samples_index,
                        [rtc.combine_audio_frames(list(speech))] if speech else [],
                        speech_duration=event.duration,
                        silence_duration=max(0.0, detector.seconds - event.at_seconds),
                    )
                    speech = deque()

        async for item in self._input_ch:
            if isinstance(item, vad.VADStream._FlushSentinel):
                detector.reset()  # a hard segment boundary, as the base class asks
                prefix.clear()
                speech.clear()
                speech_start, last_end = None, 0.0
                continue
            started = time.perf_counter()
            events = detector.feed(frame_samples(item), item.sample_rate)
            inference = time.perf_counter() - started
            samples_index += item.samples_per_channel
            # the frame goes with the utterance under way (or just started or ended), else
            # into the padding kept for the next one
            if speech_start is not None or events:
                speech.append(item)
                while sum(f.duration for f in speech) > opts.max_buffered_speech:
                    speech.popleft()
            else:
                prefix.append(item)
                while sum(f.duration for f in prefix) > opts.prefix_padding:
                    prefix.popleft()
            handle(events)
            if speech_start is not None:
                voiced_until = speech_start + detector.current_speech_seconds
                speech_seconds = detector.current_speech_seconds
                silence_seconds = max(0.0, detector.seconds - voiced_until)
            else:
                speech_seconds, silence_seconds = 0.0, max(0.0, detector.seconds - last_end)
            self._send(
                vad.VADEventType.INFERENCE_DONE,
                samples_index,
                [item],
                speech_duration=speech_seconds,
                silence_duration=silence_seconds,
                speaking=speech_start is not None,
                inference_duration=inference,
            )
        handle(detector.finish())  # input ended mid-utterance: the utterance ends with it

    def _send(
        self,
        kind: vad.VADEventType,
        samples_index: int,
        frames: list[rtc.AudioFrame],
        *,
        speech_duration: float = 0.0,
        silence_duration: float = 0.0,
        speaking: bool | None = None,
        inference_duration: float = 0.0,
    ) -> None:
        talking = kind is vad.VADEventType.START_OF_SPEECH if speaking is None else speaking
        self._event_ch.send_nowait(
            vad.VADEvent(
                type=kind,
                samples_index=samples_index,
                timestamp=time.time(),
                speech_duration=speech_duration,
                silence_duration=silence_duration,
                frames=frames,
                probability=1.0 if talking else 0.0,
                inference_duration=inference_duration,
                speaking=talking,
            )
        )

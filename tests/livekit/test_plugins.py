"""The offline speech providers as livekit-agents plugins, with the real piper and pocketsphinx."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator

import numpy as np
import pytest
from livekit import rtc
from livekit.agents import APIError, stt, vad
from livekit.agents.stt import SpeechEventType

from warmtransfer.livekit.plugins import SttAdapter, TtsAdapter, VadAdapter, frame_samples
from warmtransfer.media.audio import AudioClip
from warmtransfer.media.levels import rms_dbfs
from warmtransfer.speech.stt import PocketsphinxSTT
from warmtransfer.speech.tts import PiperTTS

#: The brief's "hello this is a test" comes out of pocketsphinx as "oh this is the best" (piper is
#: deterministic here, so always); with a few more words of context it hears "test".
SENTENCE = "Hello. This is a test of the phone line."


@pytest.fixture(scope="module")
def piper() -> PiperTTS:
    return PiperTTS()


@pytest.fixture(scope="module")
def pocketsphinx() -> Iterator[PocketsphinxSTT]:
    engine = PocketsphinxSTT()
    yield engine
    engine.close()


def frames_of(clip: AudioClip, ms: int = 20) -> list[rtc.AudioFrame]:
    """The clip cut into livekit frames, as an audio input would deliver it."""
    size = clip.rate * ms // 1000
    return [
        rtc.AudioFrame(chunk.tobytes(), clip.rate, 1, len(chunk))
        for start in range(0, len(clip.samples), size)
        if len(chunk := clip.samples[start : start + size])
    ]


async def collect(adapter: TtsAdapter, text: str) -> rtc.AudioFrame:
    async with adapter.synthesize(text) as stream:
        return await stream.collect()


@pytest.mark.parametrize("rate", [8000, 16000])
async def test_tts_adapter_speaks_audible_frames_at_its_rate(piper: PiperTTS, rate: int) -> None:
    adapter = TtsAdapter(piper, sample_rate=rate)
    assert adapter.sample_rate == rate
    assert adapter.num_channels == 1
    assert not adapter.capabilities.streaming
    frame = await collect(adapter, "Hello, how can I help?")
    assert frame.sample_rate == rate
    assert frame.num_channels == 1
    # piper says this short sentence in about a second and a half
    assert 0.8 < frame.duration < 3.0, frame.duration
    samples = frame_samples(frame)
    assert rms_dbfs(samples) > -30.0
    # the same audio as the provider gives directly: nothing lost, at most silence added
    # (livekit's emitter pads the last frame to whole 10 ms)
    direct = await piper.synthesize("Hello, how can I help?", rate)
    assert len(direct.samples) <= len(samples) <= len(direct.samples) + rate // 100
    assert np.array_equal(samples[: len(direct.samples)], direct.samples)
    assert not samples[len(direct.samples) :].any()


async def test_tts_adapter_gives_a_short_first_frame_then_frames_of_at_most_200_ms(
    piper: PiperTTS,
) -> None:
    """Non-streaming, but the session still gets the clip as frames, the first one short so
    that the caller hears the agent as soon as possible."""
    adapter = TtsAdapter(piper)
    text = "Thank you for calling, one moment please."
    durations = []
    async with adapter.synthesize(text) as stream:
        async for audio in stream:
            durations.append(audio.frame.duration)
    assert len(durations) > 3
    assert durations[0] <= 0.05, durations
    assert max(durations) <= 0.2 + 1e-6, durations
    clip = await piper.synthesize(text)
    assert abs(sum(durations) - clip.duration) <= 0.01


async def test_tts_adapter_reports_a_missing_voice_as_a_non_retryable_api_error() -> None:
    adapter = TtsAdapter(PiperTTS(model_path="/nonexistent/voice.onnx"))
    with pytest.raises(APIError) as caught:
        await collect(adapter, "Hello")
    assert "voice model not found" in str(caught.value)


async def test_stt_adapter_transcribes_piper_speech_at_16_khz(
    piper: PiperTTS, pocketsphinx: PocketsphinxSTT
) -> None:
    adapter = SttAdapter(pocketsphinx)
    assert not adapter.capabilities.streaming
    clip = await piper.synthesize(SENTENCE, 16000)
    event = await adapter.recognize(frames_of(clip))
    assert event.type is SpeechEventType.FINAL_TRANSCRIPT
    text = event.alternatives[0].text
    assert "test" in text, text
    assert event.alternatives[0].language == "en"


async def test_stt_adapter_hears_nothing_in_silence(pocketsphinx: PocketsphinxSTT) -> None:
    adapter = SttAdapter(pocketsphinx)
    silence = AudioClip.silence(1.0, 16000)
    event = await adapter.recognize(frames_of(silence))
    assert event.alternatives[0].text == ""


async def vad_events(frames: list[rtc.AudioFrame]) -> AsyncIterator[vad.VADEvent]:
    stream = VadAdapter().stream()
    for frame in frames:
        stream.push_frame(frame)
    stream.end_input()
    try:
        async for event in stream:
            yield event
    finally:
        await stream.aclose()


async def test_vad_adapter_finds_one_utterance_with_its_audio(piper: PiperTTS) -> None:
    speech = await piper.synthesize(SENTENCE, 8000)
    quiet = AudioClip.silence(1.0, 8000)
    audio = AudioClip(np.concatenate([quiet.samples, speech.samples, quiet.samples]), 8000)
    kinds = []
    ended: vad.VADEvent | None = None
    async for event in vad_events(frames_of(audio)):
        if event.type is not vad.VADEventType.INFERENCE_DONE:
            kinds.append(event.type)
        if event.type is vad.VADEventType.END_OF_SPEECH:
            ended = event
    assert kinds == [vad.VADEventType.START_OF_SPEECH, vad.VADEventType.END_OF_SPEECH]
    assert ended is not None
    # the utterance's audio covers the speech (plus padding and the hangover), not the silence
    heard = sum(f.duration for f in ended.frames)
    assert speech.duration <= heard < speech.duration + 1.2, (heard, speech.duration)
    assert 0.5 * speech.duration < ended.speech_duration <= speech.duration + 0.2


async def test_vad_adapter_with_stt_adapter_transcribe_an_utterance_in_a_stream(
    piper: PiperTTS, pocketsphinx: PocketsphinxSTT
) -> None:
    """How a session uses them: livekit's StreamAdapter cuts the stream with our VAD and
    hands each utterance to our STT."""
    speech = await piper.synthesize(SENTENCE, 16000)
    quiet = AudioClip.silence(1.0, 16000)
    audio = AudioClip(np.concatenate([quiet.samples, speech.samples, quiet.samples]), 16000)
    adapter = stt.StreamAdapter(stt=SttAdapter(pocketsphinx), vad=VadAdapter())
    finals: list[str] = []
    async with adapter.stream() as stream:
        for frame in frames_of(audio):
            stream.push_frame(frame)
        stream.end_input()
        async with asyncio.timeout(30):
            async for event in stream:
                if event.type is SpeechEventType.FINAL_TRANSCRIPT:
                    finals.append(event.alternatives[0].text)
    await adapter.aclose()
    assert len(finals) == 1
    assert "test" in finals[0], finals


def test_vad_adapter_refuses_bad_options_at_once() -> None:
    with pytest.raises(ValueError, match="aggressiveness"):
        VadAdapter(aggressiveness=7)

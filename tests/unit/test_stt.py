"""Speech-to-text on the real pocketsphinx en-us model, on piper's voice at 8 kHz.

The fixtures in tests/fixtures/speech were rendered once by make_fixtures.py (piper varies a
little from run to run); one test renders live with piper to show the whole chain.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from warmtransfer.media.audio import PHONE_RATE, AudioClip
from warmtransfer.media.hold_music import hold_music
from warmtransfer.media.wav import read_wav, to_rate
from warmtransfer.speech.stt import (
    DEFAULT_THRESHOLDS,
    KeywordSpotter,
    PocketsphinxModel,
    PocketsphinxSTT,
    SpeechToText,
    Spotted,
    spectral_flux,
)
from warmtransfer.speech.tts import PiperTTS, SpeechProviderError

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "speech"
FRAME = PHONE_RATE // 50  # 20 ms, as RTP delivers it


def fixture(stem: str, rate: int = PHONE_RATE) -> AudioClip:
    return read_wav(FIXTURES / f"{stem}.wav", rate)


def padded(clip: AudioClip, before: float = 1.0, after: float = 0.5) -> AudioClip:
    """The clip as a line hears it: quiet before the answer and after it."""
    lead = np.zeros(round(before * clip.rate), dtype=np.int16)
    tail = np.zeros(round(after * clip.rate), dtype=np.int16)
    return AudioClip(np.concatenate([lead, clip.samples, tail]), clip.rate)


def tones(seconds: float = 4.0) -> AudioClip:
    """Music-ish: a scale of soft sine notes, then a held major chord."""
    note = np.arange(PHONE_RATE // 2) / PHONE_RATE
    scale = [
        2500 * np.sin(2 * np.pi * f * note) * np.hanning(len(note))
        for f in (262, 294, 330, 349, 392, 440, 494, 523)
    ]
    t = np.arange(round(seconds * PHONE_RATE)) / PHONE_RATE
    chord = sum(1000 * np.sin(2 * np.pi * f * t) for f in (262, 330, 392))
    return AudioClip(np.concatenate([*scale, chord]).astype(np.int16), PHONE_RATE)


@pytest.fixture(scope="module")
def spotter() -> KeywordSpotter:
    engine = KeywordSpotter()
    asyncio.run(engine.warm_up())
    return engine


@pytest.mark.parametrize(
    ("stem", "phrase", "meaning"),
    [
        ("yes", "yes", "accept"),
        ("no", "no", "decline"),
        ("repeat", "repeat", "repeat"),
        ("yes_take_it", "yes", "accept"),
        ("take_the_call", "take the call", "accept"),
    ],
)
async def test_spotter_hears_the_answer_and_when_it_began(
    spotter: KeywordSpotter, stem: str, phrase: str, meaning: str
) -> None:
    hits = await spotter.spot(padded(fixture(stem)))
    assert [(h.phrase, h.meaning) for h in hits] == [(phrase, meaning)]
    # the clip starts 1.0 s in (piper leaves 50 ms of quiet before the first sound)
    if stem == "take_the_call":  # "Okay, I will take the call."
        assert 1.6 <= hits[0].at_seconds <= 2.2
    else:
        assert 0.95 <= hits[0].at_seconds <= 1.15


@pytest.mark.parametrize(
    "name", ["silence", "line noise", "hold music", "tones", "unrelated", "hello", "hello support"]
)
async def test_spotter_stays_quiet_on_what_is_not_an_answer(
    spotter: KeywordSpotter, name: str
) -> None:
    noise = np.random.default_rng(5).normal(0, 32768 * 10 ** (-50 / 20), 3 * PHONE_RATE)
    clips: dict[str, Callable[[], AudioClip]] = {
        "silence": lambda: AudioClip.silence(3.0),
        "line noise": lambda: AudioClip(noise.astype(np.int16), PHONE_RATE),
        "hold music": lambda: hold_music(PHONE_RATE),  # the whole 14 s loop
        "tones": tones,
        "unrelated": lambda: fixture("unrelated"),
        "hello": lambda: fixture("hello"),
        "hello support": lambda: fixture("hello_support"),
    }
    clip = clips[name]()
    assert await spotter.spot(padded(clip)) == []


async def test_music_would_fire_no_without_the_spectral_flux_gate(
    spotter: KeywordSpotter,
) -> None:
    """The gate is what keeps hold music quiet: without it "no" fires inside the loop."""
    ungated = KeywordSpotter(min_flux=0.0)
    try:
        hits = await ungated.spot(hold_music(PHONE_RATE))
    finally:
        ungated.close()
    assert [h.phrase for h in hits] == ["no"]
    assert await spotter.spot(hold_music(PHONE_RATE)) == []


def test_spectral_flux_tells_speech_from_held_notes() -> None:
    music = to_rate(hold_music(PHONE_RATE), 16000).samples
    windows = [music[start : start + 8000] for start in range(0, len(music) - 8000, 8000)]
    music_flux = [spectral_flux(window) for window in windows]
    speech_flux = [
        spectral_flux(fixture(stem, 16000).samples) for stem in ("yes", "no", "repeat", "hello")
    ]
    # held notes score low; a window across a chord change or the loop's rest can score high,
    # which is why the gate judges only the span of a hit (one note, when music fires one)
    assert sum(f is not None and f < 0.25 for f in music_flux) >= 0.9 * len(music_flux)
    assert all(f is not None and f > 0.4 for f in speech_flux), speech_flux
    assert spectral_flux(np.zeros(16000, dtype=np.int16)) is None  # nothing to judge


async def test_a_stream_fed_in_20_ms_frames_reports_each_answer_in_stream_time(
    spotter: KeywordSpotter,
) -> None:
    stream = np.concatenate(
        [
            AudioClip.silence(1.5).samples,
            fixture("repeat").samples,
            AudioClip.silence(1.0).samples,
            fixture("yes").samples,
            AudioClip.silence(1.0).samples,
        ]
    )
    yes_at = 1.5 + fixture("repeat").duration + 1.0
    heard: list[tuple[float, Spotted]] = []
    async with spotter.listen() as session:
        for start in range(0, len(stream), FRAME):
            for hit in await session.feed(stream[start : start + FRAME]):
                heard.append((session.seconds, hit))
        assert await session.finish() == []
        assert session.hits == [hit for _, hit in heard]
        assert session.seconds == pytest.approx(len(stream) / PHONE_RATE)
    assert [hit.meaning for _, hit in heard] == ["repeat", "accept"]
    assert heard[0][1].at_seconds == pytest.approx(1.5, abs=0.1)
    assert heard[1][1].at_seconds == pytest.approx(yes_at, abs=0.1)
    for reported_at, hit in heard:  # each is reported soon after it was said
        assert 0 < reported_at - hit.at_seconds < 1.2


async def test_a_phrase_said_last_is_reported_by_finish(spotter: KeywordSpotter) -> None:
    async with spotter.listen() as session:
        during = await session.feed(fixture("no").samples)
        last = await session.finish()
        with pytest.raises(RuntimeError, match="finished"):
            await session.feed(fixture("no").samples)
    assert during == []  # nothing after the word: KWS had not seen its end yet
    assert [h.meaning for h in last] == ["decline"]


async def test_results_do_not_depend_on_what_the_decoder_heard_before(
    spotter: KeywordSpotter,
) -> None:
    first = await spotter.spot(padded(fixture("take_the_call")))
    for stem in ("unrelated", "voicemail", "no"):
        await spotter.spot(fixture(stem))
    await spotter.spot(hold_music(PHONE_RATE))
    assert await spotter.spot(padded(fixture("take_the_call"))) == first


@pytest.mark.parametrize("rate", [16000, 11025, 44100])
async def test_any_input_rate_is_resampled(spotter: KeywordSpotter, rate: int) -> None:
    hits = await spotter.spot(padded(fixture("repeat", rate)))
    assert [h.meaning for h in hits] == ["repeat"]
    assert hits[0].at_seconds == pytest.approx(1.0, abs=0.15)


async def test_pcm_bytes_are_accepted_and_other_formats_refused(spotter: KeywordSpotter) -> None:
    clip = padded(fixture("yes"))
    async with spotter.listen() as session:
        await session.feed(clip.samples.astype("<i2").tobytes())
        await session.finish()
        assert [h.meaning for h in session.hits] == ["accept"]
    async with spotter.listen() as session:
        with pytest.raises(TypeError, match="int16"):
            await session.feed(clip.samples.astype(np.float32) / 32768)  # type: ignore[arg-type]
        with pytest.raises(ValueError, match="mono"):
            await session.feed(np.stack([clip.samples, clip.samples], axis=1))
        with pytest.raises(ValueError, match="even number of bytes"):
            await session.feed(b"\x00\x01\x02")
        with pytest.raises(ValueError, match="positive"):
            await session.feed(clip.samples, 0)


async def test_concurrent_sessions_each_hear_their_own_leg(spotter: KeywordSpotter) -> None:
    legs = {"accept": padded(fixture("yes")).samples, "decline": padded(fixture("no")).samples}

    async def listen(samples: np.ndarray) -> list[str]:
        async with spotter.listen() as session:
            for start in range(0, len(samples), FRAME):
                await session.feed(samples[start : start + FRAME])
                await asyncio.sleep(0)  # interleave the two legs frame by frame
            await session.finish()
            return [h.meaning for h in session.hits]

    yes, no = await asyncio.gather(listen(legs["accept"]), listen(legs["decline"]))
    assert (yes, no) == (["accept"], ["decline"])
    assert len(spotter._idle) >= 2  # both decoders came back to the pool


async def test_decoding_stays_off_the_event_loop(spotter: KeywordSpotter) -> None:
    gaps: list[float] = []
    done = asyncio.Event()

    async def ticker() -> None:
        last = time.perf_counter()
        while not done.is_set():
            await asyncio.sleep(0.005)
            now = time.perf_counter()
            gaps.append(now - last)
            last = now

    task = asyncio.create_task(ticker())
    started = time.perf_counter()
    try:
        clip = AudioClip(np.tile(hold_music(PHONE_RATE).samples, 2), PHONE_RATE)
        await spotter.spot(clip)  # 28 s of audio, all in one feed
    finally:
        done.set()
        await task
    elapsed = time.perf_counter() - started
    assert elapsed > 0.2  # long enough that a blocked loop would show
    assert max(gaps) < 0.15


async def test_phrases_and_thresholds_are_validated() -> None:
    with pytest.raises(ValueError, match="at least one phrase"):
        KeywordSpotter({})
    with pytest.raises(ValueError, match="not spotted"):
        KeywordSpotter({"yes": "accept"}, {"maybe": 1e-5})
    with pytest.raises(ValueError, match=r"\(0, 1\]"):
        KeywordSpotter({"yes": "accept"}, {"yes": 2.0})
    odd = KeywordSpotter({"Yes, please!": "accept", "blorptastic": "?"})
    try:
        with pytest.raises(ValueError, match=r"'blorptastic'.*pronunciation dictionary"):
            await odd.warm_up()
    finally:
        odd.close()


async def test_thresholds_come_from_measurements_or_the_phrase_length() -> None:
    engine = KeywordSpotter({"yes": "accept", "put them through": "accept"}, {"yes": 1e-2})
    try:
        assert engine.thresholds is None
        await engine.warm_up()
        thresholds = engine.thresholds
    finally:
        engine.close()
    assert thresholds is not None
    assert thresholds["yes"] == 1e-2  # given
    assert "put them through" not in DEFAULT_THRESHOLDS
    # P UH T / DH EH M / TH R UW: 9 phones -> 1e-6
    assert thresholds["put them through"] == pytest.approx(1e-6)


async def test_decoders_load_only_the_phrases_words_and_the_file_goes_with_the_spotter() -> None:
    """The full dictionary costs 27 MB per decoder (one per call listened to at once); the
    phrases' words alone cost 5.4 MB (measured here, with the default phrases)."""
    engine = KeywordSpotter({"yes": "accept", "read it again": "repeat"})
    try:
        decoder = await engine._borrow()
        assert decoder.lookup_word("yes") is not None
        assert decoder.lookup_word("again") is not None
        assert decoder.lookup_word("refund") is None  # in the full dictionary, not in ours
        small = engine._dictionary
        assert small is not None
        heads = {line.split()[0] for line in small.read_text().splitlines()}
        assert heads == {"yes", "read", "read(2)", "it", "again", "again(2)"}
        engine._give_back(decoder)
    finally:
        engine.close()
    assert not small.exists()


def test_missing_model_names_the_provider_and_the_fix(tmp_path: Path) -> None:
    missing = PocketsphinxModel(tmp_path / "en-us", tmp_path / "x.dict", tmp_path / "x.lm.bin")
    for engine in (KeywordSpotter(model=missing), PocketsphinxSTT(missing)):
        with pytest.raises(SpeechProviderError, match=r"^pocketsphinx: no acoustic model.*pip"):
            engine.check()
    shipped = PocketsphinxModel.default()
    no_dict = PocketsphinxModel(shipped.acoustic, tmp_path / "x.dict", shipped.language_model)
    with pytest.raises(SpeechProviderError, match=r"dictionary not found.*dictionary="):
        PocketsphinxSTT(no_dict).check()
    no_lm = PocketsphinxModel(shipped.acoustic, shipped.dictionary, tmp_path / "x.lm.bin")
    with pytest.raises(SpeechProviderError, match="language model not found"):
        PocketsphinxSTT(no_lm).check()
    KeywordSpotter(model=no_lm).check()  # keyword spotting needs no language model


async def test_broken_model_fails_with_a_speech_provider_error(tmp_path: Path) -> None:
    broken = tmp_path / "en-us"
    broken.mkdir()
    (broken / "mdef").write_text("not a model\n")
    shipped = PocketsphinxModel.default()
    model = PocketsphinxModel(broken, shipped.dictionary, shipped.language_model)
    spotter = KeywordSpotter(model=model)
    try:
        with pytest.raises(SpeechProviderError, match="pocketsphinx: cannot load the model"):
            await spotter.spot(fixture("yes"))
    finally:
        spotter.close()


async def test_the_whole_chain_live_piper_to_spotter(spotter: KeywordSpotter) -> None:
    tts = PiperTTS()
    answers = {
        "Yes, I'll take it.": "accept",
        "No, sorry.": "decline",
        "Can you repeat that?": "repeat",
    }
    for text, meaning in answers.items():
        spoken = await tts.synthesize(text, PHONE_RATE)
        hits = await spotter.spot(padded(spoken))
        assert [h.meaning for h in hits] == [meaning], text


@pytest.fixture(scope="module")
def stt() -> PocketsphinxSTT:
    engine = PocketsphinxSTT()
    asyncio.run(engine.warm_up())
    return engine


def test_pocketsphinx_stt_is_a_speech_to_text() -> None:
    engine: SpeechToText = PocketsphinxSTT()
    assert isinstance(engine, PocketsphinxSTT)


async def test_free_transcription_of_clean_wideband_speech(stt: PocketsphinxSTT) -> None:
    sentence = "please hold while i connect you to a colleague"
    spoken = await PiperTTS().synthesize(sentence, 16000)
    words = (await stt.transcribe(spoken)).split()
    expected = sentence.split()
    assert sum(word in words for word in expected) >= 0.7 * len(expected), words


async def test_free_transcription_resamples_and_handles_silence(stt: PocketsphinxSTT) -> None:
    assert await stt.transcribe(AudioClip.silence(0.0)) == ""
    assert await stt.transcribe(AudioClip.silence(1.0, 16000)) == ""
    heard = await stt.transcribe(fixture("hello_support", 44100))  # resampled to 16 kHz
    assert heard and heard == heard.lower()
    assert await stt.transcribe(fixture("hello_support", 44100)) == heard  # same clip, same words

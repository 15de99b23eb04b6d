from __future__ import annotations

import struct
import wave
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from numpy.typing import NDArray

from warmtransfer.media.audio import AudioClip
from warmtransfer.media.wav import (
    AudioFormatError,
    read_wav,
    resample,
    scale,
    to_rate,
    write_wav,
)


def _sine(freq: float, seconds: float, rate: int, amplitude: float = 0.5) -> NDArray[np.int16]:
    t = np.arange(round(seconds * rate)) / rate
    return np.rint(amplitude * 32767 * np.sin(2 * np.pi * freq * t)).astype(np.int16)


def _riff(fmt: bytes, data: bytes, *, extra_chunks: bytes = b"") -> bytes:
    body = b"WAVE" + b"fmt " + struct.pack("<I", len(fmt)) + fmt + extra_chunks
    body += b"data" + struct.pack("<I", len(data)) + data + (b"\0" if len(data) % 2 else b"")
    return b"RIFF" + struct.pack("<I", len(body)) + body


def _fmt(tag: int, channels: int, rate: int, width: int, bits: int | None = None) -> bytes:
    bits = bits or width * 8
    return struct.pack(
        "<HHIIHH", tag, channels, rate, rate * channels * width, channels * width, bits
    )


def _extensible(sub_tag: int, channels: int, rate: int, width: int, valid_bits: int) -> bytes:
    guid_tail = bytes.fromhex("000000001000800000aa00389b71")
    return (
        _fmt(0xFFFE, channels, rate, width)
        + struct.pack("<HHI", 22, valid_bits, 0x3 if channels == 2 else 0x4)
        + struct.pack("<H", sub_tag)
        + guid_tail
    )


def _dominant_hz(samples: NDArray[np.int16], rate: int) -> float:
    spectrum = np.abs(np.fft.rfft(samples.astype(np.float64)))
    return float(np.fft.rfftfreq(len(samples), 1 / rate)[np.argmax(spectrum)])


# --- reading what we write -----------------------------------------------------------------------


def test_round_trip_16_bit_mono_is_exact(tmp_path: Path) -> None:
    samples = _sine(440, 0.5, 8000)
    write_wav(tmp_path / "a.wav", samples, 8000)
    clip = read_wav(tmp_path / "a.wav")
    assert clip.rate == 8000
    np.testing.assert_array_equal(clip.samples, samples)


def test_write_wav_is_readable_by_stdlib_wave(tmp_path: Path) -> None:
    stereo = np.stack([_sine(300, 0.1, 16000), _sine(500, 0.1, 16000)], axis=1)
    path = tmp_path / "deep" / "er" / "s.wav"
    write_wav(path, stereo, 16000)
    with wave.open(str(path)) as w:
        assert (w.getnchannels(), w.getsampwidth(), w.getframerate()) == (2, 2, 16000)
        frames = np.frombuffer(w.readframes(w.getnframes()), dtype="<i2").reshape(-1, 2)
    np.testing.assert_array_equal(frames, stereo)


def test_stereo_is_downmixed(tmp_path: Path) -> None:
    left = _sine(440, 0.2, 8000)
    write_wav(tmp_path / "same.wav", np.stack([left, left], axis=1), 8000)
    np.testing.assert_array_equal(read_wav(tmp_path / "same.wav").samples, left)
    write_wav(tmp_path / "opposite.wav", np.stack([left, -left], axis=1), 8000)
    assert np.abs(read_wav(tmp_path / "opposite.wav").samples).max() == 0


def test_read_resamples_to_requested_rate(tmp_path: Path) -> None:
    write_wav(tmp_path / "hi.wav", np.stack([_sine(1000, 1.0, 44100)] * 2, axis=1), 44100)
    clip = read_wav(tmp_path / "hi.wav")
    assert clip.rate == 8000
    assert abs(len(clip.samples) - 8000) <= 1
    assert _dominant_hz(clip.samples, 8000) == pytest.approx(1000, abs=2)
    wide = read_wav(str(tmp_path / "hi.wav"), rate=16000)
    assert wide.rate == 16000
    assert abs(len(wide.samples) - 16000) <= 1


def test_content_above_the_new_nyquist_is_filtered_not_aliased(tmp_path: Path) -> None:
    write_wav(tmp_path / "hiss.wav", _sine(6000, 0.5, 16000), 16000)
    clip = read_wav(tmp_path / "hiss.wav")  # 6 kHz would alias to 2 kHz at 8 kHz
    steady = clip.samples[160:-160].astype(np.int32)  # the abrupt start and end ring briefly
    assert np.abs(steady).max() < 100


# --- other sample formats ------------------------------------------------------------------------

REFERENCE = _sine(440, 0.1, 8000, amplitude=0.9)


def _encode_as(width: int, is_float: bool) -> bytes:
    x = REFERENCE.astype(np.float64) / 32768
    if is_float:
        return x.astype("<f4" if width == 4 else "<f8").tobytes()
    if width == 1:
        return np.clip(np.rint(x * 128 + 128), 0, 255).astype(np.uint8).tobytes()
    if width == 3:
        as_int = (REFERENCE.astype(np.int32) << 8).astype("<i4")
        return as_int.view(np.uint8).reshape(-1, 4)[:, :3].tobytes()
    return (REFERENCE.astype(np.int32) << 16).astype("<i4").tobytes()


@pytest.mark.parametrize(
    ("width", "is_float", "tolerance"),
    [(1, False, 256), (3, False, 0), (4, False, 0), (4, True, 1), (8, True, 1)],
)
def test_reads_other_sample_widths(
    tmp_path: Path, width: int, is_float: bool, tolerance: int
) -> None:
    path = tmp_path / f"w{width}{is_float}.wav"
    path.write_bytes(_riff(_fmt(3 if is_float else 1, 1, 8000, width), _encode_as(width, is_float)))
    clip = read_wav(path)
    error = np.abs(clip.samples.astype(np.int32) - REFERENCE)
    assert error.max() <= tolerance


@pytest.mark.parametrize(("sub_tag", "width", "bits"), [(1, 3, 24), (1, 4, 24), (3, 4, 32)])
def test_reads_wave_format_extensible(tmp_path: Path, sub_tag: int, width: int, bits: int) -> None:
    data = _encode_as(width, sub_tag == 3)
    stereo = np.frombuffer(data, np.uint8).reshape(-1, width).repeat(2, axis=0).tobytes()
    path = tmp_path / "ext.wav"
    path.write_bytes(_riff(_extensible(sub_tag, 2, 8000, width, bits), stereo))
    error = np.abs(read_wav(path).samples.astype(np.int32) - REFERENCE)
    assert error.max() <= 1


def test_float_nan_and_overrange_are_tamed(tmp_path: Path) -> None:
    data = np.array([np.nan, 2.0, -3.0, 0.5], dtype="<f4").tobytes()
    path = tmp_path / "wild.wav"
    path.write_bytes(_riff(_fmt(3, 1, 8000, 4), data))
    assert read_wav(path).samples.tolist() == [0, 32767, -32768, 16384]


def test_skips_unknown_and_odd_sized_chunks(tmp_path: Path) -> None:
    extra = b"LIST" + struct.pack("<I", 3) + b"abc\0" + b"fact" + struct.pack("<I", 4) + bytes(4)
    path = tmp_path / "chunks.wav"
    path.write_bytes(_riff(_fmt(1, 1, 8000, 2), REFERENCE.tobytes(), extra_chunks=extra))
    np.testing.assert_array_equal(read_wav(path).samples, REFERENCE)


def test_truncated_data_chunk_keeps_whole_frames(tmp_path: Path) -> None:
    full = _riff(_fmt(1, 1, 8000, 2), REFERENCE.tobytes())
    path = tmp_path / "cut.wav"
    path.write_bytes(full[:-101])  # the header still promises every byte; half a sample is lost
    samples = read_wav(path).samples
    assert len(samples) == len(REFERENCE) - 51
    np.testing.assert_array_equal(samples, REFERENCE[: len(samples)])


# --- files we cannot use -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("content", "problem"),
    [
        (b"", "empty"),
        (b"hello, this is not audio", "not a WAV file"),
        (b"ID3\x04\x00" + bytes(100), "MP3"),
        (b"\xff\xfb\x90\x00" + bytes(100), "MP3"),
        (b"OggS" + bytes(100), "Ogg"),
        (b"RIFF\x04\x00\x00\x00AVI LIST", "RIFF file of type b'AVI '"),
        (b"RIFF\x04\x00\x00\x00WAVE", "no format chunk"),
        (_riff(_fmt(7, 1, 8000, 1), bytes(800)), "µ-law"),
        (_riff(_fmt(6, 1, 8000, 1), bytes(800)), "A-law"),
        (_riff(_fmt(0x55, 1, 8000, 1), bytes(800)), "MP3"),
        (_riff(_fmt(0x11, 1, 8000, 1), bytes(800)), "IMA ADPCM"),
        (_riff(_fmt(0x1234, 1, 8000, 2), bytes(800)), "format tag 0x1234"),
        (_riff(_extensible(7, 1, 8000, 1, 8), bytes(800)), "µ-law"),
        (_riff(_fmt(1, 1, 8000, 2), b""), "no audio"),
        (_riff(_fmt(1, 1, 8000, 2), b"\x01"), "no audio"),
        (_riff(_fmt(1, 0, 8000, 2), bytes(8)), "zero channels"),
        (_riff(_fmt(1, 1, 0, 2), bytes(8)), "zero channels"),
        (_riff(_fmt(1, 1, 8000, 5), bytes(10)), "40-bit integer"),
        (_riff(_fmt(3, 1, 8000, 2), bytes(10)), "16-bit float"),
        (_riff(b"\x01\x00\x01\x00", bytes(8)), "format chunk is too short"),
        (b"RIFF\x10\x00\x00\x00WAVEfmt \x10\x00\x00\x00" + _fmt(1, 1, 8000, 2), "no data chunk"),
    ],
)
def test_unusable_files_are_explained(tmp_path: Path, content: bytes, problem: str) -> None:
    path = tmp_path / "prompt.wav"
    path.write_bytes(content)
    with pytest.raises(AudioFormatError) as caught:
        read_wav(path)
    message = str(caught.value)
    assert str(path) in message
    assert problem in message
    assert "accepted: WAV" in message
    assert "16" in message


def test_missing_file_and_directory_are_audio_format_errors(tmp_path: Path) -> None:
    with pytest.raises(AudioFormatError, match="cannot read the file"):
        read_wav(tmp_path / "nope.wav")
    with pytest.raises(AudioFormatError, match="cannot read the file"):
        read_wav(tmp_path)


def test_audio_format_error_is_a_value_error() -> None:
    assert issubclass(AudioFormatError, ValueError)


@settings(suppress_health_check=[HealthCheck.function_scoped_fixture], max_examples=200)
@given(st.binary(max_size=80))
def test_garbage_only_ever_raises_audio_format_error(tmp_path: Path, tail: bytes) -> None:
    path = tmp_path / "fuzz.wav"
    for content in (tail, b"RIFF\xff\xff\xff\xffWAVEfmt " + tail):
        path.write_bytes(content)
        try:
            clip = read_wav(path)
        except AudioFormatError:
            continue
        assert clip.samples.dtype == np.int16


# --- writing -------------------------------------------------------------------------------------


def test_write_wav_rejects_bad_input(tmp_path: Path) -> None:
    with pytest.raises(TypeError, match="int16"):
        write_wav(tmp_path / "f.wav", np.zeros(10, dtype=np.float32), 8000)
    with pytest.raises(ValueError, match="shape"):
        write_wav(tmp_path / "f.wav", np.zeros((2, 2, 2), dtype=np.int16), 8000)
    with pytest.raises(ValueError, match="positive"):
        write_wav(tmp_path / "f.wav", np.zeros(10, dtype=np.int16), 0)


# --- resample, to_rate, scale --------------------------------------------------------------------


def test_resample_equal_rates_returns_the_input() -> None:
    samples = _sine(440, 0.1, 8000)
    assert resample(samples, 8000, 8000) is samples


def test_resample_changes_length_and_keeps_pitch() -> None:
    up = resample(_sine(440, 1.0, 8000), 8000, 22050)
    assert up.dtype == np.int16
    assert abs(len(up) - 22050) <= 1
    assert _dominant_hz(up, 22050) == pytest.approx(440, abs=2)
    assert len(resample(np.zeros(0, dtype=np.int16), 22050, 8000)) == 0
    with pytest.raises(ValueError, match="positive"):
        resample(up, 0, 8000)


def test_resample_clips_instead_of_wrapping() -> None:
    square = np.where(np.sin(2 * np.pi * 440 * np.arange(22050) / 22050) >= 0, 32767, -32768)
    down = resample(square.astype(np.int16), 22050, 8000)  # ringing overshoots full scale
    assert down.max() == 32767
    assert down.min() == -32768
    assert (down[np.abs(down) > 0] > 0).sum() > len(down) // 3  # no sign flips from wrapping


def test_to_rate() -> None:
    clip = AudioClip(_sine(440, 0.5, 22050), 22050)
    assert to_rate(clip, 22050) is clip
    phone = to_rate(clip, 8000)
    assert phone.rate == 8000
    assert phone.duration == pytest.approx(0.5, abs=0.001)


def test_scale() -> None:
    samples = np.array([-32768, -1000, -1, 0, 1, 1000, 32767], dtype=np.int16)
    assert scale(samples, 2.0).tolist() == [-32768, -2000, -2, 0, 2, 2000, 32767]
    assert scale(samples, 0.5).tolist() == [-16384, -500, 0, 0, 0, 500, 16384]
    assert scale(samples, 0.0).tolist() == [0] * 7
    assert scale(samples, -1.0).tolist()[0] == 32767  # no wrap to -32768
    assert scale(samples, 1.0).dtype == np.int16
    with pytest.raises(ValueError, match="finite"):
        scale(samples, float("nan"))

from __future__ import annotations

import warnings

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from numpy.typing import NDArray

from warmtransfer.media import g711

with warnings.catch_warnings():
    warnings.simplefilter("ignore", DeprecationWarning)
    try:
        import audioop
    except ImportError:  # Python >= 3.13
        audioop = None  # type: ignore[assignment]

needs_audioop = pytest.mark.skipif(audioop is None, reason="audioop was removed in Python 3.13")

ALL_SAMPLES = np.arange(-32768, 32768, dtype=np.int16)
ALL_CODES = bytes(range(256))


def _codes(data: bytes) -> NDArray[np.uint8]:
    return np.frombuffer(data, dtype=np.uint8)


def _pcm(*values: int) -> NDArray[np.int16]:
    return np.array(values, dtype=np.int16)


# Reference points from ITU-T G.711 / G.191: zero, the smallest step either side, full scale.
@pytest.mark.parametrize(
    ("sample", "code"),
    [(0, 0xFF), (3, 0xFF), (-1, 0x7F), (-4, 0x7F), (4, 0xFE), (32767, 0x80), (-32768, 0x00)],
)
def test_ulaw_known_codes(sample: int, code: int) -> None:
    assert g711.ulaw_encode(_pcm(sample)) == bytes([code])


@pytest.mark.parametrize(
    ("sample", "code"),
    [(0, 0xD5), (15, 0xD5), (16, 0xD4), (-1, 0x55), (32767, 0xAA), (-32768, 0x2A)],
)
def test_alaw_known_codes(sample: int, code: int) -> None:
    assert g711.alaw_encode(_pcm(sample)) == bytes([code])


@pytest.mark.parametrize(
    ("decode", "code", "sample"),
    [
        (g711.ulaw_decode, 0xFF, 0),
        (g711.ulaw_decode, 0x7F, 0),
        (g711.ulaw_decode, 0x80, 32124),
        (g711.ulaw_decode, 0x00, -32124),
        (g711.alaw_decode, 0xD5, 8),
        (g711.alaw_decode, 0x55, -8),
        (g711.alaw_decode, 0xAA, 32256),
        (g711.alaw_decode, 0x2A, -32256),
    ],
)
def test_known_decoded_values(decode: object, code: int, sample: int) -> None:
    assert callable(decode)
    assert decode(bytes([code])).tolist() == [sample]


def test_silence_constants_decode_to_zero_level() -> None:
    assert g711.ulaw_encode(_pcm(0)) == bytes([g711.ULAW_SILENCE])
    assert g711.alaw_encode(_pcm(0)) == bytes([g711.ALAW_SILENCE])
    assert g711.ulaw_decode(bytes([g711.ULAW_SILENCE])).tolist() == [0]
    assert abs(int(g711.alaw_decode(bytes([g711.ALAW_SILENCE]))[0])) <= 8


@needs_audioop
@pytest.mark.parametrize(
    ("ours", "theirs"),
    [(g711.ulaw_decode, "ulaw2lin"), (g711.alaw_decode, "alaw2lin")],
)
def test_decode_matches_audioop_for_every_code(ours: object, theirs: str) -> None:
    assert callable(ours)
    expected = np.frombuffer(getattr(audioop, theirs)(ALL_CODES, 2), dtype=np.int16)
    np.testing.assert_array_equal(ours(ALL_CODES), expected)


@needs_audioop
def test_alaw_encode_matches_audioop_for_every_sample() -> None:
    expected = _codes(audioop.lin2alaw(ALL_SAMPLES.tobytes(), 2))
    np.testing.assert_array_equal(_codes(g711.alaw_encode(ALL_SAMPLES)), expected)


@needs_audioop
def test_ulaw_encode_matches_audioop_for_every_non_negative_sample() -> None:
    positive = ALL_SAMPLES[ALL_SAMPLES >= 0]
    expected = _codes(audioop.lin2ulaw(positive.tobytes(), 2))
    np.testing.assert_array_equal(_codes(g711.ulaw_encode(positive)), expected)


@needs_audioop
def test_ulaw_negative_samples_mirror_audioop_positive_ones() -> None:
    # G.191 quantises a negative x through ~x, so its code is the positive code with the sign
    # bit cleared; audioop negates instead, which we deliberately do not copy (see module doc).
    negative = ALL_SAMPLES[ALL_SAMPLES < 0]
    mirrored = _codes(audioop.lin2ulaw((~negative).tobytes(), 2)) ^ 0x80
    np.testing.assert_array_equal(_codes(g711.ulaw_encode(negative)), mirrored)


@needs_audioop
def test_ulaw_round_trip_is_never_worse_than_audioop() -> None:
    x = ALL_SAMPLES.astype(np.int32)
    ours = np.abs(g711.ulaw_decode(g711.ulaw_encode(ALL_SAMPLES)).astype(np.int32) - x)
    raw = audioop.ulaw2lin(audioop.lin2ulaw(ALL_SAMPLES.tobytes(), 2), 2)
    theirs = np.abs(np.frombuffer(raw, dtype=np.int16).astype(np.int32) - x)
    assert (ours <= theirs).all()
    assert (ours < theirs).any()


@pytest.mark.parametrize(
    ("encode", "decode"),
    [(g711.ulaw_encode, g711.ulaw_decode), (g711.alaw_encode, g711.alaw_decode)],
)
def test_both_laws_are_sign_symmetric(encode: object, decode: object) -> None:
    assert callable(encode)
    assert callable(decode)
    positive = ALL_SAMPLES[ALL_SAMPLES >= 0]
    assert (_codes(encode(~positive)) == _codes(encode(positive)) ^ 0x80).all()
    np.testing.assert_array_equal(decode(ALL_CODES[128:]), -decode(ALL_CODES[:128]))


def test_ulaw_round_trip_error_within_half_a_step() -> None:
    x = ALL_SAMPLES.astype(np.int32)
    err = np.abs(g711.ulaw_decode(g711.ulaw_encode(ALL_SAMPLES)).astype(np.int32) - x)
    in_range = np.abs(x) <= 32124
    # A step in segment s is 8 << s; (|x| + 132) / 32 is half a step, exactly, at the top of each.
    assert (err[in_range] <= (np.abs(x[in_range]) + 132) / 32).all()
    assert err[~in_range].max() == 32768 - 32124  # beyond the largest code: clipped


def test_alaw_round_trip_error_within_half_a_step() -> None:
    x = ALL_SAMPLES.astype(np.int32)
    err = np.abs(g711.alaw_decode(g711.alaw_encode(ALL_SAMPLES)).astype(np.int32) - x)
    in_range = np.abs(x) <= 32256
    assert (err[in_range] <= np.maximum(8, np.abs(x[in_range]) / 32)).all()
    assert err[~in_range].max() == 32768 - 32256


@pytest.mark.parametrize("codec", ["PCMU", "PCMA"])
def test_speech_level_sine_survives_with_telephone_quality(codec: str) -> None:
    t = np.arange(8000) / 8000
    sine = (0.3 * 32767 * np.sin(2 * np.pi * 1004 * t)).astype(np.int16)
    decoded = g711.decoder(codec)(g711.encoder(codec)(sine)).astype(np.float64)
    noise = decoded - sine
    snr = 10 * np.log10(np.sum(sine.astype(np.float64) ** 2) / np.sum(noise**2))
    assert snr > 35  # G.711 gives about 38 dB on a sine at this level


@given(hnp.arrays(np.int16, st.integers(0, 400)))
def test_encode_is_one_byte_per_sample_and_decode_is_idempotent(pcm: NDArray[np.int16]) -> None:
    for codec in ("PCMU", "PCMA"):
        encode, decode = g711.encoder(codec), g711.decoder(codec)
        data = encode(pcm)
        assert len(data) == len(pcm)
        decoded = decode(data)
        assert decoded.dtype == np.int16
        # Decoded values are on the grid: coding them again changes nothing. (Compared as
        # samples, not bytes: µ-law has two codes for zero, 0x7F and 0xFF, that decode alike.)
        assert np.array_equal(decode(encode(decoded)), decoded)


def test_encode_accepts_non_contiguous_views() -> None:
    pcm = np.arange(-1000, 1000, 7, dtype=np.int16)
    assert g711.ulaw_encode(pcm[::2]) == g711.ulaw_encode(pcm[::2].copy())


def test_encode_rejects_other_dtypes() -> None:
    with pytest.raises(TypeError, match="int16"):
        g711.ulaw_encode(np.zeros(160, dtype=np.float32))


def test_decoded_array_is_a_fresh_writable_copy() -> None:
    decoded = g711.ulaw_decode(bytes(160))
    decoded[0] = 1
    assert g711.ulaw_decode(bytes(160))[0] != 1


@pytest.mark.parametrize("name", ["PCMU", "pcmu", "Pcma", "PCMA"])
def test_codec_lookup_is_case_insensitive(name: str) -> None:
    pcm = np.linspace(-20000, 20000, 160).astype(np.int16)
    expected = g711.ulaw_encode(pcm) if name.upper() == "PCMU" else g711.alaw_encode(pcm)
    assert g711.encoder(name)(pcm) == expected
    np.testing.assert_array_equal(
        g711.decoder(name)(expected), g711.decoder(name.upper())(expected)
    )


@pytest.mark.parametrize("name", ["G729", "opus", "", "PCM"])
def test_unknown_codec_is_a_value_error(name: str) -> None:
    with pytest.raises(ValueError, match="PCMU"):
        g711.encoder(name)
    with pytest.raises(ValueError, match="PCMA"):
        g711.decoder(name)
    with pytest.raises(ValueError, match="unsupported codec"):
        g711.silence_payload(name)


def test_silence_payload() -> None:
    assert g711.silence_payload("PCMU") == b"\xff" * 160
    assert g711.silence_payload("pcma", 80) == b"\xd5" * 80
    assert g711.silence_payload("PCMU", 0) == b""
    with pytest.raises(ValueError, match="negative"):
        g711.silence_payload("PCMU", -1)

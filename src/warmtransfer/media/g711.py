"""G.711 µ-law (PCMU) and A-law (PCMA), the two codecs every SIP phone and trunk speaks.

Why lookup tables in numpy: the stdlib `audioop` module that used to do this is deprecated and
gone in Python 3.13, and a per-sample Python loop is far too slow for the media path (every leg
encodes or decodes 160 samples every 20 ms). A 16-bit sample has only 65536 values and a G.711
byte only 256, so both directions are one numpy fancy-index into a table built once at import:
a few microseconds per frame.

The tables follow the ITU-T G.191 reference implementation of G.711. Negative samples are
quantised through their one's complement (``~x``), which makes both laws exactly symmetric
(``encode(~x) == encode(x) ^ 0x80``) and keeps every decoded value within half a step of its
input. A-law encoding therefore matches `audioop.lin2alaw` bit for bit; `audioop.lin2ulaw` negates
negative samples instead, which biases them by up to one step, so our µ-law output differs from it
for some negative samples (e.g. -1 encodes to 0x7F, "negative zero", where audioop gives 0x7E).
Decoding is fixed by the standard and matches `audioop` for all 256 codes of both laws.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from numpy.typing import NDArray

__all__ = [
    "ALAW_SILENCE",
    "ULAW_SILENCE",
    "alaw_decode",
    "alaw_encode",
    "decoder",
    "encoder",
    "silence_payload",
    "ulaw_decode",
    "ulaw_encode",
]

ULAW_SILENCE = 0xFF
"""µ-law code for a zero sample."""
ALAW_SILENCE = 0xD5
"""A-law code for a zero sample."""

_ULAW_BIAS = 33  # in 14-bit units; 0x84 in 16-bit units
_ULAW_MAX = 0x1FFF


def _all_samples() -> NDArray[np.int32]:
    """Every int16 value, ordered by its uint16 bit pattern (the encode-table index)."""
    return np.arange(65536, dtype=np.uint32).astype(np.uint16).view(np.int16).astype(np.int32)


def _bit_length(values: NDArray[np.int32]) -> NDArray[np.int32]:
    """`int.bit_length` for positive values, vectorised (exact: frexp never rounds)."""
    return np.frexp(values.astype(np.float64))[1].astype(np.int32)


def _build_ulaw_encode() -> NDArray[np.uint8]:
    x = _all_samples()
    negative = x < 0
    magnitude: NDArray[np.int32] = np.where(negative, ~x, x) >> 2  # 14-bit, 0..8191
    biased = np.minimum(magnitude + _ULAW_BIAS, _ULAW_MAX)  # 33..8191
    segment = _bit_length(biased) - 6  # 0..7
    mantissa = (biased >> (segment + 1)) & 0x0F
    code = (segment << 4) | mantissa
    sign: NDArray[np.int32] = np.where(negative, 0x7F, 0xFF)
    return (code ^ sign).astype(np.uint8)


def _build_ulaw_decode() -> NDArray[np.int16]:
    code = ~np.arange(256, dtype=np.int32) & 0xFF
    segment = (code >> 4) & 0x07
    mantissa = code & 0x0F
    magnitude = (((mantissa << 3) + 0x84) << segment) - 0x84
    return np.where(code & 0x80, -magnitude, magnitude).astype(np.int16)


def _build_alaw_encode() -> NDArray[np.uint8]:
    x = _all_samples()
    negative = x < 0
    magnitude: NDArray[np.int32] = np.where(negative, ~x, x) >> 3  # 13-bit, 0..4095
    segment = np.maximum(_bit_length(np.maximum(magnitude, 1)) - 5, 0)  # 0..7
    mantissa = (magnitude >> np.maximum(segment, 1)) & 0x0F
    code = (segment << 4) | mantissa
    sign: NDArray[np.int32] = np.where(negative, 0x55, 0xD5)
    return (code ^ sign).astype(np.uint8)


def _build_alaw_decode() -> NDArray[np.int16]:
    code = np.arange(256, dtype=np.int32) ^ 0x55
    segment = (code >> 4) & 0x07
    mantissa = code & 0x0F
    step = (mantissa << 4) + 8
    magnitude = np.where(segment == 0, step, (step + 0x100) << np.maximum(segment - 1, 0))
    return np.where(code & 0x80, magnitude, -magnitude).astype(np.int16)


_ULAW_ENCODE = _build_ulaw_encode()
_ULAW_DECODE = _build_ulaw_decode()
_ALAW_ENCODE = _build_alaw_encode()
_ALAW_DECODE = _build_alaw_decode()
for _table in (_ULAW_ENCODE, _ULAW_DECODE, _ALAW_ENCODE, _ALAW_DECODE):
    _table.flags.writeable = False


def _encode(table: NDArray[np.uint8], pcm: NDArray[np.int16]) -> bytes:
    if pcm.dtype != np.int16:
        raise TypeError(f"G.711 encodes int16 samples, not {pcm.dtype}")
    return table[pcm.view(np.uint16)].tobytes()


def ulaw_encode(pcm: NDArray[np.int16]) -> bytes:
    """Encode 16-bit samples to µ-law, one byte per sample."""
    return _encode(_ULAW_ENCODE, pcm)


def ulaw_decode(data: bytes) -> NDArray[np.int16]:
    """Decode µ-law bytes to a new int16 array."""
    return _ULAW_DECODE[np.frombuffer(data, dtype=np.uint8)]


def alaw_encode(pcm: NDArray[np.int16]) -> bytes:
    """Encode 16-bit samples to A-law, one byte per sample."""
    return _encode(_ALAW_ENCODE, pcm)


def alaw_decode(data: bytes) -> NDArray[np.int16]:
    """Decode A-law bytes to a new int16 array."""
    return _ALAW_DECODE[np.frombuffer(data, dtype=np.uint8)]


_ENCODERS: dict[str, Callable[[NDArray[np.int16]], bytes]] = {
    "PCMU": ulaw_encode,
    "PCMA": alaw_encode,
}
_DECODERS: dict[str, Callable[[bytes], NDArray[np.int16]]] = {
    "PCMU": ulaw_decode,
    "PCMA": alaw_decode,
}
_SILENCE = {"PCMU": ULAW_SILENCE, "PCMA": ALAW_SILENCE}


def _codec(codec_name: str) -> str:
    name = codec_name.upper()
    if name not in _SILENCE:
        raise ValueError(f"unsupported codec {codec_name!r}: G.711 is 'PCMU' or 'PCMA'")
    return name


def encoder(codec_name: str) -> Callable[[NDArray[np.int16]], bytes]:
    """The encode function for an SDP codec name ("PCMU" or "PCMA", any case)."""
    return _ENCODERS[_codec(codec_name)]


def decoder(codec_name: str) -> Callable[[bytes], NDArray[np.int16]]:
    """The decode function for an SDP codec name ("PCMU" or "PCMA", any case)."""
    return _DECODERS[_codec(codec_name)]


def silence_payload(codec_name: str, samples: int = 160) -> bytes:
    """A payload of digital silence (160 samples = one 20 ms frame at 8 kHz)."""
    if samples < 0:
        raise ValueError(f"sample count must not be negative, not {samples}")
    return bytes((_SILENCE[_codec(codec_name)],)) * samples

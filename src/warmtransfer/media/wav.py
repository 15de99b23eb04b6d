"""WAV files in and out: operators' hold music and prompts, call recordings, test fixtures.

Why a small RIFF reader of our own instead of the stdlib `wave` module for reading: on Python 3.11
`wave` refuses WAVE_FORMAT_EXTENSIBLE and float files, which is what most audio editors export
(24-bit, 32-bit float), and it fails with `wave.Error`, `EOFError` or struct errors that say
nothing useful to the person who configured the file. Reading is a one-time cost at startup, so
this module accepts every uncompressed WAV, converts it to the 16-bit mono `AudioClip` the media
path plays, and explains any file it cannot use with one `AudioFormatError` that names the file,
what it seems to be and what is accepted. Writing only ever produces 16-bit PCM, which `wave`
does well.

Resampling uses `soxr` (high quality, fast, no Python loop), as everywhere else in the project.
"""

from __future__ import annotations

import math
import struct
import wave
from pathlib import Path

import numpy as np
import soxr
from numpy.typing import NDArray

from warmtransfer.media.audio import PHONE_RATE, AudioClip

__all__ = ["AudioFormatError", "read_wav", "resample", "scale", "to_rate", "write_wav"]

ACCEPTED = (
    "accepted: WAV (RIFF/WAVE) with 8, 16, 24 or 32-bit integer PCM or 32/64-bit float samples, "
    "any sample rate, mono or multi-channel"
)

_PCM = 0x0001
_FLOAT = 0x0003
_EXTENSIBLE = 0xFFFE
_CODEC_NAMES = {
    0x0002: "MS ADPCM",
    0x0006: "A-law",
    0x0007: "µ-law",
    0x0011: "IMA ADPCM",
    0x0031: "GSM 6.10",
    0x0050: "MPEG audio",
    0x0055: "MP3",
}
_MAGIC = {
    b"ID3": "an MP3 file",
    b"\xff\xfb": "an MP3 file",
    b"\xff\xf3": "an MP3 file",
    b"\xff\xf2": "an MP3 file",
    b"OggS": "an Ogg file",
    b"fLaC": "a FLAC file",
    b"FORM": "an AIFF file",
    b"RF64": "an RF64 (64-bit WAV) file",
    b"RIFX": "a big-endian RIFX file",
    b"#!AMR": "an AMR file",
}


class AudioFormatError(ValueError):
    """An audio file that cannot be used; the message says which file, why, and what works."""


def _fail(path: Path, problem: str) -> AudioFormatError:
    return AudioFormatError(f"{path}: {problem}; {ACCEPTED}")


def _sniff(head: bytes) -> str:
    """A guess at what a non-WAV file is, for the error message."""
    if head[4:8] == b"ftyp":
        return "an MP4/M4A file"
    for magic, kind in _MAGIC.items():
        if head.startswith(magic):
            return kind
    if head[:4] == b"RIFF":
        return f"a RIFF file of type {head[8:12]!r}"
    return "unrecognised content"


def _chunks(path: Path, data: bytes) -> dict[bytes, bytes]:
    """The top-level chunks of a RIFF/WAVE file (first of each id), truncation tolerated."""
    if not data:
        raise _fail(path, "the file is empty")
    if len(data) < 12 or data[:4] != b"RIFF" or data[8:12] != b"WAVE":
        raise _fail(path, f"not a WAV file ({_sniff(data[:12])})")
    chunks: dict[bytes, bytes] = {}
    offset = 12
    while offset + 8 <= len(data):
        chunk_id, size = struct.unpack_from("<4sI", data, offset)
        body = data[offset + 8 : offset + 8 + size]  # a truncated last chunk keeps what is there
        chunks.setdefault(chunk_id, body)
        offset += 8 + size + (size & 1)
    return chunks


def _decode(path: Path, fmt: bytes, body: bytes) -> tuple[NDArray[np.float32], int]:
    """Samples as float32 frames x channels in [-1, 1], and the sample rate."""
    if len(fmt) < 16:
        raise _fail(path, "broken WAV file (its format chunk is too short)")
    tag, channels, rate, _, block_align, bits = struct.unpack_from("<HHIIHH", fmt)
    if tag == _EXTENSIBLE and len(fmt) >= 26:
        tag = struct.unpack_from("<H", fmt, 24)[0]  # first two bytes of the sub-format GUID
    if tag not in (_PCM, _FLOAT):
        name = _CODEC_NAMES.get(tag, f"format tag 0x{tag:04x}")
        raise _fail(path, f"compressed WAV ({name}), not linear PCM")
    if channels == 0 or rate == 0 or block_align == 0 or block_align % channels:
        raise _fail(path, "broken WAV file (zero channels, rate or block size)")
    width = block_align // channels
    if (tag == _PCM and width not in (1, 2, 3, 4)) or (tag == _FLOAT and width not in (4, 8)):
        kind = "integer" if tag == _PCM else "float"
        raise _fail(path, f"unsupported {bits}-bit {kind} WAV ({width}-byte samples)")
    frames = len(body) // block_align
    if frames == 0:
        raise _fail(path, "WAV file has no audio (its data chunk is empty)")
    raw = np.frombuffer(body, dtype=np.uint8, count=frames * block_align)
    samples: NDArray[np.float32]
    if tag == _FLOAT:
        floats = raw.view("<f4" if width == 4 else "<f8").astype(np.float32)
        samples = np.clip(np.nan_to_num(floats), -1.0, 1.0)
    elif width == 1:  # 8-bit WAV is unsigned
        samples = (raw.astype(np.float32) - 128.0) / 128.0
    elif width == 2:
        samples = raw.view("<i2").astype(np.float32) / 32768.0
    elif width == 3:  # widen each 3-byte sample to 4 bytes, low byte zero, then read as int32
        wide = np.zeros((frames * channels, 4), dtype=np.uint8)
        wide[:, 1:] = raw.reshape(-1, 3)
        samples = wide.view("<i4").reshape(-1).astype(np.float32) / 2.0**31
    else:
        samples = raw.view("<i4").astype(np.float32) / 2.0**31
    return samples.reshape(frames, channels), rate


def _to_int16(samples: NDArray[np.float32] | NDArray[np.float64]) -> NDArray[np.int16]:
    return np.clip(np.round(samples * 32768.0), -32768, 32767).astype(np.int16)


def read_wav(path: str | Path, rate: int = PHONE_RATE) -> AudioClip:
    """Read any uncompressed WAV file as a mono clip at `rate` (channels averaged)."""
    path = Path(path)
    if rate <= 0:
        raise ValueError(f"sample rate must be positive, not {rate}")
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise _fail(path, f"cannot read the file ({exc.strerror or exc})") from exc
    chunks = _chunks(path, data)
    if b"fmt " not in chunks:
        raise _fail(path, "broken WAV file (no format chunk)")
    if b"data" not in chunks:
        raise _fail(path, "WAV file has no audio (no data chunk)")
    frames, file_rate = _decode(path, chunks[b"fmt "], chunks[b"data"])
    mono = frames[:, 0] if frames.shape[1] == 1 else frames.mean(axis=1, dtype=np.float32)
    if file_rate != rate:
        mono = soxr.resample(mono, file_rate, rate)
    return AudioClip(_to_int16(mono), rate)


def write_wav(path: str | Path, samples: NDArray[np.int16], rate: int) -> None:
    """Write 16-bit PCM: 1-D samples as mono, 2-D as (frames, channels). Creates parent dirs."""
    if samples.dtype != np.int16:
        raise TypeError(f"write_wav writes int16 samples, not {samples.dtype}")
    if samples.ndim not in (1, 2) or (samples.ndim == 2 and samples.shape[1] == 0):
        raise ValueError(f"samples must be 1-D or (frames, channels), not shape {samples.shape}")
    if rate <= 0:
        raise ValueError(f"sample rate must be positive, not {rate}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with wave.open(str(path), "wb") as out:
        out.setnchannels(1 if samples.ndim == 1 else samples.shape[1])
        out.setsampwidth(2)
        out.setframerate(rate)
        out.writeframes(np.ascontiguousarray(samples, dtype="<i2").tobytes())


def resample(samples: NDArray[np.int16], from_rate: int, to_rate: int) -> NDArray[np.int16]:
    """Change the sample rate with soxr; the same array back when the rates are equal."""
    if from_rate <= 0 or to_rate <= 0:
        raise ValueError(f"sample rates must be positive, not {from_rate} -> {to_rate}")
    if from_rate == to_rate:
        return samples
    if len(samples) == 0:
        return samples.copy()
    result: NDArray[np.int16] = soxr.resample(samples, from_rate, to_rate)
    return result


def to_rate(clip: AudioClip, rate: int) -> AudioClip:
    """The clip at another sample rate (the same clip if it is already there)."""
    if clip.rate == rate:
        return clip
    return AudioClip(resample(clip.samples, clip.rate, rate), rate)


def scale(samples: NDArray[np.int16], gain: float) -> NDArray[np.int16]:
    """Samples times a linear gain, rounded and clipped to int16 (no wrap-around)."""
    if not math.isfinite(gain):
        raise ValueError(f"gain must be a finite number, not {gain}")
    scaled: NDArray[np.int16] = np.clip(np.rint(samples * float(gain)), -32768, 32767).astype(
        np.int16
    )
    return scaled

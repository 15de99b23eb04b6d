"""Fixtures for tests that run the real SIP peers (sipp, baresip) on loopback."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from .baresip import write_tone_wav

HAVE_SIPP = shutil.which("sipp") is not None
HAVE_BARESIP = shutil.which("baresip") is not None

needs_sipp = pytest.mark.skipif(not HAVE_SIPP, reason="sipp (Debian package sip-tester) missing")
needs_baresip = pytest.mark.skipif(not HAVE_BARESIP, reason="baresip (baresip-core) missing")


@pytest.fixture
def tone_wav(tmp_path: Path) -> Path:
    """3 s of a 440 Hz tone, 8 kHz mono 16-bit, -13 dBFS: a microphone for BaresipPeer."""
    return write_tone_wav(tmp_path / "tone440.wav", freq=440.0, seconds=3.0, amplitude=0.3)

from __future__ import annotations

import numpy as np
import pytest
from numpy.typing import NDArray

from warmtransfer.media.g711 import ulaw_decode, ulaw_encode
from warmtransfer.media.hold_music import hold_music
from warmtransfer.media.levels import rms_dbfs


def _band_fraction(samples: NDArray[np.int16], rate: int, low: float, high: float) -> float:
    power = np.abs(np.fft.rfft(samples.astype(np.float64))) ** 2
    freqs = np.fft.rfftfreq(len(samples), 1 / rate)
    return float(power[(freqs >= low) & (freqs <= high)].sum() / power.sum())


def test_phone_rate_by_default_and_a_loop_of_12_to_16_seconds() -> None:
    clip = hold_music()
    assert clip.rate == 8000
    assert 12.0 <= clip.duration <= 16.0
    assert len(clip.samples) % 160 == 0  # whole 20 ms frames


def test_level_is_about_minus_20_dbfs_without_clipping() -> None:
    samples = hold_music().samples
    assert -21.0 <= rms_dbfs(samples) <= -19.0
    assert np.abs(samples.astype(np.int32)).max() < 0.5 * 32768  # 6 dB of headroom at least


def test_never_falls_silent_except_the_breath_at_the_loop_seam() -> None:
    samples = hold_music().samples
    seconds = [rms_dbfs(samples[i : i + 4000]) for i in range(0, len(samples) - 8000, 4000)]
    assert min(seconds) > -30.0


def test_loop_seam_is_quiet_and_continuous() -> None:
    samples = hold_music().samples.astype(np.int32)
    assert rms_dbfs(hold_music().samples[-400:]) < -40.0  # the last 50 ms
    assert abs(int(samples[0])) < 0.01 * 32768
    assert abs(int(samples[-1])) < 0.01 * 32768
    looped = np.concatenate([samples[-800:], samples[:800]])
    seam_step = abs(int(looped[800]) - int(looped[799]))
    assert seam_step <= np.percentile(np.abs(np.diff(samples)), 50)


def test_energy_stays_in_the_telephone_band() -> None:
    samples = hold_music().samples
    assert _band_fraction(samples, 8000, 300, 3400) > 0.999
    wide = hold_music(16000)
    assert _band_fraction(wide.samples, 16000, 300, 3400) > 0.999


def test_survives_g711_cleanly() -> None:
    samples = hold_music().samples
    noise = ulaw_decode(ulaw_encode(samples)).astype(np.float64) - samples
    snr = 10 * np.log10(np.sum(samples.astype(np.float64) ** 2) / np.sum(noise**2))
    assert snr > 30


def test_is_deterministic_cached_and_read_only() -> None:
    clip = hold_music()
    assert hold_music() is clip
    fresh = hold_music.__wrapped__()
    assert fresh is not clip
    np.testing.assert_array_equal(fresh.samples, clip.samples)
    with pytest.raises(ValueError, match="read-only"):
        clip.samples[0] = 1


def test_other_rates_have_the_same_length_in_time() -> None:
    assert hold_music(16000).duration == pytest.approx(hold_music().duration)
    with pytest.raises(ValueError, match="positive"):
        hold_music(0)

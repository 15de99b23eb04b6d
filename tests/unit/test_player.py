"""Playback: what each 20 ms tick sends, for whole clips, loops and appendable (streamed) ones."""

from __future__ import annotations

import numpy as np
import pytest

from warmtransfer.media.audio import AudioClip
from warmtransfer.media.g711 import decoder, encoder
from warmtransfer.media.player import FRAME, Playback


def ramp(n: int, start: int = 0) -> np.ndarray:
    """Distinct, loud-enough samples so that G.711 round trips keep their order visible."""
    return (((np.arange(start, start + n) % 200) - 100) * 100).astype(np.int16)


def drain(playback: Playback, ticks: int) -> list[bytes | None]:
    return [playback.next_payload(float(i)) for i in range(ticks)]


async def test_a_clip_is_sent_in_whole_frames_then_ends() -> None:
    playback = Playback(AudioClip(ramp(400), 8000), "PCMU")
    sent = drain(playback, 4)
    assert [len(p) if p else None for p in sent] == [160, 160, 160, None]  # 400 padded to 480
    assert playback.done.done() and not playback.stopped


async def test_appended_audio_follows_without_a_gap_in_any_piece_size() -> None:
    samples = ramp(1000)
    playback = Playback(AudioClip(samples[:130], 8000), "PCMA", appendable=True)
    # Pieces that never line up with a frame, the first one included.
    playback.append(samples[130:170])
    playback.append(samples[170:555])
    playback.append(samples[555:1000])
    playback.close()
    sent = [p for p in drain(playback, 10) if p is not None]
    heard = decoder("PCMA")(b"".join(sent))
    expected = decoder("PCMA")(encoder("PCMA")(samples))
    assert len(heard) == 1120  # 1000 samples, the last partial frame padded once, at the end
    assert np.array_equal(heard[:1000], expected[:1000])
    assert not heard[1000:].any() or np.abs(heard[1000:]).max() <= 8  # silence, G.711's zero
    assert playback.done.done()


async def test_an_open_playback_that_runs_dry_sends_silence_and_does_not_end() -> None:
    playback = Playback(AudioClip(ramp(160), 8000), "PCMU", appendable=True)
    first, dry, dry_again = drain(playback, 3)
    assert first is not None and dry is not None and dry_again is not None
    assert np.abs(decoder("PCMU")(dry)).max() <= 8
    assert playback.underruns == 2 and not playback.done.done()
    assert playback.sent_seconds == pytest.approx(0.02)
    playback.append(ramp(FRAME, start=7))
    playback.close()
    more, end = drain(playback, 2)
    assert more is not None and np.abs(decoder("PCMU")(more)).max() > 1000
    assert end is None and playback.done.done()
    assert playback.sent_seconds == pytest.approx(0.04)  # the silence it sent is not counted


async def test_stop_ends_an_open_playback_and_later_appends_are_dropped() -> None:
    playback = Playback(AudioClip(ramp(160), 8000), "PCMU", appendable=True)
    playback.stop()
    assert playback.done.done() and playback.next_payload(0.0) is None
    with pytest.raises(RuntimeError, match="not open"):
        playback.append(ramp(160))


async def test_append_is_refused_on_a_closed_or_plain_playback_and_loop_with_append() -> None:
    plain = Playback(AudioClip(ramp(160), 8000), "PCMU")
    with pytest.raises(RuntimeError, match="not open"):
        plain.append(ramp(160))
    closed = Playback(AudioClip(ramp(160), 8000), "PCMU", appendable=True)
    closed.close()
    with pytest.raises(RuntimeError, match="not open"):
        closed.append(ramp(160))
    with pytest.raises(ValueError, match="looped"):
        Playback(AudioClip(ramp(160), 8000), "PCMU", loop=True, appendable=True)


async def test_appended_audio_at_another_rate_is_resampled() -> None:
    playback = Playback(AudioClip(ramp(0), 8000), "PCMU", appendable=True)
    playback.append(np.zeros(2400, dtype=np.int16), rate=24000)  # 100 ms
    playback.close()
    sent = [p for p in drain(playback, 7) if p is not None]
    assert len(sent) == 5

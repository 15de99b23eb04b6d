"""Recording file names come from the caller's Call-ID: a name used again never overwrites."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from warmtransfer.media.recorder import Recorder
from warmtransfer.media.wav import read_wav
from warmtransfer.server.recording import claim_path


def test_a_second_call_with_the_same_call_id_keeps_the_first_recording(tmp_path: Path) -> None:
    wanted = tmp_path / "abc123-caller.wav"
    first, second = Recorder(0.0), Recorder(0.0)
    first.received(np.full(160, 1000, dtype=np.int16), 0.0)
    second.received(np.full(160, -1000, dtype=np.int16), 0.0)
    first_path = first.save(claim_path(wanted))
    before = first_path.read_bytes()
    second_path = second.save(claim_path(wanted))
    third_path = claim_path(wanted)
    assert (first_path, second_path) == (wanted, tmp_path / "abc123-caller-2.wav")
    assert third_path == tmp_path / "abc123-caller-3.wav" and third_path.exists()
    assert first_path.read_bytes() == before  # untouched by the second save
    assert read_wav(first_path, 8000).samples.max() > 0  # each file holds its own call
    assert read_wav(second_path, 8000).samples.min() < 0


def test_running_out_of_names_is_an_error_not_an_overwrite(tmp_path: Path) -> None:
    wanted = tmp_path / "x-human.wav"
    wanted.write_bytes(b"first")
    (tmp_path / "x-human-2.wav").write_bytes(b"second")
    with pytest.raises(FileExistsError, match="2 recordings of this name already exist"):
        claim_path(wanted, tries=2)
    assert wanted.read_bytes() == b"first"

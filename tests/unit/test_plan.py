"""Plans and targets refuse bad input with errors that say what is wrong, before any call."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from pydantic import ValidationError

from warmtransfer.media.wav import write_wav
from warmtransfer.transfer.plan import HoldAudio, TransferPlan
from warmtransfer.transfer.target import AllowList, DestinationNotAllowed, Target


def test_plan_loads_from_json() -> None:
    raw = {
        "target": {
            "uri": "sip:sam@pbx.example.com",
            "dtmf": "12w#",
            "ring_timeout": 20,
            "headers": {"X-Queue": "billing"},
        },
        "allow": {"patterns": ["sip:*@pbx.example.com"]},
        "consult_timeout": 45,
    }
    plan = TransferPlan.model_validate_json(json.dumps(raw))
    assert plan.target.uri == "sip:sam@pbx.example.com"
    assert plan.target.headers == {"X-Queue": "billing"}
    assert plan.allow.allows(plan.target.uri)
    assert plan.hold_audio.volume == 0.8


@pytest.mark.parametrize(
    ("uri", "fragment"),
    [
        ("http://example.com", "must start with sip:"),
        ("sip:sam@pbx.example.com\r\nX-Evil: 1", "forbidden character"),
        ("sip:sam <sip:other@x>", "forbidden character"),
    ],
)
def test_bad_target_uri_is_refused(uri: str, fragment: str) -> None:
    with pytest.raises(ValidationError, match=fragment):
        Target(uri=uri)


def test_bad_post_dial_digits_are_refused() -> None:
    with pytest.raises(ValidationError, match="post-dial digits"):
        Target(uri="sip:a@b", dtmf="12;rm -rf")


def test_extra_headers_must_be_x_headers() -> None:
    with pytest.raises(ValidationError, match="X- header"):
        Target(uri="sip:a@b", headers={"Via": "SIP/2.0/UDP evil"})


def test_ring_timeout_must_be_positive() -> None:
    with pytest.raises(ValidationError, match="ring_timeout"):
        Target(uri="sip:a@b", ring_timeout=0)


def test_allow_list_empty_allows_nothing() -> None:
    target = Target(uri="sip:sam@pbx.example.com")
    with pytest.raises(DestinationNotAllowed, match="empty allow-list"):
        AllowList().check(target)


def test_allow_list_names_target_and_rule() -> None:
    allow = AllowList(patterns=("sip:*@pbx.example.com", "tel:+1555*"))
    allow.check(Target(uri="tel:+15550100"))
    with pytest.raises(DestinationNotAllowed) as caught:
        allow.check(Target(uri="tel:+19005550100"))
    assert "tel:+19005550100" in str(caught.value)
    assert "tel:+1555*" in str(caught.value)


def test_hold_audio_in_the_wrong_format_is_refused_when_the_plan_is_made(tmp_path: Path) -> None:
    fake = tmp_path / "music.wav"
    fake.write_bytes(b"ID3\x03\x00\x00\x00" + bytes(200))  # an MP3 renamed .wav
    with pytest.raises(ValidationError, match=r"music\.wav"):
        HoldAudio(source=fake)


def test_hold_audio_missing_file_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValidationError, match=r"nothing\.wav"):
        HoldAudio(source=tmp_path / "nothing.wav")


def test_hold_audio_wav_is_accepted(tmp_path: Path) -> None:
    path = tmp_path / "music.wav"
    write_wav(path, (np.sin(np.arange(16000) / 5) * 8000).astype(np.int16), 16000)
    assert HoldAudio(source=path).source == path

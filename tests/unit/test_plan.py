"""Plans and targets refuse bad input with errors that say what is wrong, before any call."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from pydantic import ValidationError

from warmtransfer.media.wav import write_wav
from warmtransfer.transfer.outcome import Reason
from warmtransfer.transfer.plan import (
    DEADLINE_MARGIN,
    Fallback,
    HoldAudio,
    Hunting,
    MessageAndHangup,
    PlanFileError,
    ReturnToAgent,
    TransferPlan,
)
from warmtransfer.transfer.target import AllowList, DestinationNotAllowed, Target


def test_plan_loads_from_json() -> None:
    raw = {
        "targets": [
            {
                "uri": "sip:sam@pbx.example.com",
                "dtmf": "12w#",
                "ring_timeout": 20,
                "headers": {"X-Queue": "billing"},
            }
        ],
        "allow": {"patterns": ["sip:*@pbx.example.com"]},
        "consult_timeout": 45,
    }
    plan = TransferPlan.model_validate_json(json.dumps(raw))
    assert plan.targets[0].uri == "sip:sam@pbx.example.com"
    assert plan.targets[0].headers == {"X-Queue": "billing"}
    assert plan.allow.allows(plan.targets[0].uri)
    assert plan.hold_audio.volume == 0.8
    assert plan.hunting == Hunting()
    assert plan.on_failure == ReturnToAgent()


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


# -- plans: the full schema, from Python, TOML and JSON --------------------------------------------

FULL_TOML = """
consult_timeout = 45
transfer_timeout = 240

[allow]
patterns = ["sip:*@pbx.example.com", "tel:+1555*"]

[[targets]]
uri = "sip:alice@pbx.example.com"
display_name = "Alice (billing)"
caller_id = "sip:+15550100@pbx.example.com"
dtmf = "w123#"
ring_timeout = 20
headers = { X-Queue = "billing" }

[[targets]]
uri = "tel:+15550123"
ring_timeout = 25

[hunting]
mode = "simultaneous"
rounds = 2
round_delay = 10
retry_on = ["busy", "no_answer", "unreachable"]

[hold_audio]
silence = true

[on_failure]
action = "fallback"
target = { uri = "sip:queue@pbx.example.com", ring_timeout = 30 }
"""


def test_full_plan_from_toml(tmp_path: Path) -> None:
    path = tmp_path / "plan.toml"
    path.write_text(FULL_TOML, encoding="utf-8")
    plan = TransferPlan.from_file(path)
    alice, bob = plan.targets
    assert (alice.display_name, alice.caller_id, alice.dtmf) == (
        "Alice (billing)",
        "sip:+15550100@pbx.example.com",
        "w123#",
    )
    assert alice.headers == {"X-Queue": "billing"}
    assert (alice.ring_timeout, bob.ring_timeout) == (20, 25)
    assert plan.hunting == Hunting(
        mode="simultaneous",
        rounds=2,
        round_delay=10,
        retry_on=frozenset({Reason.BUSY, Reason.NO_ANSWER, Reason.UNREACHABLE}),
    )
    assert isinstance(plan.on_failure, Fallback)
    assert plan.fallback == Target(uri="sip:queue@pbx.example.com", ring_timeout=30)
    assert plan.effective_transfer_timeout == 240
    plan.check_allowed()
    # The same plan as JSON, and built in Python, is the same value.
    as_json = tmp_path / "plan.json"
    as_json.write_text(plan.model_dump_json(), encoding="utf-8")
    assert TransferPlan.from_file(as_json) == plan
    assert TransferPlan.model_validate(plan.model_dump()) == plan


def test_defaults_are_one_sequential_round_back_to_the_ai() -> None:
    plan = TransferPlan(targets=(Target(uri="sip:a@b"),))
    assert plan.hunting.mode == "sequential"
    assert plan.hunting.rounds == 1
    assert plan.hunting.retry_on == {Reason.BUSY, Reason.NO_ANSWER}
    assert plan.on_failure == ReturnToAgent()
    assert plan.fallback is None
    assert plan.transfer_timeout is None


def test_derived_transfer_timeout() -> None:
    a = Target(uri="sip:a@x", ring_timeout=20)
    b = Target(uri="sip:b@x", ring_timeout=30)
    sequential = TransferPlan(
        targets=(a, b), hunting=Hunting(rounds=2, round_delay=5), consult_timeout=40
    )
    # every target rings out in every round, the delays, one consult, the margin
    assert sequential.effective_transfer_timeout == 2 * 50 + 5 + 40 + DEADLINE_MARGIN
    simultaneous = sequential.model_copy(
        update={"hunting": Hunting(mode="simultaneous", rounds=2, round_delay=5)}
    )
    assert simultaneous.effective_transfer_timeout == 2 * 30 + 5 + 40 + DEADLINE_MARGIN
    fallback = TransferPlan(
        targets=(a,),
        consult_timeout=40,
        on_failure=Fallback(target=Target(uri="sip:q@x", ring_timeout=15)),
    )
    assert fallback.effective_transfer_timeout == 20 + 40 + 15 + DEADLINE_MARGIN
    explicit = TransferPlan(targets=(a,), transfer_timeout=90)
    assert explicit.effective_transfer_timeout == 90


@pytest.mark.parametrize("reason", ["declined", "voicemail"])
def test_declined_and_voicemail_can_never_be_retried(reason: str) -> None:
    with pytest.raises(ValidationError, match=f"{reason} can never be retried"):
        Hunting(retry_on=frozenset({Reason.BUSY, Reason(reason)}))


@pytest.mark.parametrize("reason", ["completed", "caller_hung_up", "cancelled", "error"])
def test_retry_on_takes_only_failures_of_one_attempt(reason: str) -> None:
    with pytest.raises(ValidationError, match="not a failure of one attempt"):
        Hunting(retry_on=frozenset({Reason(reason)}))


@pytest.mark.parametrize(
    ("values", "fragment"),
    [
        ({"rounds": 0}, "rounds"),
        ({"round_delay": -1}, "round_delay"),
        ({"mode": "round_robin"}, "mode"),
    ],
)
def test_bad_hunting_is_refused(values: dict[str, object], fragment: str) -> None:
    with pytest.raises(ValidationError, match=fragment):
        Hunting.model_validate(values)


def test_a_plan_needs_a_target_and_no_target_twice() -> None:
    with pytest.raises(ValidationError, match="at least 1"):
        TransferPlan(targets=())
    with pytest.raises(ValidationError, match="listed twice"):
        TransferPlan(targets=(Target(uri="sip:a@b"), Target(uri="sip:a@b", ring_timeout=5)))


def test_on_failure_is_a_tagged_choice() -> None:
    plan = TransferPlan.model_validate(
        {
            "targets": [{"uri": "sip:a@b"}],
            "on_failure": {"action": "message_and_hangup", "message": "We are closed."},
        }
    )
    assert plan.on_failure == MessageAndHangup(message="We are closed.")
    with pytest.raises(ValidationError, match="message"):
        TransferPlan.model_validate(
            {"targets": [{"uri": "sip:a@b"}], "on_failure": {"action": "message_and_hangup"}}
        )
    with pytest.raises(ValidationError, match="does not match any of the expected tags"):
        TransferPlan.model_validate(
            {"targets": [{"uri": "sip:a@b"}], "on_failure": {"action": "transfer_to_mars"}}
        )


def test_allow_list_covers_every_target_and_the_fallback() -> None:
    allow = AllowList(patterns=("sip:*@pbx.example.com",))
    inside = Target(uri="sip:a@pbx.example.com")
    outside = Target(uri="sip:b@evil.example.net")
    with pytest.raises(DestinationNotAllowed) as caught:
        TransferPlan(targets=(inside, outside), allow=allow).check_allowed()
    assert "targets[1] 'sip:b@evil.example.net'" in str(caught.value)
    assert "sip:*@pbx.example.com" in str(caught.value)
    plan = TransferPlan(targets=(inside,), allow=allow, on_failure=Fallback(target=outside))
    with pytest.raises(DestinationNotAllowed, match=r"on_failure\.target 'sip:b@evil"):
        plan.check_allowed()


# -- plan files: every error names the file, and the key when a value is bad ----------------------


def write(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


@pytest.mark.parametrize(
    ("name", "text", "fragments"),
    [
        ("p.toml", "[[targets]]\nuri = 'sip:a@b'\nring_timeout = 0\n", ["targets.0.ring_timeout"]),
        ("p.toml", "consult_timeout = 5\n", ["targets: Field required"]),
        ("p.toml", "[[targets]]\nuri = 'http://x'\n", ["targets.0.uri", "must start with"]),
        ("p.toml", "[[targets]]\nuri = 'sip:a@b'\nring_timout = 5\n", ["ring_timout"]),
        (
            "p.toml",
            "[[targets]]\nuri = 'sip:a@b'\n[hunting]\nretry_on = ['declined']\n",
            ["hunting.retry_on", "declined can never be retried"],
        ),
        (
            "p.json",
            '{"targets": [{"uri": "sip:a@b"}], "on_failure": {"action": "fallback"}}',
            ["on_failure.fallback.target", "Field required"],
        ),
        ("p.toml", "[[targets]\nuri = 'sip:a@b'\n", ["invalid TOML", "line 1"]),
        ("p.json", '{"targets": [', ["invalid JSON"]),
        ("p.json", '["sip:a@b"]', ["top level must be a table"]),
        ("p.yaml", "targets: []", ["expected a .toml or .json file"]),
    ],
)
def test_bad_plan_files_name_the_file_and_the_key(
    tmp_path: Path, name: str, text: str, fragments: list[str]
) -> None:
    path = write(tmp_path, name, text)
    with pytest.raises(PlanFileError) as caught:
        TransferPlan.from_file(path)
    message = str(caught.value)
    assert str(path) in message
    for fragment in fragments:
        assert fragment in message


def test_missing_plan_file(tmp_path: Path) -> None:
    with pytest.raises(PlanFileError, match=r"nothing\.toml.*cannot be read"):
        TransferPlan.from_file(tmp_path / "nothing.toml")


def test_hold_audio_is_found_beside_the_plan_file(tmp_path: Path) -> None:
    music = tmp_path / "music.wav"
    write_wav(music, (np.sin(np.arange(16000) / 5) * 8000).astype(np.int16), 16000)
    path = write(
        tmp_path,
        "plan.toml",
        "[[targets]]\nuri = 'sip:a@b'\n[hold_audio]\nsource = 'music.wav'\nvolume = 0.5\n",
    )
    plan = TransferPlan.from_file(path)
    assert plan.hold_audio.source == music
    assert plan.hold_audio.volume == 0.5

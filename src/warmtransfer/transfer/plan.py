"""A transfer plan: whom to dial, how to hunt for a human, and what to do if nobody takes the call.

Pydantic models, so one plan is built in Python or loaded from a TOML or JSON file
(`TransferPlan.from_file`), and a bad value is refused when the plan is made, with pydantic's
location of the bad key, never while a caller waits on hold. Unknown keys are refused too: a
misspelt ``ring_timout`` in a config file must be an error, not a silent default.

    consult_timeout = 45

    [allow]
    patterns = ["sip:*@pbx.example.com"]

    [[targets]]
    uri = "sip:alice@pbx.example.com"
    ring_timeout = 20

    [hunting]
    mode = "sequential"

    [on_failure]
    action = "return_to_agent"
"""

from __future__ import annotations

import json
import tomllib
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from warmtransfer.media.wav import read_wav
from warmtransfer.transfer.outcome import Reason
from warmtransfer.transfer.target import AllowList, Target

#: The derived overall deadline adds this margin to the hunt's worst-case ringing and one full
#: consult: holding the caller, post-dial digits and the bridge take a little time too.
DEADLINE_MARGIN = 30.0

#: Reasons of a failed attempt that `retry_on` may name. A human who declined, or a voicemail,
#: gave an answer: dialling them again would pester a person or leave a second message.
RETRYABLE = frozenset(
    {
        Reason.BUSY,
        Reason.NO_ANSWER,
        Reason.REJECTED,
        Reason.UNREACHABLE,
        Reason.TARGET_HUNG_UP,
        Reason.CONSULT_TIMEOUT,
    }
)
_NEVER_RETRIED = frozenset({Reason.DECLINED, Reason.VOICEMAIL})


class HoldAudio(BaseModel):
    """What the caller hears while held: the built-in music, a WAV file, or silence; and
    whether the caller's side is told that it is held.

    `reinvite`: signal the hold to the caller's phone, PBX or carrier (on SIP, a re-INVITE
    with ``a=sendonly``, and ``a=sendrecv`` again when the caller is given back or joined).
    Some PBXs and carriers show "on hold" or stop their own timers only when told. Off by
    default because some trunks mishandle it (a refused or lost re-INVITE, one-way audio after
    the resume); the music plays either way, and a refusal never stops the transfer.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    source: Path | None = Field(default=None, description="WAV file; None = built-in music")
    silence: bool = Field(default=False, description="hold in silence instead of music")
    volume: float = Field(default=0.8, ge=0.0, le=1.0)
    reinvite: bool = Field(
        default=False, description="tell the caller's phone or trunk it is held (re-INVITE)"
    )

    @field_validator("source")
    @classmethod
    def _readable_wav(cls, value: Path | None) -> Path | None:
        """A bad hold file is refused when the plan is made, not when a caller is waiting."""
        if value is not None:
            read_wav(value)  # raises AudioFormatError naming the file and what is accepted
        return value


class Hunting(BaseModel):
    """How the targets are tried.

    A round tries every target still in the hunt: one after another ("sequential": each failure
    moves on to the next target at once), or all at once ("simultaneous": the first human to
    accept wins and every other attempt is ended at that instant). After a round in which nobody
    accepted, the hunt waits `round_delay` seconds and starts the next round with only the
    targets whose attempt failed for a reason in `retry_on`, up to `rounds` rounds in all.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    mode: Literal["sequential", "simultaneous"] = "sequential"
    rounds: int = Field(default=1, ge=1, le=10, description="rounds over the targets")
    round_delay: float = Field(default=0.0, ge=0, le=600, description="seconds between rounds")
    retry_on: frozenset[Reason] = Field(
        default=frozenset({Reason.BUSY, Reason.NO_ANSWER}),
        description="failures after which a target is dialled again in the next round",
    )

    @field_validator("retry_on")
    @classmethod
    def _only_retryable(cls, value: frozenset[Reason]) -> frozenset[Reason]:
        never = sorted(value & _NEVER_RETRIED)
        if never:
            raise ValueError(
                f"{', '.join(r.value for r in never)} can never be retried: the target answered "
                "(a human who declined is not pestered, a voicemail is not left twice)"
            )
        other = sorted(value - RETRYABLE)
        if other:
            raise ValueError(
                f"{', '.join(r.value for r in other)} is not a failure of one attempt; retry_on "
                f"takes {', '.join(sorted(r.value for r in RETRYABLE))}"
            )
        return value


class ReturnToAgent(BaseModel):
    """The default: the caller is given back to the AI, which is told why (the outcome)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    action: Literal["return_to_agent"] = "return_to_agent"


class MessageAndHangup(BaseModel):
    """Speak a fixed message to the caller (e.g. office hours), then hang up."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    action: Literal["message_and_hangup"] = "message_and_hangup"
    message: str = Field(min_length=1, max_length=2000)


class Fallback(BaseModel):
    """Hand the caller to this target (a queue, a voicemail box), bridged without a consult."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    action: Literal["fallback"] = "fallback"
    target: Target


OnFailure = Annotated[ReturnToAgent | MessageAndHangup | Fallback, Field(discriminator="action")]


class PlanFileError(ValueError):
    """A plan file could not be read or is not a valid plan; the message names the file and
    (for a bad value) the key, as pydantic locates it, e.g. ``targets.1.ring_timeout``."""


class TransferPlan(BaseModel):
    """Whom to dial, how to hunt, how long the caller may wait, and what happens on failure."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    targets: tuple[Target, ...] = Field(min_length=1, description="tried in this order")
    hunting: Hunting = Field(default_factory=Hunting)
    allow: AllowList = Field(default_factory=AllowList)
    hold_audio: HoldAudio = Field(default_factory=HoldAudio)
    consult_timeout: float = Field(
        default=60.0, gt=0, le=3600, description="seconds the human has to decide, from answer"
    )
    transfer_timeout: float | None = Field(
        default=None,
        gt=0,
        le=7200,
        description="seconds from hold to bridge, at most; None = derived (effective_...)",
    )
    on_failure: OnFailure = Field(default_factory=ReturnToAgent)

    @field_validator("targets")
    @classmethod
    def _distinct(cls, value: tuple[Target, ...]) -> tuple[Target, ...]:
        """Dialling one URI twice in a round rings the same phone twice; rounds do retries."""
        seen: set[str] = set()
        for target in value:
            if target.uri in seen:
                raise ValueError(f"target {target.uri!r} is listed twice; use rounds to retry")
            seen.add(target.uri)
        return value

    @property
    def effective_transfer_timeout(self) -> float:
        """`transfer_timeout`, or one derived from the plan when it is None: every target of
        every round ringing out (sequential: the sum of their ring timeouts; simultaneous: the
        longest), the delays between rounds, one full consult, the fallback ringing out, plus
        DEADLINE_MARGIN. The caller is never held longer than this, whatever a port does."""
        if self.transfer_timeout is not None:
            return self.transfer_timeout
        rings = [target.ring_timeout for target in self.targets]
        per_round = sum(rings) if self.hunting.mode == "sequential" else max(rings)
        hunt = self.hunting.rounds * per_round + (self.hunting.rounds - 1) * (
            self.hunting.round_delay
        )
        fallback = (
            self.on_failure.target.ring_timeout if isinstance(self.on_failure, Fallback) else 0.0
        )
        return hunt + self.consult_timeout + fallback + DEADLINE_MARGIN

    @property
    def fallback(self) -> Target | None:
        return self.on_failure.target if isinstance(self.on_failure, Fallback) else None

    def check_allowed(self) -> None:
        """Raise `DestinationNotAllowed` for the first target outside the allow-list, the
        fallback included, naming it and the rule. The driver calls this before anything."""
        for index, target in enumerate(self.targets):
            self.allow.check(target, f"targets[{index}]")
        if self.fallback is not None:
            self.allow.check(self.fallback, "on_failure.target")

    @classmethod
    def from_file(cls, path: str | Path) -> TransferPlan:
        """Load a plan from a ``.toml`` or ``.json`` file.

        A relative `hold_audio.source` is taken relative to the plan file, so a plan and its
        music can move together. Every error is a `PlanFileError` naming the file.
        """
        path = Path(path)
        suffix = path.suffix.lower()
        if suffix not in (".toml", ".json"):
            raise PlanFileError(f"plan file {str(path)!r}: expected a .toml or .json file")
        try:
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise PlanFileError(f"plan file {str(path)!r}: cannot be read: {exc}") from exc
        try:
            data: Any = tomllib.loads(text) if suffix == ".toml" else json.loads(text)
        except (tomllib.TOMLDecodeError, json.JSONDecodeError) as exc:
            kind = "TOML" if suffix == ".toml" else "JSON"
            raise PlanFileError(f"plan file {str(path)!r}: invalid {kind}: {exc}") from exc
        if not isinstance(data, dict):
            raise PlanFileError(f"plan file {str(path)!r}: the top level must be a table")
        hold = data.get("hold_audio")
        if isinstance(hold, dict) and isinstance(hold.get("source"), str):
            source = Path(hold["source"])
            if not source.is_absolute():
                data = {**data, "hold_audio": {**hold, "source": str(path.parent / source)}}
        try:
            return cls.model_validate(data)
        except ValidationError as exc:
            problems = "; ".join(
                f"{'.'.join(str(part) for part in error['loc']) or '(top level)'}: {error['msg']}"
                for error in exc.errors()
            )
            raise PlanFileError(f"plan file {str(path)!r}: {problems}") from exc

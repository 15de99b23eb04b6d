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

    [hold_audio]
    progress_every = 30

    [caller_keys]
    can_leave_message = true
    messages_dir = "messages"
"""

from __future__ import annotations

import json
import tempfile
import tomllib
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

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

    `progress_every`: every so many seconds on hold (counted from the start of the hold), the
    music pauses, `progress_text` is spoken (the backend renders it with its text-to-speech,
    once: the clip is cached) and the music resumes where it paused. A caller who hears
    nothing but music for minutes assumes they were forgotten and hangs up. None = never. A
    prompt never delays the bridge: when a human accepts mid-prompt, the prompt stops at once.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    source: Path | None = Field(default=None, description="WAV file; None = built-in music")
    silence: bool = Field(default=False, description="hold in silence instead of music")
    volume: float = Field(default=0.8, ge=0.0, le=1.0)
    reinvite: bool = Field(
        default=False, description="tell the caller's phone or trunk it is held (re-INVITE)"
    )
    progress_every: float | None = Field(
        default=30.0, gt=0, le=3600, description="seconds between progress prompts; None = never"
    )
    progress_text: str = Field(
        default="Thanks for holding, I'm still connecting you.", min_length=1, max_length=500
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


DTMF_KEYS = "0123456789*#ABCD"

#: How a key is named in a spoken prompt ("press pound").
_KEY_NAMES = {"#": "pound", "*": "star"}

#: Where recorded messages go when the plan does not say (see `CallerKeys.messages_dir`).
DEFAULT_MESSAGES_DIR = Path(tempfile.gettempdir()) / "warmtransfer-messages"


class CallerKeys(BaseModel):
    """What the caller's keypad does while they are on hold (and only then: the transfer reads
    the caller's keys from the moment the hold audio plays until a human accepts or the caller
    is given back; any other key is ignored, and none is left over for the AI afterwards).

    - `cancel_key` (on by default: waiting must never be a trap): the caller stops waiting. The
      hunt ends at once (a ringing target's call is cancelled, a human being briefed hears a
      short notice and is hung up) and the caller is back with the AI straight away; the outcome
      is `Failed` with Reason.CANCELLED_BY_CALLER. The plan's on_failure does not apply: the
      caller asked for the AI, not for a fallback queue or a goodbye.
    - `message_key` (off by default: the app must decide where messages go and who hears them):
      the caller leaves a message instead. The hunt ends as for `cancel_key`, the caller hears
      `message_prompt` and a tone, and what they say is recorded (8 kHz mono 16-bit WAV) until
      they press `message_key` again, stay silent for `message_silence_seconds`, reach
      `message_max_seconds`, or hang up. The outcome is `Failed` with Reason.MESSAGE_LEFT (or
      CALLER_HUNG_UP if they ended it by hanging up) and `recorded_message`, the file's path,
      which an app attaches to its handoff record (`HandoffRecord.with_recorded_message`).
      Then the caller is back with the AI (which can thank them), unless the plan's on_failure
      is message_and_hangup, which is carried out; a fallback target is not dialled (the caller
      chose a message over waiting).

    Recordings are written to `messages_dir`, one file per message named after the transfer
    (``message-<transfer id>-<random>.wav``), readable by the engine's user only; None (the
    default) means DEFAULT_MESSAGES_DIR, a directory in the system's temporary directory, which
    the system may clean and other local users can see into if they created it first: an app
    that keeps messages should set a directory of its own, or move each file away when the
    transfer returns.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    can_cancel: bool = True
    cancel_key: str = Field(default="*", description="the caller stops waiting")
    can_leave_message: bool = False
    message_key: str = Field(default="#", description="starts, and ends, the caller's message")
    message_max_seconds: float = Field(default=60.0, gt=0, le=600)
    message_silence_seconds: float = Field(
        default=5.0, gt=0, le=60, description="this long without sound ends the message"
    )
    messages_dir: Path | None = Field(
        default=None, description="where messages are written; None = DEFAULT_MESSAGES_DIR"
    )
    message_prompt: str | None = Field(
        default=None,
        min_length=1,
        max_length=500,
        description="spoken before the tone; None = a prompt naming message_key",
    )

    @field_validator("cancel_key", "message_key")
    @classmethod
    def _one_key(cls, value: str) -> str:
        if len(value) != 1 or value not in DTMF_KEYS:
            raise ValueError(f"{value!r} is not one DTMF key; use one of {DTMF_KEYS}")
        return value

    @model_validator(mode="after")
    def _distinct_keys(self) -> CallerKeys:
        """One key cannot mean both "stop waiting" and "leave a message"."""
        if self.can_cancel and self.can_leave_message and self.cancel_key == self.message_key:
            raise ValueError(
                f"cancel_key and message_key are both {self.cancel_key!r}; "
                "give each action its own key"
            )
        return self

    @property
    def effective_messages_dir(self) -> Path:
        return self.messages_dir if self.messages_dir is not None else DEFAULT_MESSAGES_DIR

    @property
    def effective_message_prompt(self) -> str:
        if self.message_prompt is not None:
            return self.message_prompt
        key = _KEY_NAMES.get(self.message_key, self.message_key)
        return f"Please leave your message after the tone, then press {key} or hang up."

    def action(self, key: str) -> Literal["cancel", "message"] | None:
        """What `key` does under this plan; None for a key that does nothing."""
        if self.can_cancel and key == self.cancel_key:
            return "cancel"
        if self.can_leave_message and key == self.message_key:
            return "message"
        return None


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
    caller_keys: CallerKeys = Field(default_factory=CallerKeys)

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

        A relative `hold_audio.source` or `caller_keys.messages_dir` is taken relative to the
        plan file, so a plan and its music (or its messages) can move together. Every error is a
        `PlanFileError` naming the file.
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
        for section, key in (("hold_audio", "source"), ("caller_keys", "messages_dir")):
            table = data.get(section)
            if isinstance(table, dict) and isinstance(table.get(key), str):
                value = Path(table[key])
                if not value.is_absolute():
                    data = {**data, section: {**table, key: str(path.parent / value)}}
        try:
            return cls.model_validate(data)
        except ValidationError as exc:
            problems = "; ".join(
                f"{'.'.join(str(part) for part in error['loc']) or '(top level)'}: {error['msg']}"
                for error in exc.errors()
            )
            raise PlanFileError(f"plan file {str(path)!r}: {problems}") from exc

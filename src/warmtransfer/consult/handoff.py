"""The handoff record: everything the human's side needs about a transferred call, as data.

The whisper is fifteen seconds of speech; the record is the rest: who called, why, the facts the
application knew, the whole conversation, how the summary was made and every dial attempt. It is
POSTed to webhooks, shown on agents' screens and summarised into a SIP header, so every string in
it is one line with no control or invisible characters, and bounded in length, however it was
built (the validators apply to `from_briefing`, to the constructor and to `from_json` alike).

Layering: consult sits below transfer, so this module does not import the transfer package.
`with_attempts` takes anything shaped like `transfer.outcome.Attempt` (`AttemptView`), which the
engine passes as they are.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Protocol

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field
from pydantic.functional_validators import AfterValidator

from warmtransfer.consult.briefing import SummarizedBriefing, looks_like_number
from warmtransfer.consult.ports import Briefing, Turn
from warmtransfer.consult.summary import (
    ACCOUNT_KEYS,
    INTENT_KEYS,
    NAME_KEYS,
    NUMBER_KEYS,
    extract_intent,
    fact,
    fact_key,
    is_caller,
)
from warmtransfer.consult.wording import looks_like_injection, one_line, to_ascii
from warmtransfer.sip.sanitize import header_value as sip_header_value

__all__ = [
    "FLAG_INJECTION",
    "HEADER_VALUE_MAX",
    "MAX_TRANSCRIPT_CHARS",
    "AttemptView",
    "HandoffAttempt",
    "HandoffRecord",
    "HandoffTurn",
]

#: Default length of `HandoffRecord.header_value()`; within sip.sanitize's cap of 256.
HEADER_VALUE_MAX = 200
#: The transcript kept in a record, at most: the latest turns that fit (a webhook body and a
#: screen have limits; the start of the call is summarised by `intent` and the whisper).
MAX_TRANSCRIPT_CHARS = 20_000
#: In `flags` when the caller said something that reads like an instruction to a model.
FLAG_INJECTION = "possible_prompt_injection"


def _capped(value: str, limit: int) -> str:
    """One line of at most `limit` characters; idempotent, so a record survives a round trip."""
    return one_line(value)[:limit].rstrip()


def _line(limit: int) -> AfterValidator:
    return AfterValidator(lambda value: _capped(value, limit))


def _optional_line(limit: int) -> AfterValidator:
    return AfterValidator(lambda value: None if value is None else _capped(value, limit) or None)


Short = Annotated[str, _line(128)]
OptionalShort = Annotated[str | None, _optional_line(128)]
Text = Annotated[str, _line(2000)]


def _facts(value: dict[str, str]) -> dict[str, str]:
    cleaned = {_capped(k, 64): _capped(v, 500) for k, v in value.items()}
    return {k: v for k, v in cleaned.items() if k}


class _TargetView(Protocol):
    @property
    def uri(self) -> str: ...
    @property
    def display_name(self) -> str | None: ...


class AttemptView(Protocol):
    """What a record reads from one dial attempt (the fields of `transfer.outcome.Attempt`)."""

    @property
    def target(self) -> _TargetView: ...
    @property
    def started(self) -> float: ...
    @property
    def ringing(self) -> float | None: ...
    @property
    def answered(self) -> float | None: ...
    @property
    def ended(self) -> float | None: ...
    @property
    def reason(self) -> str | None: ...
    @property
    def sip_status(self) -> int | None: ...
    @property
    def sip_reason(self) -> str | None: ...
    @property
    def detail(self) -> str: ...
    @property
    def round(self) -> int: ...
    @property
    def fallback(self) -> bool: ...


class HandoffTurn(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    speaker: Annotated[str, _line(32)]
    text: Text


class HandoffAttempt(BaseModel):
    """One dial attempt. Times are seconds from `origin` (by default the first attempt's start):
    the engine's clock is `time.monotonic`, which means nothing outside the process."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    target: Annotated[str, _line(256)]
    target_name: OptionalShort = None
    started: float
    ringing: float | None = None
    answered: float | None = None
    ended: float | None = None
    reason: OptionalShort = Field(default=None, description="a transfer.outcome.Reason value")
    sip_status: int | None = None
    sip_reason: OptionalShort = None
    detail: Annotated[str, _line(500)] = ""
    round: int = 1
    fallback: bool = False

    @classmethod
    def from_attempt(cls, attempt: AttemptView, origin: float) -> HandoffAttempt:
        def since(moment: float | None) -> float | None:
            return None if moment is None else round(moment - origin, 3)

        return cls(
            target=attempt.target.uri,
            target_name=attempt.target.display_name,
            started=round(attempt.started - origin, 3),
            ringing=since(attempt.ringing),
            answered=since(attempt.answered),
            ended=since(attempt.ended),
            reason=None if attempt.reason is None else str(attempt.reason),
            sip_status=attempt.sip_status,
            sip_reason=attempt.sip_reason,
            detail=attempt.detail,
            round=attempt.round,
            fallback=attempt.fallback,
        )


class HandoffRecord(BaseModel):
    """The structured handoff of one call: for webhooks, screens and (in short) SIP headers.

    `incomplete` is set by whoever builds or updates the record when it is known to lack part of
    the story (the caller hung up mid-sentence, the transfer has not ended yet). `flags` holds
    warnings for the human's screen, such as FLAG_INJECTION. `summary_source` is "given" for a
    briefing written by hand, else as in `SummarizedBriefing`; `summary_fallback` is the
    `FallbackReason` value when a summarizer's own whisper was replaced.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    caller_number: OptionalShort = None
    caller_name: OptionalShort = None
    intent: Annotated[str | None, _optional_line(200)] = None
    key_facts: Annotated[dict[str, str], AfterValidator(_facts)] = Field(default_factory=dict)
    transcript: tuple[HandoffTurn, ...] = ()
    transcript_omitted: int = Field(default=0, ge=0, description="earliest turns left out")
    whisper: Annotated[str, _line(1000)] = ""
    summary_source: Short = "given"
    summary_fallback: OptionalShort = None
    attempts: tuple[HandoffAttempt, ...] = ()
    created_at: AwareDatetime
    recorded_message: Path | None = None
    incomplete: bool = False
    flags: tuple[Short, ...] = ()

    @classmethod
    def from_briefing(
        cls,
        briefing: Briefing,
        *,
        caller_number: str | None = None,
        created_at: datetime | None = None,
        recorded_message: Path | str | None = None,
        incomplete: bool = False,
        attempts: Sequence[AttemptView] = (),
    ) -> HandoffRecord:
        """The record of a briefing (best from `build_briefing`, which says how the summary was
        made). The caller's name is the `name` fact, else `briefing.caller` unless that is a
        number; the number is `caller_number`, else `briefing.caller` if it is one, else a
        number fact. The intent is the `intent` fact, else the reason the caller gave."""
        facts = briefing.facts
        caller = briefing.caller
        name = fact(facts, NAME_KEYS) or (
            caller if caller and not looks_like_number(caller) else None
        )
        number = (
            caller_number
            or (caller if caller and looks_like_number(caller) else None)
            or fact(facts, NUMBER_KEYS)
        )
        drop = {*NAME_KEYS, *INTENT_KEYS}  # they have fields of their own
        key_facts = {k: v for k, v in facts.items() if fact_key(k) not in drop}
        turns, omitted = _latest(briefing.transcript)
        suspicious = any(looks_like_injection(t.text) for t in briefing.transcript if is_caller(t))
        suspicious = suspicious or any(looks_like_injection(v) for v in facts.values())
        source, fallback = "given", None
        if isinstance(briefing, SummarizedBriefing):
            source = briefing.summary_source
            fallback = briefing.summary_fallback.value if briefing.summary_fallback else None
        record = cls(
            caller_number=number,
            caller_name=name,
            intent=extract_intent(briefing.transcript, facts),
            key_facts=key_facts,
            transcript=tuple(HandoffTurn(speaker=t.speaker, text=t.text) for t in turns),
            transcript_omitted=omitted,
            whisper=briefing.summary,
            summary_source=source,
            summary_fallback=fallback,
            created_at=created_at or datetime.now(UTC),
            recorded_message=Path(recorded_message) if recorded_message is not None else None,
            incomplete=incomplete,
            flags=(FLAG_INJECTION,) if suspicious else (),
        )
        return record.with_attempts(attempts) if attempts else record

    def with_attempts(
        self,
        attempts: Sequence[AttemptView],
        *,
        origin: float | None = None,
        incomplete: bool | None = None,
    ) -> HandoffRecord:
        """A copy with these dial attempts (replacing any before); times are seconds from
        `origin`, by default the earliest attempt's start. `incomplete` updates the flag."""
        if origin is None:
            origin = min((a.started for a in attempts), default=0.0)
        update: dict[str, object] = {
            "attempts": tuple(HandoffAttempt.from_attempt(a, origin) for a in attempts)
        }
        if incomplete is not None:
            update["incomplete"] = incomplete
        return self.model_copy(update=update)

    def with_recorded_message(self, path: Path | str) -> HandoffRecord:
        """A copy that points at the message the caller recorded (e.g. after a failed transfer)."""
        return self.model_copy(update={"recorded_message": Path(path)})

    def to_json(self) -> str:
        return self.model_dump_json()

    @classmethod
    def from_json(cls, text: str | bytes) -> HandoffRecord:
        return cls.model_validate_json(text)

    def header_value(self, max_length: int = HEADER_VALUE_MAX) -> str:
        """A one-line ASCII summary for a SIP header such as X-Handoff-Intent:
        "Maria Lopez; account 4471; a double charge on her March invoice".

        Accents are dropped, "; " separates the parts (so any ";" inside one becomes ","), it is
        cut at a word boundary to `max_length`, and `sip.sanitize.header_value` has the last word
        on control characters.
        """
        account = fact(self.key_facts, ACCOUNT_KEYS)
        parts = [
            self.caller_name,
            f"account {account}" if account else None,
            self.intent or self.whisper,
        ]
        text = "; ".join(to_ascii(p).replace(";", ",") for p in parts if p and to_ascii(p))
        if len(text) > max_length:
            text = text[: max_length + 1].rsplit(" ", 1)[0].rstrip(" ;,")
        return sip_header_value(text, max_length)


def _latest(transcript: Sequence[Turn]) -> tuple[list[Turn], int]:
    """The latest turns within MAX_TRANSCRIPT_CHARS (each turn counted at most 2000 chars), and
    how many earlier ones were left out."""
    kept: list[Turn] = []
    budget = MAX_TRANSCRIPT_CHARS
    for turn in reversed(transcript):
        budget -= min(len(turn.text), 2000)
        if budget < 0:
            break
        kept.append(turn)
    return list(reversed(kept)), len(transcript) - len(kept)

"""Building the briefing a consultant speaks, from the conversation and the application's facts.

    briefing = await build_briefing(transcript, facts, caller="Maria Lopez", summarizer=llm)
    record = HandoffRecord.from_briefing(briefing, caller_number="+14155550100")

`build_briefing` never fails and never returns an unfit whisper, whichever summarizer it is given:
a summarizer that raises, answers nothing, or answers too much is replaced by the extractive one
(and the briefing says so), so a transfer never waits on or fails because of its summary. It does
not bound a summarizer's time itself: `LlmSummarizer` has its own overall deadline, and an
application with its own summarizer can wrap the call in `asyncio.timeout`.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from warmtransfer.consult.ports import Briefing, Turn
from warmtransfer.consult.summary import (
    DEFAULT_MAX_WORDS,
    NAME_KEYS,
    DetailedSummarizer,
    ExtractiveSummarizer,
    FallbackReason,
    Summarizer,
    Summary,
    fact,
    over_budget,
)
from warmtransfer.consult.wording import clean_spoken

__all__ = ["SummarizedBriefing", "build_briefing", "looks_like_number"]

log = logging.getLogger(__name__)

_NUMBER = re.compile(r"^(?:sips?:|tel:)\S+$|^\+?[\d\s().-]{5,}$", re.IGNORECASE)


def looks_like_number(value: str) -> bool:
    """A phone number or SIP/tel URI rather than a person's name."""
    return _NUMBER.match(value.strip()) is not None


@dataclass(frozen=True)
class SummarizedBriefing(Briefing):
    """A briefing that also says how its summary was made, for the handoff record and the logs.

    `summary_source` says who wrote the summary: "extractive", "llm" or "custom" (an
    application's own summarizer). When another summarizer was asked but its answer was not
    used, the source is "extractive" and `summary_fallback` and `summary_detail` say why.
    """

    summary_source: str = "extractive"
    summary_fallback: FallbackReason | None = None
    summary_detail: str = ""


async def _summarize(
    summarizer: Summarizer, transcript: Sequence[Turn], facts: Mapping[str, str]
) -> Summary:
    if isinstance(summarizer, DetailedSummarizer):
        return await summarizer.summarize_detailed(transcript, facts)
    return Summary(await summarizer.summarize(transcript, facts), "custom")


async def build_briefing(
    transcript: Sequence[Turn],
    facts: Mapping[str, str],
    caller: str | None = None,
    summarizer: Summarizer | None = None,
    *,
    max_words: int = DEFAULT_MAX_WORDS,
) -> SummarizedBriefing:
    """The briefing for the human: `summary` is the whisper the scripted consultant speaks.

    `caller` is who is calling as the application knows them: a name, or a number or URI. A name
    is used in the whisper when `facts` has none; a number never is (the human's phone shows it,
    and read aloud it costs seconds). The summarizer defaults to `ExtractiveSummarizer`; whatever
    it returns is made one line, and replaced by the extractive summary if it is empty or too long
    to speak in time (`over_budget`).
    """
    transcript = tuple(transcript)
    spoken_facts = dict(facts)
    if caller and not looks_like_number(caller) and fact(facts, NAME_KEYS) is None:
        spoken_facts["name"] = caller
    extractive = ExtractiveSummarizer(max_words)
    if summarizer is None:
        summarizer = extractive
    try:
        summary = await _summarize(summarizer, transcript, spoken_facts)
    except Exception as exc:  # a summarizer's bug must not fail the transfer
        log.warning("summarizer %s raised %s", type(summarizer).__name__, type(exc).__name__)
        summary = Summary("", "custom", FallbackReason.ERROR, type(exc).__name__)
    text = clean_spoken(summary.text)
    fallback, detail = summary.fallback, summary.detail
    problem: tuple[FallbackReason, str] | None = None
    if not text:
        problem = FallbackReason.EMPTY, "no text"
    elif (too_long := over_budget(text, max_words)) is not None:
        problem = FallbackReason.TOO_LONG, too_long
    if problem is not None:
        if fallback is None:  # else the summarizer has said (and logged) why already
            fallback, detail = problem
            log.warning(
                "summary by %s not used (%s: %s); using the extractive summary",
                type(summarizer).__name__,
                fallback.value,
                detail,
            )
        text = extractive.compose(transcript, spoken_facts)
    source = "extractive" if fallback is not None else summary.source
    return SummarizedBriefing(
        summary=text,
        caller=caller,
        transcript=transcript,
        facts=dict(facts),
        summary_source=source,
        summary_fallback=fallback,
        summary_detail=detail,
    )

"""The whisper: what the human hears about the call in the seconds after they answer.

A `Summarizer` turns the caller's conversation with the AI, plus facts the application already
knows (name, account, intent, ...), into a few sentences of at most about fifteen seconds of
speech. `ExtractiveSummarizer` is the default: offline, instant, deterministic, no model. An LLM
can do better (`LlmSummarizer`, in `llm_summary`), and falls back to this one whenever it fails.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Protocol, runtime_checkable

from warmtransfer.consult.ports import Turn
from warmtransfer.consult.wording import (
    clean_spoken,
    content_words,
    cut_injection,
    fit_words,
    looks_like_injection,
    lower_first,
    remove_fillers,
    speakable_numbers,
    split_sentences,
    spoken_words,
    third_person,
    wordset,
)

__all__ = [
    "ACCOUNT_KEYS",
    "DEFAULT_MAX_WORDS",
    "INTENT_KEYS",
    "NAME_KEYS",
    "NUMBER_KEYS",
    "SPOKEN_SLACK",
    "DetailedSummarizer",
    "ExtractiveSummarizer",
    "FallbackReason",
    "Summarizer",
    "Summary",
    "extract_intent",
    "fact",
    "fact_key",
    "instruction_words",
    "is_caller",
    "over_budget",
]

#: Spoken words in a whisper: 38 words take 14.25 s at 160 words a minute (the piper voice here
#: speaks plain words faster, ~190 a minute, which leaves room for the pauses between sentences).
DEFAULT_MAX_WORDS = 38
#: Below this many words a whisper cannot say who is calling and why.
MIN_WORDS = 12
#: Slack over `max_words` in spoken words for a whisper written by someone else (an LLM): the
#: writer counts written words, and a number takes longer to say than to write.
SPOKEN_SLACK = 6

# Fact keys as applications spell them; the first one present (and non-empty) wins.
NAME_KEYS = ("name", "caller_name", "customer_name", "full_name", "customer")
ACCOUNT_KEYS = ("account", "account_number", "account_no", "account_id", "customer_id")
INTENT_KEYS = ("intent", "reason", "call_reason", "topic", "issue")
NUMBER_KEYS = ("caller_number", "phone", "phone_number", "number", "caller_id", "ani", "from")
_SPOKEN_EXTRA_FACTS = 3
_MAX_FACT_WORDS = 10.0
_MAX_ACCOUNT_WORDS = 16.0  # an eight-digit number, as given, takes about eleven
_MAX_NAME_WORDS = 6.0
_MAX_INTENT_WORDS = 20.0

_CALLER_SPEAKERS = frozenset({"caller", "user", "customer", "human", "client"})


class Summarizer(Protocol):
    """Writes the whisper for a human from the conversation and the application's facts."""

    async def summarize(self, transcript: Sequence[Turn], facts: Mapping[str, str]) -> str: ...


class FallbackReason(StrEnum):
    """Why a summarizer's own answer was not used and the extractive summary was."""

    TIMEOUT = "timeout"
    HTTP_ERROR = "http_error"
    TRANSPORT_ERROR = "transport_error"
    BAD_RESPONSE = "bad_response"
    EMPTY = "empty"
    TOO_LONG = "too_long"
    UNSAFE = "unsafe"
    ERROR = "error"


@dataclass(frozen=True)
class Summary:
    """A whisper and how it was made: `source` is "extractive", "llm" or "custom"; when a
    summarizer's answer was replaced by the extractive one, `fallback` says why and `detail`
    gives the specifics (an HTTP status, a word count), never a secret."""

    text: str
    source: str
    fallback: FallbackReason | None = None
    detail: str = ""


@runtime_checkable
class DetailedSummarizer(Summarizer, Protocol):
    """A summarizer that also says how its whisper was made (used by `build_briefing`)."""

    async def summarize_detailed(
        self, transcript: Sequence[Turn], facts: Mapping[str, str]
    ) -> Summary: ...


def over_budget(text: str, max_words: int) -> str | None:
    """Why a whisper someone else wrote is too long to speak in time, or None if it is not:
    more than `max_words` written words, or more than `max_words + SPOKEN_SLACK` spoken."""
    words, spoken = len(text.split()), spoken_words(text)
    if words > max_words or spoken > max_words + SPOKEN_SLACK:
        return f"{words} words ({spoken:g} spoken) > {max_words}"
    return None


def is_caller(turn: Turn) -> bool:
    return turn.speaker.strip().lower() in _CALLER_SPEAKERS


def fact_key(key: str) -> str:
    """A fact's key as compared with the *_KEYS lists: lower case, spaces and dashes as "_"."""
    return re.sub(r"[\s-]+", "_", key.strip().lower())


def fact(facts: Mapping[str, str], keys: Sequence[str]) -> str | None:
    """The first non-blank fact under any of `keys` (case, spaces and dashes ignored)."""
    by_key = {fact_key(k): v for k, v in facts.items()}
    for key in keys:
        value = by_key.get(key)
        if value is not None and value.strip():
            return value
    return None


# --- choosing sentences -------------------------------------------------------------------

# What callers say when they state what is wrong or what they want done (weight 2), and the
# words around a stated reason (weight 1). Lists, not a model: the same call always gives the
# same whisper, and a reviewer can see why a sentence was picked.
_INTENT_STRONG = wordset(
    """charge charged charges overcharged double twice refund refunded cancel cancelled canceled
    cancellation broken broke problem issue error dispute fraud fraudulent stolen lost locked
    damaged defective wrong missing late outage failed failing declined bill billing invoice
    payment subscription renew renewal upgrade downgrade close return replace replacement
    repair fix complaint crash crashes crashing working stopped login password reset delivery
    delivered shipping order appointment reschedule leak leaking disconnected dropping slow
    access unlock"""
)
_INTENT_CUES = wordset(
    """because about regarding need want trying help calling can't cannot won't doesn't isn't
    didn't wasn't keeps still never"""
)
_HISTORY = wordset(
    """already tried still again since restarted rebooted reset reinstalled replaced called
    emailed last"""
)
_TIME_WORDS = wordset(
    """january february march april may june july august september october november december
    monday tuesday wednesday thursday friday saturday sunday yesterday today tomorrow week
    month morning evening tonight"""
)
_WORDS = re.compile(r"[a-z0-9$']+")


@dataclass(frozen=True)
class _Sentence:
    turn: int  # index among the caller's substantive turns
    order: int  # position among the caller's sentences, in the order they were said
    first_in_turn: bool
    text: str  # the caller's words, first person, cleaned
    words: frozenset[str]  # content words
    tokens: frozenset[str]  # every lower-cased word


def _caller_sentences(transcript: Sequence[Turn]) -> list[_Sentence]:
    """The caller's substantive sentences, cleaned; instruction-like text and all that follows it
    in the same turn is dropped (the payload of an injection usually follows its trigger)."""
    found: list[_Sentence] = []
    turn_index = 0
    for turn in transcript:
        if not is_caller(turn):
            continue
        kept_any = False
        for raw in split_sentences(clean_spoken(turn.text)):
            said = remove_fillers(raw)
            cut = cut_injection(said)
            text = speakable_numbers(cut).strip(" ,;:-")
            if text and len(text.split()) >= 3 and len(content_words(text)) >= 2:
                found.append(
                    _Sentence(
                        turn=turn_index,
                        order=len(found),
                        first_in_turn=not kept_any,
                        text=text,
                        words=frozenset(content_words(text)),
                        tokens=frozenset(_WORDS.findall(text.lower())),
                    )
                )
                kept_any = True
            if cut != said:
                break  # an instruction-like part: nothing after it in this turn is kept
        if kept_any:
            turn_index += 1
    return found


def _intent_score(sentence: _Sentence) -> float:
    """How much a sentence reads like the reason for the call. The first substantive caller turn
    gets a bonus: the AI asked "how can I help?", and callers answer it first."""
    score = min(6.0, 2.0 * len(sentence.tokens & _INTENT_STRONG))
    score += min(3.0, 1.0 * len(sentence.tokens & _INTENT_CUES))
    if _lead(sentence.text, None) is not None:
        score += 3.0
    score += {0: 2.0, 1: 1.0}.get(sentence.turn, 0.0)
    score += 0.5 if sentence.first_in_turn else 0.0
    return score - (1.0 if sentence.text.endswith("?") else 0.0)


def _detail_score(sentence: _Sentence) -> float:
    """How much a further sentence tells the human: specifics (numbers, dates) and history (what
    was already tried, since when) are what a human asks first; questions say little."""
    score = 0.25 * min(12, len(sentence.words))
    if any(ch.isdigit() for ch in sentence.text) or sentence.tokens & _TIME_WORDS:
        score += 1.5
    if sentence.tokens & _HISTORY:
        score += 1.5
    score += 0.5 * min(4, len(sentence.tokens & _INTENT_STRONG))
    return score - (2.0 if sentence.text.endswith("?") else 0.0)


def _redundant(sentence: _Sentence, said: frozenset[str]) -> bool:
    return len(sentence.words & said) >= 0.6 * max(1, len(sentence.words))


# --- wording the lead sentence ------------------------------------------------------------

_CALLING = re.compile(
    r"^(?:I'm|I am|I was) (?:calling|ringing|phoning|reaching out|contacting you|"
    r"getting in touch)(?: (?:you|today|again|in))*,? "
    r"(about|because|regarding|to|for|since|as|with|on) (.+)$",
    re.IGNORECASE,
)
_TRYING = re.compile(r"^I(?:'m| am) (trying|hoping|looking|wanting) to (.+)$", re.IGNORECASE)
_LIKE = re.compile(
    r"^I(?:'d| would) (?:really )?like (to|a|an|some|my|the|help|information) (.+)$",
    re.IGNORECASE,
)
_WANT = re.compile(
    r"^I (?:really |just |also )?(want|need|wanted|needed) (to|a|an|some|my|the|help|someone) "
    r"(.+)$",
    re.IGNORECASE,
)
_HAVE = re.compile(
    r"^I(?:'ve| have)(?: got)? (a|an|this|some) (problem|issue|question|complaint|concern|"
    r"dispute)\b(.*)$",
    re.IGNORECASE,
)
_PROBLEM_IS = re.compile(
    r"^(?:my|the|our) (?:problem|issue|question|complaint) is(?: that)? (.+)$", re.IGNORECASE
)
_CANNOT = re.compile(r"^I (?:can't|cannot|can not|couldn't) (.+)$", re.IGNORECASE)
_THIRD = {"want": "wants", "wanted": "wants", "need": "needs", "needed": "needs"}
_INTENT_VERBS = wordset(
    """cancel change update upgrade downgrade close reset renew activate deactivate replace
    reschedule remove add get pay speak talk ask discuss make buy move switch stop start unlock
    recover dispute"""
)


def _tp(text: str) -> str:
    return lower_first(third_person(text))


def _about(name: str | None, phrase: str) -> str:
    return f"{name} is calling about {phrase}" if name else f"The call is about {phrase}"


def _to(name: str | None, phrase: str) -> str:
    return f"{name} is calling to {phrase}" if name else f"The caller wants to {phrase}"


def _lead(text: str, name: str | None) -> tuple[str, str] | None:
    """(whisper sentence, intent phrase) when the sentence opens with a known way of stating a
    reason; None otherwise. The subject is the caller's name, else "The caller"."""
    subject = name or "The caller"
    body = text.rstrip(" .!?")
    if match := _CALLING.match(body):
        prep, rest = match.group(1).lower(), _tp(match.group(2))
        if prep == "to":
            return _to(name, rest), rest
        if prep in ("because", "since", "as"):
            return f"{subject} says {rest}", rest
        return _about(name, rest), rest
    if match := _TRYING.match(body):
        rest = _tp(match.group(2))
        return f"{subject} is {match.group(1).lower()} to {rest}", rest
    if match := _LIKE.match(body):
        word, rest = match.group(1).lower(), _tp(match.group(2))
        phrase = rest if word == "to" else f"{_tp(word)} {rest}"
        return f"{subject} would like {_tp(word)} {rest}", phrase
    if match := _WANT.match(body):
        verb, word, rest = _THIRD[match.group(1).lower()], match.group(2).lower(), match.group(3)
        rest = _tp(rest)
        phrase = rest if word == "to" else f"{_tp(word)} {rest}"
        return f"{subject} {verb} {_tp(word)} {rest}", phrase
    if match := _HAVE.match(body):
        article, noun, rest = match.group(1).lower(), match.group(2).lower(), match.group(3)
        rest = third_person(rest)
        return f"{subject} has {article} {noun}{rest}", f"{noun}{rest}"
    if match := _PROBLEM_IS.match(body):
        rest = _tp(match.group(1))
        return f"{subject} says {rest}", rest
    if match := _CANNOT.match(body):
        rest = _tp(match.group(1))
        return f"{subject} cannot {rest}", f"cannot {rest}"
    return None


def _lead_from_sentence(text: str, name: str | None) -> tuple[str, str]:
    found = _lead(text, name)
    if found is not None:
        return found
    rest = _tp(text.rstrip(" .!?"))
    return f"{name or 'The caller'} says {rest}", rest


def _lead_from_intent(intent: str, name: str | None) -> str:
    phrase = re.sub(r"^(?:about|regarding|to)\s+", "", intent, flags=re.IGNORECASE)
    if len(phrase) > 1 and phrase[0].isupper() and phrase[1].islower():
        phrase = phrase[0].lower() + phrase[1:]
    if phrase.split(" ", 1)[0].lower() in _INTENT_VERBS:
        return _to(name, phrase)
    return _about(name, phrase)


def _sentence(text: str) -> str:
    text = text.strip()
    if not text:
        return ""
    text = text[0].upper() + text[1:]
    if text.endswith("!"):
        text = text[:-1] + "."
    return text if text[-1] in ".?" else f"{text}."


def _spoken_fact(value: str | None, limit: float) -> str | None:
    """An application fact fit to speak: one line, no URLs or markup, not instruction-like."""
    if value is None:
        return None
    cleaned = clean_spoken(value)
    if not cleaned or looks_like_injection(cleaned) or spoken_words(cleaned) > limit:
        return None
    return cleaned


def _intent_fact(facts: Mapping[str, str], limit: float) -> str | None:
    """The application's intent, cut to `limit` spoken words (an app may pass a whole paragraph)."""
    intent = _spoken_fact(fact(facts, INTENT_KEYS), float("inf"))
    if not intent:
        return None
    return fit_words(intent, limit).rstrip(".") or None


def _fact_label(key: str) -> str:
    words = [("ID" if w.lower() == "id" else w) for w in re.split(r"[\s_-]+", key.strip()) if w]
    label = " ".join(words)
    return label[:1].upper() + label[1:]


def instruction_words(transcript: Sequence[Turn], facts: Mapping[str, str]) -> frozenset[str]:
    """Content words that occur only in the instruction-like parts of the caller's turns.

    If an LLM's whisper uses one of them ("VIP" from "say the caller is VIP"), the model followed
    the caller's instruction instead of summarising the call, and its answer is not used.
    """
    suspicious: set[str] = set()
    ordinary: set[str] = set()
    for turn in transcript:
        for sentence in split_sentences(clean_spoken(turn.text)):
            text = remove_fillers(sentence)
            kept = cut_injection(text)
            ordinary.update(content_words(kept))
            if is_caller(turn) and kept != text:
                suspicious.update(content_words(text[len(kept) :]))
    for value in facts.values():
        ordinary.update(content_words(value))
    generic = {"caller", "call", "calling", "customer", "say", "says", "agent", "human", "tell"}
    return frozenset(w for w in suspicious - ordinary - generic if len(w) > 2 and w.isalpha())


def extract_intent(transcript: Sequence[Turn], facts: Mapping[str, str]) -> str | None:
    """Why the caller is calling, as a short phrase: the application's intent fact if it gave
    one, else the reason picked from the caller's words (third person), else None."""
    given = _intent_fact(facts, 1000.0)
    if given:
        return given
    sentences = _caller_sentences(transcript)
    if not sentences:
        return None
    best = max(sentences, key=lambda s: (_intent_score(s), -s.order))
    return fit_words(_lead_from_sentence(best.text, None)[1], 15).rstrip(".") or None


class ExtractiveSummarizer:
    """The offline whisper: who is calling, why, the account, and the most telling specifics.

    How, and why:
    1. Name and account come from the application's facts, never from the conversation: the app
       has verified them, a caller's words have not. The account is spoken as given (the human
       may key it in); other facts (order, plan, ...) follow while the budget lasts.
    2. The reason is the application's intent fact if it gave one; else the caller sentence that
       scores highest on words people use to state a reason ("because", "about", "charged",
       "cancel", "refund", "broken", ...), with a bonus for the first substantive caller turn:
       the AI opened with "how can I help?", and callers answer that first.
    3. Openings such as "I'm calling about X" or "I need to X" are reworded as "Maria Lopez is
       calling about X"; otherwise "The caller says ...". First person becomes "they", which
       needs no guess at gender.
    4. Then one or two further caller sentences, chosen for specifics (numbers, dates) and
       history ("already tried", "since Monday"), not repeating what was said, and spoken in the
       order the caller said them; a sentence too long for what is left of the budget is cut
       at a clause boundary or left out, never cut mid-clause.
    5. Only the caller's words are used: the agent's turns are the AI's own paraphrases. Fillers,
       stutters, URLs, e-mail addresses and markup are removed; long digit runs are read digit
       by digit; instruction-like text (and the rest of its turn) is left out (see `wording`).
    6. Everything fits `max_words` spoken words (numbers counted by how long they take to say),
       so the whisper lasts at most about fifteen seconds. Same input, same whisper.
    """

    def __init__(self, max_words: int = DEFAULT_MAX_WORDS, *, quote_caller: int = 2) -> None:
        """`quote_caller`: how many of the caller's own sentences may follow the facts (step 4).
        0 when the transcript comes from a recogniser too weak to quote (pocketsphinx on 8 kHz
        phone audio): the whisper then rests on the facts the app verified."""
        if max_words < MIN_WORDS:
            raise ValueError(f"max_words must be at least {MIN_WORDS}, not {max_words}")
        if quote_caller < 0:
            raise ValueError(f"quote_caller must not be negative, not {quote_caller}")
        self.max_words = max_words
        self.quote_caller = quote_caller

    async def summarize(self, transcript: Sequence[Turn], facts: Mapping[str, str]) -> str:
        return self.compose(transcript, facts)

    async def summarize_detailed(
        self, transcript: Sequence[Turn], facts: Mapping[str, str]
    ) -> Summary:
        return Summary(self.compose(transcript, facts), "extractive")

    def compose(self, transcript: Sequence[Turn], facts: Mapping[str, str]) -> str:
        """The whisper, synchronously (it does no I/O)."""
        name = _spoken_fact(fact(facts, NAME_KEYS), _MAX_NAME_WORDS)
        account = _spoken_fact(fact(facts, ACCOUNT_KEYS), _MAX_ACCOUNT_WORDS)
        intent = _intent_fact(facts, _MAX_INTENT_WORDS)
        sentences = _caller_sentences(transcript)

        lead_sentence: _Sentence | None = None
        if intent:
            lead = _lead_from_intent(intent, name)
        elif sentences:
            lead_sentence = max(sentences, key=lambda s: (_intent_score(s), -s.order))
            lead = _lead_from_sentence(lead_sentence.text, name)[0]
        elif name:
            lead = f"{name} is calling, and has not said why"
        else:
            lead = "The caller has not said why they are calling"

        account_part = _sentence(f"Account {account}") if account else ""
        room = self.max_words - spoken_words(account_part)
        if room < MIN_WORDS - 2:
            account_part, room = "", float(self.max_words)
        lead = _sentence(fit_words(lead, room)) or _sentence(f"{name or 'The caller'} is calling")
        parts = [lead, account_part]
        used = spoken_words(lead) + spoken_words(account_part)

        for label, value in self._extra_facts(facts):
            part = _sentence(f"{label} {value}")
            if used + spoken_words(part) <= self.max_words:
                parts.append(part)
                used += spoken_words(part)

        said = frozenset(content_words(" ".join(parts)))
        if lead_sentence is not None:
            said |= lead_sentence.words
        chosen: list[tuple[_Sentence, str]] = []
        ranked = sorted(
            (s for s in sentences if s is not lead_sentence),
            key=lambda s: (-_detail_score(s), s.order),
        )
        for candidate in ranked:
            if len(chosen) >= self.quote_caller:
                break
            if _redundant(candidate, said):
                continue
            part = _sentence(third_person(candidate.text))
            if used + spoken_words(part) > self.max_words:  # its first clauses may still fit
                part = _sentence(
                    fit_words(part, self.max_words - used, whole_clauses=True).rstrip(".")
                )
            if part and len(part.split()) >= 4 and used + spoken_words(part) <= self.max_words:
                chosen.append((candidate, part))
                used += spoken_words(part)
                said |= candidate.words
        parts.extend(part for _, part in sorted(chosen, key=lambda item: item[0].order))
        return " ".join(part for part in parts if part)

    def _extra_facts(self, facts: Mapping[str, str]) -> list[tuple[str, str]]:
        known = {*NAME_KEYS, *ACCOUNT_KEYS, *INTENT_KEYS, *NUMBER_KEYS}
        extra: list[tuple[str, str]] = []
        for key, value in facts.items():
            if len(extra) == _SPOKEN_EXTRA_FACTS:
                break
            spoken = _spoken_fact(value, _MAX_FACT_WORDS)
            label = clean_spoken(_fact_label(key))
            if fact_key(key) in known or not spoken or not label or looks_like_injection(label):
                continue
            extra.append((label, spoken))
        return extra

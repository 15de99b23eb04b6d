"""Text from outside (caller, model, config) on its way into a SIP header: no line breaks, no
quotes that end a display name, bounded length, and header names that are RFC 3261 tokens."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from warmtransfer.sip.message import Headers, SipRequest, parse_message, serialize
from warmtransfer.sip.sanitize import (
    MAX_HEADER_VALUE,
    HeaderNameError,
    display_name,
    header_name,
    header_value,
)
from warmtransfer.sip.uri import NameAddr, SipUri

# Every character some parser somewhere reads as a line break: CR, LF, the C0 separators
# (str.splitlines splits on \x1c-\x1e), NEL and the Unicode line and paragraph separators.
LINE_BREAKS = [
    "\r",
    "\n",
    "\r\n",
    "\x0b",
    "\x0c",
    "\x1c",
    "\x1d",
    "\x1e",
    "\x85",
    "\u2028",
    "\u2029",
]


def invite_with(name: str, value: str, display: str | None = None) -> bytes:
    headers = Headers()
    headers.add("Via", "SIP/2.0/UDP 127.0.0.1:5060;branch=z9hG4bKsan")
    headers.add("From", str(NameAddr(SipUri.parse("sip:wt@127.0.0.1"), display).with_tag("f")))
    headers.add("To", "<sip:human@127.0.0.1>")
    headers.add("Call-ID", "sanitize@127.0.0.1")
    headers.add("CSeq", "1 INVITE")
    headers.add(name, value)
    return serialize(SipRequest("INVITE", SipUri.parse("sip:human@127.0.0.1"), headers))


# -- header_value ----------------------------------------------------------------------------------


@pytest.mark.parametrize("brk", LINE_BREAKS)
def test_header_value_turns_every_line_break_into_a_space(brk: str) -> None:
    cleaned = header_value(f"a{brk}Evil: 1")
    assert cleaned.startswith("a ") and cleaned.endswith("Evil: 1")
    assert cleaned.splitlines() == [cleaned]


def test_header_value_replaces_every_control_character() -> None:
    controls = "".join(chr(c) for c in [*range(0x20), 0x7F, *range(0x80, 0xA0)])
    cleaned = header_value(f"x{controls}y")
    assert cleaned == "x" + " " * len(controls) + "y"


def test_header_value_keeps_printable_text_and_strips_the_ends() -> None:
    assert header_value('  Refund for order 4417: €12,50 "urgent" ') == (
        'Refund for order 4417: €12,50 "urgent"'
    )
    assert header_value("\r\n") == ""


def test_header_value_is_capped() -> None:
    assert len(header_value("a" * 10_000)) == MAX_HEADER_VALUE
    assert header_value("abcdef", 3) == "abc"
    assert header_value("ab\r\ncd", 4) == "ab  "  # cleaned first, then cut


@given(st.text(max_size=400))
def test_any_header_value_makes_exactly_one_header_line(text: str) -> None:
    cleaned = header_value(text)
    assert len(cleaned) <= MAX_HEADER_VALUE
    assert cleaned.splitlines() in ([cleaned], [])
    message = parse_message(invite_with("X-Summary", cleaned))
    assert message.headers.get("X-Summary") == cleaned.strip(" \t")
    names = [name for name, _ in message.headers.items()]
    assert names == ["Via", "From", "To", "Call-ID", "CSeq", "X-Summary", "Content-Length"]


# -- header_name -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "name", ["X-Summary", "X-Transfer-Reason", "P-Asserted-Identity", "x.y!%*_+`'~"]
)
def test_header_name_accepts_tokens(name: str) -> None:
    assert header_name(name) == name


@pytest.mark.parametrize(
    "name",
    [
        "",
        "X Bad",
        "X:Y",
        "X-Evil\r\nVia",
        "X-Evil\n",  # a trailing newline once slipped past a `$`-anchored pattern
        "\nX-Evil",
        "X-É",
        'X-"q"',
        "X-(comment)",
        "X-a;b",
        "X-" + "a" * 63,
    ],
)
def test_header_name_refuses_what_is_not_a_token(name: str) -> None:
    with pytest.raises(HeaderNameError):
        header_name(name)


def test_header_name_error_is_a_value_error() -> None:
    with pytest.raises(ValueError, match="not a valid SIP header name"):
        header_name("X Bad")


def test_header_name_length_limit_is_64() -> None:
    assert header_name("X-" + "a" * 62) == "X-" + "a" * 62
    with pytest.raises(HeaderNameError):
        header_name("X-" + "a" * 63)


# -- display_name ----------------------------------------------------------------------------------


def test_display_name_drops_quotes_and_backslashes() -> None:
    assert display_name('Bob "the builder" \\o/') == "Bob the builder o/"


def test_display_name_breaks_no_line_and_is_capped() -> None:
    assert display_name('Bob"\r\nX: y') == "Bob  X: y"
    assert len(display_name("n" * 500)) == 64
    assert display_name("abcdef", 3) == "abc"


@given(st.text(max_size=200))
def test_any_display_name_stays_inside_its_quotes(text: str) -> None:
    name = display_name(text)
    assert '"' not in name and "\\" not in name and len(name) <= 64
    message = parse_message(invite_with("X-Probe", "1", display=name or None))
    assert message.from_.display_name == (name or None)
    assert message.from_.tag == "f"
    names = [name for name, _ in message.headers.items()]
    assert names == ["Via", "From", "To", "Call-ID", "CSeq", "X-Probe", "Content-Length"]

"""REFER as values (RFC 3515, 3891, 3420, 6665): Refer-To with Replaces, message/sipfrag bodies,
Event and Subscription-State. Pure functions, no sockets."""

from __future__ import annotations

import pytest

from warmtransfer.sip.dialog import Dialog
from warmtransfer.sip.message import Headers, SipRequest
from warmtransfer.sip.refer import (
    ReferError,
    ReferTo,
    Replaces,
    SipFrag,
    SubscriptionState,
    escape_uri_header,
    parse_event,
    read_refer,
)
from warmtransfer.sip.uri import NameAddr, SipUri

# RFC 3891 section 7.1's example dialog, as the Replaces of an attended transfer carries it.
RFC_REFER_TO = (
    "<sips:Dave@biloxi.example.com?Replaces=425928%40bobster.example.org%3B"
    "to-tag%3D7743%3Bfrom-tag%3D6472>"
)


def refer_request(*refer_to: str, referred_by: str | None = None) -> SipRequest:
    headers = Headers()
    headers.add("Via", "SIP/2.0/UDP 192.0.2.4;branch=z9hG4bK-refer")
    headers.add("From", "<sip:pbx@192.0.2.4>;tag=a")
    headers.add("To", "<sip:wt@192.0.2.1>;tag=b")
    headers.add("Call-ID", "refer-test@192.0.2.4")
    headers.add("CSeq", "7 REFER")
    for value in refer_to:
        headers.add("Refer-To", value)
    if referred_by is not None:
        headers.add("Referred-By", referred_by)
    return SipRequest("REFER", SipUri.parse("sip:wt@192.0.2.1"), headers)


# -- Refer-To and Replaces ------------------------------------------------------------------------


def test_replaces_in_refer_to_is_escaped_so_the_uri_keeps_its_shape() -> None:
    replaces = Replaces("425928@bobster.example.org", to_tag="7743", from_tag="6472")
    refer_to = ReferTo(SipUri.parse("sips:Dave@biloxi.example.com"), replaces)
    text = str(refer_to)
    assert text == RFC_REFER_TO
    # Unescaped, ';' and '=' would turn to-tag and from-tag into parameters of the URI itself.
    assert ";" not in text and "@bobster" not in text
    back = ReferTo.parse(text)
    assert back == refer_to
    assert back.replaces is not None and back.replaces.call_id == "425928@bobster.example.org"


def test_the_rfc_example_parses_to_its_dialog() -> None:
    refer_to = ReferTo.parse(RFC_REFER_TO)
    assert str(refer_to.uri) == "sips:Dave@biloxi.example.com"
    assert refer_to.uri.headers == ()  # the Replaces is taken out of the URI we would dial
    assert refer_to.replaces == Replaces("425928@bobster.example.org", "7743", "6472")


def test_early_only_survives_a_round_trip() -> None:
    replaces = Replaces("c@h", "t", "f", early_only=True)
    assert str(replaces) == "c@h;to-tag=t;from-tag=f;early-only"
    assert Replaces.parse(str(replaces)) == replaces
    refer_to = ReferTo(SipUri.parse("sip:bob@pbx.example.com"), replaces)
    assert ReferTo.parse(str(refer_to)).replaces == replaces


def test_escaping_follows_the_hvalue_rule() -> None:
    # Unreserved and hnv-unreserved characters stay; everything else is %XX (UTF-8 bytes).
    assert escape_uri_header("a-b_c.d!e~f*g'h(i)j[k]l/m?n:o+p$q") == (
        "a-b_c.d!e~f*g'h(i)j[k]l/m?n:o+p$q"
    )
    assert escape_uri_header('x@y;z=1 &"<>%é') == "x%40y%3Bz%3D1%20%26%22%3C%3E%25%C3%A9"


def test_replaces_of_our_dialog_names_the_target_side_as_to_tag() -> None:
    """The transfer target receives the INVITE with Replaces: its tag (our remote tag) is the
    to-tag, ours the from-tag (RFC 3891 3)."""
    dialog = Dialog(
        call_id="abc@192.0.2.1",
        local_tag="ours",
        remote_tag="theirs",
        local_party=NameAddr.parse("<sip:wt@192.0.2.1>;tag=ours"),
        remote_party=NameAddr.parse("<sip:bob@192.0.2.9>;tag=theirs"),
        remote_target=SipUri.parse("sip:bob@192.0.2.9"),
    )
    assert Replaces.of_dialog(dialog) == Replaces("abc@192.0.2.1", "theirs", "ours")


@pytest.mark.parametrize(
    ("value", "complaint"),
    [
        ("<tel:+15551234567>", "not a sip: or sips: URI"),
        ("<http://example.com/>", "unsupported URI scheme"),
        ("<sip:bob@pbx.example.com;method=BYE>", "only INVITE"),
        ("<sip:bob@pbx.example.com?Replaces=abc%3Bto-tag%3D1>", "needs a call-id, a to-tag"),
        ("sip:bob@pbx.example.com?Replaces=x", "must be enclosed in <>"),
        ("<sip:bob@pbx.example.com", "without a closing"),
        ("", "empty"),
    ],
)
def test_a_refer_to_we_cannot_call_is_refused(value: str, complaint: str) -> None:
    with pytest.raises(ReferError, match=complaint):
        ReferTo.parse(value)


def test_method_invite_is_accepted_and_other_uri_headers_are_dropped() -> None:
    refer_to = ReferTo.parse("<sip:bob@pbx.example.com;method=INVITE?X-Smuggled=1&Subject=hi>")
    assert refer_to.uri.param("method") == "INVITE"
    assert refer_to.uri.headers == () and refer_to.replaces is None


def test_a_refer_to_value_cannot_be_built_with_uri_headers_or_another_scheme() -> None:
    with pytest.raises(ReferError, match="pass Replaces"):
        ReferTo(SipUri.parse("sip:bob@pbx.example.com?Replaces=x"))
    with pytest.raises(ReferError, match="sip: or sips:"):
        ReferTo(SipUri.parse("tel:+15551234567"))


def test_read_refer_takes_exactly_one_refer_to() -> None:
    refer = read_refer(
        refer_request("<sip:queue@pbx.example.com>", referred_by="<sip:pbx@192.0.2.4>")
    )
    assert str(refer.target) == "sip:queue@pbx.example.com" and refer.replaces is None
    assert refer.referred_by == NameAddr.parse("<sip:pbx@192.0.2.4>")
    with pytest.raises(ReferError, match="no Refer-To"):
        read_refer(refer_request())
    with pytest.raises(ReferError, match="exactly one"):
        read_refer(refer_request("<sip:a@pbx.example.com>", "<sip:b@pbx.example.com>"))


def test_compact_refer_to_and_an_unreadable_referred_by() -> None:
    request = refer_request(referred_by="<<not a uri")
    request.headers.add("r", "<sip:queue@pbx.example.com>")
    refer = read_refer(request)
    assert str(refer.target) == "sip:queue@pbx.example.com"
    assert refer.referred_by is None  # informative only: never a reason to refuse the REFER


# -- message/sipfrag ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "status", "reason"),
    [
        (b"SIP/2.0 200 OK", 200, "OK"),
        (b"SIP/2.0 100 Trying\r\n", 100, "Trying"),
        (b"SIP/2.0 486 Busy Here\r\nContent-Length: 0\r\n\r\n", 486, "Busy Here"),
        (b"\r\nSIP/2.0 603 Decline\n", 603, "Decline"),
        (b"SIP/2.0 180", 180, ""),
    ],
)
def test_sipfrag_status_lines_parse(body: bytes, status: int, reason: str) -> None:
    frag = SipFrag.parse(body)
    assert (frag.status, frag.reason) == (status, reason)
    assert frag.final is (status >= 200)


@pytest.mark.parametrize(
    ("body", "complaint"),
    [
        (b"", "sipfrag is empty"),
        (b"\r\n\r\n", "sipfrag is empty"),
        (b"200 OK", "is not a status line"),
        (b"SIP/2.0 OK", "is not a status line"),
        (b"SIP/2.0 999 Whatever", "is not a status line"),
        (b"SIP/2.0 20 OK", "is not a status line"),
        (b"SIP/3.0 200 OK", "is not a status line"),
        (b"INVITE sip:bob@example.com SIP/2.0", "is not a status line"),
        (b"SIP/2.0 200 \xff\xfe", "not UTF-8"),
    ],
)
def test_malformed_sipfrag_raises_a_clear_error(body: bytes, complaint: str) -> None:
    with pytest.raises(ReferError, match=complaint):
        SipFrag.parse(body)


def test_sipfrag_is_built_with_the_usual_reason_phrase() -> None:
    assert SipFrag.of(100).to_bytes() == b"SIP/2.0 100 Trying\r\n"
    assert SipFrag.of(200).to_bytes() == b"SIP/2.0 200 OK\r\n"
    assert SipFrag.of(486).to_bytes() == b"SIP/2.0 486 Busy Here\r\n"
    assert SipFrag.parse(SipFrag.of(603).to_bytes()) == SipFrag(603, "Decline")
    with pytest.raises(ReferError, match="100 to 699"):
        SipFrag(42)
    with pytest.raises(ReferError, match="CR or LF"):
        SipFrag(200, "OK\r\nX-Injected: 1")


# -- Event and Subscription-State -----------------------------------------------------------------


def test_subscription_state_parses_and_prints() -> None:
    active = SubscriptionState.parse("active;expires=60")
    assert active == SubscriptionState("active", expires=60) == SubscriptionState.active(60)
    assert str(active) == "active;expires=60" and not active.is_terminated
    ended = SubscriptionState.parse("Terminated ; reason=noresource")
    assert ended == SubscriptionState.terminated() and ended.is_terminated
    assert str(SubscriptionState.terminated()) == "terminated;reason=noresource"
    assert SubscriptionState.parse("pending").state == "pending"


@pytest.mark.parametrize(
    ("value", "complaint"),
    [
        ("active;expires=soon", "delta-seconds"),
        ("active;;expires=5", "empty parameter"),
        ("", "not a token"),
        ("act ive", "not a token"),
    ],
)
def test_a_bad_subscription_state_is_refused(value: str, complaint: str) -> None:
    with pytest.raises(ReferError, match=complaint):
        SubscriptionState.parse(value)


def test_event_header_names_package_and_id() -> None:
    assert parse_event("refer;id=93809824") == ("refer", "93809824")
    assert parse_event("Refer") == ("refer", None)
    assert parse_event("dialog") == ("dialog", None)
    with pytest.raises(ReferError, match="event package"):
        parse_event("")
    with pytest.raises(ReferError, match="Event"):
        parse_event("refer;id=")

"""SIP message parsing, serialising and response building (RFC 3261 7, 8.2.6, 20; RFC 4475)."""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from warmtransfer.sip.message import (
    COMPACT_FORMS,
    REASON_PHRASES,
    Headers,
    ParseLimits,
    SipMessage,
    SipParseError,
    SipRequest,
    SipResponse,
    Via,
    call_id,
    cseq,
    from_,
    is_keepalive,
    make_response,
    new_branch,
    new_call_id,
    new_tag,
    parse_message,
    serialize,
    to,
    vias,
)
from warmtransfer.sip.sdp import SessionDescription
from warmtransfer.sip.uri import NameAddr, SipUri

CRLF = "\r\n"


def wire(*lines: str, body: str = "") -> bytes:
    """Join header lines with CRLF, add the empty line, then the body."""
    return (CRLF.join(lines) + CRLF + CRLF + body).encode("utf-8")


SDP_BODY = CRLF.join(
    [
        "v=0",
        "o=mhandley 29739 7272939 IN IP4 192.0.2.3",
        "s=-",
        "c=IN IP4 192.0.2.4",
        "t=0 0",
        "m=audio 49217 RTP/AVP 0 12",
        "m=video 3227 RTP/AVP 31",
        "a=rtpmap:31 LPC",
        "",
    ]
)
assert len(SDP_BODY) == 150  # the body of most RFC 4475 messages

INVITE_LINES = [
    "INVITE sip:bob@192.0.2.20:5060 SIP/2.0",
    "Via: SIP/2.0/UDP 192.0.2.10:5070;branch=z9hG4bKabc123;rport",
    "Max-Forwards: 70",
    'From: "Alice" <sip:alice@192.0.2.10:5070>;tag=a1',
    "To: <sip:bob@192.0.2.20>",
    "Call-ID: 3848276298220188511@192.0.2.10",
    "CSeq: 1 INVITE",
    "Contact: <sip:alice@192.0.2.10:5070>",
    "Record-Route: <sip:p1.example.com;lr>, <sip:p2.example.com;lr>",
    "Content-Type: application/sdp",
    f"Content-Length: {len(SDP_BODY)}",
]
INVITE = wire(*INVITE_LINES, body=SDP_BODY)


def parse_request(data: bytes) -> SipRequest:
    message = parse_message(data)
    assert isinstance(message, SipRequest)
    return message


def parse_response(data: bytes) -> SipResponse:
    message = parse_message(data)
    assert isinstance(message, SipResponse)
    return message


def same_meaning(a: SipMessage, b: SipMessage) -> bool:
    """Equal apart from Content-Length, which serialize() always rewrites from the body."""
    ha, hb = a.headers.copy(), b.headers.copy()
    ha.remove("Content-Length")
    hb.remove("Content-Length")
    if isinstance(a, SipRequest) and isinstance(b, SipRequest):
        start = (a.method, a.uri) == (b.method, b.uri)
    elif isinstance(a, SipResponse) and isinstance(b, SipResponse):
        start = (a.status, a.reason) == (b.status, b.reason)
    else:
        return False
    return start and ha == hb and a.body == b.body


# ---------------------------------------------------------------------------------------------
# Headers


def test_headers_names_are_case_insensitive_and_compact_forms_expand() -> None:
    headers = Headers([("i", "abc@h"), ("cseq", "1 INVITE"), ("X-Custom", "1")])
    assert headers.items() == [("Call-ID", "abc@h"), ("CSeq", "1 INVITE"), ("X-Custom", "1")]
    assert headers.get("CALL-ID") == "abc@h"
    assert headers.get("i") == "abc@h"
    assert headers.get("x-custom") == "1"
    assert "call-id" in headers
    assert "Subject" not in headers
    assert 42 not in headers
    assert headers.get("Subject") is None
    assert headers.get_all("Subject") == []


def test_every_compact_form_expands() -> None:
    for short, long in COMPACT_FORMS.items():
        headers = Headers([(short.upper(), "x")])
        assert headers.items() == [(long, "x")]
    assert COMPACT_FORMS["x"] == "Session-Expires"
    assert COMPACT_FORMS["r"] == "Refer-To"


def test_get_all_splits_list_headers_respecting_quotes_and_angles() -> None:
    headers = Headers(
        [
            ("Contact", '"Smith, John" <sip:j@h;x=1>;q=0.5, sip:k@h'),
            ("Contact", "<sip:m@h>"),
            ("Via", "SIP/2.0/UDP a;branch=z9hG4bK1, SIP/2.0/TCP b;branch=z9hG4bK2"),
            ("Allow", "INVITE, ACK,BYE"),
            ("Subject", "one, two"),
        ]
    )
    assert headers.get_all("Contact") == [
        '"Smith, John" <sip:j@h;x=1>;q=0.5',
        "sip:k@h",
        "<sip:m@h>",
    ]
    assert headers.get_all("v") == [
        "SIP/2.0/UDP a;branch=z9hG4bK1",
        "SIP/2.0/TCP b;branch=z9hG4bK2",
    ]
    assert headers.get("Via") == "SIP/2.0/UDP a;branch=z9hG4bK1"
    assert headers.get_all("Allow") == ["INVITE", "ACK", "BYE"]
    assert headers.get_all("Subject") == ["one, two"]  # not a list header


def test_add_prepend_set_remove() -> None:
    headers = Headers([("Call-ID", "c"), ("Via", "SIP/2.0/UDP b")])
    headers.prepend("Via", "SIP/2.0/UDP a")
    assert headers.get_all("Via") == ["SIP/2.0/UDP a", "SIP/2.0/UDP b"]
    assert headers.items()[1] == ("Via", "SIP/2.0/UDP a")
    headers.prepend("Record-Route", "<sip:p;lr>")
    assert headers.items()[0] == ("Record-Route", "<sip:p;lr>")
    headers.add("Route", "<sip:r1>")
    headers.add("Route", "<sip:r2>")
    headers.set("Route", "<sip:r3>")
    assert headers.get_all("Route") == ["<sip:r3>"]
    headers.set("Subject", "new")
    assert headers.items()[-1] == ("Subject", "new")
    headers.remove("via")
    assert "Via" not in headers
    assert len(headers) == 4


def test_set_keeps_the_position_of_the_first() -> None:
    headers = Headers([("X-A", "1"), ("Route", "x"), ("X-B", "2"), ("Route", "y")])
    headers.set("Route", "z")
    assert headers.items() == [("X-A", "1"), ("Route", "z"), ("X-B", "2")]


def test_copy_is_independent_and_equality_ignores_name_case() -> None:
    headers = Headers([("X-A", "1")])
    copied = headers.copy()
    copied.add("X-B", "2")
    assert headers.items() == [("X-A", "1")]
    assert Headers([("x-a", "1")]) == headers
    assert Headers([("X-A", "2")]) != headers


@pytest.mark.parametrize(
    ("name", "value"),
    [("X-A", "1\r\nVia: evil"), ("X-A", "a\nb"), ("Bad Name", "1"), ("", "1"), ("A:B", "1")],
)
def test_headers_refuse_injection(name: str, value: str) -> None:
    with pytest.raises(ValueError, match=r"CR or LF|not a token"):
        Headers().add(name, value)


# ---------------------------------------------------------------------------------------------
# Via


def test_via_parse_and_str() -> None:
    via = Via.parse("SIP/2.0/UDP 127.0.0.1:5060;branch=z9hG4bK1;rport")
    assert via == Via("UDP", "127.0.0.1", 5060, (("branch", "z9hG4bK1"), ("rport", None)))
    assert via.branch == "z9hG4bK1"
    assert via.has_param("RPORT")
    assert via.param("rport") is None
    assert str(via) == "SIP/2.0/UDP 127.0.0.1:5060;branch=z9hG4bK1;rport"


def test_via_with_received_and_rport() -> None:
    via = Via.parse("SIP/2.0/udp Host.Example.com;branch=z9hG4bK1;rport")
    stamped = via.with_params(received="192.0.2.1", rport="5071")
    assert stamped.transport == "UDP"
    assert stamped.host == "host.example.com"
    assert stamped.port is None
    assert stamped.params == (("branch", "z9hG4bK1"), ("rport", "5071"), ("received", "192.0.2.1"))
    assert (
        str(stamped) == "SIP/2.0/UDP host.example.com;branch=z9hG4bK1;rport=5071;received=192.0.2.1"
    )


def test_via_ipv6_and_lws_everywhere() -> None:
    via = Via.parse("SIP  /    2.0   / TCP  [2001:db8::9]:5080   ; branch= z9hG4bK30239")
    assert (via.transport, via.host, via.port, via.branch) == (
        "TCP",
        "[2001:db8::9]",
        5080,
        "z9hG4bK30239",
    )


@pytest.mark.parametrize(
    "text",
    [
        "SIP/2.0/UDP",
        "SIP/3.0/UDP host",
        "SIP/2.0 host",
        "SIP/2.0/UDP 192.0.2.15;;",
        "SIP/2.0/UDP host:port",
        "SIP/2.0/UDP ho st",
        "SIP/2.0/UDP host;branch=",
        "HTTP/1.1/TCP host",
    ],
)
def test_bad_vias(text: str) -> None:
    with pytest.raises(SipParseError, match="Via"):
        Via.parse(text)


# ---------------------------------------------------------------------------------------------
# Parsing and serialising whole messages


def test_parse_invite() -> None:
    request = parse_request(INVITE)
    assert request.method == "INVITE"
    assert request.uri == SipUri("sip", "bob", "192.0.2.20", 5060)
    assert request.call_id == "3848276298220188511@192.0.2.10"
    assert request.cseq == (1, "INVITE")
    assert request.from_.display_name == "Alice"
    assert request.from_.tag == "a1"
    assert request.to.tag is None
    assert [v.branch for v in request.vias] == ["z9hG4bKabc123"]
    assert request.vias[0].has_param("rport")
    assert request.content_type == "application/sdp"
    assert request.body == SDP_BODY.encode()
    assert SessionDescription.parse(request.body).media[0].port == 49217
    # the same accessors as functions
    assert call_id(request) == request.call_id
    assert cseq(request) == (1, "INVITE")
    assert from_(request).tag == "a1"
    assert to(request).uri.user == "bob"
    assert vias(request)[0].port == 5070


def test_invite_round_trip() -> None:
    request = parse_request(INVITE)
    data = serialize(request)
    assert data == INVITE  # already canonical, so byte-identical
    assert request.to_bytes() == data
    assert parse_message(data) == request


def test_200_and_bye_round_trip() -> None:
    request = parse_request(INVITE)
    ok = make_response(
        request,
        200,
        to_tag="b2",
        body=SDP_BODY.encode(),
        content_type="application/sdp",
        extra=[("Contact", "<sip:bob@192.0.2.20>")],
    )
    ok_again = parse_response(ok.to_bytes())
    assert same_meaning(ok_again, ok)
    assert ok_again.headers.get("Content-Length") == "150"
    assert ok_again.to.tag == "b2"
    bye = SipRequest(
        "BYE",
        SipUri.parse("sip:alice@192.0.2.10:5070"),
        Headers(
            [
                ("Via", f"SIP/2.0/UDP 192.0.2.20;branch={new_branch()}"),
                ("Max-Forwards", "70"),
                ("From", str(ok_again.to)),
                ("To", str(ok_again.from_)),
                ("Call-ID", ok_again.call_id),
                ("CSeq", "1 BYE"),
            ]
        ),
    )
    data = serialize(bye)
    assert data.endswith(b"Content-Length: 0\r\n\r\n")
    bye_again = parse_request(data)
    assert same_meaning(bye_again, bye)
    assert bye_again.cseq == (1, "BYE")
    assert bye_again.from_.tag == "b2"
    assert bye_again.to.tag == "a1"


def test_serialize_rewrites_a_wrong_content_length_in_place() -> None:
    request = parse_request(INVITE)
    request.headers.set("Content-Length", "999")
    request.body = b"abc"
    lines = serialize(request).split(b"\r\n")
    assert lines.count(b"Content-Length: 3") == 1
    assert lines.index(b"Content-Length: 3") == len(INVITE_LINES) - 1  # where it was
    assert serialize(request).endswith(b"\r\n\r\nabc")


def test_response_with_empty_reason_round_trips() -> None:
    response = parse_response(wire(*NOREASON_LINES))
    assert (response.status, response.reason) == (100, "")
    assert serialize(response).startswith(b"SIP/2.0 100 \r\n")
    assert parse_message(serialize(response)) == response


def test_compact_forms_in_a_message() -> None:
    data = wire(
        "OPTIONS sip:bob@h SIP/2.0",
        "v: SIP/2.0/UDP h1;branch=z9hG4bK1",
        "f: <sip:a@h>;tag=1",
        "t: <sip:bob@h>",
        "i: compact@h",
        "CSeq: 2 OPTIONS",
        "m: <sip:a@h1>",
        "k: replaces, timer",
        "c: text/plain",
        "l: 2",
        body="hi",
    )
    request = parse_request(data)
    assert request.call_id == "compact@h"
    assert request.from_.tag == "1"
    assert request.headers.get_all("Supported") == ["replaces", "timer"]
    assert request.content_type == "text/plain"
    assert request.body == b"hi"
    assert b"Call-ID: compact@h\r\n" in serialize(request)
    assert b"\r\ni:" not in serialize(request)


def test_header_folding_is_unfolded() -> None:
    data = wire(
        "OPTIONS sip:bob@h SIP/2.0",
        "Via: SIP/2.0/UDP h1",
        " ;branch=z9hG4bK1",
        "From: <sip:a@h>",
        "\t;tag=1",
        "To: <sip:bob@h>",
        "Call-ID: fold@h",
        "CSeq: 2",
        "  OPTIONS",
        "Subject: first",
        "   second",
    )
    request = parse_request(data)
    assert request.vias[0].branch == "z9hG4bK1"
    assert request.from_.tag == "1"
    assert request.cseq == (2, "OPTIONS")
    assert request.headers.get("Subject") == "first second"
    assert b"\r\n " not in serialize(request)


def test_lf_only_line_ends_and_leading_crlf_are_accepted() -> None:
    data = b"\r\n\r\n" + INVITE.replace(b"\r\n", b"\n").replace(
        SDP_BODY.replace(CRLF, "\n").encode(), SDP_BODY.encode()
    )
    request = parse_request(data)
    assert request.call_id == "3848276298220188511@192.0.2.10"
    assert request.body == SDP_BODY.encode()


def test_longer_datagram_is_truncated_to_content_length() -> None:
    request = parse_request(INVITE + b"garbage after the body")
    assert request.body == SDP_BODY.encode()


def test_shorter_body_than_content_length_is_an_error() -> None:
    with pytest.raises(SipParseError, match="Content-Length is 150 but 149 body bytes follow"):
        parse_message(INVITE[:-1])


def test_missing_content_length_takes_the_rest() -> None:
    lines = [line for line in INVITE_LINES if not line.startswith("Content-Length")]
    request = parse_request(wire(*lines, body=SDP_BODY))
    assert request.body == SDP_BODY.encode()
    assert "Content-Length" not in request.headers
    assert serialize(request).count(b"Content-Length: 150\r\n") == 1


def test_bare_cr_and_missing_blank_line_and_non_utf8() -> None:
    with pytest.raises(SipParseError, match="bare CR"):
        parse_message(INVITE.replace(b"Max-Forwards: 70", b"Max-Forwards: 7\r0"))
    with pytest.raises(SipParseError, match="no empty line"):
        parse_message(CRLF.join(INVITE_LINES).encode())
    with pytest.raises(SipParseError, match="UTF-8"):
        parse_message(INVITE.replace(b"Alice", b"Al\xffce"))


def test_keepalives() -> None:
    assert is_keepalive(b"\r\n")
    assert is_keepalive(b"\r\n\r\n")
    assert not is_keepalive(b"")
    assert not is_keepalive(b"\r\nX")
    assert not is_keepalive(INVITE)
    with pytest.raises(SipParseError, match="keep-alive"):
        parse_message(b"\r\n\r\n")


@pytest.mark.parametrize(
    ("limits", "problem"),
    [
        (ParseLimits(max_message=len(INVITE) - 1), "over"),
        (ParseLimits(max_headers=len(INVITE_LINES) - 2), "more than"),
        (ParseLimits(max_header_line=60), "longer than 60"),
        (ParseLimits(max_header_line=30), "start line longer"),
        (ParseLimits(max_body=149), "over the 149 byte limit"),
    ],
)
def test_each_limit_trips(limits: ParseLimits, problem: str) -> None:
    assert parse_message(INVITE, ParseLimits()).body  # fits the defaults
    with pytest.raises(SipParseError, match=problem):
        parse_message(INVITE, limits)


def test_body_limit_without_content_length() -> None:
    lines = [line for line in INVITE_LINES if not line.startswith("Content-Length")]
    with pytest.raises(SipParseError, match="body of 150 bytes is over 100"):
        parse_message(wire(*lines, body=SDP_BODY), ParseLimits(max_body=100))


def test_default_limits_bound_a_huge_datagram() -> None:
    with pytest.raises(SipParseError, match="over 65535"):
        parse_message(INVITE + b"x" * 70000)


@pytest.mark.parametrize("name", ["Via", "From", "To", "Call-ID", "CSeq"])
def test_missing_mandatory_header(name: str) -> None:
    lines = [line for line in INVITE_LINES if not line.startswith(f"{name}:")]
    with pytest.raises(SipParseError, match=f"missing mandatory {name}"):
        parse_message(wire(*lines, body=SDP_BODY))


@pytest.mark.parametrize(
    ("replacement", "problem"),
    [
        ("CSeq: one INVITE", "CSeq"),
        ("CSeq: 1", "CSeq"),
        ("CSeq: 4294967296 INVITE", "CSeq"),
        ("CSeq: 1 BYE", "does not match"),
        ("CSeq: 1 invite", "does not match"),
        ("Call-ID: two words", "Call-ID"),
        ("Call-ID:", "Call-ID"),
        ("Content-Length: -1", "Content-Length"),
        ("Content-Length: 0x96", "Content-Length"),
        ("Content-Length: 99999999999", "Content-Length"),
        ("Bad Header: x", "not a token"),
        ("NoColonHere", "no ':'"),
    ],
)
def test_malformed_headers(replacement: str, problem: str) -> None:
    lines = [
        replacement if line.startswith(replacement.split(":")[0][:4]) else line
        for line in INVITE_LINES
    ]
    if replacement not in lines:
        lines.insert(2, replacement)
    with pytest.raises(SipParseError, match=problem):
        parse_message(wire(*lines, body=SDP_BODY))


def test_single_valued_headers_may_not_repeat() -> None:
    lines = [*INVITE_LINES[:4], "From: <sip:mallory@h>;tag=m", *INVITE_LINES[4:]]
    with pytest.raises(SipParseError, match="From appears 2 times"):
        parse_message(wire(*lines, body=SDP_BODY))


@pytest.mark.parametrize(
    ("start", "problem"),
    [
        ("INVITE sip:bob@h SIP/3.0", "version"),
        ("SIP/3.0 200 OK", "version"),
        ("SIP/2.0 99 Too Low", "100 to 699"),
        ("SIP/2.0 700 Too High", "100 to 699"),
        ("SIP/2.0 2000 OK", "100 to 699"),
        ("SIP/2.0 OK", "status line"),
        ("INVITE sip:bob@h", "request line"),
        ("INV ITE sip:bob@h SIP/2.0", "request line"),
        ("INVITE\tsip:bob@h SIP/2.0", "request line"),
        ("INVITE sip:bob@h SIP/2.0 ", "request line"),
        ("INVITE http://bob SIP/2.0", "Request-URI"),
        ("INV@ITE sip:bob@h SIP/2.0", "not a token"),
        (" ", "request line"),
    ],
)
def test_bad_start_lines(start: str, problem: str) -> None:
    with pytest.raises(SipParseError, match=problem):
        parse_message(wire(start, *INVITE_LINES[1:], body=SDP_BODY))


# ---------------------------------------------------------------------------------------------
# RFC 4475 torture messages, transcribed from the RFC text (<hex>..</hex> written as escapes)

WSINV = wire(
    "INVITE sip:vivekg@chair-dnrc.example.com;unknownparam SIP/2.0",
    "TO :",
    " sip:vivekg@chair-dnrc.example.com ;   tag    = 1918181833n",
    'from   : "J Rosenberg \\\\\\""       <sip:jdrosen@example.com>',
    "  ;",
    "  tag = 98asjd8",
    "MaX-fOrWaRdS: 0068",
    "Call-ID: wsinv.ndaksdj@192.0.2.1",
    "Content-Length   : 150",
    "cseq: 0009",
    "  INVITE",
    "Via  : SIP  /   2.0",
    " /UDP",
    "    192.0.2.2;branch=390skdjuw",
    "s :",
    "NewFangledHeader:   newfangled value",
    " continued newfangled value",
    "UnknownHeaderWithUnusualValue: ;;,,;;,;",
    "Content-Type: application/sdp",
    "Route:",
    " <sip:services.example.com;lr;unknownwith=value;unknown-no-value>",
    "v:  SIP  / 2.0  / TCP     spindle.example.com   ;",
    "  branch  =   z9hG4bK9ikj8  ,",
    " SIP  /    2.0   / UDP  192.168.255.111   ; branch=",
    " z9hG4bK30239",
    'm:"Quoted string \\"\\"" <sip:jdrosen@example.com> ; newparam =',
    "      newvalue ;",
    "  secondparam ; q = 0.33",
    body=SDP_BODY,
)

INTMETH_METHOD = "!interesting-Method0123456789_*+`.%indeed'~"
INTMETH_USER = "1_unusual.URI~(to-be!sure)&isn't+it$/crazy?,/;;*"
INTMETH = wire(
    f"{INTMETH_METHOD} sip:{INTMETH_USER}:&it+has=1,weird!*pas$wo~d_too.(doesn't-it)"
    "@example.com SIP/2.0",
    "Via: SIP/2.0/TCP host1.example.com;branch=z9hG4bK-.!%66*_+`'~",
    f'To: "BEL:\\\x07 NUL:\\\x00 DEL:\\\x7f" <sip:{INTMETH_USER}@example.com>',
    "From: token1~` token2'+_ token3*%!.- <sip:mundane@example.com>"
    ";fromParam''~+*_!.-%=\"работающий\";tag=_token~1'+`*%!-.",
    "Call-ID: intmeth.word%ZK-!.*_+'@word`~)(><:\\/\"][?}{",
    f"CSeq: 139122385 {INTMETH_METHOD}",
    "Max-Forwards: 255",
    "extensionHeader-!.%*+_`'~:\ufeff大停電",
    "Content-Length: 0",
)

ESC01 = wire(
    "INVITE sip:sips%3Auser%40example.com@example.net SIP/2.0",
    "To: sip:%75se%72@example.com",
    "From: <sip:I%20have%20spaces@example.net>;tag=938",
    "Max-Forwards: 87",
    "i: esc01.239409asdfakjkn23onasd0-3234",
    "CSeq: 234234 INVITE",
    "Via: SIP/2.0/UDP host5.example.net;branch=z9hG4bKkdjuw",
    "C: application/sdp",
    "Contact:",
    "  <sip:cal%6Cer@host5.example.net;%6C%72;n%61me=v%61lue%25%34%31>",
    "Content-Length: 150",
    body=SDP_BODY,
)

ESCNULL = wire(
    "REGISTER sip:example.com SIP/2.0",
    "To: sip:null-%00-null@example.com",
    "From: sip:null-%00-null@example.com;tag=839923423",
    "Max-Forwards: 70",
    "Call-ID: escnull.39203ndfvkjdasfkq3w4otrq0adsfdfnavd",
    "CSeq: 14398234 REGISTER",
    "Via: SIP/2.0/UDP host5.example.com;branch=z9hG4bKkdjuw",
    "Contact: <sip:%00@host5.example.com>",
    "Contact: <sip:%00%00@host5.example.com>",
    "L:0",
)

LWSDISP = wire(
    "OPTIONS sip:user@example.com SIP/2.0",
    "To: sip:user@example.com",
    "From: caller<sip:caller@example.com>;tag=323",
    "Max-Forwards: 70",
    "Call-ID: lwsdisp.1234abcd@funky.example.com",
    "CSeq: 60 OPTIONS",
    "Via: SIP/2.0/UDP funky.example.com;branch=z9hG4bKkdjuw",
    "l: 0",
)

DBLREQ_SECOND = wire(
    "INVITE sip:joe@example.com SIP/2.0",
    "t: sip:joe@example.com",
    "From: sip:caller@example.net;tag=141334",
    "Max-Forwards: 8",
    "Call-ID: dblreq.0ha0isnda977644900765@192.0.2.15",
    "CSeq: 8 INVITE",
    "Via: SIP/2.0/UDP 192.0.2.15;branch=z9hG4bKkdjuw380234",
    "Content-Type: application/sdp",
    "Content-Length: 150",
    body=SDP_BODY,
)
DBLREQ = (
    wire(
        "REGISTER sip:example.com SIP/2.0",
        "To: sip:j.user@example.com",
        "From: sip:j.user@example.com;tag=43251j3j324",
        "Max-Forwards: 8",
        "I: dblreq.0ha0isndaksdj99sdfafnl3lk233412",
        "Contact: sip:j.user@host.example.com",
        "CSeq: 8 REGISTER",
        "Via: SIP/2.0/UDP 192.0.2.125;branch=z9hG4bKkdjuw23492",
        "Content-Length: 0",
    )
    + DBLREQ_SECOND
)

SEMIURI = wire(
    "OPTIONS sip:user;par=u%40example.net@example.com SIP/2.0",
    "To: sip:j_user@example.com",
    "From: sip:caller@example.org;tag=33242",
    "Max-Forwards: 3",
    "Call-ID: semiuri.0ha0isndaksdj",
    "CSeq: 8 OPTIONS",
    "Accept: application/sdp, application/pkcs7-mime,",
    "        multipart/mixed, multipart/signed,",
    "        message/sip, message/sipfrag",
    "Via: SIP/2.0/UDP 192.0.2.1;branch=z9hG4bKkdjuw",
    "l: 0",
)

TRANSPORTS = wire(
    "OPTIONS sip:user@example.com SIP/2.0",
    "To: sip:user@example.com",
    "From: <sip:caller@example.com>;tag=323",
    "Max-Forwards: 70",
    "Call-ID:  transports.kijh4akdnaqjkwendsasfdj",
    "Accept: application/sdp",
    "CSeq: 60 OPTIONS",
    "Via: SIP/2.0/UDP t1.example.com;branch=z9hG4bKkdjuw",
    "Via: SIP/2.0/SCTP t2.example.com;branch=z9hG4bKklasjdhf",
    "Via: SIP/2.0/TLS t3.example.com;branch=z9hG4bK2980unddj",
    "Via: SIP/2.0/UNKNOWN t4.example.com;branch=z9hG4bKasd0f3en",
    "Via: SIP/2.0/TCP t5.example.com;branch=z9hG4bK0a9idfnee",
    "l: 0",
)

NOREASON_LINES = [
    "SIP/2.0 100 ",
    "Via: SIP/2.0/UDP 192.0.2.105;branch=z9hG4bK2398ndaoe",
    "Call-ID: noreason.asndj203insdf99223ndf",
    "CSeq: 35 INVITE",
    "From: <sip:user@example.com>;tag=39ansfi3",
    "To: <sip:user@example.edu>;tag=902jndnke3",
    "Content-Length: 0",
    "Contact: <sip:user@host105.example.com>",
]

UNREASON = wire(
    "SIP/2.0 200 = 2**3 * 5**2 но сто девяносто девять - простое",
    "Via: SIP/2.0/UDP 192.0.2.198;branch=z9hG4bK1324923",
    "Call-ID: unreason.1234ksdfak3j2erwedfsASdf",
    "CSeq: 35 INVITE",
    "From: sip:user@example.com;tag=11141343",
    "To: sip:user@example.edu;tag=2229",
    "Content-Length: 154",
    "Content-Type: application/sdp",
    "Contact: <sip:user@host198.example.com>",
    body=SDP_BODY.replace("192.0.2.3", "192.0.2.198").replace("192.0.2.4", "192.0.2.198"),
)


def test_rfc4475_wsinv_short_tortuous_invite() -> None:
    request = parse_request(WSINV)
    assert request.uri.has_param("unknownparam")
    assert request.to.tag == "1918181833n"
    assert request.from_.display_name == 'J Rosenberg \\"'
    assert request.from_.tag == "98asjd8"
    assert request.headers.get("Max-Forwards") == "0068"
    assert request.cseq == (9, "INVITE")
    assert [(v.transport, v.host, v.branch) for v in request.vias] == [
        ("UDP", "192.0.2.2", "390skdjuw"),
        ("TCP", "spindle.example.com", "z9hG4bK9ikj8"),
        ("UDP", "192.168.255.111", "z9hG4bK30239"),
    ]
    assert request.headers.get("Subject") == ""
    assert request.headers.get("NewFangledHeader") == "newfangled value continued newfangled value"
    assert request.headers.get("UnknownHeaderWithUnusualValue") == ";;,,;;,;"
    route = request.headers.get_all("Route")
    assert len(route) == 1
    assert "lr" in route[0]
    contact = NameAddr.parse(request.headers.get_all("Contact")[0])
    assert contact.display_name == 'Quoted string ""'
    assert contact.params == (("newparam", "newvalue"), ("secondparam", None), ("q", "0.33"))
    assert len(request.body) == 150
    assert SessionDescription.parse(request.body).connection == "192.0.2.4"
    assert same_meaning(parse_message(serialize(request)), request)


def test_rfc4475_intmeth_wide_range_of_valid_characters() -> None:
    request = parse_request(INTMETH)
    assert request.method == INTMETH_METHOD
    assert request.cseq == (139122385, INTMETH_METHOD)
    assert request.uri.user == f"{INTMETH_USER}:&it+has=1,weird!*pas$wo~d_too.(doesn't-it)"
    assert request.uri.host == "example.com"
    assert request.vias[0].branch == "z9hG4bK-.!%66*_+`'~"
    assert request.to.display_name == "BEL:\x07 NUL:\x00 DEL:\x7f"
    assert request.to.uri.user == INTMETH_USER
    assert request.from_.display_name == "token1~` token2'+_ token3*%!.-"
    assert request.from_.param("fromParam''~+*_!.-%") == '"работающий"'
    assert request.from_.tag == "_token~1'+`*%!-."
    assert request.call_id == "intmeth.word%ZK-!.*_+'@word`~)(><:\\/\"][?}{"
    assert request.headers.get("extensionHeader-!.%*+_`'~") == "\ufeff大停電"
    again = parse_request(serialize(request))
    assert same_meaning(again, request)
    assert again.to == request.to


def test_rfc4475_esc01_valid_escapes() -> None:
    request = parse_request(ESC01)
    assert request.uri.user == "sips%3Auser%40example.com"
    assert request.uri.host == "example.net"
    assert request.to.uri.user == "%75se%72"
    assert request.from_.uri.user == "I%20have%20spaces"
    assert request.call_id == "esc01.239409asdfakjkn23onasd0-3234"
    assert request.content_type == "application/sdp"
    contact = NameAddr.parse(request.headers.get("Contact") or "")
    assert contact.uri.params == (("%6C%72", None), ("n%61me", "v%61lue%25%34%31"))


def test_rfc4475_escnull_escaped_nulls() -> None:
    request = parse_request(ESCNULL)
    assert request.to.uri.user == "null-%00-null"
    assert request.headers.get_all("Contact") == [
        "<sip:%00@host5.example.com>",
        "<sip:%00%00@host5.example.com>",
    ]


def test_rfc4475_lwsdisp_no_space_before_angle() -> None:
    request = parse_request(LWSDISP)
    assert request.from_.display_name == "caller"
    assert request.from_.tag == "323"


def test_rfc4475_dblreq_extra_octets_are_ignored() -> None:
    request = parse_request(DBLREQ)
    assert request.method == "REGISTER"
    assert request.body == b""
    assert request.call_id == "dblreq.0ha0isndaksdj99sdfafnl3lk233412"


def test_rfc4475_semiuri_and_folded_accept() -> None:
    request = parse_request(SEMIURI)
    assert request.uri.user == "user;par=u%40example.net"
    assert request.headers.get("Accept") == (
        "application/sdp, application/pkcs7-mime, multipart/mixed, multipart/signed, "
        "message/sip, message/sipfrag"
    )


def test_rfc4475_transports() -> None:
    request = parse_request(TRANSPORTS)
    assert [v.transport for v in request.vias] == ["UDP", "SCTP", "TLS", "UNKNOWN", "TCP"]


def test_rfc4475_noreason_and_unreason() -> None:
    assert parse_response(wire(*NOREASON_LINES)).reason == ""
    response = parse_response(UNREASON)
    assert response.status == 200
    assert response.reason == "= 2**3 * 5**2 но сто девяносто девять - простое"
    assert len(response.body) == 154


INVALID = {
    "badinv01": wire(
        "INVITE sip:user@example.com SIP/2.0",
        "To: sip:j.user@example.com",
        "From: sip:caller@example.net;tag=134161461246",
        "Max-Forwards: 7",
        "Call-ID: badinv01.0ha0isndaksdjasdf3234nas",
        "CSeq: 8 INVITE",
        "Via: SIP/2.0/UDP 192.0.2.15;;,;,,",
        'Contact: "Joe" <sip:joe@example.org>;;;;',
        "Content-Length: 152",
        "Content-Type: application/sdp",
        body=SDP_BODY.replace("192.0.2.3", "192.0.2.15").replace("192.0.2.4", "192.0.2.15"),
    ),
    "clerr": wire(
        "INVITE sip:user@example.com SIP/2.0",
        "Max-Forwards: 80",
        "To: sip:j.user@example.com",
        "From: sip:caller@example.net;tag=93942939o2",
        "Contact: <sip:caller@hungry.example.net>",
        "Call-ID: clerr.0ha0isndaksdjweiafasdk3",
        "CSeq: 8 INVITE",
        "Via: SIP/2.0/UDP host5.example.com;branch=z9hG4bK-39234-23523",
        "Content-Type: application/sdp",
        "Content-Length: 9999",
        body=CRLF + SDP_BODY,
    ),
    "ncl": wire(
        "INVITE sip:user@example.com SIP/2.0",
        "Max-Forwards: 254",
        "To: sip:j.user@example.com",
        "From: sip:caller@example.net;tag=32394234",
        "Call-ID: ncl.0ha0isndaksdj2193423r542w35",
        "CSeq: 0 INVITE",
        "Via: SIP/2.0/UDP 192.0.2.53;branch=z9hG4bKkdjuw",
        "Contact: <sip:caller@example53.example.net>",
        "Content-Type: application/sdp",
        "Content-Length: -999",
        body=SDP_BODY,
    ),
    "scalar02": wire(
        "REGISTER sip:example.com SIP/2.0",
        "Via: SIP/2.0/TCP host129.example.com;branch=z9hG4bK342sdfoi3",
        "To: <sip:user@example.com>",
        "From: <sip:user@example.com>;tag=239232jh3",
        "CSeq: 36893488147419103232 REGISTER",
        "Call-ID: scalar02.23o0pd9vanlq3wnrlnewofjas9ui32",
        "Max-Forwards: 300",
        "Expires: 1" + "0" * 100,
        "Contact: <sip:user@host129.example.com>",
        "  ;expires=280297596632815",
        "Content-Length: 0",
    ),
    "scalarlg": wire(
        "SIP/2.0 503 Service Unavailable",
        "Via: SIP/2.0/TCP host129.example.com;branch=z9hG4bKzzxdiwo34sw;received=192.0.2.129",
        "To: <sip:user@example.com>",
        "From: <sip:other@example.net>;tag=2easdjfejw",
        "CSeq: 9292394834772304023312 OPTIONS",
        "Call-ID: scalarlg.noase0of0234hn2qofoaf0232aewf2394r",
        "Retry-After: 949302838503028349304023988",
        'Warning: 1812 overture "In Progress"',
        "Content-Length: 0",
    ),
    "quotbal": wire(
        "INVITE sip:user@example.com SIP/2.0",
        'To: "Mr. J. User <sip:j.user@example.com>',
        "From: sip:caller@example.net;tag=93334",
        "Max-Forwards: 10",
        "Call-ID: quotbal.aksdj",
        "Contact: <sip:caller@host59.example.net>",
        "CSeq: 8 INVITE",
        "Via: SIP/2.0/UDP 192.0.2.59:5050;branch=z9hG4bKkdjuw39234",
        "Content-Type: application/sdp",
        "Content-Length: 150",
        body=SDP_BODY,
    ),
    "ltgtruri": wire(
        "INVITE <sip:user@example.com> SIP/2.0",
        "To: sip:user@example.com",
        "From: sip:caller@example.net;tag=39291",
        "Max-Forwards: 23",
        "Call-ID: ltgtruri.1@192.0.2.5",
        "CSeq: 1 INVITE",
        "Via: SIP/2.0/UDP 192.0.2.5",
        "Contact: <sip:caller@host5.example.net>",
        "Content-Type: application/sdp",
        "Content-Length: 150",
        body=SDP_BODY,
    ),
    "lwsruri": wire(
        "INVITE sip:user@example.com; lr SIP/2.0",
        "To: sip:user@example.com;tag=3xfe-9921883-z9f",
        "From: sip:caller@example.net;tag=231413434",
        "Max-Forwards: 5",
        "Call-ID: lwsruri.asdfasdoeoi2323-asdfwrn23-asd834rk423",
        "CSeq: 2130706432 INVITE",
        "Via: SIP/2.0/UDP 192.0.2.1:5060;branch=z9hG4bKkdjuw2395",
        "Contact: <sip:caller@host1.example.net>",
        "Content-Type: application/sdp",
        "Content-Length: 150",
        body=SDP_BODY,
    ),
    "lwsstart": wire(
        "INVITE  sip:user@example.com  SIP/2.0",
        "Max-Forwards: 8",
        "To: sip:user@example.com",
        "From: sip:caller@example.net;tag=8814",
        "Call-ID: lwsstart.dfknq234oi243099adsdfnawe3@example.com",
        "CSeq: 1893884 INVITE",
        "Via: SIP/2.0/UDP host1.example.com;branch=z9hG4bKkdjuw3923",
        "Contact: <sip:caller@host1.example.net>",
        "Content-Type: application/sdp",
        "Content-Length: 150",
        body=SDP_BODY,
    ),
    "trws": wire(
        "OPTIONS sip:remote-target@example.com SIP/2.0  ",
        "Via: SIP/2.0/TCP host1.examle.com;branch=z9hG4bK299342093",
        "To: <sip:remote-target@example.com>",
        "From: <sip:local-resource@example.com>;tag=329429089",
        "Call-ID: trws.oicu34958239neffasdhr2345r",
        "Accept: application/sdp",
        "CSeq: 238923 OPTIONS",
        "Max-Forwards: 70",
        "Content-Length: 0",
    ),
    "escruri": wire(
        "INVITE sip:user@example.com?Route=%3Csip:example.com%3E SIP/2.0",
        "To: sip:user@example.com",
        "From: sip:caller@example.net;tag=341518",
        "Max-Forwards: 7",
        "Contact: <sip:caller@host39923.example.net>",
        "Call-ID: escruri.23940-asdfhj-aje3br-234q098w-fawerh2q-h4n5",
        "CSeq: 149209342 INVITE",
        "Via: SIP/2.0/UDP host-of-the-hour.example.com;branch=z9hG4bKkdjuw",
        "Content-Type: application/sdp",
        "Content-Length: 150",
        body=SDP_BODY,
    ),
    "badaspec": wire(
        "OPTIONS sip:user@example.org SIP/2.0",
        "Via: SIP/2.0/UDP host4.example.com:5060;branch=z9hG4bKkdju43234",
        "Max-Forwards: 70",
        'From: "Bell, Alexander" <sip:a.g.bell@example.com>;tag=433423',
        'To: "Watson, Thomas" < sip:t.watson@example.org >',
        "Call-ID: badaspec.sdf0234n2nds0a099u23h3hnnw009cdkne3",
        "Accept: application/sdp",
        "CSeq: 3923239 OPTIONS",
        "l: 0",
    ),
    "baddn": wire(
        "OPTIONS sip:t.watson@example.org SIP/2.0",
        "Via:     SIP/2.0/UDP c.example.com:5060;branch=z9hG4bKkdjuw",
        "Max-Forwards:      70",
        "From:    Bell, Alexander <sip:a.g.bell@example.com>;tag=43",
        "To:      Watson, Thomas <sip:t.watson@example.org>",
        "Call-ID: baddn.31415@c.example.com",
        "Accept: application/sdp",
        "CSeq:    3923239 OPTIONS",
        "l: 0",
    ),
    "badvers": wire(
        "OPTIONS sip:t.watson@example.org SIP/7.0",
        "Via:     SIP/7.0/UDP c.example.com;branch=z9hG4bKkdjuw",
        "Max-Forwards:     70",
        "From:    A. Bell <sip:a.g.bell@example.com>;tag=qweoiqpe",
        "To:      T. Watson <sip:t.watson@example.org>",
        "Call-ID: badvers.31417@c.example.com",
        "CSeq:    1 OPTIONS",
        "l: 0",
    ),
    "mismatch01": wire(
        "OPTIONS sip:user@example.com SIP/2.0",
        "To: sip:j.user@example.com",
        "From: sip:caller@example.net;tag=34525",
        "Max-Forwards: 6",
        "Call-ID: mismatch01.dj0234sxdfl3",
        "CSeq: 8 INVITE",
        "Via: SIP/2.0/UDP host.example.com;branch=z9hG4bKkdjuw",
        "l: 0",
    ),
    "mismatch02": wire(
        "NEWMETHOD sip:user@example.com SIP/2.0",
        "To: sip:j.user@example.com",
        "From: sip:caller@example.net;tag=34525",
        "Max-Forwards: 6",
        "Call-ID: mismatch02.dj0234sxdfl3",
        "CSeq: 8 INVITE",
        "Contact: <sip:caller@host.example.net>",
        "Via: SIP/2.0/UDP host.example.net;branch=z9hG4bKkdjuw",
        "Content-Type: application/sdp",
        "l: 138",
        body=SDP_BODY[:138],
    ),
    "bigcode": wire(
        "SIP/2.0 4294967301 better not break the receiver",
        "Via: SIP/2.0/UDP 192.0.2.105;branch=z9hG4bK2398ndaoe",
        "Call-ID: bigcode.asdof3uj203asdnf3429uasdhfas3ehjasdfas9i",
        "CSeq: 353494 INVITE",
        "From: <sip:user@example.com>;tag=39ansfi3",
        "To: <sip:user@example.edu>;tag=902jndnke3",
        "Content-Length: 0",
        "Contact: <sip:user@host105.example.com>",
    ),
    "mcl01": wire(
        "OPTIONS sip:user@example.com SIP/2.0",
        "Via: SIP/2.0/UDP host5.example.net;branch=z9hG4bK293423",
        "To: sip:user@example.com",
        "From: sip:other@example.net;tag=3923942",
        "Call-ID: mcl01.fhn2323orihawfdoa3o4r52o3irsdf",
        "CSeq: 15932 OPTIONS",
        "Content-Length: 13",
        "Max-Forwards: 60",
        "Content-Length: 5",
        "Content-Type: text/plain",
        body="There's no way to know how many octets are supposed to be here.\r\n",
    ),
    "multi01": wire(
        "INVITE sip:user@company.com SIP/2.0",
        "Contact: <sip:caller@host25.example.net>",
        "Via: SIP/2.0/UDP 192.0.2.25;branch=z9hG4bKkdjuw",
        "Max-Forwards: 70",
        "CSeq: 5 INVITE",
        "Call-ID: multi01.98asdh@192.0.2.1",
        "CSeq: 59 INVITE",
        "Call-ID: multi01.98asdh@192.0.2.2",
        "From: sip:caller@example.com;tag=3413415",
        "To: sip:user@example.com",
        "To: sip:other@example.net",
        "From: sip:caller@example.net;tag=2923420123",
        "Content-Type: application/sdp",
        "l: 154",
        "Contact: <sip:caller@host36.example.net>",
        "Max-Forwards: 5",
        body=SDP_BODY.replace("192.0.2.3", "192.0.2.25").replace("192.0.2.4", "192.0.2.25"),
    ),
    "insuf": wire(
        "INVITE sip:user@example.com SIP/2.0",
        "CSeq: 193942 INVITE",
        "Via: SIP/2.0/UDP 192.0.2.95;branch=z9hG4bKkdj.insuf",
        "Content-Type: application/sdp",
        "l: 152",
        body=SDP_BODY.replace("192.0.2.3", "192.0.2.95").replace("192.0.2.4", "192.0.2.95"),
    ),
}

INVALID_REASONS = {
    "badinv01": "empty parameter",
    "clerr": "Content-Length is 9999",
    "ncl": "Content-Length '-999'",
    "scalar02": "CSeq",
    "scalarlg": "CSeq",
    "quotbal": "never closed",
    "ltgtruri": "Request-URI",
    "lwsruri": "single spaces",
    "lwsstart": "single spaces",
    "trws": "single spaces",
    "escruri": "must not carry",
    "badaspec": "not allowed in a URI",
    "baddn": "tokens",
    "badvers": "version",
    "mismatch01": "does not match",
    "mismatch02": "does not match",
    "bigcode": "100 to 699",
    "mcl01": "Content-Length appears 2 times",
    "multi01": "appears 2 times",
    "insuf": "missing mandatory",
}


@pytest.mark.parametrize("name", sorted(INVALID))
def test_rfc4475_invalid_messages_raise_sip_parse_error(name: str) -> None:
    with pytest.raises(SipParseError) as caught:
        parse_message(INVALID[name])
    assert INVALID_REASONS[name] in str(caught.value)


# ---------------------------------------------------------------------------------------------
# make_response


def two_proxy_invite() -> SipRequest:
    lines = [
        INVITE_LINES[0],
        "Via: SIP/2.0/UDP p2.example.com;branch=z9hG4bKp2, "
        "SIP/2.0/UDP p1.example.com;branch=z9hG4bKp1",
        *INVITE_LINES[1:],
    ]
    return parse_request(wire(*lines, body=SDP_BODY))


def test_make_response_copies_the_rfc_3261_headers() -> None:
    request = two_proxy_invite()
    response = make_response(request, 180, to_tag="b2")
    assert (response.status, response.reason) == (180, "Ringing")
    assert [v.branch for v in response.vias] == ["z9hG4bKp2", "z9hG4bKp1", "z9hG4bKabc123"]
    assert response.headers.get("From") == request.headers.get("From")
    assert response.to.tag == "b2"
    assert response.to.uri == request.to.uri
    assert response.call_id == request.call_id
    assert response.cseq == (1, "INVITE")
    assert response.headers.get_all("Record-Route") == [
        "<sip:p1.example.com;lr>",
        "<sip:p2.example.com;lr>",
    ]
    assert "Contact" not in response.headers
    assert "Max-Forwards" not in response.headers
    assert response.body == b""
    assert same_meaning(parse_message(serialize(response)), response)


def test_make_response_keeps_an_existing_to_tag() -> None:
    request = parse_request(
        INVITE.replace(b"To: <sip:bob@192.0.2.20>", b"To: <sip:bob@192.0.2.20>;tag=old")
    )
    assert make_response(request, 200, to_tag="new").to.tag == "old"
    assert make_response(parse_request(INVITE), 200).to.tag is None


@pytest.mark.parametrize(
    ("status", "method", "copies_record_route"),
    [
        (100, "INVITE", False),
        (180, "INVITE", True),
        (183, "INVITE", True),
        (200, "INVITE", True),
        (202, "REFER", True),
        (200, "SUBSCRIBE", True),
        (486, "INVITE", False),
        (200, "BYE", False),
        (200, "OPTIONS", False),
    ],
)
def test_record_route_only_for_dialog_creating_responses(
    status: int, method: str, copies_record_route: bool
) -> None:
    data = INVITE.replace(b"INVITE sip:", method.encode() + b" sip:").replace(
        b"CSeq: 1 INVITE", b"CSeq: 1 " + method.encode()
    )
    response = make_response(parse_request(data), status, to_tag="t")
    assert ("Record-Route" in response.headers) is copies_record_route


def test_make_response_reason_body_and_extra() -> None:
    request = parse_request(INVITE)
    assert make_response(request, 486).reason == "Busy Here"
    assert make_response(request, 488, "No Codec").reason == "No Codec"
    assert make_response(request, 299).reason == "Success"
    assert make_response(request, 699).reason == "Global Failure"
    response = make_response(
        request,
        200,
        body=b"v=0\r\n",
        content_type="application/sdp",
        extra=[("Contact", "<sip:b@h>"), ("Allow", "INVITE, BYE")],
    )
    assert response.content_type == "application/sdp"
    assert response.headers.items()[-2:] == [("Contact", "<sip:b@h>"), ("Allow", "INVITE, BYE")]
    assert serialize(response).endswith(b"Content-Length: 5\r\n\r\nv=0\r\n")
    with pytest.raises(ValueError, match="100 to 699"):
        make_response(request, 700)
    with pytest.raises(ValueError, match="CR or LF"):
        make_response(request, 200, "OK\r\nX: y")


def test_reason_phrases() -> None:
    for status in (199, 204, 422, 489, 491, 494, 481, 487, 603):
        assert REASON_PHRASES[status]
    assert REASON_PHRASES[481] == "Call/Transaction Does Not Exist"
    assert REASON_PHRASES[200] == "OK"


def test_identifiers() -> None:
    branches = {new_branch() for _ in range(50)}
    assert len(branches) == 50
    for branch in branches:
        assert branch.startswith("z9hG4bK")
        assert len(branch) >= 27
        assert Via.parse(f"SIP/2.0/UDP h;branch={branch}").branch == branch
    tags = {new_tag() for _ in range(50)}
    assert len(tags) == 50
    assert all(tag.replace("-", "").replace("_", "").isalnum() for tag in tags)
    call = new_call_id("192.0.2.1")
    assert call.endswith("@192.0.2.1")
    assert new_call_id("h") != new_call_id("h")


# ---------------------------------------------------------------------------------------------
# Fuzzing: any bytes give a message or SipParseError, and what parses re-parses the same

SEEDS = [INVITE, WSINV, INTMETH, ESC01, DBLREQ, wire(*NOREASON_LINES), *INVALID.values()]
SPECIALS = list(b' \t\r\n;:,<>"\\@[]=/?%0aZ\x00\xff')


@st.composite
def mutated(draw: st.DrawFn) -> bytes:
    data = bytearray(draw(st.sampled_from(SEEDS)))
    for _ in range(draw(st.integers(1, 6))):
        at = draw(st.integers(0, len(data)))
        action = draw(st.sampled_from(["insert", "delete", "replace"]))
        byte = draw(st.sampled_from(SPECIALS) | st.integers(0, 255))
        if action == "insert":
            data.insert(at, byte)
        elif at < len(data):
            if action == "delete":
                del data[at]
            else:
                data[at] = byte
    return bytes(data)


def check_parse(data: bytes) -> None:
    try:
        message = parse_message(data)
    except SipParseError:
        return
    again = parse_message(serialize(message))
    assert same_meaning(again, message)


@given(st.binary(max_size=2000))
def test_fuzz_arbitrary_bytes(data: bytes) -> None:
    check_parse(data)


@settings(max_examples=400, suppress_health_check=[HealthCheck.too_slow])
@given(mutated())
def test_fuzz_mutated_messages(data: bytes) -> None:
    check_parse(data)

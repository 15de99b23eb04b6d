"""RFC 4028 session timers, sans-IO: header parsing, negotiation in both roles, deadlines."""

from __future__ import annotations

import pytest

from warmtransfer.sip.message import Headers, SipRequest, SipResponse, make_response
from warmtransfer.sip.session_timer import (
    Agreement,
    Due,
    SessionExpires,
    SessionTimer,
    SessionTimerConfig,
    TooSmall,
    allows,
    negotiate_as_uac,
    negotiate_as_uas,
    request_headers,
    response_headers,
    retry_interval,
    session_expires,
    supports_timer,
)
from warmtransfer.sip.uri import SipUri

CONFIG = SessionTimerConfig()  # 1800 s asked, Min-SE 90


def invite(*extra: tuple[str, str]) -> SipRequest:
    headers = Headers()
    headers.add("Via", "SIP/2.0/UDP 192.0.2.1:5060;branch=z9hG4bK-1")
    headers.add("From", "<sip:a@192.0.2.1>;tag=a")
    headers.add("To", "<sip:b@192.0.2.2>")
    headers.add("Call-ID", "st-1")
    headers.add("CSeq", "1 INVITE")
    for name, value in extra:
        headers.add(name, value)
    return SipRequest("INVITE", SipUri.parse("sip:b@192.0.2.2"), headers)


def ok(*extra: tuple[str, str]) -> SipResponse:
    return make_response(invite(), 200, to_tag="b", extra=extra)


# -- headers ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("1800", SessionExpires(1800, None)),
        ("90;refresher=uac", SessionExpires(90, "uac")),
        ("  600 ; REFRESHER = UAS ", SessionExpires(600, "uas")),
        ("300;foo=bar", SessionExpires(300, None)),
    ],
)
def test_session_expires_parses(text: str, expected: SessionExpires) -> None:
    assert SessionExpires.parse(text) == expected


@pytest.mark.parametrize("text", ["", "abc", "-5", "١٢٣", "90;refresher=proxy"])
def test_session_expires_refuses_garbage(text: str) -> None:
    with pytest.raises(ValueError, match="Session-Expires"):
        SessionExpires.parse(text)


def test_unreadable_session_expires_counts_as_absent_and_compact_form_is_read() -> None:
    assert session_expires(invite(("Session-Expires", "soon"))) is None
    assert session_expires(invite(("x", "120;refresher=uas"))) == SessionExpires(120, "uas")


def test_supported_require_and_allow_are_read_as_token_lists() -> None:
    assert supports_timer(invite(("Supported", "replaces, Timer")))
    assert supports_timer(invite(("k", "timer")))
    assert supports_timer(invite(("Require", "timer")))
    assert not supports_timer(invite(("Supported", "timers, 100rel")))
    assert allows(invite(("Allow", "INVITE, ACK,update")), "UPDATE")
    assert not allows(invite(("Allow", "INVITE, ACK, BYE")), "UPDATE")


def test_our_request_headers() -> None:
    assert request_headers(CONFIG) == [
        ("Supported", "timer"),
        ("Session-Expires", "1800"),
        ("Min-SE", "90"),
    ]
    assert ("Session-Expires", "300;refresher=uac") in request_headers(
        CONFIG, 300, refresher_uac=True
    )


def test_config_enforces_the_rfc_minimum_unless_the_floor_is_lowered_for_tests() -> None:
    with pytest.raises(ValueError, match="RFC 4028"):
        SessionTimerConfig(interval=60, min_se=60)
    with pytest.raises(ValueError, match="below Min-SE"):
        SessionTimerConfig(interval=100, min_se=120)
    short = SessionTimerConfig(interval=2, min_se=1, floor=1)
    assert short.interval == 2


# -- negotiation as the answerer ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("headers", "expected"),
    [
        # The caller names the refresher: honoured either way.
        ((("Supported", "timer"), ("Session-Expires", "600;refresher=uac")), Agreement(600, False)),
        ((("Supported", "timer"), ("Session-Expires", "600;refresher=uas")), Agreement(600, True)),
        # It supports timers but leaves the choice to us: it asked, it refreshes.
        ((("Supported", "timer"), ("Session-Expires", "600")), Agreement(600, False)),
        # A proxy added the header to a caller that knows nothing of timers: only we can refresh.
        ((("Session-Expires", "600"),), Agreement(600, True)),
        # Exactly our Min-SE is fine.
        ((("Supported", "timer"), ("Session-Expires", "90")), Agreement(90, False)),
        # No Session-Expires: no timer, even from a caller that supports them.
        ((("Supported", "timer"),), None),
        ((), None),
    ],
)
def test_uas_negotiation(headers: tuple[tuple[str, str], ...], expected: Agreement | None) -> None:
    assert negotiate_as_uas(invite(*headers), CONFIG) == expected


def test_uas_refuses_below_our_min_se_with_422_naming_it() -> None:
    asked = negotiate_as_uas(invite(("Supported", "timer"), ("Session-Expires", "89")), CONFIG)
    assert asked == TooSmall(90)
    assert asked.response_headers() == [("Min-SE", "90")]
    # A larger Min-SE of the caller's own is named instead: asking for less would loop.
    asked = negotiate_as_uas(
        invite(("Session-Expires", "30"), ("Min-SE", "120")), SessionTimerConfig(min_se=200)
    )
    assert asked == TooSmall(200)


def test_a_refresh_without_refresher_keeps_the_current_roles() -> None:
    refresh = invite(("Supported", "timer"), ("Session-Expires", "600"))
    assert negotiate_as_uas(refresh, CONFIG, Agreement(600, True)) == Agreement(600, True)
    assert negotiate_as_uas(refresh, CONFIG, Agreement(600, False)) == Agreement(600, False)


def test_our_2xx_names_the_refresher_from_our_side_and_requires_timer_only_if_supported() -> None:
    supported = invite(("Supported", "timer"), ("Session-Expires", "600"))
    assert response_headers(Agreement(600, False), supported) == [
        ("Session-Expires", "600;refresher=uac"),
        ("Require", "timer"),
    ]
    unsupported = invite(("Session-Expires", "600"))
    assert response_headers(Agreement(600, True), unsupported) == [
        ("Session-Expires", "600;refresher=uas")
    ]


# -- negotiation as the caller -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("headers", "expected"),
    [
        ((("Session-Expires", "90;refresher=uac"), ("Require", "timer")), Agreement(90, True)),
        ((("Session-Expires", "900;refresher=uas"), ("Require", "timer")), Agreement(900, False)),
        ((("Session-Expires", "1800"),), Agreement(1800, True)),  # proxy-added: we refresh
        ((), None),  # the answerer knows no timers: no session expiration
    ],
)
def test_uac_negotiation(headers: tuple[tuple[str, str], ...], expected: Agreement | None) -> None:
    assert negotiate_as_uac(ok(*headers)) == expected


def test_after_422_we_ask_for_the_peers_min_se_once() -> None:
    too_small = make_response(invite(), 422, extra=[("Min-SE", "1200")])
    assert retry_interval(too_small, 1000) == 1200
    assert retry_interval(too_small, 1200) is None  # no larger interval: do not loop
    assert retry_interval(make_response(invite(), 422), 1000) is None


# -- deadlines ---------------------------------------------------------------------------------


def test_the_refresher_refreshes_at_half_the_interval_then_starts_over() -> None:
    timer = SessionTimer(Agreement(1800, True), now=1000.0)
    assert timer.next_deadline == 1900.0
    assert timer.on_timer(1899.9) is None
    assert timer.on_timer(1900.0) is Due.REFRESH
    # While the refresh is on the wire, the only deadline is the expiry.
    assert timer.refresh_at is None and timer.next_deadline == 1000.0 + 1800 - 32
    assert timer.on_timer(1950.0) is None
    timer.refreshed(1901.0, Agreement(900, True))
    assert timer.next_deadline == 1901.0 + 450 and timer.refreshes == 1


@pytest.mark.parametrize(("interval", "give_up"), [(1800, 1768.0), (90, 60.0), (60, 40.0)])
def test_the_other_side_gives_up_before_the_interval(interval: int, give_up: float) -> None:
    timer = SessionTimer(Agreement(interval, False), now=0.0)
    assert timer.refresh_at is None
    assert timer.next_deadline == give_up
    assert timer.on_timer(give_up - 0.01) is None
    assert timer.on_timer(give_up) is Due.EXPIRE


def test_a_received_refresh_pushes_the_expiry_back() -> None:
    timer = SessionTimer(Agreement(90, False), now=0.0)
    timer.refreshed(50.0)
    assert timer.on_timer(60.0) is None
    assert timer.next_deadline == 110.0


def test_a_refused_refresh_is_retried_before_the_expiry_and_the_expiry_stands() -> None:
    timer = SessionTimer(Agreement(1800, True), now=0.0)
    assert timer.on_timer(900.0) is Due.REFRESH
    timer.refresh_failed(901.0)
    assert timer.expires_at == 1768.0
    assert timer.next_deadline == pytest.approx(901.0 + (1768.0 - 901.0) / 2)
    assert timer.on_timer(timer.next_deadline) is Due.REFRESH
    timer.refresh_failed(1767.5)  # too late for another try: only the expiry is left
    assert timer.next_deadline == 1768.0
    assert timer.on_timer(1768.0) is Due.EXPIRE

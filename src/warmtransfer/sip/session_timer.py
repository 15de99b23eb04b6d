"""SIP session timers (RFC 4028): how a call whose peer vanished is noticed and ended.

A SIP call has no keep-alive of its own: if the far end crashes or a NAT binding or a carrier's
state is lost, nobody sends BYE and both legs (and the transfer holding them) stay up forever.
RFC 4028 makes one side, the *refresher*, repeat a re-INVITE or UPDATE every half interval;
if no refresh comes in time, the other side (and the refresher, when its own refreshes fail)
ends the call with a BYE.

Sans-IO like the rest of the stack: parsing and negotiating headers are pure functions, and
`SessionTimer` is a small clock driven by `now` that says when to refresh and when to give up.
The call (call.py) owns the asyncio timer that wakes it up and the requests it sends.

Roles: the refresher parameter names a role *in the transaction that negotiated it* ("uac" is
whoever sent that INVITE or UPDATE), so an agreement is stored from our side, as `we_refresh`.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from warmtransfer.sip.message import SipRequest, SipResponse

RFC_MIN_SE = 90  # RFC 4028 section 4: Min-SE MUST NOT be less than 90 seconds
DEFAULT_INTERVAL = 1800  # RFC 4028 section 4: the recommended Session-Expires
OPTION_TAG = "timer"


@dataclass(frozen=True)
class SessionTimerConfig:
    """What we ask for and what we accept.

    `interval`: the Session-Expires we put in our INVITEs. `min_se`: the shortest interval we
    accept from a peer (a shorter one gets 422 with this Min-SE). `floor`: the lowest `min_se`
    this configuration allows; RFC 4028 forbids less than 90 s, and lowering `floor` exists
    **only for tests**, so that a refresh or an expiry takes seconds instead of minutes.
    """

    interval: int = DEFAULT_INTERVAL
    min_se: int = RFC_MIN_SE
    floor: int = RFC_MIN_SE

    def __post_init__(self) -> None:
        if self.floor < 1:
            raise ValueError("session timer floor must be at least 1 second")
        if self.min_se < self.floor:
            raise ValueError(
                f"Min-SE {self.min_se} is below {self.floor} (RFC 4028 allows no less than 90)"
            )
        if self.interval < self.min_se:
            raise ValueError(f"Session-Expires {self.interval} is below Min-SE {self.min_se}")


@dataclass(frozen=True)
class SessionExpires:
    """A Session-Expires header: `delta-seconds [;refresher=uac|uas]` (compact form `x`)."""

    interval: int
    refresher: str | None = None  # "uac", "uas" or None when absent

    @classmethod
    def parse(cls, value: str) -> SessionExpires:
        parts = [part.strip() for part in value.split(";")]
        if not parts[0].isdigit() or not parts[0].isascii():
            raise ValueError(f"Session-Expires {value!r} is not delta-seconds")
        refresher = None
        for param in parts[1:]:
            name, _, param_value = param.partition("=")
            if name.strip().lower() == "refresher":
                refresher = param_value.strip().lower()
                if refresher not in ("uac", "uas"):
                    raise ValueError(f"Session-Expires refresher {refresher!r} is not uac or uas")
        return cls(int(parts[0]), refresher)

    def __str__(self) -> str:
        if self.refresher is None:
            return str(self.interval)
        return f"{self.interval};refresher={self.refresher}"


@dataclass(frozen=True)
class Agreement:
    """A negotiated session interval, seen from our side."""

    interval: int
    we_refresh: bool

    @property
    def refresh_after(self) -> float:
        """RFC 4028 section 10: the refresher sends its refresh at half the interval."""
        return self.interval / 2

    @property
    def give_up_after(self) -> float:
        """RFC 4028 section 10: without a refresh, BYE at interval - min(32, interval / 3),
        so that the BYE still reaches a peer whose own expiry is at the full interval."""
        return self.interval - min(32.0, self.interval / 3)


@dataclass(frozen=True)
class TooSmall:
    """The offered interval is below our Min-SE: answer 422 with `min_se` (RFC 4028 section 9)."""

    min_se: int

    def response_headers(self) -> list[tuple[str, str]]:
        return [("Min-SE", str(self.min_se))]


def _tokens(message: SipRequest | SipResponse, *names: str) -> set[str]:
    found: set[str] = set()
    for name in names:
        for value in message.headers.get_all(name):
            found.update(token.strip().lower() for token in value.split(","))
    return found


def supports_timer(message: SipRequest | SipResponse) -> bool:
    """The sender understands session timers: `timer` in Supported (`k`) or Require."""
    return OPTION_TAG in _tokens(message, "Supported", "k", "Require")


def allows(message: SipRequest | SipResponse, method: str) -> bool:
    """The sender's Allow lists `method` (used to refresh with UPDATE, which needs no SDP)."""
    return method.lower() in _tokens(message, "Allow")


def session_expires(message: SipRequest | SipResponse) -> SessionExpires | None:
    """The message's Session-Expires (or compact `x`), None when absent or unreadable.

    An unreadable value is treated as absent rather than refused: a peer's odd header must not
    cost the call, it only costs the session timer.
    """
    value = message.headers.get("Session-Expires") or message.headers.get("x")
    if value is None:
        return None
    try:
        return SessionExpires.parse(value)
    except ValueError:
        return None


def request_headers(
    config: SessionTimerConfig, interval: int | None = None, *, refresher_uac: bool = False
) -> list[tuple[str, str]]:
    """Headers for an INVITE or UPDATE we send: we support timers, want `interval` (our
    configured one by default) and accept no less than our Min-SE. The refresher is left to
    the answerer in a new call, and named as ourselves (`uac`) in our own refreshes."""
    expires = SessionExpires(interval or config.interval, "uac" if refresher_uac else None)
    return [
        ("Supported", OPTION_TAG),
        ("Session-Expires", str(expires)),
        ("Min-SE", str(config.min_se)),
    ]


def negotiate_as_uas(
    request: SipRequest, config: SessionTimerConfig, current: Agreement | None = None
) -> Agreement | TooSmall | None:
    """What we agree to when answering an INVITE or UPDATE (RFC 4028 section 9).

    None when the request asks for no session timer. Below our Min-SE: `TooSmall` (422). The
    refresher named in the request is honoured; when none is named, a peer that supports
    timers keeps the role it had (`current`) or, in a new call, does the refreshing itself
    (it asked for the timer); a peer that does not support timers (a proxy added the header)
    cannot refresh, so we do.
    """
    offered = session_expires(request)
    if offered is None:
        return None
    if offered.interval < config.min_se:
        return TooSmall(max(config.min_se, _peer_min_se(request)))
    if offered.refresher is not None:
        we_refresh = offered.refresher == "uas"
    elif not supports_timer(request):
        we_refresh = True
    elif current is not None:
        we_refresh = current.we_refresh
    else:
        we_refresh = False
    return Agreement(offered.interval, we_refresh)


def response_headers(agreement: Agreement, request: SipRequest) -> list[tuple[str, str]]:
    """Headers for our 2xx to `request`: the agreed interval and refresher (we are the UAS of
    this transaction), and `Require: timer` only when the peer said it supports timers
    (RFC 4028 section 9: a Require the peer does not understand would fail the call)."""
    refresher = "uas" if agreement.we_refresh else "uac"
    headers = [("Session-Expires", str(SessionExpires(agreement.interval, refresher)))]
    if supports_timer(request):
        headers.append(("Require", OPTION_TAG))
    return headers


def negotiate_as_uac(response: SipResponse) -> Agreement | None:
    """What a 2xx to our INVITE or UPDATE agreed to (RFC 4028 section 7.2).

    No Session-Expires in the 2xx means no session expiration. A Session-Expires without a
    refresher can only come from a UAS that does not support timers (a proxy added it), so we,
    the UAC, refresh.
    """
    granted = session_expires(response)
    if granted is None:
        return None
    return Agreement(granted.interval, granted.refresher != "uas")


def retry_interval(response: SipResponse, asked: int) -> int | None:
    """After a 422 to our request, the interval to ask for next (the peer's Min-SE), or None
    when the 422 names no larger one: asking again would only loop."""
    minimum = _peer_min_se(response)
    return minimum if minimum > asked else None


def _peer_min_se(message: SipRequest | SipResponse) -> int:
    value = (message.headers.get("Min-SE") or "").split(";", 1)[0].strip()
    return int(value) if value.isdigit() and value.isascii() else 0


class Due(enum.Enum):
    REFRESH = "refresh"  # we are the refresher: send a re-INVITE or UPDATE now
    EXPIRE = "expire"  # no refresh came in time: the session is dead, send BYE


class SessionTimer:
    """When a call must be refreshed and when it is given up, driven by the time it is told.

    `next_deadline` is when to call `on_timer` next. Every refresh, sent (a 2xx came back) or
    received, goes through `refreshed`, which restarts the interval, possibly a new one.
    """

    def __init__(self, agreement: Agreement, now: float) -> None:
        self.agreement = agreement
        self.refreshed_at = now
        self.refreshing = False  # our refresh is on the wire; no second one until it ends
        self._retry_at: float | None = None
        self.refreshes = 0

    @property
    def expires_at(self) -> float:
        return self.refreshed_at + self.agreement.give_up_after

    @property
    def refresh_at(self) -> float | None:
        if not self.agreement.we_refresh or self.refreshing:
            return None
        if self._retry_at is not None:
            return self._retry_at
        return self.refreshed_at + self.agreement.refresh_after

    @property
    def next_deadline(self) -> float:
        refresh_at = self.refresh_at
        if refresh_at is None:
            return self.expires_at
        return min(refresh_at, self.expires_at)

    def on_timer(self, now: float) -> Due | None:
        if now >= self.expires_at:
            return Due.EXPIRE
        refresh_at = self.refresh_at
        if refresh_at is not None and now >= refresh_at:
            self.refreshing = True
            return Due.REFRESH
        return None

    def refreshed(self, now: float, agreement: Agreement | None = None) -> None:
        self.refreshed_at = now
        self.refreshing = False
        self._retry_at = None
        self.refreshes += 1
        if agreement is not None:
            self.agreement = agreement

    def refresh_failed(self, now: float) -> None:
        """Our refresh was refused (a 491 glare, a 500…) but the dialog lives: try once more
        halfway to the expiry, if that leaves at least a second; the expiry stays as it was."""
        self.refreshing = False
        retry_at = now + (self.expires_at - now) / 2
        self._retry_at = retry_at if self.expires_at - retry_at >= 1.0 else self.expires_at

"""REFER (RFC 3515) and the NOTIFYs that report on it, as values: Refer-To with an optional
Replaces (RFC 3891), message/sipfrag bodies (RFC 3420), and the Event and Subscription-State
headers of the implicit `refer` subscription (RFC 6665).

Sans-IO like the rest of the SIP stack: text in, frozen values out, and `ReferError` (a
`ValueError` naming the text and the broken rule) on any bad input, so that the call can answer
400 to a REFER or NOTIFY it cannot read without guarding against other exceptions. Sending and
answering live in call.py.

Why the Replaces value is percent-escaped: it travels as a header *inside* the Refer-To URI
(`<sip:bob@pbx?Replaces=...>`), where `;`, `=` and `@` would otherwise end the header, start a
URI parameter or split user from host (RFC 3261 19.1.1 `hvalue`). An unescaped Replaces is the
classic attended-transfer bug: the peer reads a call-id of `abc` and parameters it never meant.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from urllib.parse import quote, unquote

from warmtransfer.sip.dialog import Dialog
from warmtransfer.sip.message import REASON_PHRASES, SipRequest
from warmtransfer.sip.uri import (
    NameAddr,
    SipUri,
    SipUriError,
    get_param,
    has_param,
    is_token,
    parse_header_params,
)

__all__ = [
    "EVENT_PACKAGE",
    "SIPFRAG",
    "ReferError",
    "ReferRequest",
    "ReferTo",
    "Replaces",
    "SipFrag",
    "SubscriptionState",
    "escape_uri_header",
    "parse_event",
    "read_refer",
]

EVENT_PACKAGE = "refer"
SIPFRAG = "message/sipfrag;version=2.0"
#: Characters an `hvalue` may carry unescaped (RFC 3261 25.1: unreserved and hnv-unreserved);
#: letters, digits and `-_.~` are always safe for `quote`.
_HVALUE_SAFE = "!*'()[]/?:+$"
_STATUS_LINE_RE = re.compile(r"SIP/2\.0 ([1-6][0-9]{2})(?: (.*))?")
_CALL_ID_RE = re.compile(r"[^\s;]+")


class ReferError(ValueError):
    """A Refer-To, Replaces, sipfrag, Event or Subscription-State that breaks its RFC."""


def escape_uri_header(value: str) -> str:
    """Percent-escape `value` for a `?name=value` header inside a SIP URI (RFC 3261 hvalue)."""
    return quote(value, safe=_HVALUE_SAFE)


@dataclass(frozen=True)
class Replaces:
    """The dialog a new INVITE is to replace (RFC 3891), as the UA receiving it sees it:
    `to_tag` is that UA's own tag in the dialog and `from_tag` the other party's."""

    call_id: str
    to_tag: str
    from_tag: str
    early_only: bool = False

    def __post_init__(self) -> None:
        if not _CALL_ID_RE.fullmatch(self.call_id):
            raise ReferError(f"Replaces call-id {self.call_id!r} must be one word")
        for name, tag in (("to-tag", self.to_tag), ("from-tag", self.from_tag)):
            if not is_token(tag):
                raise ReferError(f"Replaces {name} {tag!r} is not a token")

    @classmethod
    def of_dialog(cls, dialog: Dialog) -> Replaces:
        """What to send the transferee so that its INVITE replaces our `dialog` with the
        transfer target: the target is the UA receiving that INVITE, so its tag (our remote
        tag) is the to-tag and ours the from-tag."""
        return cls(dialog.call_id, to_tag=dialog.remote_tag, from_tag=dialog.local_tag)

    @classmethod
    def parse(cls, text: str) -> Replaces:
        """`callid;to-tag=X;from-tag=Y[;early-only]`, unescaped (RFC 3891 6.1)."""
        call_id, semi, rest = text.strip().partition(";")
        try:
            params = parse_header_params(semi + rest)
        except SipUriError as exc:
            raise ReferError(f"Replaces {text!r}: {exc}") from None
        to_tag, from_tag = get_param(params, "to-tag"), get_param(params, "from-tag")
        if not call_id or to_tag is None or from_tag is None:
            raise ReferError(f"Replaces {text!r} needs a call-id, a to-tag and a from-tag")
        return cls(call_id.strip(), to_tag, from_tag, has_param(params, "early-only"))

    def __str__(self) -> str:
        early = ";early-only" if self.early_only else ""
        return f"{self.call_id};to-tag={self.to_tag};from-tag={self.from_tag}{early}"


@dataclass(frozen=True)
class ReferTo:
    """A Refer-To value: whom to call (`uri`, without URI headers) and, for an attended
    transfer, which dialog the new call replaces."""

    uri: SipUri
    replaces: Replaces | None = None

    def __post_init__(self) -> None:
        if self.uri.scheme not in ("sip", "sips"):
            raise ReferError(f"Refer-To {self.uri} is not a sip: or sips: URI")
        if self.uri.headers:
            raise ReferError(f"Refer-To {self.uri}: pass Replaces as `replaces`, not URI headers")

    @classmethod
    def parse(cls, text: str) -> ReferTo:
        """Read a Refer-To header value. Only sip:/sips: URIs are accepted, since we can only
        place SIP calls; a `method` other than INVITE is refused (we would send the wrong
        request); URI headers other than Replaces are dropped (they would be copied into our
        INVITE, which is how a REFER smuggles headers in)."""
        try:
            named = NameAddr.parse(text)
        except SipUriError as exc:
            raise ReferError(f"Refer-To {text!r}: {exc}") from None
        uri = named.uri
        method = uri.param("method")
        if method is not None and method.upper() != "INVITE":
            raise ReferError(f"Refer-To {text!r} asks for {method}; only INVITE is supported")
        replaces = None
        for name, value in uri.headers:
            if name.lower() == "replaces":
                replaces = Replaces.parse(unquote(value))
        bare = SipUri(uri.scheme, uri.user, uri.host, uri.port, uri.params)
        return cls(bare, replaces)

    def __str__(self) -> str:
        headers = (("Replaces", escape_uri_header(str(self.replaces))),) if self.replaces else ()
        uri = SipUri(
            self.uri.scheme, self.uri.user, self.uri.host, self.uri.port, self.uri.params, headers
        )
        return str(NameAddr(uri))


@dataclass(frozen=True)
class ReferRequest:
    """A REFER the peer sent us, as the application's `on_refer` hook sees it."""

    refer_to: ReferTo
    referred_by: NameAddr | None
    request: SipRequest

    @property
    def target(self) -> SipUri:
        """Whom the peer asks us to call. Dial it only through the allow-list."""
        return self.refer_to.uri

    @property
    def replaces(self) -> Replaces | None:
        return self.refer_to.replaces


def read_refer(request: SipRequest) -> ReferRequest:
    """The REFER's Refer-To (exactly one, RFC 3515 2.4.1) and Referred-By. An unreadable
    Referred-By (RFC 3892) is ignored rather than refused: it only informs."""
    values = request.headers.get_all("Refer-To")
    if not values:
        raise ReferError("REFER has no Refer-To header (RFC 3515 2.4.1)")
    if len(values) > 1:
        raise ReferError(f"REFER has {len(values)} Refer-To headers; it must have exactly one")
    refer_to = ReferTo.parse(values[0])
    referred_by = None
    by = request.headers.get("Referred-By")
    if by is not None:
        try:
            referred_by = NameAddr.parse(by)
        except SipUriError:
            referred_by = None
    return ReferRequest(refer_to, referred_by, request)


@dataclass(frozen=True)
class SipFrag:
    """A message/sipfrag body reporting a REFER's progress: a status line (RFC 3420, 3515 2.4.5).

    Headers after the status line are allowed by RFC 3420 and ignored here: the status is what
    the referrer acts on."""

    status: int
    reason: str = ""

    def __post_init__(self) -> None:
        if not 100 <= self.status <= 699:
            raise ReferError(f"sipfrag status {self.status} is not 100 to 699")
        if "\r" in self.reason or "\n" in self.reason:
            raise ReferError(f"sipfrag reason {self.reason!r} contains CR or LF")

    @classmethod
    def of(cls, status: int) -> SipFrag:
        """A status with its usual reason phrase."""
        return cls(status, REASON_PHRASES.get(status, ""))

    @classmethod
    def parse(cls, body: bytes) -> SipFrag:
        try:
            text = body.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise ReferError(f"sipfrag is not UTF-8 (byte {exc.start})") from None
        first = text.lstrip("\r\n").split("\n", 1)[0].removesuffix("\r")
        if not first:
            raise ReferError("sipfrag is empty; expected a status line 'SIP/2.0 <code> <reason>'")
        match = _STATUS_LINE_RE.fullmatch(first)
        if match is None:
            raise ReferError(
                f"sipfrag {first[:80]!r} is not a status line 'SIP/2.0 <code> <reason>'"
            )
        return cls(int(match.group(1)), match.group(2) or "")

    @property
    def final(self) -> bool:
        return self.status >= 200

    def to_bytes(self) -> bytes:
        return f"SIP/2.0 {self.status} {self.reason}".rstrip().encode() + b"\r\n"


@dataclass(frozen=True)
class SubscriptionState:
    """A Subscription-State header (RFC 6665 8.2.3): `active;expires=60`,
    `terminated;reason=noresource`, `pending`."""

    state: str
    expires: int | None = None
    reason: str | None = None

    def __post_init__(self) -> None:
        if not is_token(self.state):
            raise ReferError(f"Subscription-State {self.state!r} is not a token")
        if self.reason is not None and not is_token(self.reason):
            raise ReferError(f"Subscription-State reason {self.reason!r} is not a token")

    @classmethod
    def active(cls, expires: int) -> SubscriptionState:
        return cls("active", expires=expires)

    @classmethod
    def terminated(cls, reason: str = "noresource") -> SubscriptionState:
        """RFC 3515 2.4.7: the last NOTIFY of a REFER ends its subscription, `noresource`
        because the referenced call reached a final state."""
        return cls("terminated", reason=reason)

    @classmethod
    def parse(cls, value: str) -> SubscriptionState:
        state, semi, rest = value.strip().partition(";")
        try:
            params = parse_header_params(semi + rest)
        except SipUriError as exc:
            raise ReferError(f"Subscription-State {value!r}: {exc}") from None
        expires_text = get_param(params, "expires")
        if expires_text is not None and not (expires_text.isascii() and expires_text.isdigit()):
            raise ReferError(f"Subscription-State {value!r}: expires must be delta-seconds")
        expires = int(expires_text) if expires_text is not None else None
        return cls(state.strip().lower(), expires, get_param(params, "reason"))

    @property
    def is_terminated(self) -> bool:
        return self.state == "terminated"

    def __str__(self) -> str:
        expires = "" if self.expires is None else f";expires={self.expires}"
        reason = "" if self.reason is None else f";reason={self.reason}"
        return f"{self.state}{expires}{reason}"


def parse_event(value: str) -> tuple[str, str | None]:
    """An Event header as (package, id): `refer;id=3` is ("refer", "3") (RFC 6665 8.2.1)."""
    package, semi, rest = value.strip().partition(";")
    package = package.strip().lower()
    if not is_token(package):
        raise ReferError(f"Event {value!r}: {package!r} is not an event package")
    try:
        params = parse_header_params(semi + rest)
    except SipUriError as exc:
        raise ReferError(f"Event {value!r}: {exc}") from None
    return package, get_param(params, "id")

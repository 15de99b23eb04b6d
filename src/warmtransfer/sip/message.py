"""SIP messages: parse bytes into requests and responses, and serialise them back (RFC 3261 7, 20).

Why hand-written: no well-kept sans-IO SIP parser on PyPI fits (DESIGN.md, "why our own SIP").
Like h11, this module does no I/O: `parse_message` takes one complete message (a UDP datagram,
or a frame cut from a TCP stream) and returns a value, and `serialize` returns bytes. The
transaction and dialog layers above drive it; sockets live in the asyncio layer.

Rules the parser enforces, and why:
- It raises `SipParseError` and nothing else on any input (a fuzz test holds it to that), so
  the transport can answer 400 or drop the datagram without guarding against surprises.
- Every error names the broken rule, e.g. "Content-Length is 9999 but 150 body bytes follow".
- Limits (`ParseLimits`) bound memory and time per datagram: a peer cannot make us hold a
  megabyte header or loop over thousands of fields.
- Via, From, To, Call-ID and CSeq are checked when the message is parsed (RFC 3261 8.1.1), so
  the layers above may read `message.call_id` or `message.cseq` without a second failure path.
- Content-Length cuts the body: a longer UDP datagram is truncated to it (RFC 3261 18.3), a
  shorter one is an error; without Content-Length the body is the rest of the data.
- Header folding is undone (RFC 3261 7.3.1) and compact names are stored in their long form,
  so `headers.get("Call-ID")` finds an `i:` header. Bare LF line ends are accepted.
"""

from __future__ import annotations

import re
import secrets
from collections.abc import Iterable
from dataclasses import dataclass, replace
from typing import Protocol, TypeAlias

from warmtransfer.sip.uri import (
    NameAddr,
    Params,
    SipUri,
    SipUriError,
    format_params,
    get_param,
    has_param,
    is_token,
    parse_header_params,
    parse_host_port,
    set_params,
    split_outside_quotes,
)

__all__ = [
    "COMPACT_FORMS",
    "DEFAULT_LIMITS",
    "REASON_PHRASES",
    "Headers",
    "ParseLimits",
    "SipMessage",
    "SipParseError",
    "SipRequest",
    "SipResponse",
    "Via",
    "call_id",
    "content_type",
    "cseq",
    "from_",
    "is_keepalive",
    "make_response",
    "new_branch",
    "new_call_id",
    "new_tag",
    "parse_message",
    "serialize",
    "to",
    "vias",
]


class SipParseError(ValueError):
    """A SIP message or header broke RFC 3261 syntax; the message says which rule."""


@dataclass(frozen=True)
class ParseLimits:
    """Upper bounds per message; anything larger is refused before it costs memory or time."""

    max_message: int = 65535
    max_headers: int = 100
    max_header_line: int = 8192
    max_body: int = 32768


DEFAULT_LIMITS = ParseLimits()

COMPACT_FORMS: dict[str, str] = {
    "i": "Call-ID",
    "f": "From",
    "t": "To",
    "v": "Via",
    "m": "Contact",
    "l": "Content-Length",
    "c": "Content-Type",
    "k": "Supported",
    "s": "Subject",
    "e": "Content-Encoding",
    "o": "Event",
    "r": "Refer-To",
    "b": "Referred-By",
    "u": "Allow-Events",
    "x": "Session-Expires",
}

_CANONICAL: dict[str, str] = {
    name.lower(): name
    for name in (
        *COMPACT_FORMS.values(),
        *[
            "Accept",
            "Accept-Encoding",
            "Accept-Language",
            "Alert-Info",
            "Allow",
            "Authorization",
            "Call-Info",
            "Content-Disposition",
            "Content-Language",
            "CSeq",
            "Date",
            "Error-Info",
            "Expires",
            "In-Reply-To",
            "Max-Forwards",
            "Min-Expires",
            "Min-SE",
            "MIME-Version",
            "Organization",
            "P-Asserted-Identity",
            "Priority",
            "Privacy",
            "Proxy-Authenticate",
            "Proxy-Authorization",
            "Proxy-Require",
            "RAck",
            "Reason",
            "Record-Route",
            "Refer-Sub",
            "Replaces",
            "Reply-To",
            "Require",
            "Retry-After",
            "Route",
            "RSeq",
            "Server",
            "Subscription-State",
            "Target-Dialog",
            "Timestamp",
            "Unsupported",
            "User-Agent",
            "Warning",
            "WWW-Authenticate",
        ],
    )
}

# Headers whose comma-joined values are separate entries (RFC 3261 7.3.1). Proxy-Require,
# Unsupported and Allow-Events are lists by the same rule.
_LIST_HEADERS = frozenset(
    [
        "via",
        "route",
        "record-route",
        "contact",
        "allow",
        "supported",
        "require",
        "proxy-require",
        "unsupported",
        "allow-events",
    ]
)
_SINGLE_HEADERS = ("From", "To", "Call-ID", "CSeq", "Content-Length", "Content-Type")
_MANDATORY = ("Via", "From", "To", "Call-ID", "CSeq")
_DIALOG_CREATING = frozenset({"INVITE", "SUBSCRIBE", "REFER"})

_HEAD_END_RE = re.compile(rb"\r?\n\r?\n")
_STATUS_LINE_RE = re.compile(r"(SIP/[0-9]+\.[0-9]+) ([0-9]+)(?: (.*))?", re.IGNORECASE)
_CSEQ_RE = re.compile(r"([0-9]{1,10})[ \t]+([A-Za-z0-9\-.!%*_+`'~]+)")
_DIGITS_RE = re.compile(r"[0-9]{1,10}")
_VIA_RE = re.compile(
    r"SIP[ \t]*/[ \t]*([0-9]+\.[0-9]+)[ \t]*/[ \t]*([A-Za-z0-9\-.!%*_+`'~]+)[ \t]+([^;]*?)"
    r"[ \t]*(;.*)?",
    re.IGNORECASE,
)
_VIA_SENT_BY_RE = re.compile(r"(\[[^\]]*\]|[^:\[\] \t]+)(?:[ \t]*:[ \t]*([^ \t]*))?")


def canonical_name(name: str) -> str:
    """Long, conventionally spelled form of a header name; unknown names are kept as given."""
    key = name.lower()
    return COMPACT_FORMS.get(key) or _CANONICAL.get(key, name)


class Headers:
    """Ordered multi-map of header fields.

    Names compare case-insensitively and compact names are stored in their long form. Values are
    kept as received (unfolded and trimmed); list headers can be read element by element.
    """

    __slots__ = ("_items",)

    def __init__(self, items: Iterable[tuple[str, str]] = ()) -> None:
        self._items: list[tuple[str, str]] = []
        for name, value in items:
            self.add(name, value)

    @staticmethod
    def _checked(name: str, value: str) -> tuple[str, str]:
        if not is_token(name):
            raise ValueError(f"header name {name!r} is not a token")
        if "\r" in value or "\n" in value:
            raise ValueError(f"header {name!r} value contains CR or LF: {value!r}")
        return canonical_name(name), value

    def _indexes(self, name: str) -> list[int]:
        key = canonical_name(name).lower()
        return [i for i, (n, _) in enumerate(self._items) if n.lower() == key]

    def get(self, name: str) -> str | None:
        """First value; for list headers (Via, Contact, ...) the first element."""
        values = self.get_all(name)
        return values[0] if values else None

    def get_all(self, name: str) -> list[str]:
        """Every value in order; list headers are also split at commas outside quotes and <>."""
        values = [self._items[i][1] for i in self._indexes(name)]
        if canonical_name(name).lower() not in _LIST_HEADERS:
            return values
        split: list[str] = []
        for value in values:
            split.extend(part.strip(" \t") for part in split_outside_quotes(value, ","))
        return [part for part in split if part]

    def add(self, name: str, value: str) -> None:
        self._items.append(self._checked(name, value))

    def prepend(self, name: str, value: str) -> None:
        """Insert before the first header of this name, or first of all if there is none."""
        indexes = self._indexes(name)
        self._items.insert(indexes[0] if indexes else 0, self._checked(name, value))

    def set(self, name: str, value: str) -> None:
        """Replace every header of this name by one, at the place of the first."""
        item = self._checked(name, value)
        indexes = self._indexes(name)
        if not indexes:
            self._items.append(item)
            return
        self._items[indexes[0]] = item
        for index in reversed(indexes[1:]):
            del self._items[index]

    def remove(self, name: str) -> None:
        for index in reversed(self._indexes(name)):
            del self._items[index]

    def count(self, name: str) -> int:
        """Number of header lines of this name (not list elements)."""
        return len(self._indexes(name))

    def items(self) -> list[tuple[str, str]]:
        return list(self._items)

    def copy(self) -> Headers:
        copied = Headers()
        copied._items = list(self._items)
        return copied

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and bool(self._indexes(name))

    def __len__(self) -> int:
        return len(self._items)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Headers):
            return NotImplemented
        return [(n.lower(), v) for n, v in self._items] == [(n.lower(), v) for n, v in other._items]

    __hash__ = None  # type: ignore[assignment]  # mutable

    def __repr__(self) -> str:
        return f"Headers({self._items!r})"


@dataclass(frozen=True)
class Via:
    """One Via entry: `SIP/2.0/UDP host:port;branch=...;rport` (RFC 3261 20.42)."""

    transport: str
    host: str
    port: int | None
    params: Params

    @classmethod
    def parse(cls, text: str) -> Via:
        match = _VIA_RE.fullmatch(text.strip(" \t"))
        if match is None:
            raise SipParseError(f"Via {text!r}: expected 'SIP/2.0/<transport> <host>[:port]'")
        version, transport, sent_by, param_text = match.groups()
        if version != "2.0":
            raise SipParseError(f"Via {text!r}: SIP version {version} is not 2.0")
        sent = _VIA_SENT_BY_RE.fullmatch(sent_by)
        if sent is None:
            raise SipParseError(f"Via {text!r}: sent-by {sent_by!r} is not host[:port]")
        host_text, port_text = sent.groups()
        if port_text is not None:
            host_text = f"{host_text}:{port_text}"
        try:
            host, port = parse_host_port(host_text)
            params = parse_header_params(param_text or "")
        except SipUriError as error:
            raise SipParseError(f"Via {text!r}: {error}") from None
        return cls(transport.upper(), host, port, params)

    @property
    def branch(self) -> str | None:
        return get_param(self.params, "branch")

    def param(self, name: str) -> str | None:
        return get_param(self.params, name)

    def has_param(self, name: str) -> bool:
        return has_param(self.params, name)

    def with_params(self, **params: str | None) -> Via:
        """A copy with these parameters set, e.g. `received=` and `rport=` (RFC 3581)."""
        for name, value in params.items():
            if not is_token(name) or (value is not None and not value.strip()):
                raise SipParseError(f"Via parameter {name}={value!r} is not valid")
        return replace(self, params=set_params(self.params, params))

    def __str__(self) -> str:
        port = "" if self.port is None else f":{self.port}"
        return f"SIP/2.0/{self.transport} {self.host}{port}{format_params(self.params)}"


class _HasHeaders(Protocol):
    @property
    def headers(self) -> Headers: ...


def _single(message: _HasHeaders, name: str) -> str:
    value = message.headers.get(name)
    if value is None:
        raise SipParseError(f"missing mandatory {name} header")
    return value


def _name_addr(message: _HasHeaders, name: str) -> NameAddr:
    value = _single(message, name)
    try:
        return NameAddr.parse(value)
    except SipUriError as error:
        raise SipParseError(f"{name} header: {error}") from None


def call_id(message: _HasHeaders) -> str:
    value = _single(message, "Call-ID")
    if not value or any(char in value for char in " \t"):
        raise SipParseError(f"Call-ID {value!r} must be one non-empty word")
    return value


def cseq(message: _HasHeaders) -> tuple[int, str]:
    """CSeq as (sequence number, method); the number must fit 32 bits (RFC 3261 8.1.1.5)."""
    value = _single(message, "CSeq")
    match = _CSEQ_RE.fullmatch(value)
    if match is None or int(match.group(1)) >= 2**32:
        raise SipParseError(f"CSeq {value!r} is not '<32-bit number> <method>'")
    return int(match.group(1)), match.group(2)


def from_(message: _HasHeaders) -> NameAddr:
    return _name_addr(message, "From")


def to(message: _HasHeaders) -> NameAddr:
    return _name_addr(message, "To")


def vias(message: _HasHeaders) -> list[Via]:
    values = message.headers.get_all("Via")
    if not values:
        raise SipParseError("missing mandatory Via header")
    return [Via.parse(value) for value in values]


def content_type(message: _HasHeaders) -> str | None:
    return message.headers.get("Content-Type")


class _Accessors:
    """Typed views of the mandatory headers, shared by requests and responses."""

    headers: Headers

    @property
    def call_id(self) -> str:
        return call_id(self)

    @property
    def cseq(self) -> tuple[int, str]:
        return cseq(self)

    @property
    def from_(self) -> NameAddr:
        return from_(self)

    @property
    def to(self) -> NameAddr:
        return to(self)

    @property
    def vias(self) -> list[Via]:
        return vias(self)

    @property
    def content_type(self) -> str | None:
        return content_type(self)


@dataclass
class SipRequest(_Accessors):
    method: str
    uri: SipUri
    headers: Headers
    body: bytes = b""

    def to_bytes(self) -> bytes:
        return serialize(self)


@dataclass
class SipResponse(_Accessors):
    status: int
    reason: str
    headers: Headers
    body: bytes = b""

    def to_bytes(self) -> bytes:
        return serialize(self)


SipMessage: TypeAlias = SipRequest | SipResponse


def is_keepalive(data: bytes) -> bool:
    """True for the CRLF / CRLFCRLF pings of RFC 5626 (not a message, nothing to parse)."""
    return 0 < len(data) <= 4 and not data.strip(b"\r\n")


def _unfold(lines: list[str], limits: ParseLimits) -> list[str]:
    fields: list[str] = []
    for line in lines:
        if line[:1] in (" ", "\t"):
            if not fields:
                raise SipParseError("first header line starts with whitespace (folding)")
            fields[-1] += " " + line.strip(" \t")
        else:
            fields.append(line)
            if len(fields) > limits.max_headers:
                raise SipParseError(f"more than {limits.max_headers} header fields")
        if len(fields[-1]) > limits.max_header_line:
            raise SipParseError(f"header field longer than {limits.max_header_line} characters")
    return fields


def _parse_headers(lines: list[str], limits: ParseLimits) -> Headers:
    headers = Headers()
    for field in _unfold(lines, limits):
        name, colon, value = field.partition(":")
        name = name.rstrip(" \t")
        if not colon:
            raise SipParseError(f"header line {field[:80]!r} has no ':'")
        if not is_token(name):
            raise SipParseError(f"header name {name[:80]!r} is not a token")
        headers.add(name, value.strip(" \t"))
    return headers


def _parse_start_line(line: str, headers: Headers) -> SipMessage:
    if line[:4].upper() == "SIP/":
        match = _STATUS_LINE_RE.fullmatch(line)
        if match is None:
            raise SipParseError(f"status line {line[:80]!r} is not 'SIP/2.0 <code> <reason>'")
        version, code, reason = match.groups()
        if version.upper() != "SIP/2.0":
            raise SipParseError(f"unsupported SIP version {version!r}")
        if len(code) != 3 or not 100 <= int(code) <= 699:
            raise SipParseError(f"status code {code[:20]!r} is not 100 to 699")
        return SipResponse(int(code), reason or "", headers)
    parts = line.split(" ")
    if len(parts) != 3 or not all(parts):
        raise SipParseError(
            f"request line {line[:80]!r} is not 'Method SP Request-URI SP SIP/2.0' "
            "with single spaces"
        )
    method, uri_text, version = parts
    if not is_token(method):
        raise SipParseError(f"method {method[:40]!r} is not a token")
    if version.upper() != "SIP/2.0":
        raise SipParseError(f"unsupported SIP version {version[:20]!r}")
    try:
        uri = SipUri.parse(uri_text)
    except SipUriError as error:
        raise SipParseError(f"Request-URI: {error}") from None
    if uri.headers:
        raise SipParseError(f"Request-URI {uri_text[:80]!r} must not carry ?headers")
    return SipRequest(method, uri, headers)


def _cut_body(headers: Headers, rest: bytes, limits: ParseLimits) -> bytes:
    declared = headers.get("Content-Length")
    if declared is None:
        if len(rest) > limits.max_body:
            raise SipParseError(f"body of {len(rest)} bytes is over {limits.max_body}")
        return rest
    if _DIGITS_RE.fullmatch(declared) is None:
        raise SipParseError(f"Content-Length {declared[:20]!r} is not a non-negative number")
    length = int(declared)
    if length > limits.max_body:
        raise SipParseError(f"Content-Length {length} is over the {limits.max_body} byte limit")
    if len(rest) < length:
        raise SipParseError(f"Content-Length is {length} but {len(rest)} body bytes follow")
    return rest[:length]


def _check_mandatory(message: SipMessage) -> None:
    headers = message.headers
    for name in _MANDATORY:
        if name not in headers:
            raise SipParseError(f"missing mandatory {name} header")
    for name in _SINGLE_HEADERS:
        if headers.count(name) > 1:
            raise SipParseError(f"{name} appears {headers.count(name)} times; it may appear once")
    vias(message)
    from_(message)
    to(message)
    call_id(message)
    _, method = cseq(message)
    if isinstance(message, SipRequest) and method != message.method:
        raise SipParseError(
            f"CSeq method {method!r} does not match request method {message.method!r}"
        )


def parse_message(data: bytes, limits: ParseLimits = DEFAULT_LIMITS) -> SipMessage:
    """Parse one complete SIP message; raise `SipParseError` naming the broken rule."""
    data = bytes(data)
    if len(data) > limits.max_message:
        raise SipParseError(f"message of {len(data)} bytes is over {limits.max_message}")
    data = data.lstrip(b"\r\n")  # CRLFs before the start line are ignored (RFC 3261 7.5)
    if not data:
        raise SipParseError("only CRLF: a keep-alive, not a message")
    end = _HEAD_END_RE.search(data)
    if end is None:
        raise SipParseError("no empty line ends the header section")
    try:
        head = data[: end.start()].decode("utf-8")
    except UnicodeDecodeError as error:
        raise SipParseError(f"header section is not UTF-8 (byte {error.start})") from None
    lines = [line.removesuffix("\r") for line in head.split("\n")]
    if any("\r" in line for line in lines):
        raise SipParseError("bare CR inside the header section")
    if len(lines[0]) > limits.max_header_line:
        raise SipParseError(f"start line longer than {limits.max_header_line} characters")
    headers = _parse_headers(lines[1:], limits)
    message = _parse_start_line(lines[0], headers)
    _check_mandatory(message)
    message.body = _cut_body(headers, data[end.end() :], limits)
    return message


def serialize(message: SipMessage) -> bytes:
    """Wire form with CRLF line ends and a Content-Length that matches the body."""
    if isinstance(message, SipRequest):
        start = f"{message.method} {message.uri} SIP/2.0"
    else:
        start = f"SIP/2.0 {message.status} {message.reason}"
    length = f"Content-Length: {len(message.body)}"
    lines = [start]
    for name, value in message.headers.items():
        if name == "Content-Length":
            if length:
                lines.append(length)
                length = ""
        else:
            lines.append(f"{name}: {value}")
    if length:
        lines.append(length)
    lines.extend(("", ""))
    return "\r\n".join(lines).encode("utf-8") + message.body


REASON_PHRASES: dict[int, str] = {
    100: "Trying",
    180: "Ringing",
    181: "Call Is Being Forwarded",
    182: "Queued",
    183: "Session Progress",
    199: "Early Dialog Terminated",
    200: "OK",
    202: "Accepted",
    204: "No Notification",
    300: "Multiple Choices",
    301: "Moved Permanently",
    302: "Moved Temporarily",
    305: "Use Proxy",
    380: "Alternative Service",
    400: "Bad Request",
    401: "Unauthorized",
    402: "Payment Required",
    403: "Forbidden",
    404: "Not Found",
    405: "Method Not Allowed",
    406: "Not Acceptable",
    407: "Proxy Authentication Required",
    408: "Request Timeout",
    410: "Gone",
    413: "Request Entity Too Large",
    414: "Request-URI Too Long",
    415: "Unsupported Media Type",
    416: "Unsupported URI Scheme",
    420: "Bad Extension",
    421: "Extension Required",
    422: "Session Interval Too Small",
    423: "Interval Too Brief",
    480: "Temporarily Unavailable",
    481: "Call/Transaction Does Not Exist",
    482: "Loop Detected",
    483: "Too Many Hops",
    484: "Address Incomplete",
    485: "Ambiguous",
    486: "Busy Here",
    487: "Request Terminated",
    488: "Not Acceptable Here",
    489: "Bad Event",
    491: "Request Pending",
    493: "Undecipherable",
    494: "Security Agreement Required",
    500: "Server Internal Error",
    501: "Not Implemented",
    502: "Bad Gateway",
    503: "Service Unavailable",
    504: "Server Time-out",
    505: "Version Not Supported",
    513: "Message Too Large",
    600: "Busy Everywhere",
    603: "Decline",
    604: "Does Not Exist Anywhere",
    606: "Not Acceptable",
}

_CLASS_REASONS = {
    1: "Provisional",
    2: "Success",
    3: "Redirection",
    4: "Client Error",
    5: "Server Error",
    6: "Global Failure",
}


def make_response(
    request: SipRequest,
    status: int,
    reason: str | None = None,
    *,
    to_tag: str | None = None,
    body: bytes = b"",
    content_type: str | None = None,
    extra: Iterable[tuple[str, str]] = (),
) -> SipResponse:
    """Build a response to `request` by the copying rules of RFC 3261 8.2.6.2 and 12.1.1.

    Copies every Via in order, From, To (adding `;tag=to_tag` when To has no tag yet), Call-ID
    and CSeq, and Record-Route for 101-299 responses to dialog-creating requests.
    """
    if not 100 <= status <= 699:
        raise ValueError(f"status {status} is not 100 to 699")
    if reason is None:
        reason = REASON_PHRASES.get(status, _CLASS_REASONS[status // 100])
    if "\r" in reason or "\n" in reason:
        raise ValueError(f"reason phrase {reason!r} contains CR or LF")
    source = request.headers
    headers = Headers(("Via", value) for value in source.get_all("Via"))
    if 101 <= status <= 299 and request.method in _DIALOG_CREATING:
        for value in source.get_all("Record-Route"):
            headers.add("Record-Route", value)
    to_value = _single(request, "To")
    if to_tag is not None and to(request).tag is None:
        if not is_token(to_tag):
            raise ValueError(f"to_tag {to_tag!r} is not a token")
        to_value = f"{to_value};tag={to_tag}"
    headers.add("From", _single(request, "From"))
    headers.add("To", to_value)
    headers.add("Call-ID", _single(request, "Call-ID"))
    headers.add("CSeq", _single(request, "CSeq"))
    if content_type is not None:
        headers.add("Content-Type", content_type)
    for name, value in extra:
        headers.add(name, value)
    return SipResponse(status, reason, headers, body)


def new_branch() -> str:
    """A Via branch with the RFC 3261 magic cookie and 128 random bits."""
    return "z9hG4bK" + secrets.token_urlsafe(16)


def new_tag() -> str:
    return secrets.token_urlsafe(12)


def new_call_id(host: str) -> str:
    return f"{secrets.token_urlsafe(18)}@{host}"

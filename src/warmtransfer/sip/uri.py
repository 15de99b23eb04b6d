"""SIP, SIPS and tel URIs, and the name-addr values of From, To, Contact and Route headers.

Why hand-written: no well-kept sans-IO SIP parser on PyPI fits (DESIGN.md, "why our own SIP"),
and the part of RFC 3261 section 19.1, section 20.10 and RFC 3966 that a user agent needs is small.
The module is pure: text in, frozen values out, and `SipUriError` (a `ValueError` naming the
text and the broken rule) on any bad input, never another exception.

Choices, and why:
- Percent escapes (`%40`) are kept exactly as given. Unescaping would change what a URI
  serialises back to, and nothing in a user agent needs the unescaped user part.
- Whitespace, control characters, `<`, `>` and `"` are refused anywhere in a URI (a quoted
  display name may hold them), so no value built here can smuggle a header line into a message.
- Hosts are lower-cased (they compare case-insensitively); IPv6 literals keep their brackets so
  `host` pastes back into a URI or Via unchanged, and `host_port()` strips them for a socket.
- Parameters stay an ordered tuple of pairs, not a dict: order and spelling survive a round trip
  and the values stay hashable inside frozen dataclasses.
- `SipUri.headers` holds the `?name=value&...` part. It is not in the first sketch of the API,
  but a Refer-To for an attended transfer carries `?Replaces=...` and must not lose it.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass, replace
from typing import TypeAlias

__all__ = [
    "NameAddr",
    "Params",
    "SipUri",
    "SipUriError",
    "format_params",
    "get_param",
    "has_param",
    "is_token",
    "parse_header_params",
    "parse_host_port",
    "read_quoted",
    "set_params",
    "split_outside_quotes",
]

Params: TypeAlias = tuple[tuple[str, str | None], ...]


class SipUriError(ValueError):
    """A URI or name-addr broke RFC 3261 / RFC 3966 syntax; the message names text and rule."""


_TOKEN = r"[A-Za-z0-9\-.!%*_+`'~]+"
_TOKEN_RE = re.compile(_TOKEN)
_DISPLAY_TOKENS_RE = re.compile(rf"{_TOKEN}(?:[ \t]+{_TOKEN})*")
_SCHEME_RE = re.compile(r"[A-Za-z][A-Za-z0-9+.\-]*")
_HOSTNAME_RE = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.\-]*")
_PORT_RE = re.compile(r"[0-9]{1,5}")
_TEL_NUMBER_RE = re.compile(r"\+?[0-9A-Fa-f*#().\-]*[0-9A-Fa-f*#][0-9A-Fa-f*#().\-]*")
# Refused anywhere in a URI: whitespace, controls and the characters that delimit a name-addr.
_URI_FORBIDDEN_RE = re.compile(r'[\x00-\x20\x7f<>"]')
# Refused in an unquoted header parameter value (RFC 3261 gen-value is token / host).
_GEN_VALUE_FORBIDDEN_RE = re.compile(r'[\x00-\x20\x7f";,<>]')
_SCHEMES = ("sip", "sips", "tel")


def is_token(text: str) -> bool:
    """True if `text` is an RFC 3261 token (method names, header names, tags, ...)."""
    return _TOKEN_RE.fullmatch(text) is not None


def read_quoted(text: str, start: int) -> tuple[str, int]:
    """Read the quoted-string that opens at `text[start]`.

    Returns the unescaped content and the index just after the closing quote.
    """
    out: list[str] = []
    i = start + 1
    while i < len(text):
        char = text[i]
        if char == "\\":
            if i + 1 == len(text):
                break
            out.append(text[i + 1])
            i += 2
            continue
        if char == '"':
            return "".join(out), i + 1
        out.append(char)
        i += 1
    raise SipUriError(f"{text!r}: quoted string opened at offset {start} is never closed")


def split_outside_quotes(text: str, sep: str) -> list[str]:
    """Split on `sep` where it is neither inside a quoted string nor inside `<...>`."""
    parts: list[str] = []
    start = 0
    quoted = False
    angle = False
    i = 0
    while i < len(text):
        char = text[i]
        if quoted:
            if char == "\\":
                i += 1
            elif char == '"':
                quoted = False
        elif char == '"':
            quoted = True
        elif char == "<":
            angle = True
        elif char == ">":
            angle = False
        elif char == sep and not angle:
            parts.append(text[start:i])
            start = i + 1
        i += 1
    parts.append(text[start:])
    return parts


def parse_host_port(text: str) -> tuple[str, int | None]:
    """Parse `host[:port]` (RFC 3261 hostport): host name, IPv4, or bracketed IPv6."""
    if text.startswith("["):
        end = text.find("]")
        if end < 0:
            raise SipUriError(f"{text!r}: IPv6 reference has no closing ']'")
        literal = text[1:end]
        try:
            ipaddress.IPv6Address(literal)
        except ValueError:
            raise SipUriError(f"{text!r}: {literal!r} is not an IPv6 address") from None
        host, rest = f"[{literal.lower()}]", text[end + 1 :]
    else:
        host, colon, port_text = text.partition(":")
        rest = colon + port_text
        if _HOSTNAME_RE.fullmatch(host) is None:
            hint = " (an IPv6 address must be in brackets)" if ":" in port_text else ""
            raise SipUriError(f"{text!r}: {host!r} is not a host name or IPv4 address{hint}")
        host = host.lower()
    if not rest:
        return host, None
    port_text = rest[1:]
    if not rest.startswith(":") or _PORT_RE.fullmatch(port_text) is None:
        raise SipUriError(f"{text!r}: port must be 1 to 5 digits after ':'")
    port = int(port_text)
    if port > 65535:
        raise SipUriError(f"{text!r}: port {port} is above 65535")
    return host, port


def parse_header_params(text: str) -> Params:
    """Parse `;name[=value]...` after a name-addr or Via (RFC 3261 generic-param).

    Whitespace around `;` and `=` is allowed; values may be quoted strings (kept with their
    quotes, so they serialise back unchanged). Empty parameters (`;;`) are an error.
    """
    text = text.strip(" \t")
    if not text:
        return ()
    if not text.startswith(";"):
        raise SipUriError(f"{text!r}: parameters must start with ';'")
    params: list[tuple[str, str | None]] = []
    for item in split_outside_quotes(text[1:], ";"):
        name, eq, value = item.partition("=")
        name = name.strip(" \t")
        if not name:
            raise SipUriError(f"{text!r}: empty parameter between ';' separators")
        if not is_token(name):
            raise SipUriError(f"{text!r}: parameter name {name!r} is not a token")
        if not eq:
            params.append((name, None))
            continue
        value = value.strip(" \t")
        if value.startswith('"'):
            _, end = read_quoted(value, 0)
            if end != len(value):
                raise SipUriError(f"{text!r}: text after the quoted value of {name!r}")
        elif not value or _GEN_VALUE_FORBIDDEN_RE.search(value):
            raise SipUriError(f"{text!r}: parameter {name!r} has an empty or invalid value")
        params.append((name, value))
    return tuple(params)


def format_params(params: Params) -> str:
    return "".join(f";{name}" if value is None else f";{name}={value}" for name, value in params)


def get_param(params: Params, name: str) -> str | None:
    wanted = name.lower()
    for key, value in params:
        if key.lower() == wanted:
            return value
    return None


def has_param(params: Params, name: str) -> bool:
    wanted = name.lower()
    return any(key.lower() == wanted for key, _ in params)


def set_params(params: Params, updates: dict[str, str | None]) -> Params:
    """Replace parameters by case-insensitive name, in place; append the new ones in order."""
    result = list(params)
    for name, value in updates.items():
        for index, (key, _) in enumerate(result):
            if key.lower() == name.lower():
                result[index] = (key, value)
                break
        else:
            result.append((name, value))
    return tuple(result)


def _check_uri_text(text: str) -> None:
    bad = _URI_FORBIDDEN_RE.search(text)
    if bad is not None:
        raise SipUriError(f"{text!r}: {bad.group()!r} is not allowed in a URI")


def _parse_uri_params(text: str, uri: str) -> Params:
    params: list[tuple[str, str | None]] = []
    for item in text.split(";"):
        name, eq, value = item.partition("=")
        if not name:
            raise SipUriError(f"{uri!r}: empty URI parameter")
        params.append((name, value if eq else None))
    return tuple(params)


def _parse_uri_headers(text: str, uri: str) -> tuple[tuple[str, str], ...]:
    headers: list[tuple[str, str]] = []
    for item in text.split("&"):
        name, eq, value = item.partition("=")
        if not name or not eq:
            raise SipUriError(f"{uri!r}: URI header {item!r} is not name=value")
        headers.append((name, value))
    return tuple(headers)


@dataclass(frozen=True)
class SipUri:
    """A `sip:`, `sips:` or `tel:` URI. For tel, `user` is the number and `host` is ""."""

    scheme: str
    user: str | None
    host: str
    port: int | None = None
    params: Params = ()
    headers: tuple[tuple[str, str], ...] = ()

    def __post_init__(self) -> None:
        if self.scheme not in _SCHEMES:
            raise SipUriError(f"scheme {self.scheme!r} is not one of {', '.join(_SCHEMES)}")
        parts = [self.user or "", self.host]
        parts += [f"{n}={v or ''}" for n, v in (*self.params, *self.headers)]
        for part in parts:
            _check_uri_text(part)

    @classmethod
    def parse(cls, text: str) -> SipUri:
        _check_uri_text(text)
        scheme, colon, rest = text.partition(":")
        if not colon or _SCHEME_RE.fullmatch(scheme) is None:
            raise SipUriError(f"{text!r}: a URI starts with 'scheme:'")
        scheme = scheme.lower()
        if scheme not in _SCHEMES:
            raise SipUriError(f"{text!r}: unsupported URI scheme {scheme!r}")
        if scheme == "tel":
            return cls._parse_tel(text, rest)
        user: str | None = None
        if "@" in rest:
            user, _, rest = rest.partition("@")
            if not user:
                raise SipUriError(f"{text!r}: empty user part before '@'")
        rest, question, header_text = rest.partition("?")
        host_text, semi, param_text = rest.partition(";")
        if not host_text:
            raise SipUriError(f"{text!r}: no host")
        try:
            host, port = parse_host_port(host_text)
        except SipUriError as error:
            raise SipUriError(f"{text!r}: {error}") from None
        params = _parse_uri_params(param_text, text) if semi else ()
        headers = _parse_uri_headers(header_text, text) if question else ()
        return cls(scheme, user, host, port, params, headers)

    @classmethod
    def _parse_tel(cls, text: str, rest: str) -> SipUri:
        number, semi, param_text = rest.partition(";")
        if _TEL_NUMBER_RE.fullmatch(number) is None:
            raise SipUriError(f"{text!r}: {number!r} is not a telephone number (RFC 3966)")
        params = _parse_uri_params(param_text, text) if semi else ()
        return cls("tel", number, "", None, params)

    def param(self, name: str) -> str | None:
        """Value of a URI parameter (case-insensitive name); None if absent or valueless."""
        return get_param(self.params, name)

    def has_param(self, name: str) -> bool:
        return has_param(self.params, name)

    def with_params(self, **params: str | None) -> SipUri:
        """A copy with these parameters set (None makes a flag such as `lr`)."""
        for name, value in params.items():
            if not name or ";" in name or "=" in name or (value is not None and ";" in value):
                raise SipUriError(f"{name}={value!r}: not a valid URI parameter")
        return replace(self, params=set_params(self.params, params))

    def host_port(self, default_port: int = 5060) -> tuple[str, int]:
        """Host without IPv6 brackets and the port, for a socket address."""
        host = self.host[1:-1] if self.host.startswith("[") else self.host
        return host, self.port if self.port is not None else default_port

    def __str__(self) -> str:
        user = "" if self.user is None else f"{self.user}@"
        if self.scheme == "tel":
            user = self.user or ""
        port = "" if self.port is None else f":{self.port}"
        headers = "&".join(f"{name}={value}" for name, value in self.headers)
        return (
            f"{self.scheme}:{user}{self.host}{port}{format_params(self.params)}"
            f"{'?' + headers if headers else ''}"
        )


def _quote_display_name(name: str) -> str:
    escaped = "".join(
        f"\\{char}"
        if char in '"\\' or (ord(char) < 0x20 and char != "\t") or char == "\x7f"
        else char
        for char in name
    )
    return f'"{escaped}"'


@dataclass(frozen=True)
class NameAddr:
    """The value of From, To, Contact, Route, Record-Route, Refer-To: URI, name, header params."""

    uri: SipUri
    display_name: str | None = None
    params: Params = ()

    def __post_init__(self) -> None:
        if self.display_name is not None and (
            "\r" in self.display_name or "\n" in self.display_name
        ):
            raise SipUriError(f"{self.display_name!r}: CR or LF in a display name")
        for name, value in self.params:
            if not is_token(name) or (value is not None and ("\r" in value or "\n" in value)):
                raise SipUriError(f"{name}={value!r}: not a valid header parameter")

    @classmethod
    def parse(cls, text: str) -> NameAddr:
        """Parse `"Name" <uri>;params`, `Name <uri>`, `<uri>` or a bare `uri;params`.

        After a bare URI the parameters belong to the header, not the URI (RFC 3261 20.10).
        """
        value = text.strip(" \t")
        if not value:
            raise SipUriError(f"{text!r}: empty name-addr")
        if value.startswith('"'):
            display, end = read_quoted(value, 0)
            rest = value[end:].lstrip(" \t")
            if not rest.startswith("<"):
                raise SipUriError(f"{text!r}: a quoted display name must be followed by <URI>")
            return cls._parse_angle(text, display or None, rest)
        lt = value.find("<")
        if lt >= 0:
            display_text = value[:lt].strip(" \t")
            if display_text and _DISPLAY_TOKENS_RE.fullmatch(display_text) is None:
                raise SipUriError(
                    f"{text!r}: an unquoted display name must be tokens; quote {display_text!r}"
                )
            return cls._parse_angle(text, display_text or None, value[lt:])
        uri_text, semi, param_text = value.partition(";")
        uri_text = uri_text.rstrip(" \t")
        if "?" in uri_text or "," in uri_text:
            raise SipUriError(f"{text!r}: a URI with '?' or ',' must be enclosed in <>")
        return cls(SipUri.parse(uri_text), None, parse_header_params(semi + param_text))

    @classmethod
    def _parse_angle(cls, text: str, display: str | None, rest: str) -> NameAddr:
        gt = rest.find(">")
        if gt < 0:
            raise SipUriError(f"{text!r}: '<' without a closing '>'")
        uri = SipUri.parse(rest[1:gt])
        return cls(uri, display, parse_header_params(rest[gt + 1 :]))

    @property
    def tag(self) -> str | None:
        return get_param(self.params, "tag")

    def with_tag(self, tag: str) -> NameAddr:
        if not is_token(tag):
            raise SipUriError(f"{tag!r}: a tag must be a token")
        return replace(self, params=set_params(self.params, {"tag": tag}))

    def param(self, name: str) -> str | None:
        return get_param(self.params, name)

    def __str__(self) -> str:
        name = "" if self.display_name is None else f"{_quote_display_name(self.display_name)} "
        return f"{name}<{self.uri}>{format_params(self.params)}"

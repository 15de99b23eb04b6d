"""Who a transfer dials, and the allow-list that decides whether it may.

A target is data, not behaviour: every backend reads the same fields. The allow-list lives here,
beside the target, because the rule "never dial what the configuration does not allow" must be
checked before any backend sees a destination: an LLM can be talked into any number (toll fraud).

Patterns are matched against the destination a URI really reaches, as the SIP stack reads it
(`destination`: scheme, user, host, port), never against the text as written: matched as text,
``sip:900@evil.example;x=@pbx.example.com`` fits ``sip:*@pbx.example.com`` while the INVITE goes
to evil.example. So the one URI parser of the SIP stack is used here too (two parsers that
disagree are exactly that hole), and a target may not carry what could redirect it or add to
the request: URI headers (``?``), ``maddr`` or any parameter but ``transport`` and ``user``.
"""

from __future__ import annotations

import fnmatch
import re

from pydantic import BaseModel, ConfigDict, Field, field_validator

from warmtransfer.sip.uri import SipUri, SipUriError

_DIGITS = re.compile(r"^[0-9*#A-Dw,]*$")
_HEADER_NAME = re.compile(r"^X-[A-Za-z0-9-]{1,64}$")
_NUMBER = re.compile(r"^\+?[0-9]{1,32}$")
# Never in an identity URI: whitespace, controls and the characters that end a name-addr or
# start URI headers. The SIP stack checks again; refusing here names the field at load time.
_IDENTITY_FORBIDDEN = re.compile(r'[\x00-\x20\x7f-\x9f\u2028\u2029<>"?]')
#: URI parameters a target may carry: they choose how to reach the host, not which host.
TARGET_URI_PARAMS = ("transport", "user")
_TEL_NUMBER = re.compile(r"^\+?[0-9*#][0-9*#().-]*$")
_TEL_SEPARATORS = re.compile(r"[().-]")


def destination(uri: str) -> str:
    """Where `uri` really leads, in the form allow-list patterns are written in:
    ``sip:user@host:port`` with only the permitted parameters, or ``tel:+digits`` (visual
    separators dropped). Raises ValueError, saying why, for anything a target may not be."""
    if uri.startswith("tel:"):
        number = uri[4:]
        if not _TEL_NUMBER.fullmatch(number):
            raise ValueError(
                f"target URI {uri!r}: a tel: target is a number only (digits, optional +, "
                "no parameters)"
            )
        return "tel:" + _TEL_SEPARATORS.sub("", number)
    try:
        parsed = SipUri.parse(uri)
    except SipUriError as exc:
        raise ValueError(f"target URI {uri!r} is not a valid SIP URI: {exc}") from None
    if parsed.headers:
        raise ValueError(f"target URI {uri!r} carries URI headers ('?…'): not allowed in a target")
    for name, _ in parsed.params:
        if name.lower() not in TARGET_URI_PARAMS:
            allowed = ", ".join(TARGET_URI_PARAMS)
            raise ValueError(
                f"target URI {uri!r}: parameter {name!r} is not allowed in a target "
                f"(only {allowed})"
            )
    where = f"{parsed.user}@{parsed.host}" if parsed.user is not None else parsed.host
    if parsed.port is not None:
        where += f":{parsed.port}"
    params = "".join(f";{name}={value}" if value else f";{name}" for name, value in parsed.params)
    return f"{parsed.scheme}:{where}{params}"


class Target(BaseModel):
    """A human (or queue) to dial: a SIP or tel URI plus how to present the call to them."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    uri: str = Field(description="sip:, sips: or tel: URI of the human")
    display_name: str | None = Field(default=None, description="name for logs and events")
    caller_id: str | None = Field(
        default=None, description="SIP URI or number presented to the human (From)"
    )
    headers: dict[str, str] = Field(
        default_factory=dict, description="extra X- headers on the INVITE (sanitised)"
    )
    asserted_identity: str | None = Field(
        default=None,
        description="SIP/tel URI or number sent as P-Asserted-Identity (RFC 3325)",
    )
    diversion: str | None = Field(
        default=None,
        description="SIP/tel URI or number the call is forwarded from, as Diversion (RFC 5806)",
    )
    dtmf: str = Field(default="", description="digits sent after answer; w = 0.5 s pause")
    ring_timeout: float = Field(default=30.0, gt=0, le=600, description="seconds to ring")

    @field_validator("uri")
    @classmethod
    def _uri_scheme(cls, value: str) -> str:
        if not value.startswith(("sip:", "sips:", "tel:")):
            raise ValueError(f"target URI {value!r} must start with sip:, sips: or tel:")
        if any(ch in value for ch in '\r\n\0 <>"'):
            raise ValueError(f"target URI {value!r} contains a forbidden character")
        destination(value)  # headers, maddr, unparseable: refused here, naming the field
        return value

    @field_validator("asserted_identity", "diversion")
    @classmethod
    def _identity(cls, value: str | None) -> str | None:
        """A number or a URI, nothing else: these values end up in INVITE headers, and a
        configuration (or an LLM filling one in) must not be able to write header lines."""
        if value is None:
            return None
        if _NUMBER.fullmatch(value):
            return value
        if not value.startswith(("sip:", "sips:", "tel:")) or len(value) > 256:
            raise ValueError(f"identity {value!r} must be a number or a sip:, sips: or tel: URI")
        if _IDENTITY_FORBIDDEN.search(value):
            raise ValueError(f"identity {value!r} contains a forbidden character")
        return value

    @field_validator("dtmf")
    @classmethod
    def _dtmf_digits(cls, value: str) -> str:
        if not _DIGITS.match(value):
            raise ValueError(f"post-dial digits {value!r} may hold only 0-9 * # A-D and w or ,")
        return value

    @field_validator("headers")
    @classmethod
    def _header_names(cls, value: dict[str, str]) -> dict[str, str]:
        for name in value:
            if not _HEADER_NAME.match(name):
                raise ValueError(
                    f"extra header {name!r} must be an X- header of letters, digits and dashes"
                )
        return value

    @property
    def label(self) -> str:
        return self.display_name or self.uri


class DestinationNotAllowed(ValueError):
    """The target is outside the allow-list; nothing was dialled.

    `where` says which target of the plan it is (e.g. ``targets[1]``, ``on_failure.target``),
    so a plan with several targets points at the one to fix.
    """

    def __init__(self, uri: str, patterns: tuple[str, ...], where: str = "destination") -> None:
        self.uri = uri
        self.patterns = patterns
        self.where = where
        rule = ", ".join(patterns) if patterns else "(empty allow-list: nothing may be dialled)"
        super().__init__(f"{where} {uri!r} is not in the allow-list: {rule}")


class AllowList(BaseModel):
    """Glob patterns over target URIs (e.g. ``sip:*@pbx.example.com``, ``tel:+1555*``).

    Empty means nothing may be dialled: the safe default for a system an LLM can steer.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    patterns: tuple[str, ...] = ()

    def allows(self, uri: str) -> bool:
        """Whether the destination `uri` really reaches fits a pattern (see `destination`);
        a URI that is not a valid target is never allowed."""
        try:
            where = destination(uri)
        except ValueError:
            return False
        return any(fnmatch.fnmatchcase(where, pattern) for pattern in self.patterns)

    def check(self, target: Target, where: str = "destination") -> None:
        if not self.allows(target.uri):
            raise DestinationNotAllowed(target.uri, self.patterns, where)

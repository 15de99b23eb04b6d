"""Digest authentication for SIP (RFC 3261 §22, RFC 7616 hashes, RFC 8760 SHA-256 in SIP).

Why hand-written: there is no maintained sans-IO digest implementation on PyPI. HTTP clients
(requests, httpx) carry one each, but bound to their own request objects, without the server
side, and `httpx`'s ignores `-sess` and the nonce count rules a SIP registrar enforces. The
arithmetic is a page of hashing; what needs care is parsing hostile text and never looping.

Sans-IO like the rest of `warmtransfer.sip`: nothing here reads a clock or a socket. Time comes
in as `now` (seconds, any epoch, e.g. `time.time()`), randomness only where a cnonce or nonce is
made and can be passed in for tests.

Client side: `parse_challenge` reads one WWW-Authenticate / Proxy-Authenticate value into a
`Challenge`; `choose` picks the strongest challenge we can answer (SHA-256 before MD5);
`authorize` computes the Authorization / Proxy-Authorization value, counting `nc` per nonce in a
`NonceCounts`.

Server side: `DigestVerifier` issues stateless nonces (a timestamp and an HMAC under a secret
that only this process knows, so checking one needs no table) and verifies a client's
Authorization. The only state it keeps is a bounded set of (nonce, cnonce, nc) already accepted,
so a captured INVITE cannot be replayed inside the nonce's lifetime; its size is capped, so a
flood cannot grow it.

Every malformed input raises `DigestError` (or its subclass `DigestUnsupported` for a valid
challenge we decline to answer, such as qop=auth-int only) and nothing else.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
from collections import OrderedDict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from enum import StrEnum

__all__ = [
    "ALGORITHMS",
    "Authorization",
    "Challenge",
    "Credentials",
    "DigestError",
    "DigestUnsupported",
    "DigestVerifier",
    "NonceCounts",
    "Verdict",
    "authorize",
    "choose",
    "compute_response",
    "parse_authorization",
    "parse_challenge",
]

MAX_HEADER = 4096  # longer challenge or credentials text is refused before it is parsed

_HASHES: dict[str, Callable[[bytes], str]] = {
    "MD5": lambda data: hashlib.md5(data, usedforsecurity=False).hexdigest(),
    "SHA-256": lambda data: hashlib.sha256(data).hexdigest(),
}
# Strongest first: `choose` answers the first of these that a server offers (RFC 8760 §2.4).
ALGORITHMS = ("SHA-256-sess", "SHA-256", "MD5-sess", "MD5")
_TOKEN_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-.!%*_+`'~")


class DigestError(ValueError):
    """A challenge or Authorization broke the digest syntax; the message says which rule."""


class DigestUnsupported(DigestError):
    """A well-formed challenge that we will not answer (unknown algorithm, qop=auth-int only,
    a realm that is not the one our credentials are for)."""


@dataclass(frozen=True)
class Credentials:
    """A username and password; `realm` None means "answer whatever realm challenges us".

    Set `realm` when the password must only ever be used for one realm: a challenge from any
    other realm is then refused instead of answered.
    """

    username: str
    password: str = field(repr=False)
    realm: str | None = None

    def __post_init__(self) -> None:
        for name, value in (("username", self.username), ("password", self.password)):
            if any(ch in value for ch in "\r\n\x00"):
                raise ValueError(f"{name} contains CR, LF or NUL")


# -- auth-param lists --------------------------------------------------------------------------


def _split_scheme(text: str) -> tuple[str, str]:
    if len(text) > MAX_HEADER:
        raise DigestError(f"header of {len(text)} characters is over {MAX_HEADER}")
    text = text.strip(" \t")
    scheme, _, rest = text.partition(" ")
    if not scheme or not set(scheme) <= _TOKEN_CHARS:
        raise DigestError(f"{text[:60]!r} does not start with an auth scheme token")
    if scheme.lower() != "digest":
        raise DigestUnsupported(f"auth scheme {scheme[:30]!r} is not Digest")
    return scheme, rest


def _parse_params(text: str) -> dict[str, tuple[str, bool]]:
    """`name=value` pairs separated by commas; value is a token or a quoted string.

    Returns lower-cased names mapped to (value, was_quoted). Duplicates are an error: a second
    `nonce=` or `realm=` is either a bug or an attempt to confuse one side of the exchange.
    """
    params: dict[str, tuple[str, bool]] = {}
    i, n = 0, len(text)
    while True:
        while i < n and text[i] in " \t,":
            i += 1
        if i >= n:
            return params
        start = i
        while i < n and text[i] in _TOKEN_CHARS:
            i += 1
        name = text[start:i].lower()
        if not name:
            raise DigestError(f"expected a parameter name at {text[start : start + 20]!r}")
        while i < n and text[i] in " \t":
            i += 1
        if i >= n or text[i] != "=":
            raise DigestError(f"parameter {name!r} has no '=value'")
        i += 1
        while i < n and text[i] in " \t":
            i += 1
        if i < n and text[i] == '"':
            chars: list[str] = []
            i += 1
            while True:
                if i >= n:
                    raise DigestError(f"quoted value of {name!r} is never closed")
                ch = text[i]
                if ch == "\\":
                    if i + 1 >= n:
                        raise DigestError(f"quoted value of {name!r} ends in a backslash")
                    chars.append(text[i + 1])
                    i += 2
                    continue
                if ch == '"':
                    i += 1
                    break
                chars.append(ch)
                i += 1
            value, quoted = "".join(chars), True
        else:
            start = i
            while i < n and text[i] not in " \t,":
                i += 1
            value, quoted = text[start:i], False
            if not value or not set(value) <= _TOKEN_CHARS | {"/", ":", "=", "@", "?"}:
                raise DigestError(f"value of {name!r} is empty or not a token: {value[:30]!r}")
        if any(ord(ch) < 0x20 or ord(ch) == 0x7F for ch in value):
            raise DigestError(f"value of {name!r} contains control characters")
        if name in params:
            raise DigestError(f"parameter {name!r} appears twice")
        params[name] = (value, quoted)
        while i < n and text[i] in " \t":
            i += 1
        if i < n and text[i] != ",":
            raise DigestError(f"expected ',' after parameter {name!r}")


def _quote(value: str) -> str:
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _algorithm(params: dict[str, tuple[str, bool]]) -> str:
    raw = params.get("algorithm", ("MD5", False))[0]
    for known in ALGORITHMS:
        if raw.upper() == known.upper():
            return known
    return raw  # kept as given: `choose` refuses it with a clear message


# -- challenges (client side) ------------------------------------------------------------------


@dataclass(frozen=True)
class Challenge:
    """One Digest challenge from a 401 (WWW-Authenticate) or 407 (Proxy-Authenticate)."""

    realm: str
    nonce: str
    opaque: str | None = None
    algorithm: str = "MD5"
    qop: tuple[str, ...] = ()  # empty: RFC 2069 style, no qop (still common in SIP)
    stale: bool = False

    def __str__(self) -> str:
        parts = [f"realm={_quote(self.realm)}", f"nonce={_quote(self.nonce)}"]
        if self.opaque is not None:
            parts.append(f"opaque={_quote(self.opaque)}")
        parts.append(f"algorithm={self.algorithm}")
        if self.qop:
            parts.append(f"qop={_quote(','.join(self.qop))}")
        if self.stale:
            parts.append("stale=TRUE")
        return "Digest " + ", ".join(parts)

    @property
    def supported(self) -> bool:
        return self.algorithm in ALGORITHMS and (not self.qop or "auth" in self.qop)


def parse_challenge(text: str) -> Challenge:
    """Parse a WWW-Authenticate or Proxy-Authenticate value; DigestError if malformed.

    Parsing does not judge: a challenge with an unknown algorithm or qop=auth-int only parses,
    and `authorize` / `choose` refuse it with `DigestUnsupported`.
    """
    _, rest = _split_scheme(text)
    params = _parse_params(rest)
    for required in ("realm", "nonce"):
        if required not in params:
            raise DigestError(f"Digest challenge has no {required}")
    qop_text = params.get("qop", ("", False))[0]
    qop = tuple(q.strip(" \t").lower() for q in qop_text.split(",") if q.strip(" \t"))
    stale = params.get("stale", ("false", False))[0].lower() == "true"
    opaque = params["opaque"][0] if "opaque" in params else None
    return Challenge(
        realm=params["realm"][0],
        nonce=params["nonce"][0],
        opaque=opaque,
        algorithm=_algorithm(params),
        qop=qop,
        stale=stale,
    )


def choose(values: Iterable[str], credentials: Credentials | None = None) -> Challenge:
    """The strongest challenge among header `values` that we can answer.

    Malformed values among good ones are skipped (a server may add a scheme we do not know);
    if none can be answered the error names why, e.g. "qop auth-int is not supported".
    """
    candidates: list[Challenge] = []
    problems: list[str] = []
    for value in values:
        try:
            challenge = parse_challenge(value)
        except DigestError as exc:
            problems.append(str(exc))
            continue
        try:
            _check_answerable(challenge, credentials)
        except DigestUnsupported as exc:
            problems.append(str(exc))
            continue
        candidates.append(challenge)
    if not candidates:
        detail = "; ".join(problems) or "no challenge header"
        raise DigestUnsupported(f"no Digest challenge we can answer: {detail}")
    return min(candidates, key=lambda c: ALGORITHMS.index(c.algorithm))


def _check_answerable(challenge: Challenge, credentials: Credentials | None) -> None:
    if challenge.algorithm not in ALGORITHMS:
        raise DigestUnsupported(f"algorithm {challenge.algorithm[:30]!r} is not supported")
    if challenge.qop and "auth" not in challenge.qop:
        raise DigestUnsupported(
            f"qop {','.join(challenge.qop)[:40]} is not supported (only qop=auth)"
        )
    if credentials is not None and credentials.realm not in (None, challenge.realm):
        raise DigestUnsupported(
            f"realm {challenge.realm[:60]!r} is not {credentials.realm!r}, "
            "the realm our credentials are for"
        )


# -- responses ---------------------------------------------------------------------------------


def compute_response(
    *,
    algorithm: str,
    username: str,
    realm: str,
    password: str,
    method: str,
    uri: str,
    nonce: str,
    qop: str | None,
    nc: str | None = None,
    cnonce: str | None = None,
) -> str:
    """The `response=` value (RFC 7616 §3.4.1, RFC 2617 §3.2.2; RFC 2069 when qop is None)."""
    base = algorithm.removesuffix("-sess")
    if base not in _HASHES or algorithm not in ALGORITHMS:
        raise DigestUnsupported(f"algorithm {algorithm[:30]!r} is not supported")
    h = _HASHES[base]
    ha1 = h(f"{username}:{realm}:{password}".encode())
    if algorithm.endswith("-sess"):
        if cnonce is None:
            raise DigestError(f"{algorithm} needs a cnonce")
        ha1 = h(f"{ha1}:{nonce}:{cnonce}".encode())
    ha2 = h(f"{method}:{uri}".encode())
    if qop is None:
        return h(f"{ha1}:{nonce}:{ha2}".encode())
    if qop != "auth":
        raise DigestUnsupported(f"qop {qop[:20]!r} is not supported (only qop=auth)")
    if nc is None or cnonce is None:
        raise DigestError("qop=auth needs nc and cnonce")
    return h(f"{ha1}:{nonce}:{nc}:{cnonce}:{qop}:{ha2}".encode())


@dataclass(frozen=True)
class Authorization:
    """The credentials a client sends (Authorization / Proxy-Authorization, RFC 3261 §22.4)."""

    username: str
    realm: str
    nonce: str
    uri: str
    response: str
    algorithm: str = "MD5"
    cnonce: str | None = None
    opaque: str | None = None
    qop: str | None = None
    nc: str | None = None

    def __str__(self) -> str:
        parts = [
            f"username={_quote(self.username)}",
            f"realm={_quote(self.realm)}",
            f"nonce={_quote(self.nonce)}",
            f"uri={_quote(self.uri)}",
            f"response={_quote(self.response)}",
            f"algorithm={self.algorithm}",
        ]
        if self.cnonce is not None:
            parts.append(f"cnonce={_quote(self.cnonce)}")
        if self.opaque is not None:
            parts.append(f"opaque={_quote(self.opaque)}")
        if self.qop is not None:
            parts.append(f"qop={self.qop}")
        if self.nc is not None:
            parts.append(f"nc={self.nc}")
        return "Digest " + ", ".join(parts)


def parse_authorization(text: str) -> Authorization:
    """Parse an Authorization / Proxy-Authorization value; DigestError if malformed."""
    _, rest = _split_scheme(text)
    params = _parse_params(rest)
    for required in ("username", "realm", "nonce", "uri", "response"):
        if required not in params:
            raise DigestError(f"Digest credentials have no {required}")
    qop = params["qop"][0].lower() if "qop" in params else None
    nc = params["nc"][0] if "nc" in params else None
    cnonce = params["cnonce"][0] if "cnonce" in params else None
    if qop is not None and (nc is None or cnonce is None):
        raise DigestError("Digest credentials with qop need nc and cnonce")
    if nc is not None and (len(nc) != 8 or not all(c in "0123456789abcdefABCDEF" for c in nc)):
        raise DigestError(f"nc {nc[:20]!r} is not 8 hex digits")
    return Authorization(
        username=params["username"][0],
        realm=params["realm"][0],
        nonce=params["nonce"][0],
        uri=params["uri"][0],
        response=params["response"][0].lower(),
        algorithm=_algorithm(params),
        cnonce=cnonce,
        opaque=params["opaque"][0] if "opaque" in params else None,
        qop=qop,
        nc=nc,
    )


class NonceCounts:
    """`nc` per nonce (RFC 7616 §3.4): 1 for a fresh nonce, one more each time it is reused.

    Bounded: only the most recent `limit` nonces are remembered (older ones are long expired).
    """

    def __init__(self, limit: int = 64) -> None:
        self.limit = limit
        self._counts: OrderedDict[str, int] = OrderedDict()

    def next(self, nonce: str) -> int:
        count = self._counts.pop(nonce, 0) + 1
        self._counts[nonce] = count
        while len(self._counts) > self.limit:
            self._counts.popitem(last=False)
        return count


def authorize(
    challenge: Challenge,
    credentials: Credentials,
    method: str,
    uri: str,
    *,
    counts: NonceCounts | None = None,
    cnonce: str | None = None,
) -> Authorization:
    """Answer `challenge` for a request `method uri` (uri as in the Request-URI).

    `counts` keeps `nc` growing when a nonce is reused; `cnonce` is random unless given.
    """
    _check_answerable(challenge, credentials)
    qop = "auth" if challenge.qop else None
    sess = challenge.algorithm.endswith("-sess")
    needs_cnonce = qop is not None or sess
    cnonce = (cnonce or secrets.token_hex(16)) if needs_cnonce else None
    nc = f"{(counts or NonceCounts()).next(challenge.nonce):08x}" if qop else None
    response = compute_response(
        algorithm=challenge.algorithm,
        username=credentials.username,
        realm=challenge.realm,
        password=credentials.password,
        method=method,
        uri=uri,
        nonce=challenge.nonce,
        qop=qop,
        nc=nc,
        cnonce=cnonce,
    )
    return Authorization(
        username=credentials.username,
        realm=challenge.realm,
        nonce=challenge.nonce,
        uri=uri,
        response=response,
        algorithm=challenge.algorithm,
        cnonce=cnonce,
        opaque=challenge.opaque,
        qop=qop,
        nc=nc,
    )


# -- server side -------------------------------------------------------------------------------


class Verdict(StrEnum):
    """What `DigestVerifier.verify` concluded."""

    OK = "ok"
    STALE = "stale"  # right password, expired nonce: re-challenge with stale=true
    INVALID = "invalid"  # wrong password, forged or foreign nonce, replay, other realm


class DigestVerifier:
    """Challenges and verifies clients without a table of nonces (see the module docstring).

    A nonce is `<issue time, hex>.<random>.<HMAC-SHA-256 of both, 128 bits>`. It is accepted
    for `lifetime` seconds; after that a correct response gets `Verdict.STALE` so the client
    retries with the new nonce without asking its user again (RFC 7616 §3.3 `stale`).
    """

    def __init__(
        self,
        realm: str,
        users: Sequence[Credentials],
        *,
        algorithms: Sequence[str] = ("SHA-256", "MD5"),
        lifetime: float = 300.0,
        secret: bytes | None = None,
        replay_limit: int = 4096,
    ) -> None:
        for algorithm in algorithms:
            if algorithm not in ALGORITHMS:
                raise ValueError(f"algorithm {algorithm!r} is not one of {ALGORITHMS}")
        self.realm = realm
        self.users = {c.username: c for c in users if c.realm in (None, realm)}
        self.algorithms = tuple(algorithms)
        self.lifetime = lifetime
        self._secret = secret or secrets.token_bytes(32)
        self._seen: OrderedDict[tuple[str, str, str], None] = OrderedDict()
        self._replay_limit = replay_limit

    def _mac(self, stamp: str, salt: str) -> str:
        digest = hmac.new(self._secret, f"{stamp}.{salt}".encode(), hashlib.sha256).digest()
        return base64.urlsafe_b64encode(digest[:16]).decode().rstrip("=")

    def nonce(self, now: float) -> str:
        stamp = f"{int(now):x}"
        salt = secrets.token_hex(6)
        return f"{stamp}.{salt}.{self._mac(stamp, salt)}"

    def nonce_state(self, nonce: str, now: float) -> Verdict:
        """Verdict.OK for a nonce we issued within `lifetime`, STALE if older, else INVALID."""
        parts = nonce.split(".")
        if len(parts) != 3 or len(parts[0]) > 16:
            return Verdict.INVALID
        stamp, salt, mac = parts
        if not hmac.compare_digest(mac.encode(), self._mac(stamp, salt).encode()):
            return Verdict.INVALID
        try:
            issued = int(stamp, 16)
        except ValueError:
            return Verdict.INVALID
        if issued > now + 5:  # from the future: not one of ours, whatever the MAC says
            return Verdict.INVALID
        return Verdict.OK if now - issued <= self.lifetime else Verdict.STALE

    def challenges(self, now: float, *, stale: bool = False) -> list[Challenge]:
        """One challenge per algorithm, strongest first (RFC 8760 §2.4), sharing one nonce."""
        nonce = self.nonce(now)
        return [
            Challenge(self.realm, nonce, algorithm=a, qop=("auth",), stale=stale)
            for a in self.algorithms
        ]

    def verify(self, credentials: Authorization, method: str, now: float) -> Verdict:
        """Check one Authorization for a request with this method."""
        user = self.users.get(credentials.username)
        if user is None or credentials.realm != self.realm:
            return Verdict.INVALID
        if credentials.algorithm not in self.algorithms or credentials.qop != "auth":
            return Verdict.INVALID  # we only ever offer qop=auth; an RFC 2069 answer is a downgrade
        state = self.nonce_state(credentials.nonce, now)
        if state == Verdict.INVALID:
            return state
        try:
            expected = compute_response(
                algorithm=credentials.algorithm,
                username=user.username,
                realm=self.realm,
                password=user.password,
                method=method,
                uri=credentials.uri,
                nonce=credentials.nonce,
                qop=credentials.qop,
                nc=credentials.nc,
                cnonce=credentials.cnonce,
            )
        except DigestError:
            return Verdict.INVALID
        if not hmac.compare_digest(expected.encode(), credentials.response.encode()):
            return Verdict.INVALID
        if state == Verdict.STALE:
            return state
        key = (credentials.nonce, credentials.cnonce or "", (credentials.nc or "").lower())
        if key in self._seen:
            return Verdict.INVALID  # the very same answer again: a replay
        self._seen[key] = None
        while len(self._seen) > self._replay_limit:
            self._seen.popitem(last=False)
        return Verdict.OK

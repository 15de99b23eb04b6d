"""An HTTP API's base URL, split into what may be shown and what may not.

Why: users write credentials into base URLs (``https://user:key@gateway/v1``), httpx logs
every request's full URL at INFO, and our errors and reprs quote the base URL; so a URL that
carries credentials would print them. Split once, when a client is made: the URL without
``user:password@`` (which becomes basic auth, as httpx itself would have sent it) is all that is
ever logged or shown. A query or fragment cannot be part of an API root (paths are appended
after it), so it is reported as an error, never shown.
"""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import unquote, urlsplit, urlunsplit

import httpx

__all__ = ["QUERY_PROBLEM", "BaseUrl"]

#: What to tell a user whose base URL has a query or fragment.
QUERY_PROBLEM = "base_url must not carry a query or fragment (?…); put the key in api_key"


@dataclass(frozen=True)
class BaseUrl:
    url: str  # scheme://host[:port]/path, nothing secret
    auth: httpx.BasicAuth | None = None  # from user:password@
    has_query: bool = False  # a ?query or #fragment was left out

    @classmethod
    def split(cls, raw: str) -> BaseUrl:
        text = raw.strip().rstrip("/")
        try:
            parts = urlsplit(text)
        except ValueError:  # a port that is not a number: the request reports it
            return cls(text)
        if not parts.scheme:
            return cls(text)
        userinfo, _, host = parts.netloc.rpartition("@")
        auth = None
        if userinfo:
            user, _, password = userinfo.partition(":")
            auth = httpx.BasicAuth(unquote(user), unquote(password))
        url = urlunsplit((parts.scheme, host, parts.path, "", "")).rstrip("/")
        return cls(url, auth, bool(parts.query or parts.fragment))

    @property
    def request_auth(self) -> httpx.BasicAuth | httpx._client.UseClientDefault:
        """httpx's `auth=` for a request: the basic auth, else the client's default."""
        return self.auth if self.auth is not None else httpx.USE_CLIENT_DEFAULT

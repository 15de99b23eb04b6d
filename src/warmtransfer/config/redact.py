"""URLs as they may be shown: where they lead, never what they carry.

A webhook URL is often a credential in itself (a Slack-style ``/services/T…/B…/secret`` path, a
``?token=`` query, ``user:pass@``), and so may an API's base URL be. Anything that shows one (the
`check-config` summary, a log line, an error quoting an HTTP client's message) shows
`redact_url`: scheme, host and port, and ``/…`` where something was left out. That is enough to
tell which receiver is meant and why it fails, and leaks nothing a log reader could replay.
"""

from __future__ import annotations

import re
from urllib.parse import urlsplit

__all__ = ["redact_url", "redact_urls_in"]

#: Whatever looks like a URL inside a longer text (an exception's message).
_URL_IN_TEXT = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://[^\s'\"<>]+")


def redact_url(url: str) -> str:
    """``scheme://host[:port]``, with ``/…`` when it had more (user, path, query, fragment)."""
    try:
        parts = urlsplit(url.strip())
        host, port = parts.hostname, parts.port
    except ValueError:  # a port that is not a number, a broken IPv6 literal
        return "(an unreadable URL)"
    if not parts.scheme or not host:
        return "(not a URL)"
    shown = f"{parts.scheme}://{f'[{host}]' if ':' in host else host}"
    if port is not None:
        shown += f":{port}"
    if parts.netloc.rpartition("@")[0] or parts.path.strip("/") or parts.query or parts.fragment:
        shown += "/…"
    return shown


def redact_urls_in(text: str) -> str:
    """`text` with every URL in it redacted (an HTTP client's error often quotes the URL)."""
    return _URL_IN_TEXT.sub(lambda found: redact_url(found.group()), text)

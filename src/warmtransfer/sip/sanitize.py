"""Text that reaches a SIP header from outside (caller, model, config) goes through here.

Header injection is the SIP twin of HTTP response splitting: a CR/LF in a display name or an
X- header value lets a caller or an LLM write arbitrary headers (or a body) into our INVITE.
"""

from __future__ import annotations

import re

_TOKEN = re.compile(r"[A-Za-z0-9.!%*_+`'~-]+")
# C0 and C1 controls, DEL, and the Unicode line and paragraph separators: a peer that splits
# lines the way str.splitlines() does must not see a line break either.
_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029]")
MAX_HEADER_VALUE = 256


class HeaderNameError(ValueError):
    pass


def header_value(value: str, max_length: int = MAX_HEADER_VALUE) -> str:
    """Control characters (CR and LF among them) become spaces; the result is length-capped."""
    cleaned = _CONTROL.sub(" ", value).strip()
    return cleaned[:max_length]


def header_name(name: str) -> str:
    if not _TOKEN.fullmatch(name) or len(name) > 64:
        raise HeaderNameError(f"{name!r} is not a valid SIP header name (RFC 3261 token)")
    return name


def display_name(value: str, max_length: int = 64) -> str:
    """For a quoted display name: no control characters, quotes and backslashes dropped."""
    return header_value(value, max_length).replace('"', "").replace("\\", "")

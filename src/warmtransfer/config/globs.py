"""Whether one allow-list pattern is inside another: a plan may narrow the global allow-list,
never widen it, and that must be decided from the patterns alone, at load.

`covers(outer, inner)` is True only when every URI that `inner` matches is matched by `outer`
(fnmatch semantics, case-sensitive, as `AllowList` matches). It is sound, not complete: it
answers True only when it can show the inclusion token by token (an `*` of `outer` may absorb
any run of `inner`, wildcards included; a `?` of `outer` one single-character token; a `[set]`
of `outer` a literal in the set or the same set). A pattern it cannot prove inside is refused,
and the message says to write the plan's pattern as a narrowing of a global one; refusing a
safe but unusual pattern costs an edit, accepting an unsafe one could dial anything.
"""

from __future__ import annotations

import fnmatch
from functools import cache

__all__ = ["covers"]

_Token = tuple[str, str]  # ("lit", char) | ("one", "?") | ("star", "*") | ("set", "[...]")


def _tokens(pattern: str) -> tuple[_Token, ...]:
    """Split as fnmatch reads a pattern: a `[` without its `]` is a literal `[`."""
    tokens: list[_Token] = []
    index, size = 0, len(pattern)
    while index < size:
        char = pattern[index]
        if char == "*":
            if not tokens or tokens[-1][0] != "star":  # ** is *
                tokens.append(("star", "*"))
        elif char == "?":
            tokens.append(("one", "?"))
        elif char == "[":
            end = index + 1
            if end < size and pattern[end] == "!":
                end += 1
            if end < size and pattern[end] == "]":
                end += 1
            while end < size and pattern[end] != "]":
                end += 1
            if end >= size:
                tokens.append(("lit", "["))
            else:
                tokens.append(("set", pattern[index : end + 1]))
                index = end
        else:
            tokens.append(("lit", char))
        index += 1
    return tuple(tokens)


def covers(outer: str, inner: str) -> bool:
    """True when every string matching `inner` matches `outer` (see the module docstring)."""
    big, small = _tokens(outer), _tokens(inner)

    @cache
    def match(i: int, j: int) -> bool:
        if i == len(big):
            return j == len(small)
        kind, text = big[i]
        if kind == "star":
            return match(i + 1, j) or (j < len(small) and match(i, j + 1))
        if j == len(small):
            return False
        other_kind, other = small[j]
        if kind == "one":
            fits = other_kind != "star"
        elif kind == "lit":
            fits = other_kind == "lit" and other == text
        else:  # a set: a literal in it, or the very same set
            fits = (other_kind == "lit" and fnmatch.fnmatchcase(other, text)) or (
                other_kind == "set" and other == text
            )
        return fits and match(i + 1, j + 1)

    return match(0, 0)

"""Where each key of a TOML document is written: key path -> line number.

Why a scanner of our own: the stdlib `tomllib` parses correctly and fast but keeps no positions,
and neither does any maintained TOML library in a form we can use (tomlkit keeps the text for
round-trips, but exposes no line numbers for keys or values; tomli and rtoml none at all). An
error that names the line is what makes a config error quick to fix, so this module walks the
text once more, after `tomllib` has accepted it, and records the line of every table header,
key and array element. It reads only structure (keys, brackets, strings, comments), never
converts a value, and gives up quietly on anything it does not follow: a missing position
costs a line number in a message, never a wrong answer, since `tomllib` is what is believed.

Paths are tuples of keys and array indices, as a parsed document is walked:
``("sip", "listen", 0, "transport")``. `[[plans.x.targets]]` elements are numbered as
`tomllib` numbers them.
"""

from __future__ import annotations

import contextlib
import tomllib

__all__ = ["KeyPath", "key_lines", "line_of"]

KeyPath = tuple[str | int, ...]

_BARE = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_-")


class _Stop(Exception):
    """The text is not what the scanner follows; keep what was recorded so far."""


class _Scanner:
    def __init__(self, text: str) -> None:
        self.text = text
        self.pos = 0
        self.line = 1
        self.lines: dict[KeyPath, int] = {}

    # -- characters ---------------------------------------------------------------------------

    def peek(self, count: int = 1) -> str:
        return self.text[self.pos : self.pos + count]

    def advance(self, count: int = 1) -> None:
        self.line += self.text.count("\n", self.pos, self.pos + count)
        self.pos += count

    def at_end(self) -> bool:
        return self.pos >= len(self.text)

    def skip_blank(self, *, newlines: bool) -> None:
        """Whitespace and comments (and newlines, where the grammar allows them)."""
        while not self.at_end():
            char = self.peek()
            if char in " \t\r" or (newlines and char == "\n"):
                self.advance()
            elif char == "#":
                end = self.text.find("\n", self.pos)
                self.advance((len(self.text) if end < 0 else end) - self.pos)
            else:
                return

    def expect(self, token: str) -> None:
        if self.peek(len(token)) != token:
            raise _Stop
        self.advance(len(token))

    # -- keys ---------------------------------------------------------------------------------

    def key(self) -> tuple[str, ...]:
        """A dotted key; quoted parts are decoded by tomllib itself, so escapes are right."""
        parts: list[str] = []
        while True:
            self.skip_blank(newlines=False)
            char = self.peek()
            if char in "\"'":
                start = self.pos
                self.string()
                parts.append(tomllib.loads(f"k = {self.text[start : self.pos]}")["k"])
            else:
                start = self.pos
                while not self.at_end() and self.peek() in _BARE:
                    self.advance()
                if self.pos == start:
                    raise _Stop
                parts.append(self.text[start : self.pos])
            self.skip_blank(newlines=False)
            if self.peek() != ".":
                return tuple(parts)
            self.advance()

    def record(self, path: KeyPath, line: int) -> None:
        """The line of `path`, and of each enclosing table not yet placed."""
        for end in range(1, len(path) + 1):
            self.lines.setdefault(path[:end], line)

    # -- values -------------------------------------------------------------------------------

    def string(self) -> None:
        for quote in ('"""', "'''"):
            if self.peek(3) == quote:
                self.advance(3)
                end = self._closing(quote, escapes=quote == '"""')
                # A closing delimiter may be followed by up to two more quotes of the content.
                while self.text.startswith(quote[0], end + 3):
                    end += 1
                self.advance(end + 3 - self.pos)
                return
        quote = self.peek()
        self.advance()
        end = self._closing(quote, escapes=quote == '"')
        self.advance(end + 1 - self.pos)

    def _closing(self, quote: str, *, escapes: bool) -> int:
        index = self.pos
        while True:
            found = self.text.find(quote, index)
            if found < 0:
                raise _Stop
            backslashes = 0
            while escapes and self.text[found - 1 - backslashes] == "\\":
                backslashes += 1
            if backslashes % 2 == 0:
                return found
            index = found + 1

    def value(self, path: KeyPath) -> None:
        char = self.peek()
        if char in "\"'":
            self.string()
        elif char == "[":
            self.advance()
            index = 0
            while True:
                self.skip_blank(newlines=True)
                if self.peek() == "]":
                    self.advance()
                    return
                self.record((*path, index), self.line)
                self.value((*path, index))
                index += 1
                self.skip_blank(newlines=True)
                if self.peek() == ",":
                    self.advance()
                elif self.peek() != "]":
                    raise _Stop
        elif char == "{":
            self.advance()
            while True:
                self.skip_blank(newlines=True)
                if self.peek() == "}":
                    self.advance()
                    return
                line = self.line
                keys = self.key()
                self.record((*path, *keys), line)
                self.expect("=")
                self.skip_blank(newlines=False)
                self.value((*path, *keys))
                self.skip_blank(newlines=True)
                if self.peek() == ",":
                    self.advance()
                elif self.peek() != "}":
                    raise _Stop
        else:  # number, boolean, date-time: up to what ends a value
            while not self.at_end() and self.peek() not in ",]}\n#":
                self.advance()

    # -- document -----------------------------------------------------------------------------

    def document(self) -> None:
        table: KeyPath = ()
        current: dict[tuple[str, ...], int] = {}  # array of tables (keys only) -> its last index
        counts: dict[KeyPath, int] = {}  # array of tables (full path) -> elements so far
        while True:
            self.skip_blank(newlines=True)
            if self.at_end():
                return
            line = self.line
            if self.peek(2) == "[[":
                self.advance(2)
                keys = self.key()
                self.expect("]]")
                parent = self._resolve(keys[:-1], current)
                array = (*parent, keys[-1])
                index = counts.get(array, 0)
                counts[array] = index + 1
                current[keys] = index
                table = (*array, index)
                self.record(table, line)
            elif self.peek() == "[":
                self.advance()
                keys = self.key()
                self.expect("]")
                table = self._resolve(keys, current)
                self.record(table, line)
            else:
                keys = self.key()
                self.record((*table, *keys), line)
                self.expect("=")
                self.skip_blank(newlines=False)
                self.value((*table, *keys))

    @staticmethod
    def _resolve(keys: tuple[str, ...], current: dict[tuple[str, ...], int]) -> KeyPath:
        """A header's keys as a path: an array of tables stands for its last element."""
        path: list[str | int] = []
        for end in range(1, len(keys) + 1):
            path.append(keys[end - 1])
            if keys[:end] in current:
                path.append(current[keys[:end]])
        return tuple(path)


def key_lines(text: str) -> dict[KeyPath, int]:
    """The line (1-based) where each key path of `text` is written; partial if the scanner
    meets something it does not follow (the text is assumed to be valid TOML)."""
    scanner = _Scanner(text)
    with contextlib.suppress(_Stop, IndexError, tomllib.TOMLDecodeError):
        scanner.document()
    return scanner.lines


def line_of(lines: dict[KeyPath, int], path: KeyPath) -> int | None:
    """The line of `path`, or of the nearest enclosing key that is written (a missing key is
    reported at its table); None for the top level."""
    for end in range(len(path), 0, -1):
        line = lines.get(path[:end])
        if line is not None:
            return line
    return None

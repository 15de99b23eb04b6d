"""What a config error says: the file, the line, the key path, what is wrong and how to fix it.

One shape for every problem (a TOML syntax error, a value pydantic refuses, a cross-check such as
a target outside the allow-list), so that the operator reads one kind of line:

    warmtransfer.toml:12: sip.listen[0].transport: 'ws' is not supported; use udp, tcp or tls

No message ever holds a secret's value: pydantic's own error text (which quotes the input) is
never shown, only rewritten, and secrets are `SecretStr` everywhere past the loader.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from warmtransfer.config.positions import KeyPath

__all__ = ["ConfigError", "Located", "Problem", "dotted"]

_BARE = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_-")


def dotted(path: KeyPath) -> str:
    """A key path as it reads in the file: ``sip.listen[0].transport``, ``plans."a b".allow``."""
    text = ""
    for part in path:
        if isinstance(part, int):
            text += f"[{part}]"
        else:
            name = part if part and set(part) <= _BARE else json.dumps(part)
            text += f".{name}" if text else name
    return text or "(top level)"


@dataclass(frozen=True)
class Problem:
    """One thing wrong with a config, where it is (a key path), and what to do about it."""

    path: KeyPath
    problem: str
    fix: str | None = None

    @property
    def text(self) -> str:
        return f"{self.problem}; {self.fix}" if self.fix else self.problem

    def __str__(self) -> str:
        return f"{dotted(self.path)}: {self.text}"


@dataclass(frozen=True)
class Located:
    """A problem placed in a file: ``file:line: key: problem; fix``."""

    file: str
    line: int | None
    problem: Problem

    @property
    def key(self) -> str:
        return dotted(self.problem.path)

    def __str__(self) -> str:
        where = f"{self.file}:{self.line}" if self.line is not None else self.file
        if not self.problem.path:
            return f"{where}: {self.problem.text}"
        return f"{where}: {self.key}: {self.problem.text}"


class ConfigError(ValueError):
    """A config file that cannot be used; `problems` lists every one found, in file order
    where the line is known, and the message has one line per problem."""

    def __init__(self, problems: Sequence[Located]) -> None:
        ordered = sorted(problems, key=lambda p: p.line if p.line is not None else 0)
        self.problems: tuple[Located, ...] = tuple(ordered)
        super().__init__("\n".join(str(problem) for problem in self.problems))

    @classmethod
    def single(
        cls, file: str | Path, problem: str, fix: str | None = None, *, line: int | None = None
    ) -> ConfigError:
        return cls([Located(str(file), line, Problem((), problem, fix))])

"""The demo's live timeline: every SIP message, transfer state change and spoken line, with the
time since the demo started, printed as it happens and saved as JSON afterwards.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

from rich.console import Console
from rich.text import Text

STYLES = {
    "sip": "dim cyan",
    "transfer": "bold magenta",
    "caller": "green",
    "human": "yellow",
    "ai": "blue",
    "media": "dim",
}


@dataclass(frozen=True)
class Entry:
    t: float
    source: str
    text: str


class Timeline:
    def __init__(self, start: float, console: Console | None = None) -> None:
        self.start = start
        self.console = console
        self.entries: list[Entry] = []

    def add(self, at: float, source: str, text: str) -> None:
        entry = Entry(round(at - self.start, 4), source, text)
        self.entries.append(entry)
        if self.console is not None:
            line = Text(f"{entry.t:8.3f}s  ", style="dim")
            line.append(f"{source:<9}", style=STYLES.get(source, ""))
            line.append(text)
            self.console.print(line, highlight=False)

    def save(self, path: Path) -> Path:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps([asdict(e) for e in self.entries], indent=1))
        return path

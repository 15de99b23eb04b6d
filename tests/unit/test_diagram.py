"""The committed state diagram is the one the table generates now."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from warmtransfer.transfer import diagram
from warmtransfer.transfer.diagram import render_markdown, render_mermaid, render_table
from warmtransfer.transfer.states import EVENT_TYPES, TRANSITIONS, State

DOC = Path(__file__).resolve().parents[2] / "docs" / "state-diagram.md"


def test_committed_diagram_matches_the_table() -> None:
    assert DOC.read_text(encoding="utf-8") == render_markdown(), (
        "docs/state-diagram.md is stale: run "
        "`python -m warmtransfer.transfer.diagram > docs/state-diagram.md`"
    )


def test_every_transition_is_drawn() -> None:
    mermaid = render_mermaid()
    assert mermaid.startswith("stateDiagram-v2\n    [*] --> IDLE\n")
    edges = {}
    for line in mermaid.splitlines():
        if "-->" in line and ":" in line:
            arrow, labels = line.split(":", 1)
            before, after = (part.strip() for part in arrow.split("-->"))
            for name in labels.split("/"):
                edges[(before, name.strip())] = after
    expected = {(s.name, t.__name__): after.name for (s, t), after in TRANSITIONS.items()}
    assert edges == expected
    for terminal in ("COMPLETED", "FAILED", "DISMISSED", "ABANDONED"):
        assert f"    {terminal} --> [*]" in mermaid


def test_table_has_a_cell_per_state_and_event() -> None:
    rows = render_table().splitlines()
    assert len(rows) == 2 + len(State)
    header = [cell.strip() for cell in rows[0].strip("|").split("|")]
    assert header == ["state", *(t.__name__ for t in EVENT_TYPES)]
    filled = sum(1 for row in rows[2:] for cell in row.strip("|").split("|")[1:] if cell.strip())
    assert filled == len(TRANSITIONS)


def test_module_prints_the_document() -> None:
    src = str(Path(diagram.__file__).resolve().parents[2])  # works installed or not
    path = os.pathsep.join(filter(None, [src, os.environ.get("PYTHONPATH")]))
    result = subprocess.run(
        [sys.executable, "-m", "warmtransfer.transfer.diagram"],
        capture_output=True,
        text=True,
        check=True,
        env={**os.environ, "PYTHONPATH": path},
    )
    assert result.stdout == render_markdown()

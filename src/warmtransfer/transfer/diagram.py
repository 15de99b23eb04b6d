"""Generate docs/state-diagram.md from the transition table, so the picture cannot drift.

    python -m warmtransfer.transfer.diagram > docs/state-diagram.md

A unit test checks that the committed file equals what this module renders now: change the
table, regenerate, commit both.
"""

from __future__ import annotations

import sys
from collections import defaultdict
from collections.abc import Mapping

from warmtransfer.transfer.states import (
    EVENT_TYPES,
    TERMINAL_STATES,
    TRANSITIONS,
    Event,
    State,
)


def _edges(
    table: Mapping[tuple[State, type[Event]], State],
) -> list[tuple[State, State, list[str]]]:
    """(from, to, event names), one edge per pair of states, in state and event order."""
    labels: dict[tuple[State, State], list[str]] = defaultdict(list)
    for event_type in EVENT_TYPES:
        for state in State:
            after = table.get((state, event_type))
            if after is not None:
                labels[(state, after)].append(event_type.__name__)
    order = list(State)
    return [
        (before, after, names)
        for (before, after), names in sorted(
            labels.items(), key=lambda item: (order.index(item[0][0]), order.index(item[0][1]))
        )
    ]


def render_mermaid(table: Mapping[tuple[State, type[Event]], State] = TRANSITIONS) -> str:
    lines = ["stateDiagram-v2", f"    [*] --> {State.IDLE.name}"]
    for before, after, names in _edges(table):
        lines.append(f"    {before.name} --> {after.name}: {' / '.join(names)}")
    lines += [f"    {state.name} --> [*]" for state in State if state in TERMINAL_STATES]
    return "\n".join(lines) + "\n"


def render_table(table: Mapping[tuple[State, type[Event]], State] = TRANSITIONS) -> str:
    """States down, events across; a cell is the state after, blank where the move is illegal."""
    events = [t for t in EVENT_TYPES if any((s, t) in table for s in State)]
    lines = [
        "| state | " + " | ".join(t.__name__ for t in events) + " |",
        "|---|" + "---|" * len(events),
    ]
    for state in State:
        cells = [table[(state, t)].name if (state, t) in table else "" for t in events]
        lines.append(f"| **{state.name}** | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def render_markdown(table: Mapping[tuple[State, type[Event]], State] = TRANSITIONS) -> str:
    return (
        "# Warm-transfer state diagram\n\n"
        "Generated from `TRANSITIONS` in `src/warmtransfer/transfer/states.py` by\n"
        "`python -m warmtransfer.transfer.diagram > docs/state-diagram.md`; do not edit by hand\n"
        "(`tests/unit/test_diagram.py` fails when this file and the table disagree). The rules\n"
        "behind the table are written at the top of `states.py`.\n\n"
        "```mermaid\n" + render_mermaid(table) + "```\n\n"
        "## Transition table\n\n"
        "A cell is the state after the event; an empty cell is an illegal move, which the\n"
        "state machine refuses with `IllegalTransition`. Terminal (no event accepted): "
        + ", ".join(state.name for state in State if state in TERMINAL_STATES)
        + ".\n\n"
        + render_table(table)
    )


def main() -> None:
    sys.stdout.write(render_markdown())


if __name__ == "__main__":
    main()

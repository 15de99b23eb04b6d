"""Several records stores made one: `warmtransfer merge-records INTO SOURCE...`.

Why: instances on one host share one SQLite file, but SQLite's locks do not hold across hosts
(NFS, SMB), so instances on several hosts each keep a file of their own. Merging those files
into one puts every call in one place, for `warmtransfer report` and for whoever queries them.

Rules, so that merging is safe to repeat (a cron job merging every few minutes):
- A call is copied whole (its row, its transfers with their events, its SIP messages and its
  recordings' paths), or not at all, in one transaction per source file.
- A call already in the target is left alone, unless the target's copy is marked incomplete and
  the source's is not (the call had not ended at the last merge): then it is replaced.
- Row ids of events, SIP messages and recordings are the target's own; everything else is
  copied as stored. Recording paths stay as the instance wrote them (files on that host).
- A source is opened read-only, so an instance may go on writing it meanwhile; a call still in
  progress there is copied as it stands, marked incomplete, and replaced at a later merge.
- A source of another schema version is refused, naming the file; nothing of it is copied.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterable
from contextlib import closing
from dataclasses import dataclass
from pathlib import Path

from warmtransfer.server.records import SCHEMA_VERSION, _connect, _transaction

__all__ = ["MergeError", "MergeSummary", "merge_records"]

# Columns copied per table (the target's ids are its own for the row-id tables).
_CALL = "call_id, caller, started, ended, incomplete, sip_dropped"
_TRANSFER = (
    "transfer_id, call_id, started, ended, incomplete, ok, reason, sip_status, sip_reason, "
    "detail, outcome, attempts, handoff"
)
_EVENT = "transfer_id, seq, at, name, previous, state, attempt, fields"
_SIP = (
    "call_id, transfer_id, leg, leg_call_id, at, direction, peer, first_line, text, size, truncated"
)
_RECORDING = "call_id, transfer_id, leg, path"


class MergeError(ValueError):
    """A source that cannot be merged (missing, not a records store, another version)."""


@dataclass
class MergeSummary:
    copied: int = 0  # calls new to the target
    replaced: int = 0  # calls incomplete in the target, complete in a source
    kept: int = 0  # calls the target already had (complete, or no better copy)

    def __str__(self) -> str:
        return f"{self.copied} calls copied, {self.replaced} replaced, {self.kept} already there"


def merge_records(into: Path, sources: Iterable[Path]) -> MergeSummary:
    """Merge every source into `into` (created if missing); see the module docstring."""
    summary = MergeSummary()
    checked = [_open_source(Path(source)) for source in sources]  # refuse before writing
    try:
        with closing(_connect(Path(into))) as target:
            for source in checked:
                with _transaction(target):
                    _merge_one(source, target, summary)
    finally:
        for source in checked:
            source.close()
    return summary


def _open_source(path: Path) -> sqlite3.Connection:
    if not path.is_file():
        raise MergeError(f"{path}: no such records file")
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        conn.execute("PRAGMA busy_timeout=5000")
        tables = {row[0] for row in conn.execute("SELECT name FROM sqlite_master")}
        version = conn.execute("PRAGMA user_version").fetchone()[0]
    except sqlite3.DatabaseError as exc:
        conn.close()
        raise MergeError(f"{path}: not a records store ({exc})") from None
    if "calls" not in tables or "transfers" not in tables:
        conn.close()
        raise MergeError(f"{path}: not a records store (no calls/transfers tables)")
    if version != SCHEMA_VERSION:
        conn.close()
        raise MergeError(
            f"{path}: records of schema version {version}, this warmtransfer reads "
            f"{SCHEMA_VERSION}; merge with the version that wrote it"
        )
    return conn


def _merge_one(
    source: sqlite3.Connection, target: sqlite3.Connection, summary: MergeSummary
) -> None:
    for call_id, incomplete in source.execute("SELECT call_id, incomplete FROM calls"):
        have = target.execute("SELECT incomplete FROM calls WHERE call_id = ?", (call_id,))
        existing = have.fetchone()
        if existing is not None:
            if not (existing[0] and not incomplete):
                summary.kept += 1
                continue
            _delete_call(target, call_id)
            summary.replaced += 1
        else:
            summary.copied += 1
        _copy_call(source, target, call_id)


def _delete_call(target: sqlite3.Connection, call_id: str) -> None:
    ids = [
        row[0]
        for row in target.execute("SELECT transfer_id FROM transfers WHERE call_id = ?", (call_id,))
    ]
    target.executemany("DELETE FROM events WHERE transfer_id = ?", [(i,) for i in ids])
    for table in ("transfers", "sip", "recordings", "calls"):
        target.execute(f"DELETE FROM {table} WHERE call_id = ?", (call_id,))


def _copy_call(source: sqlite3.Connection, target: sqlite3.Connection, call_id: str) -> None:
    _copy(source, target, "calls", _CALL, "call_id = ?", (call_id,))
    _copy(source, target, "transfers", _TRANSFER, "call_id = ?", (call_id,))
    _copy(
        source,
        target,
        "events",
        _EVENT,
        "transfer_id IN (SELECT transfer_id FROM transfers WHERE call_id = ?) ORDER BY id",
        (call_id,),
    )
    _copy(source, target, "sip", _SIP, "call_id = ? ORDER BY id", (call_id,))
    _copy(source, target, "recordings", _RECORDING, "call_id = ? ORDER BY id", (call_id,))


def _copy(
    source: sqlite3.Connection,
    target: sqlite3.Connection,
    table: str,
    columns: str,
    where: str,
    args: tuple[str, ...],
) -> None:
    # Table and column names are this module's constants, never input.
    rows = source.execute(f"SELECT {columns} FROM {table} WHERE {where}", args)
    marks = ", ".join("?" * len(columns.split(",")))
    target.executemany(f"INSERT INTO {table} ({columns}) VALUES ({marks})", rows)

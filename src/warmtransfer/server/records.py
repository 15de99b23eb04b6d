"""A record of every call and every transfer, in one SQLite file, written as things happen.

What is kept, per call: its SIP Call-ID, when it started and ended, the SIP messages of every leg
(direction, peer, first line, full text capped at `max_sip_text` characters) and the paths of
its recordings; per transfer: its id, start and end, the handoff record (JSON), the attempts,
the outcome (reason, SIP status) and the timeline (every `TransferEvent`).

Why incremental: a record written only at the end is lost with the process that was to write it,
and the calls a reviewer most wants to see are the ones during which something crashed. So the
transfer's row is committed, marked `incomplete`, before its first event (`start_transfer` is
awaited); events and SIP lines are appended in small batches (every `flush_interval` seconds or
`batch_size` items); `finish_transfer` writes the outcome and clears the flag. A process killed
mid-transfer leaves a row marked incomplete with the events of every batch written so far, never
a missing one. (WAL with synchronous=NORMAL: a committed transaction survives the process being
killed; only a power cut may lose the last ones.)

Why a worker thread, and only one: sqlite3 calls block (a commit waits for the disk, a WAL
checkpoint copies pages), and the event loop also paces every RTP stream every 20 ms, so no
database call runs on it. One thread, because one sqlite3 connection must be used serially
anyway, a single writer never meets SQLITE_BUSY from itself, and a FIFO executor keeps the
writes in the order they were made (a transfer's row before its events, its events before its
outcome).

Times: events and SIP messages carry the loop's monotonic clock, which means nothing outside the
process; the store turns them into Unix time (seconds) with the offset taken when it opened.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import logging
import sqlite3
import time
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from warmtransfer.consult.handoff import HandoffRecord
from warmtransfer.server.payloads import plain
from warmtransfer.transfer.events import TransferEvent
from warmtransfer.transfer.outcome import Attempt, Completed, TransferOutcome
from warmtransfer.transfer.states import AttemptEvent

__all__ = [
    "MAX_SIP_PER_CALL",
    "MAX_SIP_TEXT",
    "CallRecord",
    "EventRecord",
    "RecordingRef",
    "Records",
    "SipRecord",
    "TransferRecord",
    "load_call",
    "open_for_reading",
]

log = logging.getLogger(__name__)

T = TypeVar("T")

#: The full text of one SIP message is kept up to this many characters (an INVITE with SDP is
#: about 1 kB; a message far larger is an attack or a bug, and its first part says which).
MAX_SIP_TEXT = 8192
#: SIP messages kept per call; beyond, they are counted in `sip_dropped` (a call of hours with
#: session refreshes or OPTIONS pings must not grow the file without bound).
MAX_SIP_PER_CALL = 5000

SCHEMA_VERSION = 1
_SCHEMA = """
CREATE TABLE IF NOT EXISTS calls (
    call_id TEXT PRIMARY KEY,
    caller TEXT,
    started REAL NOT NULL,
    ended REAL,
    incomplete INTEGER NOT NULL DEFAULT 1,
    sip_dropped INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS transfers (
    transfer_id TEXT PRIMARY KEY,
    call_id TEXT NOT NULL,
    started REAL NOT NULL,
    ended REAL,
    incomplete INTEGER NOT NULL DEFAULT 1,
    ok INTEGER,
    reason TEXT,
    sip_status INTEGER,
    sip_reason TEXT,
    detail TEXT,
    outcome TEXT,
    attempts TEXT,
    handoff TEXT
);
CREATE INDEX IF NOT EXISTS transfers_by_call ON transfers(call_id, started);
CREATE TABLE IF NOT EXISTS events (
    id INTEGER PRIMARY KEY,
    transfer_id TEXT NOT NULL,
    seq INTEGER NOT NULL,
    at REAL NOT NULL,
    name TEXT NOT NULL,
    previous TEXT NOT NULL,
    state TEXT NOT NULL,
    attempt INTEGER,
    fields TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS events_by_transfer ON events(transfer_id, seq);
CREATE TABLE IF NOT EXISTS sip (
    id INTEGER PRIMARY KEY,
    call_id TEXT NOT NULL,
    transfer_id TEXT,
    leg TEXT NOT NULL,
    leg_call_id TEXT,
    at REAL NOT NULL,
    direction TEXT NOT NULL,
    peer TEXT NOT NULL,
    first_line TEXT NOT NULL,
    text TEXT NOT NULL,
    size INTEGER NOT NULL,
    truncated INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS sip_by_call ON sip(call_id, id);
CREATE TABLE IF NOT EXISTS recordings (
    id INTEGER PRIMARY KEY,
    call_id TEXT NOT NULL,
    transfer_id TEXT,
    leg TEXT NOT NULL,
    path TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS recordings_by_call ON recordings(call_id, id);
"""

_INSERT_EVENT = (
    "INSERT INTO events (transfer_id, seq, at, name, previous, state, attempt, fields)"
    " VALUES (?, ?, ?, ?, ?, ?, ?, ?)"
)
_INSERT_SIP = (
    "INSERT INTO sip (call_id, transfer_id, leg, leg_call_id, at, direction, peer, first_line,"
    " text, size, truncated) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
)


# -- what is read back -----------------------------------------------------------------------


@dataclass(frozen=True)
class EventRecord:
    """One `TransferEvent` as stored: `at` in Unix seconds, the event's own fields as JSON."""

    seq: int
    at: float
    name: str
    previous: str
    state: str
    attempt: int | None
    fields: dict[str, Any]


@dataclass(frozen=True)
class SipRecord:
    """One SIP message of one leg, seen from the engine: "in" came from `peer`, "out" went to
    it. `text` is at most MAX_SIP_TEXT characters; `size` is the message's full size in bytes."""

    at: float
    leg: str
    leg_call_id: str | None
    transfer_id: str | None
    direction: str
    peer: str
    first_line: str
    text: str
    size: int
    truncated: bool


@dataclass(frozen=True)
class RecordingRef:
    leg: str
    path: Path
    transfer_id: str | None = None


@dataclass(frozen=True)
class TransferRecord:
    transfer_id: str
    call_id: str
    started: float
    ended: float | None
    incomplete: bool
    ok: bool | None
    reason: str | None
    sip_status: int | None
    sip_reason: str | None
    detail: str | None
    outcome: dict[str, Any] | None
    attempts: list[dict[str, Any]]
    handoff: str | None  # HandoffRecord JSON
    events: tuple[EventRecord, ...] = ()


@dataclass(frozen=True)
class CallRecord:
    call_id: str
    caller: str | None
    started: float
    ended: float | None
    incomplete: bool
    sip_dropped: int
    transfers: tuple[TransferRecord, ...] = ()
    sip: tuple[SipRecord, ...] = ()
    recordings: tuple[RecordingRef, ...] = ()


# -- the store -------------------------------------------------------------------------------


#: How long opening the file may keep retrying while other processes hold it (see `_connect`).
OPEN_DEADLINE = 15.0


def _connect(path: Path) -> sqlite3.Connection:
    """Open the file in WAL mode with the schema in place, retrying while it is busy.

    Why the retry: several instances may open one file at once (two `serve` started together
    behind a dispatcher). Switching a fresh file to WAL needs the only lock, and SQLite answers
    SQLITE_BUSY at once, without waiting in the busy handler, when waiting could deadlock; so
    the loser gets "database is locked" however long `busy_timeout` is. The schema is created
    in one BEGIN IMMEDIATE transaction, which does wait in the busy handler."""
    give_up = time.monotonic() + OPEN_DEADLINE
    pause = 0.01
    while True:
        conn = sqlite3.connect(path, isolation_level=None)  # explicit BEGIN/COMMIT below
        try:
            _set_up(conn)
        except sqlite3.OperationalError as exc:
            conn.close()
            if exc.sqlite_errorcode & 0xFF not in (sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED):
                raise
            if time.monotonic() + pause > give_up:
                raise
        except BaseException:
            conn.close()
            raise
        else:
            return conn
        time.sleep(pause)  # on the store's worker thread, or the merge command's only one
        pause = min(pause * 2, 0.25)


def _set_up(conn: sqlite3.Connection) -> None:
    conn.execute("PRAGMA busy_timeout=5000")  # a reader (the report command) may hold a lock
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=NORMAL")
    try:
        conn.executescript(f"BEGIN IMMEDIATE;{_SCHEMA}PRAGMA user_version={SCHEMA_VERSION};COMMIT;")
    except BaseException:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise


class Records:
    """The store. Open it with `await Records.open(path)` inside the event loop that runs the
    calls; `event()` and `sip()` are plain calls (safe from `on_event` and trace hooks), the
    rest are awaited."""

    def __init__(
        self,
        executor: ThreadPoolExecutor,
        conn: sqlite3.Connection,
        path: Path,
        *,
        flush_interval: float,
        batch_size: int,
        max_sip_text: int,
        max_sip_per_call: int,
    ) -> None:
        """Use `Records.open`: the connection must be made on the worker thread."""
        self.path = path
        self._executor = executor
        self._conn = conn
        self._loop = asyncio.get_running_loop()
        # Loop time -> Unix time. The engine's clock is the loop's (engine.transfer).
        self._offset = time.time() - self._loop.time()
        self._flush_interval = flush_interval
        self._batch_size = batch_size
        self._max_sip_text = max_sip_text
        self._max_sip_per_call = max_sip_per_call
        self._events: list[tuple[Any, ...]] = []
        self._sip: list[tuple[Any, ...]] = []
        self._seq: dict[str, int] = {}
        self._sip_counts: dict[str, int] = {}
        self._sip_dropped: dict[str, int] = {}
        self._timer: asyncio.TimerHandle | None = None
        self._closed = False

    @classmethod
    async def open(
        cls,
        path: str | Path,
        *,
        flush_interval: float = 0.05,
        batch_size: int = 200,
        max_sip_text: int = MAX_SIP_TEXT,
        max_sip_per_call: int = MAX_SIP_PER_CALL,
    ) -> Records:
        """Open (or create) the store at `path`, in WAL mode. `flush_interval`: how long an
        event or SIP line may wait in memory before it is written (batching keeps the worker to
        one transaction per burst, e.g. an INVITE's 100/180/200/ACK)."""
        target = Path(path)
        executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="warmtransfer-records")
        loop = asyncio.get_running_loop()
        try:
            conn = await loop.run_in_executor(executor, _connect, target)
        except BaseException:
            executor.shutdown(wait=False)
            raise
        return cls(
            executor,
            conn,
            target,
            flush_interval=flush_interval,
            batch_size=batch_size,
            max_sip_text=max_sip_text,
            max_sip_per_call=max_sip_per_call,
        )

    async def __aenter__(self) -> Records:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    @property
    def closed(self) -> bool:
        """`close()` has run: nothing more can be written (the file can still be read)."""
        return self._closed

    def wall(self, loop_time: float) -> float:
        """Unix time of a moment on the loop's clock."""
        return loop_time + self._offset

    # -- the worker ---------------------------------------------------------------------------

    def _submit(self, job: Callable[[sqlite3.Connection], T]) -> asyncio.Future[T]:
        if self._closed:
            raise RuntimeError(f"the records store {self.path} is closed")
        future = self._executor.submit(job, self._conn)
        future.add_done_callback(_log_failure)  # a batch write is awaited by nobody
        return asyncio.wrap_future(future)

    def _write_batch(self) -> asyncio.Future[None] | None:
        """Hand what is buffered to the worker, as one transaction."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if not self._events and not self._sip:
            return None
        if self._closed:  # a late event or SIP line after close(): nowhere to write it
            log.warning("records store %s is closed: %d lines dropped", self.path, len(self._sip))
            self._events, self._sip = [], []
            return None
        events, self._events = self._events, []
        sip, self._sip = self._sip, []
        dropped = dict(self._sip_dropped)

        def write(conn: sqlite3.Connection) -> None:
            with _transaction(conn):
                conn.executemany(_INSERT_EVENT, events)
                conn.executemany(_INSERT_SIP, sip)
                for call_id, count in dropped.items():
                    conn.execute(
                        "UPDATE calls SET sip_dropped = ? WHERE call_id = ?", (count, call_id)
                    )

        return self._submit(write)

    def _buffered(self) -> None:
        if len(self._events) + len(self._sip) >= self._batch_size:
            self._write_batch()
        elif self._timer is None:
            self._timer = self._loop.call_later(self._flush_interval, self._write_batch)

    async def flush(self) -> None:
        """Write everything buffered so far, and wait until it is committed."""
        self._write_batch()
        # FIFO worker: a no-op job completes after every job submitted before it.
        await self._submit(lambda conn: None)

    # -- calls and transfers ------------------------------------------------------------------

    async def start_call(
        self, call_id: str, *, caller: str | None = None, started: float | None = None
    ) -> None:
        """The call's row, incomplete until `end_call` (a second start keeps the first)."""
        at = self.wall(started if started is not None else self._loop.time())

        def write(conn: sqlite3.Connection) -> None:
            conn.execute(
                "INSERT OR IGNORE INTO calls (call_id, caller, started) VALUES (?, ?, ?)",
                (call_id, caller, at),
            )

        await self._submit(write)

    async def start_transfer(
        self,
        *,
        call_id: str,
        transfer_id: str,
        started: float | None = None,
        handoff: HandoffRecord | str | None = None,
    ) -> None:
        """Commit the transfer's row, marked incomplete, before it runs (and the call's row if
        it has none). `handoff` is what is known already (the briefing), so that even a record
        left by a crash says who was being transferred and why."""
        at = self.wall(started if started is not None else self._loop.time())
        handoff_json = handoff.to_json() if isinstance(handoff, HandoffRecord) else handoff

        def write(conn: sqlite3.Connection) -> None:
            with _transaction(conn):
                conn.execute(
                    "INSERT OR IGNORE INTO calls (call_id, started) VALUES (?, ?)",
                    (call_id, at),
                )
                conn.execute(
                    "INSERT INTO transfers (transfer_id, call_id, started, handoff)"
                    " VALUES (?, ?, ?, ?)",
                    (transfer_id, call_id, at, handoff_json),
                )

        await self._submit(write)

    def event(self, event: TransferEvent) -> None:
        """Append one move of a transfer's timeline (written with the next batch)."""
        seq = self._seq.get(event.transfer_id, 0)
        self._seq[event.transfer_id] = seq + 1
        attempt = event.event.attempt if isinstance(event.event, AttemptEvent) else None
        fields = {
            f.name: plain(getattr(event.event, f.name))
            for f in dataclasses.fields(event.event)
            if f.name not in ("at", "attempt")
        }
        self._events.append(
            (
                event.transfer_id,
                seq,
                self.wall(event.at),
                event.event.name,
                event.previous.value,
                event.state.value,
                attempt,
                json.dumps(fields, default=str),
            )
        )
        self._buffered()

    def sip(
        self,
        *,
        call_id: str,
        direction: str,
        peer: object,
        data: bytes,
        at: float,
        leg: str,
        leg_call_id: str | None = None,
        transfer_id: str | None = None,
    ) -> None:
        """Append one SIP message of one leg of the call `call_id` (the caller's Call-ID);
        `at` on the loop's clock, `peer` e.g. a `Flow` (stored as its text)."""
        count = self._sip_counts.get(call_id, 0)
        if count >= self._max_sip_per_call:
            self._sip_dropped[call_id] = self._sip_dropped.get(call_id, 0) + 1
            self._buffered()
            return
        self._sip_counts[call_id] = count + 1
        text = data.decode("utf-8", "replace")
        first_line = text.split("\r\n", 1)[0].split("\n", 1)[0][:500]
        truncated = len(text) > self._max_sip_text
        self._sip.append(
            (
                call_id,
                transfer_id,
                leg,
                leg_call_id,
                self.wall(at),
                direction,
                str(peer),
                first_line,
                text[: self._max_sip_text] if truncated else text,
                len(data),
                int(truncated),
            )
        )
        self._buffered()

    async def finish_transfer(
        self,
        transfer_id: str,
        outcome: TransferOutcome,
        handoff: HandoffRecord | str | None = None,
        *,
        ended: float | None = None,
    ) -> None:
        """Write the outcome and the attempts, replace the handoff record if one is given, and
        clear `incomplete`; the events buffered so far are committed first, in the same
        transaction."""
        at = self.wall(ended if ended is not None else outcome.ended)
        handoff_json = handoff.to_json() if isinstance(handoff, HandoffRecord) else handoff
        attempts = [self._attempt(a) for a in outcome.attempts]
        summary: dict[str, Any] = {
            "ok": outcome.ok,
            "reason": outcome.reason.value,
            "started": self.wall(outcome.started),
            "ended": self.wall(outcome.ended),
        }
        if isinstance(outcome, Completed):
            summary |= {
                "target": outcome.target.uri,
                "target_name": outcome.target.display_name,
                "winner": outcome.winner,
                "fallback": outcome.fallback,
            }
            sip_status, sip_reason, detail = None, None, ""
        else:
            sip_status, sip_reason, detail = outcome.sip_status, outcome.sip_reason, outcome.detail
            summary |= {
                "sip_status": sip_status,
                "sip_reason": sip_reason,
                "detail": detail,
                "dismissed": outcome.dismissed,
                "recorded_message": (
                    str(outcome.recorded_message) if outcome.recorded_message else None
                ),
            }
        self._write_batch()

        def write(conn: sqlite3.Connection) -> None:
            with _transaction(conn):
                conn.execute(
                    "UPDATE transfers SET ended = ?, incomplete = 0, ok = ?, reason = ?,"
                    " sip_status = ?, sip_reason = ?, detail = ?, outcome = ?, attempts = ?,"
                    " handoff = COALESCE(?, handoff) WHERE transfer_id = ?",
                    (
                        at,
                        int(outcome.ok),
                        outcome.reason.value,
                        sip_status,
                        sip_reason,
                        detail,
                        json.dumps(summary),
                        json.dumps(attempts),
                        handoff_json,
                        transfer_id,
                    ),
                )

        await self._submit(write)

    def _attempt(self, attempt: Attempt) -> dict[str, Any]:
        def wall(moment: float | None) -> float | None:
            return None if moment is None else self.wall(moment)

        return {
            "target": attempt.target.uri,
            "target_name": attempt.target.display_name,
            "started": self.wall(attempt.started),
            "ringing": wall(attempt.ringing),
            "answered": wall(attempt.answered),
            "ended": wall(attempt.ended),
            "reason": None if attempt.reason is None else attempt.reason.value,
            "sip_status": attempt.sip_status,
            "sip_reason": attempt.sip_reason,
            "detail": attempt.detail,
            "round": attempt.round,
            "fallback": attempt.fallback,
        }

    async def add_recordings(
        self, call_id: str, recordings: Iterable[tuple[str, Path]], transfer_id: str | None = None
    ) -> None:
        """Record where the (leg, WAV file) recordings of a call are; the files stay where
        they are."""
        rows = [(call_id, transfer_id, leg, str(path)) for leg, path in recordings]

        def write(conn: sqlite3.Connection) -> None:
            with _transaction(conn):
                conn.executemany(
                    "INSERT INTO recordings (call_id, transfer_id, leg, path) VALUES (?, ?, ?, ?)",
                    rows,
                )

        await self._submit(write)

    async def end_call(self, call_id: str, *, ended: float | None = None) -> None:
        """The call is over: everything buffered is written and `incomplete` is cleared."""
        at = self.wall(ended if ended is not None else self._loop.time())
        self._write_batch()
        dropped = self._sip_dropped.pop(call_id, 0)
        self._sip_counts.pop(call_id, None)

        def write(conn: sqlite3.Connection) -> None:
            conn.execute(
                "UPDATE calls SET ended = ?, incomplete = 0, sip_dropped = ? WHERE call_id = ?",
                (at, dropped, call_id),
            )

        await self._submit(write)

    # -- reading ------------------------------------------------------------------------------

    async def call(self, call_id: str) -> CallRecord | None:
        """The whole record of one call (after writing what is buffered), or None."""
        self._write_batch()
        return await self._submit(lambda conn: load_call(conn, call_id))

    async def close(self) -> None:
        """Write what is buffered, then close the file and end the worker thread."""
        if self._closed:
            return
        try:
            await self.flush()
            await self._submit(lambda conn: conn.close())
        finally:
            self._closed = True
            if self._timer is not None:
                self._timer.cancel()
            self._executor.shutdown(wait=False)  # its queue is empty: both jobs ran


def _log_failure(future: Future[Any]) -> None:
    if not future.cancelled() and future.exception() is not None:
        log.error("writing records failed", exc_info=future.exception())


@contextlib.contextmanager
def _transaction(conn: sqlite3.Connection) -> Iterator[None]:
    """BEGIN ... COMMIT, or ROLLBACK on error (the connection is in autocommit mode, so that
    each batch is exactly one transaction, whatever sqlite3's implicit rules would do)."""
    conn.execute("BEGIN")
    try:
        yield
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    conn.execute("COMMIT")


def load_call(conn: sqlite3.Connection, call_id: str) -> CallRecord | None:
    """Read one call's record from an open connection (the store's worker, or the report
    command's own read-only one)."""
    row = conn.execute(
        "SELECT call_id, caller, started, ended, incomplete, sip_dropped FROM calls"
        " WHERE call_id = ?",
        (call_id,),
    ).fetchone()
    if row is None:
        return None
    transfers = []
    for t in conn.execute(
        "SELECT transfer_id, call_id, started, ended, incomplete, ok, reason, sip_status,"
        " sip_reason, detail, outcome, attempts, handoff FROM transfers WHERE call_id = ?"
        " ORDER BY started, rowid",
        (call_id,),
    ).fetchall():
        events = tuple(
            EventRecord(e[0], e[1], e[2], e[3], e[4], e[5], json.loads(e[6]))
            for e in conn.execute(
                "SELECT seq, at, name, previous, state, attempt, fields FROM events"
                " WHERE transfer_id = ? ORDER BY seq, id",
                (t[0],),
            )
        )
        transfers.append(
            TransferRecord(
                transfer_id=t[0],
                call_id=t[1],
                started=t[2],
                ended=t[3],
                incomplete=bool(t[4]),
                ok=None if t[5] is None else bool(t[5]),
                reason=t[6],
                sip_status=t[7],
                sip_reason=t[8],
                detail=t[9],
                outcome=json.loads(t[10]) if t[10] else None,
                attempts=json.loads(t[11]) if t[11] else [],
                handoff=t[12],
                events=events,
            )
        )
    sip = tuple(
        SipRecord(
            at=s[0],
            leg=s[1],
            leg_call_id=s[2],
            transfer_id=s[3],
            direction=s[4],
            peer=s[5],
            first_line=s[6],
            text=s[7],
            size=s[8],
            truncated=bool(s[9]),
        )
        for s in conn.execute(
            "SELECT at, leg, leg_call_id, transfer_id, direction, peer, first_line, text, size,"
            " truncated FROM sip WHERE call_id = ? ORDER BY id",
            (call_id,),
        )
    )
    recordings = tuple(
        RecordingRef(leg=r[0], path=Path(r[1]), transfer_id=r[2])
        for r in conn.execute(
            "SELECT leg, path, transfer_id FROM recordings WHERE call_id = ? ORDER BY id",
            (call_id,),
        )
    )
    return CallRecord(
        call_id=row[0],
        caller=row[1],
        started=row[2],
        ended=row[3],
        incomplete=bool(row[4]),
        sip_dropped=row[5],
        transfers=tuple(transfers),
        sip=sip,
        recordings=recordings,
    )


def open_for_reading(path: str | Path) -> sqlite3.Connection:
    """A connection for reading a store another process may be writing (WAL lets both run)."""
    target = Path(path)
    if not target.is_file():
        raise FileNotFoundError(f"no records store at {target}")
    conn = sqlite3.connect(target)
    conn.execute("PRAGMA busy_timeout=5000")
    return conn

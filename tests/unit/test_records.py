"""The records store: what a transfer leaves behind, on every exit path (a crash included)."""

from __future__ import annotations

import asyncio
import multiprocessing
import signal
import sqlite3
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

import pytest

from tests.unit.memory_ports import (
    KeyConsultant,
    MemoryBridge,
    MemoryCaller,
    MemoryDialer,
    MemoryTargetLeg,
)
from warmtransfer.consult.handoff import HandoffRecord
from warmtransfer.consult.ports import Briefing
from warmtransfer.server.records import (
    MAX_SIP_TEXT,
    OPEN_DEADLINE,
    SCHEMA_VERSION,
    Records,
    _connect,
)
from warmtransfer.server.report import render_report
from warmtransfer.sip.flow import Flow
from warmtransfer.transfer.driver import WarmTransfer
from warmtransfer.transfer.outcome import Completed, TransferOutcome
from warmtransfer.transfer.plan import TransferPlan
from warmtransfer.transfer.target import AllowList, Target

REPO = Path(__file__).resolve().parents[2]
BRIEFING = Briefing(summary="Bob wants a refund for order 1234", caller="Bob")
PEER = Flow("127.0.0.1", 5080, "udp")
INVITE = (
    b"INVITE sip:engine@127.0.0.1 SIP/2.0\r\nCall-ID: c1\r\nCSeq: 1 INVITE\r\n"
    b"Content-Length: 0\r\n\r\n"
)


def plan() -> TransferPlan:
    return TransferPlan(
        targets=(Target(uri="sip:alice@pbx.example.com", display_name="Alice"),),
        allow=AllowList(patterns=("sip:*@pbx.example.com",)),
    )


def transfer(records: Records, transfer_id: str) -> WarmTransfer:
    """A real driver on memory ports; the human accepts with key 1 as soon as asked."""
    return WarmTransfer(
        plan=plan(),
        caller=MemoryCaller(),
        dialer=MemoryDialer(answer=MemoryTargetLeg(keys="1")),
        bridge=MemoryBridge(),
        consultant=KeyConsultant(),
        briefing=BRIEFING,
        transfer_id=transfer_id,
        on_event=records.event,
        clock=asyncio.get_running_loop().time,
    )


async def run_recorded(records: Records, call_id: str, transfer_id: str) -> TransferOutcome:
    loop = asyncio.get_running_loop()
    await records.start_call(call_id, caller="Bob")
    await records.start_transfer(
        call_id=call_id,
        transfer_id=transfer_id,
        handoff=HandoffRecord.from_briefing(BRIEFING, incomplete=True),
    )
    now = loop.time()
    records.sip(call_id=call_id, direction="in", peer=PEER, data=INVITE, at=now, leg="caller")
    outcome = await transfer(records, transfer_id).run()
    record = HandoffRecord.from_briefing(BRIEFING, attempts=outcome.attempts)
    await records.finish_transfer(transfer_id, outcome, record)
    return outcome


async def test_round_trip_of_a_completed_transfer(tmp_path: Path) -> None:
    before = time.time()
    async with await Records.open(tmp_path / "records.db") as records:
        outcome = await run_recorded(records, "call-1", "t-1")
        await records.add_recordings("call-1", [("caller", tmp_path / "caller.wav")])
        await records.end_call("call-1")
        call = await records.call("call-1")
    assert isinstance(outcome, Completed)
    assert call is not None
    assert call.caller == "Bob"
    assert not call.incomplete
    assert call.ended is not None and before <= call.started <= call.ended <= time.time()
    (stored,) = call.transfers
    assert stored.transfer_id == "t-1"
    assert not stored.incomplete
    assert stored.ok is True
    assert stored.reason == "completed"
    assert stored.outcome is not None and stored.outcome["target"] == "sip:alice@pbx.example.com"
    # Every event of the timeline, in order, with its own fields.
    names = [e.name for e in stored.events]
    assert names == [
        "Start",
        "HoldStarted",
        "DialStarted",
        "Ringing",
        "Answered",
        "Accepted",
        "Bridged",
    ]
    assert [e.seq for e in stored.events] == list(range(7))
    assert stored.events[-1].state == "completed"
    dial = stored.events[2]
    assert dial.attempt == 0
    assert dial.fields["target"] == {"uri": "sip:alice@pbx.example.com", "display_name": "Alice"}
    assert stored.events[3].fields == {"sip_status": 180}
    assert [e.at for e in stored.events] == sorted(e.at for e in stored.events)
    assert before <= stored.events[0].at <= time.time()  # Unix time, not the loop's clock
    # The attempts, and the handoff record as given at the end (with those attempts).
    (attempt,) = stored.attempts
    assert attempt["reason"] == "completed"
    assert attempt["answered"] is not None
    assert stored.handoff is not None
    handoff = HandoffRecord.from_json(stored.handoff)
    assert handoff.whisper == BRIEFING.summary
    assert len(handoff.attempts) == 1
    assert not handoff.incomplete
    (sip,) = call.sip
    assert (sip.direction, sip.peer, sip.leg) == ("in", "udp:127.0.0.1:5080", "caller")
    assert sip.first_line == "INVITE sip:engine@127.0.0.1 SIP/2.0"
    assert sip.text == INVITE.decode()
    assert not sip.truncated
    assert [(r.leg, r.path) for r in call.recordings] == [("caller", tmp_path / "caller.wav")]


async def test_the_store_is_in_wal_mode(tmp_path: Path) -> None:
    path = tmp_path / "records.db"
    records = await Records.open(path)
    try:
        other = sqlite3.connect(path)
        try:
            (mode,) = other.execute("PRAGMA journal_mode").fetchone()
        finally:
            other.close()
    finally:
        await records.close()
    assert mode == "wal"


def _open_at_once(path: str, barrier: Any, results: Any) -> None:
    """One process of the race below: wait for the others, then open the same file."""
    barrier.wait()
    try:
        _connect(Path(path)).close()
    except Exception as exc:  # reported to the test, which names it
        results.put(repr(exc))
    else:
        results.put("ok")


def test_processes_opening_one_fresh_file_at_once_all_succeed(tmp_path: Path) -> None:
    """Two `serve` instances started together share one records file: the one that loses the
    switch to WAL mode must wait and retry, not exit with "database is locked" (CI stop 10).
    Eight processes released by a barrier onto a fresh file, 25 times: without the retry
    about one round in five had a loser."""
    ctx = multiprocessing.get_context("fork")
    failures: list[str] = []
    for round_ in range(25):
        path = tmp_path / f"records-{round_}.db"
        barrier = ctx.Barrier(8)
        results = ctx.Queue()
        procs = [
            ctx.Process(target=_open_at_once, args=(str(path), barrier, results)) for _ in range(8)
        ]
        for proc in procs:
            proc.start()
        outcomes = [results.get(timeout=60) for _ in procs]
        for proc in procs:
            proc.join(timeout=60)
        failures += [outcome for outcome in outcomes if outcome != "ok"]
        with sqlite3.connect(path) as check:
            assert check.execute("PRAGMA journal_mode").fetchone() == ("wal",)
            assert check.execute("PRAGMA user_version").fetchone() == (SCHEMA_VERSION,)
    assert failures == []


def test_a_file_that_is_not_a_database_is_refused_at_once(tmp_path: Path) -> None:
    """Only "busy" and "locked" are retried: a wrong file is an error to report now."""
    path = tmp_path / "records.db"
    path.write_bytes(b"not a database, but forty bytes or more of text\n" * 4)
    started = time.monotonic()
    with pytest.raises(sqlite3.DatabaseError, match="not a database"):
        _connect(path)
    assert time.monotonic() - started < OPEN_DEADLINE / 2
    assert path.read_bytes().startswith(b"not a database")  # left as it was


async def test_unknown_call_is_none(tmp_path: Path) -> None:
    async with await Records.open(tmp_path / "records.db") as records:
        assert await records.call("nope") is None


_CHILD = textwrap.dedent(
    """
    import asyncio, sys
    from tests.unit.memory_ports import (
        KeyConsultant, MemoryBridge, MemoryCaller, MemoryDialer, MemoryTargetLeg,
    )
    from tests.unit.test_records import BRIEFING, plan
    from warmtransfer.consult.handoff import HandoffRecord
    from warmtransfer.server.records import Records
    from warmtransfer.transfer.driver import WarmTransfer

    async def main() -> None:
        records = await Records.open(sys.argv[1])
        await records.start_transfer(
            call_id="call-crash", transfer_id="t-crash",
            handoff=HandoffRecord.from_briefing(BRIEFING, incomplete=True),
        )
        never = asyncio.Event()  # the human's phone rings for ever
        dialer = MemoryDialer(answer=MemoryTargetLeg(keys="1"), answer_gate=never)
        transfer = WarmTransfer(
            plan=plan(), caller=MemoryCaller(), dialer=dialer, bridge=MemoryBridge(),
            consultant=KeyConsultant(), briefing=BRIEFING, transfer_id="t-crash",
            on_event=records.event, clock=asyncio.get_running_loop().time,
        )
        task = asyncio.create_task(transfer.run())
        await dialer.ringing_started.wait()
        await records.flush()
        print("ringing", flush=True)
        await task

    asyncio.run(main())
    """
)


async def test_a_crash_mid_transfer_leaves_an_incomplete_record(tmp_path: Path) -> None:
    path = tmp_path / "records.db"
    child = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        _CHILD,
        str(path),
        cwd=REPO,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        assert child.stdout is not None
        async with asyncio.timeout(60):
            line = await child.stdout.readline()
        assert line == b"ringing\n", (line, await child.stderr.read() if child.stderr else b"")
    finally:
        child.send_signal(signal.SIGKILL)
        await child.wait()
    assert child.returncode == -signal.SIGKILL
    async with await Records.open(path) as records:
        call = await records.call("call-crash")
    assert call is not None
    assert call.incomplete
    (stored,) = call.transfers
    assert stored.incomplete
    assert stored.ended is None and stored.reason is None
    assert [e.name for e in stored.events] == ["Start", "HoldStarted", "DialStarted", "Ringing"]
    assert stored.handoff is not None
    assert HandoffRecord.from_json(stored.handoff).whisper == BRIEFING.summary
    page = render_report(call)
    assert "incomplete" in page


async def test_big_sip_messages_are_capped(tmp_path: Path) -> None:
    body = b"x" * (5 * MAX_SIP_TEXT)
    big = b"MESSAGE sip:engine@127.0.0.1 SIP/2.0\r\nCall-ID: c1\r\n\r\n" + body
    async with await Records.open(tmp_path / "records.db", max_sip_per_call=3) as records:
        await records.start_call("c1")
        loop = asyncio.get_running_loop()
        for _ in range(5):
            records.sip(call_id="c1", direction="in", peer=PEER, data=big, at=loop.time(), leg="x")
        call = await records.call("c1")
    assert call is not None
    assert len(call.sip) == 3  # the per-call limit
    assert call.sip_dropped == 2
    message = call.sip[0]
    assert message.truncated
    assert message.size == len(big)
    assert len(message.text) == MAX_SIP_TEXT
    assert message.first_line == "MESSAGE sip:engine@127.0.0.1 SIP/2.0"
    page = render_report(call)
    assert f"first {MAX_SIP_TEXT} characters of {len(big)} bytes" in page
    assert "2 further SIP messages" in page


async def test_concurrent_transfers_keep_their_own_records(tmp_path: Path) -> None:
    async with await Records.open(tmp_path / "records.db", batch_size=3) as records:
        outcomes = await asyncio.gather(
            *(run_recorded(records, f"call-{n}", f"t-{n}") for n in range(4))
        )
        calls = [await records.call(f"call-{n}") for n in range(4)]
    assert all(isinstance(o, Completed) for o in outcomes)
    for n, call in enumerate(calls):
        assert call is not None
        (stored,) = call.transfers
        assert stored.transfer_id == f"t-{n}"
        assert not stored.incomplete
        assert [e.seq for e in stored.events] == list(range(7))
        assert stored.events[-1].name == "Bridged"
        assert len(call.sip) == 1 and call.sip[0].leg == "caller"


async def test_closing_flushes_what_is_buffered(tmp_path: Path) -> None:
    path = tmp_path / "records.db"
    # A flush interval no test waits for: only close() can have written these.
    records = await Records.open(path, flush_interval=3600, batch_size=10_000)
    await records.start_transfer(call_id="c1", transfer_id="t-1")
    loop = asyncio.get_running_loop()
    for _ in range(3):
        records.sip(call_id="c1", direction="out", peer=PEER, data=INVITE, at=loop.time(), leg="y")
    other = sqlite3.connect(path)
    try:
        (before,) = other.execute("SELECT count(*) FROM sip").fetchone()
        await records.close()
        (after,) = other.execute("SELECT count(*) FROM sip").fetchone()
    finally:
        other.close()
    assert (before, after) == (0, 3)

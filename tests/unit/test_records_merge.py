"""Merging records stores (one per host) into one: every call once, complete copies winning over
incomplete ones, safe to repeat, and a bad source refused before anything is written."""

from __future__ import annotations

import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from tests.unit.test_records import run_recorded
from warmtransfer.server.records import Records, load_call, open_for_reading
from warmtransfer.server.records_merge import MergeError, merge_records


async def store(path: Path, *calls: str, ended: bool = True) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    async with await Records.open(path) as records:
        for call_id in calls:
            await run_recorded(records, call_id, f"t-{call_id}")
            await records.add_recordings(call_id, [("caller", path.parent / f"{call_id}.wav")])
            if ended:
                await records.end_call(call_id)
    return path


def loaded(path: Path, call_id: str) -> tuple[bool, list[str], int, int]:
    conn = open_for_reading(path)
    try:
        call = load_call(conn, call_id)
    finally:
        conn.close()
    assert call is not None, call_id
    (transfer,) = call.transfers
    return call.incomplete, [e.name for e in transfer.events], len(call.sip), len(call.recordings)


async def test_calls_of_two_hosts_end_up_in_one_file_once(tmp_path: Path) -> None:
    a = await store(tmp_path / "a" / "records.sqlite3", "call-a1", "call-a2")
    b = await store(tmp_path / "b" / "records.sqlite3", "call-b1")
    merged = tmp_path / "all.sqlite3"
    summary = merge_records(merged, [a, b])
    assert (summary.copied, summary.replaced, summary.kept) == (3, 0, 0)
    for call_id in ("call-a1", "call-a2", "call-b1"):
        incomplete, events, sip, recordings = loaded(merged, call_id)
        assert not incomplete
        assert events[0] == "Start" and events[-1] == "Bridged" and len(events) == 7
        assert (sip, recordings) == (1, 1)
    again = merge_records(merged, [a, b])  # a cron job merging every few minutes
    assert (again.copied, again.replaced, again.kept) == (0, 0, 3)
    with sqlite3.connect(merged) as conn:
        assert conn.execute("SELECT count(*) FROM events").fetchone() == (21,)
        assert conn.execute("SELECT count(*) FROM sip").fetchone() == (3,)


async def test_a_call_merged_while_in_progress_is_replaced_once_it_ended(tmp_path: Path) -> None:
    host = tmp_path / "host" / "records.sqlite3"
    await store(host, "call-1", ended=False)
    merged = tmp_path / "all.sqlite3"
    merge_records(merged, [host])
    assert loaded(merged, "call-1")[0] is True  # copied as it stood: incomplete
    async with await Records.open(host) as records:
        await records.end_call("call-1")
    summary = merge_records(merged, [host])
    assert (summary.copied, summary.replaced) == (0, 1)
    incomplete, events, sip, recordings = loaded(merged, "call-1")
    assert not incomplete and len(events) == 7 and (sip, recordings) == (1, 1)


async def test_a_bad_source_is_refused_before_anything_is_written(tmp_path: Path) -> None:
    good = await store(tmp_path / "good" / "records.sqlite3", "call-1")
    merged = tmp_path / "all.sqlite3"
    with pytest.raises(MergeError, match="no such records file"):
        merge_records(merged, [good, tmp_path / "missing.sqlite3"])
    text = tmp_path / "notes.txt"
    text.write_text("not a database, just words " * 100)
    with pytest.raises(MergeError, match="not a records store"):
        merge_records(merged, [good, text])
    other = tmp_path / "other.sqlite3"
    with sqlite3.connect(other) as conn:
        conn.execute("CREATE TABLE calls (call_id TEXT)")
        conn.execute("CREATE TABLE transfers (transfer_id TEXT)")
        conn.execute("PRAGMA user_version=99")
    with pytest.raises(MergeError, match="schema version 99"):
        merge_records(merged, [good, other])
    assert not merged.exists()  # refused before the target was even created


async def test_the_command_merges_and_the_report_reads_the_merged_file(tmp_path: Path) -> None:
    a = await store(tmp_path / "a" / "records.sqlite3", "call-a1")
    b = await store(tmp_path / "b" / "records.sqlite3", "call-b1")
    merged = tmp_path / "all.sqlite3"

    def warmtransfer(*args: str | Path) -> subprocess.CompletedProcess[str]:
        command = [sys.executable, "-m", "warmtransfer", *map(str, args)]
        return subprocess.run(command, capture_output=True, text=True, timeout=60, check=False)

    done = warmtransfer("merge-records", merged, a, b)
    assert done.returncode == 0, done.stderr
    assert "2 calls copied, 0 replaced, 0 already there" in done.stdout
    page = tmp_path / "b1.html"
    shown = warmtransfer("report", "call-b1", "--records", merged, "--out", page)
    assert shown.returncode == 0, shown.stderr
    assert "call-b1" in page.read_text()
    refused = warmtransfer("merge-records", merged, tmp_path / "nope.sqlite3")
    assert refused.returncode == 1
    assert "nope.sqlite3: no such records file" in refused.stderr

"""The call report page, without a browser: audio embedding and its cap, escaping, the CLI."""

from __future__ import annotations

import base64
from pathlib import Path

import numpy as np
from typer.testing import CliRunner

from warmtransfer.cli.app import app
from warmtransfer.media.wav import write_wav
from warmtransfer.server.records import CallRecord, RecordingRef, Records, SipRecord
from warmtransfer.server.report import render_report


def _wav(path: Path, seconds: float) -> Path:
    samples = np.zeros((int(8000 * seconds), 2), dtype=np.int16)
    write_wav(path, samples, 8000)
    return path


def _record(recordings: tuple[RecordingRef, ...], sip: tuple[SipRecord, ...] = ()) -> CallRecord:
    return CallRecord(
        call_id="c-1",
        caller=None,
        started=1_700_000_000.0,
        ended=1_700_000_010.0,
        incomplete=False,
        sip_dropped=0,
        sip=sip,
        recordings=recordings,
    )


def test_small_recordings_are_embedded_big_ones_are_named(tmp_path: Path) -> None:
    small = _wav(tmp_path / "small.wav", 0.5)
    big = _wav(tmp_path / "big.wav", 10.0)
    page = render_report(
        _record(
            (
                RecordingRef("caller", small),
                RecordingRef("human", big),
                RecordingRef("gone", tmp_path / "missing.wav"),
            )
        ),
        max_audio_bytes=100_000,
    )
    embedded = base64.b64encode(small.read_bytes()).decode()
    assert f'src="data:audio/wav;base64,{embedded}"' in page
    assert page.count("<audio ") == 1
    assert 'class="note too-big"' in page
    assert str(big) in page and "over the limit of" in page
    assert f"The file {tmp_path / 'missing.wav'} is missing." in page


def test_sip_text_from_peers_is_escaped() -> None:
    evil = SipRecord(
        at=1_700_000_000.0,
        leg="caller",
        leg_call_id="c-1",
        transfer_id=None,
        direction="in",
        peer="udp:127.0.0.1:5060",
        first_line='INVITE sip:"><script>alert(1)</script>@x SIP/2.0',
        text="INVITE ...<img src=x onerror=alert(1)>",
        size=40,
        truncated=False,
    )
    page = render_report(_record((), (evil,)))
    assert "<script>alert(1)" not in page
    assert "<img src=x" not in page
    assert page.count("<script>") == 1  # the page's own


async def test_report_command_writes_the_page_and_refuses_unknown_calls(tmp_path: Path) -> None:
    store = tmp_path / "records.db"
    async with await Records.open(store) as records:
        await records.start_call("c-9", caller="Maria")
        await records.end_call("c-9")
    runner = CliRunner()
    missing = runner.invoke(app, ["report", "c-9", "--records", str(tmp_path / "none.db")])
    assert missing.exit_code == 1
    assert not (tmp_path / "none.db").exists()  # reading never creates a store
    unknown = runner.invoke(app, ["report", "nope", "--records", str(store)])
    assert unknown.exit_code == 1
    assert "no call 'nope'" in unknown.output
    out = tmp_path / "page.html"
    done = runner.invoke(app, ["report", "c-9", "--records", str(store), "--out", str(out)])
    assert done.exit_code == 0, done.output
    page = out.read_text()
    assert "Call c-9" in page and "caller Maria" in page
    assert "No transfer was recorded on this call." in page

"""A real warm transfer over SIP (baresip caller and human), recorded into a store, then
`warmtransfer report` run as a command and its page checked in headless Chromium: the ladder
has the INVITE/200/ACK/BYE of both legs, the recordings are embedded and decodable, and the
page logs nothing to the console (our page never logs: any console line is an error, a CSP
violation or an uncaught exception)."""

from __future__ import annotations

import asyncio
import re
import shutil
import sys
from html.parser import HTMLParser
from pathlib import Path

import pytest

from tests.e2e.conftest import (
    BRIEFING,
    Running,
    _require,
    baresip_caller,
    baresip_human,
    finish,
    plan_for,
)
from warmtransfer.server.recording import CALLER_LEG, RecordedCall
from warmtransfer.server.records import Records
from warmtransfer.transfer.outcome import Completed, TransferOutcome
from warmtransfer.transfer.states import Answered, State

pytestmark = pytest.mark.peers

REPO = Path(__file__).resolve().parents[2]
_CONSOLE = re.compile(r":CONSOLE(?::|\()")


@pytest.fixture
def need_chromium() -> None:
    _require("chromium")


class _Page(HTMLParser):
    """What the test reads from Chromium's DOM after the scripts ran."""

    def __init__(self) -> None:
        super().__init__()
        self.body: dict[str, str | None] = {}
        self.arrows: list[dict[str, str | None]] = []
        self.audio: list[dict[str, str | None]] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        found = dict(attrs)
        if tag == "body":
            self.body = found
        elif tag == "g" and "arrow" in (found.get("class") or "").split():
            self.arrows.append(found)
        elif tag == "audio":
            self.audio.append(found)


async def _chromium(page: Path, profile: Path) -> tuple[str, list[str]]:
    """The DOM after load (and up to 10 s of virtual time for the audio to be decoded), and
    the console lines Chromium logged."""
    browser = shutil.which("chromium")
    assert browser is not None
    process = await asyncio.create_subprocess_exec(
        browser,
        "--headless",
        "--no-sandbox",  # we are root in CI
        "--disable-gpu",
        f"--user-data-dir={profile}",
        "--enable-logging=stderr",
        "--v=0",
        "--virtual-time-budget=10000",
        "--dump-dom",
        page.as_uri(),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    async with asyncio.timeout(90):
        out, err = await process.communicate()
    assert process.returncode == 0, err.decode(errors="replace")[-2000:]
    console = [line for line in err.decode(errors="replace").splitlines() if _CONSOLE.search(line)]
    return out.decode(), console


async def test_console_check_catches_a_broken_page(tmp_path: Path, need_chromium: None) -> None:
    """The console check below can fail: a page that throws is caught by it."""
    page = tmp_path / "broken.html"
    page.write_text("<!DOCTYPE html><html><body><script>notDefined();</script></body></html>")
    _, console = await _chromium(page, tmp_path / "profile")
    assert any("notDefined" in line for line in console), console


async def test_recorded_transfer_reported_in_chromium(
    running: Running,
    tmp_path: Path,
    caller_wav: Path,
    human_wav: Path,
    need_baresip: None,
    need_chromium: None,
) -> None:
    engine = running.engine
    store = tmp_path / "records.db"
    audio_dir = tmp_path / "audio"
    records = await Records.open(store)
    try:
        async with (
            baresip_caller(tmp_path, caller_wav) as caller,
            baresip_human(tmp_path, human_wav, answer_delay=0.5) as human,
        ):

            async def engine_side() -> tuple[str, TransferOutcome]:
                call = await engine.next_call()
                await call.ring()
                await call.answer()
                async with RecordedCall(
                    records, engine, call, caller="baresip", audio_dir=audio_dir
                ) as recorded:
                    leg = engine.caller_leg(call)
                    outcome = await recorded.warm_transfer(
                        leg, plan_for(human.uri), BRIEFING, on_event=running.on_event
                    )
                    await call.wait_ended()
                return call.call_id, outcome

            side = asyncio.ensure_future(engine_side())
            await caller.dial(engine.uri)
            await caller.wait_event("CALL_ESTABLISHED")
            await human.wait_event("CALL_ESTABLISHED", timeout=15)
            async with asyncio.timeout(10):
                await running.happened(Answered).wait()
            await human.wait_recorded(2.0)  # some of the briefing
            await human.send_dtmf("1")
            async with asyncio.timeout(15):
                await running.reached(State.COMPLETED).wait()
            await human.wait_recorded(5.0)  # some bridged audio
            await caller.hangup()
            await human.wait_event("CALL_CLOSED", timeout=10)
            call_id, outcome = await finish(side)
        assert isinstance(outcome, Completed), outcome
        stored = await records.call(call_id)
    finally:
        await records.close()

    # The store, as the engine left it.
    assert stored is not None
    assert not stored.incomplete
    (transfer,) = stored.transfers
    assert not transfer.incomplete and transfer.reason == "completed"
    assert [e.name for e in transfer.events][-2:] == ["Accepted", "Bridged"]
    legs = {m.leg for m in stored.sip}
    human_leg = human.uri
    assert legs == {CALLER_LEG, human_leg}
    assert {r.leg for r in stored.recordings} == {CALLER_LEG, f"{human_leg} (attempt 1)"}

    # The command, as an operator runs it.
    page = tmp_path / "call.html"
    command = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "warmtransfer",
        "report",
        call_id,
        "--records",
        str(store),
        "--out",
        str(page),
        cwd=REPO,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    async with asyncio.timeout(60):
        output, _ = await command.communicate()
    assert command.returncode == 0, output.decode(errors="replace")
    html = page.read_text()
    assert "http://" not in html.replace('xmlns="http://www.w3.org/2000/svg"', "")
    assert "https://" not in html

    dom, console = await _chromium(page, tmp_path / "profile")
    assert console == [], console
    parsed = _Page()
    parsed.feed(dom)
    assert parsed.body.get("data-ready") == "yes"  # the page's script ran to its end
    assert parsed.body.get("data-arrows") == str(len(stored.sip)) == str(len(parsed.arrows))

    def arrows(leg: str) -> list[tuple[str | None, str]]:
        return [
            (a.get("class"), a.get("data-first-line") or "")
            for a in parsed.arrows
            if a.get("data-leg") == leg
        ]

    caller_arrows = arrows(CALLER_LEG)
    human_arrows = arrows(human_leg)
    # The caller called us: INVITE in, 200 out, ACK in; the caller hung up: BYE in, 200 out.
    assert any(k == "arrow in" and f.startswith("INVITE ") for k, f in caller_arrows)
    assert any(k == "arrow out" and f.startswith("SIP/2.0 200") for k, f in caller_arrows)
    assert any(k == "arrow in" and f.startswith("ACK ") for k, f in caller_arrows)
    assert any(k == "arrow in" and f.startswith("BYE ") for k, f in caller_arrows)
    # We called the human: INVITE out, 200 in, ACK out; we ended their leg: BYE out, 200 in.
    assert any(k == "arrow out" and f.startswith("INVITE ") for k, f in human_arrows)
    assert any(k == "arrow in" and f.startswith("SIP/2.0 200") for k, f in human_arrows)
    assert any(k == "arrow out" and f.startswith("ACK ") for k, f in human_arrows)
    bye = next(i for i, (k, f) in enumerate(human_arrows) if f.startswith("BYE "))
    assert human_arrows[bye][0] == "arrow out"
    assert any(f.startswith("SIP/2.0 200") for _, f in human_arrows[bye + 1 :]), human_arrows

    # Both recordings are in the page and Chromium decoded them.
    assert len(parsed.audio) == 2
    for element in parsed.audio:
        assert (element.get("src") or "").startswith("data:audio/wav;base64,")
        assert "data-error" not in element
        assert float(element.get("data-duration") or 0) > 3.0, element.get("data-leg")
    assert BRIEFING.summary in dom

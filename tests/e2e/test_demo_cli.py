"""`warmtransfer demo`, run as a new user runs it from the README: a real process, real SIP/RTP
on loopback, real piper speech. Both paths run at once to keep the suite short.
"""

from __future__ import annotations

import asyncio
import json
import sys
from pathlib import Path

from tests.audio_checks import level, load, window


async def run_demo(out: Path, *extra: str) -> tuple[int, str]:
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "warmtransfer",
        "demo",
        "--out",
        str(out),
        *extra,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    try:
        async with asyncio.timeout(150):
            output, _ = await process.communicate()
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
    return process.returncode or 0, output.decode()


async def test_demo_accept_by_voice_and_decline_by_key(tmp_path: Path) -> None:
    (accept_rc, accept_out), (decline_rc, decline_out) = await asyncio.gather(
        run_demo(tmp_path / "accept"), run_demo(tmp_path / "decline", "--decline", "--keys")
    )
    assert accept_rc == 0, accept_out
    assert decline_rc == 0, decline_out

    accepted = json.loads((tmp_path / "accept" / "summary.json").read_text())
    assert accepted["outcome"] == "completed"
    assert accepted["accepted_via"] == "said 'yes'"  # the human spoke; nobody pressed a key
    assert all(value is not None for value in accepted["figures"].values()), accepted
    assert "INVITE sip:sam@127.0.0.1" in accept_out  # the live timeline shows the SIP flow
    assert "hunting → bridging" in accept_out
    # The briefing was built from the call: the topic the caller said, the account keyed in.
    assert "double charge" in accepted["briefing"] and "4471" in accepted["briefing"]
    handoff = json.loads((tmp_path / "accept" / "handoff.json").read_text())
    assert handoff["caller_name"] == "Maria Lopez"
    assert handoff["key_facts"]["account"] == "4471"
    said = [turn["text"] for turn in handoff["transcript"] if turn["speaker"] == "caller"]
    assert said and "refund" in said[0]  # what pocketsphinx heard of the caller's turn
    assert handoff["attempts"][0]["reason"] == "completed"

    declined = json.loads((tmp_path / "decline" / "summary.json").read_text())
    assert declined["outcome"] == "declined"
    assert "couldn't connect you" in decline_out  # the AI tells the caller, back from hold

    for folder in ("accept", "decline"):
        timeline = json.loads((tmp_path / folder / "timeline.json").read_text())
        sources = {entry["source"] for entry in timeline}
        assert {"sip", "transfer", "caller", "human", "ai"} <= sources
        human = load(tmp_path / folder / "human-heard.wav", channel=0)
        assert level(window(human, 0.0, 3.0)) > -40, "the human heard no briefing"
        caller = load(tmp_path / folder / "caller-heard.wav", channel=0)
        assert level(window(caller, 0.0, 4.0)) > -40, "the caller heard no greeting"

"""`warmtransfer serve`, run as an operator runs it: a real process on loopback, a baresip caller
who presses 0 at the built-in scripted agent's menu, a baresip human who presses 1, the record
in the SQLite store; SIGTERM during a transfer drains and exits 0; a bad config exits 2."""

from __future__ import annotations

import os
import re
import signal
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import pytest

from tests.e2e.conftest import baresip_caller, baresip_human
from tests.peers.ports import free_port_pair
from tests.peers.process import PeerProcess
from warmtransfer.server.records import Records

pytestmark = pytest.mark.peers

REPO = Path(__file__).resolve().parents[2]


def write_config(
    folder: Path,
    port: int,
    human_uri: str,
    *,
    consult_timeout: float = 30,
    records: Path | str = "records.sqlite3",
) -> Path:
    """A config of the scripted agent's `front` plan to `human_uri`; `records` relative to
    `folder`. Other tests append sections to it."""
    path = folder / "warmtransfer.toml"
    path.write_text(
        f"""
[sip]
host = "127.0.0.1"
listen = [{{ transport = "udp", port = {port} }}]

[allow]
patterns = ["sip:human@127.0.0.1:*"]

[plans.front]
consult_timeout = {consult_timeout}

[[plans.front.targets]]
uri = "{human_uri}"
ring_timeout = 15

[speech]
spoken_answers = false   # the human's microphone sends a tone, not words
answer_detection = false

[records]
path = "{records}"
"""
    )
    return path


@asynccontextmanager
async def serve(folder: Path, config: Path, *extra: str) -> AsyncIterator[PeerProcess]:
    process = PeerProcess(
        "serve",
        [sys.executable, "-m", "warmtransfer", "serve", "--config", str(config), *extra],
        REPO,
        folder / "serve.log",
    )
    await process.start()
    try:
        yield process
    finally:
        await process.stop(grace=20.0)


async def test_caller_presses_0_human_accepts_record_written(
    tmp_path: Path, caller_wav: Path, human_wav: Path, need_baresip: None
) -> None:
    port = free_port_pair()
    async with baresip_human(tmp_path, human_wav) as human:
        config = write_config(tmp_path, port, human.uri)
        async with serve(tmp_path, config) as service:
            await service.wait_for_output(r"ready: taking calls", timeout=120)
            async with baresip_caller(tmp_path, caller_wav) as caller:
                await caller.dial(f"sip:warmtransfer@127.0.0.1:{port}")
                await caller.wait_event("CALL_ESTABLISHED")
                answered = await service.wait_for_output(r"call (\S+) from \S+ answered", 10)
                call_id = answered.group(1)
                await caller.send_dtmf("0")
                await service.wait_for_output(r"caller pressed 0, transferring", 20)
                await human.wait_event("CALL_ESTABLISHED", timeout=30)
                await human.wait_recorded(2.0)  # some of the briefing
                await human.send_dtmf("1")
                await service.wait_for_output(r"transfer outcome completed", 30)
                await caller.hangup()
                await human.wait_event("CALL_CLOSED", timeout=10)  # the bridge ended with it
                await service.wait_for_output(rf"call {re.escape(call_id)} ended", 15)
            os.kill(service.pid or 0, signal.SIGTERM)
            assert await service.wait_exit(20) == 0, service.tail()
    assert "Traceback" not in service.log, service.tail()

    records = await Records.open(tmp_path / "records.sqlite3")
    try:
        stored = await records.call(call_id)
    finally:
        await records.close()
    assert stored is not None
    assert not stored.incomplete
    (transfer,) = stored.transfers
    assert transfer.reason == "completed" and not transfer.incomplete
    assert [e.name for e in transfer.events][-2:] == ["Accepted", "Bridged"]
    assert {m.leg for m in stored.sip} >= {"caller"}


async def test_sigterm_during_a_transfer_drains_and_exits_0(
    tmp_path: Path, caller_wav: Path, human_wav: Path, need_baresip: None
) -> None:
    port = free_port_pair()
    async with baresip_human(tmp_path, human_wav) as human:
        config = write_config(tmp_path, port, human.uri)
        async with serve(tmp_path, config, "--drain-timeout", "3") as service:
            await service.wait_for_output(r"ready: taking calls", timeout=120)
            async with baresip_caller(tmp_path, caller_wav) as caller:
                await caller.dial(f"sip:warmtransfer@127.0.0.1:{port}")
                await caller.wait_event("CALL_ESTABLISHED")
                answered = await service.wait_for_output(r"call (\S+) from \S+ answered", 10)
                await caller.send_dtmf("0")
                await human.wait_event("CALL_ESTABLISHED", timeout=30)  # being briefed
                mark = len(service.log)
                os.kill(service.pid or 0, signal.SIGTERM)
                await service.wait_for_output(r"service draining", 5, start=mark)
                # The transfer is under way and nobody decides: the drain timeout ends it.
                await service.wait_for_output(r"drain timeout: ending 1 call", 10, start=mark)
                await caller.wait_event("CALL_CLOSED", timeout=10)  # our BYE
                await human.wait_event("CALL_CLOSED", timeout=10)  # the human's leg released
                assert await service.wait_exit(20) == 0, service.tail()
    log = service.log
    assert "Traceback" not in log, service.tail()
    assert re.search(r"transfer outcome caller_hung_up", log), service.tail()
    records = await Records.open(tmp_path / "records.sqlite3")
    try:
        stored = await records.call(answered.group(1))
    finally:
        await records.close()
    assert stored is not None and not stored.incomplete
    (transfer,) = stored.transfers
    assert not transfer.incomplete


async def test_a_bad_config_exits_2_with_the_error(tmp_path: Path) -> None:
    config = tmp_path / "warmtransfer.toml"
    config.write_text('[sip]\nlisten = [{ transport = "ws", port = 5060 }]\n')
    async with serve(tmp_path, config) as service:
        assert await service.wait_exit(60) == 2
    assert re.search(r"warmtransfer\.toml:2: sip\.listen\[0\]\.transport", service.log), service.log
    assert "ready: taking calls" not in service.log

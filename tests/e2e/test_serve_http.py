"""`warmtransfer serve` with everything on: the HTTP API (token from the environment), signed
webhooks to a receiver run by the test, the records store. A baresip caller presses 0 at the
scripted agent's menu, a baresip human presses 1; then the receiver holds signed events and the
final handoff record, `/metrics` shows the completed transfer and the calls up, a bad token is
401, an inline plan to a destination outside the allow-list is 403, and SIGTERM exits 0."""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
from aiohttp import web

from tests.e2e.conftest import baresip_caller, baresip_human
from tests.e2e.test_serve import serve
from tests.e2e.test_serve import write_config as base_config
from tests.peers.baresip import BaresipPeer
from tests.peers.ports import free_port_pair
from tests.peers.process import PeerProcess
from tests.peers.sipp import SippPeer
from warmtransfer.server.webhooks import (
    DELIVERY_HEADER,
    SIGNATURE_HEADER,
    SignatureError,
    verify_signature,
)

pytestmark = pytest.mark.peers

TOKEN_ENV = "WARMTRANSFER_E2E_API_TOKEN"
TOKEN = "e2e-token-" + "x" * 40
SECRET = "e2e-webhook-secret"


@dataclass
class Receiver:
    """A webhook receiver: checks each delivery's signature, keeps the verified bodies."""

    url: str = ""
    verified: list[dict[str, Any]] = field(default_factory=list)
    rejected: list[str] = field(default_factory=list)
    changed: asyncio.Event = field(default_factory=asyncio.Event)

    async def handle(self, request: web.Request) -> web.Response:
        body = await request.read()
        try:
            verify_signature(body, request.headers.get(SIGNATURE_HEADER), SECRET)
        except SignatureError as exc:
            self.rejected.append(f"{request.headers.get(DELIVERY_HEADER)}: {exc}")
            self.changed.set()
            return web.Response(status=400)
        self.verified.append(json.loads(body))
        self.changed.set()
        return web.Response(status=204)

    def handoffs(self) -> list[dict[str, Any]]:
        return [d for d in self.verified if d["type"] == "transfer.handoff"]

    def events(self) -> list[dict[str, Any]]:
        return [d["data"] for d in self.verified if d["type"] == "transfer.event"]

    async def wait_for(self, ready: Callable[[], bool], what: str, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while not ready():
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise AssertionError(f"no {what} delivered in {timeout} s: {self.verified}")
            self.changed.clear()
            try:
                async with asyncio.timeout(remaining):
                    await self.changed.wait()
            except TimeoutError:
                continue

    async def wait_handoff(self, timeout: float) -> dict[str, Any]:
        await self.wait_for(lambda: bool(self.handoffs()), "handoff", timeout)
        return self.handoffs()[-1]


@asynccontextmanager
async def receiver() -> AsyncIterator[Receiver]:
    hooks = Receiver()
    app = web.Application()
    app.router.add_post("/hooks", hooks.handle)
    runner = web.AppRunner(app, access_log=None, handle_signals=False)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    hooks.url = f"http://127.0.0.1:{port}/hooks"
    try:
        yield hooks
    finally:
        await runner.cleanup()


def write_config(folder: Path, port: int, human_uri: str, hooks_url: str) -> Path:
    """test_serve.py's config, plus the HTTP API, webhooks, the agent's plan and the drain."""
    path = base_config(folder, port, human_uri)
    with path.open("a") as config:
        config.write(
            f"""
[http]
listen = "127.0.0.1:0"   # any free port: read from the log
token = {{ env = "{TOKEN_ENV}" }}

[webhooks]
urls = ["{hooks_url}"]
secret = "{SECRET}"

[agent]
plan = "front"

[service]
drain_timeout = 5
"""
        )
    return path


@dataclass
class Served:
    """A running serve (API on, webhooks to `hooks`) with one baresip caller answered."""

    service: PeerProcess
    http: httpx.AsyncClient
    caller: BaresipPeer
    call_id: str


@asynccontextmanager
async def a_served_call(
    tmp_path: Path, human_uri: str, hooks: Receiver, caller_wav: Path
) -> AsyncIterator[Served]:
    """Start serve, wait until it takes calls, call it; on the way out (the caller gone),
    SIGTERM it and check that it exits 0 without a traceback."""
    port = free_port_pair()
    config = write_config(tmp_path, port, human_uri, hooks.url)
    async with serve(tmp_path, config) as service:
        listening = await service.wait_for_output(r"HTTP API listening on \S+:(\d+)", 120)
        await service.wait_for_output(r"ready: taking calls", timeout=120)
        async with (
            httpx.AsyncClient(
                base_url=f"http://127.0.0.1:{listening.group(1)}", timeout=10
            ) as http,
            baresip_caller(tmp_path, caller_wav) as caller,
        ):
            await caller.dial(f"sip:warmtransfer@127.0.0.1:{port}")
            await caller.wait_event("CALL_ESTABLISHED")
            answered = await service.wait_for_output(r"call (\S+) from \S+ answered", 10)
            yield Served(service, http, caller, answered.group(1))
        os.kill(service.pid or 0, signal.SIGTERM)
        assert await service.wait_exit(20) == 0, service.tail()
    assert "Traceback" not in service.log, service.tail()
    assert not hooks.rejected, hooks.rejected


def metric(text: str, name: str, **labels: str) -> float | None:
    for line in text.splitlines():
        if line.startswith("#") or not line.startswith(name):
            continue
        head, _, value = line.rpartition(" ")
        if not (head == name or head.startswith(name + "{")):
            continue
        if all(f'{key}="{val}"' in head for key, val in labels.items()):
            return float(value)
    return None


async def test_serve_with_api_webhooks_and_metrics(
    tmp_path: Path,
    caller_wav: Path,
    human_wav: Path,
    need_baresip: None,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv(TOKEN_ENV, TOKEN)  # the service inherits the test's environment
    auth = {"Authorization": f"Bearer {TOKEN}"}
    async with (
        receiver() as hooks,
        baresip_human(tmp_path, human_wav) as human,
        a_served_call(tmp_path, human.uri, hooks, caller_wav) as served,
    ):
        service, http, call_id = served.service, served.http, served.call_id
        await served.caller.send_dtmf("0")
        await service.wait_for_output(r"caller pressed 0, transferring", 20)
        await human.wait_event("CALL_ESTABLISHED", timeout=30)
        await human.wait_recorded(2.0)  # some of the briefing
        await human.send_dtmf("1")
        await service.wait_for_output(r"transfer outcome completed", 30)

        # Caller and human are talking: the metrics show the transfer and both calls.
        scraped = await http.get("/metrics", headers=auth)
        assert scraped.status_code == 200, scraped.text
        ended = metric(
            scraped.text,
            "warmtransfer_transfers_ended_total",
            state="completed",
            reason="completed",
        )
        assert ended == 1.0, scraped.text
        assert metric(scraped.text, "warmtransfer_transfers_started_total") == 1.0
        calls_up = metric(scraped.text, "warmtransfer_calls_in_progress")
        assert calls_up is not None and calls_up >= 2, scraped.text

        listed = await http.get("/v1/calls", headers=auth)
        assert listed.status_code == 200
        assert call_id in {c["call_id"] for c in listed.json()["calls"]}
        bad = await http.get("/v1/calls", headers={"Authorization": "Bearer nope"})
        assert bad.status_code == 401
        assert bad.json()["error"] == "unauthorized"

        outside = await http.post(
            f"/v1/calls/{call_id}/transfers",
            headers=auth,
            json={
                "plan": {"targets": [{"uri": "sip:premium@198.51.100.9"}]},
                "briefing": {"summary": "Dial a number we must never dial."},
            },
        )
        assert outside.status_code == 403, outside.text
        assert outside.json()["error"] == "destination_not_allowed"

        handoff = await hooks.wait_handoff(15)
        await served.caller.hangup()
        await human.wait_event("CALL_CLOSED", timeout=10)
        await service.wait_for_output(rf"call {re.escape(call_id)} ended", 15)

    # JSON lines, each naming its call (and its transfer, inside one).
    log = service.log
    lines = [json.loads(line) for line in log.splitlines() if line.startswith("{")]
    assert any(line.get("call_id") == call_id for line in lines), log[-3000:]
    assert any(line.get("transfer_id") for line in lines), log[-3000:]

    kinds = [d["type"] for d in hooks.verified]
    assert kinds.count("transfer.handoff") == 1, kinds
    events = hooks.events()
    assert events and events[-1]["state"] == "completed", events
    transfer_id = handoff["data"]["transfer_id"]
    assert {e["transfer_id"] for e in events} == {transfer_id}
    assert handoff["data"]["call_id"] == call_id
    assert handoff["data"]["outcome"]["ok"] is True
    assert handoff["data"]["outcome"]["reason"] == "completed"
    record = handoff["data"]["record"]
    assert record is not None and record["whisper"], record
    assert record["attempts"], record


async def test_a_transfer_started_through_the_api_is_signed_and_recorded(
    tmp_path: Path,
    caller_wav: Path,
    human_wav: Path,
    need_baresip: None,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The app, not the caller, asks for the human: POST a transfer with the config's plan; the
    webhooks carry its events and handoff, and the caller stays with the human once bridged."""
    monkeypatch.setenv(TOKEN_ENV, TOKEN)
    auth = {"Authorization": f"Bearer {TOKEN}"}
    async with (
        receiver() as hooks,
        baresip_human(tmp_path, human_wav) as human,
        a_served_call(tmp_path, human.uri, hooks, caller_wav) as served,
    ):
        service, http, call_id = served.service, served.http, served.call_id
        started = await http.post(
            f"/v1/calls/{call_id}/transfers",
            headers=auth,
            json={
                "plan": "front",
                "briefing": {"summary": "Wants to change the delivery address."},
            },
        )
        assert started.status_code == 202, started.text
        transfer_id = started.json()["transfer_id"]
        await human.wait_event("CALL_ESTABLISHED", timeout=30)
        await human.wait_recorded(2.0)
        await human.send_dtmf("1")
        handoff = await hooks.wait_handoff(30)
        assert handoff["data"]["transfer_id"] == transfer_id
        assert handoff["data"]["outcome"]["reason"] == "completed"
        state = await http.get(f"/v1/transfers/{transfer_id}", headers=auth)
        assert state.json()["state"] == "completed", state.text
        record = await http.get(f"/v1/transfers/{transfer_id}/record", headers=auth)
        assert record.status_code == 200 and record.json()["call_id"] == call_id
        # Bridged: the service leaves caller and human talking (no BYE from us).
        assert "CALL_CLOSED" not in served.caller.event_types()
        await served.caller.hangup()
        await human.wait_event("CALL_CLOSED", timeout=10)
        # ... and the call ended with the caller's BYE, not ours.
        await service.wait_for_output(rf"call {re.escape(call_id)} ended \(remote_bye\)", 15)
    events = hooks.events()
    assert {e["transfer_id"] for e in events} == {transfer_id}
    assert events[-1]["state"] == "completed"


async def test_the_agent_pauses_while_an_api_transfer_holds_the_caller_then_carries_on(
    tmp_path: Path,
    caller_wav: Path,
    need_baresip: None,
    need_sipp: None,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The app starts a transfer to a human who rings, then is busy. While the caller is held
    the built-in agent is paused: a 0 pressed on hold is the transfer's key (ignored), not the
    agent's "transfer me". Once the transfer has failed the caller is back with the agent, not
    hung up, and the same key now reaches the agent's menu."""
    monkeypatch.setenv(TOKEN_ENV, TOKEN)
    auth = {"Authorization": f"Bearer {TOKEN}"}
    busy = SippPeer.uas(tmp_path, "uas_busy", variables={"ring_ms": 4000}, timeout=120)
    async with (
        receiver() as hooks,
        busy as human,
        a_served_call(tmp_path, human.uri, hooks, caller_wav) as served,
    ):
        service, caller, call_id = served.service, served.caller, served.call_id
        started = await served.http.post(
            f"/v1/calls/{call_id}/transfers",
            headers=auth,
            json={"plan": "front", "briefing": {"summary": "Asked for a refund."}},
        )
        assert started.status_code == 202, started.text
        await hooks.wait_for(
            lambda: any(e["event"] == "Ringing" for e in hooks.events()), "Ringing", 20
        )
        await caller.send_dtmf("0")  # on hold: not the agent's
        handoff = await hooks.wait_handoff(30)
        assert handoff["data"]["outcome"]["reason"] == "busy", handoff
        assert "caller pressed 0" not in service.log, service.tail()
        assert "CALL_CLOSED" not in caller.event_types()  # back with the agent
        await caller.send_dtmf("0")
        await service.wait_for_output(r"caller pressed 0, transferring", 30)
        await caller.hangup()
        await service.wait_for_output(rf"call {re.escape(call_id)} ended", 40)

"""`Service` as `warmtransfer serve` runs it, on loopback: a real engine (with a stand-in voice),
the HTTP API, the records store, an agent given in Python, a caller (a user agent) and a human
(a raw SIP wire that answers when the test says). What the service does around the calls: a
draining service starts no transfer through the API, the API's transfers reach the hooks, an
agent that raises still ends its call properly, an agent's transfer reads the same through the
API from start to end, and shutdown ends the engine before it closes what records it."""

from __future__ import annotations

import asyncio
import logging
import sqlite3
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest

import warmtransfer.server.service as service_module
from tests.unit.conftest import started_ua
from tests.unit.sip_wire import Wire, new_call_id
from tests.unit.test_http_api import AUTH, BRIEFING, TOKEN, NeverConsulted, StandInTTS
from warmtransfer.config.model import Config
from warmtransfer.engine import Engine
from warmtransfer.server.http import HttpApi
from warmtransfer.server.records import Records, load_call, open_for_reading
from warmtransfer.server.service import Service, ServiceHooks, ServiceState
from warmtransfer.server.session import CallSession
from warmtransfer.server.webhooks import WebhookSender
from warmtransfer.sip.call import Call
from warmtransfer.sip.useragent import UserAgent
from warmtransfer.transfer.events import TransferEvent
from warmtransfer.transfer.states import is_terminal

DEADLINE = 10.0
SECRET = "whsec-service-test-0123456789"

Agent = Callable[[CallSession], Awaitable[Any]]


@contextmanager
def logged(text: str) -> Iterator[asyncio.Event]:
    """An event set when the service logs a line containing `text`."""
    seen = asyncio.Event()

    class Watch(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            if text in record.getMessage():
                seen.set()

    handler = Watch()
    logger = logging.getLogger("warmtransfer.service")
    logger.addHandler(handler)
    try:
        yield seen
    finally:
        logger.removeHandler(handler)


async def until_hung_up(session: CallSession) -> None:
    """An agent that says nothing and waits for the caller to go."""
    await session.call.wait_ended()


@dataclass
class Running:
    service: Service
    wire: Wire
    phone: UserAgent
    client: httpx.AsyncClient
    records: Path
    sessions: asyncio.Queue[CallSession] = field(default_factory=asyncio.Queue)
    events: list[tuple[CallSession, TransferEvent]] = field(default_factory=list)
    transfer_ended: asyncio.Event = field(default_factory=asyncio.Event)
    draining: asyncio.Event = field(default_factory=asyncio.Event)

    async def call(self) -> tuple[Call, CallSession]:
        """The caller calls; the service answers and runs the agent on a session."""
        assert self.service.engine is not None
        async with asyncio.timeout(DEADLINE):
            phone_call = await self.phone.call(self.service.engine.uri)
            return phone_call, await self.sessions.get()

    def on_event(self, session: CallSession, event: TransferEvent) -> None:
        self.events.append((session, event))
        if is_terminal(event.state):
            self.transfer_ended.set()

    def on_state(self, state: ServiceState) -> None:
        if state is ServiceState.DRAINING:
            self.draining.set()


def config(wire: Wire, records: Path, *, webhooks: bool = False) -> Config:
    return Config.model_validate(
        {
            "sip": {"host": "127.0.0.1", "listen": [{"transport": "udp", "port": 0}]},
            "allow": {"patterns": [f"sip:*@127.0.0.1:{wire.port}"]},
            "plans": {"p": {"targets": [{"uri": f"sip:human@127.0.0.1:{wire.port}"}]}},
            "http": {"listen": "127.0.0.1:0", "token": TOKEN},
            "records": {"path": str(records)},
            **(
                {"webhooks": {"urls": ["http://127.0.0.1:9/hook"], "secret": SECRET}}
                if webhooks
                else {}
            ),
        }
    )


@asynccontextmanager
async def running(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, agent: Agent, *, webhooks: bool = False
) -> AsyncIterator[Running]:
    """A service taking calls; stopped (and its run awaited) on the way out."""
    monkeypatch.setattr(
        service_module,
        "engine_from_config",  # the config's engine, with a voice that needs no model
        lambda _: Engine("127.0.0.1", 0, tts=StandInTTS(), consultant=NeverConsulted()),
    )
    wire = await Wire.open()
    records = tmp_path / "records.db"
    service = Service(config(wire, records, webhooks=webhooks), agent=agent, handle_signals=False)
    run = asyncio.create_task(service.run())
    try:
        async with asyncio.timeout(DEADLINE):
            ready = asyncio.ensure_future(service.ready.wait())
            await asyncio.wait({run, ready}, return_when=asyncio.FIRST_COMPLETED)
            ready.cancel()
            if run.done():
                run.result()  # it failed to start: say why
        assert service.http is not None
        async with (
            started_ua(user="caller") as phone,
            httpx.AsyncClient(base_url=service.http.url, headers=AUTH, timeout=DEADLINE) as client,
        ):
            line = Running(service, wire, phone, client, records)
            service.hooks = ServiceHooks(
                call_started=line.sessions.put_nowait,
                transfer_event=line.on_event,
                state_changed=line.on_state,
            )
            yield line
    finally:
        service.stop()
        async with asyncio.timeout(3 * DEADLINE):
            await asyncio.gather(run, return_exceptions=True)
        wire.close()
        await wire.wait_closed()


async def test_a_draining_service_starts_no_transfer_through_the_api(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with running(tmp_path, monkeypatch, until_hung_up) as line:
        phone_call, session = await line.call()
        line.service.stop()
        async with asyncio.timeout(DEADLINE):
            await line.draining.wait()  # the call goes on: the service drains
        response = await line.client.post(
            f"/v1/calls/{session.call_id}/transfers", json={"plan": "p", "briefing": BRIEFING}
        )
        assert response.status_code == 503, response.text
        assert response.json()["error"] == "draining"
        assert response.headers["Retry-After"] == "30"
        assert not line.wire.requests("INVITE")  # nobody was dialled
        # A proxy pinging with OPTIONS hears what a new INVITE would (RFC 3261 11.2).
        assert line.service.engine is not None
        ours = line.service.engine.ua.address
        line.wire.send(line.wire.request("OPTIONS", ours, call_id=new_call_id()), ours)
        refused = await line.wire.response(503, "OPTIONS")
        assert refused.headers.get("Retry-After") == "30"
        await phone_call.hangup()


async def test_the_api_transfers_events_reach_the_hook_with_their_session(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with running(tmp_path, monkeypatch, until_hung_up) as line:
        phone_call, session = await line.call()
        response = await line.client.post(
            f"/v1/calls/{session.call_id}/transfers", json={"plan": "p", "briefing": BRIEFING}
        )
        assert response.status_code == 202, response.text
        invite = await line.wire.request_of("INVITE")
        line.wire.reply(invite, 486, to_tag="busy")
        async with asyncio.timeout(DEADLINE):
            await line.transfer_ended.wait()
        tid = response.json()["transfer_id"]
        assert {(s, e.transfer_id) for s, e in line.events} == {(session, tid)}
        names = [e.event.name for _, e in line.events]
        assert names[:3] == ["Start", "HoldStarted", "DialStarted"]
        assert names[-1] == "Recovered"
        await phone_call.hangup()


async def test_an_agent_that_raises_still_ends_its_call_properly(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """The API's transfer on the call is not cut off by the agent's failure, the call is hung up
    after it (the caller was not handed over), and the call's record is complete."""
    proceed = asyncio.Event()

    async def faulty(session: CallSession) -> None:
        await proceed.wait()
        raise RuntimeError("a bug in the agent")

    async with running(tmp_path, monkeypatch, faulty) as line:
        phone_call, session = await line.call()
        response = await line.client.post(
            f"/v1/calls/{session.call_id}/transfers", json={"plan": "p", "briefing": BRIEFING}
        )
        assert response.status_code == 202, response.text
        tid = response.json()["transfer_id"]
        invite = await line.wire.request_of("INVITE")
        with logged("the agent failed") as failed:
            proceed.set()  # the agent raises while the API's transfer hunts
            async with asyncio.timeout(DEADLINE):
                await failed.wait()
        line.wire.reply(invite, 486, to_tag="busy")
        async with asyncio.timeout(DEADLINE):
            assert line.service.api is not None
            outcome = await line.service.api.wait(tid)
            await phone_call.wait_ended()  # hung up by the service
        assert outcome.reason.value == "busy"  # not caller_hung_up: it was not cut off
        assert any(r.levelno == logging.ERROR and r.exc_info for r in caplog.records)
    conn = open_for_reading(line.records)
    try:
        record = load_call(conn, session.call_id)
    finally:
        conn.close()
    assert record is not None and record.incomplete is False and record.ended is not None
    assert [t.reason for t in record.transfers] == ["busy"]


async def test_an_agents_transfer_reads_the_same_through_the_api_to_its_end(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """While it runs, it names its call; once it has ended, it never reads as running again
    (not even while its outcome is being written to the store)."""

    returned = asyncio.Event()

    async def transferring(session: CallSession) -> None:
        await session.warm_transfer("p")
        returned.set()
        await session.call.wait_ended()

    async with running(tmp_path, monkeypatch, transferring) as line:
        phone_call, session = await line.call()
        invite = await line.wire.request_of("INVITE")
        ((tid,),) = [{e.transfer_id for _, e in line.events}]
        running_now = (await line.client.get(f"/v1/transfers/{tid}")).json()
        assert running_now["call_id"] == session.call_id and running_now["ended"] is False
        # Hold the outcome's write to the store, and read the transfer meanwhile.
        records = line.service.records
        assert records is not None
        writing, release = asyncio.Event(), asyncio.Event()
        finish = records.finish_transfer

        async def slow_finish(*args: Any, **kwargs: Any) -> None:
            writing.set()
            await release.wait()
            await finish(*args, **kwargs)

        monkeypatch.setattr(records, "finish_transfer", slow_finish)
        line.wire.reply(invite, 486, to_tag="busy")
        async with asyncio.timeout(DEADLINE):
            await writing.wait()
        meanwhile = (await line.client.get(f"/v1/transfers/{tid}")).json()
        assert meanwhile["ended"] is True and meanwhile["state"] == "failed"
        assert meanwhile["call_id"] == session.call_id
        release.set()
        async with asyncio.timeout(DEADLINE):
            await returned.wait()
        assert line.service.engine is not None and tid not in line.service.engine.transfers
        after = (await line.client.get(f"/v1/transfers/{tid}")).json()  # from the store now
        assert after["ended"] is True and after["call_id"] == session.call_id
        assert after["outcome"]["reason"] == "busy"
        assert [e["event"] for e in after["events"]] == [e["event"] for e in meanwhile["events"]]
        await phone_call.hangup()


async def test_shutdown_closes_the_engine_before_what_records_and_reports_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Whatever `engine.close` still ends must reach the webhooks and the records store: both
    are closed after it (and the API stops first, once the last call has ended)."""
    order: list[str] = []

    def spy(cls: type, name: str, label: str) -> None:
        original = getattr(cls, name)

        async def recorded(self: Any, *args: Any, **kwargs: Any) -> Any:
            order.append(label)
            return await original(self, *args, **kwargs)

        monkeypatch.setattr(cls, name, recorded)

    spy(HttpApi, "stop", "http")
    spy(Engine, "close", "engine")
    spy(WebhookSender, "stop", "webhooks")
    spy(Records, "close", "records")
    async with running(tmp_path, monkeypatch, until_hung_up, webhooks=True):
        pass
    assert order == ["http", "engine", "webhooks", "records"]
    with sqlite3.connect(tmp_path / "records.db") as conn:  # closed cleanly, and readable
        assert conn.execute("SELECT count(*) FROM calls").fetchone() == (0,)

"""The HTTP API on a real server (127.0.0.1, a free port): token auth, the allow-list on every
start, named and inline plans, cancel, state, the OpenAPI document, and one transfer on a real
SIP call through `EngineServiceApi` (the human's side answers 486 Busy)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.unit.conftest import started_ua
from tests.unit.sip_wire import Wire
from warmtransfer.consult.ports import Briefing
from warmtransfer.engine import Engine
from warmtransfer.media.audio import AudioClip
from warmtransfer.server.http import HttpApi, openapi_document
from warmtransfer.server.metrics import Metrics
from warmtransfer.server.records import Records
from warmtransfer.server.service_api import (
    CallInfo,
    CallNotFound,
    EngineServiceApi,
    RecordsDisabled,
    TransferInfo,
    TransferNotFound,
)
from warmtransfer.transfer.plan import TransferPlan
from warmtransfer.transfer.target import AllowList, Target

TOKEN = "t" * 40
AUTH = {"Authorization": f"Bearer {TOKEN}"}
ALLOW = AllowList(patterns=("sip:*@pbx.example.com",))
SALES = TransferPlan(targets=(Target(uri="sip:sales@pbx.example.com"),), allow=ALLOW)
BRIEFING = {"summary": "Bob wants a refund", "caller": "Bob", "facts": {"order": "1234"}}
DEADLINE = 10.0


@dataclass
class MemoryService:
    """ServiceApi in memory: one call "c1"; records what it was asked to start."""

    started: list[tuple[str, TransferPlan, Briefing]] = field(default_factory=list)
    states: dict[str, str] = field(default_factory=dict)

    async def list_calls(self) -> list[CallInfo]:
        return [CallInfo(call_id="c1", direction="inbound", state="confirmed")]

    async def start_transfer(
        self, call_id: str, plan: TransferPlan, briefing: Briefing
    ) -> TransferInfo:
        if call_id != "c1":
            raise CallNotFound(f"no call {call_id!r}")
        plan.check_allowed()
        self.started.append((call_id, plan, briefing))
        tid = f"t{len(self.started)}"
        self.states[tid] = "hunting"
        return TransferInfo(transfer_id=tid, call_id=call_id, state="hunting", ended=False)

    async def cancel_transfer(self, transfer_id: str) -> TransferInfo:
        if transfer_id not in self.states:
            raise TransferNotFound(transfer_id)
        self.states[transfer_id] = "failed"
        return await self.transfer_state(transfer_id)

    async def transfer_state(self, transfer_id: str) -> TransferInfo:
        if transfer_id not in self.states:
            raise TransferNotFound(f"no transfer {transfer_id!r}")
        state = self.states[transfer_id]
        return TransferInfo(
            transfer_id=transfer_id, call_id="c1", state=state, ended=state == "failed"
        )

    async def transfer_record(self, transfer_id: str) -> dict[str, Any]:
        raise RecordsDisabled("no records store")


@pytest.fixture
async def memory() -> AsyncIterator[tuple[HttpApi, MemoryService, httpx.AsyncClient]]:
    service = MemoryService()
    api = await HttpApi(
        service, token=TOKEN, plans={"sales": SALES}, allow=ALLOW, port=0, metrics=Metrics()
    ).start()
    try:
        async with httpx.AsyncClient(base_url=api.url, timeout=DEADLINE) as client:
            yield api, service, client
    finally:
        await api.stop()


async def test_a_missing_or_bad_token_is_401_and_never_echoed(
    memory: tuple[HttpApi, MemoryService, httpx.AsyncClient],
) -> None:
    _, service, client = memory
    wrong = "wrong-token-value-" + "x" * 30
    cases = [
        {},
        {"Authorization": f"Bearer {wrong}"},
        {"Authorization": f"Basic {TOKEN}"},
        {"Authorization": TOKEN},
        {"Authorization": f"Bearer {TOKEN}x"},
    ]
    for headers in cases:
        for method, path in [
            ("GET", "/v1/calls"),
            ("POST", "/v1/calls/c1/transfers"),
            ("GET", "/v1/transfers/t1"),
            ("POST", "/v1/transfers/t1/cancel"),
            ("GET", "/metrics"),
        ]:
            response = await client.request(
                method, path, headers=headers, json={"plan": "sales", "briefing": BRIEFING}
            )
            assert response.status_code == 401, (headers, path)
            assert response.json()["error"] == "unauthorized"
            assert wrong not in response.text and TOKEN not in response.text
            assert response.headers["WWW-Authenticate"].startswith("Bearer")
    assert service.started == []  # nothing was started without a token
    ok = await client.get("/v1/calls", headers=AUTH)
    assert ok.status_code == 200 and ok.json()["calls"][0]["call_id"] == "c1"


async def test_an_inline_plan_outside_the_allow_list_is_403_and_nothing_is_dialled(
    memory: tuple[HttpApi, MemoryService, httpx.AsyncClient],
) -> None:
    _, service, client = memory
    evil = {"targets": [{"uri": "sip:+19005551234@premium.example.net"}]}
    # Its own allow-list cannot widen the global one.
    evil_own = {**evil, "allow": {"patterns": ["sip:*"]}}
    # Nor can a fallback hide outside it.
    evil_fallback = {
        "targets": [{"uri": "sip:alice@pbx.example.com"}],
        "on_failure": {"action": "fallback", "target": {"uri": "sip:queue@elsewhere.net"}},
    }
    for plan in (evil, evil_own, evil_fallback):
        response = await client.post(
            "/v1/calls/c1/transfers", headers=AUTH, json={"plan": plan, "briefing": BRIEFING}
        )
        assert response.status_code == 403, response.text
        body = response.json()
        assert body["error"] == "destination_not_allowed"
        assert "allow-list" in body["detail"]
    assert service.started == []


async def test_an_inline_plan_inside_the_allow_list_runs_with_it(
    memory: tuple[HttpApi, MemoryService, httpx.AsyncClient],
) -> None:
    _, service, client = memory
    plan = {"targets": [{"uri": "sip:bob@pbx.example.com"}], "consult_timeout": 20}
    response = await client.post(
        "/v1/calls/c1/transfers", headers=AUTH, json={"plan": plan, "briefing": BRIEFING}
    )
    assert response.status_code == 202, response.text
    ((call_id, started, briefing),) = service.started
    assert call_id == "c1" and started.allow == ALLOW  # the global list was given to it
    assert started.consult_timeout == 20
    assert briefing.summary == "Bob wants a refund" and briefing.facts == {"order": "1234"}


async def test_named_plan_state_cancel_and_errors(
    memory: tuple[HttpApi, MemoryService, httpx.AsyncClient],
) -> None:
    _, service, client = memory
    response = await client.post(
        "/v1/calls/c1/transfers", headers=AUTH, json={"plan": "sales", "briefing": BRIEFING}
    )
    assert response.status_code == 202
    tid = response.json()["transfer_id"]
    assert service.started[0][1] == SALES
    state = await client.get(f"/v1/transfers/{tid}", headers=AUTH)
    assert state.json()["state"] == "hunting"
    cancel = await client.post(f"/v1/transfers/{tid}/cancel", headers=AUTH)
    assert cancel.status_code == 202 and cancel.json()["state"] == "failed"
    assert (await client.get(f"/v1/transfers/{tid}", headers=AUTH)).json()["ended"] is True
    # Errors, each with its code.
    unknown = await client.post(
        "/v1/calls/c1/transfers", headers=AUTH, json={"plan": "nope", "briefing": BRIEFING}
    )
    assert unknown.status_code == 404 and unknown.json()["error"] == "unknown_plan"
    no_call = await client.post(
        "/v1/calls/zz/transfers", headers=AUTH, json={"plan": "sales", "briefing": BRIEFING}
    )
    assert no_call.status_code == 404 and no_call.json()["error"] == "not_found"
    bad = await client.post(
        "/v1/calls/c1/transfers", headers=AUTH, json={"plan": "sales", "briefing": {}}
    )
    assert bad.status_code == 400 and "briefing.summary" in bad.json()["detail"]
    garbage = await client.post("/v1/calls/c1/transfers", headers=AUTH, content=b"{not json")
    assert garbage.status_code == 400
    assert (await client.get("/v1/transfers/zz", headers=AUTH)).status_code == 404
    record = await client.get(f"/v1/transfers/{tid}/record", headers=AUTH)
    assert record.status_code == 404 and record.json()["error"] == "no_records"
    too_big = await client.post("/v1/calls/c1/transfers", headers=AUTH, content=b"x" * (300 * 1024))
    assert too_big.status_code == 413
    assert len(service.started) == 1


async def test_openapi_describes_every_route(
    memory: tuple[HttpApi, MemoryService, httpx.AsyncClient],
) -> None:
    api, _, client = memory
    response = await client.get("/openapi.json")  # no token needed
    assert response.status_code == 200
    document = response.json()
    assert document == openapi_document()
    assert document["openapi"].startswith("3.")
    routes = {
        (route.method.lower(), route.resource.canonical)
        for route in api.app.router.routes()
        if route.resource is not None and route.method != "HEAD"
    }
    described = {(method, path) for path, item in document["paths"].items() for method in item}
    assert routes == described
    schemas = document["components"]["schemas"]
    assert {"StartTransferRequest", "TransferPlan", "BriefingIn", "TransferInfo"} <= set(schemas)


async def test_metrics_scrape_parses(
    memory: tuple[HttpApi, MemoryService, httpx.AsyncClient],
) -> None:
    _, _, client = memory
    response = await client.get("/metrics", headers=AUTH)
    assert response.status_code == 200 and response.headers["content-type"].startswith("text/plain")
    names = {f.name for f in text_string_to_metric_families(response.text)}
    assert "warmtransfer_transfers_started" in names


# -- over a real Engine -------------------------------------------------------------------------


class StandInTTS:
    """Silence for any text: the engine needs a voice, this test needs no speech."""

    async def synthesize(self, text: str, rate: int = 8000) -> AudioClip:
        import numpy as np

        return AudioClip(np.zeros(rate // 10, dtype=np.int16), rate)


class NeverConsulted:
    async def prepare(self, briefing: Briefing) -> object:
        return None

    async def consult(self, leg: object, prepared: object) -> Any:
        raise AssertionError("nobody answered: no consult")


def assert_alike(got: Any, expected: Any, where: str = "") -> None:
    """Equal, but for times (Unix seconds, converted from the loop's clock at different
    moments), which may differ by a few milliseconds."""
    if isinstance(expected, dict):
        assert isinstance(got, dict) and set(got) == set(expected), (where, got, expected)
        for key in expected:
            assert_alike(got[key], expected[key], f"{where}.{key}")
    elif isinstance(expected, list):
        assert isinstance(got, list) and len(got) == len(expected), (where, got, expected)
        for index, (one, other) in enumerate(zip(got, expected, strict=True)):
            assert_alike(one, other, f"{where}[{index}]")
    elif isinstance(expected, float) and not isinstance(expected, bool):
        assert isinstance(got, int | float) and abs(got - expected) < 0.1, (where, got, expected)
    else:
        assert got == expected, (where, got, expected)


async def test_a_transfer_on_a_real_call_that_gets_486(tmp_path: Any) -> None:
    wire = await Wire.open()
    engine = Engine(port=0, tts=StandInTTS(), consultant=NeverConsulted())
    await engine.start()
    records = await Records.open(tmp_path / "records.db")
    allow = AllowList(patterns=(f"sip:*@127.0.0.1:{wire.port}",))
    metrics = Metrics()
    service = EngineServiceApi(engine, allow, records=records, on_event=[metrics.observe_event])
    api = await HttpApi(
        service,
        token=TOKEN,
        plans={},
        allow=allow,
        port=0,
        metrics=metrics,
        collect=lambda: metrics.collect_engine(engine),
    ).start()
    try:
        async with (
            started_ua(user="caller") as phone,
            httpx.AsyncClient(base_url=api.url, timeout=DEADLINE, headers=AUTH) as client,
        ):
            async with asyncio.timeout(DEADLINE):
                dialling = asyncio.create_task(phone.call(engine.uri))
                incoming = await engine.next_call()
                await incoming.answer()
                await dialling
            calls = (await client.get("/v1/calls")).json()["calls"]
            assert [(c["call_id"], c["direction"]) for c in calls] == [
                (incoming.call_id, "inbound")
            ]
            # Outside the allow-list: 403 and no INVITE ever reaches anyone.
            refused = await client.post(
                f"/v1/calls/{incoming.call_id}/transfers",
                json={
                    "plan": {"targets": [{"uri": "sip:boss@127.0.0.1:9"}]},
                    "briefing": BRIEFING,
                },
            )
            assert refused.status_code == 403
            plan = {"targets": [{"uri": f"sip:busy@127.0.0.1:{wire.port}"}]}
            response = await client.post(
                f"/v1/calls/{incoming.call_id}/transfers",
                json={"plan": plan, "briefing": BRIEFING},
            )
            assert response.status_code == 202, response.text
            tid = response.json()["transfer_id"]
            invite = await wire.request_of("INVITE")
            assert str(invite.uri).startswith("sip:busy@")  # the only INVITE the wire got
            wire.reply(invite, 486, to_tag="busy1")
            async with asyncio.timeout(DEADLINE):
                outcome = await service.wait(tid)
            assert outcome.reason.value == "busy"
            state = (await client.get(f"/v1/transfers/{tid}")).json()
            assert state["state"] == "failed" and state["ended"] is True
            assert state["outcome"]["reason"] == "busy"
            assert state["outcome"]["sip_status"] == 486
            names = [e["event"] for e in state["events"]]
            assert names[:3] == ["Start", "HoldStarted", "DialStarted"]
            assert names[-1] == "Recovered"
            # Read back from the store (an API that never had it in memory), it is the same
            # answer: the same keys all the way down, and the same values.
            fresh = EngineServiceApi(engine, allow, records=records)
            assert_alike((await fresh.transfer_state(tid)).model_dump(mode="json"), state)
            record = await client.get(f"/v1/transfers/{tid}/record")
            assert record.status_code == 200, record.text
            stored = record.json()
            assert stored["reason"] == "busy" and stored["sip_status"] == 486
            assert stored["incomplete"] is False
            assert [e["name"] for e in stored["events"]] == names
            scrape = (await client.get("/metrics")).text
            values = {
                (s.name, tuple(sorted(s.labels.items()))): s.value
                for f in text_string_to_metric_families(scrape)
                for s in f.samples
            }
            assert values[("warmtransfer_calls_in_progress", ())] == 1
            key = ("warmtransfer_transfers_ended_total", (("reason", "busy"), ("state", "failed")))
            assert values[key] == 1
            assert len(wire.requests("INVITE")) == 1
    finally:
        await api.stop()
        await engine.close()
        await records.close()
        wire.close()
        await wire.wait_closed()


async def test_an_inline_plan_may_not_name_files_on_the_server(
    memory: tuple[HttpApi, MemoryService, httpx.AsyncClient], monkeypatch: pytest.MonkeyPatch
) -> None:
    """No request makes the server read a file (/dev/zero would stall the loop that paces
    every call's audio, and the errors would tell a missing file from a folder), nor choose
    where the callers' messages are written."""
    import warmtransfer.transfer.plan as plan_module

    read: list[object] = []

    def spy(path: object) -> None:
        read.append(path)
        raise ValueError("read")

    monkeypatch.setattr(plan_module, "read_wav", spy)
    _, service, client = memory
    alice = [{"uri": "sip:alice@pbx.example.com"}]
    cases = [
        ({"hold_audio": {"source": "/dev/zero"}}, "plan.hold_audio.source"),
        ({"hold_audio": {"source": "/nonexistent/x.wav"}}, "plan.hold_audio.source"),
        ({"hold_audio": {"source": "/root"}}, "plan.hold_audio.source"),
        (
            {"caller_keys": {"can_leave_message": True, "messages_dir": "/tmp/elsewhere"}},
            "plan.caller_keys.messages_dir",
        ),
    ]
    for extra, field_name in cases:
        response = await client.post(
            "/v1/calls/c1/transfers",
            headers=AUTH,
            json={"plan": {"targets": alice, **extra}, "briefing": BRIEFING},
        )
        assert response.status_code == 400, response.text
        body = response.json()
        assert body["error"] == "bad_request" and body["detail"].startswith(f"{field_name}: ")
        assert "No such file" not in body["detail"] and "directory" not in body["detail"]
    assert read == [] and service.started == []
    # Left unset (or null), the plan runs with the defaults.
    fine = {"targets": alice, "hold_audio": {"source": None, "progress_every": 10}}
    response = await client.post(
        "/v1/calls/c1/transfers", headers=AUTH, json={"plan": fine, "briefing": BRIEFING}
    )
    assert response.status_code == 202, response.text
    assert service.started[0][1].hold_audio.progress_every == 10
    described = openapi_document()["paths"]["/v1/calls/{call_id}/transfers"]["post"]
    assert "hold_audio.source" in described["responses"]["400"]["description"]


async def test_a_draining_service_starts_no_transfer(
    memory: tuple[HttpApi, MemoryService, httpx.AsyncClient],
) -> None:
    api, service, client = memory
    api.draining = True
    response = await client.post(
        "/v1/calls/c1/transfers", headers=AUTH, json={"plan": "sales", "briefing": BRIEFING}
    )
    assert response.status_code == 503, response.text
    assert response.json()["error"] == "draining"
    assert response.headers["Retry-After"] == "30"
    assert service.started == []
    assert (await client.get("/v1/calls", headers=AUTH)).status_code == 200  # reads go on
    described = openapi_document()["paths"]["/v1/calls/{call_id}/transfers"]["post"]
    assert "Retry-After" in described["responses"]["503"]["headers"]


async def raw_status(port: int, authorization: bytes) -> bytes:
    """The status line for GET /v1/calls with these exact Authorization bytes."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(
        b"GET /v1/calls HTTP/1.1\r\nHost: x\r\nAuthorization: "
        + authorization
        + b"\r\nConnection: close\r\n\r\n"
    )
    await writer.drain()
    async with asyncio.timeout(DEADLINE):
        data = await reader.read()
    writer.close()
    return data.split(b"\r\n", 1)[0]


async def test_token_whitespace_and_a_header_that_is_not_utf8() -> None:
    # A token read from a secret file, its newline included: what a client sends still fits.
    api = await HttpApi(MemoryService(), token=f"{TOKEN}\n", plans={}, allow=ALLOW, port=0).start()
    try:
        async with httpx.AsyncClient(base_url=api.url, timeout=DEADLINE) as client:
            assert (await client.get("/v1/calls", headers=AUTH)).status_code == 200
        assert api.port is not None
        assert await raw_status(api.port, b"Bearer \xff\xfe") == b"HTTP/1.1 401 Unauthorized"
        assert await raw_status(api.port, b"Bearer " + TOKEN.encode()) == b"HTTP/1.1 200 OK"
    finally:
        await api.stop()


async def test_a_port_in_use_is_named_and_nothing_is_left_behind() -> None:
    import socket

    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen()
    port = taken.getsockname()[1]
    api = HttpApi(MemoryService(), token=TOKEN, plans={}, allow=ALLOW, port=port)
    cleaned: list[object] = []

    async def on_cleanup(app: object) -> None:
        cleaned.append(app)

    api.app.on_cleanup.append(on_cleanup)
    try:
        with pytest.raises(OSError, match=rf"cannot listen on 127\.0\.0\.1:{port}: "):
            await api.start()
    finally:
        taken.close()
    assert cleaned == [api.app]  # the runner was cleaned up, not leaked
    await api.stop()  # and stopping what never started is harmless

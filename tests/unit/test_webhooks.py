"""Webhooks: signed deliveries to a real local receiver, retries with backoff, a full queue, and
a slow receiver that never delays `send()`."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import httpx
import pytest

from warmtransfer.consult.handoff import HandoffRecord
from warmtransfer.consult.ports import Briefing
from warmtransfer.server.webhooks import (
    SIGNATURE_HEADER,
    SignatureError,
    WebhookSender,
    sign,
    verify_signature,
)
from warmtransfer.transfer.events import TransferEvent
from warmtransfer.transfer.states import Start, State

SECRET = "whsec-test-0123456789"
DEADLINE = 5.0


@dataclass
class Receiver:
    """A tiny HTTP/1.1 server on loopback (asyncio streams): answers each POST with the next
    status of `statuses` (then 200), after `gate` is set; keeps every request."""

    statuses: list[int] = field(default_factory=list)
    gate: asyncio.Event = field(default_factory=asyncio.Event)
    requests: list[tuple[dict[str, str], bytes]] = field(default_factory=list)
    arrived: asyncio.Queue[tuple[dict[str, str], bytes]] = field(default_factory=asyncio.Queue)
    server: asyncio.Server | None = None

    @property
    def url(self) -> str:
        assert self.server is not None
        port = self.server.sockets[0].getsockname()[1]
        return f"http://127.0.0.1:{port}/hook"

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                lines = head.decode().split("\r\n")
                headers = {}
                for line in lines[1:]:
                    if ":" in line:
                        key, value = line.split(":", 1)
                        headers[key.strip().lower()] = value.strip()
                body = await reader.readexactly(int(headers.get("content-length", "0")))
                self.requests.append((headers, body))
                self.arrived.put_nowait((headers, body))
                await self.gate.wait()
                status = self.statuses.pop(0) if self.statuses else 200
                writer.write(f"HTTP/1.1 {status} X\r\nContent-Length: 0\r\n\r\n".encode())
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()


@pytest.fixture
async def receiver() -> AsyncIterator[Receiver]:
    rx = Receiver()
    rx.gate.set()
    rx.server = await asyncio.start_server(rx.handle, "127.0.0.1", 0)
    try:
        yield rx
    finally:
        rx.gate.set()
        rx.server.close()


def event(transfer_id: str = "t-1") -> TransferEvent:
    return TransferEvent(transfer_id, 1.0, Start(at=1.0), State.IDLE, State.HOLDING)


async def test_deliveries_are_signed_and_verify(receiver: Receiver) -> None:
    sender = await WebhookSender([receiver.url], SECRET).start()
    try:
        sender.send_event(event())
        record = HandoffRecord.from_briefing(Briefing(summary="Bob, refund"))
        sender.send_handoff(transfer_id="t-1", call_id="c-1", outcome=None, record=record)
        async with asyncio.timeout(DEADLINE):
            await sender.wait_idle()
    finally:
        await sender.stop()
    assert len(receiver.requests) == 2
    for headers, body in receiver.requests:
        verify_signature(body, headers[SIGNATURE_HEADER.lower()], SECRET, tolerance=60)
        with pytest.raises(SignatureError):
            verify_signature(body, headers[SIGNATURE_HEADER.lower()], "another secret")
        with pytest.raises(SignatureError):
            verify_signature(body + b" ", headers[SIGNATURE_HEADER.lower()], SECRET)
    first = json.loads(receiver.requests[0][1])
    assert first["type"] == "transfer.event"
    assert first["data"]["event"] == "Start" and first["data"]["state"] == "holding"
    second = json.loads(receiver.requests[1][1])
    assert second["type"] == "transfer.handoff"
    assert second["data"]["record"]["whisper"] == "Bob, refund"
    assert sender.delivered == 2 and sender.failed == 0


def test_signature_tolerance_and_malformed_headers() -> None:
    body = b'{"x":1}'
    header = sign(body, SECRET, timestamp=1_000_000)
    assert verify_signature(body, header, SECRET, tolerance=300, now=1_000_100) == 1_000_000
    with pytest.raises(SignatureError, match="tolerance"):
        verify_signature(body, header, SECRET, tolerance=300, now=1_000_301)
    with pytest.raises(SignatureError, match="tolerance"):  # from the future, as suspect
        verify_signature(body, header, SECRET, tolerance=300, now=999_000)
    # The timestamp is signed: moving it breaks the signature.
    forged = header.replace("t=1000000", "t=1000200")
    with pytest.raises(SignatureError, match="does not match"):
        verify_signature(body, forged, SECRET, now=1_000_200)
    for bad in (None, "", "v1=abc", "t=1000000", "t=abc,v1=00", "garbage"):
        with pytest.raises(SignatureError):
            verify_signature(body, bad, SECRET, now=1_000_000)
    # A rotated secret: either signature may match.
    both = f"{header},v1={sign(body, 'old', 1_000_000).split('v1=')[1]}"
    assert verify_signature(body, both, "old", now=1_000_000) == 1_000_000


async def test_retries_after_500s_with_exponential_backoff_and_jitter(receiver: Receiver) -> None:
    receiver.statuses = [500, 503, 500]
    delays: list[float] = []

    async def sleep(delay: float) -> None:  # recorded, not waited: no real time passes
        delays.append(delay)

    sender = await WebhookSender(
        [receiver.url], SECRET, base_delay=1.0, max_delay=3.0, sleep=sleep, jitter=lambda: 0.5
    ).start()
    try:
        sender.send_event(event())
        async with asyncio.timeout(DEADLINE):
            await sender.wait_idle()
    finally:
        await sender.stop()
    assert len(receiver.requests) == 4
    assert delays == [0.5, 1.0, 1.5]  # 0.5 x min(3, 1, 2, 4)
    assert sender.delivered == 1 and sender.retries == 3
    ids = {headers["x-warmtransfer-delivery"] for headers, _ in receiver.requests}
    assert len(ids) == 1  # the same delivery id on every retry, for de-duplication
    bodies = {body for _, body in receiver.requests}
    assert len(bodies) == 1


async def test_attempts_are_bounded_and_a_4xx_is_not_retried(receiver: Receiver) -> None:
    receiver.statuses = [500] * 10 + [400]
    delays: list[float] = []

    async def sleep(delay: float) -> None:
        delays.append(delay)

    sender = await WebhookSender([receiver.url], SECRET, max_attempts=3, sleep=sleep).start()
    try:
        sender.send_event(event("a"))
        async with asyncio.timeout(DEADLINE):
            await sender.wait_idle()
        assert len(receiver.requests) == 3 and sender.failed == 1
        receiver.statuses = [400, 500]
        sender.send_event(event("b"))
        async with asyncio.timeout(DEADLINE):
            await sender.wait_idle()
    finally:
        await sender.stop()
    assert len(receiver.requests) == 4  # the 400 was final
    assert sender.failed == 2 and len(delays) == 2


async def test_a_slow_receiver_never_delays_send_and_a_full_queue_drops_the_oldest(
    receiver: Receiver, caplog: pytest.LogCaptureFixture
) -> None:
    receiver.gate.clear()  # the receiver holds every request until told
    counts: list[str] = []
    sender = await WebhookSender([receiver.url], SECRET, max_queue=3).start()
    sender.on_count = counts.append
    try:
        sender.send_event(event("first"))
        async with asyncio.timeout(DEADLINE):
            await receiver.arrived.get()  # "first" is in flight, stuck at the receiver
        # send_event is a plain function, not a coroutine: it cannot wait for the receiver.
        for index in range(5):
            sender.send_event(event(f"t{index}"))
        assert sender.queued == 3 and sender.dropped == 2
        assert counts == ["dropped", "dropped"]
        assert "dropped the oldest" in caplog.text
        receiver.gate.set()
        async with asyncio.timeout(DEADLINE):
            await sender.wait_idle()
    finally:
        await sender.stop()
    delivered = [json.loads(body)["data"]["transfer_id"] for _, body in receiver.requests]
    assert delivered == ["first", "t2", "t3", "t4"]  # t0 and t1, the oldest queued, dropped


def test_an_empty_secret_is_refused() -> None:
    """An HMAC with an empty key is a signature anyone can make."""
    with pytest.raises(ValueError, match="secret is empty"):
        WebhookSender(["http://127.0.0.1:9/hook"], "")


async def no_sleep(delay: float) -> None:
    """Backoff recorded by nobody, waited by nobody: no real time passes."""


async def test_a_dead_receiver_delays_no_other(receiver: Receiver) -> None:
    stuck = Receiver()
    stuck.server = await asyncio.start_server(stuck.handle, "127.0.0.1", 0)  # gate closed
    sender = await WebhookSender([stuck.url, receiver.url], SECRET).start()
    try:
        sender.send_event(event("a"))
        sender.send_event(event("b"))
        async with asyncio.timeout(DEADLINE):
            await stuck.arrived.get()  # "a" hangs at the stuck receiver...
            for expected in ("a", "b"):  # ...while the other gets both
                _, body = await receiver.arrived.get()
                assert json.loads(body)["data"]["transfer_id"] == expected
        assert len(stuck.requests) == 1
        stuck.gate.set()
        async with asyncio.timeout(DEADLINE):
            await sender.wait_idle()
    finally:
        stuck.gate.set()
        await sender.stop()
        stuck.server.close()
    assert sender.delivered == 4 and len(stuck.requests) == 2


async def test_a_redirect_is_final_and_counted(receiver: Receiver) -> None:
    receiver.statuses = [302, 307]
    counts: list[str] = []
    sender = await WebhookSender([receiver.url], SECRET, sleep=no_sleep).start()
    sender.on_count = counts.append
    try:
        sender.send_event(event("a"))
        sender.send_event(event("b"))
        async with asyncio.timeout(DEADLINE):
            await sender.wait_idle()
    finally:
        await sender.stop()
    assert len(receiver.requests) == 2  # not retried, not followed
    assert sender.failed == 2 and sender.retries == 0 and counts == ["failed", "failed"]


async def test_what_stop_leaves_undelivered_is_counted_as_dropped(receiver: Receiver) -> None:
    receiver.gate.clear()
    counts: list[str] = []
    sender = await WebhookSender([receiver.url], SECRET).start()
    sender.on_count = counts.append
    for name in ("first", "second", "third"):
        sender.send_event(event(name))
    async with asyncio.timeout(DEADLINE):
        await receiver.arrived.get()  # "first" in flight, the others queued
    await sender.stop(drain=0)
    assert sender.dropped == 3 and counts == ["dropped"] * 3
    assert sender.queued == 0


async def test_urls_are_redacted_in_failure_logs(caplog: pytest.LogCaptureFixture) -> None:
    """A webhook URL often is a credential (a path, user:pass@, ?token=): log lines name the
    receiver by scheme, host and port only, an HTTP client's error text included."""
    token = "sEcReTtOkEn"
    refused = f"https://user:{token}@hooks.example.com/T0/B0/{token}?token={token}"
    unreachable = f"https://down.example.com:8443/hook/{token}"

    def answer(request: httpx.Request) -> httpx.Response:
        if request.url.host == "down.example.com":
            raise httpx.ConnectError(f"cannot reach {request.url}", request=request)
        return httpx.Response(403)

    client = httpx.AsyncClient(transport=httpx.MockTransport(answer))
    sender = await WebhookSender(
        [refused, unreachable], SECRET, client=client, max_attempts=2, sleep=no_sleep
    ).start()
    try:
        sender.send_event(event())
        async with asyncio.timeout(DEADLINE):
            await sender.wait_idle()
    finally:
        await sender.stop()
        await client.aclose()
    assert sender.failed == 2
    assert token not in caplog.text
    assert "to https://hooks.example.com/… failed after 1 attempt(s): HTTP 403" in caplog.text
    assert "to https://down.example.com:8443/… failed after 2 attempt(s)" in caplog.text
    assert "ConnectError: cannot reach https://down.example.com:8443/…" in caplog.text

"""Webhooks: every transfer event and every final handoff record, POSTed as signed JSON.

Delivery never blocks a call. `send()` only appends to a bounded in-memory queue and returns;
one sender task (started by `start()`) POSTs each delivery to every URL in turn. A receiver that
is slow or down delays other deliveries, never a caller on hold. When the queue is full the
*oldest* delivery is dropped (the newest says most about where a transfer is now), counted in
`dropped` and logged.

Retries: a delivery that fails (connection error, timeout, a 5xx or 429 status) is tried again
after an exponential backoff with full jitter (`random() * min(max_delay, base_delay * 2**n)`),
up to `max_attempts` in all; a 4xx other than 429 is the receiver refusing it, and is not
retried. Counted in `delivered` and `failed`.

Signature scheme (as Stripe's): each POST carries

    X-Warmtransfer-Signature: t=<unix seconds>,v1=<hex HMAC-SHA256(secret, "<t>." + body)>

The timestamp is inside the signed text, so a captured request cannot be replayed later than
the receiver's tolerance; the receiver recomputes the HMAC over the *raw* body bytes (not a
re-serialised JSON) and compares in constant time. `verify_signature` does exactly that, for
receivers written in Python. Several `v1=` values may appear (a secret being rotated); any one
matching is enough. Each delivery also has `X-Warmtransfer-Delivery` (a unique id, the same on
every retry, for de-duplication) and `X-Warmtransfer-Event`.

Body: ``{"id", "type", "created", "data"}`` where `type` is "transfer.event" (data: see
`payloads.event_payload`) or "transfer.handoff" (data: transfer_id, call_id, outcome, record).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import json
import logging
import random
import time
import uuid
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import httpx

from warmtransfer.consult.handoff import HandoffRecord
from warmtransfer.server.payloads import event_payload, outcome_payload
from warmtransfer.transfer.events import TransferEvent
from warmtransfer.transfer.outcome import TransferOutcome

__all__ = [
    "DELIVERY_HEADER",
    "EVENT_HEADER",
    "SIGNATURE_HEADER",
    "Delivery",
    "SignatureError",
    "WebhookSender",
    "sign",
    "verify_signature",
]

log = logging.getLogger(__name__)

SIGNATURE_HEADER = "X-Warmtransfer-Signature"
DELIVERY_HEADER = "X-Warmtransfer-Delivery"
EVENT_HEADER = "X-Warmtransfer-Event"


class SignatureError(ValueError):
    """A webhook's signature is missing, malformed, wrong, or too old."""


def _mac(secret: str | bytes, timestamp: int, body: bytes) -> str:
    key = secret.encode() if isinstance(secret, str) else secret
    return hmac.new(key, str(timestamp).encode() + b"." + body, hashlib.sha256).hexdigest()


def sign(body: bytes, secret: str | bytes, timestamp: int | None = None) -> str:
    """The signature header's value for `body`, made at `timestamp` (now)."""
    t = int(time.time()) if timestamp is None else timestamp
    return f"t={t},v1={_mac(secret, t, body)}"


def verify_signature(
    body: bytes,
    header: str | None,
    secret: str | bytes,
    tolerance: float = 300.0,
    *,
    now: float | None = None,
) -> int:
    """Check a delivery: `body` the raw request body, `header` the X-Warmtransfer-Signature
    value. Returns the signed timestamp; raises `SignatureError` if the header is missing or
    malformed, if no v1 signature matches, or if the timestamp is more than `tolerance`
    seconds from `now` (either way: a clock far ahead is as suspect as a replay)."""
    if not header:
        raise SignatureError("no signature header")
    timestamp: int | None = None
    candidates: list[str] = []
    for part in header.split(","):
        key, sep, value = part.strip().partition("=")
        if not sep:
            raise SignatureError("malformed signature header")
        if key == "t":
            if not value.isdigit():
                raise SignatureError("malformed timestamp in signature header")
            timestamp = int(value)
        elif key == "v1":
            candidates.append(value)
    if timestamp is None or not candidates:
        raise SignatureError("signature header lacks t= or v1=")
    expected = _mac(secret, timestamp, body)
    # Compare against every candidate, without stopping early, in constant time each.
    matched = False
    for candidate in candidates:
        matched |= hmac.compare_digest(expected.encode(), candidate.encode())
    if not matched:
        raise SignatureError("signature does not match")
    current = time.time() if now is None else now
    if abs(current - timestamp) > tolerance:
        raise SignatureError(f"timestamp outside the tolerance of {tolerance:g} s")
    return timestamp


@dataclass
class Delivery:
    """One webhook body, POSTed to every URL (the same id and body on every retry)."""

    kind: str
    body: bytes
    id: str = field(default_factory=lambda: uuid.uuid4().hex)


Sleep = Callable[[float], Awaitable[None]]


class WebhookSender:
    """The queue and its sender task. Make it, `await start()`, call `send_event` (usable as a
    transfer's `on_event`) and `send_handoff`, and `await stop()` on shutdown."""

    def __init__(
        self,
        urls: Sequence[str],
        secret: str | None,
        *,
        max_queue: int = 1000,
        max_attempts: int = 5,
        base_delay: float = 0.5,
        max_delay: float = 30.0,
        timeout: float = 5.0,
        client: httpx.AsyncClient | None = None,
        sleep: Sleep = asyncio.sleep,
        jitter: Callable[[], float] = random.random,
        clock: Callable[[], float] = time.time,
    ) -> None:
        """`secret` None sends unsigned deliveries (the config warns about that; a receiver on
        a public URL should refuse them). `sleep`, `jitter` and `clock` are injectable so tests
        check the backoff without waiting for it. `client` (else one made at `start`) lets an
        app set proxies or TLS; the sender closes only a client it made."""
        if max_queue < 1 or max_attempts < 1:
            raise ValueError("max_queue and max_attempts must be at least 1")
        self.urls = tuple(urls)
        self._secret = secret
        self.max_queue = max_queue
        self.max_attempts = max_attempts
        self.base_delay = base_delay
        self.max_delay = max_delay
        self._timeout = timeout
        self._client = client
        self._own_client = client is None
        self._sleep = sleep
        self._jitter = jitter
        self._clock = clock
        self._queue: deque[Delivery] = deque()
        self._ready = asyncio.Event()
        self._idle = asyncio.Event()
        self._idle.set()
        self._task: asyncio.Task[None] | None = None
        self.dropped = 0
        self.delivered = 0
        self.failed = 0
        self.retries = 0
        #: Called with "dropped", "delivered", "failed" or "retry" (e.g. to feed metrics).
        self.on_count: Callable[[str], None] | None = None

    # -- the public side ------------------------------------------------------------------

    @property
    def queued(self) -> int:
        return len(self._queue)

    async def start(self) -> WebhookSender:
        if self._task is None:
            if self._client is None:
                self._client = httpx.AsyncClient(timeout=self._timeout)
            self._task = asyncio.get_running_loop().create_task(
                self._run(), name="warmtransfer-webhooks"
            )
        return self

    async def stop(self, drain: float = 5.0) -> None:
        """Deliver what is queued for up to `drain` seconds, then stop (the rest is dropped and
        counted) and close the client if it is ours."""
        if self._task is not None:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(drain):
                    await self.wait_idle()
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        left = len(self._queue)
        if left:
            self.dropped += left
            log.warning("webhooks stopped with %d deliveries undelivered", left)
            self._queue.clear()
        if self._own_client and self._client is not None:
            await self._client.aclose()
            self._client = None

    async def wait_idle(self) -> None:
        """Until the queue is empty and no delivery is in flight (tests, and a drain)."""
        await self._idle.wait()

    def send(self, kind: str, data: dict[str, Any]) -> Delivery:
        """Queue one delivery and return at once (never awaits, never raises for a full
        queue: the oldest delivery is dropped instead)."""
        delivery = Delivery(kind, b"")
        created = int(self._clock())
        delivery.body = json.dumps(
            {"id": delivery.id, "type": kind, "created": created, "data": data},
            separators=(",", ":"),
            default=str,
        ).encode()
        if not self.urls:
            return delivery
        if len(self._queue) >= self.max_queue:
            old = self._queue.popleft()
            self.dropped += 1
            self._count("dropped")
            log.warning(
                "webhook queue full (%d): dropped the oldest delivery %s (%s)",
                self.max_queue,
                old.id,
                old.kind,
            )
        self._queue.append(delivery)
        self._idle.clear()
        self._ready.set()
        return delivery

    def send_event(self, event: TransferEvent) -> None:
        """A transfer's `on_event` callback: one "transfer.event" delivery per move."""
        now = asyncio.get_running_loop().time()
        self.send("transfer.event", event_payload(event, now))

    def send_handoff(
        self,
        *,
        transfer_id: str,
        call_id: str | None,
        outcome: TransferOutcome | None,
        record: HandoffRecord | None,
    ) -> None:
        """The final word on a transfer: its outcome and its handoff record."""
        now = asyncio.get_running_loop().time()
        self.send(
            "transfer.handoff",
            {
                "transfer_id": transfer_id,
                "call_id": call_id,
                "outcome": None if outcome is None else outcome_payload(outcome, now),
                "record": None if record is None else json.loads(record.to_json()),
            },
        )

    # -- the sender task ------------------------------------------------------------------

    def _count(self, what: str) -> None:
        if self.on_count is not None:
            try:
                self.on_count(what)
            except Exception:
                log.exception("webhook counter hook raised")

    def backoff(self, retry: int) -> float:
        """Delay before retry number `retry` (1-based): full jitter over an exponential cap."""
        cap = min(self.max_delay, self.base_delay * 2.0 ** (retry - 1))
        return self._jitter() * cap

    async def _run(self) -> None:
        while True:
            if not self._queue:
                self._idle.set()
                self._ready.clear()
                await self._ready.wait()
                continue
            delivery = self._queue.popleft()
            for url in self.urls:
                try:
                    await self._deliver(url, delivery)
                except asyncio.CancelledError:
                    raise
                except Exception:  # a bug here must not stop every later delivery
                    log.exception("webhook delivery %s to %s raised", delivery.id, url)

    async def _deliver(self, url: str, delivery: Delivery) -> bool:
        assert self._client is not None
        last = ""
        for attempt in range(1, self.max_attempts + 1):
            if attempt > 1:
                self.retries += 1
                self._count("retry")
                await self._sleep(self.backoff(attempt - 1))
            headers = {
                "Content-Type": "application/json",
                DELIVERY_HEADER: delivery.id,
                EVENT_HEADER: delivery.kind,
                "User-Agent": "warmtransfer-webhooks",
            }
            if self._secret:
                headers[SIGNATURE_HEADER] = sign(delivery.body, self._secret, int(self._clock()))
            try:
                response = await self._client.post(url, content=delivery.body, headers=headers)
            except httpx.HTTPError as exc:
                last = f"{type(exc).__name__}: {exc}"
                continue
            if response.is_success:
                self.delivered += 1
                self._count("delivered")
                return True
            last = f"HTTP {response.status_code}"
            if 400 <= response.status_code < 500 and response.status_code != 429:
                break  # the receiver refuses it; asking again will not change its mind
        self.failed += 1
        self._count("failed")
        log.warning(
            "webhook delivery %s (%s) to %s failed after %d attempt(s): %s",
            delivery.id,
            delivery.kind,
            url,
            attempt,
            last,
        )
        return False

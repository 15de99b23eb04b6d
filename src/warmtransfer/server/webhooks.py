"""Webhooks: every transfer event and every final handoff record, POSTed as signed JSON.

Delivery never blocks a call. `send()` only appends to bounded in-memory queues and returns.
Each URL has its own queue and its own sender task (started by `start()`): a receiver that is
slow or down delays (and, once its queue is full, loses) only its own deliveries, never another
receiver's, never a caller on hold. When a queue is full its *oldest* delivery is dropped (the
newest says most about where a transfer is now), counted in `dropped` and logged; so is what
`stop()` leaves undelivered.

Retries: a delivery that fails (connection error, timeout, a 5xx or 429 status) is tried again
after an exponential backoff with full jitter (`random() * min(max_delay, base_delay * 2**n)`),
up to `max_attempts` in all. Any other status that is not 2xx is final: a 4xx is the receiver
refusing it, and a 3xx is not followed (a redirect would carry the signed body to wherever it
points) nor retried (it would say the same again). Counted in `delivered` and `failed`.

URLs often carry a token (a path, ``user:pass@``, ``?token=``): log lines show them redacted
(`config.redact.redact_url`), and an HTTP error's text too.

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

from warmtransfer.config.redact import redact_url, redact_urls_in
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


@dataclass(eq=False)
class _Channel:
    """One URL's queue and sender task."""

    url: str
    queue: deque[Delivery] = field(default_factory=deque)
    ready: asyncio.Event = field(default_factory=asyncio.Event)
    idle: asyncio.Event = field(default_factory=asyncio.Event)
    task: asyncio.Task[None] | None = None
    sending: Delivery | None = None

    def __post_init__(self) -> None:
        self.idle.set()

    @property
    def shown(self) -> str:
        return redact_url(self.url)


class WebhookSender:
    """The queues and their sender tasks. Make it, `await start()`, call `send_event` (usable
    as a transfer's `on_event`) and `send_handoff`, and `await stop()` on shutdown."""

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
        """`secret` signs every delivery; None sends them unsigned (for an app's own tests: the
        service's config requires a secret), and an empty one is refused (ValueError), as it
        would sign with a key anyone knows. `max_queue` is per URL. `sleep`, `jitter` and
        `clock` are injectable so tests check the backoff without waiting for it. `client`
        (else one made at `start`) lets an app set proxies or TLS; the sender closes only a
        client it made."""
        if max_queue < 1 or max_attempts < 1:
            raise ValueError("max_queue and max_attempts must be at least 1")
        if secret is not None and not secret:
            raise ValueError("the webhook secret is empty: give one (or None for unsigned)")
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
        self._channels = [_Channel(url) for url in self.urls]
        self._started = False
        self.dropped = 0
        self.delivered = 0
        self.failed = 0
        self.retries = 0
        #: Called with "dropped", "delivered", "failed" or "retry" (e.g. to feed metrics).
        self.on_count: Callable[[str], None] | None = None

    # -- the public side ------------------------------------------------------------------

    @property
    def queued(self) -> int:
        """Deliveries waiting, summed over the URLs (one in flight is not counted)."""
        return sum(len(channel.queue) for channel in self._channels)

    async def start(self) -> WebhookSender:
        if not self._started:
            self._started = True
            if self._client is None:
                self._client = httpx.AsyncClient(timeout=self._timeout)
            loop = asyncio.get_running_loop()
            for index, channel in enumerate(self._channels):
                channel.task = loop.create_task(
                    self._run(channel), name=f"warmtransfer-webhooks-{index}"
                )
        return self

    async def stop(self, drain: float = 5.0) -> None:
        """Deliver what is queued for up to `drain` seconds, then stop (the rest, and a
        delivery cut off in flight, is dropped and counted) and close the client if it is
        ours."""
        if self._started:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(drain):
                    await self.wait_idle()
            for channel in self._channels:
                await self._stop_channel(channel)
            self._started = False
        if self._own_client and self._client is not None:
            await self._client.aclose()
            self._client = None

    async def _stop_channel(self, channel: _Channel) -> None:
        if channel.task is not None:
            channel.task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await channel.task
            channel.task = None
        left = len(channel.queue) + (channel.sending is not None)
        channel.queue.clear()
        channel.sending = None
        channel.idle.set()
        if left:
            log.warning(
                "webhooks stopped with %d deliveries to %s undelivered", left, channel.shown
            )
            for _ in range(left):
                self._drop()

    async def wait_idle(self) -> None:
        """Until every queue is empty and no delivery is in flight (tests, and a drain)."""
        while not all(channel.idle.is_set() for channel in self._channels):
            for channel in self._channels:
                await channel.idle.wait()

    def send(self, kind: str, data: dict[str, Any]) -> Delivery:
        """Queue one delivery for every URL and return at once (never awaits, never raises for
        a full queue: the oldest delivery of that queue is dropped instead)."""
        delivery = Delivery(kind, b"")
        created = int(self._clock())
        delivery.body = json.dumps(
            {"id": delivery.id, "type": kind, "created": created, "data": data},
            separators=(",", ":"),
            default=str,
        ).encode()
        for channel in self._channels:
            if len(channel.queue) >= self.max_queue:
                old = channel.queue.popleft()
                self._drop()
                log.warning(
                    "webhook queue of %s full (%d): dropped the oldest delivery %s (%s)",
                    channel.shown,
                    self.max_queue,
                    old.id,
                    old.kind,
                )
            channel.queue.append(delivery)
            channel.idle.clear()
            channel.ready.set()
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

    # -- the sender tasks -----------------------------------------------------------------

    def _count(self, what: str) -> None:
        if self.on_count is not None:
            try:
                self.on_count(what)
            except Exception:
                log.exception("webhook counter hook raised")

    def _drop(self) -> None:
        self.dropped += 1
        self._count("dropped")

    def backoff(self, retry: int) -> float:
        """Delay before retry number `retry` (1-based): full jitter over an exponential cap."""
        cap = min(self.max_delay, self.base_delay * 2.0 ** (retry - 1))
        return self._jitter() * cap

    async def _run(self, channel: _Channel) -> None:
        while True:
            if not channel.queue:
                channel.idle.set()
                channel.ready.clear()
                await channel.ready.wait()
                continue
            delivery = channel.sending = channel.queue.popleft()
            try:
                await self._deliver(channel, delivery)
            except asyncio.CancelledError:
                raise
            except Exception:  # a bug here must not stop every later delivery
                log.exception("webhook delivery %s to %s raised", delivery.id, channel.shown)
            channel.sending = None

    async def _deliver(self, channel: _Channel, delivery: Delivery) -> bool:
        assert self._client is not None
        last = ""
        for attempt in range(1, self.max_attempts + 1):
            if attempt > 1:
                self.retries += 1
                self._count("retry")
                await self._sleep(self.backoff(attempt - 1))
            try:
                response = await self._client.post(
                    channel.url, content=delivery.body, headers=self._headers(delivery)
                )
            except httpx.HTTPError as exc:
                last = f"{type(exc).__name__}: {redact_urls_in(str(exc))}"
                continue
            if response.is_success:
                self.delivered += 1
                self._count("delivered")
                return True
            last = f"HTTP {response.status_code}"
            if not _worth_retrying(response.status_code):
                break
        self.failed += 1
        self._count("failed")
        log.warning(
            "webhook delivery %s (%s) to %s failed after %d attempt(s): %s",
            delivery.id,
            delivery.kind,
            channel.shown,
            attempt,
            last,
        )
        return False

    def _headers(self, delivery: Delivery) -> dict[str, str]:
        headers = {
            "Content-Type": "application/json",
            DELIVERY_HEADER: delivery.id,
            EVENT_HEADER: delivery.kind,
            "User-Agent": "warmtransfer-webhooks",
        }
        if self._secret is not None:
            headers[SIGNATURE_HEADER] = sign(delivery.body, self._secret, int(self._clock()))
        return headers


def _worth_retrying(status: int) -> bool:
    """A 5xx or a 429 may go away; a 3xx or another 4xx is the receiver's answer."""
    return status >= 500 or status == 429

"""What apps see of a transfer: one `TransferEvent` per state-machine move, in order.

Two ways to follow a transfer, both fed from the same timeline:
- a callback (`on_event`), called synchronously at each move. A callback that raises is logged
  and otherwise ignored: an app's bug in a log line must never leave a caller on hold;
- `events()`, an async iterator. Each iterator replays the timeline so far and then follows it
  live until the transfer ends, so an app that subscribes late misses nothing. It is a plain
  class, not an async generator, so an abandoned iterator leaves no finaliser task behind.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass

from warmtransfer.transfer.states import Event, State

logger = logging.getLogger("warmtransfer.transfer")


@dataclass(frozen=True)
class TransferEvent:
    """The transfer `transfer_id` moved from `previous` to `state` on `event`, at `at`."""

    transfer_id: str
    at: float  # monotonic seconds, the same as event.at
    event: Event
    previous: State
    state: State  # after the event

    def __str__(self) -> str:
        return f"[{self.transfer_id}] {self.previous.name} -{self.event.name}-> {self.state.name}"


EventCallback = Callable[[TransferEvent], None]

_END = object()


class _Subscription:
    """One `events()` iterator: a queue fed by the stream, ended by a sentinel."""

    def __init__(self, backlog: list[TransferEvent], closed: bool) -> None:
        self._queue: asyncio.Queue[object] = asyncio.Queue()
        for event in backlog:
            self._queue.put_nowait(event)
        if closed:
            self._queue.put_nowait(_END)
        self._done = False

    def push(self, item: object) -> None:
        self._queue.put_nowait(item)

    def __aiter__(self) -> _Subscription:
        return self

    async def __anext__(self) -> TransferEvent:
        if self._done:
            raise StopAsyncIteration
        item = await self._queue.get()
        if isinstance(item, TransferEvent):
            return item
        self._done = True
        raise StopAsyncIteration


class EventStream:
    """The timeline of one transfer and everyone following it."""

    def __init__(self, callback: EventCallback | None = None) -> None:
        self._timeline: list[TransferEvent] = []
        self._callbacks: list[EventCallback] = [callback] if callback else []
        self._subscriptions: list[_Subscription] = []
        self._closed = False

    @property
    def timeline(self) -> list[TransferEvent]:
        return list(self._timeline)

    @property
    def closed(self) -> bool:
        return self._closed

    def add_callback(self, callback: EventCallback) -> None:
        self._callbacks.append(callback)

    def subscribe(self) -> AsyncIterator[TransferEvent]:
        subscription = _Subscription(self._timeline, self._closed)
        if not self._closed:
            self._subscriptions.append(subscription)
        return subscription

    def emit(self, event: TransferEvent) -> None:
        self._timeline.append(event)
        logger.debug("%s", event)
        for subscription in self._subscriptions:
            subscription.push(event)
        for callback in list(self._callbacks):
            try:
                callback(event)
            except Exception:
                logger.exception("transfer event callback %r raised on %s", callback, event)

    def close(self) -> None:
        """The transfer is over: end every iterator after what it has not read yet."""
        if self._closed:
            return
        self._closed = True
        for subscription in self._subscriptions:
            subscription.push(_END)
        self._subscriptions.clear()

"""What the rooms backend knows about one LiveKit room, as plain Python (no LiveKit import).

Why a separate, pure view: the transfer logic over rooms (who is present, which tracks they
publish, who pressed which key, who left and why) must be testable without a LiveKit server.
The real adapter (`rtc_adapters.py`) feeds a `RoomView` from `rtc.Room` events; the tests' fake
room feeds the same class from test code. Both sides of the port therefore share every rule
written here, and a fake cannot drift from the adapter on what "left" or "gone" means.

Rules kept here (each one a reference defect):
- a participant who leaves, for *any* disconnect reason, has left (the reference ignored
  reasons it did not expect, and the task never ended);
- our own connection to the room closing counts as everybody having left: nothing waits on a
  room we are no longer in.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from warmtransfer.consult.ports import LegGone


@dataclass(frozen=True)
class RoomChange:
    """One thing that happened in a room. `kind` is one of joined, published, unpublished,
    attributes, left, dtmf, closed; `value` is the track sid, the disconnect reason or the
    digit (for attributes, read them with `RoomView.attribute`)."""

    kind: str
    identity: str = ""
    value: str = ""


Listener = Callable[[RoomChange], None]


class RoomView:
    """Participants, their published audio tracks, their DTMF keys, and departures."""

    def __init__(self, name: str, own_identity: str) -> None:
        self.name = name
        self.own_identity = own_identity
        self._tracks: dict[str, list[str]] = {}
        self._ever: set[str] = set()
        self._left: dict[str, str] = {}
        self._attributes: dict[str, dict[str, str]] = {}
        self._keys: dict[str, asyncio.Queue[str]] = {}
        self._listeners: list[Listener] = []
        self._changed = asyncio.Event()
        self.closed_reason: str | None = None

    # -- fed by the adapter (real or fake) -------------------------------------------------

    def joined(self, identity: str) -> None:
        self._tracks.setdefault(identity, [])
        self._ever.add(identity)
        self._left.pop(identity, None)  # a participant moved back in is present again
        self._emit(RoomChange("joined", identity))

    def published(self, identity: str, sid: str) -> None:
        if identity not in self._tracks:
            self.joined(identity)
        if sid not in self._tracks[identity]:
            self._tracks[identity].append(sid)
        self._emit(RoomChange("published", identity, sid))

    def unpublished(self, identity: str, sid: str) -> None:
        tracks = self._tracks.get(identity, [])
        if sid in tracks:
            tracks.remove(sid)
        self._emit(RoomChange("unpublished", identity, sid))

    def attributes(self, identity: str, attributes: Mapping[str, str]) -> None:
        """A participant's attributes as they are now (LiveKit SIP keeps a call's progress in
        ``sip.callStatus``: dialing, ringing, active, hangup)."""
        if identity not in self._tracks:
            self.joined(identity)
        self._attributes[identity] = dict(attributes)
        self._emit(RoomChange("attributes", identity))

    def left(self, identity: str, reason: str) -> None:
        """`reason` is whatever the server said (a DisconnectReason name); every one counts."""
        self._tracks.pop(identity, None)
        self._ever.add(identity)
        self._left[identity] = reason
        self._emit(RoomChange("left", identity, reason))

    def dtmf(self, identity: str, digit: str) -> None:
        self._queue(identity).put_nowait(digit)
        self._emit(RoomChange("dtmf", identity, digit))

    def closed(self, reason: str) -> None:
        """Our connection to the room ended (we left, the room was deleted, the server went)."""
        if self.closed_reason is None:
            self.closed_reason = reason
            self._emit(RoomChange("closed", "", reason))

    # -- read by the backend ------------------------------------------------------------------

    def present(self, identity: str) -> bool:
        return self.closed_reason is None and identity in self._tracks

    def identities(self) -> list[str]:
        return list(self._tracks)

    def tracks(self, identity: str) -> tuple[str, ...]:
        return tuple(self._tracks.get(identity, ()))

    def has_left(self, identity: str) -> bool:
        """True once `identity` left (any reason) or our connection closed."""
        return self.closed_reason is not None or identity in self._left

    def attribute(self, identity: str, key: str) -> str | None:
        return self._attributes.get(identity, {}).get(key)

    def left_reason(self, identity: str) -> str | None:
        if identity in self._left:
            return self._left[identity]
        return self.closed_reason

    def subscribe(self, listener: Listener) -> Callable[[], None]:
        """Call `listener` on every change; returns the function that stops it."""
        self._listeners.append(listener)

        def stop() -> None:
            if listener in self._listeners:
                self._listeners.remove(listener)

        return stop

    async def wait_for(self, predicate: Callable[[], bool]) -> None:
        """Return once `predicate()` is true, re-checked after every change."""
        while not predicate():
            self._changed.clear()
            await self._changed.wait()

    async def wait_left(self, identity: str) -> str:
        await self.wait_for(lambda: self.has_left(identity))
        return self.left_reason(identity) or ""

    async def next_dtmf(self, identity: str) -> str:
        """The next key `identity` pressed; LegGone once they left and no key is pending."""
        queue = self._queue(identity)
        while queue.empty():
            if self.has_left(identity):
                raise LegGone(f"{identity} left room {self.name}: {self.left_reason(identity)}")
            self._changed.clear()
            await self._changed.wait()
        return queue.get_nowait()

    def clear_dtmf(self, identity: str) -> None:
        queue = self._queue(identity)
        while not queue.empty():
            queue.get_nowait()

    # -- internals ------------------------------------------------------------------------------

    def _queue(self, identity: str) -> asyncio.Queue[str]:
        return self._keys.setdefault(identity, asyncio.Queue())

    def _emit(self, change: RoomChange) -> None:
        self._changed.set()
        for listener in list(self._listeners):
            listener(change)

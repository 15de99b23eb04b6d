"""One 20 ms pacing clock for every outgoing RTP stream in the process.

A timer per stream would cost one wake-up per stream per 20 ms and drift apart; one clock wakes
once per tick and serves every stream, so a hundred held callers cost one timer. Ticks are kept
on an absolute schedule (start + n x 20 ms), so lateness never accumulates into drift; a tick up
to two periods late is caught up (at most 3 packets back to back), a later one re-anchors the
schedule instead of bursting packets.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from typing import Protocol

PERIOD = 0.020
_MAX_CATCH_UP = 2 * PERIOD  # later than this, a tick re-anchors the schedule

log = logging.getLogger(__name__)


class Paced(Protocol):
    def on_tick(self, now: float) -> None: ...


class Lateness:
    """How late ticks fire, for benchmarks and metrics (bounded memory)."""

    def __init__(self, keep: int = 50_000) -> None:
        self.samples: deque[float] = deque(maxlen=keep)
        self.ticks = 0
        self.worst = 0.0

    def record(self, late: float) -> None:
        self.ticks += 1
        self.samples.append(late)
        self.worst = max(self.worst, late)

    def percentile(self, q: float) -> float:
        if not self.samples:
            return 0.0
        ordered = sorted(self.samples)
        return ordered[min(len(ordered) - 1, int(q / 100 * len(ordered)))]


class PacingClock:
    """Runs only while streams are registered, so an idle engine costs nothing."""

    def __init__(self) -> None:
        self._streams: dict[int, Paced] = {}
        self._handle: asyncio.TimerHandle | None = None
        self._next = 0.0
        self.lateness = Lateness()

    def add(self, stream: Paced) -> None:
        self._streams[id(stream)] = stream
        if self._handle is None:
            loop = asyncio.get_running_loop()
            self._next = loop.time() + PERIOD
            self._handle = loop.call_at(self._next, self._tick)

    def remove(self, stream: Paced) -> None:
        self._streams.pop(id(stream), None)
        if not self._streams and self._handle is not None:
            self._handle.cancel()
            self._handle = None

    @property
    def running(self) -> bool:
        return self._handle is not None

    def __len__(self) -> int:
        return len(self._streams)

    def _tick(self) -> None:
        loop = asyncio.get_running_loop()
        now = loop.time()
        fired = self._handle
        late = now - self._next
        # Lateness is read off the real clock: uvloop's loop.time() is the time the loop
        # iteration began, in whole milliseconds, which would hide the delay we measure.
        # Both clocks count CLOCK_MONOTONIC, so they compare.
        self.lateness.record(max(0.0, time.monotonic() - self._next))
        for stream in list(self._streams.values()):
            try:
                stream.on_tick(now)
            except Exception:  # one broken stream must not silence the others
                log.exception("paced stream failed")
        if self._handle is not fired:
            return  # a stream removed the last stream (and maybe added one): already handled
        self._next += PERIOD
        if late > _MAX_CATCH_UP:
            self._next = now + PERIOD
        if self._streams:
            self._handle = loop.call_at(self._next, self._tick)
        else:
            self._handle = None

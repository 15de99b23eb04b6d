"""The shared 20 ms PacingClock on a real event loop: schedule, one timer for all, start/stop,
catch-up and re-anchoring after stalls, lateness, and streams that add or remove streams.

Streams here are small recorders of the `now` each tick hands them. Tests wait on their ticks
(under `asyncio.timeout` deadlines); the only `time.sleep` calls block the loop on purpose, to
simulate a stall, never to synchronise.
"""

from __future__ import annotations

import asyncio
import logging
import time
from itertools import pairwise

import pytest

from warmtransfer.media.clock import PERIOD, Lateness, PacingClock

DEADLINE = 5.0


class Ticks:
    """A paced stream that records when it was ticked; `work` runs inside each tick."""

    def __init__(self, work: object = None) -> None:
        self.times: list[float] = []
        self.work = work
        self._waiters: list[tuple[int, asyncio.Future[None]]] = []

    def on_tick(self, now: float) -> None:
        self.times.append(now)
        if callable(self.work):
            self.work(self)
        for target, waiter in self._waiters:
            if len(self.times) >= target and not waiter.done():
                waiter.set_result(None)

    async def wait(self, count: int, deadline: float = DEADLINE) -> None:
        """Until `count` more ticks have arrived."""
        waiter = asyncio.get_running_loop().create_future()
        self._waiters.append((len(self.times) + count, waiter))
        async with asyncio.timeout(deadline):
            await waiter


def bursts(times: list[float], within: float = 0.005) -> int:
    """The most ticks that came back to back (each less than `within` after the previous)."""
    best = run = 1
    for previous, current in pairwise(times):
        run = run + 1 if current - previous < within else 1
        best = max(best, run)
    return best


async def wait_real_time(ticks: int) -> None:
    """Let about `ticks` x 20 ms of real time pass, observed on an unrelated clock."""
    other, probe = PacingClock(), Ticks()
    other.add(probe)
    try:
        await probe.wait(ticks)
    finally:
        other.remove(probe)


async def test_runs_only_while_streams_are_registered() -> None:
    clock, stream = PacingClock(), Ticks()
    assert not clock.running and len(clock) == 0
    clock.add(stream)
    clock.add(stream)  # adding twice registers once
    assert clock.running and len(clock) == 1
    await stream.wait(2)
    clock.remove(stream)
    clock.remove(stream)  # removing twice (or an unknown stream) is harmless
    clock.remove(Ticks())
    assert not clock.running and len(clock) == 0
    ticks = clock.lateness.ticks
    await wait_real_time(5)
    assert clock.lateness.ticks == ticks and len(stream.times) == 2

    clock.add(stream)  # and it starts again
    await stream.wait(3)
    clock.remove(stream)


async def test_ticks_every_20_ms_with_the_loop_time() -> None:
    clock, stream = PacingClock(), Ticks()
    loop = asyncio.get_running_loop()
    added = loop.time()
    clock.add(stream)
    await stream.wait(51)
    clock.remove(stream)
    times = stream.times
    assert PERIOD == 0.020
    assert times[0] - added >= PERIOD - 0.001  # the first tick is one period after start
    mean = (times[50] - times[0]) / 50
    assert 0.018 <= mean <= 0.022, f"mean interval {mean * 1000:.1f} ms"
    assert bursts(times) <= 3
    assert clock.lateness.ticks == 51


async def test_the_schedule_is_absolute_so_slow_streams_do_not_drift_it() -> None:
    # each tick does 5 ms of work: a timer re-armed after the work would tick every 25 ms
    def busy(_: Ticks) -> None:
        end = time.perf_counter() + 0.005
        while time.perf_counter() < end:
            pass

    clock, stream = PacingClock(), Ticks(busy)
    clock.add(stream)
    await stream.wait(31)
    clock.remove(stream)
    mean = (stream.times[30] - stream.times[0]) / 30
    assert 0.018 <= mean <= 0.022, f"mean interval {mean * 1000:.1f} ms"


async def test_one_timer_serves_every_stream() -> None:
    clock = PacingClock()
    streams = [Ticks() for _ in range(5)]
    for stream in streams:
        clock.add(stream)
    assert len(clock) == 5
    await streams[-1].wait(20)
    for stream in streams:
        clock.remove(stream)
    # every stream was ticked by the same wake-ups, with the same `now`
    assert all(stream.times == streams[0].times for stream in streams)
    assert clock.lateness.ticks == len(streams[0].times)


async def test_stops_when_the_last_stream_is_removed() -> None:
    clock = PacingClock()
    streams = [Ticks() for _ in range(3)]
    for stream in streams:
        clock.add(stream)
    await streams[0].wait(2)
    for left, stream in zip((2, 1, 0), streams, strict=True):
        clock.remove(stream)
        assert len(clock) == left and clock.running == (left > 0)
    ticks = clock.lateness.ticks
    await wait_real_time(5)
    assert clock.lateness.ticks == ticks


async def test_a_broken_stream_does_not_silence_the_others(
    caplog: pytest.LogCaptureFixture,
) -> None:
    def boom(_: Ticks) -> None:
        raise RuntimeError("broken stream")

    clock, broken, healthy = PacingClock(), Ticks(boom), Ticks()
    clock.add(broken)
    clock.add(healthy)
    with caplog.at_level(logging.ERROR, logger="warmtransfer.media.clock"):
        await healthy.wait(5)
    clock.remove(broken)
    clock.remove(healthy)
    assert len(broken.times) == len(healthy.times) >= 5
    assert any("paced stream failed" in r.getMessage() for r in caplog.records)


async def test_a_short_stall_is_caught_up_without_drift() -> None:
    # a 45 ms stall inside a tick: the next tick is about 25 ms late, one more is owed at
    # once, and then the original 20 ms grid continues (no time is lost)
    def stall(stream: Ticks) -> None:
        if len(stream.times) == 5:
            time.sleep(0.045)  # blocks the loop on purpose: this is the stall under test

    clock, stream = PacingClock(), Ticks(stall)
    clock.add(stream)
    await stream.wait(31)
    clock.remove(stream)
    times = stream.times
    assert bursts(times) <= 3
    assert clock.lateness.worst >= 0.020
    span = times[30] - times[0]
    assert 0.6 - 0.005 <= span <= 0.6 + 0.025, f"30 ticks took {span * 1000:.0f} ms"


@pytest.mark.parametrize("stall", [0.065, 0.085, 0.150])
async def test_a_long_stall_re_anchors_instead_of_bursting(stall: float) -> None:
    def block(stream: Ticks) -> None:
        if len(stream.times) == 5:
            time.sleep(stall)  # blocks the loop on purpose: this is the stall under test

    clock, stream = PacingClock(), Ticks(block)
    clock.add(stream)
    await stream.wait(25)
    clock.remove(stream)
    times = stream.times
    assert bursts(times) <= 3, [round((b - a) * 1000, 1) for a, b in pairwise(times)]
    assert clock.lateness.worst >= stall - PERIOD - 0.002  # the late tick was recorded
    # and then back to one tick per 20 ms
    mean = (times[-1] - times[-11]) / 10
    assert 0.018 <= mean <= 0.022


async def test_streams_may_add_and_remove_streams_during_a_tick() -> None:
    clock = PacingClock()
    replacement = Ticks()

    def replace(stream: Ticks) -> None:
        clock.remove(stream)  # the last stream leaves...
        clock.add(replacement)  # ...and another one joins, in the same tick

    first = Ticks(replace)
    clock.add(first)
    await replacement.wait(10)
    assert len(first.times) == 1 and len(clock) == 1
    clock.remove(replacement)
    assert not clock.running
    ticks = clock.lateness.ticks
    await wait_real_time(5)
    assert clock.lateness.ticks == ticks  # no stray timer left ticking
    assert bursts(replacement.times) <= 1  # and never two timers at once
    mean = (replacement.times[-1] - replacement.times[0]) / (len(replacement.times) - 1)
    assert 0.018 <= mean <= 0.022


async def test_a_stream_added_during_a_tick_joins_from_the_next_one() -> None:
    clock = PacingClock()
    late = Ticks()

    def add_once(stream: Ticks) -> None:
        if len(stream.times) == 2:
            clock.add(late)

    first = Ticks(add_once)
    clock.add(first)
    await late.wait(5)
    clock.remove(first)
    clock.remove(late)
    assert late.times == first.times[2 : 2 + len(late.times)]


def test_lateness_keeps_worst_percentiles_and_bounded_samples() -> None:
    lateness = Lateness(keep=100)
    assert lateness.percentile(99) == 0.0
    for i in range(1000):
        lateness.record(i / 1_000_000)
    assert lateness.ticks == 1000
    assert len(lateness.samples) == 100
    assert lateness.worst == pytest.approx(0.000999)
    assert lateness.percentile(0) == pytest.approx(0.0009)
    assert lateness.percentile(50) == pytest.approx(0.00095)
    assert lateness.percentile(100) == pytest.approx(0.000999)

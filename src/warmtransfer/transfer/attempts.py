"""What the driver knows of one attempt while it runs, and how an attempt waits on a human.

An attempt's record is mutable while its task runs (the ring, the answer, how it ended, the leg
it owns) and frozen into the outcome's `Attempt` only when the transfer ends: the outcome is a
value, but the driver needs one place per attempt to write to from the dial, the consult, the
watchers and the cleanup. Kept apart from the driver so the record and its events have one home.
"""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from dataclasses import dataclass
from typing import Any, TypeVar

from warmtransfer.consult.ports import LegGone
from warmtransfer.transfer.outcome import Attempt, Reason
from warmtransfer.transfer.ports import TargetLeg
from warmtransfer.transfer.states import DialStarted
from warmtransfer.transfer.target import Target

T = TypeVar("T")


@dataclass
class RunningAttempt:
    """What the driver knows of one attempt while it runs; frozen into an `Attempt` at the end."""

    index: int
    target: Target
    round: int
    fallback: bool
    started: float
    step: str = "dialer.dial"  # the port call in progress, for error details
    ringing: float | None = None
    answered: float | None = None
    ended: float | None = None
    reason: Reason | None = None
    sip_status: int | None = None
    sip_reason: str | None = None
    detail: str = ""
    leg: TargetLeg | None = None
    bridged: bool = False

    def fail(self, reason: Reason, at: float, detail: str = "") -> None:
        self.reason, self.ended, self.detail = reason, at, detail

    def frozen(self, default: Reason) -> Attempt:
        """The outcome's record; `default` is the reason of an attempt the end cut short."""
        return Attempt(
            target=self.target,
            started=self.started,
            ringing=self.ringing,
            answered=self.answered,
            ended=self.ended,
            reason=self.reason or default,
            sip_status=self.sip_status,
            sip_reason=self.sip_reason,
            detail=self.detail,
            round=self.round,
            fallback=self.fallback,
        )

    def dial_started(self) -> DialStarted:
        """The event that opens this attempt (its index is its events' id)."""
        return DialStarted(
            at=self.started,
            attempt=self.index,
            target=self.target,
            round=self.round,
            fallback=self.fallback,
        )


async def unless_hung_up(leg: TargetLeg, work: Coroutine[Any, Any, T]) -> T:
    """Await `work`, but raise LegGone the moment the human hangs up. On every exit, `work` has
    been cancelled (if still running) and awaited: it can never resume afterwards."""
    job: asyncio.Task[T] = asyncio.ensure_future(work)
    gone: asyncio.Task[None] = asyncio.ensure_future(leg.wait_hangup())
    try:
        await asyncio.wait({job, gone}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in (job, gone):
            task.cancel()
        await asyncio.wait({job, gone})
    if not job.cancelled():
        return job.result()  # a decision beats a hang-up in the same step
    if not gone.cancelled() and gone.exception() is not None:
        raise gone.exception()  # type: ignore[misc]  # a port breaking its contract
    raise LegGone("the target hung up")

"""The scope of one transfer: its tasks, and the one step in which a phase of it ends.

Why it is built this way:

- One `asyncio.TaskGroup` per phase owns every task of a transfer: the *flow* (hold, then the
  hunt round by round), one task per *attempt*, the briefing being prepared while targets ring,
  the *watchers* (caller hang-up, the whole-transfer deadline, the accepted human's hang-up)
  and the held caller's *prompts and keys* (`caller_side.py`). Nothing outlives the phase, on
  any path, by construction.
- Whoever decides how a phase ends calls `_stop(event)`: the event goes through the state
  machine and, in the same step, every other task of the transfer is cancelled, exactly once.
  Doing it in the same step (not when a supervisor wakes up later) is what makes "first one
  wins" true: a task that has not yet run its next step gets CancelledError instead of its
  result, so a bridge cannot complete for a transfer that was just cancelled, and a second
  human's "yes" cannot be acted on. Cancelling only once is what lets a cancelled task finish
  its own cleanup (hang up its leg, tell the human the caller left) without being interrupted.
- A port raising something unexpected ends the phase with a PortFailed event (Reason.ERROR) and
  the same cleanup: nothing a port raises escapes the group.

`TransferScope` is the base of the driver's `WarmTransfer`: it holds what one transfer holds
(its ports, its state machine, its tasks, its attempts) and the moves every part of the driver
makes on it; the hunt (`hunt.py`) and the run (`driver.py`) are built on top.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import Awaitable, Callable, Coroutine, Iterable
from pathlib import Path
from typing import Any

from warmtransfer.consult.ports import Briefing, Consultant
from warmtransfer.transfer.attempts import RunningAttempt
from warmtransfer.transfer.events import EventStream, TransferEvent
from warmtransfer.transfer.outcome import TransferOutcome
from warmtransfer.transfer.plan import TransferPlan
from warmtransfer.transfer.ports import Bridge, CallerLeg, Dialer
from warmtransfer.transfer.states import (
    CallerHungUp,
    Cancelled,
    Event,
    IllegalTransition,
    PortFailed,
    TransferStateMachine,
    TransferTimedOut,
)

logger = logging.getLogger("warmtransfer.transfer")

#: Each release step (hang up a target, unhold the caller) gets this long; the contract says
#: they do not block on the far end, so this only bounds a broken backend.
CLEANUP_TIMEOUT = 5.0


class Superseded(Exception):
    """Another task already ended the transfer (or won the hunt): this one stops where it is."""


class TransferScope:
    """What one transfer holds, and the moves on it: spawn a task, advance, stop, clean up."""

    def __init__(
        self,
        *,
        plan: TransferPlan,
        caller: CallerLeg,
        dialer: Dialer,
        bridge: Bridge,
        consultant: Consultant,
        briefing: Briefing,
        transfer_id: str | None = None,
        on_event: Callable[[TransferEvent], None] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        """`on_event` is called at each state change (errors it raises are logged, not raised);
        `clock` stamps events and attempts (the engine passes its loop's clock). Deadlines run
        on the event loop's own clock, whatever `clock` is."""
        self._plan = plan
        self._caller = caller
        self._dialer = dialer
        self._bridge = bridge
        self._consultant = consultant
        self._briefing = briefing
        self._id = transfer_id or uuid.uuid4().hex[:12]
        self._clock = clock
        self._transfer_timeout = plan.effective_transfer_timeout
        self._machine = TransferStateMachine()
        self._stream = EventStream(on_event)

        self._ran = False
        self._cancel_requested = False
        self._run_cancelled = False
        self._started = 0.0
        self._deadline = 0.0  # loop time
        # The event that ended the current phase (the hunt, then the fallback); first one wins.
        self._end: Event | None = None
        self._hunt_end: Event | None = None  # the end of the hunt phase, kept for the outcome
        self._ended = asyncio.Event()
        self._group: asyncio.TaskGroup | None = None  # set while the transfer's tasks may run
        self._tasks: set[asyncio.Task[None]] = set()
        self._cancelled: set[asyncio.Task[None]] = set()
        self._step = ""  # the flow's port call in progress, for error details
        self._hold_requested = False
        self._prepared: asyncio.Future[object] | None = None
        self._attempts: list[RunningAttempt] = []
        self._round_tasks: list[asyncio.Task[None]] = []
        self._winner: RunningAttempt | None = None
        self._message_error: str | None = None
        self._outcome: TransferOutcome | None = None
        # The held caller's side (caller_side.py): prompts and keys, and what the keys did.
        self._held_at: float | None = None  # loop time the hold audio began
        self._hold_tasks: list[asyncio.Task[None]] = []
        self._given_back = False  # unheld the moment the caller pressed the cancel key
        self._unhold_error: str | None = None  # what that unhold raised, if anything
        self._recorded_message: Path | None = None
        self._record_error: str | None = None

    # -- a phase: its tasks, under one group ----------------------------------------------------

    async def _supervise(self, flow: Callable[[], Coroutine[Any, Any, None]]) -> None:
        """Run `flow` and the watchers until something ends this phase; then wait for every
        task of the phase to finish (each was cancelled once, in `_stop`)."""
        async with asyncio.TaskGroup() as group:
            self._group = group
            try:
                self._spawn(flow, "flow")
                self._spawn(self._watch_caller, "caller.wait_hangup")
                self._spawn(self._watch_deadline, "deadline")
                if self._cancel_requested and self._end is None:
                    self._stop(Cancelled(at=self._clock(), detail="cancelled by the app"))
                await self._ended.wait()
                # Every task's own cleanup (hang-ups, notices, the caller's message), awaited
                # here rather than by the group on exit: a cancel of run() meanwhile must come
                # to the handler below, which lets the cleanup finish, not to the group, which
                # would interrupt it and skip giving the caller back.
                while self._tasks:
                    await asyncio.wait(set(self._tasks))
            except asyncio.CancelledError:
                # run() itself was cancelled: end the transfer like an app's cancel, let every
                # task clean up (the group waits for them), and re-raise once the caller is back.
                self._run_cancelled = self._cancel_requested = True
                if self._end is None:
                    self._stop(Cancelled(at=self._clock(), detail="run() was cancelled"))
                else:
                    # Already ended: the tasks are cleaning up, each step bounded, and finish;
                    # only a message still being recorded stops (the app wants out now).
                    self._cancel_once(self._hold_tasks)
            finally:
                self._group = None
        self._tasks.clear()
        self._cancelled.clear()

    def _spawn(
        self, make: Callable[[], Coroutine[Any, Any, None]], name: str
    ) -> asyncio.Task[None]:
        """Start a task of the transfer. `make` builds its coroutine in the task's first step,
        so a task cancelled before it ever ran leaves no un-awaited coroutine behind."""
        if self._group is None or self._end is not None:
            raise Superseded
        task = self._group.create_task(self._guarded(make, name), name=f"{self._id} {name}")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    async def _guarded(self, make: Callable[[], Coroutine[Any, Any, None]], name: str) -> None:
        """Turn anything a port raises into a PortFailed end, so nothing escapes the group."""
        try:
            await make()
        except Superseded:
            pass
        except Exception as exc:
            port = self._step if name == "flow" else name
            self._port_failed(port, exc)
        else:
            if name == "flow" and self._end is None:  # a flow that forgot to decide is a bug
                self._stop(PortFailed(at=self._clock(), port="flow", detail="flow ended undecided"))

    def _port_failed(self, port: str, exc: Exception) -> None:
        if isinstance(exc, IllegalTransition):
            logger.error("transfer %s: driver bug: %s", self._id, exc)
        else:
            logger.warning("transfer %s: %s raised %r", self._id, port, exc)
        self._stop(PortFailed(at=self._clock(), port=port, detail=f"{port} raised {exc!r}"))

    def _cancel_all(self) -> None:
        """Cancel every task of the transfer but the caller's (see `_cancel_once`)."""
        self._cancel_once(self._tasks)

    def _cancel_once(self, tasks: Iterable[asyncio.Task[None]]) -> None:
        """Cancel each of `tasks` but the caller's, each at most once: a second cancel would
        interrupt the cleanup a task runs after the first."""
        current = asyncio.current_task()
        for task in list(tasks):
            if task is not current and task not in self._cancelled and not task.done():
                self._cancelled.add(task)
                task.cancel()

    # -- state changes ------------------------------------------------------------------------

    def _fire(self, event: Event) -> None:
        previous = self._machine.state
        state = self._machine.handle(event)
        self._stream.emit(TransferEvent(self._id, event.at, event, previous, state))

    def _check_current(self, attempt: RunningAttempt | None = None) -> None:
        """Raise Superseded if the transfer has ended or, for an attempt, another one has won."""
        if self._end is not None or self._winner not in (None, attempt):
            raise Superseded

    def _advance(self, event: Event, attempt: RunningAttempt | None = None) -> None:
        """Record progress; stop the caller's task if the transfer ended meanwhile (also from
        inside an event callback, e.g. an app that cancels on Answered) or, for an attempt, if
        another attempt has won."""
        self._check_current(attempt)
        self._fire(event)
        if self._end is not None:
            raise Superseded

    def _stop(self, event: Event) -> None:
        """End this phase on `event`, unless something else already has (first one wins), and
        cancel every other task of the transfer in the same step."""
        if self._end is not None:
            logger.debug("transfer %s: %s ignored, ended on %s", self._id, event, self._end)
            return
        self._end = event
        try:
            self._fire(event)
        finally:
            self._ended.set()
            self._cancel_all()

    # -- watchers and cleanup -------------------------------------------------------------------

    async def _watch_caller(self) -> None:
        await self._caller.wait_hangup()
        self._stop(CallerHungUp(at=self._clock(), detail=f"while {self._machine.state.name}"))

    async def _watch_deadline(self) -> None:
        await asyncio.sleep(max(0.0, self._deadline - asyncio.get_running_loop().time()))
        self._stop(TransferTimedOut(at=self._clock(), timeout=self._transfer_timeout))

    async def _bounded(
        self, name: str, step: Awaitable[None], limit: float = CLEANUP_TIMEOUT
    ) -> str | None:
        """One bounded cleanup step; returns what went wrong instead of raising it."""
        try:
            async with asyncio.timeout(limit):
                await step
        except Exception as exc:
            logger.warning("transfer %s: %s raised %r during cleanup", self._id, name, exc)
            return f"{name} raised {exc!r}"
        return None

"""The driver: runs one warm transfer against the ports, and nothing but what the table allows.

`WarmTransfer` is what apps hold; it is built in layers, one module each, so that each rule of
the driver is written down once, next to the code that keeps it:

- `scope.py`: what one transfer holds, its tasks under one `asyncio.TaskGroup` per phase, and
  `_stop(event)`, the single step in which a phase ends and every other task is cancelled, once.
  Nothing outlives `run()`, on any path, by construction.
- `hunt.py`: the flows a phase runs: the hunt round by round, each attempt (dial, consult, and
  for the winner the bridge) owning its leg until its task ends, and the fallback phase.
- `caller_side.py`: what the held caller hears and may do meanwhile: progress prompts, and the
  plan's keys to stop waiting or to leave a message instead.
- `attempts.py`: each attempt's record while it runs; `ending.py`: how the ending events become
  the outcome an app gets.
- This module: the app's side (`run`, `cancel`, the event stream) and what happens after the
  last phase.

After the hunt fails, what happens to the caller is the plan's `on_failure`: the fallback target
is a second supervised phase (dial and bridge, no consult, within the same overall deadline); a
message-and-hang-up or the return to the AI is done by `_settle`, outside the group, once every
task has ended. Only then does the machine reach a terminal state, and `run()` return. A caller
who stopped waiting by key was already unheld, or has already recorded their message, by then
(both start the moment the key is read); `_settle` only finishes the job.

Deadlines are the driver's, not the backends': ringing (`target.ring_timeout`), the consult
(`plan.consult_timeout`, from answer to decision, per human) and the whole transfer
(`plan.effective_transfer_timeout`), which bounds hold, hunt, fallback and bridge.

A port raising something unexpected ends the transfer with Reason.ERROR and the same cleanup;
`run()` itself only raises `DestinationNotAllowed` (before anything happened), `RuntimeError`
(run twice) and `CancelledError` (after cleanup: the caller is back with the AI). A second
cancellation of `run()` while it is cleaning up interrupts the cleanup (each step of which is
bounded anyway): whoever cancels twice asked for that.
"""

from __future__ import annotations

import asyncio
import functools
import inspect
from collections.abc import AsyncIterator, Callable, Coroutine
from typing import Any, ParamSpec

from warmtransfer.transfer.ending import build_outcome, describe_end
from warmtransfer.transfer.events import TransferEvent
from warmtransfer.transfer.hunt import NOTICE_TIMEOUT, Hunt
from warmtransfer.transfer.outcome import TransferOutcome
from warmtransfer.transfer.plan import MessageAndHangup, TransferPlan
from warmtransfer.transfer.ports import CallerLeftNotifier
from warmtransfer.transfer.scope import CLEANUP_TIMEOUT
from warmtransfer.transfer.states import (
    CallerHungUp,
    Cancelled,
    Dismissed,
    PortFailed,
    Recovered,
    Start,
    State,
)

__all__ = [
    "CLEANUP_TIMEOUT",
    "MESSAGE_TIMEOUT",
    "NOTICE_TIMEOUT",
    "CallerLeftNotifier",
    "WarmTransfer",
    "describe_end",
    "warm_transfer",
]

P = ParamSpec("P")

#: How long the plan's failure message to the caller may take (message_and_hangup).
MESSAGE_TIMEOUT = 60.0


class WarmTransfer(Hunt):
    """One warm transfer of one caller to the first human of a plan who accepts.

    Run it once with `run()`. Built with keyword arguments only: the plan, the ports
    (`caller`, `dialer`, `bridge`, `consultant`), the `briefing`, and optionally a
    `transfer_id`, an `on_event` callback and a `clock` (see `TransferScope.__init__`).
    """

    # -- what apps see ----------------------------------------------------------------------

    @property
    def transfer_id(self) -> str:
        return self._id

    @property
    def plan(self) -> TransferPlan:
        return self._plan

    @property
    def state(self) -> State:
        return self._machine.state

    @property
    def timeline(self) -> list[TransferEvent]:
        return self._stream.timeline

    @property
    def outcome(self) -> TransferOutcome | None:
        """The outcome once `run()` has returned; None before."""
        return self._outcome

    def events(self) -> AsyncIterator[TransferEvent]:
        """Every event so far, then each new one, until the transfer ends."""
        return self._stream.subscribe()

    def cancel(self) -> None:
        """Give up: the caller goes back to the AI (Reason.CANCELLED), or ABANDONED if gone.

        Safe to call at any time, from callbacks too. Once the transfer is already failing, it
        still means "give the caller back to the AI": no fallback, no message-and-hang-up.
        After the transfer ended it does nothing.
        """
        self._cancel_requested = True
        if self._group is not None:
            self._stop(Cancelled(at=self._clock(), detail="cancelled by the app"))

    async def run(self) -> TransferOutcome:
        """Run the transfer to its end and return how it ended."""
        if self._ran:
            raise RuntimeError(f"transfer {self._id} already ran; a WarmTransfer runs once")
        self._ran = True
        try:
            self._plan.check_allowed()  # every target and the fallback, before anything
            self._outcome = await self._run()
            return self._outcome
        finally:
            self._stream.close()

    # -- the run ----------------------------------------------------------------------------

    async def _run(self) -> TransferOutcome:
        self._started = self._clock()
        if self._caller.hung_up:
            self._end_before_start(
                CallerHungUp(at=self._started, detail="the caller had already hung up")
            )
        elif self._cancel_requested:
            self._end_before_start(
                Cancelled(at=self._started, detail="cancelled by the app before run()")
            )
        else:
            self._fire(Start(at=self._started))
            self._deadline = asyncio.get_running_loop().time() + self._transfer_timeout
            await self._supervise(self._hunt_flow)
            self._hunt_end = self._end
            fallback = self._open_fallback()
            if fallback is not None:
                await self._supervise(
                    functools.partial(self._attempt_task, fallback, self._fallback_steps)
                )
        now = self._clock()
        for attempt in self._attempts:  # one cut short before its task ever ran
            if attempt.ended is None:
                attempt.ended = now
        try:
            await self._settle()
        finally:
            if self._run_cancelled:
                # run() was cancelled: the caller is back with the AI by now; honour the cancel.
                raise asyncio.CancelledError
        assert self._hunt_end is not None and self._end is not None
        return build_outcome(
            state=self._machine.state,
            final=self._machine.history[-1].event,
            hunt_end=self._hunt_end,
            end=self._end,
            attempts=self._attempts,
            winner=self._winner,
            started=self._started,
            message_error=self._message_error,
            recorded_message=self._recorded_message,
            record_error=self._record_error,
        )

    def _end_before_start(self, event: CallerHungUp | Cancelled) -> None:
        """The transfer ends before it began: no phase runs and no task starts."""
        self._fire(event)
        self._end = self._hunt_end = self._machine.history[-1].event

    async def _settle(self) -> None:
        """Give the caller back to the AI, or play the plan's message and hang up; then reach a
        terminal state. Runs outside the task group, after every task of the transfer ended."""
        if self._machine.state is not State.RECOVERING:
            return  # COMPLETED: the bridge owns both legs; ABANDONED: nobody to give back
        message = self._plan.on_failure
        if self._caller.hung_up:
            self._fire(CallerHungUp(at=self._clock(), detail="while being given back"))
            return
        if isinstance(message, MessageAndHangup) and self._on_failure_applies():
            self._message_error = await self._bounded(
                "caller.play_message", self._caller.play_message(message.message), MESSAGE_TIMEOUT
            )
            if self._caller.hung_up:
                self._fire(CallerHungUp(at=self._clock(), detail="during the failure message"))
                return
            if self._message_error is None:
                error = await self._bounded("caller.hangup", self._caller.hangup())
                if error is None:
                    self._fire(Dismissed(at=self._clock(), message=message.message))
                else:
                    self._fire(PortFailed(at=self._clock(), port="caller.hangup", detail=error))
                return
            # The message could not be played: hanging up on a caller who heard nothing is
            # worse than giving them back to the AI, which can at least speak.

        error = None
        if self._given_back:  # the caller's cancel key: unheld at once (caller_side.py)
            error = self._unhold_error
        elif self._hold_requested:
            error = await self._bounded("caller.unhold", self._caller.unhold())
        now = self._clock()
        if self._caller.hung_up:
            self._fire(CallerHungUp(at=now, detail="while being given back to the AI"))
        elif error is not None:
            self._fire(PortFailed(at=now, port="caller.unhold", detail=error))
        else:
            self._fire(Recovered(at=now))


def _runs_once(
    new: Callable[P, WarmTransfer],
) -> Callable[P, Coroutine[Any, Any, TransferOutcome]]:
    """`warm_transfer`, taking exactly the keyword arguments `new` takes (one list of them, in
    `TransferScope.__init__`, checked by mypy through the ParamSpec and shown by `help()`)."""

    async def warm_transfer(*args: P.args, **kwargs: P.kwargs) -> TransferOutcome:
        """Run one warm transfer and return its outcome (a `WarmTransfer` you do not need to
        keep)."""
        return await new(*args, **kwargs).run()

    warm_transfer.__qualname__ = warm_transfer.__name__
    setattr(  # noqa: B010  (mypy does not know the attribute)
        warm_transfer,
        "__signature__",
        inspect.signature(new).replace(return_annotation="TransferOutcome"),
    )
    return warm_transfer


warm_transfer = _runs_once(WarmTransfer)

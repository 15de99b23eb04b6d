"""The driver: runs one warm transfer against the ports, and nothing but what the table allows.

How it is built, and why:

- One `asyncio.TaskGroup` owns every task of a transfer: the *flow* (hold, then the hunt round
  by round), one task per *attempt* (dial, consult, and for the winner the bridge), the briefing
  being prepared while targets ring, and the *watchers* (caller hang-up, the whole-transfer
  deadline, the accepted human's hang-up). Nothing outlives `run()`, on any path, by
  construction.
- Whoever decides how the transfer ends calls `_stop(event)`: the event goes through the state
  machine and, in the same step, every other task of the transfer is cancelled, exactly once.
  Doing it in the same step (not when a supervisor wakes up later) is what makes "first one
  wins" true: a task that has not yet run its next step gets CancelledError instead of its
  result, so a bridge cannot complete for a transfer that was just cancelled, and a second
  human's "yes" cannot be acted on. Cancelling only once is what lets a cancelled task finish
  its own cleanup (hang up its leg, tell the human the caller left) without being interrupted.
- Each attempt owns its leg from the moment `dial` returns to the moment the attempt task ends:
  its `finally` hangs the leg up unless the bridge took it over. So a declined human is hung up
  before the next target is dialled, a losing human in simultaneous mode is hung up at once, and
  no path can forget a leg. When the caller has left, the attempt first tells the human (the
  consultant's optional `notify_caller_left`), after its consult task has been cancelled and
  awaited, so the briefing has stopped for good and the notice is the last thing played.
- Simultaneous hunting: the first attempt to get "accept" claims the win in one step (no await
  between the decision and the claim): it cancels every other attempt and fires Accepted, which
  leaves HUNTING; the table refuses a second Accepted. Two humans can never be bridged.
- After the hunt fails, what happens to the caller is the plan's `on_failure`: the fallback
  target is a second supervised phase (dial and bridge, no consult, within the same overall
  deadline); a message-and-hang-up or the return to the AI is done by `_settle`, outside the
  group, once every task has ended. Only then does the machine reach a terminal state, and
  `run()` return.
- Deadlines are the driver's, not the backends': ringing (`target.ring_timeout`), the consult
  (`plan.consult_timeout`, from answer to decision, per human) and the whole transfer
  (`plan.effective_transfer_timeout`), which bounds hold, hunt, fallback and bridge.
- A port raising something unexpected ends the transfer with Reason.ERROR and the same cleanup;
  `run()` itself only raises `DestinationNotAllowed` (before anything happened), `RuntimeError`
  (run twice) and `CancelledError` (after cleanup: the caller is back with the AI). A second
  cancellation of `run()` while it is cleaning up interrupts the cleanup (each step of which is
  bounded anyway): whoever cancels twice asked for that.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar, runtime_checkable

from warmtransfer.consult.ports import Briefing, Consultant, ConsultLeg, Decision, LegGone, Verdict
from warmtransfer.transfer.events import EventStream, TransferEvent
from warmtransfer.transfer.outcome import (
    Attempt,
    BridgeFailed,
    Completed,
    DialFailed,
    Failed,
    Reason,
    TransferOutcome,
    most_informative,
)
from warmtransfer.transfer.plan import MessageAndHangup, TransferPlan
from warmtransfer.transfer.ports import Bridge, CallerLeg, Dialer, TargetLeg
from warmtransfer.transfer.states import (
    Accepted,
    Answered,
    AttemptFailed,
    BridgeBroke,
    Bridged,
    CallerHungUp,
    Cancelled,
    ConsultTimedOut,
    Declined,
    DialStarted,
    Dismissed,
    Event,
    HoldStarted,
    HuntExhausted,
    IllegalTransition,
    PortFailed,
    Recovered,
    Ringing,
    Start,
    State,
    TargetHungUp,
    TransferStateMachine,
    TransferTimedOut,
    VoicemailDetected,
)
from warmtransfer.transfer.target import Target

logger = logging.getLogger("warmtransfer.transfer")

T = TypeVar("T")

#: Each release step (hang up a target, unhold the caller) gets this long; the contract says
#: they do not block on the far end, so this only bounds a broken backend.
CLEANUP_TIMEOUT = 5.0
#: How long the optional "the caller has left" notice to the human may take.
NOTICE_TIMEOUT = 10.0
#: How long the plan's failure message to the caller may take (message_and_hangup).
MESSAGE_TIMEOUT = 60.0

#: Events that interrupt a transfer from outside its flow; everything else is the flow's own.
_INTERRUPTS = (CallerHungUp, Cancelled, TransferTimedOut, PortFailed)


@runtime_checkable
class CallerLeftNotifier(Protocol):
    """Optional consultant capability: tell the human the caller has gone before hanging up.

    The driver calls it (bounded by NOTICE_TIMEOUT) for every answered human when the caller
    hangs up, after that human's consult has been cancelled and awaited.
    """

    async def notify_caller_left(self, leg: ConsultLeg) -> None: ...


class _Superseded(Exception):
    """Another task already ended the transfer (or won the hunt): this one stops where it is."""


@dataclass
class _Attempt:
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


class WarmTransfer:
    """One warm transfer of one caller to the first human of a plan who accepts.

    Run it once with `run()`.
    """

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
        self._attempts: list[_Attempt] = []
        self._round_tasks: list[asyncio.Task[None]] = []
        self._winner: _Attempt | None = None
        self._message_error: str | None = None
        self._outcome: TransferOutcome | None = None

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
            self._fire(CallerHungUp(at=self._started, detail="the caller had already hung up"))
            self._end = self._hunt_end = self._machine.history[-1].event
        elif self._cancel_requested:
            self._fire(Cancelled(at=self._started, detail="cancelled by the app before run()"))
            self._end = self._hunt_end = self._machine.history[-1].event
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
        return self._build_outcome()

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
            except asyncio.CancelledError:
                # run() itself was cancelled: end the transfer like an app's cancel, let every
                # task clean up (the group waits for them), and re-raise once the caller is back.
                self._run_cancelled = self._cancel_requested = True
                self._stop(Cancelled(at=self._clock(), detail="run() was cancelled"))
                self._cancel_all()
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
            raise _Superseded
        task = self._group.create_task(self._guarded(make, name), name=f"{self._id} {name}")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    async def _guarded(self, make: Callable[[], Coroutine[Any, Any, None]], name: str) -> None:
        """Turn anything a port raises into a PortFailed end, so nothing escapes the group."""
        try:
            await make()
        except _Superseded:
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
        """Cancel every task of the transfer but the caller's, each at most once: a second
        cancel would interrupt the cleanup a task runs after the first."""
        current = asyncio.current_task()
        for task in list(self._tasks):
            if task is not current and task not in self._cancelled and not task.done():
                self._cancelled.add(task)
                task.cancel()

    # -- state changes ------------------------------------------------------------------------

    def _fire(self, event: Event) -> None:
        previous = self._machine.state
        state = self._machine.handle(event)
        self._stream.emit(TransferEvent(self._id, event.at, event, previous, state))

    def _advance(self, event: Event, attempt: _Attempt | None = None) -> None:
        """Record progress; stop the caller's task if the transfer ended meanwhile (also from
        inside an event callback, e.g. an app that cancels on Answered) or, for an attempt, if
        another attempt has won."""
        if self._end is not None or (self._winner not in (None, attempt)):
            raise _Superseded
        self._fire(event)
        if self._end is not None:
            raise _Superseded

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

    # -- the hunt ---------------------------------------------------------------------------------

    async def _hunt_flow(self) -> None:
        plan = self._plan
        loop = asyncio.get_running_loop()
        self._prepared = loop.create_future()
        self._spawn(self._prepare, "consultant.prepare")  # rendered while hold starts and rings
        self._step = "caller.hold"
        self._hold_requested = True
        await self._caller.hold(plan.hold_audio)
        self._advance(HoldStarted(at=self._clock()))

        hunting = plan.hunting
        targets = list(plan.targets)
        for round_number in range(1, hunting.rounds + 1):
            if round_number > 1 and hunting.round_delay > 0:
                self._step = "round delay"
                await asyncio.sleep(hunting.round_delay)
            first = len(self._attempts)
            if hunting.mode == "simultaneous":
                await self._run_round(targets, round_number)
            else:
                for target in targets:
                    await self._run_round([target], round_number)
            if self._end is not None:
                return  # the winner bridged (or failed to); the flow has nothing left to do
            targets = [a.target for a in self._attempts[first:] if a.reason in hunting.retry_on]
            if not targets:
                break
        hunt = [attempt.frozen(Reason.ERROR) for attempt in self._attempts]
        best = most_informative(hunt)
        self._stop(
            HuntExhausted(
                at=self._clock(),
                reason=best.reason or Reason.ERROR,
                attempt=next(i for i, attempt in enumerate(hunt) if attempt is best),
                sip_status=best.sip_status,
                sip_reason=best.sip_reason,
                detail=best.detail,
            )
        )

    async def _run_round(self, targets: list[Target], round_number: int) -> None:
        """Dial `targets` at once and wait until every one of these attempts has ended."""
        tasks = [
            self._spawn(functools.partial(self._hunt_attempt, target, round_number), "attempt")
            for target in targets
        ]
        self._round_tasks = tasks
        await asyncio.wait(tasks)  # does not cancel them if the flow is cancelled: _stop does
        if self._end is not None:
            raise _Superseded

    async def _prepare(self) -> None:
        """Render the briefing while the caller goes on hold and targets ring, so it is ready
        the moment a human answers."""
        value = await self._consultant.prepare(self._briefing)
        if self._prepared is not None and not self._prepared.done():
            self._prepared.set_result(value)

    def _open(self, target: Target, round_number: int, fallback: bool) -> _Attempt:
        """A new attempt, in the outcome's list from now on (its index is its events' id)."""
        attempt = _Attempt(len(self._attempts), target, round_number, fallback, self._clock())
        self._attempts.append(attempt)
        return attempt

    def _dial_started(self, attempt: _Attempt) -> DialStarted:
        return DialStarted(
            at=attempt.started,
            attempt=attempt.index,
            target=attempt.target,
            round=attempt.round,
            fallback=attempt.fallback,
        )

    async def _hunt_attempt(self, target: Target, round_number: int) -> None:
        """One attempt of the hunt, in its own task: dial, consult, and for the winner, bridge."""
        if self._end is not None or self._winner is not None:
            raise _Superseded  # cancelled in the very step it was to start: never dialled
        attempt = self._open(target, round_number, fallback=False)
        await self._attempt_task(attempt, self._hunt_steps)

    async def _attempt_task(
        self, attempt: _Attempt, steps: Callable[[_Attempt], Coroutine[Any, Any, None]]
    ) -> None:
        """Run an attempt's steps; on every exit, release its leg (`_release`)."""
        try:
            await steps(attempt)
        except _Superseded:
            pass
        except Exception as exc:
            attempt.fail(Reason.ERROR, self._clock(), f"{attempt.step} raised {exc!r}")
            self._port_failed(attempt.step, exc)
        finally:
            await self._release(attempt)

    async def _hunt_steps(self, attempt: _Attempt) -> None:
        self._advance(self._dial_started(attempt), attempt)
        await self._attempt_steps(attempt)

    async def _attempt_steps(self, attempt: _Attempt) -> None:
        leg = await self._dial(attempt)
        if leg is None:
            return
        self._answered(attempt)
        decision = await self._consult(attempt, leg)
        if decision is None:
            return
        now = self._clock()
        if decision.verdict is Verdict.DECLINE:
            attempt.fail(Reason.DECLINED, now, decision.reason or "")
            self._advance(
                Declined(at=now, attempt=attempt.index, reason=decision.reason, via=decision.via),
                attempt,
            )
        elif decision.verdict is Verdict.VOICEMAIL:
            attempt.fail(Reason.VOICEMAIL, now, decision.via)
            self._advance(
                VoicemailDetected(at=now, attempt=attempt.index, via=decision.via), attempt
            )
        else:
            self._claim(attempt, decision, now)
            await self._connect(attempt, leg)

    def _answered(self, attempt: _Attempt) -> None:
        """Record the answer only if it can still be announced: the record and the events must
        agree (an attempt whose Answered was never fired was not answered, as far as apps know;
        its leg is hung up all the same)."""
        if self._end is not None or self._winner not in (None, attempt):
            raise _Superseded
        attempt.answered = self._clock()
        self._advance(Answered(at=attempt.answered, attempt=attempt.index), attempt)

    def _claim(self, attempt: _Attempt, decision: Decision, now: float) -> None:
        """This human accepted: win the hunt in this very step, end every other attempt."""
        if self._end is not None or self._winner is not None:
            raise _Superseded  # cannot happen (losers are cancelled at once); kept as the rule
        self._winner = attempt
        for task in self._round_tasks:
            if task is not asyncio.current_task() and task not in self._cancelled:
                self._cancelled.add(task)
                task.cancel()  # ringing: the dial is cancelled (CANCEL); answered: hung up
        self._advance(Accepted(at=now, attempt=attempt.index, via=decision.via), attempt)

    async def _dial(self, attempt: _Attempt) -> TargetLeg | None:
        target = attempt.target
        attempt.step = "dialer.dial"
        ring_deadline = asyncio.timeout(target.ring_timeout)
        try:
            async with ring_deadline:
                # Stored in the same step as dial returns, so cleanup sees every answered leg.
                attempt.leg = await self._dialer.dial(
                    target, functools.partial(self._on_ringing, attempt)
                )
        except DialFailed as failure:
            reason, status, text, detail = (
                failure.reason,
                failure.sip_status,
                failure.sip_reason,
                failure.detail,
            )
        except TimeoutError:
            if not ring_deadline.expired():
                raise
            reason, status, text = Reason.NO_ANSWER, None, None
            detail = f"no answer within {target.ring_timeout:g} s (ring_timeout)"
        else:
            return attempt.leg
        now = self._clock()
        attempt.fail(reason, now, detail)
        attempt.sip_status, attempt.sip_reason = status, text
        event = AttemptFailed(
            at=now,
            attempt=attempt.index,
            reason=reason,
            sip_status=status,
            sip_reason=text,
            detail=detail,
        )
        if attempt.fallback:
            self._stop(event)  # FALLBACK -> RECOVERING: the caller goes back to the AI
        else:
            self._advance(event, attempt)
        return None

    def _on_ringing(self, attempt: _Attempt, sip_status: int) -> None:
        """The dialer's provisional responses. A late one (after answer, after the attempt or
        the transfer ended) is ignored: a backend's quirk must not break the transfer."""
        if (
            self._end is not None
            or attempt.answered is not None
            or attempt.reason is not None
            or self._winner not in (None, attempt)
            or not self._machine.allows(Ringing)
        ):
            logger.debug("transfer %s: late %s ignored in %s", self._id, sip_status, self.state)
            return
        event = Ringing(at=self._clock(), attempt=attempt.index, sip_status=sip_status)
        if attempt.ringing is None:
            attempt.ringing = event.at
        self._fire(event)

    async def _consult(self, attempt: _Attempt, leg: TargetLeg) -> Decision | None:
        """Digits, briefing and decision, all under the consult deadline, and all stopped the
        moment the human hangs up, even if the consultant is not touching the leg."""
        timeout = self._plan.consult_timeout
        consult_deadline = asyncio.timeout(timeout)
        try:
            async with consult_deadline:
                return await _unless_hung_up(leg, self._consult_steps(attempt, leg))
        except TimeoutError:
            if not consult_deadline.expired():
                raise
            now = self._clock()
            attempt.fail(Reason.CONSULT_TIMEOUT, now, f"no decision within {timeout:g} s")
            self._advance(ConsultTimedOut(at=now, attempt=attempt.index, timeout=timeout), attempt)
        except LegGone:
            now = self._clock()
            attempt.fail(Reason.TARGET_HUNG_UP, now)
            self._advance(TargetHungUp(at=now, attempt=attempt.index), attempt)
        return None

    async def _consult_steps(self, attempt: _Attempt, leg: TargetLeg) -> Decision:
        if attempt.target.dtmf:
            attempt.step = "target.send_digits"
            await leg.send_digits(attempt.target.dtmf)
        attempt.step = "consultant.prepare"
        assert self._prepared is not None
        # Shielded: one attempt giving up must not cancel the briefing the others wait for.
        briefing = await asyncio.shield(self._prepared)
        attempt.step = "consultant.consult"
        return await self._consultant.consult(leg, briefing)

    async def _connect(self, attempt: _Attempt, leg: TargetLeg) -> None:
        """Join caller and human. Awaited inline, not in a sub-task, so a bridge that completes
        is seen in the same step (Bridged), and one that is interrupted is cancelled inside the
        port, which undoes it; the human's hang-up meanwhile is a watcher's job."""
        self._spawn(functools.partial(self._watch_target, attempt, leg), "target.wait_hangup")
        attempt.step = "bridge.connect"
        try:
            await self._bridge.connect(self._caller, leg)
        except BridgeFailed as exc:
            now = self._clock()
            detail = str(exc) or repr(exc)
            attempt.fail(Reason.BRIDGE_FAILED, now, detail)
            self._stop(BridgeBroke(at=now, detail=detail))
        except LegGone:
            now = self._clock()
            attempt.fail(Reason.TARGET_HUNG_UP, now)
            self._stop(TargetHungUp(at=now, attempt=attempt.index))
        else:
            attempt.bridged = True  # the bridge owns the leg now: _release leaves it alone
            now = self._clock()
            attempt.reason, attempt.ended = Reason.COMPLETED, now
            self._stop(Bridged(at=now))

    # -- the fallback -------------------------------------------------------------------------

    def _open_fallback(self) -> _Attempt | None:
        """After a failed hunt: dial the plan's fallback target, if the plan has one, the
        failure is one it covers, the app has not cancelled and time is left. DialStarted
        (RECOVERING -> FALLBACK) is fired here, before the phase's watchers exist, so none of
        them can see RECOVERING."""
        target = self._plan.fallback
        if (
            target is None
            or self._machine.state is not State.RECOVERING
            or not self._on_failure_applies()
            or isinstance(self._hunt_end, TransferTimedOut)
            or asyncio.get_running_loop().time() >= self._deadline
            or self._caller.hung_up
        ):
            return None
        self._end, self._ended = None, asyncio.Event()
        last_round = max((a.round for a in self._attempts), default=1)
        attempt = self._open(target, last_round, fallback=True)
        self._winner = attempt  # the only candidate: no consult, nobody to race
        self._fire(self._dial_started(attempt))
        return attempt

    async def _fallback_steps(self, attempt: _Attempt) -> None:
        """The fallback: ring, then bridge at once, without a consult."""
        leg = await self._dial(attempt)
        if leg is None:
            return
        self._answered(attempt)
        if attempt.target.dtmf:
            attempt.step = "target.send_digits"
            await leg.send_digits(attempt.target.dtmf)
        await self._connect(attempt, leg)

    # -- watchers ---------------------------------------------------------------------------------

    async def _watch_caller(self) -> None:
        await self._caller.wait_hangup()
        self._stop(CallerHungUp(at=self._clock(), detail=f"while {self.state.name}"))

    async def _watch_target(self, attempt: _Attempt, leg: TargetLeg) -> None:
        """The accepted (or fallback) human hanging up before the bridge has them."""
        await leg.wait_hangup()
        now = self._clock()
        if self._end is None:
            attempt.fail(Reason.TARGET_HUNG_UP, now)
        self._stop(TargetHungUp(at=now, attempt=attempt.index))

    async def _watch_deadline(self) -> None:
        await asyncio.sleep(max(0.0, self._deadline - asyncio.get_running_loop().time()))
        self._stop(TransferTimedOut(at=self._clock(), timeout=self._transfer_timeout))

    # -- releasing: each attempt its leg; then the caller -----------------------------------------

    async def _release(self, attempt: _Attempt) -> None:
        """End the attempt's leg unless the bridge took it; if the caller has left, tell the
        human first. Runs in the attempt's own task, after its consult has been awaited."""
        leg = attempt.leg
        if leg is not None and not attempt.bridged:
            if (
                isinstance(self._end, CallerHungUp)
                and not leg.hung_up
                and isinstance(self._consultant, CallerLeftNotifier)
            ):
                notice = self._consultant.notify_caller_left(leg)
                await self._bounded("consultant.notify_caller_left", notice, NOTICE_TIMEOUT)
            await self._bounded("target.hangup", leg.hangup())
        if attempt.reason is None and self._winner is not None and self._winner is not attempt:
            attempt.reason, attempt.detail = Reason.CANCELLED, "another target accepted first"
        if attempt.ended is None or attempt.reason is None:
            attempt.ended = self._clock()

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
        if self._hold_requested:
            error = await self._bounded("caller.unhold", self._caller.unhold())
        now = self._clock()
        if self._caller.hung_up:
            self._fire(CallerHungUp(at=now, detail="while being given back to the AI"))
        elif error is not None:
            self._fire(PortFailed(at=now, port="caller.unhold", detail=error))
        else:
            self._fire(Recovered(at=now))

    def _on_failure_applies(self) -> bool:
        """The plan's on_failure is for a transfer that found no human; not when the app
        cancelled (it wants the caller back) nor when a port broke (the AI is the safe place)."""
        return not self._cancel_requested and not isinstance(self._hunt_end, Cancelled | PortFailed)

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

    # -- the outcome ----------------------------------------------------------------------------

    def _build_outcome(self) -> TransferOutcome:
        assert self._hunt_end is not None and self._end is not None
        history = self._machine.history
        final = history[-1].event
        hunt_reason = describe_end(self._hunt_end)[0]
        fallback_reason = describe_end(self._end)[0]
        attempts = tuple(
            a.frozen(fallback_reason if a.fallback else hunt_reason) for a in self._attempts
        )
        if self._machine.state is State.COMPLETED:
            assert self._winner is not None
            winner = self._winner.index
            return Completed(
                target=attempts[winner].target,
                attempts=attempts,
                started=self._started,
                ended=final.at,
                winner=winner,
                fallback=attempts[winner].fallback,
            )
        # The hunt's failure is the reason, unless the fallback phase was interrupted (caller,
        # app, deadline, port): then that is why the caller is where they are.
        end = self._end if isinstance(self._end, _INTERRUPTS) else self._hunt_end
        reason, sip_status, sip_reason, detail = describe_end(end)
        if end is not self._end:  # the fallback failed on its own: say how, in the detail
            fallback = attempts[-1]
            how = f"fallback {fallback.target.label}: {fallback.reason}"
            detail = f"{detail}; {how}" if detail else how
        if self._message_error is not None:
            detail = f"{detail}; failure message not played: {self._message_error}"
        if self._machine.state is State.ABANDONED and not isinstance(end, CallerHungUp):
            # The caller left while being given back: they are not with the AI, so the reason
            # must say so (Failed's promise); what the transfer had failed on goes in the detail.
            detail = f"caller hung up while recovering from {reason.value}" + (
                f": {detail}" if detail else ""
            )
            reason, sip_status, sip_reason = Reason.CALLER_HUNG_UP, None, None
        elif isinstance(final, PortFailed) and final is not end:
            # Giving the caller back failed: the app must not assume the AI has them.
            was = reason.value + (f": {detail}" if detail else "")
            detail = f"{final.detail} (while recovering from {was})"
            reason = Reason.ERROR
        return Failed(
            reason,
            attempts,
            self._started,
            final.at,
            sip_status,
            sip_reason,
            detail,
            dismissed=self._machine.state is State.DISMISSED,
        )


async def _unless_hung_up(leg: TargetLeg, work: Coroutine[Any, Any, T]) -> T:
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


def describe_end(event: Event) -> tuple[Reason, int | None, str | None, str]:
    """The outcome fields (reason, SIP status, SIP reason, detail) an ending event stands for."""
    match event:
        case Bridged():
            return Reason.COMPLETED, None, None, ""
        case HuntExhausted(reason=reason, sip_status=status, sip_reason=text, detail=detail):
            return reason, status, text, detail
        case AttemptFailed(reason=reason, sip_status=status, sip_reason=text, detail=detail):
            return reason, status, text, detail
        case Declined(reason=text):
            return Reason.DECLINED, None, None, text or ""
        case VoicemailDetected(via=via):
            return Reason.VOICEMAIL, None, None, via
        case TargetHungUp():
            return Reason.TARGET_HUNG_UP, None, None, ""
        case ConsultTimedOut(timeout=timeout):
            return Reason.CONSULT_TIMEOUT, None, None, f"no decision within {timeout:g} s"
        case BridgeBroke(detail=detail):
            return Reason.BRIDGE_FAILED, None, None, detail
        case CallerHungUp(detail=detail):
            return Reason.CALLER_HUNG_UP, None, None, detail
        case Cancelled(detail=detail):
            return Reason.CANCELLED, None, None, detail
        case TransferTimedOut(timeout=timeout):
            return Reason.TRANSFER_TIMEOUT, None, None, f"transfer not done within {timeout:g} s"
        case PortFailed(detail=detail):
            return Reason.ERROR, None, None, detail
    raise ValueError(f"{event.name} does not end a transfer")


async def warm_transfer(
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
) -> TransferOutcome:
    """Run one warm transfer and return its outcome (a `WarmTransfer` you do not need to keep)."""
    transfer = WarmTransfer(
        plan=plan,
        caller=caller,
        dialer=dialer,
        bridge=bridge,
        consultant=consultant,
        briefing=briefing,
        transfer_id=transfer_id,
        on_event=on_event,
        clock=clock,
    )
    return await transfer.run()

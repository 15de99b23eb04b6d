"""The driver: runs one warm transfer against the ports, and nothing but what the table allows.

How it is built, and why:

- One `asyncio.TaskGroup` owns every task of a transfer: the *flow* (hold, dial, consult, bridge,
  in that order), the *watchers* (caller hang-up, target hang-up, the whole-transfer deadline)
  and the briefing being prepared while the target rings. The first of them to decide how the
  transfer ends calls `_stop(event)`; the event goes through the state machine at once, and the
  supervisor then cancels every task of the group and waits for them. So a caller who hangs up
  while the target rings cancels the dial (the Dialer contract turns that into a SIP CANCEL), and
  no task, playback or ringing phone outlives `run()`, on any path, by construction.
- Only then, outside the group, `_settle` releases what the transfer still holds: the answered
  target leg is hung up, and the caller is given back to the AI (unhold) unless the caller has
  gone. Only after that does the machine reach FAILED (`Recovered`), and `run()` return. The
  reference system leaked its consult room, session and player on exactly these paths.
- Every state change is `TransferStateMachine.handle`; the flow's progress (`_advance`) stops the
  flow with `_Superseded` as soon as another task has ended the transfer, so the flow never calls
  a port for a step the table no longer allows (e.g. bridging a human to a caller who has gone).
- Deadlines are the driver's, not the backends': ringing (`target.ring_timeout`), the consult
  (`plan.consult_timeout`, from answer to decision, so a caller cannot be held forever by a
  silent human) and the whole transfer (`transfer_timeout`), which bounds hold and bridge too.
- A port raising something unexpected ends the transfer with Reason.ERROR and the same cleanup;
  `run()` itself only raises `DestinationNotAllowed` (before anything happened), `RuntimeError`
  (run twice) and `CancelledError` (after cleanup: the caller is back with the AI). A second
  cancellation of `run()` while it is cleaning up interrupts the cleanup (each step of which is
  bounded by CLEANUP_TIMEOUT anyway): whoever cancels twice asked for that.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine
from typing import Any, Protocol, runtime_checkable

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
)
from warmtransfer.transfer.plan import TransferPlan
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
    Event,
    HoldStarted,
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

#: Each release step (hang up the target, unhold the caller) gets this long; the contract says
#: they do not block on the far end, so this only bounds a broken backend.
CLEANUP_TIMEOUT = 5.0
#: How long the optional "the caller has left" notice to the human may take.
NOTICE_TIMEOUT = 10.0
#: The default whole-transfer deadline is ring_timeout + consult_timeout + this margin (hold,
#: post-dial digits that precede the consult deadline, bridge).
DEADLINE_MARGIN = 30.0


@runtime_checkable
class CallerLeftNotifier(Protocol):
    """Optional consultant capability: tell the human the caller has gone before hanging up.

    The driver calls it (bounded by NOTICE_TIMEOUT) when the caller hangs up after the target
    answered. Implementing it is a later issue; this is the hook.
    """

    async def notify_caller_left(self, leg: ConsultLeg) -> None: ...


class _Superseded(Exception):
    """Another task already ended the transfer: the flow stops where it is."""


class WarmTransfer:
    """One warm transfer of one caller to one target. Run it once with `run()`."""

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
        transfer_timeout: float | None = None,
    ) -> None:
        """`on_event` is called at each state change (errors it raises are logged, not raised);
        `clock` stamps events and attempts (the engine passes its loop's clock);
        `transfer_timeout` bounds the whole transfer, from hold to bridge (default:
        ring_timeout + consult_timeout + DEADLINE_MARGIN), so no port can hold a caller forever.
        """
        if transfer_timeout is not None and transfer_timeout <= 0:
            raise ValueError(f"transfer_timeout must be positive, not {transfer_timeout}")
        self._plan = plan
        self._caller = caller
        self._dialer = dialer
        self._bridge = bridge
        self._consultant = consultant
        self._briefing = briefing
        self._id = transfer_id or uuid.uuid4().hex[:12]
        self._clock = clock
        self._transfer_timeout = transfer_timeout or (
            plan.target.ring_timeout + plan.consult_timeout + DEADLINE_MARGIN
        )
        self._machine = TransferStateMachine()
        self._stream = EventStream(on_event)

        self._ran = False
        self._cancel_requested = False
        self._started = 0.0
        # The event that ended the flow; the first task to decide wins, later ones are ignored.
        self._end: Event | None = None
        self._ended = asyncio.Event()
        self._group: asyncio.TaskGroup | None = None  # set while the transfer's tasks may run
        self._tasks: list[asyncio.Task[None]] = []
        self._step = ""  # the port call the flow is in, for error details
        self._hold_requested = False
        self._leg: TargetLeg | None = None
        self._dial_started: float | None = None
        self._ringing_at: float | None = None
        self._answered_at: float | None = None
        self._released_at: float | None = None
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

        Safe to call at any time, from callbacks too; after the transfer ended it does nothing.
        """
        if not self._ran:
            self._cancel_requested = True
        elif self._group is not None:
            self._stop(Cancelled(at=self._clock(), detail="cancelled by the app"))

    async def run(self) -> TransferOutcome:
        """Run the transfer to its end and return how it ended."""
        if self._ran:
            raise RuntimeError(f"transfer {self._id} already ran; a WarmTransfer runs once")
        self._ran = True
        try:
            self._plan.allow.check(self._plan.target)  # before anything: no hold, no dial
            self._outcome = await self._run()
            return self._outcome
        finally:
            self._stream.close()

    # -- the run ----------------------------------------------------------------------------

    async def _run(self) -> TransferOutcome:
        self._started = self._clock()
        if self._caller.hung_up:
            self._stop(CallerHungUp(at=self._started, detail="the caller had already hung up"))
        elif self._cancel_requested:
            self._stop(Cancelled(at=self._started, detail="cancelled by the app before run()"))
        else:
            self._fire(Start(at=self._started))
            try:
                await self._supervise()
            except asyncio.CancelledError:
                self._stop(Cancelled(at=self._clock(), detail="run() was cancelled"))
                await self._settle()
                raise
        await self._settle()
        return self._build_outcome()

    async def _supervise(self) -> None:
        """Run the flow and the watchers until one of them ends the transfer; then stop them all."""
        async with asyncio.TaskGroup() as group:
            self._group = group
            try:
                self._spawn(self._flow(), "flow")
                self._spawn(self._watch_caller(), "caller.wait_hangup")
                self._spawn(self._watch_deadline(), "deadline")
                await self._ended.wait()
            finally:
                self._group = None
                for task in self._tasks:
                    task.cancel()
        self._tasks.clear()
        self._released_at = self._clock()  # the dial, if still pending, is cancelled by now

    def _spawn(self, coro: Coroutine[Any, Any, None], name: str) -> None:
        if self._group is None:
            coro.close()
            raise _Superseded
        task = self._group.create_task(self._guarded(coro, name), name=f"{self._id} {name}")
        self._tasks.append(task)

    async def _guarded(self, coro: Awaitable[None], name: str) -> None:
        """Turn anything a port raises into a PortFailed end, so nothing escapes the group."""
        try:
            await coro
        except _Superseded:
            pass
        except Exception as exc:
            port = self._step if name == "flow" else name
            if isinstance(exc, IllegalTransition):
                logger.error("transfer %s: driver bug: %s", self._id, exc)
            else:
                logger.warning("transfer %s: %s raised %r", self._id, port, exc)
            self._stop(PortFailed(at=self._clock(), port=port, detail=f"{port} raised {exc!r}"))
        else:
            if name == "flow" and self._end is None:  # a flow that forgot to decide is a bug
                self._stop(PortFailed(at=self._clock(), port="flow", detail="flow ended undecided"))

    # -- state changes ------------------------------------------------------------------------

    def _fire(self, event: Event) -> None:
        previous = self._machine.state
        state = self._machine.handle(event)
        self._stream.emit(TransferEvent(self._id, event.at, event, previous, state))

    def _advance(self, event: Event) -> None:
        """Record the flow's progress; stop the flow if the transfer ended meanwhile (also from
        inside an event callback, e.g. an app that cancels on Answered)."""
        if self._end is not None:
            raise _Superseded
        self._fire(event)
        if self._end is not None:
            raise _Superseded

    def _stop(self, event: Event) -> None:
        """End the transfer on `event`, unless something else already has (first one wins)."""
        if self._end is not None:
            logger.debug("transfer %s: %s ignored, ended on %s", self._id, event, self._end)
            return
        self._end = event
        try:
            self._fire(event)
        finally:
            self._ended.set()

    # -- the flow: hold, dial, consult, bridge --------------------------------------------------

    async def _flow(self) -> None:
        plan = self._plan
        self._step = "caller.hold"
        self._hold_requested = True
        await self._caller.hold(plan.hold_audio)
        self._advance(HoldStarted(at=self._clock()))

        dial_started = DialStarted(at=self._clock(), target=plan.target)
        self._advance(dial_started)
        self._dial_started = dial_started.at  # an attempt exists once the dialer is called
        prepared: asyncio.Future[object] = asyncio.get_running_loop().create_future()
        self._spawn(self._prepare(prepared), "consultant.prepare")
        leg = await self._dial(plan.target)
        if leg is None:
            return

        self._answered_at = self._clock()
        self._advance(Answered(at=self._answered_at))
        self._spawn(self._watch_target(leg), "target.wait_hangup")
        decision = await self._consult(leg, prepared)
        if decision is None:
            return

        now = self._clock()
        if decision.verdict is Verdict.DECLINE:
            self._stop(Declined(at=now, reason=decision.reason, via=decision.via))
        elif decision.verdict is Verdict.VOICEMAIL:
            self._stop(VoicemailDetected(at=now, via=decision.via))
        else:
            self._advance(Accepted(at=now, via=decision.via))
            await self._connect(leg)

    async def _prepare(self, prepared: asyncio.Future[object]) -> None:
        """Render the briefing while the target rings, so it is ready the moment they answer."""
        value = await self._consultant.prepare(self._briefing)
        if not prepared.done():
            prepared.set_result(value)

    async def _dial(self, target: Target) -> TargetLeg | None:
        self._step = "dialer.dial"
        ring_deadline = asyncio.timeout(target.ring_timeout)
        try:
            async with ring_deadline:
                # Stored in the same step as dial returns, so cleanup sees every answered leg.
                self._leg = await self._dialer.dial(target, self._on_ringing)
        except DialFailed as failure:
            self._stop(
                AttemptFailed(
                    at=self._clock(),
                    reason=failure.reason,
                    sip_status=failure.sip_status,
                    sip_reason=failure.sip_reason,
                    detail=failure.detail,
                )
            )
            return None
        except TimeoutError:
            if not ring_deadline.expired():
                raise
            self._stop(
                AttemptFailed(
                    at=self._clock(),
                    reason=Reason.NO_ANSWER,
                    detail=f"no answer within {target.ring_timeout:g} s (ring_timeout)",
                )
            )
            return None
        return self._leg

    def _on_ringing(self, sip_status: int) -> None:
        """The dialer's provisional responses. A late one (after answer or the end) is ignored:
        a backend's quirk must not break the transfer."""
        if self._end is not None or not self._machine.allows(Ringing):
            logger.debug("transfer %s: late %s ignored in %s", self._id, sip_status, self.state)
            return
        event = Ringing(at=self._clock(), sip_status=sip_status)
        if self._ringing_at is None:
            self._ringing_at = event.at
        self._fire(event)

    async def _consult(self, leg: TargetLeg, prepared: asyncio.Future[object]) -> Decision | None:
        """Digits, briefing and decision, all under the consult deadline."""
        timeout = self._plan.consult_timeout
        consult_deadline = asyncio.timeout(timeout)
        try:
            async with consult_deadline:
                if self._plan.target.dtmf:
                    self._step = "target.send_digits"
                    await leg.send_digits(self._plan.target.dtmf)
                self._step = "consultant.prepare"
                briefing = await prepared
                self._step = "consultant.consult"
                return await self._consultant.consult(leg, briefing)
        except TimeoutError:
            if not consult_deadline.expired():
                raise
            self._stop(ConsultTimedOut(at=self._clock(), timeout=timeout))
        except LegGone:
            self._stop(TargetHungUp(at=self._clock()))
        return None

    async def _connect(self, leg: TargetLeg) -> None:
        self._step = "bridge.connect"
        try:
            await self._bridge.connect(self._caller, leg)
        except BridgeFailed as exc:
            self._stop(BridgeBroke(at=self._clock(), detail=str(exc) or repr(exc)))
        except LegGone:
            self._stop(TargetHungUp(at=self._clock()))
        else:
            self._stop(Bridged(at=self._clock()))

    # -- watchers ---------------------------------------------------------------------------------

    async def _watch_caller(self) -> None:
        await self._caller.wait_hangup()
        self._stop(CallerHungUp(at=self._clock(), detail=f"while {self.state.name}"))

    async def _watch_target(self, leg: TargetLeg) -> None:
        await leg.wait_hangup()
        self._stop(TargetHungUp(at=self._clock()))

    async def _watch_deadline(self) -> None:
        await asyncio.sleep(self._transfer_timeout)
        self._stop(TransferTimedOut(at=self._clock(), timeout=self._transfer_timeout))

    # -- after the end: release, give the caller back, report ----------------------------------

    async def _settle(self) -> None:
        """Hang up the target leg and give the caller back to the AI; then reach a terminal state.

        Runs outside the task group, after every task of the transfer has finished.
        """
        if self._machine.state is State.COMPLETED:
            return  # the bridge owns both legs now
        leg = self._leg
        if (
            self._machine.state is State.ABANDONED
            and leg is not None
            and not leg.hung_up
            and isinstance(self._consultant, CallerLeftNotifier)
        ):
            notice = self._consultant.notify_caller_left(leg)
            await self._release("consultant.notify_caller_left", notice, NOTICE_TIMEOUT)

        unhold: asyncio.Task[str | None] | None = None
        async with asyncio.TaskGroup() as group:
            if leg is not None:
                group.create_task(self._release("target.hangup", leg.hangup()))
            if (
                self._machine.state is State.RECOVERING
                and self._hold_requested
                and not self._caller.hung_up
            ):
                unhold = group.create_task(self._release("caller.unhold", self._caller.unhold()))
        self._released_at = self._clock()

        if self._machine.state is State.RECOVERING:
            now = self._clock()
            error = unhold.result() if unhold is not None else None
            if self._caller.hung_up:
                self._fire(CallerHungUp(at=now, detail="while being given back to the AI"))
            elif error is not None:
                self._fire(PortFailed(at=now, port="caller.unhold", detail=error))
            else:
                self._fire(Recovered(at=now))

    async def _release(
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

    def _build_outcome(self) -> TransferOutcome:
        assert self._end is not None
        history = self._machine.history
        final = history[-1].event
        reason, sip_status, sip_reason, detail = describe_end(self._end)
        attempts = self._attempts(reason)
        target = self._plan.target
        if self._machine.state is State.COMPLETED:
            return Completed(target, attempts, self._started, final.at)
        if self._machine.state is State.ABANDONED and not isinstance(self._end, CallerHungUp):
            # The caller left while being given back: they are not with the AI, so the reason
            # must say so (Failed's promise); what the transfer had failed on goes in the detail.
            detail = f"caller hung up while recovering from {reason.value}" + (
                f": {detail}" if detail else ""
            )
            reason, sip_status, sip_reason = Reason.CALLER_HUNG_UP, None, None
        elif isinstance(final, PortFailed) and final is not self._end:
            # Giving the caller back failed: the app must not assume the AI has them.
            was = reason.value + (f": {detail}" if detail else "")
            detail = f"{final.detail} (while recovering from {was})"
            reason = Reason.ERROR
        return Failed(reason, attempts, self._started, final.at, sip_status, sip_reason, detail)

    def _attempts(self, reason: Reason) -> tuple[Attempt, ...]:
        if self._dial_started is None:
            return ()
        end = self._end
        if isinstance(end, AttemptFailed):
            return (
                Attempt(
                    target=self._plan.target,
                    started=self._dial_started,
                    ringing=self._ringing_at,
                    ended=end.at,
                    reason=end.reason,
                    sip_status=end.sip_status,
                    sip_reason=end.sip_reason,
                ),
            )
        ended = end.at if isinstance(end, Bridged) else self._released_at
        return (
            Attempt(
                target=self._plan.target,
                started=self._dial_started,
                ringing=self._ringing_at,
                answered=self._answered_at,
                ended=ended,
                reason=reason,
            ),
        )


def describe_end(event: Event) -> tuple[Reason, int | None, str | None, str]:
    """The outcome fields (reason, SIP status, SIP reason, detail) an ending event stands for."""
    match event:
        case Bridged():
            return Reason.COMPLETED, None, None, ""
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
    transfer_timeout: float | None = None,
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
        transfer_timeout=transfer_timeout,
    )
    return await transfer.run()

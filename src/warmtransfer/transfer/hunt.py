"""The hunt: the plan's targets dialled round by round, each attempt's steps, and the fallback.

Why it is built this way:

- Each attempt runs in its own task and owns its leg from the moment `dial` returns to the
  moment the task ends: its `finally` hangs the leg up unless the bridge took it over. So a
  declined human is hung up before the next target is dialled, a losing human in simultaneous
  mode is hung up at once, and no path can forget a leg. When the caller has left, the attempt
  first tells the human (the consultant's optional `notify_caller_left`), after its consult task
  has been cancelled and awaited, so the briefing has stopped for good and the notice is the
  last thing played.
- Simultaneous hunting: the first attempt to get "accept" claims the win in one step (no await
  between the decision and the claim): it cancels every other attempt and fires Accepted, which
  leaves HUNTING; the table refuses a second Accepted. Two humans can never be bridged.
- The fallback target (the plan's `on_failure`) is a second supervised phase with one attempt:
  dial and bridge, no consult, within the same overall deadline.
- When the caller stops waiting (the plan's cancel or message key, `caller_side.py`), an
  answered human is told so before being hung up, as when the caller hangs up (`_notice`).
- Ringing (`target.ring_timeout`) and the consult (`plan.consult_timeout`, from answer to
  decision, per human) are deadlines of the attempt, not of the backends.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any

from warmtransfer.consult.ports import Decision, LegGone, Verdict
from warmtransfer.transfer.attempts import RunningAttempt, unless_hung_up
from warmtransfer.transfer.caller_side import CallerSide
from warmtransfer.transfer.ending import hunt_exhausted
from warmtransfer.transfer.outcome import BridgeFailed, DialFailed, Reason
from warmtransfer.transfer.ports import CallerCancelledNotifier, CallerLeftNotifier, TargetLeg
from warmtransfer.transfer.scope import Superseded, logger
from warmtransfer.transfer.states import (
    Accepted,
    Answered,
    AttemptFailed,
    BridgeBroke,
    Bridged,
    CallerCancelled,
    CallerHungUp,
    Cancelled,
    ConsultTimedOut,
    Declined,
    HoldStarted,
    MessageRequested,
    PortFailed,
    Ringing,
    State,
    TargetHungUp,
    TransferTimedOut,
    VoicemailDetected,
)
from warmtransfer.transfer.target import Target

#: How long the optional "the caller has left" notice to the human may take.
NOTICE_TIMEOUT = 10.0


class Hunt(CallerSide):
    """The flows a transfer supervises: the hunt over the plan's targets, then the fallback."""

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
        self._start_hold_side()

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
        self._stop(hunt_exhausted(self._attempts, at=self._clock()))

    async def _run_round(self, targets: list[Target], round_number: int) -> None:
        """Dial `targets` at once and wait until every one of these attempts has ended."""
        tasks = [
            self._spawn(functools.partial(self._hunt_attempt, target, round_number), "attempt")
            for target in targets
        ]
        self._round_tasks = tasks
        await asyncio.wait(tasks)  # does not cancel them if the flow is cancelled: _stop does
        if self._end is not None:
            raise Superseded

    async def _prepare(self) -> None:
        """Render the briefing while the caller goes on hold and targets ring, so it is ready
        the moment a human answers."""
        value = await self._consultant.prepare(self._briefing)
        if self._prepared is not None and not self._prepared.done():
            self._prepared.set_result(value)

    def _open(self, target: Target, round_number: int, fallback: bool) -> RunningAttempt:
        """A new attempt, in the outcome's list from now on (its index is its events' id)."""
        attempt = RunningAttempt(len(self._attempts), target, round_number, fallback, self._clock())
        self._attempts.append(attempt)
        return attempt

    async def _hunt_attempt(self, target: Target, round_number: int) -> None:
        """One attempt of the hunt, in its own task: dial, consult, and for the winner, bridge."""
        self._check_current()  # cancelled in the very step it was to start: never dialled
        attempt = self._open(target, round_number, fallback=False)
        await self._attempt_task(attempt, self._hunt_steps)

    async def _hunt_steps(self, attempt: RunningAttempt) -> None:
        self._advance(attempt.dial_started(), attempt)
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

    def _claim(self, attempt: RunningAttempt, decision: Decision, now: float) -> None:
        """This human accepted: win the hunt in this very step, end every other attempt."""
        if self._end is not None or self._winner is not None:
            raise Superseded  # cannot happen (losers are cancelled at once); kept as the rule
        self._winner = attempt
        # Ringing: the dial is cancelled (CANCEL); answered: hung up.
        self._cancel_once(self._round_tasks)
        self._end_hold_side()  # no prompt, no key of the caller's from now on
        self._advance(Accepted(at=now, attempt=attempt.index, via=decision.via), attempt)

    # -- the steps of one attempt ---------------------------------------------------------------

    async def _attempt_task(
        self,
        attempt: RunningAttempt,
        steps: Callable[[RunningAttempt], Coroutine[Any, Any, None]],
    ) -> None:
        """Run an attempt's steps; on every exit, release its leg (`_release`)."""
        try:
            await steps(attempt)
        except Superseded:
            pass
        except Exception as exc:
            attempt.fail(Reason.ERROR, self._clock(), f"{attempt.step} raised {exc!r}")
            self._port_failed(attempt.step, exc)
        finally:
            await self._release(attempt)

    async def _dial(self, attempt: RunningAttempt) -> TargetLeg | None:
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

    def _on_ringing(self, attempt: RunningAttempt, sip_status: int) -> None:
        """The dialer's provisional responses. A late one (after answer, after the attempt or
        the transfer ended) is ignored: a backend's quirk must not break the transfer."""
        if (
            self._end is not None
            or attempt.answered is not None
            or attempt.reason is not None
            or self._winner not in (None, attempt)
            or not self._machine.allows(Ringing)
        ):
            logger.debug(
                "transfer %s: late %s ignored in %s", self._id, sip_status, self._machine.state
            )
            return
        event = Ringing(at=self._clock(), attempt=attempt.index, sip_status=sip_status)
        if attempt.ringing is None:
            attempt.ringing = event.at
        self._fire(event)

    def _answered(self, attempt: RunningAttempt) -> None:
        """Record the answer only if it can still be announced: the record and the events must
        agree (an attempt whose Answered was never fired was not answered, as far as apps know;
        its leg is hung up all the same)."""
        self._check_current(attempt)
        attempt.answered = self._clock()
        self._advance(Answered(at=attempt.answered, attempt=attempt.index), attempt)

    async def _consult(self, attempt: RunningAttempt, leg: TargetLeg) -> Decision | None:
        """Digits, briefing and decision, all under the consult deadline, and all stopped the
        moment the human hangs up, even if the consultant is not touching the leg."""
        timeout = self._plan.consult_timeout
        consult_deadline = asyncio.timeout(timeout)
        try:
            async with consult_deadline:
                return await unless_hung_up(leg, self._consult_steps(attempt, leg))
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

    async def _consult_steps(self, attempt: RunningAttempt, leg: TargetLeg) -> Decision:
        await self._send_digits(attempt, leg)
        attempt.step = "consultant.prepare"
        assert self._prepared is not None
        # Shielded: one attempt giving up must not cancel the briefing the others wait for.
        briefing = await asyncio.shield(self._prepared)
        attempt.step = "consultant.consult"
        return await self._consultant.consult(leg, briefing)

    async def _send_digits(self, attempt: RunningAttempt, leg: TargetLeg) -> None:
        """The target's post-dial digits (an extension, a PIN), if it has any."""
        if attempt.target.dtmf:
            attempt.step = "target.send_digits"
            await leg.send_digits(attempt.target.dtmf)

    async def _connect(self, attempt: RunningAttempt, leg: TargetLeg) -> None:
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

    async def _watch_target(self, attempt: RunningAttempt, leg: TargetLeg) -> None:
        """The accepted (or fallback) human hanging up before the bridge has them."""
        await leg.wait_hangup()
        now = self._clock()
        if self._end is None:
            attempt.fail(Reason.TARGET_HUNG_UP, now)
        self._stop(TargetHungUp(at=now, attempt=attempt.index))

    async def _release(self, attempt: RunningAttempt) -> None:
        """End the attempt's leg unless the bridge took it; if the caller has left, tell the
        human first. Runs in the attempt's own task, after its consult has been awaited."""
        leg = attempt.leg
        if leg is not None and not attempt.bridged:
            notice = None if leg.hung_up else self._notice(leg)
            if notice is not None:
                await self._bounded(notice[0], notice[1], NOTICE_TIMEOUT)
            await self._bounded("target.hangup", leg.hangup())
        if attempt.reason is None and self._winner is not None and self._winner is not attempt:
            attempt.reason, attempt.detail = Reason.CANCELLED, "another target accepted first"
        if attempt.ended is None or attempt.reason is None:
            attempt.ended = self._clock()

    def _notice(self, leg: TargetLeg) -> tuple[str, Awaitable[None]] | None:
        """What an answered human is told before being hung up because the caller left or
        stopped waiting, if the consultant can tell them (port name, notice); else None."""
        consultant = self._consultant
        stopped_waiting = isinstance(self._end, CallerCancelled | MessageRequested)
        if stopped_waiting and isinstance(consultant, CallerCancelledNotifier):
            return "consultant.notify_caller_cancelled", consultant.notify_caller_cancelled(leg)
        if (stopped_waiting or isinstance(self._end, CallerHungUp)) and isinstance(
            consultant, CallerLeftNotifier
        ):
            return "consultant.notify_caller_left", consultant.notify_caller_left(leg)
        return None

    # -- the fallback -------------------------------------------------------------------------

    def _open_fallback(self) -> RunningAttempt | None:
        """After a failed hunt: dial the plan's fallback target, if the plan has one, the
        failure is one it covers, the app has not cancelled and time is left. DialStarted
        (RECOVERING -> FALLBACK) is fired here, before the phase's watchers exist, so none of
        them can see RECOVERING."""
        target = self._plan.fallback
        if (
            target is None
            or self._machine.state is not State.RECOVERING
            or not self._on_failure_applies()
            or isinstance(self._hunt_end, TransferTimedOut | MessageRequested)
            or asyncio.get_running_loop().time() >= self._deadline
            or self._caller.hung_up
        ):
            return None
        self._end, self._ended = None, asyncio.Event()
        last_round = max((a.round for a in self._attempts), default=1)
        attempt = self._open(target, last_round, fallback=True)
        self._winner = attempt  # the only candidate: no consult, nobody to race
        self._fire(attempt.dial_started())
        return attempt

    async def _fallback_steps(self, attempt: RunningAttempt) -> None:
        """The fallback: ring, then bridge at once, without a consult. The caller is still
        held while it rings: prompts and keys go on, until it answers."""
        self._start_hold_side()
        leg = await self._dial(attempt)
        if leg is None:
            return
        self._answered(attempt)
        self._end_hold_side()
        await self._send_digits(attempt, leg)
        await self._connect(attempt, leg)

    def _on_failure_applies(self) -> bool:
        """The plan's on_failure is for a transfer that found no human; not when the app
        cancelled (it wants the caller back), nor when the caller did (they asked for the AI),
        nor when a port broke or a message could not be recorded (the AI is the safe place)."""
        return (
            not self._cancel_requested
            and self._record_error is None
            and not isinstance(self._hunt_end, Cancelled | PortFailed | CallerCancelled)
            and not isinstance(self._end, CallerCancelled)
        )

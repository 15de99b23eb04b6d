"""What the HTTP API asks of the service: the `ServiceApi` protocol, its data, and the real
implementation over an `Engine` (`EngineServiceApi`).

Why a protocol between them: the HTTP layer (auth, JSON, status codes, the allow-list check)
is tested against an in-memory implementation with no SIP at all, and the engine side is tested
on its own; `serve` joins the two.

The allow-list is enforced twice, on purpose: `confine_plan` in the HTTP layer refuses a plan
that could dial outside the service's global allow-list before anything else happens, and
`EngineServiceApi.start_transfer` checks again (so another caller of the protocol, e.g. a future
gRPC front end, cannot skip it); the transfer driver itself then checks the plan's own list.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sqlite3
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import Any, Protocol

from pydantic import BaseModel, ConfigDict, Field

from warmtransfer.consult.handoff import HandoffRecord
from warmtransfer.consult.ports import Briefing, Turn
from warmtransfer.engine import Engine
from warmtransfer.server.logs import log_context
from warmtransfer.server.payloads import (
    event_payload,
    outcome_payload,
    stored_event_payload,
    stored_outcome_payload,
)
from warmtransfer.server.recording import RecordedCall
from warmtransfer.server.records import Records, TransferRecord, load_call, open_for_reading
from warmtransfer.sip.call import IncomingCall
from warmtransfer.transfer.driver import WarmTransfer
from warmtransfer.transfer.events import TransferEvent
from warmtransfer.transfer.outcome import Failed, TransferOutcome
from warmtransfer.transfer.plan import TransferPlan
from warmtransfer.transfer.states import is_terminal
from warmtransfer.transfer.target import AllowList

__all__ = [
    "AttemptInfo",
    "BriefingIn",
    "CallInfo",
    "CallNotFound",
    "EngineServiceApi",
    "EventInfo",
    "OutcomeInfo",
    "RecordsDisabled",
    "ServiceApi",
    "TargetInfo",
    "TransferConflict",
    "TransferInfo",
    "TransferNotFound",
    "confine_plan",
]

log = logging.getLogger(__name__)

#: Finished transfers whose state stays readable from memory (beyond: from the records store).
KEEP_FINISHED = 1000


# -- errors the HTTP layer maps to status codes -----------------------------------------------


class CallNotFound(LookupError):
    """No call in progress has this id (404)."""


class TransferNotFound(LookupError):
    """No transfer known by this id (404)."""


class TransferConflict(RuntimeError):
    """The call already has a transfer running (409): one caller is held once at a time."""


class RecordsDisabled(LookupError):
    """The service keeps no records store, so there is no record to read (404)."""


# -- the data -----------------------------------------------------------------------------------


class TurnIn(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    speaker: str = Field(max_length=32, description='"caller" or "agent"')
    text: str = Field(max_length=2000)


class BriefingIn(BaseModel):
    """What the human is told: a summary (the whisper), and the facts the app knows."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    summary: str = Field(min_length=1, max_length=2000, description="spoken to the human")
    caller: str | None = Field(default=None, max_length=128, description="name or number")
    facts: dict[str, str] = Field(default_factory=dict, max_length=50)
    transcript: tuple[TurnIn, ...] = Field(default=(), max_length=500)

    def to_briefing(self) -> Briefing:
        return Briefing(
            summary=self.summary,
            caller=self.caller,
            transcript=tuple(Turn(t.speaker, t.text) for t in self.transcript),
            facts=dict(self.facts),
        )


class CallInfo(BaseModel):
    call_id: str
    direction: str = Field(description='"inbound" (a caller) or "outbound" (a human dialled)')
    state: str
    caller: str | None = None
    transfer_id: str | None = Field(default=None, description="its transfer running now")


# The shapes of `payloads.event_payload` and `payloads.outcome_payload`, as models: the OpenAPI
# document describes them, and a payload from memory or from the records store that drifted
# from them (a key missing or extra) fails here, in the tests, not in a client.

_EXACT = ConfigDict(frozen=True, extra="forbid")


class TargetInfo(BaseModel):
    model_config = _EXACT

    uri: str
    display_name: str | None


class AttemptInfo(BaseModel):
    """One dial of one target; times in Unix seconds."""

    model_config = _EXACT

    target: TargetInfo
    started: float
    ringing: float | None
    answered: float | None
    ended: float | None
    reason: str | None = Field(description="transfer.outcome.Reason value")
    sip_status: int | None
    sip_reason: str | None
    detail: str
    round: int
    fallback: bool


class OutcomeInfo(BaseModel):
    """How a transfer ended. `target`, `winner`, `fallback` are set when it completed;
    `sip_status` .. `recorded_message` when it failed (null otherwise)."""

    model_config = _EXACT

    ok: bool
    reason: str = Field(description="transfer.outcome.Reason value")
    started: float
    ended: float
    attempts: list[AttemptInfo]
    target: TargetInfo | None
    winner: int | None
    fallback: bool | None
    sip_status: int | None
    sip_reason: str | None
    detail: str | None
    dismissed: bool | None
    recorded_message: str | None


class EventInfo(BaseModel):
    """One move of a transfer (the same as a "transfer.event" webhook's data)."""

    model_config = _EXACT

    transfer_id: str
    event: str = Field(description="the event's name, e.g. DialStarted")
    previous: str
    state: str
    at: float
    attempt: int | None
    fields: dict[str, Any]


class TransferInfo(BaseModel):
    transfer_id: str
    call_id: str | None = Field(description="the caller's call")
    state: str = Field(description="transfer.states.State value")
    ended: bool
    outcome: OutcomeInfo | None = None
    events: list[EventInfo] = Field(default_factory=list)


class ServiceApi(Protocol):
    """What the HTTP layer calls. Plans reach `start_transfer` already confined to the global
    allow-list; an implementation still refuses one that is not (DestinationNotAllowed)."""

    async def list_calls(self) -> list[CallInfo]: ...

    async def start_transfer(
        self, call_id: str, plan: TransferPlan, briefing: Briefing
    ) -> TransferInfo: ...

    async def cancel_transfer(self, transfer_id: str) -> TransferInfo: ...

    async def transfer_state(self, transfer_id: str) -> TransferInfo: ...

    async def transfer_record(self, transfer_id: str) -> dict[str, Any]: ...


def confine_plan(plan: TransferPlan, allow: AllowList, *, inline: bool) -> TransferPlan:
    """The plan to run, never able to dial outside `allow` (the service's global list).

    An inline plan without an ``allow`` of its own gets `allow`; one with its own keeps it (it
    may only narrow: the driver checks its own list). Either way every target and the fallback
    must also pass `allow`, so what may be dialled is the intersection of both lists. Raises
    `DestinationNotAllowed` naming the first target outside it."""
    if inline and "allow" not in plan.model_fields_set:
        plan = plan.model_copy(update={"allow": allow})
    for index, target in enumerate(plan.targets):
        allow.check(target, f"targets[{index}]")
    if plan.fallback is not None:
        allow.check(plan.fallback, "on_failure.target")
    plan.check_allowed()
    return plan


# -- over an Engine ---------------------------------------------------------------------------


@dataclass
class _Tracked:
    call_id: str
    transfer: WarmTransfer
    briefing: Briefing
    task: asyncio.Future[TransferOutcome] | None = None
    recorded: bool = False
    record: HandoffRecord | None = None

    @property
    def ended(self) -> bool:
        """Its state is final, or its run is over whatever the state says: a run that failed
        before the transfer moved (e.g. the records store refused its row) leaves it IDLE for
        ever, and it must not count as running (a 409 on every later transfer of the call)."""
        return is_terminal(self.transfer.state) or (self.task is not None and self.task.done())


EventListener = Callable[[TransferEvent], None]
#: Called when a transfer started here ends: (transfer_id, call_id, outcome, handoff record).
FinishListener = Callable[[str, str, TransferOutcome, HandoffRecord], None]


class EngineServiceApi:
    """`ServiceApi` over a running `Engine`, with an optional records store.

    `allow`: the global allow-list (config ``[allow]``), checked again on every start.
    `recorded`: how `serve` hands over the `RecordedCall` it wraps a call in, by call id, so
    a transfer started here is recorded with that call's SIP and audio; without one (or when it
    returns None) and with `records`, the transfer's own row and events are still written.
    `on_event` listeners (webhooks, metrics) see every move; `on_finish` listeners the outcome
    and the final handoff record. A listener that raises is logged, never propagated.
    `call_of`: the call of a transfer this API did not start (the service's agents' transfers,
    read from `engine.transfers`), by transfer id; without it their `call_id` reads null.
    """

    def __init__(
        self,
        engine: Engine,
        allow: AllowList,
        *,
        records: Records | None = None,
        recorded: Callable[[str], RecordedCall | None] | None = None,
        on_event: Sequence[EventListener] = (),
        on_finish: Sequence[FinishListener] = (),
        call_of: Callable[[str], str | None] | None = None,
    ) -> None:
        self.engine = engine
        self.allow = allow
        self.records = records
        self._recorded = recorded
        self.on_event = list(on_event)
        self.on_finish = list(on_finish)
        self._call_of = call_of
        self._tracked: OrderedDict[str, _Tracked] = OrderedDict()

    # -- calls ----------------------------------------------------------------------------

    async def list_calls(self) -> list[CallInfo]:
        running = {t.call_id: tid for tid, t in self._tracked.items() if not t.ended}
        calls = []
        for call in self.engine.ua.calls.values():
            if not call.is_up:
                continue
            inbound = isinstance(call, IncomingCall)
            calls.append(
                CallInfo(
                    call_id=call.call_id,
                    direction="inbound" if inbound else "outbound",
                    state=str(call.state),
                    caller=call.header("From") if isinstance(call, IncomingCall) else None,
                    transfer_id=running.get(call.call_id),
                )
            )
        return calls

    # -- transfers ------------------------------------------------------------------------

    async def start_transfer(
        self, call_id: str, plan: TransferPlan, briefing: Briefing
    ) -> TransferInfo:
        plan = confine_plan(plan, self.allow, inline=False)
        call = self.engine.ua.calls.get(call_id)
        if call is None or not call.is_up or not isinstance(call, IncomingCall):
            raise CallNotFound(f"no caller's call {call_id!r} is in progress")
        for tracked in self._tracked.values():
            if tracked.call_id == call_id and not tracked.ended:
                raise TransferConflict(
                    f"call {call_id!r} already has transfer {tracked.transfer.transfer_id} running"
                )
        leg = self.engine.caller_leg(call)
        # The call's transfer lock, taken with no await before it (an unlocked asyncio.Lock is
        # acquired at once): the agent's own transfer, even one still building its briefing,
        # holds it too, so two transfers never hunt on one call.
        if leg.transfer_lock.locked() or leg.bridged:
            raise TransferConflict(f"call {call_id!r} is already in a transfer")
        await leg.transfer_lock.acquire()
        try:
            recorded = self._recorded(call_id) if self._recorded is not None else None
            if recorded is not None:
                transfer = recorded.transfer(leg, plan, briefing, on_event=self._emit)
            else:
                transfer = self.engine.transfer(leg, plan, briefing, on_event=self._emit)
            tracked = _Tracked(call_id, transfer, briefing, recorded=recorded is not None)
            self._remember(transfer.transfer_id, tracked)
            tracked.task = asyncio.get_running_loop().create_future()
            self.engine.spawn(self._run(tracked, recorded, leg.transfer_lock))
        except BaseException:
            leg.transfer_lock.release()
            raise
        return self._info(tracked)

    def _remember(self, transfer_id: str, tracked: _Tracked) -> None:
        self._tracked[transfer_id] = tracked
        finished = [tid for tid, t in self._tracked.items() if t.ended]
        for tid in finished[: max(0, len(finished) - KEEP_FINISHED)]:
            del self._tracked[tid]

    async def _run(
        self, tracked: _Tracked, recorded: RecordedCall | None, lock: asyncio.Lock
    ) -> None:
        try:
            await self._run_locked(tracked, recorded)
        finally:
            lock.release()

    async def _run_locked(self, tracked: _Tracked, recorded: RecordedCall | None) -> None:
        # `tracked.task` may be done already: a waiter that was cancelled (a drain bounded by a
        # timeout) must not cost the outcome its listeners, so it is settled only if it is not.
        transfer, briefing = tracked.transfer, tracked.briefing
        task = tracked.task
        assert task is not None
        with log_context(call_id=tracked.call_id, transfer_id=transfer.transfer_id):
            try:
                if recorded is not None:
                    outcome = await recorded.run(transfer, briefing)
                else:
                    outcome = await self._run_plain(tracked)
            except asyncio.CancelledError:
                task.cancel()
                raise
            except Exception as exc:
                if not task.done():
                    task.set_exception(exc)
                    task.exception()  # retrieved: awaited by nobody else
                log.exception("transfer %s raised", transfer.transfer_id)
                return
            finally:
                self.engine.transfers.pop(transfer.transfer_id, None)
            record = HandoffRecord.from_briefing(briefing, attempts=outcome.attempts)
            if isinstance(outcome, Failed) and outcome.recorded_message is not None:
                record = record.with_recorded_message(outcome.recorded_message)
            tracked.record = record
            if not task.done():
                task.set_result(outcome)
            for listener in self.on_finish:
                try:
                    listener(transfer.transfer_id, tracked.call_id, outcome, record)
                except Exception:
                    log.exception("on_finish listener %r raised", listener)

    async def _run_plain(self, tracked: _Tracked) -> TransferOutcome:
        transfer, briefing = tracked.transfer, tracked.briefing
        records = self.records
        if records is None:
            return await transfer.run()
        await records.start_transfer(
            call_id=tracked.call_id,
            transfer_id=transfer.transfer_id,
            handoff=HandoffRecord.from_briefing(briefing, incomplete=True),
        )
        outcome = await transfer.run()
        await records.finish_transfer(
            transfer.transfer_id,
            outcome,
            HandoffRecord.from_briefing(briefing, attempts=outcome.attempts),
        )
        return outcome

    def _emit(self, event: TransferEvent) -> None:
        tracked = self._tracked.get(event.transfer_id)
        # A RecordedCall records its own events; a plain run is recorded here.
        if self.records is not None and tracked is not None and not tracked.recorded:
            self.records.event(event)
        for listener in self.on_event:
            try:
                listener(event)
            except Exception:
                log.exception("on_event listener %r raised on %s", listener, event)

    def _find(self, transfer_id: str) -> _Tracked | WarmTransfer:
        tracked = self._tracked.get(transfer_id)
        if tracked is not None:
            return tracked
        live = self.engine.transfers.get(transfer_id)
        if live is not None:  # started by the service's agent, not through this API
            return live
        raise TransferNotFound(f"no transfer {transfer_id!r} is known")

    async def cancel_transfer(self, transfer_id: str) -> TransferInfo:
        found = self._find(transfer_id)
        transfer = found.transfer if isinstance(found, _Tracked) else found
        transfer.cancel()
        return self._info(found)

    def call_id_of(self, transfer_id: str) -> str | None:
        """The call of a transfer known in memory (started here, or by an agent)."""
        tracked = self._tracked.get(transfer_id)
        if tracked is not None:
            return tracked.call_id
        return self._call_of(transfer_id) if self._call_of is not None else None

    async def transfer_state(self, transfer_id: str) -> TransferInfo:
        try:
            return self._info(self._find(transfer_id))
        except TransferNotFound:
            stored = await self._stored(transfer_id)
            if stored is None:
                raise
            return _transfer_info(
                transfer_id=transfer_id,
                call_id=stored.call_id,
                state=stored.events[-1].state if stored.events else "idle",
                ended=not stored.incomplete,
                outcome=stored_outcome_payload(stored),
                events=[stored_event_payload(transfer_id, e) for e in stored.events],
            )

    async def transfer_record(self, transfer_id: str) -> dict[str, Any]:
        if self.records is None:
            raise RecordsDisabled("this service keeps no records store ([records] in the config)")
        stored = await self._stored(transfer_id)
        if stored is None:
            raise TransferNotFound(f"no record of transfer {transfer_id!r}")
        data = asdict(stored)
        data["events"] = [asdict(e) for e in stored.events]
        return data

    async def _stored(self, transfer_id: str) -> TransferRecord | None:
        """The transfer's row, events included, from the store (read on a thread of its own),
        after what the store still buffers is written: a transfer that has just left memory
        must not read as less than it was."""
        if self.records is None:
            return None
        if not self.records.closed:
            await self.records.flush()
        path = self.records.path

        def read() -> TransferRecord | None:
            conn = open_for_reading(path)
            try:
                row = conn.execute(
                    "SELECT call_id FROM transfers WHERE transfer_id = ?", (transfer_id,)
                ).fetchone()
                if row is None:
                    return None
                call = load_call(conn, row[0])
            except sqlite3.Error:
                log.exception("reading the record of transfer %s", transfer_id)
                return None
            finally:
                conn.close()
            if call is None:
                return None
            return next((t for t in call.transfers if t.transfer_id == transfer_id), None)

        with contextlib.suppress(FileNotFoundError):
            return await asyncio.to_thread(read)
        return None

    def _info(self, found: _Tracked | WarmTransfer) -> TransferInfo:
        transfer = found.transfer if isinstance(found, _Tracked) else found
        now = asyncio.get_running_loop().time()
        outcome = transfer.outcome
        return _transfer_info(
            transfer_id=transfer.transfer_id,
            call_id=self.call_id_of(transfer.transfer_id),
            state=transfer.state.value,
            ended=found.ended if isinstance(found, _Tracked) else is_terminal(transfer.state),
            outcome=None if outcome is None else outcome_payload(outcome, now),
            events=[event_payload(e, now) for e in transfer.timeline],
        )

    async def wait(self, transfer_id: str) -> TransferOutcome:
        """Until a transfer started here ends (tests, and a drain on shutdown)."""
        tracked = self._tracked.get(transfer_id)
        if tracked is None or tracked.task is None:
            raise TransferNotFound(f"no transfer {transfer_id!r} was started here")
        return await asyncio.shield(tracked.task)

    async def wait_call(self, call_id: str) -> None:
        """Until every transfer started here on `call_id` has ended (the service waits for it
        before it decides how a call whose agent returned ends)."""
        pending = [
            t.task
            for t in self._tracked.values()
            if t.call_id == call_id and t.task is not None and not t.task.done()
        ]
        if pending:
            await asyncio.gather(*(asyncio.shield(p) for p in pending), return_exceptions=True)

    async def drain(self) -> None:
        """Until every transfer started here has ended (SIGTERM: let callers finish). Waiting
        is all it does: cancelled (a drain bounded by a timeout), it leaves the transfers and
        their outcomes alone."""
        pending = {t.task for t in self._tracked.values() if t.task is not None}
        if pending:
            await asyncio.wait(pending)


def _transfer_info(
    *,
    transfer_id: str,
    call_id: str | None,
    state: str,
    ended: bool,
    outcome: dict[str, Any] | None,
    events: list[dict[str, Any]],
) -> TransferInfo:
    """A transfer as the API shows it, read from memory or from the store (the payloads have
    one shape either way: see `payloads`)."""
    return TransferInfo(
        transfer_id=transfer_id,
        call_id=call_id,
        state=state,
        ended=ended,
        outcome=None if outcome is None else OutcomeInfo.model_validate(outcome),
        events=[EventInfo.model_validate(event) for event in events],
    )

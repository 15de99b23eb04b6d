"""Attach a records store to a call on an `Engine`: its SIP, its transfers and its audio.

    async with RecordedCall(records, engine, call, audio_dir=folder) as recorded:
        leg = engine.caller_leg(call)
        outcome = await recorded.warm_transfer(leg, plan, briefing)
        ...                      # the AI goes on, or the caller talks to the human
        await call.wait_ended()
    # here the call's record is complete: SIP of every leg, transfers, recordings

Nothing in the engine changes: the store is fed by the two hooks the engine already has, the
transfer's `on_event` and the user agent's `trace_hooks` (every SIP message in and out).

Which SIP messages belong to the call: the user agent carries every call at once, so one hook
per user agent sorts its messages by Call-ID. The caller's Call-ID is known from the start (and
what the caller's leg exchanged before we were attached, its INVITE and our 200, is taken from
the user agent's `trace`). A human's leg gets its Call-ID when the engine dials it, which the
transfer announces with `DialStarted` just before: the next new INVITE the engine sends to that
target's URI is claimed for that attempt. Claims are kept per user agent in the order they were
made, so two transfers dialling the same human at once each get one leg.

Why the record is finished where it is: the transfer's outcome is written as soon as `run()`
returns, before the call's resources (its legs, the bridge) are released; the call's own record
is completed when the call has ended, after the BYE of each leg has had its answer (bounded by
`BYE_WAIT`), so that the ladder diagram ends where the call did.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import weakref
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

from warmtransfer.backends.sip import SipCallerLeg, SipTargetLeg
from warmtransfer.consult.handoff import HandoffRecord
from warmtransfer.consult.ports import Briefing, Consultant
from warmtransfer.engine import Engine
from warmtransfer.media.recorder import Recorder
from warmtransfer.server.records import Records
from warmtransfer.sip.call import Call
from warmtransfer.sip.flow import Flow
from warmtransfer.sip.uri import SipUri, SipUriError
from warmtransfer.sip.useragent import UserAgent
from warmtransfer.transfer.driver import WarmTransfer
from warmtransfer.transfer.events import TransferEvent
from warmtransfer.transfer.outcome import TransferOutcome
from warmtransfer.transfer.plan import TransferPlan
from warmtransfer.transfer.states import (
    Answered,
    AttemptFailed,
    DialStarted,
    is_terminal,
)

__all__ = ["BYE_WAIT", "CALLER_LEG", "HandoffFactory", "RecordedCall", "claim_path"]

#: How long the end of a call waits for the answers to its BYEs (over UDP a lost BYE would be
#: retried for 32 s; the record does not wait for that).
BYE_WAIT = 4.0
#: The leg label of the caller's SIP messages.
CALLER_LEG = "caller"

HandoffFactory = Callable[[Briefing, TransferOutcome | None], HandoffRecord]

_CALL_ID = re.compile(rb"^(?:call-id|i)[ \t]*:[ \t]*(\S+)", re.IGNORECASE | re.MULTILINE)
_CSEQ = re.compile(rb"^cseq[ \t]*:[ \t]*\d+[ \t]+([A-Za-z]+)", re.IGNORECASE | re.MULTILINE)
_TO = re.compile(rb"^(?:to|t)[ \t]*:(.*)$", re.IGNORECASE | re.MULTILINE)


def _header(pattern: re.Pattern[bytes], data: bytes) -> str | None:
    head = data.split(b"\r\n\r\n", 1)[0]
    found = pattern.search(head)
    return found.group(1).decode("utf-8", "replace").strip() if found else None


def _uri_key(text: str) -> tuple[str, str | None, str, int | None] | None:
    try:
        uri = SipUri.parse(text)
    except (SipUriError, ValueError):
        return None
    return uri.scheme, uri.user, uri.host.lower(), uri.port


def default_handoff(briefing: Briefing, outcome: TransferOutcome | None) -> HandoffRecord:
    """The record from the briefing, with the attempts once the outcome is known."""
    if outcome is None:
        return HandoffRecord.from_briefing(briefing, incomplete=True)
    return HandoffRecord.from_briefing(briefing, attempts=outcome.attempts)


@dataclass
class _Leg:
    owner: RecordedCall
    label: str
    transfer_id: str | None


@dataclass
class _Claim:
    owner: RecordedCall
    transfer_id: str
    attempt: int
    key: tuple[str, str | None, str, int | None]
    label: str


def claim_path(path: Path, *, tries: int = 1000) -> Path:
    """`path`, or `stem-2.wav`, `stem-3.wav`... whichever did not exist, created empty so that
    nobody else takes it.

    Why: the name comes from the Call-ID, which the caller's side chooses; a Call-ID used
    again (a broken PBX, a replayed INVITE), two that differ only in characters the name
    leaves out, or another instance sharing the folder must never overwrite a recording."""
    for n in range(1, tries + 1):
        candidate = path if n == 1 else path.with_name(f"{path.stem}-{n}{path.suffix}")
        try:
            os.close(os.open(candidate, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644))
        except FileExistsError:
            continue
        return candidate
    raise FileExistsError(f"{path}: {tries} recordings of this name already exist")


class _Dispatcher:
    """The one trace hook on a user agent: hands each SIP message to the call it belongs to."""

    def __init__(self, ua: UserAgent) -> None:
        self.ua = ua
        self.legs: dict[str, _Leg] = {}
        self.claims: list[_Claim] = []
        self.owners: set[RecordedCall] = set()

    def __call__(self, direction: str, data: bytes, addr: Flow, at: float) -> None:
        call_id = _header(_CALL_ID, data)
        if call_id is None:
            return
        leg = self.legs.get(call_id)
        if leg is None and direction == "out" and data.startswith(b"INVITE "):
            leg = self._claim(call_id, data)
        if leg is not None:
            leg.owner.sip(leg, call_id, direction, data, addr, at)

    def _claim(self, call_id: str, data: bytes) -> _Leg | None:
        to = _header(_TO, data) or ""
        if ";tag=" in to.replace(" ", "").lower():
            return None  # a re-INVITE of a dialog that is not ours
        parts = data.split(b"\r\n", 1)[0].split(b" ")
        key = _uri_key(parts[1].decode("utf-8", "replace")) if len(parts) == 3 else None
        for claim in self.claims:
            if claim.key == key:
                self.claims.remove(claim)
                leg = _Leg(claim.owner, claim.label, claim.transfer_id)
                self.legs[call_id] = leg
                claim.owner.target_call_ids[(claim.transfer_id, claim.attempt)] = call_id
                return leg
        return None

    def attach(self, owner: RecordedCall) -> None:
        if not self.owners:
            self.ua.trace_hooks.append(self)
        self.owners.add(owner)

    def detach(self, owner: RecordedCall) -> None:
        self.owners.discard(owner)
        self.claims = [c for c in self.claims if c.owner is not owner]
        self.legs = {k: v for k, v in self.legs.items() if v.owner is not owner}
        if not self.owners:
            with contextlib.suppress(ValueError):
                self.ua.trace_hooks.remove(self)
            _dispatchers.pop(self.ua, None)


_dispatchers: weakref.WeakKeyDictionary[UserAgent, _Dispatcher] = weakref.WeakKeyDictionary()


def _dispatcher(ua: UserAgent) -> _Dispatcher:
    found = _dispatchers.get(ua)
    if found is None:
        found = _dispatchers[ua] = _Dispatcher(ua)
    return found


class RecordedCall:
    """Records one call on `engine` into `records` while the `async with` block runs.

    `audio_dir`: if set, each leg (the caller's, and each human's from their answer) is
    recorded in stereo (what the far end sent, what we sent) and saved there as WAV when the
    call ends; the store keeps the paths. The recordings are held in memory until then
    (about 32 kB a second per leg). `handoff`: how a transfer's handoff record is built from
    its briefing (and outcome, None at its start); the default is `default_handoff`.
    """

    def __init__(
        self,
        records: Records,
        engine: Engine,
        call: Call,
        *,
        caller: str | None = None,
        audio_dir: Path | None = None,
        handoff: HandoffFactory = default_handoff,
    ) -> None:
        self.records = records
        self.engine = engine
        self.call = call
        self.call_id = call.call_id
        self.caller = caller
        self.audio_dir = audio_dir
        self.handoff = handoff
        self.target_call_ids: dict[tuple[str, int], str] = {}
        self.recordings: list[tuple[str, Path]] = []
        self._recorders: dict[str, Recorder] = {}
        self._target_legs: list[SipTargetLeg] = []
        self._byes: dict[str, bool] = {}  # Call-ID -> a BYE awaits its final response
        self._quiet = asyncio.Event()
        self._quiet.set()
        self._dispatcher = _dispatcher(engine.ua)

    # -- the call -----------------------------------------------------------------------------

    async def __aenter__(self) -> RecordedCall:
        started = self.call.answered_at
        await self.records.start_call(self.call_id, caller=self.caller, started=started)
        self._dispatcher.legs[self.call_id] = _Leg(self, CALLER_LEG, None)
        self._dispatcher.attach(self)
        for entry in list(self.engine.ua.trace):  # what the caller's leg said before we came
            if _header(_CALL_ID, entry.data) == self.call_id:
                self.sip(
                    self._dispatcher.legs[self.call_id],
                    self.call_id,
                    entry.direction,
                    entry.data,
                    entry.addr,
                    entry.at,
                )
        if self.audio_dir is not None and self.call.media.recorder is None:
            recorder = Recorder(asyncio.get_running_loop().time())
            self.call.media.recorder = self._recorders[CALLER_LEG] = recorder
        return self

    async def __aexit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        """Wait (bounded) for the legs to end and their BYEs to be answered, save the audio,
        and complete the call's record; then stop listening."""
        try:
            if kind is None:
                calls = [self.call, *(leg.call for leg in self._target_legs)]
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(BYE_WAIT):
                        await asyncio.gather(*(c.ended.wait() for c in calls))
                        await self._quiet.wait()
            await self._save_audio()
            if self.recordings:
                await self.records.add_recordings(self.call_id, self.recordings)
            # A call whose block raised stays incomplete: its end was not seen.
            if kind is None:
                await self.records.end_call(self.call_id)
            else:
                await self.records.flush()
        finally:
            self._dispatcher.detach(self)

    async def _save_audio(self) -> None:
        if self.audio_dir is None or not self._recorders:
            return
        folder = self.audio_dir
        for recorder in self._recorders.values():
            recorder.closed = True  # on the loop: no frame is added while it is written
        safe = re.sub(r"[^A-Za-z0-9_.-]+", "_", self.call_id)[:64]
        jobs = [
            (label, recorder, folder / f"{safe}-{re.sub(r'[^A-Za-z0-9_.-]+', '_', label)}.wav")
            for label, recorder in self._recorders.items()
        ]

        def save() -> list[tuple[str, Path]]:
            folder.mkdir(parents=True, exist_ok=True)
            return [(label, recorder.save(claim_path(path))) for label, recorder, path in jobs]

        self.recordings.extend(await asyncio.to_thread(save))

    def sip(
        self, leg: _Leg, call_id: str, direction: str, data: bytes, addr: Flow, at: float
    ) -> None:
        """One SIP message of one of this call's legs (from the dispatcher)."""
        if data[:4] == b"BYE ":
            self._byes[call_id] = True
            self._quiet.clear()
        elif (
            data.startswith(b"SIP/2.0 ")
            and data[8:9] in b"23456"
            and (_header(_CSEQ, data) or "").upper() == "BYE"
        ):
            self._byes.pop(call_id, None)
            if not self._byes:
                self._quiet.set()
        self.records.sip(
            call_id=self.call_id,
            direction=direction,
            peer=addr,
            data=data,
            at=at,
            leg=leg.label,
            leg_call_id=call_id,
            transfer_id=leg.transfer_id,
        )

    # -- transfers ----------------------------------------------------------------------------

    def transfer(
        self,
        caller: SipCallerLeg,
        plan: TransferPlan,
        briefing: Briefing,
        *,
        on_event: Callable[[TransferEvent], None] | None = None,
        consultant: Consultant | None = None,
    ) -> WarmTransfer:
        """As `Engine.transfer`, with every event recorded too (then passed to `on_event`)."""

        def recorded(event: TransferEvent) -> None:
            self._on_event(event)
            if on_event is not None:
                on_event(event)

        return self.engine.transfer(
            caller, plan, briefing, on_event=recorded, consultant=consultant
        )

    async def run(self, transfer: WarmTransfer, briefing: Briefing) -> TransferOutcome:
        """Run a transfer made by `transfer()`: its row is committed (incomplete) first, and its
        outcome written as soon as it ends. If `run()` raises, the row stays incomplete."""
        loop = asyncio.get_running_loop()
        # The transfer stays in `engine.transfers` (where the HTTP API reads it from memory)
        # until its outcome is committed: never a moment where it reads as unfinished.
        try:
            await self.records.start_transfer(
                call_id=self.call_id,
                transfer_id=transfer.transfer_id,
                started=loop.time(),
                handoff=self.handoff(briefing, None),
            )
            try:
                outcome = await transfer.run()
            except BaseException:
                with contextlib.suppress(Exception):
                    await self.records.flush()
                raise
            await self.records.finish_transfer(
                transfer.transfer_id, outcome, self.handoff(briefing, outcome)
            )
        finally:
            self.engine.transfers.pop(transfer.transfer_id, None)
        return outcome

    async def warm_transfer(
        self,
        caller: SipCallerLeg,
        plan: TransferPlan,
        briefing: Briefing,
        *,
        on_event: Callable[[TransferEvent], None] | None = None,
        consultant: Consultant | None = None,
    ) -> TransferOutcome:
        """As `Engine.warm_transfer`, recorded."""
        transfer = self.transfer(caller, plan, briefing, on_event=on_event, consultant=consultant)
        return await self.run(transfer, briefing)

    def _on_event(self, event: TransferEvent) -> None:
        self.records.event(event)
        moved = event.event
        if isinstance(moved, DialStarted):
            key = _uri_key(moved.target.uri)
            if key is not None:
                label = moved.target.display_name or moved.target.uri
                self._dispatcher.claims.append(
                    _Claim(self, event.transfer_id, moved.attempt, key, label)
                )
        elif isinstance(moved, Answered):
            self._answered(event.transfer_id, moved.attempt)
        if isinstance(moved, AttemptFailed):
            self._unclaim(event.transfer_id, moved.attempt)
        elif is_terminal(event.state):
            self._unclaim(event.transfer_id, None)

    def _unclaim(self, transfer_id: str, attempt: int | None) -> None:
        """A dial that ended without sending an INVITE (e.g. no route) claims nothing more."""
        self._dispatcher.claims = [
            c
            for c in self._dispatcher.claims
            if not (
                c.owner is self
                and c.transfer_id == transfer_id
                and (attempt is None or c.attempt == attempt)
            )
        ]

    def _answered(self, transfer_id: str, attempt: int) -> None:
        """A human answered: find their leg by its Call-ID, to wait for its end and record it."""
        call_id = self.target_call_ids.get((transfer_id, attempt))
        leg = next(
            (leg for leg in reversed(self.engine.dialer.legs) if leg.call.call_id == call_id),
            None,
        )
        if leg is None:
            return
        self._target_legs.append(leg)
        if self.audio_dir is not None and leg.media.recorder is None:
            label = self._dispatcher.legs[leg.call.call_id].label
            key = f"{label} (attempt {attempt + 1})"
            recorder = Recorder(asyncio.get_running_loop().time())
            leg.media.recorder = self._recorders[key] = recorder

"""`WarmTransferTask`: livekit-agents' warm transfer, run by warmtransfer's transfer core.

Switching from the reference is one import::

    # from livekit.agents.beta.workflows import WarmTransferTask
    from warmtransfer.livekit import WarmTransferTask

    result = await WarmTransferTask(sip_call_to="+15105550123", chat_ctx=self.chat_ctx)

The constructor takes the reference's parameters (same names, same defaults) and returns the
same `WarmTransferResult(human_agent_identity)`. Failures raise `TransferFailedError`, a
`ToolError` (so the LLM reads why, as with the reference) that carries the typed `Failed`
outcome: its `Reason` (busy, no answer, declined, voicemail, caller gone, timeout...) and the
SIP status, which the reference reduced to one string.

Beyond the reference, `plan=` takes a `TransferPlan`: several targets, hunting (sequential or
simultaneous, rounds), the consult deadline and overall deadline, and the allow-list. `merge=`
picks how caller and human are joined: ``"move"`` (MoveParticipant, LiveKit Cloud) or
``"same_room"`` (any server; see `rooms.py`).

The allow-list: without a plan, the task builds one whose allow-list is exactly `sip_call_to`:
the app chose the destination when it built the task, not the model. With a plan, a
`sip_call_to` becomes its first target and must pass the plan's allow-list. Either way the check
runs in the constructor, before any API call: `DestinationNotAllowed` is raised there.

Two backends, picked when the task starts (`on_enter`), so the same line works in both:

- On a call answered by warmtransfer's embedded SIP engine (`sip_io.run_agent_on_call`, no
  LiveKit server), the session carries a `SipBackend`: the caller's `SipCallerLeg` is held (the
  session's audio is gated off with it), `engine.dialer` dials `sip_call_to` (a SIP URI), the
  engine's consultant briefs the human (keys 1 accept, 2 decline; spoken answers and answer
  detection if the engine has them) and `engine.bridge` joins them. The briefing's summary is
  the offline extractive summary of `chat_ctx`. A completed transfer hands the caller over and
  closes the session: the agent has left the call (its tool's return value is never spoken).
  `human_agent_identity` is the URI of the human who accepted.
- Otherwise the LiveKit rooms backend, built from the job (or `backend=RoomsBackend(...)`).
  Only this backend needs an outbound trunk (`sip_trunk_id`, `sip_connection` or
  `LIVEKIT_SIP_OUTBOUND_TRUNK`), and only it refuses `caller_keys.can_leave_message`; both are
  checked when it is picked, before any API call, and fail the tool with a `ToolError`.

`backend=` picks one explicitly (a `RoomsBackend` or a `SipBackend`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from livekit import api as lkapi
from livekit.agents import AgentTask, get_job_context, llm
from livekit.agents.beta.workflows.utils import WorkflowInstructions
from livekit.agents.beta.workflows.warm_transfer import (
    INSTRUCTIONS_TEMPLATE,
    PERSONA,
    WarmTransferResult,
)
from livekit.agents.llm import ToolError
from livekit.agents.llm.chat_context import Instructions
from livekit.agents.types import NOT_GIVEN, NotGivenOr
from livekit.agents.utils import is_given

from warmtransfer.consult.ports import Briefing, Turn
from warmtransfer.consult.summary import ExtractiveSummarizer
from warmtransfer.livekit.consult import SessionConsultant
from warmtransfer.livekit.ports import CallerRoom, RoomConnector, SessionStarter
from warmtransfer.livekit.rooms import (
    MergeMode,
    RoomBridge,
    RoomCallerLeg,
    RoomDialer,
    SipOrigin,
    target_uri,
)
from warmtransfer.livekit.sip_io import SipBackend, sip_backend
from warmtransfer.transfer.driver import WarmTransfer
from warmtransfer.transfer.events import TransferEvent
from warmtransfer.transfer.outcome import Completed, Failed, Reason, TransferOutcome
from warmtransfer.transfer.plan import HoldAudio, TransferPlan
from warmtransfer.transfer.target import AllowList, Target

__all__ = [
    "RoomsBackend",
    "SipBackend",
    "TransferFailedError",
    "WarmTransferResult",
    "WarmTransferTask",
    "default_plan",
]

log = logging.getLogger(__name__)

#: The caller-side task's own instructions: while it runs the caller is held and the AI's
#: I/O is off; it has no tools, so nothing the caller says can act on the transfer.
HOLDING_INSTRUCTIONS = "The caller is on hold while a human agent is reached. Say nothing."


class TransferFailedError(ToolError):
    """The transfer failed; `outcome` says why (`reason`, `sip_status`, every attempt)."""

    def __init__(self, outcome: Failed) -> None:
        self.outcome = outcome
        status = f" (SIP {outcome.sip_status} {outcome.sip_reason or ''})".rstrip()
        text = f"warm transfer failed: {outcome.reason.value}"
        if outcome.sip_status:
            text += status
        if outcome.detail:
            text += f": {outcome.detail}"
        super().__init__(text)

    @property
    def reason(self) -> Reason:
        return self.outcome.reason

    @property
    def sip_status(self) -> int | None:
        return self.outcome.sip_status


def _literal(uri: str) -> str:
    """An fnmatch pattern matching exactly `uri` (glob characters bracketed)."""
    return "".join(f"[{ch}]" if ch in "*?[]" else ch for ch in uri)


def default_plan(
    sip_call_to: str,
    *,
    ringing_timeout: float | None = None,
    dtmf: str | None = None,
    sip_headers: dict[str, str] | None = None,
    sip_number: str | None = None,
    hold_silent: bool = False,
) -> TransferPlan:
    """The plan for the reference's arguments: one target, allow-list = that target only."""
    uri = target_uri(sip_call_to)
    target = Target(
        uri=uri,
        dtmf=dtmf or "",
        headers=dict(sip_headers or {}),
        caller_id=sip_number or None,
        ring_timeout=ringing_timeout or 30.0,
    )
    return TransferPlan(
        targets=(target,),
        allow=AllowList(patterns=(_literal(uri),)),
        hold_audio=HoldAudio(silence=hold_silent, progress_every=None),
    )


@dataclass
class RoomsBackend:
    """What the task needs from LiveKit. Built from the job in `on_enter`; tests pass fakes of
    the rtc side (`caller_room`, `connector`, `start_session`) and a `LiveKitAPI` aimed at a
    fake server."""

    api: lkapi.LiveKitAPI
    caller_room: CallerRoom
    connector: RoomConnector
    start_session: SessionStarter
    on_shutdown: Callable[[Callable[[], Any]], None] | None = None


def _conversation(chat_ctx: NotGivenOr[llm.ChatContext]) -> tuple[str, tuple[Turn, ...]]:
    """The caller conversation as the consult prompt shows it (tool calls dropped)."""
    if not is_given(chat_ctx) or not chat_ctx:
        return "", ()
    lines, turns = [], []
    for msg in chat_ctx.messages():
        if msg.role not in ("user", "assistant") or not msg.text_content:
            continue
        speaker = "Caller" if msg.role == "user" else "Assistant"
        lines.append(f"{speaker}: {msg.text_content}\n")
        turns.append(Turn("caller" if msg.role == "user" else "agent", msg.text_content))
    return "".join(lines), tuple(turns)


class WarmTransferTask(AgentTask[WarmTransferResult]):
    """Hold the caller, dial and brief a human, and join them or hand the caller back."""

    def __init__(
        self,
        sip_call_to: NotGivenOr[str] = NOT_GIVEN,
        *,
        sip_trunk_id: NotGivenOr[str | None] = NOT_GIVEN,
        sip_connection: NotGivenOr[lkapi.SIPOutboundConfig] = NOT_GIVEN,
        sip_number: NotGivenOr[str] = NOT_GIVEN,
        sip_headers: NotGivenOr[dict[str, str]] = NOT_GIVEN,
        dtmf: NotGivenOr[str | None] = NOT_GIVEN,
        ringing_timeout: NotGivenOr[float | None] = NOT_GIVEN,
        hold_audio: NotGivenOr[Any] = NOT_GIVEN,
        instructions: NotGivenOr[WorkflowInstructions | Instructions | str] = NOT_GIVEN,
        chat_ctx: NotGivenOr[llm.ChatContext] = NOT_GIVEN,
        turn_handling: NotGivenOr[Any] = NOT_GIVEN,
        turn_detection: NotGivenOr[Any] = NOT_GIVEN,
        tools: NotGivenOr[list[llm.Tool | llm.Toolset]] = NOT_GIVEN,
        stt: NotGivenOr[Any] = NOT_GIVEN,
        vad: NotGivenOr[Any] = NOT_GIVEN,
        llm: NotGivenOr[Any] = NOT_GIVEN,
        tts: NotGivenOr[Any] = NOT_GIVEN,
        allow_interruptions: NotGivenOr[bool] = NOT_GIVEN,
        extra_instructions: str = "",
        target_phone_number: NotGivenOr[str] = NOT_GIVEN,
        # warmtransfer's own
        plan: TransferPlan | None = None,
        merge: MergeMode = "move",
        caller_identity: str | None = None,
        backend: RoomsBackend | SipBackend | None = None,
        on_event: Callable[[TransferEvent], None] | None = None,
    ) -> None:
        if is_given(target_phone_number) and not is_given(sip_call_to):
            sip_call_to = target_phone_number
        call_to = sip_call_to if is_given(sip_call_to) else None
        if call_to is None and plan is None:
            raise ValueError("`sip_call_to` or `plan` must be set")
        self._plan = self._make_plan(
            call_to,
            plan,
            ringing_timeout=ringing_timeout if is_given(ringing_timeout) else None,
            dtmf=dtmf if is_given(dtmf) else None,
            sip_headers=sip_headers if is_given(sip_headers) else None,
            sip_number=sip_number if is_given(sip_number) else os.getenv("LIVEKIT_SIP_NUMBER"),
            hold_silent=is_given(hold_audio) and hold_audio is None,
        )
        self._plan.check_allowed()  # before any API call: DestinationNotAllowed
        if isinstance(backend, RoomsBackend) and self._plan.caller_keys.can_leave_message:
            raise ValueError("the LiveKit rooms backend cannot record messages yet")

        connection = sip_connection if is_given(sip_connection) else None
        if is_given(sip_trunk_id):
            trunk = sip_trunk_id
        elif connection is not None:
            trunk = None
        else:
            trunk = os.getenv("LIVEKIT_SIP_OUTBOUND_TRUNK")
        self._origin = SipOrigin(
            trunk_id=trunk,
            connection=connection,
            number=sip_number if is_given(sip_number) else os.getenv("LIVEKIT_SIP_NUMBER"),
        )

        history, self._turns = _conversation(chat_ctx)
        if not is_given(instructions):
            instructions = WorkflowInstructions(persona=PERSONA, extra=extra_instructions)
        if isinstance(instructions, WorkflowInstructions):
            instructions = instructions.resolve(
                template=INSTRUCTIONS_TEMPLATE,
                default_persona=PERSONA,
                _conversation_history=history,
            )
        self._consult_instructions = str(instructions)
        self._consult_models: dict[str, Any] = {
            name: value
            for name, value in (("stt", stt), ("vad", vad), ("llm", llm), ("tts", tts))
            if is_given(value)
        }
        self._consult_tools = list(tools) if is_given(tools) else []
        self._hold_audio = hold_audio if is_given(hold_audio) else None
        self._merge: MergeMode = merge
        self._caller_identity = caller_identity
        self._backend = backend
        self._on_event = on_event
        self.transfer: WarmTransfer | None = None
        self.outcome: TransferOutcome | None = None
        self.bridge: RoomBridge | None = None
        self.dialer: RoomDialer | None = None

        # The caller-side task: no tools (the consult tools live on the consult agent, in the
        # consult session), and it stays silent while the caller is held.
        super().__init__(
            instructions=HOLDING_INSTRUCTIONS,
            turn_handling=turn_handling,
            turn_detection=turn_detection,
            tools=[],
            allow_interruptions=allow_interruptions,
        )

    @staticmethod
    def _make_plan(
        call_to: str | None,
        plan: TransferPlan | None,
        **reference: Any,
    ) -> TransferPlan:
        if plan is None:
            assert call_to is not None
            return default_plan(call_to, **reference)
        if call_to is None:
            return plan
        uri = target_uri(call_to)
        if any(target.uri == uri for target in plan.targets):
            return plan
        return plan.model_copy(update={"targets": (Target(uri=uri), *plan.targets)})

    @property
    def plan(self) -> TransferPlan:
        return self._plan

    # -- running ------------------------------------------------------------------------------

    def _backend_from_job(self) -> RoomsBackend:
        from warmtransfer.livekit.rtc_adapters import (
            AgentCallerRoom,
            ConsultSessionFactory,
            RtcConnector,
        )

        job = get_job_context()
        identity = self._caller_identity
        if identity is None:
            linked = self.session.room_io.linked_participant
            if linked is None:
                raise RuntimeError("no caller is linked to the session; pass caller_identity=")
            identity = linked.identity
        models = {
            "stt": self.session.stt,
            "vad": self.session.vad,
            "llm": self.session.llm,
            "tts": self.session.tts,
        }
        models = {k: v for k, v in models.items() if v is not None}
        models.update(self._consult_models)
        return RoomsBackend(
            api=job.api,
            caller_room=AgentCallerRoom(
                self.session, job.room, caller_identity=identity, hold_audio=self._hold_audio
            ),
            connector=RtcConnector(job._info.url),
            start_session=ConsultSessionFactory(**models),
            on_shutdown=lambda close: job.add_shutdown_callback(close),
        )

    def _pick_backend(self) -> RoomsBackend | SipBackend:
        """The backend given, else the SIP call this session runs on, else the LiveKit job."""
        if self._backend is not None:
            return self._backend
        on_call = sip_backend(self.session)
        if on_call is not None:
            return on_call
        self._check_rooms()
        return self._backend_from_job()

    def _check_rooms(self) -> None:
        """What only the rooms backend needs, checked before it makes any API call."""
        if self._plan.caller_keys.can_leave_message:
            raise ValueError("the LiveKit rooms backend cannot record messages yet")
        if self._origin.trunk_id is None and self._origin.connection is None:
            raise ValueError(
                "`LIVEKIT_SIP_OUTBOUND_TRUNK` environment variable, `sip_trunk_id`,"
                " or `sip_connection` must be set"
            )

    async def on_enter(self) -> None:
        try:
            backend = self._pick_backend()
        except Exception as exc:
            log.exception("warm transfer could not start")
            self.complete(ToolError(f"warm transfer could not start: {exc}"))
            return
        outcome = await self.run_transfer(backend)
        self.outcome = outcome
        if not isinstance(outcome, Completed):
            self.complete(TransferFailedError(outcome))
        elif isinstance(backend, SipBackend):
            self.complete(WarmTransferResult(human_agent_identity=outcome.target.uri))
            if backend.hand_over is not None:
                backend.hand_over()  # the caller is with the human: the agent leaves the call
        else:
            joined = self.bridge.joined[-1] if self.bridge and self.bridge.joined else ""
            self.complete(WarmTransferResult(human_agent_identity=joined))

    async def run_transfer(self, backend: RoomsBackend | SipBackend) -> TransferOutcome:
        """Run the core's driver over the backend's ports; release the caller side on every
        exit."""
        if isinstance(backend, SipBackend):
            return await self._run_on_sip(backend)
        self._check_rooms()
        return await self._run_on_rooms(backend)

    async def _run_on_sip(self, backend: SipBackend) -> TransferOutcome:
        """The engine's SIP ports: the call's caller leg, its dialer, bridge and consultant."""
        engine = backend.engine
        briefing = Briefing(
            summary=ExtractiveSummarizer().compose(self._turns, {}) if self._turns else "",
            transcript=self._turns,
        )
        self.transfer = engine.transfer(
            backend.caller,
            self._plan,
            briefing,
            on_event=self._on_event,
            consultant=backend.consultant,
        )
        try:
            return await self.transfer.run()
        finally:
            engine.transfers.pop(self.transfer.transfer_id, None)

    async def _run_on_rooms(self, backend: RoomsBackend) -> TransferOutcome:
        caller = RoomCallerLeg(backend.caller_room, backend.api)
        self.dialer = RoomDialer(
            backend.api, backend.connector, backend.caller_room.view, self._origin, self._merge
        )
        self.bridge = RoomBridge(backend.api, self._merge)
        if backend.on_shutdown is not None:
            backend.on_shutdown(self.bridge.aclose)
        consultant = SessionConsultant(
            backend.start_session,
            instructions=lambda _briefing: self._consult_instructions,
            agent_options={"tools": self._consult_tools, **self._consult_models},
        )
        self.transfer = WarmTransfer(
            plan=self._plan,
            caller=caller,
            dialer=self.dialer,
            bridge=self.bridge,
            consultant=consultant,
            briefing=Briefing(summary="", transcript=self._turns),
            on_event=self._on_event,
        )
        try:
            return await self.transfer.run()
        finally:
            for space in self.dialer.spaces:  # each is released already; this is the proof
                if not space.released:
                    with contextlib.suppress(Exception):
                        await asyncio.shield(space.release())
            await backend.caller_room.aclose()

"""The embedded engine: one SIP user agent, the pacing clock, text-to-speech, and the wiring of
the transfer driver to the SIP backend. This is the object a Python app holds.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import uuid
from collections.abc import Callable, Coroutine, Mapping, Sequence
from types import MappingProxyType
from typing import Any

from warmtransfer.backends.sip import SipBridge, SipCallerLeg, SipDialer
from warmtransfer.consult.chat import ChatClient
from warmtransfer.consult.llm import LlmConsultant
from warmtransfer.consult.ports import Briefing, Consultant
from warmtransfer.consult.scripted import ScriptedConsultant
from warmtransfer.media.clock import PacingClock
from warmtransfer.media.hold_music import hold_music
from warmtransfer.sip.call import Call, IncomingCall
from warmtransfer.sip.digest import Credentials
from warmtransfer.sip.session_timer import SessionTimerConfig
from warmtransfer.sip.transports import TlsConfig
from warmtransfer.sip.useragent import InboundPolicy, UserAgent
from warmtransfer.speech.answering import MACHINE_PHRASES, AnswerDetector
from warmtransfer.speech.stt import (
    DEFAULT_PHRASES,
    KeywordSpotter,
    PocketsphinxSTT,
    SpeechToText,
)
from warmtransfer.speech.tts import PiperTTS, TextToSpeech
from warmtransfer.transfer.driver import WarmTransfer
from warmtransfer.transfer.events import TransferEvent
from warmtransfer.transfer.outcome import TransferOutcome
from warmtransfer.transfer.plan import CallerKeys, HoldAudio, TransferPlan


class Engine:
    """Answer calls, let an AI agent talk on them, and warm-transfer them to humans."""

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 5060,
        *,
        user: str = "warmtransfer",
        tts: TextToSpeech | None = None,
        consultant: Consultant | None = None,
        listen: Sequence[str] = ("udp",),
        tls: TlsConfig | None = None,
        spoken_answers: bool = True,
        answer_detection: bool = True,
        voicemail_message: str | None = None,
        credentials: Credentials | None = None,
        inbound: InboundPolicy | None = None,
        advertised_host: str | None = None,
        session_timer: SessionTimerConfig | None = SessionTimerConfig(),  # noqa: B008 (frozen)
        chat: ChatClient | None = None,
        stt: SpeechToText | None = None,
    ) -> None:
        """`listen` and `tls`: the SIP transports, as for `UserAgent` (UDP and TCP share
        `port`; TLS listens on `tls.port`). `credentials` (answering a trunk's challenges),
        `inbound` (who may call us), `advertised_host` (the public IP behind a NAT) and
        `session_timer` are passed to the `UserAgent` as they are, so a config file can set
        every option of the embedded SIP stack.

        For the default (scripted) consultant: `spoken_answers` lets the human say yes, no or
        repeat as well as press keys; `answer_detection` recognises voicemail and phone trees
        (never bridged); `voicemail_message` is left on a voicemail after its beep. Both
        listen with one offline keyword spotter (pocketsphinx, ~27 MB per call being
        consulted, loaded in `start`).

        `chat`: with no `consultant`, the default one is the LLM-driven `LlmConsultant` on this
        model instead of the scripted one (same spoken answers, answer detection and voicemail
        message, as its fallback); `stt` writes down the human's turns for it (None = offline
        pocketsphinx, made and closed by the engine). The engine builds it, rather than the
        caller, because the keyword spotter both consultants share is the engine's to close."""
        self.clock = PacingClock()
        self.ua = UserAgent(
            host,
            port,
            user=user,
            clock=self.clock,
            name="engine",
            listen=listen,
            tls=tls,
            credentials=credentials,
            inbound=inbound,
            advertised_host=advertised_host,
            session_timer=session_timer,
        )
        self.tts: TextToSpeech = tts if tts is not None else PiperTTS()
        self.spotter: KeywordSpotter | None = None
        self.stt: SpeechToText | None = None
        self._own_stt: PocketsphinxSTT | None = None
        if consultant is None:
            phrases = {
                **(DEFAULT_PHRASES if spoken_answers else {}),
                **(MACHINE_PHRASES if answer_detection else {}),
            }
            self.spotter = KeywordSpotter(phrases) if phrases else None
            detector = AnswerDetector(self.spotter) if answer_detection else None
            if chat is not None:
                if stt is None:
                    stt = self._own_stt = PocketsphinxSTT()
                self.stt = stt
                consultant = LlmConsultant(
                    chat,
                    self.tts,
                    stt,
                    spotter=self.spotter,
                    answer_detector=detector,
                    voicemail_message=voicemail_message,
                )
            else:
                consultant = ScriptedConsultant(
                    self.tts,
                    spotter=self.spotter,
                    answer_detector=detector,
                    voicemail_message=voicemail_message,
                )
        self.consultant: Consultant = consultant
        self.dialer = SipDialer(self.ua)
        self.bridge = SipBridge(self.spawn)
        self._tasks: set[asyncio.Task[Any]] = set()
        self.transfers: dict[str, WarmTransfer] = {}
        self._caller_legs: dict[Call, SipCallerLeg] = {}

    async def start(self) -> Engine:
        """Check the speech providers, then listen. A provider that is misconfigured or
        unreachable (no model, no API key, wrong base URL) fails here with an error naming it
        and what to set: before any call is answered, not on the first transfer."""
        for provider in (self.tts, self.spotter, self.stt):
            check = getattr(provider, "check", None)
            if check is not None:
                result = check()
                if inspect.isawaitable(result):
                    await result
        await self.ua.start()
        hold_music()  # generated once and cached: the first hold must not wait for it
        # The default hold prompts too: the first caller to hear one must not wait for piper.
        await self.tts.synthesize(HoldAudio().progress_text)
        await self.tts.synthesize(CallerKeys().effective_message_prompt)
        warm_up = getattr(self.consultant, "warm_up", None)
        if warm_up is not None:
            await warm_up()
        return self

    async def close(self) -> None:
        """End every call and release every socket, task and timer the engine holds."""
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
        await self.ua.close()
        if self.spotter is not None:
            self.spotter.close()
        if self._own_stt is not None:
            self._own_stt.close()
        # Remote providers hold connection pools (OpenAI-compatible clients); left open, each
        # engine closed in a long-lived process would leak its sockets.
        for provider in (self.tts, self.stt):
            aclose = getattr(provider, "aclose", None)
            if aclose is not None:
                await aclose()

    async def __aenter__(self) -> Engine:
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    @property
    def uri(self) -> str:
        return self.ua.uri

    def spawn(self, coro: Coroutine[Any, Any, Any]) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def next_call(self) -> IncomingCall:
        return await self.ua.next_call()

    def caller_leg(self, call: Call) -> SipCallerLeg:
        """The caller's leg of `call`: one per call, shared by whoever asks (the agent, a
        transfer started through the API), so that a hold by one is seen by the other (the
        agent must not speak over hold music, nor hear the held caller)."""
        # Legs of calls that have ended are let go here (a long-running service would otherwise
        # keep every call it ever had: the leg holds its call and the call's media).
        for gone in [c for c in self._caller_legs if c.ended.is_set() and c is not call]:
            del self._caller_legs[gone]
        leg = self._caller_legs.get(call)
        if leg is None:
            leg = self._caller_legs[call] = SipCallerLeg(call, self.tts)
        return leg

    @property
    def caller_legs(self) -> Mapping[Call, SipCallerLeg]:
        """The caller legs handed out, by call (those of ended calls go at the next request)."""
        return MappingProxyType(self._caller_legs)

    def transfer(
        self,
        caller: SipCallerLeg,
        plan: TransferPlan,
        briefing: Briefing,
        *,
        on_event: Callable[[TransferEvent], None] | None = None,
        consultant: Consultant | None = None,
    ) -> WarmTransfer:
        """A transfer ready to `run()`; keep it to cancel it or follow its events."""
        transfer_id = uuid.uuid4().hex[:12]
        transfer = WarmTransfer(
            plan=plan,
            caller=caller,
            dialer=self.dialer,
            bridge=self.bridge,
            consultant=consultant if consultant is not None else self.consultant,
            briefing=briefing,
            transfer_id=transfer_id,
            on_event=on_event,
            clock=asyncio.get_running_loop().time,
        )
        self.transfers[transfer_id] = transfer
        return transfer

    async def warm_transfer(
        self,
        caller: SipCallerLeg,
        plan: TransferPlan,
        briefing: Briefing,
        *,
        on_event: Callable[[TransferEvent], None] | None = None,
        consultant: Consultant | None = None,
    ) -> TransferOutcome:
        transfer = self.transfer(caller, plan, briefing, on_event=on_event, consultant=consultant)
        try:
            return await transfer.run()
        finally:
            with contextlib.suppress(KeyError):
                del self.transfers[transfer.transfer_id]

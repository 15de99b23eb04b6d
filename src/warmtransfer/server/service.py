"""`Service`: the long-running process `warmtransfer serve` is. It builds the engine from the
config, registers at the trunk, opens the records store, and runs the configured agent on every
inbound call, each in a `CallSession`.

Shutdown (SIGTERM or SIGINT, or `stop()`), in this order:
1. New calls are refused with ``503 Service Unavailable`` and ``Retry-After``: the SIP socket
   stays open, since the calls in progress still need it (their BYEs, re-INVITEs, the humans'
   legs), and a 503 tells a trunk or proxy to try another server at once, where a silent
   socket would make it wait for a timeout.
2. Calls in progress go on, up to the drain timeout: a transfer under way is finished, a caller
   talking to a human keeps talking.
3. At the timeout, each remaining call is ended with a BYE (its agent sees `LegGone`, a
   transfer under way ends with the caller gone and releases the human's leg), its record is
   completed, the HTTP API stops, then the engine closes (whatever it still ends reports to
   the webhooks and the records like any other end), then the webhooks are flushed and the
   records store is closed, and `run()` returns (exit 0).

What the config turns on beside the calls (built in, no code needed):
- ``[http]``: the HTTP API (`HttpApi` over `EngineServiceApi`, with the records store and each
  call's `RecordedCall`), `/metrics` included, on the configured address. It answers for the
  whole life of the service, drain included, but starts no transfer once it drains (503); on
  shutdown the transfers it started are waited for (bounded by the drain timeout) and it
  stops after the last call ended.
- ``[webhooks]``: a `WebhookSender` gets every transfer event and each transfer's final handoff
  record, whoever started the transfer (the agent, or the API); on shutdown what is queued is
  delivered for at most WEBHOOK_FLUSH seconds.
- `Metrics` always observes every transfer event (read through `/metrics` when there is an API).
Each call's work runs under `log_context(call_id=...)`, each transfer's under its
`transfer_id` too, so JSON log lines (`install_json_logging`) name what they are about.

Hooks for applications that embed the service: `hooks` are plain callbacks on a call's start and
end and on every transfer event (the agent's transfers and the API's alike), and `companions`
are async context managers entered once the engine listens and left after the last call ended.

An agent that raises is logged, and its call ends as if it had returned: a transfer the API
started on the call is waited for, the call is hung up unless handed over, and its record is
completed.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
import signal
from collections.abc import Awaitable, Callable, Sequence
from contextlib import AbstractAsyncContextManager, AsyncExitStack
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from warmtransfer.config.build import (
    engine_from_config,
    register_trunk,
    speech_to_text,
    summarizer_from_config,
)
from warmtransfer.config.load import resolve_agent
from warmtransfer.config.model import Config
from warmtransfer.consult.handoff import HandoffRecord
from warmtransfer.consult.ports import LegGone
from warmtransfer.engine import Engine
from warmtransfer.server.http import HttpApi
from warmtransfer.server.logs import log_context
from warmtransfer.server.metrics import Metrics
from warmtransfer.server.recording import RecordedCall
from warmtransfer.server.records import Records
from warmtransfer.server.scripted_agent import ScriptedAgent
from warmtransfer.server.service_api import EngineServiceApi
from warmtransfer.server.session import CallSession
from warmtransfer.server.webhooks import WebhookSender
from warmtransfer.sip.call import CallFailed, EndReason, IncomingCall
from warmtransfer.speech.stt import PocketsphinxSTT, SpeechToText
from warmtransfer.transfer.events import TransferEvent
from warmtransfer.transfer.outcome import TransferOutcome

__all__ = ["DEFAULT_DRAIN_TIMEOUT", "Agent", "Service", "ServiceHooks", "ServiceState"]

log = logging.getLogger("warmtransfer.service")

DEFAULT_DRAIN_TIMEOUT = 30.0
RETRY_AFTER = 30
"""Seconds a refused caller is told to wait (Retry-After of the 503 while draining)."""
END_GRACE = 5.0
"""After the drain timeout: how long the ended calls get to finish their records."""
HANGUP_GRACE = 10.0
"""A caller hung up during a transfer: how long the transfer may take to notice and end."""
WEBHOOK_FLUSH = 5.0
"""On shutdown: how long queued webhook deliveries may still take before they are dropped."""

Agent = Callable[[CallSession], Awaitable[Any]]
"""What runs on each call: the built-in `ScriptedAgent`, or ``[agent] entrypoint``."""


class ServiceState(StrEnum):
    STARTING = "starting"
    RUNNING = "running"
    DRAINING = "draining"
    STOPPED = "stopped"


@dataclass
class ServiceHooks:
    """Callbacks for webhooks, metrics and the HTTP API; each is called on the event loop and
    must not block. An exception in one is logged and does not touch the call."""

    call_started: Callable[[CallSession], None] | None = None
    call_ended: Callable[[CallSession], None] | None = None
    transfer_event: Callable[[CallSession, TransferEvent], None] | None = None
    state_changed: Callable[[ServiceState], None] | None = None


class Service:
    """Run `config` until stopped: ``await Service(config).run()``."""

    def __init__(
        self,
        config: Config,
        *,
        drain_timeout: float | None = None,
        hooks: ServiceHooks | None = None,
        companions: Sequence[Callable[[Service], AbstractAsyncContextManager[Any]]] = (),
        agent: Agent | None = None,
        handle_signals: bool = True,
    ) -> None:
        """`drain_timeout` (None: ``[service] drain_timeout``); `agent` replaces the config's
        (tests, embedding); `handle_signals`: install the SIGTERM/SIGINT handlers (off when the
        embedding application owns them)."""
        self.config = config
        self.drain_timeout = (
            drain_timeout if drain_timeout is not None else config.service.drain_timeout
        )
        self.hooks = hooks or ServiceHooks()
        self.companions = tuple(companions)
        self.handle_signals = handle_signals
        self.state = ServiceState.STARTING
        self.engine: Engine | None = None
        self.records: Records | None = None
        self.sessions: dict[str, CallSession] = {}
        self.ready = asyncio.Event()
        self._agent = agent
        self._stopping = asyncio.Event()
        self._calls: set[asyncio.Task[None]] = set()
        self.default_plan = config.agent.plan or next(iter(config.plans), None)
        self.metrics = Metrics()
        self.api: EngineServiceApi | None = None
        self.http: HttpApi | None = None
        self.webhooks: WebhookSender | None = None
        self._recorded: dict[str, RecordedCall] = {}

    # -- control ------------------------------------------------------------------------------

    def stop(self) -> None:
        """Begin the graceful shutdown (safe to call more than once, from a signal handler)."""
        if not self._stopping.is_set():
            log.info("shutdown requested: refusing new calls, draining %d", len(self._calls))
            self._stopping.set()

    def _set_state(self, state: ServiceState) -> None:
        self.state = state
        log.info("service %s", state.value)
        self._hook(self.hooks.state_changed, state)

    def _hook(self, hook: Callable[..., None] | None, *args: Any) -> None:
        if hook is None:
            return
        try:
            hook(*args)
        except Exception:
            log.exception("a service hook failed")

    # -- the run ------------------------------------------------------------------------------

    async def run(self) -> None:
        """Start, take calls until `stop()` (or a signal), drain, close. Errors at start (a
        port in use, a speech model missing, the trunk refusing us) raise."""
        loop = asyncio.get_running_loop()
        if self.handle_signals:
            for sig in (signal.SIGTERM, signal.SIGINT):
                loop.add_signal_handler(sig, self.stop)
        try:
            async with AsyncExitStack() as stack:
                agent = await self._make_agent(stack)
                stt = self._make_stt(stack)
                # What records and reports the calls is opened before the engine and closed
                # after it (the stack unwinds in reverse): engine.close may still end a call or
                # a transfer, whose record and webhooks must not be lost.
                if self.config.records is not None:
                    self.records = await Records.open(self.config.records.path)
                    stack.push_async_callback(self.records.close)
                await self._start_webhooks(stack)
                engine = self.engine = engine_from_config(self.config)
                await engine.start()
                stack.push_async_callback(engine.close)
                self.metrics.attach(engine)
                await self._start_http(stack, engine)
                registration = await register_trunk(engine, self.config)
                if registration is not None:
                    log.info("registered at %s", self.config.trunk and self.config.trunk.registrar)
                for companion in self.companions:
                    await stack.enter_async_context(companion(self))
                self._set_state(ServiceState.RUNNING)
                log.info("ready: taking calls at %s", engine.uri)
                self.ready.set()
                accepting = asyncio.ensure_future(self._accept(engine, agent, stt))
                try:
                    await self._stopping.wait()
                    if self.http is not None:
                        self.http.draining = True
                    # Proxies pinging us with OPTIONS (kamailio's dispatcher) now see the 503
                    # that new INVITEs get, and stop sending calls here.
                    engine.ua.refusing_calls = (503, "Service Unavailable", RETRY_AFTER)
                    self._set_state(ServiceState.DRAINING)
                    await self._drain()
                finally:
                    accepting.cancel()
                    with contextlib.suppress(asyncio.CancelledError):
                        await accepting
                    await self._end_calls()  # anything left (also when run() is cancelled)
                    await self._settle_api()
                # Leaving the stack: the HTTP API stops, the engine closes, then the webhooks
                # are flushed (bounded) and the records store closes.
        finally:
            if self.handle_signals:
                for sig in (signal.SIGTERM, signal.SIGINT):
                    loop.remove_signal_handler(sig)
            self._set_state(ServiceState.STOPPED)

    async def _start_webhooks(self, stack: AsyncExitStack) -> None:
        """What ``[webhooks]`` turns on, flushed (bounded) and stopped by `stack`."""
        hooks = self.config.webhooks
        if hooks is None or not hooks.urls:
            return
        secret = hooks.secret.get_secret_value() if hooks.secret is not None else None
        sender = self.webhooks = WebhookSender(hooks.urls, secret)
        sender.on_count = self.metrics.count_webhook
        await sender.start()
        stack.push_async_callback(sender.stop, WEBHOOK_FLUSH)
        log.info("webhooks: %d URL(s)", len(hooks.urls))

    async def _start_http(self, stack: AsyncExitStack, engine: Engine) -> None:
        """What ``[http]`` turns on, stopped by `stack` (before the engine closes)."""
        http = self.config.http
        if http is None or not http.enabled:
            return
        token = http.token.get_secret_value() if http.token is not None else ""
        api = self.api = EngineServiceApi(
            engine,
            self.config.allow,
            records=self.records,
            recorded=self._recorded.get,
            on_event=[self._api_event],
            on_finish=[self._api_finished],
            call_of=self._call_of,
        )
        host, port = http.address
        server = self.http = HttpApi(
            api,
            token=token,
            plans=self.config.effective_plans,
            allow=self.config.allow,
            host=host,
            port=port,
            metrics=self.metrics,
            collect=lambda: self.metrics.collect_engine(engine),
            retry_after=RETRY_AFTER,
        )
        await server.start()
        stack.push_async_callback(server.stop)

    def _observe(self, event: TransferEvent) -> None:
        """Every transfer event, whoever started the transfer: metrics and webhooks."""
        self.metrics.observe_event(event)
        if self.webhooks is not None:
            try:
                self.webhooks.send_event(event)
            except Exception:
                log.exception("webhooks could not queue %s", event)

    def _api_event(self, event: TransferEvent) -> None:
        """An event of a transfer the API started: as the agent's, with the call's session for
        `hooks.transfer_event` (none once the call's agent is over: then no hook)."""
        self._observe(event)
        call_id = self.api.call_id_of(event.transfer_id) if self.api is not None else None
        session = self.sessions.get(call_id) if call_id is not None else None
        if session is not None:
            self._hook(self.hooks.transfer_event, session, event)

    def _call_of(self, transfer_id: str) -> str | None:
        """The call of a transfer an agent started (for the API, which did not start it)."""
        for session in self.sessions.values():
            if transfer_id in session.transfer_ids:
                return session.call_id
        return None

    def _finished(
        self, transfer_id: str, call_id: str, outcome: TransferOutcome, record: HandoffRecord
    ) -> None:
        if self.webhooks is not None:
            self.webhooks.send_handoff(
                transfer_id=transfer_id, call_id=call_id, outcome=outcome, record=record
            )

    def _api_finished(
        self, transfer_id: str, call_id: str, outcome: TransferOutcome, record: HandoffRecord
    ) -> None:
        log.info("transfer %s (API) outcome %s", transfer_id, outcome.reason.value)
        self._finished(transfer_id, call_id, outcome, record)

    def _session_finished(
        self,
        session: CallSession,
        transfer_id: str,
        outcome: TransferOutcome,
        record: HandoffRecord,
    ) -> None:
        try:
            self._finished(transfer_id, session.call_id, outcome, record)
        except Exception:
            log.exception("webhooks could not queue the handoff of transfer %s", transfer_id)

    async def _settle_api(self) -> None:
        """The transfers the API started end with their calls; wait for them (bounded)."""
        if self.api is None:
            return
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(END_GRACE):
                await self.api.drain()

    async def _make_agent(self, stack: AsyncExitStack) -> Agent:
        if self._agent is not None:
            return self._agent
        function = resolve_agent(self.config)
        if function is not None:
            return function
        if self.default_plan is None:
            raise ValueError("the scripted agent needs a plan: add a [plans.NAME] section")
        scripted = ScriptedAgent()
        stack.callback(scripted.close)
        await scripted.warm_up()
        return scripted

    def _make_stt(self, stack: AsyncExitStack) -> SpeechToText | None:
        """What `CallSession.listen` transcribes with: the configured provider, or offline
        pocketsphinx (loaded on first use, so a keys-only agent never pays for it)."""
        configured = speech_to_text(self.config)
        if configured is not None:
            return configured
        own = PocketsphinxSTT()
        stack.callback(own.close)
        return own

    async def _accept(self, engine: Engine, agent: Agent, stt: SpeechToText | None) -> None:
        while True:
            call = await engine.next_call()
            if self._stopping.is_set():
                await refuse(call)
                continue
            task = asyncio.ensure_future(self._serve_call(engine, call, agent, stt))
            self._calls.add(task)
            task.add_done_callback(self._calls.discard)

    async def _drain(self) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.drain_timeout
        if self._calls:
            log.info("draining %d call(s), at most %.1f s", len(self._calls), self.drain_timeout)
            _, pending = await asyncio.wait(set(self._calls), timeout=self.drain_timeout)
            if pending:
                log.info("drain timeout: ending %d call(s)", len(pending))
        if self.api is not None:  # transfers the API started, on calls that are still up
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout_at(deadline):
                    await self.api.drain()
        # New INVITEs are refused while draining, also after the last call ended and until the
        # engine closes: an INVITE already queued must not wait in vain.

    async def _end_calls(self) -> None:
        """End every call still up with a BYE and let each finish its record (bounded)."""
        if not self._calls:
            return
        for session in list(self.sessions.values()):
            with contextlib.suppress(Exception):
                await session.hangup()
        _, pending = await asyncio.wait(set(self._calls), timeout=END_GRACE)
        for task in pending:
            task.cancel()
        if pending:
            await asyncio.gather(*pending, return_exceptions=True)

    # -- one call -----------------------------------------------------------------------------

    async def _serve_call(
        self, engine: Engine, call: IncomingCall, agent: Agent, stt: SpeechToText | None
    ) -> None:
        with log_context(call_id=call.call_id):
            await self._serve_call_in_context(engine, call, agent, stt)

    async def _serve_call_in_context(
        self, engine: Engine, call: IncomingCall, agent: Agent, stt: SpeechToText | None
    ) -> None:
        try:
            await call.ring()
            await call.answer()
        except CallFailed as exc:
            log.info("call %s not answered: %s", call.call_id, exc)
            return
        caller = str(call.caller.uri)
        log.info("call %s from %s answered", call.call_id, caller)
        try:
            async with AsyncExitStack() as stack:
                recorded = None
                if self.records is not None:
                    recorded = await stack.enter_async_context(
                        RecordedCall(self.records, engine, call, caller=caller)
                    )
                    self._recorded[call.call_id] = recorded
                    stack.callback(self._recorded.pop, call.call_id, None)
                session = CallSession(
                    engine,
                    call,
                    plans=self.config.effective_plans,
                    default_plan=self.default_plan,
                    summarizer=summarizer_from_config(self.config),
                    stt=stt,
                    recorded=recorded,
                    on_event=self._on_event,
                    on_finish=self._session_finished,
                )
                self.sessions[call.call_id] = session
                self._hook(self.hooks.call_started, session)
                try:
                    await self._run_agent(agent, session)
                finally:
                    del self.sessions[call.call_id]
                    self._hook(self.hooks.call_ended, session)
        except Exception:  # the agent's own errors are handled in _run_agent: this is ours
            log.exception("call %s failed", call.call_id)
            await call.hangup()
        log.info("call %s ended (%s)", call.call_id, call.end_reason or EndReason.LOCAL_BYE)

    def _on_event(self, session: CallSession, event: TransferEvent) -> None:
        self._observe(event)
        self._hook(self.hooks.transfer_event, session, event)

    async def _run_agent(self, agent: Agent, session: CallSession) -> None:
        """Run the agent until it returns or the caller is gone; then the call ends: hung up
        if the agent left it with the AI, or when caller or human hang up if it was handed
        over."""
        work = asyncio.ensure_future(_call_agent(agent, session))
        ended = asyncio.ensure_future(session.call.wait_ended())
        try:
            await asyncio.wait({work, ended}, return_when=asyncio.FIRST_COMPLETED)
            if not work.done():
                # The caller hung up. A transfer under way notices and ends by itself (with
                # its outcome recorded); any other wait of the agent is cut here.
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(HANGUP_GRACE):
                        await session.idle.wait()
                        await asyncio.wait({work}, timeout=0.5)
            if work.done() and not work.cancelled():
                _log_agent_error(work, session.call_id)
            if self.api is not None:
                # A transfer started through the API on this call may still hold the caller
                # (the agent may have returned meanwhile): it decides how this ends.
                await self.api.wait_call(session.call_id)
            if session.transferred:
                await session.call.wait_ended()
            else:
                await session.hangup()
        finally:
            for task in (work, ended):
                task.cancel()
            await asyncio.gather(work, ended, return_exceptions=True)


def _log_agent_error(work: asyncio.Future[None], call_id: str) -> None:
    """An agent that raised is a bug of the agent, not of the call: logged here, and the call
    ends as any other (its API transfer waited for, its record completed)."""
    error = work.exception()
    if error is not None and not isinstance(error, LegGone):
        log.error("call %s: the agent failed", call_id, exc_info=error)


async def _call_agent(agent: Agent, session: CallSession) -> None:
    result = agent(session)
    if inspect.isawaitable(result):
        await result


async def refuse(call: IncomingCall) -> None:
    """503 with Retry-After: we are shutting down, another server (or later) will answer."""
    await call.reject(503, "Service Unavailable", headers=[("Retry-After", str(RETRY_AFTER))])
    log.info("call %s refused: shutting down", call.call_id)

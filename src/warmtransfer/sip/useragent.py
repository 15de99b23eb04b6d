"""The asyncio layer of the SIP stack: one UDP socket, timers, and the routing of messages to
transactions, dialogs and calls. Everything protocol-shaped happens in the sans-IO modules.

One `UserAgent` serves any number of calls in both directions. Inbound calls are offered on
`incoming` (an asyncio queue) or to `on_call`; outbound calls are placed with `call()`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import re
from collections.abc import Awaitable, Callable, Coroutine, Mapping
from dataclasses import dataclass
from typing import Any

from warmtransfer.media.clock import PacingClock
from warmtransfer.media.session import RtpSession
from warmtransfer.sip import transaction
from warmtransfer.sip.call import (
    Call,
    CallFailed,
    CallState,
    EndReason,
    IncomingCall,
    OutgoingCall,
)
from warmtransfer.sip.message import (
    Headers,
    SipParseError,
    SipRequest,
    SipResponse,
    Via,
    call_id,
    cseq,
    is_keepalive,
    make_response,
    new_branch,
    new_call_id,
    new_tag,
    parse_message,
    serialize,
)
from warmtransfer.sip.sanitize import display_name, header_name, header_value
from warmtransfer.sip.sdp import build_offer
from warmtransfer.sip.transaction import (
    Action,
    ClientInviteTransaction,
    ClientNonInviteTransaction,
    Deliver,
    OkRetransmitter,
    Send,
    ServerInviteTransaction,
    ServerNonInviteTransaction,
    Terminated,
    TimedOut,
    Transaction,
    TxState,
)
from warmtransfer.sip.uri import NameAddr, SipUri, is_token

log = logging.getLogger(__name__)

Address = tuple[str, int]
ALLOW = "INVITE, ACK, CANCEL, BYE, OPTIONS, INFO, UPDATE"
_ALLOWED = frozenset(method.strip() for method in ALLOW.split(","))
_NUMBER = re.compile(r"\+?[0-9]{1,32}")
TraceHook = Callable[[str, bytes, Address, float], None]


@dataclass(frozen=True)
class TraceEntry:
    direction: str  # "in" or "out"
    data: bytes
    addr: Address
    at: float


class _Transport(asyncio.DatagramProtocol):
    def __init__(self, ua: UserAgent) -> None:
        self.ua = ua
        self.closed = asyncio.get_running_loop().create_future()

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.closed.done():
            self.closed.set_result(None)

    def datagram_received(self, data: bytes, addr: Address) -> None:
        self.ua.datagram_received(data, addr[:2])

    def error_received(self, exc: Exception) -> None:
        log.debug("SIP socket error: %s", exc)


class UserAgent:
    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        user: str = "warmtransfer",
        clock: PacingClock | None = None,
        name: str = "",
        user_agent: str = "warmtransfer/0.1",
        on_call: Callable[[IncomingCall], Awaitable[None] | None] | None = None,
    ) -> None:
        self.host = host
        self.port = port
        self.media_host = host
        self.user = user
        self.name = name or user
        self.user_agent = user_agent
        self.clock = clock or PacingClock()
        self.incoming: asyncio.Queue[IncomingCall] = asyncio.Queue()
        self.on_call = on_call
        self.trace: list[TraceEntry] = []
        self.trace_hooks: list[TraceHook] = []
        self.calls: dict[str, Call] = {}
        self._transport: asyncio.DatagramTransport | None = None
        self._protocol: _Transport | None = None
        self._media: set[RtpSession] = set()
        self._client: dict[tuple[str, str], Transaction] = {}
        self._server: dict[tuple[str, str], Transaction] = {}
        self._listeners: dict[int, Callable[[SipResponse | None], None]] = {}
        self._timers: dict[int, asyncio.TimerHandle] = {}
        self._ok_retransmit: dict[str, tuple[OkRetransmitter, asyncio.TimerHandle | None]] = {}
        self._cancel_deadlines: dict[str, asyncio.TimerHandle] = {}
        self._tasks: set[asyncio.Task[Any]] = set()

    # -- lifecycle --------------------------------------------------------------------------

    async def start(self) -> UserAgent:
        loop = asyncio.get_running_loop()
        transport, protocol = await loop.create_datagram_endpoint(
            lambda: _Transport(self), local_addr=(self.host, self.port)
        )
        self._transport = transport
        self._protocol = protocol
        self.port = transport.get_extra_info("sockname")[1]
        return self

    async def close(self) -> None:
        """Hang up every call, stop every timer and close the socket."""
        calls = list(self.calls.values())
        if calls:  # at once, not one after the other: a dead peer costs 2 s, not 2 s a call
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(2.0):
                    await asyncio.gather(*(call.hangup() for call in calls), return_exceptions=True)
        for call in list(self.calls.values()):
            call._finish(EndReason.CLOSED)
        # Whoever still waits for a response (a hang-up's BYE, a request()) hears "no response"
        # now rather than never: the transactions that would have answered are going away.
        for listener in list(self._listeners.values()):
            with contextlib.suppress(Exception):
                listener(None)
        self._listeners.clear()
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
        for handle in self._timers.values():
            handle.cancel()
        self._timers.clear()
        for _, ok_handle in self._ok_retransmit.values():
            if ok_handle is not None:
                ok_handle.cancel()
        self._ok_retransmit.clear()
        for handle in self._cancel_deadlines.values():
            handle.cancel()
        self._cancel_deadlines.clear()
        self._client.clear()
        self._server.clear()
        if self._transport is not None:
            self._transport.close()
            self._transport = None
        # Sockets close on the loop's next turn: wait, so "closed" means closed.
        waits: list[Awaitable[None]] = [m.wait_closed() for m in self._media]
        if self._protocol is not None:
            waits.append(self._protocol.closed)
        for media in self._media:
            media.close()
        self._media.clear()
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(2.0):
                await asyncio.gather(*waits)

    async def __aenter__(self) -> UserAgent:
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    @property
    def address(self) -> Address:
        return (self.host, self.port)

    @property
    def uri(self) -> str:
        return f"sip:{self.user}@{self.host}:{self.port}"

    def contact(self) -> str:
        return f"<sip:{self.user}@{self.host}:{self.port}>"

    def via(self) -> str:
        """Via without branch; callers append `;branch=` (Dialog.create_request does)."""
        return f"SIP/2.0/UDP {self.host}:{self.port}"

    def spawn(self, coro: Coroutine[Any, Any, Any]) -> None:
        """Background protocol work owned by the user agent, awaited or cancelled on close."""
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def forget(self, call: Call) -> None:
        self.calls.pop(call.call_id, None)
        pending = self._ok_retransmit.pop(call.call_id, None)
        if pending is not None and pending[1] is not None:
            pending[1].cancel()

    # -- wire -------------------------------------------------------------------------------

    def send(self, message: SipRequest | SipResponse, addr: Address) -> None:
        if self._transport is None:
            return
        data = serialize(message)
        self._transport.sendto(data, addr)
        self._record("out", data, addr)

    def _record(self, direction: str, data: bytes, addr: Address) -> None:
        at = asyncio.get_running_loop().time()
        self.trace.append(TraceEntry(direction, data, addr, at))
        if len(self.trace) > 2000:
            del self.trace[:1000]
        for hook in self.trace_hooks:
            hook(direction, data, addr, at)

    def datagram_received(self, data: bytes, addr: Address) -> None:
        if is_keepalive(data):
            return
        self._record("in", data, addr)
        try:
            message = parse_message(data)
        except SipParseError as exc:
            log.info("malformed SIP message from %s:%s: %s", *addr, exc)
            try:
                bad = _bad_request(data, str(exc), self.host)
            except Exception:  # never let a reply to garbage take the socket down
                log.exception("could not answer a malformed request from %s:%s", *addr)
                return
            if bad is not None:
                self.send(bad, addr)
            return
        try:
            if isinstance(message, SipRequest):
                self._on_request(message, addr)
            else:
                self._on_response(message, addr)
        except Exception:  # a bug in handling one message must not take the socket down
            log.exception("error handling a SIP message from %s:%s", *addr)

    # -- transactions -----------------------------------------------------------------------

    def _run(self, tx: Transaction, actions: list[Action]) -> None:
        for action in actions:
            if isinstance(action, Send):
                self.send(action.message, action.addr)
            elif isinstance(action, Deliver):
                listener = self._listeners.get(id(tx))
                if listener is not None:
                    listener(action.response)
            elif isinstance(action, TimedOut):
                listener = self._listeners.get(id(tx))
                if listener is not None:
                    listener(None)
            elif isinstance(action, Terminated):
                self._drop(tx)
        self._schedule(tx)

    def _drop(self, tx: Transaction) -> None:
        key = (tx.branch, tx.request.method)
        table = (
            self._server
            if isinstance(tx, ServerInviteTransaction | ServerNonInviteTransaction)
            else self._client
        )
        if table.get(key) is tx:
            del table[key]
        self._listeners.pop(id(tx), None)
        handle = self._timers.pop(id(tx), None)
        if handle is not None:
            handle.cancel()

    def _schedule(self, tx: Transaction) -> None:
        handle = self._timers.pop(id(tx), None)
        if handle is not None:
            handle.cancel()
        deadline = tx.next_deadline
        if deadline is None or tx.terminated:
            return
        loop = asyncio.get_running_loop()
        self._timers[id(tx)] = loop.call_at(deadline, self._fire, tx)

    def _fire(self, tx: Transaction) -> None:
        self._timers.pop(id(tx), None)
        self._run(tx, tx.on_timer(asyncio.get_running_loop().time()))

    def _start_client(
        self,
        request: SipRequest,
        addr: Address,
        listener: Callable[[SipResponse | None], None],
    ) -> Transaction:
        now = asyncio.get_running_loop().time()
        tx: ClientInviteTransaction | ClientNonInviteTransaction
        if request.method == "INVITE":
            tx = ClientInviteTransaction(request, addr)
        else:
            tx = ClientNonInviteTransaction(request, addr)
        self._client[(tx.branch, request.method)] = tx
        self._listeners[id(tx)] = listener
        self._run(tx, tx.start(now))
        return tx

    async def request(self, request: SipRequest, addr: Address) -> SipResponse:
        """Send a non-INVITE request and wait for its final response (CallFailed on timeout)."""
        future: asyncio.Future[SipResponse] = asyncio.get_running_loop().create_future()

        def listener(response: SipResponse | None) -> None:
            if future.done():
                return
            if response is None:
                future.set_exception(CallFailed(408, f"no response to {request.method}"))
            elif response.status >= 200:
                future.set_result(response)

        self._start_client(request, addr, listener)
        return await future

    def respond(self, tx: Transaction, response: SipResponse) -> None:
        assert isinstance(tx, ServerInviteTransaction | ServerNonInviteTransaction)
        self._run(tx, tx.respond(response, asyncio.get_running_loop().time()))

    def retransmit_ok(self, call: IncomingCall, ok: SipResponse) -> None:
        loop = asyncio.get_running_loop()
        retransmitter = OkRetransmitter(ok, call.tx.addr, loop.time(), reliable=False)
        self._ok_retransmit[call.call_id] = (retransmitter, None)
        self._arm_ok(call, retransmitter)

    def _arm_ok(self, call: IncomingCall, retransmitter: OkRetransmitter) -> None:
        deadline = retransmitter.next_deadline
        if deadline is None:
            self._ok_retransmit.pop(call.call_id, None)
            return
        loop = asyncio.get_running_loop()

        def fire() -> None:
            for action in retransmitter.on_timer(loop.time()):
                if isinstance(action, Send):
                    self.send(action.message, action.addr)
                elif isinstance(action, TimedOut):
                    log.info("call %s: no ACK for our 200 OK; hanging up", call.call_id)
                    self.spawn(call.hangup())
            self._arm_ok(call, retransmitter)

        self._ok_retransmit[call.call_id] = (retransmitter, loop.call_at(deadline, fire))

    def send_cancel(self, invite: SipRequest) -> None:
        """CANCEL our INVITE (RFC 3261 §9.1): same Request-URI, top Via, Call-ID and CSeq number."""
        headers = Headers()
        headers.add("Via", invite.headers.get_all("Via")[0])
        headers.add("Max-Forwards", "70")
        for name in ("From", "To", "Call-ID"):
            value = invite.headers.get(name)
            if value is not None:
                headers.add(name, value)
        headers.add("CSeq", f"{invite.cseq[0]} CANCEL")
        for route in invite.headers.get_all("Route"):
            headers.add("Route", route)
        cancel = SipRequest("CANCEL", invite.uri, headers)
        tx = self._client.get((invite.vias[0].branch or "", "INVITE"))
        addr = tx.addr if tx is not None else invite.uri.host_port()
        self._start_client(cancel, addr, lambda response: None)
        if tx is not None and invite.call_id not in self._cancel_deadlines:
            loop = asyncio.get_running_loop()
            self._cancel_deadlines[invite.call_id] = loop.call_later(
                64 * transaction.T1, self._give_up_invite, tx
            )

    def _give_up_invite(self, tx: Transaction) -> None:
        """RFC 3261 9.1: no final response 64*T1 after our CANCEL, so the INVITE is over.

        Once a provisional response came, an INVITE client transaction has no timer of its own:
        without this, a peer that goes silent would keep the call and its media socket forever.
        """
        invite = tx.request
        self._cancel_deadlines.pop(invite.call_id, None)
        if tx.state in (TxState.CALLING, TxState.PROCEEDING):
            self._drop(tx)
        call = self.calls.get(invite.call_id)
        if isinstance(call, OutgoingCall) and call.invite is invite:
            log.info("call %s: no final response to our CANCEL; giving up", call.call_id)
            call._finish(EndReason.CANCELLED)

    # -- inbound messages -------------------------------------------------------------------

    def _on_response(self, response: SipResponse, addr: Address) -> None:
        vias = response.vias
        branch = vias[0].branch or "" if vias else ""
        method = response.cseq[1]
        tx = self._client.get((branch, method))
        if tx is not None:
            assert isinstance(tx, ClientInviteTransaction | ClientNonInviteTransaction)
            self._run(tx, tx.on_response(response, asyncio.get_running_loop().time()))
            return
        if method == "INVITE" and 200 <= response.status < 300:
            call = self.calls.get(response.call_id)
            if isinstance(call, OutgoingCall):
                call.on_ok_retransmission()

    def _on_request(self, request: SipRequest, addr: Address) -> None:
        request = _stamp_received(request, addr)
        method = request.method
        branch = request.vias[0].branch or ""
        now = asyncio.get_running_loop().time()
        if method == "ACK":
            self._on_ack(request, branch, now)
            return
        existing = self._server.get((branch, method))
        if existing is not None:
            assert isinstance(existing, ServerInviteTransaction | ServerNonInviteTransaction)
            self._run(existing, existing.on_retransmission(now))
            return
        if method == "INVITE":
            self._on_invite(request, addr, now)
            return
        tx = ServerNonInviteTransaction(request, addr)
        self._server[(branch, method)] = tx
        self.respond(tx, self._answer_non_invite(request, branch))

    def _answer_non_invite(self, request: SipRequest, branch: str) -> SipResponse:
        method = request.method
        call = self.calls.get(request.call_id)
        if method == "CANCEL":
            invite_tx = self._server.get((branch, "INVITE"))
            if not isinstance(invite_tx, ServerInviteTransaction):
                return make_response(request, 481)
            if isinstance(call, IncomingCall):
                call.on_cancel()
            elif call is None:
                # The call is still being set up (_offer_call opens its media): end the INVITE
                # here; _offer_call sees the transaction is over and offers nothing.
                self.respond(invite_tx, make_response(invite_tx.request, 487, to_tag=new_tag()))
            else:
                return make_response(request, 481)
            return make_response(request, 200)
        if method == "OPTIONS" and request.to.tag is None:
            return make_response(
                request, 200, extra=[("Allow", ALLOW), ("Accept", "application/sdp")]
            )
        if call is None or request.to.tag is None:
            if method in ("BYE", "INFO", "UPDATE", "OPTIONS"):
                return make_response(request, 481)
            return make_response(
                request, 405 if method in _ALLOWED else 501, extra=[("Allow", ALLOW)]
            )
        if call.dialog is not None and not call.dialog.matches(request):
            return make_response(request, 481)
        if call.dialog is not None and not call.dialog.accepts(request):
            return make_response(request, 500, "Out of Order CSeq")
        if method == "BYE":
            call.on_bye()
            return make_response(request, 200)
        return call.on_request(request)

    def _on_ack(self, request: SipRequest, branch: str, now: float) -> None:
        tx = self._server.get((branch, "INVITE"))
        if isinstance(tx, ServerInviteTransaction):
            self._run(tx, tx.on_ack(now))
            return
        pending = self._ok_retransmit.pop(request.call_id, None)
        if pending is not None:
            pending[0].on_ack()
            if pending[1] is not None:
                pending[1].cancel()
        call = self.calls.get(request.call_id)
        if isinstance(call, IncomingCall):
            call.on_ack()

    def _on_invite(self, request: SipRequest, addr: Address, now: float) -> None:
        call = self.calls.get(request.call_id)
        branch = request.vias[0].branch or ""
        if isinstance(call, IncomingCall) and call.invite.vias[0].branch == branch:
            # A retransmission after our 2xx ended the transaction: the 2xx is being
            # retransmitted already (OkRetransmitter); this is never a second call.
            return
        tx = ServerInviteTransaction(request, addr)
        self._server[(branch, "INVITE")] = tx
        if request.to.tag is not None:
            if call is None or (call.dialog is not None and not call.dialog.matches(request)):
                self.respond(tx, make_response(request, 481))
            elif call.dialog is not None and not call.dialog.accepts(request):
                self.respond(tx, make_response(request, 500, "Out of Order CSeq"))
            else:
                self.respond(tx, call.on_request(request))
            return
        if call is not None:  # same Call-ID, new branch, no tag: a loop or a merged request
            self.respond(tx, make_response(request, 482))
            return
        self.respond(tx, make_response(request, 100))
        self.spawn(self._offer_call(request, tx))

    async def _offer_call(self, request: SipRequest, tx: ServerInviteTransaction) -> None:
        media = await self._open_media(f"{self.name} in")
        if tx.state is not TxState.PROCEEDING:  # CANCELled while the media socket opened
            media.close()
            return
        call = IncomingCall(self, request, tx, media, new_tag())
        self.calls[call.call_id] = call
        if self.on_call is not None:
            result = self.on_call(call)
            if result is not None:
                self.spawn(_guard(result, call))
        else:
            self.incoming.put_nowait(call)

    async def _open_media(self, name: str) -> RtpSession:
        media = await RtpSession.open(self.media_host, self.clock, name=name)
        self._media.add(media)
        media.closed_callback = self._media.discard
        return media

    async def next_call(self) -> IncomingCall:
        return await self.incoming.get()

    # -- outbound calls ---------------------------------------------------------------------

    async def call(
        self,
        uri: str | SipUri,
        *,
        caller_id: str | None = None,
        display: str | None = None,
        headers: Mapping[str, str] | None = None,
        ring_timeout: float | None = None,
        on_ringing: Callable[[int], None] | None = None,
        proxy: Address | None = None,
    ) -> OutgoingCall:
        """Place a call and return it once answered.

        Raises `CallFailed` with the final status (486, 603…), 408 on no response, 487 after
        the ring timeout (our CANCEL). If the awaiting task is cancelled, the INVITE is
        CANCELled before the CancelledError propagates.
        """
        target = uri if isinstance(uri, SipUri) else SipUri.parse(uri)
        addr = proxy or await _resolve(target)  # before any socket opens: nothing to leak
        media = await self._open_media(f"{self.name} out")
        try:
            invite = self._build_invite(target, media.local[1], caller_id, display, headers)
        except BaseException:
            media.close()
            raise
        call = OutgoingCall(self, invite, media)
        self.calls[call.call_id] = call

        def listener(response: SipResponse | None) -> None:
            if response is None:
                call.on_timeout()
            elif response.status < 200:
                was_ringing = call.state is CallState.RINGING
                call.on_provisional(response)
                if on_ringing is not None and response.status in (180, 183) and not was_ringing:
                    on_ringing(response.status)
            else:
                call.on_final(response)

        self._start_client(invite, addr, listener)
        try:
            async with asyncio.timeout(ring_timeout):
                response = await asyncio.shield(call.final)
        except TimeoutError as exc:
            call.cancel()
            with contextlib.suppress(TimeoutError, CallFailed):
                async with asyncio.timeout(4.0):
                    await asyncio.shield(call.final)
            if not call.ended.is_set():
                call._finish(EndReason.CANCELLED)
            raise CallFailed(
                call.end_status or 487, "No Answer (ring timeout)", cancelled=True
            ) from exc
        except asyncio.CancelledError:
            call.cancel()
            raise
        except CallFailed:
            raise
        if response.status >= 300:
            raise CallFailed(response.status, response.reason)
        if call.state is not CallState.ANSWERED or call.negotiated is None:
            await call.hangup()
            raise CallFailed(call.end_status or 488, "answered without usable media")
        return call

    def _build_invite(
        self,
        target: SipUri,
        rtp_port: int,
        caller_id: str | None,
        display: str | None,
        extra: Mapping[str, str] | None,
    ) -> SipRequest:
        from_uri = self._from_uri(caller_id)
        from_party = NameAddr(from_uri, display_name(display) if display else None).with_tag(
            new_tag()
        )
        offer = build_offer(self.media_host, rtp_port, session_id=random.getrandbits(31))
        headers = Headers()
        headers.add("Via", f"{self.via()};branch={new_branch()};rport")
        headers.add("Max-Forwards", "70")
        headers.add("From", str(from_party))
        headers.add("To", str(NameAddr(target)))
        headers.add("Call-ID", new_call_id(self.host))
        headers.add("CSeq", "1 INVITE")
        headers.add("Contact", self.contact())
        headers.add("Allow", ALLOW)
        headers.add("User-Agent", self.user_agent)
        for name, value in (extra or {}).items():
            headers.add(header_name(name), header_value(value))
        headers.add("Content-Type", "application/sdp")
        return SipRequest("INVITE", target, headers, offer.to_bytes())

    def _from_uri(self, caller_id: str | None) -> SipUri:
        if not caller_id:
            return SipUri.parse(f"sip:{self.user}@{self.host}")
        if caller_id.startswith(("sip:", "sips:", "tel:")):
            return SipUri.parse(caller_id)
        user = caller_id.strip()
        if not _NUMBER.fullmatch(user):  # ASCII digits only: str.isdigit() takes "١٢٣" too
            raise ValueError(f"caller ID {caller_id!r} is neither a SIP URI nor a number")
        return SipUri.parse(f"sip:{user}@{self.host}")


async def _guard(result: Awaitable[None], call: IncomingCall) -> None:
    try:
        await result
    except Exception:
        log.exception("call handler failed for %s", call.call_id)
        await call.hangup()


async def _resolve(uri: SipUri) -> Address:
    host, port = uri.host_port()
    loop = asyncio.get_running_loop()
    infos = await loop.getaddrinfo(host, port, type=2)  # SOCK_DGRAM
    if not infos:
        raise CallFailed(None, f"cannot resolve {host}")
    address = infos[0][4]
    return (str(address[0]), int(address[1]))


def _stamp_received(request: SipRequest, addr: Address) -> SipRequest:
    """RFC 3581: record where the request came from in the top Via (received, rport)."""
    vias = request.headers.get_all("Via")
    if not vias:
        return request
    top = request.vias[0]
    if top.has_param("rport"):
        stamped = top.with_params(received=addr[0], rport=str(addr[1]))
    elif top.host != addr[0]:
        stamped = top.with_params(received=addr[0])
    else:
        return request
    request.headers.remove("Via")
    request.headers.add("Via", str(stamped))
    for via in vias[1:]:
        request.headers.add("Via", via)
    return request


_MANDATORY = ("Via", "From", "To", "Call-ID", "CSeq")


def _bad_request(data: bytes, error: str, host: str) -> SipResponse | None:
    """A 400 for a malformed request that can still be answered (RFC 3261 8.2, 21.4.1), or None.

    Only a request line naming a method other than ACK, with Via (whose top entry parses),
    From, To, Call-ID and CSeq readable, gets one: they are copied as received, and the response
    goes back to the source address, never to one named in the message. Anything less (garbage,
    a response, a header section cut before those headers) is dropped. Stateless on purpose:
    a retransmission gets the same 400 again.
    """
    head = re.split(rb"\r?\n\r?\n", data.lstrip(b"\r\n"), maxsplit=1)[0]
    try:
        lines = head.decode("utf-8").split("\n")
    except UnicodeDecodeError:
        return None
    parts = lines[0].rstrip("\r").split(" ")
    if len(parts) != 3 or not is_token(parts[0]) or parts[0] == "ACK":
        return None
    if not parts[2].upper().startswith("SIP/"):
        return None
    received = Headers()
    for line in lines[1:]:
        name, colon, value = line.rstrip("\r").partition(":")
        name = name.strip(" \t")
        if colon and is_token(name) and "\r" not in value and len(value) <= 1024:
            received.add(name, value.strip(" \t"))
    values = {name: received.get_all(name) for name in _MANDATORY}
    if not all(values.values()):
        return None
    try:
        Via.parse(values["Via"][0])
    except SipParseError:
        return None
    to = values["To"][0]
    if ";tag=" not in to.replace(" ", "").lower():
        to = f"{to};tag={new_tag()}"
    headers = Headers()
    for via in values["Via"]:
        headers.add("Via", via)
    headers.add("From", values["From"][0])
    headers.add("To", to)
    headers.add("Call-ID", values["Call-ID"][0])
    headers.add("CSeq", values["CSeq"][0])
    bad = SipResponse(400, "Bad Request", headers)
    try:  # the peer matches a response by its top Via branch and its CSeq: both must parse
        cseq(bad)
        call_id(bad)
    except SipParseError:
        return None
    warning = header_value(error, 200).replace('"', "'").replace("\\", "/")
    headers.add("Warning", f'399 {host} "{warning}"')
    return bad

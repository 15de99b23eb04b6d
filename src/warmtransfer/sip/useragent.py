"""The asyncio layer of the SIP stack: timers, and the routing of messages to transactions,
dialogs and calls. Everything protocol-shaped happens in the sans-IO modules, and the sockets
(UDP, TCP, TLS) in `transports`.

One `UserAgent` serves any number of calls in both directions. Inbound calls are offered on
`incoming` (an asyncio queue) or to `on_call`; outbound calls are placed with `call()`.

Carriers and PBXs want to know who we are, and we want to know who calls us:
- `credentials=Credentials(...)` answers a 401/407 to our INVITE, REGISTER, BYE or any request
  sent with `request()` by resending it once with digest credentials (same Call-ID and From tag,
  CSeq + 1, new branch). It never loops: a second challenge after our credentials is the final
  answer unless it says `stale=true` (then one more try with the new nonce).
- `register()` keeps a binding at a registrar, refreshed at 80 % of the granted Expires by a
  task the user agent owns; `close()` removes it (Expires: 0).
- `listen=("udp", "tcp", "tls")` with `tls=TlsConfig(...)` chooses the transports we accept on;
  an outbound call or registration uses the transport its URI names (`;transport=tcp`, sips:).
  The transport layer fills in the top Via and our Contact for the transport a message actually
  travels on (RFC 3261 18.1.1), so the layers above build every message the same way.
- `inbound=InboundPolicy(...)` decides who may start anything with us: an out-of-dialog request
  from an address outside `allow_ips` gets 403, and with `credentials` an INVITE must carry a
  valid digest answer to a 401 challenge. Both refusals are stateless: a flood of INVITEs costs
  a response each, never a transaction or a table entry.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import random
import re
import time
from collections.abc import Awaitable, Callable, Coroutine, Mapping, Sequence
from dataclasses import dataclass, field
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
from warmtransfer.sip.digest import (
    Credentials,
    DigestError,
    DigestVerifier,
    NonceCounts,
    Verdict,
    authorize,
    choose,
    parse_authorization,
)
from warmtransfer.sip.flow import Flow, as_flow, flow_for, transport_of
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
from warmtransfer.sip.session_timer import (
    SessionTimerConfig,
    TooSmall,
    negotiate_as_uas,
    request_headers,
    retry_interval,
    session_expires,
)
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
from warmtransfer.sip.transports import SipTransports, TlsConfig
from warmtransfer.sip.uri import NameAddr, SipUri, format_params, is_token

__all__ = [
    "Credentials",
    "Flow",
    "InboundPolicy",
    "Registration",
    "TlsConfig",
    "TraceEntry",
    "UserAgent",
]

log = logging.getLogger(__name__)

Address = Flow
ALLOW = "INVITE, ACK, CANCEL, BYE, OPTIONS, INFO, UPDATE, REFER, NOTIFY"
_ALLOWED = frozenset(method.strip() for method in ALLOW.split(","))
_NUMBER = re.compile(r"\+?[0-9]{1,32}")
TraceHook = Callable[[str, bytes, Flow, float], None]
# Which header carries a challenge and which carries the answer, by status (RFC 3261 22.2, 22.3).
_AUTH_HEADERS = {
    401: ("WWW-Authenticate", "Authorization"),
    407: ("Proxy-Authenticate", "Proxy-Authorization"),
}


@dataclass(frozen=True)
class InboundPolicy:
    """Who may start calls (and other out-of-dialog requests) with this user agent.

    `allow_ips`: addresses or networks ("192.0.2.10", "10.0.0.0/8"); None allows any source,
    an empty list none. `credentials`: when set, an INVITE must answer a digest challenge for
    `realm` with one of them. In-dialog requests are not filtered: they already have to match
    a dialog (Call-ID and both tags, which an outsider cannot guess), and the peer of a call we
    placed may well sit outside the list.
    """

    allow_ips: Sequence[str] | None = None
    credentials: Credentials | Sequence[Credentials] | None = None
    realm: str = "warmtransfer"
    algorithms: Sequence[str] = ("SHA-256", "MD5")
    nonce_lifetime: float = 300.0
    _networks: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...] | None = field(
        default=None, init=False, repr=False, compare=False
    )

    def __post_init__(self) -> None:
        if self.allow_ips is not None:
            if isinstance(self.allow_ips, str):
                raise TypeError("allow_ips is a list of addresses or networks, not one string")
            networks = tuple(ipaddress.ip_network(ip, strict=False) for ip in self.allow_ips)
            object.__setattr__(self, "_networks", networks)

    def allows(self, ip: str) -> bool:
        if self._networks is None:
            return True
        try:
            address = ipaddress.ip_address(ip)
        except ValueError:
            return False
        return any(address in network for network in self._networks)

    def users(self) -> list[Credentials]:
        if self.credentials is None:
            return []
        if isinstance(self.credentials, Credentials):
            return [self.credentials]
        return list(self.credentials)


@dataclass
class Registration:
    """Our binding at a registrar: what `register()` asked for and what it was granted."""

    registrar: SipUri
    aor: SipUri
    addr: Flow
    requested: int
    call_id: str = field(default_factory=lambda: new_call_id("warmtransfer"))
    from_tag: str = field(default_factory=new_tag)
    cseq: int = 0
    expires: int = 0  # granted by the last 2xx; 0 while not registered
    registered_at: float | None = None  # loop time of the last 2xx
    last_status: int | None = None


@dataclass(frozen=True)
class TraceEntry:
    direction: str  # "in" or "out"
    data: bytes
    addr: Flow
    at: float


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
        credentials: Credentials | None = None,
        inbound: InboundPolicy | None = None,
        advertised_host: str | None = None,
        session_timer: SessionTimerConfig | None = SessionTimerConfig(),  # noqa: B008 (frozen)
        listen: Sequence[str] = ("udp",),
        tls: TlsConfig | None = None,
    ) -> None:
        """`advertised_host`: the public address a NAT maps us to. Peers beyond the NAT must
        send SIP and RTP there, so it is what Via, Contact, From and our SDP (c=, o=) name,
        while the sockets stay bound to `host`; None advertises `host` itself. It must be an
        IP address: it lands in SDP c= lines, where many peers will not resolve a name.

        `session_timer`: RFC 4028 session timers, so that a call whose peer vanished ends
        (EndReason.SESSION_EXPIRED) instead of lasting forever; None turns them off. Its
        `floor` below 90 s is for tests only (see SessionTimerConfig).

        `listen`: the transports we accept requests on. UDP and TCP share `port`; TLS listens
        on `tls.port` and needs `tls.certfile`. `tls` also holds whom we trust when we dial a
        TLS URI. A transport we do not listen on cannot be dialled either: our Contact would
        name a port where nobody answers the peer's BYE.
        """
        listen = tuple(dict.fromkeys(kind.lower() for kind in listen))
        if not listen or any(kind not in ("udp", "tcp", "tls") for kind in listen):
            raise ValueError(f"listen={listen!r}: each transport must be udp, tcp or tls")
        if "tls" in listen and (tls is None or tls.certfile is None):
            raise ValueError("listening for TLS needs tls=TlsConfig(certfile=..., keyfile=...)")
        if advertised_host is not None:
            try:
                ipaddress.ip_address(advertised_host)
            except ValueError:
                raise ValueError(
                    f"advertised host {advertised_host!r} is not an IP address"
                ) from None
        self.host = host
        self.port = port
        self.media_host = host
        self.advertised_host = advertised_host
        # The host other parties see: in headers (IPv6 in brackets) and in SDP (bare).
        self.sdp_host = advertised_host or host
        self.sip_host = f"[{self.sdp_host}]" if ":" in self.sdp_host else self.sdp_host
        self.user = user
        self.name = name or user
        self.user_agent = user_agent
        self.clock = clock if clock is not None else PacingClock()  # an idle clock is falsy
        self.incoming: asyncio.Queue[IncomingCall] = asyncio.Queue()
        self.on_call = on_call
        self.trace: list[TraceEntry] = []
        self.trace_hooks: list[TraceHook] = []
        self.calls: dict[str, Call] = {}
        self.listen = listen
        self.tls = tls
        self._transports = SipTransports(host, self.receive, self._transport_failed, tls=tls)
        self._running = False
        self._media: set[RtpSession] = set()
        self._client: dict[tuple[str, str], Transaction] = {}
        self._server: dict[tuple[str, str], Transaction] = {}
        self._listeners: dict[int, Callable[[SipResponse | None], None]] = {}
        self._timers: dict[int, asyncio.TimerHandle] = {}
        self._ok_retransmit: dict[str, tuple[OkRetransmitter, asyncio.TimerHandle | None]] = {}
        self._cancel_deadlines: dict[str, asyncio.TimerHandle] = {}
        self._tasks: set[asyncio.Task[Any]] = set()
        self.credentials = credentials
        self.inbound = inbound
        self.session_timer = session_timer
        #: Set while new calls are refused (a service draining): (status, reason, Retry-After
        #: seconds). Out-of-dialog OPTIONS then get it too, as RFC 3261 11.2 asks (answer as an
        #: INVITE would be), so a proxy that pings us (kamailio's dispatcher) takes us out of
        #: its set before it sends a call our way rather than after a refused INVITE.
        self.refusing_calls: tuple[int, str, int] | None = None
        self._nonce_counts = NonceCounts()
        self._verifier: DigestVerifier | None = None
        if inbound is not None and inbound.credentials is not None:
            self._verifier = DigestVerifier(
                inbound.realm,
                inbound.users(),
                algorithms=inbound.algorithms,
                lifetime=inbound.nonce_lifetime,
            )
        self.registration: Registration | None = None
        self.registered = False
        self._refresh_task: asyncio.Task[None] | None = None

    # -- lifecycle --------------------------------------------------------------------------

    async def start(self) -> UserAgent:
        await self._transports.open(self.listen, self.port)
        ports = self._transports.ports
        self.port = ports.get("udp") or ports.get("tcp") or ports["tls"]
        self._running = True
        return self

    @property
    def ports(self) -> dict[str, int]:
        """Where we listen, by transport."""
        return dict(self._transports.ports)

    async def close(self) -> None:
        """Unregister, hang up every call, stop every timer and close the socket."""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(2.0):
                await self.unregister()
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
        self._running = False
        await self._transports.close()
        # Sockets close on the loop's next turn: wait, so "closed" means closed.
        waits: list[Awaitable[None]] = [m.wait_closed() for m in self._media]
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
    def address(self) -> tuple[str, int]:
        """Our socket address for the first transport we listen on (see `flow` for which)."""
        return (self.host, self.port)

    @property
    def flow(self) -> Flow:
        return Flow(self.host, self.port, self.listen[0])

    @property
    def uri(self) -> str:
        return self.uri_for(self.listen[0])

    def uri_for(self, transport: str) -> str:
        """Our URI over one transport we listen on (TCP and TLS say so in `;transport=`)."""
        port = self._transports.ports.get(transport, self.port)
        suffix = "" if transport == "udp" else f";transport={transport}"
        return f"sip:{self.user}@{self.host}:{port}{suffix}"

    def contact(self, transport: str | None = None) -> str:
        """Where peers send in-dialog requests: the advertised (public) address, if any.

        Without `transport`, the contact for our first listening transport; `send` swaps it
        for the one of the transport a message actually travels on.
        """
        kind = transport or self.listen[0]
        port = self._transports.ports.get(kind, self.port)
        suffix = "" if kind == "udp" else f";transport={kind}"
        return f"<sip:{self.user}@{self.sip_host}:{port}{suffix}>"

    def via(self, transport: str | None = None) -> str:
        """Via without branch; callers append `;branch=` (Dialog.create_request does).

        The sent-by is the advertised address: a peer that ignores rport answers there. One
        that honours rport (RFC 3581, which our requests ask for) answers the source address
        it saw, so a NAT that also changes the port still works.
        """
        kind = transport or self.listen[0]
        port = self._transports.ports.get(kind, self.port)
        return f"SIP/2.0/{kind.upper()} {self.sip_host}:{port}"

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

    def send(self, message: SipRequest | SipResponse, addr: Flow | tuple[str, int]) -> None:
        if not self._running:
            return
        flow = as_flow(addr)
        self._fit_to_transport(message, flow.transport)
        data = serialize(message)
        self._transports.send(data, flow)
        self._record("out", data, flow)

    def _fit_to_transport(self, message: SipRequest | SipResponse, kind: str) -> None:
        """Name the transport a message leaves on in our top Via and our Contact.

        Only values that are ours (our host and port) are touched: a request we relay or a
        Contact the application chose stays as it is. Idempotent, so a retransmission or a
        CANCEL/ACK copying the INVITE's Via comes out the same.
        """
        if isinstance(message, SipRequest):
            vias = message.headers.get_all("Via")
            if vias:
                top = Via.parse(vias[0])
                ours = self.via(kind)
                if top.host == self.sdp_host and f"SIP/2.0/{top.transport} " not in ours:
                    message.headers.remove("Via")
                    message.headers.add("Via", f"{ours}{format_params(top.params)}")
                    for via in vias[1:]:
                        message.headers.add("Via", via)
        if kind != self.listen[0] and message.headers.get("Contact") == self.contact():
            message.headers.set("Contact", self.contact(kind))

    def _record(self, direction: str, data: bytes, addr: Flow) -> None:
        at = asyncio.get_running_loop().time()
        self.trace.append(TraceEntry(direction, data, addr, at))
        if len(self.trace) > 2000:
            del self.trace[:1000]
        for hook in self.trace_hooks:
            hook(direction, data, addr, at)

    def datagram_received(self, data: bytes, addr: Flow | tuple[str, int]) -> None:
        """One message from the wire (the name predates TCP; a stream message comes here too)."""
        self.receive(data, as_flow(addr))

    def receive(self, data: bytes, addr: Flow) -> None:
        if is_keepalive(data):
            return
        self._record("in", data, addr)
        try:
            message = parse_message(data)
        except SipParseError as exc:
            log.info("malformed SIP message from %s: %s", addr, exc)
            try:
                bad = _bad_request(data, str(exc), self.host)
            except Exception:  # never let a reply to garbage take the socket down
                log.exception("could not answer a malformed request from %s", addr)
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
            log.exception("error handling a SIP message from %s", addr)

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
            tx = ClientInviteTransaction(request, addr, addr.reliable)
        else:
            tx = ClientNonInviteTransaction(request, addr, addr.reliable)
        self._client[(tx.branch, request.method)] = tx
        self._listeners[id(tx)] = listener
        self._run(tx, tx.start(now))
        return tx

    async def request(self, request: SipRequest, addr: Flow | tuple[str, int]) -> SipResponse:
        """Send a non-INVITE request and wait for its final response (CallFailed on timeout).

        A 401/407 is answered once with our credentials (see `_authenticated_retry`); the
        response returned is the last one, so its CSeq tells which request it answers.
        """
        answered: dict[int, int] = {}
        flow = as_flow(addr)
        while True:
            response = await self._request_once(request, flow)
            retry = self._authenticated_retry(request, response, answered)
            if retry is None:
                return response
            request = retry

    async def _request_once(self, request: SipRequest, addr: Address) -> SipResponse:
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

    def _authenticated_retry(
        self, request: SipRequest, response: SipResponse, answered: dict[int, int]
    ) -> SipRequest | None:
        """The request again with digest credentials for this 401/407, or None to give up.

        `answered` counts, per status, the challenges already answered for this request, so
        that wrong credentials end in the 401/407 instead of a loop: a new challenge after our
        answer is final unless it is `stale` (the password was right, the nonce expired), and
        even a stale one is answered only once more.
        """
        headers_for = _AUTH_HEADERS.get(response.status)
        if headers_for is None or self.credentials is None:
            return None
        challenge_header, answer_header = headers_for
        try:
            challenge = choose(response.headers.get_all(challenge_header), self.credentials)
        except DigestError as exc:
            log.warning("%s %s: cannot answer the challenge: %s", request.method, request.uri, exc)
            return None
        times = answered.get(response.status, 0)
        if times >= 2 or (times == 1 and not challenge.stale):
            log.warning(
                "%s %s: credentials for %r refused (%s %s)",
                request.method,
                request.uri,
                challenge.realm,
                response.status,
                response.reason,
            )
            return None
        answered[response.status] = times + 1
        credentials = authorize(
            challenge,
            self.credentials,
            request.method,
            str(request.uri),
            counts=self._nonce_counts,
        )
        return self._reissue(request, {answer_header: str(credentials)})

    def _reissue(self, request: SipRequest, changes: Mapping[str, str]) -> SipRequest:
        """The request again as a new transaction (new branch, CSeq + 1; same Call-ID and From
        tag, so the same call or registration) with `changes` to its headers: how a 401/407
        and a 422 are answered."""
        number = request.cseq[0] + 1
        headers = request.headers.copy()
        vias = headers.get_all("Via")
        headers.remove("Via")
        headers.prepend("Via", str(Via.parse(vias[0]).with_params(branch=new_branch())))
        for via in vias[1:]:
            headers.add("Via", via)
        headers.set("CSeq", f"{number} {request.method}")
        for name, value in changes.items():
            headers.remove(name)
            headers.add(name, value)
        call = self.calls.get(request.call_id)
        if call is not None and call.dialog is not None and call.dialog.local_cseq < number:
            call.dialog.local_cseq = number  # later in-dialog requests must count on from it
        return SipRequest(request.method, request.uri, headers, request.body)

    def _session_timer_retry(self, invite: SipRequest, response: SipResponse) -> SipRequest | None:
        """RFC 4028 6: a 422 to our INVITE names the Min-SE the peer needs; ask again with it,
        once. None when there is nothing larger to ask for (asking again would only loop)."""
        if self.session_timer is None:
            return None
        asked = session_expires(invite)
        larger = retry_interval(response, asked.interval if asked else 0)
        if larger is None:
            return None
        changes = dict(request_headers(self.session_timer, larger))
        changes["Min-SE"] = str(larger)
        return self._reissue(invite, changes)

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
        addr = tx.addr if tx is not None else flow_for(invite.uri)
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
            if call is not None:  # our INVITE or re-INVITE, either direction of call
                call.on_ok_retransmission(response)

    def _on_request(self, request: SipRequest, addr: Address) -> None:
        request = _stamp_received(request, addr)
        method = request.method
        branch = request.vias[0].branch or ""
        now = asyncio.get_running_loop().time()
        refusal = self._refuse(request, addr, branch)
        if refusal is not None:
            if method != "ACK":  # an ACK is never answered (and the ACK of our 401 ends here)
                self.send(refusal, addr)
            return
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
        tx = ServerNonInviteTransaction(request, addr, addr.reliable)
        self._server[(branch, method)] = tx
        self.respond(tx, self._answer_non_invite(request, branch))

    def _refuse(self, request: SipRequest, addr: Address, branch: str) -> SipResponse | None:
        """The inbound policy: a stateless 403 or 401 for a request it refuses, else None."""
        policy = self.inbound
        if policy is None or request.to.tag is not None:
            return None
        if not policy.allows(addr[0]):
            log.info("%s from %s refused: not an allowed address", request.method, addr)
            return make_response(request, 403, to_tag=new_tag())
        verifier = self._verifier
        if (
            verifier is None
            or request.method != "INVITE"
            or (branch, "INVITE") in self._server  # a retransmission of one we accepted
            or request.call_id in self.calls
        ):
            return None
        now = time.time()
        verdict = Verdict.INVALID
        for value in request.headers.get_all("Authorization"):
            try:
                answer = parse_authorization(value)
            except DigestError as exc:
                log.info("INVITE from %s: unreadable Authorization: %s", addr, exc)
                continue
            if answer.realm == verifier.realm:
                verdict = verifier.verify(answer, request.method, now)
                break
        if verdict is Verdict.OK:
            return None
        challenges = verifier.challenges(now, stale=verdict is Verdict.STALE)
        return make_response(
            request,
            401,
            to_tag=new_tag(),
            extra=[("WWW-Authenticate", str(challenge)) for challenge in challenges],
        )

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
            if self.refusing_calls is not None:
                status, reason, retry_after = self.refusing_calls
                return make_response(
                    request, status, reason, extra=[("Retry-After", str(retry_after))]
                )
            return make_response(
                request, 200, extra=[("Allow", ALLOW), ("Accept", "application/sdp")]
            )
        if call is None or request.to.tag is None:
            if method in ("BYE", "INFO", "UPDATE", "OPTIONS", "NOTIFY"):
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
        tx = ServerInviteTransaction(request, addr, addr.reliable)
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
        if self.session_timer is not None:  # RFC 4028 9: too short an interval, before ringing
            asked = negotiate_as_uas(request, self.session_timer)
            if isinstance(asked, TooSmall):
                refusal = make_response(
                    request, 422, to_tag=new_tag(), extra=asked.response_headers()
                )
                self.respond(tx, refusal)
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
        proxy: Flow | tuple[str, int] | None = None,
        asserted_identity: str | None = None,
        diversion: str | None = None,
    ) -> OutgoingCall:
        """Place a call and return it once answered.

        Raises `CallFailed` with the final status (486, 603…), 408 on no response, 487 after
        the ring timeout (our CANCEL). If the awaiting task is cancelled, the INVITE is
        CANCELled before the CancelledError propagates.

        `asserted_identity` (P-Asserted-Identity, RFC 3325) and `diversion` (Diversion,
        RFC 5806) take a SIP/tel URI or a number, like `caller_id`: carriers and PBXs present
        or bill a forwarded call by them, and many refuse a From they do not own without them.
        A value that is neither raises ValueError before anything is sent.
        """
        target = uri if isinstance(uri, SipUri) else SipUri.parse(uri)
        # Every identity is checked before any socket opens or any byte is sent.
        self._from_uri(caller_id)
        asserted = (
            self._from_uri(asserted_identity, "asserted identity") if asserted_identity else None
        )
        diverted = self._from_uri(diversion, "diversion") if diversion else None
        addr = await self._route(target, proxy)  # before any socket opens: nothing to leak
        media = await self._open_media(f"{self.name} out")
        try:
            invite = self._build_invite(
                target,
                media.local[1],
                caller_id,
                display,
                headers,
                asserted=asserted,
                diverted=diverted,
            )
        except BaseException:
            media.close()
            raise
        call = OutgoingCall(self, invite, media)
        self.calls[call.call_id] = call
        answered: dict[int, int] = {}

        def listener(response: SipResponse | None) -> None:
            if response is None:
                call.on_timeout()
            elif response.status < 200:
                was_ringing = call.state is CallState.RINGING
                call.on_provisional(response)
                if on_ringing is not None and response.status in (180, 183) and not was_ringing:
                    on_ringing(response.status)
            else:
                if not call.cancel_requested and call.state is not CallState.ENDED:
                    # The transaction has ACKed the challenge or the 422; the call goes on
                    # as a new INVITE transaction of the same call (same Call-ID, From tag).
                    retry = None
                    if response.status in _AUTH_HEADERS:
                        retry = self._authenticated_retry(call.invite, response, answered)
                    elif response.status == 422 and not answered.get(422):
                        answered[422] = 1
                        retry = self._session_timer_retry(call.invite, response)
                    if retry is not None:
                        call.invite = retry
                        call.provisional = None
                        self._start_client(retry, addr, listener)
                        return
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

    # -- registration -----------------------------------------------------------------------

    async def register(
        self,
        registrar: str | SipUri,
        *,
        expires: int = 300,
        aor: str | SipUri | None = None,
        proxy: Flow | tuple[str, int] | None = None,
    ) -> Registration:
        """Bind our contact to `aor` at `registrar` and keep it bound until `close()`.

        The AOR defaults to `sip:<user>@<registrar host[:port]>`. Raises CallFailed with the
        registrar's status (401/407 after one authenticated retry, 403…) or 408 on no answer.
        A task owned by the user agent refreshes the binding at 80 % of the granted Expires.
        """
        target = registrar if isinstance(registrar, SipUri) else SipUri.parse(registrar)
        target = SipUri(target.scheme, None, target.host, target.port, target.params)
        if aor is None:
            aor_uri = SipUri(target.scheme, self.user, target.host, target.port)
        else:
            aor_uri = aor if isinstance(aor, SipUri) else SipUri.parse(aor)
        addr = await self._route(target, proxy)
        await self._stop_refresh()
        registration = Registration(target, aor_uri, addr, expires, call_id=new_call_id(self.host))
        self.registration = registration
        await self._send_register(registration, expires)
        self._refresh_task = asyncio.get_running_loop().create_task(
            self._refresh(registration), name=f"{self.name} REGISTER refresh"
        )
        self._tasks.add(self._refresh_task)
        self._refresh_task.add_done_callback(self._tasks.discard)
        return registration

    async def unregister(self) -> None:
        """Remove our binding (REGISTER with Expires: 0) and stop refreshing it."""
        await self._stop_refresh()
        registration = self.registration
        if registration is None or not self.registered or not self._running:
            return
        self.registered = False
        with contextlib.suppress(CallFailed):
            await self._send_register(registration, 0)

    async def _stop_refresh(self) -> None:
        task, self._refresh_task = self._refresh_task, None
        if task is not None and task is not asyncio.current_task():
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def _send_register(self, registration: Registration, expires: int) -> None:
        response = await self._register_once(registration, expires)
        if response.status == 423 and expires:  # Interval Too Brief: ask for what it allows
            minimum = response.headers.get("Min-Expires") or ""
            if minimum.isdigit() and int(minimum) > expires:
                registration.requested = int(minimum)
                response = await self._register_once(registration, int(minimum))
        registration.last_status = response.status
        if response.status >= 300:
            self.registered = False
            raise CallFailed(response.status, response.reason)
        if expires == 0:
            registration.expires = 0
            return
        registration.expires = _granted_expires(response, self.contact(), expires)
        registration.registered_at = asyncio.get_running_loop().time()
        self.registered = registration.expires > 0

    async def _register_once(self, registration: Registration, expires: int) -> SipResponse:
        registration.cseq += 1
        aor = str(registration.aor)
        headers = Headers()
        headers.add("Via", f"{self.via()};branch={new_branch()};rport")
        headers.add("Max-Forwards", "70")
        headers.add("From", f"<{aor}>;tag={registration.from_tag}")
        headers.add("To", f"<{aor}>")
        headers.add("Call-ID", registration.call_id)
        headers.add("CSeq", f"{registration.cseq} REGISTER")
        headers.add("Contact", self.contact())
        headers.add("Expires", str(expires))
        headers.add("Allow", ALLOW)
        headers.add("User-Agent", self.user_agent)
        request = SipRequest("REGISTER", registration.registrar, headers)
        response = await self.request(request, registration.addr)
        registration.cseq = max(registration.cseq, response.cseq[0])  # an auth retry adds one
        return response

    async def _refresh(self, registration: Registration) -> None:
        """Re-REGISTER at 80 % of the granted Expires; after a failure, retry sooner."""
        delay = 0.8 * registration.expires
        while True:
            await asyncio.sleep(max(delay, 0.5))  # a schedule, not a synchronisation
            try:
                await self._send_register(registration, registration.requested)
                delay = 0.8 * registration.expires
            except CallFailed as exc:
                log.warning("REGISTER refresh for %s failed: %s", registration.aor, exc)
                delay = min(30.0, 0.4 * max(registration.requested, 1))

    def _build_invite(
        self,
        target: SipUri,
        rtp_port: int,
        caller_id: str | None,
        display: str | None,
        extra: Mapping[str, str] | None,
        *,
        asserted: SipUri | None = None,
        diverted: SipUri | None = None,
    ) -> SipRequest:
        from_uri = self._from_uri(caller_id)
        name = display_name(display) if display else None
        from_party = NameAddr(from_uri, name).with_tag(new_tag())
        # The SDP names the advertised address: that is where the peer must send our RTP.
        offer = build_offer(self.sdp_host, rtp_port, session_id=random.getrandbits(31))
        headers = Headers()
        headers.add("Via", f"{self.via()};branch={new_branch()};rport")
        headers.add("Max-Forwards", "70")
        headers.add("From", str(from_party))
        headers.add("To", str(NameAddr(target)))
        headers.add("Call-ID", new_call_id(self.sip_host))
        headers.add("CSeq", "1 INVITE")
        headers.add("Contact", self.contact())
        if asserted is not None:
            headers.add("P-Asserted-Identity", str(NameAddr(asserted, name)))
        if diverted is not None:
            # RFC 5806 makes the reason optional, but carriers that read Diversion expect one;
            # a warm transfer forwards the call whatever happened, which is "unconditional".
            headers.add("Diversion", f"{NameAddr(diverted)};reason=unconditional")
        headers.add("Allow", ALLOW)
        headers.add("User-Agent", self.user_agent)
        for name, value in (extra or {}).items():
            headers.add(header_name(name), header_value(value))
        headers.add("Content-Type", "application/sdp")
        return SipRequest("INVITE", target, headers, offer.to_bytes())

    async def _route(self, target: SipUri, proxy: Flow | tuple[str, int] | None) -> Flow:
        """Where a new request for `target` goes, checked against what we listen on."""
        flow = as_flow(proxy) if proxy is not None else None
        kind = flow.transport if flow is not None else transport_of(target)
        if kind not in self.listen:
            raise ValueError(
                f"{target}: reaching it needs {kind.upper()}, and this user agent listens on "
                f"{', '.join(self.listen)} only; add {kind!r} to listen="
            )
        return flow if flow is not None else await _resolve(target)

    def _transport_failed(self, flow: Flow, reason: str) -> None:
        """No connection to `flow`: what waits on it ends now with a 503 (RFC 3261 8.1.3.1)."""
        for tx in list(self._client.values()):
            if tx.addr != flow or tx.terminated:
                continue
            listener = self._listeners.get(id(tx))
            self._drop(tx)
            if listener is not None:
                failure = make_response(
                    tx.request, 503, f"Service Unavailable ({header_value(reason, 100)})"
                )
                listener(failure)

    def _from_uri(self, caller_id: str | None, what: str = "caller ID") -> SipUri:
        """The URI for an identity we present (From, P-Asserted-Identity, Diversion).

        A number becomes `sip:<number>@<our advertised host>`. A URI must parse (no spaces,
        controls, quotes or angle brackets, so nothing can break out of the header) and carry
        no `?headers` part, which RFC 3261 19.1.5 forbids in these headers and which would
        otherwise let a configured value smuggle header fields to whoever acts on them.
        """
        if not caller_id:
            return SipUri.parse(f"sip:{self.user}@{self.sip_host}")
        if caller_id.startswith(("sip:", "sips:", "tel:")):
            try:
                uri = SipUri.parse(caller_id)
            except ValueError as exc:
                raise ValueError(f"{what} {caller_id!r} is not a valid URI: {exc}") from None
            if uri.headers:
                raise ValueError(f"{what} {caller_id!r} must not carry URI headers ('?')")
            return uri
        user = caller_id.strip()
        if not _NUMBER.fullmatch(user):  # ASCII digits only: str.isdigit() takes "١٢٣" too
            raise ValueError(f"{what} {caller_id!r} is neither a SIP URI nor a number")
        return SipUri.parse(f"sip:{user}@{self.sip_host}")


def _granted_expires(response: SipResponse, contact: str, requested: int) -> int:
    """RFC 3261 10.2.4: our Contact's `expires` in the 2xx, else its Expires header."""
    ours = NameAddr.parse(contact).uri
    for value in response.headers.get_all("Contact"):
        try:
            bound = NameAddr.parse(value)
        except ValueError:
            continue
        uri = bound.uri
        if (uri.user, uri.host, uri.port) == (ours.user, ours.host, ours.port):
            granted = bound.param("expires")
            if granted is not None and granted.isdigit():
                return int(granted)
    header = response.headers.get("Expires")
    if header is not None and header.isdigit():
        return int(header)
    return requested


async def _guard(result: Awaitable[None], call: IncomingCall) -> None:
    try:
        await result
    except Exception:
        log.exception("call handler failed for %s", call.call_id)
        await call.hangup()


async def _resolve(uri: SipUri) -> Flow:
    """The flow to a URI. A name is resolved for UDP; a stream keeps the name, which TLS must
    check the server's certificate against (the connection resolves it when it opens)."""
    flow = flow_for(uri)
    if flow.transport != "udp":
        return flow
    loop = asyncio.get_running_loop()
    infos = await loop.getaddrinfo(flow.host, flow.port, type=2)  # SOCK_DGRAM
    if not infos:
        raise CallFailed(None, f"cannot resolve {flow.host}")
    address = infos[0][4]
    return Flow(str(address[0]), int(address[1]))


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

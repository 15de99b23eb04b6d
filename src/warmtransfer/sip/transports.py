"""The sockets under the SIP stack: one UDP socket, and TCP / TLS listeners with their connections.

asyncio gives us the sockets and `ssl` (stdlib) the TLS; what no library does for us is the SIP
part of connection handling, so it is here, kept small:
- Messages are addressed to a `Flow` (address + transport). A stream flow reuses the open
  connection to it, whichever side opened it, so a response leaves on the connection its request
  came in on (RFC 3261 18.2.2) and a call we placed over TLS keeps one connection. With none
  open, one is opened in the background and what is sent meanwhile waits in order for it.
- A connection that cannot be opened (refused, TLS handshake or certificate failure, 10 s
  timeout) is reported through `failed`, so the user agent can end the transactions waiting on
  it at once with a 503, as RFC 3261 8.1.3.1 says, instead of letting them run into Timer B.
- Streams are cut into messages by the sans-IO `StreamFramer`; a stream that breaks framing is
  closed. Inbound connections are capped, and one that sends no whole message within
  `first_message_timeout` is closed: an idle or trickling connection is the cheapest way to
  exhaust a server's file descriptors.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import os
import ssl
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from warmtransfer.sip.flow import TRANSPORTS, Flow
from warmtransfer.sip.framing import FramingError, Ping, StreamFramer
from warmtransfer.sip.message import DEFAULT_LIMITS, ParseLimits

__all__ = ["SipTransports", "TlsConfig", "TlsConfigError"]

log = logging.getLogger(__name__)

Receiver = Callable[[bytes, Flow], None]
FailureHook = Callable[[Flow, str], None]
CONNECT_TIMEOUT = 10.0


class TlsConfigError(ValueError):
    """A TLS setting that cannot work; the message names the file or setting."""


@dataclass(frozen=True)
class TlsConfig:
    """Certificates for SIP over TLS (stdlib `ssl`).

    `certfile`/`keyfile`: our certificate chain and key (PEM), needed to listen for TLS and sent
    to servers that ask for a client certificate. `cafile`: the CAs we trust (PEM); None trusts
    the system store, which is what a public carrier's certificate needs. `verify=False` skips
    checking the server's certificate: for a lab PBX with a self-signed certificate only, since it
    lets anyone in the path read and change the calls. `port`: where to listen (0 picks one).
    `require_client_cert`: refuse inbound TLS without a certificate signed by `cafile` (mutual
    TLS, which trunks such as Twilio's can present).
    """

    certfile: str | Path | None = None
    keyfile: str | Path | None = None
    cafile: str | Path | None = None
    verify: bool = True
    port: int = 0
    require_client_cert: bool = False

    def server_context(self) -> ssl.SSLContext:
        if self.certfile is None:
            raise TlsConfigError("listening for TLS needs a certificate: set tls certfile")
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        self._load_chain(context)
        if self.require_client_cert:
            if self.cafile is None:
                raise TlsConfigError("require_client_cert needs cafile: whom to trust")
            self._load_ca(context)
            context.verify_mode = ssl.CERT_REQUIRED
        return context

    def client_context(self) -> ssl.SSLContext:
        context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH)
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        if self.cafile is not None:
            self._load_ca(context)
        if not self.verify:
            context.check_hostname = False
            context.verify_mode = ssl.CERT_NONE
        if self.certfile is not None:
            self._load_chain(context)
        return context

    def _load_chain(self, context: ssl.SSLContext) -> None:
        certfile = _existing(self.certfile, "certfile")
        keyfile = _existing(self.keyfile, "keyfile") if self.keyfile is not None else None
        try:
            context.load_cert_chain(certfile, keyfile)
        except (ssl.SSLError, OSError) as exc:
            raise TlsConfigError(
                f"TLS certificate {certfile} (key {keyfile or 'in the same file'}) cannot be "
                f"loaded: {exc}. certfile and keyfile must be PEM and belong together"
            ) from None

    def _load_ca(self, context: ssl.SSLContext) -> None:
        cafile = _existing(self.cafile, "cafile")
        try:
            context.load_verify_locations(cafile=cafile)
        except (ssl.SSLError, OSError) as exc:
            raise TlsConfigError(f"TLS cafile {cafile} cannot be loaded: {exc}") from None


def _existing(path: str | Path | None, setting: str) -> str:
    if path is None or not Path(path).is_file():
        raise TlsConfigError(f"TLS {setting} {path!s} is not a readable file")
    return str(path)


class _Datagrams(asyncio.DatagramProtocol):
    def __init__(self, owner: SipTransports) -> None:
        self.owner = owner
        self.closed = asyncio.get_running_loop().create_future()

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.closed.done():
            self.closed.set_result(None)

    def datagram_received(self, data: bytes, addr: Any) -> None:
        self.owner.receive(data, Flow(str(addr[0]), int(addr[1]), "udp"))

    def error_received(self, exc: Exception) -> None:
        log.debug("SIP UDP socket error: %s", exc)


class _Stream(asyncio.Protocol):
    """One TCP or TLS connection, inbound or outbound."""

    def __init__(self, owner: SipTransports, kind: str, flow: Flow | None = None) -> None:
        self.owner = owner
        self.kind = kind
        self.flow = flow  # set for outbound: the flow it was opened for (host may be a name)
        self.inbound = flow is None
        self.framer = StreamFramer(owner.limits)
        self.transport: asyncio.Transport | None = None
        self.messages = 0
        self.closed = asyncio.get_running_loop().create_future()
        self._deadline: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        if self.flow is None:
            peer = transport.get_extra_info("peername")
            self.flow = Flow(str(peer[0]), int(peer[1]), self.kind)
        if self.inbound and not self.owner._admit(self):
            transport.abort()
            return
        self.owner._attach(self)
        if self.inbound:
            self._deadline = asyncio.get_running_loop().call_later(
                self.owner.first_message_timeout, self._idle
            )

    def _idle(self) -> None:
        if self.messages == 0 and self.transport is not None:
            log.info("SIP %s: no message within %.0f s; closing", self.flow, self._timeout)
            self.transport.abort()

    @property
    def _timeout(self) -> float:
        return self.owner.first_message_timeout

    def data_received(self, data: bytes) -> None:
        assert self.flow is not None and self.transport is not None
        try:
            items = self.framer.feed(data)
        except FramingError as exc:
            log.info("SIP %s: %s; closing the connection", self.flow, exc)
            self.transport.abort()
            return
        for item in items:
            if isinstance(item, Ping):
                self.transport.write(b"\r\n")
                continue
            self.messages += 1
            if self._deadline is not None:
                self._deadline.cancel()
                self._deadline = None
            self.owner.receive(item, self.flow)

    def eof_received(self) -> bool | None:
        return False  # the peer is done: close our side too

    def connection_lost(self, exc: Exception | None) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None
        self.owner._detach(self)
        if not self.closed.done():
            self.closed.set_result(None)

    def write(self, data: bytes) -> bool:
        if self.transport is None or self.transport.is_closing():
            return False
        self.transport.write(data)
        return True


class SipTransports:
    def __init__(
        self,
        host: str,
        receive: Receiver,
        failed: FailureHook,
        *,
        tls: TlsConfig | None = None,
        limits: ParseLimits = DEFAULT_LIMITS,
        max_connections: int = 512,
        first_message_timeout: float = 30.0,
    ) -> None:
        self.host = host
        self.receive = receive
        self.failed = failed
        self.tls = tls
        self.limits = limits
        self.max_connections = max_connections
        self.first_message_timeout = first_message_timeout
        self.ports: dict[str, int] = {}
        self.connections: dict[Flow, _Stream] = {}
        self._all: set[_Stream] = set()
        self._udp: asyncio.DatagramTransport | None = None
        self._udp_protocol: _Datagrams | None = None
        self._servers: list[asyncio.Server] = []
        self._waiting: dict[Flow, list[bytes]] = {}
        self._connecting: set[asyncio.Task[None]] = set()
        self._client_context: ssl.SSLContext | None = None

    # -- lifecycle --------------------------------------------------------------------------

    async def open(self, kinds: Sequence[str], port: int = 0) -> None:
        """Listen on `kinds` ("udp", "tcp", "tls"). UDP and TCP share `port`, as SIP expects:
        with port 0 the number UDP got is tried for TCP too, and picked again if TCP cannot
        have it. TLS listens on `tls.port`.
        """
        unknown = [kind for kind in kinds if kind not in TRANSPORTS]
        if unknown or not kinds:
            raise ValueError(f"transports {list(kinds)!r}: each must be one of udp, tcp, tls")
        server_context = None
        if "tls" in kinds:
            if self.tls is None:
                raise TlsConfigError("listening for TLS needs tls=TlsConfig(certfile=...)")
            server_context = self.tls.server_context()
        for attempt in range(20):
            try:
                await self._open_shared(kinds, port)
                break
            except OSError as exc:
                await self._close_listeners()
                if port != 0 or exc.errno != errno.EADDRINUSE or attempt == 19:
                    raise
        if server_context is not None:
            assert self.tls is not None
            server = await asyncio.get_running_loop().create_server(
                lambda: _Stream(self, "tls"), self.host, self.tls.port, ssl=server_context
            )
            self._servers.append(server)
            self.ports["tls"] = server.sockets[0].getsockname()[1]

    async def _open_shared(self, kinds: Sequence[str], port: int) -> None:
        loop = asyncio.get_running_loop()
        if "udp" in kinds:
            transport, protocol = await loop.create_datagram_endpoint(
                lambda: _Datagrams(self), local_addr=(self.host, port)
            )
            self._udp, self._udp_protocol = transport, protocol
            port = self.ports["udp"] = transport.get_extra_info("sockname")[1]
        if "tcp" in kinds:
            server = await loop.create_server(lambda: _Stream(self, "tcp"), self.host, port)
            self._servers.append(server)
            self.ports["tcp"] = server.sockets[0].getsockname()[1]

    async def _close_listeners(self) -> None:
        if self._udp is not None:
            self._udp.close()
            self._udp = None
        for server in self._servers:
            server.close()
        self._servers.clear()
        self.ports.clear()

    async def close(self) -> None:
        """Stop listening, drop what waits for a connection, close every connection."""
        waits: list[asyncio.Future[None]] = []
        if self._udp_protocol is not None:
            waits.append(self._udp_protocol.closed)
        servers = list(self._servers)
        await self._close_listeners()
        for task in list(self._connecting):
            task.cancel()
        if self._connecting:
            await asyncio.gather(*self._connecting, return_exceptions=True)
        self._waiting.clear()
        streams = list(self._all)
        for stream in streams:
            if stream.transport is not None:
                stream.transport.close()
            waits.append(stream.closed)
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(2.0):
                await asyncio.gather(*waits, return_exceptions=True)
        for stream in streams:  # a TLS peer that never answers our close_notify
            if stream.transport is not None and not stream.closed.done():
                stream.transport.abort()
        for server in servers:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(1.0):
                    await server.wait_closed()

    def listening(self, kind: str) -> bool:
        return kind in self.ports

    # -- sending ----------------------------------------------------------------------------

    def send(self, data: bytes, flow: Flow) -> None:
        if flow.transport == "udp":
            if self._udp is not None:
                self._udp.sendto(data, (flow.host, flow.port))
            return
        waiting = self._waiting.get(flow)
        if waiting is not None:  # a connection is opening: after what already waits for it
            waiting.append(data)
            return
        stream = self.connections.get(flow)
        if stream is not None and stream.write(data):
            return
        self._waiting[flow] = [data]
        task = asyncio.get_running_loop().create_task(self._connect(flow), name=f"SIP {flow}")
        self._connecting.add(task)
        task.add_done_callback(self._connecting.discard)

    async def _connect(self, flow: Flow) -> None:
        loop = asyncio.get_running_loop()
        context = None
        if flow.transport == "tls":
            if self._client_context is None:
                self._client_context = (self.tls or TlsConfig()).client_context()
            context = self._client_context
        try:
            async with asyncio.timeout(CONNECT_TIMEOUT):
                _, stream = await loop.create_connection(
                    lambda: _Stream(self, flow.transport, flow),
                    flow.host,
                    flow.port,
                    ssl=context,
                    server_hostname=flow.host if context is not None else None,
                )
        except (OSError, TimeoutError, ssl.SSLError) as exc:
            reason = _describe(exc)
            log.info("SIP %s: cannot connect: %s", flow, reason)
            self._waiting.pop(flow, None)
            self.failed(flow, reason)
            return
        for data in self._waiting.pop(flow, []):
            stream.write(data)

    # -- connection table -------------------------------------------------------------------

    def _admit(self, stream: _Stream) -> bool:
        inbound = sum(1 for other in self._all if other.inbound)
        if inbound >= self.max_connections:
            log.warning("SIP %s refused: %d connections already open", stream.flow, inbound)
            return False
        return True

    def _attach(self, stream: _Stream) -> None:
        assert stream.flow is not None
        self._all.add(stream)
        self.connections[stream.flow] = stream

    def _detach(self, stream: _Stream) -> None:
        self._all.discard(stream)
        if stream.flow is not None and self.connections.get(stream.flow) is stream:
            del self.connections[stream.flow]


def _describe(exc: BaseException) -> str:
    if isinstance(exc, TimeoutError):
        return f"no connection within {CONNECT_TIMEOUT:.0f} s"
    if isinstance(exc, ssl.SSLCertVerificationError):
        return f"TLS certificate not trusted: {exc.verify_message}"
    if isinstance(exc, ssl.SSLError):
        return f"TLS handshake failed: {exc.reason or exc}"
    if isinstance(exc, OSError) and exc.errno:
        return f"{os.strerror(exc.errno)} ({exc.errno})"
    return str(exc) or type(exc).__name__

"""A raw SIP endpoint on 127.0.0.1 for testing the user agent over real UDP sockets.

It sends hand-written SIP text and collects every datagram that comes back, parsed with
`parse_message`. Nothing here is clever on purpose: the peer of a protocol test should be
simple enough to trust by reading. Waiting is always on a queue with a deadline, never a sleep.
"""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from warmtransfer.sip.message import (
    SipMessage,
    SipParseError,
    SipRequest,
    SipResponse,
    make_response,
    parse_message,
    serialize,
)

Address = tuple[str, int]
HOST = "127.0.0.1"
DEADLINE = 3.0


def sdp(media_port: int, *, formats: str = "0 8 101", direction: str = "sendrecv") -> str:
    """An audio offer or answer from the wire's media socket (PCMU, PCMA and events unless told)."""
    lines = [
        "v=0",
        f"o=- 1 1 IN IP4 {HOST}",
        "s=-",
        f"c=IN IP4 {HOST}",
        "t=0 0",
        f"m=audio {media_port} RTP/AVP {formats}",
    ]
    names = {"0": "PCMU/8000", "8": "PCMA/8000", "9": "G722/8000", "101": "telephone-event/8000"}
    lines += [f"a=rtpmap:{pt} {names[pt]}" for pt in formats.split() if pt in names]
    lines.append(f"a={direction}")
    return "\r\n".join(lines) + "\r\n"


@dataclass
class Received:
    message: SipMessage
    addr: Address
    at: float


class _Sink(asyncio.DatagramProtocol):
    """Absorbs the RTP a user agent sends to the wire's SDP address."""

    def __init__(self) -> None:
        self.packets = 0
        self.closed = asyncio.get_running_loop().create_future()

    def datagram_received(self, data: bytes, addr: Address) -> None:
        self.packets += 1

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.closed.done():
            self.closed.set_result(None)


class Wire(asyncio.DatagramProtocol):
    """One UDP socket speaking SIP by hand, plus a second one that swallows media."""

    def __init__(self) -> None:
        self.transport: asyncio.DatagramTransport | None = None
        self.port = 0
        self.media_port = 0
        self.queue: asyncio.Queue[Received] = asyncio.Queue()
        self.backlog: list[Received] = []  # read from the queue but not yet matched
        self.log: list[Received] = []  # everything parsed, in arrival order
        self.unparsed: list[bytes] = []
        self._media: asyncio.DatagramTransport | None = None
        self._sink: _Sink | None = None
        self._closed = asyncio.get_running_loop().create_future()

    @classmethod
    async def open(cls) -> Wire:
        loop = asyncio.get_running_loop()
        _, wire = await loop.create_datagram_endpoint(cls, local_addr=(HOST, 0))
        media, sink = await loop.create_datagram_endpoint(_Sink, local_addr=(HOST, 0))
        wire._media, wire._sink = media, sink
        wire.media_port = media.get_extra_info("sockname")[1]
        return wire

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # a datagram endpoint's
        self.port = transport.get_extra_info("sockname")[1]

    def datagram_received(self, data: bytes, addr: Address) -> None:
        try:
            message = parse_message(data)
        except SipParseError:
            self.unparsed.append(data)
            return
        received = Received(message, addr[:2], asyncio.get_running_loop().time())
        self.log.append(received)
        self.queue.put_nowait(received)

    def connection_lost(self, exc: Exception | None) -> None:
        if not self._closed.done():
            self._closed.set_result(None)

    def close(self) -> None:
        for transport in (self.transport, self._media):
            if transport is not None:
                transport.close()

    async def wait_closed(self) -> None:
        """Sockets close on the loop's next turn; after this, they are closed."""
        assert self._sink is not None
        await asyncio.gather(self._closed, self._sink.closed)

    # -- addresses ---------------------------------------------------------------------------

    @property
    def address(self) -> Address:
        return (HOST, self.port)

    @property
    def uri(self) -> str:
        return f"sip:human@{HOST}:{self.port}"

    @property
    def contact(self) -> str:
        return f"<sip:human@{HOST}:{self.port}>"

    def via(self, branch: str) -> str:
        return f"SIP/2.0/UDP {HOST}:{self.port};branch={branch};rport"

    # -- sending -----------------------------------------------------------------------------

    def send(self, data: str | bytes | SipMessage, addr: Address) -> None:
        if isinstance(data, SipRequest | SipResponse):
            data = serialize(data)
        elif isinstance(data, str):
            data = data.encode()
        assert self.transport is not None
        self.transport.sendto(data, addr)

    def request(
        self,
        method: str,
        ua: Address,
        *,
        call_id: str,
        branch: str | None = None,
        cseq: int = 1,
        from_tag: str = "wire1",
        to_tag: str | None = None,
        body: str = "",
        extra: Iterable[str] = (),
        uri: str | None = None,
    ) -> str:
        """A hand-written request from the wire to the user agent at `ua`."""
        target = uri or f"sip:wt@{ua[0]}:{ua[1]}"
        to = f"<sip:wt@{ua[0]}:{ua[1]}>" + (f";tag={to_tag}" if to_tag else "")
        lines = [
            f"{method} {target} SIP/2.0",
            f"Via: {self.via(branch or new_branch())}",
            "Max-Forwards: 70",
            f"From: <sip:caller@{HOST}:{self.port}>;tag={from_tag}",
            f"To: {to}",
            f"Call-ID: {call_id}",
            f"CSeq: {cseq} {method}",
            f"Contact: {self.contact}",
            *extra,
        ]
        if body:
            lines.append("Content-Type: application/sdp")
        lines.append(f"Content-Length: {len(body.encode())}")
        return "\r\n".join(lines) + "\r\n\r\n" + body

    def invite(
        self,
        ua: Address,
        *,
        call_id: str,
        branch: str,
        cseq: int = 1,
        from_tag: str = "wire1",
        to_tag: str | None = None,
        body: str | None = None,
        extra: Iterable[str] = (),
    ) -> str:
        """An INVITE offering PCMU/PCMA from the wire's media socket (unless `body` is given)."""
        return self.request(
            "INVITE",
            ua,
            call_id=call_id,
            branch=branch,
            cseq=cseq,
            from_tag=from_tag,
            to_tag=to_tag,
            body=sdp(self.media_port) if body is None else body,
            extra=extra,
        )

    def reply(
        self,
        request: SipRequest,
        status: int,
        *,
        to_tag: str | None = None,
        body: str = "",
        contact: bool = True,
    ) -> SipResponse:
        """Answer a request the user agent sent us (to the address in its top Via)."""
        extra = [("Contact", self.contact)] if contact and 100 < status < 300 else []
        response = make_response(
            request,
            status,
            to_tag=to_tag,
            body=body.encode(),
            content_type="application/sdp" if body else None,
            extra=extra,
        )
        via = request.vias[0]
        self.send(response, (via.host, via.port or 5060))
        return response

    # -- receiving ---------------------------------------------------------------------------

    async def next(
        self, match: Callable[[SipMessage], bool], timeout: float = DEADLINE
    ) -> SipMessage:
        """The first message (oldest first) that `match` accepts; others stay for later calls."""
        for index, received in enumerate(self.backlog):
            if match(received.message):
                del self.backlog[index]
                return received.message
        async with asyncio.timeout(timeout):
            while True:
                received = await self.queue.get()
                if match(received.message):
                    return received.message
                self.backlog.append(received)

    async def response(
        self,
        status: int,
        method: str | None = None,
        *,
        call_id: str | None = None,
        cseq: int | None = None,
        timeout: float = DEADLINE,
    ) -> SipResponse:
        def match(message: SipMessage) -> bool:
            return (
                isinstance(message, SipResponse)
                and message.status == status
                and (method is None or message.cseq[1] == method)
                and (call_id is None or message.call_id == call_id)
                and (cseq is None or message.cseq[0] == cseq)
            )

        found = await self.next(match, timeout)
        assert isinstance(found, SipResponse)
        return found

    async def request_of(
        self,
        method: str,
        *,
        where: Callable[[SipRequest], bool] = lambda _: True,
        timeout: float = DEADLINE,
    ) -> SipRequest:
        def match(message: SipMessage) -> bool:
            return isinstance(message, SipRequest) and message.method == method and where(message)

        found = await self.next(match, timeout)
        assert isinstance(found, SipRequest)
        return found

    def responses(self, status: int, method: str) -> list[SipResponse]:
        """Every response of this status to `method` received so far."""
        return [
            r.message
            for r in self.log
            if isinstance(r.message, SipResponse)
            and r.message.status == status
            and r.message.cseq[1] == method
        ]

    def requests(self, method: str) -> list[SipRequest]:
        return [
            r.message
            for r in self.log
            if isinstance(r.message, SipRequest) and r.message.method == method
        ]


def new_branch() -> str:
    return "z9hG4bK-wire-" + secrets.token_hex(6)


def new_call_id() -> str:
    return f"wire-{secrets.token_hex(8)}@{HOST}"

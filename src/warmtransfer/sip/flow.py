"""Where a SIP message goes: an address and the transport that carries it there.

A plain (host, port) is not enough once TCP and TLS exist: the same address can be reached over
UDP and over TCP, and a response must leave on the connection its request arrived on (RFC 3261
18.2.2). A `Flow` names all three, so transactions, dialogs and the user agent can keep passing
one opaque value around while the transport layer picks the socket.
"""

from __future__ import annotations

from typing import NamedTuple

from warmtransfer.sip.uri import SipUri

__all__ = ["DEFAULT_PORTS", "TRANSPORTS", "Flow", "as_flow", "flow_for", "transport_of"]

TRANSPORTS = ("udp", "tcp", "tls")
DEFAULT_PORTS = {"udp": 5060, "tcp": 5060, "tls": 5061}


class Flow(NamedTuple):
    host: str
    port: int
    transport: str = "udp"

    @property
    def reliable(self) -> bool:
        """TCP and TLS deliver or fail: no retransmission timers (RFC 3261 17.1.1.2)."""
        return self.transport != "udp"

    def __str__(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{self.transport}:{host}:{self.port}"


def transport_of(uri: SipUri) -> str:
    """The transport a URI asks for: `;transport=`, else TLS for sips:, else UDP (RFC 3263 4.1).

    An unknown transport (SCTP, WS) is refused here, with the URI named, rather than quietly
    sent over UDP to a peer that does not listen there.
    """
    asked = uri.param("transport")
    if asked is None:
        return "tls" if uri.scheme == "sips" else "udp"
    kind = asked.lower()
    if kind not in TRANSPORTS:
        raise ValueError(f"{uri}: transport {asked!r} is not supported (udp, tcp or tls)")
    return kind


def flow_for(uri: SipUri) -> Flow:
    """The flow to a URI whose host is an address (names are resolved by the user agent)."""
    kind = transport_of(uri)
    host, port = uri.host_port(DEFAULT_PORTS[kind])
    return Flow(host, port, kind)


def as_flow(addr: tuple[str, int] | Flow) -> Flow:
    """Accept a bare (host, port), as the API always has, and read it as UDP."""
    if isinstance(addr, Flow):
        return addr
    host, port = addr[0], addr[1]
    return Flow(str(host), int(port))

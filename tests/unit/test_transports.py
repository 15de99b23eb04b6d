"""SIP over TCP and TLS between real sockets on loopback: calls, framing, failures, limits.

Both ends are our user agent here (the baresip tests in tests/e2e cover a peer we did not write);
what these pin down is the transport layer's own behaviour: Via and Contact name the transport a
message travels on, a response leaves on the connection its request came in on, a connection that
cannot be made ends the call at once with a 503 naming why, and a hostile stream costs nothing.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable
from pathlib import Path
from typing import TypeVar

import pytest
import trustme

from tests.peers.ports import free_tcp_port
from tests.unit.conftest import started_ua
from warmtransfer.sip.call import CallFailed, EndReason
from warmtransfer.sip.flow import Flow, flow_for
from warmtransfer.sip.message import parse_message
from warmtransfer.sip.transports import TlsConfig, TlsConfigError
from warmtransfer.sip.uri import SipUri
from warmtransfer.sip.useragent import UserAgent

T = TypeVar("T")


async def within(awaitable: Awaitable[T], seconds: float = 5.0) -> T:
    async with asyncio.timeout(seconds):
        return await awaitable


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    return trustme.CA()


@pytest.fixture
def tls(tmp_path: Path, ca: trustme.CA) -> TlsConfig:
    """A certificate for 127.0.0.1 signed by a test CA, and that CA as the only one trusted."""
    ca.issue_cert("127.0.0.1", "localhost").private_key_and_cert_chain_pem.write_to_path(
        str(tmp_path / "server.pem")
    )
    ca.cert_pem.write_to_path(str(tmp_path / "ca.pem"))
    return TlsConfig(certfile=tmp_path / "server.pem", cafile=tmp_path / "ca.pem")


def sent(ua: UserAgent, method_or_status: str) -> list[bytes]:
    return [
        entry.data
        for entry in ua.trace
        if entry.direction == "out"
        and entry.data.split(b"\r\n", 1)[0].count(method_or_status.encode())
    ]


async def call_and_answer(caller: UserAgent, callee: UserAgent, uri: str) -> tuple[object, object]:
    dialling = asyncio.ensure_future(caller.call(uri))
    inbound = await within(callee.next_call())
    await inbound.answer()
    outbound = await within(dialling)
    return outbound, inbound


@pytest.mark.parametrize("kind", ["tcp", "tls"])
async def test_a_call_over_a_stream_names_its_transport_and_ends_cleanly(
    kind: str, tls: TlsConfig
) -> None:
    async with (
        started_ua(listen=("udp", kind), tls=tls, user="alice") as alice,
        started_ua(listen=(kind,), tls=tls, user="bob") as bob,
    ):
        assert alice.ports["udp"] == alice.ports.get("tcp", alice.port)  # UDP and TCP share it
        outbound, inbound = await call_and_answer(alice, bob, bob.uri_for(kind))
        invite = parse_message(sent(alice, "INVITE")[0])
        assert invite.headers.get("Via") or "".startswith(f"SIP/2.0/{kind.upper()} ")
        assert f";transport={kind}>" in (invite.headers.get("Contact") or "")
        ok = parse_message(sent(bob, "200 OK")[0])
        assert f";transport={kind}>" in (ok.headers.get("Contact") or "")
        # The 200 went back on the connection the INVITE came in on: bob opened none.
        assert all(not stream.inbound for stream in alice._transports.connections.values())
        # bob hangs up: the BYE goes to alice's Contact, over the same transport.
        await within(inbound.hangup())  # type: ignore[attr-defined]
        await within(outbound.wait_ended())  # type: ignore[attr-defined]
        assert outbound.end_reason is EndReason.REMOTE_BYE  # type: ignore[attr-defined]
        bye = parse_message(sent(bob, "BYE")[0])
        assert bye.headers.get("Via") or "".startswith(f"SIP/2.0/{kind.upper()} ")
    assert not alice._transports.connections and not bob._transports.connections


async def test_an_untrusted_certificate_fails_the_call_at_once_with_503(
    tls: TlsConfig, tmp_path: Path
) -> None:
    other_ca = trustme.CA()  # alice trusts only this one, not the CA that signed bob's cert
    other_ca.cert_pem.write_to_path(str(tmp_path / "other.pem"))
    alice_tls = TlsConfig(cafile=tmp_path / "other.pem", certfile=tls.certfile)
    async with (
        started_ua(listen=("udp", "tls"), tls=alice_tls) as alice,
        started_ua(listen=("tls",), tls=tls, user="bob") as bob,
    ):
        with pytest.raises(CallFailed) as failed:
            await within(alice.call(bob.uri_for("tls")), 5.0)  # not Timer B's 32 s
        assert failed.value.status == 503
        assert "certificate" in str(failed.value)
        assert bob.incoming.empty() and not alice.calls


async def test_a_refused_connection_fails_the_call_at_once_with_503() -> None:
    port = free_tcp_port()
    async with started_ua(listen=("udp", "tcp")) as alice:
        with pytest.raises(CallFailed) as failed:
            await within(alice.call(f"sip:bob@127.0.0.1:{port};transport=tcp"), 5.0)
        assert failed.value.status == 503
        assert "refused" in str(failed.value).lower()
        assert not alice.calls and not alice._media


async def test_a_transport_we_do_not_listen_on_is_refused_before_anything_is_sent() -> None:
    async with started_ua() as alice:
        with pytest.raises(ValueError, match="add 'tcp' to listen="):
            await alice.call("sip:bob@127.0.0.1:5999;transport=tcp")
        with pytest.raises(ValueError, match="transport 'sctp' is not supported"):
            await alice.call("sip:bob@127.0.0.1:5999;transport=sctp")
        assert alice.trace == [] and not alice._media


def test_flows_follow_the_uri() -> None:
    assert flow_for(SipUri.parse("sip:a@10.0.0.1")) == Flow("10.0.0.1", 5060, "udp")
    assert flow_for(SipUri.parse("sip:a@10.0.0.1;transport=TCP")) == Flow("10.0.0.1", 5060, "tcp")
    assert flow_for(SipUri.parse("sips:a@example.com")) == Flow("example.com", 5061, "tls")
    assert flow_for(SipUri.parse("sip:a@[::1]:7;transport=tls")) == Flow("::1", 7, "tls")
    assert str(Flow("::1", 7, "tls")) == "tls:[::1]:7"


async def test_bad_tls_settings_are_named(tmp_path: Path, tls: TlsConfig) -> None:
    with pytest.raises(ValueError, match="needs tls=TlsConfig"):
        UserAgent(listen=("tls",))
    with pytest.raises(ValueError, match="each transport must be udp, tcp or tls"):
        UserAgent(listen=("ws",))
    missing = TlsConfig(certfile=tmp_path / "nope.pem")
    with pytest.raises(TlsConfigError, match=r"certfile .*nope\.pem is not a readable file"):
        await UserAgent("127.0.0.1", 0, listen=("tls",), tls=missing).start()
    (tmp_path / "garbage.pem").write_text("not a certificate\n")
    garbage = TlsConfig(certfile=tmp_path / "garbage.pem")
    with pytest.raises(TlsConfigError, match=r"garbage\.pem .* cannot be loaded"):
        await UserAgent("127.0.0.1", 0, listen=("tls",), tls=garbage).start()
    with pytest.raises(TlsConfigError, match="cafile"):
        TlsConfig(certfile=tls.certfile, require_client_cert=True).server_context()


@pytest.fixture
async def tcp_ua() -> AsyncIterator[UserAgent]:
    async with started_ua(listen=("tcp",)) as agent:
        yield agent


def options(call_id: str = "opt-1") -> bytes:
    return (
        "OPTIONS sip:wt@127.0.0.1 SIP/2.0\r\n"
        f"Via: SIP/2.0/TCP 127.0.0.1:9;branch=z9hG4bK-{call_id}\r\n"
        "From: <sip:probe@127.0.0.1>;tag=p\r\nTo: <sip:wt@127.0.0.1>\r\n"
        f"Call-ID: {call_id}\r\nCSeq: 1 OPTIONS\r\nContent-Length: 0\r\n\r\n"
    ).encode()


async def read_message(reader: asyncio.StreamReader) -> bytes:
    head = await within(reader.readuntil(b"\r\n\r\n"))
    length = int(head.split(b"Content-Length: ")[1].split(b"\r\n")[0])
    return head + await within(reader.readexactly(length))


async def test_responses_go_back_on_the_requests_connection_and_pings_get_pongs(
    tcp_ua: UserAgent,
) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", tcp_ua.ports["tcp"])
    writer.write(b"\r\n\r\n")
    assert await within(reader.readexactly(2)) == b"\r\n"
    writer.write(options()[:40])
    writer.write(options()[40:])  # split mid-message: framed, not parsed in halves
    response = parse_message(await read_message(reader))
    assert response.status == 200  # type: ignore[union-attr]
    # Via named port 9, where nobody listens: the answer came on this connection all the same.
    writer.close()
    await writer.wait_closed()


async def test_a_stream_that_breaks_framing_is_closed_and_others_carry_on(
    tcp_ua: UserAgent,
) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", tcp_ua.ports["tcp"])
    writer.write(options().replace(b"Content-Length: 0\r\n", b""))
    assert await within(reader.read()) == b""  # closed by the user agent
    writer.close()
    reader, writer = await asyncio.open_connection("127.0.0.1", tcp_ua.ports["tcp"])
    writer.write(options("opt-2"))
    assert parse_message(await read_message(reader)).status == 200  # type: ignore[union-attr]
    writer.close()
    await writer.wait_closed()


async def test_an_inbound_connection_that_sends_nothing_is_closed(tcp_ua: UserAgent) -> None:
    tcp_ua._transports.first_message_timeout = 0.3
    reader, writer = await asyncio.open_connection("127.0.0.1", tcp_ua.ports["tcp"])
    assert await within(reader.read(), 3.0) == b""
    writer.close()
    assert not tcp_ua._transports.connections


async def test_inbound_connections_are_capped(tcp_ua: UserAgent) -> None:
    tcp_ua._transports.max_connections = 2
    kept = [await asyncio.open_connection("127.0.0.1", tcp_ua.ports["tcp"]) for _ in range(2)]
    for _, writer in kept:  # make sure both are accepted before the third comes
        writer.write(options(f"cap-{id(writer)}"))
    for reader, _ in kept:
        await read_message(reader)
    reader, writer = await asyncio.open_connection("127.0.0.1", tcp_ua.ports["tcp"])
    assert await within(reader.read()) == b""  # refused: closed at once
    writer.close()
    for _, kept_writer in kept:
        kept_writer.close()
        await kept_writer.wait_closed()

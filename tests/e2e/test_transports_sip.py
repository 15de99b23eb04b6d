"""Warm transfers with legs on TCP and TLS, against baresip (libre's SIP stack, not ours).

One test has the engine as a TLS client (it dials the human over TLS and checks baresip's
certificate against the test CA), the other as a TLS server (the caller dials in over TLS).
Each proves the whole path works over that transport, not only that bytes
move: the human hears the briefing and accepts with a key, and the caller and human are bridged.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest
import trustme

from tests.e2e.conftest import Running, call_in, finish, plan_for
from tests.peers.baresip import BaresipPeer
from tests.peers.ports import free_port_pair
from warmtransfer.sip.transports import TlsConfig
from warmtransfer.transfer.outcome import Completed
from warmtransfer.transfer.states import Answered

pytestmark = pytest.mark.peers


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    return trustme.CA()


@pytest.fixture
def certs(tmp_path: Path, ca: trustme.CA) -> dict[str, Path]:
    """One CA; a certificate for 127.0.0.1 for the engine and one for baresip."""
    files = {"ca": tmp_path / "ca.pem"}
    ca.cert_pem.write_to_path(str(files["ca"]))
    for name in ("engine", "baresip"):
        files[name] = tmp_path / f"{name}.pem"
        issued = ca.issue_cert("127.0.0.1")
        issued.private_key_and_cert_chain_pem.write_to_path(str(files[name]))
    return files


@pytest.fixture
def engine_options(certs: dict[str, Path]) -> dict[str, Any]:
    return {
        "spoken_answers": False,
        "answer_detection": False,
        "listen": ("udp", "tcp", "tls"),
        "tls": TlsConfig(certfile=certs["engine"], cafile=certs["ca"]),
    }


def phone(
    workdir: Path, name: str, transport: str, wav: Path, certs: dict[str, Path], **options: Any
) -> Any:
    return BaresipPeer.start(
        workdir,
        name=name,
        user=name,
        audio_wav=wav,
        sip_port=free_port_pair(),
        transport=transport,
        tls_certificate=certs["baresip"],
        tls_cafile=certs["ca"],
        **options,
    )


def transports_used(running: Running) -> set[str]:
    """The transports of everything the engine sent; each request's Via must agree with it."""
    used = set()
    for entry in running.engine.ua.trace:
        if entry.direction != "out":
            continue
        used.add(entry.addr.transport)
        if not entry.data.startswith(b"SIP/2.0"):  # a request: its top Via is ours
            via = entry.data.split(b"\r\nVia: SIP/2.0/", 1)[1].split(b" ", 1)[0]
            assert via.decode().lower() == entry.addr.transport, entry.data[:200]
    return used


async def transfer_and_accept(
    running: Running, caller: BaresipPeer, human: BaresipPeer, transport: str
) -> None:
    engine_uri = running.engine.ua.uri_for(transport)
    engine_side = await call_in(running, caller, plan_for(human.uri), engine_uri)
    await caller.wait_event("CALL_ESTABLISHED", timeout=15)
    await human.wait_event("CALL_ESTABLISHED", timeout=15)
    async with asyncio.timeout(10):
        await running.happened(Answered).wait()
    await human.wait_recorded(2.0)  # the briefing is playing to the human
    await human.send_dtmf("1")
    leg, outcome = await finish(engine_side)
    assert isinstance(outcome, Completed), outcome
    assert not leg.ai_connected
    await human.wait_recorded(5.0)  # bridged audio flows over the stream legs' RTP
    await caller.hangup()
    await human.wait_event("CALL_CLOSED", timeout=10)


@pytest.mark.parametrize(
    ("caller_transport", "human_transport"),
    [("tcp", "tls"), ("tls", "tcp")],  # the engine as TLS client, then as TLS server
)
async def test_a_warm_transfer_across_stream_transports(
    running: Running,
    tmp_path: Path,
    caller_wav: Path,
    human_wav: Path,
    certs: dict[str, Path],
    caller_transport: str,
    human_transport: str,
    need_baresip: None,
) -> None:
    async with (
        phone(tmp_path, "caller", caller_transport, caller_wav, certs) as caller,
        phone(tmp_path, "human", human_transport, human_wav, certs, auto_answer=True) as human,
    ):
        assert human.uri.endswith(f";transport={human_transport}")
        await transfer_and_accept(running, caller, human, caller_transport)
        assert transports_used(running) == {"tcp", "tls"}

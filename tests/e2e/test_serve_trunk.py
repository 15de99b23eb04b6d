"""`warmtransfer serve` registering at its trunk from the config, against kamailio 5.6 as the
registrar with digest auth (tests/peers/kamailio.py), as the README's "Run it for real" says it
does: `[trunk]` with the password from the environment, registration kept up while serve runs.

Why against kamailio: the registrar's challenge, the digest check and the location lookup are
kamailio's, so a pass means a real registrar took our binding and routes calls by it. kamailio
listens on 127.0.0.2 and serve's `[inbound] allow_ips` lists only that address, so a call that
reaches serve came through the registrar, not straight from the caller on 127.0.0.1.

- registered: kamailio saves serve's contact; a baresip caller, authenticating to kamailio as
  another user (407), calls the AOR; kamailio finds serve in usrloc and relays; the caller
  presses 0, a baresip human presses 1, the transfer completes.
- SIGTERM: serve un-registers on its way out; a call to the AOR then gets kamailio's 404.
- a wrong password: serve does not start, and says which trunk refused it and why.
"""

from __future__ import annotations

import os
import re
import signal
from pathlib import Path

import pytest

from tests.e2e.conftest import baresip_caller, baresip_human
from tests.e2e.test_serve import serve
from tests.e2e.test_serve import write_config as base_config
from tests.peers.kamailio import KamailioPeer
from tests.peers.kamailio_dispatcher import PROXY_HOST
from tests.peers.ports import free_port_pair

pytestmark = pytest.mark.peers

PASSWORD_ENV = "WARMTRANSFER_E2E_TRUNK_PASSWORD"
USERS = {"warmtransfer": "trunk-secret-7", "caller": "caller-secret-3"}
# baresip 1.0 answers MD5 challenges only; serve's SHA-256 is proven in test_kamailio.py.
ALGORITHM = "MD5"


def write_config(folder: Path, port: int, human_uri: str, registrar: str) -> Path:
    """test_serve.py's config, registering at `registrar` as "warmtransfer", callers only from
    the registrar's address."""
    path = base_config(folder, port, human_uri)
    with path.open("a") as config:
        config.write(
            f"""
[trunk]
registrar = "{registrar}"
username = "warmtransfer"
password = {{ env = "{PASSWORD_ENV}" }}
registration = true
expires = 60

[inbound]
allow_ips = ["{PROXY_HOST}"]
"""
        )
    return path


async def test_serve_registers_takes_a_call_to_its_aor_and_unregisters_on_sigterm(
    tmp_path: Path,
    caller_wav: Path,
    human_wav: Path,
    need_baresip: None,
    need_kamailio: None,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv(PASSWORD_ENV, USERS["warmtransfer"])  # serve inherits the environment
    port = free_port_pair()
    async with (
        KamailioPeer.start(
            tmp_path / "kamailio", users=USERS, algorithm=ALGORITHM, host=PROXY_HOST
        ) as kam,
        baresip_human(tmp_path, human_wav) as human,
    ):
        aor = kam.aor("warmtransfer")
        config = write_config(tmp_path, port, human.uri, kam.uri)
        async with serve(tmp_path, config) as service:
            await service.wait_for_output(rf"registered at {re.escape(kam.uri)}", 120)
            await service.wait_for_output(r"ready: taking calls", 120)
            # kamailio challenged the REGISTER (401) and saved serve's contact under the AOR.
            await kam.wait_log(r"wt-auth 401 REGISTER au=<null>")
            await kam.wait_log(
                rf"wt-registered {re.escape(aor)} contact <sip:warmtransfer@127\.0\.0\.1:{port}"
                r"[;>].* expires 60"
            )
            async with baresip_caller(tmp_path, caller_wav, password=USERS["caller"]) as caller:
                await caller.dial(aor)
                established = await caller.wait_event("CALL_ESTABLISHED", timeout=30)
                call_id = str(established["id"])
                # The caller authenticated (407, then its credentials), and kamailio relayed
                # the INVITE to the contact serve registered.
                await kam.wait_log(r"wt-auth 407 INVITE au=<null>")
                await kam.wait_log(
                    rf"wt-relay INVITE to sip:warmtransfer@127\.0\.0\.1:{port}\b", timeout=10
                )
                await service.wait_for_output(rf"call {re.escape(call_id)} from \S+ answered", 20)
                await caller.send_dtmf("0")
                await service.wait_for_output(r"caller pressed 0, transferring", 30)
                await human.wait_event("CALL_ESTABLISHED", timeout=30)
                await human.wait_recorded(2.0)  # some of the briefing
                await human.send_dtmf("1")
                await service.wait_for_output(r"transfer outcome completed", 30)
                await caller.hangup()  # the BYE follows the Record-Route through kamailio
                await human.wait_event("CALL_CLOSED", timeout=15)
                await service.wait_for_output(
                    rf"call {re.escape(call_id)} ended \(remote_bye\)", 20
                )

            mark = len(kam.log)
            os.kill(service.pid or 0, signal.SIGTERM)
            assert await service.wait_exit(30) == 0, service.tail()
        assert "Traceback" not in service.log, service.tail()
        # On its way out serve removed its binding (Expires: 0, authenticated again)...
        await kam.wait_log(rf"wt-registered {re.escape(aor)} contact \S+ expires 0", start=mark)

        # ... so the AOR leads nowhere now: kamailio answers the next call itself, with 404.
        async with baresip_caller(
            tmp_path / "later", caller_wav, password=USERS["caller"]
        ) as later:
            mark = len(kam.log)
            await later.dial(aor)
            closed = await later.wait_event("CALL_CLOSED", timeout=30)
            assert str(closed.get("param", "")).startswith("404"), closed
            await kam.wait_log(rf"wt-not-found {re.escape(aor)}", start=mark)
            assert "wt-relay INVITE" not in kam.log[mark:]


async def test_a_wrong_trunk_password_stops_serve_with_an_error_naming_the_trunk(
    tmp_path: Path, need_kamailio: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(PASSWORD_ENV, "not-the-password")
    port = free_port_pair()
    async with KamailioPeer.start(
        tmp_path / "kamailio", users=USERS, algorithm=ALGORITHM, host=PROXY_HOST
    ) as kam:
        config = write_config(tmp_path, port, "sip:human@127.0.0.1:5999", kam.uri)
        async with serve(tmp_path, config) as service:
            code = await service.wait_exit(120)
        # Challenged, answered with the wrong password, refused again: no third try.
        assert len(await kam.wait_lines("wt-auth 401 REGISTER", 2)) == 2
    log = service.log
    assert code == 1, log
    assert "ready: taking calls" not in log
    assert "Traceback" not in log, log
    assert re.search(
        rf"error: \S+warmtransfer\.toml: \[trunk\] registration at {re.escape(kam.uri)} "
        r"as 'warmtransfer' refused: 401 Unauthorized \(check \[trunk\] username and password\)",
        log,
    ), log
    assert "not-the-password" not in log  # the secret itself is never printed

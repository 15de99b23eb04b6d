"""From a config to a running user agent: transports, TLS, credentials and inbound policy."""

from __future__ import annotations

from pathlib import Path

import trustme

from warmtransfer.config import load_config
from warmtransfer.config.build import summarizer_from_config
from warmtransfer.consult.scripted import ScriptedConsultant
from warmtransfer.consult.summary import ExtractiveSummarizer

CONFIG = """\
[sip]
host = "127.0.0.1"
advertised_host = "203.0.113.10"
listen = [
  { transport = "udp", port = 0 },
  { transport = "tcp", port = 0 },
  { transport = "tls", port = 0 },
]
session_expires = 600

[sip.tls]
cert = "sip.pem"
key = "sip.key"

[trunk]
registrar = "sip:registrar.example.com"
username = "acme"
password = "trunk-password"
registration = false

[inbound]
allow_ips = ["127.0.0.1"]
credentials = [{ username = "pbx", password = "inbound-password" }]

[speech]
spoken_answers = false
answer_detection = false
"""


async def test_build_engine_listens_on_the_configured_transports(tmp_path: Path) -> None:
    leaf = trustme.CA().issue_cert("127.0.0.1")
    leaf.cert_chain_pems[0].write_to_path(str(tmp_path / "sip.pem"))
    leaf.private_key_pem.write_to_path(str(tmp_path / "sip.key"))
    (tmp_path / "warmtransfer.toml").write_text(CONFIG)
    config = load_config(tmp_path / "warmtransfer.toml")

    engine = config.build_engine()
    ua = engine.ua
    assert ua.listen == ("udp", "tcp", "tls")
    assert ua.advertised_host == "203.0.113.10"
    assert ua.credentials is not None and ua.credentials.username == "acme"
    assert ua.credentials.password == "trunk-password"
    assert ua.inbound is not None and ua.inbound.allows("127.0.0.1")
    assert not ua.inbound.allows("192.0.2.1")
    assert [c.username for c in ua.inbound.users()] == ["pbx"]
    assert ua.session_timer is not None and ua.session_timer.interval == 600
    assert isinstance(engine.consultant, ScriptedConsultant) and engine.spotter is None
    try:
        await ua.start()  # the sockets only: the speech models are not needed for this
        ports = ua.ports
        assert set(ports) == {"udp", "tcp", "tls"} and all(ports.values())
        assert ports["udp"] == ports["tcp"]
        assert "203.0.113.10" in ua.contact("tls")
    finally:
        await engine.close()
    assert isinstance(summarizer_from_config(config), ExtractiveSummarizer)

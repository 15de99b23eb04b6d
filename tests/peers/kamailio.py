# ruff: noqa: ASYNC240  (a small config file written from async code)
"""KamailioPeer: kamailio 5.6 as a registrar and digest-authenticating proxy on loopback.

    async with KamailioPeer.start(tmp_path, users={"alice": "pw"}) as kam:
        await ua.register(kam.uri)           # 401, then 200 with our binding in usrloc
        await other.call(kam.aor("alice"))   # 407, then relayed to alice's contact

No database: the config written for each run checks passwords with `pv_www_authenticate` /
`pv_proxy_authenticate` against `$var(pw)`, set from the username (`$au`) in a route generated
from `users`. REGISTER is challenged with 401 (WWW-Authenticate), INVITE with 407
(Proxy-Authenticate); an INVITE that passes is looked up in usrloc (memory only, db_mode 0) and
relayed with record_route, so in-dialog requests (ACK, BYE) come back through the proxy.
`algorithm` goes to the auth module's "algorithm" parameter ("MD5" or "SHA-256").

Measured here (kamailio 5.6.3):
- `kamailio -f cfg -DD -E` stays in the foreground and logs to stderr; SIGTERM ends it with
  "Thank you for flying kamailio!!!". It starts in about 0.1 s on loopback.
- The default realm would be the To domain (`$td`, "127.0.0.1"); we set one explicitly.
- Every challenge carries a fresh nonce, also after a wrong password (never the same nonce
  twice), and no `stale` flag: a client must count its attempts rather than compare nonces.
- With the "algorithm" parameter set to SHA-256 it offers only SHA-256 (one WWW-Authenticate).
- The config keywords are `disable_tcp` / `enable_sctp`, not `tcp_disable` (a parse error).
- `pv_www_authenticate(realm, passwd, flags)`: flags "1" means passwd is an HA1 hash, not the
  password; with "1" and a plain password every answer fails with rc -2 (invalid password).
  rc -5 is "no credentials" (the first, unauthenticated request).
- Each request is challenged on its own: the unREGISTER on close costs a 401 round trip too.
Readiness: an OPTIONS to the proxy's own URI is answered "200 ready" by the config; `start`
probes until that answer arrives (each probe waits for a reply with a deadline, no sleeps).
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import secrets
import shutil
import time
from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import asynccontextmanager
from pathlib import Path

from .ports import LOOPBACK, free_udp_port
from .process import PeerError, PeerProcess, RunsAProcess

__all__ = ["KAMAILIO", "KamailioPeer", "PeerError", "run_kamailio", "wait_answering_options"]

KAMAILIO = shutil.which("kamailio") or "/usr/sbin/kamailio"
MODULES = Path("/usr/lib/x86_64-linux-gnu/kamailio/modules")
_SAFE = re.compile(r"[A-Za-z0-9._@+-]+")

_CONFIG = """#!KAMAILIO
debug=2
log_stderror=yes
children=2
auto_aliases=no
disable_tcp=yes
enable_sctp=no
listen=udp:{host}:{port}
alias="{host}:{port}"

mpath="{modules}/"
loadmodule "tm.so"
loadmodule "sl.so"
loadmodule "rr.so"
loadmodule "pv.so"
loadmodule "maxfwd.so"
loadmodule "textops.so"
loadmodule "siputils.so"
loadmodule "xlog.so"
loadmodule "sanity.so"
loadmodule "usrloc.so"
loadmodule "registrar.so"
loadmodule "auth.so"

modparam("auth", "algorithm", "{algorithm}")
modparam("auth", "qop", "auth")
modparam("auth", "nonce_count", 1)
modparam("auth", "secret", "{secret}")
modparam("usrloc", "db_mode", 0)
modparam("registrar", "max_expires", {max_expires})
modparam("registrar", "min_expires", 1)
modparam("rr", "enable_full_lr", 1)

request_route {{
    if (!mf_process_maxfwd_header("10")) {{ sl_send_reply("483", "Too Many Hops"); exit; }}
    if (!sanity_check()) {{ exit; }}
    xlog("L_NOTICE", "wt-req $rm $ru from $si:$sp cseq $cs au=$au\\n");
    if (is_method("OPTIONS") && uri==myself && $rU==$null) {{
        sl_send_reply("200", "ready");
        exit;
    }}
    if (has_totag()) {{
        if (loose_route()) {{ t_relay(); exit; }}
        if (is_method("ACK")) {{ if (t_check_trans()) {{ t_relay(); }} exit; }}
        sl_send_reply("404", "Not here");
        exit;
    }}
    if (is_method("CANCEL")) {{ if (t_check_trans()) {{ t_relay(); }} exit; }}
    t_check_trans();
    if (is_method("REGISTER")) {{
        route(PASSWORD);
        if (!pv_www_authenticate("{realm}", "$var(pw)", "0")) {{
            xlog("L_NOTICE", "wt-auth 401 REGISTER au=$au rc=$rc\\n");
            www_challenge("{realm}", "1");
            exit;
        }}
        if (!save("location")) {{ sl_reply_error(); exit; }}
        xlog("L_NOTICE", "wt-registered $tu contact $ct expires $hdr(Expires)\\n");
        exit;
    }}
    if (is_method("INVITE")) {{
        route(PASSWORD);
        if (!pv_proxy_authenticate("{realm}", "$var(pw)", "0")) {{
            xlog("L_NOTICE", "wt-auth 407 INVITE au=$au rc=$rc\\n");
            proxy_challenge("{realm}", "1");
            exit;
        }}
        consume_credentials();
    }}
    if (!lookup("location")) {{
        xlog("L_NOTICE", "wt-not-found $ru\\n");
        sl_send_reply("404", "Not Found");
        exit;
    }}
    record_route();
    xlog("L_NOTICE", "wt-relay $rm to $ru\\n");
    t_relay();
}}

route[PASSWORD] {{
    $var(pw) = "-no-such-password-";
{password_lines}
}}
"""


def write_config(
    path: Path,
    *,
    port: int,
    users: Mapping[str, str],
    realm: str,
    algorithm: str,
    max_expires: int = 3600,
    host: str = LOOPBACK,
) -> Path:
    for text in (realm, *users, *users.values()):
        if not _SAFE.fullmatch(text):  # these go into the config between quotes, unescaped
            raise ValueError(f"{text!r}: use letters, digits and ._@+- only")
    if algorithm not in ("MD5", "SHA-256"):
        raise ValueError(f"kamailio's auth module offers MD5 or SHA-256, not {algorithm!r}")
    lines = "\n".join(
        f'    if ($au == "{user}") {{ $var(pw) = "{password}"; }}'
        for user, password in users.items()
    )
    path.write_text(
        _CONFIG.format(
            host=host,
            port=port,
            modules=MODULES,
            algorithm=algorithm,
            secret=secrets.token_hex(16),
            realm=realm,
            max_expires=max_expires,
            password_lines=lines,
        )
    )
    return path


class _Probe(asyncio.DatagramProtocol):
    def __init__(self) -> None:
        self.replies: asyncio.Queue[bytes] = asyncio.Queue()

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        self.replies.put_nowait(data)


async def wait_answering_options(
    proc: PeerProcess, address: tuple[str, int], timeout: float
) -> None:
    """Until the kamailio at `address` answers an OPTIONS to its own URI with 200 (each probe
    waits for a reply with a deadline, then probes again); PeerError if it exits or the
    deadline passes. Every config run here answers such an OPTIONS itself."""
    host, port = address
    loop = asyncio.get_running_loop()
    transport, probe = await loop.create_datagram_endpoint(_Probe, local_addr=(LOOPBACK, 0))
    try:
        local = transport.get_extra_info("sockname")[1]
        deadline = time.monotonic() + timeout
        attempt = 0
        while True:
            if proc.returncode is not None:
                raise proc.error(f"exited (code {proc.returncode}) before it was ready")
            if time.monotonic() > deadline:
                raise proc.error(f"no answer to OPTIONS within {timeout:.1f}s")
            attempt += 1
            options = (
                f"OPTIONS sip:{host}:{port} SIP/2.0\r\n"
                f"Via: SIP/2.0/UDP {LOOPBACK}:{local};branch=z9hG4bK-probe{attempt}\r\n"
                f"From: <sip:probe@{LOOPBACK}>;tag=probe\r\n"
                f"To: <sip:{host}:{port}>\r\n"
                f"Call-ID: probe-{attempt}@{LOOPBACK}\r\n"
                f"CSeq: {attempt} OPTIONS\r\nMax-Forwards: 70\r\nContent-Length: 0\r\n\r\n"
            )
            transport.sendto(options.encode(), address)
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(0.2):  # a reply deadline, then probe again
                    reply = await probe.replies.get()
                    if reply.startswith(b"SIP/2.0 200"):
                        return
    finally:
        transport.close()


@asynccontextmanager
async def run_kamailio(
    workdir: Path,
    config: Path,
    address: tuple[str, int],
    *,
    args: Sequence[str] = (),
    ready_timeout: float = 10.0,
) -> AsyncIterator[PeerProcess]:
    """Run `kamailio -f config -DD -E *args` in `workdir` until the block ends, once it answers
    OPTIONS at `address`; SIGTERM then SIGKILL on the way out, always. A test failing inside
    the block gets kamailio's last output as a note."""
    proc = PeerProcess(
        "kamailio",
        [KAMAILIO, "-f", str(config), "-DD", "-E", *args],
        workdir,
        workdir / "kamailio.log",
    )
    await proc.start()
    try:
        await wait_answering_options(proc, address, ready_timeout)
        try:
            yield proc
        except BaseException as exc:
            if isinstance(exc, AssertionError | TimeoutError) and not isinstance(exc, PeerError):
                exc.add_note(
                    f"----- last output of kamailio ({proc.log_path}) -----\n{proc.tail()}"
                )
            raise
    finally:
        await proc.stop()


class ProxyAddress:
    """Where a kamailio peer listens, and the URIs that names (shared by every kamailio peer)."""

    host: str
    port: int

    @property
    def address(self) -> tuple[str, int]:
        return (self.host, self.port)

    @property
    def uri(self) -> str:
        """The proxy itself (a REGISTER's Request-URI)."""
        return f"sip:{self.host}:{self.port}"

    def aor(self, user: str) -> str:
        """`user` at the proxy: an address of record, or what a caller dials through it."""
        return f"sip:{user}@{self.host}:{self.port}"


class KamailioPeer(ProxyAddress, RunsAProcess):
    def __init__(
        self, *, proc: PeerProcess, port: int, realm: str, config: Path, host: str = LOOPBACK
    ) -> None:
        self.proc = proc
        self.host = host
        self.port = port
        self.realm = realm
        self.config = config

    def lines(self, marker: str) -> list[str]:
        """Log lines of the config's own xlog markers (wt-req, wt-auth, wt-registered…)."""
        return [line for line in self.log.splitlines() if marker in line]

    async def wait_lines(self, marker: str, count: int, timeout: float = 5.0) -> list[str]:
        """At least `count` lines with `marker` (kamailio's stderr may trail its SIP replies)."""
        await self.proc.wait_until(
            lambda: len(self.lines(marker)) >= count, timeout, f"{count} x {marker!r}"
        )
        return self.lines(marker)

    async def wait_log(
        self, pattern: str, timeout: float = 5.0, *, start: int = 0
    ) -> re.Match[str]:
        return await self.proc.wait_for_output(pattern, timeout, start=start)

    @classmethod
    @asynccontextmanager
    async def start(
        cls,
        workdir: Path,
        *,
        users: Mapping[str, str],
        realm: str = "kamailio.test",
        algorithm: str = "SHA-256",
        port: int | None = None,
        host: str = LOOPBACK,
        ready_timeout: float = 10.0,
    ) -> AsyncIterator[KamailioPeer]:
        """Run kamailio until the block ends; SIGTERM then SIGKILL on the way out, always.
        `host`: the loopback address it listens on (e.g. 127.0.0.2, to tell its requests from
        those of peers on 127.0.0.1)."""
        workdir.mkdir(parents=True, exist_ok=True)
        port = port or free_udp_port()
        config = write_config(
            workdir / "kamailio.cfg",
            port=port,
            users=users,
            realm=realm,
            algorithm=algorithm,
            host=host,
        )
        async with run_kamailio(workdir, config, (host, port), ready_timeout=ready_timeout) as proc:
            yield cls(proc=proc, port=port, realm=realm, config=config, host=host)

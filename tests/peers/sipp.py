# ruff: noqa: ASYNC240  (small local files read from async code)
"""SippPeer: sipp 3.6.1 (Debian sip-tester) running one scripted call over loopback.

    async with SippPeer.uas(tmp_path, "uas_busy") as human:
        ...  # make the engine dial human.uri
        assert await human.wait() == 0          # 0 = the scenario ran to its end
        assert human.received_requests() == ["INVITE", "ACK"]

    async with SippPeer.uac(tmp_path, "uac_call", "127.0.0.1:5060", service="agent",
                            variables={"bye_after_ms": 4000}) as caller:
        assert await caller.wait() == 0

Scenarios are looked up in tests/peers/scenarios/ (name with or without .xml) unless a path is
given. Each run gets its own directory `workdir/<name>` (sipp's cwd): the scenario's pcaps are
copied to `./pcap/` there (play_pcap_audio paths are relative to the cwd), and sipp writes
`messages.log` (-trace_msg: every SIP message sent/received), `errors.log` (-trace_err: unexpected
messages, timeouts), `logs.log` (<log> actions) and `sipp.log` (stdout/stderr: final screens).

sipp 3.6.1 behaviour worth knowing (measured here):
- play_pcap_audio sends the captured RTP *as is* (SSRC, sequence numbers, timestamps, payload
  type) from [media_port] to the address/port in the peer's SDP. g711a.pcap is PT 8 (A-law,
  7 s, quiet for its first ~1.5 s); dtmf_2833_<d>.pcap is PT 101 with another SSRC and unrelated
  seq/timestamps (10 packets, 140 ms, E bit on the last 3). A new play replaces the running one.
- sipp never negotiates: the scenarios answer "8 0 101" whatever was offered.
- sipp binds the media port and media port + 2 on 127.0.0.1 but only reads them with -rtp_echo.
- -set values are strings: scenarios convert with <todouble> before <pause variable=...>.
- A variable assigned but never used is a fatal scenario error ("referenced 1 times").
- messages.log is written as messages go, so received_requests() works during a call.
- Failures: exit code 1 plus errors.log lines such as "Aborting call on unexpected message for
  Call-Id '...': while expecting 'BYE' (index 9), received '<the message>'" or a recv timeout;
  exit code 255 when the global -timeout hit (nobody called the uas). expect_success() puts the
  SIP flow and errors.log into the PeerError.

Exit codes (sipp): 0 all calls passed, 1 at least one call failed (timeout, unexpected message,
retransmission exhausted), 97 exit on internal command, 99 normal exit without calls processed,
255 (-1) fatal error (bad scenario/arguments), 254 (-2) fatal error binding a socket.
"""

from __future__ import annotations

import re
import shutil
from collections.abc import AsyncIterator, Iterable, Mapping
from contextlib import asynccontextmanager
from pathlib import Path

from .ports import LOOPBACK, free_media_port, free_port_pair, free_udp_port
from .process import PeerError, PeerProcess, RunsAProcess, owns_port

__all__ = ["EXIT_CODES", "PeerError", "SippPeer", "scenario_path"]

SIPP = shutil.which("sipp") or "/usr/bin/sipp"
SCENARIOS = Path(__file__).parent / "scenarios"
PCAP_DIR = Path("/usr/share/sip-tester")

EXIT_CODES = {
    0: "all calls passed",
    1: "at least one call failed",
    97: "exit on internal command",
    99: "normal exit without calls processed",
    255: "fatal error",
    254: "fatal error binding a socket",
}

# One entry of the -trace_msg log:
#   ----------------------------------------------- 2026-11-26 01:41:46.565594
#   UDP message received [511] bytes :            (or: UDP message sent (309 bytes):)
#   <blank>
#   INVITE sip:... SIP/2.0
_BLOCK = re.compile(
    r"^-{20,} (?P<ts>[^\n]*)\n(?P<proto>\w+) message (?P<dir>received|sent)[^\n]*\n\n"
    r"(?P<first>[^\n]*)",
    re.M,
)


def scenario_path(scenario: str | Path) -> Path:
    p = Path(scenario)
    if p.suffix != ".xml":
        p = p.with_suffix(".xml")
    if not p.is_absolute() and not p.exists():
        p = SCENARIOS / p
    if not p.exists():
        raise FileNotFoundError(f"sipp scenario {scenario!r} not found (looked in {SCENARIOS})")
    return p.resolve()


class SippPeer(RunsAProcess):
    def __init__(
        self,
        *,
        name: str,
        dir: Path,
        scenario: Path,
        mode: str,
        port: int,
        media_port: int,
        user: str,
        transport: str,
        proc: PeerProcess,
    ) -> None:
        self.name = name
        self.dir = dir
        self.scenario = scenario
        self.mode = mode
        self.port = port
        self.media_port = media_port
        self.user = user
        self.transport = transport
        self.proc = proc

    # -- properties ------------------------------------------------------------------------------
    @property
    def uri(self) -> str:
        """For a uas: the URI to dial. (For a uac: its own contact address.)"""
        suffix = "" if self.transport == "udp" else f";transport={self.transport}"
        return f"sip:{self.user}@{LOOPBACK}:{self.port}{suffix}"

    @property
    def messages_path(self) -> Path:
        return self.dir / "messages.log"

    @property
    def errors_path(self) -> Path:
        return self.dir / "errors.log"

    # -- lifecycle -------------------------------------------------------------------------------
    @classmethod
    @asynccontextmanager
    async def uas(
        cls,
        workdir: Path,
        scenario: str | Path,
        *,
        port: int | None = None,
        media_port: int | None = None,
        user: str = "human",
        name: str | None = None,
        variables: Mapping[str, object] | None = None,
        keys: Mapping[str, object] | None = None,
        timeout: float = 30.0,
        recv_timeout: float = 15.0,
        transport: str = "udp",
        extra: Iterable[str] = (),
        start_timeout: float = 5.0,
    ) -> AsyncIterator[SippPeer]:
        """Run `scenario` as the called party on 127.0.0.1:`port`; yields once sipp listens.

        variables: `-set NAME VALUE` (the scenarios' documented knobs, e.g. ring_ms).
        keys: `-key NAME VALUE` ([NAME] keywords in messages).
        timeout: global `-timeout` with `-timeout_error`: after it sipp quits with exit code 255
            and "<scenario> timed out after 'N' seconds" in errors.log (e.g. nobody called).
        recv_timeout: `-recv_timeout`, bound on every wait for a message once the call exists.
        """
        async with cls._run(
            "uas",
            workdir,
            scenario,
            None,
            port=port,
            media_port=media_port,
            user=user,
            name=name,
            variables=variables,
            keys=keys,
            timeout=timeout,
            recv_timeout=recv_timeout,
            transport=transport,
            extra=extra,
            start_timeout=start_timeout,
        ) as peer:
            yield peer

    @classmethod
    @asynccontextmanager
    async def uac(
        cls,
        workdir: Path,
        scenario: str | Path,
        remote: str = "127.0.0.1:5060",
        *,
        service: str = "agent",
        port: int | None = None,
        media_port: int | None = None,
        name: str | None = None,
        variables: Mapping[str, object] | None = None,
        keys: Mapping[str, object] | None = None,
        timeout: float = 30.0,
        recv_timeout: float = 15.0,
        transport: str = "udp",
        extra: Iterable[str] = (),
        start_timeout: float = 5.0,
    ) -> AsyncIterator[SippPeer]:
        """Run `scenario` as the caller: one call to `remote` (host:port), Request-URI user
        `service`. Starts calling immediately."""
        async with cls._run(
            "uac",
            workdir,
            scenario,
            remote,
            port=port,
            media_port=media_port,
            user=service,
            name=name,
            variables=variables,
            keys=keys,
            timeout=timeout,
            recv_timeout=recv_timeout,
            transport=transport,
            extra=extra,
            start_timeout=start_timeout,
        ) as peer:
            yield peer

    @classmethod
    @asynccontextmanager
    async def _run(
        cls,
        mode: str,
        workdir: Path,
        scenario: str | Path,
        remote: str | None,
        *,
        port: int | None,
        media_port: int | None,
        user: str,
        name: str | None,
        variables: Mapping[str, object] | None,
        keys: Mapping[str, object] | None,
        timeout: float,
        recv_timeout: float,
        transport: str,
        extra: Iterable[str],
        start_timeout: float,
    ) -> AsyncIterator[SippPeer]:
        if transport not in ("udp", "tcp"):
            raise ValueError(f"transport must be udp or tcp, not {transport!r}")
        sc = scenario_path(scenario)
        run_name = name or f"sipp-{sc.stem}"
        run_dir = Path(workdir) / run_name
        (run_dir / "pcap").mkdir(parents=True, exist_ok=True)
        for pcap in PCAP_DIR.glob("*.pcap"):
            shutil.copy(pcap, run_dir / "pcap" / pcap.name)
        # sipp 3.6 resolves play_pcap_audio paths next to the scenario first, then in the cwd:
        # run a copy placed in the cwd so both agree (and the run dir is self-contained).
        local_sc = run_dir / sc.name
        shutil.copy(sc, local_sc)

        attempts = 3  # only port races (exit code 254, "Unable to bind") are retried
        for attempt in range(attempts):
            sip_port = port if port is not None else free_port_pair()
            mport = media_port if media_port is not None else free_media_port()
            argv = [
                SIPP,
                "-sf",
                local_sc.name,
                *([remote] if remote else []),
                "-i",
                LOOPBACK,
                "-p",
                str(sip_port),
                "-mi",
                LOOPBACK,
                "-mp",
                str(mport),
                # sipp's remote-control UDP socket (default 0.0.0.0:8888 and up): keep it on
                # loopback, on a port of our choosing.
                "-ci",
                LOOPBACK,
                "-cp",
                str(free_udp_port()),
                "-t",
                "u1" if transport == "udp" else "t1",
                "-s",
                user,
                "-m",
                "1",
                "-l",
                "1",
                "-nostdin",
                "-aa",  # 200 OK to stray INFO/NOTIFY/OPTIONS/UPDATE instead of failing
                "-trace_msg",
                "-message_file",
                "messages.log",
                "-trace_err",
                "-error_file",
                "errors.log",
                "-trace_logs",
                "-log_file",
                "logs.log",
                "-timeout",
                f"{max(1, round(timeout))}s",
                "-timeout_error",
                "-recv_timeout",
                str(max(1, round(recv_timeout * 1000))),
            ]
            for k, v in (variables or {}).items():
                argv += ["-set", str(k), str(v)]
            for k, v in (keys or {}).items():
                argv += ["-key", str(k), str(v)]
            argv += list(extra)
            proc = PeerProcess(run_name, argv, run_dir, run_dir / "sipp.log")
            peer = cls(
                name=run_name,
                dir=run_dir,
                scenario=sc,
                mode=mode,
                port=sip_port,
                media_port=mport,
                user=user,
                transport=transport,
                proc=proc,
            )
            proc.diagnostics = peer._error_digest
            try:
                await proc.start()
                # Ready = sipp's own socket is bound to the SIP port (checked via /proc), or
                # sipp already exited (a uac whose call is over, or a failure).
                proto = "udp" if transport == "udp" else "tcp"

                def ready(proc: PeerProcess = proc, p: int = sip_port, t: str = proto) -> bool:
                    return proc.returncode is not None or owns_port(proc.pid, p, t)

                await proc.wait_until(
                    ready, start_timeout, f"sipp to bind {proto} {sip_port}", poll=0.01
                )
                if proc.returncode == 254 and attempt + 1 < attempts:
                    continue  # lost a port race (SIP or media port): fresh ports, new process
                if mode == "uas" and proc.returncode is not None:
                    raise proc.error(f"exited (code {proc.returncode}) before any call arrived")
                yield peer
                return
            finally:
                await proc.stop(grace=2.0)

    # -- results ---------------------------------------------------------------------------------
    async def wait(self, timeout: float = 30.0) -> int:
        """Wait for sipp to finish its call; returns the exit code (0 = scenario passed)."""
        return await self.proc.wait_exit(timeout)

    async def expect_success(self, timeout: float = 30.0) -> None:
        """wait() and raise PeerError (with messages/errors) unless the scenario passed."""
        rc = await self.wait(timeout)
        if rc != 0:
            raise self.proc.error(
                f"scenario {self.scenario.name} failed: exit code {rc} ({EXIT_CODES.get(rc, '?')})"
            )

    def _error_digest(self) -> str:
        flow = " ".join(f"{'<-' if d == 'received' else '->'}{first}" for d, first in self.flow())
        errors = self.errors()[-3000:]
        return f"----- SIP flow: {flow}\n" + (
            f"----- {self.errors_path}:\n{errors}\n" if errors else ""
        )

    def messages(self) -> str:
        """The -trace_msg log: every SIP message sent and received, with timestamps."""
        try:
            return self.messages_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def errors(self) -> str:
        """The -trace_err log (unexpected messages, timeouts)."""
        try:
            return self.errors_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def flow(self) -> list[tuple[str, str]]:
        """[(direction "received"|"sent", first line)] in order, from the message log."""
        return [(m["dir"], m["first"].strip()) for m in _BLOCK.finditer(self.messages())]

    def _firsts(self, direction: str, responses: bool) -> list[str]:
        return [
            first
            for d, first in self.flow()
            if d == direction and first.startswith("SIP/2.0") == responses
        ]

    def received_requests(self) -> list[str]:
        """Methods of the requests sipp received, in order, e.g. ["INVITE", "CANCEL", "ACK"]."""
        return [first.split()[0] for first in self._firsts("received", responses=False)]

    def received_responses(self) -> list[int]:
        """Status codes of the responses sipp received, in order, e.g. [100, 180, 200, 200]."""
        return [int(first.split()[1]) for first in self._firsts("received", responses=True)]

    def sent_requests(self) -> list[str]:
        return [first.split()[0] for first in self._firsts("sent", responses=False)]

    def sent_responses(self) -> list[int]:
        return [int(first.split()[1]) for first in self._firsts("sent", responses=True)]

    def received_messages(self, start_line: str = "") -> list[str]:
        """Full text of the received messages whose first line starts with `start_line`."""
        text = self.messages()
        out = []
        blocks = list(_BLOCK.finditer(text))
        for i, m in enumerate(blocks):
            if m["dir"] != "received" or not m["first"].startswith(start_line):
                continue
            end = blocks[i + 1].start() if i + 1 < len(blocks) else len(text)
            out.append(text[m.start("first") : end].strip("\n"))
        return out

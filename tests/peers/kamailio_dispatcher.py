# ruff: noqa: ASYNC240  (a small list file written from async code)
"""DispatcherPeer: kamailio 5.6 running the repository's own examples/kamailio/dispatcher.cfg.

    async with DispatcherPeer.start(tmp_path, [("127.0.0.1", 5070), ("127.0.0.1", 5072)]) as kam:
        await caller.dial(kam.aor("warmtransfer"))     # to one instance, round-robin
        await kam.wait_log(r"instance sip:127\\.0\\.0\\.1:5070 up")

Why the example and not a config of our own: the README sends operators to that file, so the
test must prove the file, not a copy of it. It is loaded unchanged; only what differs per site
is given at start, through the defines it documents (`kamailio -A NAME=value`): `LISTEN` (the
address and port) and `DISPATCHER_LIST` (the path of the list). The list is the example's
dispatcher.list with its destinations replaced, in order, by the instances of the test; the
rest of each line (set, flags, priority) is kept, so the flags of the example are what runs.

What the example logs (xlog, stderr with -E) and the tests wait for:
- "call <Call-ID> from <ip>: to instance <uri>"             a new call, round-robin
- "call <Call-ID>: the instance answered <code>, trying <uri>"   the failure route's retry
- "instance <uri> down: ..." / "instance <uri> up: ..."      OPTIONS pings changed its state

Measured here (kamailio 5.6.3): the first OPTIONS pings go out ds_ping_interval (10 s) after
start; a ping nobody answers is given up after fr_timer (3 s), so "down" appears about 13 s
after start when nothing listens.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from pathlib import Path

from .kamailio import ProxyAddress, run_kamailio
from .ports import free_udp_port
from .process import PeerProcess, RunsAProcess

__all__ = ["EXAMPLE_CONFIG", "EXAMPLE_LIST", "DispatcherPeer", "write_dispatcher_list"]

EXAMPLES = Path(__file__).resolve().parents[2] / "examples" / "kamailio"
EXAMPLE_CONFIG = EXAMPLES / "dispatcher.cfg"
EXAMPLE_LIST = EXAMPLES / "dispatcher.list"
PROXY_HOST = "127.0.0.2"
"""kamailio's own loopback address: the instances' [inbound] allow_ips lists it and not
127.0.0.1, where the callers are, so a call that reaches an instance came through kamailio."""

_DESTINATION = re.compile(r"sip:[^\s;]+")


def write_dispatcher_list(
    target: Path, instances: Sequence[tuple[str, int]], example: Path = EXAMPLE_LIST
) -> Path:
    """The example's list with its destinations replaced, in order, by `instances`."""
    out: list[str] = []
    taken = 0
    for line in example.read_text().splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            if taken >= len(instances):
                raise ValueError(f"{example} lists more destinations than the {len(instances)}")
            host, port = instances[taken]
            line, replaced = _DESTINATION.subn(f"sip:{host}:{port}", line, count=1)
            if not replaced:
                raise ValueError(f"{example}: no destination in {line!r}")
            taken += 1
        out.append(line)
    if taken != len(instances):
        raise ValueError(f"{example} lists {taken} destinations, the test runs {len(instances)}")
    target.write_text("\n".join(out) + "\n")
    return target


class DispatcherPeer(ProxyAddress, RunsAProcess):
    """`aor(user)` is what a caller dials: any user at the proxy goes to the instances."""

    def __init__(self, *, proc: PeerProcess, host: str, port: int, list_file: Path) -> None:
        self.proc = proc
        self.host = host
        self.port = port
        self.list_file = list_file

    async def wait_log(self, pattern: str, timeout: float, *, start: int = 0) -> re.Match[str]:
        return await self.proc.wait_for_output(pattern, timeout, start=start)

    @classmethod
    @asynccontextmanager
    async def start(
        cls,
        workdir: Path,
        instances: Sequence[tuple[str, int]],
        *,
        host: str = PROXY_HOST,
        port: int | None = None,
        ready_timeout: float = 10.0,
    ) -> AsyncIterator[DispatcherPeer]:
        """Run examples/kamailio/dispatcher.cfg with `instances` as set 1 until the block ends."""
        workdir.mkdir(parents=True, exist_ok=True)
        port = port or free_udp_port()
        list_file = write_dispatcher_list(workdir / "dispatcher.list", instances)
        args = ["-A", f"LISTEN=udp:{host}:{port}", "-A", f'DISPATCHER_LIST="{list_file}"']
        async with run_kamailio(
            workdir, EXAMPLE_CONFIG, (host, port), args=args, ready_timeout=ready_timeout
        ) as proc:
            yield cls(proc=proc, host=host, port=port, list_file=list_file)

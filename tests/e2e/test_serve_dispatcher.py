"""Several `warmtransfer serve` instances behind kamailio's dispatcher, as the README tells
operators to run them: examples/kamailio/dispatcher.cfg itself (tests/peers/kamailio_dispatcher.py
loads it unchanged but for its address and list path), two serve processes on their own SIP and
HTTP ports that write ONE records file, baresip callers and humans.

Why one test and not several: what is claimed is a sequence on one proxy. Instances that are not
up yet are found down by the OPTIONS pings and found up once they answer; new calls alternate
between the instances; a draining instance's 503 sends a call on to the other one while its own
call goes on; in-dialog requests (ACK, BYE, hold re-INVITEs, INFO) follow the Record-Route to
the instance that has the call; and at the end the one SQLite file, written by two processes at
once, holds every call with its completed transfer, and `warmtransfer report` renders a call of
each. Not covered: CANCEL (an instance answers within milliseconds, so there is no ringing to
cancel; the config relays it by its transaction, as any kamailio proxy does).
"""

from __future__ import annotations

import json
import os
import re
import signal
import sys
import time
from contextlib import AsyncExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.e2e.conftest import baresip_caller, baresip_human
from tests.e2e.test_serve import REPO, serve
from tests.e2e.test_serve import write_config as base_config
from tests.e2e.test_serve_http import TOKEN, TOKEN_ENV
from tests.peers.baresip import BaresipPeer
from tests.peers.kamailio_dispatcher import PROXY_HOST, DispatcherPeer
from tests.peers.ports import LOOPBACK, free_port_pair
from tests.peers.process import PeerProcess
from tests.peers.sipp import SippPeer, scenario_path
from warmtransfer.server.records import Records

pytestmark = pytest.mark.peers

AUTH = {"Authorization": f"Bearer {TOKEN}"}


@dataclass
class Instance:
    """One `warmtransfer serve` behind the proxy, with the human its plan dials."""

    name: str
    port: int
    folder: Path
    human: BaresipPeer
    process: PeerProcess | None = None
    api: str = ""

    @property
    def destination(self) -> str:
        return f"sip:{LOOPBACK}:{self.port}"

    @property
    def service(self) -> PeerProcess:
        assert self.process is not None
        return self.process


def write_config(instance: Instance, records: Path) -> Path:
    """test_serve.py's config, with the shared records file, only the proxy as caller, the
    HTTP API on a port of its own, and a drain long enough for a call to outlive the SIGTERM."""
    path = base_config(instance.folder, instance.port, instance.human.uri, records=records)
    with path.open("a") as config:
        config.write(
            f"""
[inbound]
allow_ips = ["{PROXY_HOST}"]   # kamailio only: callers on 127.0.0.1 must go through it

[http]
listen = "127.0.0.1:0"
token = {{ env = "{TOKEN_ENV}" }}

[service]
drain_timeout = 120
"""
        )
    return path


async def wait_ready(instance: Instance) -> None:
    service = instance.service
    listening = await service.wait_for_output(r"HTTP API listening on \S+:(\d+)", 120)
    instance.api = f"http://127.0.0.1:{listening.group(1)}"
    await service.wait_for_output(r"ready: taking calls", 120)


def log_lines(process: PeerProcess) -> list[dict[str, Any]]:
    return [json.loads(line) for line in process.log.splitlines() if line.startswith("{")]


async def calls_up(instance: Instance) -> set[str]:
    async with httpx.AsyncClient(base_url=instance.api, timeout=10) as http:
        listed = await http.get("/v1/calls", headers=AUTH)
    assert listed.status_code == 200, listed.text
    return {call["call_id"] for call in listed.json()["calls"]}


async def transfer_through(
    kam: DispatcherPeer, caller: BaresipPeer, instances: dict[int, Instance]
) -> tuple[str, Instance]:
    """`caller` dials the proxy, presses 0 at the scripted menu of whichever instance takes the
    call, that instance's human presses 1: the transfer completes, caller and human stay
    bridged. Returns the Call-ID and the instance that answered."""
    kam_mark = len(kam.log)
    marks = {port: len(i.service.log) for port, i in instances.items()}
    await caller.dial(kam.aor("warmtransfer"))
    established = await caller.wait_event("CALL_ESTABLISHED", timeout=30)
    call_id = str(established["id"])
    # The instance that took it: where the last dispatch of this Call-ID went (after a retry,
    # the second line), and where the call was answered.
    routed = await kam.wait_log(
        rf"call {re.escape(call_id)} from {re.escape(LOOPBACK)}: to instance "
        rf"sip:{re.escape(LOOPBACK)}:(\d+)",
        10,
        start=kam_mark,
    )
    retried = re.findall(
        rf"call {re.escape(call_id)}: the instance answered \d+, trying sip:[\d.]+:(\d+)",
        kam.log[kam_mark:],
    )
    instance = instances[int(retried[-1] if retried else routed.group(1))]
    service, mark = instance.service, marks[instance.port]
    await service.wait_for_output(rf"call {re.escape(call_id)} from \S+ answered", 20, start=mark)
    await caller.send_dtmf("0")
    await service.wait_for_output(r"caller pressed 0, transferring", 30, start=mark)
    await instance.human.wait_event("CALL_ESTABLISHED", timeout=30)
    await instance.human.wait_recorded(2.0)  # some of the briefing
    await instance.human.send_dtmf("1")
    await service.wait_for_output(
        rf"call {re.escape(call_id)}: transfer outcome completed", 30, start=mark
    )
    return call_id, instance


async def hang_up(caller: BaresipPeer, call_id: str, instance: Instance) -> None:
    """The caller's BYE goes through the proxy to the instance, which ends the human's leg."""
    mark = len(instance.service.log)
    await caller.hangup()
    await caller.wait_event("CALL_CLOSED", timeout=15)
    await instance.human.wait_event("CALL_CLOSED", timeout=15)
    await instance.service.wait_for_output(
        rf"call {re.escape(call_id)} ended \(remote_bye\)", 20, start=mark
    )


_INFO = """
  <!-- a key as SIP INFO (application/dtmf-relay), as many PBXs and carriers send keys -->
  <send retrans="500">
    <![CDATA[

      INFO [next_url] SIP/2.0
      Via: SIP/2.0/[transport] [local_ip]:[local_port];branch=[branch]
      From: "Caller" <sip:[$caller]@[local_ip]:[local_port]>;tag=[pid]SIPpTag00[call_number]
      [last_To:]
      [routes]
      Call-ID: [call_id]
      CSeq: 4 INFO
      Contact: <sip:[$caller]@[local_ip]:[local_port];transport=[transport]>
      Max-Forwards: 70
      Content-Type: application/dtmf-relay
      Content-Length: [len]

      Signal=1
      Duration=160

    ]]>
  </send>

  <recv response="200" />

"""


def hold_then_info_scenario(folder: Path) -> Path:
    """uac_hold_unhold.xml (INVITE, hold and unhold re-INVITEs, BYE) with an INFO key ("1":
    the menu again) before the BYE: every kind of in-dialog request a caller's side sends."""
    text = scenario_path("uac_hold_unhold").read_text()
    before_bye = text.index('  <nop>\n    <action><log message="held as')
    text = text[:before_bye] + _INFO + text[before_bye:]
    if text.count("CSeq: 4 BYE") != 1:
        raise ValueError("uac_hold_unhold.xml changed: its BYE is no longer CSeq 4")
    folder.mkdir(parents=True, exist_ok=True)
    target = folder / "uac_hold_info.xml"
    target.write_text(text.replace("CSeq: 4 BYE", "CSeq: 5 BYE"))
    return target


async def test_two_instances_behind_the_dispatcher_share_one_records_file(
    tmp_path: Path,
    caller_wav: Path,
    human_wav: Path,
    need_baresip: None,
    need_kamailio: None,
    need_sipp: None,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    began = time.monotonic()
    monkeypatch.setenv(TOKEN_ENV, TOKEN)  # the services inherit the test's environment
    records = tmp_path / "records.sqlite3"
    ports = [free_port_pair(), free_port_pair()]
    async with AsyncExitStack() as stack:
        kam = await stack.enter_async_context(
            DispatcherPeer.start(tmp_path / "kamailio", [(LOOPBACK, p) for p in ports])
        )
        # Nothing listens yet: the first OPTIONS pings take both instances out of the set.
        for port in ports:
            await kam.wait_log(rf"instance sip:127\.0\.0\.1:{port} down", 40)
        up_mark = len(kam.log)  # an instance's socket opens a little before it logs "ready"

        instances: dict[int, Instance] = {}
        for name, port in zip("ab", ports, strict=True):
            folder = tmp_path / name
            folder.mkdir()
            human = await stack.enter_async_context(baresip_human(folder, human_wav))
            instances[port] = Instance(name, port, folder, human)
        for instance in instances.values():  # both start at once, then both must be ready
            config = write_config(instance, records)
            instance.process = await stack.enter_async_context(serve(instance.folder, config))
        for instance in instances.values():
            await wait_ready(instance)
        # Both answer the pings with 200 now: back in the set. (A call before this would get
        # kamailio's "503 No warmtransfer instance".)
        for port in ports:
            await kam.wait_log(rf"instance sip:127\.0\.0\.1:{port} up", 40, start=up_mark)
        ready = time.monotonic() - began

        async with baresip_caller(tmp_path / "caller1", caller_wav) as caller1:
            # 1: to one instance; caller and human stay bridged through what follows.
            first_call, first = await transfer_through(kam, caller1, instances)
            async with baresip_caller(tmp_path / "caller2", caller_wav) as caller2:
                # 2: round-robin, to the other instance.
                second_call, second = await transfer_through(kam, caller2, instances)
                assert second is not first, "round-robin sent both calls to one instance"
                assert await calls_up(first) >= {first_call}
                assert second_call not in await calls_up(first)
                await hang_up(caller2, second_call, second)

                # 3: the first instance drains (its call goes on). Round-robin picks it next:
                # its 503 sends kamailio on to the other one, where the call completes. (Unless
                # a ping came first: the draining instance answers OPTIONS 503 too, and then
                # kamailio has already taken it out of the set. Either way, not a call lost.)
                mark = len(first.service.log)
                kam_mark = len(kam.log)
                os.kill(first.service.pid or 0, signal.SIGTERM)
                await first.service.wait_for_output(r"service draining", 15, start=mark)
                third_call, third = await transfer_through(kam, caller2, instances)
                assert third is second
                failover = (
                    rf"call {re.escape(third_call)}: the instance answered 503, trying "
                    rf"{re.escape(second.destination)}"
                )
                pinged_down = rf"instance {re.escape(first.destination)} down"
                if re.search(pinged_down, kam.log[kam_mark:]) is None:
                    await kam.wait_log(failover, 10, start=kam_mark)
                    await first.service.wait_for_output(
                        rf"call {re.escape(third_call)} refused: shutting down", 10, start=mark
                    )
                # The next ping finds the draining instance refusing: out of the set.
                await kam.wait_log(pinged_down, 25, start=kam_mark)
                # The draining instance still serves its API and its call.
                assert first_call in await calls_up(first)
                await hang_up(caller2, third_call, second)

            # The last call of the draining instance ends (the caller's BYE, through kamailio):
            # it exits 0.
            await hang_up(caller1, first_call, first)
            assert await first.service.wait_exit(30) == 0, first.service.tail()

        # 4: re-INVITEs (hold, then unhold) and an INFO inside a call follow the Record-Route
        # to the instance that has the call, the only one left.
        mark = len(second.service.log)
        async with SippPeer.uac(
            tmp_path,
            hold_then_info_scenario(tmp_path / "scenarios"),
            f"{PROXY_HOST}:{kam.port}",
            service="warmtransfer",
            port=free_port_pair(),
        ) as holder:
            assert await holder.wait(timeout=60) == 0, holder.messages()
        held = await second.service.wait_for_output(
            r"call (\S+) ended \(remote_bye\)", 20, start=mark
        )
        hold_call = held.group(1)

        os.kill(second.service.pid or 0, signal.SIGTERM)
        assert await second.service.wait_exit(30) == 0, second.service.tail()
        calls_done = time.monotonic() - began

    for instance in instances.values():
        assert "Traceback" not in instance.service.log, instance.service.tail()
        assert not [line for line in log_lines(instance.service) if line.get("level") == "ERROR"], (
            instance.service.tail()
        )
    # Each instance took the calls kamailio gave it, and only those.
    answered = {
        instance.name: set(re.findall(r"call (\S+) from \S+ answered", instance.service.log))
        for instance in instances.values()
    }
    assert answered[first.name] == {first_call}, answered
    assert answered[second.name] == {second_call, third_call, hold_call}, answered

    proxy = f"udp:{PROXY_HOST}:{kam.port}"
    # One file, written by both processes: every call, every transfer complete.
    store = await Records.open(records)
    try:
        stored = {c: await store.call(c) for c in (first_call, second_call, third_call, hold_call)}
    finally:
        await store.close()
    for call_id, record in stored.items():
        assert record is not None, call_id
        assert not record.incomplete, call_id
    for call_id in (first_call, second_call, third_call):
        record = stored[call_id]
        assert record is not None
        (transfer,) = record.transfers
        assert transfer.reason == "completed" and not transfer.incomplete, (call_id, transfer)
        assert [e.name for e in transfer.events][-2:] == ["Accepted", "Bridged"]
        # The caller's leg went through the proxy: its SIP messages came from kamailio.
        peers = {m.peer for m in record.sip if m.leg == "caller"}
        assert peers == {proxy}, peers
    # The hold call: its INVITE, both re-INVITEs, the INFO and the BYE reached the instance
    # through the proxy.
    hold = stored[hold_call]
    assert hold is not None and not hold.transfers
    requests = [m for m in hold.sip if m.direction == "in" and not m.first_line.startswith("SIP/")]
    assert [m.first_line.split()[0] for m in requests] == [
        "INVITE",
        "ACK",
        "INVITE",
        "ACK",
        "INVITE",
        "ACK",
        "INFO",
        "BYE",
    ], [m.first_line for m in requests]
    assert {m.peer for m in requests} == {proxy}, requests

    # `warmtransfer report` renders a call of each instance from the one file.
    for call_id in (first_call, second_call):
        page = tmp_path / f"report-{call_id[:8]}.html"
        report = PeerProcess(
            "report",
            [
                sys.executable,
                "-m",
                "warmtransfer",
                "report",
                call_id,
                "--records",
                str(records),
                "--out",
                str(page),
            ],
            REPO,
            tmp_path / f"report-{call_id[:8]}.log",
        )
        await report.start()
        try:
            assert await report.wait_exit(120) == 0, report.tail()
        finally:
            await report.stop()
        html = page.read_text()
        assert call_id in html and "completed" in html, report.tail()
    print(f"\nproxy and instances up: {ready:.1f} s; all calls done: {calls_done:.1f} s")

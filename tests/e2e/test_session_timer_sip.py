"""RFC 4028 session timers against sipp: the engine refreshes a call a real stack granted.

sipp (`uas_session_timer.xml`) answers our INVITE with `Session-Expires: 4;refresher=uac` and
allows UPDATE, so the engine, the refresher, must send an UPDATE 2 s after the answer; sipp
answers it and then expects our BYE. A missing or early refresh fails the scenario. The
interval is far below RFC 4028's 90 s because the user agent is built with a test-only floor.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from tests.peers.ports import free_port_pair
from tests.peers.sipp import SippPeer
from warmtransfer.sip.call import EndReason
from warmtransfer.sip.message import SipResponse, parse_message
from warmtransfer.sip.session_timer import SessionTimerConfig
from warmtransfer.sip.useragent import UserAgent

pytestmark = pytest.mark.peers

SHORT = SessionTimerConfig(interval=4, min_se=1, floor=1)  # for tests only: RFC says >= 90


async def test_sipp_grants_a_session_timer_and_we_refresh_it_with_update(
    tmp_path: Path, need_sipp: None
) -> None:
    async with (
        SippPeer.uas(tmp_path, "uas_session_timer", port=free_port_pair(), recv_timeout=8) as human,
        UserAgent("127.0.0.1", user="wt", session_timer=SHORT) as ua,
    ):
        refreshed = asyncio.Event()

        def on_message(direction: str, data: bytes, addr: object, at: float) -> None:
            if direction == "in":
                message = parse_message(data)
                if isinstance(message, SipResponse) and message.cseq[1] == "UPDATE":
                    refreshed.set()

        ua.trace_hooks.append(on_message)
        async with asyncio.timeout(15):
            call = await ua.call(human.uri)
            assert call.session is not None and call.session.agreement.we_refresh
            assert call.session.agreement.interval == 4
            await refreshed.wait()
            assert call.is_up
            assert call.answered_at is not None
            update_sent = [
                e.at for e in ua.trace if e.direction == "out" and b"UPDATE " in e.data[:8]
            ]
            assert update_sent and update_sent[0] - call.answered_at >= 2.0 - 0.05
            await call.hangup()
        assert call.end_reason is EndReason.LOCAL_BYE
        assert await human.wait(timeout=5) == 0, human.messages()
        assert human.received_requests() == ["INVITE", "ACK", "UPDATE", "BYE"]

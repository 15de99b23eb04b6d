"""Self-checks of the peer harness: the real peers talk to each other (no warmtransfer code).

If these fail, end-to-end tests against the engine cannot be trusted; fix the harness first.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from .baresip import BaresipPeer, tone_power, wav_duration, wav_loudest, wav_rms
from .conftest import needs_baresip, needs_sipp
from .process import PeerError, process_alive
from .sipp import SippPeer

pytestmark = [pytest.mark.peers, pytest.mark.timeout(20)]

# The tone is at -13 dBFS. sipp's g711a.pcap speech is quiet for its first ~1.5 s (-72..-36 dBFS
# per 0.5 s), then around -20..-30 dBFS: judge speech by its loudest 100 ms (wav_loudest).
AUDIBLE_DBFS = -40.0


def _assert_gone(*peers: BaresipPeer | SippPeer) -> None:
    for p in peers:
        assert p.returncode is not None, f"{p.name} not reaped"
        assert not process_alive(p.pid), f"{p.name} (pid {p.pid}) survived"
        assert not Path(f"/proc/{p.pid}").exists(), f"{p.name} (pid {p.pid}) left a zombie"


# ------------------------------------------------------------------------------------------------
# baresip <-> baresip
# ------------------------------------------------------------------------------------------------
@needs_baresip
async def test_baresip_calls_baresip_dtmf_hangup_recording(tmp_path: Path, tone_wav: Path) -> None:
    t0 = time.monotonic()
    async with (
        BaresipPeer.start(tmp_path, name="agent", user="agent") as a,
        BaresipPeer.start(tmp_path, name="human", auto_answer=True, audio_wav=tone_wav) as b,
    ):
        await a.dial(b.uri)
        est_a = await a.wait_event("CALL_ESTABLISHED")
        est_b = await b.wait_event("CALL_ESTABLISHED")
        assert est_a["direction"] == "outgoing"
        assert est_b["direction"] == "incoming"
        assert est_a["id"] == est_b["id"]  # the SIP Call-ID
        assert est_b["peeruri"] == a.aor

        await a.send_dtmf("1")
        dtmf = await b.wait_event("CALL_DTMF_START")
        assert dtmf["param"] == "1"
        await b.wait_event("CALL_DTMF_END")

        await a.wait_recorded(1.0)  # let a second of B's tone reach A
        await a.hangup()
        closed_a = await a.wait_event("CALL_CLOSED")
        closed_b = await b.wait_event("CALL_CLOSED")
        assert closed_a["param"] == "Connection reset by user"
        assert closed_b["param"] == "Connection reset by peer"

        heard = await a.received_wav()
        assert heard is not None
        assert wav_duration(heard) >= 1.0
        assert wav_rms(heard) > AUDIBLE_DBFS
        assert tone_power(heard, 440.0) > 0.5  # it is B's 440 Hz tone, decoded

        # A's microphone is (padded) silence and DTMF goes out of band: B heard silence.
        heard_b = await b.received_wav()
        assert heard_b is not None
        assert wav_loudest(heard_b) < AUDIBLE_DBFS
    _assert_gone(a, b)
    assert time.monotonic() - t0 < 10


@needs_baresip
async def test_baresip_manual_answer_and_callee_hangup(tmp_path: Path) -> None:
    async with (
        BaresipPeer.start(tmp_path, name="a", user="agent") as a,
        BaresipPeer.start(tmp_path, name="b") as b,
    ):
        await a.dial(b.uri)
        incoming = await b.wait_event("CALL_INCOMING")  # only emitted when not auto-answering
        assert incoming["peeruri"] == a.aor
        await a.wait_event("CALL_RINGING")
        await b.answer()
        await a.wait_event("CALL_ESTABLISHED")
        await b.wait_event("CALL_ESTABLISHED")
        await b.hangup()
        assert (await a.wait_event("CALL_CLOSED"))["param"] == "Connection reset by peer"
        await b.wait_event("CALL_CLOSED")
    _assert_gone(a, b)


@needs_baresip
async def test_baresip_answer_delay(tmp_path: Path) -> None:
    async with (
        BaresipPeer.start(tmp_path, name="a", user="agent") as a,
        BaresipPeer.start(tmp_path, name="b", auto_answer=True, answer_delay=0.8) as b,
    ):
        await a.dial(b.uri)
        ringing = await a.wait_event("CALL_RINGING")
        est = await a.wait_event("CALL_ESTABLISHED")
        assert est["_t"] - ringing["_t"] >= 0.7
        await a.hangup()
        await b.wait_event("CALL_CLOSED")
    _assert_gone(a, b)


@needs_baresip
async def test_baresip_over_tcp(tmp_path: Path, tone_wav: Path) -> None:
    async with (
        BaresipPeer.start(tmp_path, name="a", user="agent", transport="tcp") as a,
        BaresipPeer.start(
            tmp_path,
            name="b",
            auto_answer=True,
            transport="tcp",
            audio_wav=tone_wav,
            codecs=["PCMA"],
        ) as b,
    ):
        assert b.uri.endswith(";transport=tcp")
        await a.dial(b.uri)
        await a.wait_event("CALL_ESTABLISHED")
        await a.wait_recorded(0.5)
        await a.hangup()
        await b.wait_event("CALL_CLOSED")
        assert "TCP 127.0.0.1" in a.log  # the SIP trace shows the transport
        assert "PCMA" in a.log.split("Set audio decoder:")[1].splitlines()[0]
    _assert_gone(a, b)


# ------------------------------------------------------------------------------------------------
# baresip -> sipp (sipp plays the human)
# ------------------------------------------------------------------------------------------------
@needs_baresip
@needs_sipp
@pytest.mark.parametrize(
    ("scenario", "reason"), [("uas_busy", "486 Busy Here"), ("uas_decline", "603 Decline")]
)
async def test_baresip_dials_sipp_rejecting(tmp_path: Path, scenario: str, reason: str) -> None:
    async with (
        BaresipPeer.start(tmp_path, name="agent", user="agent") as a,
        SippPeer.uas(tmp_path, scenario, variables={"ring_ms": 200}) as human,
    ):
        await a.dial(human.uri)
        await a.wait_event("CALL_RINGING")
        closed = await a.wait_event("CALL_CLOSED")
        assert closed["param"] == reason
        assert "CALL_ESTABLISHED" not in a.event_types()
        await human.expect_success(5)
        assert human.received_requests() == ["INVITE", "ACK"]
        assert human.sent_responses() == [100, 180, int(reason.split()[0])]
    _assert_gone(a, human)


@needs_baresip
@needs_sipp
async def test_baresip_dials_sipp_no_answer_and_cancels(tmp_path: Path) -> None:
    async with (
        BaresipPeer.start(tmp_path, name="agent", user="agent") as a,
        SippPeer.uas(tmp_path, "uas_no_answer") as human,
    ):
        await a.dial(human.uri)
        await a.wait_event("CALL_RINGING")
        await a.hangup()  # ringing outgoing call -> CANCEL
        await a.wait_event("CALL_CLOSED")
        await human.expect_success(5)
        assert human.received_requests() == ["INVITE", "CANCEL", "ACK"]
        assert human.sent_responses() == [100, 180, 200, 487]
    _assert_gone(a, human)


@needs_baresip
@needs_sipp
@pytest.mark.parametrize(
    ("scenario", "digit"), [("uas_answer_dtmf", "1"), ("uas_answer_dtmf2", "2")]
)
async def test_baresip_dials_sipp_that_answers_and_presses(
    tmp_path: Path, scenario: str, digit: str
) -> None:
    async with (
        BaresipPeer.start(tmp_path, name="agent", user="agent") as a,
        SippPeer.uas(
            tmp_path, scenario, variables={"ring_ms": 100, "dtmf_after_ms": 2000}
        ) as human,
    ):
        await a.dial(human.uri)
        est = await a.wait_event("CALL_ESTABLISHED")
        dtmf = await a.wait_event("CALL_DTMF_START")
        assert dtmf["param"] == digit
        assert 1.8 <= dtmf["_t"] - est["_t"] <= 4.0
        await a.hangup()
        await a.wait_event("CALL_CLOSED")
        await human.expect_success(5)
        assert human.received_requests() == ["INVITE", "ACK", "BYE"]
        # sipp answered PCMA first, so baresip decodes the A-law pcap it plays
        assert "Set audio decoder: PCMA" in a.log
        heard = await a.received_wav()
        assert heard is not None
        assert wav_loudest(heard) > AUDIBLE_DBFS
    _assert_gone(a, human)


@needs_baresip
@needs_sipp
async def test_baresip_dials_sipp_over_tcp(tmp_path: Path) -> None:
    async with (
        BaresipPeer.start(tmp_path, name="agent", user="agent", transport="tcp") as a,
        SippPeer.uas(
            tmp_path,
            "uas_answer_dtmf",
            transport="tcp",
            variables={"ring_ms": 0, "dtmf_after_ms": 300},
        ) as human,
    ):
        assert human.uri.endswith(";transport=tcp")
        await a.dial(human.uri)
        await a.wait_event("CALL_ESTABLISHED")
        assert (await a.wait_event("CALL_DTMF_START"))["param"] == "1"
        await a.hangup()
        await human.expect_success(5)
        assert human.received_requests() == ["INVITE", "ACK", "BYE"]
        assert "TCP message received" in human.messages()
    _assert_gone(a, human)


@needs_baresip
@needs_sipp
async def test_sipp_human_hangs_up_during_briefing(tmp_path: Path) -> None:
    async with (
        BaresipPeer.start(tmp_path, name="agent", user="agent") as a,
        SippPeer.uas(
            tmp_path, "uas_answer_hangup", variables={"ring_ms": 0, "hangup_after_ms": 1000}
        ) as human,
    ):
        await a.dial(human.uri)
        est = await a.wait_event("CALL_ESTABLISHED")
        closed = await a.wait_event("CALL_CLOSED")
        assert closed["param"] == "Connection reset by peer"
        assert 0.8 <= closed["_t"] - est["_t"] <= 3.0
        await human.expect_success(5)
        assert human.sent_requests() == ["BYE"]
        assert human.received_responses() == [200]
    _assert_gone(a, human)


@needs_baresip
@needs_sipp
async def test_sipp_human_answers_silently_until_bye(tmp_path: Path) -> None:
    async with (
        BaresipPeer.start(tmp_path, name="agent", user="agent") as a,
        SippPeer.uas(tmp_path, "uas_answer_silent", variables={"ring_ms": 0}) as human,
    ):
        await a.dial(human.uri)
        await a.wait_event("CALL_ESTABLISHED")
        await a.wait_recorded(0.5)
        await a.hangup()
        await human.expect_success(5)
        assert human.received_requests() == ["INVITE", "ACK", "BYE"]
        assert "CALL_DTMF_START" not in a.event_types()
    _assert_gone(a, human)


# ------------------------------------------------------------------------------------------------
# sipp -> baresip (sipp plays the caller)
# ------------------------------------------------------------------------------------------------
@needs_baresip
@needs_sipp
@pytest.mark.parametrize("who_hangs_up", ["sipp", "baresip"])
async def test_sipp_uac_calls_baresip(tmp_path: Path, who_hangs_up: str) -> None:
    async with BaresipPeer.start(tmp_path, name="agent", user="agent", auto_answer=True) as b:
        bye_after = 2500 if who_hangs_up == "sipp" else 0  # speech gets loud after ~1.5 s
        async with SippPeer.uac(
            tmp_path,
            "uac_call",
            f"127.0.0.1:{b.sip_port}",
            service="agent",
            variables={"bye_after_ms": bye_after, "caller": "+15551230000"},
        ) as caller:
            est = await b.wait_event("CALL_ESTABLISHED")
            assert est["direction"] == "incoming"
            assert est["peeruri"].startswith("sip:+15551230000@127.0.0.1")
            if who_hangs_up == "baresip":
                await b.wait_recorded(2.5)
                await b.hangup()
            closed = await b.wait_event("CALL_CLOSED")
            await caller.expect_success(5)
        heard = await b.received_wav()
        assert heard is not None
        assert wav_duration(heard) >= 1.0
        assert wav_loudest(heard) > AUDIBLE_DBFS  # the g711a.pcap speech really arrived
        if who_hangs_up == "sipp":
            assert closed["param"] == "Connection reset by peer"
            assert caller.sent_requests() == ["INVITE", "ACK", "BYE"]
        else:
            assert caller.sent_requests() == ["INVITE", "ACK"]
            assert caller.received_requests() == ["BYE"]
        assert caller.received_responses()[-1] == 200
        invite = caller.messages().split("INVITE sip:", 1)[1]
        assert f"agent@127.0.0.1:{b.sip_port}" in invite
    _assert_gone(b, caller)


# ------------------------------------------------------------------------------------------------
# sipp -> sipp
# ------------------------------------------------------------------------------------------------
@needs_sipp
async def test_sipp_uac_against_sipp_uas_dtmf(tmp_path: Path) -> None:
    async with SippPeer.uas(
        tmp_path, "uas_answer_dtmf", variables={"ring_ms": 0, "dtmf_after_ms": 300}
    ) as human:
        async with SippPeer.uac(
            tmp_path,
            "uac_call",
            f"127.0.0.1:{human.port}",
            service="human",
            variables={"bye_after_ms": 800},
        ) as caller:
            await caller.expect_success(10)
        await human.expect_success(5)
        assert caller.sent_requests() == ["INVITE", "ACK", "BYE"]
        assert caller.received_responses() == [100, 180, 200, 200]
        assert human.received_requests() == ["INVITE", "ACK", "BYE"]
    _assert_gone(human, caller)


@needs_sipp
async def test_sipp_uac_against_sipp_uas_hangup(tmp_path: Path) -> None:
    async with SippPeer.uas(
        tmp_path, "uas_answer_hangup", variables={"ring_ms": 0, "hangup_after_ms": 500}
    ) as human:
        async with SippPeer.uac(
            tmp_path, "uac_call", f"127.0.0.1:{human.port}", service="human"
        ) as caller:
            await caller.expect_success(10)
        await human.expect_success(5)
        assert caller.received_requests() == ["BYE"]
        assert human.sent_requests() == ["BYE"]
    _assert_gone(human, caller)


# ------------------------------------------------------------------------------------------------
# failures are reported, fast and with context
# ------------------------------------------------------------------------------------------------
@needs_sipp
async def test_sipp_failure_is_reported_with_flow(tmp_path: Path) -> None:
    # The caller expects a 200 but the callee is busy: sipp exits 1, expect_success says why.
    async with SippPeer.uas(tmp_path, "uas_busy", variables={"ring_ms": 0}) as human:
        async with SippPeer.uac(
            tmp_path, "uac_call", f"127.0.0.1:{human.port}", service="human", recv_timeout=2
        ) as caller:
            with pytest.raises(PeerError) as err:
                await caller.expect_success(10)
        assert caller.returncode == 1
        assert "486 Busy Here" in str(err.value)  # the SIP flow is in the message
        assert "exit code 1" in str(err.value)
    _assert_gone(human, caller)


@needs_sipp
async def test_sipp_uas_times_out_when_nobody_calls(tmp_path: Path) -> None:
    t0 = time.monotonic()
    async with SippPeer.uas(tmp_path, "uas_busy", timeout=1) as human:
        rc = await human.wait(10)
    assert rc != 0  # -timeout_error: a scenario that never ran is a failure
    assert time.monotonic() - t0 < 5
    _assert_gone(human)


@needs_baresip
async def test_wait_event_timeout_includes_log(tmp_path: Path) -> None:
    async with BaresipPeer.start(tmp_path, name="lonely") as a:
        t0 = time.monotonic()
        with pytest.raises(PeerError) as err:
            await a.wait_event("CALL_ESTABLISHED", timeout=0.3)
        assert time.monotonic() - t0 < 2
        assert "baresip is ready." in str(err.value)
        assert "timed out" in str(err.value)
    _assert_gone(a)


@needs_baresip
async def test_peer_killed_when_test_body_fails(tmp_path: Path) -> None:
    peers: list[BaresipPeer] = []

    async def failing_test_body() -> None:
        async with BaresipPeer.start(tmp_path, name="doomed") as peer:
            peers.append(peer)
            assert process_alive(peer.pid)
            raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        await failing_test_body()
    assert len(peers) == 1
    _assert_gone(*peers)

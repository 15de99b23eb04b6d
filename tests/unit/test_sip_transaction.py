"""RFC 3261 §17 transaction rules, driven with a fake clock (no sockets)."""

from __future__ import annotations

from warmtransfer.sip.message import SipRequest, SipResponse, make_response, parse_message
from warmtransfer.sip.transaction import (
    T1,
    T2,
    ClientInviteTransaction,
    ClientNonInviteTransaction,
    Deliver,
    OkRetransmitter,
    Send,
    ServerInviteTransaction,
    ServerNonInviteTransaction,
    Terminated,
    TimedOut,
    TxState,
)

ADDR = ("127.0.0.1", 5070)


def request(method: str = "INVITE", branch: str = "z9hG4bKabc") -> SipRequest:
    raw = (
        f"{method} sip:human@127.0.0.1:5070 SIP/2.0\r\n"
        f"Via: SIP/2.0/UDP 127.0.0.1:5060;branch={branch};rport\r\n"
        "Max-Forwards: 70\r\n"
        "From: <sip:wt@127.0.0.1>;tag=f1\r\n"
        "To: <sip:human@127.0.0.1:5070>\r\n"
        "Call-ID: call-1@127.0.0.1\r\n"
        f"CSeq: 1 {method}\r\n"
        "Content-Length: 0\r\n\r\n"
    ).encode()
    message = parse_message(raw)
    assert isinstance(message, SipRequest)
    return message


def response(req: SipRequest, status: int) -> SipResponse:
    return make_response(req, status, to_tag="t1" if status > 100 else None)


def sends(actions: list[object]) -> list[Send]:
    return [a for a in actions if isinstance(a, Send)]


def test_client_invite_retransmits_with_doubling_until_provisional() -> None:
    tx = ClientInviteTransaction(request(), ADDR)
    assert len(sends(tx.start(0.0))) == 1
    times = []
    now = 0.0
    for _ in range(4):
        now = tx.next_deadline or 0.0
        times.append(now)
        assert len(sends(tx.on_timer(now))) == 1
    assert times[:4] == [T1, 3 * T1, 7 * T1, 15 * T1]
    actions = tx.on_response(response(tx.request, 180), now)
    assert any(isinstance(a, Deliver) for a in actions)
    assert tx.state is TxState.PROCEEDING
    assert tx.next_deadline is None  # no more retransmissions once the peer answered


def test_client_invite_times_out_after_64_t1_with_no_answer() -> None:
    tx = ClientInviteTransaction(request(), ADDR)
    tx.start(0.0)
    actions: list[object] = []
    while tx.next_deadline is not None:
        actions += tx.on_timer(tx.next_deadline)
    assert any(isinstance(a, TimedOut) for a in actions)
    assert any(isinstance(a, Terminated) for a in actions)
    assert tx.terminated


def test_client_invite_acks_a_busy_and_absorbs_its_retransmission() -> None:
    tx = ClientInviteTransaction(request(), ADDR)
    tx.start(0.0)
    busy = response(tx.request, 486)
    first = tx.on_response(busy, 0.1)
    acks = [a.message for a in sends(first)]
    assert len(acks) == 1 and isinstance(acks[0], SipRequest) and acks[0].method == "ACK"
    ack = acks[0]
    assert ack.vias[0].branch == "z9hG4bKabc"  # same transaction as the INVITE
    assert ack.to.tag == "t1" and ack.cseq == (1, "ACK")
    assert next(a for a in first if isinstance(a, Deliver)).response.status == 486
    again = tx.on_response(busy, 0.5)
    assert len(sends(again)) == 1 and not any(isinstance(a, Deliver) for a in again)


def test_client_invite_2xx_terminates_and_is_delivered() -> None:
    tx = ClientInviteTransaction(request(), ADDR)
    tx.start(0.0)
    actions = tx.on_response(response(tx.request, 200), 0.2)
    assert [type(a) for a in actions] == [Deliver, Terminated]
    assert sends(actions) == []  # the dialog layer ACKs a 2xx, not the transaction


def test_client_non_invite_caps_retransmission_at_t2() -> None:
    tx = ClientNonInviteTransaction(request("BYE"), ADDR)
    tx.start(0.0)
    intervals = []
    last = 0.0
    while True:
        deadline = tx.next_deadline
        assert deadline is not None
        if deadline >= 64 * T1:
            break
        intervals.append(round(deadline - last, 3))
        last = deadline
        tx.on_timer(deadline)
    assert intervals[:4] == [T1, 2 * T1, 4 * T1, T2]
    assert max(intervals) == T2
    final = tx.on_timer(64 * T1)
    assert any(isinstance(a, TimedOut) for a in final)


def test_client_non_invite_completes_on_final_and_lingers_timer_k() -> None:
    tx = ClientNonInviteTransaction(request("BYE"), ADDR)
    tx.start(0.0)
    actions = tx.on_response(response(tx.request, 200), 0.1)
    assert any(isinstance(a, Deliver) for a in actions)
    assert tx.state is TxState.COMPLETED
    assert tx.on_response(response(tx.request, 200), 0.2) == []  # retransmission absorbed
    assert any(isinstance(a, Terminated) for a in tx.on_timer(0.1 + 5.0))


def test_server_invite_repeats_last_response_to_a_retransmitted_invite() -> None:
    req = request()
    tx = ServerInviteTransaction(req, ADDR)
    tx.respond(response(req, 180), 0.0)
    again = sends(tx.on_retransmission(0.3))
    assert len(again) == 1 and isinstance(again[0].message, SipResponse)
    assert again[0].message.status == 180


def test_server_invite_retransmits_error_until_ack() -> None:
    req = request()
    tx = ServerInviteTransaction(req, ADDR)
    tx.respond(response(req, 486), 0.0)
    deadline = tx.next_deadline
    assert deadline == T1
    assert len(sends(tx.on_timer(deadline))) == 1  # timer G
    tx.on_ack(0.6)
    assert tx.state is TxState.CONFIRMED
    assert sends(tx.on_timer(tx.next_deadline or 0)) == []


def test_server_invite_gives_up_without_ack() -> None:
    req = request()
    tx = ServerInviteTransaction(req, ADDR)
    tx.respond(response(req, 603), 0.0)
    actions: list[object] = []
    while tx.next_deadline is not None:
        actions += tx.on_timer(tx.next_deadline)
    assert any(isinstance(a, TimedOut) for a in actions)


def test_server_non_invite_absorbs_retransmitted_request() -> None:
    req = request("BYE")
    tx = ServerNonInviteTransaction(req, ADDR)
    tx.respond(response(req, 200), 0.0)
    again = sends(tx.on_retransmission(0.5))
    assert len(again) == 1 and isinstance(again[0].message, SipResponse)
    assert again[0].message.status == 200
    assert any(isinstance(a, Terminated) for a in tx.on_timer(64 * T1))


def test_ok_retransmitter_repeats_until_ack_then_stops() -> None:
    req = request()
    ok = response(req, 200)
    retransmitter = OkRetransmitter(ok, ADDR, 0.0, reliable=False)
    first = retransmitter.next_deadline
    assert first == T1
    assert len(sends(retransmitter.on_timer(first))) == 1
    retransmitter.on_ack()
    assert retransmitter.next_deadline is None
    assert retransmitter.on_timer(10.0) == []


def test_ok_retransmitter_times_out_without_ack() -> None:
    retransmitter = OkRetransmitter(response(request(), 200), ADDR, 0.0, reliable=False)
    actions: list[object] = []
    while retransmitter.next_deadline is not None:
        actions += retransmitter.on_timer(retransmitter.next_deadline)
    assert any(isinstance(a, TimedOut) for a in actions)

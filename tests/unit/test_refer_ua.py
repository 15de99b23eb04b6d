"""REFER and its NOTIFYs in a call (RFC 3515), both ways, over real UDP sockets on 127.0.0.1.

The peer is `Wire`, a raw socket speaking hand-written SIP. The calls are inbound (the wire
called us), so the wire's in-dialog requests carry its tag `wire1` in From and ours in To, and
its CSeq counts on from its INVITE's 1. Every wait has a deadline.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable

import pytest

from tests.unit.sip_wire import Wire
from tests.unit.test_session_timer_ua import hang_up, outbound
from tests.unit.test_useragent import Inbound, bye_from_wire, inbound_call, within
from warmtransfer.sip.call import CallFailed, ReferRequest
from warmtransfer.sip.message import SipRequest
from warmtransfer.sip.refer import ReferTo, Replaces, SipFrag
from warmtransfer.sip.useragent import UserAgent

TARGET = "sip:queue@192.0.2.50"
ATTENDED = "<sip:dave@192.0.2.50?Replaces=c%40h%3Bto-tag%3Dt%3Bfrom-tag%3Df>"


def notify(
    wire: Wire,
    ua: UserAgent,
    inbound: Inbound,
    cseq: int,
    frag: str | None,
    state: str = "active;expires=60",
    *,
    event: str = "refer",
    content_type: str = "message/sipfrag;version=2.0",
) -> None:
    """A NOTIFY from the wire in the call's dialog, with a sipfrag body unless `frag` is None."""
    extra = [f"Event: {event}", f"Subscription-State: {state}"]
    text = wire.request(
        "NOTIFY", ua.address, call_id=inbound.call_id, cseq=cseq, to_tag=inbound.tag, extra=extra
    )
    if frag is not None:
        body = frag + "\r\n"
        text = text.replace(
            "Content-Length: 0\r\n\r\n",
            f"Content-Type: {content_type}\r\nContent-Length: {len(body)}\r\n\r\n{body}",
        )
    wire.send(text, ua.address)


async def answered_notify(wire: Wire, inbound: Inbound, cseq: int, status: int = 200) -> None:
    await wire.response(status, "NOTIFY", call_id=inbound.call_id, cseq=cseq)


async def refer_sent(wire: Wire, inbound: Inbound) -> SipRequest:
    return await wire.request_of("REFER", where=lambda r: r.call_id == inbound.call_id)


# -- we send REFER --------------------------------------------------------------------------------


async def test_refer_gets_202_and_notifies_and_returns_the_final_status(
    ua: UserAgent, wire: Wire
) -> None:
    inbound = await inbound_call(ua, wire)
    task = asyncio.create_task(inbound.call.refer(TARGET))
    refer = await refer_sent(wire, inbound)
    assert refer.headers.get("Refer-To") == f"<{TARGET}>"
    assert refer.headers.get("Referred-By") == f"<sip:wt@{ua.address[0]}:{ua.address[1]}>"
    assert refer.headers.get("Contact") == ua.contact()
    assert refer.from_.tag == inbound.tag and refer.to.tag == "wire1"
    wire.reply(refer, 202)
    event = f"refer;id={refer.cseq[0]}"
    notify(wire, ua, inbound, 2, "SIP/2.0 100 Trying", event=event)
    await answered_notify(wire, inbound, 2)
    assert not task.done()  # 100 is progress, not the outcome
    notify(wire, ua, inbound, 3, "SIP/2.0 200 OK", "terminated;reason=noresource", event=event)
    await answered_notify(wire, inbound, 3)
    assert await within(task) == 200
    assert inbound.call.is_up  # hanging up after the hand-over is the application's move
    # The subscription is over: a late NOTIFY is for nothing we wait on.
    notify(wire, ua, inbound, 4, "SIP/2.0 200 OK", "terminated", event=event)
    await answered_notify(wire, inbound, 4, 481)
    await bye_from_wire(ua, wire, inbound, cseq=5)


async def test_notifies_that_overtake_the_202_still_count(ua: UserAgent, wire: Wire) -> None:
    inbound = await inbound_call(ua, wire)
    task = asyncio.create_task(inbound.call.refer(TARGET))
    refer = await refer_sent(wire, inbound)
    notify(wire, ua, inbound, 2, "SIP/2.0 100 Trying")  # no id: the only REFER pending
    await answered_notify(wire, inbound, 2)
    notify(wire, ua, inbound, 3, "SIP/2.0 486 Busy Here", "terminated;reason=noresource")
    await answered_notify(wire, inbound, 3)
    wire.reply(refer, 202)
    with pytest.raises(CallFailed) as failed:
        await within(task)
    assert (failed.value.status, failed.value.reason) == (486, "Busy Here")
    await bye_from_wire(ua, wire, inbound, cseq=4)


@pytest.mark.parametrize("status", [603, 403, 405])
async def test_a_refused_refer_raises_its_status(ua: UserAgent, wire: Wire, status: int) -> None:
    inbound = await inbound_call(ua, wire)
    task = asyncio.create_task(inbound.call.refer(TARGET))
    wire.reply(await refer_sent(wire, inbound), status)
    with pytest.raises(CallFailed) as failed:
        await within(task)
    assert failed.value.status == status and inbound.call.is_up
    notify(wire, ua, inbound, 2, "SIP/2.0 200 OK")  # nothing waits for it
    await answered_notify(wire, inbound, 2, 481)
    await bye_from_wire(ua, wire, inbound, cseq=3)


async def test_no_final_notify_in_time_is_408(ua: UserAgent, wire: Wire) -> None:
    inbound = await inbound_call(ua, wire)
    task = asyncio.create_task(inbound.call.refer(TARGET, timeout=0.5))
    wire.reply(await refer_sent(wire, inbound), 202)
    notify(wire, ua, inbound, 2, "SIP/2.0 180 Ringing")
    await answered_notify(wire, inbound, 2)
    with pytest.raises(CallFailed) as failed:
        await within(task)
    assert failed.value.status == 408 and "no final NOTIFY" in failed.value.reason
    await bye_from_wire(ua, wire, inbound, cseq=3)


async def test_a_subscription_ended_without_a_final_status_fails(ua: UserAgent, wire: Wire) -> None:
    inbound = await inbound_call(ua, wire)
    task = asyncio.create_task(inbound.call.refer(TARGET))
    wire.reply(await refer_sent(wire, inbound), 202)
    notify(wire, ua, inbound, 2, "SIP/2.0 100 Trying", "terminated;reason=timeout")
    await answered_notify(wire, inbound, 2)
    with pytest.raises(CallFailed, match="subscription ended") as failed:
        await within(task)
    assert failed.value.status is None
    await bye_from_wire(ua, wire, inbound, cseq=3)


async def test_the_call_ending_before_the_outcome_fails_the_refer(
    ua: UserAgent, wire: Wire
) -> None:
    inbound = await inbound_call(ua, wire)
    task = asyncio.create_task(inbound.call.refer(TARGET))
    wire.reply(await refer_sent(wire, inbound), 202)
    await bye_from_wire(ua, wire, inbound, cseq=2)
    with pytest.raises(CallFailed, match="ended before the transfer's final NOTIFY"):
        await within(task)


async def test_malformed_notifies_are_refused_and_the_refer_goes_on(
    ua: UserAgent, wire: Wire
) -> None:
    inbound = await inbound_call(ua, wire)
    task = asyncio.create_task(inbound.call.refer(TARGET))
    wire.reply(await refer_sent(wire, inbound), 202)
    notify(wire, ua, inbound, 2, "200 OK")  # not a status line
    bad = await wire.response(400, "NOTIFY", call_id=inbound.call_id, cseq=2)
    assert bad.reason == "Bad Notification"  # the peer's bytes are not echoed back
    notify(wire, ua, inbound, 3, "SIP/2.0 200 OK", content_type="text/plain")
    await answered_notify(wire, inbound, 3, 415)
    notify(wire, ua, inbound, 4, "SIP/2.0 200 OK", "active;expires=never")
    await answered_notify(wire, inbound, 4, 400)
    notify(wire, ua, inbound, 5, "SIP/2.0 200 OK", event="dialog")
    other = await wire.response(489, "NOTIFY", call_id=inbound.call_id, cseq=5)
    assert other.headers.get("Allow-Events") == "refer"
    assert not task.done()
    notify(wire, ua, inbound, 6, "SIP/2.0 200 OK", "terminated;reason=noresource")
    await answered_notify(wire, inbound, 6)
    assert await within(task) == 200
    await bye_from_wire(ua, wire, inbound, cseq=7)


async def test_an_unexpected_notify_gets_481(ua: UserAgent, wire: Wire) -> None:
    inbound = await inbound_call(ua, wire)
    notify(wire, ua, inbound, 2, "SIP/2.0 200 OK")
    await answered_notify(wire, inbound, 2, 481)
    assert inbound.call.is_up
    await bye_from_wire(ua, wire, inbound, cseq=3)


async def test_attended_transfer_sends_the_other_calls_dialog_escaped(
    ua: UserAgent, wire: Wire
) -> None:
    inbound = await inbound_call(ua, wire)  # the caller
    consult = await outbound(ua, wire)  # our call to the transfer target (answered with "st")
    assert consult.dialog is not None
    task = asyncio.create_task(inbound.call.refer(wire.uri, replaces=consult))
    refer = await refer_sent(wire, inbound)
    value = refer.headers.get("Refer-To")
    assert value is not None and "?Replaces=" in value and "%3Bto-tag%3Dst%3Bfrom-tag%3D" in value
    refer_to = ReferTo.parse(value)
    assert str(refer_to.uri) == wire.uri
    assert refer_to.replaces == Replaces(consult.call_id, "st", consult.dialog.local_tag)
    wire.reply(refer, 202)
    notify(wire, ua, inbound, 2, "SIP/2.0 200 OK", "terminated;reason=noresource")
    assert await within(task) == 200
    await bye_from_wire(ua, wire, inbound, cseq=3)
    await hang_up(consult, wire)


async def test_refer_needs_a_call_that_is_up_and_a_sip_target(ua: UserAgent, wire: Wire) -> None:
    inbound = await inbound_call(ua, wire)
    with pytest.raises(ValueError, match="sip: or sips:"):
        await inbound.call.refer("tel:+15551234567")
    with pytest.raises(ValueError, match="scheme"):
        await inbound.call.refer("mailto:someone@example.com")
    assert wire.requests("REFER") == []  # refused before anything was sent
    await bye_from_wire(ua, wire, inbound, cseq=2)
    with pytest.raises(CallFailed, match="cannot transfer a call that is ended"):
        await inbound.call.refer(TARGET)


# -- we receive REFER -----------------------------------------------------------------------------


def refer_from_wire(wire: Wire, ua: UserAgent, inbound: Inbound, cseq: int, *refer_to: str) -> None:
    extra = [f"Refer-To: {value}" for value in refer_to]
    wire.send(
        wire.request(
            "REFER", ua.address, call_id=inbound.call_id, cseq=cseq, to_tag=inbound.tag,
            extra=[*extra, "Referred-By: <sip:pbx@127.0.0.1>"],
        ),
        ua.address,
    )  # fmt: skip


async def next_notify(wire: Wire, inbound: Inbound, timeout: float = 3.0) -> SipRequest:
    return await wire.request_of(
        "NOTIFY", where=lambda r: r.call_id == inbound.call_id, timeout=timeout
    )


async def test_a_refer_is_declined_without_a_handler(ua: UserAgent, wire: Wire) -> None:
    inbound = await inbound_call(ua, wire)
    assert inbound.call.on_refer is None
    refer_from_wire(wire, ua, inbound, 2, f"<{TARGET}>")
    await wire.response(603, "REFER", call_id=inbound.call_id, cseq=2)
    with pytest.raises(TimeoutError):  # refused: no subscription, so no NOTIFY
        await next_notify(wire, inbound, timeout=0.4)  # (a deadline that must pass)
    await bye_from_wire(ua, wire, inbound, cseq=3)


async def test_a_handler_that_says_no_declines(ua: UserAgent, wire: Wire) -> None:
    inbound = await inbound_call(ua, wire)
    seen: list[ReferRequest] = []

    def refuse(refer: ReferRequest) -> Awaitable[int] | None:
        seen.append(refer)
        return None

    inbound.call.on_refer = refuse
    refer_from_wire(wire, ua, inbound, 2, f"<{TARGET}>")
    await wire.response(603, "REFER", call_id=inbound.call_id, cseq=2)
    assert [str(r.target) for r in seen] == [TARGET]
    await bye_from_wire(ua, wire, inbound, cseq=3)


@pytest.mark.parametrize(
    "refer_to",
    [
        (),  # no Refer-To
        ("<tel:+15551234567>",),  # not a SIP URI
        ("<http://example.com/transfer>",),
        ("<sip:queue@192.0.2.50;method=BYE>",),
        ("<sip:a@192.0.2.50>", "<sip:b@192.0.2.50>"),  # two
        ("<sip:queue@192.0.2.50?Replaces=only-a-call-id>",),
    ],
)
async def test_an_unusable_refer_gets_400_and_never_reaches_the_handler(
    ua: UserAgent, wire: Wire, refer_to: tuple[str, ...]
) -> None:
    inbound = await inbound_call(ua, wire)
    called: list[ReferRequest] = []

    async def dial() -> int:
        return 200

    def accept(refer: ReferRequest) -> Awaitable[int]:
        called.append(refer)
        return dial()

    inbound.call.on_refer = accept
    refer_from_wire(wire, ua, inbound, 2, *refer_to)
    bad = await wire.response(400, "REFER", call_id=inbound.call_id, cseq=2)
    assert bad.reason == "Bad Refer-To" and called == []
    await bye_from_wire(ua, wire, inbound, cseq=3)


async def test_an_accepted_refer_is_202_then_notify_100_then_the_outcome(
    ua: UserAgent, wire: Wire
) -> None:
    inbound = await inbound_call(ua, wire)
    dialled = asyncio.Event()
    outcome: asyncio.Future[int] = asyncio.get_running_loop().create_future()
    seen: list[ReferRequest] = []

    async def dial() -> int:
        dialled.set()
        return await outcome

    def accept(refer: ReferRequest) -> Awaitable[int]:
        seen.append(refer)
        return dial()

    inbound.call.on_refer = accept
    refer_from_wire(wire, ua, inbound, 2, ATTENDED)
    accepted = await wire.response(202, "REFER", call_id=inbound.call_id, cseq=2)
    assert accepted.headers.get("Contact") == ua.contact()
    assert str(seen[0].target) == "sip:dave@192.0.2.50"
    assert seen[0].replaces == Replaces("c@h", "t", "f")
    assert seen[0].referred_by is not None and seen[0].referred_by.uri.user == "pbx"

    trying = await next_notify(wire, inbound)
    assert trying.headers.get("Event") == "refer;id=2"
    assert trying.headers.get("Subscription-State") == "active;expires=60"
    assert trying.content_type == "message/sipfrag;version=2.0"
    assert SipFrag.parse(trying.body) == SipFrag(100, "Trying")
    assert trying.from_.tag == inbound.tag and trying.to.tag == "wire1"
    await within(dialled.wait())  # the dial runs while the peer hears "100 Trying"
    wire.reply(trying, 200)
    outcome.set_result(200)
    final = await wire.request_of("NOTIFY", where=lambda r: r.cseq[0] == trying.cseq[0] + 1)
    assert final.headers.get("Subscription-State") == "terminated;reason=noresource"
    assert final.body == b"SIP/2.0 200 OK\r\n"
    wire.reply(final, 200)
    await bye_from_wire(ua, wire, inbound, cseq=3)


async def test_the_final_notify_waits_for_the_answer_to_the_first(
    ua: UserAgent, wire: Wire
) -> None:
    """RFC 6665 4.2.2: one NOTIFY at a time, even when the dial is over at once."""
    inbound = await inbound_call(ua, wire)

    async def busy() -> int:
        raise CallFailed(486, "Busy Here")

    inbound.call.on_refer = lambda refer: busy()
    refer_from_wire(wire, ua, inbound, 2, f"<{TARGET}>")
    trying = await next_notify(wire, inbound)
    with pytest.raises(TimeoutError):  # only retransmissions of the first until it is answered
        await wire.request_of("NOTIFY", where=lambda r: r.cseq != trying.cseq, timeout=0.4)
    wire.reply(trying, 200)
    final = await wire.request_of("NOTIFY", where=lambda r: r.cseq != trying.cseq)
    assert SipFrag.parse(final.body) == SipFrag(486, "Busy Here")  # the dial's failure, relayed
    wire.reply(final, 200)
    await bye_from_wire(ua, wire, inbound, cseq=3)


async def test_a_dial_that_crashes_is_reported_as_500(
    ua: UserAgent, wire: Wire, caplog: pytest.LogCaptureFixture
) -> None:
    inbound = await inbound_call(ua, wire)

    async def broken() -> int:
        raise RuntimeError("the dialer fell over")

    inbound.call.on_refer = lambda refer: broken()
    refer_from_wire(wire, ua, inbound, 2, f"<{TARGET}>")
    wire.reply(await next_notify(wire, inbound), 200)
    final = await wire.request_of("NOTIFY", where=lambda r: r.cseq[0] == 2)
    assert final.body == b"SIP/2.0 500 Server Internal Error\r\n"
    wire.reply(final, 200)
    assert "the dial for a REFER failed" in caplog.text
    await bye_from_wire(ua, wire, inbound, cseq=3)

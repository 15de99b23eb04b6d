"""Keys pressed by SIP INFO (application/dtmf-relay, application/dtmf), over real UDP sockets.

Many PBXs and carriers send keys as INFO requests instead of RFC 4733 events; the consult must
see them the same way, on the call's `media.keys`. The peers are a raw `Wire` (hand-written SIP,
so odd bodies can be sent) and a second `UserAgent` (the target's side of a dialled call, where
the consult actually listens). Every wait is on a queue or event with a deadline.
"""

from __future__ import annotations

import asyncio

import pytest

from tests.unit.sip_wire import Wire
from tests.unit.test_useragent import Inbound, bye_from_wire, inbound_call, within
from warmtransfer.backends.sip import SipTargetLeg
from warmtransfer.media.dtmf import parse_info_dtmf
from warmtransfer.media.session import KeyPress
from warmtransfer.sip.message import SipResponse
from warmtransfer.sip.useragent import UserAgent
from warmtransfer.transfer.target import Target


def info(
    wire: Wire, ua: UserAgent, inbound: Inbound, cseq: int, content_type: str, body: bytes
) -> bytes:
    """An in-dialog INFO from the wire with any Content-Type and body."""
    head = wire.request("INFO", ua.address, call_id=inbound.call_id, cseq=cseq, to_tag=inbound.tag)
    head = head.removesuffix("Content-Length: 0\r\n\r\n")
    return (
        head.encode()
        + f"Content-Type: {content_type}\r\nContent-Length: {len(body)}\r\n\r\n".encode()
        + body
    )


async def send_info(
    wire: Wire, ua: UserAgent, inbound: Inbound, cseq: int, content_type: str, body: bytes
) -> SipResponse:
    """Send the INFO and return the final response to it (whatever its status)."""
    wire.send(info(wire, ua, inbound, cseq, content_type, body), ua.address)

    def final(message: object) -> bool:
        return (
            isinstance(message, SipResponse)
            and message.cseq == (cseq, "INFO")
            and message.status >= 200
        )

    response = await wire.next(final)
    assert isinstance(response, SipResponse)
    return response


# -- the body parser (pure) -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("media_type", "body", "digit"),
    [
        ("application/dtmf-relay", b"Signal=1\r\nDuration=160\r\n", "1"),
        ("application/dtmf-relay", b"Signal=1\r\nDuration=160", "1"),
        ("application/dtmf-relay", b"Duration=250\nsignal = #\n", "#"),
        ("application/dtmf-relay", b"Signal=*\r\nDuration=oops\r\n", "*"),  # duration tolerated
        ("application/dtmf-relay", b"Signal=11\r\n", "#"),  # an event code, as some gateways do
        ("application/dtmf-relay", b"Signal=d\r\n", "D"),
        ("application/dtmf", b"5", "5"),
        ("application/dtmf", b" 0\r\n", "0"),
        ("application/dtmf", b"10", "*"),
    ],
)
def test_info_bodies_name_their_key(media_type: str, body: bytes, digit: str) -> None:
    assert parse_info_dtmf(media_type, body) == digit


@pytest.mark.parametrize(
    ("media_type", "body"),
    [
        ("application/dtmf-relay", b"Duration=160\r\n"),  # no Signal
        ("application/dtmf-relay", b"Signal=\r\n"),
        ("application/dtmf-relay", b"Signal=X\r\n"),
        ("application/dtmf-relay", b"Signal=16\r\n"),  # event 16 is flash, not a key
        ("application/dtmf-relay", b"Signal=1\r\nSignal=2\r\n"),  # which one?
        ("application/dtmf-relay", "Signal=\u00e9".encode()),
        ("application/dtmf", b"1 2"),
        ("application/dtmf", b""),
        ("application/sdp", b"Signal=1"),
    ],
)
def test_info_bodies_without_a_key_raise(media_type: str, body: bytes) -> None:
    with pytest.raises(ValueError, match=r"(?i)dtmf"):
        parse_info_dtmf(media_type, body)


# -- over the wire --------------------------------------------------------------------------------


async def test_dtmf_relay_info_puts_the_key_on_media_keys_and_gets_200(
    ua: UserAgent, wire: Wire
) -> None:
    inbound = await inbound_call(ua, wire)
    loop = asyncio.get_running_loop()
    before = loop.time()
    ok = await send_info(
        wire, ua, inbound, 2, "application/dtmf-relay", b"Signal=1\r\nDuration=160\r\n"
    )
    assert ok.status == 200
    press = await within(inbound.call.media.keys.get())
    assert isinstance(press, KeyPress)  # the very type RFC 4733 keys arrive as
    assert press.digit == "1"
    assert before <= press.at <= loop.time()
    assert inbound.call.media.keys.empty()  # once, not twice
    await bye_from_wire(ua, wire, inbound, cseq=3)


async def test_a_key_sent_both_ways_counts_once(ua: UserAgent, wire: Wire) -> None:
    """Some phones send every key as an RFC 4733 event and as an INFO: "5" must not read "55".
    (The event side is fed where the RTP receiver feeds it; its parsing is tested elsewhere.)"""
    inbound = await inbound_call(ua, wire)
    media = inbound.call.media
    now = asyncio.get_running_loop().time()
    assert media.key_pressed("5", now, "rfc4733")
    relay = b"Signal=5\r\nDuration=160\r\n"
    assert (await send_info(wire, ua, inbound, 2, "application/dtmf-relay", relay)).status == 200
    assert (await send_info(wire, ua, inbound, 3, "application/dtmf-relay", relay)).status == 200
    # The same key by the other way 5 s later is a press of its own.
    assert media.key_pressed("5", now + 5.0, "rfc4733")
    keys = [media.keys.get_nowait().digit for _ in range(media.keys.qsize())]
    assert keys == ["5", "5", "5"]  # the RFC 4733 one, the second INFO, the later one
    await bye_from_wire(ua, wire, inbound, cseq=4)


async def test_dtmf_info_in_any_case_and_with_parameters(ua: UserAgent, wire: Wire) -> None:
    inbound = await inbound_call(ua, wire)
    sends = [
        ("application/dtmf", b"#"),
        ("Application/DTMF-Relay; charset=US-ASCII", b"Signal=9\r\nDuration=100\r\n"),
        ("application/dtmf", b"a"),
    ]
    for cseq, (content_type, body) in enumerate(sends, start=2):
        assert (await send_info(wire, ua, inbound, cseq, content_type, body)).status == 200
    keys = [(await within(inbound.call.media.keys.get())).digit for _ in sends]
    assert keys == ["#", "9", "A"]
    await bye_from_wire(ua, wire, inbound, cseq=10)


@pytest.mark.parametrize(
    "body", [b"Duration=160\r\n", b"Signal=Z\r\n", b'Signal="1\r\nX: y"\r\n', b"\xff\xfe"]
)
async def test_a_malformed_dtmf_body_gets_400_and_no_key(
    ua: UserAgent, wire: Wire, body: bytes
) -> None:
    inbound = await inbound_call(ua, wire)
    response = await send_info(wire, ua, inbound, 2, "application/dtmf-relay", body)
    assert response.status == 400
    assert response.headers.get("X") is None  # nothing of the peer's body echoed into headers
    assert inbound.call.media.keys.empty()
    assert inbound.call.is_up
    # the call still takes a good key afterwards
    ok = await send_info(wire, ua, inbound, 3, "application/dtmf", b"7")
    assert ok.status == 200
    assert (await within(inbound.call.media.keys.get())).digit == "7"
    await bye_from_wire(ua, wire, inbound, cseq=4)


async def test_another_info_type_gets_415_with_accept(ua: UserAgent, wire: Wire) -> None:
    inbound = await inbound_call(ua, wire)
    body = b'<?xml version="1.0"?><media_control><vc_primitive><to_encoder>'
    response = await send_info(wire, ua, inbound, 2, "application/media_control+xml", body)
    assert response.status == 415
    accepted = {t.strip() for t in (response.headers.get("Accept") or "").split(",")}
    assert accepted == {"application/dtmf-relay", "application/dtmf"}
    no_type = await send_info(wire, ua, inbound, 3, "", b"Signal=1")  # a body of no type
    assert no_type.status == 415
    assert inbound.call.media.keys.empty()
    assert inbound.call.is_up
    await bye_from_wire(ua, wire, inbound, cseq=4)


async def test_info_key_from_a_dialled_target_reaches_the_target_legs_next_key(
    ua: UserAgent,
) -> None:
    """The consult's side: we dial the human; their phone sends the key by INFO."""
    human = await UserAgent("127.0.0.1", user="human").start()
    try:
        dialling = asyncio.create_task(ua.call(f"sip:human@127.0.0.1:{human.port}"))
        theirs = await within(human.next_call())
        await theirs.answer()
        ours = await within(dialling)
        leg = SipTargetLeg(ours, Target(uri=f"sip:human@127.0.0.1:{human.port}"))
        assert theirs.dialog is not None
        request = theirs.dialog.create_request(
            "INFO",
            human.via(),
            body=b"Signal=1\r\nDuration=160\r\n",
            content_type="application/dtmf-relay",
        )
        response = await within(human.request(request, theirs.dialog.next_address()))
        assert response.status == 200
        assert await within(leg.next_key()) == "1"
        assert [press.digit for press in leg.keys_seen] == ["1"]
        await ours.hangup()
        await within(theirs.ended.wait())
    finally:
        await human.close()

"""Digest authentication and registration against a real registrar/proxy: kamailio 5.6.

kamailio runs from a config written per test (tests/peers/kamailio.py): REGISTER is challenged
with 401, INVITE with 407, passwords are checked by kamailio's own auth module, and an INVITE
that passes is relayed to the callee's registered contact. Nothing of ours is on kamailio's
side, so a pass means our digest answers are what a real server computes.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from pathlib import Path
from typing import TypeVar

import pytest

from tests.peers.kamailio import KamailioPeer
from warmtransfer.sip.call import CallFailed, EndReason
from warmtransfer.sip.digest import parse_authorization, parse_challenge
from warmtransfer.sip.message import SipRequest, SipResponse, parse_message
from warmtransfer.sip.useragent import Credentials, UserAgent

pytestmark = pytest.mark.usefixtures("need_kamailio")

T = TypeVar("T")
USERS = {"alice": "alice-pw", "bob": "bob-pw"}


async def within(awaitable: Awaitable[T], seconds: float = 5.0) -> T:
    async with asyncio.timeout(seconds):
        return await awaitable


def sent(ua: UserAgent, method: str) -> list[SipRequest]:
    out = [parse_message(e.data) for e in ua.trace if e.direction == "out"]
    return [m for m in out if isinstance(m, SipRequest) and m.method == method]


def received(ua: UserAgent, status: int) -> list[SipResponse]:
    got = [parse_message(e.data) for e in ua.trace if e.direction == "in"]
    return [m for m in got if isinstance(m, SipResponse) and m.status == status]


@pytest.mark.parametrize("algorithm", ["SHA-256", "MD5"])
async def test_register_then_a_call_through_the_proxy_with_407(
    tmp_path: Path, algorithm: str
) -> None:
    async with (
        KamailioPeer.start(tmp_path, users=USERS, algorithm=algorithm) as kam,
        UserAgent("127.0.0.1", user="alice", credentials=Credentials("alice", "alice-pw")) as alice,
        UserAgent("127.0.0.1", user="bob", credentials=Credentials("bob", "bob-pw")) as bob,
    ):
        registration = await within(alice.register(kam.uri, expires=120))
        assert alice.registered and registration.expires == 120
        registers = sent(alice, "REGISTER")
        assert [r.cseq[0] for r in registers] == [1, 2]  # challenged once, answered once
        (challenge,) = received(alice, 401)
        offered = parse_challenge(challenge.headers.get("WWW-Authenticate") or "")
        assert offered.algorithm == algorithm and offered.realm == kam.realm
        answer = parse_authorization(registers[1].headers.get("Authorization") or "")
        assert answer.algorithm == algorithm and answer.nc == "00000001"
        await kam.wait_log(r"wt-registered sip:alice@127\.0\.0\.1:\d+ contact <sip:alice@")

        # bob calls alice's AOR; kamailio wants bob's credentials (407), then finds alice in
        # usrloc and relays: alice's INVITE arriving at all proves the binding is there.
        dialling = asyncio.create_task(bob.call(kam.aor("alice"), ring_timeout=5))
        incoming = await within(alice.next_call())
        assert incoming.caller.uri.user == "bob"
        await incoming.answer()
        call = await within(dialling)
        assert call.is_up
        invites = sent(bob, "INVITE")
        assert [i.cseq[0] for i in invites] == [1, 2]
        assert invites[0].call_id == invites[1].call_id
        assert invites[0].from_.tag == invites[1].from_.tag
        assert "Proxy-Authorization" in invites[1].headers
        assert len(received(bob, 407)) == 1
        # The BYE follows the Record-Route through kamailio and ends alice's side.
        await call.hangup()
        await within(incoming.ended.wait())
        assert incoming.end_reason is EndReason.REMOTE_BYE

    # Closing alice unregistered her (Expires: 0, authenticated again if asked).
    removal = sent(alice, "REGISTER")[-1]
    assert removal.headers.get("Expires") == "0"
    assert not alice.registered


async def test_wrong_password_fails_with_401_after_exactly_one_retry(tmp_path: Path) -> None:
    async with (
        KamailioPeer.start(tmp_path, users=USERS) as kam,
        UserAgent("127.0.0.1", user="alice", credentials=Credentials("alice", "wrong")) as alice,
    ):
        with pytest.raises(CallFailed) as failed:
            await within(alice.register(kam.uri))
        assert failed.value.status == 401
        assert not alice.registered
        assert [r.cseq[0] for r in sent(alice, "REGISTER")] == [1, 2]
        challenges = received(alice, 401)
        assert len(challenges) == 2
        nonces = {
            parse_challenge(c.headers.get("WWW-Authenticate") or "").nonce for c in challenges
        }
        assert len(nonces) == 2  # kamailio re-challenges with a fresh nonce, not stale
        assert len(await kam.wait_lines("wt-auth 401 REGISTER", 2)) == 2
    assert len(sent(alice, "REGISTER")) == 2  # and no unREGISTER for a binding never made


async def test_wrong_password_on_invite_fails_with_407(tmp_path: Path) -> None:
    async with (
        KamailioPeer.start(tmp_path, users=USERS) as kam,
        UserAgent("127.0.0.1", user="bob", credentials=Credentials("bob", "nope")) as bob,
    ):
        with pytest.raises(CallFailed) as failed:
            await within(bob.call(kam.aor("alice"), ring_timeout=5))
        assert failed.value.status == 407
        assert [i.cseq[0] for i in sent(bob, "INVITE")] == [1, 2]
        assert len(await kam.wait_lines("wt-auth 407 INVITE", 2)) == 2
        assert bob.calls == {}

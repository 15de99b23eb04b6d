"""The agent's side of a caller leg while a transfer it did not start holds the caller: the
agent waits (keys pressed on hold are the transfer's), then carries on, or learns the caller is
gone. Over a real SIP call on loopback, keys sent as RFC 4733 events by the phone."""

from __future__ import annotations

import asyncio

import pytest

from tests.calls import answered_call
from warmtransfer.backends.sip import SipCallerLeg
from warmtransfer.consult.ports import LegGone
from warmtransfer.transfer.plan import HoldAudio

QUIET_HOLD = HoldAudio(silence=True, reinvite=False)


async def test_agent_key_waits_out_a_hold_and_leaves_the_held_callers_keys_alone() -> None:
    async with answered_call() as (incoming, phone):
        leg = SipCallerLeg(incoming)
        agent = asyncio.ensure_future(leg.agent_key())
        await leg.hold(QUIET_HOLD)
        await phone.media.send_digits("*")
        async with asyncio.timeout(5):
            assert await leg.next_key() == "*"  # the transfer's key: the agent did not take it
        assert not agent.done()
        await leg.unhold()
        await phone.media.send_digits("7")
        async with asyncio.timeout(5):
            assert await agent == "7"


async def test_wait_with_ai_returns_after_the_hold_and_raises_once_the_caller_is_gone() -> None:
    async with answered_call() as (incoming, phone):
        leg = SipCallerLeg(incoming)
        await leg.wait_with_ai()  # not held: at once
        await leg.hold(QUIET_HOLD)
        waiting = asyncio.ensure_future(leg.wait_with_ai())
        await leg.unhold()
        async with asyncio.timeout(5):
            await waiting
        await leg.hold(QUIET_HOLD)
        gone = asyncio.ensure_future(leg.wait_with_ai())
        agent = asyncio.ensure_future(leg.agent_key())
        await phone.hangup()
        async with asyncio.timeout(5):
            with pytest.raises(LegGone):
                await gone
            with pytest.raises(LegGone):
                await agent

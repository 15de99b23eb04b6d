"""One SIP call answered between two warmtransfer user agents on loopback, real RTP between
them: for tests of what sits on a leg (agents, audio adapters) without an outside peer."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from warmtransfer.sip.call import Call
from warmtransfer.sip.useragent import UserAgent


@asynccontextmanager
async def answered_call() -> AsyncIterator[tuple[Call, Call]]:
    """(our side, the phone's side) of an answered call; both agents closed on exit."""
    ours = await UserAgent("127.0.0.1", user="wt").start()
    theirs = await UserAgent("127.0.0.1", user="phone").start()
    try:
        dialling = asyncio.ensure_future(theirs.call(f"sip:wt@127.0.0.1:{ours.port}"))
        async with asyncio.timeout(5):
            incoming = await ours.next_call()
            await incoming.answer()
            phone = await dialling
        yield incoming, phone
    finally:
        await theirs.close()
        await ours.close()

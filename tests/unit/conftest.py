"""Fixtures shared by the unit tests that talk SIP over real loopback sockets."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import pytest

from tests.unit.sip_wire import Wire
from warmtransfer.sip.useragent import UserAgent


@asynccontextmanager
async def started_ua(**options: Any) -> AsyncIterator[UserAgent]:
    """A user agent on a free loopback port, closed (calls, timers, sockets) on the way out."""
    agent = await UserAgent("127.0.0.1", **{"user": "wt", **options}).start()
    try:
        yield agent
    finally:
        await agent.close()


@pytest.fixture
async def ua() -> AsyncIterator[UserAgent]:
    async with started_ua() as agent:
        yield agent


@pytest.fixture
async def peer() -> AsyncIterator[UserAgent]:
    async with started_ua(user="human") as agent:
        yield agent


@pytest.fixture
async def wire() -> AsyncIterator[Wire]:
    """A raw SIP endpoint that speaks hand-written messages to the user agent under test."""
    raw = await Wire.open()
    try:
        yield raw
    finally:
        raw.close()
        await raw.wait_closed()

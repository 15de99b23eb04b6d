"""`EngineServiceApi` on a real engine and call (the human: a raw SIP wire that answers when
the test says): a drain cut short by its timeout leaves the API's transfers and their
outcomes alone, and a transfer whose run failed before it moved does not stay "running"."""

from __future__ import annotations

import asyncio
import contextlib
from pathlib import Path

import pytest

from tests.unit.test_one_transfer_per_call import DEADLINE, line
from warmtransfer.consult.handoff import HandoffRecord
from warmtransfer.consult.ports import Briefing
from warmtransfer.server.records import Records
from warmtransfer.server.service_api import EngineServiceApi
from warmtransfer.transfer.outcome import Reason, TransferOutcome


async def test_a_drain_cut_short_leaves_the_transfers_and_their_listeners_alone() -> None:
    async with line() as ln:
        ln.summarizer.gate.set()
        finished = asyncio.Event()
        reasons: list[Reason] = []

        def on_finish(tid: str, call_id: str, outcome: TransferOutcome, rec: HandoffRecord) -> None:
            reasons.append(outcome.reason)  # the handoff webhook, in the service
            finished.set()

        ln.api.on_finish.append(on_finish)
        info = await ln.api.start_transfer(ln.call.call_id, ln.plan, Briefing(summary="API"))
        invite = await ln.wire.request_of("INVITE")
        # The service's drain, reaching its deadline while the transfer hunts.
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout_at(asyncio.get_running_loop().time()):
                await ln.api.drain()
        ln.wire.reply(invite, 486, to_tag="busy")
        async with asyncio.timeout(DEADLINE):
            await finished.wait()
            assert (await ln.api.wait(info.transfer_id)).reason is Reason.BUSY
        assert reasons == [Reason.BUSY]


async def test_a_transfer_whose_run_failed_is_not_left_running(tmp_path: Path) -> None:
    """The records store refuses the transfer's row: the transfer never moves (its state stays
    idle), but it is over, and the call takes another transfer."""
    records = await Records.open(tmp_path / "records.db")
    await records.close()  # every write is refused from now on
    async with line() as ln:
        api = EngineServiceApi(ln.engine, ln.plan.allow, records=records)
        for _ in range(2):  # the second is not refused with a 409
            info = await api.start_transfer(ln.call.call_id, ln.plan, Briefing(summary="API"))
            async with asyncio.timeout(DEADLINE):
                with pytest.raises(RuntimeError, match="closed"):
                    await api.wait(info.transfer_id)
            state = await api.transfer_state(info.transfer_id)
            assert state.state == "idle" and state.ended is True
            assert [c.transfer_id for c in await api.list_calls()] == [None]
        assert not ln.engine.transfers and not ln.wire.requests("INVITE")

"""Latency of the moments a caller and a human notice, over N warm transfers on loopback.

Prints the median and p95 of:
  hold:     transfer start -> first hold-music packet sent to the caller      (target < 40 ms)
  briefing: the human's 200 OK -> first briefing packet sent to the human     (target < 100 ms)
  accept:   the accept key arriving -> first caller packet forwarded to them  (target < 40 ms)

Every transfer is real SIP/RTP between three user agents in this process (engine, caller,
human), with the engine's own timestamps. Usage: python benchmarks/latency.py [-n 20]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import time

from warmtransfer.backends.sip import SipCallerLeg, SipTargetLeg
from warmtransfer.consult.ports import Briefing
from warmtransfer.demo.phone import Phone
from warmtransfer.demo.runner import measure
from warmtransfer.engine import Engine
from warmtransfer.speech.tts import PiperTTS
from warmtransfer.transfer.events import TransferEvent
from warmtransfer.transfer.plan import TransferPlan
from warmtransfer.transfer.target import AllowList, Target

BRIEFING = Briefing(summary="The caller was charged twice for an order and wants a refund.")


async def one_transfer(engine: Engine, ring_for: float) -> dict[str, float | None]:
    caller = await Phone("caller", engine.tts).start()
    human = await Phone("human", engine.tts).start()
    events: list[TransferEvent] = []
    legs: list[SipTargetLeg] = []
    engine.dialer.on_leg = legs.append
    try:
        plan = TransferPlan(
            targets=(Target(uri=human.uri, ring_timeout=10),),
            allow=AllowList(patterns=(human.uri,)),
            consult_timeout=20,
        )

        async def engine_side() -> None:
            call = await engine.next_call()
            await call.answer()
            leg = engine.caller_leg(call)
            outcome = await engine.warm_transfer(leg, plan, BRIEFING, on_event=events.append)
            if not outcome.ok:
                raise RuntimeError(f"transfer failed: {outcome}")
            transferred.set()
            caller_legs.append(leg)

        async def human_side() -> None:
            await human.answer(ring_for=ring_for)
            assert human.call is not None
            heard = asyncio.Event()
            with human.call.media.listening(lambda frame: heard.set() if frame.any() else None):
                await heard.wait()
            await human.press("1")
            await human.call.wait_ended()

        figures: dict[str, float | None] = {}
        transferred = asyncio.Event()

        caller_legs: list[SipCallerLeg] = []

        async def caller_side() -> None:
            await caller.dial(engine.uri)
            await transferred.wait()
            while legs[-1].media.stats.first_forwarded_at is None:  # noqa: ASYNC110 - polled stat
                await asyncio.sleep(0.005)
            await caller.hangup()  # ends the bridge, which ends the human's leg

        async with asyncio.timeout(60):
            await asyncio.gather(engine_side(), human_side(), caller_side())
        figures.update(measure(events, caller_legs[0], legs[-1]))
        return figures
    finally:
        await caller.close()
        await human.close()


def summary(name: str, values: list[float], target: float) -> str:
    values = sorted(values)
    p95 = values[min(len(values) - 1, int(0.95 * len(values)))]
    verdict = "ok" if p95 < target else "OVER"
    return (
        f"{name:<9} median {statistics.median(values):6.1f} ms   p95 {p95:6.1f} ms   "
        f"max {values[-1]:6.1f} ms   target < {target:g} ms  {verdict}"
    )


async def main(n: int, ring_for: float) -> int:
    tts = PiperTTS()
    async with Engine(port=0, tts=tts) as engine:
        await tts.synthesize(BRIEFING.summary)
        results = []
        started = time.perf_counter()
        for _ in range(n):
            results.append(await one_transfer(engine, ring_for))
        elapsed = time.perf_counter() - started
    print(f"{n} warm transfers over SIP/RTP on loopback in {elapsed:.1f} s")
    ok = True
    for key, name, target in (
        ("hold_music_ms", "hold", 40.0),
        ("briefing_ms", "briefing", 100.0),
        ("accept_to_audio_ms", "accept", 40.0),
    ):
        values = [r[key] for r in results if r.get(key) is not None]
        if len(values) < n:
            print(f"{name}: only {len(values)} of {n} transfers measured")
            ok = False
        if values:
            line = summary(name, [float(v) for v in values if v is not None], target)
            ok = ok and line.endswith("ok")
            print(line)
    return 0 if ok else 1


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-n", type=int, default=20, help="number of transfers")
    parser.add_argument("--ring", type=float, default=0.3, help="seconds the human lets it ring")
    args = parser.parse_args()
    sys.exit(asyncio.run(main(args.n, args.ring)))

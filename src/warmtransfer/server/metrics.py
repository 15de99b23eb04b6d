"""Prometheus metrics of the service, served as text on the HTTP port (`/metrics`).

Why a registry of our own (not prometheus_client's global one): an app that embeds the engine
may have its own metrics, and tests make several `Metrics` in one process; neither must see the
other's series or fail on a duplicate name.

Two kinds of input:
- `observe_event(TransferEvent)`, called on every move of every transfer (use it as, or from,
  the transfer's `on_event`): counts transfers started and by how they ended (one that ends
  before its Start counts as started too: the two counters always agree), and times what the
  events time: dial to answer, and time on hold (the hold starts at HoldStarted and ends with
  the transfer: bridged, given back, dismissed or abandoned).
- `collect_engine(engine)`, called just before each scrape by the HTTP layer: gauges read from
  the engine as it is now (calls in progress, RTP packets and loss of the live legs, the pacing
  clock's lateness percentiles).
Time to first briefing audio (a human answers -> the first clip plays to them) is not an event;
`attach(engine)` hooks the engine's dialer to see each human's leg start playing.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest

from warmtransfer.transfer.events import TransferEvent
from warmtransfer.transfer.states import (
    Answered,
    AttemptFailed,
    DialStarted,
    HoldStarted,
    HuntExhausted,
    Start,
    State,
    is_terminal,
)

if TYPE_CHECKING:
    from warmtransfer.backends.sip import SipTargetLeg
    from warmtransfer.engine import Engine
    from warmtransfer.transfer.outcome import TransferOutcome

__all__ = ["CONTENT_TYPE_LATEST", "Metrics"]

log = logging.getLogger(__name__)

_WAIT_BUCKETS = (0.5, 1, 2, 3, 5, 8, 13, 20, 30, 45, 60, 90, 120, 180, 300, 600)
_FAST_BUCKETS = (0.05, 0.1, 0.2, 0.3, 0.5, 0.75, 1, 1.5, 2, 3, 5, 10)
_QUANTILES = (0.5, 0.99, 0.999)


class Metrics:
    """Every series of the service, on `self.registry`; `render()` is the scrape's body."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        r = self.registry
        self.calls_in_progress = Gauge(
            "warmtransfer_calls_in_progress", "SIP calls up now (callers and humans)", registry=r
        )
        self.transfers_in_progress = Gauge(
            "warmtransfer_transfers_in_progress", "Transfers started and not ended", registry=r
        )
        self.transfers_started = Counter(
            "warmtransfer_transfers_started", "Transfers started", registry=r
        )
        self.transfers_ended = Counter(
            "warmtransfer_transfers_ended",
            "Transfers ended, by final state and reason (transfer.outcome.Reason)",
            ["state", "reason"],
            registry=r,
        )
        self.attempts_failed = Counter(
            "warmtransfer_attempts_failed",
            "Dial attempts that ended without an answer, by reason",
            ["reason"],
            registry=r,
        )
        self.time_to_answer = Histogram(
            "warmtransfer_time_to_answer_seconds",
            "From dialling a human to their answer",
            buckets=_WAIT_BUCKETS,
            registry=r,
        )
        self.time_to_briefing_audio = Histogram(
            "warmtransfer_time_to_first_briefing_audio_seconds",
            "From a human's answer to the first briefing audio played to them",
            buckets=_FAST_BUCKETS,
            registry=r,
        )
        self.time_on_hold = Histogram(
            "warmtransfer_time_on_hold_seconds",
            "How long a caller was held, from the hold audio starting to the transfer's end",
            buckets=_WAIT_BUCKETS,
            registry=r,
        )
        self.media_packets = Gauge(
            "warmtransfer_media_packets",
            "RTP packets of the calls up now, by direction",
            ["direction"],
            registry=r,
        )
        self.media_lost = Gauge(
            "warmtransfer_media_packets_lost",
            "RTP packets lost on the calls up now (RFC 3550 expected - received)",
            registry=r,
        )
        self.pacing_lateness = Gauge(
            "warmtransfer_pacing_lateness_seconds",
            "How late the 20 ms pacing clock's ticks fire (recent ticks), by quantile",
            ["quantile"],
            registry=r,
        )
        self.pacing_worst = Gauge(
            "warmtransfer_pacing_lateness_worst_seconds", "Latest tick ever", registry=r
        )
        self.pacing_ticks = Gauge(
            "warmtransfer_pacing_ticks", "Ticks of the pacing clock since start", registry=r
        )
        self.webhooks = Counter(
            "warmtransfer_webhook_deliveries",
            "Webhook deliveries by result: delivered, failed, retry, dropped (queue full)",
            ["result"],
            registry=r,
        )
        # transfer_id -> the monotonic time its hold started; (transfer_id, attempt) -> dial
        self._held: dict[str, float] = {}
        self._dialled: dict[tuple[str, int], float] = {}
        self._live: set[str] = set()
        self._causes: dict[str, str] = {}

    # -- events ---------------------------------------------------------------------------

    def observe_event(self, event: TransferEvent) -> None:
        """One move of one transfer. Safe as an `on_event` callback (never raises into it)."""
        try:
            self._observe(event)
        except Exception:  # a metric must never disturb a transfer
            log.exception("metrics could not observe %s", event)

    def _observe(self, event: TransferEvent) -> None:
        moved, tid = event.event, event.transfer_id
        if isinstance(moved, Start):
            self.transfers_started.inc()
            self._live.add(tid)
        elif isinstance(moved, HoldStarted):
            self._held[tid] = moved.at
        elif isinstance(moved, DialStarted):
            self._dialled[(tid, moved.attempt)] = moved.at
        elif isinstance(moved, Answered):
            dialled = self._dialled.pop((tid, moved.attempt), None)
            if dialled is not None:
                self.time_to_answer.observe(max(0.0, moved.at - dialled))
        elif isinstance(moved, AttemptFailed):
            self._dialled.pop((tid, moved.attempt), None)
            self.attempts_failed.labels(reason=moved.reason.value).inc()
        if event.state == State.RECOVERING and event.previous != State.RECOVERING:
            self._causes[tid] = _cause(event)
        if is_terminal(event.state):
            self._ended(event)
        self.transfers_in_progress.set(len(self._live))

    def _ended(self, event: TransferEvent) -> None:
        tid = event.transfer_id
        if tid not in self._live:
            # It ended before its Start (the caller hung up, or it was cancelled, before it
            # began): counted as started too, so that ended never exceeds started.
            self.transfers_started.inc()
        held = self._held.pop(tid, None)
        if held is not None:
            self.time_on_hold.observe(max(0.0, event.at - held))
        for key in [k for k in self._dialled if k[0] == tid]:
            del self._dialled[key]
        self._live.discard(tid)
        cause = self._causes.pop(tid, "error")
        if event.state == State.COMPLETED:
            cause = "completed"
        elif event.state == State.ABANDONED:
            cause = "caller_hung_up"
        self.transfers_ended.labels(state=event.state.value, reason=cause).inc()

    def observe_outcome(self, outcome: TransferOutcome) -> None:
        """Not needed with `observe_event` (the terminal event counts the transfer); for apps
        that only see outcomes. Counts by reason under state "outcome"."""
        self.transfers_ended.labels(state="outcome", reason=outcome.reason.value).inc()

    def observe_briefing_audio(self, seconds: float) -> None:
        self.time_to_briefing_audio.observe(max(0.0, seconds))

    def count_webhook(self, result: str) -> None:
        """A `WebhookSender.on_count` hook."""
        self.webhooks.labels(result=result).inc()

    # -- the engine -----------------------------------------------------------------------

    def attach(self, engine: Engine) -> None:
        """Time each human's first briefing audio: chain onto the dialer's `on_leg` hook and
        wrap the new leg's `play` so its first call observes answer -> play. (The engine has no
        event for it; the play call is when the clip is handed to the 20 ms pacing clock, so
        the first packet follows within one period.)"""
        dialer = engine.dialer
        previous = dialer.on_leg

        def on_leg(leg: SipTargetLeg) -> None:
            self._watch_leg(leg)
            if previous is not None:
                previous(leg)

        dialer.on_leg = on_leg

    def _watch_leg(self, leg: SipTargetLeg) -> None:
        play: Callable[[Any], Awaitable[None]] = leg.play
        first = True

        async def timed_play(clip: Any) -> None:
            nonlocal first
            if first:
                first = False
                answered = leg.call.answered_at
                if answered is not None:
                    self.observe_briefing_audio(asyncio.get_running_loop().time() - answered)
            await play(clip)

        setattr(leg, "play", timed_play)  # noqa: B010 (an instance hook, not a class change)

    def collect_engine(self, engine: Engine) -> None:
        """Read the gauges off the engine as it is now (call before rendering a scrape)."""
        calls = [call for call in engine.ua.calls.values() if call.is_up]
        self.calls_in_progress.set(len(calls))
        sent = received = lost = 0
        for call in calls:
            stats = call.media.stats
            sent += stats.sent
            received += stats.received
            lost += stats.lost
        self.media_packets.labels(direction="sent").set(sent)
        self.media_packets.labels(direction="received").set(received)
        self.media_lost.set(lost)
        lateness = engine.clock.lateness
        if lateness.ticks:
            for q in _QUANTILES:
                self.pacing_lateness.labels(quantile=str(q)).set(lateness.percentile(q * 100))
        self.pacing_worst.set(lateness.worst)
        self.pacing_ticks.set(lateness.ticks)

    def render(self) -> bytes:
        """The Prometheus text exposition of every series (content type CONTENT_TYPE_LATEST)."""
        return generate_latest(self.registry)


_CAUSES = {
    "Cancelled": "cancelled",
    "TransferTimedOut": "transfer_timeout",
    "CallerCancelled": "cancelled_by_caller",
    "MessageRequested": "message_left",
    "PortFailed": "error",
    "BridgeBroke": "bridge_failed",
    "TargetHungUp": "target_hung_up",
}


def _cause(event: TransferEvent) -> str:
    """Why a transfer went to RECOVERING, in transfer.outcome.Reason's words."""
    moved = event.event
    if isinstance(moved, HuntExhausted | AttemptFailed):
        return moved.reason.value
    return _CAUSES.get(moved.name, "error")

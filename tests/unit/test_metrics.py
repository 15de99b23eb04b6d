"""Metrics: values after a transfer's events, and a scrape that parses as Prometheus text."""

from __future__ import annotations

from prometheus_client import REGISTRY
from prometheus_client.parser import text_string_to_metric_families

from warmtransfer.server.metrics import Metrics
from warmtransfer.transfer.events import TransferEvent
from warmtransfer.transfer.outcome import Reason
from warmtransfer.transfer.states import (
    Accepted,
    Answered,
    AttemptFailed,
    Bridged,
    CallerHungUp,
    Cancelled,
    DialStarted,
    Event,
    HoldStarted,
    HuntExhausted,
    Recovered,
    Ringing,
    Start,
    TransferStateMachine,
)
from warmtransfer.transfer.target import Target

ALICE = Target(uri="sip:alice@pbx.example.com")


def play(metrics: Metrics, transfer_id: str, events: list[Event]) -> None:
    """Feed `events` through the real state machine, as the driver would."""
    machine = TransferStateMachine()
    for event in events:
        before = machine.state
        after = machine.handle(event)
        metrics.observe_event(TransferEvent(transfer_id, event.at, event, before, after))


def samples(metrics: Metrics) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    text = metrics.render().decode()
    found = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            found[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return found


def test_a_completed_and_a_failed_transfer() -> None:
    metrics = Metrics()
    play(
        metrics,
        "t1",
        [
            Start(at=10.0),
            HoldStarted(at=10.5),
            DialStarted(at=11.0, attempt=0, target=ALICE),
            Ringing(at=11.2, attempt=0, sip_status=180),
            Answered(at=14.0, attempt=0),
            Accepted(at=20.0, attempt=0),
            Bridged(at=20.5),
        ],
    )
    play(
        metrics,
        "t2",
        [
            Start(at=30.0),
            HoldStarted(at=30.0),
            DialStarted(at=30.1, attempt=0, target=ALICE),
            AttemptFailed(at=31.1, attempt=0, reason=Reason.BUSY, sip_status=486),
            HuntExhausted(at=31.1, reason=Reason.BUSY, attempt=0, sip_status=486),
            Recovered(at=31.3),
        ],
    )
    got = samples(metrics)
    assert got[("warmtransfer_transfers_started_total", ())] == 2
    ended = (("reason", "completed"), ("state", "completed"))
    assert got[("warmtransfer_transfers_ended_total", ended)] == 1
    failed = (("reason", "busy"), ("state", "failed"))
    assert got[("warmtransfer_transfers_ended_total", failed)] == 1
    assert got[("warmtransfer_attempts_failed_total", (("reason", "busy"),))] == 1
    assert got[("warmtransfer_transfers_in_progress", ())] == 0
    # One answer, after 3 s of ringing: in the 3 s bucket, not the 2 s one.
    assert got[("warmtransfer_time_to_answer_seconds_count", ())] == 1
    assert got[("warmtransfer_time_to_answer_seconds_sum", ())] == 3.0
    assert got[("warmtransfer_time_to_answer_seconds_bucket", (("le", "2.0"),))] == 0
    assert got[("warmtransfer_time_to_answer_seconds_bucket", (("le", "3.0"),))] == 1
    # Held 10 s (10.5 -> 20.5) and 1.3 s (30.0 -> 31.3).
    assert got[("warmtransfer_time_on_hold_seconds_count", ())] == 2
    assert abs(got[("warmtransfer_time_on_hold_seconds_sum", ())] - 11.3) < 1e-9


def test_a_transfer_in_progress_is_counted_until_it_ends() -> None:
    metrics = Metrics()
    play(metrics, "t1", [Start(at=1.0), HoldStarted(at=1.0)])
    assert samples(metrics)[("warmtransfer_transfers_in_progress", ())] == 1


def test_its_own_registry_not_the_global_one() -> None:
    first, second = Metrics(), Metrics()  # a second one would clash on the global registry
    play(first, "t1", [Start(at=1.0)])
    assert samples(second)[("warmtransfer_transfers_started_total", ())] == 0
    assert REGISTRY.get_sample_value("warmtransfer_transfers_started_total") is None


def test_briefing_audio_and_webhook_counts() -> None:
    metrics = Metrics()
    metrics.observe_briefing_audio(0.3)
    metrics.count_webhook("dropped")
    got = samples(metrics)
    assert got[("warmtransfer_time_to_first_briefing_audio_seconds_count", ())] == 1
    assert got[("warmtransfer_webhook_deliveries_total", (("result", "dropped"),))] == 1


def test_a_transfer_that_ends_before_its_start_is_counted_as_started_too() -> None:
    """The caller hung up (or the app cancelled) before the transfer began: it ends without a
    Start, and the two counters must still agree (ended never exceeds started)."""
    metrics = Metrics()
    play(metrics, "gone", [CallerHungUp(at=1.0, detail="already hung up")])
    play(metrics, "cancelled", [Cancelled(at=2.0), Recovered(at=2.0)])
    got = samples(metrics)
    ended = sum(v for (name, _), v in got.items() if name == "warmtransfer_transfers_ended_total")
    assert ended == 2
    assert got[("warmtransfer_transfers_started_total", ())] == 2
    assert got[("warmtransfer_transfers_in_progress", ())] == 0

"""The held caller's side over real SIP/RTP: `*` to stop waiting, `#` to leave a message, and
progress prompts between the hold music.

A baresip phone is the caller (real RFC 4733 keys; its microphone sends CALLER_TONE; its
recording is what it heard); sipp is a human who lets it ring. Times on the caller's recording
start when the engine answered it (as in test_warm_transfer_sip.py).
"""

from __future__ import annotations

import asyncio
import wave
from pathlib import Path

import numpy as np
import pytest
from numpy.typing import NDArray

from tests.audio_checks import level, load, tone_fraction, window
from tests.e2e.conftest import (
    BRIEFING,
    CALLER_TONE,
    Running,
    baresip_caller,
    finish,
)
from tests.peers.baresip import BaresipPeer
from tests.peers.ports import free_port_pair
from tests.peers.sipp import SippPeer
from warmtransfer.backends.sip import SipCallerLeg
from warmtransfer.media.hold_music import hold_music
from warmtransfer.speech.tts import PiperTTS
from warmtransfer.transfer.outcome import Failed, Reason, TransferOutcome
from warmtransfer.transfer.plan import CallerKeys, HoldAudio, TransferPlan
from warmtransfer.transfer.states import (
    CallerCancelled,
    MessageRequested,
    Ringing,
    State,
)
from warmtransfer.transfer.target import AllowList

pytestmark = pytest.mark.peers

ALLOW = AllowList(patterns=("sip:human@127.0.0.1:*",))
RATE = 8000


async def call_and_hold(
    running: Running, caller: BaresipPeer, plan: TransferPlan
) -> tuple[SipCallerLeg, asyncio.Future[TransferOutcome]]:
    """The caller dials the engine, which answers and starts the transfer; returns the caller's
    leg as soon as it exists (to watch it during the transfer) and the transfer's outcome."""
    engine = running.engine
    made: asyncio.Future[SipCallerLeg] = asyncio.get_running_loop().create_future()

    async def engine_side() -> TransferOutcome:
        try:
            call = await engine.next_call()
            await call.ring()
            await call.answer()
        except BaseException as exc:
            made.set_exception(exc)  # the test fails on it, not on a timeout
            raise
        leg = engine.caller_leg(call)
        made.set_result(leg)
        return await engine.warm_transfer(leg, plan, BRIEFING, on_event=running.on_event)

    outcome = asyncio.ensure_future(engine_side())
    await caller.dial(engine.uri)
    async with asyncio.timeout(10):
        return await made, outcome


def ringing_plan(uri: str, **options: object) -> TransferPlan:
    return TransferPlan.model_validate(
        {"targets": ({"uri": uri, "ring_timeout": 20.0},), "allow": ALLOW, **options}
    )


def best_match(haystack: NDArray[np.int16], needle: NDArray[np.int16]) -> tuple[int, float]:
    """Where `needle` fits best in `haystack` (a sample offset) and how well: the normalised
    cross-correlation there, 1.0 for an exact (scaled) copy."""
    h = haystack.astype(np.float64)
    n = needle.astype(np.float64)
    size = len(h) + len(n)
    corr = np.fft.irfft(np.fft.rfft(h, size) * np.conj(np.fft.rfft(n, size)), size)[
        : len(h) - len(n) + 1
    ]
    energy = np.cumsum(np.concatenate([[0.0], h * h]))
    windows = np.sqrt(np.maximum(energy[len(n) :] - energy[: len(h) - len(n) + 1], 1e-9))
    score = corr / (windows * np.linalg.norm(n))
    best = int(np.argmax(score))
    return best, float(score[best])


async def test_star_while_the_human_rings_cancels_and_gives_the_caller_back(
    running: Running, tmp_path: Path, caller_wav: Path, need_baresip: None, need_sipp: None
) -> None:
    async with (
        SippPeer.uas(tmp_path, "uas_no_answer", port=free_port_pair()) as human,
        baresip_caller(tmp_path, caller_wav) as caller,
    ):
        leg, engine_side = await call_and_hold(running, caller, ringing_plan(human.uri))
        async with asyncio.timeout(10):
            await running.happened(Ringing).wait()
        call_start = leg.call.answered_at
        assert call_start is not None
        hold = running.at(State.HOLDING) - call_start
        await caller.wait_recorded(hold + 1.5)  # the caller hears the music a while
        await caller.send_dtmf("*")
        outcome = await finish(engine_side)
        assert isinstance(outcome, Failed)
        assert outcome.reason is Reason.CANCELLED_BY_CALLER
        assert outcome.attempts[0].reason is Reason.CANCELLED_BY_CALLER
        assert running.events[-1].state is State.FAILED
        assert [k.digit for k in leg.keys_seen] == ["*"]
        assert await human.wait(timeout=10) == 0, human.messages()
        assert "CANCEL" in human.received_requests()  # nothing left ringing
        assert leg.ai_connected and not leg.media.playing
        # Let two more seconds reach the caller, then look at what they heard.
        cancelled = running.when(CallerCancelled) - call_start
        await caller.wait_recorded(cancelled + 2.5)
        await caller.hangup()
        heard = await caller.received_wav()
    assert heard is not None
    audio = load(heard)
    assert level(window(audio, hold + 0.3, cancelled - 0.3)) > -40, "no hold music before *"
    after = window(audio, cancelled + 0.3, cancelled + 2.3)
    assert level(after) < -55, f"the caller still hears hold audio ({level(after):.1f} dBFS)"


async def test_pound_records_the_callers_message(
    running: Running, tmp_path: Path, caller_wav: Path, need_baresip: None, need_sipp: None
) -> None:
    messages = tmp_path / "messages"
    keys = CallerKeys(can_leave_message=True, messages_dir=messages)
    async with (
        SippPeer.uas(tmp_path, "uas_no_answer", port=free_port_pair()) as human,
        baresip_caller(tmp_path, caller_wav) as caller,
    ):
        plan = ringing_plan(human.uri, caller_keys=keys)
        leg, engine_side = await call_and_hold(running, caller, plan)
        async with asyncio.timeout(10):
            await running.happened(Ringing).wait()
        await caller.send_dtmf("#")
        async with asyncio.timeout(10):
            await running.happened(MessageRequested).wait()
        assert await human.wait(timeout=10) == 0, human.messages()
        assert "CANCEL" in human.received_requests()
        async with asyncio.timeout(15):  # the prompt and the tone
            await leg.message_started.wait()
        assert not leg.ai_connected, "the AI must not hear the caller while they record"
        # The caller speaks (its microphone's tone) for two seconds of media, then presses #.
        call_start = leg.call.answered_at
        started = leg.message_started_at
        assert call_start is not None and started is not None
        await caller.wait_recorded(started - call_start + 2.0)
        await caller.send_dtmf("#")
        outcome = await finish(engine_side)
        assert isinstance(outcome, Failed)
        assert outcome.reason is Reason.MESSAGE_LEFT
        assert running.events[-1].state is State.FAILED
        assert leg.ai_connected  # back with the AI, which can thank them
        await caller.hangup()
    path = outcome.recorded_message
    assert path is not None and path.parent == messages
    with wave.open(str(path)) as w:
        assert (w.getframerate(), w.getnchannels(), w.getsampwidth()) == (8000, 1, 2)
        message = np.frombuffer(w.readframes(w.getnframes()), dtype=np.int16)
    assert 1.5 < len(message) / RATE < 4.0
    body = message[int(0.2 * RATE) : -int(0.2 * RATE)]
    assert level(body) > -30, "the caller's voice is not in the message"
    assert tone_fraction(body, CALLER_TONE) > 0.8, "the message is not the caller's audio"
    # Nothing we sent (the hold music, the prompt, the tone) is in it.
    _, music = best_match(np.tile(hold_music().samples, 2), body[: RATE // 2])
    assert music < 0.3, f"the hold music is in the message (correlation {music:.2f})"
    assert tone_fraction(body, 1000.0) < 0.01, "the tone is in the message"


async def test_progress_prompt_between_the_hold_music(
    running: Running,
    tmp_path: Path,
    caller_wav: Path,
    tts: PiperTTS,
    need_baresip: None,
    need_sipp: None,
) -> None:
    every = 2.0
    hold = HoldAudio(progress_every=every)
    prompt = (await tts.synthesize(hold.progress_text)).samples  # cached: the engine's clip
    async with (
        SippPeer.uas(tmp_path, "uas_no_answer", port=free_port_pair()) as human,
        baresip_caller(tmp_path, caller_wav) as caller,
    ):
        plan = ringing_plan(human.uri, hold_audio=hold)
        leg, engine_side = await call_and_hold(running, caller, plan)
        async with asyncio.timeout(10):
            await running.happened(Ringing).wait()
        held = running.at(State.HOLDING)
        call_start = leg.call.answered_at
        assert call_start is not None
        # Past the first prompt and two seconds of music after it, before the second one.
        after_prompt = held - call_start + every + len(prompt) / RATE + 1.5
        await caller.wait_recorded(after_prompt)
        await caller.send_dtmf("*")
        outcome = await finish(engine_side)
        assert isinstance(outcome, Failed) and outcome.reason is Reason.CANCELLED_BY_CALLER
        assert await human.wait(timeout=10) == 0, human.messages()
        await caller.hangup()
        heard = await caller.received_wav()
    assert heard is not None
    assert leg.prompts, "no progress prompt was played"
    first = leg.prompts[0]
    assert first.first_sent_at is not None
    assert first.first_sent_at - held >= every - 0.05, "the prompt came before its time"
    audio = load(heard)
    hold_start = held - call_start
    # The prompt is in what the caller heard, where the engine says it played it.
    search = window(audio, hold_start + every - 1.0, hold_start + every + len(prompt) / RATE + 2)
    offset, score = best_match(search, prompt)
    assert score > 0.7, f"the prompt is not in what the caller heard ({score:.2f})"
    prompt_at = hold_start + every - 1.0 + offset / RATE
    assert abs(prompt_at - (first.first_sent_at - call_start)) < 0.3
    # Music before it, and music again after it, resumed where it paused (not from the start).
    assert level(window(audio, hold_start + 0.3, prompt_at - 0.2)) > -40
    prompt_end = prompt_at + len(prompt) / RATE
    resumed = window(audio, prompt_end + 0.2, prompt_end + 1.2)
    assert level(resumed) > -40, "the music did not resume after the prompt"
    music = hold_music().samples
    loop_length = len(music) / RATE
    where, fit = best_match(np.concatenate([music, music[: 2 * RATE]]), resumed)
    assert fit > 0.6, f"what followed the prompt is not the hold music ({fit:.2f})"
    music_start = leg.hold_playback_first_sent
    assert music_start is not None
    paused_at = (first.first_sent_at - music_start) % loop_length  # engine times: exact
    expected = (paused_at + 0.2) % loop_length
    off = (where / RATE - expected) % loop_length
    assert min(off, loop_length - off) < 0.3, (where / RATE, expected)
    assert tone_fraction(window(audio, hold_start + 0.3, prompt_end + 1.2), CALLER_TONE) < 0.05

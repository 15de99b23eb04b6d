"""`warmtransfer serve`'s built-in agent taking a spoken request: the caller says "agent" (piper's
voice, through a baresip phone) instead of pressing 0. The agent spots the word with pocketsphinx
on the 8 kHz call audio, puts the caller on hold and transfers; a baresip human presses 1."""

from __future__ import annotations

import os
import re
import signal
from pathlib import Path

import pytest

from tests.e2e.conftest import baresip_human
from tests.e2e.test_serve import serve, write_config
from tests.e2e.test_speech_sip import voice
from tests.peers.baresip import BaresipPeer
from tests.peers.ports import free_port_pair
from warmtransfer.speech.tts import PiperTTS

pytestmark = pytest.mark.peers


async def test_a_caller_who_says_agent_is_transferred(
    tmp_path: Path, tts: PiperTTS, human_wav: Path, need_baresip: None
) -> None:
    # Said after the greeting (which nobody listens to), and again in case the first fell on it.
    mic = await voice(tts, tmp_path / "caller.wav", 4.0, "Agent.", 6.0, "Agent.", 6.0)
    port = free_port_pair()
    async with baresip_human(tmp_path, human_wav) as human:
        config = write_config(tmp_path, port, human.uri)
        async with serve(tmp_path, config) as service:
            await service.wait_for_output(r"ready: taking calls", timeout=120)
            async with BaresipPeer.start(
                tmp_path, name="caller", user="caller", audio_wav=mic, sip_port=free_port_pair()
            ) as caller:
                await caller.dial(f"sip:warmtransfer@127.0.0.1:{port}")
                await caller.wait_event("CALL_ESTABLISHED")
                answered = await service.wait_for_output(r"call (\S+) from \S+ answered", 10)
                call_id = answered.group(1)
                await service.wait_for_output(r"caller said 'agent', transferring", 30)
                await human.wait_event("CALL_ESTABLISHED", timeout=30)
                await human.wait_recorded(2.0)
                await human.send_dtmf("1")
                await service.wait_for_output(r"transfer outcome completed", 30)
                await caller.hangup()
                await service.wait_for_output(rf"call {re.escape(call_id)} ended", 15)
            os.kill(service.pid or 0, signal.SIGTERM)
            assert await service.wait_exit(20) == 0, service.tail()
    assert "Traceback" not in service.log, service.tail()
    assert "caller pressed" not in service.log  # it was the word, not a key

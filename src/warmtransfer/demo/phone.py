"""A simulated person's phone for the demo: a separate SIP user agent on loopback that speaks
piper clips, records what it hears, and can tell when the other side has finished talking.

It is deliberately a full SIP/RTP peer (its own socket, its own pacing clock), so the demo
exercises the same wire path a real phone would, not an in-process shortcut.
"""

from __future__ import annotations

import asyncio
import contextlib
from pathlib import Path

import numpy as np
from numpy.typing import NDArray

from warmtransfer.media.clock import PacingClock
from warmtransfer.media.levels import EndOfSpeech
from warmtransfer.media.recorder import Recorder
from warmtransfer.media.session import MediaClosed
from warmtransfer.sip.call import Call
from warmtransfer.sip.useragent import UserAgent
from warmtransfer.speech.tts import TextToSpeech


class Phone:
    def __init__(
        self, name: str, tts: TextToSpeech, host: str = "127.0.0.1", display: str | None = None
    ) -> None:
        self.name = name
        self.display = display or name.title()
        self.tts = tts
        self.ua = UserAgent(host, 0, user=name, clock=PacingClock(), name=name)
        self.call: Call | None = None
        self.recorder: Recorder | None = None

    async def start(self) -> Phone:
        await self.ua.start()
        return self

    async def close(self) -> None:
        await self.ua.close()

    @property
    def uri(self) -> str:
        return self.ua.uri

    def _attach(self, call: Call) -> Call:
        self.call = call
        self.recorder = Recorder(asyncio.get_running_loop().time())
        call.media.recorder = self.recorder
        return call

    async def dial(self, uri: str) -> Call:
        return self._attach(await self.ua.call(uri, display=self.display, ring_timeout=30))

    async def answer(self, ring_for: float = 1.0) -> Call:
        call = await self.ua.next_call()
        await call.ring()
        await asyncio.sleep(ring_for)  # a person takes a moment to pick up
        await call.answer()
        return self._attach(call)

    async def say(self, text: str) -> None:
        assert self.call is not None
        clip = await self.tts.synthesize(text)
        playback = self.call.media.play(clip)
        await playback.done

    async def press(self, digits: str) -> None:
        """Press keys, one after the other. The engine may act on a key's first packet and
        hang up before it ends."""
        assert self.call is not None
        with contextlib.suppress(MediaClosed):
            await self.call.media.send_digits(digits)

    async def wait_for_end_of_speech(self, silence_ms: int = 800, timeout: float = 30.0) -> None:
        """Wait until the far end has spoken and then been quiet for `silence_ms`."""
        assert self.call is not None
        done = asyncio.Event()
        detector = EndOfSpeech(silence_ms=silence_ms)

        def sink(frame: NDArray[np.int16]) -> None:
            if detector.feed(frame):
                done.set()

        with self.call.media.listening(sink):
            async with asyncio.timeout(timeout):
                await done.wait()

    async def hangup(self) -> None:
        if self.call is not None:
            await self.call.hangup()

    def save_recording(self, path: Path) -> Path | None:
        return self.recorder.save(path) if self.recorder is not None else None

"""A small LRU of rendered speech, for text-to-speech engines whose renders cost money or time.

Prompts repeat ("Please hold", "Connecting you now"), so a clip is rendered once per (text, rate)
and kept; concurrent requests for the same text share one render (the second awaits the first's
result), and a waiter that is cancelled does not cancel the render others await. Failures are not
kept, so the next request tries again. Cached clips are shared, so their samples must be
read-only; the cache enforces it. PiperTTS and the OpenAI-compatible engine both use it.
"""

from __future__ import annotations

import asyncio
import functools
from collections import OrderedDict
from collections.abc import Callable, Coroutine
from typing import Any

from warmtransfer.media.audio import AudioClip

__all__ = ["ClipCache"]

Key = tuple[str, int]


class ClipCache:
    """Clips by (text, rate), least recently used evicted first; size 0 keeps nothing."""

    def __init__(self, size: int = 64) -> None:
        if size < 0:
            raise ValueError(f"cache size must not be negative, not {size}")
        self.size = size
        self._clips: OrderedDict[Key, AudioClip] = OrderedDict()
        self._pending: dict[Key, asyncio.Task[AudioClip]] = {}
        self.renders = 0
        """How many renders were started (hits and shared requests excluded)."""

    def __len__(self) -> int:
        return len(self._clips)

    async def get(
        self, key: Key, render: Callable[[], Coroutine[Any, Any, AudioClip]]
    ) -> AudioClip:
        """The cached clip for `key`, or the result of `render()`, shared with other waiters."""
        clip = self._clips.get(key)
        if clip is not None:
            self._clips.move_to_end(key)
            return clip
        loop = asyncio.get_running_loop()
        pending = self._pending.get(key)
        if pending is None or pending.get_loop() is not loop:
            self.renders += 1
            pending = loop.create_task(render())
            self._pending[key] = pending
            pending.add_done_callback(functools.partial(self._settle, key))
        return await asyncio.shield(pending)

    def _settle(self, key: Key, done: asyncio.Task[AudioClip]) -> None:
        if self._pending.get(key) is done:
            del self._pending[key]
        if done.cancelled() or done.exception() is not None:
            return
        clip = done.result()
        if clip.samples.flags.writeable:
            clip.samples.flags.writeable = False
        if self.size == 0:
            return
        self._clips[key] = clip
        self._clips.move_to_end(key)
        while len(self._clips) > self.size:
            self._clips.popitem(last=False)

"""A small jitter buffer for received audio that is decoded (listeners: the AI's ear, answer
detection, recorders). Sans-IO: `push(seq, ts, payload, now)` and `pop(now)`; time is an input.

Why: packets reordered by the network would otherwise reach a speech recogniser or a recording
out of order, and a lost one would silently shorten the audio. Why not for the bridge: a bridge
forwards on arrival and lets the far phone's own jitter buffer do this job; buffering there would
add delay to the conversation for nothing (DESIGN.md).

Policy, chosen for low delay rather than smoothness:
- An in-order frame is released at once (no fixed playout delay).
- A frame after a gap is held until the gap fills or it has waited `window` seconds; then each
  missing frame is concealed: the first by repeating the previous frame, any further ones by
  silence (a repeated frame sounds natural once; repeated more it becomes a buzz).
- A gap wider than `max_gap` frames is not concealed: the stream re-syncs on the new frame (a
  stalled sender, or nobody was listening for a while; inventing seconds of audio helps nobody).
- A frame older than the last one released, or one already held, is a late duplicate: dropped.
Sequence numbers are extended past the 16-bit wrap, so 65535 -> 0 is just the next frame.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["Frame", "JitterBuffer"]

_HALF = 0x8000
_MAX_MISORDER = 100  # further behind than this is a restarted stream (RFC 3550 A.1)


@dataclass(frozen=True, slots=True)
class Frame:
    """One frame released in order. `concealed` frames were invented for a lost packet."""

    seq: int  # 16-bit RTP sequence number
    ts: int  # RTP timestamp
    payload: bytes
    concealed: bool = False


class JitterBuffer:
    """Reorders by sequence number within `window` seconds; conceals loss; drops duplicates.

    `silence` is one frame of silence in the stream's codec (what loss after the first repeat
    is concealed with). A pushed payload of None marks a sequence number used by something that
    is not audio (an RFC 4733 event shares the sender's sequence space): it fills its slot
    without producing a frame, so a key press is not mistaken for loss.
    """

    def __init__(
        self, silence: bytes, window: float = 0.060, max_gap: int = 10, frame: float = 0.020
    ) -> None:
        self.silence = silence
        self.window = window
        self.max_gap = max_gap
        self.max_held = max(1, round(window / frame))  # frames held behind a gap, at most
        self._held: dict[int, tuple[int, bytes | None, float]] = {}  # ext seq -> (ts, payload, at)
        self._next: int | None = None  # extended sequence number of the next frame to release
        self._last: bytes | None = None  # the last payload released (repeated for one loss)
        self._last_ts = 0
        self._repeated = False  # the last payload was already repeated once for a loss
        self.released = 0
        self.concealed = 0
        self.late = 0  # late or duplicate frames dropped
        self.resyncs = 0

    def __len__(self) -> int:
        return len(self._held)

    @property
    def pending(self) -> bool:
        """Whether frames are held behind a gap (a later `pop` may release them)."""
        return bool(self._held)

    def reset(self) -> None:
        """Forget the stream (e.g. after nobody listened for a while): the next push starts it."""
        self._held.clear()
        self._next = None
        self._last = None
        self._repeated = False

    def push(self, seq: int, ts: int, payload: bytes | None, now: float) -> None:
        """A frame arrived (`seq` 16-bit). Call `pop` afterwards to take what became ready."""
        expected = self._next
        if expected is not None:
            delta = (seq - expected) & 0xFFFF
            if delta < _HALF:
                expected += delta
            elif 0x10000 - delta <= _MAX_MISORDER:
                self.late += 1  # behind the next one to release: released or given up on
                return
            else:  # far behind: not a late packet but a restarted stream
                self.resyncs += 1
                self.reset()
                expected = None
        if expected is None:
            self._next = expected = seq
        if expected in self._held:
            self.late += 1
            return
        self._held[expected] = (ts, payload, now)

    def pop(self, now: float) -> Frame | None:
        """The next frame in order, if one is ready now (call until None)."""
        held = self._held
        while held:
            expected = self._next
            assert expected is not None
            entry = held.pop(expected, None)
            if entry is not None:
                self._next = expected + 1
                ts, payload, _ = entry
                if payload is None:
                    continue  # a slot used by an event: nothing to hear, nothing lost
                self._last, self._last_ts, self._repeated = payload, ts, False
                self.released += 1
                return Frame(expected & 0xFFFF, ts, payload)
            if len(held) < self.max_held and now - min(e[2] for e in held.values()) < self.window:
                return None  # the gap may still fill
            first = min(held)
            if first - expected > self.max_gap:
                self.resyncs += 1
                self._next = first
                continue
            return self._conceal(expected)
        return None

    def _conceal(self, expected: int) -> Frame:
        self._next = expected + 1
        self.concealed += 1
        last = self._last
        ts = 0 if last is None else (self._last_ts + len(last)) & 0xFFFFFFFF
        payload = last if last is not None and not self._repeated else self.silence
        self._last_ts, self._repeated = ts, True
        if last is None:
            self._last = payload
        return Frame(expected & 0xFFFF, ts, payload, concealed=True)

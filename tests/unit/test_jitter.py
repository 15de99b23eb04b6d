"""The jitter buffer as a pure class: push(seq, ts, payload, now) / pop(now), time as an input."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from warmtransfer.media.jitter import Frame, JitterBuffer

SILENCE = b"\xff" * 4
WINDOW = 0.060


def payload(seq: int) -> bytes:
    return seq.to_bytes(4, "big")


def push(jb: JitterBuffer, seq: int, now: float, data: bytes | None = b"") -> None:
    jb.push(seq & 0xFFFF, (seq * 160) & 0xFFFFFFFF, payload(seq) if data == b"" else data, now)


def drain(jb: JitterBuffer, now: float) -> list[Frame]:
    out = []
    while (frame := jb.pop(now)) is not None:
        out.append(frame)
    return out


def seqs(frames: list[Frame]) -> list[int]:
    return [f.seq for f in frames]


def test_in_order_frames_are_released_at_once() -> None:
    jb = JitterBuffer(SILENCE, WINDOW)
    for seq in range(10, 15):
        push(jb, seq, 0.0)
        (frame,) = drain(jb, 0.0)
        assert (frame.seq, frame.payload, frame.concealed) == (seq, payload(seq), False)
    assert (jb.released, jb.concealed, jb.late) == (5, 0, 0)
    assert not jb.pending


def test_a_reordered_frame_is_waited_for_and_released_in_order() -> None:
    jb = JitterBuffer(SILENCE, WINDOW)
    push(jb, 1, 0.000)
    assert seqs(drain(jb, 0.000)) == [1]
    push(jb, 3, 0.020)
    assert drain(jb, 0.020) == [] and jb.pending  # 2 may still come
    push(jb, 2, 0.030)
    frames = drain(jb, 0.030)
    assert seqs(frames) == [2, 3] and not any(f.concealed for f in frames)
    assert jb.concealed == 0


def test_a_lost_frame_is_concealed_by_one_repeat_then_silence() -> None:
    jb = JitterBuffer(SILENCE, WINDOW)
    push(jb, 1, 0.000)
    drain(jb, 0.000)
    push(jb, 4, 0.060)  # 2 and 3 lost
    assert drain(jb, 0.060 + WINDOW - 0.001) == []  # still within the window
    frames = drain(jb, 0.060 + WINDOW)
    assert seqs(frames) == [2, 3, 4]
    assert [f.concealed for f in frames] == [True, True, False]
    assert frames[0].payload == payload(1)  # the previous frame, once
    assert frames[1].payload == SILENCE  # then silence
    assert [f.ts for f in frames[:2]] == [1 * 160 + 4, 1 * 160 + 8]  # the clock runs on
    assert jb.concealed == 2
    push(jb, 2, 0.2)  # the lost one turns up after all: too late
    assert drain(jb, 0.2) == [] and jb.late == 1


def test_held_frames_beyond_the_window_depth_end_the_wait_early() -> None:
    jb = JitterBuffer(SILENCE, WINDOW)  # 60 ms = 3 frames of 20 ms
    push(jb, 1, 0.0)
    drain(jb, 0.0)
    push(jb, 3, 0.0)
    push(jb, 4, 0.0)
    assert drain(jb, 0.0) == []
    push(jb, 5, 0.0)  # a burst: three frames behind the gap, no point waiting more
    frames = drain(jb, 0.0)
    assert seqs(frames) == [2, 3, 4, 5] and frames[0].concealed


def test_sequence_numbers_wrap_around() -> None:
    jb = JitterBuffer(SILENCE, WINDOW)
    out: list[Frame] = []
    for seq, at in [(65534, 0.0), (65535, 0.02), (1, 0.04), (0, 0.05), (2, 0.06)]:
        push(jb, seq, at)
        out += drain(jb, at)
    assert seqs(out) == [65534, 65535, 0, 1, 2]
    assert jb.concealed == 0 and jb.late == 0


def test_duplicates_are_dropped_whether_held_or_released() -> None:
    jb = JitterBuffer(SILENCE, WINDOW)
    push(jb, 7, 0.0)
    push(jb, 7, 0.0)  # duplicate of a held frame
    assert seqs(drain(jb, 0.0)) == [7]
    push(jb, 7, 0.01)  # duplicate of a released frame
    push(jb, 9, 0.02)
    push(jb, 9, 0.02)
    assert drain(jb, 0.02) == []
    push(jb, 8, 0.03)
    assert seqs(drain(jb, 0.03)) == [8, 9]
    assert jb.late == 3 and jb.released == 3


def test_an_event_slot_is_not_a_lost_frame() -> None:
    jb = JitterBuffer(SILENCE, WINDOW)
    push(jb, 1, 0.0)
    push(jb, 2, 0.0, data=None)  # an RFC 4733 packet used this sequence number
    push(jb, 3, 0.0)
    assert seqs(drain(jb, 0.0)) == [1, 3]
    assert jb.concealed == 0


def test_a_wide_gap_resyncs_instead_of_inventing_audio() -> None:
    jb = JitterBuffer(SILENCE, WINDOW, max_gap=10)
    push(jb, 1, 0.0)
    drain(jb, 0.0)
    push(jb, 500, 1.0)  # nobody listened for a while, or the sender stalled
    assert drain(jb, 1.0) == []
    assert seqs(drain(jb, 1.0 + WINDOW)) == [500]
    assert jb.concealed == 0 and jb.resyncs == 1


def test_a_restarted_stream_far_behind_starts_again() -> None:
    jb = JitterBuffer(SILENCE, WINDOW)
    push(jb, 30000, 0.0)
    drain(jb, 0.0)
    push(jb, 100, 0.02)  # far behind: a new stream, not a late packet
    assert seqs(drain(jb, 0.02)) == [100]
    assert jb.resyncs == 1 and jb.late == 0


@given(
    base=st.integers(0, 0xFFFF),
    count=st.integers(2, 60),
    swaps=st.lists(st.integers(1, 58), max_size=20),
)
def test_adjacent_swaps_always_come_out_in_order(base: int, count: int, swaps: list[int]) -> None:
    order = list(range(count))
    moved: set[int] = set()
    for i in swaps:  # swap disjoint neighbours (never the first frame, which starts the stream)
        if i + 1 < count and not {i, i + 1} & moved:
            order[i], order[i + 1] = order[i + 1], order[i]
            moved |= {i, i + 1}
    jb = JitterBuffer(SILENCE, WINDOW)
    out: list[Frame] = []
    for n, offset in enumerate(order):
        push(jb, base + offset, n * 0.02)
        out += drain(jb, n * 0.02)
    out += drain(jb, 10.0)
    assert seqs(out) == [(base + i) & 0xFFFF for i in range(count)]
    assert jb.concealed == 0

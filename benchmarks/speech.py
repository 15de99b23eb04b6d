"""What the offline speech models cost on this machine: piper speaking, pocketsphinx spotting.

Prints:
  piper:   time to speak a briefing-length sentence at 8 kHz (first call, then fresh texts),
           and the real-time factor (synthesis time / audio duration; below 1 is faster than
           it plays)
  spotter: time to decide on a short spoken answer ("yes", "no", ...), median and worst,
           and what it heard

The briefing's first packet waits for piper, and the human's "yes" waits for the spotter, so
these are the two model costs inside the latency figures of benchmarks/latency.py.
Usage: python benchmarks/speech.py [-n 5]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time

import numpy as np

from warmtransfer.media.audio import PHONE_RATE, AudioClip
from warmtransfer.speech.stt import KeywordSpotter
from warmtransfer.speech.tts import PiperTTS

SENTENCES = (
    "Maria Lopez is calling about a double charge and a refund. Account 4471.",
    "The caller was charged twice for an order and wants a refund.",
    "Bob wants to change the delivery address of order 1234 to his office.",
)
ANSWERS = ("yes", "no", "repeat that", "yes I'll take it", "no thanks")


def padded(clip: AudioClip) -> AudioClip:
    """The answer as a line hears it: half a second of quiet on each side."""
    quiet = np.zeros(PHONE_RATE // 2, dtype=np.int16)
    return AudioClip(np.concatenate([quiet, clip.samples, quiet]), clip.rate)


async def main(rounds: int) -> None:
    tts = PiperTTS(cache_size=0)
    started = time.perf_counter()
    first = await tts.synthesize(SENTENCES[0])
    cold = time.perf_counter() - started
    print(f"piper first sentence (loads the voice): {cold * 1000:.0f} ms")

    costs: list[float] = []
    factors: list[float] = []
    for round_ in range(rounds):
        for sentence in SENTENCES:
            text = f"{sentence} ({round_})" if round_ else sentence  # never a cache hit
            started = time.perf_counter()
            clip = await tts.synthesize(text)
            cost = time.perf_counter() - started
            costs.append(cost)
            factors.append(cost / clip.duration)
    print(
        f"piper sentence of ~{first.duration:.1f} s: median {statistics.median(costs) * 1000:.0f}"
        f" ms, worst {max(costs) * 1000:.0f} ms; real-time factor median"
        f" {statistics.median(factors):.3f}"
    )

    spotter = KeywordSpotter()
    started = time.perf_counter()
    await spotter.warm_up()
    print(f"spotter warm-up (loads the model): {(time.perf_counter() - started) * 1000:.0f} ms")
    clips = {answer: padded(await tts.synthesize(answer)) for answer in ANSWERS}
    spot_costs: list[float] = []
    for round_ in range(rounds):
        for answer, clip in clips.items():
            started = time.perf_counter()
            hits = await spotter.spot(clip)
            spot_costs.append(time.perf_counter() - started)
            if round_ == 0:  # what it heard, once per answer
                heard = ", ".join(f"{hit.phrase!r}->{hit.meaning}" for hit in hits) or "nothing"
                print(f"  {answer!r:20} ({clip.duration:.1f} s): {heard}")
    print(
        f"spotter per answer: median {statistics.median(spot_costs) * 1000:.0f} ms,"
        f" worst {max(spot_costs) * 1000:.0f} ms over {len(spot_costs)} answers"
    )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-n", "--rounds", type=int, default=5, help="rounds over the samples")
    asyncio.run(main(parser.parse_args().rounds))

"""Capacity: what N concurrent calls cost the engine, with sipp callers and sipp humans.

Two measurements per N, each over a steady window once every call is up:
  bridged: N callers (sipp) each bridged by the engine to a human (sipp), both sides sending
           G.711 RTP at 50 packets/s: CPU % of one core per call, RSS per call, packet loss;
  held:    N callers on hold, the engine sending each hold music from the one pacing clock:
           CPU % per call and how late the clock's 20 ms ticks fire (p50/p99/worst).
Budget (DESIGN.md): a bridged call < 0.5 % of one core and < 0.3 MB; lateness < 5 ms at N=100.

Everything runs on 127.0.0.1 and ends by itself. Usage:
    python benchmarks/capacity.py [-n 50 100 200] [--window 10]
The engine runs in this process (uvloop when installed); sipp runs as separate processes, so the
CPU measured (this process's rusage over the window) is the engine's alone.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import resource
import shutil
import socket
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from warmtransfer.media.bridge import MediaBridge
from warmtransfer.media.clock import PacingClock
from warmtransfer.media.hold_music import hold_music
from warmtransfer.sip.call import Call, CallFailed, IncomingCall
from warmtransfer.sip.useragent import UserAgent

SCENARIOS = Path(__file__).parent / "scenarios"
PCAP = Path("/usr/share/sip-tester/g711a.pcap")
PCAP_SECONDS = 7.0


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


@dataclass
class Figures:
    n: int
    up: int
    cpu_per_call: float  # % of one core
    rss_per_call: float  # MB
    loss: float  # fraction of expected packets
    late_p50: float  # ms
    late_p99: float
    late_worst: float


async def sipp(workdir: Path, *args: str) -> asyncio.subprocess.Process:
    return await asyncio.create_subprocess_exec(
        "sipp",
        *args,
        "-i",
        "127.0.0.1",
        "-nostdin",
        "-trace_err",
        cwd=workdir,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.DEVNULL,
    )


async def stop(process: asyncio.subprocess.Process) -> None:
    if process.returncode is None:
        process.kill()
    await process.wait()


async def measure(n: int, mode: str, window: float, workdir: Path) -> Figures:
    clock = PacingClock()
    ua = UserAgent("127.0.0.1", free_port(), clock=clock, name="engine")
    await ua.start()
    human_port = free_port()
    loops = max(2, int((window + 10 + n / 20) / PCAP_SECONDS) + 1)
    up: list[tuple[Call, ...]] = []
    all_up = asyncio.Event()
    music = hold_music()
    tasks: set[asyncio.Task[None]] = set()

    async def serve(call: IncomingCall) -> None:
        await call.answer()
        if mode == "held":
            call.media.play(music, loop=True)
            up.append((call,))
        else:
            try:
                human = await ua.call(f"sip:human@127.0.0.1:{human_port}")
            except CallFailed:
                await call.hangup()
                return
            MediaBridge(call.media, human.media).start()
            up.append((call, human))
            done = [asyncio.ensure_future(c.ended.wait()) for c in (call, human)]
            await asyncio.wait(done, return_when=asyncio.FIRST_COMPLETED)
            for d in done:
                d.cancel()
            await asyncio.gather(call.hangup(), human.hangup(), return_exceptions=True)
        if len(up) >= n:
            all_up.set()

    async def accept() -> None:
        while True:
            call = await ua.next_call()
            task = asyncio.ensure_future(serve(call))
            tasks.add(task)
            task.add_done_callback(tasks.discard)

    rss_before = rss_mb()
    acceptor = asyncio.ensure_future(accept())
    processes = []
    try:
        if mode == "bridged":
            processes.append(
                await sipp(
                    workdir,
                    "-sf",
                    str(SCENARIOS / "uas_long.xml"),
                    "-p",
                    str(human_port),
                    "-mp",
                    str(free_port()),
                    "-set",
                    "loops",
                    str(loops - 1),
                    "-m",
                    str(n),
                )
            )
        processes.append(
            await sipp(
                workdir,
                "-sf",
                str(SCENARIOS / "uac_long.xml"),
                f"127.0.0.1:{ua.port}",
                "-s",
                "engine",
                "-p",
                str(free_port()),
                "-mp",
                str(free_port()),
                "-set",
                "loops",
                str(loops),
                "-m",
                str(n),
                "-l",
                str(n),
                "-r",
                "20",
            )
        )
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(30 + n / 10):
                await all_up.wait()
        await asyncio.sleep(2.0)  # let every stream settle before the window opens
        clock.lateness.samples.clear()
        stats_before = [(c.media.stats.received, c.media.stats.lost) for calls in up for c in calls]
        cpu0, wall0 = cpu_seconds(), time.perf_counter()
        await asyncio.sleep(window)  # the measuring window itself
        cpu1, wall1 = cpu_seconds(), time.perf_counter()
        rss_after = rss_mb()
        received = lost = 0
        for (r0, l0), c in zip(stats_before, [c for calls in up for c in calls], strict=False):
            received += c.media.stats.received - r0
            lost += c.media.stats.lost - l0
        count = max(1, len(up))
        lateness = clock.lateness
        return Figures(
            n=n,
            up=len(up),
            cpu_per_call=100 * (cpu1 - cpu0) / (wall1 - wall0) / count,
            rss_per_call=(rss_after - rss_before) / count,
            loss=lost / max(1, received + lost),
            late_p50=1000 * lateness.percentile(50),
            late_p99=1000 * lateness.percentile(99),
            late_worst=1000 * max(lateness.samples, default=0.0),
        )
    finally:
        acceptor.cancel()
        for process in processes:
            await stop(process)
        for task in list(tasks):
            task.cancel()
        await asyncio.gather(*tasks, acceptor, return_exceptions=True)
        await ua.close()


async def main(sizes: list[int], window: float) -> int:
    if shutil.which("sipp") is None or not PCAP.exists():
        print("needs sipp (Debian package sip-tester) and its sample pcaps", file=sys.stderr)
        return 2
    print(f"engine event loop: {type(asyncio.get_running_loop()).__module__}")
    print(
        f"{'mode':<8} {'N':>4} {'up':>4} {'CPU %/call':>11} {'MB/call':>8} {'loss':>7} "
        f"{'late p50':>9} {'p99':>7} {'worst':>7}"
    )
    ok = True
    for mode in ("bridged", "held"):
        for n in sizes:
            with tempfile.TemporaryDirectory() as tmp:
                workdir = Path(tmp)
                (workdir / "pcap").mkdir()
                shutil.copy(PCAP, workdir / "pcap" / PCAP.name)
                f = await measure(n, mode, window, workdir)
            print(
                f"{mode:<8} {f.n:>4} {f.up:>4} {f.cpu_per_call:>11.3f} {f.rss_per_call:>8.3f} "
                f"{100 * f.loss:>6.2f}% {f.late_p50:>8.2f}ms {f.late_p99:>6.2f}ms "
                f"{f.late_worst:>6.2f}ms"
            )
            ok = ok and f.up == n
    return 0 if ok else 1


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-n", type=int, nargs="+", default=[50, 100, 200])
    parser.add_argument("--window", type=float, default=10.0, help="seconds measured per run")
    args = parser.parse_args()
    try:
        import uvloop

        run = uvloop.run
    except ImportError:
        run = asyncio.run
    sys.exit(run(main(args.n, args.window)))

# ruff: noqa: ASYNC230  (small local files opened from async code)
"""A peer subprocess with a captured log, deadline-based waits and guaranteed cleanup.

Shared by `BaresipPeer` and `SippPeer`. Nothing here sleeps to synchronise: waits are on output
arriving, on the process exiting, or on a condition being re-checked when one of those happens.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import os
import re
import signal
import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any, TextIO

_ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")


class PeerError(AssertionError):
    """A peer did not do what the test expected in time (or died). The message carries its log."""


def _set_pdeathsig() -> None:  # runs in the child between fork and exec
    # If the test process dies hard (SIGKILL, os._exit from a timeout), the peer dies too.
    with contextlib.suppress(Exception):
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


class PeerProcess:
    """One running peer: its output (ANSI colour stripped) is kept in memory and in `log_path`."""

    def __init__(self, name: str, argv: Sequence[str], cwd: Path, log_path: Path) -> None:
        self.name = name
        self.argv = [str(a) for a in argv]
        self.cwd = cwd
        self.log_path = log_path
        self.proc: asyncio.subprocess.Process | None = None
        self._text: list[str] = []
        self._changed = asyncio.Condition()
        self._tasks: list[asyncio.Task[None]] = []
        self._logfile: TextIO | None = None
        self.started_at = 0.0
        # Extra diagnostics appended to every PeerError (e.g. sipp's errors.log, SIP flow).
        self.diagnostics: Callable[[], str] | None = None

    # -- lifecycle -------------------------------------------------------------------------------
    async def start(self) -> None:
        self._logfile = open(self.log_path, "w", encoding="utf-8", errors="replace")  # noqa: SIM115
        self._append("$ " + " ".join(self.argv) + "\n")
        self.started_at = time.monotonic()
        self.proc = await asyncio.create_subprocess_exec(
            *self.argv,
            cwd=self.cwd,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            start_new_session=True,
            preexec_fn=_set_pdeathsig,
        )
        assert self.proc.stdout is not None
        assert self.proc.stderr is not None
        self._tasks = [
            asyncio.create_task(self._pump(self.proc.stdout), name=f"{self.name}-stdout"),
            asyncio.create_task(self._pump(self.proc.stderr), name=f"{self.name}-stderr"),
            asyncio.create_task(self._watch_exit(), name=f"{self.name}-exit"),
        ]

    async def stop(self, grace: float = 3.0, sig: int = signal.SIGTERM) -> int | None:
        """Ask the process to quit (`sig`), SIGKILL it after `grace` s, reap it, drain output."""
        proc = self.proc
        if proc is None:
            return None
        try:
            if proc.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    proc.send_signal(sig)
                try:
                    await asyncio.wait_for(proc.wait(), grace)
                except TimeoutError:
                    self._append(f"\n[harness] {self.name} ignored signal {sig}; SIGKILL\n")
                    with contextlib.suppress(ProcessLookupError):
                        proc.kill()
                    await asyncio.wait_for(proc.wait(), 5.0)
        finally:
            # Output pipes reach EOF once the process is gone; don't wait forever on them anyway.
            if self._tasks:
                _, pending = await asyncio.wait(self._tasks, timeout=2.0)
                await cancel_and_wait(pending)
            if self._logfile is not None:
                self._logfile.close()
                self._logfile = None
        return proc.returncode

    # -- output ----------------------------------------------------------------------------------
    async def _pump(self, stream: asyncio.StreamReader) -> None:
        while True:
            chunk = await stream.read(65536)
            if not chunk:
                return
            self._append(_ANSI.sub("", chunk.decode("utf-8", errors="replace")))
            async with self._changed:
                self._changed.notify_all()

    async def _watch_exit(self) -> None:
        assert self.proc is not None
        rc = await self.proc.wait()
        self._append(f"\n[harness] {self.name} exited with code {rc}\n")
        async with self._changed:
            self._changed.notify_all()

    def _append(self, text: str) -> None:
        self._text.append(text)
        if self._logfile is not None:
            self._logfile.write(text)
            self._logfile.flush()

    @property
    def log(self) -> str:
        return "".join(self._text)

    def tail(self, chars: int = 6000) -> str:
        text = self.log
        return text if len(text) <= chars else "...\n" + text[-chars:]

    @property
    def returncode(self) -> int | None:
        return None if self.proc is None else self.proc.returncode

    @property
    def pid(self) -> int | None:
        return None if self.proc is None else self.proc.pid

    def error(self, what: str, extra: str = "") -> PeerError:
        if not extra and self.diagnostics is not None:
            try:
                extra = self.diagnostics()
            except Exception as e:  # diagnostics must never hide the real error
                extra = f"(diagnostics failed: {e!r})\n"
        return PeerError(
            f"{self.name}: {what}\n{extra}"
            f"----- last output of {self.name} (full log: {self.log_path}) -----\n{self.tail()}"
        )

    # -- waiting ---------------------------------------------------------------------------------
    async def wait_until(
        self,
        check: Callable[[], object],
        timeout: float,
        what: str,
        *,
        poll: float | None = None,
        allow_exit: bool = False,
    ) -> object:
        """Re-evaluate `check()` whenever output arrives or the process exits (and every `poll`
        seconds if given, for conditions outside the process output such as a bound socket or a
        file). Returns the first truthy value; raises PeerError with the log on deadline or if the
        process exits first (unless `allow_exit`)."""
        deadline = time.monotonic() + timeout
        async with self._changed:
            while True:
                value = check()
                if value:
                    return value
                if not allow_exit and self.returncode is not None:
                    raise self.error(f"exited (code {self.returncode}) while waiting for {what}")
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise self.error(f"timed out after {timeout:.1f}s waiting for {what}")
                step = remaining if poll is None else min(remaining, poll)
                # asyncio.timeout, not wait_for: on 3.11 wait_for can swallow a cancellation
                # that races with the wake-up, which would keep a cancelled waiter alive.
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(step):
                        await self._changed.wait()

    async def wait_for_output(
        self, pattern: str, timeout: float, *, start: int = 0
    ) -> re.Match[str]:
        """Wait for `pattern` (regex) to appear in the output at/after character offset `start`."""
        rx = re.compile(pattern)
        m = await self.wait_until(
            lambda: rx.search(self.log, start), timeout, f"output /{pattern}/"
        )
        assert isinstance(m, re.Match)
        return m

    async def notify(self) -> None:
        """Wake up waiters (used by owners that feed in events from elsewhere)."""
        async with self._changed:
            self._changed.notify_all()

    async def wait_exit(self, timeout: float) -> int:
        assert self.proc is not None
        try:
            return await asyncio.wait_for(asyncio.shield(self.proc.wait()), timeout)
        except TimeoutError:
            raise self.error(f"did not exit within {timeout:.1f}s") from None


async def cancel_and_wait(tasks: Iterable[asyncio.Task[Any]], timeout: float = 2.0) -> None:
    """Cancel helper tasks and wait until they are really finished (without swallowing a
    cancellation of the caller, and without hanging on a task that ignores the first cancel)."""
    tasks = list(tasks)
    pending = {t for t in tasks if not t.done()}
    for _ in range(3):
        if not pending:
            break
        for t in pending:
            t.cancel()
        _, pending = await asyncio.wait(pending, timeout=timeout)
    for t in tasks:
        if t.done() and not t.cancelled():
            t.exception()  # retrieved: no "exception was never retrieved" noise
    if pending:
        raise PeerError(f"helper tasks would not stop: {pending}")


class RunsAProcess:
    """What every peer exposes about the process behind it."""

    proc: PeerProcess

    @property
    def log(self) -> str:
        """The peer's stdout/stderr so far."""
        return self.proc.log

    @property
    def pid(self) -> int | None:
        return self.proc.pid

    @property
    def returncode(self) -> int | None:
        return self.proc.returncode


def process_alive(pid: int | None) -> bool:
    """True if `pid` exists and is not a zombie."""
    if pid is None:
        return False
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def socket_inodes(pid: int) -> set[int]:
    """Inodes of the sockets process `pid` has open."""
    out: set[int] = set()
    fd_dir = f"/proc/{pid}/fd"
    with contextlib.suppress(FileNotFoundError, PermissionError):
        for fd in os.listdir(fd_dir):
            with contextlib.suppress(OSError):
                target = os.readlink(f"{fd_dir}/{fd}")
                if target.startswith("socket:["):
                    out.add(int(target[8:-1]))
    return out


def bound_inodes(port: int, proto: str = "udp") -> set[int]:
    """Inodes of 127.0.0.1 / 0.0.0.0 sockets bound to `port` (from /proc/net/{udp,tcp})."""
    inodes: set[int] = set()
    with contextlib.suppress(FileNotFoundError):
        for line in Path(f"/proc/net/{proto}").read_text().splitlines()[1:]:
            fields = line.split()
            local = fields[1]
            if int(local.split(":")[1], 16) == port:
                inodes.add(int(fields[9]))
    return inodes


def owns_port(pid: int | None, port: int, proto: str = "udp") -> bool:
    return pid is not None and bool(bound_inodes(port, proto) & socket_inodes(pid))

"""Free loopback port allocation for the peer harness (127.0.0.1 only).

The kernel picks a free port (bind to port 0), we close the socket and hand the number out. There is
an unavoidable window between closing and the peer binding it; to keep it harmless within one test
process we never hand out the same port twice in a row (a small "recently issued" memory), and the
peers' own random RTP ranges stay below the kernel's ephemeral range (see `RTP_RANGE`).
"""

from __future__ import annotations

import socket
import threading
from collections import deque
from collections.abc import Callable

LOOPBACK = "127.0.0.1"

# Ports baresip picks its RTP/RTCP sockets from (random even port + 1, retried on collision by
# baresip itself). Kept below the ephemeral range (32768-60999 on Linux) so that it never races
# with ports handed out by this module or by the engine's own bind-to-0 allocations.
RTP_RANGE = (20000, 31998)

_lock = threading.Lock()
_recent: deque[int] = deque(maxlen=512)


def _bind_ok(kind: int, port: int) -> bool:
    s = socket.socket(socket.AF_INET, kind)
    try:
        if kind == socket.SOCK_STREAM:
            # Same flag the peers use for their listeners, so TIME_WAIT leftovers don't count.
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind((LOOPBACK, port))
        return True
    except OSError:
        return False
    finally:
        s.close()


def _kernel_port(kind: int) -> int:
    s = socket.socket(socket.AF_INET, kind)
    try:
        s.bind((LOOPBACK, 0))
        return int(s.getsockname()[1])
    finally:
        s.close()


def _issue(candidates_ok: Callable[[int], bool], kind: int, attempts: int = 200) -> int:
    with _lock:
        for _ in range(attempts):
            p = _kernel_port(kind)
            if p in _recent or not candidates_ok(p):
                continue
            _recent.append(p)
            return p
    raise RuntimeError("could not find a free loopback port")


def free_udp_port() -> int:
    """A UDP port on 127.0.0.1 that is free right now."""
    return _issue(lambda p: True, socket.SOCK_DGRAM)


def free_tcp_port() -> int:
    """A TCP port on 127.0.0.1 that is free right now."""
    return _issue(lambda p: True, socket.SOCK_STREAM)


def free_port_pair() -> int:
    """A port p such that p and p+1 are free on both UDP and TCP (127.0.0.1).

    baresip listens for SIP on UDP+TCP p and for SIP/TLS on TCP p+1; sipp uses p for SIP.
    The returned p is even, so p+1 never collides with another pair returned by this function.
    """

    def ok(p: int) -> bool:
        if p % 2 or p + 1 > 65535 or (p + 1) in _recent:
            return False
        return all(
            _bind_ok(kind, q)
            for q in (p, p + 1)
            for kind in (socket.SOCK_DGRAM, socket.SOCK_STREAM)
        )

    with_neighbour = _issue(ok, socket.SOCK_DGRAM, attempts=1000)
    with _lock:
        _recent.append(with_neighbour + 1)
    return with_neighbour


def free_media_port() -> int:
    """An even UDP port p with p..p+3 free (RTP/RTCP, plus sipp's "video" port p+2 and p+3)."""

    def ok(p: int) -> bool:
        if p % 2 or p + 3 > 65535 or any(q in _recent for q in range(p + 1, p + 4)):
            return False
        return all(_bind_ok(socket.SOCK_DGRAM, q) for q in range(p, p + 4))

    p = _issue(ok, socket.SOCK_DGRAM, attempts=2000)
    with _lock:
        _recent.extend(range(p + 1, p + 4))
    return p

"""SIP transactions (RFC 3261 §17) as sans-IO state machines.

Each transaction is driven by two inputs only, a message and the current time, and answers with
actions (messages to send, a response to hand up, a timeout). No sockets, no asyncio: the same
rules run under unit tests with a fake clock and under the asyncio transport with a real one.
Why by hand: no maintained Python package offers RFC 3261 transactions without also owning the
sockets and the event loop (see DESIGN.md, "Telephony: why our own SIP and RTP").

Timer values are RFC 3261's defaults; `reliable` transports (TCP, TLS) skip retransmission.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum, auto

from warmtransfer.sip.flow import Flow
from warmtransfer.sip.message import Headers, SipRequest, SipResponse

T1 = 0.5
T2 = 4.0
T4 = 5.0
# Where a transaction sends: an address and the transport (UDP, TCP, TLS).
Address = Flow


@dataclass(frozen=True)
class Send:
    """Put this message on the wire to `addr`."""

    message: SipRequest | SipResponse
    addr: Address


@dataclass(frozen=True)
class Deliver:
    """Hand this response up to the transaction user (client transactions only)."""

    response: SipResponse


@dataclass(frozen=True)
class TimedOut:
    """No final response (client) or no ACK (server) in time: RFC 3261 timers B, F or H."""


@dataclass(frozen=True)
class Terminated:
    """The transaction is over; forget it."""


Action = Send | Deliver | TimedOut | Terminated


class TxState(Enum):
    CALLING = auto()
    TRYING = auto()
    PROCEEDING = auto()
    COMPLETED = auto()
    CONFIRMED = auto()
    TERMINATED = auto()


class _Timers:
    """Named deadlines; the transaction's next wake-up is the earliest one."""

    def __init__(self) -> None:
        self._at: dict[str, float] = {}

    def set(self, name: str, at: float) -> None:
        self._at[name] = at

    def clear(self, *names: str) -> None:
        for name in names:
            self._at.pop(name, None)

    def clear_all(self) -> None:
        self._at.clear()

    def due(self, now: float) -> list[str]:
        fired = sorted((at, name) for name, at in self._at.items() if at <= now)
        for _, name in fired:
            del self._at[name]
        return [name for _, name in fired]

    @property
    def next(self) -> float | None:
        return min(self._at.values(), default=None)


class Transaction:
    """What every transaction shares: a key, a state, timers."""

    def __init__(self, request: SipRequest, addr: Address, reliable: bool) -> None:
        self.request = request
        self.addr = addr
        self.reliable = reliable
        self.state = TxState.TRYING
        self.timers = _Timers()
        vias = request.vias
        self.branch = vias[0].branch or "" if vias else ""

    @property
    def next_deadline(self) -> float | None:
        return None if self.state is TxState.TERMINATED else self.timers.next

    @property
    def terminated(self) -> bool:
        return self.state is TxState.TERMINATED

    def _terminate(self) -> list[Action]:
        self.state = TxState.TERMINATED
        self.timers.clear_all()
        return [Terminated()]

    def on_timer(self, now: float) -> list[Action]:
        actions: list[Action] = []
        for name in self.timers.due(now):
            if self.state is TxState.TERMINATED:
                break
            actions.extend(self._fire(name, now))
        return actions

    def _fire(self, name: str, now: float) -> list[Action]:
        raise NotImplementedError


class ClientInviteTransaction(Transaction):
    """RFC 3261 §17.1.1: INVITE sent by us."""

    def __init__(self, request: SipRequest, addr: Address, reliable: bool = False) -> None:
        super().__init__(request, addr, reliable)
        self.state = TxState.CALLING
        self._interval = T1
        self.last_response: SipResponse | None = None

    def start(self, now: float) -> list[Action]:
        if not self.reliable:
            self.timers.set("A", now + T1)
        self.timers.set("B", now + 64 * T1)
        return [Send(self.request, self.addr)]

    def on_response(self, response: SipResponse, now: float) -> list[Action]:
        status = response.status
        if self.state in (TxState.CALLING, TxState.PROCEEDING):
            self.last_response = response
            if status < 200:
                self.state = TxState.PROCEEDING
                self.timers.clear("A", "B")
                return [Deliver(response)]
            if status < 300:
                # 2xx ends the transaction; the dialog layer ACKs it and absorbs retransmissions.
                return [Deliver(response), *self._terminate()]
            self.state = TxState.COMPLETED
            self.timers.clear_all()
            self.timers.set("D", now + (0 if self.reliable else 32.0))
            return [Send(self.ack_for(response), self.addr), Deliver(response)]
        if self.state is TxState.COMPLETED and status >= 300:
            return [Send(self.ack_for(response), self.addr)]
        return []

    def ack_for(self, response: SipResponse) -> SipRequest:
        """The ACK of a non-2xx final response is part of the INVITE transaction (§17.1.1.3)."""
        req = self.request
        headers = Headers()
        headers.add("Via", req.headers.get_all("Via")[0])
        for name in ("From",):
            value = req.headers.get(name)
            if value is not None:
                headers.add(name, value)
        to = response.headers.get("To")
        if to is not None:
            headers.add("To", to)
        headers.add("Call-ID", req.call_id)
        headers.add("CSeq", f"{req.cseq[0]} ACK")
        for route in req.headers.get_all("Route"):
            headers.add("Route", route)
        headers.add("Max-Forwards", "70")
        return SipRequest("ACK", req.uri, headers)

    def _fire(self, name: str, now: float) -> list[Action]:
        if name == "A" and self.state is TxState.CALLING:
            self._interval *= 2
            self.timers.set("A", now + self._interval)
            return [Send(self.request, self.addr)]
        if name == "B" and self.state is TxState.CALLING:
            return [TimedOut(), *self._terminate()]
        if name == "D":
            return self._terminate()
        return []


class ClientNonInviteTransaction(Transaction):
    """RFC 3261 §17.1.2: BYE, CANCEL, OPTIONS, INFO… sent by us."""

    def __init__(self, request: SipRequest, addr: Address, reliable: bool = False) -> None:
        super().__init__(request, addr, reliable)
        self._interval = T1

    def start(self, now: float) -> list[Action]:
        if not self.reliable:
            self.timers.set("E", now + T1)
        self.timers.set("F", now + 64 * T1)
        return [Send(self.request, self.addr)]

    def on_response(self, response: SipResponse, now: float) -> list[Action]:
        if self.state not in (TxState.TRYING, TxState.PROCEEDING):
            return []
        if response.status < 200:
            self.state = TxState.PROCEEDING
            return [Deliver(response)]
        self.state = TxState.COMPLETED
        self.timers.clear_all()
        if self.reliable:
            return [Deliver(response), *self._terminate()]
        self.timers.set("K", now + T4)
        return [Deliver(response)]

    def _fire(self, name: str, now: float) -> list[Action]:
        if name == "E" and self.state in (TxState.TRYING, TxState.PROCEEDING):
            self._interval = T2 if self.state is TxState.PROCEEDING else min(2 * self._interval, T2)
            self.timers.set("E", now + self._interval)
            return [Send(self.request, self.addr)]
        if name == "F":
            return [TimedOut(), *self._terminate()]
        if name == "K":
            return self._terminate()
        return []


class ServerInviteTransaction(Transaction):
    """RFC 3261 §17.2.1: an INVITE received. A retransmitted INVITE only repeats our last answer."""

    def __init__(self, request: SipRequest, addr: Address, reliable: bool = False) -> None:
        super().__init__(request, addr, reliable)
        self.state = TxState.PROCEEDING
        self.last_response: SipResponse | None = None
        self._interval = T1

    def respond(self, response: SipResponse, now: float) -> list[Action]:
        if self.state is not TxState.PROCEEDING:
            return []
        self.last_response = response
        send: list[Action] = [Send(response, self.addr)]
        if response.status < 200:
            return send
        if response.status < 300:
            # 2xx retransmission belongs to the transaction user (§13.3.1.4).
            return [*send, *self._terminate()]
        self.state = TxState.COMPLETED
        if not self.reliable:
            self.timers.set("G", now + T1)
        self.timers.set("H", now + 64 * T1)
        return send

    def on_retransmission(self, now: float) -> list[Action]:
        if self.last_response is not None and self.state in (
            TxState.PROCEEDING,
            TxState.COMPLETED,
        ):
            return [Send(self.last_response, self.addr)]
        return []

    def on_ack(self, now: float) -> list[Action]:
        if self.state is TxState.COMPLETED:
            self.state = TxState.CONFIRMED
            self.timers.clear_all()
            self.timers.set("I", now + (0 if self.reliable else T4))
        return []

    def _fire(self, name: str, now: float) -> list[Action]:
        if name == "G" and self.state is TxState.COMPLETED and self.last_response is not None:
            self._interval = min(2 * self._interval, T2)
            self.timers.set("G", now + self._interval)
            return [Send(self.last_response, self.addr)]
        if name == "H" and self.state is TxState.COMPLETED:
            return [TimedOut(), *self._terminate()]
        if name == "I":
            return self._terminate()
        return []


class ServerNonInviteTransaction(Transaction):
    """RFC 3261 §17.2.2: a non-INVITE request received."""

    def __init__(self, request: SipRequest, addr: Address, reliable: bool = False) -> None:
        super().__init__(request, addr, reliable)
        self.last_response: SipResponse | None = None

    def respond(self, response: SipResponse, now: float) -> list[Action]:
        if self.state in (TxState.COMPLETED, TxState.TERMINATED):
            return []
        self.last_response = response
        if response.status < 200:
            self.state = TxState.PROCEEDING
            return [Send(response, self.addr)]
        self.state = TxState.COMPLETED
        self.timers.set("J", now + (0 if self.reliable else 64 * T1))
        return [Send(response, self.addr)]

    def on_retransmission(self, now: float) -> list[Action]:
        if self.last_response is not None:
            return [Send(self.last_response, self.addr)]
        return []

    def _fire(self, name: str, now: float) -> list[Action]:
        if name == "J":
            return self._terminate()
        return []


class OkRetransmitter:
    """Repeats our 2xx to an INVITE until the ACK arrives (§13.3.1.4); gives up after 64*T1.

    Without it a lost 200 OK over UDP leaves the caller ringing while we think the call is up.
    """

    def __init__(self, response: SipResponse, addr: Address, now: float, reliable: bool) -> None:
        self.response = response
        self.addr = addr
        self.reliable = reliable
        self._interval = T1
        self._next: float | None = None if reliable else now + T1
        self._give_up = now + 64 * T1
        self.acked = False
        self.done = False

    @property
    def next_deadline(self) -> float | None:
        if self.done:
            return None
        return self._give_up if self._next is None else min(self._next, self._give_up)

    def on_ack(self) -> None:
        self.acked = True
        self.done = True

    def on_timer(self, now: float) -> list[Action]:
        if self.done:
            return []
        if now >= self._give_up:
            self.done = True
            return [TimedOut()]
        if self._next is not None and now >= self._next:
            self._interval = min(2 * self._interval, T2)
            self._next = now + self._interval
            return [Send(self.response, self.addr)]
        return []

"""Calls as the application sees them: an inbound call to ring/answer/reject, an outbound call
that is ringing or answered, and for both a media session, a hang-up, and an `ended` event.

The protocol work (transactions, dialog) is delegated to the user agent; a call only keeps the
state that the application asks about, and every end of a call (BYE either way, CANCEL, a
rejection, a timeout) goes through `_finish`, so `ended` is set exactly once on every path and
the media session is always closed.

What a call does once it is up, besides media:
- `hold()` / `unhold()`: our own re-INVITE, `a=sendonly` then `a=sendrecv` (RFC 6337: we keep
  sending, the hold music, and ask the peer not to). One INVITE of ours is outstanding per
  dialog at a time (`_invite_lock`, shared with the session-timer refresh); a peer's re-INVITE
  that crosses ours gets 491 and a 491 to ours is retried after RFC 3261 14.1's random delay.
- `refer()`: hand the call to someone else (RFC 3515): REFER, 202, then NOTIFYs whose
  message/sipfrag bodies say how the new call went. Receiving a REFER asks *us* to dial, so
  it is refused (603) unless the application set `on_refer`, which must dial through the
  allow-list; when it accepts, the peer gets 202 and NOTIFYs "100 Trying", then the outcome.
- `a=rtcp-mux` (RFC 5761): our offers carry it; when both sides agree, the media session
  sends RTCP to the RTP port (`_use`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from enum import StrEnum
from typing import TYPE_CHECKING, Any

from warmtransfer.media.dtmf import INFO_DTMF_TYPES, parse_info_dtmf
from warmtransfer.media.session import MediaFormat, RtpSession
from warmtransfer.sip import session_timer
from warmtransfer.sip.dialog import Dialog
from warmtransfer.sip.message import SipRequest, SipResponse, make_response
from warmtransfer.sip.refer import (
    EVENT_PACKAGE,
    SIPFRAG,
    ReferError,
    ReferRequest,
    ReferTo,
    Replaces,
    SipFrag,
    SubscriptionState,
    parse_event,
    read_refer,
)
from warmtransfer.sip.sdp import (
    NegotiatedMedia,
    SdpError,
    SdpNegotiationError,
    SessionDescription,
    build_answer,
    build_reoffer,
    next_version,
    parse_answer,
    with_rtcp_mux,
)
from warmtransfer.sip.uri import NameAddr, SipUri

if TYPE_CHECKING:
    from warmtransfer.sip.transaction import ServerInviteTransaction
    from warmtransfer.sip.useragent import UserAgent

log = logging.getLogger(__name__)

#: How often a re-INVITE of ours that met a 491 (glare) is sent again before giving up.
GLARE_RETRIES = 2
#: The `expires` of the implicit subscription a REFER we accept creates (RFC 3515 2.4.4: ours
#: to choose); the final NOTIFY ends it sooner.
REFER_EXPIRES = 60

ReferHandler = Callable[[ReferRequest], Awaitable[int] | None]


def glare_delay(owns_call_id: bool) -> float:
    """RFC 3261 14.1: after a 491, wait 2.1 to 4 s if we chose the dialog's Call-ID, else 0 to
    2 s, in 10 ms steps, so that the two sides do not collide again."""
    if owns_call_id:
        return random.randrange(210, 401) / 100
    return random.randrange(0, 201) / 100


class CallState(StrEnum):
    OFFERED = "offered"  # inbound, not answered yet
    DIALING = "dialing"  # outbound, INVITE sent
    RINGING = "ringing"  # outbound, provisional response received
    ANSWERED = "answered"  # 2xx sent or received; media flowing
    ENDED = "ended"


class EndReason(StrEnum):
    LOCAL_BYE = "local_bye"
    REMOTE_BYE = "remote_bye"
    CANCELLED = "cancelled"  # we cancelled our INVITE, or the caller cancelled theirs
    REJECTED = "rejected"  # a final error response, either way
    TIMEOUT = "timeout"  # no response / no ACK
    SESSION_EXPIRED = "session_expired"  # RFC 4028: no session refresh in time; the peer is gone
    CLOSED = "closed"  # the user agent shut down


class CallFailed(Exception):
    """An outbound call ended before it was answered, or a request in a call (hold, REFER)
    failed; `status` is the SIP status when there is one."""

    def __init__(self, status: int | None, reason: str, *, cancelled: bool = False) -> None:
        self.status = status
        self.reason = reason
        self.cancelled = cancelled
        super().__init__(f"{status} {reason}" if status else reason)


@dataclass
class _ReferSubscription:
    """What a REFER of ours has heard back: the sipfrags so far, and the outcome once final."""

    outcome: asyncio.Future[SipFrag]
    progress: list[SipFrag] = field(default_factory=list)

    def notified(self, state: SubscriptionState, frag: SipFrag | None) -> None:
        if self.outcome.done():
            return
        if frag is not None:
            self.progress.append(frag)
            if frag.final:
                self.outcome.set_result(frag)
                return
        if state.is_terminated:
            self.outcome.set_exception(
                CallFailed(
                    None, f"the transfer's subscription ended ({state}) before a final status"
                )
            )


def media_format(negotiated: NegotiatedMedia) -> MediaFormat:
    return MediaFormat(
        codec=negotiated.codec.name.upper(),
        payload_type=negotiated.codec.payload_type,
        dtmf_payload_type=negotiated.dtmf_payload_type,
    )


class Call:
    """What inbound and outbound calls share."""

    direction = ""
    owns_call_id = False  # we chose the Call-ID (we placed the call): RFC 3261 14.1's longer wait

    def __init__(self, ua: UserAgent, call_id: str, media: RtpSession) -> None:
        self.ua = ua
        self.call_id = call_id
        self.media = media
        self.state = CallState.DIALING
        self.dialog: Dialog | None = None
        self.negotiated: NegotiatedMedia | None = None
        self.end_reason: EndReason | None = None
        self.end_status: int | None = None
        self.ended = asyncio.Event()
        self.answered_at: float | None = None
        self.ended_at: float | None = None
        self._bye_sent = False
        self._acks: dict[int, SipRequest] = {}  # by CSeq: our ACKs of 2xx to our INVITEs
        # RFC 4028 session timer: `session` says when, `_session_handle` is the loop's wake-up.
        self.session: session_timer.SessionTimer | None = None
        self._session_handle: asyncio.TimerHandle | None = None
        self.local_sdp = b""  # our last offer or answer: the body of a refresh re-INVITE
        self.peer_allows_update = False
        self.holding = False  # we hold the peer (our last offer or answer said a=sendonly)
        # One INVITE of ours at a time in this dialog (RFC 3261 14.1): hold, unhold, refresh.
        self._invite_lock = asyncio.Lock()
        self._offer_pending = False  # our re-INVITE awaits its answer: the peer's gets 491
        # Decides on a REFER from the peer: None (the default) refuses it with 603, since a
        # REFER asks us to dial, and what we dial must pass the allow-list. A handler returns
        # None to refuse, or an awaitable that dials (through the allow-list) and returns the
        # final SIP status of that call, reported to the peer in the last NOTIFY.
        self.on_refer: ReferHandler | None = None
        self._subscriptions: dict[int, _ReferSubscription] = {}  # our REFERs, by CSeq

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.call_id[:12]} {self.state}>"

    @property
    def is_up(self) -> bool:
        return self.state is CallState.ANSWERED

    async def wait_ended(self) -> None:
        await self.ended.wait()

    async def hangup(self) -> None:
        """End the call however is right for its state. Idempotent; never raises for a gone peer."""
        if self.state is CallState.ENDED:
            return
        if self.state is CallState.ANSWERED and self.dialog is not None:
            await self._send_bye()
            return
        await self._hangup_early()

    async def _hangup_early(self) -> None:
        self._finish(EndReason.LOCAL_BYE)

    async def _send_bye(self, reason: EndReason = EndReason.LOCAL_BYE) -> None:
        assert self.dialog is not None
        if self._bye_sent:
            await self.ended.wait()
            return
        self._bye_sent = True
        request = self.dialog.create_request("BYE", self.ua.via())
        self._finish(reason)
        with contextlib.suppress(TimeoutError, CallFailed):
            await self.ua.request(request, self.dialog.next_address())

    def on_bye(self) -> None:
        self._finish(EndReason.REMOTE_BYE)

    def on_request(self, request: SipRequest) -> SipResponse:
        """An in-dialog request other than BYE/ACK/CANCEL."""
        if self._offer_pending and (
            request.method == "INVITE" or (request.method == "UPDATE" and request.body)
        ):
            # RFC 3261 14.2 and RFC 3311 5.2: their offer crossed ours. Both sides back off;
            # ours is retried after a random delay (`glare_delay`), theirs by them.
            return make_response(request, 491)
        if request.method in ("INVITE", "UPDATE"):
            refresh = self._on_refresh(request)
            if isinstance(refresh, SipResponse):
                return refresh
            if request.method == "INVITE" or request.body:
                return self._answer_reinvite(request, refresh)
            return make_response(request, 200, extra=[("Contact", self.ua.contact()), *refresh])
        if request.method == "INFO":
            return self._answer_info(request)
        if request.method == "OPTIONS":
            return make_response(request, 200)
        if request.method == "REFER":
            return self._answer_refer(request)
        if request.method == "NOTIFY":
            return self._answer_notify(request)
        return make_response(request, 501)

    # -- hold by re-INVITE (RFC 6337) -----------------------------------------------------------

    async def hold(self) -> None:
        """Tell the peer it is on hold: a re-INVITE with our SDP marked `a=sendonly`.

        We keep sending (hold music) and ask the peer not to; its phone or PBX shows the call as
        held and may stop its own timers. Idempotent. A refusal (any non-2xx, or no answer)
        raises CallFailed with the status and leaves the call up and `holding` unchanged.
        """
        await self._change_hold(True)

    async def unhold(self) -> None:
        """Take the peer off hold: a re-INVITE with `a=sendrecv`. Idempotent; fails as `hold`."""
        await self._change_hold(False)

    async def _change_hold(self, hold: bool) -> None:
        what = "hold" if hold else "unhold"
        async with self._invite_lock:
            if self.state is not CallState.ANSWERED or self.dialog is None:
                raise CallFailed(None, f"cannot {what} a call that is {self.state}")
            if self.holding is hold:
                return
            extra = self._timer_headers()
            for attempt in range(GLARE_RETRIES + 1):
                # Built again for each try: the peer's own offer may have been answered while
                # we waited after a 491, and our SDP version must count on from that answer.
                body = self._reoffer("sendonly" if hold else "sendrecv", what)
                try:
                    response = await self._send_reinvite(body, extra)
                except CallFailed as exc:  # no answer at all: as a 408 (RFC 3261 8.1.3.1)
                    if exc.status == 408 and self.state is CallState.ANSWERED:
                        await self._dialog_gone(408, what, EndReason.TIMEOUT)
                    raise
                if response.status != 491 or attempt == GLARE_RETRIES:
                    break
                await asyncio.sleep(glare_delay(self.owns_call_id))  # a protocol back-off
                if self.state is not CallState.ANSWERED:
                    break
            if response.status in (408, 481):
                # RFC 3261 14.1: a re-INVITE answered 481 or 408 means the dialog is gone; a
                # call left "up" would hold its caller in silence until the session timer.
                await self._dialog_gone(response.status, what, EndReason.TIMEOUT)
                raise CallFailed(response.status, f"{response.reason}: the call is gone")
            if not 200 <= response.status < 300:
                log.info("call %s: %s refused (%s)", self.call_id, what, response.status)
                raise CallFailed(response.status, response.reason)
            self.holding = hold
            self.local_sdp = body
            self._take_answer(body, response)
            if self.session is not None:  # any re-INVITE refreshes the session (RFC 4028)
                agreed = session_timer.negotiate_as_uac(response)
                self._session_refreshed(agreed or self.session.agreement)

    def _reoffer(self, direction: str, what: str) -> bytes:
        """Our next offer in this call: our last SDP with `direction`, in the same session."""
        if self.negotiated is None:
            raise CallFailed(None, f"cannot {what} a call without agreed media")
        try:
            previous = SessionDescription.parse(self.local_sdp)
            offer = build_reoffer(previous, self.negotiated, direction=direction)
        except (SdpError, SdpNegotiationError) as exc:
            raise CallFailed(None, f"cannot {what}: {exc}") from exc
        return next_version(previous, offer).to_bytes()

    def _timer_headers(self) -> list[tuple[str, str]]:
        """Session-Expires for a re-INVITE of ours that is not a refresh: the current interval,
        the refresher role kept."""
        config = self.ua.session_timer
        if config is None or self.session is None:
            return []
        agreement = self.session.agreement
        return session_timer.request_headers(
            config, agreement.interval, refresher_uac=agreement.we_refresh
        )

    async def _send_reinvite(self, body: bytes, extra: list[tuple[str, str]]) -> SipResponse:
        """One re-INVITE with `body` as offer, its 2xx ACKed; the caller holds `_invite_lock`.
        Raises CallFailed(408) when nothing answers."""
        assert self.dialog is not None
        request = self.dialog.create_request(
            "INVITE",
            self.ua.via(),
            body=body,
            content_type="application/sdp",
            extra=[("Contact", self.ua.contact()), *extra],
        )
        self._offer_pending = True
        try:
            response = await self.ua.request(request, self.dialog.next_address())
        finally:
            self._offer_pending = False
        if 200 <= response.status < 300:
            self._ack_ok(response.cseq[0])
        return response

    def _ack_ok(self, cseq: int) -> None:
        """ACK a 2xx to our INVITE or re-INVITE `cseq` (RFC 3261 13.2.2.4: the ACK of a 2xx is
        the UA's to send, with the INVITE's CSeq) and keep it: a retransmitted 2xx means the
        ACK was lost, and gets the same ACK again (`on_ok_retransmission`)."""
        if self.dialog is None:
            return
        ack = self.dialog.create_request("ACK", self.ua.via(), cseq=cseq)
        self._acks[cseq] = ack
        while len(self._acks) > 4:  # only the latest INVITEs can still be retransmitting a 2xx
            del self._acks[min(self._acks)]
        self.ua.send(ack, self.dialog.next_address())

    def on_ok_retransmission(self, response: SipResponse) -> None:
        """A 2xx to an INVITE of ours came again: the ACK we sent for it was lost."""
        ack = self._acks.get(response.cseq[0])
        if ack is not None and self.dialog is not None:
            self.ua.send(ack, self.dialog.next_address())

    # -- REFER and its NOTIFYs (RFC 3515) ------------------------------------------------------

    async def refer(
        self, target: str, *, replaces: Call | None = None, timeout: float = 32.0
    ) -> int:
        """Hand this call to `target` (a sip: or sips: URI): the peer calls it and we learn how
        that went. Returns the final status of the peer's new call (e.g. 200).

        `replaces`: an attended transfer. That call of ours (to `target`) is the one the peer's
        new call replaces (RFC 3891), so the target is joined without ringing again.

        Raises CallFailed with the REFER's status when it is refused (not 2xx), with the
        sipfrag's status when the new call failed (4xx-6xx), with 408 when no final NOTIFY came
        within `timeout` seconds, and with no status when the call or the subscription ended
        first. The call itself stays as it is: hanging up after a transfer is the caller's move.
        """
        if self.state is not CallState.ANSWERED or self.dialog is None:
            raise CallFailed(None, f"cannot transfer a call that is {self.state}")
        replacing: Replaces | None = None
        if replaces is not None:
            if replaces.dialog is None or not replaces.is_up:
                raise CallFailed(None, "the call to replace is not up")
            replacing = Replaces.of_dialog(replaces.dialog)
        refer_to = ReferTo(SipUri.parse(target), replacing)  # ValueError before anything is sent
        dialog = self.dialog
        request = dialog.create_request(
            "REFER",
            self.ua.via(),
            extra=[
                ("Contact", self.ua.contact()),
                ("Refer-To", str(refer_to)),
                ("Referred-By", str(NameAddr(dialog.local_party.uri))),
            ],
        )
        number = request.cseq[0]
        subscription = _ReferSubscription(asyncio.get_running_loop().create_future())
        subscription.outcome.add_done_callback(_consume)
        # Registered before the REFER leaves: its first NOTIFY may overtake the 202.
        self._subscriptions[number] = subscription
        try:
            async with asyncio.timeout(timeout):
                response = await self.ua.request(request, dialog.next_address())
                if not 200 <= response.status < 300:
                    raise CallFailed(response.status, response.reason)
                if response.cseq[0] != number:  # resent with credentials: a new CSeq, a new id
                    self._subscriptions[response.cseq[0]] = self._subscriptions.pop(number)
                    number = response.cseq[0]
                frag = await self._until_ended(subscription.outcome)
        except TimeoutError:
            raise CallFailed(408, f"no final NOTIFY for the REFER within {timeout} s") from None
        finally:
            self._subscriptions.pop(number, None)
        if frag is None:
            raise CallFailed(None, "the call ended before the transfer's final NOTIFY")
        if frag.status >= 300:
            raise CallFailed(frag.status, frag.reason)
        return frag.status

    async def _until_ended(self, outcome: asyncio.Future[SipFrag]) -> SipFrag | None:
        """The outcome, or None if the call ends first (no NOTIFY can come any more)."""
        ended = asyncio.ensure_future(self.ended.wait())
        waits: set[asyncio.Future[Any]] = {outcome, ended}
        try:
            await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
        finally:
            ended.cancel()
        return outcome.result() if outcome.done() else None

    def _answer_notify(self, request: SipRequest) -> SipResponse:
        """A NOTIFY about a REFER of ours. Any other is refused: 489 for another event
        package, 481 when no REFER of ours waits for it (RFC 6665 4.1.3)."""
        event = request.headers.get("Event")
        if event is None:
            return make_response(request, 400, "Missing Event")
        try:
            package, event_id = parse_event(event)
        except ReferError as exc:
            log.info("call %s: unreadable NOTIFY Event (%s)", self.call_id, exc)
            return make_response(request, 400, "Bad Event")
        if package != EVENT_PACKAGE:
            return make_response(request, 489, extra=[("Allow-Events", EVENT_PACKAGE)])
        subscription = self._subscription_for(event_id)
        if subscription is None:
            return make_response(request, 481)
        state_text = request.headers.get("Subscription-State")
        if state_text is None:
            return make_response(request, 400, "Missing Subscription-State")
        frag: SipFrag | None = None
        try:
            state = SubscriptionState.parse(state_text)
            if request.body:
                media_type = (request.content_type or "").split(";", 1)[0].strip().lower()
                if media_type != "message/sipfrag":
                    return make_response(request, 415, extra=[("Accept", "message/sipfrag")])
                frag = SipFrag.parse(request.body)
        except ReferError as exc:
            # The reason is logged, not echoed: a peer's bytes have no business in our headers.
            log.info("call %s: malformed REFER NOTIFY (%s)", self.call_id, exc)
            return make_response(request, 400, "Bad Notification")
        subscription.notified(state, frag)
        return make_response(request, 200)

    def _subscription_for(self, event_id: str | None) -> _ReferSubscription | None:
        """The REFER a NOTIFY is about: by its `id` (the REFER's CSeq), else the only one
        pending. An unknown id also takes the only one pending: a REFER resent with
        credentials got a new CSeq, and its NOTIFY may overtake the 202 that says which."""
        pending = {n: s for n, s in self._subscriptions.items() if not s.outcome.done()}
        if event_id is not None and event_id.isascii() and event_id.isdigit():
            found = pending.get(int(event_id))
            if found is not None:
                return found
        return next(iter(pending.values())) if len(pending) == 1 else None

    def _answer_refer(self, request: SipRequest) -> SipResponse:
        """The peer asks us to call someone. 400 for a REFER we cannot read (no or several
        Refer-To, not a SIP URI), 603 unless `on_refer` accepts it, else 202 and NOTIFYs."""
        try:
            refer = read_refer(request)
        except ReferError as exc:
            log.info("call %s: unusable REFER (%s)", self.call_id, exc)
            return make_response(request, 400, "Bad Refer-To")
        handler = self.on_refer
        if handler is None:
            log.info("call %s: REFER to %s refused: no on_refer", self.call_id, refer.target)
            return make_response(request, 603)
        try:
            work = handler(refer)
        except Exception:
            log.exception("call %s: on_refer failed", self.call_id)
            return make_response(request, 500)
        if work is None:
            return make_response(request, 603)
        self.ua.spawn(self._report_refer(request.cseq[0], work))
        return make_response(request, 202, extra=[("Contact", self.ua.contact())])

    async def _report_refer(self, number: int, work: Awaitable[int]) -> None:
        """NOTIFY "100 Trying" while the application dials, then its final status, which ends
        the subscription (RFC 3515 2.4.4-2.4.7). One NOTIFY at a time: the next waits for the
        previous one's response (RFC 6665 4.2.2)."""
        dialing = asyncio.ensure_future(work)
        event = f"{EVENT_PACKAGE};id={number}"
        try:
            alive = await self._notify(
                event, SubscriptionState.active(REFER_EXPIRES), SipFrag.of(100)
            )
            try:
                status = await dialing
            except CallFailed as exc:
                status = exc.status or 503
            except Exception:
                log.exception("call %s: the dial for a REFER failed", self.call_id)
                status = 500
            if not isinstance(status, int) or not 200 <= status <= 699:
                log.warning("call %s: on_refer gave %r, not a final status", self.call_id, status)
                status = 500
            if alive:
                await self._notify(event, SubscriptionState.terminated(), SipFrag.of(status))
        finally:
            dialing.cancel()

    async def _notify(self, event: str, state: SubscriptionState, frag: SipFrag) -> bool:
        """Send one NOTIFY; False when the subscription is gone (the call ended, a refusal such
        as 481, or no answer), so that no further NOTIFY is sent."""
        if self.state is not CallState.ANSWERED or self.dialog is None:
            return False
        request = self.dialog.create_request(
            "NOTIFY",
            self.ua.via(),
            body=frag.to_bytes(),
            content_type=SIPFRAG,
            extra=[
                ("Contact", self.ua.contact()),
                ("Event", event),
                ("Subscription-State", str(state)),
            ],
        )
        try:
            response = await self.ua.request(request, self.dialog.next_address())
        except CallFailed as exc:
            log.info("call %s: NOTIFY %s got no answer (%s)", self.call_id, frag.status, exc)
            return False
        if not 200 <= response.status < 300:
            log.info("call %s: NOTIFY %s refused (%s)", self.call_id, frag.status, response.status)
            return False
        return True

    # -- session timer (RFC 4028) ---------------------------------------------------------------

    def _on_refresh(self, request: SipRequest) -> SipResponse | list[tuple[str, str]]:
        """A re-INVITE or UPDATE from the peer is a session refresh, whatever else it does:
        restart the interval (a new one if it asks for one) and return the Session-Expires
        headers for our 2xx, or a 422 when it asks for less than our Min-SE."""
        config = self.ua.session_timer
        if config is None:
            return []
        current = self.session.agreement if self.session is not None else None
        agreed = session_timer.negotiate_as_uas(request, config, current)
        if isinstance(agreed, session_timer.TooSmall):
            return make_response(request, 422, extra=agreed.response_headers())
        if agreed is None:
            if self.session is None:
                return []
            agreed = self.session.agreement  # a refresh that restates nothing keeps the terms
        self._session_refreshed(agreed)
        return session_timer.response_headers(agreed, request)

    def _session_refreshed(self, agreement: session_timer.Agreement | None) -> None:
        """Start the session timer, or restart its interval after a refresh either way."""
        if agreement is None or self.state is not CallState.ANSWERED:
            return
        now = asyncio.get_running_loop().time()
        if self.session is None:
            self.session = session_timer.SessionTimer(agreement, now)
        else:
            self.session.refreshed(now, agreement)
        self._arm_session_timer()

    def _arm_session_timer(self) -> None:
        if self._session_handle is not None:
            self._session_handle.cancel()
            self._session_handle = None
        if self.session is None or self.state is not CallState.ANSWERED:
            return
        loop = asyncio.get_running_loop()
        self._session_handle = loop.call_at(self.session.next_deadline, self._on_session_timer)

    def _on_session_timer(self) -> None:
        self._session_handle = None
        if self.session is None or self.state is not CallState.ANSWERED:
            return
        due = self.session.on_timer(asyncio.get_running_loop().time())
        if due is session_timer.Due.EXPIRE:
            log.info("call %s: session expired without a refresh; hanging up", self.call_id)
            self.ua.spawn(self._send_bye(EndReason.SESSION_EXPIRED))
            return
        if due is session_timer.Due.REFRESH:
            self.ua.spawn(self._refresh_session())
        self._arm_session_timer()

    async def _refresh_session(self) -> None:
        """Refresh as the refresher: UPDATE when the peer allows it (no SDP to get wrong),
        else a re-INVITE with our current SDP. A 408 (or no answer) or 481 means the dialog is
        gone (RFC 3261 12.2.1.2): the call ends at once; a 422 is retried once with the peer's
        Min-SE; any other refusal is retried before the expiry."""
        assert self.session is not None and self.dialog is not None
        config = self.ua.session_timer
        assert config is not None
        interval = self.session.agreement.interval
        response: SipResponse | None = None
        for _ in range(2):  # a 422 once
            response = await self._send_refresh(interval, config)
            if response is None or response.status != 422:
                break
            larger = session_timer.retry_interval(response, interval)
            if larger is None:
                break
            interval = larger
        if self.state is not CallState.ANSWERED or self.session is None:
            return
        now = asyncio.get_running_loop().time()
        if response is None or response.status in (408, 481):
            status = response.status if response is not None else 408
            await self._dialog_gone(status, "session refresh", EndReason.SESSION_EXPIRED)
            return
        if 200 <= response.status < 300:
            agreed = session_timer.negotiate_as_uac(response)
            self.session.refreshed(now, agreed or session_timer.Agreement(interval, True))
        else:
            log.info("call %s: session refresh refused (%s)", self.call_id, response.status)
            self.session.refresh_failed(now)
        self._arm_session_timer()

    async def _dialog_gone(self, status: int, what: str, reason: EndReason) -> None:
        """A 481 (the peer has no such dialog: nothing to BYE) or a 408 (no answer: BYE, which
        also reaches a peer that merely lost our request) to a request inside the call: end it
        (RFC 3261 12.2.1.2, 14.1)."""
        log.info("call %s: %s got %s; the call is gone", self.call_id, what, status)
        if status == 481:
            self._finish(reason, 481)
        else:
            await self._send_bye(reason)
            self.end_status = 408

    async def _send_refresh(
        self, interval: int, config: session_timer.SessionTimerConfig
    ) -> SipResponse | None:
        """One refresh: an UPDATE without SDP, or a re-INVITE with our current SDP unchanged,
        which waits for any other INVITE of ours in the dialog (a hold) to finish first."""
        assert self.dialog is not None
        extra = session_timer.request_headers(config, interval, refresher_uac=True)
        try:
            if self.peer_allows_update or not self.local_sdp:
                request = self.dialog.create_request(
                    "UPDATE", self.ua.via(), extra=[("Contact", self.ua.contact()), *extra]
                )
                return await self.ua.request(request, self.dialog.next_address())
            async with self._invite_lock:
                if self.state is not CallState.ANSWERED or self.dialog is None:
                    return None
                body = self.local_sdp  # read under the lock: a hold may just have changed it
                response = await self._send_reinvite(body, extra)
        except CallFailed:
            return None
        if 200 <= response.status < 300:
            self._take_answer(body, response)
        return response

    def _take_answer(self, offer: bytes, response: SipResponse) -> None:
        """The peer may move its media in the answer to our re-INVITE: follow it, or keep the
        media as it is when the answer is unusable (a refresh or a hold must not break the
        call, and the 2xx has been ACKed: the peer considers the offer/answer done)."""
        if not response.body or self.state is not CallState.ANSWERED:
            return
        try:
            negotiated = parse_answer(
                SessionDescription.parse(offer), SessionDescription.parse(response.body)
            )
        except (SdpError, SdpNegotiationError) as exc:
            log.info("call %s: unusable SDP in a re-INVITE answer (%s)", self.call_id, exc)
            return
        self._use(negotiated)
        self.media.update_remote((negotiated.remote_address, negotiated.remote_port))

    def _use(self, negotiated: NegotiatedMedia) -> None:
        """Keep what offer/answer agreed; RTCP follows the agreed multiplexing (RFC 5761)."""
        self.negotiated = negotiated
        self.media.rtcp_mux = negotiated.rtcp_mux

    def _answer_info(self, request: SipRequest) -> SipResponse:
        """A key pressed by SIP INFO goes on `media.keys` like an RFC 4733 key, so whoever waits
        for keys (the consult) cannot tell how it came.

        An INFO without a body is a keep-alive some PBXs send: 200. A body we do not understand
        is 415 with the types we accept (RFC 6086 section 4.2.2), a DTMF body without a key 400;
        neither raises, since a peer's odd INFO must never disturb the call.
        """
        if not request.body:
            return make_response(request, 200)
        media_type = (request.content_type or "").split(";", 1)[0].strip().lower()
        if media_type not in INFO_DTMF_TYPES:
            return make_response(request, 415, extra=[("Accept", ", ".join(INFO_DTMF_TYPES))])
        try:
            digit = parse_info_dtmf(media_type, request.body)
        except ValueError as exc:
            # The reason is logged, not echoed: a peer's bytes have no business in our headers.
            log.info("call %s: malformed DTMF INFO (%s)", self.call_id, exc)
            return make_response(request, 400, "Bad DTMF Body")
        self.media.key_pressed(digit, asyncio.get_running_loop().time(), "info")
        return make_response(request, 200)

    def _answer_reinvite(
        self, request: SipRequest, extra: list[tuple[str, str]] | None = None
    ) -> SipResponse:
        """A session refresh or a hold from the peer: keep our media, answer with our SDP.

        The answer stays in our session (same o= id, version counted up only if it changed),
        and while we hold the peer it says sendonly whatever the offer asked, so that a
        refresh from the peer does not take it off hold."""
        headers = [("Contact", self.ua.contact()), *(extra or [])]
        if request.body:
            try:
                offer = SessionDescription.parse(request.body)
                answer, negotiated = build_answer(
                    offer,
                    self.ua.sdp_host,
                    self.media.local[1],
                    direction="sendonly" if self.holding else "sendrecv",
                )
            except (SdpError, SdpNegotiationError) as exc:
                return make_response(request, 488, extra=[("Warning", f'399 - "{exc}"'[:200])])
            with contextlib.suppress(SdpError):
                answer = next_version(SessionDescription.parse(self.local_sdp), answer)
            self._use(negotiated)
            self.media.update_remote((negotiated.remote_address, negotiated.remote_port))
            self.local_sdp = answer.to_bytes()
            return make_response(
                request, 200, body=self.local_sdp, content_type="application/sdp", extra=headers
            )
        return make_response(request, 200, extra=headers)

    def _finish(self, reason: EndReason, status: int | None = None) -> None:
        if self.state is CallState.ENDED:
            return
        self.state = CallState.ENDED
        self.end_reason = reason
        self.end_status = status
        if self._session_handle is not None:
            self._session_handle.cancel()
            self._session_handle = None
        self.ended_at = asyncio.get_running_loop().time()
        self.media.close()
        self.ua.forget(self)
        self.ended.set()


class IncomingCall(Call):
    """A call offered to us. Ring it, answer it or reject it."""

    direction = "inbound"

    def __init__(
        self,
        ua: UserAgent,
        invite: SipRequest,
        tx: ServerInviteTransaction,
        media: RtpSession,
        local_tag: str,
    ) -> None:
        super().__init__(ua, invite.call_id, media)
        self.invite = invite
        self.tx = tx
        self.local_tag = local_tag
        self.state = CallState.OFFERED
        self.caller = invite.from_
        self.acked = asyncio.Event()

    def header(self, name: str) -> str | None:
        return self.invite.headers.get(name)

    async def ring(self) -> None:
        if self.state is CallState.OFFERED:
            self.ua.respond(
                self.tx,
                make_response(
                    self.invite, 180, to_tag=self.local_tag, extra=[("Contact", self.ua.contact())]
                ),
            )

    async def answer(self) -> None:
        """Send 200 OK with our SDP answer; media starts at once.

        If no codec fits, the caller gets a 488 and this raises CallFailed.
        """
        if self.state is not CallState.OFFERED:
            raise CallFailed(None, f"cannot answer a call that is {self.state}")
        try:
            offer = SessionDescription.parse(self.invite.body)
            answer, negotiated = build_answer(offer, self.ua.sdp_host, self.media.local[1])
        except (SdpError, SdpNegotiationError) as exc:
            self.ua.respond(
                self.tx,
                make_response(
                    self.invite,
                    488,
                    to_tag=self.local_tag,
                    extra=[("Warning", f'399 - "{exc}"'[:200])],
                ),
            )
            self._finish(EndReason.REJECTED, 488)
            raise CallFailed(488, str(exc)) from exc
        agreed = self._session_terms()
        timer_headers = (
            session_timer.response_headers(agreed, self.invite) if agreed is not None else []
        )
        self._use(negotiated)
        self.dialog = Dialog.as_uas(self.invite, self.local_tag)
        self.local_sdp = answer.to_bytes()
        self.peer_allows_update = session_timer.allows(self.invite, "UPDATE")
        ok = make_response(
            self.invite,
            200,
            to_tag=self.local_tag,
            body=self.local_sdp,
            content_type="application/sdp",
            extra=[("Contact", self.ua.contact()), *timer_headers],
        )
        self.state = CallState.ANSWERED
        self.answered_at = asyncio.get_running_loop().time()
        self.media.start(
            (negotiated.remote_address, negotiated.remote_port), media_format(negotiated)
        )
        self.ua.respond(self.tx, ok)
        self.ua.retransmit_ok(self, ok)
        self._session_refreshed(agreed)

    def _session_terms(self) -> session_timer.Agreement | None:
        """The session timer the caller asked for. An interval below our Min-SE is normally
        refused with 422 before the call is offered (UserAgent); if one gets here anyway, the
        call goes on at our Min-SE rather than fail after the application took it."""
        config = self.ua.session_timer
        if config is None:
            return None
        agreed = session_timer.negotiate_as_uas(self.invite, config)
        if isinstance(agreed, session_timer.TooSmall):
            return session_timer.Agreement(agreed.min_se, True)
        return agreed

    async def reject(
        self,
        status: int = 486,
        reason: str | None = None,
        *,
        headers: Iterable[tuple[str, str]] = (),
    ) -> None:
        """Refuse the call with a final error response; `headers` are added to it (e.g.
        ``[("Retry-After", "30")]`` with a 503)."""
        if not 300 <= status <= 699:
            # A 1xx or 2xx would leave the caller's INVITE open while the call counts as ended.
            raise ValueError(f"reject needs a final error status (300 to 699), not {status}")
        if self.state is not CallState.OFFERED:
            return
        response = make_response(
            self.invite, status, reason, to_tag=self.local_tag, extra=tuple(headers)
        )
        self.ua.respond(self.tx, response)
        self._finish(EndReason.REJECTED, status)

    async def _hangup_early(self) -> None:
        await self.reject(480, "Temporarily Unavailable")

    def on_ack(self) -> None:
        self.acked.set()

    def on_cancel(self) -> None:
        """The caller gave up before we answered: 487 to their INVITE."""
        if self.state is CallState.OFFERED:
            self.ua.respond(self.tx, make_response(self.invite, 487, to_tag=self.local_tag))
            self._finish(EndReason.CANCELLED, 487)


class OutgoingCall(Call):
    """A call we placed. `UserAgent.call` returns it once answered."""

    direction = "outbound"
    owns_call_id = True

    def __init__(self, ua: UserAgent, invite: SipRequest, media: RtpSession) -> None:
        super().__init__(ua, invite.call_id, media)
        if ua.session_timer is not None and "Session-Expires" not in invite.headers:
            # RFC 4028: we support timers and ask for our interval. Added here rather than where
            # the INVITE is built so that every INVITE of a call, however built, carries them.
            for name, value in session_timer.request_headers(ua.session_timer):
                invite.headers.add(name, value)
        self.invite = invite
        # RFC 5761: our offers ask for RTCP on the RTP port; added here, like the session timer
        # headers, so that every INVITE of a call carries it however it was built.
        self.offer = with_rtcp_mux(SessionDescription.parse(invite.body))
        invite.body = self.offer.to_bytes()
        self.local_sdp = invite.body
        self.final: asyncio.Future[SipResponse] = asyncio.get_running_loop().create_future()
        # A failure nobody awaits any more (the dial task was cancelled) is not an error to log:
        # `ended` and `end_reason` report it.
        self.final.add_done_callback(_consume)
        self.provisional: SipResponse | None = None
        self.ringing_at: float | None = None
        self.cancel_requested = False
        self._cancel_sent = False

    def on_provisional(self, response: SipResponse) -> None:
        self.provisional = response
        if self.cancel_requested:
            # A CANCEL waits for a provisional response (RFC 3261 9.1), even one that comes
            # after we gave up on the call: otherwise the phone would be left ringing.
            self._send_cancel()
        if self.state is CallState.ENDED:
            return
        if response.status in (180, 183) and self.state is CallState.DIALING:
            self.state = CallState.RINGING
            self.ringing_at = asyncio.get_running_loop().time()

    def on_final(self, response: SipResponse) -> None:
        """A final response to our INVITE (the transaction ACKs non-2xx itself)."""
        if 200 <= response.status < 300:
            self._on_answer(response)
        if not self.final.done():
            self.final.set_result(response)
        if response.status >= 300:
            reason = EndReason.CANCELLED if self.cancel_requested else EndReason.REJECTED
            self._finish(reason, response.status)

    def on_timeout(self) -> None:
        if not self.final.done():
            self.final.set_exception(CallFailed(408, "Request Timeout (no response)"))
        self._finish(EndReason.TIMEOUT, 408)

    def _on_answer(self, response: SipResponse) -> None:
        if self.dialog is not None:  # a retransmitted 2xx
            self.on_ok_retransmission(response)
            return
        self.dialog = Dialog.as_uac(self.invite, response)
        self._ack_ok(self.invite.cseq[0])
        if self.cancel_requested or self.state is CallState.ENDED:
            # The answer crossed our CANCEL (or came after we gave up): the call exists at the
            # peer, so end it with a BYE. A call that already ended stays ended.
            if self.state is not CallState.ENDED:
                self.state = CallState.ANSWERED
            self.ua.spawn(self._send_bye())
            return
        try:
            answer = SessionDescription.parse(response.body)
            negotiated = parse_answer(self.offer, answer)
        except (SdpError, SdpNegotiationError) as exc:
            log.warning("call %s: unusable SDP answer (%s); hanging up", self.call_id, exc)
            self.state = CallState.ANSWERED
            self.ua.spawn(self._send_bye())
            self.end_status = 488
            return
        self._use(negotiated)
        self.state = CallState.ANSWERED
        self.answered_at = asyncio.get_running_loop().time()
        self.media.start(
            (negotiated.remote_address, negotiated.remote_port), media_format(negotiated)
        )
        self.peer_allows_update = session_timer.allows(response, "UPDATE")
        if self.ua.session_timer is not None:
            self._session_refreshed(session_timer.negotiate_as_uac(response))

    def cancel(self) -> None:
        """Stop ringing: CANCEL now if a provisional response came, else as soon as one does.

        Synchronous on purpose: the request is on the wire (or armed) before this returns, so a
        cancelled dial task never leaves a phone ringing, whatever happens to the task next.
        """
        if self.state is CallState.ENDED or self.cancel_requested:
            return
        self.cancel_requested = True
        if self.provisional is not None:
            self._send_cancel()

    def _send_cancel(self) -> None:
        if self._cancel_sent:
            return
        self._cancel_sent = True
        self.ua.send_cancel(self.invite)

    async def _hangup_early(self) -> None:
        self.cancel()
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(8.0):
                await self.ended.wait()
        if not self.ended.is_set():
            self._finish(EndReason.CANCELLED)

    def _finish(self, reason: EndReason, status: int | None = None) -> None:
        if self.state is CallState.ENDED:
            return
        if not self.final.done():
            # Ended before any final response (the user agent closed, a give-up timer, an
            # early BYE): CANCEL the INVITE, and let `UserAgent.call` raise instead of waiting.
            self.cancel()
            self.final.set_exception(
                CallFailed(
                    status,
                    f"call ended ({reason}) before a final response",
                    cancelled=reason is EndReason.CANCELLED,
                )
            )
        super()._finish(reason, status)


def _consume(future: asyncio.Future[Any]) -> None:
    if not future.cancelled():
        future.exception()

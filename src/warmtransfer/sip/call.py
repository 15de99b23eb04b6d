"""Calls as the application sees them: an inbound call to ring/answer/reject, an outbound call
that is ringing or answered, and for both a media session, a hang-up, and an `ended` event.

The protocol work (transactions, dialog) is delegated to the user agent; a call only keeps the
state that the application asks about, and every end of a call (BYE either way, CANCEL, a
rejection, a timeout) goes through `_finish`, so `ended` is set exactly once on every path and
the media session is always closed.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from enum import StrEnum
from typing import TYPE_CHECKING

from warmtransfer.media.dtmf import INFO_DTMF_TYPES, parse_info_dtmf
from warmtransfer.media.session import KeyPress, MediaFormat, RtpSession
from warmtransfer.sip import session_timer
from warmtransfer.sip.dialog import Dialog
from warmtransfer.sip.message import SipRequest, SipResponse, make_response
from warmtransfer.sip.sdp import (
    NegotiatedMedia,
    SdpError,
    SdpNegotiationError,
    SessionDescription,
    build_answer,
    parse_answer,
)

if TYPE_CHECKING:
    from warmtransfer.sip.transaction import ServerInviteTransaction
    from warmtransfer.sip.useragent import UserAgent

log = logging.getLogger(__name__)


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
    """An outbound call ended before it was answered."""

    def __init__(self, status: int | None, reason: str, *, cancelled: bool = False) -> None:
        self.status = status
        self.reason = reason
        self.cancelled = cancelled
        super().__init__(f"{status} {reason}" if status else reason)


def media_format(negotiated: NegotiatedMedia) -> MediaFormat:
    return MediaFormat(
        codec=negotiated.codec.name.upper(),
        payload_type=negotiated.codec.payload_type,
        dtmf_payload_type=negotiated.dtmf_payload_type,
    )


class Call:
    """What inbound and outbound calls share."""

    direction = ""

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
        # RFC 4028 session timer: `session` says when, `_session_handle` is the loop's wake-up.
        self.session: session_timer.SessionTimer | None = None
        self._session_handle: asyncio.TimerHandle | None = None
        self.local_sdp = b""  # our last offer or answer: the body of a refresh re-INVITE
        self.peer_allows_update = False

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
        return make_response(request, 501)

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
            log.info("call %s: session refresh got %s; the call is gone", self.call_id, status)
            if status == 481:
                self._finish(EndReason.SESSION_EXPIRED, 481)
            else:
                await self._send_bye(EndReason.SESSION_EXPIRED)
                self.end_status = 408
            return
        if 200 <= response.status < 300:
            agreed = session_timer.negotiate_as_uac(response)
            self.session.refreshed(now, agreed or session_timer.Agreement(interval, True))
        else:
            log.info("call %s: session refresh refused (%s)", self.call_id, response.status)
            self.session.refresh_failed(now)
        self._arm_session_timer()

    async def _send_refresh(
        self, interval: int, config: session_timer.SessionTimerConfig
    ) -> SipResponse | None:
        assert self.dialog is not None
        method = "UPDATE" if self.peer_allows_update or not self.local_sdp else "INVITE"
        extra = [
            ("Contact", self.ua.contact()),
            *session_timer.request_headers(config, interval, refresher_uac=True),
        ]
        body = self.local_sdp if method == "INVITE" else b""
        request = self.dialog.create_request(
            method,
            self.ua.via(),
            body=body,
            content_type="application/sdp" if body else None,
            extra=extra,
        )
        try:
            response = await self.ua.request(request, self.dialog.next_address())
        except CallFailed:
            return None
        if method == "INVITE" and 200 <= response.status < 300 and self.dialog is not None:
            # The ACK of a 2xx is ours to send (RFC 3261 13.2.2.4), with the INVITE's CSeq.
            ack = self.dialog.create_request("ACK", self.ua.via(), cseq=response.cseq[0])
            self.ua.send(ack, self.dialog.next_address())
            self._take_refresh_answer(request, response)
        return response

    def _take_refresh_answer(self, offer: SipRequest, response: SipResponse) -> None:
        """The peer may move its media in the answer to our refresh: follow it, or keep the
        media as it is when the answer is unusable (a refresh must not break the call)."""
        if not response.body or self.state is not CallState.ANSWERED:
            return
        try:
            negotiated = parse_answer(
                SessionDescription.parse(offer.body), SessionDescription.parse(response.body)
            )
        except (SdpError, SdpNegotiationError) as exc:
            log.info("call %s: unusable SDP in a refresh answer (%s)", self.call_id, exc)
            return
        self.negotiated = negotiated
        self.media.update_remote((negotiated.remote_address, negotiated.remote_port))

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
        self.media.keys.put_nowait(KeyPress(digit, asyncio.get_running_loop().time()))
        return make_response(request, 200)

    def _answer_reinvite(
        self, request: SipRequest, extra: list[tuple[str, str]] | None = None
    ) -> SipResponse:
        """A session refresh or a hold from the peer: keep our media, answer with our SDP."""
        headers = [("Contact", self.ua.contact()), *(extra or [])]
        if request.body:
            try:
                offer = SessionDescription.parse(request.body)
                answer, negotiated = build_answer(offer, self.ua.sdp_host, self.media.local[1])
            except (SdpError, SdpNegotiationError) as exc:
                return make_response(request, 488, extra=[("Warning", f'399 - "{exc}"'[:200])])
            self.negotiated = negotiated
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
        self.negotiated = negotiated
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

    async def reject(self, status: int = 486, reason: str | None = None) -> None:
        if not 300 <= status <= 699:
            # A 1xx or 2xx would leave the caller's INVITE open while the call counts as ended.
            raise ValueError(f"reject needs a final error status (300 to 699), not {status}")
        if self.state is not CallState.OFFERED:
            return
        self.ua.respond(self.tx, make_response(self.invite, status, reason, to_tag=self.local_tag))
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

    def __init__(self, ua: UserAgent, invite: SipRequest, media: RtpSession) -> None:
        super().__init__(ua, invite.call_id, media)
        if ua.session_timer is not None and "Session-Expires" not in invite.headers:
            # RFC 4028: we support timers and ask for our interval. Added here rather than where
            # the INVITE is built so that every INVITE of a call, however built, carries them.
            for name, value in session_timer.request_headers(ua.session_timer):
                invite.headers.add(name, value)
        self.invite = invite
        self.offer = SessionDescription.parse(invite.body)
        self.local_sdp = invite.body
        self.final: asyncio.Future[SipResponse] = asyncio.get_running_loop().create_future()
        # A failure nobody awaits any more (the dial task was cancelled) is not an error to log:
        # `ended` and `end_reason` report it.
        self.final.add_done_callback(_consume)
        self.provisional: SipResponse | None = None
        self.ringing_at: float | None = None
        self.cancel_requested = False
        self._cancel_sent = False
        self._ack: SipRequest | None = None

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

    def on_ok_retransmission(self) -> None:
        if self._ack is not None and self.dialog is not None:
            self.ua.send(self._ack, self.dialog.next_address())

    def _on_answer(self, response: SipResponse) -> None:
        if self.dialog is not None:  # a retransmitted 2xx
            self.on_ok_retransmission()
            return
        self.dialog = Dialog.as_uac(self.invite, response)
        self._ack = self.dialog.create_request("ACK", self.ua.via(), cseq=self.invite.cseq[0])
        self.ua.send(self._ack, self.dialog.next_address())
        if self.cancel_requested or self.state is CallState.ENDED:
            # The answer crossed our CANCEL (or came after we gave up): the call exists at the
            # peer, so end it with a BYE. A call that already ended stays ended.
            if self.state is not CallState.ENDED:
                self.state = CallState.ANSWERED
            self.ua.spawn(self._send_bye())
            return
        try:
            answer = SessionDescription.parse(response.body)
            self.negotiated = parse_answer(self.offer, answer)
        except (SdpError, SdpNegotiationError) as exc:
            log.warning("call %s: unusable SDP answer (%s); hanging up", self.call_id, exc)
            self.state = CallState.ANSWERED
            self.ua.spawn(self._send_bye())
            self.end_status = 488
            return
        self.state = CallState.ANSWERED
        self.answered_at = asyncio.get_running_loop().time()
        negotiated = self.negotiated
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


def _consume(future: asyncio.Future[SipResponse]) -> None:
    if not future.cancelled():
        future.exception()

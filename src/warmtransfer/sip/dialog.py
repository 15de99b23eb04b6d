"""A SIP dialog (RFC 3261 §12): the identifiers, sequence numbers and routing of one call.

Sans-IO: it builds in-dialog requests and checks incoming ones; the user agent sends them.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from warmtransfer.sip.flow import Flow, flow_for
from warmtransfer.sip.message import (
    Headers,
    SipRequest,
    SipResponse,
    new_branch,
)
from warmtransfer.sip.uri import NameAddr, SipUri


@dataclass
class Dialog:
    call_id: str
    local_tag: str
    remote_tag: str
    local_party: NameAddr  # our From (UAC) or To (UAS), with our tag
    remote_party: NameAddr  # the peer's, with their tag
    remote_target: SipUri  # the peer's Contact: where in-dialog requests go
    route_set: list[str] = field(default_factory=list)
    local_cseq: int = 1
    remote_cseq: int | None = None

    @classmethod
    def as_uac(cls, invite: SipRequest, response: SipResponse) -> Dialog:
        """Dialog created by a 2xx (or 1xx with a tag) to our INVITE."""
        contact = response.headers.get_all("Contact")
        target = NameAddr.parse(contact[0]).uri if contact else invite.uri
        routes = list(reversed(response.headers.get_all("Record-Route")))
        return cls(
            call_id=invite.call_id,
            local_tag=invite.from_.tag or "",
            remote_tag=response.to.tag or "",
            local_party=invite.from_,
            remote_party=response.to,
            remote_target=target,
            route_set=routes,
            local_cseq=invite.cseq[0],
        )

    @classmethod
    def as_uas(cls, invite: SipRequest, local_tag: str) -> Dialog:
        """Dialog created by our 2xx to a received INVITE."""
        contact = invite.headers.get_all("Contact")
        target = NameAddr.parse(contact[0]).uri if contact else invite.from_.uri
        return cls(
            call_id=invite.call_id,
            local_tag=local_tag,
            remote_tag=invite.from_.tag or "",
            local_party=invite.to.with_tag(local_tag),
            remote_party=invite.from_,
            remote_target=target,
            route_set=list(invite.headers.get_all("Record-Route")),
            local_cseq=0,
            remote_cseq=invite.cseq[0],
        )

    def next_address(self) -> Flow:
        """Where in-dialog requests go: the first loose route, else the remote target, over
        the transport that URI names (RFC 3261 12.2.1.1 and 8.1.2)."""
        if self.route_set:
            return flow_for(NameAddr.parse(self.route_set[0]).uri)
        return flow_for(self.remote_target)

    def create_request(
        self,
        method: str,
        via: str,
        *,
        body: bytes = b"",
        content_type: str | None = None,
        extra: list[tuple[str, str]] | None = None,
        cseq: int | None = None,
    ) -> SipRequest:
        """A new in-dialog request. ACK for a 2xx reuses the INVITE's CSeq number (`cseq`)."""
        if cseq is None:
            self.local_cseq += 1
            cseq = self.local_cseq
        headers = Headers()
        headers.add("Via", f"{via};branch={new_branch()};rport")
        headers.add("Max-Forwards", "70")
        headers.add("From", str(self.local_party))
        headers.add("To", str(self.remote_party))
        headers.add("Call-ID", self.call_id)
        headers.add("CSeq", f"{cseq} {method}")
        for route in self.route_set:
            headers.add("Route", route)
        for name, value in extra or ():
            headers.add(name, value)
        if content_type:
            headers.add("Content-Type", content_type)
        return SipRequest(method, self.remote_target, headers, body)

    def accepts(self, request: SipRequest) -> bool:
        """RFC 3261 §12.2.2: an in-dialog request with a lower CSeq than the last is refused."""
        number = request.cseq[0]
        if request.method in ("ACK", "CANCEL"):
            return True
        if self.remote_cseq is not None and number < self.remote_cseq:
            return False
        self.remote_cseq = number
        return True

    def matches(self, message: SipRequest | SipResponse) -> bool:
        """RFC 3261 12: a dialog is its Call-ID and both tags, not the Call-ID alone.

        A request from the peer carries our tag in To and theirs in From; a response to one of
        our requests carries them the other way round.
        """
        if message.call_id != self.call_id:
            return False
        if isinstance(message, SipRequest):
            ours, theirs = message.to.tag, message.from_.tag
        else:
            ours, theirs = message.from_.tag, message.to.tag
        return (ours or "") == self.local_tag and (theirs or "") == self.remote_tag

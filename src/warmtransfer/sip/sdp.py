"""SDP (RFC 4566 subset) and the offer/answer model (RFC 3264) for one G.711 audio stream.

Why hand-written: no well-kept sans-IO SIP stack on PyPI fits (DESIGN.md), and the SDP a user
agent that only speaks G.711 and RFC 4733 events needs is small: origin, connection, media lines,
rtpmap/fmtp/ptime and the direction attributes. Everything else is kept (media attributes) or
skipped (session-level extras), so odd peers do not break calls.

RTP/RTCP multiplexing (RFC 5761): `a=rtcp-mux` is a media attribute like any other, read by
`MediaDescription.rtcp_mux`. The calls we place offer it (`with_rtcp_mux`), an answer carries it
only when the offer did, and `NegotiatedMedia.rtcp_mux` tells the call to send RTCP to the RTP
port. Why offer it: a peer behind NAT or a firewall then needs one pinhole per call, not two,
and an RTCP port that nobody opened is what makes carriers' reports go missing.

Later offers in a call (RFC 3264 8): `build_reoffer` makes a hold or resume offer from our last
SDP, and `next_version` keeps the o= line of the session with the version counted up only when
the description changed, so a peer never sees a new session or an unchanged SDP as new.

Errors are split the way the SIP layer answers them: `SdpError` for SDP that cannot be read (a
broken v=, o=, c= or m= line) and `SdpNegotiationError` for SDP that is fine but has nothing we
can use (no audio, no common codec): the caller answers 488 Not Acceptable Here to that.

Why the answer lists exactly one codec (plus telephone-event): RFC 3264 lets an answerer list
every common codec and then switch between them at will. Our bridges forward RTP payloads
without decoding when both legs share a codec, so a peer that switches mid-call would break
that; with a single codec there is nothing to switch to.
"""

from __future__ import annotations

import re
import secrets
from collections.abc import Sequence
from dataclasses import dataclass, field, replace

__all__ = [
    "DIRECTIONS",
    "PCMA",
    "PCMU",
    "STATIC_PAYLOAD_TYPES",
    "TELEPHONE_EVENT",
    "Codec",
    "MediaDescription",
    "NegotiatedMedia",
    "SdpError",
    "SdpNegotiationError",
    "SessionDescription",
    "build_answer",
    "build_offer",
    "build_reoffer",
    "next_version",
    "parse_answer",
    "with_rtcp_mux",
]


class SdpError(ValueError):
    """SDP that cannot be read: a broken v=, o=, c= or m= line, or bytes that are not text."""


class SdpNegotiationError(ValueError):
    """Readable SDP with nothing we can accept (no audio, no common codec); answer 488."""


@dataclass(frozen=True)
class Codec:
    payload_type: int
    name: str
    clock_rate: int = 8000
    channels: int = 1
    fmtp: str | None = None

    def same_format(self, other: Codec) -> bool:
        """Same encoding (name case-insensitive, clock rate, channels), whatever the PT."""
        return (
            self.name.lower() == other.name.lower()
            and self.clock_rate == other.clock_rate
            and self.channels == other.channels
        )

    @property
    def is_telephone_event(self) -> bool:
        return self.name.lower() == "telephone-event"

    def __str__(self) -> str:
        channels = f"/{self.channels}" if self.channels != 1 else ""
        return f"{self.name}/{self.clock_rate}{channels}"


PCMU = Codec(0, "PCMU")
PCMA = Codec(8, "PCMA")
TELEPHONE_EVENT = Codec(101, "telephone-event", fmtp="0-16")

STATIC_PAYLOAD_TYPES: dict[int, Codec] = {
    codec.payload_type: codec
    for codec in (
        PCMU,
        Codec(3, "GSM"),
        Codec(4, "G723"),
        PCMA,
        Codec(9, "G722"),
        Codec(13, "CN"),
        Codec(18, "G729"),
    )
}

DIRECTIONS = ("sendrecv", "sendonly", "recvonly", "inactive")
RTCP_MUX = "rtcp-mux"

_NUMBER_RE = re.compile(r"[0-9]{1,20}")
_PORT_RE = re.compile(r"([0-9]{1,5})(?:/[0-9]{1,5})?")
_PT_RE = re.compile(r"[0-9]{1,3}")
_RTPMAP_RE = re.compile(r"([0-9]{1,3})[ \t]+([^/ \t]+)/([0-9]{1,9})(?:/([0-9]{1,2}))?[ \t]*")
_FMTP_RE = re.compile(r"([0-9]{1,3})[ \t]+(.+)")
_PTIME_RE = re.compile(r"[0-9]{1,5}")
_TOKEN_RE = re.compile(r"[A-Za-z0-9\-.!%*_+`'~/]+")


@dataclass(frozen=True)
class MediaDescription:
    """One m= section. `codecs` holds one entry per RTP payload type in `formats`.

    `other_formats` keeps non-RTP format tokens (`t38` on `m=image ... udptl t38`) so a stream
    we reject is echoed back intact; it is empty for RTP media.
    """

    media: str
    port: int
    proto: str
    formats: tuple[int, ...]
    codecs: tuple[Codec, ...]
    direction: str = "sendrecv"
    connection: str | None = None
    ptime: int | None = None
    attributes: tuple[tuple[str, str | None], ...] = ()
    other_formats: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if tuple(codec.payload_type for codec in self.codecs) != self.formats:
            raise ValueError(f"codecs {self.codecs} do not match formats {self.formats}")
        if self.direction not in DIRECTIONS:
            raise ValueError(f"direction {self.direction!r} is not one of {DIRECTIONS}")

    @property
    def telephone_event(self) -> Codec | None:
        return next((codec for codec in self.codecs if codec.is_telephone_event), None)

    @property
    def rtcp_mux(self) -> bool:
        """`a=rtcp-mux` (RFC 5761): RTCP on the RTP port."""
        return any(name.lower() == RTCP_MUX for name, _ in self.attributes)


@dataclass(frozen=True)
class SessionDescription:
    origin_user: str
    session_id: int
    session_version: int
    origin_address: str
    session_name: str
    connection: str | None
    media: tuple[MediaDescription, ...]
    direction: str | None = None

    @classmethod
    def parse(cls, data: bytes | str) -> SessionDescription:
        """Parse SDP; LF-only line ends and unknown lines are tolerated, broken v/o/c/m are not."""
        if isinstance(data, bytes):
            try:
                data = data.decode("utf-8")
            except UnicodeDecodeError as error:
                raise SdpError(f"SDP is not UTF-8 (byte {error.start})") from None
        return _Parser().run(data)

    def to_bytes(self) -> bytes:
        """Wire form with CRLF line ends, in v o s c t a m order."""
        lines = [
            "v=0",
            f"o={self.origin_user} {self.session_id} {self.session_version} IN "
            f"{_addrtype(self.origin_address)} {self.origin_address}",
            f"s={self.session_name or '-'}",
        ]
        if self.connection is not None:
            lines.append(_connection_line(self.connection))
        lines.append("t=0 0")
        if self.direction is not None:
            lines.append(f"a={self.direction}")
        for media in self.media:
            lines.extend(_media_lines(media))
        return ("\r\n".join(lines) + "\r\n").encode("utf-8")

    @property
    def audio(self) -> MediaDescription | None:
        """The first audio stream that is not disabled (port 0)."""
        return next((m for m in self.media if m.media == "audio" and m.port != 0), None)


def _addrtype(address: str) -> str:
    return "IP6" if ":" in address else "IP4"


def _connection_line(address: str) -> str:
    return f"c=IN {_addrtype(address)} {address}"


def _media_lines(media: MediaDescription) -> list[str]:
    formats = " ".join([*(str(pt) for pt in media.formats), *media.other_formats])
    lines = [f"m={media.media} {media.port} {media.proto} {formats}".rstrip()]
    if media.connection is not None:
        lines.append(_connection_line(media.connection))
    for codec in media.codecs:
        if codec.name:
            lines.append(f"a=rtpmap:{codec.payload_type} {codec}")
        if codec.fmtp is not None:
            lines.append(f"a=fmtp:{codec.payload_type} {codec.fmtp}")
    if media.ptime is not None:
        lines.append(f"a=ptime:{media.ptime}")
    lines.append(f"a={media.direction}")
    lines.extend(f"a={n}" if v is None else f"a={n}:{v}" for n, v in media.attributes)
    return lines


@dataclass
class _MediaBuilder:
    media: str
    port: int
    proto: str
    formats: list[int]
    other_formats: list[str]
    direction: str | None = None
    connection: str | None = None
    ptime: int | None = None
    rtpmaps: dict[int, Codec] = field(default_factory=dict)
    fmtps: dict[int, str] = field(default_factory=dict)
    attributes: list[tuple[str, str | None]] = field(default_factory=list)

    def attribute(self, name: str, value: str | None) -> None:
        if value is None and name in DIRECTIONS:
            self.direction = name
        elif value is None or not self._absorb(name, value):
            self.attributes.append((name, value))

    def _absorb(self, name: str, value: str) -> bool:
        """Take in rtpmap, fmtp and ptime; False keeps a malformed one as a plain attribute."""
        if name == "rtpmap":
            return self._rtpmap(value)
        if name == "fmtp":
            return self._fmtp(value)
        if name == "ptime" and _PTIME_RE.fullmatch(value.strip()):
            self.ptime = int(value.strip())
            return True
        return False

    def _rtpmap(self, value: str) -> bool:
        match = _RTPMAP_RE.fullmatch(value)
        if match is None or int(match.group(1)) not in self.formats:
            return False
        pt, name, rate, channels = match.groups()
        self.rtpmaps[int(pt)] = Codec(int(pt), name, int(rate), int(channels or 1))
        return True

    def _fmtp(self, value: str) -> bool:
        match = _FMTP_RE.fullmatch(value)
        if match is None or int(match.group(1)) not in self.formats:
            return False
        self.fmtps[int(match.group(1))] = match.group(2).strip()
        return True

    def build(self, session_direction: str | None) -> MediaDescription:
        codecs = []
        for pt in self.formats:
            codec = self.rtpmaps.get(pt) or STATIC_PAYLOAD_TYPES.get(pt) or Codec(pt, "")
            fmtp = self.fmtps.get(pt)
            codecs.append(Codec(pt, codec.name, codec.clock_rate, codec.channels, fmtp))
        return MediaDescription(
            media=self.media,
            port=self.port,
            proto=self.proto,
            formats=tuple(self.formats),
            codecs=tuple(codecs),
            direction=self.direction or session_direction or "sendrecv",
            connection=self.connection,
            ptime=self.ptime,
            attributes=tuple(self.attributes),
            other_formats=tuple(self.other_formats),
        )


class _Parser:
    def __init__(self) -> None:
        self.origin: tuple[str, int, int, str] | None = None
        self.session_name = "-"
        self.connection: str | None = None
        self.direction: str | None = None
        self.media: list[_MediaBuilder] = []

    def run(self, text: str) -> SessionDescription:
        lines = [line.removesuffix("\r") for line in text.split("\n")]
        lines = [line for line in lines if line.strip()]
        if not lines or lines[0].strip() != "v=0":
            raise SdpError("SDP must start with 'v=0'")
        for number, line in enumerate(lines[1:], start=2):
            if len(line) < 2 or line[1] != "=":
                raise SdpError(f"SDP line {number} is not '<type>=<value>': {line[:60]!r}")
            self.line(line[0], line[2:])
        if self.origin is None:
            raise SdpError("SDP has no o= line")
        user, session_id, version, address = self.origin
        return SessionDescription(
            origin_user=user,
            session_id=session_id,
            session_version=version,
            origin_address=address,
            session_name=self.session_name,
            connection=self.connection,
            media=tuple(builder.build(self.direction) for builder in self.media),
            direction=self.direction,
        )

    def line(self, kind: str, value: str) -> None:
        if kind == "v":
            raise SdpError("second v= line")
        if kind == "o":
            self.origin = _parse_origin(value)
        elif kind == "s" and not self.media:
            self.session_name = value if value.strip() else "-"  # "s= " means no name
        elif kind == "c":
            address = _parse_connection(value)
            if self.media:
                self.media[-1].connection = address
            else:
                self.connection = address
        elif kind == "m":
            self.media.append(_parse_media(value))
        elif kind == "a":
            name, colon, attr_value = value.partition(":")
            if self.media:
                self.media[-1].attribute(name, attr_value if colon else None)
            elif name in DIRECTIONS and not colon:
                self.direction = name


def _parse_origin(value: str) -> tuple[str, int, int, str]:
    fields = value.split()
    if len(fields) != 6:
        raise SdpError(f"o= line {value!r} must have 6 fields")
    user, session_id, version, nettype, addrtype, address = fields
    if not (_NUMBER_RE.fullmatch(session_id) and _NUMBER_RE.fullmatch(version)):
        raise SdpError(f"o= line {value!r}: session id and version must be numbers")
    if nettype != "IN" or addrtype not in ("IP4", "IP6"):
        raise SdpError(f"o= line {value!r}: network must be 'IN IP4' or 'IN IP6'")
    return user, int(session_id), int(version), address


def _parse_connection(value: str) -> str:
    fields = value.split()
    if len(fields) != 3 or fields[0] != "IN" or fields[1] not in ("IP4", "IP6"):
        raise SdpError(f"c= line {value!r} is not 'IN IP4|IP6 <address>'")
    address = fields[2].split("/")[0]
    if not address:
        raise SdpError(f"c= line {value!r} has an empty address")
    return address


def _parse_media(value: str) -> _MediaBuilder:
    fields = value.split()
    if len(fields) < 3:
        raise SdpError(f"m= line {value!r} must be '<media> <port> <proto> <formats>'")
    media, port_text, proto, *format_texts = fields
    port = _PORT_RE.fullmatch(port_text)
    if port is None or int(port.group(1)) > 65535:
        raise SdpError(f"m= line {value!r}: port {port_text!r} is not 0 to 65535")
    if not (_TOKEN_RE.fullmatch(media) and _TOKEN_RE.fullmatch(proto)):
        raise SdpError(f"m= line {value!r}: media and proto must be tokens")
    formats: list[int] = []
    others: list[str] = []
    for text in format_texts:
        if _PT_RE.fullmatch(text) and int(text) <= 127:
            formats.append(int(text))
        elif "RTP" in proto.upper():
            raise SdpError(f"m= line {value!r}: RTP format {text!r} is not a payload type 0-127")
        else:
            others.append(text)
    if len(set(formats)) != len(formats):
        raise SdpError(f"m= line {value!r} lists a payload type twice")
    return _MediaBuilder(media, int(port.group(1)), proto, formats, others)


def _new_session_id() -> int:
    return secrets.randbelow(2**62) + 1


def build_offer(
    address: str,
    port: int,
    *,
    codecs: Sequence[Codec] = (PCMU, PCMA),
    telephone_event: bool = True,
    session_id: int | None = None,
    version: int = 1,
    direction: str = "sendrecv",
    ptime: int = 20,
    rtcp_mux: bool = False,
) -> SessionDescription:
    """An offer for one audio stream: `codecs` in preference order, then telephone-event;
    `rtcp_mux` adds `a=rtcp-mux` (RFC 5761)."""
    if direction not in DIRECTIONS:
        raise ValueError(f"direction {direction!r} is not one of {DIRECTIONS}")
    if not codecs:
        raise ValueError("an offer needs at least one codec")
    offered = [*codecs, TELEPHONE_EVENT] if telephone_event else list(codecs)
    formats = tuple(codec.payload_type for codec in offered)
    if len(set(formats)) != len(formats):
        raise ValueError(f"payload types {formats} repeat one (telephone-event is 101)")
    audio = MediaDescription(
        media="audio",
        port=port,
        proto="RTP/AVP",
        formats=formats,
        codecs=tuple(offered),
        direction=direction,
        ptime=ptime,
        attributes=((RTCP_MUX, None),) if rtcp_mux else (),
    )
    return SessionDescription(
        origin_user="-",
        session_id=_new_session_id() if session_id is None else session_id,
        session_version=version,
        origin_address=address,
        session_name="warmtransfer",
        connection=address,
        media=(audio,),
    )


@dataclass(frozen=True)
class NegotiatedMedia:
    """What offer/answer settled for the audio stream, from our point of view."""

    remote_address: str
    remote_port: int
    codec: Codec
    dtmf_payload_type: int | None
    local_direction: str
    remote_direction: str
    rtcp_mux: bool = False  # both sides said a=rtcp-mux: RTCP goes to the RTP port (RFC 5761)

    @property
    def on_hold(self) -> bool:
        """The peer holds us: it will not send (sendonly/inactive) or used c=0.0.0.0."""
        return self.remote_direction in ("sendonly", "inactive") or self.remote_address == "0.0.0.0"


def _describe(media: MediaDescription) -> str:
    codecs = ", ".join(
        f"{codec if codec.name else '?'} (PT {codec.payload_type})" for codec in media.codecs
    )
    return f"m={media.media} port {media.port} {media.proto} [{codecs or 'no formats'}]"


def _remote_address(session: SessionDescription, media: MediaDescription) -> str:
    address = media.connection or session.connection
    if address is None:
        raise SdpError(f"no c= line for {_describe(media)} (RFC 4566 5.7)")
    return address


def _pick_dtmf(media: MediaDescription, codec: Codec) -> Codec | None:
    events = [c for c in media.codecs if c.is_telephone_event]
    same_rate = [c for c in events if c.clock_rate == codec.clock_rate]
    if same_rate:
        return same_rate[0]
    return events[0] if events else None


def _choose(offered: MediaDescription, supported: Sequence[Codec]) -> Codec | None:
    for codec in offered.codecs:
        if codec.is_telephone_event:
            continue
        ours = next((s for s in supported if s.same_format(codec)), None)
        if ours is not None:
            return Codec(codec.payload_type, ours.name, ours.clock_rate, ours.channels, codec.fmtp)
    return None


def _rejected(media: MediaDescription) -> MediaDescription:
    return MediaDescription(
        media=media.media,
        port=0,
        proto=media.proto,
        formats=media.formats,
        codecs=media.codecs,
        direction="inactive",
        other_formats=media.other_formats,
    )


def build_answer(
    offer: SessionDescription,
    address: str,
    port: int,
    *,
    supported: Sequence[Codec] = (PCMU, PCMA),
    session_id: int | None = None,
    version: int = 1,
    direction: str = "sendrecv",
) -> tuple[SessionDescription, NegotiatedMedia]:
    """Answer an offer (RFC 3264 6): accept the first audio stream we can serve, reject the rest.

    The codec is the first in the offer's order that we support, under the offer's payload type;
    telephone-event is accepted under the offer's payload type when offered. `direction` is
    what we want (sendonly while we hold the peer): the answer's direction allows only what both
    the offer and we allow. `a=rtcp-mux` is answered when, and only when, it was offered.
    """
    if direction not in DIRECTIONS:
        raise ValueError(f"direction {direction!r} is not one of {DIRECTIONS}")
    audio = [m for m in offer.media if m.media == "audio"]
    if not audio:
        kinds = ", ".join(m.media for m in offer.media) or "none"
        raise SdpNegotiationError(f"offer has no audio stream (m-lines: {kinds})")
    active = [m for m in audio if m.port != 0]
    if not active:
        raise SdpNegotiationError("every audio stream in the offer is disabled (port 0)")
    chosen: tuple[MediaDescription, Codec] | None = None
    for media in active:
        codec = _choose(media, supported) if media.proto.upper() == "RTP/AVP" else None
        if codec is not None:
            chosen = (media, codec)
            break
    if chosen is None:
        offered = "; ".join(_describe(m) for m in active)
        ours = ", ".join(str(c) for c in supported)
        raise SdpNegotiationError(
            f"no common audio codec over RTP/AVP: offer has {offered}; we support {ours}"
        )
    offered_media, codec = chosen
    dtmf = _pick_dtmf(offered_media, codec)
    answer_codecs = (codec, dtmf) if dtmf is not None else (codec,)
    answer_direction = _combine(direction, offered_media.direction)
    rtcp_mux = offered_media.rtcp_mux
    accepted = MediaDescription(
        media="audio",
        port=port,
        proto=offered_media.proto,
        formats=tuple(c.payload_type for c in answer_codecs),
        codecs=answer_codecs,
        direction=answer_direction,
        ptime=20,
        attributes=((RTCP_MUX, None),) if rtcp_mux else (),
    )
    answer = SessionDescription(
        origin_user="-",
        session_id=_new_session_id() if session_id is None else session_id,
        session_version=version,
        origin_address=address,
        session_name="warmtransfer",
        connection=address,
        media=tuple(accepted if m is offered_media else _rejected(m) for m in offer.media),
    )
    negotiated = NegotiatedMedia(
        remote_address=_remote_address(offer, offered_media),
        remote_port=offered_media.port,
        codec=codec,
        dtmf_payload_type=dtmf.payload_type if dtmf is not None else None,
        local_direction=answer_direction,
        remote_direction=offered_media.direction,
        rtcp_mux=rtcp_mux,
    )
    return answer, negotiated


def _combine(ours: str, theirs: str) -> str:
    """Our effective direction given what we want (or offered) and what the peer said."""
    send = ours in ("sendrecv", "sendonly") and theirs in ("sendrecv", "recvonly")
    receive = ours in ("sendrecv", "recvonly") and theirs in ("sendrecv", "sendonly")
    return {(True, True): "sendrecv", (True, False): "sendonly", (False, True): "recvonly"}.get(
        (send, receive), "inactive"
    )


def parse_answer(offer: SessionDescription, answer: SessionDescription) -> NegotiatedMedia:
    """Read the answer to our offer; the answer must accept our audio with a codec we offered."""
    ours = offer.audio
    if ours is None:
        raise SdpNegotiationError("our offer has no active audio stream")
    index = offer.media.index(ours)
    if len(answer.media) <= index:
        raise SdpNegotiationError(
            f"answer has {len(answer.media)} m-lines, the offer had {len(offer.media)}"
        )
    theirs = answer.media[index]
    if theirs.media != "audio" or theirs.port == 0:
        raise SdpNegotiationError(f"answer rejected our audio stream: {_describe(theirs)}")
    codec = None
    for candidate in theirs.codecs:
        offered = next((c for c in ours.codecs if c.same_format(candidate)), None)
        if offered is not None and not offered.is_telephone_event:
            codec = Codec(
                candidate.payload_type,
                offered.name,
                offered.clock_rate,
                offered.channels,
                candidate.fmtp,
            )
            break
    if codec is None:
        raise SdpNegotiationError(
            f"answer picked no codec we offered: answer has {_describe(theirs)}, "
            f"we offered {_describe(ours)}"
        )
    dtmf = _pick_dtmf(theirs, codec) if ours.telephone_event is not None else None
    return NegotiatedMedia(
        remote_address=_remote_address(answer, theirs),
        remote_port=theirs.port,
        codec=codec,
        dtmf_payload_type=dtmf.payload_type if dtmf is not None else None,
        local_direction=_combine(ours.direction, theirs.direction),
        remote_direction=theirs.direction,
        rtcp_mux=ours.rtcp_mux and theirs.rtcp_mux,
    )


def with_rtcp_mux(description: SessionDescription) -> SessionDescription:
    """`description` with `a=rtcp-mux` on its active audio stream (unchanged if it has it)."""
    audio = description.audio
    if audio is None or audio.rtcp_mux:
        return description
    muxed = replace(audio, attributes=(*audio.attributes, (RTCP_MUX, None)))
    return replace(description, media=tuple(muxed if m is audio else m for m in description.media))


def build_reoffer(
    previous: SessionDescription, negotiated: NegotiatedMedia, *, direction: str
) -> SessionDescription:
    """A new offer in a call that is up (a hold or a resume), from our last SDP `previous`.

    The audio stream keeps its port, connection and attributes (`a=rtcp-mux` must stay once
    agreed, RFC 5761 5.1.3) but lists only the codec and telephone-event already agreed: the
    peer then cannot switch codec in its answer, which would break payload forwarding in a
    bridge. Other m-lines are kept as they were (RFC 3264 8: never fewer m-lines). The o= line
    is `previous`'s; pass the result through `next_version`.
    """
    if direction not in DIRECTIONS:
        raise ValueError(f"direction {direction!r} is not one of {DIRECTIONS}")
    audio = previous.audio
    if audio is None:
        raise SdpNegotiationError("our last SDP has no active audio stream to re-offer")
    codec = negotiated.codec
    codecs = [codec]
    dtmf = negotiated.dtmf_payload_type
    if dtmf is not None and dtmf != codec.payload_type:
        known = next((c for c in audio.codecs if c.payload_type == dtmf), None)
        fmtp = known.fmtp if known is not None and known.is_telephone_event else "0-16"
        codecs.append(Codec(dtmf, "telephone-event", codec.clock_rate, fmtp=fmtp))
    offered = replace(
        audio,
        formats=tuple(c.payload_type for c in codecs),
        codecs=tuple(codecs),
        direction=direction,
        ptime=audio.ptime or 20,
    )
    return replace(
        previous,
        direction=None,
        media=tuple(offered if m is audio else m for m in previous.media),
    )


def next_version(previous: SessionDescription, new: SessionDescription) -> SessionDescription:
    """`new` as the next SDP of the session `previous` began (RFC 3264 8): the o= line of
    `previous`, with the version one higher if anything else differs, else unchanged (an
    unchanged version promises an identical SDP)."""
    same = replace(
        new,
        origin_user=previous.origin_user,
        session_id=previous.session_id,
        session_version=previous.session_version,
        origin_address=previous.origin_address,
    )
    if same.to_bytes() == previous.to_bytes():
        return same
    return replace(same, session_version=previous.session_version + 1)

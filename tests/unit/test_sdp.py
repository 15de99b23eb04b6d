"""SDP parsing (RFC 4566) and offer/answer for G.711 audio (RFC 3264)."""

from __future__ import annotations

import contextlib
import dataclasses

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from warmtransfer.sip.sdp import (
    PCMA,
    PCMU,
    TELEPHONE_EVENT,
    Codec,
    MediaDescription,
    NegotiatedMedia,
    SdpError,
    SdpNegotiationError,
    SessionDescription,
    build_answer,
    build_offer,
    parse_answer,
)


def sdp(*lines: str) -> bytes:
    return ("\r\n".join(lines) + "\r\n").encode()


# An offer shaped like baresip 1.0's (opus first, then G.722 and G.711, RFC 4733 events).
BARESIP_OFFER = sdp(
    "v=0",
    "o=- 1431276815 3215093584 IN IP4 127.0.0.1",
    "s=-",
    "c=IN IP4 127.0.0.1",
    "t=0 0",
    "a=tool:baresip 1.0.0",
    "m=audio 10062 RTP/AVP 96 9 0 8 101",
    "b=AS:102",
    "a=rtpmap:96 opus/48000/2",
    "a=fmtp:96 stereo=1;sprop-stereo=1",
    "a=rtpmap:9 G722/8000",
    "a=rtpmap:0 PCMU/8000",
    "a=rtpmap:8 PCMA/8000",
    "a=rtpmap:101 telephone-event/8000",
    "a=fmtp:101 0-15",
    "a=sendrecv",
    "a=label:1",
    "a=ssrc:3097581421 cname:b5b8a8a1-5f3a-4d6b",
    "a=rtcp-rsize",
)

# sipp's built-in uac scenario: PCMU only, no rtpmap for telephone-event, LF-free CRLF text.
SIPP_OFFER = sdp(
    "v=0",
    "o=user1 53655765 2353687637 IN IP4 127.0.0.1",
    "s=-",
    "c=IN IP4 127.0.0.1",
    "t=0 0",
    "m=audio 6000 RTP/AVP 0",
    "a=rtpmap:0 PCMU/8000",
)


def offer_with(*media_lines: str, connection: str = "192.0.2.7") -> SessionDescription:
    return SessionDescription.parse(
        sdp(
            "v=0",
            "o=- 1 1 IN IP4 192.0.2.7",
            "s=-",
            f"c=IN IP4 {connection}",
            "t=0 0",
            *media_lines,
        )
    )


# ---------------------------------------------------------------------------------------------
# Parsing


def test_parse_baresip_offer() -> None:
    offer = SessionDescription.parse(BARESIP_OFFER)
    assert (offer.origin_user, offer.session_id, offer.session_version) == (
        "-",
        1431276815,
        3215093584,
    )
    assert offer.origin_address == "127.0.0.1"
    assert offer.connection == "127.0.0.1"
    assert offer.direction is None
    audio = offer.audio
    assert audio is not None
    assert (audio.media, audio.port, audio.proto) == ("audio", 10062, "RTP/AVP")
    assert audio.formats == (96, 9, 0, 8, 101)
    assert audio.codecs == (
        Codec(96, "opus", 48000, 2, "stereo=1;sprop-stereo=1"),
        Codec(9, "G722"),
        Codec(0, "PCMU"),
        Codec(8, "PCMA"),
        Codec(101, "telephone-event", fmtp="0-15"),
    )
    assert audio.direction == "sendrecv"
    assert audio.connection is None
    assert audio.attributes == (
        ("label", "1"),
        ("ssrc", "3097581421 cname:b5b8a8a1-5f3a-4d6b"),
        ("rtcp-rsize", None),
    )
    assert audio.telephone_event == Codec(101, "telephone-event", fmtp="0-15")


def test_parse_sipp_offer() -> None:
    offer = SessionDescription.parse(SIPP_OFFER)
    assert offer.origin_user == "user1"
    audio = offer.audio
    assert audio is not None
    assert audio.port == 6000
    assert audio.codecs == (PCMU,)
    assert audio.telephone_event is None
    assert audio.ptime is None


def test_static_payload_types_without_rtpmap_and_unknown_dynamic() -> None:
    offer = offer_with("m=audio 4000 RTP/AVP 18 3 8 97", "a=ptime:30")
    audio = offer.audio
    assert audio is not None
    assert [c.name for c in audio.codecs] == ["G729", "GSM", "PCMA", ""]
    assert audio.ptime == 30


def test_lf_only_text_input_and_unknown_lines() -> None:
    text = "\n".join(
        [
            "v=0",
            "o=alice 2890844526 2890844526 IN IP4 host.example.com",
            "s=Session",
            "i=info line",
            "u=http://example.com",
            "c=IN IP4 224.2.17.12/127",
            "t=2873397496 2873404696",
            "b=AS:64",
            "x=unknown type",
            "a=recvonly",
            "m=audio 49170/2 RTP/AVP 0",
            "i=media title",
            "a=custom-flag",
            "a=rtpmap:broken",
            "",
            "",
        ]
    )
    offer = SessionDescription.parse(text)
    assert offer.session_name == "Session"
    assert offer.connection == "224.2.17.12"
    assert offer.direction == "recvonly"
    audio = offer.media[0]
    assert audio.port == 49170
    assert audio.direction == "recvonly"  # session-level direction applies
    assert audio.attributes == (("custom-flag", None), ("rtpmap", "broken"))


def test_empty_session_name_reads_as_dash() -> None:
    offer = SessionDescription.parse(sdp("v=0", "o=- 1 1 IN IP4 h", "s= ", "t=0 0"))
    assert offer.session_name == "-"
    assert offer.media == ()
    assert offer.audio is None
    assert SessionDescription.parse(offer.to_bytes()) == offer


def test_media_level_connection_and_direction_override() -> None:
    offer = offer_with(
        "a=sendonly",
        "m=audio 4000 RTP/AVP 0",
        "c=IN IP4 192.0.2.99",
        "a=inactive",
    )
    assert offer.media[0].connection == "192.0.2.99"
    assert offer.media[0].direction == "inactive"


def test_ipv6_connection_round_trip() -> None:
    offer = build_offer("2001:db8::5", 7000, session_id=5)
    data = offer.to_bytes()
    assert b"c=IN IP6 2001:db8::5\r\n" in data
    assert b"o=- 5 1 IN IP6 2001:db8::5\r\n" in data
    assert SessionDescription.parse(data) == offer


def test_non_rtp_formats_are_kept() -> None:
    offer = offer_with("m=audio 4000 RTP/AVP 0", "m=image 4002 udptl t38", "a=T38FaxVersion:0")
    image = offer.media[1]
    assert image.formats == ()
    assert image.other_formats == ("t38",)
    assert image.attributes == (("T38FaxVersion", "0"),)
    assert b"m=image 4002 udptl t38\r\n" in offer.to_bytes()


@pytest.mark.parametrize(
    ("data", "problem"),
    [
        (b"", "v=0"),
        (b"o=- 1 1 IN IP4 h\r\n", "v=0"),
        (b"v=1\r\no=- 1 1 IN IP4 h\r\n", "v=0"),
        (b"v=0\r\ns=-\r\n", "no o= line"),
        (b"v=0\r\no=- 1 1 IN IP4\r\n", "6 fields"),
        (b"v=0\r\no=- one 1 IN IP4 h\r\n", "numbers"),
        (b"v=0\r\no=- 1 1 ATM NSAP h\r\n", "IN IP4"),
        (b"v=0\r\no=- 1 1 IN IP4 h\r\nc=IN IP4\r\n", "c= line"),
        (b"v=0\r\no=- 1 1 IN IP4 h\r\nc=IN IPX h\r\n", "c= line"),
        (b"v=0\r\no=- 1 1 IN IP4 h\r\nm=audio 4000\r\n", "m= line"),
        (b"v=0\r\no=- 1 1 IN IP4 h\r\nm=audio port RTP/AVP 0\r\n", "port"),
        (b"v=0\r\no=- 1 1 IN IP4 h\r\nm=audio 70000 RTP/AVP 0\r\n", "port"),
        (b"v=0\r\no=- 1 1 IN IP4 h\r\nm=audio 4000 RTP/AVP 0 PCMU\r\n", "payload type"),
        (b"v=0\r\no=- 1 1 IN IP4 h\r\nm=audio 4000 RTP/AVP 128\r\n", "payload type"),
        (b"v=0\r\no=- 1 1 IN IP4 h\r\nm=audio 4000 RTP/AVP 0 0\r\n", "twice"),
        (b"v=0\r\no=- 1 1 IN IP4 h\r\nthis is not sdp\r\n", "line 3"),
        (b"v=0\r\no=- 1 1 IN IP4 h\r\nv=0\r\n", "second v="),
        (b"v=0\r\no=- 1 1 IN IP4 \xff\r\n", "UTF-8"),
    ],
)
def test_broken_sdp(data: bytes, problem: str) -> None:
    with pytest.raises(SdpError, match=problem):
        SessionDescription.parse(data)


def test_media_description_checks_codecs_match_formats() -> None:
    with pytest.raises(ValueError, match="do not match"):
        MediaDescription("audio", 4000, "RTP/AVP", (0, 8), (PCMU,))
    with pytest.raises(ValueError, match="direction"):
        MediaDescription("audio", 4000, "RTP/AVP", (0,), (PCMU,), direction="both")


# ---------------------------------------------------------------------------------------------
# Offers


def test_build_offer_and_serialise() -> None:
    offer = build_offer("192.0.2.1", 40000, session_id=42, version=3)
    assert offer.to_bytes().decode() == "\r\n".join(
        [
            "v=0",
            "o=- 42 3 IN IP4 192.0.2.1",
            "s=warmtransfer",
            "c=IN IP4 192.0.2.1",
            "t=0 0",
            "m=audio 40000 RTP/AVP 0 8 101",
            "a=rtpmap:0 PCMU/8000",
            "a=rtpmap:8 PCMA/8000",
            "a=rtpmap:101 telephone-event/8000",
            "a=fmtp:101 0-16",
            "a=ptime:20",
            "a=sendrecv",
            "",
        ]
    )
    assert SessionDescription.parse(offer.to_bytes()) == offer


def test_build_offer_options() -> None:
    offer = build_offer(
        "192.0.2.1", 40000, codecs=(PCMA,), telephone_event=False, direction="sendonly", ptime=30
    )
    audio = offer.audio
    assert audio is not None
    assert audio.formats == (8,)
    assert audio.direction == "sendonly"
    assert audio.ptime == 30
    assert offer.session_id > 0
    assert build_offer("h", 1).session_id != build_offer("h", 1).session_id
    with pytest.raises(ValueError, match="direction"):
        build_offer("h", 1, direction="hold")
    with pytest.raises(ValueError, match="repeat"):
        build_offer("h", 1, codecs=(Codec(101, "PCMU"),))
    with pytest.raises(ValueError, match="at least one codec"):
        build_offer("h", 1, codecs=())


# ---------------------------------------------------------------------------------------------
# Answers (we are the answerer)


def test_answer_baresip_offer_picks_first_supported_in_offer_order() -> None:
    offer = SessionDescription.parse(BARESIP_OFFER)
    answer, media = build_answer(offer, "192.0.2.1", 30000, session_id=7)
    assert media == NegotiatedMedia(
        remote_address="127.0.0.1",
        remote_port=10062,
        codec=PCMU,
        dtmf_payload_type=101,
        local_direction="sendrecv",
        remote_direction="sendrecv",
    )
    assert not media.on_hold
    audio = answer.audio
    assert audio is not None
    assert audio.port == 30000
    assert audio.formats == (0, 101)
    assert audio.codecs[1] == Codec(101, "telephone-event", fmtp="0-15")
    assert answer.connection == "192.0.2.1"
    assert answer.session_id == 7
    assert SessionDescription.parse(answer.to_bytes()) == answer


def test_answer_follows_the_offer_order_not_ours() -> None:
    offer = offer_with("m=audio 4000 RTP/AVP 8 0", "a=rtpmap:8 PCMA/8000", "a=rtpmap:0 PCMU/8000")
    _, media = build_answer(offer, "192.0.2.1", 30000, supported=(PCMU, PCMA))
    assert media.codec == PCMA
    assert media.dtmf_payload_type is None


def test_answer_pcma_only_offer() -> None:
    offer = offer_with("m=audio 4000 RTP/AVP 8")
    answer, media = build_answer(offer, "192.0.2.1", 30000)
    assert media.codec == PCMA
    assert answer.media[0].formats == (8,)


def test_answer_keeps_the_offers_payload_types() -> None:
    offer = offer_with(
        "m=audio 4000 RTP/AVP 112 96",
        "a=rtpmap:112 pcmu/8000",
        "a=rtpmap:96 telephone-event/8000",
        "a=fmtp:96 0-15",
    )
    answer, media = build_answer(offer, "192.0.2.1", 30000)
    assert media.codec == Codec(112, "PCMU")
    assert media.dtmf_payload_type == 96
    assert answer.media[0].formats == (112, 96)
    assert b"a=rtpmap:96 telephone-event/8000\r\na=fmtp:96 0-15\r\n" in answer.to_bytes()


def test_answer_prefers_telephone_event_at_the_codec_rate() -> None:
    offer = offer_with(
        "m=audio 4000 RTP/AVP 0 100 101",
        "a=rtpmap:100 telephone-event/48000",
        "a=rtpmap:101 telephone-event/8000",
    )
    _, media = build_answer(offer, "192.0.2.1", 30000)
    assert media.dtmf_payload_type == 101


def test_no_common_codec_names_what_was_offered() -> None:
    offer = offer_with("m=audio 4000 RTP/AVP 18 3", "a=rtpmap:18 G729/8000")
    with pytest.raises(SdpNegotiationError) as caught:
        build_answer(offer, "192.0.2.1", 30000)
    message = str(caught.value)
    assert "G729/8000 (PT 18)" in message
    assert "GSM/8000 (PT 3)" in message
    assert "PCMU/8000, PCMA/8000" in message


def test_codec_must_match_rate_not_only_name() -> None:
    offer = offer_with("m=audio 4000 RTP/AVP 96", "a=rtpmap:96 PCMU/16000")
    with pytest.raises(SdpNegotiationError, match="no common audio codec"):
        build_answer(offer, "192.0.2.1", 30000)


def test_srtp_only_offer_is_not_accepted() -> None:
    offer = offer_with("m=audio 4000 RTP/SAVP 0", "a=crypto:1 AES_CM_128_HMAC_SHA1_80 inline:x")
    with pytest.raises(SdpNegotiationError, match="RTP/AVP"):
        build_answer(offer, "192.0.2.1", 30000)


def test_no_audio_stream() -> None:
    offer = offer_with("m=video 5000 RTP/AVP 31")
    with pytest.raises(SdpNegotiationError, match=r"no audio stream.*video"):
        build_answer(offer, "192.0.2.1", 30000)
    with pytest.raises(SdpNegotiationError, match=r"no audio stream.*none"):
        build_answer(offer_with(), "192.0.2.1", 30000)


def test_audio_disabled_everywhere() -> None:
    offer = offer_with("m=audio 0 RTP/AVP 0", "m=audio 0 RTP/AVP 8")
    assert offer.audio is None
    with pytest.raises(SdpNegotiationError, match="port 0"):
        build_answer(offer, "192.0.2.1", 30000)


def test_answer_has_one_m_line_per_offered_and_rejects_the_rest() -> None:
    offer = offer_with(
        "m=video 5000 RTP/AVP 31",
        "m=audio 0 RTP/AVP 0",
        "m=audio 4000 RTP/AVP 0",
        "m=image 6000 udptl t38",
    )
    answer, media = build_answer(offer, "192.0.2.1", 30000)
    assert [(m.media, m.port) for m in answer.media] == [
        ("video", 0),
        ("audio", 0),
        ("audio", 30000),
        ("image", 0),
    ]
    assert media.remote_port == 4000
    assert b"m=image 0 udptl t38\r\n" in answer.to_bytes()


@pytest.mark.parametrize(
    ("offered", "answered", "on_hold"),
    [
        ("sendrecv", "sendrecv", False),
        ("sendonly", "recvonly", True),
        ("recvonly", "sendonly", False),
        ("inactive", "inactive", True),
    ],
)
def test_answer_directions(offered: str, answered: str, on_hold: bool) -> None:
    offer = offer_with("m=audio 4000 RTP/AVP 0", f"a={offered}")
    answer, media = build_answer(offer, "192.0.2.1", 30000)
    assert answer.media[0].direction == answered
    assert media.local_direction == answered
    assert media.remote_direction == offered
    assert media.on_hold is on_hold


def test_session_level_hold_direction() -> None:
    offer = offer_with("a=sendonly", "m=audio 4000 RTP/AVP 0")
    answer, media = build_answer(offer, "192.0.2.1", 30000)
    assert media.on_hold
    assert answer.media[0].direction == "recvonly"


def test_connection_zero_means_hold() -> None:
    offer = offer_with("m=audio 4000 RTP/AVP 0", connection="0.0.0.0")
    _, media = build_answer(offer, "192.0.2.1", 30000)
    assert media.remote_address == "0.0.0.0"
    assert media.remote_direction == "sendrecv"
    assert media.on_hold


def test_offer_without_any_connection_is_an_sdp_error() -> None:
    offer = SessionDescription.parse(
        sdp("v=0", "o=- 1 1 IN IP4 h", "s=-", "t=0 0", "m=audio 4000 RTP/AVP 0")
    )
    with pytest.raises(SdpError, match="no c= line"):
        build_answer(offer, "192.0.2.1", 30000)


# ---------------------------------------------------------------------------------------------
# Reading the answer to our offer


def our_offer(direction: str = "sendrecv") -> SessionDescription:
    return build_offer("192.0.2.1", 40000, session_id=1, direction=direction)


def test_parse_answer_from_sipp() -> None:
    media = parse_answer(our_offer(), SessionDescription.parse(SIPP_OFFER))
    assert media == NegotiatedMedia("127.0.0.1", 6000, PCMU, None, "sendrecv", "sendrecv")


def test_parse_answer_uses_the_answers_payload_types() -> None:
    answer = offer_with(
        "m=audio 5000 RTP/AVP 8 96",
        "a=rtpmap:96 telephone-event/8000",
        "a=fmtp:96 0-15",
    )
    media = parse_answer(our_offer(), answer)
    assert media.codec == PCMA
    assert media.dtmf_payload_type == 96
    assert (media.remote_address, media.remote_port) == ("192.0.2.7", 5000)


def test_parse_answer_round_trip_with_our_own_answerer() -> None:
    offer = our_offer()
    answer, answered = build_answer(SessionDescription.parse(offer.to_bytes()), "192.0.2.9", 50000)
    media = parse_answer(offer, SessionDescription.parse(answer.to_bytes()))
    assert media.codec == answered.codec == PCMU
    assert media.dtmf_payload_type == 101
    assert (media.remote_address, media.remote_port) == ("192.0.2.9", 50000)


def test_parse_answer_rejects_a_codec_we_did_not_offer() -> None:
    answer = offer_with("m=audio 5000 RTP/AVP 18 101", "a=rtpmap:101 telephone-event/8000")
    with pytest.raises(SdpNegotiationError, match=r"no codec we offered.*G729"):
        parse_answer(our_offer(), answer)


def test_parse_answer_rejects_a_refused_stream() -> None:
    with pytest.raises(SdpNegotiationError, match="rejected our audio"):
        parse_answer(our_offer(), offer_with("m=audio 0 RTP/AVP 0"))
    with pytest.raises(SdpNegotiationError, match="m-lines"):
        parse_answer(our_offer(), offer_with())
    no_audio = dataclasses.replace(our_offer(), media=())
    with pytest.raises(SdpNegotiationError, match="our offer"):
        parse_answer(no_audio, SessionDescription.parse(SIPP_OFFER))


@pytest.mark.parametrize(
    ("ours", "theirs", "local", "on_hold"),
    [
        ("sendrecv", "sendrecv", "sendrecv", False),
        ("sendrecv", "recvonly", "sendonly", False),
        ("sendrecv", "sendonly", "recvonly", True),
        ("sendrecv", "inactive", "inactive", True),
        ("sendonly", "recvonly", "sendonly", False),
        ("inactive", "inactive", "inactive", True),
    ],
)
def test_parse_answer_directions(ours: str, theirs: str, local: str, on_hold: bool) -> None:
    media = parse_answer(our_offer(ours), offer_with("m=audio 5000 RTP/AVP 0", f"a={theirs}"))
    assert media.local_direction == local
    assert media.remote_direction == theirs
    assert media.on_hold is on_hold


def test_no_dtmf_when_we_did_not_offer_it() -> None:
    offer = build_offer("192.0.2.1", 40000, telephone_event=False)
    answer = offer_with("m=audio 5000 RTP/AVP 0 101", "a=rtpmap:101 telephone-event/8000")
    assert parse_answer(offer, answer).dtmf_payload_type is None
    assert TELEPHONE_EVENT.payload_type == 101


# ---------------------------------------------------------------------------------------------
# Fuzzing: any input gives a description or SdpError; answering one raises only SDP errors

SEEDS = [
    BARESIP_OFFER,
    SIPP_OFFER,
    build_offer("192.0.2.1", 40000, session_id=1).to_bytes(),
    offer_with("m=video 5000 RTP/AVP 31", "m=audio 4000 RTP/AVP 0 8", "a=sendonly").to_bytes(),
]


@st.composite
def mutated(draw: st.DrawFn) -> bytes:
    data = bytearray(draw(st.sampled_from(SEEDS)))
    for _ in range(draw(st.integers(1, 6))):
        at = draw(st.integers(0, len(data)))
        byte = draw(st.sampled_from(list(b" \r\n=:/0123456789amcv\xff")) | st.integers(0, 255))
        if draw(st.booleans()):
            data.insert(at, byte)
        elif at < len(data):
            del data[at]
    return bytes(data)


def check_sdp(data: bytes | str) -> None:
    try:
        parsed = SessionDescription.parse(data)
    except SdpError:
        return
    assert SessionDescription.parse(parsed.to_bytes()) == parsed
    with contextlib.suppress(SdpError, SdpNegotiationError):
        build_answer(parsed, "192.0.2.1", 30000)


@given(st.binary(max_size=600) | st.text(max_size=600))
def test_fuzz_arbitrary_input(data: bytes | str) -> None:
    check_sdp(data)


@settings(max_examples=400, suppress_health_check=[HealthCheck.too_slow])
@given(mutated())
def test_fuzz_mutated_sdp(data: bytes) -> None:
    check_sdp(data)

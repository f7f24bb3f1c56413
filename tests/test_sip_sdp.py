"""SDP parsing and offer/answer against offers written in the style of real user agents."""

from __future__ import annotations

import contextlib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from telephony.sip.sdp import (
    Codec,
    SdpError,
    accept_answer,
    build_answer,
    build_offer,
    negotiate,
    parse_sdp,
)


def sdp(text: str) -> bytes:
    return "".join(line.strip() + "\r\n" for line in text.strip().splitlines()).encode()


BARESIP = sdp("""
    v=0
    o=- 1622823340 1622823340 IN IP4 192.168.1.20
    s=-
    c=IN IP4 192.168.1.20
    t=0 0
    m=audio 10000 RTP/AVP 96 9 0 8 101
    b=AS:512
    a=rtpmap:96 opus/48000/2
    a=fmtp:96 stereo=1;sprop-stereo=1
    a=rtpmap:9 G722/8000
    a=rtpmap:0 PCMU/8000
    a=rtpmap:8 PCMA/8000
    a=rtpmap:101 telephone-event/8000
    a=fmtp:101 0-15
    a=rtcp:10001
    a=sendrecv
    a=label:1
    a=ssrc:3129872349 cname:b3f4e0a1-1c2d
    a=rtcp-rsize
""")

LINPHONE = sdp("""
    v=0
    o=alice 2745 1034 IN IP4 10.0.0.5
    s=Talk
    c=IN IP4 10.0.0.5
    t=0 0
    a=ice-pwd:31ec21eb38b2ec6d36e8dc7b
    a=ice-ufrag:0f2b3bd6
    a=rtcp-xr:rcvr-rtt=all:10000 stat-summary=loss,dup,jitt,TTL voip-metrics
    a=record:off
    m=audio 7078 RTP/AVP 96 97 98 0 8 18 99 3 100 101
    c=IN IP4 203.0.113.7
    a=rtpmap:96 opus/48000/2
    a=fmtp:96 useinbandfec=1
    a=rtpmap:97 speex/16000
    a=fmtp:97 vbr=on
    a=rtpmap:98 speex/8000
    a=fmtp:98 vbr=on
    a=rtpmap:99 AMR-WB/16000 extra junk
    a=fmtp:18 annexb=yes
    a=rtpmap:100 telephone-event/48000
    a=rtpmap:101 telephone-event/8000
    a=rtcp:7079
    a=rtcp-fb:* trr-int 1000
    a=rtcp-fb:* ccm tmmbr
    a=candidate:1 1 UDP 2130706431 10.0.0.5 7078 typ host
    a=candidate:1 2 UDP 2130706430 10.0.0.5 7079 typ host
    a=candidate:2 1 UDP 1694498815 203.0.113.7 7078 typ srflx raddr 10.0.0.5 rport 7078
    m=video 9078 RTP/AVP 96 97
    a=rtpmap:96 VP8/90000
    a=rtpmap:97 H264/90000
    a=fmtp:97 profile-level-id=42801F
    a=rtcp-fb:* ccm fir
    a=rtcp-fb:96 nack pli
""")

# sipp's uac scenario: a bare PCMU offer with no rtpmap, relying on the static assignment.
SIPP = sdp("""
    v=0
    o=user1 53655765 2353687637 IN IP4 127.0.0.1
    s=-
    c=IN IP4 127.0.0.1
    t=0 0
    m=audio 6000 RTP/AVP 0
    a=rtpmap:0 PCMU/8000
""")
SIPP_NO_RTPMAP = sdp("""
    v=0
    o=user1 53655765 2353687637 IN IP4 127.0.0.1
    s=-
    c=IN IP4 127.0.0.1
    t=0 0
    m=audio 6000 RTP/AVP 0
""")

HOLD_SENDONLY = sdp("""
    v=0
    o=- 1622823340 1622823341 IN IP4 192.168.1.20
    s=-
    c=IN IP4 192.168.1.20
    t=0 0
    m=audio 10000 RTP/AVP 0 101
    a=rtpmap:101 telephone-event/8000
    a=sendonly
""")

HOLD_ZERO_ADDR = sdp("""
    v=0
    o=- 1622823340 1622823342 IN IP4 192.168.1.20
    s=-
    c=IN IP4 0.0.0.0
    t=0 0
    m=audio 10000 RTP/AVP 8 0
""")

IPV6 = sdp("""
    v=0
    o=- 42 1 IN IP6 2001:db8::10
    s=-
    c=IN IP6 2001:db8::10
    t=0 0
    m=audio 40000 RTP/AVP 8 101
    a=rtpmap:101 telephone-event/8000
    a=fmtp:101 0-16
    a=ptime:30
""")

OPUS_G722_ONLY = sdp("""
    v=0
    o=- 1 1 IN IP4 192.168.1.20
    s=-
    c=IN IP4 192.168.1.20
    t=0 0
    m=audio 10000 RTP/AVP 96 9
    a=rtpmap:96 opus/48000/2
    a=rtpmap:9 G722/8000
""")


# ---------------------------------------------------------------- parsing


def test_parse_baresip() -> None:
    offer = parse_sdp(BARESIP)
    assert offer.origin is not None and offer.origin.session_id == "1622823340"
    assert offer.connection == "192.168.1.20"
    (audio,) = offer.media
    assert (audio.media, audio.port, audio.proto) == ("audio", 10000, "RTP/AVP")
    assert audio.formats == [96, 9, 0, 8, 101]
    assert audio.codecs[96] == Codec(96, "opus", 48000, 2, "stereo=1;sprop-stereo=1")
    assert audio.codecs[0] == Codec(0, "PCMU")
    assert audio.codecs[101] == Codec(101, "telephone-event", 8000, 1, "0-15")
    assert audio.direction == "sendrecv"
    assert audio.connection == "192.168.1.20"
    assert ("rtcp-rsize", None) in audio.attributes
    assert ("rtcp", "10001") in audio.attributes


def test_parse_linphone_media_connection_and_odd_lines() -> None:
    offer = parse_sdp(LINPHONE)
    audio, video = offer.media
    assert offer.connection == "10.0.0.5"
    assert audio.connection == "203.0.113.7"  # media-level c= wins
    assert video.connection == "10.0.0.5"
    assert audio.formats == [96, 97, 98, 0, 8, 18, 99, 3, 100, 101]
    assert 99 not in audio.codecs  # an rtpmap we cannot read leaves the type unnamed
    assert audio.codecs[18] == Codec(18, "G729", fmtp="annexb=yes")
    assert audio.codecs[3].name == "GSM"
    assert audio.codecs[100].clock_rate == 48000
    assert video.media == "video" and video.formats == [96, 97]
    assert offer.attributes[0] == ("ice-pwd", "31ec21eb38b2ec6d36e8dc7b")


def test_static_payload_types_without_rtpmap() -> None:
    (audio,) = parse_sdp(SIPP_NO_RTPMAP).media
    assert audio.codecs == {0: Codec(0, "PCMU", 8000)}
    (audio,) = parse_sdp(HOLD_ZERO_ADDR).media
    assert audio.codecs[8] == Codec(8, "PCMA")


def test_ipv6_and_ptime() -> None:
    offer = parse_sdp(IPV6)
    assert offer.connection == "2001:db8::10"
    assert offer.media[0].ptime == 30


def test_session_level_direction_applies_to_media() -> None:
    text = SIPP.replace(b"t=0 0\r\n", b"t=0 0\r\na=recvonly\r\n")
    offer = parse_sdp(text)
    assert offer.direction == "recvonly"
    assert offer.media[0].direction == "recvonly"


def test_media_direction_overrides_session_direction() -> None:
    text = HOLD_SENDONLY.replace(b"t=0 0\r\n", b"t=0 0\r\na=inactive\r\n")
    assert parse_sdp(text).media[0].direction == "sendonly"


def test_lf_line_endings_and_str_input() -> None:
    offer = parse_sdp(SIPP.decode().replace("\r\n", "\n"))
    assert offer.media[0].port == 6000


def test_rejected_and_non_rtp_lines_parse() -> None:
    text = SIPP + b"m=application 0 TCP/MSRP *\r\nm=video 0 RTP/AVP 31\r\n"
    offer = parse_sdp(text)
    assert offer.media[1].formats == [] and offer.media[1].format_tokens == ["*"]
    assert offer.media[2].port == 0


@pytest.mark.parametrize(
    "bad",
    [
        b"",
        b"v=1\r\n",
        b"o=- 1 1 IN IP4 1.2.3.4\r\nv=0\r\n",
        SIPP.replace(b"c=IN IP4 127.0.0.1", b"c=IN IP4"),
        SIPP.replace(b"c=IN IP4 127.0.0.1", b"c=IN IP4 300.1.1.1"),
        SIPP.replace(b"c=IN IP4 127.0.0.1", b"c=IN IP6 127.0.0.1"),
        SIPP.replace(b"c=IN IP4 127.0.0.1", b"c=XX IP4 127.0.0.1"),
        SIPP.replace(b"m=audio 6000 RTP/AVP 0", b"m=audio 6000 RTP/AVP"),
        SIPP.replace(b"m=audio 6000 RTP/AVP 0", b"m=audio 70000 RTP/AVP 0"),
        SIPP.replace(b"m=audio 6000 RTP/AVP 0", b"m=audio six RTP/AVP 0"),
        SIPP.replace(b"m=audio 6000 RTP/AVP 0", b"m=audio 6000 RTP/AVP PCMU"),
        SIPP.replace(b"m=audio 6000 RTP/AVP 0", b"m=audio 6000 RTP/AVP 200"),
        SIPP + b"v=0\r\n",
        b"v=0\r\n\xff\xfe\r\n",
        SIPP + "m=application 9 TCP/MSRP \u00e9\r\n".encode(),
    ],
)
def test_malformed_raises_sdp_error(bad: bytes) -> None:
    with pytest.raises(SdpError) as info:
        parse_sdp(bad)
    assert "\n" not in str(info.value)


def test_unknown_lines_are_tolerated() -> None:
    text = SIPP + b"x=whatever\r\ngarbage line\r\nb=AS:64\r\na=\r\na=weird:::\r\n"
    assert parse_sdp(text).media[0].formats == [0]


# ---------------------------------------------------------------- negotiation


def test_negotiate_prefers_pcmu_by_default() -> None:
    neg = negotiate(parse_sdp(BARESIP))
    assert neg.codec == Codec(0, "PCMU")
    assert neg.dtmf_payload_type == 101
    assert (neg.remote_host, neg.remote_port, neg.ptime) == ("192.168.1.20", 10000, 20)
    assert neg.direction == "sendrecv" and not neg.on_hold
    assert neg.media_index == 0


def test_our_preference_beats_the_offer_order() -> None:
    offer = parse_sdp(BARESIP)
    assert negotiate(offer, ("PCMA", "PCMU")).codec.name == "PCMA"
    # The hold offer lists PCMA first; PCMU-first preference still picks PCMU.
    assert negotiate(parse_sdp(HOLD_ZERO_ADDR)).codec.name == "PCMU"
    assert negotiate(parse_sdp(HOLD_ZERO_ADDR), ("PCMA",)).codec.name == "PCMA"


def test_negotiate_linphone_uses_8k_telephone_event_and_media_address() -> None:
    neg = negotiate(parse_sdp(LINPHONE))
    assert neg.codec.name == "PCMU"
    assert neg.dtmf_payload_type == 101  # not 100, which is the 48 kHz one
    assert (neg.remote_host, neg.remote_port) == ("203.0.113.7", 7078)


def test_negotiate_telephone_event_at_100() -> None:
    text = BARESIP.replace(b"101", b"100")
    assert negotiate(parse_sdp(text)).dtmf_payload_type == 100


def test_negotiate_sipp_without_dtmf() -> None:
    neg = negotiate(parse_sdp(SIPP_NO_RTPMAP))
    assert neg.codec.name == "PCMU" and neg.dtmf_payload_type is None


def test_no_common_codec() -> None:
    with pytest.raises(SdpError, match="no common codec"):
        negotiate(parse_sdp(OPUS_G722_ONLY))
    with pytest.raises(SdpError, match="no common codec"):
        negotiate(parse_sdp(SIPP_NO_RTPMAP), ("PCMA",))


def test_no_audio_line() -> None:
    text = SIPP.replace(b"m=audio 6000 RTP/AVP 0", b"m=video 6000 RTP/AVP 31")
    with pytest.raises(SdpError, match="no audio"):
        negotiate(parse_sdp(text))


def test_srtp_only_is_not_accepted() -> None:
    text = SIPP.replace(b"RTP/AVP", b"RTP/SAVP")
    with pytest.raises(SdpError, match="no common codec"):
        negotiate(parse_sdp(text))


def test_rejected_audio_line_is_skipped_for_the_next() -> None:
    text = SIPP.replace(b"m=audio 6000 RTP/AVP 0\r\n", b"m=audio 0 RTP/AVP 0\r\nm=audio 6002 RTP/AVP 8\r\n")
    neg = negotiate(parse_sdp(text))
    assert (neg.media_index, neg.remote_port, neg.codec.name) == (1, 6002, "PCMA")


def test_bad_preference_is_a_configuration_error() -> None:
    with pytest.raises(ValueError, match="preference"):
        negotiate(parse_sdp(SIPP), ("opus",))


@pytest.mark.parametrize(
    ("offer", "ours"),
    [
        (HOLD_SENDONLY, "recvonly"),
        (HOLD_ZERO_ADDR, "recvonly"),
        (HOLD_SENDONLY.replace(b"a=sendonly", b"a=inactive"), "inactive"),
        (HOLD_SENDONLY.replace(b"a=sendonly", b"a=recvonly"), "sendonly"),
        (HOLD_ZERO_ADDR + b"a=recvonly\r\n", "inactive"),
    ],
)
def test_hold_directions(offer: bytes, ours: str) -> None:
    neg = negotiate(parse_sdp(offer))
    assert neg.direction == ours
    assert neg.on_hold == (ours in ("recvonly", "inactive"))


# ---------------------------------------------------------------- answers and offers


def test_answer_keeps_m_line_count_and_rejects_video() -> None:
    offer = parse_sdp(LINPHONE)
    neg = negotiate(offer)
    raw = build_answer(offer, neg, "198.51.100.1", 20000, 555, 1)
    assert raw.endswith(b"\r\n") and b"\n\n" not in raw
    answer = parse_sdp(raw)
    assert len(answer.media) == 2
    audio, video = answer.media
    assert (audio.port, audio.formats) == (20000, [0, 101])
    assert audio.codecs[101] == Codec(101, "telephone-event", fmtp="0-16")
    assert audio.ptime == 20 and audio.direction == "sendrecv"
    assert audio.connection == "198.51.100.1"
    assert (video.media, video.port, video.formats) == ("video", 0, [96, 97])
    assert answer.origin is not None and answer.origin.session_id == "555"


def test_answer_keeps_offered_telephone_event_pt() -> None:
    offer = parse_sdp(BARESIP.replace(b"101", b"100"))
    answer = parse_sdp(build_answer(offer, negotiate(offer, ("PCMA",)), "10.1.1.1", 4000, 1, 2))
    assert answer.media[0].formats == [8, 100]


def test_answer_to_hold_and_ipv6() -> None:
    offer = parse_sdp(HOLD_SENDONLY)
    answer = parse_sdp(build_answer(offer, negotiate(offer), "10.1.1.1", 4000, 1, 2))
    assert answer.media[0].direction == "recvonly"
    offer = parse_sdp(IPV6)
    raw = build_answer(offer, negotiate(offer), "2001:db8::1", 4000, 1, 1)
    assert b"c=IN IP6 2001:db8::1\r\n" in raw
    assert parse_sdp(raw).media[0].formats == [8, 101]


def test_answer_rejects_non_rtp_line_with_its_tokens() -> None:
    offer = parse_sdp(SIPP + b"m=application 9 TCP/MSRP *\r\n")
    raw = build_answer(offer, negotiate(offer), "10.1.1.1", 4000, 1, 1)
    assert b"m=application 0 TCP/MSRP *\r\n" in raw


def test_build_offer_round_trip() -> None:
    raw = build_offer("192.0.2.9", 30000, 77, 3, ("PCMA", "PCMU"), 101, "sendrecv")
    offer = parse_sdp(raw)
    (audio,) = offer.media
    assert audio.formats == [8, 0, 101]
    assert audio.codecs[8] == Codec(8, "PCMA") and audio.codecs[0] == Codec(0, "PCMU")
    assert audio.codecs[101].fmtp == "0-16"
    assert (audio.connection, audio.port, audio.ptime, audio.direction) == (
        "192.0.2.9",
        30000,
        20,
        "sendrecv",
    )
    # An offer of ours is one a peer could answer, and we can negotiate against it.
    assert negotiate(offer).codec.name == "PCMU"
    assert negotiate(offer, ("PCMA", "PCMU")).codec.name == "PCMA"


def test_build_offer_options() -> None:
    audio = parse_sdp(build_offer("192.0.2.9", 30000, 1, 1, ("PCMU",), None, "sendonly")).media[0]
    assert audio.formats == [0] and audio.direction == "sendonly"
    with pytest.raises(ValueError):
        build_offer("192.0.2.9", 30000, 1, 1, dtmf_payload_type=8)
    with pytest.raises(ValueError):
        build_offer("192.0.2.9", 30000, 1, 1, direction="sideways")


def test_accept_answer() -> None:
    answer = parse_sdp(
        sdp("""
        v=0
        o=- 9 9 IN IP4 203.0.113.50
        s=-
        c=IN IP4 203.0.113.50
        t=0 0
        m=audio 5004 RTP/AVP 8 0 101
        a=rtpmap:101 telephone-event/8000
        a=ptime:20
        a=recvonly
    """)
    )
    neg = accept_answer(answer)
    # The answerer's pick (its first listed) stands, whatever our own order.
    assert neg.codec == Codec(8, "PCMA")
    assert neg.dtmf_payload_type == 101
    assert (neg.remote_host, neg.remote_port, neg.media_index) == ("203.0.113.50", 5004, 0)
    assert neg.direction == "sendonly"


def test_accept_answer_failures() -> None:
    rejected = SIPP.replace(b"m=audio 6000", b"m=audio 0")
    with pytest.raises(SdpError, match="rejected"):
        accept_answer(parse_sdp(rejected))
    with pytest.raises(SdpError, match="no codec"):
        accept_answer(parse_sdp(OPUS_G722_ONLY))


def test_answer_parses_back_as_acceptable() -> None:
    offer = parse_sdp(BARESIP)
    raw = build_answer(offer, negotiate(offer), "10.1.1.1", 4000, 1, 1)
    neg = accept_answer(parse_sdp(raw))
    assert neg.codec.name == "PCMU" and neg.dtmf_payload_type == 101


# ---------------------------------------------------------------- robustness

_SDP_LINES = st.sampled_from(
    [
        "v=0",
        "o=- 1 1 IN IP4 1.2.3.4",
        "s=-",
        "c=IN IP4 10.0.0.1",
        "c=IN IP6 ::1",
        "c=IN IP4 0.0.0.0",
        "t=0 0",
        "m=audio 4000 RTP/AVP 0 8 101",
        "m=video 0 RTP/AVP 96",
        "m=audio 4000 RTP/SAVP 0",
        "a=rtpmap:101 telephone-event/8000",
        "a=rtpmap:0 PCMU/8000",
        "a=rtpmap:96",
        "a=fmtp:101 0-16",
        "a=ptime:20",
        "a=ptime:x",
        "a=sendonly",
        "a=inactive",
        "m=application 9 TCP/MSRP \u00e9",
        "m=audio 4000 RTP/AVP 0 \u0663",
        "c=IN IP4 \u0663.1.1.1",
    ]
)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=300))
def test_random_bytes_only_raise_sdp_error(data: bytes) -> None:
    for body in (data, b"v=0\r\n" + data):
        with contextlib.suppress(SdpError):
            parse_sdp(body)


@settings(max_examples=300, deadline=None)
@given(st.lists(st.one_of(_SDP_LINES, st.text(max_size=40)), max_size=15))
def test_random_line_soup_parses_or_raises_sdp_error(lines: list[str]) -> None:
    try:
        offer = parse_sdp("v=0\r\n" + "\r\n".join(lines))
    except SdpError:
        return
    try:
        neg = negotiate(offer)
    except SdpError:
        return
    answer = parse_sdp(build_answer(offer, neg, "10.9.9.9", 5000, 1, 1))
    assert len(answer.media) == len(offer.media)

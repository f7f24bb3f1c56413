"""Media Streams messages, the stream state machine and TwiML, with no sockets.

The inbound fixtures are verbatim what the streamdouble simulator puts on the wire (its
``MediaStreamEncoder`` output through ``json.dumps``), which follows Twilio's documented
shapes: counters as strings, ``connected`` without a streamSid, ``dtmf.track`` spelled
``inbound_track``.
"""

from __future__ import annotations

import base64
import json
from typing import Any
from xml.etree import ElementTree

import pytest

from telephony.twilio.messages import (
    MULAW_8K,
    Connected,
    Dtmf,
    Mark,
    Media,
    MediaFormat,
    ProtocolError,
    Start,
    Stop,
    clear_message,
    mark_message,
    media_message,
    parse_message,
)
from telephony.twilio.stream import DEFAULT_MAX_MESSAGE_BYTES, StreamSession, StreamState
from telephony.twilio.twiml import connect_stream_twiml

SID = "MZ00000000000000000000000000000000"
ACCOUNT = "AC11111111111111111111111111111111"
CALL = "CA22222222222222222222222222222222"
SILENCE_B64 = base64.b64encode(b"\xff" * 160).decode()

CONNECTED = '{"event": "connected", "protocol": "Call", "version": "1.0.0"}'
START = (
    '{"event": "start", "sequenceNumber": "1", "start": {"accountSid": "' + ACCOUNT + '", '
    '"streamSid": "' + SID + '", "callSid": "' + CALL + '", "tracks": ["inbound"], '
    '"mediaFormat": {"encoding": "audio/x-mulaw", "sampleRate": 8000, "channels": 1}, '
    '"customParameters": {"tenant": "acme"}}, "streamSid": "' + SID + '"}'
)
MEDIA = (
    '{"event": "media", "sequenceNumber": "2", "media": {"track": "inbound", "chunk": "1", '
    '"timestamp": "0", "payload": "' + SILENCE_B64 + '"}, "streamSid": "' + SID + '"}'
)
DTMF = (
    '{"event": "dtmf", "streamSid": "' + SID + '", "sequenceNumber": "3", '
    '"dtmf": {"track": "inbound_track", "digit": "5"}}'
)
MARK = '{"event": "mark", "sequenceNumber": "4", "streamSid": "' + SID + '", "mark": {"name": "m1"}}'
STOP = (
    '{"event": "stop", "sequenceNumber": "5", "stop": {"accountSid": "' + ACCOUNT + '", '
    '"callSid": "' + CALL + '"}, "streamSid": "' + SID + '"}'
)
RECORDED = [CONNECTED, START, MEDIA, DTMF, MARK, STOP]


def edited(text: str, *path: str, value: Any = ..., delete: bool = False) -> str:
    """``text`` with the field at ``path`` replaced (or deleted)."""
    message = json.loads(text)
    parent = message
    for key in path[:-1]:
        parent = parent[key]
    if delete:
        del parent[path[-1]]
    else:
        parent[path[-1]] = value
    return json.dumps(message)


def error_of(data: Any) -> ProtocolError:
    with pytest.raises(ProtocolError) as caught:
        parse_message(data)
    return caught.value


def started() -> StreamSession:
    session = StreamSession()
    session.receive(CONNECTED)
    session.receive(START)
    return session


# ---------------------------------------------------------------- parsing what Twilio sends


def test_parse_recorded_sequence() -> None:
    events = [parse_message(text) for text in RECORDED]
    assert events == [
        Connected(protocol="Call", version="1.0.0"),
        Start(
            stream_sid=SID,
            call_sid=CALL,
            account_sid=ACCOUNT,
            tracks=("inbound",),
            custom_parameters={"tenant": "acme"},
            media_format=MULAW_8K,
            sequence_number=1,
        ),
        Media(
            stream_sid=SID, payload=b"\xff" * 160, track="inbound", chunk=1, timestamp=0, sequence_number=2
        ),
        Dtmf(stream_sid=SID, digit="5", track="inbound_track", sequence_number=3),
        Mark(stream_sid=SID, name="m1", sequence_number=4),
        Stop(stream_sid=SID, account_sid=ACCOUNT, call_sid=CALL, sequence_number=5),
    ]


def test_parse_accepts_numeric_counters() -> None:
    media = parse_message(edited(edited(MEDIA, "media", "chunk", value=7), "sequenceNumber", value=9))
    assert isinstance(media, Media)
    assert (media.chunk, media.sequence_number) == (7, 9)


def test_optional_fields_default() -> None:
    ids = {"streamSid": SID, "callSid": CALL, "accountSid": ACCOUNT}
    bare_start = json.dumps({"event": "start", "start": ids})
    start = parse_message(bare_start)
    assert start == Start(stream_sid=SID, call_sid=CALL, account_sid=ACCOUNT)
    bare_media = '{"event":"media","streamSid":"MZ1","media":{"payload":""}}'
    assert parse_message(bare_media) == Media(stream_sid="MZ1", payload=b"")
    assert parse_message('{"event":"stop","streamSid":"MZ1"}') == Stop(stream_sid="MZ1")
    assert parse_message('{"event":"connected"}') == Connected()


def test_start_reports_a_foreign_media_format() -> None:
    start = parse_message(edited(START, "start", "mediaFormat", "sampleRate", value=16000))
    assert isinstance(start, Start)
    assert start.media_format == MediaFormat("audio/x-mulaw", 16000, 1)


# ---------------------------------------------------------------- bad input


@pytest.mark.parametrize("frame", [b'{"event":"connected"}', bytearray(b"\x00\x01"), memoryview(b"x")])
def test_binary_frame(frame: bytes) -> None:
    err = error_of(frame)
    assert (err.code, err.fatal) == ("binary_frame", True)
    assert "binary frame" in err.reason


@pytest.mark.parametrize("value", [None, 42, {"event": "media"}])
def test_not_text(value: Any) -> None:
    assert error_of(value).code == "not_text"


@pytest.mark.parametrize("text", ["", "{", '{"event": "media",}', "nope", '{"event": "media"} trailing'])
def test_invalid_json(text: str) -> None:
    err = error_of(text)
    assert (err.code, err.fatal) == ("invalid_json", True)


def test_deeply_nested_json_is_invalid_not_a_crash() -> None:
    assert error_of("[" * 100_000 + "]" * 100_000).code == "invalid_json"


@pytest.mark.parametrize("text", ["[]", '"media"', "42", "null", "true"])
def test_json_not_an_object(text: str) -> None:
    assert error_of(text).code == "not_an_object"


def test_missing_event() -> None:
    err = error_of('{"streamSid": "MZ1"}')
    assert (err.code, err.reason) == ("missing_event", "message has no 'event' field")


def test_event_of_wrong_type() -> None:
    err = error_of('{"event": 5}')
    assert err.code == "wrong_type"
    assert "'event' must be a string, got int" in err.reason


def test_unknown_event_is_not_fatal() -> None:
    err = error_of('{"event": "transcription", "streamSid": "MZ1"}')
    assert (err.code, err.fatal) == ("unknown_event", False)
    assert "'transcription'" in err.reason


@pytest.mark.parametrize(
    ("text", "where"),
    [
        (edited(START, "start", "callSid", delete=True), "start.callSid"),
        (edited(START, "start", "streamSid", delete=True), "start.streamSid"),
        (edited(START, "start", delete=True), "start"),
        (edited(MEDIA, "media", "payload", delete=True), "media.payload"),
        (edited(MEDIA, "streamSid", delete=True), "streamSid"),
        (edited(MEDIA, "media", delete=True), "media"),
        (edited(DTMF, "dtmf", "digit", delete=True), "dtmf.digit"),
        (edited(MARK, "mark", "name", delete=True), "mark.name"),
        (edited(STOP, "streamSid", delete=True), "streamSid"),
    ],
)
def test_missing_fields(text: str, where: str) -> None:
    err = error_of(text)
    assert (err.code, err.fatal) == ("missing_field", True)
    assert err.reason == f"'{where}' is required"


@pytest.mark.parametrize(
    ("text", "where", "expected"),
    [
        (edited(MEDIA, "media", value="abc"), "media", "an object"),
        (edited(MEDIA, "media", "payload", value=123), "media.payload", "a string"),
        (edited(MEDIA, "media", "payload", value=None), "media.payload", "a string"),
        (edited(MEDIA, "media", "chunk", value="1.5"), "media.chunk", "an integer or a decimal string"),
        (
            edited(MEDIA, "media", "timestamp", value=True),
            "media.timestamp",
            "an integer or a decimal string",
        ),
        (edited(MEDIA, "streamSid", value=7), "streamSid", "a string"),
        (edited(START, "start", "tracks", value="inbound"), "start.tracks", "a list of strings"),
        (edited(START, "start", "customParameters", value={"a": 1}), "start.customParameters", "an object"),
        (
            edited(START, "start", "mediaFormat", "sampleRate", value="8000"),
            "start.mediaFormat.sampleRate",
            "an",
        ),
        (edited(DTMF, "dtmf", "digit", value=5), "dtmf.digit", "a string"),
        (edited(MARK, "mark", value=["m1"]), "mark", "an object"),
    ],
)
def test_wrong_types(text: str, where: str, expected: str) -> None:
    err = error_of(text)
    assert (err.code, err.fatal) == ("wrong_type", True)
    assert err.reason.startswith(f"'{where}' must be {expected}")


@pytest.mark.parametrize("payload", ["@@@@", "abc", "////=/==", "AAAA\n", SILENCE_B64[:-1]])
def test_non_base64_payload(payload: str) -> None:
    err = error_of(edited(MEDIA, "media", "payload", value=payload))
    assert (err.code, err.fatal) == ("bad_base64", True)
    assert "'media.payload' is not valid base64" in err.reason


def test_start_with_two_different_stream_sids() -> None:
    err = error_of(edited(START, "streamSid", value="MZother"))
    assert err.code == "inconsistent_stream_sid"


def test_invalid_json_reason_quotes_an_excerpt_only() -> None:
    err = error_of("{" + "x" * 10_000)
    assert err.code == "invalid_json"
    assert len(err.reason) < 200


def test_close_reason_fits_a_close_frame() -> None:
    err = ProtocolError("invalid_json", "é" * 200)
    encoded = err.close_reason.encode("utf-8")
    assert len(encoded) <= 123
    assert err.close_reason.startswith("invalid_json: é")
    assert ProtocolError.close_code == 1008


# ---------------------------------------------------------------- outbound messages


def test_media_message_shape_and_round_trip() -> None:
    payload = bytes(range(160))
    message = json.loads(media_message(SID, payload))
    assert message == {
        "event": "media",
        "streamSid": SID,
        "media": {"payload": base64.b64encode(payload).decode()},
    }
    assert base64.b64decode(message["media"]["payload"], validate=True) == payload


def test_mark_and_clear_shapes() -> None:
    assert json.loads(mark_message(SID, "reply-1")) == {
        "event": "mark",
        "streamSid": SID,
        "mark": {"name": "reply-1"},
    }
    assert json.loads(clear_message(SID)) == {"event": "clear", "streamSid": SID}


def test_outbound_messages_are_what_streamdouble_accepts() -> None:
    protocol = pytest.importorskip("streamdouble.protocol")
    media = protocol.parse_outbound(media_message(SID, b"\x7f" * 160), expected_stream_sid=SID)
    assert media == protocol.InboundMedia(stream_sid=SID, payload=b"\x7f" * 160)
    mark = protocol.parse_outbound(mark_message(SID, "m1"), expected_stream_sid=SID)
    assert mark == protocol.InboundMark(stream_sid=SID, name="m1")
    clear = protocol.parse_outbound(clear_message(SID), expected_stream_sid=SID)
    assert clear == protocol.InboundClear(stream_sid=SID)


def test_streamdouble_encoder_output_parses() -> None:
    protocol = pytest.importorskip("streamdouble.protocol")
    encoder = protocol.MediaStreamEncoder()
    frames = [
        encoder.connected(),
        encoder.start(custom_parameters={"k": "v"}),
        encoder.media(b"\x00" * 160),
        encoder.dtmf("#"),
        encoder.mark("m"),
        encoder.stop(),
    ]
    session = StreamSession()
    events = [session.receive(json.dumps(frame)) for frame in frames]
    assert [type(event) for event in events] == [Connected, Start, Media, Dtmf, Mark, Stop]
    assert session.start is not None and session.start.custom_parameters == {"k": "v"}
    assert session.stream_sid == encoder.identity.stream_sid
    assert session.state is StreamState.STOPPED


# ---------------------------------------------------------------- the state machine


def test_recorded_sequence_walks_the_states() -> None:
    session = StreamSession()
    assert session.state is StreamState.AWAITING_START
    assert session.receive(CONNECTED) == Connected("Call", "1.0.0")
    assert session.state is StreamState.AWAITING_START
    start = session.receive(START)
    assert session.state is StreamState.STREAMING
    assert session.start == start
    assert session.stream_sid == SID
    media = session.receive(MEDIA)
    assert isinstance(media, Media) and media.payload == b"\xff" * 160
    assert session.receive(DTMF) == parse_message(DTMF)
    assert session.receive(MARK) == parse_message(MARK)
    assert isinstance(session.receive(STOP), Stop)
    assert session.state is StreamState.STOPPED
    assert session.error is None


def test_connected_is_optional() -> None:
    session = StreamSession()
    session.receive(START)
    assert isinstance(session.receive(MEDIA), Media)


def test_handle_takes_parsed_events() -> None:
    session = StreamSession()
    session.handle(parse_message(START))
    assert session.handle(parse_message(MEDIA)) == parse_message(MEDIA)


def fatal_from(session: StreamSession, text: str | bytes) -> ProtocolError:
    with pytest.raises(ProtocolError) as caught:
        session.receive(text)
    assert caught.value.fatal
    assert session.state is StreamState.FAILED
    assert session.error is caught.value
    return caught.value


@pytest.mark.parametrize(("text", "name"), [(MEDIA, "media"), (DTMF, "dtmf"), (MARK, "mark"), (STOP, "stop")])
def test_events_before_start(text: str, name: str) -> None:
    session = StreamSession()
    session.receive(CONNECTED)
    err = fatal_from(session, text)
    assert (err.code, err.reason) == ("event_before_start", f"'{name}' before 'start'")


@pytest.mark.parametrize("text", [MEDIA, DTMF, MARK, STOP])
def test_wrong_stream_sid(text: str) -> None:
    err = fatal_from(started(), edited(text, "streamSid", value="MZintruder"))
    assert err.code == "wrong_stream_sid"
    assert "'MZintruder'" in err.reason and SID in err.reason


@pytest.mark.parametrize("text", [MEDIA, DTMF, MARK, STOP, START, CONNECTED])
def test_nothing_after_stop(text: str) -> None:
    session = started()
    session.receive(STOP)
    err = fatal_from(session, text)
    assert err.code == "after_stop"


def test_duplicate_start() -> None:
    assert fatal_from(started(), START).code == "duplicate_start"


def test_connected_after_start_or_twice() -> None:
    assert fatal_from(started(), CONNECTED).code == "unexpected_connected"
    session = StreamSession()
    session.receive(CONNECTED)
    assert fatal_from(session, CONNECTED).code == "unexpected_connected"


def test_unsupported_media_format() -> None:
    session = StreamSession()
    err = fatal_from(session, edited(START, "start", "mediaFormat", "encoding", value="audio/x-alaw"))
    assert err.code == "unsupported_media_format"
    assert "audio/x-alaw" in err.reason


def test_binary_frame_fails_the_session() -> None:
    assert fatal_from(started(), b"\xff" * 160).code == "binary_frame"


def test_bad_base64_fails_the_session() -> None:
    assert fatal_from(started(), edited(MEDIA, "media", "payload", value="%%%")).code == "bad_base64"


def test_invalid_json_fails_the_session() -> None:
    assert fatal_from(started(), "{not json").code == "invalid_json"


def test_unknown_event_is_ignored_and_the_stream_goes_on() -> None:
    session = started()
    with pytest.raises(ProtocolError) as caught:
        session.receive('{"event": "somethingNew", "streamSid": "' + SID + '"}')
    assert not caught.value.fatal
    assert session.state is StreamState.STREAMING
    assert session.error is None
    assert isinstance(session.receive(MEDIA), Media)


def test_a_failed_session_rejects_everything() -> None:
    session = started()
    first = fatal_from(session, "garbage")
    with pytest.raises(ProtocolError) as caught:
        session.receive(MEDIA)
    assert caught.value.code == "session_failed"
    assert caught.value.fatal
    assert first.code in caught.value.reason
    assert session.error is first


def test_oversized_message_is_rejected_before_parsing() -> None:
    session = StreamSession(max_message_bytes=1000)
    # Invalid JSON too: the size check must win, proving nothing was parsed.
    err = fatal_from(session, "{" * 1001)
    assert err.code == "message_too_large"
    assert "1000" in err.reason


def test_size_limit_counts_utf8_bytes() -> None:
    message = json.loads(START)
    message["start"]["customParameters"] = {"name": "é" * 140}
    text = json.dumps(message, ensure_ascii=False)
    # Fits in characters, not in UTF-8 bytes (each é is two).
    session = StreamSession(max_message_bytes=len(text) + 70)
    assert fatal_from(session, text).code == "message_too_large"


def test_messages_at_the_limit_pass() -> None:
    session = StreamSession(max_message_bytes=len(START.encode()))
    assert isinstance(session.receive(START), Start)
    assert DEFAULT_MAX_MESSAGE_BYTES == 64 * 1024


def test_limit_must_be_positive() -> None:
    with pytest.raises(ValueError, match="positive"):
        StreamSession(max_message_bytes=0)


# ---------------------------------------------------------------- TwiML


def test_connect_stream_twiml_exact() -> None:
    assert connect_stream_twiml("wss://bot.example.com/twilio/stream") == (
        '<?xml version="1.0" encoding="UTF-8"?>'
        '<Response><Connect><Stream url="wss://bot.example.com/twilio/stream" /></Connect></Response>'
    )


def test_connect_stream_twiml_parameters_are_escaped() -> None:
    params = {"campaign": "spring & <sale>", "quote": "say \"hi\" 'there'", "lines": "a\nb\tc"}
    twiml = connect_stream_twiml("wss://bot.example.com/twilio/stream", params)
    assert twiml.startswith('<?xml version="1.0" encoding="UTF-8"?><Response><Connect><Stream url=')
    assert "&amp;" in twiml and "&lt;sale&gt;" in twiml and "&quot;hi&quot;" in twiml
    stream = ElementTree.fromstring(twiml.split("?>", 1)[1]).find("Connect/Stream")
    assert stream is not None
    assert stream.get("url") == "wss://bot.example.com/twilio/stream"
    assert {p.get("name"): p.get("value") for p in stream.findall("Parameter")} == params


@pytest.mark.parametrize(
    "url",
    ["ws://bot.example.com/s", "https://bot.example.com/s", "/twilio/stream", "wss://", "wss://h/s?tenant=a"],
)
def test_connect_stream_twiml_rejects_urls_twilio_rejects(url: str) -> None:
    with pytest.raises(ValueError, match="stream URL"):
        connect_stream_twiml(url)


def test_connect_stream_twiml_rejects_unencodable_text() -> None:
    with pytest.raises(ValueError, match="XML cannot carry"):
        connect_stream_twiml("wss://h/s", {"k": "bell\x07"})
    with pytest.raises(TypeError, match="must be a str"):
        connect_stream_twiml("wss://h/s", {"k": 5})  # type: ignore[dict-item]

"""TwilioMediaStreamSerializer driven with real Media Streams message strings, no sockets.

Inbound messages come from streamdouble's encoder (the simulator we interoperate with);
outbound ones are checked with its parser. The last test runs the serializer inside
pipecat's FastAPIWebsocketTransport through Starlette's in-process TestClient, to pin
down the wiring contract: a fatal error closes that call with 1008, others carry on.
"""

from __future__ import annotations

import json
import time
from types import SimpleNamespace
from typing import Any, cast

import numpy as np
import pytest
from fastapi import FastAPI, WebSocket
from numpy.typing import NDArray
from pipecat.audio.dtmf.types import KeypadEntry
from pipecat.frames.frames import (
    CancelFrame,
    CancelWorkerFrame,
    EndFrame,
    Frame,
    InputAudioRawFrame,
    InputDTMFFrame,
    InterruptionFrame,
    OutputAudioRawFrame,
    OutputTransportMessageFrame,
    OutputTransportMessageUrgentFrame,
)
from pipecat.pipeline.pipeline import Pipeline
from pipecat.pipeline.worker import PipelineParams, PipelineWorker
from pipecat.processors.frame_processor import FrameDirection, FrameProcessor, FrameProcessorSetup
from pipecat.transports.websocket.fastapi import FastAPIWebsocketParams, FastAPIWebsocketTransport
from pipecat.workers.runner import WorkerRunner
from starlette.testclient import TestClient

from telephony.g711 import ulaw_decode, ulaw_encode
from telephony.twilio.messages import ProtocolError, Start, mark_message
from telephony.twilio.stream import StreamSession, StreamState
from voicebot.calls.twilio_serializer import (
    FRAME_BYTES,
    StreamResampler,
    TwilioMediaStreamSerializer,
    read_start,
)

protocol = pytest.importorskip("streamdouble.protocol")


def tone(freq: float, rate: int, seconds: float, level: float = 8000) -> NDArray[np.int16]:
    t = np.arange(int(rate * seconds)) / rate
    return (level * np.sin(2 * np.pi * freq * t)).astype(np.int16)


def level_db(samples: NDArray[np.int16], reference: float = 8000) -> float:
    rms = float(np.sqrt(np.mean(samples.astype(np.float64) ** 2)))
    return 20 * np.log10(max(rms, 1e-9) / (reference / np.sqrt(2)))


def pipecat_setup(rate: int) -> FrameProcessorSetup:
    # setup() only reads the input rate; a real FrameProcessorSetup needs a live pipeline.
    return cast(FrameProcessorSetup, SimpleNamespace(audio_in_sample_rate=rate))


class Call:
    """One simulated Twilio call: streamdouble's encoder, rendered to wire strings."""

    def __init__(self, **start: Any) -> None:
        self.encoder = protocol.MediaStreamEncoder()
        self.sid: str = self.encoder.identity.stream_sid
        self.connected = json.dumps(self.encoder.connected())
        self.start = json.dumps(self.encoder.start(**start))

    def media(self, payload: bytes) -> str:
        return json.dumps(self.encoder.media(payload))

    def dtmf(self, digit: str) -> str:
        return json.dumps(self.encoder.dtmf(digit))

    def mark(self, name: str) -> str:
        return json.dumps(self.encoder.mark(name))

    def stop(self) -> str:
        return json.dumps(self.encoder.stop())


async def started_serializer(rate: int, call: Call, **kwargs: Any) -> TwilioMediaStreamSerializer:
    serializer = TwilioMediaStreamSerializer(**kwargs)
    await serializer.setup(pipecat_setup(rate))
    assert await serializer.deserialize(call.connected) is None
    assert await serializer.deserialize(call.start) is None
    return serializer


def parsed_media(message: str | bytes | None, sid: str) -> bytes:
    assert isinstance(message, str)
    parsed = protocol.parse_outbound(message, expected_stream_sid=sid)
    assert isinstance(parsed, protocol.InboundMedia)
    return parsed.payload


# ---------------------------------------------------------------- handshake and call info


async def test_handshake_through_deserialize_exposes_start_info() -> None:
    call = Call(custom_parameters={"tenant": "acme", "campaign": "7"})
    seen: list[Start] = []

    async def on_start(start: Start) -> None:
        seen.append(start)

    serializer = await started_serializer(8000, call, on_start=on_start)
    assert serializer.stream_sid == call.sid
    assert serializer.call_sid == call.encoder.identity.call_sid
    assert serializer.custom_parameters == {"tenant": "acme", "campaign": "7"}
    assert seen == [serializer.start]


async def test_read_start_then_serializer_takes_the_session() -> None:
    call = Call()
    messages = iter([call.connected, '{"event": "hello"}', call.start])

    async def receive() -> str | None:
        return next(messages)

    session = StreamSession()
    start = await read_start(session, receive)
    assert start is not None and start.stream_sid == call.sid
    serializer = TwilioMediaStreamSerializer(session, sample_rate=8000)
    frame = await serializer.deserialize(call.media(b"\xff" * 160))
    assert isinstance(frame, InputAudioRawFrame)


async def test_read_start_returns_none_when_the_peer_leaves() -> None:
    async def receive() -> None:
        return None

    assert await read_start(StreamSession(), receive) is None


async def test_read_start_raises_fatal_errors_and_gives_up_eventually() -> None:
    async def garbage() -> str:
        return "not json"

    with pytest.raises(ProtocolError, match="invalid_json"):
        await read_start(StreamSession(), garbage)

    async def chatter() -> str:
        return '{"event": "unknownThing"}'

    with pytest.raises(ProtocolError, match="no_start"):
        await read_start(StreamSession(), chatter, max_messages=3)


# ---------------------------------------------------------------- inbound audio


async def test_media_at_8k_is_decoded_without_resampling() -> None:
    call = Call()
    serializer = await started_serializer(8000, call)
    pcm = tone(440, 8000, 0.02)
    frame = await serializer.deserialize(call.media(ulaw_encode(pcm)))
    assert isinstance(frame, InputAudioRawFrame)
    assert (frame.sample_rate, frame.num_channels, len(frame.audio)) == (8000, 1, 320)
    assert frame.audio == ulaw_decode(ulaw_encode(pcm)).astype("<i2").tobytes()


async def test_media_at_16k_doubles_every_frame_and_keeps_the_band() -> None:
    call = Call()
    serializer = await started_serializer(16000, call)
    source = tone(1000, 8000, 1.0)
    chunks = []
    for start in range(0, len(source), 160):
        frame = await serializer.deserialize(call.media(ulaw_encode(source[start : start + 160])))
        assert isinstance(frame, InputAudioRawFrame)
        assert (frame.sample_rate, len(frame.audio)) == (16000, 640)  # 20 ms in, 20 ms out
        chunks.append(np.frombuffer(frame.audio, dtype="<i2"))
    audio = np.concatenate(chunks)[800:]
    spectrum = np.abs(np.fft.rfft(audio * np.hanning(len(audio))))
    freqs = np.fft.rfftfreq(len(audio), 1 / 16000)
    assert abs(freqs[np.argmax(spectrum)] - 1000) < 5
    # Upsampling images (7 kHz for a 1 kHz tone) must be filtered out.
    assert 20 * np.log10(spectrum[freqs > 4500].max() / spectrum.max()) < -55
    assert abs(level_db(audio)) < 0.5


async def test_sample_rate_argument_overrides_setup() -> None:
    call = Call()
    serializer = await started_serializer(16000, call, sample_rate=8000)
    frame = await serializer.deserialize(call.media(b"\xff" * 160))
    assert isinstance(frame, InputAudioRawFrame) and frame.sample_rate == 8000


async def test_setup_twice_is_harmless() -> None:
    # FastAPIWebsocketTransport's input and output both call setup() on the one serializer.
    call = Call()
    serializer = await started_serializer(16000, call)
    await serializer.setup(pipecat_setup(16000))
    assert serializer.session.state is StreamState.STREAMING
    frame = await serializer.deserialize(call.media(b"\xff" * 160))
    assert isinstance(frame, InputAudioRawFrame) and len(frame.audio) == 640


async def test_outbound_track_media_is_not_fed_to_the_pipeline() -> None:
    call = Call(tracks=["inbound", "outbound"])
    serializer = await started_serializer(8000, call)
    outbound = json.dumps(call.encoder.media(b"\xff" * 160, track="outbound"))
    assert await serializer.deserialize(outbound) is None
    assert isinstance(await serializer.deserialize(call.media(b"\xff" * 160)), InputAudioRawFrame)


async def test_without_setup_or_rate_audio_is_a_programming_error() -> None:
    call = Call()
    serializer = TwilioMediaStreamSerializer()
    await serializer.deserialize(call.start)
    with pytest.raises(RuntimeError, match="setup"):
        await serializer.deserialize(call.media(b"\xff" * 160))


# ---------------------------------------------------------------- dtmf, mark, stop


@pytest.mark.parametrize(("digit", "entry"), [("5", KeypadEntry.FIVE), ("#", KeypadEntry.POUND), ("*", "*")])
async def test_dtmf(digit: str, entry: str) -> None:
    call = Call()
    serializer = await started_serializer(8000, call)
    frame = await serializer.deserialize(call.dtmf(digit))
    assert isinstance(frame, InputDTMFFrame)
    assert frame.button == KeypadEntry(entry)


async def test_dtmf_outside_the_keypad_is_ignored() -> None:
    call = Call()
    serializer = await started_serializer(8000, call)
    assert await serializer.deserialize(call.dtmf("A")) is None
    assert serializer.fatal_error is None


async def test_mark_echo_produces_no_frame() -> None:
    call = Call()
    serializer = await started_serializer(8000, call)
    assert await serializer.deserialize(call.mark("reply-1")) is None


async def test_stop_cancels_the_pipeline_worker() -> None:
    call = Call()
    serializer = await started_serializer(8000, call)
    frame = await serializer.deserialize(call.stop())
    assert isinstance(frame, CancelWorkerFrame)
    assert call.sid in str(frame.reason)
    assert serializer.session.state is StreamState.STOPPED


# ---------------------------------------------------------------- outbound


async def test_20ms_at_8k_becomes_one_160_byte_media_message() -> None:
    call = Call()
    serializer = await started_serializer(8000, call)
    pcm = tone(440, 8000, 0.02)
    message = await serializer.serialize(OutputAudioRawFrame(pcm.astype("<i2").tobytes(), 8000, 1))
    assert parsed_media(message, call.sid) == ulaw_encode(pcm)
    assert set(json.loads(str(message))) == {"event", "streamSid", "media"}


async def test_short_chunks_are_held_until_a_whole_frame() -> None:
    call = Call()
    serializer = await started_serializer(8000, call)
    ten_ms = tone(440, 8000, 0.01).astype("<i2").tobytes()
    assert await serializer.serialize(OutputAudioRawFrame(ten_ms, 8000, 1)) is None
    assert (
        len(parsed_media(await serializer.serialize(OutputAudioRawFrame(ten_ms, 8000, 1)), call.sid)) == 160
    )


async def test_long_chunks_go_out_as_whole_frames() -> None:
    call = Call()
    serializer = await started_serializer(8000, call)
    fifty_ms = tone(440, 8000, 0.05).astype("<i2").tobytes()
    assert (
        len(parsed_media(await serializer.serialize(OutputAudioRawFrame(fifty_ms, 8000, 1)), call.sid)) == 320
    )
    assert (
        len(parsed_media(await serializer.serialize(OutputAudioRawFrame(fifty_ms, 8000, 1)), call.sid)) == 480
    )


@pytest.mark.parametrize(("rate", "chunk"), [(16000, 320), (24000, 480), (22050, 440)])
async def test_resampled_output_is_framed_and_band_limited(rate: int, chunk: int) -> None:
    """Chunk sizes are what pipecat's output transport hands over with 20 ms chunks."""
    call = Call()
    serializer = await started_serializer(16000, call)
    speech_band, alias_band = tone(1000, rate, 1.0), tone(5000, rate, 1.0)
    for source in (speech_band, alias_band):
        await serializer.serialize(InterruptionFrame())  # fresh resampler and buffer
        payloads = []
        for start in range(0, len(source) - chunk + 1, chunk):
            pcm = source[start : start + chunk].astype("<i2").tobytes()
            message = await serializer.serialize(OutputAudioRawFrame(pcm, rate, 1))
            if message is not None:
                payloads.append(parsed_media(message, call.sid))
        assert {len(payload) for payload in payloads} == {FRAME_BYTES}
        sent = len(payloads) * FRAME_BYTES
        expected = (len(source) // chunk) * chunk * 8000 / rate
        assert expected - FRAME_BYTES < sent <= expected
        decoded = ulaw_decode(b"".join(payloads))[400:]
        if source is speech_band:
            assert abs(level_db(decoded)) < 0.5
        else:
            assert level_db(decoded) < -45  # 5 kHz cannot exist at 8 kHz; it must not alias in


async def test_stereo_output_is_downmixed() -> None:
    call = Call()
    serializer = await started_serializer(8000, call)
    mono = tone(440, 8000, 0.02)
    stereo = np.repeat(mono, 2).astype("<i2").tobytes()
    message = await serializer.serialize(OutputAudioRawFrame(stereo, 8000, 2))
    assert parsed_media(message, call.sid) == ulaw_encode(mono)


async def test_interruption_clears_twilio_and_our_buffer() -> None:
    call = Call()
    serializer = await started_serializer(8000, call)
    twenty_ms = tone(440, 8000, 0.02).astype("<i2").tobytes()
    ten_ms = tone(440, 8000, 0.01).astype("<i2").tobytes()
    assert await serializer.serialize(OutputAudioRawFrame(twenty_ms, 8000, 1)) is not None
    assert await serializer.serialize(OutputAudioRawFrame(ten_ms, 8000, 1)) is None
    clear = await serializer.serialize(InterruptionFrame())
    assert clear == json.dumps({"event": "clear", "streamSid": call.sid}, separators=(",", ":"))
    assert protocol.parse_outbound(clear, expected_stream_sid=call.sid) == protocol.InboundClear(call.sid)
    # The held 10 ms was dropped: another 10 ms is still not a whole frame.
    assert await serializer.serialize(OutputAudioRawFrame(ten_ms, 8000, 1)) is None


async def test_interruption_without_audio_sends_no_clear() -> None:
    # Pipecat interrupts at every caller turn; only audio already sent needs clearing.
    call = Call()
    serializer = await started_serializer(8000, call)
    assert await serializer.serialize(InterruptionFrame()) is None
    twenty_ms = tone(440, 8000, 0.02).astype("<i2").tobytes()
    assert await serializer.serialize(OutputAudioRawFrame(twenty_ms, 8000, 1)) is not None
    assert await serializer.serialize(InterruptionFrame()) is not None
    assert await serializer.serialize(InterruptionFrame()) is None


async def test_app_mark_gets_the_stream_sid() -> None:
    call = Call()
    serializer = await started_serializer(8000, call)
    message = await serializer.serialize(
        OutputTransportMessageUrgentFrame(message={"event": "mark", "name": "reply-1"})
    )
    assert json.loads(message) == {"event": "mark", "streamSid": call.sid, "mark": {"name": "reply-1"}}


async def test_nothing_goes_out_before_start() -> None:
    serializer = TwilioMediaStreamSerializer(sample_rate=8000)
    audio = OutputAudioRawFrame(bytes(320), 8000, 1)
    assert await serializer.serialize(audio) is None
    assert await serializer.serialize(InterruptionFrame()) is None


async def test_transport_messages_pass_through_and_rtvi_is_dropped() -> None:
    call = Call()
    serializer = await started_serializer(8000, call)
    mark = json.loads(mark_message(call.sid, "end-of-reply"))
    sent = await serializer.serialize(OutputTransportMessageFrame(message=mark))
    assert protocol.parse_outbound(str(sent), expected_stream_sid=call.sid) == protocol.InboundMark(
        call.sid, "end-of-reply"
    )
    rtvi = OutputTransportMessageUrgentFrame(message={"label": "rtvi-ai", "type": "bot-ready"})
    assert await serializer.serialize(rtvi) is None


async def test_end_and_cancel_do_not_hang_up_over_rest() -> None:
    call = Call()
    serializer = await started_serializer(8000, call)
    assert await serializer.serialize(EndFrame()) is None
    assert await serializer.serialize(CancelFrame()) is None


# ---------------------------------------------------------------- protocol errors


class FatalRecorder:
    def __init__(self) -> None:
        self.errors: list[ProtocolError] = []

    async def __call__(self, err: ProtocolError) -> None:
        self.errors.append(err)


@pytest.mark.parametrize(
    ("bad", "code"),
    [
        ("{oops", "invalid_json"),
        (b"\xff" * 160, "binary_frame"),
        ('{"event": "media", "streamSid": "MZwrong", "media": {"payload": ""}}', "wrong_stream_sid"),
        ("x" * 70_000, "message_too_large"),
    ],
)
async def test_fatal_error_reaches_the_handler_once_then_all_is_dropped(bad: str | bytes, code: str) -> None:
    call = Call()
    recorder = FatalRecorder()
    serializer = await started_serializer(8000, call, on_fatal_error=recorder)
    assert await serializer.deserialize(bad) is None
    assert [err.code for err in recorder.errors] == [code]
    assert serializer.fatal_error is recorder.errors[0]
    assert recorder.errors[0].close_code == 1008
    # Draining until the socket closes: no frames, no second callback, nothing sent.
    assert await serializer.deserialize(call.media(b"\xff" * 160)) is None
    assert await serializer.deserialize("{more garbage") is None
    assert len(recorder.errors) == 1
    assert await serializer.serialize(OutputAudioRawFrame(bytes(320), 8000, 1)) is None
    assert await serializer.serialize(InterruptionFrame()) is None


async def test_media_before_start_is_fatal() -> None:
    call = Call()
    recorder = FatalRecorder()
    serializer = TwilioMediaStreamSerializer(sample_rate=8000, on_fatal_error=recorder)
    assert await serializer.deserialize(call.media(b"\xff" * 160)) is None
    assert [err.code for err in recorder.errors] == ["event_before_start"]


async def test_bad_base64_is_fatal() -> None:
    call = Call()
    recorder = FatalRecorder()
    serializer = await started_serializer(8000, call, on_fatal_error=recorder)
    bad = call.media(b"\xff" * 160).replace('"payload": "', '"payload": "%%')
    assert await serializer.deserialize(bad) is None
    assert [err.code for err in recorder.errors] == ["bad_base64"]


async def test_without_a_handler_fatal_errors_are_raised() -> None:
    call = Call()
    serializer = await started_serializer(8000, call)
    with pytest.raises(ProtocolError) as caught:
        await serializer.deserialize("{oops")
    assert caught.value.fatal
    assert serializer.fatal_error is caught.value


async def test_unknown_events_are_logged_and_ignored() -> None:
    call = Call()
    recorder = FatalRecorder()
    serializer = await started_serializer(8000, call, on_fatal_error=recorder)
    assert await serializer.deserialize('{"event": "futureFeature", "streamSid": "' + call.sid + '"}') is None
    assert recorder.errors == []
    assert isinstance(await serializer.deserialize(call.media(b"\xff" * 160)), InputAudioRawFrame)


# ---------------------------------------------------------------- the resampler alone


@pytest.mark.parametrize(
    ("in_rate", "out_rate", "chunk", "sizes"),
    [
        (8000, 16000, 160, {320}),
        (16000, 8000, 320, {160}),
        (24000, 8000, 480, {160}),
        (16000, 8000, 333, {166, 167}),  # decimation phase carries across odd chunks
        (22050, 8000, 441, {159, 160, 161}),
    ],
)
def test_resampler_output_lengths(in_rate: int, out_rate: int, chunk: int, sizes: set[int]) -> None:
    resampler = StreamResampler(in_rate, out_rate)
    lengths = [len(resampler.process(np.zeros(chunk, np.int16))) for _ in range(200)]
    assert set(lengths) <= sizes
    assert abs(sum(lengths) - 200 * chunk * out_rate / in_rate) <= 2
    assert resampler.delay_ms < 3


def test_resampler_rejects_a_non_conversion() -> None:
    with pytest.raises(ValueError, match="different positive rates"):
        StreamResampler(8000, 8000)


# ---------------------------------------------------------------- inside pipecat's FastAPI transport


def test_fatal_error_closes_only_that_call_with_1008() -> None:
    """The wiring the app should use, end to end in-process (TestClient, no sockets)."""

    class Echo(FrameProcessor):
        async def process_frame(self, frame: Frame, direction: FrameDirection) -> None:
            await super().process_frame(frame, direction)
            if isinstance(frame, InputAudioRawFrame):
                await self.push_frame(OutputAudioRawFrame(frame.audio, frame.sample_rate, 1))
            else:
                await self.push_frame(frame, direction)

    app = FastAPI()
    ended: list[str] = []

    @app.websocket("/twilio/stream")
    async def stream(websocket: WebSocket) -> None:
        await websocket.accept()

        async def receive() -> str | bytes | None:
            message = await websocket.receive()
            if message["type"] == "websocket.disconnect":
                return None
            return message["text"] if message.get("text") is not None else message.get("bytes")

        async def close_1008(err: ProtocolError) -> None:
            await websocket.close(code=err.close_code, reason=err.close_reason)

        session = StreamSession()
        start = await read_start(session, receive)
        assert start is not None
        serializer = TwilioMediaStreamSerializer(session, sample_rate=16000, on_fatal_error=close_1008)
        params = FastAPIWebsocketParams(
            audio_in_enabled=True,
            audio_out_enabled=True,
            audio_in_sample_rate=16000,
            audio_out_sample_rate=16000,
            audio_out_10ms_chunks=2,
            serializer=serializer,
            allowed_origins=[],
        )
        transport = FastAPIWebsocketTransport(websocket, params)
        worker = PipelineWorker(
            Pipeline([transport.input(), Echo(), transport.output()]),
            params=PipelineParams(audio_in_sample_rate=16000, audio_out_sample_rate=16000),
            enable_rtvi=False,
        )

        @transport.event_handler("on_client_disconnected")
        async def on_client_disconnected(_transport: object, _websocket: object) -> None:
            await worker.cancel()

        runner = WorkerRunner(handle_sigint=False)
        await runner.add_workers(worker)
        await runner.run()
        ended.append(start.stream_sid)

    speech = ulaw_encode(tone(1000, 8000, 0.02))
    client = TestClient(app)
    with (
        client.websocket_connect("/twilio/stream") as bad,
        client.websocket_connect("/twilio/stream") as good,
    ):
        calls = {"bad": Call(), "good": Call()}
        for ws, call in ((bad, calls["bad"]), (good, calls["good"])):
            ws.send_text(call.connected)
            ws.send_text(call.start)
            ws.send_text(call.media(speech))
            assert len(parsed_media(ws.receive_text(), call.sid)) == FRAME_BYTES

        bad.send_text("{not json")
        closed = bad.receive()
        assert closed["type"] == "websocket.close"
        assert closed["code"] == 1008
        assert closed["reason"].startswith("invalid_json: ")
        bad.close(1000)  # a real peer answers the close; TestClient must be told to

        good.send_text(calls["good"].media(speech))
        assert len(parsed_media(good.receive_text(), calls["good"].sid)) == FRAME_BYTES
        good.send_text(calls["good"].stop())
        closed = good.receive()
        assert (closed["type"], closed["code"]) == ("websocket.close", 1000)
        # Leaving the block cancels the app outright, so wait for both pipelines to wind down.
        deadline = time.monotonic() + 10
        while len(ended) < 2 and time.monotonic() < deadline:
            time.sleep(0.01)
    assert sorted(ended) == sorted(call.sid for call in calls.values())

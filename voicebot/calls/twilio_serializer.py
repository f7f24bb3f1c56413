"""Pipecat serializer for Twilio Media Streams on top of the sans-IO :class:`StreamSession`.

Unlike pipecat's ``TwilioFrameSerializer`` it validates every message (see the policy in
:mod:`telephony.twilio.stream`), converts G.711 with numpy instead of ``audioop``, never
calls Twilio's REST API, and resamples with ~2 ms of delay instead of the ~21-125 ms a
soxr VHQ stream holds back.

Inbound: ``media`` -> :class:`InputAudioRawFrame` at the pipeline input rate, ``dtmf`` ->
:class:`InputDTMFFrame`, ``stop`` -> :class:`CancelWorkerFrame` (the caller is gone: nothing
left to say, so no point draining). Outbound: :class:`OutputAudioRawFrame` at any rate ->
μ-law ``media`` messages of whole 20 ms frames, :class:`InterruptionFrame` -> ``clear``.

Fatal protocol errors go to ``on_fatal_error`` (which should close the socket with 1008
and ``err.close_reason``); the serializer then drops everything until the socket closes.
Without a handler the error is raised out of ``deserialize``.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Awaitable, Callable
from typing import Final

from pipecat.audio.dtmf.types import KeypadEntry
from pipecat.frames.frames import (
    CancelWorkerFrame,
    Frame,
    InputAudioRawFrame,
    InputDTMFFrame,
    InterruptionFrame,
    OutputAudioRawFrame,
    OutputTransportMessageFrame,
    OutputTransportMessageUrgentFrame,
)
from pipecat.processors.frame_processor import FrameProcessorSetup
from pipecat.serializers.base_serializer import FrameSerializer

from telephony.audio import StreamResampler, mono
from telephony.g711 import ulaw_decode, ulaw_encode
from telephony.twilio.messages import (
    Connected,
    Dtmf,
    InboundEvent,
    Mark,
    Media,
    ProtocolError,
    Start,
    Stop,
    clear_message,
    mark_message,
    media_message,
)
from telephony.twilio.stream import StreamSession

__all__ = [
    "FRAME_BYTES",
    "TWILIO_SAMPLE_RATE",
    "FatalErrorHandler",
    "Receive",
    "StartHandler",
    "StreamResampler",
    "TwilioMediaStreamSerializer",
    "read_start",
]

log = logging.getLogger(__name__)

TWILIO_SAMPLE_RATE: Final = 8000
#: One outbound media message: 20 ms of 8 kHz μ-law, what Twilio itself sends.
FRAME_BYTES: Final = TWILIO_SAMPLE_RATE * 20 // 1000

FatalErrorHandler = Callable[[ProtocolError], Awaitable[None]]
StartHandler = Callable[[Start], Awaitable[None]]
Receive = Callable[[], Awaitable[str | bytes | None]]


class TwilioMediaStreamSerializer(FrameSerializer):
    """Frames <-> Twilio Media Streams messages for one call.

    Args:
        session: The call's protocol state. Pass one that already consumed ``connected``
            and ``start`` (see :func:`read_start`) or a fresh one to let the serializer see
            the handshake itself.
        sample_rate: Pipeline input rate for ``InputAudioRawFrame`` (8000 or 16000 are
            typical); defaults to ``audio_in_sample_rate`` from pipecat's setup. Keep it
            equal to the transport's ``audio_in_sample_rate``.
        on_fatal_error: Awaited once with the first fatal :class:`ProtocolError`.
        on_start: Awaited with the ``start`` event if it arrives through ``deserialize``.
        params: Base serializer options (RTVI message filtering).
    """

    def __init__(
        self,
        session: StreamSession | None = None,
        *,
        sample_rate: int | None = None,
        on_fatal_error: FatalErrorHandler | None = None,
        on_start: StartHandler | None = None,
        params: FrameSerializer.InputParams | None = None,
    ) -> None:
        super().__init__(params)
        if sample_rate is not None and sample_rate <= 0:
            raise ValueError(f"sample_rate must be positive, got {sample_rate}")
        self._session = session if session is not None else StreamSession()
        self._requested_rate = sample_rate
        self._in_rate = sample_rate or 0
        self._on_fatal_error = on_fatal_error
        self._on_start = on_start
        self._in_resampler: StreamResampler | None = None
        self._out_resampler: StreamResampler | None = None
        self._out_pending = bytearray()
        # Pipecat interrupts on every caller turn; a `clear` only means something after audio.
        self._audio_since_clear = False
        self._fatal_error: ProtocolError | None = None

    @property
    def session(self) -> StreamSession:
        return self._session

    @property
    def start(self) -> Start | None:
        return self._session.start

    @property
    def stream_sid(self) -> str | None:
        return self._session.stream_sid

    @property
    def call_sid(self) -> str | None:
        start = self._session.start
        return start.call_sid if start else None

    @property
    def custom_parameters(self) -> dict[str, str]:
        start = self._session.start
        return dict(start.custom_parameters) if start else {}

    @property
    def fatal_error(self) -> ProtocolError | None:
        """The fatal error that ended this stream, if one did."""
        return self._fatal_error

    # pipecat's own FrameSerializer.setup narrows BaseObject.setup's argument the same way.
    async def setup(self, setup: FrameProcessorSetup) -> None:  # type: ignore[override]
        # The input and the output transport both call this, so it must be idempotent.
        rate = self._requested_rate or setup.audio_in_sample_rate
        if rate != self._in_rate:
            self._in_rate = rate
            self._in_resampler = None

    async def deserialize(self, data: str | bytes) -> Frame | None:
        if self._fatal_error is not None:
            # Draining until the close handshake ends the transport's receive loop.
            return None
        try:
            event = self._session.receive(data)
        except ProtocolError as err:
            await self._handle_protocol_error(err)
            return None
        return await self._to_frame(event)

    async def serialize(self, frame: Frame) -> str | bytes | None:
        if self._fatal_error is not None:
            return None
        if isinstance(frame, InterruptionFrame):
            return self._clear()
        if isinstance(frame, OutputAudioRawFrame):
            return self._media(frame)
        if isinstance(frame, (OutputTransportMessageFrame, OutputTransportMessageUrgentFrame)):
            return self._app_message(frame)
        return None

    def _app_message(
        self, frame: OutputTransportMessageFrame | OutputTransportMessageUrgentFrame
    ) -> str | None:
        if self.should_ignore_frame(frame):
            return None
        message = frame.message
        # A playback marker from the app ({"event": "mark", "name": ...}) knows no stream: stamp ours.
        if isinstance(message, dict) and message.get("event") == "mark" and "streamSid" not in message:
            sid = self.stream_sid
            return mark_message(sid, str(message.get("name", ""))) if sid is not None else None
        return json.dumps(message)

    async def _handle_protocol_error(self, err: ProtocolError) -> None:
        if not err.fatal:
            log.warning("%s: ignoring message: %s", self, err)
            return
        self._fatal_error = err
        log.error("%s: closing stream %s: %s", self, self.stream_sid, err)
        if self._on_fatal_error is None:
            raise err
        await self._on_fatal_error(err)

    async def _to_frame(self, event: InboundEvent) -> Frame | None:
        if isinstance(event, Media):
            return self._audio_in(event)
        if isinstance(event, Dtmf):
            return self._dtmf(event)
        if isinstance(event, Stop):
            log.info("%s: stream %s stopped", self, event.stream_sid)
            return CancelWorkerFrame(reason=f"Twilio stream {event.stream_sid} stopped")
        if isinstance(event, Start) and self._on_start is not None:
            await self._on_start(event)
        elif isinstance(event, Mark):
            log.info("stream %s: the caller heard %r to its end", event.stream_sid, event.name)
        elif isinstance(event, Connected):
            log.debug("%s: connected, protocol %s %s", self, event.protocol, event.version)
        return None

    def _audio_in(self, media: Media) -> InputAudioRawFrame | None:
        # Only the caller's track feeds the pipeline; a both_tracks fork also has our own.
        if media.track != "inbound" or not media.payload:
            return None
        if self._in_rate <= 0:
            raise RuntimeError(f"{self}: setup() was not called and no sample_rate was given")
        pcm = ulaw_decode(media.payload)
        if self._in_rate != TWILIO_SAMPLE_RATE:
            if self._in_resampler is None:
                self._in_resampler = StreamResampler(TWILIO_SAMPLE_RATE, self._in_rate)
            pcm = self._in_resampler.process(pcm)
        if pcm.size == 0:
            return None
        audio = pcm.astype("<i2", copy=False).tobytes()
        return InputAudioRawFrame(audio=audio, sample_rate=self._in_rate, num_channels=1)

    def _dtmf(self, dtmf: Dtmf) -> InputDTMFFrame | None:
        try:
            return InputDTMFFrame(button=KeypadEntry(dtmf.digit))
        except ValueError:
            # KeypadEntry has no A-D; those tones carry nothing our dialogue understands.
            log.warning("%s: ignoring DTMF digit %r", self, dtmf.digit)
            return None

    def _media(self, frame: OutputAudioRawFrame) -> str | None:
        sid = self.stream_sid
        if sid is None:
            log.debug("%s: dropping audio sent before 'start'", self)
            return None
        pcm = mono(frame.audio, frame.num_channels)
        if frame.sample_rate != TWILIO_SAMPLE_RATE:
            pcm = self._output_resampler(frame.sample_rate).process(pcm)
        self._out_pending += ulaw_encode(pcm)
        # Whole 20 ms frames only; the remainder waits for the next chunk of audio.
        ready = len(self._out_pending) - len(self._out_pending) % FRAME_BYTES
        if ready == 0:
            return None
        payload = bytes(self._out_pending[:ready])
        del self._out_pending[:ready]
        self._audio_since_clear = True
        return media_message(sid, payload)

    def _output_resampler(self, rate: int) -> StreamResampler:
        if self._out_resampler is None or self._out_resampler.in_rate != rate:
            self._out_resampler = StreamResampler(rate, TWILIO_SAMPLE_RATE)
        return self._out_resampler

    def _clear(self) -> str | None:
        self._out_pending.clear()
        if self._out_resampler is not None:
            self._out_resampler.reset()
        if not self._audio_since_clear:
            return None
        self._audio_since_clear = False
        sid = self.stream_sid
        return clear_message(sid) if sid is not None else None


async def read_start(session: StreamSession, receive: Receive, *, max_messages: int = 8) -> Start | None:
    """Feed ``session`` from ``receive`` until the ``start`` event; None if the peer left first.

    For reading the handshake before building the pipeline, so the call's SIDs and custom
    parameters are known up front. ``receive`` returns the next text/binary message, or
    None once the socket is closed. Non-fatal errors are logged and skipped.

    Raises:
        ProtocolError: a fatal error, or no ``start`` within ``max_messages`` messages.
    """
    for _ in range(max_messages):
        data = await receive()
        if data is None:
            return None
        try:
            event = session.receive(data)
        except ProtocolError as err:
            if err.fatal:
                raise
            log.warning("ignoring message before 'start': %s", err)
            continue
        if isinstance(event, Start):
            return event
    raise ProtocolError("no_start", f"no 'start' within the first {max_messages} messages")

"""One SIP call as a Pipecat transport: RTP audio in and out, RFC 4733 DTMF both ways.

Inbound 8 kHz audio is band-limited up to the pipeline rate; outbound audio goes down to 8 kHz
and into the RTP session's 20 ms clock. Writing waits while more than two packets are queued, so
the pipeline sees the wire's pace and a barge-in has at most ~40 ms of bot audio left to drop.
"""

from __future__ import annotations

import asyncio
import logging

import numpy as np
from pipecat.audio.dtmf.types import KeypadEntry
from pipecat.frames.frames import (
    CancelFrame,
    EndFrame,
    Frame,
    InputAudioRawFrame,
    InputDTMFFrame,
    InterruptionFrame,
    OutputAudioRawFrame,
    OutputDTMFFrame,
    OutputDTMFUrgentFrame,
    OutputTransportMessageFrame,
    OutputTransportMessageUrgentFrame,
    StartFrame,
)
from pipecat.processors.frame_processor import FrameDirection
from pipecat.transports.base_input import BaseInputTransport
from pipecat.transports.base_output import BaseOutputTransport
from pipecat.transports.base_transport import BaseTransport, TransportParams

from telephony.audio import StreamResampler, mono
from telephony.sip.gateway import SipCallHandle
from telephony.sip.media import RTP_RATE
from telephony.sip.rtp import AudioChunk

log = logging.getLogger(__name__)

#: Packets allowed in the send queue before a write waits (2 x 20 ms).
SEND_AHEAD_FRAMES = 2


class SipInputTransport(BaseInputTransport):
    def __init__(self, transport: SipCallTransport, params: TransportParams) -> None:
        super().__init__(params)
        self._owner = transport
        self._task: asyncio.Task[None] | None = None
        self._hangup_watch: asyncio.Task[None] | None = None
        self._resampler: StreamResampler | None = None

    async def start(self, frame: StartFrame) -> None:
        await super().start(frame)
        if self._task is None:
            self._task = self.create_task(self._receive())
        await self.set_transport_ready(frame)
        # Watched from the pipeline's start, when the session listens: a BYE that came within
        # milliseconds of our 200 OK is already set on the handle and is delivered at once.
        if self._hangup_watch is None:
            self._hangup_watch = self.create_task(self._owner.watch_hangup())

    async def stop(self, frame: EndFrame) -> None:
        await super().stop(frame)
        await self._stop_task()

    async def cancel(self, frame: CancelFrame) -> None:
        await super().cancel(frame)
        await self._stop_task()

    async def _stop_task(self) -> None:
        for task in (self._task, self._hangup_watch):
            if task is not None:
                await self.cancel_task(task)
        self._task = self._hangup_watch = None

    async def _receive(self) -> None:
        media = self._owner.media
        rate = self.sample_rate
        if rate != RTP_RATE:
            self._resampler = StreamResampler(RTP_RATE, rate)
        while True:
            item = await media.inbound.get()
            if isinstance(item, AudioChunk):
                pcm = item.pcm if self._resampler is None else self._resampler.process(item.pcm)
                await self.push_audio_frame(InputAudioRawFrame(pcm.tobytes(), rate, 1))
            else:
                try:
                    entry = KeypadEntry(item.digit)
                except ValueError:
                    continue  # A-D: no keypad entry in Pipecat
                await self.push_frame(InputDTMFFrame(button=entry))


class SipOutputTransport(BaseOutputTransport):
    def __init__(self, transport: SipCallTransport, params: TransportParams) -> None:
        super().__init__(params)
        self._owner = transport
        self._resampler: StreamResampler | None = None
        self._resampler_rate = 0

    async def start(self, frame: StartFrame) -> None:
        await super().start(frame)
        await self.set_transport_ready(frame)

    async def process_frame(self, frame: Frame, direction: FrameDirection) -> None:
        await super().process_frame(frame, direction)
        if isinstance(frame, InterruptionFrame):
            self._owner.media.clear()
            if self._resampler is not None:
                self._resampler.reset()

    async def write_audio_frame(self, frame: OutputAudioRawFrame) -> bool:
        if self._owner.closed:
            return False
        pcm = mono(frame.audio, frame.num_channels)
        if frame.sample_rate != RTP_RATE:
            if self._resampler is None or self._resampler_rate != frame.sample_rate:
                self._resampler = StreamResampler(frame.sample_rate, RTP_RATE)
                self._resampler_rate = frame.sample_rate
            pcm = self._resampler.process(pcm)
        media = self._owner.media
        media.play(np.ascontiguousarray(pcm, dtype=np.int16))
        await media.wait_queue_below(SEND_AHEAD_FRAMES + 1)
        return True

    async def send_message(
        self, frame: OutputTransportMessageFrame | OutputTransportMessageUrgentFrame
    ) -> None:
        # Twilio-style marks have no SIP counterpart: the audio clock above already tells when
        # a reply has gone out.
        pass

    def _supports_native_dtmf(self) -> bool:
        return True

    async def _write_dtmf_native(self, frame: OutputDTMFFrame | OutputDTMFUrgentFrame) -> None:
        for button in frame.buttons:
            self._owner.media.send_dtmf(str(button.value))


class SipCallTransport(BaseTransport):
    """One answered SIP call as a Pipecat transport; the call runner builds the pipeline on it."""

    def __init__(self, call: SipCallHandle, in_rate: int, out_rate: int, name: str | None = None) -> None:
        super().__init__(name=name)
        self.call = call
        self.media = call.media
        self.closed = False
        params = TransportParams(
            audio_in_enabled=True,
            audio_out_enabled=True,
            audio_in_sample_rate=in_rate,
            audio_out_sample_rate=out_rate,
            audio_out_10ms_chunks=2,
        )
        self._input = SipInputTransport(self, params)
        self._output = SipOutputTransport(self, params)
        self._register_event_handler("on_client_connected")
        self._register_event_handler("on_client_disconnected")

    def input(self) -> SipInputTransport:
        return self._input

    def output(self) -> SipOutputTransport:
        return self._output

    async def watch_hangup(self) -> None:
        """End the pipeline once the call is over on the SIP side (BYE, CANCEL, timeout)."""
        await self.call.ended.wait()
        if self.closed:
            return
        self.closed = True
        reason = self.call.end_reason or "call ended"
        log.debug("SIP call transport closed: %s", reason)
        await self._call_event_handler("on_client_disconnected", reason)

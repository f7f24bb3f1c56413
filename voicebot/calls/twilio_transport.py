"""Thin asyncio adapter: a Starlette WebSocket speaking Media Streams -> one Pipecat transport.

The handshake (`connected`, `start`) is read here, before the pipeline exists, so the call's
SIDs and parameters are known up front. A fatal protocol error closes the socket with 1008
and the reason; the transport then sees the disconnect and the call ends, other calls untouched.
"""

from __future__ import annotations

import logging
from contextlib import suppress
from dataclasses import dataclass

from pipecat.transports.websocket.fastapi import FastAPIWebsocketParams, FastAPIWebsocketTransport
from starlette.websockets import WebSocket, WebSocketDisconnect, WebSocketState

from telephony.twilio.messages import ProtocolError, Start
from telephony.twilio.stream import StreamSession
from voicebot.calls.twilio_serializer import TwilioMediaStreamSerializer, read_start

log = logging.getLogger(__name__)


@dataclass
class MediaStream:
    websocket: WebSocket
    session: StreamSession
    start: Start

    def transport(self, in_rate: int, out_rate: int) -> FastAPIWebsocketTransport:
        serializer = TwilioMediaStreamSerializer(
            self.session, sample_rate=in_rate, on_fatal_error=self._close_on_error
        )
        params = FastAPIWebsocketParams(
            audio_in_enabled=True,
            audio_out_enabled=True,
            audio_in_sample_rate=in_rate,
            audio_out_sample_rate=out_rate,
            audio_out_10ms_chunks=2,  # one 20 ms frame per media message, as Twilio sends
            add_wav_header=False,
            serializer=serializer,
            allowed_origins=[],
        )
        return FastAPIWebsocketTransport(self.websocket, params)

    async def _close_on_error(self, err: ProtocolError) -> None:
        if self.websocket.application_state == WebSocketState.CONNECTED:
            with suppress(RuntimeError):  # already closing
                await self.websocket.close(code=err.close_code, reason=err.close_reason)


async def accept_media_stream(websocket: WebSocket, max_message_bytes: int) -> MediaStream:
    """Read up to the `start` event on an accepted socket.

    Raises ProtocolError for a fatal handshake error and WebSocketDisconnect if the peer left.
    """
    session = StreamSession(max_message_bytes=max_message_bytes)

    async def receive() -> str | bytes | None:
        message = await websocket.receive()
        if message["type"] == "websocket.disconnect":
            return None
        return message.get("text") if message.get("text") is not None else message.get("bytes")

    start = await read_start(session, receive)
    if start is None:
        raise WebSocketDisconnect(code=1000)
    return MediaStream(websocket, session, start)

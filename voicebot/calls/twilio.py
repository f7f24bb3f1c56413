"""Twilio Media Streams calls: validate the stream's start, admit the call, run it."""

from __future__ import annotations

import asyncio
import logging

from starlette.websockets import WebSocket, WebSocketDisconnect, WebSocketState

from telephony.twilio.messages import ProtocolError
from telephony.twilio.stream import StreamState
from voicebot.calls.admission import open_call, rate_limited, resumable_call
from voicebot.calls.call import CallInfo
from voicebot.calls.runner import INPUT_SAMPLE_RATE, run_call
from voicebot.calls.twilio_transport import accept_media_stream
from voicebot.resources import OUTPUT_SAMPLE_RATE, Resources
from voicebot.storage.numbers import mask

log = logging.getLogger(__name__)

HANDSHAKE_TIMEOUT_SECS = 10.0


async def refuse(websocket: WebSocket, code: int, reason: str) -> None:
    if websocket.application_state == WebSocketState.CONNECTING:
        await websocket.accept()
    await websocket.close(code=code, reason=reason[:120])


async def run_twilio_call(websocket: WebSocket, res: Resources, *, signed: bool = False) -> None:
    await websocket.accept()
    try:
        stream = await asyncio.wait_for(
            accept_media_stream(websocket, res.settings.ws_max_message_bytes), HANDSHAKE_TIMEOUT_SECS
        )
    except TimeoutError:
        await refuse(websocket, 1008, "no start event within 10 s")
        return
    except ProtocolError as err:
        log.warning("rejected media stream: %s", err.close_reason)
        await refuse(websocket, err.close_code, err.close_reason)
        return
    except WebSocketDisconnect:
        return
    start = stream.start
    params = start.custom_parameters
    source_ip = websocket.client.host if websocket.client else ""
    refusal = await asyncio.to_thread(rate_limited, res, params.get("From", ""), source_ip)
    if refusal is not None:
        log.warning("refusing media stream %s: %s", start.stream_sid, refusal[0])
        await refuse(websocket, 1008, refusal[0])
        return
    call = CallInfo(
        call_id="",
        gateway="twilio",
        from_number=params.get("From", ""),
        to_number=params.get("To", ""),
        stream_id=start.stream_sid,
        external_id=start.call_sid,
        connection_lost=lambda: stream.session.state is not StreamState.STOPPED,
    )
    call.resume_from = await asyncio.to_thread(resumable_call, res, call, signed=signed)
    # The CallSid was checked to be CA + 32 hex digits: safe as the base of our own id. A reused
    # CallSid gets a suffixed id here, the one place ids are given.
    if not await asyncio.to_thread(open_call, res, call, start.call_sid):
        log.warning("refusing call: %d calls already active", res.settings.max_calls)
        await refuse(websocket, 1013, "at capacity, try again later")
        return
    log.info("call %s started (stream %s, from %s)", call.call_id, call.stream_id, mask(call.from_number))

    async def handoff() -> bool:
        # Media Streams has no transfer of its own (Twilio's is a REST call with <Dial> TwiML).
        await asyncio.to_thread(
            res.records.set_transfer, call.call_id, "", "not supported on the Media Streams gateway"
        )
        return False

    await run_call(stream.transport(INPUT_SAMPLE_RATE, OUTPUT_SAMPLE_RATE), call, res, on_handoff=handoff)

"""One call: compose the gateway transport, the pipeline stages and the records.

The session owns no protocol or model logic; it wires what the other packages provide.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
import wave
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from fastapi import WebSocket
from pipecat.frames.frames import TTSAudioRawFrame
from pipecat.observers.base_observer import BaseObserver, FramePushed
from pipecat.pipeline.pipeline import Pipeline
from pipecat.pipeline.worker import PipelineParams, PipelineWorker
from pipecat.processors.audio.audio_buffer_processor import AudioBufferProcessor
from pipecat.processors.audio.vad_processor import VADProcessor
from pipecat.services.tts_service import TTSService
from pipecat.transports.base_transport import BaseTransport
from pipecat.turns.user_start import VADUserTurnStartStrategy
from pipecat.turns.user_turn_processor import UserTurnProcessor
from pipecat.turns.user_turn_strategies import UserTurnStrategies
from pipecat.workers.runner import WorkerRunner
from starlette.websockets import WebSocketDisconnect, WebSocketState

from asr.stt import LocalWhisperSTTService
from asr.turn import make_turn_stop_strategy, make_vad
from voicebot.dialogue import CallMind, DialogueProcessor, TurnRecord
from voicebot.resources import OUTPUT_SAMPLE_RATE, Resources

log = logging.getLogger(__name__)

INPUT_SAMPLE_RATE = 16000  # what Silero, Smart Turn and Whisper want
RECORDING_SAMPLE_RATE = 8000  # the telephone band is all a call carries
HANDSHAKE_TIMEOUT_SECS = 10.0
LIVE_TTL_SECS = 3600


@dataclass
class CallInfo:
    call_id: str
    gateway: str
    from_number: str = ""
    to_number: str = ""
    stream_id: str = ""
    direction: str = "inbound"
    recorded: bool = False  # the dialer already stored the call row (outbound)


Handoff = Callable[[], Awaitable[bool]]


class FirstTTSAudioObserver(BaseObserver):
    """Stamps the first synthesized audio of each reply on the dialogue's turn record."""

    def __init__(self, tts: TTSService, dialogue: DialogueProcessor) -> None:
        super().__init__()
        self._tts = tts
        self._dialogue = dialogue

    async def on_push_frame(self, data: FramePushed) -> None:
        if data.source is self._tts and isinstance(data.frame, TTSAudioRawFrame):
            self._dialogue.note_first_tts_audio()


class CallRecorder:
    """Streams both sides of the call into a stereo WAV (caller left, bot right) as it goes."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        # Kept open for the whole call and closed in close(): the recording is written as it goes.
        self._wav = wave.open(str(path), "wb")  # noqa: SIM115
        self._wav.setnchannels(2)
        self._wav.setsampwidth(2)
        self._wav.setframerate(RECORDING_SAMPLE_RATE)
        self.processor = AudioBufferProcessor(
            sample_rate=RECORDING_SAMPLE_RATE,
            num_channels=2,
            buffer_size=RECORDING_SAMPLE_RATE * 2 * 2,  # flush about every second of audio
            auto_start_recording=True,
        )
        self.processor.add_event_handler("on_audio_data", self._on_audio)

    async def _on_audio(self, _processor, audio: bytes, sample_rate: int, channels: int) -> None:
        if self._wav is not None and audio:
            await asyncio.to_thread(self._wav.writeframes, audio)

    def close(self) -> None:
        if self._wav is not None:
            self._wav.close()
            self._wav = None


def make_tts(res: Resources) -> TTSService:
    from tts.piper import LocalPiperTTSService

    if res.settings.tts == "edge":
        from tts.edge import EdgeTTSService

        return EdgeTTSService(res.settings.edge_voice, fallback=res.synth)
    return LocalPiperTTSService(res.synth, cache=res.cache)


async def run_call(
    transport: BaseTransport, call: CallInfo, res: Resources, on_handoff: Handoff | None = None
) -> None:
    """Run the per-call pipeline on a gateway transport until the call ends, recording it.

    ``on_handoff`` connects the caller to a human when the dialogue decides so; without one
    (Twilio Media Streams cannot transfer by itself) the caller is told no agent is reachable."""
    settings = res.settings
    memory_key = f"{call.gateway}:{call.call_id}"  # the gateway's id: a reconnecting call keeps its memory
    started_at = datetime.now(UTC)
    recording = CallRecorder(
        settings.recordings_dir
        / started_at.strftime("%Y/%m/%d")
        / f"{call.call_id}-{uuid.uuid4().hex[:8]}.wav"
    )
    if call.recorded:
        await asyncio.to_thread(res.records.set_recording, call.call_id, str(recording.path))
    else:
        call.call_id = await asyncio.to_thread(_record_call_start, res, call, recording.path)
    await asyncio.to_thread(
        res.live.add, call.call_id, {"gateway": call.gateway, "from": call.from_number}, LIVE_TTL_SECS
    )

    async def store_turn(turn: TurnRecord) -> None:
        await asyncio.to_thread(
            res.records.add_turn,
            call.call_id,
            index=turn.index,
            caller_text=turn.caller_text,
            bot_text=turn.bot_text,
            route=turn.route,
            retrieved=turn.retrieved,
            dtmf=turn.dtmf,
            interrupted=turn.interrupted,
            latency=turn.latency_ms(),
            reason=turn.reason,
            intent=turn.intent,
            intent_confidence=turn.intent_confidence,
            sentiment=turn.sentiment,
            slots=turn.slots,
        )
        await asyncio.to_thread(res.live.touch, call.call_id, LIVE_TTL_SECS)

    stt = LocalWhisperSTTService(res.engine)
    turns = UserTurnProcessor(
        user_turn_strategies=UserTurnStrategies(
            start=[VADUserTurnStartStrategy()],
            stop=[make_turn_stop_strategy(settings.turn_max_silence_secs, settings.turn_grace_secs)],
        ),
    )
    mind = CallMind(
        brain=res.brain,
        memory_store=res.memory,
        memory_key=memory_key,
        llm=res.llm,
        llm_deadline_s=settings.llm_deadline_secs,
        llm_max_tokens=settings.llm_max_tokens,
    )
    dialogue = DialogueProcessor(mind, settings.greeting, store_turn, settings.vad_stop_secs, on_handoff)
    tts = make_tts(res)
    pipeline = Pipeline(
        [
            transport.input(),
            VADProcessor(vad_analyzer=make_vad(settings.vad_stop_secs)),
            stt,
            turns,
            dialogue,
            tts,
            transport.output(),
            recording.processor,
        ]
    )
    worker = PipelineWorker(
        pipeline,
        params=PipelineParams(
            audio_in_sample_rate=INPUT_SAMPLE_RATE,
            audio_out_sample_rate=OUTPUT_SAMPLE_RATE,
        ),
        enable_rtvi=False,
        enable_turn_tracking=False,
        idle_timeout_secs=settings.call_idle_timeout_secs,
        cancel_runner_on_idle_timeout=False,
        observers=[FirstTTSAudioObserver(tts, dialogue)],
        check_dangling_tasks=False,
    )
    end_reason = "hangup"

    @transport.event_handler("on_client_disconnected")
    async def _on_disconnected(_transport, _client) -> None:
        await worker.cancel(reason="caller disconnected")

    @worker.event_handler("on_idle_timeout")
    async def _on_idle(_worker) -> None:
        nonlocal end_reason
        end_reason = "idle timeout"

    runner = WorkerRunner(handle_sigint=False, check_dangling_tasks=False)
    started = time.monotonic()
    try:
        await runner.add_workers(worker)
        await runner.run()
        end_reason = dialogue.end_reason or end_reason
    except asyncio.CancelledError:
        end_reason = "server shutdown"
        await worker.cancel(reason="server shutdown")
        raise
    except Exception:
        end_reason = "error"
        log.exception("call %s failed", call.call_id)
    finally:
        recording.close()
        await asyncio.shield(_finalize(res, call, end_reason, recording.path))
        log.info("call %s ended (%s) after %.1f s", call.call_id, end_reason, time.monotonic() - started)


def rate_limited(res: Resources, number: str, source_ip: str) -> tuple[str, float] | None:
    """Why a new call from this number / address is over its rate, and when to retry; None: admit.

    Token buckets in Redis, shared by every worker: one per caller number, one per source address.
    """
    settings = res.settings
    checks = (
        ("number", number, settings.rate_limit_number_per_min, settings.rate_limit_number_burst),
        ("ip", source_ip, settings.rate_limit_ip_per_min, settings.rate_limit_ip_burst),
    )
    for kind, key, per_min, burst in checks:
        if not key or per_min <= 0:
            continue
        try:
            verdict = res.limiter.hit(kind, key, per_min, burst)
        except Exception:
            log.exception("rate limiter unavailable; admitting the call")
            return None
        if not verdict.allowed:
            who = "this caller number" if kind == "number" else "this address"
            retry = max(1.0, float(verdict.retry_after_secs))
            return f"rate limited: too many calls from {who}, retry in {retry:.0f} s", retry
    return None


def _record_call_start(res: Resources, call: CallInfo, recording: Path) -> str:
    """Store the call; a gateway that reconnects with the same call id gets a suffixed one."""
    from sqlalchemy.exc import IntegrityError

    for attempt in range(3):
        call_id = call.call_id if attempt == 0 else f"{call.call_id}-{uuid.uuid4().hex[:6]}"
        try:
            return res.records.start_call(
                call_id,
                gateway=call.gateway,
                from_number=call.from_number,
                to_number=call.to_number,
                stream_id=call.stream_id,
                recording_path=str(recording),
                direction=call.direction,
            )
        except IntegrityError:
            log.warning("call id %s is already recorded; storing this call under a new id", call_id)
    raise RuntimeError(f"could not find a free call id for {call.call_id}")


async def _finalize(res: Resources, call: CallInfo, reason: str, recording: Path) -> None:
    try:
        await asyncio.to_thread(res.records.end_call, call.call_id, reason, str(recording))
    finally:
        await asyncio.to_thread(res.live.remove, call.call_id)


async def refuse(websocket: WebSocket, code: int, reason: str) -> None:
    if websocket.application_state == WebSocketState.CONNECTING:
        await websocket.accept()
    await websocket.close(code=code, reason=reason[:120])


async def run_twilio_call(websocket: WebSocket, res: Resources) -> None:
    from telephony.twilio.messages import ProtocolError
    from telephony.twilio.transport import accept_media_stream

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
    if await asyncio.to_thread(res.live.count) >= res.settings.max_calls:
        log.warning("refusing call: %d calls already active", res.settings.max_calls)
        await refuse(websocket, 1013, "at capacity, try again later")
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
        call_id=start.call_sid or f"ws-{uuid.uuid4().hex}",
        gateway="twilio",
        from_number=params.get("From", ""),
        to_number=params.get("To", ""),
        stream_id=start.stream_sid,
    )
    log.info("call %s started (stream %s, from %r)", call.call_id, call.stream_id, call.from_number)

    async def handoff() -> bool:
        # Media Streams has no transfer of its own (Twilio's is a REST call with <Dial> TwiML).
        await asyncio.to_thread(
            res.records.set_transfer, call.call_id, "", "not supported on the Media Streams gateway"
        )
        return False

    await run_call(stream.transport(INPUT_SAMPLE_RATE, OUTPUT_SAMPLE_RATE), call, res, on_handoff=handoff)

"""One call: compose the gateway transport, the pipeline stages and the records.

The session owns no protocol or model logic; it wires what the other packages provide.
"""

from __future__ import annotations

import asyncio
import logging
import re
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
from voicebot.storage.numbers import mask

log = logging.getLogger(__name__)

INPUT_SAMPLE_RATE = 16000  # what Silero, Smart Turn and Whisper want
RECORDING_SAMPLE_RATE = 8000  # the telephone band is all a call carries
HANDSHAKE_TIMEOUT_SECS = 10.0
LIVE_TTL_SECS = 3600


# Abnormal ends after which an unsigned stream of the same call, from the same number, may resume it.
ABNORMAL_ENDS = ("error", "server shutdown", "server restarted", "connection lost")
# What the server's own call ids look like: they name recordings and key memory, so nothing else.
_CALL_ID_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,63}")


@dataclass
class CallInfo:
    call_id: str  # the server's own id: the call row, the live entry, the memory key, the recording
    gateway: str
    from_number: str = ""
    to_number: str = ""
    stream_id: str = ""
    direction: str = "inbound"
    recorded: bool = False  # the dialer already stored the call row (outbound)
    external_id: str = ""  # the gateway's id for the call (Twilio CallSid, SIP Call-ID): data only
    resume_from: str = ""  # an earlier call whose memory this one continues (an authenticated reconnect)
    # Whether the gateway lost the call without a hangup (a Twilio socket closed with no 'stop').
    connection_lost: Callable[[], bool] | None = None


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


def recording_path(recordings_dir: Path, call_id: str, started_at: datetime) -> Path:
    """Where a call's recording goes: named from the server's own call id, always inside the dir."""
    if not _CALL_ID_RE.fullmatch(call_id):
        raise ValueError(f"not a server call id: {call_id!r}")
    root = recordings_dir.resolve()
    path = (root / started_at.strftime("%Y/%m/%d") / f"{call_id}-{uuid.uuid4().hex[:8]}.wav").resolve()
    if not path.is_relative_to(root):
        raise ValueError(f"recording path {path} is outside {root}")
    return path


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
    started_at = datetime.now(UTC)
    try:
        recording = CallRecorder(recording_path(settings.recordings_dir, call.call_id, started_at))
        if call.recorded:
            await asyncio.to_thread(res.records.set_recording, call.call_id, str(recording.path))
        else:
            await asyncio.to_thread(_record_call_start, res, call, recording.path)
    except BaseException:
        await asyncio.to_thread(release_call, res, call.call_id)
        raise
    if call.resume_from:
        await asyncio.to_thread(res.memory.copy, call.resume_from, call.call_id)
        log.info("call %s resumes the memory of call %s", call.call_id, call.resume_from)
    memory_key = call.call_id

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
        if end_reason == "hangup" and call.connection_lost is not None and call.connection_lost():
            end_reason = "connection lost"
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


def admit_call(res: Resources, call: CallInfo, base_id: str) -> bool:
    """Give the call a free server id and a call slot, in one atomic step across every worker.

    The id is `base_id` (a validated gateway id, or one we minted), suffixed when a call already
    holds it. False: at capacity, nothing registered. Redis unreachable: the call is admitted, logged.
    """
    if not _CALL_ID_RE.fullmatch(base_id):
        raise ValueError(f"not a server call id: {base_id!r}")
    info = {"gateway": call.gateway, "from": mask(call.from_number)}
    for attempt in range(5):
        candidate = base_id if attempt == 0 else f"{base_id}-{uuid.uuid4().hex[:6]}"
        if attempt == 0 and res.records.exists(candidate):
            continue
        try:
            verdict = res.live.admit(candidate, info, res.settings.max_calls, LIVE_TTL_SECS)
        except Exception:
            log.exception("live-call registry unavailable; admitting call %s without a slot", candidate)
            verdict = "admitted"
        if verdict == "full":
            return False
        if verdict == "admitted":
            call.call_id = candidate
            return True
    raise RuntimeError(f"could not find a free call id for {base_id}")


def release_call(res: Resources, call_id: str) -> None:
    """Give back a call slot taken by `admit_call` (the call ended, or never started)."""
    try:
        res.live.remove(call_id)
    except Exception:
        log.exception("could not release the slot of call %s; it expires on its own", call_id)


def _record_call_start(res: Resources, call: CallInfo, recording: Path) -> None:
    res.records.start_call(
        call.call_id,
        gateway=call.gateway,
        from_number=call.from_number,
        to_number=call.to_number,
        stream_id=call.stream_id,
        recording_path=str(recording),
        direction=call.direction,
        external_id=call.external_id,
    )


def resumable_call(res: Resources, call: CallInfo, *, signed: bool) -> str:
    """The earlier call whose memory a reconnecting stream may continue, or "".

    Signed by Twilio: the CallSid is Twilio's word that this is the same phone call. Unsigned: only
    the same caller number, within VOICEBOT_RESUME_WINDOW_SECS of an abnormal end (a crash, an
    error), may continue it; a reused CallSid from another number, or after a normal hangup,
    starts empty.
    """
    if not call.external_id:
        return ""
    earlier = res.records.last_call_for(call.gateway, call.external_id)
    if earlier is None:
        return ""
    if signed:
        return earlier.id
    window = res.settings.resume_window_secs
    if window <= 0 or not call.from_number or not earlier.from_hash:
        return ""
    if res.records.numbers is None or res.records.numbers.digest(call.from_number) != earlier.from_hash:
        return ""
    if earlier.ended_at is not None and earlier.end_reason not in ABNORMAL_ENDS:
        return ""
    last_seen = earlier.ended_at or earlier.started_at
    if (datetime.now(UTC) - last_seen).total_seconds() > window:
        return ""
    return earlier.id


async def _finalize(res: Resources, call: CallInfo, reason: str, recording: Path) -> None:
    try:
        await asyncio.to_thread(res.records.end_call, call.call_id, reason, str(recording))
    finally:
        await asyncio.to_thread(release_call, res, call.call_id)


async def refuse(websocket: WebSocket, code: int, reason: str) -> None:
    if websocket.application_state == WebSocketState.CONNECTING:
        await websocket.accept()
    await websocket.close(code=code, reason=reason[:120])


async def run_twilio_call(websocket: WebSocket, res: Resources, *, signed: bool = False) -> None:
    from telephony.twilio.messages import ProtocolError
    from telephony.twilio.stream import StreamState
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
    # The CallSid was checked to be CA + 32 hex digits: safe as the base of our own id.
    if not await asyncio.to_thread(admit_call, res, call, start.call_sid):
        log.warning("refusing call: %d calls already active", res.settings.max_calls)
        await refuse(websocket, 1013, "at capacity, try again later")
        return
    try:
        call.resume_from = await asyncio.to_thread(resumable_call, res, call, signed=signed)
    except Exception:
        await asyncio.to_thread(release_call, res, call.call_id)
        raise
    log.info("call %s started (stream %s, from %s)", call.call_id, call.stream_id, mask(call.from_number))

    async def handoff() -> bool:
        # Media Streams has no transfer of its own (Twilio's is a REST call with <Dial> TwiML).
        await asyncio.to_thread(
            res.records.set_transfer, call.call_id, "", "not supported on the Media Streams gateway"
        )
        return False

    await run_call(stream.transport(INPUT_SAMPLE_RATE, OUTPUT_SAMPLE_RATE), call, res, on_handoff=handoff)

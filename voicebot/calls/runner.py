"""One call, whatever the gateway: the per-call pipeline, run until the call ends, and recorded.

The runner owns no protocol or model logic; it wires what the other packages provide. The call
arrives admitted (:func:`voicebot.calls.admission.open_call`): its id, slot and record exist.
"""

from __future__ import annotations

import asyncio
import logging
import time
from datetime import UTC, datetime

from pipecat.frames.frames import TTSAudioRawFrame
from pipecat.observers.base_observer import BaseObserver, FramePushed
from pipecat.pipeline.pipeline import Pipeline
from pipecat.pipeline.worker import PipelineParams, PipelineWorker
from pipecat.processors.audio.vad_processor import VADProcessor
from pipecat.services.tts_service import TTSService
from pipecat.transports.base_transport import BaseTransport
from pipecat.turns.user_start import VADUserTurnStartStrategy
from pipecat.turns.user_turn_processor import UserTurnProcessor
from pipecat.turns.user_turn_strategies import UserTurnStrategies
from pipecat.workers.runner import WorkerRunner

from asr.stt import LocalWhisperSTTService
from voicebot.calls.admission import LIVE_TTL_SECS, close_call
from voicebot.calls.call import CallInfo
from voicebot.calls.recorder import CallRecorder, recording_path
from voicebot.calls.turns import make_turn_stop_strategy, make_vad
from voicebot.dialogue.processor import CallMind, DialogueProcessor, HandoffHook, TurnRecord
from voicebot.resources import OUTPUT_SAMPLE_RATE, Resources

log = logging.getLogger(__name__)

INPUT_SAMPLE_RATE = 16000  # what Silero, Smart Turn and Whisper want


class FirstTTSAudioObserver(BaseObserver):
    """Stamps the first synthesized audio of each reply on the dialogue's turn record."""

    def __init__(self, tts: TTSService, dialogue: DialogueProcessor) -> None:
        super().__init__()
        self._tts = tts
        self._dialogue = dialogue

    async def on_push_frame(self, data: FramePushed) -> None:
        if data.source is self._tts and isinstance(data.frame, TTSAudioRawFrame):
            self._dialogue.note_first_tts_audio()


def make_tts(res: Resources) -> TTSService:
    from tts.piper import LocalPiperTTSService

    if res.settings.tts == "edge":
        from tts.edge import EdgeTTSService

        return EdgeTTSService(res.settings.edge_voice, fallback=res.synth)
    return LocalPiperTTSService(res.synth, cache=res.cache)


async def run_call(
    transport: BaseTransport, call: CallInfo, res: Resources, on_handoff: HandoffHook | None = None
) -> None:
    """Run the per-call pipeline on a gateway transport until the call ends, recording it.

    ``on_handoff`` connects the caller to a human when the dialogue decides so; without one
    (Twilio Media Streams cannot transfer by itself) the caller is told no agent is reachable."""
    settings = res.settings
    try:
        recording = CallRecorder(recording_path(settings.recordings_dir, call.call_id, datetime.now(UTC)))
        await asyncio.to_thread(res.records.set_recording, call.call_id, str(recording.path))
    except BaseException:
        await asyncio.to_thread(close_call, res, call.call_id, "error")
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
        await asyncio.shield(
            asyncio.to_thread(close_call, res, call.call_id, end_reason, str(recording.path))
        )
        log.info("call %s ended (%s) after %.1f s", call.call_id, end_reason, time.monotonic() - started)

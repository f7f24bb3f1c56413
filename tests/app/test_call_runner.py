"""The call runner on an in-memory transport: the real pipeline (VAD, Whisper, turn-taking,
dialogue, Piper, recorder) and real stores, with no gateway and no sockets. The caller's voice is
Piper's, played in real time; what the bot says is collected as it would go on the wire."""

from __future__ import annotations

import asyncio
import uuid
import wave
from pathlib import Path

import numpy as np
import pytest
from pipecat.frames.frames import InputAudioRawFrame, OutputAudioRawFrame, StartFrame
from pipecat.transports.base_input import BaseInputTransport
from pipecat.transports.base_output import BaseOutputTransport
from pipecat.transports.base_transport import BaseTransport, TransportParams

from voicebot.calls.admission import open_call
from voicebot.calls.call import CallInfo
from voicebot.calls.runner import INPUT_SAMPLE_RATE, run_call
from voicebot.dialogue.memory import Memory
from voicebot.resources import OUTPUT_SAMPLE_RATE, Resources

CHUNK = INPUT_SAMPLE_RATE // 50  # 20 ms, as a gateway delivers it


class _CallerInput(BaseInputTransport):
    def __init__(self, audio: asyncio.Queue[bytes], params: TransportParams) -> None:
        super().__init__(params)
        self._audio = audio
        self._task: asyncio.Task[None] | None = None

    async def start(self, frame: StartFrame) -> None:
        await super().start(frame)
        await self.set_transport_ready(frame)
        if self._task is None:
            self._task = self.create_task(self._play())

    async def _play(self) -> None:
        silence = bytes(CHUNK * 2)
        while True:
            chunk = silence if self._audio.empty() else self._audio.get_nowait()
            await self.push_audio_frame(InputAudioRawFrame(chunk, INPUT_SAMPLE_RATE, 1))
            await asyncio.sleep(0.02)  # real time: the VAD and turn-taking count wall-clock silence


class _BotOutput(BaseOutputTransport):
    def __init__(self, heard: list[bytes], params: TransportParams) -> None:
        super().__init__(params)
        self._heard = heard

    async def start(self, frame: StartFrame) -> None:
        await super().start(frame)
        await self.set_transport_ready(frame)

    async def write_audio_frame(self, frame: OutputAudioRawFrame) -> bool:
        self._heard.append(frame.audio)
        await asyncio.sleep(len(frame.audio) / 2 / frame.sample_rate)
        return True


class MemoryTransport(BaseTransport):
    """A phone line in memory: `say` queues caller audio, `heard` collects the bot's."""

    def __init__(self) -> None:
        super().__init__()
        params = TransportParams(
            audio_in_enabled=True,
            audio_out_enabled=True,
            audio_in_sample_rate=INPUT_SAMPLE_RATE,
            audio_out_sample_rate=OUTPUT_SAMPLE_RATE,
        )
        self._queue: asyncio.Queue[bytes] = asyncio.Queue()
        self.heard: list[bytes] = []
        self._input = _CallerInput(self._queue, params)
        self._output = _BotOutput(self.heard, params)
        self._register_event_handler("on_client_disconnected")

    def input(self) -> _CallerInput:
        return self._input

    def output(self) -> _BotOutput:
        return self._output

    def say(self, pcm: bytes) -> None:
        for start in range(0, len(pcm), CHUNK * 2):
            self._queue.put_nowait(pcm[start : start + CHUNK * 2].ljust(CHUNK * 2, b"\0"))

    async def hang_up(self) -> None:
        await self._call_event_handler("on_client_disconnected", "caller hung up")


def _opened(res: Resources, **fields: str) -> CallInfo:
    call = CallInfo(call_id="", gateway="test", from_number="+15550100", **fields)
    assert open_call(res, call, f"unit-{uuid.uuid4().hex[:12]}")
    return call


async def _until(predicate, timeout: float) -> None:  # type: ignore[no-untyped-def]
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not predicate():
        assert loop.time() < deadline, "timed out"
        await asyncio.sleep(0.1)


@pytest.mark.timeout(120)
async def test_a_call_is_heard_answered_recorded_and_closed(resources: Resources) -> None:
    call = _opened(resources)
    line = MemoryTransport()
    task = asyncio.create_task(run_call(line, call, resources))
    await _until(lambda: resources.records.get_call(call.call_id).turns, 30)  # the greeting
    question = resources.synth.render("What is your policy on returns?", INPUT_SAMPLE_RATE)
    line.say(question)

    def answered() -> bool:
        detail = resources.records.get_call(call.call_id)
        return detail is not None and any(t.caller_text for t in detail.turns)

    await _until(answered, 40)
    await line.hang_up()
    await asyncio.wait_for(task, 30)

    detail = resources.records.get_call(call.call_id)
    assert detail is not None and detail.end_reason == "hangup", detail
    turn = next(t for t in detail.turns if t.caller_text)
    assert turn.bot_text and turn.latency.get("voice_to_voice", 0) > 0, turn
    assert call.call_id not in resources.live.ids()  # the slot is back
    assert sum(len(chunk) for chunk in line.heard) > OUTPUT_SAMPLE_RATE  # over half a second of bot audio
    assert detail.recording_path is not None
    with wave.open(detail.recording_path) as wav:
        assert wav.getnchannels() == 2
        stereo = np.frombuffer(wav.readframes(wav.getnframes()), dtype=np.int16).reshape(-1, 2)
    caller, bot = np.abs(stereo.astype(np.int32)).max(axis=0)
    assert caller > 1000 and bot > 1000, (caller, bot)  # both sides were recorded


@pytest.mark.timeout(60)
async def test_a_recording_that_cannot_be_opened_closes_the_call_as_an_error(
    resources: Resources, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    (tmp_path / "recordings").write_text("a file where the recordings dir should be")
    monkeypatch.setattr(resources, "settings", resources.settings.model_copy(update={"data_dir": tmp_path}))
    call = _opened(resources)
    with pytest.raises(OSError):
        await run_call(MemoryTransport(), call, resources)
    detail = resources.records.get_call(call.call_id)
    assert detail is not None and detail.end_reason == "error"
    assert call.call_id not in resources.live.ids()


@pytest.mark.timeout(60)
async def test_a_resumed_call_starts_with_the_memory_of_the_one_it_continues(resources: Resources) -> None:
    earlier = _opened(resources)
    resources.memory.save(earlier.call_id, Memory(turns=[("My order is 45712.", "Thanks.")]))
    call = _opened(resources)
    call.resume_from = earlier.call_id
    line = MemoryTransport()
    task = asyncio.create_task(run_call(line, call, resources))
    await _until(lambda: resources.records.get_call(call.call_id).turns, 30)
    await line.hang_up()
    await asyncio.wait_for(task, 30)
    greeting = resources.records.get_call(call.call_id).turns[0]
    assert greeting.reason == "call resumed with 1 remembered exchange(s)", greeting.reason
    assert resources.memory.load(call.call_id).turns[0] == ("My order is 45712.", "Thanks.")

"""The dialogue step of the pipeline: hear a caller turn, let the policy decide, speak, record.

What to say is decided by `voicebot.dialogue.policy.Brain` (intent, sentiment, slots, retrieval, memory); a
generated answer streams through `voicebot.dialogue.generation`, clause by clause, under its deadline. This
module owns the per-call flow: turn boundaries, barge-in, the call's memory, and the turn records.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from pipecat.frames.frames import (
    BotStartedSpeakingFrame,
    BotStoppedSpeakingFrame,
    CancelFrame,
    EndFrame,
    EndWorkerFrame,
    Frame,
    InputDTMFFrame,
    InterimTranscriptionFrame,
    InterruptionFrame,
    OutputTransportMessageUrgentFrame,
    StartFrame,
    TranscriptionFrame,
    TTSSpeakFrame,
    UserStartedSpeakingFrame,
    UserStoppedSpeakingFrame,
    VADUserStoppedSpeakingFrame,
)
from pipecat.processors.frame_processor import FrameDirection, FrameProcessor

from llm import LLMBackend
from voicebot.dialogue.generation import GenerationOutcome, speak_generated
from voicebot.dialogue.memory import Memory, MemoryStore
from voicebot.dialogue.policy import HANDOFF_FAILED, NO_ANSWER, Brain, Decision, settle

log = logging.getLogger(__name__)


@dataclass
class TurnRecord:
    """One exchange: what the caller said (if anything), what the bot answered, and why."""

    index: int
    caller_text: str = ""
    bot_text: str = ""
    route: str = ""
    reason: str = ""
    retrieved: list[dict[str, Any]] = field(default_factory=list)
    dtmf: str = ""
    interrupted: bool = False
    intent: str = ""
    intent_confidence: float | None = None
    sentiment: float | None = None
    slots: dict[str, str] = field(default_factory=dict)
    marks: dict[str, float] = field(default_factory=dict)  # monotonic seconds
    metrics: dict[str, float] = field(default_factory=dict)  # figures that are not moments (LLM speed)

    def mark(self, name: str, at: float | None = None) -> None:
        self.marks.setdefault(name, time.monotonic() if at is None else at)

    def latency_ms(self) -> dict[str, float]:
        """Stage timestamps relative to the end of caller speech, plus voice-to-voice."""
        origin = self.marks.get("speech_end")
        if origin is None:
            return dict(self.metrics)
        out = {name: round((t - origin) * 1000, 1) for name, t in self.marks.items()}
        if "first_audio_sent" in out:
            out["voice_to_voice"] = out["first_audio_sent"]
        return out | self.metrics

    def apply(self, decision: Decision) -> None:
        self.route, self.reason, self.retrieved = decision.route, decision.reason, decision.retrieved
        self.intent, self.intent_confidence = decision.intent.name, round(decision.intent.confidence, 3)
        self.sentiment = None if decision.sentiment is None else round(decision.sentiment.score, 3)
        self.slots = dict(decision.slots)


TurnSink = Callable[[TurnRecord], Awaitable[None]]
#: Connects the caller to a human once the bot has said so; True when the transfer happened.
HandoffHook = Callable[[], Awaitable[bool]]


@dataclass
class CallMind:
    """What the dialogue needs beyond the pipeline: the policy, the LLM, and the call's memory."""

    brain: Brain
    memory_store: MemoryStore
    memory_key: str  # the gateway's call id, so a reconnecting call finds its memory
    llm: LLMBackend | None = None
    llm_deadline_s: float = 1.2
    llm_max_tokens: int = 60


class DialogueProcessor(FrameProcessor):
    """Sits between turn detection and TTS. Consumes transcripts, pushes what the bot says."""

    def __init__(
        self,
        mind: CallMind,
        greeting: str,
        on_turn: TurnSink,
        vad_stop_secs: float,
        on_handoff: HandoffHook | None = None,
    ) -> None:
        super().__init__()
        self._mind = mind
        self._memory: Memory | None = None
        self._on_handoff = on_handoff
        self._handoff_started = False
        self._greeting = greeting
        self._on_turn = on_turn
        self._vad_stop_secs = vad_stop_secs
        self._texts: list[str] = []
        self._user_turn_open = False
        self._bot_speaking = False
        self._dtmf = ""
        self._next_index = 0
        self._listening = self._new_turn()  # the caller turn being heard
        self._speaking: TurnRecord | None = None  # the bot reply in flight, not yet stored
        self._generation: asyncio.Task[None] | None = None
        self._end_after: TurnRecord | None = None  # hang up once this reply has been said
        self.end_reason = ""

    def _new_turn(self) -> TurnRecord:
        turn = TurnRecord(index=self._next_index)
        self._next_index += 1
        return turn

    async def process_frame(self, frame: Frame, direction: FrameDirection) -> None:
        await super().process_frame(frame, direction)
        if isinstance(frame, StartFrame):
            await self.push_frame(frame, direction)
            await self._start()
        elif isinstance(frame, TranscriptionFrame):
            await self._on_transcript(frame)
        elif isinstance(frame, InterimTranscriptionFrame):
            pass  # the caller's words must never reach TTS
        elif isinstance(frame, VADUserStoppedSpeakingFrame):
            now = time.monotonic()
            self._listening.marks["speech_end"] = now - self._vad_stop_secs
            self._listening.marks["vad_stop"] = now
            await self.push_frame(frame, direction)
        elif isinstance(frame, UserStartedSpeakingFrame):
            self._user_turn_open = True
            await self.push_frame(frame, direction)
        elif isinstance(frame, UserStoppedSpeakingFrame):
            self._user_turn_open = False
            self._listening.mark("turn_end")
            await self.push_frame(frame, direction)
            await self._maybe_respond()
        elif isinstance(frame, InputDTMFFrame):
            self._dtmf += str(frame.button.value)
            await self.push_frame(frame, direction)
        elif isinstance(frame, InterruptionFrame):
            await self._on_interruption()
            await self.push_frame(frame, direction)
        elif isinstance(frame, BotStartedSpeakingFrame):
            self._bot_speaking = True
            if self._speaking:
                self._speaking.mark("first_audio_sent")
            await self.push_frame(frame, direction)
        elif isinstance(frame, BotStoppedSpeakingFrame):
            self._bot_speaking = False
            await self._reply_finished()
            await self.push_frame(frame, direction)
        elif isinstance(frame, (EndFrame, CancelFrame)):
            await self._cancel_generation()
            await self._finish()
            await self.push_frame(frame, direction)
        else:
            await self.push_frame(frame, direction)

    def note_first_tts_audio(self) -> None:
        if self._speaking:
            self._speaking.mark("first_tts_audio")

    async def _start(self) -> None:
        mind = self._mind
        try:
            self._memory = await asyncio.to_thread(mind.memory_store.load, mind.memory_key)
        except Exception:
            log.exception("could not load the call's memory; starting afresh")
            self._memory = Memory()
        turn = self._listening
        self._listening = self._new_turn()
        turn.route, turn.reason = "greeting", "call started"
        if self._memory.turns:
            turn.reason = f"call resumed with {len(self._memory.turns)} remembered exchange(s)"
        await self._say(turn, self._greeting)

    async def _on_transcript(self, frame: TranscriptionFrame) -> None:
        text = frame.text.strip()
        if not text:
            return
        # A turn may span several VAD segments; its last transcript is the one that counts.
        self._listening.marks["transcript"] = time.monotonic()
        self._texts.append(text)
        if not self._user_turn_open:
            # The transcript came after turn detection had already closed the turn.
            await self._maybe_respond()

    async def _maybe_respond(self) -> None:
        if not self._texts:
            return
        await self._cancel_generation()
        turn = self._listening
        self._listening = self._new_turn()
        turn.caller_text = " ".join(self._texts)
        self._texts.clear()
        memory = self._memory if self._memory is not None else Memory()
        try:
            decision = await asyncio.to_thread(self._mind.brain.decide, turn.caller_text, memory)
        except Exception:
            log.exception("dialogue decision failed; apologising")
            decision = Decision("error", "dialogue decision failed", NO_ANSWER)
            settle(memory, decision.route, decision.reply)
        turn.mark("decision")
        turn.apply(decision)
        log.info("turn %d: %r -> %s (%s)", turn.index, turn.caller_text, decision.route, decision.reason)
        if decision.generate is not None and self._mind.llm is not None:
            await self._say(turn, "", prefix=decision.prefix)
            self._generation = self.create_task(self._generate(turn, decision), name="generate")
            return
        await self._say(turn, decision.reply or NO_ANSWER, prefix=decision.prefix)
        if decision.end_call:
            self._end_after = turn
            self.end_reason = "bot ended the call after goodbye"
        await self._remember(turn)

    async def _generate(self, turn: TurnRecord, decision: Decision) -> None:
        mind, plan = self._mind, decision.generate
        assert plan is not None and mind.llm is not None
        outcome = GenerationOutcome()
        try:
            async for clause in speak_generated(
                mind.llm, plan, outcome, deadline_s=mind.llm_deadline_s, max_tokens=mind.llm_max_tokens
            ):
                turn.mark("first_clause")
                turn.bot_text = f"{turn.bot_text} {clause}".strip()
                await self.push_frame(TTSSpeakFrame(clause))
        except asyncio.CancelledError:
            outcome.reason = outcome.reason or "caller spoke over the answer"
            raise
        finally:
            turn.route = outcome.route
            turn.reason = f"{turn.reason}; {outcome.reason}" if outcome.reason else turn.reason
            turn.metrics.update(outcome.metrics())
            if self._memory is not None:
                settle(self._memory, turn.route, turn.bot_text)
            self._generation = None
        log.info("turn %d: generated answer -> %s (%s)", turn.index, turn.route, outcome.reason)
        await self._remember(turn)
        if turn is self._speaking and not self._bot_speaking and "first_audio_sent" in turn.marks:
            await self._store_speaking()  # the last clause was already said before generation ended

    async def _remember(self, turn: TurnRecord) -> None:
        memory = self._memory
        if memory is None or not turn.caller_text:
            return
        memory.turns.append((turn.caller_text, turn.bot_text))
        try:
            await asyncio.to_thread(self._mind.memory_store.save, self._mind.memory_key, memory)
        except Exception:
            log.exception("could not save the call's memory")

    async def _cancel_generation(self) -> None:
        task, self._generation = self._generation, None
        if task is not None and not task.done():
            await self.cancel_task(task)

    async def _say(self, turn: TurnRecord, text: str, prefix: str = "") -> None:
        await self._store_speaking()  # a reply still in flight is superseded
        turn.bot_text = f"{prefix} {text}".strip()
        turn.dtmf, self._dtmf = self._dtmf, ""
        self._speaking = turn
        if prefix:
            await self.push_frame(TTSSpeakFrame(prefix))
        if text:
            await self.push_frame(TTSSpeakFrame(text))

    async def _reply_finished(self) -> None:
        turn = self._speaking
        # A stop that belongs to an earlier, interrupted reply must not close this one; nor may a
        # pause between clauses of an answer still being generated.
        if turn is None or "first_audio_sent" not in turn.marks or self._generation is not None:
            return
        # All of the reply is on the wire; a gateway that can (Twilio) reports when the
        # caller has heard it to its end.
        mark = {"event": "mark", "name": f"reply-{turn.index}"}
        await self.push_frame(OutputTransportMessageUrgentFrame(message=mark))
        await self._store_speaking()
        if turn is self._end_after:
            await self.push_frame(EndWorkerFrame(reason=self.end_reason))

    async def _on_interruption(self) -> None:
        await self._cancel_generation()
        if self._speaking:
            self._speaking.interrupted = True
            await self._store_speaking()

    async def _store_speaking(self) -> None:
        turn, self._speaking = self._speaking, None
        if turn is not None:
            await self._on_turn(turn)
            if turn.route == "handoff" and not self._handoff_started:
                # The caller has heard (or cut short) "transferring you": hand over now.
                self._handoff_started = True
                self.create_task(self._hand_off(), name="handoff")

    async def _hand_off(self) -> None:
        ok = False
        if self._on_handoff is not None:
            try:
                ok = await self._on_handoff()
            except Exception:
                log.exception("handoff failed")
        if ok:
            return
        self._handoff_started = False
        turn = self._new_turn()
        turn.route, turn.reason = "handoff_failed", "transfer to a human did not succeed"
        if self._memory is not None:
            settle(self._memory, turn.route, HANDOFF_FAILED)
        await self._say(turn, HANDOFF_FAILED)

    async def _finish(self) -> None:
        await self._store_speaking()
        leftover = " ".join(self._texts)
        if leftover or self._dtmf:
            turn = self._listening
            turn.caller_text, turn.dtmf, turn.route = leftover, self._dtmf, "unanswered"
            turn.reason = "call ended before a reply"
            self._texts.clear()
            self._dtmf = ""
            await self._on_turn(turn)

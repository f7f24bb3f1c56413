"""The dialogue step: decide what to say for a caller turn, and record the turn.

Policy (foundation): speak the top knowledge-base answer when its score clears the threshold;
otherwise say we don't have that information and offer a human. Never invent an answer.
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from pipecat.frames.frames import (
    BotStartedSpeakingFrame,
    BotStoppedSpeakingFrame,
    CancelFrame,
    EndFrame,
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

log = logging.getLogger(__name__)

NO_ANSWER = (
    "I'm sorry, I don't have information about that. Would you like me to connect you with a human agent?"
)
HANDOFF = "Of course. I'm transferring you to a human agent now. Please hold."
HANDOFF_FAILED = (
    "I'm sorry, I couldn't reach an agent right now. I can keep helping you here, or you can call back later."
)

_PEOPLE = (
    r"(?:a |an |the |some |real |live )*"
    r"(?:human|person|agent|representative|rep|operator|somebody|someone)"
)
_ASK_FOR_HUMAN = re.compile(
    rf"\b(?:speak|talk|chat)\s+(?:to|with)\s+{_PEOPLE}\b"
    rf"|\b(?:connect|transfer|put)\s+me\s+(?:to|with|through to)\s+{_PEOPLE}\b"
    rf"|\b(?:want|need|get|like)\s+(?:to\s+(?:speak|talk)\s+to\s+)?{_PEOPLE}\b"
    r"|\b(?:human|operator|representative)\b",
    re.IGNORECASE,
)
_AGENT_ALONE = re.compile(r"^\W*(?:an?\s+)?(?:agent|human|person|operator)(?:\s+please)?\W*$", re.IGNORECASE)
_YES = re.compile(r"^\W*(?:yes|yeah|yep|yup|sure|please|ok|okay|yes please|please do)\b", re.IGNORECASE)


def asks_for_human(text: str) -> bool:
    return bool(_ASK_FOR_HUMAN.search(text) or _AGENT_ALONE.match(text))


class Searcher(Protocol):
    def search(self, text: str, k: int = 3) -> list[Any]: ...


@dataclass(frozen=True)
class Decision:
    route: str
    reply: str
    retrieved: list[dict[str, Any]]
    reason: str


class Answerer:
    def __init__(self, kb: Searcher, threshold: float) -> None:
        self.kb = kb
        self.threshold = threshold

    def decide(self, caller_text: str, previous_route: str = "") -> Decision:
        if asks_for_human(caller_text):
            return Decision("handoff", HANDOFF, [], "caller asked for a human")
        if previous_route == "no_answer" and _YES.match(caller_text):
            return Decision("handoff", HANDOFF, [], "caller accepted the offer of a human")
        hits = self.kb.search(caller_text, k=3)
        retrieved = [{"id": h.id, "score": round(float(h.score), 4), "question": h.question} for h in hits]
        if hits and hits[0].score >= self.threshold:
            top = hits[0]
            return Decision(
                "kb_answer", top.answer, retrieved, f"top score {top.score:.3f} >= {self.threshold}"
            )
        best = f"{hits[0].score:.3f}" if hits else "none"
        return Decision("no_answer", NO_ANSWER, retrieved, f"top score {best} < {self.threshold}")

    def phrases(self) -> list[str]:
        return [NO_ANSWER, HANDOFF, HANDOFF_FAILED]


@dataclass
class TurnRecord:
    """One exchange: what the caller said (if anything) and what the bot answered."""

    index: int
    caller_text: str = ""
    bot_text: str = ""
    route: str = ""
    reason: str = ""
    retrieved: list[dict[str, Any]] = field(default_factory=list)
    dtmf: str = ""
    interrupted: bool = False
    marks: dict[str, float] = field(default_factory=dict)  # monotonic seconds

    def mark(self, name: str, at: float | None = None) -> None:
        self.marks.setdefault(name, time.monotonic() if at is None else at)

    def latency_ms(self) -> dict[str, float]:
        """Stage timestamps relative to the end of caller speech, plus voice-to-voice."""
        origin = self.marks.get("speech_end")
        if origin is None:
            return {}
        out = {name: round((t - origin) * 1000, 1) for name, t in self.marks.items()}
        if "first_audio_sent" in out:
            out["voice_to_voice"] = out["first_audio_sent"]
        return out


TurnSink = Callable[[TurnRecord], Awaitable[None]]
#: Connects the caller to a human once the bot has said so; True when the transfer happened.
HandoffHook = Callable[[], Awaitable[bool]]


class DialogueProcessor(FrameProcessor):
    """Sits between turn detection and TTS. Consumes transcripts, pushes what the bot says."""

    def __init__(
        self,
        answerer: Answerer,
        greeting: str,
        on_turn: TurnSink,
        vad_stop_secs: float,
        on_handoff: HandoffHook | None = None,
    ) -> None:
        super().__init__()
        self._on_handoff = on_handoff
        self._last_route = ""
        self._handoff_started = False
        self._answerer = answerer
        self._greeting = greeting
        self._on_turn = on_turn
        self._vad_stop_secs = vad_stop_secs
        self._texts: list[str] = []
        self._user_turn_open = False
        self._dtmf = ""
        self._next_index = 0
        self._listening = self._new_turn()  # the caller turn being heard
        self._speaking: TurnRecord | None = None  # the bot reply in flight, not yet stored

    def _new_turn(self) -> TurnRecord:
        turn = TurnRecord(index=self._next_index)
        self._next_index += 1
        return turn

    async def process_frame(self, frame: Frame, direction: FrameDirection) -> None:
        await super().process_frame(frame, direction)
        if isinstance(frame, StartFrame):
            await self.push_frame(frame, direction)
            await self._speak_greeting()
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
            if self._speaking:
                self._speaking.mark("first_audio_sent")
            await self.push_frame(frame, direction)
        elif isinstance(frame, BotStoppedSpeakingFrame):
            # A stop that belongs to an earlier, interrupted reply must not close this one.
            if self._speaking and "first_audio_sent" in self._speaking.marks:
                # All of the reply is on the wire; a gateway that can (Twilio) reports when the
                # caller has heard it to its end.
                mark = {"event": "mark", "name": f"reply-{self._speaking.index}"}
                await self.push_frame(OutputTransportMessageUrgentFrame(message=mark))
                await self._store_speaking()
            await self.push_frame(frame, direction)
        elif isinstance(frame, (EndFrame, CancelFrame)):
            await self._finish()
            await self.push_frame(frame, direction)
        else:
            await self.push_frame(frame, direction)

    def note_first_tts_audio(self) -> None:
        if self._speaking:
            self._speaking.mark("first_tts_audio")

    async def _speak_greeting(self) -> None:
        turn = self._listening
        self._listening = self._new_turn()
        turn.route, turn.reason = "greeting", "call started"
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
        turn = self._listening
        self._listening = self._new_turn()
        turn.caller_text = " ".join(self._texts)
        self._texts.clear()
        try:
            decision = await asyncio.to_thread(self._answerer.decide, turn.caller_text, self._last_route)
        except Exception:
            log.exception("dialogue decision failed; apologising")
            decision = Decision("error", NO_ANSWER, [], "knowledge base unavailable")
        turn.mark("decision")
        turn.route, turn.reason, turn.retrieved = decision.route, decision.reason, decision.retrieved
        log.info("turn %d: %r -> %s (%s)", turn.index, turn.caller_text, decision.route, decision.reason)
        await self._say(turn, decision.reply)

    async def _say(self, turn: TurnRecord, text: str) -> None:
        await self._store_speaking()  # a reply still in flight is superseded
        turn.bot_text = text
        turn.dtmf, self._dtmf = self._dtmf, ""
        self._speaking = turn
        await self.push_frame(TTSSpeakFrame(text))

    async def _on_interruption(self) -> None:
        if self._speaking:
            self._speaking.interrupted = True
            await self._store_speaking()

    async def _store_speaking(self) -> None:
        turn, self._speaking = self._speaking, None
        if turn is not None:
            self._last_route = turn.route
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

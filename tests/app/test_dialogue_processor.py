"""The dialogue processor in a Pipecat pipeline of its own, fed the frames turn detection and the
output transport would send: no audio, no sockets. The policy, knowledge base and memory are real."""

from __future__ import annotations

import uuid

from pipecat.audio.dtmf.types import KeypadEntry
from pipecat.frames.frames import (
    BotStartedSpeakingFrame,
    BotStoppedSpeakingFrame,
    EndWorkerFrame,
    Frame,
    InputDTMFFrame,
    InterruptionFrame,
    TranscriptionFrame,
    TTSSpeakFrame,
    UserStartedSpeakingFrame,
    UserStoppedSpeakingFrame,
)
from pipecat.tests.utils import SleepFrame, run_test

from voicebot.dialogue.processor import CallMind, DialogueProcessor, TurnRecord
from voicebot.resources import Resources

GREETING = "Hello, this is the test line."


def _processor(res: Resources, turns: list[TurnRecord], memory_key: str = "") -> DialogueProcessor:
    mind = CallMind(brain=res.brain, memory_store=res.memory, memory_key=memory_key or uuid.uuid4().hex)

    async def store(turn: TurnRecord) -> None:
        turns.append(turn)

    return DialogueProcessor(mind, GREETING, store, vad_stop_secs=0.2)


def _caller_says(*segments: str) -> list[Frame]:
    frames: list[Frame] = [UserStartedSpeakingFrame()]
    for text in segments:
        frames += [TranscriptionFrame(text, "caller", "now"), SleepFrame(0.05)]
    return [*frames, UserStoppedSpeakingFrame(), SleepFrame(0.5)]


def _reply_played() -> list[Frame]:
    return [BotStartedSpeakingFrame(), SleepFrame(0.05), BotStoppedSpeakingFrame(), SleepFrame(0.2)]


def _spoken(frames: list[Frame] | tuple[Frame, ...]) -> list[str]:
    return [f.text for f in frames if isinstance(f, TTSSpeakFrame)]


async def test_greets_answers_from_the_knowledge_base_and_stores_each_turn(resources: Resources) -> None:
    turns: list[TurnRecord] = []
    frames = [
        SleepFrame(0.3),
        *_reply_played(),
        *_caller_says("What is your policy", "on returns?"),
        *_reply_played(),
    ]
    down, _up = await run_test(_processor(resources, turns), frames_to_send=frames)
    spoken = _spoken(down)
    assert spoken[0] == GREETING
    assert len(spoken) == 2 and "return" in spoken[1].lower(), spoken
    assert [t.route for t in turns] == ["greeting", "kb_answer"], [(t.route, t.reason) for t in turns]
    answer = turns[1]
    # Two transcript segments of one caller turn are one question.
    assert answer.caller_text == "What is your policy on returns?"
    assert answer.bot_text == spoken[1]
    assert answer.retrieved and "first_audio_sent" in answer.marks


async def test_an_interrupted_reply_is_stored_as_interrupted(resources: Resources) -> None:
    turns: list[TurnRecord] = []
    frames = [
        SleepFrame(0.3),
        *_reply_played(),
        *_caller_says("Do you ship to Canada?"),
        BotStartedSpeakingFrame(),
        SleepFrame(0.05),
        InterruptionFrame(),
        SleepFrame(0.1),
        BotStoppedSpeakingFrame(),
        SleepFrame(0.2),
    ]
    await run_test(_processor(resources, turns), frames_to_send=frames)
    reply = [t for t in turns if t.caller_text]
    assert len(reply) == 1 and reply[0].interrupted, [(t.caller_text, t.interrupted) for t in turns]


async def test_keypad_digits_are_kept_on_the_turn_they_belong_to(resources: Resources) -> None:
    turns: list[TurnRecord] = []
    digits = [InputDTMFFrame(button=KeypadEntry(d)) for d in "457"]
    frames = [SleepFrame(0.3), *_reply_played(), *digits, *_caller_says("Can I track my package?")]
    await run_test(_processor(resources, turns), frames_to_send=[*frames, *_reply_played()])
    answered = [t for t in turns if t.caller_text]
    assert answered and answered[0].dtmf == "457", [(t.caller_text, t.dtmf) for t in turns]


async def test_memory_carries_slots_to_a_new_processor_on_the_same_key(resources: Resources) -> None:
    key = uuid.uuid4().hex
    first: list[TurnRecord] = []
    frames = [SleepFrame(0.3), *_reply_played(), *_caller_says("My order number is 45712."), *_reply_played()]
    await run_test(_processor(resources, first, key), frames_to_send=frames)
    assert resources.memory.load(key).slots.get("order_number") == "45712"
    again: list[TurnRecord] = []
    question = _caller_says("When will my order arrive?")
    frames = [SleepFrame(0.3), *_reply_played(), *question, *_reply_played()]
    await run_test(_processor(resources, again, key), frames_to_send=frames)
    assert again[0].reason.startswith("call resumed with 1 remembered exchange"), again[0].reason
    # The order number said to the first processor is not asked for again.
    assert again[1].route != "ask_slot", [(t.route, t.reason) for t in again]
    assert "4 5 7 1 2" in again[1].bot_text, again[1].bot_text  # spoken digit by digit


async def test_goodbye_ends_the_call_after_the_reply_is_heard(resources: Resources) -> None:
    turns: list[TurnRecord] = []
    frames = [SleepFrame(0.3), *_reply_played(), *_caller_says("That's all, goodbye."), *_reply_played()]
    down, up = await run_test(_processor(resources, turns), frames_to_send=frames)
    goodbye = [t for t in turns if t.caller_text]
    assert goodbye and goodbye[0].route == "goodbye", [(t.route, t.reason) for t in turns]
    ends = [f for f in (*down, *up) if isinstance(f, EndWorkerFrame)]
    assert ends, "no EndWorkerFrame after the goodbye"

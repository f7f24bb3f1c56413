"""End-to-end: real calls over the Twilio Media Streams WebSocket against the real server.

Every call is driven by a real peer on loopback: the third-party `streamdouble` simulator (its CLI, in
a subprocess), or our own client (`testkit.twilio_caller`). Caller questions are synthesized by
espeak-ng and sent as 8 kHz μ-law in real time; the bot's replies are transcribed with
faster-whisper (tiny.en) and must contain the key words of the right answer. Expected answers are
read from the demo knowledge base (`voicebot/demo/faq.csv`), so the tests follow the data.
"""

from __future__ import annotations

import asyncio
import base64
import csv
import json
import re
import subprocess
import sys
import time
import urllib.parse
import urllib.request
import uuid
from pathlib import Path
from typing import Any
from xml.etree import ElementTree

import numpy as np
import pytest

from testkit.audio import SAMPLE_RATE, match_answer, read_wav, speak, transcribe, ulaw_encode, write_wav
from testkit.cli import CliRunner
from testkit.server import REPO_ROOT, ServerProcess
from testkit.twilio_caller import Reply, ReplyTimeout, TwilioCall
from voicebot.storage.records import CallDetail, Records

pytestmark = pytest.mark.e2e

FAQ_CSV = REPO_ROOT / "voicebot" / "demo" / "faq.csv"
GREETING_TIMEOUT_S = 20.0
REPLY_TIMEOUT_S = 30.0
# The latency stages every answered turn must record (ms relative to the caller's speech end).
LATENCY_STAGES = (
    "vad_stop",
    "transcript",
    "turn_end",
    "decision",
    "first_tts_audio",
    "first_audio_sent",
    "voice_to_voice",
)


# --------------------------------------------------------------------------- the knowledge base


def faq() -> dict[str, str]:
    with FAQ_CSV.open(newline="", encoding="utf-8") as f:
        return {row["question"].strip(): row["answer"].strip() for row in csv.DictReader(f)}


def answer_to(faq_question: str) -> str:
    entries = faq()
    if faq_question not in entries:
        pytest.fail(f"{faq_question!r} is no longer a question in {FAQ_CSV}; update the test", pytrace=False)
    return entries[faq_question]


# Caller wording -> the FAQ question it asks. espeak-ng speech over an 8 kHz line is hard on Whisper
# tiny.en (the server's default model): these are wordings that a sweep of live calls against the server
# showed it transcribing word for word, so a failed answer points at the pipeline, not at the synthetic
# caller's diction. `bench/latency.py` measures accuracy on freer rewordings.
PAYMENT = ("What payment options can I use?", "Which payment methods do you accept?")
NO_CONFIRMATION = ("I did not get an order confirmation email, did my order go through?",) * 2
RETURN_POLICY = ("What is your return policy?",) * 2
INVOICE = ("Can I get an invoice for my order?",) * 2
CARD_DECLINED = ("Why was my card payment declined?",) * 2


# --------------------------------------------------------------------------- helpers


def records(server: ServerProcess) -> Records:
    return Records(server.database_url, run_migrations=False)


async def wait_for_call(
    server: ServerProcess, call_sid: str, *, ended: bool = False, timeout: float = 15.0
) -> CallDetail:
    """The call's record, once it exists (and, with `ended`, once it has ended_at)."""
    store = records(server)
    try:
        deadline = time.monotonic() + timeout
        while True:
            detail = await asyncio.to_thread(store.get_call, call_sid)
            if detail is not None and (not ended or detail.ended_at is not None):
                return detail
            if time.monotonic() >= deadline:
                state = "missing" if detail is None else f"ended_at={detail.ended_at}"
                raise AssertionError(f"call {call_sid} not recorded{' as ended' if ended else ''} ({state})")
            await asyncio.sleep(0.2)
    finally:
        store.close()


async def greeted(call: TwilioCall) -> Reply:
    """Wait for the bot's greeting to be spoken to the end (as the caller hears it)."""
    return await call.hear_greeting(timeout=GREETING_TIMEOUT_S)


async def ask(call: TwilioCall, question: str) -> tuple[Reply, float]:
    """Say `question` in real time and return the bot's reply and its voice-to-voice delay."""
    return await call.ask(speak(question), timeout=REPLY_TIMEOUT_S)


def assert_says(transcript: str, answer: str, what: str, heard_by_server: str = "") -> None:
    ok, fraction, missing = match_answer(transcript, answer)
    assert ok, (
        f"{what}: the reply does not say the expected answer ({fraction:.0%} of its key words heard, "
        f"missing {missing}).\n  bot said: {transcript!r}\n  expected: {answer!r}"
        + (f"\n  the server recorded the caller as: {heard_by_server}" if heard_by_server else "")
    )


def server_heard(server: ServerProcess, call_sid: str) -> str:
    """What the server recorded for a call's turns: for failure messages (an ASR mishearing shows here)."""
    store = records(server)
    try:
        detail = store.get_call(call_sid)
    finally:
        store.close()
    if detail is None:
        return "(no record of the call)"
    return "; ".join(f"turn {t.index} [{t.route}] {t.caller_text!r}" for t in detail.turns) or "(no turns)"


def check_reply(server: ServerProcess, call: TwilioCall, reply: Reply, answer: str, what: str) -> None:
    transcript = transcribe(reply.pcm)
    if not match_answer(transcript, answer)[0]:
        assert_says(transcript, answer, what, server_heard(server, call.call_sid))


def answered_turns(detail: CallDetail) -> list[Any]:
    return [t for t in detail.turns if t.caller_text.strip()]


# --------------------------------------------------------------------------- a. streamdouble


@pytest.mark.timeout(150)
def test_streamdouble_call_gets_the_faq_answer(server: ServerProcess, tmp_path: Path) -> None:
    """The third-party simulator places a call: it waits out the greeting, asks, and records the reply."""
    question, answer = PAYMENT[0], answer_to(PAYMENT[1])
    clip = tmp_path / "question.wav"
    speak(question, clip)
    scenario = tmp_path / "payment.yaml"
    scenario.write_text(
        "name: ask which payment methods are accepted\n"
        "steps:\n"
        "  - wait_for: {event: audio, timeout: 20}\n"  # the greeting starts...
        "  - wait_for: {event: quiet, timeout: 30}\n"  # ...and ends
        f"  - say: {clip}\n"
        "  - wait: 4\n"  # silence on the line while the bot answers
        "  - wait_for: {event: quiet, timeout: 30}\n"
        "  - expect: no_violations\n"
    )
    reply_wav, stereo_wav = tmp_path / "reply.wav", tmp_path / "call.wav"
    cmd = [
        sys.executable, "-m", "streamdouble.cli", "scenario", str(scenario), server.ws_url,
        "--out", str(reply_wav), "--record-stereo", str(stereo_wav), "--json",
        "--param", "From=+15550100111", "--param", "To=+15550100222",
        "--response-timeout", "20", "--quiet-period", "1.0", "--max-drain", "30",
    ]  # fmt: skip
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert done.stdout.strip(), f"streamdouble printed no JSON (exit {done.returncode}):\n{done.stderr}"
    report = json.loads(done.stdout)
    context = f"streamdouble exit {done.returncode}\n{json.dumps(report, indent=1)}\nstderr:\n{done.stderr}"
    assert report["violations"] == [], context
    assert not report["timed_out"] and not report["closed_early"], context
    assert all(e["passed"] for e in report["expectations"]), context
    assert done.returncode == 0, context
    assert reply_wav.exists(), context

    transcript = transcribe(reply_wav)  # greeting, then the answer
    assert re.search(r"help", transcript, re.I), f"no greeting in {transcript!r}"
    assert_says(transcript, answer, "streamdouble call")


# --------------------------------------------------------------------------- b. two questions


@pytest.mark.timeout(180)
async def test_two_questions_in_one_call_are_answered_and_recorded(
    server: ServerProcess, run_cli: CliRunner
) -> None:
    asked = [(q, answer_to(faq_q)) for q, faq_q in (RETURN_POLICY, INVOICE)]
    replies: list[Reply] = []
    async with TwilioCall(server.ws_url) as call:
        greeting = await greeted(call)
        for question, _answer in asked:
            reply, _v2v = await ask(call, question)
            replies.append(reply)
        await call.stop()
    assert not call.protocol_errors, call.protocol_errors
    # After each reply's audio the bot sends a mark, so it learns when the caller heard it all.
    marks = [e.detail["name"] for e in call.events if e.kind == "mark"]
    assert {"reply-0", "reply-1", "reply-2"} <= set(marks), marks

    assert re.search(r"thank|calling|help", transcribe(greeting.pcm), re.I)
    for (question, answer), reply in zip(asked, replies, strict=True):
        assert reply.complete, f"the reply to {question!r} never ended"
        check_reply(server, call, reply, answer, question)

    detail = await wait_for_call(server, call.call_sid, ended=True)
    turns = answered_turns(detail)
    assert len(turns) == 2, (
        f"expected 2 caller turns, got {[(t.caller_text, t.bot_text) for t in detail.turns]}"
    )
    for turn, (question, answer) in zip(turns, asked, strict=True):
        assert match_answer(turn.caller_text, question)[0], (
            f"caller text {turn.caller_text!r} vs {question!r}"
        )
        said, heard = len(question.split()), len(turn.caller_text.split())
        assert heard <= 1.5 * said, (
            f"the recorded caller text has {heard} words for a {said}-word question (ASR repetition?): "
            f"{turn.caller_text!r}"
        )
        assert match_answer(turn.bot_text, answer, min_fraction=0.9)[0], f"bot text {turn.bot_text!r}"
        assert turn.retrieved, f"turn {turn.index} records no retrieved entries"
        for hit in turn.retrieved:
            assert str(hit.get("id", "")) != "" and isinstance(hit.get("score"), int | float), hit
        missing = [s for s in LATENCY_STAGES if not isinstance(turn.latency.get(s), int | float)]
        assert not missing, f"turn {turn.index} latency lacks {missing}: {turn.latency}"
        assert 0 < turn.latency["voice_to_voice"] < 10_000, turn.latency
        assert not turn.interrupted

    shown = run_cli("calls", "show", call.call_sid).stdout
    for turn in turns:
        assert " ".join(turn.caller_text.split()) in shown
        assert " ".join(turn.bot_text.split()) in shown
        assert str(turn.retrieved[0]["id"]) in shown
    for stage in LATENCY_STAGES:
        assert stage in shown, f"`calls show` prints no {stage}:\n{shown}"


# --------------------------------------------------------------------------- c. concurrent calls


@pytest.mark.timeout(180)
async def test_concurrent_calls_get_their_own_answers(server: ServerProcess, run_cli: CliRunner) -> None:
    asked = {
        "payment": (PAYMENT[0], answer_to(PAYMENT[1])),
        "confirmation": (NO_CONFIRMATION[0], answer_to(NO_CONFIRMATION[1])),
    }

    async def one_call(question: str) -> tuple[TwilioCall, Reply]:
        async with TwilioCall(server.ws_url) as call:
            await greeted(call)
            reply, _v2v = await ask(call, question)
            await call.stop()
        return call, reply

    results = await asyncio.gather(*(one_call(q) for q, _a in asked.values()))
    for (name, (_question, answer)), (call, reply) in zip(asked.items(), results, strict=True):
        transcript = transcribe(reply.pcm)
        assert_says(transcript, answer, f"{name} call", server_heard(server, call.call_sid))
        other = next(a for n, (_q, a) in asked.items() if n != name)
        assert match_answer(transcript, other)[1] < 0.5, f"{name} call heard the other answer: {transcript!r}"
        assert not call.protocol_errors, call.protocol_errors

    listed = run_cli("calls", "list").stdout
    for call, _reply in results:
        assert call.call_sid in listed, f"{call.call_sid} missing from `calls list`:\n{listed}"
        detail = await wait_for_call(server, call.call_sid, ended=True)
        assert len(answered_turns(detail)) == 1, [(t.caller_text, t.bot_text) for t in detail.turns]


# --------------------------------------------------------------------------- d. barge-in


@pytest.mark.timeout(150)
@pytest.mark.parametrize("during", ["greeting", "answer"])
async def test_barge_in_clears_the_bot(server: ServerProcess, during: str) -> None:
    """The caller talks over the bot: the server sends `clear` and stops its audio at once, and the
    interrupted turn is recorded as such. The caller's question is then answered."""
    long_question, long_answer = NO_CONFIRMATION[0], answer_to(NO_CONFIRMATION[1])
    barge_question, barge_answer = CARD_DECLINED[0], answer_to(CARD_DECLINED[1])
    async with TwilioCall(server.ws_url) as call:
        assert call.started_at is not None
        if during == "greeting":
            talking_since = await call.wait_for_audio(call.started_at, timeout=GREETING_TIMEOUT_S)
        else:
            await greeted(call)
            spoken_at = await call.play(speak(long_question))
            talking_since = await call.wait_for_audio(spoken_at, timeout=REPLY_TIMEOUT_S)
        # Interrupt 1 s into the bot's speech, with a question long enough to talk over it.
        await asyncio.sleep(max(0.0, talking_since + 1.0 - time.perf_counter()))
        barge = speak(barge_question)
        barge_start = time.perf_counter()
        barge_end = await call.play(barge)
        reply = await call.wait_for_reply(barge_end, timeout=REPLY_TIMEOUT_S)
        await asyncio.sleep(max(0.0, reply.play_end - time.perf_counter()) + 0.3)
        await call.stop()

    assert not call.protocol_errors, call.protocol_errors
    speaking = call.sound_frames(since=barge_start - 0.6, until=barge_start)
    assert speaking, "the bot was not speaking when the caller began: the test did not barge in"
    clears = [t for t in call.clears if t >= barge_start]
    assert clears, f"no `clear` after the caller barged in ({len(call.clears)} clears in all)"
    clear_at = clears[0]
    assert clear_at - barge_start < 1.5, f"`clear` came {clear_at - barge_start:.2f} s after the caller began"
    # The interrupted speech stops: nothing audible arrives from shortly after the clear until the caller
    # has finished speaking (the answer to the barge-in question comes after that).
    late = call.sound_frames(since=clear_at + 0.25, until=barge_end)
    assert not late, (
        f"{len(late) * 20} ms of bot audio arrived between 250 ms after the clear and the end of the "
        f"caller's speech (first at +{late[0].at - clear_at:.2f} s)"
    )
    check_reply(server, call, reply, barge_answer, "answer after barge-in")

    detail = await wait_for_call(server, call.call_sid, ended=True)
    interrupted = [t for t in detail.turns if t.interrupted]
    assert interrupted, (
        f"no turn recorded as interrupted: {[(t.index, t.route, t.bot_text) for t in detail.turns]}"
    )
    if during == "greeting":
        assert interrupted[0].index == detail.turns[0].index, "the greeting turn is not the interrupted one"
    else:
        assert match_answer(interrupted[0].bot_text, long_answer, min_fraction=0.9)[0], interrupted[0]


# --------------------------------------------------------------------------- e. bad input


def _media(stream_sid: str, payload: str) -> str:
    return json.dumps(
        {"event": "media", "sequenceNumber": "3", "streamSid": stream_sid,
         "media": {"track": "inbound", "chunk": "1", "timestamp": "0", "payload": payload}}
    )  # fmt: skip


SILENCE_B64 = base64.b64encode(b"\xff" * 160).decode()
# name -> (sent after `start`?, message builder(stream_sid), pattern the close reason must match)
BAD_INPUTS: dict[str, tuple[bool, Any, str]] = {
    "invalid_json_before_start": (False, lambda sid: '{"event": "connected", ', r"json"),
    "invalid_json_in_call": (True, lambda sid: '{"event": "media", "streamSid": ', r"json"),
    "media_before_start": (False, lambda sid: _media(sid, SILENCE_B64), r"start"),
    "wrong_stream_sid": (True, lambda sid: _media("MZ" + "f" * 32, SILENCE_B64), r"stream_?sid"),
    "non_base64_payload": (True, lambda sid: _media(sid, "this is not base64!!"), r"base64"),
    "oversized_message": (True, lambda sid: _media(sid, "A" * (96 * 1024)), r"large|size|bytes|exceed"),
    "binary_frame_in_call": (True, lambda sid: b"\xff" * 160, r"binary|text"),
    "binary_frame_before_start": (False, lambda sid: b"\x00\x01\x02", r"binary|text"),
}


async def _bad_call(server: ServerProcess, name: str) -> TwilioCall:
    after_start, build, _pattern = BAD_INPUTS[name]
    call = TwilioCall(server.ws_url)
    if after_start:
        await call.connect()
        await asyncio.sleep(0.5)  # a live call, the line streaming
    else:
        await call.open()
        await call.send_json({"event": "connected", "protocol": "Call", "version": "1.0.0"})
    await call.send_raw(build(call.stream_sid))
    try:
        await call.wait_closed(timeout=10)
    finally:
        await call.close()
    return call


def _assert_refused(call: TwilioCall, name: str) -> None:
    pattern = BAD_INPUTS[name][2]
    assert call.close_code == 1008, f"{name}: closed with {call.close_code} {call.close_reason!r}, not 1008"
    assert call.close_reason and re.search(pattern, call.close_reason, re.I), (
        f"{name}: close reason {call.close_reason!r} does not explain the error (/{pattern}/)"
    )


@pytest.mark.timeout(60)
@pytest.mark.parametrize("name", list(BAD_INPUTS))
async def test_bad_input_is_refused_with_1008(server: ServerProcess, name: str) -> None:
    call = await _bad_call(server, name)
    _assert_refused(call, name)
    if BAD_INPUTS[name][0]:  # a call had started: it must be closed in the records too
        detail = await wait_for_call(server, call.call_sid, ended=True)
        assert detail.end_reason, detail


@pytest.mark.timeout(120)
async def test_unknown_event_is_ignored_and_the_call_goes_on(server: ServerProcess) -> None:
    question, answer = INVOICE[0], answer_to(INVOICE[1])
    async with TwilioCall(server.ws_url) as call:
        await call.send_json({"event": "hologram", "streamSid": call.stream_sid, "hologram": {"x": 1}})
        await greeted(call)
        await call.send_json({"event": "telepathy", "streamSid": call.stream_sid})
        reply, _v2v = await ask(call, question)
        assert not call.closed.is_set(), f"closed: {call.close_code} {call.close_reason!r}"
        await call.stop()
    check_reply(server, call, reply, answer, "after unknown events")
    assert "hologram" in server.log_text(), "the unknown event was not logged"


@pytest.mark.timeout(150)
async def test_bad_calls_do_not_disturb_a_good_call(server: ServerProcess) -> None:
    question, answer = NO_CONFIRMATION[0], answer_to(NO_CONFIRMATION[1])
    async with TwilioCall(server.ws_url) as good:
        await greeted(good)
        question_task = asyncio.create_task(ask(good, question))
        await asyncio.sleep(0.3)
        bad_calls = await asyncio.gather(*(_bad_call(server, name) for name in BAD_INPUTS))
        reply, _v2v = await question_task
        assert not good.closed.is_set(), f"the good call was closed: {good.close_code} {good.close_reason!r}"
        await good.stop()
    for name, bad in zip(BAD_INPUTS, bad_calls, strict=True):
        _assert_refused(bad, name)
    check_reply(server, good, reply, answer, "the good call")


# --------------------------------------------------------------------------- f. DTMF


@pytest.mark.timeout(120)
async def test_dtmf_digits_are_recorded_on_a_turn(server: ServerProcess, run_cli: CliRunner) -> None:
    digits = "42#"
    async with TwilioCall(server.ws_url) as call:
        await greeted(call)
        await call.dtmf(digits, gap_s=0.15)
        await asyncio.sleep(1.5)
        reply, _v2v = await ask(call, RETURN_POLICY[0])
        await call.stop()
    detail = await wait_for_call(server, call.call_sid, ended=True)
    recorded = "".join(t.dtmf for t in detail.turns)
    assert recorded == digits, (
        f"turns record DTMF {[(t.index, t.dtmf) for t in detail.turns]}, sent {digits!r}"
    )
    shown = run_cli("calls", "show", call.call_sid).stdout
    assert re.search(rf"dtmf\s+{re.escape(digits)}", shown), shown
    check_reply(server, call, reply, answer_to(RETURN_POLICY[1]), "after DTMF")


@pytest.mark.timeout(90)
async def test_reused_call_sid_is_stored_as_a_second_call(server: ServerProcess) -> None:
    # A gateway that reconnects sends the same CallSid again; the second leg must not be lost.
    sid = "CA" + uuid.uuid4().hex
    for _ in range(2):
        async with TwilioCall(server.ws_url, call_sid=sid) as call:
            await greeted(call)
            await call.stop()
    records = Records(server.database_url, run_migrations=False)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        ids = [c.id for c in records.list_calls(limit=200) if c.id.startswith(sid)]
        if len(ids) == 2:
            break
        await asyncio.sleep(0.2)
    assert len(ids) == 2 and sid in ids, ids


def test_voice_webhook_answers_twiml_that_streams_the_call(server: ServerProcess) -> None:
    body = urllib.parse.urlencode({"From": "+15551230000", "To": "+15557650000", "CallSid": "CA1"}).encode()
    request = urllib.request.Request(f"{server.url}/twilio/voice", data=body, method="POST")
    request.add_header("Content-Type", "application/x-www-form-urlencoded")
    with urllib.request.urlopen(request, timeout=10) as response:
        assert response.status == 200
        assert response.headers["Content-Type"].startswith("application/xml")
        root = ElementTree.fromstring(response.read())
    stream = root.find("./Connect/Stream")
    assert stream is not None
    # Twilio only connects to wss://; the host is the one the webhook came in on.
    assert stream.get("url") == f"wss://127.0.0.1:{server.port}/twilio/stream"
    params = {p.get("name"): p.get("value") for p in stream.findall("Parameter")}
    assert params == {"From": "+15551230000", "To": "+15557650000", "CallSid": "CA1"}


# --------------------------------------------------------------------------- g. finalization


def _channel_rms(samples: np.ndarray) -> list[float]:
    return [float(np.sqrt(np.mean(samples[:, c].astype(np.float64) ** 2))) for c in range(samples.shape[1])]


@pytest.mark.timeout(120)
@pytest.mark.parametrize("ending", ["stop", "dropped_socket"])
async def test_call_is_finalized_with_a_two_sided_recording(
    server: ServerProcess, ending: str, tmp_path: Path
) -> None:
    question, answer = PAYMENT[0], answer_to(PAYMENT[1])
    async with TwilioCall(server.ws_url) as call:
        await greeted(call)
        reply, _v2v = await ask(call, question)
        if ending == "stop":
            await call.stop()
        else:
            await call.drop()
    assert reply.complete

    detail = await wait_for_call(server, call.call_sid, ended=True)
    assert detail.ended_at is not None and detail.ended_at >= detail.started_at
    assert detail.end_reason, detail
    assert detail.recording_path, "no recording path on the call"
    wav = Path(detail.recording_path)
    if not wav.is_absolute():
        wav = (REPO_ROOT / wav).resolve() if not (server.data_dir / wav).exists() else server.data_dir / wav
    assert wav.is_file(), f"recording {wav} does not exist"
    assert wav.resolve().is_relative_to(server.data_dir.resolve()), f"recording {wav} is outside the data dir"

    samples, rate, channels = read_wav(wav)
    assert len(samples) / rate > 3.0, f"recording is only {len(samples) / rate:.1f} s long"
    if channels >= 2:
        rms = _channel_rms(samples)
        assert all(r > 30 for r in rms[:2]), f"a side of the call is silent in the recording: RMS {rms}"
        # Each side says its own words: one channel the caller's question, the other the bot.
        heard = [transcribe(samples[:, c].copy(), rate) for c in range(2)]
        sides = " | ".join(heard)
        assert any(match_answer(h, question, min_fraction=0.5)[0] for h in heard), (
            f"caller's question not in {sides!r}"
        )
        assert any(match_answer(h, answer)[0] for h in heard), f"bot answer not in {sides!r}"
    else:
        mono = samples[:, 0].copy()
        heard = transcribe(mono, rate)
        assert match_answer(heard, question, min_fraction=0.5)[0] and match_answer(heard, answer)[0], heard
    write_wav(tmp_path / "recording-copy.wav", samples.reshape(-1), rate, channels)  # for a human to listen

    status, health = server.health()
    assert status == 200
    deadline = time.monotonic() + 10
    while health.get("active_calls", 0) and time.monotonic() < deadline:
        await asyncio.sleep(0.2)
        _status, health = server.health()
    assert health.get("active_calls", 0) == 0, f"the call still counts as active: {health}"


# --------------------------------------------------------------------------- harness self-check


def test_question_clips_are_trimmed_phone_audio() -> None:
    speech = speak("How long does delivery take?")
    assert 0.8 < speech.duration_s < 4.0
    edge = SAMPLE_RATE // 50
    assert (
        np.abs(speech.pcm[:edge].astype(int)).max() > 0 and np.abs(speech.pcm[-edge:].astype(int)).max() > 0
    )
    assert match_answer(transcribe(speech.pcm), "delivery")[0]


def test_reply_timeout_is_a_timeout_error() -> None:
    assert issubclass(ReplyTimeout, TimeoutError)


@pytest.mark.timeout(30)
async def test_client_echoes_marks_like_twilio() -> None:
    """The harness's Twilio stand-in: a mark comes back once the audio before it has played (not when it
    arrives), and a `clear` drops the unplayed audio and returns the pending marks at once."""
    from websockets.asyncio.server import ServerConnection, serve

    tone = np.sin(np.arange(160) * 2 * np.pi * 440 / SAMPLE_RATE) * 8000
    payload = base64.b64encode(ulaw_encode(tone.astype(np.int16))).decode()
    received: list[tuple[float, str]] = []
    sent: dict[str, float] = {}

    async def handler(ws: ServerConnection) -> None:
        async for message in ws:
            data = json.loads(message)
            if data["event"] == "start":
                sid = data["streamSid"]
                media = json.dumps({"event": "media", "streamSid": sid, "media": {"payload": payload}})
                for _ in range(50):  # 1 s of audio in one burst
                    await ws.send(media)
                await ws.send(json.dumps({"event": "mark", "streamSid": sid, "mark": {"name": "first"}}))
                sent["first"] = time.perf_counter()
                for _ in range(100):  # 2 s more, then cut short by a clear
                    await ws.send(media)
                await ws.send(json.dumps({"event": "mark", "streamSid": sid, "mark": {"name": "second"}}))
                await asyncio.sleep(1.5)
                await ws.send(json.dumps({"event": "clear", "streamSid": sid}))
                sent["clear"] = time.perf_counter()
            elif data["event"] == "mark":
                received.append((time.perf_counter(), data["mark"]["name"]))

    async with serve(handler, "127.0.0.1", 0) as ws_server:
        port = next(iter(ws_server.sockets)).getsockname()[1]
        async with TwilioCall(f"ws://127.0.0.1:{port}") as call:
            await asyncio.sleep(2.5)
    echoed = [(e.at, e.detail["name"]) for e in call.events_of("mark_echoed")]
    assert [name for _t, name in echoed] == ["first", "second"], echoed
    first_at, second_at = echoed[0][0], echoed[1][0]
    assert 0.8 < first_at - sent["first"] < 1.3, (
        f"'first' echoed {first_at - sent['first']:.2f} s after it came"
    )
    assert 0 <= second_at - sent["clear"] < 0.2, "'second' was not returned on clear"
    assert len(call.clears) == 1 and call.frames_sent > 50
    assert [name for _t, name in received] == ["first", "second"], "the server did not get the echoes"

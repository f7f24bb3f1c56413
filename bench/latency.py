"""Voice-to-voice latency over the real Twilio Media Streams WebSocket.

Places N calls (C at a time) against a running voicebot, or one this script starts in a temporary
data dir (`--start-server`). Each call waits for the greeting to finish, then asks one of ~10
reworded questions about the demo knowledge base, synthesized by espeak-ng and sent in real time as
8 kHz μ-law, followed by continuous silence frames, as a phone line does.

Client-side voice-to-voice = send time of the frame holding the last question sample (the clip is
trimmed, so it is the last sound) -> arrival of the first audible reply frame.

After the run it reads the server's per-turn records (SQLite in the data dir; table `turns`, JSON
column `latency`, stages in ms after the caller's speech end) and prints p50/p95 per stage, plus how
many replies were correct (the transcribed reply holds the expected answer's key words) and how many
turns ended early (the recorded caller text is cut short, or one question became several turns).

    .venv/bin/python bench/latency.py --start-server --calls 10
    .venv/bin/python bench/latency.py --url ws://127.0.0.1:8080/twilio/stream --data-dir ./data --json
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import csv
import json
import shutil
import sqlite3
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from testkit.audio import (
    SAMPLE_RATE,
    ULAW_SILENCE,
    Speech,
    match_answer,
    normalize_text,
    speak,
    transcribe,
    ulaw_decode,
)
from testkit.twilio_caller import TwilioCall

REPO_ROOT = Path(__file__).resolve().parent.parent
FAQ_CSV = REPO_ROOT / "voicebot" / "demo" / "faq.csv"
STAGES = (
    "vad_stop",
    "transcript",
    "turn_end",
    "decision",
    "first_llm_token",
    "first_tts_audio",
    "first_audio_sent",
    "voice_to_voice",
)

# Caller wording -> the FAQ question whose answer is expected. Reworded on purpose: the bot has to
# match meaning, not the stored sentence.
QUESTIONS: tuple[tuple[str, str], ...] = (
    ("How many days will it take for my order to arrive?", "How long does delivery take?"),
    ("What is your policy on returns?", "What is your return policy?"),
    ("What payment options can I use?", "Which payment methods do you accept?"),
    ("Can I track my package?", "How do I track my order?"),
    ("Do you ship to Canada?", "Do you ship internationally?"),
    ("Is it possible to cancel my order?", "Can I cancel my order?"),
    ("I want to pay in installments, is that possible?", "Can I pay in installments?"),
    ("How long until I get my money back?", "How long does it take to get my refund?"),
    ("Why was my card declined?", "Why was my card payment declined?"),
    ("How do I use my gift card?", "How do I use a gift card?"),
    # "|" marks a hesitation of PAUSE_S mid-question: turn detection must wait it out, not answer
    # the first half. These are the turns that can end early.
    ("How much does it cost to | ship my order?", "How much does shipping cost?"),
    ("I forgot my | password, what should I do?", "How do I reset my password?"),
    ("I would like to return the | shoes I bought last week.", "How do I return an item?"),
    ("I wanted to ask | how long delivery takes.", "How long does delivery take?"),
)
PAUSE_S = 0.7


@dataclass
class CallResult:
    index: int
    question: str
    faq_question: str
    expected: str
    call_sid: str = ""
    greeting_ms: float | None = None  # stream start -> first greeting audio
    voice_to_voice_ms: float | None = None
    reply_s: float = 0.0
    reply_transcript: str = ""
    correct: bool = False
    answer_fraction: float = 0.0
    error: str = ""
    # from the server's records
    caller_turns: int = 0
    caller_text: str = ""
    ended_early: bool = False
    latency: dict[str, float] = field(default_factory=dict)
    _reply_pcm: Any = field(default=None, repr=False)


def load_faq() -> dict[str, str]:
    with FAQ_CSV.open(newline="", encoding="utf-8") as f:
        return {row["question"].strip(): row["answer"].strip() for row in csv.DictReader(f)}


# --------------------------------------------------------------------------- driving calls


def caller_speech(question: str) -> Speech:
    """The question as spoken, with a silent hesitation wherever it holds a "|"."""
    parts = [speak(part.strip()) for part in question.split("|")]
    pause = bytes([ULAW_SILENCE]) * int(PAUSE_S * SAMPLE_RATE)
    ulaw = pause.join(part.ulaw for part in parts)
    return Speech(text=question.replace(" | ", " "), ulaw=ulaw, pcm=ulaw_decode(ulaw))


async def one_call(url: str, result: CallResult, timeout_s: float) -> None:
    speech = caller_speech(result.question)
    call = TwilioCall(url, from_number=f"+1555020{result.index:04d}")
    result.call_sid = call.call_sid
    try:
        async with asyncio.timeout(timeout_s):
            await call.connect()
            assert call.started_at is not None
            greeting = await call.hear_greeting(timeout=20, pause_s=0.4)
            result.greeting_ms = (greeting.first_at - call.started_at) * 1000
            reply, voice_to_voice = await call.ask(speech, timeout=30)
            result.voice_to_voice_ms = voice_to_voice * 1000
            result.reply_s = reply.duration_s
            result._reply_pcm = reply.pcm
            await call.stop()
    except Exception as exc:  # a failed call is a result, not the end of the benchmark
        result.error = f"{type(exc).__name__}: {exc}"
    finally:
        await call.close()


async def run_calls(url: str, results: list[CallResult], concurrency: int, timeout_s: float) -> None:
    gate = asyncio.Semaphore(concurrency)

    async def guarded(result: CallResult, delay: float) -> None:
        await asyncio.sleep(delay)
        async with gate:
            await one_call(url, result, timeout_s)
            print(_progress(result), file=sys.stderr, flush=True)

    # A small stagger so concurrent calls do not all speak on the same 20 ms tick.
    await asyncio.gather(*(guarded(r, 0.25 * (i % concurrency)) for i, r in enumerate(results)))


def _progress(r: CallResult) -> str:
    if r.error:
        return f"  call {r.index + 1}: FAILED {r.error}"
    return f"  call {r.index + 1}: voice-to-voice {r.voice_to_voice_ms:.0f} ms  ({r.question})"


# --------------------------------------------------------------------------- server records


def read_turns(db_path: Path, call_ids: list[str], wait_s: float = 10.0) -> dict[str, list[dict[str, Any]]]:
    """Turns of the given calls, from the server's SQLite file (read-only). Waits for calls to end."""
    uri = f"file:{db_path.resolve()}?mode=ro"
    deadline = time.monotonic() + wait_s
    while True:
        with contextlib.closing(sqlite3.connect(uri, uri=True, timeout=10)) as db:
            marks = ",".join("?" for _ in call_ids)
            open_calls = db.execute(
                f"SELECT COUNT(*) FROM calls WHERE id IN ({marks}) AND ended_at IS NULL", call_ids
            ).fetchone()[0]
            if open_calls == 0 or time.monotonic() >= deadline:
                rows = db.execute(
                    'SELECT call_id, "index", caller_text, bot_text, route, interrupted, latency '
                    f'FROM turns WHERE call_id IN ({marks}) ORDER BY call_id, "index"',
                    call_ids,
                ).fetchall()
                break
        time.sleep(0.3)
    turns: dict[str, list[dict[str, Any]]] = {cid: [] for cid in call_ids}
    for call_id, index, caller, bot, route, interrupted, latency in rows:
        turns[call_id].append(
            {
                "index": index,
                "caller_text": caller or "",
                "bot_text": bot or "",
                "route": route or "",
                "interrupted": bool(interrupted),
                "latency": json.loads(latency) if isinstance(latency, str) else (latency or {}),
            }
        )
    return turns


def ended_early(question: str, caller_turns: list[dict[str, Any]]) -> bool:
    """One question became several turns, or the recorded text is cut short (the turn ended while the
    caller was still talking, so the transcript holds only a prefix)."""
    if len(caller_turns) > 1:
        return True
    if not caller_turns:
        return False
    said = normalize_text(question.replace("|", " ")).split()
    heard = normalize_text(caller_turns[0]["caller_text"]).split()
    return len(heard) < 0.6 * len(said)


def attach_records(results: list[CallResult], turns: dict[str, list[dict[str, Any]]]) -> None:
    for r in results:
        caller = [t for t in turns.get(r.call_sid, []) if t["caller_text"].strip()]
        r.caller_turns = len(caller)
        r.caller_text = " / ".join(t["caller_text"] for t in caller)
        r.ended_early = ended_early(r.question, caller)
        if caller:
            # The turn that produced the answer: the last one before the bot spoke.
            r.latency = {k: float(v) for k, v in caller[-1]["latency"].items() if isinstance(v, int | float)}


# --------------------------------------------------------------------------- statistics and output


def stats(values: list[float]) -> dict[str, float | int | None]:
    if not values:
        return {"n": 0, "p50": None, "p95": None, "min": None, "max": None, "mean": None}
    arr = np.asarray(values, dtype=float)
    return {
        "n": len(values),
        "p50": float(np.percentile(arr, 50)),
        "p95": float(np.percentile(arr, 95)),
        "min": float(arr.min()),
        "max": float(arr.max()),
        "mean": float(arr.mean()),
    }


def _ms(value: float | int | None) -> str:
    return "-" if value is None else f"{value:.0f}"


def summarize(results: list[CallResult]) -> dict[str, Any]:
    ok = [r for r in results if not r.error]
    stage_names = [s for s in STAGES if any(s in r.latency for r in ok)]
    stage_names += sorted({k for r in ok for k in r.latency} - set(STAGES) - {"speech_end"})
    return {
        "calls": len(results),
        "failed_calls": len(results) - len(ok),
        "client_voice_to_voice_ms": stats([r.voice_to_voice_ms for r in ok if r.voice_to_voice_ms]),
        "greeting_first_audio_ms": stats([r.greeting_ms for r in ok if r.greeting_ms is not None]),
        "server_stages_ms": {s: stats([r.latency[s] for r in ok if s in r.latency]) for s in stage_names},
        "turns_recorded": sum(r.caller_turns for r in results),
        "answered": sum(1 for r in ok if r.voice_to_voice_ms is not None),
        "correct": sum(1 for r in ok if r.correct),
        "ended_early": sum(1 for r in results if r.ended_early),
    }


def print_report(summary: dict[str, Any], results: list[CallResult], meta: dict[str, Any]) -> None:
    print()
    print(
        f"voicebot latency benchmark: {meta['calls']} calls, concurrency {meta['concurrency']}, "
        f"{meta['url']}, {meta['wall_s']} s"
    )
    print()
    header = f"{'call':>4}  {'v2v ms':>7}  {'srv v2v':>7}  {'ok':<3} {'early':<5} question -> server heard"
    print(header)
    print("-" * len(header))
    for r in results:
        if r.error:
            print(f"{r.index + 1:>4}  {'-':>7}  {'-':>7}  {'ERR':<3} {'':<5} {r.question}: {r.error}")
            continue
        srv = r.latency.get("voice_to_voice")
        print(
            f"{r.index + 1:>4}  {_ms(r.voice_to_voice_ms):>7}  {_ms(srv):>7}  "
            f"{'yes' if r.correct else 'NO':<3} {'YES' if r.ended_early else 'no':<5} "
            f"{r.question} -> {r.caller_text or '-'}"
        )
    print()
    rows = [("client voice-to-voice", summary["client_voice_to_voice_ms"])]
    rows += [(f"server {name}", s) for name, s in summary["server_stages_ms"].items()]
    rows.append(("greeting first audio", summary["greeting_first_audio_ms"]))
    width = max(len(name) for name, _ in rows)
    print(f"{'stage (ms)':<{width}}  {'n':>3}  {'p50':>6}  {'p95':>6}  {'min':>6}  {'max':>6}")
    print("-" * (width + 36))
    for name, s in rows:
        print(
            f"{name:<{width}}  {s['n']:>3}  {_ms(s['p50']):>6}  {_ms(s['p95']):>6}  "
            f"{_ms(s['min']):>6}  {_ms(s['max']):>6}"
        )
    print()
    print(
        f"questions asked {summary['calls']}, answered {summary['answered']}, "
        f"correct {summary['correct']}, caller turns recorded {summary['turns_recorded']}, "
        f"ended early {summary['ended_early']}, failed calls {summary['failed_calls']}"
    )
    if not summary["server_stages_ms"]:
        print("(no server-side breakdown: pass --data-dir, or use --start-server)")


# --------------------------------------------------------------------------- main


def wait_for_log(path: Path, needle: str, timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError):
            if needle in path.read_text(errors="replace"):
                return True
        time.sleep(0.5)
    return False


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument(
        "--calls", type=int, default=len(QUESTIONS), help=f"number of calls (default {len(QUESTIONS)})"
    )
    p.add_argument("--concurrency", type=int, default=1, help="calls at a time (default 1)")
    p.add_argument("--url", default="ws://127.0.0.1:8080/twilio/stream", help="the media stream WebSocket")
    p.add_argument("--start-server", action="store_true", help="start `run.py serve` in a temp data dir")
    p.add_argument("--data-dir", type=Path, help="the server's data dir, for the per-stage breakdown")
    p.add_argument("--call-timeout", type=float, default=90.0, help="seconds one call may take")
    p.add_argument(
        "--warmup-timeout",
        type=float,
        default=120.0,
        help="with --start-server: seconds to wait for the server's answer-cache warm-up (default 120)",
    )
    p.add_argument("--keep", action="store_true", help="keep the temp data dir of --start-server")
    p.add_argument("--json", action="store_true", help="print the results as JSON instead of tables")
    args = p.parse_args(argv)
    if args.calls < 1 or args.concurrency < 1:
        p.error("--calls and --concurrency must be at least 1")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    faq = load_faq()
    missing = [q for _w, q in QUESTIONS if q not in faq]
    if missing:
        print(f"these FAQ questions are gone from {FAQ_CSV}: {missing}", file=sys.stderr)
        return 2

    server = None
    tmp: Path | None = None
    url, data_dir = args.url, args.data_dir
    if args.start_server:
        from testkit.server import start_server  # the same launcher the tests use

        tmp = Path(tempfile.mkdtemp(prefix="voicebot-bench-"))
        print(f"starting the server (data in {tmp / 'data'}) ...", file=sys.stderr, flush=True)
        try:
            server = start_server(tmp / "data", tmp / "server.log")
        except RuntimeError as exc:
            print(exc, file=sys.stderr)
            return 1
        print(f"server ready after {server.ready_after_s:.1f} s", file=sys.stderr, flush=True)
        # /health turns 200 before the server has synthesized its answer audio cache; calls placed during
        # that warm-up compete with it for the CPU and find no cached audio. Measure the steady state.
        warm = wait_for_log(server.log_path, "phrase cache", args.warmup_timeout)
        print(
            "answer cache warm"
            if warm
            else f"no answer-cache line in the log after {args.warmup_timeout:.0f} s",
            file=sys.stderr,
            flush=True,
        )
        url, data_dir = server.ws_url, server.data_dir
    if data_dir is None and (REPO_ROOT / "data" / "voicebot.db").exists():
        data_dir = REPO_ROOT / "data"

    results = [
        CallResult(i, wording, faq_q, faq[faq_q]) for i, (wording, faq_q) in enumerate(_cycle(args.calls))
    ]
    for r in results:  # synthesize up front: espeak time must not count as caller latency
        caller_speech(r.question)
    started = time.monotonic()
    try:
        print(f"placing {args.calls} calls, {args.concurrency} at a time ...", file=sys.stderr, flush=True)
        asyncio.run(run_calls(url, results, args.concurrency, args.call_timeout))
        wall_s = time.monotonic() - started
        db = data_dir / "voicebot.db" if data_dir else None
        if db is not None and db.exists():
            attach_records(results, read_turns(db, [r.call_sid for r in results]))
    finally:
        if server is not None:
            server.stop()
            if tmp is not None and not args.keep:
                shutil.rmtree(tmp, ignore_errors=True)
            elif tmp is not None:
                print(f"server data and log kept in {tmp}", file=sys.stderr)

    # Transcribe after the calls, so whisper in this process does not compete with the server for CPU.
    for r in results:
        if r._reply_pcm is not None:
            r.reply_transcript = transcribe(r._reply_pcm)
            r.correct, r.answer_fraction, _missing = match_answer(r.reply_transcript, r.expected)

    summary = summarize(results)
    meta = {"calls": args.calls, "concurrency": args.concurrency, "url": url, "wall_s": round(wall_s, 1)}
    if args.json:
        calls = [{k: v for k, v in asdict(r).items() if not k.startswith("_")} for r in results]
        print(json.dumps({"meta": meta, "summary": summary, "calls": calls}, indent=2))
    else:
        print_report(summary, results, meta)
    return 0 if summary["failed_calls"] == 0 else 1


def _cycle(n: int) -> list[tuple[str, str]]:
    return [QUESTIONS[i % len(QUESTIONS)] for i in range(n)]


if __name__ == "__main__":
    sys.exit(main())

"""Voice-to-voice latency over SIP/RTP, measured from a real SIP peer (baresip).

Each call is a baresip process that dials the bot and plays a WAV: silence while the greeting
plays, one spoken question (espeak-ng, 8 kHz), then silence to hear the answer; baresip hangs up
when its WAV ends. baresip's sndfile module records both what it sent (``enc``) and what it heard
(``dec``), each from the start of the call's audio. The bot sends RTP continuously (silence
between replies), so both recordings share one timeline, and

    voice-to-voice = onset of the reply in ``dec`` - end of the question in ``enc``

which includes everything on the peer's side too: its jitter buffer and decoding.

    .venv/bin/python bench/sip_latency.py --start-server                 # 14 questions, one at a time
    .venv/bin/python bench/sip_latency.py --start-server --concurrency 1,2,4,6
    .venv/bin/python bench/sip_latency.py --sip 127.0.0.1:5060 --data-dir ./data --json

For each concurrency level it prints p50/p95, the per-call figures, whether the reply was the right
answer (transcribed), and the server's own stage breakdown for the same turns.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sqlite3
import statistics
import sys
import tempfile
import threading
import time
import wave
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

# bench/latency.py, found next to this script (Python puts a script's own directory on its path).
from latency import QUESTIONS, caller_speech, load_faq, wait_for_log

from testkit.audio import match_answer, transcribe
from testkit.sip_peers import BaresipPeer

RATE = 8000
FRAME = RATE // 100  # 10 ms analysis frames
GREETING_WAIT_S = 6.5  # the demo greeting lasts ~4.5 s; ask once it is over
LISTEN_S = 8.0
LOUD_RMS = 300.0  # int16; μ-law silence decodes to 0..8, speech runs in the thousands


@dataclass
class SipCall:
    index: int
    concurrency: int
    question: str
    expected: str
    call_id: str = ""
    question_end_s: float | None = None  # in the sent (enc) timeline
    reply_onset_s: float | None = None  # in the heard (dec) timeline
    voice_to_voice_ms: float | None = None
    correct: bool = False
    reply_transcript: str = ""
    error: str = ""
    server: dict[str, float] = field(default_factory=dict)


def read_wav(path: Path) -> np.ndarray:
    with wave.open(str(path), "rb") as w:
        if w.getframerate() != RATE or w.getsampwidth() != 2:
            raise ValueError(
                f"{path}: expected 8 kHz 16-bit, got {w.getframerate()} Hz {w.getsampwidth() * 8} bit"
            )
        pcm = np.frombuffer(w.readframes(w.getnframes()), dtype="<i2")
        if w.getnchannels() > 1:
            pcm = pcm.reshape(-1, w.getnchannels())[:, 0]
        return pcm


def loud_frames(pcm: np.ndarray) -> np.ndarray:
    usable = len(pcm) - len(pcm) % FRAME
    frames = pcm[:usable].astype(np.float32).reshape(-1, FRAME)
    return np.sqrt((frames**2).mean(axis=1)) > LOUD_RMS


def question_wav(question: str, path: Path) -> None:
    speech = caller_speech(question).pcm.astype(np.int16)
    silence_before = np.zeros(int(GREETING_WAIT_S * RATE), dtype=np.int16)
    silence_after = np.zeros(int(LISTEN_S * RATE), dtype=np.int16)
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(RATE)
        w.writeframes(np.concatenate((silence_before, speech, silence_after)).tobytes())


def measure(call: SipCall, enc: Path, dec: Path) -> None:
    sent = loud_frames(read_wav(enc))
    heard_pcm = read_wav(dec)
    heard = loud_frames(heard_pcm)
    start = int((GREETING_WAIT_S - 1.0) * 100)
    loud = np.flatnonzero(sent[start:])
    if not len(loud):
        call.error = "the question is not in baresip's sent audio"
        return
    end_frame = start + int(loud[-1]) + 1
    call.question_end_s = end_frame / 100
    onset = np.flatnonzero(heard[end_frame:])
    if not len(onset):
        call.error = "no reply heard after the question"
        return
    call.reply_onset_s = (end_frame + int(onset[0])) / 100
    call.voice_to_voice_ms = round((call.reply_onset_s - call.question_end_s) * 1000, 1)
    reply = heard_pcm[int(call.reply_onset_s * RATE) : int((call.reply_onset_s + 6.0) * RATE)]
    call.reply_transcript = transcribe(reply)
    call.correct = match_answer(call.reply_transcript, call.expected)[0]


def one_call(call: SipCall, target: str, work: Path) -> None:
    work.mkdir(parents=True, exist_ok=True)
    wav = work / "question.wav"
    question_wav(call.question, wav)
    try:
        with BaresipPeer(wav, run_dir=work, name="peer", user=f"bench{call.index}") as peer:
            sent_at = peer.call(target)
            peer.wait_event("CALL_ESTABLISHED", 10, after=sent_at)
            peer.wait_event("CALL_CLOSED", GREETING_WAIT_S + LISTEN_S + 30, after=sent_at)
            time.sleep(0.3)  # sndfile closes its files on hangup
            enc, dec = peer.recordings("enc"), peer.recordings("dec")
            if not enc or not dec:
                call.error = "baresip made no recording"
                return
            measure(call, enc[-1], dec[-1])
    except Exception as exc:
        call.error = f"{type(exc).__name__}: {exc}"


def run_level(concurrency: int, questions: list[tuple[str, str]], target: str, work: Path) -> list[SipCall]:
    faq = load_faq()
    calls = [SipCall(i, concurrency, wording, faq[faq_q]) for i, (wording, faq_q) in enumerate(questions)]
    for start in range(0, len(calls), concurrency):
        batch = calls[start : start + concurrency]
        threads = [
            threading.Thread(target=one_call, args=(c, target, work / f"c{concurrency}-{c.index}"))
            for c in batch
        ]
        for t in threads:
            t.start()
            time.sleep(0.05)
        for t in threads:
            t.join()
        for c in batch:
            shown = f"{c.voice_to_voice_ms:.0f} ms" if c.voice_to_voice_ms is not None else c.error
            print(f"  [{concurrency}] {c.question!r}: {shown}", file=sys.stderr, flush=True)
    return calls


def attach_server_stages(calls: list[SipCall], db: Path, since: str) -> None:
    """The server's per-turn latency for the benchmark's calls, matched in order of start."""
    with sqlite3.connect(db) as conn:
        rows = conn.execute(
            "SELECT c.started_at, t.latency FROM turns t JOIN calls c ON c.id = t.call_id "
            "WHERE c.gateway = 'sip' AND c.started_at >= ? AND t.route NOT IN ('greeting', 'unanswered') "
            'ORDER BY c.started_at, t."index"',
            (since,),
        ).fetchall()
    for call, (_started, latency) in zip(calls, rows, strict=False):
        call.server = json.loads(latency or "{}")


def percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    return float(np.percentile(values, q))


def summarize(calls: list[SipCall]) -> dict[str, Any]:
    v2v = [c.voice_to_voice_ms for c in calls if c.voice_to_voice_ms is not None]
    server = [c.server.get("voice_to_voice") for c in calls if c.server.get("voice_to_voice") is not None]
    return {
        "calls": len(calls),
        "measured": len(v2v),
        "failed": sum(1 for c in calls if c.error),
        "correct": sum(1 for c in calls if c.correct),
        "v2v_p50_ms": percentile(v2v, 50),
        "v2v_p95_ms": percentile(v2v, 95),
        "v2v_max_ms": max(v2v) if v2v else None,
        "server_v2v_p50_ms": percentile([float(s) for s in server], 50),
        "server_v2v_p95_ms": percentile([float(s) for s in server], 95),
        "median": statistics.median(v2v) if v2v else None,
    }


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.0f}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--start-server", action="store_true", help="Start a server in a temp data dir.")
    parser.add_argument("--sip", help="HOST:PORT of a running server's SIP port.")
    parser.add_argument("--data-dir", type=Path, help="That server's data dir (for its stage breakdown).")
    parser.add_argument("--concurrency", default="1", help="Comma-separated levels, e.g. 1,2,4,6.")
    parser.add_argument("--calls", type=int, default=len(QUESTIONS), help="Calls per level.")
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--keep", action="store_true", help="Keep the temp dir (recordings, logs).")
    args = parser.parse_args(argv)
    if not args.start_server and not args.sip:
        parser.error("give --start-server or --sip HOST:PORT")
    levels = [int(x) for x in args.concurrency.split(",") if x.strip()]
    questions = [QUESTIONS[i % len(QUESTIONS)] for i in range(args.calls)]

    tmp = Path(tempfile.mkdtemp(prefix="voicebot-sipbench-"))
    server = None
    target, data_dir = f"sip:bot@{args.sip}" if args.sip else "", args.data_dir
    since = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime())
    results: dict[int, list[SipCall]] = {}
    try:
        if args.start_server:
            from testkit.server import start_server

            print(f"starting the server (data in {tmp / 'data'}) ...", file=sys.stderr, flush=True)
            server = start_server(tmp / "data", tmp / "server.log")
            warm = wait_for_log(server.log_path, "phrase cache", 240)
            print(
                f"server ready after {server.ready_after_s:.1f} s; answer cache warm: {warm}", file=sys.stderr
            )
            target, data_dir = f"sip:bot@127.0.0.1:{server.sip_port}", server.data_dir
        for level in levels:
            print(f"concurrency {level}: {len(questions)} calls ...", file=sys.stderr, flush=True)
            results[level] = run_level(level, questions, target, tmp / "calls")
        if data_dir is not None and (data_dir / "voicebot.db").exists():
            everything = [c for level in levels for c in results[level]]
            attach_server_stages(everything, data_dir / "voicebot.db", since)
    finally:
        if server is not None:
            server.stop()
        if args.keep:
            print(f"kept {tmp}", file=sys.stderr)
        else:
            shutil.rmtree(tmp, ignore_errors=True)

    summaries = {level: summarize(results[level]) for level in levels}
    if args.json:
        out = {
            "summaries": summaries,
            "calls": [asdict(c) for level in levels for c in results[level]],
        }
        print(json.dumps(out, indent=2))
        return 0
    print("\nSIP voice-to-voice, measured at the peer (baresip): end of question sent -> reply heard")
    header = ("conc", "calls", "ok", "right", "p50", "p95", "max", "srv p50", "srv p95")
    widths = (4, 5, 3, 5, 6, 6, 6, 8, 8)
    print(" ".join(f"{h:>{w}}" for h, w in zip(header, widths, strict=True)))
    for level, s in summaries.items():
        print(
            f"{level:>4} {s['calls']:>5} {s['measured']:>3} {s['correct']:>5} {_ms(s['v2v_p50_ms']):>6} "
            f"{_ms(s['v2v_p95_ms']):>6} {_ms(s['v2v_max_ms']):>6} {_ms(s['server_v2v_p50_ms']):>8} "
            f"{_ms(s['server_v2v_p95_ms']):>8}"
        )
    failures = [c for level in levels for c in results[level] if c.error]
    for c in failures:
        print(f"  failed [{c.concurrency}] {c.question!r}: {c.error}")
    return 0 if not failures else 1


if __name__ == "__main__":
    sys.exit(main())

"""`voicebot calls list` and `voicebot calls show ID`: read the call records from the terminal."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

from voicebot.config import Settings
from voicebot.storage.records import CallDetail, CallSummary, Records, Turn

# Pipeline order, so a breakdown reads left to right as the turn happened. JSONB (PostgreSQL) does
# not keep key order, hence a fixed list; unknown stages follow, sorted.
LATENCY_ORDER = (
    "speech_end",
    "vad_stop",
    "turn_end",
    "transcript",
    "first_llm_token",
    "first_tts_audio",
    "first_audio_sent",
    "voice_to_voice",
)
TOP_HITS = 3


def run(settings: Settings, args: argparse.Namespace) -> int:
    records = Records(settings.resolved_database_url)
    try:
        if args.calls_command == "list":
            return _list(records, args.n)
        if args.calls_command == "show":
            return _show(records, args.call_id)
        return 2
    finally:
        records.close()


# --------------------------------------------------------------------------- formatting helpers


def format_time(moment: datetime | None) -> str:
    return "-" if moment is None else moment.strftime("%Y-%m-%d %H:%M:%S")


def format_duration(seconds: float | None) -> str:
    if seconds is None:
        return "open"
    minutes, secs = divmod(round(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"


def format_ms(value: Any) -> str:
    return f"{value:.0f}" if isinstance(value, int | float) and not isinstance(value, bool) else str(value)


def format_latency(latency: dict[str, Any]) -> str:
    if not latency:
        return "-"
    keys = [k for k in LATENCY_ORDER if k in latency]
    keys += sorted(k for k in latency if k not in LATENCY_ORDER)
    return "  ".join(f"{k} {format_ms(latency[k])}" for k in keys)


def format_hits(retrieved: list[dict[str, Any]]) -> str:
    if not retrieved:
        return "-"
    ranked = sorted(retrieved, key=lambda hit: float(hit.get("score") or 0.0), reverse=True)
    return ", ".join(
        f"{hit.get('id', '?')} ({float(hit.get('score') or 0.0):.2f})" for hit in ranked[:TOP_HITS]
    )


def _one_line(text: str) -> str:
    return " ".join(text.split()) or "-"


def _table(header: Sequence[str], rows: Sequence[Sequence[str]], right: set[int]) -> list[str]:
    widths = [max(len(str(cell)) for cell in column) for column in zip(header, *rows, strict=True)]

    def line(cells: Sequence[str]) -> str:
        parts = [
            c.rjust(w) if i in right else c.ljust(w)
            for i, (c, w) in enumerate(zip(cells, widths, strict=True))
        ]
        return "  ".join(parts).rstrip()

    return [line(header)] + [line(row) for row in rows]


# --------------------------------------------------------------------------- list


def _summary_row(call: CallSummary) -> list[str]:
    return [
        call.id,
        call.gateway,
        call.from_number or "-",
        call.to_number or "-",
        format_time(call.started_at),
        format_duration(call.duration_s),
        str(call.turn_count),
        call.end_reason or "-",
    ]


def _list(records: Records, limit: int) -> int:
    calls = records.list_calls(limit=limit)
    if not calls:
        print("No calls recorded yet.")
        return 0
    header = ["ID", "GATEWAY", "FROM", "TO", "STARTED (UTC)", "DURATION", "TURNS", "END REASON"]
    for line in _table(header, [_summary_row(c) for c in calls], right={5, 6}):
        print(line)
    return 0


# --------------------------------------------------------------------------- show


def _recording_line(path: str | None) -> str:
    if not path:
        return "none"
    return path if Path(path).exists() else f"{path} (file missing)"


def _call_header(call: CallDetail) -> list[str]:
    ended = "-" if call.ended_at is None else f"{format_time(call.ended_at)} UTC"
    fields = [
        ("gateway", call.gateway),
        ("direction", call.direction),
        ("from", call.from_number or "-"),
        ("to", call.to_number or "-"),
        ("stream", call.stream_id or "-"),
        ("started", f"{format_time(call.started_at)} UTC"),
        ("ended", ended),
        ("duration", format_duration(call.duration_s)),
        ("end reason", call.end_reason or "-"),
        ("recording", _recording_line(call.recording_path)),
    ]
    if call.outcome:
        fields.insert(-1, ("outcome", call.outcome))
    if call.transfer_status:
        fields.insert(-1, ("transfer", f"{call.transfer_target or '-'}: {call.transfer_status}"))
    if call.metadata:
        fields.append(("metadata", json.dumps(call.metadata, sort_keys=True)))
    return [f"Call {call.id}"] + [f"  {name:<13}{value}" for name, value in fields]


def _intent(turn: Turn) -> str:
    if not turn.intent:
        return "-"
    confidence = "" if turn.intent_confidence is None else f" ({turn.intent_confidence:.2f})"
    return turn.intent + confidence


def _turn_lines(turn: Turn) -> list[str]:
    fields = [
        ("caller", _one_line(turn.caller_text)),
        ("bot", _one_line(turn.bot_text)),
        ("why", _one_line(turn.reason) if turn.reason else "-"),
        ("intent", _intent(turn)),
        ("sentiment", "-" if turn.sentiment is None else f"{turn.sentiment:+.2f}"),
        ("slots", ", ".join(f"{k}={v}" for k, v in sorted(turn.slots.items())) or "-"),
        ("retrieved", format_hits(turn.retrieved)),
        ("dtmf", turn.dtmf or "-"),
        ("interrupted", "yes (barge-in)" if turn.interrupted else "no"),
        ("latency ms", format_latency(turn.latency)),
    ]
    title = f"Turn {turn.index}  {turn.started_at.strftime('%H:%M:%S')}  route={turn.route or '-'}"
    return [title] + [f"  {name:<13}{value}" for name, value in fields]


def _show(records: Records, call_id: str) -> int:
    call = records.get_call(call_id)
    if call is None:
        print(f"No call with id {call_id!r}. 'voicebot calls list' shows the recorded ids.", file=sys.stderr)
        return 1
    lines = _call_header(call)
    lines += ["", f"{len(call.turns)} turn(s)" if call.turns else "No turns recorded."]
    for turn in call.turns:
        lines += ["", *_turn_lines(turn)]
    print("\n".join(lines))
    return 0

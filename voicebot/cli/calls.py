"""`voicebot calls list` and `voicebot calls show ID`: read the call records from the terminal."""

from __future__ import annotations

import argparse
import getpass
import json
import logging
import sys
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from voicebot.config import Settings
from voicebot.dialogue.memory import load_or_create_key
from voicebot.storage.numbers import NumberVault
from voicebot.storage.records import CallDetail, CallSummary, Records, Turn
from voicebot.textsafe import terminal_safe

log = logging.getLogger(__name__)

AUDIT_LOG = "audit.log"  # JSON lines in the data dir: who saw protected data, and why
MIN_REASON_CHARS = 8

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
    records = Records(settings.resolved_database_url, numbers=_vault(settings))
    try:
        if args.calls_command == "list":
            return _list(records, args.n, getattr(args, "number", "") or "")
        if args.calls_command == "show":
            if getattr(args, "reveal", False):
                revealed = _reveal(settings, records, args.call_id, args.reason or "")
                if revealed is None:
                    return 1
                return _show(records, args.call_id, revealed)
            return _show(records, args.call_id)
        return 2
    finally:
        records.close()


def _vault(settings: Settings) -> NumberVault:
    key = load_or_create_key(settings.secret_key, settings.data_dir)
    return NumberVault(settings.number_storage, key)


def _reveal(settings: Settings, records: Records, call_id: str, reason: str) -> tuple[str, str] | None:
    """The call's numbers in clear, after writing who asked and why to the audit log."""
    if len(reason.strip()) < MIN_REASON_CHARS:
        print(
            f"--reveal needs --reason 'why you need the numbers' (at least {MIN_REASON_CHARS} characters); "
            "it is written to the audit log",
            file=sys.stderr,
        )
        return None
    try:
        numbers = records.reveal_numbers(call_id)
    except KeyError:
        print(f"No call with id {call_id!r}.", file=sys.stderr)
        return None
    except ValueError as exc:
        print(f"cannot show the numbers of call {call_id}: {exc}", file=sys.stderr)
        return None
    entry = {
        "at": datetime.now(UTC).isoformat(timespec="seconds"),
        "who": getpass.getuser(),
        "action": "reveal call numbers",
        "call": call_id,
        "reason": reason.strip(),
    }
    with (settings.data_dir / AUDIT_LOG).open("a", encoding="utf-8") as audit:
        audit.write(json.dumps(entry) + "\n")
    log.warning("numbers of call %s revealed to %s: %s", call_id, entry["who"], entry["reason"])
    return numbers


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


def _list(records: Records, limit: int, number: str = "") -> int:
    calls = records.list_calls(limit=limit, number=number)
    if not calls:
        print("No calls recorded yet." if not number else "No calls from or to that number.")
        return 0
    header = ["ID", "GATEWAY", "FROM", "TO", "STARTED (UTC)", "DURATION", "TURNS", "END REASON"]
    for line in _table(header, [_summary_row(c) for c in calls], right={5, 6}):
        print(terminal_safe(line))
    return 0


# --------------------------------------------------------------------------- show


def _recording_line(path: str | None) -> str:
    if not path:
        return "none"
    return path if Path(path).exists() else f"{path} (file missing)"


def _call_header(call: CallDetail, numbers: tuple[str, str] | None = None) -> list[str]:
    ended = "-" if call.ended_at is None else f"{format_time(call.ended_at)} UTC"
    caller, callee = numbers or (call.from_number, call.to_number)
    fields = [
        ("gateway", call.gateway),
        ("direction", call.direction),
        ("from", caller or "-"),
        ("to", callee or "-"),
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


def _show(records: Records, call_id: str, numbers: tuple[str, str] | None = None) -> int:
    call = records.get_call(call_id)
    if call is None:
        print(
            f"No call with id {terminal_safe(repr(call_id))}. 'voicebot calls list' shows the recorded ids.",
            file=sys.stderr,
        )
        return 1
    lines = _call_header(call, numbers)
    lines += ["", f"{len(call.turns)} turn(s)" if call.turns else "No turns recorded."]
    for turn in call.turns:
        lines += ["", *_turn_lines(turn)]
    print("\n".join(terminal_safe(line) for line in lines))
    return 0

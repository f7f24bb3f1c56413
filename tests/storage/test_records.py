"""The Records API on a real SQLite file and a real PostgreSQL (tests/storage/conftest.py).

`records` and `db_url` run each test on both backends; the SQLite-only behaviour (WAL, the CLI on
a data directory) uses `sqlite_url`.
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography.fernet import Fernet
from sqlalchemy.exc import IntegrityError

from voicebot.storage.numbers import NumberVault
from voicebot.storage.records import Records, RetrievedHit

REPO = Path(__file__).resolve().parents[2]
T0 = datetime(2026, 1, 2, 10, 0, 0, tzinfo=UTC)


def test_sqlite_runs_in_wal_mode(sqlite_url: str) -> None:
    records = Records(sqlite_url)
    with records.engine.connect() as conn:
        assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
        assert conn.exec_driver_sql("PRAGMA foreign_keys").scalar() == 1
    records.close()


# --------------------------------------------------------------------------- round trip


def test_call_round_trip(records: Records) -> None:
    call_id = records.start_call(
        "CA1",
        gateway="twilio",
        from_number="+15551234567",
        to_number="+15557654321",
        stream_id="MZ1",
        started_at=T0,
        metadata={"campaign": "spring"},
    )
    assert call_id == "CA1"
    first = records.add_turn(
        call_id, started_at=T0, bot_text="Hello", route="greeting", latency={"first_tts_audio": 3}
    )
    second = records.add_turn(
        call_id,
        started_at=T0 + timedelta(seconds=4),
        caller_text="where is my order",
        route="kb_answer",
        retrieved=[
            RetrievedHit("faq-3", 0.81, "Where is my order?"),
            {"id": "faq-9", "score": 0.4, "question": "q"},
        ],
        dtmf="12#",
        interrupted=True,
        latency={"speech_end": 0, "vad_stop": 210},
    )
    records.update_turn(second, bot_text="Track it online.", latency={"voice_to_voice": 640.5})
    assert records.end_call(call_id, "hangup", "/rec/CA1.wav", ended_at=T0 + timedelta(seconds=83))

    [summary] = records.list_calls()
    assert (summary.id, summary.gateway, summary.turn_count, summary.end_reason) == (
        "CA1",
        "twilio",
        2,
        "hangup",
    )
    assert summary.duration_s == 83.0

    call = records.get_call(call_id)
    assert call is not None
    assert call.started_at == T0 and call.started_at.tzinfo is not None
    assert (call.stream_id, call.recording_path, call.metadata) == (
        "MZ1",
        "/rec/CA1.wav",
        {"campaign": "spring"},
    )
    assert [t.id for t in call.turns] == [first, second]
    assert [t.index for t in call.turns] == [0, 1]
    turn = call.turns[1]
    assert turn.bot_text == "Track it online." and turn.caller_text == "where is my order"
    assert turn.retrieved[0] == {"id": "faq-3", "score": 0.81, "question": "Where is my order?"}
    assert (turn.dtmf, turn.interrupted) == ("12#", True)
    assert turn.latency == {"speech_end": 0, "vad_stop": 210, "voice_to_voice": 640.5}


def test_first_end_wins_and_late_recording_is_kept(records: Records) -> None:
    records.start_call("c", gateway="sip", started_at=T0)
    assert records.end_call("c", "caller_hangup", ended_at=T0 + timedelta(seconds=10))
    assert not records.end_call("c", "bot_goodbye", "/rec/c.wav")
    call = records.get_call("c")
    assert call is not None
    assert (call.end_reason, call.duration_s, call.recording_path) == ("caller_hangup", 10.0, "/rec/c.wav")


def test_unknown_ids_and_bad_input(records: Records) -> None:
    assert records.get_call("nope") is None
    with pytest.raises(KeyError):
        records.add_turn("nope")
    with pytest.raises(KeyError):
        records.end_call("nope", "x")
    with pytest.raises(KeyError):
        records.update_turn(12345, bot_text="x")
    with pytest.raises(ValueError, match="naive"):
        records.start_call(gateway="sip", started_at=datetime(2026, 1, 1))
    records.start_call("dup", gateway="sip")
    with pytest.raises(IntegrityError):
        records.start_call("dup", gateway="sip")
    records.add_turn("dup", index=0)
    with pytest.raises(IntegrityError):
        records.add_turn("dup", index=0)


def test_list_calls_newest_first_with_limit(records: Records) -> None:
    for i in range(5):
        records.start_call(f"c{i}", gateway="sip", started_at=T0 + timedelta(minutes=i))
    records.add_turn("c4")
    calls = records.list_calls(limit=3)
    assert [c.id for c in calls] == ["c4", "c3", "c2"]
    assert [c.turn_count for c in calls] == [1, 0, 0]
    assert calls[0].duration_s is None
    assert [c.id for c in records.list_calls(limit=3, offset=3)] == ["c1", "c0"]


def test_unfinished_calls_are_closed_at_last_activity(records: Records) -> None:
    records.start_call("with-turns", gateway="twilio", started_at=T0)
    records.add_turn("with-turns", started_at=T0 + timedelta(seconds=30))
    records.start_call("silent", gateway="sip", started_at=T0)
    records.start_call("still-live", gateway="sip", started_at=T0)
    records.start_call("done", gateway="sip", started_at=T0)
    records.end_call("done", "hangup", ended_at=T0 + timedelta(seconds=5))

    assert records.mark_unfinished_calls("server_restart", exclude={"still-live"}) == 2
    assert records.mark_unfinished_calls("server_restart", exclude={"still-live"}) == 0

    calls = {c.id: c for c in records.list_calls()}
    assert (calls["with-turns"].end_reason, calls["with-turns"].duration_s) == ("server_restart", 30.0)
    assert (calls["silent"].end_reason, calls["silent"].duration_s) == ("server_restart", 0.0)
    assert calls["still-live"].ended_at is None
    assert (calls["done"].end_reason, calls["done"].duration_s) == ("hangup", 5.0)


def test_turn_decisions_and_json_round_trip(records: Records) -> None:
    records.start_call("d", gateway="sip", started_at=T0, metadata={"nested": {"a": [1, 2.5, None, True]}})
    records.add_turn(
        "d",
        started_at=T0,
        caller_text="café — 東京 ✓",
        reason="low confidence: asked again",
        intent="order_status",
        intent_confidence=0.875,
        sentiment=-0.5,
        slots={"order_id": "A-1", "when": {"day": "mon"}, "n": 3, "ok": False, "none": None},
    )
    records.set_transfer("d", "sip:" + "a" * 252, "failed: 486 " + "x" * 116)
    call = records.get_call("d")
    assert call is not None
    assert call.metadata == {"nested": {"a": [1, 2.5, None, True]}}
    assert len(call.transfer_target) == 256 and len(call.transfer_status) == 128
    [turn] = call.turns
    assert (turn.caller_text, turn.reason, turn.intent) == (
        "café — 東京 ✓",
        "low confidence: asked again",
        "order_status",
    )
    assert (turn.intent_confidence, turn.sentiment, turn.interrupted) == (0.875, -0.5, False)
    assert turn.slots == {"order_id": "A-1", "when": {"day": "mon"}, "n": 3, "ok": False, "none": None}
    assert turn.started_at == T0 and turn.started_at.tzinfo is not None


def test_gateway_ids_activity_and_lookup(records: Records) -> None:
    assert not records.exists("g1") and records.last_activity("g1") is None
    records.start_call("g1", gateway="twilio", started_at=T0, external_id="CA1")
    records.start_call("g2", gateway="twilio", started_at=T0 + timedelta(minutes=5), external_id="CA1")
    records.start_call("g3", gateway="sip", started_at=T0)
    assert records.exists("g1")
    assert records.last_activity("g3") == T0
    records.add_turn("g3", started_at=T0 + timedelta(seconds=40))
    assert records.last_activity("g3") == T0 + timedelta(seconds=40)
    latest = records.last_call_for("twilio", "CA1")
    assert latest is not None and latest.id == "g2" and latest.external_id == "CA1"
    assert records.last_call_for("sip", "CA1") is None
    records.set_gateway_ids("g3", stream_id="abc@pbx", external_id="abc@pbx")
    found = records.last_call_for("sip", "abc@pbx")
    assert found is not None and found.id == "g3"
    call = records.get_call("g3")
    assert call is not None and (call.stream_id, call.external_id) == ("abc@pbx", "abc@pbx")
    with pytest.raises(KeyError):
        records.set_gateway_ids("nope", stream_id="", external_id="")


def test_numbers_are_protected_at_rest(db_url: str) -> None:
    key = Fernet.generate_key()
    clear = Records(db_url)
    clear.start_call("old", gateway="sip", from_number="+1 555 000 1111", started_at=T0)
    clear.close()
    records = Records(db_url, numbers=NumberVault("encrypt", key))
    hashed = Records(db_url, run_migrations=False, numbers=NumberVault("hash", key))
    records.start_call("enc", gateway="twilio", from_number="+15550001111", to_number="+15559990000")
    hashed.start_call("hsh", gateway="twilio", from_number="+15550001111", started_at=T0)

    assert records.protect_clear_numbers() == 1
    assert records.protect_clear_numbers() == 0
    listed = {c.id: c for c in records.list_calls()}
    assert {c.from_number for c in listed.values()} == {"+*******1111"}
    assert {c.id for c in records.list_calls(number="+1 (555) 000-1111")} == {"old", "enc", "hsh"}
    assert records.reveal_numbers("enc") == ("+15550001111", "+15559990000")
    assert records.reveal_numbers("old") == ("+1 555 000 1111", "")
    with pytest.raises(ValueError, match="hash"):
        records.reveal_numbers("hsh")
    with pytest.raises(KeyError):
        records.reveal_numbers("nope")
    hashed.close()
    records.close()


def test_concurrent_add_turn_from_threads(db_url: str) -> None:
    # Two Records = two connection pools, as two processes would have; 8 threads write at once.
    first, second = Records(db_url), Records(db_url)
    first.start_call("shared", gateway="twilio")
    for n in range(4):
        first.start_call(f"own{n}", gateway="sip")
    errors: list[BaseException] = []
    start = threading.Barrier(8)

    def writer(n: int) -> None:
        recs = first if n % 2 else second
        try:
            start.wait()
            for i in range(25):
                recs.add_turn("shared", caller_text=f"t{n}-{i}")
                if n < 4:
                    recs.add_turn(f"own{n}", caller_text=str(i))
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=writer, args=(n,)) for n in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert not errors, errors
    shared = first.get_call("shared")
    assert shared is not None
    assert [t.index for t in shared.turns] == list(range(200))
    assert len({t.caller_text for t in shared.turns}) == 200
    for n in range(4):
        own = second.get_call(f"own{n}")
        assert own is not None
        assert [t.caller_text for t in own.turns] == [str(i) for i in range(25)]
    first.close()
    second.close()


# --------------------------------------------------------------------------- CLI


def _cli(data_dir: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("VOICEBOT_")}
    env["VOICEBOT_DATA_DIR"] = str(data_dir)
    return subprocess.run(
        [sys.executable, "run.py", "calls", *args],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_cli_list_and_show(tmp_path: Path) -> None:
    empty = _cli(tmp_path / "empty", "list")
    assert empty.returncode == 0, empty.stderr
    assert "No calls recorded yet." in empty.stdout

    recs = Records(f"sqlite:///{tmp_path / 'voicebot.db'}")
    recs.start_call(
        "CA42", gateway="twilio", from_number="+15551230000", to_number="+15559990000", started_at=T0
    )
    recs.add_turn("CA42", started_at=T0, bot_text="Hello there", route="greeting")
    recs.add_turn(
        "CA42",
        started_at=T0 + timedelta(seconds=5),
        caller_text="when do you open",
        bot_text="We open at nine.",
        route="kb_answer",
        retrieved=[{"id": "faq-7", "score": 0.83, "question": "Opening hours?"}],
        dtmf="5",
        interrupted=True,
        latency={"voice_to_voice": 612.4, "vad_stop": 200},
    )
    recs.end_call("CA42", "hangup", str(tmp_path / "CA42.wav"), ended_at=T0 + timedelta(seconds=95))
    recs.close()

    listed = _cli(tmp_path, "list", "-n", "5")
    assert listed.returncode == 0, listed.stderr
    header, row = listed.stdout.splitlines()
    assert header.split()[:3] == ["ID", "GATEWAY", "FROM"]
    for cell in ("CA42", "twilio", "+15551230000", "+15559990000", "2026-01-02 10:00:00", "1:35", "hangup"):
        assert cell in row
    assert row.split()[-2:] == ["2", "hangup"]

    shown = _cli(tmp_path, "show", "CA42")
    assert shown.returncode == 0, shown.stderr
    out = shown.stdout
    for text_ in (
        "Call CA42",
        f"{tmp_path / 'CA42.wav'} (file missing)",
        "route=greeting",
        "route=kb_answer",
        "when do you open",
        "We open at nine.",
        "faq-7 (0.83)",
        "yes (barge-in)",
        "vad_stop 200  voice_to_voice 612",
    ):
        assert text_ in out

    missing = _cli(tmp_path, "show", "nope")
    assert missing.returncode == 1
    assert "No call with id 'nope'" in missing.stderr

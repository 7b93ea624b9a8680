"""Saying which file broke a checkpoint load, and why, in one line for the user.

    describe_load_failure(Path("ckpt/strategies/lora"), exc)
    # 'ckpt/strategies/lora/adapter_model.safetensors: not a readable safetensors file (...) [SafetensorError: ...]'

Loaders often fail with a message that names no file (safetensors' "Error while deserializing
header", a shape mismatch inside peft). The artifact folder's files are checked one by one: the
first weight file whose header cannot be read, or JSON file that does not parse, is the one named;
else the folder itself is named with the loader's own complaint.
"""

from __future__ import annotations

import json
from pathlib import Path

MAX_REASON_CHARS = 300


def _reason(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return f"{type(exc).__name__}: {text[:MAX_REASON_CHARS]}" if text else type(exc).__name__


def _unreadable(file: Path) -> str | None:
    """Why `file` cannot be read as what its name says (None: it reads)."""
    try:
        if file.suffix == ".safetensors":
            from safetensors import safe_open

            with safe_open(str(file), framework="numpy") as handle:
                handle.keys()
        elif file.suffix == ".json":
            json.loads(file.read_text(encoding="utf-8"))
    except Exception as exc:
        return f"not a readable {file.suffix[1:]} file ({_reason(exc)})"
    return None


def damaged_file(artifact: Path) -> tuple[Path, str] | None:
    """The first file in `artifact` (a checkpoint folder) that cannot be read, and why; None when all read."""
    if not artifact.is_dir():
        return None
    for file in sorted(artifact.iterdir()):
        if file.is_file() and (problem := _unreadable(file)):
            return file, problem
    return None


def describe_load_failure(artifact: Path | str | None, exc: BaseException) -> str:
    """'FILE: reason [the loader's exception]' for a strategy whose artifact failed to load."""
    if artifact is None:
        return f"the base model failed to load: {_reason(exc)}"
    artifact = Path(artifact)
    found = damaged_file(artifact)
    if found is not None:
        file, problem = found
        return f"{file}: {problem}"
    return f"{artifact}: failed to load ({_reason(exc)})"

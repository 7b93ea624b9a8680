"""Atomic file writes: write to a temporary file in the same folder, fsync, then rename over the target.

A crash (or a full disk) mid-write leaves the previous file intact, never a half-written one.
`read_json_object` reads such a record back where a missing or damaged one means "nothing recorded".
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path


def write_bytes(path: Path, data: bytes) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_text(path: Path, text: str) -> None:
    write_bytes(path, text.encode("utf-8"))


def write_json(path: Path, data) -> None:
    write_text(path, json.dumps(data, indent=2, sort_keys=True, default=str) + "\n")


def replace_dir(staging: Path, target: Path) -> None:
    """Swap a fully written `staging` folder into place of `target` (the old one is removed after)."""
    staging, target = Path(staging), Path(target)
    old = target.with_name(f".{target.name}.old")
    if old.exists():
        shutil.rmtree(old)
    if target.exists():
        os.replace(target, old)
    try:
        os.replace(staging, target)
    except BaseException:
        if old.exists() and not target.exists():
            os.replace(old, target)  # the swap failed (e.g. disk full): put the old folder back
        raise
    if old.exists():
        shutil.rmtree(old)


def read_json_object(path: Path) -> dict:
    """A JSON object written by `write_json`, or {} when the file is absent, unreadable or not an object (the
    caller treats it as nothing recorded)."""
    try:
        value = json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return {}
    return value if isinstance(value, dict) else {}

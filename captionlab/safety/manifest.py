"""Shipped files checked against their manifest: a damaged weight file is named, not served.

    problems = manifest_problems(Path("checkpoints/embedded"))   # {"strategies/lora/adapter_model.safetensors":
                                                                 #  "sha256 differs from manifest.json ..."}
    damaged_under(problems, root, [root / "strategies" / "lora"])   # the ones a folder depends on

`python -m train zoo` writes `manifest.json` beside what it builds: every file's sha256. A damaged
or truncated weight file still loads (a flipped byte in a float is a float) and then captions
nothing sensible, so the app compares each listed file with the manifest before the served
checkpoints load. A file's digest is computed once and kept while its size and modification time
stay the same, so the check costs a hash of each file per process, not per request. A folder with
no manifest.json is not checked (the user's own checkpoints); an unreadable manifest is reported.
"""

from __future__ import annotations

import hashlib
import json
import os
import threading
from collections.abc import Iterable
from pathlib import Path

MANIFEST_NAME = "manifest.json"
_digests: dict[tuple[str, int, int], str] = {}  # (path, size, mtime_ns) -> sha256
_digests_lock = threading.Lock()


def file_sha256(path: Path) -> str:
    """The sha256 of `path`, from the cache while its size and mtime are unchanged."""
    info = path.stat()
    key = (str(path.resolve()), info.st_size, info.st_mtime_ns)
    with _digests_lock:
        if key in _digests:
            return _digests[key]
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    with _digests_lock:
        _digests[key] = digest.hexdigest()
    return _digests[key]


def digests_computed() -> int:
    """How many file digests have been computed in this process (what the cache saved is the rest)."""
    return len(_digests)


def manifest_problems(root: Path) -> dict[str, str]:
    """Per file listed in root/manifest.json (relative path) that is missing or differs from it: why. {} when
    every file matches or there is no manifest; {"manifest.json": why} when the manifest cannot be read."""
    manifest = Path(root) / MANIFEST_NAME
    if not manifest.is_file():
        return {}
    try:
        listed = json.loads(manifest.read_text(encoding="utf-8"))["files"]
        if not isinstance(listed, dict):
            raise ValueError("'files' is not an object")
    except (OSError, ValueError, KeyError, TypeError) as exc:
        return {MANIFEST_NAME: f"cannot be read ({type(exc).__name__}: {exc}), so no shipped file could be checked"}
    problems = {}
    for relative, expected in sorted(listed.items()):
        file = Path(root) / relative
        if not file.is_file():
            problems[relative] = f"missing (listed in {MANIFEST_NAME})"
            continue
        try:
            actual = file_sha256(file)
        except OSError as exc:
            problems[relative] = f"cannot be read ({type(exc).__name__}: {exc})"
            continue
        if actual != expected:
            problems[relative] = (f"sha256 {actual[:12]}… differs from {MANIFEST_NAME}'s {str(expected)[:12]}… "
                                  f"(damaged or changed since it was built)")
    return problems


def damaged_under(problems: dict[str, str], root: Path, folders: Iterable[Path | None]) -> list[str]:
    """'FILE: why' for each problem file inside one of `folders` (each resolved; None and folders outside
    `root` are skipped)."""
    root = Path(root).resolve()
    wanted = [Path(f).resolve() for f in folders if f is not None]
    found = []
    for relative, why in problems.items():
        file = (root / relative).resolve()
        if any(file.is_relative_to(folder) for folder in wanted):
            found.append(f"{root / relative}: {why}")
    return found


def repair_hint(root: Path) -> str:
    """What to do about damaged shipped files."""
    return (f"restore them (`git checkout -- {os.path.relpath(root)}`) or rebuild them with `python -m train zoo`")

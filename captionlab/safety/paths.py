"""Paths named in the app's forms (datasets, model folders, checkpoints): only inside configured roots.

    resolve_within("runs/r1", allowed_roots())         # the resolved Path, or PathNotAllowed
    check_dataset("karpathy:/data/coco/dataset_coco.json", known=["coco"])   # 'karpathy:/data/...'
    check_checkpoint("lora-2026")                      # a run id or a unique prefix of one: the run's folder

`resolve_within` follows symlinks and collapses '..' (Path.resolve) before checking, with
Path.is_relative_to, that the result lies under one of the roots (resolved too): neither
`../../etc/passwd` nor a symlink inside a root that points out of it gets through. The roots:
the workspace (runs, the generated world), the project's checkpoints/, what the app serves
(its --model folder and --checkpoints, registered by `allow_root`), and every folder in
$CAPTIONLAB_ALLOWED_ROOTS (os.pathsep-separated; `python app.py --allow-root DIR` adds to it).
Relative paths are read from the project folder, where the trainer and evaluation jobs run.

The command-line tools are not restricted: whoever runs them can read those files anyway.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from captionlab import paths

ROOTS_ENV = "CAPTIONLAB_ALLOWED_ROOTS"
HF_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*/[A-Za-z0-9][A-Za-z0-9._-]*$")
_registered: list[Path] = []


class PathNotAllowed(ValueError):
    """A path outside every allowed root (or not a usable path at all); the message names the field."""


def allow_root(path: str | Path | None) -> None:
    """Add a folder the app was started with (its model, its checkpoints) to the allowed roots."""
    if path is None:
        return
    folder = Path(path).expanduser()
    if folder.is_dir():
        resolved = folder.resolve()
        if resolved not in _registered:
            _registered.append(resolved)


MAX_NAME_CHARS = 255  # one folder or file name (Linux NAME_MAX)
MAX_PATH_CHARS = 4096  # a whole path (Linux PATH_MAX)


def check_length(text: str, field: str) -> None:
    """Refuse a value whose path, or one of its names, is longer than the file system takes, before any lookup
    (which would fail with 'File name too long') and without echoing it back."""
    longest = max((len(part) for part in text.replace("\\", "/").split("/")), default=0)
    if len(text) > MAX_PATH_CHARS or longest > MAX_NAME_CHARS:
        raise PathNotAllowed(f"{field}: a value of {len(text):,} characters (longest name {longest:,}) is too long: "
                             f"at most {MAX_NAME_CHARS} characters per folder or file name and {MAX_PATH_CHARS} "
                             f"in all")


def allowed_roots() -> list[Path]:
    """Workspace, project checkpoints/, the app's registered folders, then $CAPTIONLAB_ALLOWED_ROOTS."""
    roots = [paths.workspace(), paths.CHECKPOINTS_DIR, *_registered]
    roots += [Path(p).expanduser() for p in os.environ.get(ROOTS_ENV, "").split(os.pathsep) if p.strip()]
    unique: list[Path] = []
    for root in roots:
        resolved = root.resolve()
        if resolved not in unique:
            unique.append(resolved)
    return unique


def resolve_within(path: str | Path, roots: list[Path] | None = None, base: Path | None = None,
                   field: str = "path") -> Path:
    """`path` (relative ones from `base`, default the project folder) resolved, if inside one of `roots`."""
    roots = allowed_roots() if roots is None else roots
    text = str(path)
    if not text.strip() or "\0" in text:
        raise PathNotAllowed(f"{field}: {text!r} is not a usable path")
    check_length(text, field)
    candidate = Path(text).expanduser()
    if not candidate.is_absolute():
        candidate = Path(base or paths.PROJECT_ROOT) / candidate
    try:
        resolved = candidate.resolve()
        resolved_roots = [Path(root).expanduser().resolve() for root in roots]
    except (OSError, RuntimeError, ValueError) as exc:  # symlink loops, unreadable components
        raise PathNotAllowed(f"{field}: {text} cannot be resolved ({type(exc).__name__})") from None
    if any(resolved.is_relative_to(root) for root in resolved_roots):
        return resolved
    raise PathNotAllowed(f"{field}: {text} is outside the folders this app may read "
                         f"({', '.join(str(r) for r in resolved_roots)}); add one with --allow-root or "
                         f"${ROOTS_ENV}")


def looks_like_path(text: str) -> bool:
    """Absolute, home- or dot-relative, or an existing file or folder under the project folder."""
    return text.startswith(("/", "~", ".")) or (os.sep in text and (paths.PROJECT_ROOT / text).exists())


def check_dataset(value: str, known: list[str], formats: tuple[str, ...], field: str = "dataset") -> str:
    """A dataset name among `known`, or FORMAT:PATH with the path inside the roots (returned resolved)."""
    text = str(value or "").strip()
    check_length(text, field)
    if not text:
        raise PathNotAllowed(f"{field}: choose a dataset (a name, or FORMAT:PATH)")
    format_name, sep, path_text = text.partition(":")
    if sep:
        if format_name not in formats:
            raise PathNotAllowed(f"{field}: unknown format {format_name!r} in {text!r} (formats: {', '.join(formats)})")
        if not path_text.strip():
            raise PathNotAllowed(f"{field}: give the annotation file after {format_name}:")
        return f"{format_name}:{resolve_within(path_text.strip(), field=field)}"
    if text not in known:
        raise PathNotAllowed(f"{field}: unknown dataset {text!r}; choose one of {', '.join(known)} "
                             f"or give FORMAT:PATH")
    return text


def check_model(value: str, known: list[str], field: str = "model") -> str:
    """A registry name among `known`, a folder inside the roots (returned resolved), or a Hugging Face id."""
    text = str(value or "").strip()
    check_length(text, field)
    if not text:
        raise PathNotAllowed(f"{field}: choose a model")
    if text in known:
        return text
    if looks_like_path(text):
        return str(resolve_within(text, field=field))
    if HF_ID.match(text) and ".." not in text:
        return text
    raise PathNotAllowed(f"{field}: {text!r} is not a known model ({', '.join(known)}), a model folder or a "
                         f"Hugging Face id (org/name)")


def check_checkpoint(value: str, field: str = "checkpoint") -> str:
    """A run id (or a unique prefix of one, as the CLI takes) of the workspace's runs, or a run/artifact folder
    inside the roots: its resolved path. A plain word that is neither is answered as an unknown run id."""
    text = str(value or "").strip()
    check_length(text, field)
    if text.startswith("-"):
        raise PathNotAllowed(f"{field}: {text!r} is not a run id or folder")
    as_path = Path(text).expanduser()
    if len(as_path.parts) == 1 and not looks_like_path(text):
        if (paths.runs_dir() / text).is_dir():
            return str(resolve_within(paths.runs_dir() / text, field=field))
        run_dir = _registered_run_dir(text, field)
        if run_dir is not None:
            return str(resolve_within(run_dir, field=field))
        if not (paths.PROJECT_ROOT / text).exists():
            raise PathNotAllowed(f"{field}: no run with id {text!r} (and not a folder)")
    resolved = resolve_within(text, field=field)
    if not resolved.exists():
        raise PathNotAllowed(f"{field}: {text} is neither a run id (under {paths.runs_dir()}) nor a folder")
    return str(resolved)


def _registered_run_dir(run_id: str, field: str) -> Path | None:
    """The folder of the registered run with this id or id prefix (None if no run has it)."""
    from captionlab.training import runs_db

    try:
        return runs_db.find_run_dir(run_id)
    except runs_db.AmbiguousRunError as exc:
        raise PathNotAllowed(f"{field}: {exc}: give more of the id") from None

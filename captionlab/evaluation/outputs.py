"""Where an evaluation writes: its folder's name, and the files in it.

    default_out_dir("embedded", "lora", "coco", "test")   # <workspace>/evaluations/embedded/lora/coco-test/
    default_out_dir("m", "lora", "coco", "test", artifact) # .../lora/<checkpoint>/coco-test/ for any other artifact

One folder per checkpoint, so evaluating another one never replaces this one's results; the base
model (zero-shot) and the embedded study's shipped checkpoints keep the folder without a checkpoint
part. `artifact_stamp` changes whenever a file of the artifact does (a run's best/ is replaced as
training goes on), so predictions made with an older artifact are never resumed.
"""

from __future__ import annotations

import hashlib
import re
from pathlib import Path

from captionlab import paths
from captionlab.evaluation.results import RESULTS_JSON_NAME as RESULTS_NAME  # noqa: F401  (one name, results')

PREDICTIONS_NAME = "predictions.jsonl"


def slug(text: str) -> str:
    """`text` as one safe folder name (a hash kept where it had to be changed or shortened)."""
    cleaned = re.sub(r"[^A-Za-z0-9._-]+", "_", text).strip("._") or "x"
    if cleaned != text or len(cleaned) > 60:
        cleaned = f"{cleaned[-48:].strip('._')}-{hashlib.sha1(text.encode()).hexdigest()[:8]}"
    return cleaned


def default_out_dir(model: str, strategy: str, dataset: str, split: str, artifact: Path | None = None) -> Path:
    """`<workspace>/evaluations/<model>/<strategy>/[<checkpoint>/]<dataset>-<split>/`: one folder per
    checkpoint, so evaluating another one never replaces this one's results (see `checkpoint_folder_name`)."""
    folder = paths.workspace() / "evaluations" / slug(model) / slug(strategy)
    name = checkpoint_folder_name(artifact)
    if name is not None:
        folder = folder / name
    return folder / slug(f"{dataset}-{split}")


def checkpoint_folder_name(artifact: Path | None) -> str | None:
    """The folder name that tells `artifact`'s evaluations apart from any other checkpoint's.

    None for the base model (zero-shot) and the embedded study's shipped checkpoints: their
    evaluations stay where they always were. A run of the workspace gives its id and which of
    its checkpoints (`<run_id>-best`); any other folder its name and a hash of its whole path,
    as two folders can share a name (every run has an `artifact/`).
    """
    from captionlab.evaluation.targets import is_shipped_checkpoint

    if artifact is None:
        return None
    artifact = Path(artifact).expanduser().resolve()
    if is_shipped_checkpoint(artifact):
        return None
    runs = paths.runs_dir().resolve()
    if artifact.is_relative_to(runs):
        return slug("-".join(part for part in artifact.relative_to(runs).parts if part != "artifact"))
    name = f"{artifact.parent.parent.name}-{artifact.parent.name}" if artifact.name == "artifact" else artifact.name
    return f"{slug(name)[:40]}-{hashlib.sha1(str(artifact).encode()).hexdigest()[:8]}"


def artifact_stamp(folder: Path | None) -> str | None:
    """Changes whenever a file of the artifact does (a run's best/ is replaced as training goes on)."""
    if folder is None or not folder.is_dir():
        return None
    files = sorted(p for p in folder.rglob("*") if p.is_file())
    digest = hashlib.sha1()
    for p in files:
        st = p.stat()
        digest.update(f"{p.relative_to(folder)}:{st.st_size}:{st.st_mtime_ns}".encode())
    return digest.hexdigest()[:16]

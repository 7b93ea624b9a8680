"""Training checkpoints: written atomically, verified by checksums, never pickled.

A checkpoint folder holds the strategy's artifact (`artifact/`, what captioning loads), the
trainable parameters and optimizer state as safetensors, and `trainer_state.json` (step, epoch,
RNG state, best validation loss, file checksums), with the COMPLETE marker written last. The
folder is built under a temporary name and swapped in; the checkpoint it replaces is kept as
`previous/`, so a checkpoint found corrupt on resume falls back to the one before.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from captionlab import atomic
from captionlab.training.run_folder import CHECKPOINT_COMPLETE

STATE_FILE = "trainer_state.json"
TENSOR_FILES = ("trainable.safetensors", "optimizer.safetensors")


class CheckpointError(Exception):
    """A checkpoint that is missing, half-written or corrupt."""


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def optimizer_tensors(optimizer: torch.optim.Optimizer, names: dict[int, str], cpu: bool = True) -> dict[str, torch.Tensor]:
    """The optimizer's tensor state keyed `<kind>::<parameter name>`: SGD's momentum buffers; Adam's exp_avg,
    exp_avg_sq and step (`restore_optimizer_state` puts them back).

    `cpu=False` leaves them where they are (sharded ones are gathered by the caller, on every process)."""
    tensors = {}
    for group in optimizer.param_groups:
        for p in group["params"]:
            for kind, value in optimizer.state.get(p, {}).items():
                if isinstance(value, torch.Tensor):
                    tensors[f"{kind}::{names[id(p)]}"] = value.detach().cpu().contiguous() if cpu else value
    return tensors


def initial_weights(source: str | Path) -> tuple[Path, dict[str, torch.Tensor]]:
    """(the folder read, its trainable tensors by parameter name) for `init_from`: a run folder (its best/
    checkpoint), a checkpoint folder, or an artifact folder holding the whole network (the CLIP-Captioner's)."""
    from captionlab import paths

    folder = Path(source).expanduser()
    if not folder.is_absolute() and not folder.exists():  # a recipe's path, relative to the project
        folder = paths.PROJECT_ROOT / folder
    if (folder / "best" / CHECKPOINT_COMPLETE).exists():
        folder = folder / "best"
    if (folder / CHECKPOINT_COMPLETE).exists():
        return folder, load_checkpoint(folder)[1]
    if (folder / "model.safetensors").is_file():
        return folder, load_file(str(folder / "model.safetensors"))
    raise CheckpointError(f"init_from: {source} is not a run folder with a best/ checkpoint, a complete checkpoint "
                          "folder (best/, last/) or an artifact folder with a model.safetensors")


def save_checkpoint(folder: Path, *, save_artifact, trainable: dict[str, torch.Tensor],
                    optimizer: dict[str, torch.Tensor], state: dict) -> None:
    """Write a complete checkpoint to `folder` atomically (old one kept as `<folder>/../previous`)."""
    folder = Path(folder)
    staging = folder.with_name(f".{folder.name}.staging")
    if staging.exists():
        shutil.rmtree(staging)
    moved_to = None
    try:
        staging.mkdir(parents=True)
        save_artifact(staging / "artifact")
        save_file({k: v.detach().cpu().contiguous() for k, v in trainable.items()}, str(staging / TENSOR_FILES[0]))
        save_file(optimizer, str(staging / TENSOR_FILES[1]))
        checksums = {name: _sha256(staging / name) for name in TENSOR_FILES}
        atomic.write_json(staging / STATE_FILE, {**state, "checksums": checksums})
        atomic.write_text(staging / CHECKPOINT_COMPLETE, "ok\n")
        if folder.name == "last" and folder.exists():
            previous = folder.with_name("previous")
            if previous.exists():
                shutil.rmtree(previous)
            folder.rename(previous)
            moved_to = previous
        atomic.replace_dir(staging, folder)
    except BaseException:
        # A failed write (disk full, ...) keeps the checkpoint it was replacing as `folder` and frees the space.
        if moved_to is not None and moved_to.exists() and not folder.exists():
            moved_to.rename(folder)
        shutil.rmtree(staging, ignore_errors=True)
        raise


def copy_checkpoint(source: Path, target: Path) -> None:
    """Copy a complete checkpoint (e.g. last/ -> best/) atomically."""
    staging = Path(target).with_name(f".{Path(target).name}.staging")
    if staging.exists():
        shutil.rmtree(staging)
    shutil.copytree(source, staging)
    atomic.replace_dir(staging, Path(target))


def load_checkpoint(folder: Path) -> tuple[dict, dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """(state, trainable tensors, optimizer tensors) of a verified checkpoint, else CheckpointError."""
    folder = Path(folder)
    if not (folder / CHECKPOINT_COMPLETE).exists():
        raise CheckpointError(f"{folder}: incomplete checkpoint (no {CHECKPOINT_COMPLETE} marker)")
    try:
        state = json.loads((folder / STATE_FILE).read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise CheckpointError(f"{folder}: unreadable {STATE_FILE}: {exc}") from None
    for name, expected in state.get("checksums", {}).items():
        if not (folder / name).exists() or _sha256(folder / name) != expected:
            raise CheckpointError(f"{folder}: {name} is missing or corrupt (checksum mismatch)")
    try:
        return state, load_file(str(folder / TENSOR_FILES[0])), load_file(str(folder / TENSOR_FILES[1]))
    except Exception as exc:  # safetensors raises several error types for damaged files
        raise CheckpointError(f"{folder}: cannot read tensors: {exc}") from None


def checkpoint_step(folder: Path) -> int | None:
    """The step a complete checkpoint was saved at (its state file only: nothing verified), else None."""
    folder = Path(folder)
    try:
        if (folder / CHECKPOINT_COMPLETE).exists():
            return int(json.loads((folder / STATE_FILE).read_text())["step"])
    except (OSError, ValueError, KeyError, TypeError):
        pass
    return None


def latest_good_checkpoint(run_dir: Path, problems: list[str] | None = None) -> tuple[Path, tuple] | None:
    """The newest checkpoint that verifies: last/, else previous/. None if neither does. `problems`, when given,
    receives why each checkpoint passed over failed (so a fallback to previous/ can say why)."""
    errors = [] if problems is None else problems
    for name in ("last", "previous"):
        folder = Path(run_dir) / name
        if not folder.exists():
            continue
        try:
            return folder, load_checkpoint(folder)
        except CheckpointError as exc:
            errors.append(str(exc))
    if errors:
        print("checkpoint problems: " + "; ".join(errors), flush=True)
    return None

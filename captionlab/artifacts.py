"""Finding a strategy's artifact: the one search every caller uses (evaluation, the Compare tab).

An artifact is a folder whose card (`strategy.json`) names its strategy. Given a run folder, an
artifact folder or a checkpoints folder, `find_artifact` looks, best first, in the folder itself,
a run's complete `best/` then `last/` checkpoint, `best|last/artifact/`, `artifact/`, then under
`strategies/<key>/` and `<key>/` (the embedded study ships `strategies/<key>/` and
`clip_captioner/`). Torch-free and cheap: it reads cards only.
"""

from __future__ import annotations

import json
from pathlib import Path

from captionlab.names import ARTIFACT_CARD


class ArtifactNotFound(Exception):
    """No artifact of the strategy where one was looked for; the message says where and what was there."""


def card_strategy(folder: Path) -> str | None:
    """The strategy named by `folder`'s card, or None (no card, or an unreadable one)."""
    card = Path(folder) / ARTIFACT_CARD
    if not card.is_file():
        return None
    try:
        return json.loads(card.read_text()).get("strategy")
    except (OSError, json.JSONDecodeError, AttributeError):
        return None


def artifact_candidates(folder: Path, strategy: str) -> list[Path]:
    """Where an artifact of `strategy` can be under `folder`, best first."""
    from captionlab.training.run_folder import is_complete_checkpoint

    runs = []
    for sub in ("best", "last"):
        if is_complete_checkpoint(folder / sub):
            runs.append(folder / sub / "artifact")
    runs += [folder / "best" / "artifact", folder / "last" / "artifact", folder / "artifact"]
    nested = []
    for parent in (folder / "strategies" / strategy, folder / strategy):
        nested += [parent, parent / "best" / "artifact", parent / "last" / "artifact", parent / "artifact"]
    return list(dict.fromkeys([folder, *runs, *nested]))


def find_artifact(folder: str | Path, strategy: str) -> Path:
    """The artifact folder of `strategy` in a run folder, artifact folder or checkpoints folder."""
    folder = Path(folder).expanduser().resolve()
    if not folder.exists():
        raise ArtifactNotFound(f"checkpoint not found: {folder}")
    if not folder.is_dir():
        raise ArtifactNotFound(f"checkpoint is not a folder: {folder}")
    others = []
    for candidate in artifact_candidates(folder, strategy):
        found = card_strategy(candidate)
        if found == strategy:
            return candidate
        if found is not None:
            others.append(f"{candidate} holds a {found!r} artifact")
    if others:
        raise ArtifactNotFound(f"no {strategy!r} artifact in {folder}: {'; '.join(others)}")
    raise ArtifactNotFound(f"no {strategy!r} artifact in {folder} (looked for {ARTIFACT_CARD} in it, in "
                           f"best/artifact/ and last/artifact/ of a run folder, and in strategies/{strategy}/)")


def search_artifact(folder: Path | None, strategy: str) -> Path | None:
    """`find_artifact`, or None where there is none (or no folder)."""
    if folder is None:
        return None
    try:
        return find_artifact(folder, strategy)
    except ArtifactNotFound:
        return None

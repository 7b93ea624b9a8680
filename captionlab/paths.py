"""Where captionlab keeps things: the project's shipped files and the user's workspace.

The workspace (runs, the SQLite database, generated data, evaluation outputs) is
`$CAPTIONLAB_HOME`, by default `workspace/` in the project folder. Shipped, committed files
(embedded checkpoints, recipes, model configs, the paper's reference numbers) live in the repo.
"""

from __future__ import annotations

import os
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parent.parent
CHECKPOINTS_DIR = PROJECT_ROOT / "checkpoints"
RECIPES_DIR = PROJECT_ROOT / "train" / "recipes"
MODEL_CONFIGS_DIR = Path(__file__).resolve().parent / "models" / "configs"
REFERENCE_DIR = Path(__file__).resolve().parent / "evaluation" / "reference"


def workspace() -> Path:
    """The user's workspace folder (created on first use)."""
    root = Path(os.environ.get("CAPTIONLAB_HOME", PROJECT_ROOT / "workspace")).expanduser().resolve()
    root.mkdir(parents=True, exist_ok=True)
    return root


def runs_dir() -> Path:
    path = workspace() / "runs"
    path.mkdir(parents=True, exist_ok=True)
    return path


def database_path() -> Path:
    return workspace() / "captionlab.db"


def world_dir() -> Path:
    """Where the embedded caption world is generated (see captionlab.world)."""
    return workspace() / "world"

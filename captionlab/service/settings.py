"""What the app serves: a model (registry name, Hugging Face id or folder) and a checkpoints folder.

The embedded default is the shipped miniature study in `checkpoints/embedded/`:

    base/                 the tiny LLaVA (Hugging Face folder)      -> zero-shot
    strategies/<key>/     one artifact per personalization strategy
    clip/                 the tiny CLIP (CLIP-Score)
    clip_captioner/       the CLIP-Captioner baseline
    gallery/              example images + gallery.json (references)
    results/              the embedded benchmark results

A real model is served with `--model llava-1.5-7b --checkpoints DIR`, DIR laid out the same way
(`DIR/<key>/` also works, and so does a run folder's `best/artifact/`).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from captionlab import paths
from captionlab.caption_length import DEFAULT_MAX_NEW_TOKENS

EMBEDDED_DIR = paths.CHECKPOINTS_DIR / "embedded"
EMBEDDED_MODEL_NAME = "embedded"


@dataclass(frozen=True)
class AppSettings:
    """The model and checkpoints the app serves, and how captions are generated."""

    model: str
    """Registry name, Hugging Face id (from the local cache) or local folder of the base model."""
    checkpoints: Path | None = None
    """Folder holding strategies/<key>/ artifacts, clip/, clip_captioner/, gallery/ (any may be missing)."""
    device: str | None = None
    """cpu, cuda, cuda:1 ...; None = cuda when available."""
    max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS
    """Longest caption generated, in tokens."""

    @property
    def is_embedded(self) -> bool:
        return self.model == EMBEDDED_MODEL_NAME or Path(self.model) == EMBEDDED_DIR / "base"

    @property
    def model_label(self) -> str:
        """How the model is called in messages: its registry name, id or folder name."""
        return Path(self.model).name if Path(self.model).is_absolute() else self.model


def embedded_settings() -> AppSettings:
    """The shipped miniature study: opens at once, no download, no GPU."""
    from captionlab.models.registry import list_models

    model = EMBEDDED_MODEL_NAME if EMBEDDED_MODEL_NAME in list_models() else str(EMBEDDED_DIR / "base")
    return AppSettings(model=model, checkpoints=EMBEDDED_DIR)


def settings_for(model: str | None, checkpoints: str | Path | None = None, device: str | None = None,
                 max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS) -> AppSettings:
    """Settings from the command line: no model means the embedded default."""
    if model is None:
        base = embedded_settings()
        return AppSettings(base.model, Path(checkpoints).expanduser().resolve() if checkpoints else base.checkpoints,
                           device, max_new_tokens)
    folder = Path(model).expanduser()
    model_text = str(folder.resolve()) if folder.is_dir() else model
    return AppSettings(model_text, Path(checkpoints).expanduser().resolve() if checkpoints else None, device,
                       max_new_tokens)

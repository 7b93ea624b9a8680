"""The model registry: one JSON file per model in `captionlab/models/configs/`; the folder is the registry.

Each file carries the model's architecture config (so parameter counts, random-weight benchmarks
and tests work offline), its Hugging Face id or local weights folder, its prompt template and
system prompt, and the paper's LoRA settings for it. Any other HF id or local folder of a registered
model family (`captionlab.models.families`: LLaVA, LLaVA-NeXT) is accepted too and gets its family's
prompt template and system prompt.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from captionlab import paths
from captionlab.models.families import FamilyNotFound, family_for
from captionlab.models.families.base import VICUNA_SYSTEM_PROMPT, VICUNA_TEMPLATE  # noqa: F401  (callers' names)
ZERO_SHOT_PROMPT = "Briefly caption the image"
# LoRA as the paper sets it on LLaVA: r=128, alpha=256, A Gaussian and B zero (Sec. 3.2), for registry and folder models
# that name no other (the embedded model's card names r=8, alpha=16 and peft's default init, as its study was trained)
PAPER_LORA = {"r": 128, "alpha": 256, "init": "gaussian"}


class ModelNotFoundError(Exception):
    """A model name, id or folder that cannot be resolved offline; the message says how to get it."""


@dataclass(frozen=True)
class ModelSpec:
    """Everything captionlab knows about a model before loading any weights."""

    name: str
    architecture: str  # its model family's name (`captionlab.models.families`): "llava", "llava_next", ...
    config: dict  # the transformers config (LlavaConfig / LlavaNextConfig as a dict)
    hf_id: str | None = None
    weights_dir: Path | None = None  # a local folder with weights, if any
    system_prompt: str = VICUNA_SYSTEM_PROMPT
    prompt_template: str = VICUNA_TEMPLATE
    prompt_token_count: int | None = None  # system + user prompt tokens, when known without a tokenizer
    lora: dict = field(default_factory=lambda: dict(PAPER_LORA))
    notes: str = ""

    @property
    def family(self):
        """Its `ModelFamily`: classes, prompt template, where its LLM, vision tower and projector are."""
        return family_for(self.architecture)

    @property
    def model_class_name(self) -> str:
        return self.family.model_class_name

    @property
    def text_config(self) -> dict:
        """The LLM's config: `text_config`, or the top level of a flat config (as Qwen2.5-VL publishes its own)."""
        return self.config.get("text_config") or self.config

    @property
    def text_hidden_size(self) -> int:
        return int(self.text_config["hidden_size"])

    @property
    def text_num_layers(self) -> int:
        return int(self.text_config["num_hidden_layers"])


def list_models() -> list[str]:
    """Names of the models shipped with captionlab."""
    return sorted(p.stem for p in paths.MODEL_CONFIGS_DIR.glob("*.json"))


def _spec_from_file(path: Path) -> ModelSpec:
    data = json.loads(path.read_text())
    weights = data.get("weights_dir")
    if "config" not in data:  # a model whose config lives with its weights (the embedded one)
        folder = paths.PROJECT_ROOT / weights
        if not (folder / "config.json").exists():
            raise ModelNotFoundError(
                f"model {data['name']!r}: no weights in {folder}; build the embedded study with `python -m train zoo`"
            )
        spec = _spec_from_folder(folder)
        return ModelSpec(**{**spec.__dict__, "name": data["name"], "notes": data.get("notes", spec.notes)})
    return ModelSpec(
        name=data["name"],
        architecture=data["architecture"],
        config=data["config"],
        hf_id=data.get("hf_id"),
        weights_dir=(paths.PROJECT_ROOT / weights) if weights else None,
        system_prompt=data.get("system_prompt", VICUNA_SYSTEM_PROMPT),
        prompt_template=data.get("prompt_template", VICUNA_TEMPLATE),
        prompt_token_count=data.get("prompt_token_count"),
        lora=data.get("lora", PAPER_LORA),
        notes=data.get("notes", ""),
    )


def _spec_from_folder(folder: Path) -> ModelSpec:
    config_path = folder / "config.json"
    if not config_path.exists():
        raise ModelNotFoundError(f"{folder} has no config.json: not a Hugging Face model folder")
    config = json.loads(config_path.read_text())
    arch = config.get("model_type")
    try:
        family = family_for(arch)
    except FamilyNotFound as exc:
        raise ModelNotFoundError(f"{folder}: {exc}") from None
    extra = {}
    card = folder / "captionlab.json"  # optional: template and prompt of a captionlab-made model
    if card.exists():
        extra = json.loads(card.read_text())
    return ModelSpec(
        name=extra.get("name", folder.name),
        architecture=arch,
        config=config,
        weights_dir=folder,
        system_prompt=extra.get("system_prompt", family.system_prompt),
        prompt_template=extra.get("prompt_template", family.prompt_template),
        prompt_token_count=extra.get("prompt_token_count"),
        lora=extra.get("lora", PAPER_LORA),
        notes=extra.get("notes", ""),
    )


def _cached_hf_folder(hf_id: str) -> Path | None:
    """The local snapshot of `hf_id` in the Hugging Face cache, without any network access."""
    try:
        from huggingface_hub import snapshot_download
        from huggingface_hub.errors import LocalEntryNotFoundError
    except ImportError:  # pragma: no cover - huggingface_hub ships with transformers
        return None
    try:
        return Path(snapshot_download(hf_id, local_files_only=True))
    except (LocalEntryNotFoundError, OSError, ValueError):
        return None


def get_model_spec(name_or_path: str | Path) -> ModelSpec:
    """Resolve a registry name, a local folder or a Hugging Face id (from the local cache only)."""
    text = str(name_or_path)
    if text in list_models():  # only a plain registry name, never a path that escapes the folder
        return _spec_from_file(paths.MODEL_CONFIGS_DIR / f"{text}.json")
    folder = Path(text).expanduser()
    if folder.is_dir():
        return _spec_from_folder(folder.resolve())
    if "/" in text and not text.startswith((".", "/")):
        cached = _cached_hf_folder(text)
        if cached is not None:
            spec = _spec_from_folder(cached)
            return ModelSpec(**{**spec.__dict__, "name": text, "hf_id": text})
        raise ModelNotFoundError(
            f"model {text!r} is not in the local Hugging Face cache and captionlab never downloads at run "
            f"time. On a machine with internet: `huggingface-cli download {text}` (or "
            f"`hf download {text}`), then run again; or pass a local folder."
        )
    raise ModelNotFoundError(
        f"unknown model {text!r}: not a registry name ({', '.join(list_models())}), "
        f"not a local folder, not a Hugging Face id"
    )

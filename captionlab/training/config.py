"""The training configuration: a recipe (YAML) plus `key=value` overrides, validated before anything starts.

Defaults are the paper's (Sec. 4.2): token-level cross-entropy, SGD, cosine schedule from 2e-2
down to 1e-5, a batch of 32 through gradient accumulation, 4 epochs, the best checkpoint chosen
by validation loss. A bad value is rejected with a message naming the field.
"""

from __future__ import annotations

import dataclasses
import math
import re
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from captionlab import paths
from captionlab.models.registry import ZERO_SHOT_PROMPT

EPOCH_UNITS = ("caption", "image", "image_captions")
DISTRIBUTED = ("ddp", "fsdp")
OPTIMIZERS = ("sgd", "adam")
LR_SCHEDULES = ("cosine", "noam", "constant")
OBJECTIVES = ("xe", "scst")
SCST_BASELINES = ("greedy", "mean")
_ADDED = {"omit_when_default": True}  # settings added after the study shipped: left out of to_dict at their default


class ConfigError(ValueError):
    """An invalid training configuration; the message names the field."""


@dataclass
class TrainConfig:
    """One training run. Every field can be set in a recipe or overridden as key=value."""

    model: str = "embedded"
    """Registry name (llava-1.5-7b, llava-1.6-7b, embedded), local folder or cached HF id."""
    strategy: str = "lora"
    """prompt_learning, prefix_tuning, lora, dora, full (or qlora on CUDA); clip_captioner trains the baseline."""
    dataset: str = "coco"
    """A name in the datasets config (see `datasets_config`) or FORMAT:PATH, e.g. karpathy:/data/dataset_coco.json."""
    datasets_config: str | None = None
    """datasets.yaml naming the datasets; default: the embedded world's."""
    images: str | None = None
    """Image root for a FORMAT:PATH dataset."""
    train_split: str = "train"
    """The split(s) trained on; several joined by '+' (the 7B recipes: Karpathy's train+restval, 113,287 images)."""
    val_split: str = "val"
    epochs: int = 4
    batch_size: int = 32
    """Captions per optimizer step (global, across processes): the paper's 32."""
    micro_batch_size: int = 8
    """Captions per forward pass; batch_size is reached by gradient accumulation."""
    lr_max: float = 2e-2
    lr_min: float = 1e-5
    """Where the cosine schedule ends (unused by noam and constant)."""
    momentum: float = 0.0
    """SGD momentum; the paper says plain SGD. Not used by adam."""
    weight_decay: float = 0.0
    max_grad_norm: float | None = None
    optimizer: str = field(default="sgd", metadata=_ADDED)
    """sgd (the paper's recipe) or adam (the CLIP-Captioner's, Barraco et al. after the M2 Transformer: Adam with
    betas (0.9, adam_beta2))."""
    adam_beta2: float = field(default=0.999, metadata=_ADDED)
    """Adam's second-moment decay; the M2 / CLIP-Captioner cross-entropy stage uses 0.98."""
    lr_schedule: str = field(default="cosine", metadata=_ADDED)
    """cosine: lr_max -> lr_min (the paper's). noam: Vaswani et al.'s inverse square root, lr_max reached at step
    warmup_steps (the M2 Transformer's cross-entropy schedule). constant: lr_max throughout (after any warm-up;
    M2's SCST stage: 5e-6)."""
    warmup_steps: int = field(default=0, metadata=_ADDED)
    """Optimizer steps of linear warm-up from 0 to lr_max (noam needs at least 1; M2 uses 10,000)."""
    objective: str = field(default="xe", metadata=_ADDED)
    """xe: token-level cross-entropy on the reference captions. scst: self-critical sequence training (Rennie et
    al. 2017): sampled captions rewarded by CIDEr-D against the image's references (training/scst.py), usually
    from a cross-entropy run's weights (init_from). A step then takes batch_size images (epoch_unit image)."""
    scst_samples: int = field(default=5, metadata=_ADDED)
    """Captions sampled per image and step under objective scst."""
    scst_baseline: str = field(default="mean", metadata=_ADDED)
    """What a sample's reward is compared with: mean (the mean reward of the image's other samples, the
    CLIP-Captioner's / M2's choice; needs scst_samples >= 2) or greedy (the greedy caption's reward, Rennie's)."""
    scst_max_length: int = field(default=20, metadata=_ADDED)
    """Longest sampled caption, in tokens (M2: 20)."""
    init_from: str | None = field(default=None, metadata=_ADDED)
    """Start from another run's weights: its run folder (its best/ checkpoint) or a checkpoint folder (best/,
    last/), same model and strategy; e.g. the SCST stage from the cross-entropy run."""
    epoch_unit: str = "caption"
    """caption: an epoch visits every (image, caption) pair once (the captioning convention, 5 per COCO
    image); image: every image once, with one of its captions drawn per epoch; image_captions: every
    image once with ALL its captions (the same pairs as caption, kept together per image): images are
    shuffled by (seed, epoch) and a step takes whole images until the next would exceed batch_size
    captions (at least one image per step), so a step may hold a few captions fewer than batch_size.
    The paper leaves it open."""
    share_prefix: bool = False
    """Pack each image's captions after one shared image+prompt prefix (the image is encoded and the
    prefix computed once per image, not once per caption: ~617 of 633 tokens on LLaVA-1.5). Same loss
    and gradients as one sequence per caption. Requires epoch_unit image_captions; LLaVA models only.
    A micro-batch then takes whole images up to micro_batch_size captions (one image at least)."""
    max_train_images: int | None = None
    """Use only the first N training images (quick runs); None = all."""
    max_val_images: int | None = None
    lora_rank: int | None = None
    """LoRA/DoRA rank; None = the model's registry value (128 for the 7B models)."""
    lora_alpha: int | None = None
    lora_targets: str = field(default="llm", metadata={"omit_when_default": True})
    """Which layers LoRA/DoRA adapt. llm: the LLM's seven projections (q, k, v, o, gate, up, down), the count the
    paper's Table 4 prints (319.8M / 321.2M on LLaVA-1.5-7B). all_linear: every linear layer of the model (vision
    tower, projector and lm_head too), the method text's literal "all fully connected layers of the MLLMs"
    (`python -m captionlab params` shows both counts)."""
    prompt: str = ZERO_SHOT_PROMPT
    seed: int = 0
    device: str = "auto"
    """auto, cpu, cuda."""
    distributed: str = field(default="ddp", metadata={"omit_when_default": True})
    """How several processes (`accelerate launch --multi_gpu --num_processes N`) share the work. ddp: every
    process holds the whole model, gradients are all-reduced. fsdp: FSDP2, the model's parameters, gradients
    and optimizer state sharded across the processes, each decoder / vision encoder layer gathered only for
    its own forward and backward (bf16 compute, fp32 master weights on CUDA): what full fine-tuning at 7B
    needs. fsdp requires a strategy that supports it (full) and a distributed launch (a process group)."""
    checkpoint_every_steps: int = 50
    """Also write last/ every N optimizer steps (and always at the end of an epoch)."""
    num_workers: int = 0
    name: str | None = None
    """A human name for the run; the run id adds a timestamp."""
    recipe: str | None = field(default=None, metadata={"internal": True})

    @property
    def run_name(self) -> str:
        return sanitize_name(self.name or f"{self.model}-{self.strategy}")

    def to_dict(self) -> dict:
        """The settings; one added after runs were shipped is left out at its default, so that an older
        run's config (and the shipped study's recipe hashes) still reads as the same config."""
        values = dataclasses.asdict(self)
        for f in dataclasses.fields(self):
            if f.metadata.get("omit_when_default") and values[f.name] == f.default:
                del values[f.name]
        return values

    def validate(self) -> "TrainConfig":
        from captionlab.strategies import STRATEGIES

        trainable = [name for name, cls in STRATEGIES.items() if cls.trains]
        if self.strategy not in trainable:
            raise ConfigError(f"strategy: {self.strategy!r} cannot be trained; choose one of {', '.join(trainable)}")
        checks = [
            ("epochs", self.epochs >= 1, "must be at least 1"),
            ("batch_size", self.batch_size >= 1, "must be at least 1"),
            ("micro_batch_size", 1 <= self.micro_batch_size <= self.batch_size, "must be between 1 and batch_size"),
            ("lr_max", self.lr_max > 0, "must be positive"),
            ("lr_min", 0 <= self.lr_min <= (self.lr_max if self.lr_schedule == "cosine" else math.inf),
             "must be between 0 and lr_max"),  # only cosine decays to it
            ("momentum", 0 <= self.momentum < 1, "must be in [0, 1)"),
            ("weight_decay", self.weight_decay >= 0, "must be non-negative"),
            ("epoch_unit", self.epoch_unit in EPOCH_UNITS, f"must be one of {EPOCH_UNITS}"),
            ("share_prefix", isinstance(self.share_prefix, bool), "must be true or false"),
            ("share_prefix", not self.share_prefix or self.epoch_unit == "image_captions",
             f"requires epoch_unit image_captions (an image's captions in one step), not {self.epoch_unit!r}"),
            ("share_prefix", not self.share_prefix or STRATEGIES[self.strategy].uses_llava_base,
             f"applies to LLaVA models only, not strategy {self.strategy}"),
            ("device", self.device in ("auto", "cpu", "cuda"), "must be auto, cpu or cuda"),
            ("distributed", self.distributed in DISTRIBUTED, f"must be one of {', '.join(DISTRIBUTED)}"),
            ("checkpoint_every_steps", self.checkpoint_every_steps >= 1, "must be at least 1"),
            ("max_grad_norm", self.max_grad_norm is None or self.max_grad_norm > 0, "must be positive"),
            ("max_train_images", self.max_train_images is None or self.max_train_images >= 1, "must be at least 1"),
            ("max_val_images", self.max_val_images is None or self.max_val_images >= 1, "must be at least 1"),
            ("lora_rank", self.lora_rank is None or self.lora_rank >= 1, "must be at least 1"),
            ("lora_alpha", self.lora_alpha is None or self.lora_alpha > 0, "must be positive"),
            ("lora_targets", self.lora_targets in ("llm", "all_linear"), "must be llm or all_linear"),
            ("optimizer", self.optimizer in OPTIMIZERS, f"must be one of {', '.join(OPTIMIZERS)}"),
            ("adam_beta2", 0 < self.adam_beta2 < 1, "must be in (0, 1)"),
            ("lr_schedule", self.lr_schedule in LR_SCHEDULES, f"must be one of {', '.join(LR_SCHEDULES)}"),
            ("warmup_steps", self.warmup_steps >= (1 if self.lr_schedule == "noam" else 0),
             "must be at least 1 for lr_schedule noam" if self.lr_schedule == "noam" else "must be non-negative"),
            *self._scst_checks(),
            ("dataset", bool(str(self.dataset).strip()), "must name a dataset"),
            ("model", bool(str(self.model).strip()), "must name a model"),
            ("prompt", self.strategy != "prompt_learning" or self.prompt == ZERO_SHOT_PROMPT,
             f"prompt learning learns the paper's prompt ({ZERO_SHOT_PROMPT!r} in the model's template, 48 tokens on "
             "LLaVA-1.5), initialised from its tokens; another prompt is not supported by it"),
        ]
        for name, ok, why in checks:
            if not ok:
                raise ConfigError(f"{name}: {why} (got {getattr(self, name)!r})")
        if self.distributed == "fsdp":
            self._validate_fsdp()
        return self

    def _scst_checks(self) -> list[tuple[str, bool, str]]:
        scst = self.objective == "scst"
        return [
            ("objective", self.objective in OBJECTIVES,
             "must be xe (cross-entropy) or scst (self-critical sequence training)"),
            ("scst_baseline", self.scst_baseline in SCST_BASELINES,
             "must be greedy (Rennie et al.'s) or mean (the mean reward of the image's other samples)"),
            ("scst_samples", self.scst_samples >= (2 if self.scst_baseline == "mean" else 1),
             "must be at least 2 with scst_baseline mean (a sample is compared with the others)"
             if self.scst_baseline == "mean" else "must be at least 1"),
            ("scst_max_length", self.scst_max_length >= 1, "must be at least 1"),
            ("distributed", not (scst and self.distributed == "fsdp"),
             "must be ddp with objective scst (sampling under FSDP is not supported)"),
            ("share_prefix", not (scst and self.share_prefix), "does not apply to objective scst"),
            ("init_from", self.init_from is None or bool(str(self.init_from).strip()), "must name a run or checkpoint"),
        ]

    def _validate_fsdp(self) -> None:
        from captionlab.strategies import STRATEGIES
        from captionlab.training.fsdp import fsdp_unavailable_reason

        supported = [name for name, cls in STRATEGIES.items() if cls.trains and cls.supports_fsdp]
        strategy = STRATEGIES.get(self.strategy)
        if strategy is None or not strategy.supports_fsdp:
            raise ConfigError(f"distributed: fsdp is not supported by strategy {self.strategy!r} (supported: "
                              f"{', '.join(supported)}); use distributed=ddp")
        reason = fsdp_unavailable_reason()
        if reason:
            raise ConfigError(f"distributed: fsdp cannot run here: {reason}; use distributed=ddp")


def sanitize_name(name: str) -> str:
    """Letters, digits, '-', '_' and '.' only (safe as a folder name and in any shell line)."""
    cleaned = re.sub(r"[^A-Za-z0-9_.-]+", "-", name).strip("-.")
    return cleaned[:80] or "run"


def _coerce(field_: dataclasses.Field, raw, source: str):
    """Turn a YAML value or an override string into the field's type, or fail naming the field."""
    kind = str(field_.type)
    if raw is None or (isinstance(raw, str) and raw.lower() in ("none", "null", "~") and "None" in kind):
        if "None" in kind:
            return None
        raise ConfigError(f"{field_.name}: a value is required ({source})")
    try:
        if kind.startswith("int"):
            if isinstance(raw, bool) or (isinstance(raw, float) and not raw.is_integer()):
                raise ValueError
            return int(raw)
        if kind.startswith("float"):
            if isinstance(raw, bool):
                raise ValueError
            return float(raw)
        if kind.startswith("str"):
            return str(raw)
        if kind.startswith("bool"):
            if isinstance(raw, bool):
                return raw
            text = str(raw).strip().lower()
            if text in ("true", "yes", "on", "1"):
                return True
            if text in ("false", "no", "off", "0"):
                return False
            raise ValueError
    except (TypeError, ValueError):
        raise ConfigError(f"{field_.name}: {raw!r} is not a valid {kind.split(' ')[0]} ({source})") from None
    return raw


def parse_overrides(overrides: list[str]) -> dict[str, str | None]:
    """`key=value` strings -> {key: value as typed}. The text is kept as it is (no YAML: `prompt=Describe it: briefly`
    must stay a string, not become a mapping); `_coerce` turns it into the field's type, or fails naming the field."""
    values = {}
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override {item!r} is not of the form key=value")
        key, value = item.split("=", 1)
        values[key.strip()] = value if value.strip() else None
    return values


def find_recipe(recipe: str | Path) -> Path:
    """A recipe path, or a short name like `embedded/lora` under train/recipes/."""
    path = Path(recipe)
    candidates = [path, paths.RECIPES_DIR / path, paths.RECIPES_DIR / f"{recipe}.yaml"]
    for candidate in candidates:
        if candidate.is_file():
            return candidate.resolve()
    raise ConfigError(f"recipe: {recipe} not found (looked in {paths.RECIPES_DIR})")


def resolve_config(recipe: str | Path | None, overrides: list[str] | dict | None = None) -> TrainConfig:
    """Recipe YAML + overrides -> a validated TrainConfig."""
    values: dict = {}
    source = "defaults"
    if recipe is not None:
        recipe_path = find_recipe(recipe)
        try:
            loaded = yaml.safe_load(recipe_path.read_text()) or {}
        except yaml.YAMLError as exc:
            raise ConfigError(f"recipe: {recipe_path} is not valid YAML: {exc}") from None
        if not isinstance(loaded, dict):
            raise ConfigError(f"recipe: {recipe_path} must be a mapping of key: value")
        values.update(loaded)
        values["recipe"] = str(recipe_path.relative_to(paths.PROJECT_ROOT)) if recipe_path.is_relative_to(paths.PROJECT_ROOT) else str(recipe_path)
        source = f"recipe {recipe_path.name}"
    if isinstance(overrides, dict):
        values.update(overrides)
    elif overrides:
        values.update(parse_overrides(overrides))
    fields = {f.name: f for f in dataclasses.fields(TrainConfig)}
    unknown = sorted(set(values) - set(fields))
    if unknown:
        raise ConfigError(f"{unknown[0]}: unknown setting (valid: {', '.join(sorted(fields))})")
    coerced = {key: _coerce(fields[key], value, source) for key, value in values.items()}
    return TrainConfig(**coerced).validate()


def save_config(config: TrainConfig, path: Path) -> None:
    from captionlab import atomic

    atomic.write_text(path, yaml.safe_dump(config.to_dict(), sort_keys=False))


def load_run_config(path: Path) -> TrainConfig:
    return resolve_config(None, yaml.safe_load(Path(path).read_text()) or {})

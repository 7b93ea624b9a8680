"""A study's steps as data: each training (strategy, recipe, step count, estimated GPU hours), each evaluation cell
(captioner x benchmark), and the report. Building a plan runs nothing and writes nothing.

    plan = build_plan("llava-1.5-7b", datasets_config=Path("data/datasets.yaml"))
    plan.trainings[0].steps, plan.cells[0].estimate.gpu_hours, plan.total_gpu_hours()

The trainings are every trainable strategy with a recipe `train/recipes/<model>/<strategy>.yaml`, then the
CLIP-Captioner (`<model>/clip_captioner.yaml` where the model has its own, else `clip-captioner/coco.yaml`). The
captioners are zero-shot, the trained strategies and the CLIP-Captioner. Step counts come from the datasets.yaml
when one is given (the trainer's own split of each epoch into steps), else from the published split sizes (said).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

from captionlab import paths
from captionlab.names import CLIP_CAPTIONER, DATASETS, EMBEDDED_MODEL, ZERO_SHOT, strategy_traits, trainable_strategies
from captionlab.study import estimates
from captionlab.study.estimates import Estimate

SHARED_CLIP_CAPTIONER_RECIPE = "clip-captioner/coco"
EMBEDDED_PREPARATION = ("world", "clip", "base")  # the zoo's steps the embedded study's trainings start from


class PlanError(ValueError):
    """A study that cannot be planned as asked; the message says why and what to do."""


@dataclass(frozen=True)
class Counted:
    """How many sequences a training sees, and where the count comes from."""

    sequences_per_epoch: int | None
    steps: int | None
    val_sequences: int | None
    source: str


@dataclass(frozen=True)
class TrainingStep:
    strategy: str
    recipe: str  # a recipe name under train/recipes, e.g. llava-1.5-7b/lora
    overrides: tuple[str, ...]
    epochs: int
    batch_size: int
    counted: Counted
    estimate: Estimate

    @property
    def steps(self) -> int | None:
        return self.counted.steps


@dataclass(frozen=True)
class EvaluationCell:
    strategy: str
    dataset: str
    images: int | None
    needs_training: str | None  # the strategy whose training gives this captioner its checkpoint
    estimate: Estimate

    @property
    def name(self) -> str:
        from captionlab.evaluation.slurm_grid import cell_name

        return cell_name(self.strategy, self.dataset)


@dataclass
class StudyPlan:
    model: str
    out: Path
    datasets_config: Path | None
    hardware: estimates.Hardware
    gpus: int
    limit: int | None
    max_new_tokens: int
    preparation: tuple[str, ...]
    trainings: list[TrainingStep]
    cells: list[EvaluationCell]
    captioners: list[str]
    datasets: list[str]
    notes: list[str] = field(default_factory=list)

    def training(self, strategy: str) -> TrainingStep | None:
        return next((t for t in self.trainings if t.strategy == strategy), None)

    def total_gpu_hours(self) -> tuple[float, list[str]]:
        """(the estimated GPU hours summed, the steps that have no estimate)."""
        total, missing = 0.0, []
        for name, estimate in ([(f"train {t.strategy}", t.estimate) for t in self.trainings]
                               + [(f"evaluate {c.name}", c.estimate) for c in self.cells]):
            if estimate.gpu_hours is None:
                missing.append(name)
            else:
                total += estimate.gpu_hours
        return total, missing


def default_out(model: str) -> Path:
    """Where a study of `model` keeps its records and report: <workspace>/studies/<model>."""
    safe = "".join(c if c.isalnum() or c in "._-" else "_" for c in Path(str(model)).name) or "model"
    return paths.workspace() / "studies" / safe


def models_with_recipes() -> list[str]:
    return sorted(p.name for p in paths.RECIPES_DIR.iterdir() if p.is_dir() and any(p.glob("*.yaml"))
                  and p.name != "clip-captioner")


def recipe_name(model: str, strategy: str) -> str | None:
    """The study's recipe for `strategy` on `model` (None when the model has none)."""
    if (paths.RECIPES_DIR / model / f"{strategy}.yaml").is_file():
        return f"{model}/{strategy}"
    if strategy == CLIP_CAPTIONER and (paths.RECIPES_DIR / f"{SHARED_CLIP_CAPTIONER_RECIPE}.yaml").is_file():
        return SHARED_CLIP_CAPTIONER_RECIPE
    return None


def build_plan(model: str, *, datasets_config: Path | None = None, strategies: list[str] | None = None,
               datasets: list[str] | None = None, overrides: list[str] | tuple[str, ...] = (),
               limit: int | None = None, hardware: str = "h200", gpus: int = 1, out: Path | None = None,
               max_new_tokens: int | None = None) -> StudyPlan:
    """The study of `model` (see the module docstring); PlanError for a model without recipes or a bad choice."""
    if model not in models_with_recipes():
        raise PlanError(f"no recipes for {model!r} under {paths.RECIPES_DIR}; models with recipes: "
                        f"{', '.join(models_with_recipes())}")
    if hardware not in estimates.HARDWARE:
        raise PlanError(f"hardware: choose one of {', '.join(estimates.HARDWARE)}")
    if gpus < 1:
        raise PlanError(f"--gpus must be at least 1, got {gpus}")
    if limit is not None and limit < 1:
        raise PlanError(f"--limit must be at least 1, got {limit}")
    from captionlab.caption_length import DEFAULT_MAX_NEW_TOKENS

    max_new_tokens = DEFAULT_MAX_NEW_TOKENS if max_new_tokens is None else max_new_tokens
    if max_new_tokens < 1:
        raise PlanError(f"--max-new-tokens must be at least 1, got {max_new_tokens}")
    config_path = Path(datasets_config).expanduser().resolve() if datasets_config else None
    if config_path is not None and not config_path.is_file():
        raise PlanError(f"--datasets: {config_path} does not exist (python -m captionlab data fetch --all writes one)")
    notes: list[str] = []
    captioners = _captioners(model, strategies)
    chosen_datasets = _datasets(datasets)
    hw = estimates.HARDWARE[hardware]
    all_overrides = tuple(overrides) + ((f"datasets_config={config_path}",) if config_path else ())
    read: dict = {}  # records read once per (dataset, split, limit) for all trainings
    trainings = [_training(model, s, all_overrides, config_path, hw, notes, read)
                 for s in captioners if strategy_traits(s).trains]
    images = {d: count_eval_images(d, config_path, model, notes) for d in chosen_datasets}
    cells = [_cell(model, s, d, images[d], limit, hw) for s in captioners for d in chosen_datasets]
    if config_path is None and model != EMBEDDED_MODEL:
        notes.insert(0, "No datasets.yaml given (--datasets): step counts and image counts assume the published "
                        "split sizes; running the study needs one (python -m captionlab data fetch --all).")
    preparation = EMBEDDED_PREPARATION if model == EMBEDDED_MODEL else ()
    if config_path is not None:
        preparation = tuple(p for p in preparation if p != "world")  # the given datasets replace the world's
    return StudyPlan(model=model, out=Path(out).expanduser().resolve() if out else default_out(model),
                     datasets_config=config_path, hardware=hw, gpus=gpus, limit=limit, max_new_tokens=max_new_tokens,
                     preparation=preparation,
                     trainings=trainings, cells=cells, captioners=captioners, datasets=chosen_datasets,
                     notes=list(dict.fromkeys(notes)))


def _captioners(model: str, chosen: list[str] | None) -> list[str]:
    """Zero-shot, every trainable strategy with a recipe, the CLIP-Captioner (or the chosen ones, in that order)."""
    available = [ZERO_SHOT] + [s for s in trainable_strategies() if recipe_name(model, s)]
    if recipe_name(model, CLIP_CAPTIONER):
        available.append(CLIP_CAPTIONER)
    if not chosen:
        return available
    unknown = [s for s in chosen if s not in available]
    if unknown:
        raise PlanError(f"--strategies: {', '.join(unknown)} not in this study of {model} (it has: "
                        f"{', '.join(available)}; a trained strategy needs a recipe train/recipes/{model}/<key>.yaml)")
    return [s for s in available if s in chosen]


def _datasets(chosen: list[str] | None) -> list[str]:
    if not chosen:
        return list(DATASETS)
    unknown = [d for d in chosen if d not in DATASETS]
    if unknown:
        raise PlanError(f"--benchmarks: {', '.join(unknown)} unknown; choose from {', '.join(DATASETS)}")
    return [d for d in DATASETS if d in chosen]


def _training(model: str, strategy: str, overrides: tuple[str, ...], config_path: Path | None,
              hardware: estimates.Hardware, notes: list[str], read: dict) -> TrainingStep:
    from captionlab.training.config import ConfigError, resolve_config

    recipe = recipe_name(model, strategy)
    try:
        config = resolve_config(recipe, list(overrides))
    except ConfigError as exc:
        raise PlanError(f"recipe {recipe}: {exc}") from None
    counted = count_training(config, model, config_path, notes, read)
    estimate = estimates.estimate_training(model, strategy, counted.sequences_per_epoch, counted.val_sequences,
                                           config.epochs, hardware)
    return TrainingStep(strategy, recipe, overrides, config.epochs, config.batch_size, counted, estimate)


def count_training(config, model: str, config_path: Path | None, notes: list[str], read: dict | None = None) -> Counted:
    """Sequences per epoch and optimizer steps of a training: the trainer's own count from the data when it can be
    read, else from the published COCO split sizes."""
    from captionlab.data.datasets import default_config_path

    if config_path is None and model == EMBEDDED_MODEL and not default_config_path().is_file():
        return Counted(None, None, None, "unknown until the embedded world is written (the study's first step)")
    if config_path is not None or model == EMBEDDED_MODEL:
        try:
            return _count_from_data(config, {} if read is None else read)
        except Exception as exc:  # unreadable data is the dry run's note, not its failure
            notes.append(f"could not read {config.dataset} ({config.train_split}) to count steps: {exc}")
    return _count_published(config)


def _count_from_data(config, read: dict) -> Counted:
    from captionlab.training.samples import epoch_groups, split_steps
    from captionlab.training.trainer import load_split

    def records_of(split: str, limit: int | None) -> list:
        key = (config.dataset, config.datasets_config, config.images, split, limit)
        if key not in read:
            read[key] = load_split(config, split, limit)
        return read[key]

    records = records_of(config.train_split, config.max_train_images)
    val = records_of(config.val_split, config.max_val_images)
    steps = sum(len(split_steps(epoch_groups(records, config.epoch_unit, config.seed, epoch), config.batch_size))
                for epoch in range(config.epochs))
    per_epoch = sum(len(g) for g in epoch_groups(records, config.epoch_unit, config.seed, 0))
    where = config.datasets_config or "the embedded world"
    return Counted(per_epoch, steps, sum(len(r.references) for r in val),
                   f"counted from {where}: {len(records):,} images in {config.train_split}")


def _count_published(config) -> Counted:
    parts = str(config.train_split).split("+")
    if config.dataset != "coco" or any(p not in estimates.PUBLISHED_COCO_SPLITS for p in parts):
        return Counted(None, None, None, f"unknown: no published size for {config.dataset} {config.train_split}")
    images = sum(estimates.PUBLISHED_COCO_SPLITS[p][0] for p in parts)
    captions = sum(estimates.PUBLISHED_COCO_SPLITS[p][1] for p in parts)
    if config.max_train_images:
        captions = round(captions * min(1.0, config.max_train_images / images))
        images = min(images, config.max_train_images)
    per_epoch = images if config.epoch_unit == "image" else captions
    val_images, val_captions = estimates.PUBLISHED_COCO_SPLITS.get(config.val_split, (None, None))
    if val_images and config.max_val_images:
        val_captions = round(val_captions * min(1.0, config.max_val_images / val_images))
    about = "about " if config.epoch_unit == "image_captions" else ""  # whole images per step: a few more steps
    return Counted(per_epoch, math.ceil(per_epoch / config.batch_size) * config.epochs, val_captions,
                   f"{about}published Karpathy sizes: {images:,} images, {captions:,} captions in "
                   f"{config.train_split}")


def _cell(model: str, strategy: str, dataset: str, images: int | None, limit: int | None,
          hardware: estimates.Hardware) -> EvaluationCell:
    if limit is not None and images is not None:
        images = min(images, limit)
    uses_llava = strategy_traits(strategy).uses_llava_base
    return EvaluationCell(strategy, dataset, images, strategy if strategy_traits(strategy).trains else None,
                          estimates.estimate_captioning(model, uses_llava, images, hardware))


def count_eval_images(dataset: str, config_path: Path | None, model: str, notes: list[str]) -> int | None:
    """Images of the split a cell evaluates: from the datasets.yaml when given (the embedded world's for the
    embedded model), else the published size."""
    from captionlab.data.datasets import default_config_path

    config = config_path or (default_config_path() if model == EMBEDDED_MODEL else None)
    if config is None or not Path(config).is_file():
        return None if model == EMBEDDED_MODEL else estimates.PUBLISHED_EVAL_IMAGES.get(dataset)
    try:
        from captionlab.data.datasets import resolve_dataset

        spec = resolve_dataset(dataset, config_path=Path(config))
        split = spec.split or ("test" if spec.format == "karpathy" else None)
        return len(spec.read(split=split, skip_missing=True))
    except Exception as exc:  # as in count_training: said, not fatal
        notes.append(f"could not read {dataset} from {config} to count its images: {exc}")
        return estimates.PUBLISHED_EVAL_IMAGES.get(dataset)

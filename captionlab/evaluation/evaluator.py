"""One evaluation, end to end, in four steps: resolve -> caption -> score -> record.

    result = evaluate("llava-1.5-7b", "lora", "coco", checkpoint="workspace/runs/lora-1")
    result.metrics          # paper scale: {"BLEU-4": 31.9, ..., "CLIP-Score": 0.774}
    result.unavailable      # {"SPICE": "why, and how to fix it"}
    evaluate_grid("embedded", datasets=["coco", "nocaps"])   # every strategy x every dataset

What is evaluated:
- the Captioner: the model and its strategy's checkpoint (a run folder, a run id, an artifact or
  checkpoints folder; none for zero-shot; the shipped ones for the embedded model), resolved by
  `captionlab.evaluation.targets`, which says how. The CLIP-Captioner baseline is
  `strategy="clip_captioner"` with its folder as the checkpoint.
- the dataset: a config name or `FORMAT:PATH` (`captionlab.data.datasets.resolve_dataset`); the
  split defaults to the config's, then `test` for COCO Karpathy, else every record.

The steps: `resolve_job` (model, checkpoint, records, captioner, output folder: an `EvaluationJob`),
`caption_job` (resumable predictions, energy measured), `score_job` (every metric group of
`metric_groups.METRIC_GROUPS`: the reference metrics, CLIP-Score, and any group added there) and
`record_job` (results.json, the database row, the `EvaluationResult`). `evaluate` runs them in turn.

Outputs (named by `outputs`), in `out_dir` (default `<workspace>/evaluations/<model>/<strategy>/<dataset>-<split>/` for
zero-shot and the shipped checkpoints, `.../<strategy>/<checkpoint>/<dataset>-<split>/` for any other):
`predictions.jsonl` (resumable, see `generation`), `results.json` (the result row plus per-image
scores for the app's drill-down: the five reference metrics x100, CLIP-Score and RefCLIP-Score
as is), and a row in the results database.

CLIP-Score is computed with the embedded tiny CLIP for the embedded model and with open_clip
ViT-B/32 (OpenAI weights, as the paper) for every other model when those weights are on this
machine; otherwise it is reported unavailable with the reason, never estimated.

Time and energy: `seconds` is the captioning time of every prediction (earlier, interrupted
sessions included) plus this call's scoring; energy is the captioning's, measured by
`EnergyMeter` (NVML on a GPU, RAPL where readable, else a labelled estimate).
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from captionlab import names
# What is evaluated (model, checkpoint) is resolved in `targets`; EvaluationError, raised there
# first, is this module's error too (callers import it from either).
from captionlab.evaluation.targets import (EMBEDDED_MODEL, EvaluationError, ModelTarget, discover_checkpoint,
                                           is_embedded_model, resolve_checkpoint, resolve_model)
from captionlab.evaluation.metric_groups import (GroupScores, ScoringError, ScoringInput, Unavailable,
                                                 score_predictions)
# Output naming lives in `outputs`; its names are this module's too (callers import them from either).
from captionlab.evaluation.outputs import (PREDICTIONS_NAME, RESULTS_NAME, artifact_stamp,  # noqa: F401
                                           checkpoint_folder_name, default_out_dir)
from captionlab.evaluation.chair import CHAIR_METRICS
from captionlab.names import REPORTED_METRICS

DEFAULT_DATASETS = tuple(names.DATASETS)


@dataclass
class EvaluationResult:
    """What one evaluation produced (metrics on the paper's scale: x100 except CLIP-Score)."""

    model: str
    strategy: str
    strategy_label: str
    dataset: str
    split: str
    checkpoint: str | None
    metrics: dict[str, float]
    unavailable: dict[str, str]
    n_images: int
    predictions: dict[str, str]
    predictions_path: Path
    results_path: Path
    seconds: float
    energy_j: float | None = None
    energy_method: str | None = None
    energy_label: str | None = None
    clip_encoder: str | None = None
    result_id: int | None = None
    resumed: int = 0
    generated: int = 0
    skipped: list = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    per_image: dict[str, dict] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)

    def reported_metrics(self) -> dict[str, float | None]:
        """Exactly the six reported metrics, None for those without a number."""
        return {name: self.metrics.get(name) for name in REPORTED_METRICS}

    def reported_unavailable(self) -> dict[str, str]:
        """Why each reported metric without a number has none."""
        return {name: self.unavailable.get(name, "not computed")
                for name in REPORTED_METRICS if self.metrics.get(name) is None}

    def to_json(self) -> dict:
        """The machine-readable summary the CLI prints with --json."""
        return {
            "model": self.model, "strategy": self.strategy, "dataset": self.dataset, "split": self.split,
            "checkpoint": self.checkpoint, "n_images": self.n_images,
            "metrics": self.reported_metrics(), "unavailable": self.reported_unavailable(),
            "RefCLIP-Score": self.metrics.get("RefCLIP-Score"),
            **{name: self.metrics.get(name) for name in CHAIR_METRICS},
            "CHAIR_unavailable": self.unavailable.get("CHAIR-s"),
            "scale": "BLEU-4, METEOR, ROUGE-L, CIDEr, SPICE x100; CLIP-Score as is; CHAIR-i/-s, Object-Recall %",
            "clip_encoder": self.clip_encoder, "seconds": self.seconds, "energy_j": self.energy_j,
            "energy_method": self.energy_method, "energy_label": self.energy_label,
            "resumed": self.resumed, "generated": self.generated,
            "skipped": [s.__dict__ for s in self.skipped], "notes": self.notes,
            "predictions_path": str(self.predictions_path), "results_path": str(self.results_path),
            "result_id": self.result_id, "by_domain": self.extra.get("by_domain"),
            "max_new_tokens": self.extra.get("settings", {}).get("max_new_tokens"),
            "cut_at_max_new_tokens": self.extra.get("cut_at_max_new_tokens"),
            "by_domain_scope": self.extra.get("by_domain_scope"),
        }


# --- captioners ----------------------------------------------------------------------------------


class LazyCaptioner:
    """A Captioner that loads the real one on its first `caption()` call (a finished, resumed
    evaluation then never loads the model)."""

    def __init__(self, key: str, name: str, load: Callable[[], Any]):
        self.key, self.name, self._load, self._captioner = key, name, load, None

    @property
    def loaded(self) -> bool:
        return self._captioner is not None

    def prepare(self) -> None:
        if self._captioner is None:
            self._captioner = self._load()

    def caption(self, images):
        self.prepare()
        return self._captioner.caption(images)

    @property
    def last_cut(self):
        """The loaded captioner's per-caption "cut at the token limit" flags of its last call, if it keeps them."""
        return getattr(self._captioner, "last_cut", None)

    def release(self) -> None:
        release = getattr(self._captioner, "release", None)
        if callable(release):
            release()


class CaptionerPool:
    """The LLaVA captioners of one model on one shared base, loaded together on first use."""

    def __init__(self, target: ModelTarget, artifacts: dict[str, Path | None], settings, device: str | None):
        self.target, self.artifacts, self.settings, self.device = target, dict(artifacts), settings, device
        self._captioners: dict | None = None

    def _load_all(self) -> dict:
        if self._captioners is None:
            from captionlab.captioner import load_captioners
            from captionlab.strategies import StrategyError

            try:
                self._captioners = load_captioners(self.target.spec, self.artifacts, self.settings, device=self.device)
            except (StrategyError, RuntimeError, ValueError, OSError) as exc:
                where = ", ".join(f"{k}: {v}" for k, v in self.artifacts.items() if v is not None) or "no artifacts"
                raise EvaluationError(f"cannot load {self.target.label} with {where}: {type(exc).__name__}: {exc}") from exc
        return self._captioners

    def captioner(self, key: str) -> LazyCaptioner:
        from captionlab.strategies import get_strategy

        return LazyCaptioner(key, get_strategy(key).label, lambda: self._load_all()[key])


def _strategy_class(key: str):
    from captionlab.strategies import strategy_class

    return strategy_class(key)


def _own_captioner(key: str, folder: Path, device: str | None = None, batch_size: int = 32) -> LazyCaptioner:
    """The captioner of a strategy with its own model (the CLIP-Captioner baseline), loaded on first use."""
    cls = _strategy_class(key)

    def load():
        try:
            return cls.load_captioner(folder, device=device, batch_size=batch_size)
        except ImportError as exc:
            raise EvaluationError(f"cannot load the {cls.label} from {folder}: it is not available "
                                  f"in this build ({exc})") from None
        except cls.load_errors() as exc:
            raise EvaluationError(f"cannot load the {cls.label} from {folder}: {exc}") from exc

    return LazyCaptioner(key, cls.label, load)


def strategy_label(key: str) -> str:
    return names.strategy_label(key)


def check_strategy(key: str) -> None:
    from captionlab.strategies import STRATEGIES

    if key not in STRATEGIES:
        raise EvaluationError(f"unknown strategy {key!r}; choose one of {', '.join(STRATEGIES)}")


# --- CLIP-Score ----------------------------------------------------------------------------------


def resolve_clip_encoder(embedded: bool, device: str | None = None):
    """(encoder, None) or (None, why CLIP-Score is unavailable): the embedded tiny CLIP for the
    embedded model, open_clip ViT-B/32 with OpenAI's weights for every other model (`clip_choice`)."""
    from captionlab.evaluation.clip_choice import clip_encoder_for

    return clip_encoder_for(embedded, device)


# --- the evaluation ------------------------------------------------------------------------------


def _records(spec, split: str | None, skip_missing: bool):
    from captionlab.data.errors import DatasetError, ReadReport

    report = ReadReport()
    wanted = split or spec.split or ("test" if spec.format == "karpathy" else None)
    try:
        records = spec.read(split=wanted, skip_missing=skip_missing, report=report)
    except DatasetError as exc:
        raise EvaluationError(str(exc)) from None
    if wanted is None:
        found = sorted({r.split for r in records})
        wanted = found[0] if len(found) == 1 else "all"
    return records, wanted, report


@dataclass
class EvaluationJob:
    """What one evaluation resolved before it captions: the model, checkpoint, records, captioner and folder."""

    strategy: str
    target: ModelTarget
    artifact: Path | None
    dataset: Any  # captionlab.data.datasets.DatasetSpec
    records: list
    split: str
    read_report: Any  # captionlab.data.errors.ReadReport
    captioner: Any
    label: str
    folder: Path
    settings: Any  # captionlab.captioner.GenerationSettings
    split_images: int  # the split as its file lists it (before --limit, broken images included)
    limit: int | None = None

    @property
    def predictions_path(self) -> Path:
        return self.folder / PREDICTIONS_NAME

    def meta(self) -> dict:
        """What the predictions were made with (`generation` resumes only predictions made the same way)."""
        spec, settings = self.target.spec, self.settings
        return {"model": self.target.label,
                "model_source": None if spec is None else str(spec.weights_dir or spec.hf_id),
                "strategy": self.strategy, "checkpoint": None if self.artifact is None else str(self.artifact),
                "checkpoint_stamp": artifact_stamp(self.artifact), "prompt": settings.prompt,
                "max_new_tokens": settings.max_new_tokens, "dataset": self.dataset.name,
                "annotations": str(self.dataset.annotations), "images": str(self.dataset.images), "split": self.split}


def evaluate(
    model: str,
    strategy: str,
    dataset: str,
    *,
    checkpoint: str | Path | None = None,
    images: str | Path | None = None,
    config_path: str | Path | None = None,
    split: str | None = None,
    limit: int | None = None,
    out_dir: str | Path | None = None,
    settings=None,
    clip_encoder=None,
    record: bool = True,
    device: str | None = None,
    captioner=None,
    skip_broken: bool = False,
    progress: Callable[[int, int], None] | None = None,
    db_path: str | Path | None = None,
    target: ModelTarget | None = None,
    artifact: Path | None = None,
    instances: Sequence[str | Path] | None = None,
) -> EvaluationResult | None:
    """Evaluate `strategy` on `model` over `dataset` (see the module docstring): resolve -> caption -> score -> record.

    `settings`: a `GenerationSettings` (prompt, max_new_tokens, batch_size); `clip_encoder`: None
    picks one (see `resolve_clip_encoder`), False turns CLIP-Score off, else a `ClipEncoder`;
    `captioner`: use this Captioner instead of loading one (tests, grid mode); `skip_broken`:
    leave out (and count) broken image files instead of stopping; `record=False` writes
    results.json but no database row; `instances`: COCO instance annotation files for CHAIR (default: the
    `instances_*.json` beside a Karpathy file; see `chair`). Raises EvaluationError for a bad model, checkpoint or
    dataset. Under a distributed launch the processes share the captioning (`sharding`) and only the main one
    scores and records: the others return None.
    """
    started = time.perf_counter()
    job = resolve_job(model, strategy, dataset, checkpoint=checkpoint, images=images, config_path=config_path,
                      split=split, limit=limit, out_dir=out_dir, settings=settings, device=device, captioner=captioner,
                      skip_broken=skip_broken, target=target, artifact=artifact)
    warm = _warm_meteor(job.records)
    try:
        predictions, energy = caption_job(job, device, skip_broken, progress)
    except BaseException:
        warm.close()  # a clean exit: a failure here is not METEOR's, its warm JVM stays usable
        raise
    if predictions is None:  # another process of a distributed launch: the main one scores and records
        warm.close()
        return None
    with warm:
        scores = score_job(job, predictions, clip_encoder, device, instances)
    return record_job(job, predictions, scores, energy, started, record=record, db_path=db_path)


def resolve_job(model: str, strategy: str, dataset: str, *, checkpoint=None, images=None, config_path=None,
                split=None, limit=None, out_dir=None, settings=None, device=None, captioner=None,
                skip_broken: bool = False, target: ModelTarget | None = None,
                artifact: Path | None = None) -> EvaluationJob:
    """Step 1: the model, the checkpoint, the records, the captioner (loaded on first use) and the folder."""
    from captionlab.captioner import GenerationSettings
    from captionlab.data.datasets import ensure_embedded_world, resolve_dataset
    from captionlab.data.errors import DatasetError

    settings = settings or GenerationSettings()
    check_strategy(strategy)
    if limit is not None and limit < 1:
        raise EvaluationError(f"--limit must be at least 1, got {limit}")
    own_model = not _strategy_class(strategy).uses_llava_base
    if target is None:
        if captioner is not None or own_model:
            target = ModelTarget(label=EMBEDDED_MODEL if is_embedded_model(model) else str(model),
                                 embedded=is_embedded_model(model))
        else:
            target = resolve_model(model)
    if artifact is None and captioner is None:
        artifact = resolve_checkpoint(target, strategy, checkpoint)
    elif artifact is None and checkpoint is not None:
        artifact = Path(checkpoint)
    ensure_embedded_world(dataset, config_path)
    try:
        spec = resolve_dataset(dataset, images=Path(images) if images else None,
                               config_path=Path(config_path) if config_path else None)
    except DatasetError as exc:
        raise EvaluationError(str(exc)) from None
    records, split_label, read_report = _records(spec, split, skip_broken)
    split_images = len(records) + read_report.missing_images
    if limit is not None:
        records = records[:limit]
    if not records:
        raise EvaluationError(f"{spec.annotations} has no images in split {split_label!r} to evaluate")
    if captioner is None:
        if own_model:
            captioner = _own_captioner(strategy, artifact, device, settings.batch_size)
        else:
            captioner = CaptionerPool(target, {strategy: artifact}, settings, device).captioner(strategy)
    label = getattr(captioner, "name", None) or strategy_label(strategy)
    folder = (Path(out_dir) if out_dir is not None
              else default_out_dir(target.label, strategy, spec.name, split_label, artifact))
    return EvaluationJob(strategy, target, artifact, spec, records, split_label, read_report, captioner, label,
                         folder, settings, split_images, limit)


def _warm_meteor(records) -> contextlib.ExitStack:
    """METEOR's JVM loads its tables while captions are made (when any image has references; on the process that
    scores, under a distributed launch)."""
    from captionlab.evaluation import sharding

    warm = contextlib.ExitStack()
    if any(r.references for r in records) and sharding.is_main_process():
        from captionlab.evaluation.metrics import meteor_session

        warm.enter_context(meteor_session())
    return warm


def caption_job(job: EvaluationJob, device: str | None, skip_broken: bool,
                progress: Callable[[int, int], None] | None = None):
    """Step 2: (predictions, the energy meter's description): resumable, energy measured while captioning; under a
    distributed launch shared by the processes (`sharding`), and (None, None) on all but the main one."""
    from captionlab.evaluation import generation, sharding
    from captionlab.training.energy import EnergyMeter

    meter = EnergyMeter(device).start()
    try:
        predictions = sharding.generate_predictions(
            job.captioner, job.records, job.predictions_path, job.settings.batch_size, progress=progress,
            skip_broken=skip_broken, meta=job.meta(), energy_meter=meter)
    except generation.GenerationError as exc:
        raise EvaluationError(f"{exc} (pass --skip-broken to leave broken images out)") from None
    if predictions is None:
        return None, None
    if not predictions:
        raise EvaluationError(f"no image of {job.dataset.name} ({job.split}) could be captioned: "
                              + "; ".join(s.reason for s in predictions.skipped[:3]))
    return predictions, meter.describe()


def score_job(job: EvaluationJob, predictions, clip_encoder=None, device: str | None = None,
              instances: Sequence[str | Path] | None = None) -> GroupScores:
    """Step 3: every metric group (`metric_groups.METRIC_GROUPS`) on the captions."""
    by_id = {r.image_id: r for r in job.records}
    ids = list(predictions)
    inputs = ScoringInput(predictions={k: predictions[k] for k in ids},
                          references={k: list(by_id[k].references) for k in ids},
                          images={k: by_id[k].image_path for k in ids}, embedded=job.target.embedded,
                          device=device, clip_encoder=clip_encoder, records={k: by_id[k] for k in ids},
                          dataset=job.dataset, instances=instances)
    try:
        return score_predictions(inputs)
    except ScoringError as exc:
        raise EvaluationError(str(exc)) from None


def _notes(job: EvaluationJob, predictions, scores: GroupScores) -> list[str]:
    notes = list(job.read_report.notes()) + list(scores.notes)
    if predictions.resumed:
        notes.append(f"resumed: {predictions.resumed} caption(s) read back from {job.predictions_path}, "
                     f"{predictions.generated} generated now")
    if predictions.stale_file is not None:
        notes.append(f"earlier predictions made with other settings moved to {predictions.stale_file}")
    if predictions.skipped:
        notes.append(f"skipped {len(predictions.skipped)} broken image(s), e.g. {predictions.skipped[0].path}")
    if predictions.cut:
        notes.append(f"{predictions.cut} of {len(predictions)} caption(s) reached max_new_tokens="
                     f"{job.settings.max_new_tokens} unfinished and were cut (this shortens them, which BLEU's brevity "
                     "and CIDEr-D's length penalties feel): raise --max-new-tokens to let them end")
    return notes


_GROUP_EXTRA_FIRST = ("lengths", "n_scored_images", "excluded_no_references")  # where results.json has kept them
_GROUP_EXTRA_TIMES = ("seconds_metrics", "seconds_clip")


def record_job(job: EvaluationJob, predictions, scores: GroupScores, energy: dict, started: float, *,
               record: bool = True, db_path: str | Path | None = None) -> EvaluationResult:
    """Step 4: results.json, the results database's row (unless `record=False`) and the EvaluationResult."""
    from captionlab.evaluation.results import ResultRow, record_result, write_results_json

    settings, notes = job.settings, _notes(job, predictions, scores)
    seconds = predictions.seconds + scores.seconds
    group_extra = dict(scores.extra)
    extra = {
        "strategy_label": job.label, "limit": job.limit, "out_dir": str(job.folder),
        "split_images": job.split_images, "missing_images": job.read_report.missing_images,
        "settings": {"prompt": settings.prompt, "max_new_tokens": settings.max_new_tokens,
                     "batch_size": settings.batch_size},
        **{key: group_extra.pop(key) for key in _GROUP_EXTRA_FIRST if key in group_extra},
        "resumed": predictions.resumed, "generated": predictions.generated,
        "cut_at_max_new_tokens": predictions.cut,
        "skipped": [s.__dict__ for s in predictions.skipped],
        "seconds_generation": predictions.seconds,
        **{key: group_extra.pop(key, 0.0) for key in _GROUP_EXTRA_TIMES},
        "seconds_wall_this_call": time.perf_counter() - started,
        "energy_scope": "caption generation", "energy_label": energy["label"], "energy_device": energy["device"],
        "notes": notes, **group_extra,
    }
    energy_j = predictions.joules
    checkpoint = None if job.artifact is None else str(job.artifact)
    row_kwargs = dict(model=job.target.label, strategy=job.strategy, dataset=job.dataset.name, split=job.split,
                      metrics=scores.metrics, n_images=len(predictions), unavailable=scores.unavailable,
                      checkpoint=checkpoint, seconds=seconds, energy_j=energy_j,
                      energy_method=energy["method"] if energy_j is not None else None,
                      clip_encoder=scores.clip_encoder, predictions_path=str(job.predictions_path), extra=extra)
    result_id = record_result(**row_kwargs, db_path=db_path) if record else None
    row = ResultRow(**row_kwargs, id=result_id,
                    created_at=datetime.now(timezone.utc).isoformat(timespec="microseconds"))
    results_path = write_results_json(job.folder / RESULTS_NAME, row, per_image=scores.per_image,
                                      hallucinated=scores.hallucinated)
    return EvaluationResult(
        model=job.target.label, strategy=job.strategy, strategy_label=job.label, dataset=job.dataset.name,
        split=job.split, checkpoint=row.checkpoint, metrics=scores.metrics, unavailable=scores.unavailable,
        n_images=len(predictions), predictions=dict(predictions), predictions_path=job.predictions_path,
        results_path=results_path, seconds=seconds, energy_j=energy_j, energy_method=row.energy_method,
        energy_label=energy["label"], clip_encoder=scores.clip_encoder, result_id=result_id,
        resumed=predictions.resumed, generated=predictions.generated, skipped=list(predictions.skipped),
        notes=notes, per_image=scores.per_image, extra=extra)


# --- grid ----------------------------------------------------------------------------------------


@dataclass
class GridResult:
    """Every (strategy, dataset) evaluated, and the strategies or datasets left out with why."""

    model: str
    results: list[EvaluationResult] = field(default_factory=list)
    skipped: dict[str, str] = field(default_factory=dict)  # strategy -> reason
    failed: dict[tuple[str, str], str] = field(default_factory=dict)  # (strategy, dataset) -> reason


def evaluate_grid(
    model: str,
    strategies: Sequence[str] | None = None,
    datasets: Sequence[str] = DEFAULT_DATASETS,
    *,
    checkpoints: str | Path | None = None,
    config_path: str | Path | None = None,
    limit: int | None = None,
    settings=None,
    clip_encoder=None,
    record: bool = True,
    device: str | None = None,
    skip_broken: bool = False,
    on_skip: Callable[[str, str], None] | None = None,
    on_result: Callable[[EvaluationResult], None] | None = None,
    db_path: str | Path | None = None,
) -> GridResult:
    """Evaluate every strategy on every dataset; strategies without a checkpoint are skipped
    (`on_skip(strategy, reason)`), a dataset that cannot be read fails its cells only."""
    from captionlab.captioner import GenerationSettings
    from captionlab.strategies import PAPER_STRATEGIES

    settings = settings or GenerationSettings()
    strategies = list(strategies or PAPER_STRATEGIES)
    for key in strategies:
        check_strategy(key)
    target = resolve_model(model)
    grid = GridResult(model=target.label)
    found_artifacts: dict[str, Path | None] = {}
    for key in strategies:
        found, reason = discover_checkpoint(target, key, checkpoints, model_arg=str(model))
        if found is None and _strategy_class(key).needs_artifact():
            grid.skipped[key] = reason or "no checkpoint"
            if on_skip:
                on_skip(key, grid.skipped[key])
            continue
        found_artifacts[key] = found
    on_llava = {k: v for k, v in found_artifacts.items() if _strategy_class(k).uses_llava_base}
    pool = CaptionerPool(target, on_llava, settings, device)
    if clip_encoder is None:
        encoder, reason = resolve_clip_encoder(target.embedded, device)
        clip_encoder = encoder if encoder is not None else Unavailable(reason)
    for key, artifact in found_artifacts.items():
        captioner = (pool.captioner(key) if key in on_llava
                     else _own_captioner(key, artifact, device, settings.batch_size))
        for dataset in datasets:
            try:
                result = evaluate(model, key, dataset, config_path=config_path, limit=limit, settings=settings,
                                  clip_encoder=clip_encoder, record=record, device=device, captioner=captioner,
                                  skip_broken=skip_broken, db_path=db_path, target=target, artifact=artifact)
            except EvaluationError as exc:
                grid.failed[(key, dataset)] = str(exc)
                if on_skip:
                    on_skip(f"{key} on {dataset}", str(exc))
                continue
            if result is None:  # another process of a distributed launch: the main one has the results
                continue
            grid.results.append(result)
            if on_result:
                on_result(result)
    return grid

"""One evaluation, end to end: captions -> metrics -> CLIP-Score -> results store.

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

Outputs, in `out_dir` (default `<workspace>/evaluations/<model>/<strategy>/<dataset>-<split>/` for
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
import hashlib
import re
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from captionlab import paths
from captionlab.evaluation.chair import CHAIR_METRICS
# What is evaluated (model, checkpoint) is resolved in `targets`; EvaluationError, raised there
# first, is this module's error too (callers import it from either).
from captionlab.evaluation.targets import (CLIP_CAPTIONER, EMBEDDED_MODEL, EvaluationError, ModelTarget,
                                           discover_checkpoint, is_embedded_model, is_shipped_checkpoint,
                                           resolve_checkpoint, resolve_model)

CLIP_CAPTIONER_LABEL = "CLIP-Captioner"
# The metrics an evaluation reports, under the names the paper's tables and the results store use.
REPORTED_METRICS = ("BLEU-4", "METEOR", "ROUGE-L", "CIDEr", "SPICE", "CLIP-Score")
PREDICTIONS_NAME = "predictions.jsonl"
DEFAULT_DATASETS = ("coco", "nocaps", "cc3m", "vizwiz", "textcaps")


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


def _clip_captioner(folder: Path, device: str | None = None, batch_size: int = 32) -> LazyCaptioner:
    """The CLIP-Captioner baseline (`captionlab.baseline`), imported and loaded on first use."""
    def load():
        try:
            from captionlab.baseline import load_clip_captioner
        except ImportError as exc:
            raise EvaluationError(f"cannot load the CLIP-Captioner from {folder}: the baseline is not available "
                                  f"in this build ({exc})") from None
        from captionlab.strategies import StrategyError

        expected: tuple[type[BaseException], ...] = (StrategyError, FileNotFoundError, ValueError, OSError, KeyError)
        try:
            from captionlab.baseline.captioner import ClipCaptionerError

            expected += (ClipCaptionerError,)
        except ImportError:
            pass
        try:
            return load_clip_captioner(folder, device=device, batch_size=batch_size)
        except expected as exc:
            raise EvaluationError(f"cannot load the CLIP-Captioner from {folder}: {exc}") from exc

    return LazyCaptioner(CLIP_CAPTIONER, CLIP_CAPTIONER_LABEL, load)


def strategy_label(key: str) -> str:
    if key == CLIP_CAPTIONER:
        return CLIP_CAPTIONER_LABEL
    from captionlab.strategies import STRATEGIES

    return STRATEGIES[key].label if key in STRATEGIES else key


def check_strategy(key: str) -> None:
    from captionlab.strategies import STRATEGIES

    if key != CLIP_CAPTIONER and key not in STRATEGIES:
        raise EvaluationError(f"unknown strategy {key!r}; choose one of {', '.join([*STRATEGIES, CLIP_CAPTIONER])}")


# --- CLIP-Score ----------------------------------------------------------------------------------


def resolve_clip_encoder(embedded: bool, device: str | None = None):
    """(encoder, None) or (None, why CLIP-Score is unavailable): the embedded tiny CLIP for the
    embedded model, open_clip ViT-B/32 with OpenAI's weights for every other model."""
    from captionlab.evaluation import clipscore

    if embedded:
        folder = clipscore.embedded_clip_folder()
        if not (folder / "config.json").is_file():
            return None, (f"the embedded tiny CLIP is not built ({folder} is missing): "
                          "run `python -m train zoo` to build the embedded study")
        try:
            return clipscore.embedded_clip_encoder(folder, device=device or "cpu"), None
        except Exception as exc:  # a broken folder: say so instead of failing the evaluation
            return None, f"the embedded tiny CLIP in {folder} cannot be loaded: {type(exc).__name__}: {exc}"
    try:
        clipscore.openclip_weights_path()
    except clipscore.ClipWeightsNotFound as exc:
        return None, str(exc)
    try:
        import open_clip  # noqa: F401
    except ImportError as exc:
        return None, f"open_clip is not installed ({exc}); it is pinned in requirements.txt"
    return clipscore.OpenClipEncoder(device=device), None


# --- the evaluation ------------------------------------------------------------------------------


def _slug(text: str) -> str:
    slug = re.sub(r"[^A-Za-z0-9._-]+", "_", text).strip("._") or "x"
    if slug != text or len(slug) > 60:
        slug = f"{slug[-48:].strip('._')}-{hashlib.sha1(text.encode()).hexdigest()[:8]}"
    return slug


def default_out_dir(model: str, strategy: str, dataset: str, split: str, artifact: Path | None = None) -> Path:
    """`<workspace>/evaluations/<model>/<strategy>/[<checkpoint>/]<dataset>-<split>/`: one folder per
    checkpoint, so evaluating another one never replaces this one's results (see `checkpoint_folder_name`)."""
    folder = paths.workspace() / "evaluations" / _slug(model) / _slug(strategy)
    name = checkpoint_folder_name(artifact)
    if name is not None:
        folder = folder / name
    return folder / _slug(f"{dataset}-{split}")


def checkpoint_folder_name(artifact: Path | None) -> str | None:
    """The folder name that tells `artifact`'s evaluations apart from any other checkpoint's.

    None for the base model (zero-shot) and the embedded study's shipped checkpoints: their
    evaluations stay where they always were. A run of the workspace gives its id and which of
    its checkpoints (`<run_id>-best`); any other folder its name and a hash of its whole path,
    as two folders can share a name (every run has an `artifact/`).
    """
    if artifact is None:
        return None
    artifact = Path(artifact).expanduser().resolve()
    if is_shipped_checkpoint(artifact):
        return None
    runs = paths.runs_dir().resolve()
    if artifact.is_relative_to(runs):
        return _slug("-".join(part for part in artifact.relative_to(runs).parts if part != "artifact"))
    name = f"{artifact.parent.parent.name}-{artifact.parent.name}" if artifact.name == "artifact" else artifact.name
    return f"{_slug(name)[:40]}-{hashlib.sha1(str(artifact).encode()).hexdigest()[:8]}"


def _stamp(folder: Path | None) -> str | None:
    """Changes whenever a file of the artifact does (a run's best/ is replaced as training goes on)."""
    if folder is None or not folder.is_dir():
        return None
    files = sorted(p for p in folder.rglob("*") if p.is_file())
    digest = hashlib.sha1()
    for p in files:
        st = p.stat()
        digest.update(f"{p.relative_to(folder)}:{st.st_size}:{st.st_mtime_ns}".encode())
    return digest.hexdigest()[:16]


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
    """Evaluate `strategy` on `model` over `dataset` (see the module docstring).

    `settings`: a `GenerationSettings` (prompt, max_new_tokens, batch_size); `clip_encoder`: None
    picks one (see `resolve_clip_encoder`), False turns CLIP-Score off, else a `ClipEncoder`;
    `captioner`: use this Captioner instead of loading one (tests, grid mode); `skip_broken`:
    leave out (and count) broken image files instead of stopping; `record=False` writes
    results.json but no database row; `instances`: COCO instance annotation files for CHAIR (default: the
    `instances_*.json` beside a Karpathy file; see `chair`). Raises EvaluationError for a bad model, checkpoint or
    dataset.
    Under a distributed launch the processes share the captioning (`sharding`) and only the main one
    scores and records: the others return None.
    """
    from captionlab.captioner import GenerationSettings
    from captionlab.data.datasets import ensure_embedded_world, resolve_dataset
    from captionlab.data.errors import DatasetError
    from captionlab.evaluation import generation, sharding
    from captionlab.evaluation.results import collect_metrics, record_result, write_results_json
    from captionlab.training.energy import EnergyMeter

    started = time.perf_counter()
    settings = settings or GenerationSettings()
    check_strategy(strategy)
    if limit is not None and limit < 1:
        raise EvaluationError(f"--limit must be at least 1, got {limit}")
    if target is None:
        if captioner is not None or strategy == CLIP_CAPTIONER:
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
    split_images = len(records) + read_report.missing_images  # the split as its file lists it
    if limit is not None:
        records = records[:limit]
    if not records:
        raise EvaluationError(f"{spec.annotations} has no images in split {split_label!r} to evaluate")

    if captioner is None:
        if strategy == CLIP_CAPTIONER:
            captioner = _clip_captioner(artifact, device, settings.batch_size)
        else:
            captioner = CaptionerPool(target, {strategy: artifact}, settings, device).captioner(strategy)
    label = getattr(captioner, "name", None) or strategy_label(strategy)

    folder = (Path(out_dir) if out_dir is not None
              else default_out_dir(target.label, strategy, spec.name, split_label, artifact))
    predictions_path = folder / PREDICTIONS_NAME
    meta = {"model": target.label,
            "model_source": None if target.spec is None else str(target.spec.weights_dir or target.spec.hf_id),
            "strategy": strategy, "checkpoint": None if artifact is None else str(artifact),
            "checkpoint_stamp": _stamp(artifact), "prompt": settings.prompt,
            "max_new_tokens": settings.max_new_tokens, "dataset": spec.name, "annotations": str(spec.annotations),
            "images": str(spec.images), "split": split_label}
    warm = contextlib.ExitStack()
    if any(r.references for r in records) and sharding.is_main_process():  # METEOR's JVM loads its tables while captions are made
        from captionlab.evaluation.metrics import meteor_session

        warm.enter_context(meteor_session())
    try:
        meter = EnergyMeter(device).start()
        try:
            predictions = sharding.generate_predictions(
                captioner, records, predictions_path, settings.batch_size, progress=progress,
                skip_broken=skip_broken, meta=meta, energy_meter=meter)
        except generation.GenerationError as exc:
            raise EvaluationError(f"{exc} (pass --skip-broken to leave broken images out)") from None
        if predictions is None:  # another process of a distributed launch: the main one scores and records
            warm.close()
            return None
        if not predictions:
            raise EvaluationError(f"no image of {spec.name} ({split_label}) could be captioned: "
                                  + "; ".join(s.reason for s in predictions.skipped[:3]))
    except BaseException:
        warm.close()  # a clean exit: a failure here is not METEOR's, its warm JVM stays usable
        raise
    with warm:
        by_id = {r.image_id: r for r in records}
        ids = list(predictions)
        references = {k: list(by_id[k].references) for k in ids}
        metric_report = _score(predictions, references)
    clip_report, clip_name, clip_reason, clip_seconds = _clip(target, clip_encoder, device, ids, by_id, predictions,
                                                             references)
    metrics, unavailable = collect_metrics(metric_report, clip_report)
    if clip_reason:
        for name in ("CLIP-Score", "RefCLIP-Score"):
            if name not in metrics:
                unavailable.setdefault(name, clip_reason)
    elif clip_report is not None and "RefCLIP-Score" not in metrics:
        unavailable.setdefault("RefCLIP-Score", "no image has references")

    from captionlab.evaluation.chair import chair_for_evaluation

    chair = chair_for_evaluation(spec, records, {k: predictions[k] for k in ids}, instances)
    metrics.update(chair.metrics)
    unavailable.update(chair.unavailable)
    per_image = metric_report.per_image_paper_scale() | chair.per_image
    if clip_report is not None:
        per_image["CLIP-Score"] = dict(clip_report.per_image)
        if clip_report.per_image_ref:
            per_image["RefCLIP-Score"] = dict(clip_report.per_image_ref)

    notes = list(read_report.notes()) + list(metric_report.notes)
    if predictions.resumed:
        notes.append(f"resumed: {predictions.resumed} caption(s) read back from {predictions_path}, "
                     f"{predictions.generated} generated now")
    if predictions.stale_file is not None:
        notes.append(f"earlier predictions made with other settings moved to {predictions.stale_file}")
    if predictions.skipped:
        notes.append(f"skipped {len(predictions.skipped)} broken image(s), e.g. {predictions.skipped[0].path}")
    if predictions.cut:
        notes.append(f"{predictions.cut} of {len(predictions)} caption(s) reached max_new_tokens="
                     f"{settings.max_new_tokens} unfinished and were cut (this shortens them, which BLEU's brevity "
                     "and CIDEr-D's length penalties feel): raise --max-new-tokens to let them end")
    energy = meter.describe()
    by_domain = _by_domain(records, predictions, references, per_image)
    seconds = predictions.seconds + metric_report.seconds + clip_seconds
    extra = {
        "strategy_label": label, "limit": limit, "out_dir": str(folder),
        "split_images": split_images, "missing_images": read_report.missing_images,
        "settings": {"prompt": settings.prompt, "max_new_tokens": settings.max_new_tokens,
                     "batch_size": settings.batch_size},
        "lengths": {"mean_prediction_words": metric_report.lengths.mean_prediction_words,
                    "mean_reference_words": metric_report.lengths.mean_reference_words},
        "n_scored_images": metric_report.n_images, "excluded_no_references": [str(k) for k in metric_report.excluded_no_references],
        "resumed": predictions.resumed, "generated": predictions.generated,
        "cut_at_max_new_tokens": predictions.cut,
        "skipped": [s.__dict__ for s in predictions.skipped],
        "seconds_generation": predictions.seconds, "seconds_metrics": metric_report.seconds,
        "seconds_clip": clip_seconds, "seconds_wall_this_call": time.perf_counter() - started,
        "energy_scope": "caption generation", "energy_label": energy["label"], "energy_device": energy["device"],
        "notes": notes, **by_domain,
    }
    energy_j = predictions.joules
    row_kwargs = dict(model=target.label, strategy=strategy, dataset=spec.name, split=split_label,
                      metrics=metrics, n_images=len(predictions), unavailable=unavailable,
                      checkpoint=None if artifact is None else str(artifact), seconds=seconds,
                      energy_j=energy_j, energy_method=energy["method"] if energy_j is not None else None,
                      clip_encoder=clip_name, predictions_path=str(predictions_path), extra=extra)
    result_id = record_result(**row_kwargs, db_path=db_path) if record else None
    from captionlab.evaluation.results import ResultRow

    row = ResultRow(**row_kwargs, id=result_id,
                    created_at=datetime.now(timezone.utc).isoformat(timespec="microseconds"))
    results_path = write_results_json(folder / "results.json", row, per_image=per_image,
                                      hallucinated=chair.hallucinated if chair.metrics else None)
    return EvaluationResult(
        model=target.label, strategy=strategy, strategy_label=label, dataset=spec.name, split=split_label,
        checkpoint=row.checkpoint, metrics=metrics, unavailable=unavailable, n_images=len(predictions),
        predictions=dict(predictions), predictions_path=predictions_path, results_path=results_path,
        seconds=seconds, energy_j=energy_j, energy_method=row.energy_method, energy_label=energy["label"],
        clip_encoder=clip_name, result_id=result_id, resumed=predictions.resumed, generated=predictions.generated,
        skipped=list(predictions.skipped), notes=notes, per_image=per_image, extra=extra)


def _by_domain(records, predictions, references, per_image) -> dict:
    """by_domain, its scope and each image's domain for a benchmark whose images have domains (nocaps), else {}."""
    from captionlab.evaluation.by_domain import domain_extra

    return domain_extra(records, dict(predictions), references, per_image)


def _score(predictions: dict, references: dict):
    from captionlab.evaluation.metrics import TokenizerError, score_captions

    try:
        return score_captions(predictions, references)
    except TokenizerError as exc:
        raise EvaluationError(f"cannot score captions: {exc}") from None


def _clip(target, clip_encoder, device, ids, by_id, predictions, references):
    """(report or None, encoder name, reason when unavailable, seconds)."""
    from captionlab.evaluation.clipscore import clip_score

    if clip_encoder is False:
        return None, None, "CLIP-Score not requested", 0.0
    if isinstance(clip_encoder, _Unavailable):
        return None, None, clip_encoder.reason, 0.0
    reason = None
    if clip_encoder is None:
        clip_encoder, reason = resolve_clip_encoder(target.embedded, device)
    if clip_encoder is None:
        return None, None, reason, 0.0
    started = time.perf_counter()
    try:
        report = clip_score(clip_encoder, {k: by_id[k].image_path for k in ids}, {k: predictions[k] for k in ids},
                            references)
    except Exception as exc:  # CLIP-Score is reported unavailable with why, never made up
        name = getattr(clip_encoder, "name", None)
        return None, name, f"CLIP-Score failed with {name}: {type(exc).__name__}: {exc}", time.perf_counter() - started
    return report, report.encoder_name, None, time.perf_counter() - started


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
    artifacts: dict[str, Path | None] = {}
    clip_captioner_folder = None
    for key in strategies:
        found, reason = discover_checkpoint(target, key, checkpoints, model_arg=str(model))
        if key != "zero_shot" and found is None:
            grid.skipped[key] = reason or "no checkpoint"
            if on_skip:
                on_skip(key, grid.skipped[key])
            continue
        if key == CLIP_CAPTIONER:
            clip_captioner_folder = found
        else:
            artifacts[key] = found
    pool = CaptionerPool(target, artifacts, settings, device)
    if clip_encoder is None:
        encoder, reason = resolve_clip_encoder(target.embedded, device)
        clip_encoder = encoder if encoder is not None else _Unavailable(reason)
    for key in [k for k in strategies if k in artifacts or (k == CLIP_CAPTIONER and clip_captioner_folder)]:
        captioner = _clip_captioner(clip_captioner_folder, device, settings.batch_size) if key == CLIP_CAPTIONER else pool.captioner(key)
        artifact = clip_captioner_folder if key == CLIP_CAPTIONER else artifacts[key]
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


class _Unavailable:
    """Passed as `clip_encoder`: CLIP-Score is unavailable for `reason` (resolved once per grid)."""

    def __init__(self, reason: str):
        self.reason = reason

"""The score step of an evaluation: metric groups, each scoring the captions its own way.

    scores = score_predictions(ScoringInput(predictions, references, images, embedded=True))
    scores.metrics, scores.unavailable, scores.per_image, scores.notes, scores.seconds

A metric group is a function `(ScoringInput) -> GroupScores`. The shipped groups are the reference
metrics (BLEU-4, METEOR, ROUGE-L, CIDEr, SPICE: `metrics.score_captions`, PTB-tokenised once) and
CLIP-Score (with RefCLIP-Score where references exist). Another group (per-domain scores, object
hallucination) plugs in by being appended to `METRIC_GROUPS` or passed as `groups=`: it returns its
numbers (paper scale, named in `results.KNOWN_METRICS`), why any of them is unavailable, per-image
scores for the app's drill-down, notes, the seconds it took and the facts it adds to the result's
`extra`. A group never makes a number up: a metric it cannot compute is unavailable, with why.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


class ScoringError(Exception):
    """The captions cannot be scored at all (e.g. the PTB tokenizer cannot run); the message says why."""


@dataclass
class ScoringInput:
    """What every metric group scores: one caption and the references per image id, the images."""

    predictions: Mapping[str, str]
    references: Mapping[str, Sequence[str]]
    images: Mapping[str, Path]  # image id -> its file
    embedded: bool = False  # the embedded model's captions (scored with the embedded tiny CLIP)
    device: str | None = None
    # None: choose (`clip_choice.clip_encoder_for`); False: CLIP-Score off; Unavailable(reason); else a ClipEncoder
    clip_encoder: Any = None
    records: Mapping[str, Any] = field(default_factory=dict)  # image id -> CaptionRecord (domains, ...)
    dataset: Any = None  # the DatasetSpec read (CHAIR finds its ground truth beside it)
    instances: Sequence[str | Path] | None = None  # COCO instance annotations for CHAIR (else found beside)
    earlier: "GroupScores | None" = None  # what the groups before this one scored (set by score_predictions)


@dataclass
class GroupScores:
    """One group's numbers (or all groups' together, see `merge`)."""

    metrics: dict[str, float] = field(default_factory=dict)
    unavailable: dict[str, str] = field(default_factory=dict)
    per_image: dict[str, dict] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    seconds: float = 0.0
    extra: dict[str, Any] = field(default_factory=dict)
    clip_encoder: str | None = None  # the CLIP that gave CLIP-Score (the results row's column)
    hallucinated: dict[str, list[str]] | None = None  # CHAIR: each image's hallucinated object words

    def merge(self, other: "GroupScores") -> "GroupScores":
        """This group's numbers with `other`'s added; a metric with a number is never also unavailable."""
        metrics = {**self.metrics, **other.metrics}
        unavailable = {k: v for k, v in {**self.unavailable, **other.unavailable}.items() if k not in metrics}
        return GroupScores(metrics, unavailable, {**self.per_image, **other.per_image}, self.notes + other.notes,
                           self.seconds + other.seconds, {**self.extra, **other.extra},
                           other.clip_encoder or self.clip_encoder,
                           self.hallucinated if other.hallucinated is None else other.hallucinated)


class Unavailable:
    """Passed as `clip_encoder`: CLIP-Score is unavailable for `reason` (resolved once per grid)."""

    def __init__(self, reason: str):
        self.reason = reason


MetricGroup = Callable[[ScoringInput], GroupScores]


def reference_metrics(inputs: ScoringInput) -> GroupScores:
    """BLEU-4, METEOR, ROUGE-L, CIDEr and SPICE against the references (x100), tokenised once."""
    from captionlab.evaluation.metrics import TokenizerError, score_captions

    try:
        report = score_captions(dict(inputs.predictions), {k: list(v) for k, v in inputs.references.items()})
    except TokenizerError as exc:
        raise ScoringError(f"cannot score captions: {exc}") from None
    extra = {"lengths": {"mean_prediction_words": report.lengths.mean_prediction_words,
                         "mean_reference_words": report.lengths.mean_reference_words},
             "n_scored_images": report.n_images,
             "excluded_no_references": [str(k) for k in report.excluded_no_references],
             "seconds_metrics": report.seconds}
    return GroupScores(dict(report.paper_scale_metrics()), dict(getattr(report, "unavailable", {}) or {}),
                       report.per_image_paper_scale(), list(report.notes), report.seconds, extra)


def clip_metrics(inputs: ScoringInput) -> GroupScores:
    """CLIP-Score of every caption with its image (and RefCLIP-Score where it has references)."""
    report, name, reason, seconds = _clip_report(inputs)
    scores = GroupScores(seconds=seconds, extra={"seconds_clip": seconds}, clip_encoder=name)
    if report is not None:
        scores.metrics = dict(report.paper_scale_metrics())
        scores.unavailable = dict(getattr(report, "unavailable", {}) or {})
        scores.per_image["CLIP-Score"] = dict(report.per_image)
        if report.per_image_ref:
            scores.per_image["RefCLIP-Score"] = dict(report.per_image_ref)
    if reason:
        for metric in ("CLIP-Score", "RefCLIP-Score"):
            if metric not in scores.metrics:
                scores.unavailable.setdefault(metric, reason)
    elif report is not None and "RefCLIP-Score" not in scores.metrics:
        scores.unavailable.setdefault("RefCLIP-Score", "no image has references")
    return scores


def _clip_report(inputs: ScoringInput):
    """(report or None, encoder name, reason when unavailable, seconds)."""
    from captionlab.evaluation.clipscore import clip_score

    encoder = inputs.clip_encoder
    if encoder is False:
        return None, None, "CLIP-Score not requested", 0.0
    if isinstance(encoder, Unavailable):
        return None, None, encoder.reason, 0.0
    reason = None
    if encoder is None:
        from captionlab.evaluation.clip_choice import clip_encoder_for

        encoder, reason = clip_encoder_for(inputs.embedded, inputs.device)
    if encoder is None:
        return None, None, reason, 0.0
    ids = list(inputs.predictions)
    started = time.perf_counter()
    try:
        report = clip_score(encoder, {k: inputs.images[k] for k in ids}, {k: inputs.predictions[k] for k in ids},
                            {k: list(inputs.references[k]) for k in ids})
    except Exception as exc:  # CLIP-Score is reported unavailable with why, never made up
        name = getattr(encoder, "name", None)
        return None, name, f"CLIP-Score failed with {name}: {type(exc).__name__}: {exc}", time.perf_counter() - started
    return report, report.encoder_name, None, time.perf_counter() - started


def chair_metrics(inputs: ScoringInput) -> GroupScores:
    """Object hallucination (CHAIR-i, CHAIR-s, object recall: `chair`), unavailable with why where the images'
    objects are not known (no scenes, no COCO instance annotations)."""
    from captionlab.evaluation.chair import chair_for_evaluation

    if inputs.dataset is None:
        return GroupScores()
    started = time.perf_counter()
    outcome = chair_for_evaluation(inputs.dataset, list(inputs.records.values()), dict(inputs.predictions),
                                   inputs.instances)
    return GroupScores(dict(outcome.metrics), dict(outcome.unavailable), dict(outcome.per_image),
                       seconds=time.perf_counter() - started,
                       hallucinated=outcome.hallucinated if outcome.metrics else None)


def domain_metrics(inputs: ScoringInput) -> GroupScores:
    """Each domain's scores on its own images (nocaps: in-, near-, out-domain; `by_domain`), in `extra`; nothing
    for a benchmark without domains. Reads the earlier groups' per-image scores (CLIP-Score per domain)."""
    from captionlab.evaluation.by_domain import domain_extra

    per_image = inputs.earlier.per_image if inputs.earlier is not None else {}
    started = time.perf_counter()
    extra = domain_extra(list(inputs.records.values()), dict(inputs.predictions),
                         {k: list(v) for k, v in inputs.references.items()}, per_image)
    return GroupScores(seconds=time.perf_counter() - started if extra else 0.0, extra=extra)


# The groups every evaluation runs, in order. Add one by appending a `MetricGroup` (see the module doc).
METRIC_GROUPS: list[MetricGroup] = [reference_metrics, clip_metrics, chair_metrics, domain_metrics]


def score_predictions(inputs: ScoringInput, groups: Sequence[MetricGroup] | None = None) -> GroupScores:
    """Every group's scores, merged in order (`METRIC_GROUPS` unless `groups` is given); each group sees what the
    groups before it scored as `inputs.earlier`."""
    from dataclasses import replace

    scores = GroupScores()
    for group in METRIC_GROUPS if groups is None else groups:
        scores = scores.merge(group(replace(inputs, earlier=scores)))
    return scores

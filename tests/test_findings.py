"""The paper's seven findings as checks on numbers (captionlab/evaluation/findings.py), and the ones the shipped
embedded study satisfies pinned, so a later change that breaks one is seen."""

from __future__ import annotations

from pathlib import Path

import pytest

from captionlab import report
from captionlab.evaluation.findings import FINDINGS, check_findings, findings_lines
from captionlab.names import OUT_OF_DOMAIN

SHIPPED = Path(__file__).resolve().parent.parent / "checkpoints" / "embedded"

# The paper's LLaVA-1.5 CIDEr (Tables 1-3; shared/reference): every finding holds there by construction of the
# thresholds, so this is the table a study that tells the paper's story looks like.
PAPER_15 = {
    ("clip_captioner", "coco"): 113.4, ("zero_shot", "coco"): 53.9, ("prompt_learning", "coco"): 96.3,
    ("prefix_tuning", "coco"): 85.8, ("lora", "coco"): 105.7, ("dora", "coco"): 105.0, ("full", "coco"): 106.6,
    **{("clip_captioner", d): v for d, v in zip(OUT_OF_DOMAIN, (77.1, 30.0, 35.7, 34.3))},
    **{("prompt_learning", d): v for d, v in zip(OUT_OF_DOMAIN, (91.0, 35.0, 49.9, 51.7))},
    **{("lora", d): v for d, v in zip(OUT_OF_DOMAIN, (88.0, 33.0, 43.9, 50.0))},
    **{(s, d): 40.0 for s in ("prefix_tuning", "dora", "full") for d in OUT_OF_DOMAIN},
}


def _holding(scores) -> set[str]:
    return {f.key for f in check_findings(scores) if f.holds}


def test_a_study_shaped_like_the_paper_satisfies_all_seven():
    assert _holding(PAPER_15) == {key for key, _, _ in FINDINGS}


@pytest.mark.parametrize("change, broken", [
    ({("zero_shot", "coco"): 65.0}, "zero_shot_between"),  # 61% of LoRA: too close
    ({("zero_shot", "coco"): 10.0}, "zero_shot_between"),  # 9%: too far
    ({("prefix_tuning", "coco"): 50.0}, "prefix_tuning"),  # under half of LoRA
    ({("prompt_learning", "coco"): 70.0}, "prompt_learning"),  # 66% of LoRA
    ({("dora", "coco"): 90.0}, "weight_tuning_close"),  # 84% of full's 106.6
    ({("clip_captioner", "coco"): 106.0}, "baseline_best_in_domain"),  # full's 106.6 is higher
    ({("clip_captioner", "nocaps"): 95.0, ("clip_captioner", "vizwiz"): 60.0}, "tuned_beats_baseline_ood"),
    ({("prompt_learning", "nocaps"): 80.0, ("prompt_learning", "vizwiz"): 40.0,
      ("prompt_learning", "textcaps"): 45.0}, "prompt_learning_ood"),
])
def test_each_finding_breaks_when_its_numbers_move(change, broken):
    assert _holding({**PAPER_15, **change}) == {key for key, _, _ in FINDINGS} - {broken}


def test_a_missing_result_is_not_checked_rather_than_failed():
    scores = dict(PAPER_15)
    del scores[("prefix_tuning", "coco")]
    by_key = {f.key: f for f in check_findings(scores)}
    assert by_key["prefix_tuning"].holds is None
    assert "Prefix tuning on coco" in by_key["prefix_tuning"].evidence
    assert by_key["prompt_learning"].holds is True
    assert findings_lines([by_key["prefix_tuning"]])[0].startswith("1. **not checked**")


# Which findings the shipped embedded study satisfies (README, "What the miniature reproduces"). A change to the
# world, the base, a recipe or the evaluation that breaks one of these fails here; one that makes another hold
# should add it.
SHIPPED_HOLDING = {"zero_shot_between", "prompt_learning", "baseline_best_in_domain", "prompt_learning_ood"}


def test_the_shipped_study_keeps_the_findings_it_reproduces():
    findings = check_findings(report.cider_scores(report.load_study(SHIPPED)))
    holding = {f.key for f in findings if f.holds}
    assert holding == SHIPPED_HOLDING, "\n".join(findings_lines(findings))

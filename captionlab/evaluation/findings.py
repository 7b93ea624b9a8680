"""The paper's seven qualitative findings, checked on a study's CIDEr scores.

    findings = check_findings({("lora", "coco"): 104.1, ("zero_shot", "coco"): 31.0, ...})
    [f.key for f in findings if f.holds]

Each finding is stated as a test on numbers (coco CIDEr unless it says otherwise), with the thresholds issue #20
gives, so "does the miniature tell the paper's story" is computed, not asserted: the study report prints every
finding with the numbers that decide it, and `tests/test_findings.py` pins the ones the shipped study satisfies,
so a later change that breaks one is seen. A finding whose numbers are missing is "not checked" (holds None).
Pure Python (no torch): the report and the UI may import it.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass

from captionlab.names import CLIP_CAPTIONER, IN_DOMAIN, OUT_OF_DOMAIN, STRATEGY_LABELS

Scores = Mapping[tuple[str, str], float]  # (strategy, dataset) -> CIDEr
TUNED = ("prompt_learning", "prefix_tuning", "lora", "dora", "full")  # the trained LLaVA strategies


@dataclass(frozen=True)
class Finding:
    """One of the paper's findings on one study: holds True / False, or None where its numbers are missing."""

    key: str
    claim: str
    holds: bool | None
    evidence: str


class _Missing(Exception):
    pass


def _get(scores: Scores, strategy: str, dataset: str = IN_DOMAIN) -> float:
    value = scores.get((strategy, dataset))
    if value is None:
        raise _Missing(f"{STRATEGY_LABELS.get(strategy, strategy)} on {dataset}")
    return float(value)


def _ratio(a: float, b: float) -> float:
    return a / b if b else float("inf") if a else 0.0


def _zero_shot_between(scores: Scores) -> tuple[bool, str]:
    zero, lora = _get(scores, "zero_shot"), _get(scores, "lora")
    share = _ratio(zero, lora)
    return 0.15 <= share <= 0.60, f"zero-shot {zero:.1f} = {share:.0%} of LoRA's {lora:.1f} (paper: 51% / 15%)"


def _prefix_tuning(scores: Scores) -> tuple[bool, str]:
    prefix, lora, zero = _get(scores, "prefix_tuning"), _get(scores, "lora"), _get(scores, "zero_shot")
    holds = prefix >= 0.5 * lora and prefix >= 1.3 * zero
    return holds, (f"prefix tuning {prefix:.1f} = {_ratio(prefix, lora):.0%} of LoRA, "
                   f"{_ratio(prefix, zero):.1f}x zero-shot ({zero:.1f})")


def _prompt_learning(scores: Scores) -> tuple[bool, str]:
    prompt, lora = _get(scores, "prompt_learning"), _get(scores, "lora")
    return prompt >= 0.7 * lora, f"prompt learning {prompt:.1f} = {_ratio(prompt, lora):.0%} of LoRA's {lora:.1f}"


def _weight_tuning_close(scores: Scores) -> tuple[bool, str]:
    values = {s: _get(scores, s) for s in ("lora", "dora", "full")}
    low, high = min(values.values()), max(values.values())
    spread = ", ".join(f"{STRATEGY_LABELS[s]} {v:.1f}" for s, v in values.items())
    return low >= 0.9 * high, f"{spread}: the lowest is {_ratio(low, high):.0%} of the highest"


def _baseline_best_in_domain(scores: Scores) -> tuple[bool, str]:
    baseline = _get(scores, CLIP_CAPTIONER)
    best = max(("zero_shot", *TUNED), key=lambda s: scores.get((s, IN_DOMAIN), float("-inf")))
    best_value = _get(scores, best)
    return baseline > best_value, (f"CLIP-Captioner {baseline:.1f}, best LLaVA {STRATEGY_LABELS[best]} "
                                   f"{best_value:.1f}")


def _tuned_beats_baseline_out_of_domain(scores: Scores) -> tuple[bool, str]:
    won, parts = 0, []
    for dataset in OUT_OF_DOMAIN:
        baseline = _get(scores, CLIP_CAPTIONER, dataset)
        best = max(TUNED, key=lambda s: scores.get((s, dataset), float("-inf")))
        best_value = _get(scores, best, dataset)
        won += best_value > baseline
        parts.append(f"{dataset} {STRATEGY_LABELS[best]} {best_value:.1f} vs {baseline:.1f}")
    return won >= 3, f"a tuned LLaVA beats the CLIP-Captioner on {won} of 4 ({'; '.join(parts)})"


def _prompt_learning_out_of_domain(scores: Scores) -> tuple[bool, str]:
    won, parts = 0, []
    for dataset in OUT_OF_DOMAIN:
        prompt, lora = _get(scores, "prompt_learning", dataset), _get(scores, "lora", dataset)
        won += prompt >= lora
        parts.append(f"{dataset} {prompt:.1f} vs {lora:.1f}")
    return won >= 2, f"prompt learning at least LoRA on {won} of 4 ({'; '.join(parts)})"


FINDINGS: tuple[tuple[str, str, Callable[[Scores], tuple[bool, str]]], ...] = (
    ("zero_shot_between", "zero-shot coco CIDEr between 15% and 60% of LoRA's", _zero_shot_between),
    ("prefix_tuning", "prefix tuning at least 50% of LoRA and at least 1.3x zero-shot", _prefix_tuning),
    ("prompt_learning", "prompt learning at least 70% of LoRA", _prompt_learning),
    ("weight_tuning_close", "LoRA, DoRA and full fine-tuning within 10% of each other", _weight_tuning_close),
    ("baseline_best_in_domain", "the CLIP-Captioner best in-domain", _baseline_best_in_domain),
    ("tuned_beats_baseline_ood", "out of domain, some tuned LLaVA beats the CLIP-Captioner on at least 3 of 4 sets",
     _tuned_beats_baseline_out_of_domain),
    ("prompt_learning_ood", "prompt learning at least LoRA's CIDEr on at least 2 of the 4 out-of-domain sets",
     _prompt_learning_out_of_domain),
)


def check_findings(scores: Scores) -> list[Finding]:
    """Every finding of `FINDINGS` checked on (strategy, dataset) -> CIDEr."""
    out = []
    for key, claim, check in FINDINGS:
        try:
            holds, evidence = check(scores)
        except _Missing as missing:
            out.append(Finding(key, claim, None, f"not checked: no CIDEr for {missing}"))
            continue
        out.append(Finding(key, claim, bool(holds), evidence))
    return out


def findings_lines(findings: list[Finding]) -> list[str]:
    """One markdown line per finding: "holds" / "does not hold" / "not checked", the claim, its numbers."""
    verdict = {True: "holds", False: "does not hold", None: "not checked"}
    return [f"{i}. **{verdict[f.holds]}**: {f.claim}; {f.evidence}." for i, f in enumerate(findings, 1)]

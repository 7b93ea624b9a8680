"""What the Benchmarks tab shows beside its tables: nocaps by domain, and the caption length setting.

Both are read from each evaluation's results.json (`extra.by_domain`, `extra.image_domains`,
`extra.settings.max_new_tokens`, `extra.cut_at_max_new_tokens`), which `captionlab.evaluation`
writes; nothing is computed here. The paper reports nocaps overall only, so its rows have no domains.
"""

from __future__ import annotations

import json
from pathlib import Path

from captionlab.service.catalog import METRICS, strategy_label

DOMAIN_COLUMNS = ["Model", "Strategy", "Domain", "Images", *(short for short, _ in METRICS), "max_new_tokens"]
OVERALL = "overall"


def results_extra(row: dict) -> dict:
    """The `extra` of a row's results.json (its own, else the one beside its predictions); {} when unreadable."""
    candidates = [row.get("results_json")]
    if row.get("predictions_path"):
        candidates.append(str(Path(row["predictions_path"]).parent / "results.json"))
    for candidate in filter(None, candidates):
        try:
            document = json.loads(Path(candidate).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue
        extra = (document.get("result") or {}).get("extra")
        return extra if isinstance(extra, dict) else {}
    return {}


def _cell(value, metric: str) -> str:
    if value is None:
        return "—"
    return f"{value:.3f}" if metric == "CLIP-Score" else f"{value:.1f}"


def domain_rows(rows: list[dict]) -> list[dict]:
    """One line per (your nocaps evaluation, domain), its overall line first; [] when none has domains."""
    out = []
    for row in rows:
        if row.get("source") != "yours" or row.get("dataset") != "nocaps":
            continue
        extra = results_extra(row)
        by_domain = extra.get("by_domain")
        if not by_domain:
            continue
        limit = (extra.get("settings") or {}).get("max_new_tokens")
        strategy = " · ".join(p for p in (strategy_label(row["strategy"]), row.get("label")) if p)
        lines = [(OVERALL, row.get("n_images"), row.get("metrics") or {}), *(
            (domain, scores.get("n_images"), scores) for domain, scores in by_domain.items())]
        for domain, images, scores in lines:
            out.append({"Model": row.get("model"), "Strategy": strategy, "Domain": domain, "Images": images,
                        **{short: _cell(scores.get(metric), metric) for short, metric in METRICS},
                        "max_new_tokens": limit})
    return out


def domain_note() -> str:
    return ("nocaps by domain (in: only COCO object classes; near: some; out: none), each domain scored on its own "
            "images as nocaps' evaluation server does (CIDEr's document frequencies are the domain's). The paper "
            "reports nocaps overall only.")


def generation_note(rows: list[dict]) -> str:
    """The caption length limit of your evaluations and how many captions it cut, or '' when there are none."""
    limits: dict[str, list[int | None]] = {}
    for row in rows:
        if row.get("source") != "yours":
            continue
        extra = results_extra(row)
        limit = (extra.get("settings") or {}).get("max_new_tokens")
        limits.setdefault(str(limit) if limit is not None else "not recorded", []).append(
            extra.get("cut_at_max_new_tokens"))
    if not limits:
        return ""
    parts = []
    for limit, cuts in sorted(limits.items()):
        counted = [c for c in cuts if c is not None]
        told = (f"{sum(counted)} caption(s) cut at the limit in the {len(counted)} that counted"
                if counted else "cut captions not counted in these results")
        parts.append(f"max_new_tokens={limit} for {len(cuts)} evaluation(s) ({told})")
    return ("Your captions: greedy decoding, " + "; ".join(parts)
            + ". A caption cut at the limit is shorter than the model meant, which BLEU's brevity and CIDEr-D's length "
              "penalties feel; the paper states no limit.")
